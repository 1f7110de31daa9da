//! The webhook: events POSTed as JSON to a backend's URL, in batches, by a thread of the
//! worker's own, so the mio loop never waits on the backend.
//!
//! The loop hands each event to the thread over a bounded crossbeam channel
//! ([`Webhook::send`]): when the channel is full (the endpoint is down or slow and
//! `webhook_queue` events wait), the event is dropped and the loop counts it. The thread
//! takes the first waiting event, waits up to `webhook_delay` for more (at most
//! `webhook_batch`), and POSTs `{"events":[…]}` with `X-Herald-Signature: sha256=HEX`, the
//! HMAC-SHA256 of the body under `webhook_secret`. A batch is POSTed until the endpoint
//! answers 2xx, with a back-off between tries (100 ms doubling to 5 s): delivery is at least
//! once, and each event's `id` lets the receiver drop a repeat. What the endpoint answers
//! (replies to senders, acks, pushes) goes back to the loop as [`News::Answers`], with a
//! wake-up through the loop's `mio::Waker` (the same pattern as the cluster bus).
//!
//! The HTTP/1.1 client is small and blocking (on this thread): one connection kept alive
//! between POSTs while the server allows it, `Content-Length` or chunked answers, every POST
//! bounded by `webhook_timeout`.

use crate::auth::hmac_hex;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use mio::Waker;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// News the thread may queue for the loop before it waits for the loop to read them.
const NEWS: usize = 1024;
/// First pause after a failed POST; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest answer head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest answer body read.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// Why the webhook could not start.
#[derive(Debug, Error)]
pub enum WebhookError {
    /// The URL cannot be used.
    #[error("webhook_url: {0}")]
    Url(String),
    /// The thread could not be started.
    #[error("starting the webhook thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// One event for the webhook.
#[derive(Debug)]
pub struct Outgoing {
    /// The event's id (answers name the event by it).
    pub id: String,
    /// The event's JSON.
    pub json: String,
    /// The client connection the event is about (answers go to it), if any.
    pub conn: Option<String>,
    /// The Socket.IO ack id the client waits on, if any.
    pub ack: Option<u64>,
}

/// An answer the endpoint gave for one event.
#[derive(Debug)]
pub struct Reply {
    /// The client connection the event was about.
    pub conn: Option<String>,
    /// The ack id the client waits on.
    pub ack: Option<u64>,
    /// The answer object (`reply`, `ack`, `push`).
    pub answer: Value,
}

/// What the thread tells the loop.
#[derive(Debug)]
pub enum News {
    /// This many events were accepted (2xx).
    Sent(usize),
    /// A POST failed and will be tried again (why, for the log).
    Failed(String),
    /// The endpoint answered with replies, acks or pushes.
    Answers(Vec<Reply>),
}

/// The loop's end of the webhook.
pub struct Webhook {
    /// Events to the thread (bounded by `webhook_queue`).
    tx: Sender<Outgoing>,
    /// News from the thread.
    pub rx: Receiver<News>,
    /// The thread, waited for (a little) when the worker exits.
    thread: thread::JoinHandle<()>,
    /// Set when the worker stops waiting for it: a POST failing then is not tried again.
    abandon: Arc<AtomicBool>,
}

/// Where to POST.
#[derive(Debug, Clone)]
struct Target {
    /// `HOST[:PORT]`, as the `Host` header says it and the socket connects to it.
    authority: String,
    /// The path and query.
    path: String,
}

fn parse_url(url: &str) -> Result<Target, WebhookError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| WebhookError::Url(format!("`{url}` is not an http:// URL")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(WebhookError::Url(format!("`{url}` has no usable host")));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_string(),
    })
}

/// The settings the thread works with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `webhook_url`.
    pub url: String,
    /// `webhook_secret` (empty: unsigned).
    pub secret: String,
    /// `webhook_batch`.
    pub batch: usize,
    /// `webhook_delay`.
    pub delay: Duration,
    /// `webhook_queue`.
    pub queue: usize,
    /// `webhook_timeout`.
    pub timeout: Duration,
}

impl Webhook {
    /// Starts the thread; `waker` wakes the loop when news waits.
    pub fn start(s: Settings, waker: Arc<Waker>) -> Result<Webhook, WebhookError> {
        let target = parse_url(&s.url)?;
        let (tx, rx_events) = bounded(s.queue);
        let (news_tx, rx) = bounded(NEWS);
        let client = Client {
            target,
            secret: s.secret.clone(),
            timeout: s.timeout,
            stream: None,
        };
        let (batch, delay) = (s.batch, s.delay);
        let abandon = Arc::new(AtomicBool::new(false));
        let give_up = abandon.clone();
        let thread = thread::Builder::new()
            .name("webhook".into())
            .spawn(move || run(client, rx_events, news_tx, waker, batch, delay, give_up))?;
        Ok(Webhook {
            tx,
            rx,
            thread,
            abandon,
        })
    }

    /// The worker exits: the events still queued (a drain's logouts) are POSTed, for at most
    /// `limit`; whether all went out.
    pub fn finish(self, limit: Duration) -> bool {
        let Webhook {
            tx,
            rx,
            thread,
            abandon,
        } = self;
        // The thread ends once the queue is empty; its news have no reader any more.
        drop(tx);
        drop(rx);
        let deadline = Instant::now() + limit;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                abandon.store(true, Ordering::SeqCst);
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Queues an event; false when the queue is full (the caller counts the drop).
    pub fn send(&self, ev: Outgoing) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Tells the loop (nothing when it is gone: the worker is exiting, and the queue is still
/// POSTed).
fn tell(news: &Sender<News>, waker: &Waker, n: News) {
    if news.send(n).is_ok() {
        let _ = waker.wake();
    }
}

/// The thread: batch, POST until accepted, hand the answers back.
fn run(
    mut client: Client,
    rx: Receiver<Outgoing>,
    news: Sender<News>,
    waker: Arc<Waker>,
    max: usize,
    delay: Duration,
    abandon: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + delay;
        while batch.len() < max {
            match rx.recv_deadline(until) {
                Ok(e) => batch.push(e),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = body_of(&batch);
        let mut backoff = FIRST_BACKOFF;
        let answer = loop {
            match client.post(&body) {
                Ok(a) => break a,
                Err(why) => {
                    if abandon.load(Ordering::SeqCst) {
                        return;
                    }
                    tell(&news, &waker, News::Failed(why));
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        tell(&news, &waker, News::Sent(batch.len()));
        let replies = answers(&answer, &batch);
        if !replies.is_empty() {
            tell(&news, &waker, News::Answers(replies));
        }
    }
}

/// `{"events":[…]}` of a batch.
fn body_of(batch: &[Outgoing]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + batch.iter().map(|e| e.json.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// The answers of an endpoint's body for the events of `batch`: `{"replies":[{"id":…,
/// "reply":…, "ack":…, "push":…}, …]}`, or, for a batch of one event, `reply`/`ack`/`push` at
/// the top level. Anything else (an empty body, `ok`, other JSON) answers nothing.
fn answers(body: &[u8], batch: &[Outgoing]) -> Vec<Reply> {
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let for_event = |e: &Outgoing, answer: Value| Reply {
        conn: e.conn.clone(),
        ack: e.ack,
        answer,
    };
    match top.remove("replies") {
        Some(Value::Array(list)) => list
            .into_iter()
            .filter_map(|r| {
                let id = r.get("id")?.as_str()?;
                let e = batch.iter().find(|e| e.id == id)?;
                Some(for_event(e, r))
            })
            .collect(),
        _ if batch.len() == 1
            && ["reply", "ack", "push"]
                .iter()
                .any(|k| top.contains_key(*k)) =>
        {
            vec![for_event(&batch[0], Value::Object(top))]
        }
        _ => Vec::new(),
    }
}

/// A blocking HTTP/1.1 client for one endpoint, keeping its connection between POSTs.
struct Client {
    /// Where to POST.
    target: Target,
    /// The signing key.
    secret: String,
    /// Bound on one POST.
    timeout: Duration,
    /// The kept-alive connection, if any.
    stream: Option<TcpStream>,
}

impl Client {
    /// POSTs `body`; the answer's body when the status is 2xx.
    fn post(&mut self, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herald/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.target.path,
            self.target.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if !self.secret.is_empty() {
            let sig = hmac_hex(self.secret.as_bytes(), body);
            head.push_str(&format!("X-Herald-Signature: sha256={sig}\r\n"));
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        // A kept connection the server closed meanwhile fails at once: one more try on a new one.
        let reused = self.stream.is_some();
        match self.exchange(&req) {
            Err((why, false)) if reused => {
                log::debug!("webhook: kept connection failed ({why}); reconnecting");
                self.exchange(&req).map_err(|(why, _)| why)
            }
            r => r.map_err(|(why, _)| why),
        }
    }

    /// One request on the kept connection (made if needed). The error says whether any byte of
    /// an answer came.
    fn exchange(&mut self, req: &[u8]) -> Result<Vec<u8>, (String, bool)> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect().map_err(|e| (e, false))?,
        };
        stream
            .write_all(req)
            .map_err(|e| (format!("sending: {e}"), false))?;
        let (status, keep, body) = read_answer(&mut stream, deadline)?;
        if keep {
            self.stream = Some(stream);
        }
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err((format!("answered {status}"), true))
        }
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let addrs = self
            .target
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.target.authority))?;
        let mut last = format!("{} resolves to no address", self.target.authority);
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    s.set_read_timeout(Some(self.timeout))
                        .and_then(|()| s.set_write_timeout(Some(self.timeout)))
                        .map_err(|e| e.to_string())?;
                    return Ok(s);
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        Err(last)
    }
}

/// Reads one answer: status, whether the connection may be kept, body.
fn read_answer(
    s: &mut TcpStream,
    deadline: Instant,
) -> Result<(u16, bool, Vec<u8>), (String, bool)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    let mut fill = |buf: &mut Vec<u8>, eof: &mut bool| -> Result<(), (String, bool)> {
        if Instant::now() > deadline {
            return Err(("no answer within webhook_timeout".into(), !buf.is_empty()));
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                *eof = true;
                Ok(())
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err((format!("reading the answer: {e}"), !buf.is_empty())),
        }
    };
    // The head.
    let (status, keep, framing, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = r.code.unwrap_or(0);
                let mut keep = r.version == Some(1);
                let mut framing = Framing::UntilEof;
                for h in r.headers.iter() {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("connection") {
                        if v.contains("close") {
                            keep = false;
                        } else if v.contains("keep-alive") {
                            keep = true;
                        }
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        let n = v
                            .trim()
                            .parse()
                            .map_err(|_| ("bad Content-Length".to_string(), true))?;
                        framing = Framing::Length(n);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && v.contains("chunked")
                    {
                        framing = Framing::Chunked;
                    }
                }
                if (100..200).contains(&status) {
                    // `100 Continue` and the like: skip it, the real answer follows.
                    buf.drain(..n);
                    continue;
                }
                break (status, keep, framing, n);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(("answer head too large".into(), true));
                }
                if eof {
                    return Err(("connection closed before an answer".into(), !buf.is_empty()));
                }
                fill(&mut buf, &mut eof)?;
            }
            Err(e) => return Err((format!("unreadable answer: {e}"), true)),
        }
    };
    buf.drain(..head_len);
    let body = loop {
        match framing {
            Framing::Length(n) if buf.len() >= n => {
                buf.truncate(n);
                break buf;
            }
            Framing::Chunked => {
                if let Some(b) = dechunk(&buf)? {
                    break b;
                }
            }
            Framing::UntilEof if eof => break buf,
            _ => {}
        }
        if eof {
            return Err(("connection closed inside the answer".into(), true));
        }
        if buf.len() > MAX_ANSWER {
            return Err(("answer too large".into(), true));
        }
        fill(&mut buf, &mut eof)?;
    };
    let keep = keep && !matches!(framing, Framing::UntilEof);
    Ok((status, keep, body))
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// After this many bytes.
    Length(usize),
    /// After the last chunk.
    Chunked,
    /// At the end of the connection.
    UntilEof,
}

/// A whole chunked body decoded, `None` while incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<Vec<u8>>, (String, bool)> {
    let bad = || ("bad chunked answer".to_string(), true);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + nl]).map_err(|_| bad())?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        pos += nl + 1;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                    return Ok(None);
                };
                let empty = buf[pos..pos + nl].iter().all(|b| *b == b'\r');
                pos += nl + 1;
                if empty {
                    return Ok(Some(out));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        pos += if buf[pos] == b'\r' { 2 } else { 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1/herald.php").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:80", "/herald.php")
        );
        let t = parse_url("http://localhost:8080").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("localhost:8080", "/")
        );
        let t = parse_url("http://[::1]:81/x?y=1").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("[::1]:81", "/x?y=1")
        );
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://u:p@x/").is_err());
    }

    #[test]
    fn chunked_answers() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n0\r\n\r\n").unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n").unwrap(), None);
        assert_eq!(
            dechunk(b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n").unwrap(),
            Some(b"abcde".to_vec())
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }

    /// Reads one request (head and `Content-Length` body) from `s`; its head.
    fn read_request(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            buf.push(b[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        head
    }

    #[test]
    fn the_client_keeps_its_connection_and_reads_both_framings() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let head = read_request(&mut s);
            assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("X-Herald-Signature: sha256="), "{head}");
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
            read_request(&mut s);
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .unwrap();
            read_request(&mut s);
            s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            // A new connection after the close.
            let (mut s, _) = l.accept().unwrap();
            read_request(&mut s);
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nbye").unwrap();
        });
        let mut c = Client {
            target: parse_url(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            secret: "k".into(),
            timeout: Duration::from_secs(5),
            stream: None,
        };
        assert_eq!(c.post(b"{}").unwrap(), b"{}");
        assert_eq!(c.post(b"{}").unwrap(), b"abc");
        assert!(c.post(b"{}").unwrap_err().contains("503"));
        assert!(c.stream.is_none());
        assert_eq!(c.post(b"{}").unwrap(), b"bye");
        server.join().unwrap();
    }

    fn ev(id: &str) -> Outgoing {
        Outgoing {
            id: id.into(),
            json: format!("{{\"id\":\"{id}\"}}"),
            conn: Some(format!("c{id}")),
            ack: None,
        }
    }

    #[test]
    fn batches_and_answers() {
        let batch = [ev("a"), ev("b")];
        assert_eq!(body_of(&batch), br#"{"events":[{"id":"a"},{"id":"b"}]}"#);
        let r = answers(
            br#"{"replies":[{"id":"b","reply":"x"},{"id":"zz"}]}"#,
            &batch,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].conn.as_deref(), Some("cb"));
        // The short form only for a batch of one.
        assert!(answers(br#"{"reply":"x"}"#, &batch).is_empty());
        assert_eq!(answers(br#"{"reply":"x"}"#, &batch[..1]).len(), 1);
        assert!(answers(b"ok", &batch).is_empty());
    }
}
