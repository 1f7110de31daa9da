//! The backend side: drivers that push through Herald's text port.
//!
//! `unicast` writes `{"uid":"uN","t":T}\n` lines to random uids over K pipelined connections,
//! either flat out (at most `window` unanswered lines per connection) or paced at a fixed rate,
//! and matches each `ok`/`fail` answer to its line by order. `T` is the monotonic send time in
//! nanoseconds, made unique across all connections so that it also identifies the push.
//! `broadcasts` writes `{"cmd":"all","data":"…100 bytes…"}\n` lines; the data starts with the
//! broadcast's number and send time (`bc_data`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream as StdStream};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::util::{mono_ns, Rng};

/// The 100-byte data of broadcast `idx` sent at `t`: `b000007 t00000000001234567890 xxx…`.
pub fn bc_data(idx: usize, t: u64) -> String {
    let mut s = format!("b{idx:06} t{t:020} ");
    while s.len() < 100 {
        s.push('x');
    }
    s
}

/// What a unicast run is to do.
pub struct UnicastPlan {
    /// Text port.
    pub text: SocketAddrV4,
    /// Pipelined connections.
    pub conns: usize,
    /// Pushes per second, or flat out when `None`.
    pub rate: Option<f64>,
    /// Pushes to send.
    pub pushes: u64,
    /// Uids are `u0..u{clients-1}`.
    pub clients: u64,
    /// Flat out: unanswered lines per connection at most.
    pub window: usize,
    /// Seed of the uid choice.
    pub seed: u64,
    /// Give up at this monotonic time.
    pub deadline_ns: u64,
}

/// What a unicast run saw on the text port.
#[derive(Default)]
pub struct UnicastOutcome {
    /// Lines written.
    pub sent: u64,
    /// Send times of the pushes answered `ok`.
    pub ok_t: Vec<u64>,
    /// Pushes answered `fail`.
    pub fail: u64,
    /// Answers that were neither.
    pub other: u64,
    /// Pushes never answered (deadline).
    pub unanswered: u64,
    /// First send time.
    pub t_first: u64,
    /// Time of the last answer.
    pub t_last_reply: u64,
}

/// One pipelined text connection.
struct Line {
    /// The socket.
    sock: TcpStream,
    /// Bytes to write.
    out: Vec<u8>,
    /// Send times of the lines not answered yet, in order.
    waiting: VecDeque<u64>,
    /// Part of an answer line.
    inbuf: Vec<u8>,
}

/// Opens a text-port connection.
fn connect_text(addr: SocketAddrV4) -> Result<StdStream, String> {
    let s = StdStream::connect(addr).map_err(|e| format!("connect text port {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("text port nodelay: {e}"))?;
    Ok(s)
}

/// Runs the unicast pushes.
pub fn unicast(plan: &UnicastPlan) -> Result<UnicastOutcome, String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut lines = Vec::new();
    for k in 0..plan.conns.max(1) {
        let s = connect_text(plan.text)?;
        s.set_nonblocking(true)
            .map_err(|e| format!("text port nonblocking: {e}"))?;
        let mut sock = TcpStream::from_std(s);
        poll.registry()
            .register(&mut sock, Token(k), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        lines.push(Line {
            sock,
            out: Vec::new(),
            waiting: VecDeque::new(),
            inbuf: Vec::new(),
        });
    }
    let k = lines.len();
    let mut rng = Rng::new(plan.seed);
    let mut out = UnicastOutcome::default();
    let mut last_t = 0u64;
    let mut events = Events::with_capacity(256);
    let mut scratch = vec![0u8; 64 * 1024];
    let start = mono_ns();
    out.t_first = start;
    let mut compose = |l: &mut Line, sent: &mut u64| {
        let mut t = mono_ns();
        if t <= last_t {
            t = last_t + 1;
        }
        last_t = t;
        let uid = rng.below(plan.clients.max(1));
        // Writing to a Vec cannot fail.
        let _ = writeln!(l.out, "{{\"uid\":\"u{uid}\",\"t\":{t}}}");
        l.waiting.push_back(t);
        *sent += 1;
    };
    loop {
        let now = mono_ns();
        if now > plan.deadline_ns {
            break;
        }
        match plan.rate {
            None => {
                for l in lines.iter_mut() {
                    while l.waiting.len() < plan.window && out.sent < plan.pushes {
                        compose(l, &mut out.sent);
                    }
                }
            }
            Some(r) => {
                let due = (((now - start) as f64 * r / 1e9) as u64 + 1).min(plan.pushes);
                while out.sent < due {
                    let i = (out.sent % k as u64) as usize;
                    compose(&mut lines[i], &mut out.sent);
                }
            }
        }
        for l in lines.iter_mut() {
            write_out(l)?;
        }
        if out.sent >= plan.pushes && lines.iter().all(|l| l.waiting.is_empty()) {
            break;
        }
        let timeout = match plan.rate {
            Some(r) if out.sent < plan.pushes => {
                let next = start + (out.sent as f64 * 1e9 / r) as u64;
                Duration::from_nanos(next.saturating_sub(mono_ns()))
            }
            _ => Duration::from_millis(100),
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let Some(l) = lines.get_mut(ev.token().0) else {
                continue;
            };
            read_answers(l, &mut scratch, &mut out)?;
            write_out(l)?;
        }
    }
    out.unanswered = lines.iter().map(|l| l.waiting.len() as u64).sum();
    Ok(out)
}

/// Writes as much of `l.out` as the socket takes.
fn write_out(l: &mut Line) -> Result<(), String> {
    let mut done = 0;
    while done < l.out.len() {
        match l.sock.write(&l.out[done..]) {
            Ok(0) => return Err("text port: write returned 0".into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("text port write: {e}")),
        }
    }
    l.out.drain(..done);
    Ok(())
}

/// Reads answers and matches them, in order, to the waiting send times.
fn read_answers(l: &mut Line, scratch: &mut [u8], out: &mut UnicastOutcome) -> Result<(), String> {
    loop {
        match l.sock.read(scratch) {
            Ok(0) => {
                if l.waiting.is_empty() {
                    return Ok(());
                }
                return Err(format!(
                    "text port closed with {} pushes unanswered",
                    l.waiting.len()
                ));
            }
            Ok(n) => {
                l.inbuf.extend_from_slice(&scratch[..n]);
                out.t_last_reply = mono_ns();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("text port read: {e}")),
        }
    }
    let mut pos = 0;
    while let Some(nl) = l.inbuf[pos..].iter().position(|&b| b == b'\n') {
        let line = &l.inbuf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let t = l.waiting.pop_front();
        match (line, t) {
            (b"ok", Some(t)) => out.ok_t.push(t),
            (b"fail", Some(_)) => out.fail += 1,
            _ => out.other += 1,
        }
        pos += nl + 1;
    }
    l.inbuf.drain(..pos);
    Ok(())
}

/// Sends `count` broadcasts through one text connection, `spacing` apart (back to back when
/// zero); returns each one's send time and the number of `ok` answers.
pub fn broadcasts(
    text: SocketAddrV4,
    count: usize,
    spacing: Duration,
) -> Result<(Vec<u64>, u64), String> {
    let mut s = connect_text(text)?;
    let mut sent = Vec::with_capacity(count);
    let mut buf = Vec::new();
    for i in 0..count {
        let t = mono_ns();
        let _ = writeln!(buf, "{{\"cmd\":\"all\",\"data\":\"{}\"}}", bc_data(i, t));
        sent.push(t);
        if !spacing.is_zero() || i + 1 == count {
            s.write_all(&buf)
                .map_err(|e| format!("text port write: {e}"))?;
            buf.clear();
            if !spacing.is_zero() && i + 1 < count {
                std::thread::sleep(spacing);
            }
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| format!("text port: {e}"))?;
    let mut r = BufReader::new(s);
    let mut ok = 0;
    for _ in 0..count {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line.trim() == "ok" => ok += 1,
            Ok(_) => {}
            Err(e) => return Err(format!("text port: waiting for broadcast answers: {e}")),
        }
    }
    Ok((sent, ok))
}

/// Pushes `{"uid":UID,"probe":…}` through `text` until it answers `ok` (a cluster has learned
/// where the uid is), or fails at `deadline_ns`.
pub fn wait_ok(text: SocketAddrV4, uid: &str, deadline_ns: u64) -> Result<(), String> {
    loop {
        let mut s = StdStream::connect(text).map_err(|e| format!("text port: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(format!("{{\"uid\":\"{uid}\",\"probe\":true}}\n").as_bytes())
            .map_err(|e| format!("text port: {e}"))?;
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .map_err(|e| format!("text port: {e}"))?;
        if line == "ok\n" {
            return Ok(());
        }
        if mono_ns() > deadline_ns {
            return Err(format!(
                "{uid} never reachable through the cluster: {line:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::number_after;

    #[test]
    fn broadcast_data_is_100_bytes_and_parses() {
        let d = bc_data(42, 123_456_789);
        assert_eq!(d.len(), 100);
        assert_eq!(number_after(d.as_bytes(), b"b"), Some(42));
        assert_eq!(number_after(d.as_bytes(), b" t"), Some(123_456_789));
    }

    #[test]
    fn answers_match_in_order() {
        let (a, b) = mio_pair();
        let mut l = Line {
            sock: a,
            out: Vec::new(),
            waiting: VecDeque::from(vec![1, 2, 3]),
            inbuf: Vec::new(),
        };
        let mut peer = b;
        peer.write_all(b"ok\nfail\nok").unwrap();
        let mut out = UnicastOutcome::default();
        let mut scratch = vec![0u8; 1024];
        std::thread::sleep(Duration::from_millis(50));
        read_answers(&mut l, &mut scratch, &mut out).unwrap();
        assert_eq!(out.ok_t, vec![1]);
        assert_eq!(out.fail, 1);
        assert_eq!(l.waiting, VecDeque::from(vec![3]));
        peer.write_all(b"\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        read_answers(&mut l, &mut scratch, &mut out).unwrap();
        assert_eq!(out.ok_t, vec![1, 3]);
    }

    /// A connected pair: a non-blocking mio stream and a blocking std stream.
    fn mio_pair() -> (TcpStream, StdStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = StdStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        (TcpStream::from_std(a), b)
    }
}
