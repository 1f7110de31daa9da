//! Native TLS (`tls`, `tls_cert`, `tls_key`, `tls_client_ca`): real clients over TLS on every
//! port — a rustls + tungstenite client, Node's `ws` over `wss://`, socket.io-client v4 over
//! `https://` (polling, upgrade, and the relay to the worker owning a session), PHP's
//! `tls://` stream and curl over `https://`, `openssl s_client` — and the refusals: plain
//! clients on TLS ports, TLS clients on plain ports, a handshake that never finishes, a
//! renegotiation, a backend without its client certificate, a start with a mismatched key.
//! A renewed certificate goes live on reload while an old connection keeps its pushes.
//!
//! Certificates are made by each test with `openssl` in its temporary directory; without
//! `openssl` (or `php`, `node`) a test fails under CI and skips otherwise.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn openssl_ready() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    require("openssl (apt install openssl)", ok)
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        show(&out.stderr)
    );
}

/// A test CA and what it signs, in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    /// A CA, a server certificate `srv` (EC P-256, for 127.0.0.1 and localhost) and a client
    /// certificate `client`.
    fn new() -> Pki {
        let dir = TempDir::new();
        let d = dir.path.as_path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=herald-test-ca",
            ],
        );
        let pki = Pki { dir };
        pki.issue("srv", "ec", "serverAuth");
        pki.issue("client", "ec", "clientAuth");
        pki
    }

    /// `NAME.pem` and `NAME.key` signed by the CA; `kind` `ec` or `rsa`.
    fn issue(&self, name: &str, kind: &str, usage: &str) {
        let d = self.dir.path.as_path();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut args = vec!["req", "-newkey"];
        if kind == "ec" {
            args.extend(["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        } else {
            args.push("rsa:2048");
        }
        let subj = format!("/CN={name}");
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(d, &args);
        let ext = format!("{name}.ext");
        std::fs::write(
            d.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
            ),
        )
        .expect("write ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A builder serving `ports` with TLS, with the `srv` certificate.
    fn server(&self, ports: &[&str]) -> Builder {
        let list: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
        Server::builder()
            .set(&format!("tls=[{}]", list.join(",")))
            .set(&format!("tls_cert=\"{}\"", self.p("srv.pem")))
            .set(&format!("tls_key=\"{}\"", self.p("srv.key")))
    }

    /// A rustls client trusting the CA, with the client certificate when `client_cert`.
    fn client_config(&self, client_cert: bool, alpn: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
            roots.add(c.expect("ca cert")).expect("add ca");
        }
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let mut cfg = if client_cert {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(self.path("client.pem"))
                    .expect("client.pem")
                    .map(|c| c.expect("client cert"))
                    .collect();
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).expect("client.key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        } else {
            b.with_no_client_auth()
        };
        if alpn {
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Arc::new(cfg)
    }
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `port` and finishes the handshake (as far as the client sees it).
fn tls_connect(port: u16, cfg: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(REPLY))?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Writes `line` and reads one reply line.
fn tls_line(s: &mut TlsStream, line: &str) -> std::io::Result<String> {
    s.write_all(line.as_bytes())?;
    s.flush()?;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\n") {
        match s.read(&mut b)? {
            0 => break,
            _ => got.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// One HTTP request over TLS with `Connection: close`; the whole response.
fn https(port: u16, cfg: &Arc<ClientConfig>, req: &[u8]) -> String {
    let mut s = tls_connect(port, cfg).expect("https connect");
    s.write_all(req).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket over TLS: rustls below, tungstenite above.
type Wss = tungstenite::WebSocket<TlsStream>;

fn wss_login(port: u16, cfg: &Arc<ClientConfig>, uid: &str) -> Wss {
    let s = tls_connect(port, cfg).expect("wss connect");
    let (mut ws, _) =
        tungstenite::client::client(format!("wss://127.0.0.1:{port}/"), s).expect("wss upgrade");
    ws.send(tungstenite::Message::text(uid)).expect("send uid");
    assert_eq!(
        wss_text(&mut ws),
        format!("login success, your uid is {uid}")
    );
    ws
}

fn wss_text(ws: &mut Wss) -> String {
    loop {
        match ws.read().expect("wss read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sum of a status counter over the workers, from `GET /api/stats` (plain HTTP port).
fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["totals"][key]
        .as_u64()
        .or_else(|| {
            v["workers"]
                .as_array()
                .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        })
        .unwrap_or(0)
}

#[test]
fn wss_text_and_https_pushes_over_tls() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let srv = pki.server(&["ws", "text"]).login_reply().start();
    let cfg = pki.client_config(false, true);
    let mut ws = wss_login(srv.ws, &cfg, "alice");
    // ALPN: http/1.1 on the WebSocket port.
    assert_eq!(
        ws.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    let mut text = tls_connect(srv.text, &cfg).expect("text over TLS");
    assert_eq!(text.conn.alpn_protocol(), None, "no ALPN on the text port");
    for i in 0..3 {
        let line = format!("{{\"uid\":\"alice\",\"n\":{i}}}");
        assert_eq!(tls_line(&mut text, &format!("{line}\n")).unwrap(), "ok\n");
        assert_eq!(wss_text(&mut ws), line);
    }
    // A frame bigger than one TLS record (16 KiB) arrives whole.
    let big = "x".repeat(40_000);
    let line = format!("{{\"uid\":\"alice\",\"big\":\"{big}\"}}");
    assert_eq!(tls_line(&mut text, &format!("{line}\n")).unwrap(), "ok\n");
    assert_eq!(wss_text(&mut ws), line);
    // The plain HTTP port still answers, and counts the handshakes.
    let r = srv.http(&get("/?type=publish&to=alice&content=plain"));
    assert_eq!(r.text(), "ok");
    assert_eq!(wss_text(&mut ws), "plain");
    assert!(stat(&srv, "tls_handshakes") >= 2);
}

#[test]
fn https_publish_and_mutual_tls_on_the_backend_ports() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let srv = pki
        .server(&["ws", "http", "text"])
        .set(&format!("tls_client_ca=\"{}\"", pki.p("ca.pem")))
        .login_reply()
        .start();
    let with_cert = pki.client_config(true, true);
    let without = pki.client_config(false, true);
    // The WebSocket port asks no client certificate.
    let mut ws = wss_login(srv.ws, &without, "bob");
    let r = https(
        srv.http,
        &with_cert,
        &get("/?type=publish&to=bob&content=over-https"),
    );
    assert!(r.ends_with("ok"), "{r}");
    assert_eq!(wss_text(&mut ws), "over-https");
    let mut text = tls_connect(srv.text, &with_cert).expect("text with a client cert");
    assert_eq!(
        tls_line(&mut text, "{\"uid\":\"bob\",\"m\":1}\n").unwrap(),
        "ok\n"
    );
    assert_eq!(wss_text(&mut ws), "{\"uid\":\"bob\",\"m\":1}");
    // Without a client certificate: refused (with TLS 1.3 the client learns it on its first
    // read), and the push never happens.
    for port in [srv.text, srv.http] {
        let refused = match tls_connect(port, &without) {
            Err(_) => true,
            Ok(mut s) => {
                tls_line(&mut s, "{\"uid\":\"bob\",\"m\":2}\n").map_or(true, |l| l.is_empty())
            }
        };
        assert!(
            refused,
            "port {port} served a backend without a certificate"
        );
    }
    assert!(wait_until(REPLY, || stat_via(
        &srv,
        &with_cert,
        "tls_refused"
    ) >= 2));
}

/// A counter read over the HTTP port speaking (mutual) TLS.
fn stat_via(srv: &Server, cfg: &Arc<ClientConfig>, key: &str) -> u64 {
    let r = https(
        srv.http,
        cfg,
        b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["totals"][key].as_u64().unwrap_or(0)
}

#[test]
fn refusals_are_clear_counted_and_bounded() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let srv = pki
        .server(&["ws", "text"])
        .set("auth_timeout=1")
        .login_reply()
        .start();
    // A plain HTTP client on the TLS WebSocket port: a plain 400 that says so.
    let mut c = TcpStream::connect(("127.0.0.1", srv.ws)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (got, _) = read_until_closed(&mut c, &mut Vec::new(), REPLY);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 400") && got.contains("speaks TLS"),
        "{got}"
    );
    // A plain backend on the TLS text port: an error line.
    let mut c = TcpStream::connect(("127.0.0.1", srv.text)).unwrap();
    c.write_all(b"{\"uid\":\"x\"}\n").unwrap();
    let (got, _) = read_until_closed(&mut c, &mut Vec::new(), REPLY);
    assert!(show(&got).contains("speaks TLS"), "{}", show(&got));
    // A TLS client on the plain HTTP port: a handshake_failure alert, not an HTTP answer.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", srv.http)])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let err = show(&out.stderr);
    assert!(err.contains("handshake failure"), "{err}");
    // A truncated ClientHello (a record header, then silence): closed at auth_timeout.
    let mut c = TcpStream::connect(("127.0.0.1", srv.ws)).unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let t = Instant::now();
    let (_, eof) = read_until_closed(&mut c, &mut Vec::new(), Duration::from_secs(10));
    assert!(!matches!(eof, Eof::Open), "a stalled handshake was kept");
    assert!(t.elapsed() < Duration::from_secs(8));
    // Garbage after a record header: rustls refuses at once.
    let mut c = TcpStream::connect(("127.0.0.1", srv.text)).unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let (_, eof) = read_until_closed(&mut c, &mut Vec::new(), REPLY);
    assert!(!matches!(eof, Eof::Open), "a bad ClientHello was kept");
    // Renegotiation (TLS 1.2, openssl's `R` command) is refused: the connection ends.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{}", srv.text),
            "-CAfile",
            &pki.p("ca.pem"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Wait for the handshake's end (s_client prints the session), then ask to renegotiate.
    let deadline = Instant::now() + REPLY;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains("Verify return code") => break,
            _ => {}
        }
    }
    let _ = stdin.write_all(b"R\n");
    let _ = stdin.flush();
    let ended = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    assert!(ended, "renegotiation did not end the connection");
    // The WebSocket port still serves.
    let cfg = pki.client_config(false, false);
    let mut ws = wss_login(srv.ws, &cfg, "carol");
    assert_eq!(
        srv.http(&get("/?type=publish&to=carol&content=still"))
            .text(),
        "ok"
    );
    assert_eq!(wss_text(&mut ws), "still");
    assert!(stat(&srv, "tls_on_plain") >= 1);
    assert!(
        stat(&srv, "tls_refused") >= 5,
        "tls_refused {}",
        stat(&srv, "tls_refused")
    );
}

#[test]
fn start_fails_on_a_missing_or_mismatched_key() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let dir = TempDir::new();
    for (key, want) in [
        (pki.p("client.key"), "does not match"),
        (pki.p("nowhere.key"), "cannot read"),
    ] {
        let ports = free_ports(4);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(["start", "--workers", "1", "--pid-file"])
            .arg(dir.path.join("h.pid"))
            .args(["--ws", &format!("127.0.0.1:{}", ports[0])])
            .args(["--text", &format!("127.0.0.1:{}", ports[1])])
            .args(["--http", &format!("127.0.0.1:{}", ports[2])])
            .args(["--socketio", "off"])
            .args(["--set", "tls=[\"ws\"]"])
            .args(["--set", &format!("tls_cert=\"{}\"", pki.p("srv.pem"))])
            .args(["--set", &format!("tls_key=\"{key}\"")]);
        let out = run_with_limit(&mut cmd, Duration::from_secs(20));
        assert!(!out.status.success(), "started with {key}");
        let err = show(&out.stderr);
        assert!(err.contains(want) && err.contains("tls_"), "{err}");
        // Nothing was forked: no worker ever listened.
        assert!(TcpStream::connect(("127.0.0.1", ports[0])).is_err());
    }
}

/// The leaf certificate a new connection to `port` is shown.
fn leaf(port: u16, cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let s = tls_connect(port, cfg).expect("connect");
    s.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

fn der_of(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("a cert")
        .expect("cert")
        .as_ref()
        .to_vec()
}

#[test]
fn reload_serves_a_renewed_certificate_and_keeps_the_old_connections() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    // The files the server reads, replaced below as a renewal replaces them.
    let cert = pki.path("live.pem");
    let key = pki.path("live.key");
    std::fs::copy(pki.path("srv.pem"), &cert).unwrap();
    std::fs::copy(pki.path("srv.key"), &key).unwrap();
    let mut srv = Server::builder()
        .set("tls=[\"ws\"]")
        .set(&format!("tls_cert=\"{}\"", cert.display()))
        .set(&format!("tls_key=\"{}\"", key.display()))
        .set("drain_timeout=60")
        .login_reply()
        .start();
    let cfg = pki.client_config(false, false);
    assert_eq!(leaf(srv.ws, &cfg), der_of(&pki.path("srv.pem")));
    let mut old = wss_login(srv.ws, &cfg, "dora");
    // Renewal: a new key (RSA this time) and certificate, written over the live files.
    pki.issue("renewed", "rsa", "serverAuth");
    std::fs::copy(pki.path("renewed.pem"), &cert).unwrap();
    std::fs::copy(pki.path("renewed.key"), &key).unwrap();
    let before = srv.worker_pids();
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload -g: {}", show(&out.stderr));
    let renewed = der_of(&pki.path("renewed.pem"));
    assert!(
        wait_until(Duration::from_secs(15), || leaf(srv.ws, &cfg) == renewed),
        "the renewed certificate is not served\n{}",
        srv.log()
    );
    // The old connection (on the draining worker) is still open and still gets pushes (once
    // the new worker has linked to the old one).
    let mut n = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            n += 1;
            srv.http(&get(&format!("/?type=publish&to=dora&content=after-{n}")))
                .text()
                == "ok"
        }),
        "the old connection is not reached\n{}",
        srv.log()
    );
    assert_eq!(wss_text(&mut old), format!("after-{n}"));
    assert!(srv.worker_pids().len() > before.len() || !srv.worker_pids().is_subset(&before));
    // A broken renewal: logged, and the running certificate stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let out = srv.cli(&["reload"], Duration::from_secs(30));
    assert!(out.status.success(), "reload: {}", show(&out.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("keeping the running configuration")),
        "the broken certificate was not reported\n{}",
        srv.log()
    );
    assert_eq!(leaf(srv.ws, &cfg), renewed);
}

/// A `node` process running one of scripts/node's clients, and the lines it prints.
struct NodeProc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl NodeProc {
    fn spawn(args: &[&str], ca: &Path) -> NodeProc {
        let mut child = Command::new("node")
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        NodeProc { child, lines: rx }
    }

    /// Waits until a line starting with each of `words` was seen, in any order.
    fn wait_all(&self, words: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut left: Vec<&str> = words.to_vec();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(l) => left.retain(|w| !l.starts_with(w)),
                Err(_) => panic!("node: no {left:?} line within {limit:?}"),
            }
        }
    }

    /// Waits for a line starting with `word`.
    fn wait_for(&self, word: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(word) => return l,
                Ok(_) => {}
                Err(_) => panic!("node: no `{word}` line within {limit:?}"),
            }
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_ready(package: &str) -> bool {
    require("node (apt install nodejs)", have_program("node"))
        && require(
            "scripts/node/node_modules (npm ci in scripts/node)",
            workspace_root()
                .join(format!("scripts/node/node_modules/{package}/package.json"))
                .exists(),
        )
}

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
fn slow_tls_clients_are_dropped_then_closed_while_a_reader_gets_everything() {
    if !openssl_ready() {
        return;
    }
    const SLOW: usize = 4;
    let pki = Pki::new();
    let srv = pki
        .server(&["ws"])
        .set("max_send_buffer=65536")
        .set("slow_timeout=1")
        .set("client_sndbuf=4096")
        .login_reply()
        .start();
    let cfg = pki.client_config(false, false);
    // Logged in, then never read again.
    let mut slow: Vec<Wss> = (0..SLOW)
        .map(|i| wss_login(srv.ws, &cfg, &format!("slow{i}")))
        .collect();
    let mut reader = wss_login(srv.ws, &cfg, "reader");
    let big = "y".repeat(30_000);
    let body = format!("type=publish&to=&content={big}");
    let t0 = Instant::now();
    let mut n = 0;
    while stat(&srv, "slow_closed") < SLOW as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "slow TLS clients not closed: slow_closed {}, send_fail {}",
            stat(&srv, "slow_closed"),
            stat(&srv, "send_fail")
        );
        assert_eq!(srv.http(&post(&body)).text(), "ok");
        assert_eq!(wss_text(&mut reader), big, "broadcast {n} to the reader");
        n += 1;
    }
    assert!(stat(&srv, "send_fail") > 0);
    // Each slow client, reading what the kernel held, finds its connection ended.
    for (i, ws) in slow.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ws.read().is_ok() {
            assert!(Instant::now() < deadline, "slow client {i} still open");
        }
    }
    // The reader still gets pushes.
    assert_eq!(
        srv.http(&get("/?type=publish&to=reader&content=last"))
            .text(),
        "ok"
    );
    assert_eq!(wss_text(&mut reader), "last");
}

/// A form POST to `/` with `body`, kept alive.
fn post(body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of an HTTP response (after the head).
fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
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
