//! Engine.IO and Socket.IO wire formats: the pure protocol layer of the Socket.IO port.
//!
//! Everything here is a function of its arguments (the one exception, [`SidGen`], reads the
//! operating system's random source for every id it makes); the event loop owns sockets,
//! sessions and timers. The facts implemented, as the reference JavaScript implementation
//! (engine.io-parser 2.2 for v3, 5.2 for v4; socket.io-parser 3.x/4.x) puts them on the wire:
//!
//! **Engine.IO versions.** The `EIO` query parameter selects the revision: `3` is spoken by
//! socket.io-client 1.x/2.x, `4` by 3.x/4.x. In v3 the *client* sends `ping` every
//! `pingInterval` and the server answers `pong`; in v4 the *server* pings and the client
//! answers. Both probe an upgrade with `2probe` → `3probe`, then the client sends `5`.
//!
//! **Packets.** One ASCII digit for the type — open `0`, close `1`, ping `2`, pong `3`,
//! message `4`, upgrade `5`, noop `6` — then the data. Binary data in a text context is `b`
//! and base64 (standard alphabet, padded): in v4 the `b` implies a message (`bAQIDBA==`), in v3
//! the type digit follows the `b` (`b4AQIDBA==`). On a WebSocket each packet is one frame;
//! binary goes in a binary frame, raw in v4, behind a one-byte type (`0x04`) in v3.
//!
//! **Polling payloads.** Several packets share one HTTP body. v4 joins them with the record
//! separator `\x1e`: `4hello\x1e2\x1e4world`. v3 prefixes each with its length and a colon,
//! where the length counts UTF-16 code units (JavaScript's `String.length`), not bytes:
//! `6:4hello2:4€` (`€` is one unit, three bytes; `😀` is two units). A v3 client that has
//! XHR2 may also POST the binary payload form (`Content-Type: application/octet-stream`):
//! per packet a `0` (text) or `1` (binary) byte, the decimal length as one byte per digit
//! (values 0–9), `0xff`, then the packet (text as UTF-8; binary as a type byte and the data).
//! This server always *answers* with text payloads, which every client accepts.
//!
//! **Handshake.** The first answer is the open packet, `0` + JSON with `sid`, `upgrades`,
//! `pingInterval`, `pingTimeout` (milliseconds) and, in v4 only, `maxPayload` (bytes).
//!
//! **Socket.IO** rides in message packets: `<type>[<attachments>-][<nsp>,][<ack id>][JSON]`
//! with CONNECT `0`, DISCONNECT `1`, EVENT `2`, ACK `3`, ERROR/CONNECT_ERROR `4`,
//! BINARY_EVENT `5`, BINARY_ACK `6`; the namespace is written only when it is not `/`.
//! So `socket.emit('login', 123)` arrives as `42["login",123]`, with an ack id as
//! `421["login",123]`, on `/admin` as `42/admin,["login",123]`. A v4 client (Socket.IO
//! protocol 5) sends `40` (optionally with an auth object) and the server answers
//! `40{"sid":"…"}`; with v3 (protocol 4) the server sends `40` on its own right after the
//! open packet and the client never asks for the default namespace.
//!
//! **Session ids** ([`SidGen`], [`sid_worker`]) are 28 URL-safe characters: 24 carry 18
//! bytes (144 bits) from the operating system's random source, and the last four carry the
//! owning worker's id, masked by the first three of those bytes, so any worker can route a
//! polling request it did not create to the owner without shared state. (The reference
//! servers' ids are 20 characters; clients treat the id as an opaque string.)

mod packet;
mod request;
mod sid;
mod socketio;

pub use packet::*;
pub use request::*;
pub use sid::*;
pub use socketio::*;

/// The path prefix the socket.io clients use unless told otherwise.
pub const DEFAULT_PATH: &str = "/socket.io/";
/// `Content-Type` of every polling response body this server writes (and of a text POST).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=UTF-8";
/// `Content-Type` of a v3 binary payload POST.
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
/// The body of a successful polling POST.
pub const POST_OK: &str = "ok";
/// The v4 payload separator (ASCII record separator).
pub const SEPARATOR: char = '\x1e';

#[cfg(test)]
mod tests {
    use super::sid::{B64URL, SID_RANDOM_CHARS};
    use super::*;
    use base64::engine::Engine as _;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn msg(s: &str) -> Packet {
        Packet::message(s)
    }

    // ---- Engine.IO packets ----

    #[test]
    fn packet_types_round_trip() {
        for n in 0..7u8 {
            let t = PacketType::from_u8(n).unwrap();
            assert_eq!(t.as_u8(), n);
            assert_eq!(PacketType::from_char(t.as_char()), Some(t));
        }
        assert_eq!(PacketType::from_u8(7), None);
        assert_eq!(PacketType::from_char('x'), None);
        assert_eq!(EioVersion::from_param("3"), Some(EioVersion::V3));
        assert_eq!(EioVersion::from_param("4"), Some(EioVersion::V4));
        assert_eq!(EioVersion::from_param("5"), None);
        assert!(EioVersion::V4.server_pings() && !EioVersion::V3.server_pings());
    }

    #[test]
    fn packet_text_both_versions() {
        for v in [EioVersion::V3, EioVersion::V4] {
            assert_eq!(msg("hello").encode_text(v), "4hello");
            assert_eq!(Packet::empty(PacketType::Ping).encode_text(v), "2");
            assert_eq!(decode_packet(v, "2probe").unwrap().encode_text(v), "2probe");
            assert!(decode_packet(v, "2probe").unwrap().is_probe_ping());
            assert_eq!(
                decode_packet(v, "5").unwrap(),
                Packet::empty(PacketType::Upgrade)
            );
            assert_eq!(decode_packet(v, ""), Err(EioError::Empty));
            assert_eq!(decode_packet(v, "9x"), Err(EioError::BadType));
        }
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3, 4]),
        };
        assert_eq!(bin.encode_text(EioVersion::V4), "bAQIDBA==");
        assert_eq!(bin.encode_text(EioVersion::V3), "b4AQIDBA==");
        assert_eq!(decode_packet(EioVersion::V4, "bAQIDBA==").unwrap(), bin);
        assert_eq!(decode_packet(EioVersion::V3, "b4AQIDBA==").unwrap(), bin);
        // Node's base64 reader does not insist on padding.
        assert_eq!(decode_packet(EioVersion::V4, "bAQIDBA").unwrap(), bin);
        assert_eq!(decode_packet(EioVersion::V4, "b!!"), Err(EioError::Base64));
        assert_eq!(
            decode_packet(EioVersion::V3, "bxAQID"),
            Err(EioError::BadType)
        );
    }

    #[test]
    fn websocket_frames() {
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3]),
        };
        assert_eq!(
            encode_ws(EioVersion::V4, &bin),
            WsFrame::Binary(vec![1, 2, 3])
        );
        assert_eq!(
            encode_ws(EioVersion::V3, &bin),
            WsFrame::Binary(vec![4, 1, 2, 3])
        );
        assert_eq!(decode_ws_binary(EioVersion::V4, &[1, 2, 3]).unwrap(), bin);
        assert_eq!(
            decode_ws_binary(EioVersion::V3, &[4, 1, 2, 3]).unwrap(),
            bin
        );
        assert_eq!(decode_ws_binary(EioVersion::V3, &[]), Err(EioError::Empty));
        assert_eq!(
            decode_ws_binary(EioVersion::V3, &[9]),
            Err(EioError::BadType)
        );
        assert_eq!(
            encode_ws(EioVersion::V3, &msg("hey")),
            WsFrame::Text("4hey".into())
        );
    }

    // ---- payloads ----

    #[test]
    fn v4_payload_exact() {
        let v = EioVersion::V4;
        let ps = vec![msg("hello"), Packet::empty(PacketType::Ping), msg("world")];
        assert_eq!(encode_payload(v, &ps), "4hello\x1e2\x1e4world");
        assert_eq!(
            decode_payload(v, b"4hello\x1e2\x1e4world", false, MAX).unwrap(),
            ps
        );
        let mixed = decode_payload(v, b"4hello\x1ebAQIDBA==", false, MAX).unwrap();
        assert_eq!(mixed[1].data, Data::Binary(vec![1, 2, 3, 4]));
        assert_eq!(
            decode_payload(v, "42[\"hello\"]\x1e42[\"world\"]".as_bytes(), false, MAX).unwrap(),
            vec![msg("2[\"hello\"]"), msg("2[\"world\"]")]
        );
        assert_eq!(
            decode_payload(v, b"4a\x1e\x1e4b", false, MAX),
            Err(EioError::Empty)
        );
        assert_eq!(encode_payload(v, &[]), "6");
    }

    #[test]
    fn v3_payload_counts_utf16_units() {
        let v = EioVersion::V3;
        assert_eq!(encode_payload(v, &[msg("hello"), msg("€")]), "6:4hello2:4€");
        assert_eq!(encode_payload(v, &[msg("😀")]), "3:4😀");
        assert_eq!(
            decode_payload(v, "6:4hello2:4€".as_bytes(), false, MAX).unwrap(),
            vec![msg("hello"), msg("€")]
        );
        assert_eq!(
            decode_payload(v, "3:4😀1:2".as_bytes(), false, MAX).unwrap(),
            vec![msg("😀"), Packet::empty(PacketType::Ping)]
        );
        // The example of the v3 protocol text: text and base64 binary in one string payload.
        let both = decode_payload(v, "2:4€10:b4AQIDBA==".as_bytes(), false, MAX).unwrap();
        assert_eq!(both[0], msg("€"));
        assert_eq!(both[1].data, Data::Binary(vec![1, 2, 3, 4]));
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3, 4]),
        };
        assert_eq!(encode_payload(v, &[msg("€"), bin]), "2:4€10:b4AQIDBA==");
        assert_eq!(encode_payload(v, &[]), "1:6");
        // `0:` entries are skipped, a payload of nothing but them is empty.
        assert_eq!(decode_payload(v, b"0:1:2", false, MAX).unwrap().len(), 1);
        assert_eq!(decode_payload(v, b"0:", false, MAX), Err(EioError::Empty));
    }

    #[test]
    fn v3_payload_rejects_bad_lengths() {
        let v = EioVersion::V3;
        for bad in [
            "5:4hello", // "4hell" fits, then "o" has no length
            "7:4hello", // the data is shorter than its length
            "x:4",
            ":4",
            "6:4hello2",
            "2:4😀", // cuts a surrogate pair
            "99999999999:4",
            "1:9",
        ] {
            let r = decode_payload(v, bad.as_bytes(), false, MAX);
            assert!(r.is_err(), "{bad:?} gave {r:?}");
        }
        assert_eq!(decode_payload(v, b"", false, MAX), Err(EioError::Empty));
        assert_eq!(
            decode_payload(v, &[0xff, b':'], false, MAX),
            Err(EioError::Utf8)
        );
    }

    #[test]
    fn v3_binary_payload() {
        // The v3 protocol text's example: "€" as text, then <01 02 03 04> as binary.
        let body = [
            0x00, 0x04, 0xff, 0x34, 0xe2, 0x82, 0xac, 0x01, 0x05, 0xff, 0x04, 0x01, 0x02, 0x03,
            0x04,
        ];
        let ps = decode_payload(EioVersion::V3, &body, true, MAX).unwrap();
        assert_eq!(ps[0], msg("€"));
        assert_eq!(
            ps[1],
            Packet {
                kind: PacketType::Message,
                data: Data::Binary(vec![1, 2, 3, 4])
            }
        );
        // A length of 12: digits 1 and 2.
        let mut long = vec![0x00, 1, 2, 0xff];
        long.extend_from_slice(b"42[\"a\",\"b\"]x");
        assert_eq!(
            decode_payload(EioVersion::V3, &long, true, MAX)
                .unwrap()
                .len(),
            1
        );
        for bad in [
            &[0x02, 0x01, 0xff, 0x34][..],
            &[0x00, 0x05, 0xff, 0x34],
            &[0x00, 0x0a, 0xff, 0x34],
            &[0x00, 0xff, 0x34],
            &[0x00, 0x01],
            &[0x01, 0x01, 0xff, 0x09],
        ] {
            assert!(
                decode_payload(EioVersion::V3, bad, true, MAX).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_size_is_bounded() {
        assert_eq!(
            decode_payload(EioVersion::V4, b"4hello", false, 5),
            Err(EioError::TooLarge { len: 6, max: 5 })
        );
        assert!(decode_payload(EioVersion::V4, b"4hello", false, 6).is_ok());
    }

    #[test]
    fn push_payload_frames_shared_text() {
        let m = event_message("/", "new_msg", &[json!("hi")]);
        let mut v4 = String::new();
        push_payload(EioVersion::V4, &mut v4, &m);
        push_payload(EioVersion::V4, &mut v4, "2");
        assert_eq!(v4, "42[\"new_msg\",\"hi\"]\x1e2");
        let mut v3 = String::new();
        push_payload(EioVersion::V3, &mut v3, &m);
        push_payload(EioVersion::V3, &mut v3, "3");
        assert_eq!(v3, "18:42[\"new_msg\",\"hi\"]1:3");
        // As the reference v2 server wrote it: 32 UTF-16 units, 35 bytes.
        let mut v3 = String::new();
        let m = event_message("/", "new_msg", &[json!("hello <b>€😀</b>")]);
        push_payload(EioVersion::V3, &mut v3, &m);
        assert_eq!(v3, "32:42[\"new_msg\",\"hello <b>€😀</b>\"]");
        // A control character in data is escaped by JSON, so it cannot split a v4 payload.
        assert_eq!(
            event_message("/", "m", &[json!("a\x1eb")]),
            "42[\"m\",\"a\\u001eb\"]"
        );
    }

    // ---- handshake ----

    #[test]
    fn open_packets_exact() {
        let h = Handshake {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: upgrades_from(Transport::Polling),
            ping_interval_ms: 25000,
            ping_timeout_ms: 5000,
            max_payload: 1_000_000,
        };
        let v3 = open_packet(EioVersion::V3, &h);
        assert_eq!(
            v3,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#
        );
        // The v3 protocol text's sample response, byte for byte.
        let mut body = String::new();
        push_payload(EioVersion::V3, &mut body, &v3);
        assert!(body.starts_with("96:0{"));
        // The reference v2 server answers the handshake with the open packet and `40` at once.
        push_payload(
            EioVersion::V3,
            &mut body,
            &connect_message(EioVersion::V3, "/", "-"),
        );
        assert!(body.ends_with("\"pingTimeout\":5000}2:40"));
        assert_eq!(
            open_packet(EioVersion::V4, &h),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}"#
        );
        let ws = Handshake {
            upgrades: upgrades_from(Transport::Websocket),
            ..h
        };
        assert!(open_packet(EioVersion::V4, &ws).contains(r#""upgrades":[],"#));
    }

    // ---- Socket.IO ----

    #[test]
    fn sio_decode_protocol_examples() {
        let p = decode_sio("0", MAX).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id, p.data),
            (SioType::Connect, "/", None, None)
        );
        let p = decode_sio(r#"0/admin,{"token":"123"}"#, MAX).unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token":"123"})));
        let p = decode_sio("0/admin?token=1234&uid=abcd", MAX).unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.nsp_query.as_deref(), Some("token=1234&uid=abcd"));
        let p = decode_sio("1/admin,", MAX).unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (SioType::Disconnect, "/admin"));
        let p = decode_sio("1", MAX).unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (SioType::Disconnect, "/"));
        let p = decode_sio(r#"212["foo"]"#, MAX).unwrap();
        assert_eq!((p.kind, p.id), (SioType::Event, Some(12)));
        let p = decode_sio(r#"3/admin,13["bar"]"#, MAX).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (SioType::Ack, "/admin", Some(13))
        );
        assert_eq!(p.data, Some(json!(["bar"])));
        let p = decode_sio(r#"4{"message":"Not authorized"}"#, MAX).unwrap();
        assert_eq!(p.kind, SioType::ConnectError);
        assert_eq!(
            decode_sio(r#"4"Not authorized""#, MAX).unwrap().kind,
            SioType::ConnectError
        );
    }

    #[test]
    fn sio_events() {
        let e = decode_sio(r#"2["login",123]"#, MAX)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e,
            Event {
                nsp: "/".into(),
                id: None,
                name: "login".into(),
                args: vec![json!(123)]
            }
        );
        let e = decode_sio(r#"2/chat,7["login","u1",{"a":1}]"#, MAX)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            (e.nsp.as_str(), e.id, e.name.as_str()),
            ("/chat", Some(7), "login")
        );
        assert_eq!(e.args, vec![json!("u1"), json!({"a":1})]);
        let e = decode_sio(r#"2[42]"#, MAX).unwrap().into_event().unwrap();
        assert_eq!((e.name.as_str(), e.args.len()), ("42", 0));
        assert_eq!(
            decode_sio("0", MAX).unwrap().into_event(),
            Err(SioError::NotEvent)
        );
    }

    #[test]
    fn sio_rejects_malformed() {
        use SioError::*;
        let cases: &[(&str, SioError)] = &[
            ("", BadType),
            ("7", BadType),
            ("x[]", BadType),
            (r#"51-["baz",{"_placeholder":true,"num":0}]"#, Binary),
            (r#"61-15["bar",{"_placeholder":true,"num":0}]"#, Binary),
            (
                "2",
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                "2[]",
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2{"a":1}"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2[null]"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2["disconnect"]"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (r#"2["login""#, Json),
            (r#"2["login"]]"#, Json),
            ("299999999999999999999[\"a\"]", BadId),
            ("1[]", Payload("DISCONNECT carries no data")),
            ("0[1]", Payload("CONNECT data must be an object")),
            ("3", Payload("ACK data must be an array")),
            (
                "4",
                Payload("CONNECT_ERROR data must be a string or an object"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_sio(input, MAX).as_ref().err(),
                Some(want),
                "{input:?}"
            );
        }
        assert_eq!(
            decode_sio(r#"2["login","u1"]"#, 10),
            Err(TooLarge { len: 15, max: 10 })
        );
        // Deep nesting is refused by the JSON parser's recursion limit, not a stack overflow.
        let deep = format!("2[\"a\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(decode_sio(&deep, MAX), Err(Json));
    }

    #[test]
    fn sio_encode_exact() {
        assert_eq!(
            event_message("/", "hey", &[json!("Jude")]),
            r#"42["hey","Jude"]"#
        );
        assert_eq!(
            event_message("/", "new_msg", &[json!("a \"q\" €")]),
            r#"42["new_msg","a \"q\" €"]"#
        );
        assert_eq!(event_message("/admin", "bar", &[]), r#"42/admin,["bar"]"#);
        assert_eq!(ack_message("/", 12, &[]), "4312[]");
        assert_eq!(
            ack_message("/admin", 13, &[json!("bar")]),
            r#"43/admin,13["bar"]"#
        );
        assert_eq!(
            connect_message(EioVersion::V4, "/", "wZX3oN0bSVIhsaknAAAI"),
            r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#
        );
        assert_eq!(connect_message(EioVersion::V3, "/", "ignored"), "40");
        assert_eq!(connect_message(EioVersion::V3, "/admin", "x"), "40/admin,");
        assert_eq!(
            connect_message(EioVersion::V4, "/admin", "oSO0OpakMV_3jnilAAAA"),
            r#"40/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#
        );
        assert_eq!(
            connect_error_message(EioVersion::V4, "/", "Not authorized"),
            r#"44{"message":"Not authorized"}"#
        );
        assert_eq!(
            connect_error_message(EioVersion::V3, "/", "Not authorized"),
            r#"44"Not authorized""#
        );
        assert_eq!(disconnect_message("/"), "41");
        assert_eq!(disconnect_message("/admin"), "41/admin,");
        // encode() is decode()'s inverse on these.
        for s in [
            "0",
            "1/admin,",
            r#"212["foo"]"#,
            r#"3/admin,13["bar"]"#,
            r#"0/a?x=1,{"k":1}"#,
        ] {
            assert_eq!(decode_sio(s, MAX).unwrap().encode(), s);
        }
    }

    // ---- session ids ----

    #[test]
    fn sids_carry_their_worker() {
        for w in [0, 1, 2, 7, 255, 4096, MAX_SID_WORKER] {
            let mut g = SidGen::new(w);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let s = g.next_sid();
                assert_eq!(s.len(), SID_LEN);
                assert!(
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "{s}"
                );
                assert_eq!(sid_worker(&s), Some(w), "{s}");
                assert!(seen.insert(s));
            }
        }
        // Fixed bytes give a fixed id; the worker is not visible as a constant suffix.
        let r = [0u8; SID_RANDOM_BYTES];
        assert_eq!(encode_sid(3, r), "AAAAAAAAAAAAAAAAAAAAAAAAAAAD");
        let r = [0xff; SID_RANDOM_BYTES];
        assert_eq!(encode_sid(0, r), "____________________________");
        assert_eq!(sid_worker(&encode_sid(5, r)), Some(5));
        assert_ne!(
            &encode_sid(5, r)[24..],
            &encode_sid(5, [1; SID_RANDOM_BYTES])[24..]
        );
    }

    #[test]
    fn sid_random_part_varies_in_every_bit() {
        // With 256 ids from the OS source, each of the 144 random bits takes both values
        // (a constant bit would show by chance with probability 2^-255 per bit).
        let mut g = SidGen::new(9);
        let (mut ones, mut zeros) = ([0u8; SID_RANDOM_BYTES], [0u8; SID_RANDOM_BYTES]);
        for _ in 0..256 {
            let sid = g.next_sid();
            let raw = B64URL.decode(&sid[..SID_RANDOM_CHARS]).unwrap();
            assert_eq!(raw.len(), SID_RANDOM_BYTES);
            for (i, b) in raw.iter().enumerate() {
                ones[i] |= b;
                zeros[i] |= !b;
            }
        }
        assert_eq!(ones, [0xff; SID_RANDOM_BYTES]);
        assert_eq!(zeros, [0xff; SID_RANDOM_BYTES]);
        // Two generators of one worker do not repeat each other.
        let mut h = SidGen::new(9);
        assert_ne!(g.next_sid(), h.next_sid());
        // The stand-in for a failing OS source makes distinct, well-formed ids too.
        let a = g.fallback_bytes();
        let b = g.fallback_bytes();
        assert_ne!(a, b);
        assert_ne!(&a[16..], &[0, 0]);
        assert_eq!(sid_worker(&encode_sid(9, a)), Some(9));
    }

    #[test]
    fn foreign_sids_are_refused() {
        for bad in [
            "",
            "short",
            "lv_VI97HAXpY6yYWAAAC", // 20: the reference servers' length
            "lv_VI97HAXpY6yYWlv_VI97HAAAC1", // 29
            "lv_VI97HAXpY6yYWlv_VI97HAA+C", // not URL-safe
            "lv_VI97HAXpY6yYWlv_VI97HA€", // not ASCII (28 bytes)
            "lv_VI97HAXpY6yYWlv_VI97HAA=C",
        ] {
            assert_eq!(sid_worker(bad), None, "{bad:?}");
        }
        // Any id of the right shape decodes to *some* worker: the caller checks it against
        // its worker count and session table.
        assert!(sid_worker("lv_VI97HAXpY6yYWlv_VI97HAAAC").is_some());
    }

    // ---- requests ----

    #[test]
    fn queries() {
        let (path, q) = split_target("/socket.io/?EIO=4&transport=polling&t=N8hyd6w");
        assert!(is_engine_path(path, DEFAULT_PATH));
        assert!(is_engine_path("/socket.io", DEFAULT_PATH));
        assert!(!is_engine_path("/socket.io.js", DEFAULT_PATH));
        let eq = parse_query(q).unwrap();
        assert_eq!(
            (eq.version, eq.transport, eq.sid.as_deref()),
            (EioVersion::V4, Transport::Polling, None)
        );
        assert_eq!(eq.get("t"), Some("N8hyd6w"));
        let sid = SidGen::new(2).next_sid();
        let eq = parse_query(&format!(
            "EIO=3&transport=websocket&sid={sid}&token=a%2Bb&b64=1"
        ))
        .unwrap();
        assert_eq!(
            (eq.version, eq.transport),
            (EioVersion::V3, Transport::Websocket)
        );
        assert_eq!(eq.sid.as_deref(), Some(sid.as_str()));
        assert_eq!(eq.get("token"), Some("a+b"));
        assert!(eq.b64);
        assert_eq!(split_target("/socket.io/"), ("/socket.io/", ""));
        assert_eq!(
            parse_query("transport=polling").unwrap().version,
            EioVersion::V3
        );
        assert_eq!(
            parse_query("EIO=2&transport=polling"),
            Err(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(parse_query("EIO=4"), Err(ErrorCode::UnknownTransport));
        assert_eq!(
            parse_query("EIO=4&transport=flashsocket"),
            Err(ErrorCode::UnknownTransport)
        );
        assert_eq!(
            parse_query("EIO=3&transport=polling&j=0"),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&sid=nope"),
            Err(ErrorCode::UnknownSid)
        );
        assert_eq!(
            ErrorCode::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(ErrorCode::UnknownSid.status(), 400);
        assert_eq!(ErrorCode::Forbidden.status(), 403);
    }

    #[test]
    fn cors() {
        assert_eq!(
            cors_headers(Some("http://example.com:8080")),
            vec![
                (
                    "Access-Control-Allow-Origin",
                    "http://example.com:8080".to_string()
                ),
                ("Access-Control-Allow-Credentials", "true".to_string()),
                ("Vary", "Origin".to_string()),
            ]
        );
        assert_eq!(
            cors_headers(None),
            vec![("Access-Control-Allow-Origin", "*".to_string())]
        );
        // Nothing that could break out of a header line is echoed.
        assert_eq!(cors_headers(Some("http://a\r\nSet-Cookie: x")).len(), 1);
        assert_eq!(cors_headers(Some("http://a b")).len(), 1);
        let pre = preflight_headers(Some("http://a"), Some("content-type, x-token"));
        assert!(pre.contains(&(
            "Access-Control-Allow-Headers",
            "content-type, x-token".to_string()
        )));
        assert!(pre.contains(&("Access-Control-Allow-Credentials", "true".to_string())));
        let pre = preflight_headers(None, Some("x\r\ny"));
        assert!(pre.contains(&("Access-Control-Allow-Headers", "Content-Type".to_string())));
    }
}
