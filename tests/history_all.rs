//! Broadcasts to everyone (`{"cmd":"all"}`) with a history, on one host: a client that asked
//! for positions gets them with a position on its uid's offsets, in order with the pushes to
//! its uid, and a dropped client recovers the broadcasts it missed, exactly once and in order,
//! on whichever worker it comes back to (plain WebSocket `?since=`, and a Socket.IO v4 page
//! under Node); a client that gets only broadcasts keeps a good position past two
//! `history_ttl`s; a graceful reload keeps them; plain clients get the same bytes as without a
//! history, once.

mod common;
mod history_nodes;
mod sio_page;

use common::*;
use history_nodes::wait_offline;
use serde_json::Value;
use sio_page::{sio_v4_ready, Page};
use std::time::Duration;

/// A seed push line for `uid` with number `n`.
fn unicast(uid: &str, n: u64) -> Vec<u8> {
    format!("{{\"uid\":\"{uid}\",\"n\":{n}}}\n").into_bytes()
}

/// A broadcast to everyone whose message is `{"n":N}`.
fn everyone(n: u64) -> Vec<u8> {
    format!("{{\"cmd\":\"all\",\"data\":\"{{\\\"n\\\":{n}}}\"}}\n").into_bytes()
}

/// The `n` of an envelope's data, and its offset.
fn n_and_offset(env: &Value) -> (u64, u64) {
    assert_eq!(env["type"], "msg", "{env}");
    let data: Value = serde_json::from_str(env["data"].as_str().expect("data")).expect("json");
    (
        data["n"].as_u64().expect("n"),
        env["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no position: {env}")),
    )
}

/// Numbers `from..` go out alternately as a broadcast and as a push to each of `uids`
/// (a broadcast for even numbers); returns the next number.
fn send_mixed(srv: &Server, uids: &[String], from: u64, count: u64) -> u64 {
    for n in from..from + count {
        if n % 2 == 0 {
            assert_eq!(srv.text_push(&everyone(n)), b"ok\n");
        } else {
            for u in uids {
                let r = srv.text_push(&unicast(u, n));
                assert!(r == b"ok\n" || r == b"fail\n", "{}", show(&r));
            }
        }
    }
    from + count
}

/// A positioned client: its connection, epoch and last offset.
struct Positioned {
    uid: String,
    ws: Ws,
    epoch: String,
    last: u64,
}

impl Positioned {
    /// Reads the messages numbered `from..to`, in order, each once, offsets growing.
    fn expect(&mut self, from: u64, to: u64) {
        for want in from..to {
            let env = recv_json(&mut self.ws);
            let (n, off) = n_and_offset(&env);
            assert_eq!(n, want, "{}: in order, each once ({env})", self.uid);
            assert_eq!(env["epoch"], self.epoch.as_str(), "{env}");
            assert!(
                off > self.last,
                "{}: offsets grow: {off} after {}",
                self.uid,
                self.last
            );
            self.last = off;
        }
    }
}

#[test]
fn dropped_clients_recover_the_broadcasts_they_missed_on_any_worker() {
    let srv = Server::builder().workers(2).set("history_size=100").start();
    srv.wait_mesh();
    // Eight uids, so that some connections land on the worker that does not own their uid's
    // history, and some recoveries too (a coin toss each).
    let uids: Vec<String> = (0..8).map(|i| format!("b{i}")).collect();
    let mut clients: Vec<Positioned> = uids
        .iter()
        .map(|u| {
            let (ws, head) = login_env(&srv, "/?envelope=1", u);
            assert_eq!(head["type"], "position", "{head}");
            Positioned {
                uid: u.clone(),
                ws,
                epoch: head["epoch"].as_str().expect("epoch").to_string(),
                last: head["offset"].as_u64().expect("offset"),
            }
        })
        .collect();
    // A client without positions: the broadcast's plain bytes, once.
    let mut plain = srv.login("plain");
    srv.push_until_ok(b"{\"uid\":\"plain\",\"n\":0}\n", REPLY);
    assert_eq!(plain.recv_text(REPLY), "{\"uid\":\"plain\",\"n\":0}");
    for u in &uids {
        srv.push_until_ok(&unicast(u, 0), REPLY);
    }
    for c in &mut clients {
        c.expect(0, 1);
    }
    let mut n = send_mixed(&srv, &uids, 1, 6);
    for c in &mut clients {
        c.expect(1, n);
    }
    for b in (2..n).step_by(2) {
        assert_eq!(plain.recv_text(REPLY), format!("{{\"n\":{b}}}"));
    }
    plain.expect_silence(Duration::from_millis(100));
    // All drop; once the server saw every close (nobody online), more goes out.
    let mut away = Vec::new();
    for c in clients {
        c.ws.close();
        away.push((c.uid, c.epoch, c.last));
    }
    for u in &uids {
        wait_offline(&srv, u);
    }
    let start = n;
    n = send_mixed(&srv, &uids, start, 7);
    let before: u64 = recovered(&srv);
    for (uid, epoch, last) in away {
        let (ws, head) = login_env(&srv, &format!("/?since={epoch}:{last}"), &uid);
        assert_eq!(head["type"], "recovery", "{head}");
        assert_eq!(head["recovered"], true, "{uid}: {head}\n{}", srv.log());
        let top = head["offset"].as_u64().expect("offset");
        let mut c = Positioned {
            uid,
            ws,
            epoch,
            last,
        };
        c.expect(start, n);
        assert_eq!(c.last, top, "the recovery ends at the announced offset");
        // Live again: one broadcast, once.
        assert_eq!(srv.text_push(&everyone(n)), b"ok\n");
        c.expect(n, n + 1);
        c.ws.expect_silence(Duration::from_millis(50));
        n += 1;
    }
    assert_eq!(recovered(&srv), before + 8);
    // The plain client got every broadcast once, and nothing else.
    let want: Vec<String> = (start..start + 7)
        .filter(|b| b % 2 == 0)
        .chain(start + 7..n)
        .map(|b| format!("{{\"n\":{b}}}"))
        .collect();
    let got: Vec<String> = want.iter().map(|_| plain.recv_text(REPLY)).collect();
    assert_eq!(got, want);
    plain.expect_silence(Duration::from_millis(200));
}

/// `recovered`, summed over the workers.
fn recovered(srv: &Server) -> u64 {
    let r = srv.http(&get("/api/stats"));
    let v: Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["recovered"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_client_getting_only_broadcasts_keeps_its_position_past_two_ttls() {
    let srv = Server::builder()
        .set("history_size=10")
        .set("history_ttl=1")
        .start();
    let (mut ws, head) = login_env(&srv, "/?envelope=1", "quiet");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(srv.text_push(&everyone(1)), b"ok\n");
    let (_, first) = n_and_offset(&recv_json(&mut ws));
    // Connected for longer than two ttls with nothing more for it (the uid's own stream is
    // empty: it is kept because the uid is held), then a drop.
    std::thread::sleep(Duration::from_millis(2_600));
    ws.close();
    wait_offline(&srv, "quiet");
    assert_eq!(srv.text_push(&everyone(2)), b"ok\n");
    let (mut ws, head) = login_env(&srv, &format!("/?since={epoch}:{first}"), "quiet");
    assert_eq!(head["recovered"], true, "{head}\n{}", srv.log());
    assert_eq!(n_and_offset(&recv_json(&mut ws)).0, 2);
}

#[test]
fn a_graceful_reload_keeps_the_broadcasts() {
    let mut srv = Server::builder()
        .set("history_size=100")
        .set("drain_timeout=1")
        .start();
    let (mut ws, head) = login_env(&srv, "/?envelope=1", "gr");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(srv.text_push(&everyone(1)), b"ok\n");
    let (_, offset) = n_and_offset(&recv_json(&mut ws));
    // Missed before the reload (kept by the old worker, handed over)...
    ws.close();
    wait_offline(&srv, "gr");
    assert_eq!(srv.text_push(&everyone(2)), b"ok\n");
    let old = srv.worker_pids();
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", show(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(15), || {
            let now = srv.worker_pids();
            !now.is_empty() && now.is_disjoint(&old)
        }),
        "old worker still there"
    );
    // ...and after it, by the new one, once it took the history up (a broadcast it kept
    // before would make the handed positions unrecoverable, which is not this test's case).
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("history taken over")),
        "no handover\n{}",
        srv.log()
    );
    assert_eq!(srv.text_push(&everyone(3)), b"ok\n");
    let (mut ws, head) = login_env(&srv, &format!("/?since={epoch}:{offset}"), "gr");
    assert_eq!(head["recovered"], true, "{head}\n{}", srv.log());
    assert_eq!(head["epoch"], epoch.as_str());
    assert_eq!(n_and_offset(&recv_json(&mut ws)).0, 2);
    assert_eq!(n_and_offset(&recv_json(&mut ws)).0, 3);
    ws.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_socketio_v4_page_recovers_broadcasts_and_pushes_in_order() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder()
        .workers(2)
        .socketio()
        .set("history_size=100")
        .start();
    srv.wait_mesh();
    let uid = "sb".to_string();
    let mut page = Page::spawn(srv.socketio, &uid);
    let mut msgs = Vec::new();
    page.first_connect(&mut msgs);
    srv.push_until_ok(&unicast(&uid, 0), REPLY);
    page.until_messages(&mut msgs, 1);
    let mut n = 1;
    for _ in 0..3 {
        n = send_mixed(&srv, std::slice::from_ref(&uid), n, 4);
        page.until_messages(&mut msgs, n as usize);
        page.command("drop");
        page.wait_for("disconnect", &mut msgs);
        n = send_mixed(&srv, std::slice::from_ref(&uid), n, 5);
        let again = page.wait_for("connect", &mut msgs);
        assert!(again.contains("recovered=true"), "{again}\n{}", srv.log());
        assert_eq!(srv.text_push(&everyone(n)), b"ok\n");
        n += 1;
        page.until_messages(&mut msgs, n as usize);
    }
    page.command("quit");
    let got: Vec<u64> = msgs
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m).expect("message JSON");
            v["n"].as_u64().expect("n")
        })
        .collect();
    assert_eq!(
        got,
        (0..n).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

#[test]
fn pushes_to_plain_clients_on_any_worker_are_kept_in_order() {
    // Clients without positions get a push from the worker it entered when they are all
    // there, and the owner of their uid's history only keeps it: it must keep every one, in
    // order, once, wherever the client and the backend's connection landed.
    let srv = Server::builder().workers(2).set("history_size=100").start();
    srv.wait_mesh();
    let uids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let mut clients: Vec<Ws> = uids.iter().map(|u| srv.login(u)).collect();
    for (u, c) in uids.iter().zip(&mut clients) {
        srv.push_until_ok(&unicast(u, 0), REPLY);
        assert_eq!(c.recv_text(REPLY), format!("{{\"uid\":\"{u}\",\"n\":0}}"));
    }
    // Each on a fresh text connection, so the kernel spreads them over both workers.
    for n in 1..=5 {
        for u in &uids {
            assert_eq!(srv.text_push(&unicast(u, n)), b"ok\n", "{u} {n}");
        }
    }
    for (u, c) in uids.iter().zip(&mut clients) {
        for n in 1..=5 {
            assert_eq!(c.recv_text(REPLY), format!("{{\"uid\":\"{u}\",\"n\":{n}}}"));
        }
        c.expect_silence(Duration::from_millis(50));
        let q = format!("{{\"cmd\":\"history\",\"uid\":\"{u}\"}}\n");
        let h: Value = serde_json::from_slice(&srv.text_push(q.as_bytes())).expect("history");
        let msgs = h["messages"].as_array().expect("messages");
        let ns: Vec<u64> = msgs
            .iter()
            .map(|m| {
                let d: Value =
                    serde_json::from_str(m["data"].as_str().expect("data")).expect("json");
                d["n"].as_u64().expect("n")
            })
            .collect();
        assert_eq!(ns, (0..=5).collect::<Vec<_>>(), "{u}: {h}");
        let offs: Vec<u64> = msgs.iter().filter_map(|m| m["offset"].as_u64()).collect();
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "{u}: {h}");
    }
}
