//! `upstream`: client messages end to end through a subscribed backend. N WebSocket clients
//! (uids `c0`…) each send `TO T` messages (T the `CLOCK_MONOTONIC` send time) to the next
//! client's uid; Herald turns each into a `message` event for one backend subscribed on the
//! text port (`{"cmd":"subscribe","events":["message"]}`), which answers every event with a
//! push `{"cmd":"push","to":TO,"data":"T"}`; the receiving client stamps the arrival. Reports
//! messages/s, losses, latency p50/p99/p99.9/max in µs (client → Herald → backend → Herald →
//! client), and server CPU (master + workers) per upstream message.
//!
//! `--clients N` (the senders, also the receivers), `--pushes M` (messages in all), `--rate R`
//! (messages per second over all clients; default flat out); `--set KEY=VALUE` for the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::modes::Deadlines;
use crate::procstat;
use crate::util::{mono_ns, progress, quantile, r3};
use crate::ws;

/// Runs the mode.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let mut sets = vec!["events=true".to_string()];
    sets.extend(o.sets.iter().cloned());
    let mut herald = crate::modes::start_herald_with(o, sets)?;
    let n = o.clients.clamp(1, 500);
    let backend = backend(herald.text)?;
    let mut clients = Vec::new();
    let (tx, rx) = mpsc::channel::<u64>();
    for i in 0..n {
        let s = login(herald.ws, &format!("c{i}"))?;
        let reader = s.try_clone().map_err(|e| e.to_string())?;
        let tx = tx.clone();
        thread::spawn(move || receive(reader, tx));
        clients.push(s);
    }
    drop(tx);
    // Let every login event pass, and the subscriber be known everywhere.
    thread::sleep(Duration::from_millis(300));
    progress(&format!(
        "{n} clients logged in; sending {} messages",
        o.pushes
    ));
    let s0 = herald.sample();
    let t0 = mono_ns();
    let per_client = o.pushes.div_ceil(n as u64);
    let gap_ns = o.rate.map(|r| (1e9 * n as f64 / r) as u64);
    let mut senders = Vec::new();
    for (i, s) in clients.into_iter().enumerate() {
        let to = format!("c{}", (i + 1) % n);
        let stop = d.before_end(5_000_000_000);
        senders.push(thread::spawn(move || {
            send(s, &to, per_client, gap_ns, stop, i)
        }));
    }
    let mut sent = 0;
    for h in senders {
        sent += h.join().map_err(|_| "a sender panicked".to_string())?;
    }
    let sent_done = mono_ns();
    let mut lat = Vec::with_capacity(sent as usize);
    let mut last = t0;
    let wait_until = d.before_end(2_000_000_000).min(sent_done + 5_000_000_000);
    while (lat.len() as u64) < sent {
        let left = wait_until.saturating_sub(mono_ns());
        match rx.recv_timeout(Duration::from_nanos(left.max(1))) {
            Ok(l) => {
                lat.push(l);
                last = mono_ns();
            }
            Err(_) => break,
        }
    }
    let t1 = mono_ns();
    let s1 = herald.sample();
    let stats = totals(herald.http);
    herald.stop();
    drop(backend);
    lat.sort_unstable();
    let got = lat.len() as u64;
    let _ = t1;
    let cpu_ns = s1.cpu_ns.saturating_sub(s0.cpu_ns);
    let us = |ns: u64| r3(ns as f64 / 1000.0);
    Ok(json!({
        "mode": "upstream",
        "server": "herald",
        "workers": o.workers,
        "clients": n,
        "rate": o.rate,
        "sent": sent,
        "received": got,
        "lost": sent.saturating_sub(got),
        "messages_per_s": r3(got as f64 / ((last.max(sent_done) - t0) as f64 / 1e9)),
        "latency_us": {
            "p50": us(quantile(&lat, 0.5)),
            "p99": us(quantile(&lat, 0.99)),
            "p999": us(quantile(&lat, 0.999)),
            "max": us(lat.last().copied().unwrap_or(0)),
        },
        "server_cpu_us_per_message": r3(cpu_ns as f64 / 1000.0 / got.max(1) as f64),
        "steal_pct": r3(procstat::steal_pct(&s0, &s1)),
        "server_counters": {
            "upstream_messages": stats["upstream_messages"],
            "events": stats["events"],
            "events_dropped": stats["events_dropped"],
            "pushes": stats["pushes"],
            "send_fail": stats["send_fail"],
        },
    }))
}

/// The server's summed figures (`GET /api/stats`), or null.
fn totals(http: std::net::SocketAddrV4) -> Value {
    let mut s = match TcpStream::connect(http) {
        Ok(s) => s,
        Err(_) => return Value::Null,
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    if s.write_all(b"GET /api/stats HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return Value::Null;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&answer[..0], |i| &answer[i + 4..]);
    serde_json::from_slice::<Value>(body)
        .map(|v| v["totals"].clone())
        .unwrap_or(Value::Null)
}

/// A WebSocket client logged in as `uid` (waits for the login reply).
fn login(addr: std::net::SocketAddrV4, uid: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    s.write_all(&ws::handshake_request(&addr.to_string()))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let used = loop {
        let k = s.read(&mut chunk).map_err(|e| format!("handshake: {e}"))?;
        if k == 0 {
            return Err("closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..k]);
        match ws::parse_handshake(&buf) {
            ws::HandshakeReply::Incomplete => {}
            ws::HandshakeReply::Switched(n) => break n,
            ws::HandshakeReply::Refused(l) => return Err(format!("refused: {l}")),
        }
    };
    buf.drain(..used);
    let mut out = Vec::new();
    ws::encode_masked(ws::OP_TEXT, uid.as_bytes(), [1, 2, 3, 4], &mut out);
    s.write_all(&out).map_err(|e| e.to_string())?;
    // The login reply.
    loop {
        if let Ok(Some((_, used))) = ws::parse_frame(&buf) {
            buf.drain(..used);
            break;
        }
        let k = s.read(&mut chunk).map_err(|e| format!("login: {e}"))?;
        if k == 0 {
            return Err("closed before the login reply".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    s.set_read_timeout(None).ok();
    Ok(s)
}

/// Sends `count` messages `TO T`, one every `gap_ns` (or flat out); how many were sent.
fn send(mut s: TcpStream, to: &str, count: u64, gap_ns: Option<u64>, stop: u64, i: usize) -> u64 {
    let start = mono_ns() + (i as u64 % 97) * gap_ns.unwrap_or(0) / 97;
    let mut out = Vec::with_capacity(64);
    for k in 0..count {
        if let Some(g) = gap_ns {
            let due = start + k * g;
            let now = mono_ns();
            if due > now {
                thread::sleep(Duration::from_nanos(due - now));
            }
        }
        if mono_ns() > stop {
            return k;
        }
        out.clear();
        let msg = format!("{to} {}", mono_ns());
        ws::encode_masked(ws::OP_TEXT, msg.as_bytes(), [9, 8, 7, 6], &mut out);
        if s.write_all(&out).is_err() {
            return k;
        }
    }
    count
}

/// Reads pushed frames (`T`) and sends each latency.
fn receive(mut s: TcpStream, tx: mpsc::Sender<u64>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let k = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => k,
        };
        buf.extend_from_slice(&chunk[..k]);
        let mut pos = 0;
        while let Ok(Some((f, used))) = ws::parse_frame(&buf[pos..]) {
            if f.opcode == ws::OP_TEXT {
                if let Some(t) = std::str::from_utf8(f.payload)
                    .ok()
                    .and_then(|p| p.parse::<u64>().ok())
                {
                    if tx.send(mono_ns().saturating_sub(t)).is_err() {
                        return;
                    }
                }
            }
            pos += used;
        }
        buf.drain(..pos);
    }
}

/// The backend: subscribes to `message` and answers each with a push to the `TO` it names.
/// Dropping the returned stream ends it.
fn backend(addr: std::net::SocketAddrV4) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect text port: {e}"))?;
    s.set_nodelay(true).ok();
    s.write_all(b"{\"cmd\":\"subscribe\",\"events\":[\"message\"]}\n")
        .map_err(|e| e.to_string())?;
    let read = s.try_clone().map_err(|e| e.to_string())?;
    let mut write = s.try_clone().map_err(|e| e.to_string())?;
    thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, read);
        let mut line = String::new();
        let mut out = Vec::with_capacity(1 << 16);
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some((to, t)) = v["data"].as_str().and_then(|d| d.split_once(' ')) {
                    out.extend_from_slice(
                        format!("{{\"cmd\":\"push\",\"to\":\"{to}\",\"data\":\"{t}\"}}\n")
                            .as_bytes(),
                    );
                }
            }
            // One write per batch of lines already read.
            if r.buffer().is_empty() && !out.is_empty() {
                if write.write_all(&out).is_err() {
                    return;
                }
                out.clear();
            }
        }
    });
    Ok(s)
}
