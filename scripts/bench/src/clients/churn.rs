//! The churn of one client process (`churn` mode, issue 6 target 5).
//!
//! `churn RATE PUSH_RATE SECONDS TEXT UID_FIRST UID_STRIDE SEED` starts it: for SECONDS the
//! process opens RATE new connections per second (new uids `UID_FIRST`, `UID_FIRST + STRIDE`, …,
//! so that no two processes and no two connections share a uid), closes RATE random logged-in ones
//! per second (every other one sends a WebSocket close frame first; all end with an RST, so no
//! `TIME_WAIT` piles up), and pushes PUSH_RATE `{"uid":"uX","t":T}` lines per second through its
//! own pipelined text-port connection, each to a random logged-in connection of this process.
//! Opening is paced by the clock but never has more than `inflight` handshakes in progress; the
//! opens it falls behind are reported as `behind`.
//!
//! Every push's `ok` time is recorded, as is the time each connection closed. A push *counts*
//! when it was answered `ok` and its connection stayed open for at least one second after that
//! answer; a counted push that never arrived is a *loss*. After SECONDS the process stops
//! opening, closing and pushing, waits for every answer and handshake (at most 10 s) and then
//! at least 1.2 s more for the last deliveries, counts handshakes still unfinished as failed, and
//! answers the command with one JSON line of counts.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream as StdStream};
use std::time::Duration;

use mio::net::TcpStream;
use mio::Interest;
use serde_json::{json, Value};

use super::{reply, ClientProc, St, TEXT};
use crate::util::{mono_ns, Rng};
use crate::ws;

/// A push counts only if its connection stayed open this long after the `ok`.
const STAY_NS: u64 = 1_000_000_000;
/// After the churn, wait at least this long after the last answer before counting.
const GRACE_NS: u64 = 1_200_000_000;
/// After the churn, stop waiting for answers and handshakes after this long.
const DRAIN_LIMIT_NS: u64 = 10_000_000_000;
/// Longest sleep of the event loop while churning.
const MAX_SLEEP_NS: u64 = 20_000_000;

/// One push sent.
struct Push {
    /// Local index of the connection it was addressed to.
    slot: usize,
    /// Its send time, unique within the process: identifies it.
    t: u64,
    /// When its answer was read (0 while unanswered).
    ack: u64,
    /// The answer was `ok`.
    ok: bool,
}

/// The parameters of a `churn` command.
#[derive(Debug, PartialEq)]
struct ChurnCmd {
    /// Connections opened (and closed) per second.
    rate: f64,
    /// Pushes per second.
    push_rate: f64,
    /// Duration.
    seconds: f64,
    /// The text port.
    text: SocketAddrV4,
    /// Uid of the first new connection.
    uid_first: u64,
    /// Step between the uids of new connections.
    uid_stride: u64,
    /// Seed of the random choices.
    seed: u64,
}

/// Parses `churn RATE PUSH_RATE SECONDS TEXT UID_FIRST UID_STRIDE SEED`.
fn parse_cmd(cmd: &str) -> Result<ChurnCmd, String> {
    let f: Vec<&str> = cmd.split_whitespace().collect();
    if f.len() != 8 || f[0] != "churn" {
        return Err(format!("_clients: bad churn command {cmd:?}"));
    }
    let num = |i: usize| -> Result<f64, String> {
        let v: f64 = f[i]
            .parse()
            .map_err(|e| format!("_clients: churn field {i}: {e}"))?;
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("_clients: churn field {i} out of range"))
        }
    };
    let int = |i: usize| -> Result<u64, String> {
        f[i].parse()
            .map_err(|e| format!("_clients: churn field {i}: {e}"))
    };
    Ok(ChurnCmd {
        rate: num(1)?,
        push_rate: num(2)?,
        seconds: num(3)?,
        text: f[4]
            .parse()
            .map_err(|e| format!("_clients: churn text address: {e}"))?,
        uid_first: int(5)?,
        uid_stride: int(6)?.max(1),
        seed: int(7)?,
    })
}

/// The state of a churn in progress.
pub(super) struct Churn {
    /// Opens and closes per second.
    rate: f64,
    /// Pushes per second.
    push_rate: f64,
    /// Start time.
    t0: u64,
    /// End of the churn proper (then draining).
    t_stop: u64,
    /// Uid of the next new connection.
    uid_next: u64,
    /// Step between uids.
    uid_stride: u64,
    /// New connections opened (attempted).
    opened: u64,
    /// Closes due so far (done or without a victim).
    closes: u64,
    /// Closes that found no logged-in connection.
    no_victim: u64,
    /// Closes that sent a close frame first.
    graceful: u64,
    /// Push slots due so far (sent or without a target).
    push_slots: u64,
    /// Push slots that found no logged-in connection.
    no_target: u64,
    /// Most opens the process was ever behind the clock.
    behind_max: u64,
    /// Random choices.
    rng: Rng,
    /// The text-port connection.
    text: TcpStream,
    /// Bytes to write to it.
    out: Vec<u8>,
    /// Part of an answer line.
    inbuf: Vec<u8>,
    /// Indexes into `pushes` of the unanswered lines, in order.
    waiting: VecDeque<usize>,
    /// Every push sent.
    pushes: Vec<Push>,
    /// Answers that were neither `ok` nor `fail`.
    other: u64,
    /// Send time of the last push (to keep them unique).
    last_t: u64,
    /// When the last answer was read.
    last_answer: u64,
    /// Per local connection index: when it closed (`u64::MAX` while open or never opened).
    closed_at: Vec<u64>,
    /// `failed`, `connected` and `closed` of the process at the start.
    before: (usize, usize, usize),
    /// When draining began.
    drain_since: Option<u64>,
}

impl Churn {
    /// Records that connection `i` closed at `now` (the first time only).
    pub(super) fn note_closed(&mut self, i: usize, now: u64) {
        if let Some(x) = self.closed_at.get_mut(i) {
            if *x == u64::MAX {
                *x = now;
            }
        }
    }

    /// How long the event loop may sleep: until the next open, close or push is due.
    pub(super) fn next_timeout(&self, now: u64) -> Duration {
        if self.drain_since.is_some() || now >= self.t_stop {
            return Duration::from_millis(10);
        }
        let at = |done: u64, rate: f64| {
            if rate > 0.0 {
                self.t0 + ((done + 1) as f64 * 1e9 / rate) as u64
            } else {
                u64::MAX
            }
        };
        let next = at(self.opened.min(self.closes), self.rate)
            .min(at(self.push_slots, self.push_rate))
            .min(self.t_stop);
        Duration::from_nanos(next.saturating_sub(now).min(MAX_SLEEP_NS))
    }

    /// Writes as much of the queued lines as the text socket takes.
    fn flush(&mut self) -> Result<(), String> {
        let mut done = 0;
        while done < self.out.len() {
            match self.text.write(&self.out[done..]) {
                Ok(0) => return Err("_clients: text port: write returned 0".into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("_clients: text port write: {e}")),
            }
        }
        self.out.drain(..done);
        Ok(())
    }

    /// Reads the answers that arrived and matches them, in order, to the pushes.
    fn read_answers(&mut self, scratch: &mut [u8]) -> Result<(), String> {
        loop {
            match self.text.read(scratch) {
                Ok(0) => return Err("_clients: the text port closed during the churn".into()),
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("_clients: text port read: {e}")),
            }
        }
        let now = mono_ns();
        let mut pos = 0;
        while let Some(nl) = self.inbuf[pos..].iter().position(|&b| b == b'\n') {
            let line = &self.inbuf[pos..pos + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match self
                .waiting
                .pop_front()
                .and_then(|k| self.pushes.get_mut(k))
            {
                Some(p) => {
                    p.ack = now;
                    p.ok = line == b"ok";
                    if !p.ok && line != b"fail" {
                        self.other += 1;
                    }
                }
                None => self.other += 1,
            }
            self.last_answer = now;
            pos += nl + 1;
        }
        self.inbuf.drain(..pos);
        Ok(())
    }
}

/// Counts over the pushes of a finished churn.
#[derive(Debug, Default, PartialEq, Eq)]
struct PushCounts {
    /// Answered `ok`.
    ok: u64,
    /// Answered `fail`.
    fail: u64,
    /// Answered `fail` although the connection was open then and for 1 s more.
    fail_connected: u64,
    /// `ok` and the connection stayed open 1 s after it.
    counted: u64,
    /// Counted but never received.
    losses: u64,
    /// `ok`, not counted (the connection closed soon after), and not received.
    undelivered_to_leavers: u64,
    /// Never answered.
    unanswered: u64,
}

/// Sorts the pushes into `PushCounts`, given the close times and the send times received.
fn count_pushes(pushes: &[Push], closed_at: &[u64], received: &HashSet<u64>) -> PushCounts {
    let mut c = PushCounts::default();
    for p in pushes {
        if p.ack == 0 {
            c.unanswered += 1;
            continue;
        }
        let closed = closed_at.get(p.slot).copied().unwrap_or(u64::MAX);
        let stayed = closed >= p.ack.saturating_add(STAY_NS);
        let got = received.contains(&p.t);
        if !p.ok {
            c.fail += 1;
            c.fail_connected += u64::from(stayed);
            continue;
        }
        c.ok += 1;
        if stayed {
            c.counted += 1;
            c.losses += u64::from(!got);
        } else if !got {
            c.undelivered_to_leavers += 1;
        }
    }
    c
}

impl ClientProc {
    /// Starts a churn (the `churn` command).
    pub(super) fn start_churn(&mut self, cmd: &str) -> Result<(), String> {
        let c = parse_cmd(cmd)?;
        let s = StdStream::connect(c.text)
            .map_err(|e| format!("_clients: connect text port {}: {e}", c.text))?;
        s.set_nodelay(true)
            .and_then(|_| s.set_nonblocking(true))
            .map_err(|e| format!("_clients: text port: {e}"))?;
        let mut text = TcpStream::from_std(s);
        self.poll
            .registry()
            .register(&mut text, TEXT, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("_clients: register text port: {e}"))?;
        let t0 = mono_ns();
        self.churn = Some(Churn {
            rate: c.rate,
            push_rate: c.push_rate,
            t0,
            t_stop: t0 + (c.seconds * 1e9) as u64,
            uid_next: c.uid_first,
            uid_stride: c.uid_stride,
            opened: 0,
            closes: 0,
            no_victim: 0,
            graceful: 0,
            push_slots: 0,
            no_target: 0,
            behind_max: 0,
            rng: Rng::new(c.seed),
            text,
            out: Vec::new(),
            inbuf: Vec::new(),
            waiting: VecDeque::new(),
            pushes: Vec::new(),
            other: 0,
            last_t: 0,
            last_answer: 0,
            closed_at: vec![u64::MAX; self.conns.len()],
            before: (self.failed, self.connected, self.closed),
            drain_since: None,
        });
        Ok(())
    }

    /// Does what is due of the churn in progress; answers the command once it is over.
    pub(super) fn churn_tick(&mut self) -> Result<(), String> {
        let Some(mut ch) = self.churn.take() else {
            return Ok(());
        };
        match self.churn_step(&mut ch, mono_ns()) {
            Ok(None) => {
                self.churn = Some(ch);
                Ok(())
            }
            Ok(Some(answer)) => {
                let _ = self.poll.registry().deregister(&mut ch.text);
                reply(&answer)
            }
            Err(e) => Err(e),
        }
    }

    /// Readiness of the text-port connection.
    pub(super) fn churn_text_event(&mut self) -> Result<(), String> {
        let Some(ch) = self.churn.as_mut() else {
            return Ok(());
        };
        ch.read_answers(&mut self.scratch)?;
        ch.flush()
    }

    /// One turn of the churn: opens, closes and pushes that are due, or the end of draining
    /// (then the answer to send).
    fn churn_step(&mut self, ch: &mut Churn, now: u64) -> Result<Option<Value>, String> {
        if let Some(since) = ch.drain_since {
            let quiet = ch.waiting.is_empty() && self.inflight == 0;
            let waited = now - since;
            let done = quiet && waited >= GRACE_NS && now >= ch.last_answer + GRACE_NS;
            if done || waited > DRAIN_LIMIT_NS {
                return Ok(Some(self.churn_answer(ch, now)));
            }
            return Ok(None);
        }
        let elapsed = now.min(ch.t_stop).saturating_sub(ch.t0) as f64;
        let due = |rate: f64| (elapsed * rate / 1e9) as u64;
        let due_conns = due(ch.rate);
        while ch.opened < due_conns && self.inflight < self.cfg.inflight {
            let i = self.conns.len();
            self.conns.push(None);
            ch.closed_at.push(u64::MAX);
            let uid = ch.uid_next;
            ch.uid_next += ch.uid_stride;
            ch.opened += 1;
            self.open_slot(i, uid);
        }
        ch.behind_max = ch.behind_max.max(due_conns - ch.opened);
        while ch.closes < due_conns {
            ch.closes += 1;
            if self.ready.is_empty() {
                ch.no_victim += 1;
                continue;
            }
            let i = self.ready[ch.rng.below(self.ready.len() as u64) as usize];
            let graceful = ch.closes.is_multiple_of(2);
            ch.graceful += u64::from(graceful);
            self.disconnect(i, graceful);
            ch.note_closed(i, now);
        }
        let due_pushes = due(ch.push_rate);
        while ch.push_slots < due_pushes {
            ch.push_slots += 1;
            if self.ready.is_empty() {
                ch.no_target += 1;
                continue;
            }
            let i = self.ready[ch.rng.below(self.ready.len() as u64) as usize];
            let Some(Some(c)) = self.conns.get(i) else {
                ch.no_target += 1;
                continue;
            };
            let t = mono_ns().max(ch.last_t + 1);
            ch.last_t = t;
            // Writing to a Vec cannot fail.
            let _ = writeln!(ch.out, "{{\"uid\":\"u{}\",\"t\":{t}}}", c.uid);
            ch.waiting.push_back(ch.pushes.len());
            ch.pushes.push(Push {
                slot: i,
                t,
                ack: 0,
                ok: false,
            });
        }
        ch.flush()?;
        if now >= ch.t_stop {
            ch.drain_since = Some(now);
        }
        Ok(None)
    }

    /// Closes logged-in connection `i` on our side: an RST, after a close frame if `graceful`.
    fn disconnect(&mut self, i: usize, graceful: bool) {
        let mask = (self.rng.next_u64() as u32).to_le_bytes();
        let Some(mut c) = self.take_conn(i) else {
            return;
        };
        if graceful {
            let mut frame = Vec::with_capacity(8);
            ws::encode_masked(ws::OP_CLOSE, &1000u16.to_be_bytes(), mask, &mut frame);
            let _ = c.sock.write(&frame);
        }
        let _ = self.poll.registry().deregister(&mut c.sock);
    }

    /// The end of a churn: unfinished handshakes fail, and the counts are the answer.
    fn churn_answer(&mut self, ch: &mut Churn, now: u64) -> Value {
        let mut unfinished = 0;
        for i in 0..self.conns.len() {
            if self.conns[i].as_ref().is_some_and(|c| c.state != St::Ready) {
                if let Some(mut c) = self.take_conn(i) {
                    let _ = self.poll.registry().deregister(&mut c.sock);
                    ch.note_closed(i, now);
                    unfinished += 1;
                }
            }
        }
        if unfinished > 0 {
            self.note_error(format!(
                "{unfinished} handshakes unfinished at the end of the churn"
            ));
        }
        self.failed += unfinished;
        self.inflight = 0;
        let received: HashSet<u64> = self.rec.uni_t.iter().copied().collect();
        let pc = count_pushes(&ch.pushes, &ch.closed_at, &received);
        let (failed0, connected0, closed0) = ch.before;
        json!({
            "opened": ch.opened,
            "failed": self.failed - failed0,
            "logged_in": self.connected - connected0,
            "unfinished": unfinished,
            "behind": ch.behind_max,
            "behind_at_end": ((ch.t_stop - ch.t0) as f64 * ch.rate / 1e9) as u64 - ch.opened,
            "disconnects": ch.closes - ch.no_victim,
            "graceful": ch.graceful,
            "server_closed": self.closed - closed0,
            "pushes": ch.pushes.len(),
            "no_target": ch.no_target,
            "ok": pc.ok,
            "fail": pc.fail,
            "fail_connected": pc.fail_connected,
            "bad_answers": ch.other,
            "unanswered": pc.unanswered,
            "counted": pc.counted,
            "losses": pc.losses,
            "undelivered_to_leavers": pc.undelivered_to_leavers,
            "connected_now": self.ready.len(),
            "t0": ch.t0,
            "t_stop": ch.t_stop,
            "errors": self.errors,
        })
    }

    /// Closes every connection (the `leave` command); returns how many were open.
    pub(super) fn leave(&mut self) -> usize {
        let mut left = 0;
        for i in 0..self.conns.len() {
            if let Some(mut c) = self.take_conn(i) {
                let _ = self.poll.registry().deregister(&mut c.sock);
                left += 1;
            }
        }
        self.inflight = 0;
        self.next_open = self.cfg.count;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_command() {
        let c = parse_cmd("churn 1000 250.5 60 127.0.0.1:9 2001 2 7").unwrap();
        assert_eq!(c.rate, 1000.0);
        assert_eq!(c.push_rate, 250.5);
        assert_eq!(c.seconds, 60.0);
        assert_eq!(c.text, "127.0.0.1:9".parse().unwrap());
        assert_eq!((c.uid_first, c.uid_stride, c.seed), (2001, 2, 7));
        assert!(parse_cmd("churn 1 2 3").is_err());
        assert!(parse_cmd("churn -1 2 3 127.0.0.1:9 1 1 1").is_err());
        assert!(parse_cmd("churn 1 2 3 nowhere 1 1 1").is_err());
    }

    #[test]
    fn pushes_are_counted_only_if_the_client_stayed() {
        let s = 1_000_000_000;
        let p = |slot, t, ack, ok| Push { slot, t, ack, ok };
        let pushes = [
            p(0, 1, 10, true),         // slot 0 open: counted, received
            p(0, 2, 11, true),         // counted, lost
            p(1, 3, 12, true),         // slot 1 closed 0.5 s after: not counted, not received
            p(1, 4, 13, false),        // fail, client left soon
            p(0, 5, 14, false),        // fail while connected
            p(2, 6, 0, false),         // unanswered
            p(1, 7, 12 + s / 2, true), // ok after close: not counted
        ];
        let closed_at = [u64::MAX, 12 + s / 2, u64::MAX];
        let received: HashSet<u64> = [1, 7].into_iter().collect();
        let c = count_pushes(&pushes, &closed_at, &received);
        assert_eq!(
            c,
            PushCounts {
                ok: 4,
                fail: 2,
                fail_connected: 1,
                counted: 2,
                losses: 1,
                undelivered_to_leavers: 1,
                unanswered: 1,
            }
        );
    }
}
