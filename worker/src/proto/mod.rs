//! The wire protocols, as pure functions of the bytes received: none of these modules knows
//! the event loop, a socket or a timer. Each turns input into a typed value (a frame, a line's
//! command, a request, an Engine.IO packet) or output bytes (a response, a reply line), and the
//! loop acts on what they return.

pub mod api;
pub mod engineio;
pub mod http;
pub mod push;
pub mod seedscan;
pub mod text;
pub mod websocket;
pub mod ws_message;
