//! Nodes of a cluster with the history in Redis, and the small text-port helpers the cluster
//! history tests share (`tests/history_cluster.rs`, `tests/history_cluster_all.rs`).
#![allow(dead_code)]

use crate::common::{wait_until, Redis, Server};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A node of `workers` workers with a history in the cluster at `url`.
pub fn node_of(url: &str, name: &str, workers: usize, extra: &[&str]) -> Server {
    let mut b = Server::builder()
        .workers(workers)
        .socketio()
        .set(&format!("cluster=\"{url}\""))
        .set(&format!("node_id={name}"))
        .set("ipc_timeout=2")
        .set("history_size=100");
    for e in extra {
        b = b.set(e);
    }
    let srv = b.start();
    srv.wait_mesh();
    srv
}

/// A node of 2 workers.
pub fn node(url: &str, name: &str, extra: &[&str]) -> Server {
    node_of(url, name, 2, extra)
}

/// Nodes `node-a` and `node-b` of 2 workers each, with `extra` settings, on `redis`.
pub fn two_nodes(redis: &Redis, extra: &[&str]) -> (Server, Server) {
    let url = redis.url();
    (node(&url, "node-a", extra), node(&url, "node-b", extra))
}

/// One line on a fresh text connection; the reply.
pub fn cmd(srv: &Server, line: &str) -> String {
    String::from_utf8_lossy(&srv.text_push(format!("{line}\n").as_bytes())).into_owned()
}

/// A seed push line for `uid` with number `n`.
pub fn seed(uid: &str, n: u64) -> String {
    format!("{{\"uid\":\"{uid}\",\"n\":{n}}}")
}

/// The `n` of a message's text (`{"uid":…,"n":N}` or `{"n":N}`).
pub fn n_in(text: &str) -> u64 {
    let data: Value = serde_json::from_str(text).expect("message JSON");
    data["n"].as_u64().expect("n")
}

/// The `n` of an envelope's data.
pub fn n_of(env: &Value) -> u64 {
    assert_eq!(env["type"], "msg", "{env}");
    n_in(env["data"].as_str().expect("data"))
}

/// Pushes until one answers `ok` (the uid's holder is known in Redis); the pushes made are
/// numbered from `n` and the next number is returned.
pub fn push_until_ok(srv: &Server, uid: &str, mut n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = cmd(srv, &seed(uid, n));
        n += 1;
        if r == "ok\n" {
            return n;
        }
        assert!(Instant::now() < deadline, "no push to {uid} answered ok");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `uid` has no connection anywhere (asked of `srv`).
pub fn wait_offline(srv: &Server, uid: &str) {
    let line = format!("{{\"cmd\":\"online\",\"uid\":\"{uid}\"}}");
    let gone = wait_until(Duration::from_secs(10), || cmd(srv, &line) == "0\n");
    assert!(gone, "{uid} still online");
}
