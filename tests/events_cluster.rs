//! `online` and `offline` for the whole cluster: nodes of 2 workers on a real `redis-server`
//! (started by each test on a free port), subscribers on the text port of several nodes, and
//! one webhook endpoint (`php -S` serving `scripts/php/webhook.php`) that every node POSTs to.
//! A uid's first connection anywhere says `online` once, its last one `offline` once, even
//! when two nodes log it in at the same moment or when the node holding it is killed with
//! `kill -9` (a surviving node says it, within the README's bound); a worker killed in a
//! one-node cluster leaves none of the single host's owner-worker gaps; a Redis restart crashes
//! nothing and events go on.

mod common;
mod events_common;

use common::*;
use events_common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-webhook-secret";

/// The README's bound from `kill -9` of a node to the `offline` of its uids.
const LOST_BOUND: Duration = Duration::from_secs(15);

/// A node of 2 workers named `name` in the cluster at `url`, with events, POSTing them to the
/// webhook on `hook` if given; returned once every worker reaches Redis.
fn node(url: &str, name: &str, hook: Option<u16>) -> Server {
    let mut b = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .set(&format!("cluster=\"{url}\""))
        .set(&format!("node_id={name}"))
        .set("ipc_timeout=2");
    if let Some(port) = hook {
        b = b
            .set(&format!("webhook_url=http://127.0.0.1:{port}/herald.php"))
            .set(&format!("webhook_secret={SECRET}"));
    }
    let srv = b.start();
    srv.wait_mesh();
    wait_cluster_up(&srv);
    srv
}

/// Waits until every worker of `srv` reaches Redis.
fn wait_cluster_up(srv: &Server) {
    let up = wait_until(LONG, || srv.workers_cluster_up(true));
    assert!(
        up,
        "not every worker reaches Redis: {}",
        srv.http(&get("/api/stats")).text()
    );
}

/// The presence events of `uid` the webhook endpoint recorded so far, as `event` names.
fn hooked(log: &Path, uid: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["uid"] == uid && (v["event"] == "online" || v["event"] == "offline"))
        .map(|v| v["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the endpoint recorded `want` for `uid` (then a little longer, so that a
/// duplicate would be seen too).
fn wait_hooked(log: &Path, uid: &str, want: &[&str]) {
    let got = wait_until(LONG, || hooked(log, uid).len() >= want.len());
    std::thread::sleep(Duration::from_millis(500));
    // Each node POSTs its own events: their order across nodes is not kept.
    let mut seen = hooked(log, uid);
    seen.sort();
    let mut want: Vec<&str> = want.to_vec();
    want.sort();
    assert!(
        got && seen == want,
        "webhook for {uid}: {seen:?}, want {want:?}"
    );
}

/// One Redis command (inline form) and its reply line.
fn redis_cmd(redis: &Redis, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).expect("redis");
    s.set_read_timeout(Some(REPLY)).ok();
    s.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

/// Waits until `n` members of the cluster hold `uid` in Redis's presence.
fn wait_members(redis: &Redis, uid: &str, n: usize) {
    let want = format!(":{n}");
    assert!(
        wait_until(LONG, || redis_cmd(redis, &format!("SCARD herald:pu:{uid}"))
            == want),
        "presence of {uid} never held by {n} members"
    );
}

/// The presence events of `uid` a subscriber received within `window`, as `event` names.
fn presence_of(sub: &Sub, uid: &str, window: Duration) -> Vec<String> {
    sub.drain(window)
        .into_iter()
        .filter(|v| v["uid"] == uid)
        .map(|v| v["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The webhook endpoint, started before the nodes (so no node's first POST waits in its
/// retry back-off), and where it records events.
fn hook() -> (u16, Group, TempDir, PathBuf) {
    webhook_endpoint(SECRET)
}

fn ready() -> bool {
    Redis::available() && php_ready()
}

#[test]
fn online_once_for_the_cluster_and_offline_with_the_last_connection() {
    if !ready() {
        return;
    }
    let redis = Redis::start();
    let (port, _php, _dir, log) = hook();
    let a = node(&redis.url(), "node-a", Some(port));
    let b = node(&redis.url(), "node-b", Some(port));
    let sub_a = Sub::connect(&a, r#"["online","offline"]"#);
    let sub_b = Sub::connect(&b, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub_a]);
    wait_subscribers_known(&b, &[&sub_b]);

    // First connection anywhere (node A): online, heard on both nodes, said by node A.
    let on_a = a.login_acked("u1");
    for sub in [&sub_a, &sub_b] {
        let v = sub.wait("u1 online", LONG, |v| v["uid"] == "u1");
        assert_eq!(v["event"], "online", "{v}");
        assert_eq!(v["scope"], "cluster", "{v}");
        assert_eq!(v["node"], "node-a", "{v}");
    }
    // Again on node B: nothing; then A's connection goes: nothing (B still holds it).
    let on_b = b.login_acked("u1");
    wait_members(&redis, "u1", 2);
    on_a.close();
    wait_members(&redis, "u1", 1);
    // B's goes: offline, once, heard on both nodes.
    on_b.close();
    for sub in [&sub_a, &sub_b] {
        let v = sub.wait("u1 offline", LONG, |v| v["uid"] == "u1");
        assert_eq!(v["event"], "offline", "{v}");
        assert_eq!(v["node"], "node-b", "{v}");
    }
    for sub in [&sub_a, &sub_b] {
        assert_eq!(
            presence_of(sub, "u1", Duration::from_millis(500)),
            Vec::<String>::new()
        );
    }
    // The webhook (one URL for the whole cluster) got each event once.
    wait_hooked(&log, "u1", &["online", "offline"]);
}

#[test]
fn concurrent_logins_on_two_nodes_say_online_once() {
    if !ready() {
        return;
    }
    let redis = Redis::start();
    let (port, _php, _dir, log) = hook();
    let a = node(&redis.url(), "node-a", Some(port));
    let b = node(&redis.url(), "node-b", Some(port));
    let sub = Sub::connect(&a, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub]);

    const N: usize = 12;
    let mut clients = Vec::new();
    for i in 0..N {
        let uid = format!("twice{i}");
        let gate = Arc::new(Barrier::new(2));
        let (ap, bp) = (a.ws, b.ws);
        let spawn = |port: u16, gate: Arc<Barrier>, uid: String| {
            std::thread::spawn(move || {
                gate.wait();
                let mut c = ws_connect(port);
                c.send_text(&uid);
                c
            })
        };
        let ta = spawn(ap, gate.clone(), uid.clone());
        let tb = spawn(bp, gate, uid);
        clients.push(ta.join().expect("login on A"));
        clients.push(tb.join().expect("login on B"));
    }
    let mut online = std::collections::HashMap::new();
    while online.len() < N {
        let v = sub.wait("online of each uid", LONG, |v| {
            v["uid"].as_str().is_some_and(|u| u.starts_with("twice"))
        });
        assert_eq!(v["event"], "online", "{v}");
        let uid = v["uid"].as_str().unwrap_or_default().to_string();
        assert!(
            online.insert(uid.clone(), ()).is_none(),
            "two onlines for {uid}"
        );
    }
    let extra: Vec<Value> = sub
        .drain(Duration::from_millis(800))
        .into_iter()
        .filter(|v| v["uid"].as_str().is_some_and(|u| u.starts_with("twice")))
        .collect();
    assert!(extra.is_empty(), "more presence events: {extra:?}");
    for i in 0..N {
        let uid = format!("twice{i}");
        wait_members(&redis, &uid, 2);
        wait_hooked(&log, &uid, &["online"]);
    }
}

#[test]
fn a_killed_nodes_uids_go_offline_once_within_the_bound() {
    if !ready() {
        return;
    }
    let redis = Redis::start();
    let (port, _php, _dir, log) = hook();
    let a = node(&redis.url(), "node-a", Some(port));
    let b = node(&redis.url(), "node-b", Some(port));
    let c = node(&redis.url(), "node-c", Some(port));
    let sub_a = Sub::connect(&a, r#"["online","offline"]"#);
    let sub_c = Sub::connect(&c, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub_a]);
    wait_subscribers_known(&c, &[&sub_c]);

    // bob only on B; carol on B and on C (she stays online through B's death); and a crowd
    // only on B, whose offlines are more than one message's worth.
    const CROWD: usize = 300;
    let _bob = b.login_acked("bob");
    let _carol_b = b.login_acked("carol");
    let _carol_c = c.login_acked("carol");
    let _crowd: Vec<Ws> = (0..CROWD)
        .map(|i| b.login_acked(&format!("crowd{i}")))
        .collect();
    let is_crowd = |v: &Value| v["uid"].as_str().is_some_and(|u| u.starts_with("crowd"));
    let mut seen = std::collections::HashSet::new();
    while seen.len() < CROWD + 1 {
        let v = sub_c.wait("bob and the crowd online", LONG, |v| {
            (is_crowd(v) || v["uid"] == "bob") && v["event"] == "online"
        });
        seen.insert(v["uid"].as_str().unwrap_or_default().to_string());
    }
    wait_members(&redis, "carol", 2);
    wait_hooked(&log, "bob", &["online"]);

    for pid in b.worker_pids().into_iter().chain([b.master_pid()]) {
        signal(pid, libc::SIGKILL);
    }
    let t0 = Instant::now();
    let mut crowd_gone = std::collections::HashSet::new();
    let v = sub_c.wait("bob offline", LOST_BOUND + Duration::from_secs(5), |v| {
        if is_crowd(v) && v["event"] == "offline" {
            assert!(
                crowd_gone.insert(v["uid"].as_str().unwrap_or_default().to_string()),
                "two offlines: {v}"
            );
        }
        v["uid"] == "bob"
    });
    let took = t0.elapsed();
    eprintln!("kill -9 of node B to bob's offline on node C: {took:?}");
    assert_eq!(v["event"], "offline", "{v}");
    assert_eq!(v["lost"], true, "{v}");
    assert_ne!(v["node"], "node-b", "{v}");
    assert!(took <= LOST_BOUND, "{took:?}");
    while crowd_gone.len() < CROWD {
        let v = sub_c.wait("the crowd offline", LONG, |v| is_crowd(v));
        assert_eq!(v["event"], "offline", "{v}");
        assert!(
            crowd_gone.insert(v["uid"].as_str().unwrap_or_default().to_string()),
            "two offlines: {v}"
        );
    }
    sub_a.wait("bob offline on A", LONG, |v| {
        v["uid"] == "bob" && v["event"] == "offline"
    });
    // Once: no second offline on either subscriber (C has had every crowd offline), none for
    // carol, and one webhook call.
    for (sub, crowd_seen) in [(&sub_a, false), (&sub_c, true)] {
        let more: Vec<Value> = sub
            .drain(Duration::from_millis(800))
            .into_iter()
            .filter(|v| v["uid"] == "bob" || v["uid"] == "carol" || (crowd_seen && is_crowd(v)))
            .filter(|v| v["event"] == "offline")
            .collect();
        assert!(more.is_empty(), "{more:?}");
    }
    wait_hooked(&log, "bob", &["online", "offline"]);
    wait_hooked(&log, "carol", &["online"]);
    wait_hooked(&log, "crowd299", &["online", "offline"]);
    wait_members(&redis, "carol", 1);
}

#[test]
fn a_redis_restart_crashes_nothing_and_events_go_on() {
    if !Redis::available() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start_on(port);
    let a = node(&redis.url(), "node-a", None);
    let b = node(&redis.url(), "node-b", None);
    let sub = Sub::connect(&a, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub]);
    let _held = b.login_acked("held");
    sub.wait("held online", LONG, |v| {
        v["uid"] == "held" && v["event"] == "online"
    });

    // Restarted, its data lost: every worker reconnects and puts its uids back quietly.
    redis.kill();
    let redis = Redis::start_on(port);
    let t0 = Instant::now();
    // Each worker notices the loss at its next heartbeat at the latest, then connects again
    // (logged once per episode): wait for the second `connected` of every worker.
    for srv in [&a, &b] {
        let back = wait_until(LONG, || {
            srv.log().matches("cluster: connected to Redis").count() >= 2 * srv.workers
        });
        assert!(back, "not every worker connected again:\n{}", srv.log());
        wait_cluster_up(srv);
    }
    wait_members(&redis, "held", 1);
    eprintln!("presence back {:?} after the Redis restart", t0.elapsed());
    // Events go on across nodes.
    let after = b.login_acked("after");
    let v = sub.wait("after online", LONG, |v| v["uid"] == "after");
    assert_eq!(v["event"], "online", "{v}");
    assert_eq!(v["scope"], "cluster", "{v}");
    after.close();
    let v = sub.wait("after offline", LONG, |v| v["uid"] == "after");
    assert_eq!(v["event"], "offline", "{v}");
    // `held` was not announced again.
    assert_eq!(
        presence_of(&sub, "held", Duration::from_millis(500)),
        Vec::<String>::new()
    );
    assert!(a.worker_pids().len() == 2 && b.worker_pids().len() == 2);
}

#[test]
fn a_killed_worker_of_a_one_node_cluster_leaves_no_gap() {
    if !Redis::available() {
        return;
    }
    // With Redis, presence is per worker: the host's owner-worker gap (a replaced owner) is
    // closed, so one host can use a local Redis for exact presence.
    let redis = Redis::start();
    let a = node(&redis.url(), "solo", None);
    let sub = Sub::connect(&a, r#"["login","online","offline"]"#);
    wait_subscribers_known(&a, &[&sub]);
    let pids = a.worker_pids();
    let sub_pid = Owners::snapshot(&pids)
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let victim = pids
        .iter()
        .copied()
        .find(|p| *p != sub_pid)
        .expect("victim");
    // Connections until some uids live only in the victim and some only in the survivor.
    let mut in_victim = Vec::new();
    let mut in_survivor = Vec::new();
    let mut clients = Vec::new();
    for i in 0..60 {
        let uid = format!("s{i}");
        let c = a.login_acked(&uid);
        let owner = Owners::snapshot(&pids).owner(c.tcp());
        if owner == Some(victim) {
            in_victim.push(uid);
        } else {
            in_survivor.push(uid);
        }
        clients.push(c);
        if in_victim.len() >= 3 && in_survivor.len() >= 3 {
            break;
        }
    }
    assert!(!in_victim.is_empty() && !in_survivor.is_empty());
    let all: Vec<&String> = in_victim.iter().chain(&in_survivor).collect();
    let mut online = std::collections::HashSet::new();
    while online.len() < all.len() {
        let v = sub.wait("onlines", LONG, |v| {
            v["event"] == "online"
                && v["uid"]
                    .as_str()
                    .is_some_and(|u| all.iter().any(|a| *a == u))
        });
        online.insert(v["uid"].as_str().unwrap_or_default().to_string());
    }
    signal(victim, libc::SIGKILL);
    let t0 = Instant::now();
    let mut gone = std::collections::HashSet::new();
    while gone.len() < in_victim.len() {
        let v = sub.wait("the victim's uids offline", LOST_BOUND + LONG, |v| {
            v["event"] == "offline"
        });
        let uid = v["uid"].as_str().unwrap_or_default().to_string();
        assert!(in_victim.contains(&uid), "offline for {uid}: {v}");
        assert_eq!(v["lost"], true, "{v}");
        assert!(gone.insert(uid), "two offlines: {v}");
    }
    let took = t0.elapsed();
    eprintln!("kill -9 of a worker to its uids' offline: {took:?}");
    assert!(took <= LOST_BOUND, "{took:?}");
    // The replaced worker repeats no online for the survivor's uids.
    assert!(wait_until(LONG, || {
        let now = a.worker_pids();
        now.len() == 2 && !now.contains(&victim)
    }));
    wait_cluster_up(&a);
    wait_subscribers_known(&a, &[&sub]);
    let again: Vec<Value> = sub
        .drain(Duration::from_millis(800))
        .into_iter()
        .filter(|v| {
            v["uid"]
                .as_str()
                .is_some_and(|u| in_survivor.iter().any(|s| s == u))
        })
        .collect();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn while_redis_is_down_the_host_speaks_for_itself() {
    if !Redis::available() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start_on(port);
    let a = node(&redis.url(), "node-a", None);
    let sub = Sub::connect(&a, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub]);
    redis.kill();
    // Every worker notices at its next heartbeat at the latest.
    let down = wait_until(LONG, || a.workers_cluster_up(false));
    assert!(down, "the workers never noticed Redis was gone");
    // The host's own view, said as such.
    let c = a.login_acked("fallback");
    let v = sub.wait("host-scope online", LONG, |v| v["uid"] == "fallback");
    assert_eq!(v["event"], "online", "{v}");
    assert_eq!(v["scope"], "host", "{v}");
    c.close();
    let v = sub.wait("host-scope offline", LONG, |v| v["uid"] == "fallback");
    assert_eq!(v["event"], "offline", "{v}");
    assert_eq!(v["scope"], "host", "{v}");
    // Redis back: cluster scope again.
    let _redis = Redis::start_on(port);
    let back = wait_until(LONG, || {
        a.log().matches("cluster: connected to Redis").count() >= 2 * a.workers
    });
    assert!(back, "not every worker connected again");
    wait_cluster_up(&a);
    let _c = a.login_acked("back");
    let v = sub.wait("cluster-scope online", LONG, |v| v["uid"] == "back");
    assert_eq!(v["event"], "online", "{v}");
    assert_eq!(v["scope"], "cluster", "{v}");
}

#[test]
fn a_worker_stopped_past_its_alive_key_goes_offline_then_online_again() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let a = node(&redis.url(), "solo", None);
    let sub = Sub::connect(&a, r#"["online","offline"]"#);
    wait_subscribers_known(&a, &[&sub]);
    let pids = a.worker_pids();
    let sub_pid = Owners::snapshot(&pids)
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let sleeper_pid = pids
        .iter()
        .copied()
        .find(|p| *p != sub_pid)
        .expect("the other worker");
    // A uid held only by the worker about to be stopped.
    let mut held = None;
    for i in 0..40 {
        let uid = format!("sleeper{i}");
        let c = a.login_acked(&uid);
        sub.wait("online", LONG, |v| {
            v["uid"] == uid && v["event"] == "online"
        });
        if Owners::snapshot(&pids).owner(c.tcp()) == Some(sleeper_pid) {
            held = Some((uid, c));
            break;
        }
        c.close();
        sub.wait("offline", LONG, |v| {
            v["uid"] == uid && v["event"] == "offline"
        });
    }
    let (uid, _client) = held.expect("no connection landed in the other worker");
    // Stopped longer than its alive key lives: a live member reaps it.
    signal(sleeper_pid, libc::SIGSTOP);
    let v = sub.wait("offline while stopped", LOST_BOUND + LONG, |v| {
        v["uid"] == uid
    });
    assert_eq!(v["event"], "offline", "{v}");
    assert_eq!(v["lost"], true, "{v}");
    // Running again, it notices the missed heartbeats and puts its uids back.
    signal(sleeper_pid, libc::SIGCONT);
    let v = sub.wait("online after it runs again", LONG, |v| v["uid"] == uid);
    assert_eq!(v["event"], "online", "{v}");
    assert!(
        a.log().contains("missed its heartbeats"),
        "no warning in the log"
    );
}

#[test]
fn a_reply_entering_another_node_reaches_its_client() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a", None);
    let b = node(&redis.url(), "node-b", None);
    let sub = Sub::connect(&b, r#"["online","message"]"#);
    wait_subscribers_known(&b, &[&sub]);
    let mut chat = b.login_acked("chatter");
    chat.send_text("hello from b");
    let ev = sub.wait("message", LONG, |v| {
        v["event"] == "message" && v["uid"] == "chatter"
    });
    // In a cluster a `conn` names its node; a backend may answer through any node.
    let conn = ev["conn"].as_str().expect("conn").to_string();
    assert!(conn.starts_with("node-b/"), "{ev}");
    let line = serde_json::json!({"cmd": "reply", "conn": conn, "data": "from a"}).to_string();
    let r = a.text_push(format!("{line}\n").as_bytes());
    assert_eq!(String::from_utf8_lossy(&r), "ok\n");
    assert_eq!(chat.recv_text(REPLY), "from a");
    // The same reply through the node that holds it, as before.
    let line = serde_json::json!({"cmd": "reply", "conn": conn, "data": "from b"}).to_string();
    let r = b.text_push(format!("{line}\n").as_bytes());
    assert_eq!(String::from_utf8_lossy(&r), "ok\n");
    assert_eq!(chat.recv_text(REPLY), "from b");
}
