//! Native TLS (`tls`, `tls_cert`, `tls_key`, `tls_client_ca`) with a rustls + tungstenite
//! client and `openssl s_client`: `wss://`, `tls://` and `https://` pushes; the refusals (plain
//! clients on TLS ports, TLS clients on plain ports, a handshake that never finishes, a bad
//! ClientHello, a renegotiation, a backend without its client certificate, a start with a
//! missing or mismatched key); slow TLS consumers; a renewed certificate going live on reload
//! while an old connection keeps its pushes. The real runtimes (Node, socket.io-client, PHP)
//! are in `tls_interop.rs`; the helpers in `common/tls.rs`.
//!
//! Certificates are made by each test with `openssl` in its temporary directory; without
//! `openssl` (or `php`, `node`) a test fails under CI and skips otherwise.

mod common;

use common::tls::*;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // A request that is not a WebSocket upgrade is refused over TLS as over TCP.
    let r = https(srv.ws, &cfg, &get("/"));
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
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
    let rx = lines_of(stdout);
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
        wait_until(Duration::from_secs(15), || try_leaf(srv.ws, &cfg)
            .is_ok_and(|l| l == renewed)),
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

/// Limits over TLS: a connection over `max_connections_per_ip` or `max_connections` finishes
/// its handshake and is told why in words it can read (429, 503, an error line on the text
/// port), where a plain refusal before the handshake would read as a protocol error; the
/// connections within the limits stay served.
#[test]
fn limit_refusals_are_readable_over_tls() {
    if !openssl_ready() {
        return;
    }
    let pki = Pki::new();
    let cfg = pki.client_config(false, false);
    let srv = pki
        .server(&["ws", "text"])
        .set("max_connections_per_ip=2")
        .login_reply()
        .start();
    // From an address of their own: the harness's own probes (from 127.0.0.1) may still be
    // counted when the test starts.
    let from = |port: u16| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let here: std::net::SocketAddr = ([127, 0, 0, 3], 0).into();
        sock.bind(&here.into()).expect("bind 127.0.0.3");
        let there: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        sock.connect(&there.into()).expect("connect");
        tls_over(sock.into(), &cfg).expect("tls")
    };
    let mut a = wss_login_over(from(srv.ws), srv.ws, "lim-a");
    let _b = wss_login_over(from(srv.ws), srv.ws, "lim-b");
    let mut third = from(srv.ws);
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut third, &mut out);
    let got = String::from_utf8_lossy(&out).into_owned();
    assert!(
        got.starts_with("HTTP/1.1 429") && got.contains("too many connections from this address"),
        "{got}"
    );
    let mut t = from(srv.text);
    let line = tls_line(&mut t, "{\"uid\":\"lim-a\"}\n").expect("a line");
    assert!(line.contains("too many connections"), "{line}");
    // The two within the limit are still served.
    // (From another address: this one is at its limit on every port.)
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let here: std::net::SocketAddr = ([127, 0, 0, 2], 0).into();
    sock.bind(&here.into()).expect("bind 127.0.0.2");
    let there: std::net::SocketAddr = ([127, 0, 0, 1], srv.http).into();
    sock.connect(&there.into()).expect("connect");
    let mut ok: TcpStream = sock.into();
    ok.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 31\r\nConnection: close\r\n\r\ntype=publish&to=lim-a&content=x")
        .expect("publish");
    assert_eq!(wss_text(&mut a), "x");
    let srv2 = pki
        .server(&["ws"])
        .set("max_connections=1")
        .login_reply()
        .start();
    let _c = wss_login(srv2.ws, &cfg, "lim-c");
    let got = https(
        srv2.ws,
        &cfg,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        got.starts_with("HTTP/1.1 503") && got.contains("too many connections"),
        "{got}"
    );
}
