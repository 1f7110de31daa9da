//! Native TLS with the seeds' real runtimes: Node's `ws` over `wss://` and socket.io-client v4
//! over `https://` (polling, the upgrade to WebSocket, and requests relayed to the worker owning
//! their session) with the test CA in `NODE_EXTRA_CA_CERTS`, PHP's `tls://` stream push and
//! the seed's curl publish over `https://`. Without `openssl`, `node` (and `npm ci` in
//! scripts/node) or `php` with php-curl, a test fails under CI and skips otherwise.

mod common;

use common::tls::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn node_ws_client_over_wss() {
    if !openssl_ready() || !node_ready("ws") {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server(&["ws"]).login_reply().start();
    let node = NodeProc::spawn(
        &[
            &script("scripts/node/client.js"),
            &format!("wss://localhost:{}", srv.ws),
            "erin",
        ],
        &pki.path("ca.pem"),
    );
    node.wait_for("open", Duration::from_secs(20));
    node.wait_for("login success", REPLY);
    assert_eq!(
        srv.text_push(b"{\"uid\":\"erin\",\"percent\":\"88%\"}\n"),
        b"ok\n"
    );
    node.wait_for("{\"uid\":\"erin\",\"percent\":\"88%\"}", REPLY);
}

#[test]
fn socketio_v4_over_https_polling_and_upgrade_across_workers() {
    if !openssl_ready() || !node_ready("socket.io-client-v4") {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server(&["socketio"]).workers(2).socketio().start();
    srv.wait_mesh();
    let url = format!("https://localhost:{}", srv.socketio);
    let ca = pki.path("ca.pem");
    let sio = |transports: &str, uid: &str| {
        NodeProc::spawn(
            &[
                &script("scripts/node/sio-client.js"),
                "v4",
                transports,
                &url,
                uid,
                "0",
                "60000",
            ],
            &ca,
        )
    };
    // Default transports: polling, then the upgrade to WebSocket (both over TLS).
    let up = sio("default", "501");
    up.wait_all(&["connect", "upgrade websocket"], Duration::from_secs(20));
    // Polling only: every request may land on either worker; those reaching the worker not
    // owning the session are relayed to it.
    let poll = sio("polling", "502");
    poll.wait_for("connect", Duration::from_secs(20));
    for (uid, who) in [("501", &up), ("502", &poll)] {
        let mut delivered = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !delivered && Instant::now() < deadline {
            let r = srv.http(&get(&format!("/?type=publish&to={uid}&content=hi-{uid}")));
            delivered = r.text() == "ok";
            if !delivered {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(delivered, "uid {uid} never online\n{}", srv.log());
        who.wait_for(&format!("new_msg hi-{uid}"), REPLY);
    }
    // A few more round trips for the polling client: each is a new request.
    for i in 0..5 {
        let r = srv.http(&get(&format!("/?type=publish&to=502&content=again-{i}")));
        assert_eq!(r.text(), "ok");
        poll.wait_for(&format!("new_msg again-{i}"), REPLY);
    }
    eprintln!(
        "relayed {} TLS socket.io connections, handed off {}",
        stat(&srv, "tls_relayed"),
        stat(&srv, "handed_off")
    );
}

#[test]
fn php_tls_push_and_curl_https_publish() {
    if !openssl_ready() || !require("php (php-cli)", have_program("php")) {
        return;
    }
    let has_curl = Command::new("php")
        .args(["-r", "exit(function_exists('curl_init') ? 0 : 1);"])
        .status()
        .is_ok_and(|s| s.success());
    if !require("php-curl", has_curl) {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server(&["text", "http"]).login_reply().start();
    let mut c = srv.login_acked("uid1");
    let port = srv.text.to_string();
    let mut cmd = Command::new("php");
    cmd.arg("-d")
        .arg(format!("openssl.cafile={}", pki.p("ca.pem")))
        .arg(script("scripts/php/push.php"))
        .args(["localhost", &port, "uid1"])
        .env("HERALD_SCHEME", "tls");
    let out = run_with_limit(&mut cmd, Duration::from_secs(20));
    assert!(out.status.success(), "php: {}", show(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"uid1\",\"percent\":\"88%\"}");
    let mut cmd = Command::new("php");
    cmd.arg("-d")
        .arg(format!("curl.cainfo={}", pki.p("ca.pem")))
        .arg(script("scripts/php/publish.php"))
        .args([
            &format!("https://localhost:{}/", srv.http),
            "uid1",
            "via-curl",
        ]);
    let out = run_with_limit(&mut cmd, Duration::from_secs(20));
    assert!(out.status.success(), "php curl: {}", show(&out.stderr));
    assert!(show(&out.stdout).contains("ok"), "{}", show(&out.stdout));
    assert_eq!(c.recv_text(REPLY), "via-curl");
}

#[test]
fn socketio_requests_over_tls_reach_the_owning_worker_through_the_relay() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server(&["socketio"]).workers(2).socketio().start();
    srv.wait_mesh();
    let cfg = pki.client_config(false, true);
    let port = srv.socketio;
    let req = |method: &str, query: &str, body: &str| {
        format!(
            "{method} /socket.io/?EIO=4&transport=polling{query} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let open = https(port, &cfg, &req("GET", "", ""));
    let body = body_of(&open);
    let sid = body
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {open}"))
        .to_string();
    let q = format!("&sid={sid}");
    assert_eq!(body_of(&https(port, &cfg, &req("POST", &q, "40"))), "ok");
    // Each request is a new TLS connection, taken by either worker: those reaching the worker
    // that does not own the session are relayed to it, and answered all the same.
    let mut n = 0;
    while stat(&srv, "tls_relayed") < 2 {
        n += 1;
        assert!(n <= 40, "no request was relayed in 40");
        let r = https(port, &cfg, &req("POST", &q, "3"));
        assert_eq!(body_of(&r), "ok", "request {n}: {r}");
    }
    // The connect answer waits for the next poll, wherever it lands.
    let r = https(port, &cfg, &req("GET", &q, ""));
    assert!(body_of(&r).starts_with("40{\"sid\":"), "{r}");
}
