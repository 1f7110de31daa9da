//! Several Herald nodes on one real `redis-server` (started by each test on a free port): a push
//! entering any node reaches a uid on any node, whole-server questions cover every node, and
//! the faults the README's Cluster section describes (Redis unreachable at start, restarted
//! mid-run, a node killed with `kill -9`) behave as it says.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// A node of 2 workers in the cluster at `url`, named `name`.
fn node(url: &str, name: &str) -> Server {
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set(&format!("cluster=\"{url}\""))
        .set(&format!("node_id={name}"))
        .set("ipc_timeout=2")
        .start();
    srv.wait_mesh();
    srv
}

/// One command on a fresh text connection of `srv`; its reply line.
fn cmd(srv: &Server, line: &str) -> String {
    String::from_utf8_lossy(&srv.text_push(format!("{line}\n").as_bytes())).into_owned()
}

/// Waits until a push from `from` to `uid` answers `ok` (the directory in Redis knows where
/// `uid` is); the client then receives the probe lines, which the caller skips.
fn reachable(from: &Server, uid: &str, limit: Duration) {
    from.push_until_ok(
        format!("{{\"uid\":\"{uid}\",\"probe\":true}}\n").as_bytes(),
        limit,
    );
}

/// The next text message that is not a probe.
fn next_text(ws: &mut Ws) -> String {
    loop {
        let t = ws.recv_text(REPLY);
        if !t.contains("\"probe\":true") {
            return t;
        }
    }
}

#[test]
fn a_push_entering_one_node_reaches_a_uid_on_another() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let mut a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let mut bob = b.login_acked("bob");
    let mut alice = a.login_acked("alice");
    reachable(&a, "bob", Duration::from_secs(10));
    reachable(&b, "alice", Duration::from_secs(10));

    // The seed's line, entering node A, for a uid on node B: delivered as sent, `ok`.
    let line = r#"{"uid":"bob","percent":"88%"}"#;
    assert_eq!(cmd(&a, line), "ok\n");
    assert_eq!(next_text(&mut bob), line);
    // Nobody holds this uid anywhere: `fail`.
    assert_eq!(cmd(&a, r#"{"uid":"nobody","x":1}"#), "fail\n");
    // Whole-cluster questions.
    assert_eq!(cmd(&a, r#"{"cmd":"online","uid":"bob"}"#), "1\n");
    assert_eq!(cmd(&b, r#"{"cmd":"online","uid":"alice"}"#), "1\n");
    let count = cmd(&a, r#"{"cmd":"count"}"#);
    let v: serde_json::Value = serde_json::from_str(&count).expect("count is JSON");
    assert!(v["uids"].as_u64() >= Some(2), "{count}");
    let uids = cmd(&b, r#"{"cmd":"uids"}"#);
    assert!(
        uids.contains("\"alice\"") && uids.contains("\"bob\""),
        "{uids}"
    );
    // A broadcast from A reaches both nodes.
    assert_eq!(cmd(&a, r#"{"cmd":"all","data":"to everyone"}"#), "ok\n");
    assert_eq!(next_text(&mut bob), "to everyone");
    assert_eq!(next_text(&mut alice), "to everyone");
    // Group membership belongs to the uid across the cluster: joined on A, pushed from B.
    assert_eq!(cmd(&a, r#"{"cmd":"join","uid":"bob","group":"g"}"#), "ok\n");
    assert_eq!(
        cmd(&b, r#"{"cmd":"group","group":"g","data":"to the group"}"#),
        "ok\n"
    );
    assert_eq!(next_text(&mut bob), "to the group");
    // The seed's HTTP publish on A for bob, and the JSON API's delivery count.
    let r = a.http(&get("/?type=publish&to=bob&content=via+http"));
    assert_eq!(r.text(), "ok");
    assert_eq!(next_text(&mut bob), "via http");
    let body = r#"{"to":["bob","alice"],"data":"both"}"#;
    let req = format!(
        "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = a.http(req.as_bytes());
    assert_eq!(r.text().trim(), r#"{"delivered":2}"#);
    assert_eq!(next_text(&mut bob), "both");
    assert_eq!(next_text(&mut alice), "both");
    // `status` (and the API's rows) list the cluster's live nodes.
    let listed = wait_until(Duration::from_secs(10), || {
        let r = a.http(&get("/api/stats"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["workers"][0]["cluster_nodes"] == serde_json::json!(["node-a", "node-b"])
            && v["workers"][0]["cluster_up"] == serde_json::json!(1)
    });
    assert!(listed, "status does not list both nodes");
    let out = a.cli(&["status"], Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("this node:      node-a\n"), "{text}");
    assert!(
        text.contains("redis:          2 of 2 workers connected\n"),
        "{text}"
    );
    assert!(
        text.contains("live nodes:     2 (node-a, node-b)\n"),
        "{text}"
    );
}

/// A start that cannot join says why in one clear line, keeps serving its own clients, and
/// never writes the Redis password to the log.
fn refused(url: &str, name: &str, why: &str) {
    let srv = Server::builder()
        .workers(1)
        .login_reply()
        .set(&format!("cluster=\"{url}\""))
        .set(&format!("node_id={name}"))
        .start();
    let said = wait_until(Duration::from_secs(10), || srv.log().contains(why));
    let log = srv.log();
    assert!(said, "no `{why}` in the log:\n{log}");
    assert!(
        !log.contains("s3cret"),
        "the password is in the log:\n{log}"
    );
    let mut c = srv.login_acked("here");
    assert_eq!(cmd(&srv, r#"{"uid":"here","n":1}"#), "ok\n");
    assert_eq!(c.recv_text(REPLY), r#"{"uid":"here","n":1}"#);
}

#[test]
fn wrong_password_not_redis_and_a_taken_node_id_are_clear_errors() {
    if !Redis::available() {
        return;
    }
    let locked = Redis::start_with(&["--requirepass", "right"]);
    refused(
        &format!("redis://:s3cret@127.0.0.1:{}/0", locked.port),
        "node-pw",
        "cluster: cannot reach Redis at redis://…@127.0.0.1",
    );
    // Something that is not Redis: another Herald's HTTP port.
    let other = Server::start();
    refused(
        &format!("redis://127.0.0.1:{}/0", other.http),
        "node-http",
        "cluster: cannot reach Redis",
    );
    // Two running nodes with one name: the second is refused, the first keeps it.
    let redis = Redis::start();
    let first = node(&redis.url(), "twin");
    refused(
        &redis.url(),
        "twin",
        "node_id twin is already used by another running node",
    );
    let _c = first.login_acked("still-first");
    reachable(&first, "still-first", Duration::from_secs(5));
}

#[test]
fn redis_unreachable_at_start_then_up_and_restarted() {
    if !Redis::available() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    // No Redis yet: both nodes start and serve their own clients.
    let a = Server::builder()
        .workers(2)
        .login_reply()
        .set(&format!("cluster=\"{url}\""))
        .set("node_id=node-a")
        .start();
    let b = Server::builder()
        .workers(2)
        .login_reply()
        .set(&format!("cluster=\"{url}\""))
        .set("node_id=node-b")
        .start();
    let mut local = a.login_acked("local");
    a.push_until_ok(b"{\"uid\":\"local\",\"n\":1}\n", Duration::from_secs(10));
    assert_eq!(local.recv_text(REPLY), r#"{"uid":"local","n":1}"#);
    let metrics = a.http(&get("/metrics")).text();
    assert!(
        metrics.contains("herald_cluster_up{node=\"node-a\",worker=\"0\"} 0"),
        "{metrics}"
    );
    assert!(
        a.log().contains("cluster: cannot reach Redis"),
        "one clear line in the log"
    );
    // Alive, not ready: a load balancer sends it no traffic meant for the whole cluster.
    assert_eq!(a.http(&get("/healthz")).status, 200);
    assert_eq!(a.http(&get("/readyz")).status, 503);
    // Redis comes up: cross-node pushes work within the retry back-off.
    let mut redis = Redis::start_on(port);
    let mut bob = b.login_acked("bob");
    let t0 = Instant::now();
    reachable(&a, "bob", Duration::from_secs(15));
    eprintln!("cluster formed {:?} after Redis came up", t0.elapsed());
    // Each worker retries on its own back-off (at most 5 s), and a probe asks one of them.
    assert!(wait_until(Duration::from_secs(20), || a
        .http(&get("/readyz"))
        .status
        == 200));
    // Every worker reaches Redis again (one still in its back-off, or not yet aware of the
    // restart, would answer `fail` for a push it could not send).
    assert!(wait_until(Duration::from_secs(20), || a
        .workers_cluster_up(true)
        && b.workers_cluster_up(true)));
    a.push_until_ok(
        br#"{"uid":"bob","after":"start"}
"#,
        Duration::from_secs(10),
    );
    assert_eq!(next_text(&mut bob), r#"{"uid":"bob","after":"start"}"#);

    // Restarted mid-run (its data lost): every node reconnects and tells it its uids again.
    redis.kill();
    let _redis = Redis::start_on(port);
    let t0 = Instant::now();
    reachable(&a, "bob", Duration::from_secs(15));
    let took = t0.elapsed();
    eprintln!("cross-node pushes back {took:?} after a Redis restart");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Every worker reaches Redis again (one still in its back-off, or not yet aware of the
    // restart, would answer `fail` for a push it could not send).
    assert!(wait_until(Duration::from_secs(20), || a
        .workers_cluster_up(true)
        && b.workers_cluster_up(true)));
    a.push_until_ok(
        br#"{"uid":"bob","after":"restart"}
"#,
        Duration::from_secs(10),
    );
    assert_eq!(next_text(&mut bob), r#"{"uid":"bob","after":"restart"}"#);
}

#[test]
fn a_node_killed_is_forgotten_within_fifteen_seconds() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let _bob = b.login_acked("bob");
    let mut alice = a.login_acked("alice");
    reachable(&a, "bob", Duration::from_secs(10));
    for pid in b.worker_pids().into_iter().chain([b.master_pid()]) {
        signal(pid, libc::SIGKILL);
    }
    let t0 = Instant::now();
    let gone = wait_until(Duration::from_secs(20), || {
        cmd(&a, r#"{"cmd":"online","uid":"bob"}"#) == "0\n"
            && cmd(&a, r#"{"uid":"bob","after":"kill"}"#) == "fail\n"
    });
    let took = t0.elapsed();
    eprintln!("a killed node's uid was offline everywhere after {took:?}");
    assert!(gone && took <= Duration::from_secs(15), "{took:?}");
    // Node A's own clients were never disturbed.
    assert_eq!(cmd(&a, r#"{"uid":"alice","still":"here"}"#), "ok\n");
    assert_eq!(next_text(&mut alice), r#"{"uid":"alice","still":"here"}"#);
}

#[test]
fn the_seeds_php_push_on_one_node_and_groups_found_by_a_later_login_on_another() {
    if !Redis::available() || !require("php", have_program("php")) {
        return;
    }
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let mut uid1 = b.login_acked("uid1");
    reachable(&a, "uid1", Duration::from_secs(10));
    // The seed's backend script, unchanged, against node A's text port.
    let php = std::process::Command::new("php")
        .arg(workspace_root().join("scripts/php/push.php"))
        .args(["127.0.0.1", &a.text.to_string(), "uid1"])
        .output()
        .expect("run php");
    assert!(php.status.success(), "php: {}", show(&php.stderr));
    assert_eq!(show(&php.stdout), show(b"ok\n"));
    assert_eq!(next_text(&mut uid1), r#"{"uid":"uid1","percent":"88%"}"#);
    // Joined on A while online on B; a node started later finds the membership at login.
    assert_eq!(
        cmd(&a, r#"{"cmd":"join","uid":"carol","group":"late"}"#),
        "ok\n"
    );
    let c = node(&redis.url(), "node-c");
    let mut carol = c.login_acked("carol");
    reachable(&a, "carol", Duration::from_secs(10));
    let got = wait_until(Duration::from_secs(10), || {
        cmd(&a, r#"{"cmd":"group","group":"late","data":"late news"}"#) == "ok\n"
    });
    assert!(got, "the group never reached carol on node C");
    assert_eq!(next_text(&mut carol), "late news");
}

#[test]
fn nodes_reach_redis_over_tls() {
    if !Redis::available() || !common::tls::openssl_ready() {
        return;
    }
    // A CA, and a certificate for 127.0.0.1 that it signs.
    let pki = common::tls::Pki::new();
    pki.issue("redis", "rsa", "serverAuth");
    let port = free_port();
    let path = |f: &str| pki.p(f);
    let _redis = Redis::start_tls(
        port,
        &path("redis.pem"),
        &path("redis.key"),
        &path("ca.pem"),
    );
    let url = format!("rediss://127.0.0.1:{port}/0");
    let tls_node = |name: &str| {
        let srv = Server::builder()
            .workers(2)
            .login_reply()
            .set(&format!("cluster=\"{url}\""))
            .set(&format!("cluster_ca=\"{}\"", path("ca.pem")))
            .set(&format!("node_id={name}"))
            .start();
        srv.wait_mesh();
        srv
    };
    let a = tls_node("tls-a");
    let b = tls_node("tls-b");
    let mut bob = b.login_acked("bob");
    reachable(&a, "bob", Duration::from_secs(15));
    assert_eq!(cmd(&a, r#"{"uid":"bob","over":"tls"}"#), "ok\n");
    assert_eq!(next_text(&mut bob), r#"{"uid":"bob","over":"tls"}"#);
}

/// `POST target` with a JSON body.
fn post_json(target: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn questions_groups_stats_and_kicks_cover_every_node() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let mut bob = b.login_acked("bob");
    let mut carol = b.login_acked("carol");
    let _alice = a.login_acked("alice");
    reachable(&a, "bob", Duration::from_secs(10));
    reachable(&a, "carol", Duration::from_secs(10));
    reachable(&b, "alice", Duration::from_secs(10));
    // A group joined on B is seen from A, by the text port and the API.
    assert_eq!(cmd(&b, r#"{"cmd":"join","uid":"bob","group":"g"}"#), "ok\n");
    let groups: serde_json::Value =
        serde_json::from_str(&cmd(&a, r#"{"cmd":"groups"}"#)).expect("groups is JSON");
    assert_eq!(groups["g"], 1, "{groups}");
    let r = a.http(&get("/api/groups"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api groups");
    assert_eq!(v["groups"]["g"], 1, "{v}");
    // Online and uids through the API of the node that holds neither bob nor carol.
    let r = a.http(&get("/api/online/bob"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api online");
    assert_eq!(v["online"], true, "{v}");
    assert_eq!(v["connections"], 1, "{v}");
    let r = a.http(&get("/api/uids"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api uids");
    assert_eq!(v["count"], 3, "{v}");
    for uid in ["alice", "bob", "carol"] {
        assert!(
            v["uids"]
                .as_array()
                .is_some_and(|l| l.iter().any(|u| u == uid)),
            "{uid} missing from {v}"
        );
    }
    let r = a.http(&get("/api/uids?group=g"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api uids of g");
    assert_eq!(v["uids"], serde_json::json!(["bob"]), "{v}");
    // Figures: the API's totals and `/metrics` count every node's workers, and each sample
    // names its node (worker numbers repeat from node to node).
    let r = a.http(&get("/api/stats"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api stats");
    assert_eq!(v["totals"]["logged_in"], 3, "{v}");
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(4), "{v}");
    let metrics = a.http(&get("/metrics")).text();
    let mut series = std::collections::HashSet::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let key = line.rsplit_once(' ').map_or(line, |(k, _)| k);
        assert!(series.insert(key.to_string()), "{key} twice in\n{metrics}");
    }
    for node in ["node-a", "node-b"] {
        assert!(
            metrics.contains(&format!("herald_uids{{node=\"{node}\",worker=\"0\"}}")),
            "{metrics}"
        );
    }
    // A kick entering A closes bob's connection on B, after the parting words.
    assert_eq!(
        cmd(&a, r#"{"cmd":"kick","uid":"bob","data":"bye"}"#),
        "ok\n"
    );
    assert_eq!(next_text(&mut bob), "bye");
    assert!(
        bob.closed_within(REPLY),
        "bob still connected after a kick from A"
    );
    // The same through A's API for carol.
    let r = a.http(&post_json("/api/kick/carol", r#"{"data":"later"}"#));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("api kick");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["connections"], 1, "{v}");
    assert_eq!(next_text(&mut carol), "later");
    assert!(
        carol.closed_within(REPLY),
        "carol still connected after a kick from A"
    );
    let gone = wait_until(Duration::from_secs(10), || {
        cmd(&a, r#"{"cmd":"online","uid":"bob"}"#) == "0\n"
    });
    assert!(gone, "bob still online after the kick");
}
