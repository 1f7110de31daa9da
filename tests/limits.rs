//! Resource limits, end to end with real processes and sockets:
//!
//! * running out of file descriptors: a worker at its open-file limit must neither spin on a
//!   listener it cannot accept from nor stop serving once descriptors free up;
//! * long lists: a push naming up to `max_targets` uids is answered at once without holding
//!   up another backend, and one naming more is refused before its lists are read;
//! * slow requests: a request trickled a byte at a time is cut at `header_timeout`;
//! * a descriptor reserve: clients filling a worker's open files leave room for backends, and
//!   are refused with 503 rather than left hanging in the accept queue;
//! * slow consumers: what the kernel holds for a client that does not read is bounded
//!   (`client_sndbuf`) and counted against `max_send_buffer`, and a slow client is reset, which
//!   frees it at once.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is index 0, utime 11, stime 12.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn emfile_neither_spins_nor_wedges() {
    // 64 descriptors: a handful for listeners, the mesh, logs and control; the rest for
    // connections. Backends may use the whole of it, the reserve included.
    let server = Server::builder().nofile(64).login_reply().start();
    let worker = *server.worker_pids().iter().next().expect("a worker");
    // Hold more connections than the worker can accept.
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", server.text)) {
            held.push(s);
        }
    }
    let log_says_full = wait_until(Duration::from_secs(5), || {
        server.log().contains("refusing new connections")
    });
    assert!(log_says_full, "worker never hit EMFILE:\n{}", server.log());
    // Those it could not take were told so, at once, rather than left in the accept queue.
    let refused = |held: &[TcpStream]| {
        held.iter()
            .filter(|s| {
                s.set_nonblocking(true).ok();
                let mut buf = [0u8; 256];
                matches!((&**s).read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"{\"error\":"))
            })
            .count()
    };
    let mut told = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            told += refused(&held);
            told >= 30
        }),
        "{told} of 100 connections were told the server is out of descriptors; worker fds {}",
        std::fs::read_dir(format!("/proc/{worker}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    );
    // Out of descriptors, the worker must idle, not spin: over one second it may use a few
    // ticks, nowhere near a busy loop's ~100.
    let before = cpu_ticks(worker);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(worker) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        (used as f64) < 30.0 * elapsed,
        "worker used {used} ticks in {elapsed:.2}s while out of descriptors"
    );
    // Free the descriptors: the worker serves again, with the right bytes (once it has read
    // the end of the held connections and closed them: until then a new client may still be
    // refused for want of descriptors).
    drop(held);
    let fds = || {
        std::fs::read_dir(format!("/proc/{worker}/fd"))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    };
    assert!(
        wait_until(Duration::from_secs(5), || fds() < 32),
        "the worker kept {} descriptors after its clients left",
        fds()
    );
    let mut c = server.login_acked("after-emfile");
    server.push_until_ok(
        b"{\"uid\":\"after-emfile\",\"n\":1}\n",
        Duration::from_secs(5),
    );
    assert_eq!(
        c.try_recv_text(Duration::from_secs(5)).as_deref(),
        Some(r#"{"uid":"after-emfile","n":1}"#)
    );
}

#[test]
fn workers_drop_privileges_after_binding() {
    // Only root can switch users; elsewhere there is nothing to check.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not running as root");
        return;
    }
    let server = Server::builder()
        .workers(2)
        .set("user=\"nobody\"")
        .login_reply()
        .start();
    for pid in server.worker_pids() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert!(
            !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
            "worker {pid} still has root: {uid_line}"
        );
    }
    // The master keeps root (to restart workers on privileged ports); workers serve.
    let mut c = server.login_acked("unprivileged");
    assert_eq!(server.text_push(b"{\"uid\":\"unprivileged\"}\n"), b"ok\n");
    assert_eq!(
        c.try_recv_text(Duration::from_secs(5)).as_deref(),
        Some(r#"{"uid":"unprivileged"}"#)
    );
}

/// The worker's environment entry `GLIBC_TUNABLES`, if any.
fn worker_tunables(server: &Server) -> Vec<String> {
    server
        .worker_pids()
        .into_iter()
        .map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|&b| b == 0)
                .filter_map(|kv| kv.strip_prefix(b"GLIBC_TUNABLES="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .next()
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn workers_run_without_the_allocator_thread_cache() {
    // Its cached chunks would pin heap pages after a peak (see master/src/spawn.rs).
    let server = Server::builder().workers(2).start();
    let seen = worker_tunables(&server);
    assert_eq!(seen.len(), 2);
    for t in &seen {
        assert_eq!(t, "glibc.malloc.tcache_count=0");
    }
    // An operator's own setting wins. (Merging with other tunables is unit-tested in the
    // master: glibc rewrites a list of several in the process's own environment block, so
    // /proc/PID/environ does not show it whole.)
    let server = Server::builder()
        .env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3")
        .login_reply()
        .start();
    assert_eq!(worker_tunables(&server), ["glibc.malloc.tcache_count=3"]);
    // And the worker serves.
    let mut c = server.login_acked("tuned");
    assert_eq!(server.text_push(b"{\"uid\":\"tuned\"}\n"), b"ok\n");
    assert_eq!(
        c.try_recv_text(Duration::from_secs(5)).as_deref(),
        Some(r#"{"uid":"tuned"}"#)
    );
}

// ---------------------------------------------------------------------------------------------
// Lists: max_targets
// ---------------------------------------------------------------------------------------------

/// `n` uids `{prefix}0`, `{prefix}1`, … as a JSON array.
fn uid_array(prefix: &str, n: usize) -> String {
    let uids: Vec<String> = (0..n).map(|i| format!("\"{prefix}{i}\"")).collect();
    format!("[{}]", uids.join(","))
}

/// Sends one line on a fresh text connection; returns the reply line and how long it took.
fn timed_line(port: u16, line: &str) -> (String, Duration) {
    let mut c = TextConn::connect(port);
    let t0 = Instant::now();
    c.send(line.as_bytes());
    let reply = c.read_lines(1, Duration::from_secs(30));
    (String::from_utf8_lossy(&reply).into_owned(), t0.elapsed())
}

#[test]
fn a_push_naming_too_many_targets_is_refused_at_once_and_a_large_one_holds_no_one_up() {
    let srv = Server::builder().workers(2).login_reply().start();
    srv.wait_mesh();
    let mut member = srv.login_acked("t5000");
    // Another backend pushes all along, timing each answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        let port = srv.text;
        std::thread::spawn(move || {
            let mut c = TextConn::connect(port);
            let mut lat = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || lat.len() < 200 {
                let t0 = Instant::now();
                c.send(b"{\"uid\":\"nobody\",\"n\":1}\n");
                let r = c.read_lines(1, Duration::from_secs(30));
                assert_eq!(r, b"fail\n");
                lat.push(t0.elapsed());
            }
            lat
        })
    };
    // 10,000 uids (the default max_targets): delivered, and answered quickly.
    let line = format!(
        "{{\"cmd\":\"push\",\"to\":{},\"data\":\"ten-thousand\"}}\n",
        uid_array("t", 10_000)
    );
    let (reply, took_10k) = timed_line(srv.text, &line);
    assert_eq!(reply, "ok\n");
    assert_eq!(member.recv_text(REPLY), "ten-thousand");
    assert!(
        took_10k < Duration::from_secs(1),
        "a push to 10,000 uids took {took_10k:?}"
    );
    // 80,000 uids (a 690 KB line, under max_line): refused with an error, at once.
    let line = format!(
        "{{\"cmd\":\"push\",\"to\":{},\"data\":\"eighty-thousand\"}}\n",
        uid_array("t", 80_000)
    );
    assert!(line.len() < 1024 * 1024, "{} bytes", line.len());
    let (reply, took_80k) = timed_line(srv.text, &line);
    assert!(
        reply.starts_with("{\"error\":") && reply.contains("max_targets"),
        "80,000 targets: {reply}"
    );
    assert!(
        took_80k < Duration::from_secs(1),
        "80,000 targets refused after {took_80k:?}"
    );
    // Excluded uids and groups count too, on the text port and in the API.
    let line = format!(
        "{{\"cmd\":\"all\",\"exclude\":{},\"data\":\"x\"}}\n",
        uid_array("x", 10_001)
    );
    assert!(timed_line(srv.text, &line).0.contains("max_targets"));
    let line = format!(
        "{{\"cmd\":\"group\",\"group\":{},\"data\":\"x\"}}\n",
        uid_array("g", 10_001)
    );
    assert!(timed_line(srv.text, &line).0.contains("max_targets"));
    let line = format!(
        "{{\"cmd\":\"push\",\"to\":{},\"exclude\":{},\"data\":\"x\"}}\n",
        uid_array("t", 6_000),
        uid_array("x", 4_001)
    );
    assert!(timed_line(srv.text, &line).0.contains("max_targets"));
    let body = format!("{{\"to\":{},\"data\":\"x\"}}", uid_array("t", 10_001));
    let req = format!(
        "POST /api/push HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = srv.http(req.as_bytes());
    assert_eq!(r.status, 400, "{} {}", r.head, r.text());
    assert!(r.text().contains("max_targets"), "{}", r.text());
    member.expect_silence(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut lat = steady.join().expect("steady backend");
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    let max = *lat.last().unwrap();
    eprintln!(
        "10,000 targets answered in {took_10k:?}, 80,000 refused in {took_80k:?}; \
         the other backend: {} pushes, p99 {p99:?}, max {max:?}",
        lat.len()
    );
    assert!(
        max < Duration::from_secs(1),
        "another backend's push waited {max:?} (p99 {p99:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines: header_timeout
// ---------------------------------------------------------------------------------------------

/// The whole server's figures from `GET /api/stats` (its `totals`).
fn totals(port: u16) -> serde_json::Value {
    let r = http(
        port,
        b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["totals"].clone()
}

/// One figure of [`totals`].
fn counter(port: u16, name: &str) -> u64 {
    totals(port)[name].as_u64().unwrap_or(0)
}

/// Writes `bytes` one at a time, one every 200 ms, watching for the server closing. Returns how
/// long after the first byte the connection was found closed (None if still open after the
/// bytes, or 6 s) and what the server sent.
fn trickle(port: u16, bytes: &[u8]) -> (Option<Duration>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let mut got = Vec::new();
    let t0 = Instant::now();
    for b in bytes.iter().cycle() {
        if t0.elapsed() > Duration::from_secs(6) {
            return (None, got);
        }
        if s.write_all(&[*b]).is_err() {
            return (Some(t0.elapsed()), got);
        }
        let until = Instant::now() + Duration::from_millis(200);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left)).ok();
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => return (Some(t0.elapsed()), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => return (Some(t0.elapsed()), got),
            }
        }
    }
    unreachable!("cycle() does not end")
}

#[test]
fn requests_trickled_byte_by_byte_are_cut_at_header_timeout() {
    let srv = Server::builder().socketio().set("header_timeout=1").start();
    // A head that never ends, a body that never ends, on the HTTP port; a head on the
    // Socket.IO port. Each byte resets the idle timer, so only a deadline per request ends them.
    let endless_head =
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa".to_vec();
    let mut endless_body =
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
    endless_body.extend_from_slice(&[b'a'; 1000]);
    let sio_head =
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaa"
            .to_vec();
    let runs: Vec<_> = [
        ("http head", srv.http, endless_head),
        ("http body", srv.http, endless_body),
        ("socket.io head", srv.socketio, sio_head),
    ]
    .into_iter()
    .map(|(what, port, bytes)| std::thread::spawn(move || (what, trickle(port, &bytes))))
    .collect();
    for r in runs {
        let (what, (closed, got)) = r.join().expect("trickler");
        let after = closed.unwrap_or_else(|| panic!("{what}: still open after 6 s of trickling"));
        eprintln!("{what}: closed {after:?} after its first byte");
        assert!(
            after >= Duration::from_millis(800) && after <= Duration::from_secs(3),
            "{what}: closed {after:?} after its first byte (header_timeout=1)"
        );
        assert!(
            got.starts_with(b"HTTP/1.1 408 "),
            "{what}: answered {}",
            show(&got)
        );
    }
    assert!(counter(srv.http, "header_timeout") >= 3);
    // The deadline is per request, from its first byte: a keep-alive connection that waits
    // longer than header_timeout between requests, and sends each within it, is served.
    let mut c = HttpConn::connect(srv.http);
    for i in 0..2 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        for b in
            b"GET /?type=publish&to=nobody&content=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".chunks(8)
        {
            c.send(b).expect("write");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = c.read_response(REPLY);
        assert_eq!(
            (r.status, r.text()),
            (200, "offline".to_owned()),
            "request {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors: a reserve for the backends
// ---------------------------------------------------------------------------------------------

#[test]
fn clients_cannot_take_the_descriptors_backends_need() {
    let srv = Server::builder()
        .nofile(256)
        .socketio()
        .login_reply()
        .start();
    let mut target = srv.login_acked("fd-target");
    // WebSocket clients until the worker refuses one: each must be answered, 101 or 503, and
    // none may hang in the accept queue.
    let mut held = Vec::new();
    let refused_at = loop {
        let i = held.len();
        assert!(
            i < 300,
            "300 clients accepted under a limit of 256 descriptors"
        );
        let (s, status) = ws_open(srv.ws, None, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("client {i}: {e}\n{}", srv.log()));
        match status {
            101 => held.push(s),
            503 => break i,
            other => panic!("client {i}: status {other}"),
        }
    };
    assert!(refused_at > 100, "refused after only {refused_at} clients");
    eprintln!("under 256 descriptors, client {refused_at} was the first refused");
    // The backends still get in, and their pushes are answered at once.
    let t0 = Instant::now();
    let mut c = TextConn::connect(srv.text);
    c.stream.set_write_timeout(Some(REPLY)).ok();
    c.send(b"{\"uid\":\"fd-target\",\"n\":1}\n");
    assert_eq!(c.read_lines(1, Duration::from_secs(2)), b"ok\n");
    assert_eq!(target.recv_text(REPLY), r#"{"uid":"fd-target","n":1}"#);
    let r =
        srv.http(b"GET /?type=publish&to=fd-target&content=hi HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    assert_eq!(target.recv_text(REPLY), "hi");
    let took = t0.elapsed();
    eprintln!("a text push and an HTTP publish, each on a new connection: {took:?}");
    assert!(took < Duration::from_secs(2), "backends took {took:?}");
    // More clients are still refused at once, and counted.
    for i in 0..5 {
        let (_s, status) = ws_open(srv.ws, None, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("extra client {i}: {e}"));
        assert_eq!(status, 503, "extra client {i}");
    }
    // The Socket.IO port is a client port too.
    let mut sio = HttpConn::connect(srv.socketio);
    sio.send(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("write");
    assert_eq!(sio.read_response(Duration::from_secs(3)).status, 503);
    assert!(counter(srv.http, "out_of_fds") >= 7);
    // Clients leaving make room again.
    held.truncate(held.len() - 10);
    assert!(wait_until(REPLY, || {
        matches!(ws_open(srv.ws, None, REPLY), Ok((_, 101)))
    }));
    drop(c);
}

// ---------------------------------------------------------------------------------------------
// Slow consumers: the kernel's share
// ---------------------------------------------------------------------------------------------

/// The send queues (bytes the kernel holds, unsent or unacknowledged) of the server's sockets
/// on `port`, from /proc/net/tcp: one entry per connection the server still has there.
fn server_send_queues(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
                continue;
            };
            let lport = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN.
            if lport != Some(port) || *state == "0A" {
                continue;
            }
            let tx = queues
                .split(':')
                .next()
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            out.push(tx);
        }
    }
    out
}

/// `TCP: … mem N` of /proc/net/sockstat: pages the kernel holds for every TCP socket.
fn sockstat_tcp_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_readers_cannot_pin_kernel_memory_and_are_reset_when_closed() {
    const CLIENTS: usize = 100;
    const SIZE: usize = 16 * 1024;
    const PUSHES: usize = 200; // 3.2 MB for each client, three times max_send_buffer
    let srv = Server::builder()
        .set("slow_timeout=2")
        .login_reply()
        .start();
    let pages0 = sockstat_tcp_pages();
    // Clients that never read, with a small receive buffer: what piles up for them is on the
    // server's side of the connection, where the test can see it.
    let mut slow: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| ws_login(srv.ws, &format!("slow{i}"), Some(4096)))
        .collect();
    // A client that reads all along (until `END`), on a thread.
    let mut reader = srv.login_acked("reader");
    let reading = std::thread::spawn(move || {
        let mut n = 0;
        loop {
            match reader.recv_text(Duration::from_secs(30)).as_str() {
                "END" => return (n, reader),
                _ => n += 1,
            }
        }
    });
    // A stream of broadcasts through one backend connection.
    let mut c = TextConn::connect(srv.text);
    let mut w = c.stream.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for i in 0..PUSHES {
            let mut line = format!("{{\"cmd\":\"all\",\"data\":\"{i:06}").into_bytes();
            line.resize(22 + SIZE, b'x');
            line.extend_from_slice(b"\"}\n");
            w.write_all(&line).expect("write broadcast");
        }
    });
    assert_eq!(
        c.read_lines(PUSHES, Duration::from_secs(60)).len(),
        3 * PUSHES
    );
    writer.join().expect("writer");
    let queues = server_send_queues(srv.ws);
    let pages = sockstat_tcp_pages();
    let max = queues.iter().copied().max().unwrap_or(0);
    let sum: u64 = queues.iter().sum();
    eprintln!(
        "{} server sockets: kernel send queues max {max} B, mean {} B; sockstat TCP mem \
         {pages0} -> {pages} pages",
        queues.len(),
        sum / queues.len().max(1) as u64
    );
    assert!(queues.len() > CLIENTS, "{} sockets", queues.len());
    assert!(
        max <= 256 * 1024,
        "the kernel holds {max} B for one client that does not read (mean {} B)",
        sum / queues.len() as u64
    );
    // After slow_timeout they are closed, counted, and their sockets are gone at once: a
    // reset, not a close waiting behind data the client will never read.
    assert!(
        wait_until(Duration::from_secs(10), || counter(srv.http, "slow_closed")
            >= CLIENTS as u64),
        "slow_closed {} of {CLIENTS}",
        counter(srv.http, "slow_closed")
    );
    let gone = wait_until(Duration::from_secs(3), || {
        server_send_queues(srv.ws).iter().sum::<u64>() == 0
    });
    let left = server_send_queues(srv.ws);
    assert!(
        gone,
        "{} server sockets still hold {} B for closed slow clients",
        left.iter().filter(|q| **q > 0).count(),
        left.iter().sum::<u64>()
    );
    eprintln!(
        "after the slow clients were closed: {} server sockets, sockstat TCP mem {} pages",
        left.len(),
        sockstat_tcp_pages()
    );
    // The clients learn it at once.
    for (i, s) in slow.iter_mut().enumerate() {
        let mut sink = Vec::new();
        let (_, how) = read_until_closed(s, &mut sink, Duration::from_secs(3));
        assert_ne!(how, Eof::Open, "slow client {i} not told");
    }
    // The reader was not touched (it may have missed broadcasts while it fell behind by more
    // than max_send_buffer, never all of them).
    let end = b"{\"cmd\":\"push\",\"to\":\"reader\",\"data\":\"END\"}\n";
    assert!(wait_until(REPLY, || srv.text_push(end) == b"ok\n"));
    let (got, mut reader) = reading.join().expect("reader");
    assert!(got > 0, "the reading client got no broadcast");
    assert_eq!(srv.text_push(b"{\"uid\":\"reader\",\"n\":2}\n"), b"ok\n");
    assert_eq!(reader.recv_text(REPLY), r#"{"uid":"reader","n":2}"#);
}

#[test]
fn a_close_the_client_does_not_read_is_reset_after_slow_timeout() {
    let srv = Server::builder()
        .set("slow_timeout=1")
        .login_reply()
        .start();
    let mut s = ws_login(srv.ws, "deaf", Some(4096));
    // The login is handled when a push to it first answers ok (the login frame and the
    // pushes travel on different sockets).
    srv.push_until_ok(b"{\"uid\":\"deaf\",\"probe\":1}\n", REPLY);
    // Fill what the kernel takes for it, staying under max_send_buffer (nothing is dropped,
    // so it is not a slow consumer yet).
    let data = "d".repeat(10_000);
    for _ in 0..30 {
        let line = format!("{{\"cmd\":\"push\",\"to\":\"deaf\",\"data\":\"{data}\"}}\n");
        assert_eq!(srv.text_push(line.as_bytes()), b"ok\n");
    }
    assert!(wait_until(REPLY, || {
        server_send_queues(srv.ws).iter().any(|q| *q > 0)
    }));
    // A kick queues a close frame behind all that: the connection closes once it is written,
    // which this client will never allow.
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"kick\",\"uid\":\"deaf\"}\n"),
        b"ok\n"
    );
    assert!(
        wait_until(Duration::from_secs(5), || counter(srv.http, "slow_closed")
            == 1),
        "a closing connection that cannot write its close was kept"
    );
    assert!(wait_until(REPLY, || server_send_queues(srv.ws).is_empty()));
    let mut sink = Vec::new();
    assert_ne!(
        read_until_closed(&mut s, &mut sink, Duration::from_secs(3)).1,
        Eof::Open
    );
}

/// A measurement rather than a check (run it with `cargo test --release --test limits
/// slowloris -- --ignored --nocapture`): 1,000 connections per port (HTTP and Socket.IO) each
/// sending a request head one byte every 200 ms, then 1,000 per port that send one byte and
/// fall silent, with `header_timeout=2`. Prints when they were closed (after their first byte)
/// and the worker's CPU time meanwhile.
#[test]
#[ignore = "a measurement; see its doc comment"]
fn slowloris_measurement() {
    const PER_PORT: usize = 1000;
    let srv = Server::builder().socketio().set("header_timeout=2").start();
    let worker = *srv.worker_pids().iter().next().expect("a worker");
    let head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    struct Slow {
        s: TcpStream,
        port: u16,
        sent: usize,
        first: Instant,
        closed: Option<Duration>,
    }
    for trickling in [true, false] {
        let cpu0 = cpu_ticks(worker);
        let t0 = Instant::now();
        let mut conns: Vec<Slow> = Vec::new();
        for port in [srv.http, srv.socketio] {
            for _ in 0..PER_PORT {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.write_all(&head[..1]).expect("first byte");
                s.set_nonblocking(true).expect("nonblocking");
                conns.push(Slow {
                    s,
                    port,
                    sent: 1,
                    first: Instant::now(),
                    closed: None,
                });
            }
        }
        while conns.iter().any(|c| c.closed.is_none()) && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(200));
            for c in conns.iter_mut().filter(|c| c.closed.is_none()) {
                let mut buf = [0u8; 512];
                let ended = loop {
                    match c.s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                let b = head[c.sent % head.len()];
                if ended || (trickling && c.s.write_all(&[b]).is_err()) {
                    c.closed = Some(c.first.elapsed());
                } else {
                    c.sent += 1;
                }
            }
        }
        let took = t0.elapsed();
        let cpu = cpu_ticks(worker) - cpu0;
        let what = if trickling {
            "trickling a byte every 200 ms"
        } else {
            "silent after one byte"
        };
        for port in [srv.http, srv.socketio] {
            let mut times: Vec<Duration> = conns
                .iter()
                .filter(|c| c.port == port)
                .filter_map(|c| c.closed)
                .collect();
            times.sort();
            let open = PER_PORT - times.len();
            let name = if port == srv.http {
                "http"
            } else {
                "socket.io"
            };
            eprintln!(
                "{name}, {what}: {} closed, {open} still open; closed after their first byte: \
                 min {:?}, median {:?}, max {:?}",
                times.len(),
                times.first(),
                times.get(times.len() / 2),
                times.last()
            );
        }
        let hz = 100.0; // USER_HZ
        eprintln!(
            "worker CPU over those {took:?}: {cpu} ticks ({:.0} ms, {:.1}% of one CPU)",
            cpu as f64 * 1000.0 / hz,
            cpu as f64 / hz / took.as_secs_f64() * 100.0,
        );
    }
    eprintln!(
        "header_timeout counted {}",
        counter(srv.http, "header_timeout")
    );
}

/// At start the server says what its limits let it hold, and warns when the open-file limit
/// caps a worker below `max_connections`.
#[test]
fn start_reports_capacity_and_warns_when_the_file_limit_caps_it() {
    let srv = Server::builder()
        .workers(2)
        .nofile(512)
        .set("max_connections=1000")
        .start();
    let log = srv.log();
    assert!(
        log.contains("capacity: 2 workers x about 352 connections each (open-file limit 512, fd_reserve 128)"),
        "{log}"
    );
    assert!(
        log.contains("max_connections = 1000 per worker, but the open-file limit (512) caps a worker at about 352"),
        "{log}"
    );
    let roomy = Server::builder().workers(2).start();
    assert!(
        !roomy.log().contains("max_connections ="),
        "{}",
        roomy.log()
    );
}

/// A burst of connections queued at once (a reconnect storm) is taken a budget per loop turn:
/// every one is answered, none stays in the accept queue, and a push in the middle of the
/// burst is answered too.
#[test]
fn a_burst_of_queued_connections_is_taken_in_turns_and_none_is_left() {
    let srv = Server::builder().login_reply().start();
    let mut target = srv.login_acked("burst-target");
    // 600 connections queued, with their handshakes, while the worker is stopped: when it
    // runs again they are all there at one readiness edge.
    let worker = *srv.worker_pids().iter().next().expect("a worker");
    signal(worker, libc::SIGSTOP);
    let mut socks: Vec<TcpStream> = (0..600)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect");
            s.write_all(UPGRADE).expect("handshake");
            s
        })
        .collect();
    signal(worker, libc::SIGCONT);
    assert_eq!(
        srv.text_push(b"{\"uid\":\"burst-target\",\"m\":1}\n"),
        b"ok\n"
    );
    assert_eq!(
        target.try_recv_text(Duration::from_secs(10)).as_deref(),
        Some(r#"{"uid":"burst-target","m":1}"#)
    );
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("connection {i} not answered: {e}"));
        assert_eq!(&head, b"HTTP/1.1 101", "connection {i}");
    }
}
