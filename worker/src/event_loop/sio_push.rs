//! What the rest of the server says to Socket.IO pages: a push as the `new_msg` event (encoded
//! once per push, shared by every session it reaches), a kick, and the seed page's
//! `update_online_count` line for the whole server (or cluster), once a second.

use super::query::QReply;
use super::Worker;
use crate::delivery::{frame, OP_TEXT};
use crate::proto::engineio::event_message;
use bytes::Bytes;
use herald_ipc::Query;
use serde_json::Value;
use std::rc::Rc;

impl Worker {
    /// Once a second: the whole server's online figures, for `update_online_count`.
    pub(super) fn sio_tick(&mut self) {
        if self.sio.sessions.is_empty() || self.sio.online_asked {
            return;
        }
        self.sio.online_asked = true;
        self.query(Query::Generation, QReply::OnlineGeneration);
    }

    /// The workers' generations arrived: count again only if one moved since the last count
    /// (at 100,000 uids a count is a merge of every worker's uids, not worth doing each second
    /// for nothing).
    pub(super) fn sio_generation(&mut self, generation: u64) {
        if self.sio.online_generation == Some(generation) {
            self.sio.online_asked = false;
            return;
        }
        self.sio.online_generation = Some(generation);
        self.query(Query::Count { group: None }, QReply::OnlineCount);
    }

    /// The merged counts arrived: tell every connected session if they changed.
    pub(super) fn sio_online(&mut self, uids: u64, pages: u64) {
        self.sio.online_asked = false;
        let text = format!("当前<b>{uids}</b>人在线，共打开<b>{pages}</b>个页面");
        if text == self.sio.online_text {
            return;
        }
        self.sio.online_text = text;
        let m: Rc<str> = Rc::from(
            event_message(
                "/",
                "update_online_count",
                &[Value::from(self.sio.online_text.as_str())],
            )
            .as_str(),
        );
        let f = frame(OP_TEXT, m.as_bytes());
        let targets: Vec<usize> = self
            .sio
            .sessions
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(i, _)| i)
            .collect();
        for idx in targets {
            self.sio_send(idx, m.clone(), Some(&f));
        }
    }

    /// A session that just joined learns the current figures at once.
    pub(super) fn sio_online_to(&mut self, idx: usize) {
        if self.sio.online_text.is_empty() {
            return;
        }
        let m = event_message(
            "/",
            "update_online_count",
            &[Value::from(self.sio.online_text.as_str())],
        );
        self.sio_send(idx, Rc::from(m.as_str()), None);
    }

    /// A push for session `idx`, as the `new_msg` event; whether it was queued.
    pub(super) fn sio_deliver(&mut self, idx: usize, ev: &mut SioEvent<'_>) -> bool {
        let Some((m, f)) = ev.encoded() else {
            return false;
        };
        if self.sio_send(idx, m, Some(&f)) {
            self.stats.delivered += 1;
            return true;
        }
        false
    }

    /// Kicks session `idx`: its last message (`data`, as `new_msg`), then the session ends.
    pub(super) fn sio_kick(&mut self, idx: usize, data: Option<&str>) {
        if let Some(d) = data {
            let m = event_message("/", "new_msg", &[Value::from(d)]);
            self.sio_send(idx, Rc::from(m.as_str()), None);
            self.sio_flush();
        }
        self.sio_close(idx, "kicked");
    }
}

/// A push as Socket.IO's `new_msg` event, encoded on first need and shared by every session
/// it reaches (a binary push has no text event: sessions do not get it).
pub(super) struct SioEvent<'a> {
    /// The push's payload.
    payload: &'a [u8],
    /// The push is binary.
    binary: bool,
    /// The packet and its WebSocket frame, once encoded (`Some(None)`: cannot be encoded).
    done: Option<Option<(Rc<str>, Bytes)>>,
}

impl<'a> SioEvent<'a> {
    /// The event for a push of `payload`.
    pub(super) fn new(payload: &'a [u8], binary: bool) -> SioEvent<'a> {
        SioEvent {
            payload,
            binary,
            done: None,
        }
    }

    /// The packet and its frame, encoded once.
    fn encoded(&mut self) -> Option<(Rc<str>, Bytes)> {
        let (payload, binary) = (self.payload, self.binary);
        self.done
            .get_or_insert_with(|| {
                let text = std::str::from_utf8(payload).ok().filter(|_| !binary)?;
                let m = event_message("/", "new_msg", &[Value::from(text)]);
                let f = frame(OP_TEXT, m.as_bytes());
                Some((Rc::from(m.as_str()), f))
            })
            .clone()
    }
}
