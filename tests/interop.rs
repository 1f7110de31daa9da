//! Interop with the seeds' real runtimes (issue 2, "Tests"): `php` running
//! `scripts/php/push.php` (the seed's `stream_socket_client` / `fwrite` / `fread` calls) and
//! `scripts/php/publish.php` (seed 004's curl POST), and `node` running
//! `scripts/node/client.js` (the seed's browser `WebSocket` calls, with the `ws` package).
//!
//! When `php`, php-curl, `node` or `scripts/node/node_modules` are missing, these tests fail
//! under CI (env `CI` set: `.ci/run` installs them) and print a skip note otherwise.
//!
//! Synchronisation: the Rust-side WebSocket clients use `login_reply=true` and wait for the
//! reply before PHP pushes, so the single PHP run must print `ok`. The Node client prints
//! `open` after sending its uid; the server's login reply (the next line it prints) proves
//! the login is registered.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PHP_LIMIT: Duration = Duration::from_secs(20);

fn php_ready() -> bool {
    require("php (php-cli)", have_program("php"))
}

fn php_curl_ready() -> bool {
    if !php_ready() {
        return false;
    }
    let has_curl = Command::new("php")
        .args(["-r", "exit(function_exists('curl_init') ? 0 : 1);"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    require("php-curl", has_curl)
}

fn run_php(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("php");
    cmd.args(args);
    run_with_limit(&mut cmd, PHP_LIMIT)
}

#[test]
fn php_push_script_prints_ok_and_client_gets_the_line() {
    if !php_ready() {
        return;
    }
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("uid1");
    let port = srv.text.to_string();
    let out = run_php(&[&script("scripts/php/push.php"), "127.0.0.1", &port, "uid1"]);
    assert!(out.status.success(), "php failed: {}", show(&out.stderr));
    assert_eq!(show(&out.stdout), show(b"ok\n"));
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"uid1\",\"percent\":\"88%\"}");

    // Offline uid, configured through the environment this time.
    let mut cmd = Command::new("php");
    cmd.arg(script("scripts/php/push.php"))
        .env("HERALD_TEXT_PORT", &port)
        .env("HERALD_UID", "nobody");
    let out = run_with_limit(&mut cmd, PHP_LIMIT);
    assert_eq!(show(&out.stdout), show(b"fail\n"));
}

#[test]
fn php_publish_script_seed_multipart_prints_ok() {
    if !php_curl_ready() {
        return;
    }
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    let url = format!("http://127.0.0.1:{}/", srv.http);
    // Exactly the seed's call: an array in CURLOPT_POSTFIELDS (multipart/form-data).
    let out = run_php(&[
        &script("scripts/php/publish.php"),
        &url,
        "123",
        "数据 & <b>",
    ]);
    assert!(out.status.success(), "php failed: {}", show(&out.stderr));
    assert_eq!(show(&out.stdout), show(b"'ok'"));
    assert_eq!(c.recv_text(REPLY), "数据 &amp; &lt;b&gt;");
}

#[test]
fn php_publish_script_urlencoded_ok_offline_and_broadcast() {
    if !php_curl_ready() {
        return;
    }
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    let url = format!("http://127.0.0.1:{}/", srv.http);
    let publish = script("scripts/php/publish.php");
    let out = run_php(&[&publish, "--urlencoded", &url, "123", "it's \"here\""]);
    assert!(out.status.success(), "php failed: {}", show(&out.stderr));
    assert_eq!(show(&out.stdout), show(b"'ok'"));
    assert_eq!(c.recv_text(REPLY), "it&#039;s &quot;here&quot;");

    let out = run_php(&[&publish, "--urlencoded", &url, "999", "x"]);
    assert_eq!(show(&out.stdout), show(b"'offline'"));

    // Empty `to`: everyone.
    let out = run_php(&[&publish, "--urlencoded", &url, "", "to all"]);
    assert_eq!(show(&out.stdout), show(b"'ok'"));
    assert_eq!(c.recv_text(REPLY), "to all");
}

/// A running `node client.js`, its stdout lines delivered through a channel.
struct NodeClient {
    _group: Group,
    lines: mpsc::Receiver<String>,
}

impl NodeClient {
    fn spawn(url: &str, uid: &str) -> NodeClient {
        let mut cmd = Command::new("node");
        cmd.arg(script("scripts/node/client.js"))
            .arg(url)
            .arg(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut group = Group::spawn(&mut cmd).expect("spawn node");
        let stdout = group.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeClient {
            _group: group,
            lines,
        }
    }

    fn next_line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("node client printed nothing within {limit:?}: {e}"))
    }
}

fn node_ready() -> bool {
    require("node", have_program("node"))
        && require(
            "scripts/node/node_modules/ws (npm ci in scripts/node)",
            workspace_root()
                .join("scripts/node/node_modules/ws/package.json")
                .exists(),
        )
}

#[test]
fn node_client_receives_pushes() {
    if !node_ready() {
        return;
    }
    let srv = Server::builder().login_reply().start();
    let node = NodeClient::spawn(&format!("ws://127.0.0.1:{}", srv.ws), "uid1");
    // Node's start-up can be slow on a busy machine: a generous first deadline.
    assert_eq!(node.next_line(Duration::from_secs(20)), "open");
    assert_eq!(
        node.next_line(REPLY),
        "login success, your uid is uid1",
        "login reply seen by the node client"
    );
    assert_eq!(
        srv.text_push(b"{\"uid\":\"uid1\",\"percent\":\"88%\"}\n"),
        b"ok\n"
    );
    assert_eq!(
        node.next_line(REPLY),
        "{\"uid\":\"uid1\",\"percent\":\"88%\"}"
    );
    let r = srv.http(&get("/?type=publish&to=uid1&content=%3Chi%3E"));
    assert_eq!(r.text(), "ok");
    assert_eq!(node.next_line(REPLY), "&lt;hi&gt;");
}

#[test]
fn node_client_default_config_seed_flow() {
    // Default configuration (no login reply): push until the server has registered the login.
    if !node_ready() {
        return;
    }
    let srv = Server::start();
    let node = NodeClient::spawn(&format!("ws://127.0.0.1:{}", srv.ws), "uid1");
    assert_eq!(node.next_line(Duration::from_secs(20)), "open");
    let start = Instant::now();
    srv.push_until_ok(b"{\"uid\":\"uid1\",\"percent\":\"88%\"}\n", REPLY);
    assert_eq!(
        node.next_line(REPLY),
        "{\"uid\":\"uid1\",\"percent\":\"88%\"}",
        "first line after open (pushed after {:?})",
        start.elapsed()
    );
}
