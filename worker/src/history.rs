//! The history a worker keeps for the uids it owns: the messages pushed to each uid, with
//! their positions, bounded per uid (`history_size`), in time (`history_ttl`) and in bytes for
//! the whole worker (`history_max_bytes`, oldest first). Pure bookkeeping: no socket, and the
//! caller passes the clock (milliseconds), so every rule is unit-tested here.
//!
//! Positions: an **epoch**, drawn at random when the store is made (so a worker that restarts,
//! and lost what it kept, hands out positions no client holds; a stream handed over by the
//! worker this one replaced keeps that worker's epoch), and an **offset** from one
//! counter of the store, so a uid's offsets only grow (they are not consecutive: they are
//! shared by the uids the worker owns). Each uid's stream remembers the highest offset it lost
//! (evicted, expired, or dropped for its size, and the counter's value when the stream was
//! made): a client whose last offset is below that floor missed something that is gone, and
//! is told `recovered: false`.
//!
//! Memory: one push to several uids is kept once per uid as a reference to one shared
//! [`Bytes`] payload; each copy is counted with its bookkeeping ([`ENTRY_OVERHEAD`]) towards
//! `history_max_bytes`, so the count errs on the safe side.
//!
//! It also keeps the bindings of Socket.IO private session ids (`pid`) to the uid and socket
//! id of the session, for the uids it owns, so a reconnection landing on any worker can be
//! recognised by asking the owners.

use crate::history_all::{merge, Broadcast, Broadcasts};
use bytes::Bytes;
use herald_ipc::{MovedBinding, MovedEntry, MovedStream};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use thiserror::Error;

/// Bytes counted for one kept message beyond its payload: the entry, its slot in the keeping
/// order, the payload's allocation and the allocator's share (measured: about 150 bytes of
/// resident memory per message beyond its payload, see scripts/bench-results.md).
pub const ENTRY_OVERHEAD: usize = 160;
/// Most Socket.IO sessions kept recoverable per worker: past it, new sessions are not bound
/// (their clients get `recovered: false` after a drop) until old bindings expire.
pub const MAX_BINDINGS: usize = 200_000;
/// Most payload bytes one recovery answer carries (it crosses the mesh in one frame, and is
/// queued to one connection at once); the caller may ask for less.
pub const MAX_RECOVERY_BYTES: usize = 4 * 1024 * 1024;

/// Why a client's position cannot be continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The position is from another epoch (another worker start, or someone else's).
    #[error("the position is from another epoch")]
    ForeignEpoch,
    /// The offset is past the uid's last one.
    #[error("the offset is in the future")]
    Future,
    /// Messages after the position were dropped (size, time, memory) or never kept.
    #[error("messages after the position are gone")]
    Gone,
    /// The missed messages are too many bytes for one answer.
    #[error("too much was missed to send at once")]
    TooBig,
}

/// One kept message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its position in the uid's stream.
    pub offset: u64,
    /// When it was kept (caller's milliseconds).
    pub at: u64,
    /// The pushed bytes, shared with every other uid the push was for.
    pub payload: Bytes,
    /// Pushed as a binary frame.
    pub binary: bool,
    /// Some connection had it when it was pushed, or it was delivered since (offline delivery
    /// sends only the others).
    pub delivered: bool,
}

impl Entry {
    /// Bytes counted for it.
    pub(crate) fn cost(&self) -> usize {
        self.payload.len() + ENTRY_OVERHEAD
    }
}

/// One uid's kept messages.
#[derive(Debug, Default)]
struct Stream {
    /// The epoch of its positions: the store's, or the one of the worker it was handed over
    /// from (graceful reload).
    epoch: u64,
    /// Oldest first.
    entries: VecDeque<Entry>,
    /// The uid's last offset.
    top: u64,
    /// The highest offset this stream lost (or the store's counter when it was made): a
    /// position below it cannot be continued.
    floor: u64,
    /// When the last message was kept, or the uid was last seen held (an empty stream is
    /// dropped two `ttl`s after it).
    last_at: u64,
    /// The store's counter when the stream was made: the broadcasts after it were aimed at
    /// the uid (those before were not).
    born: u64,
}

/// A Socket.IO session's private id, bound to what a recovery restores.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The uid the session logged in as.
    pub uid: String,
    /// Its socket id.
    pub sid: String,
    /// When it stops being recoverable (`None` while the session lives).
    pub expires: Option<u64>,
    /// The Engine.IO id of the session that bound it last (only its end counts).
    pub by: String,
}

/// What a recovery found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The epoch of the uid's positions.
    pub epoch: u64,
    /// The missed messages, oldest first.
    pub messages: Vec<Entry>,
    /// The uid's last offset.
    pub top: u64,
}

/// A worker's history.
#[derive(Debug)]
pub struct History {
    /// This store's epoch.
    pub epoch: u64,
    /// Messages kept per uid.
    size: usize,
    /// How long a message is kept, in milliseconds.
    ttl: u64,
    /// Bytes the store may hold.
    max_bytes: usize,
    /// The last offset handed out.
    counter: u64,
    /// Streams by uid (foldhash: the lookup is on every push; seeded at random per
    /// process, so chosen uids cannot be made to collide).
    streams: HashMap<Rc<str>, Stream, foldhash::fast::RandomState>,
    /// Every kept message in keeping order (uid, offset), for expiry and eviction from the
    /// oldest; an entry already dropped by its stream's size is skipped when reached.
    order: VecDeque<(Rc<str>, u64, u64)>,
    /// Messages kept.
    pub messages: usize,
    /// Bytes counted.
    pub bytes: usize,
    /// Messages evicted for `max_bytes` so far.
    pub evicted: u64,
    /// Socket.IO session bindings by private id.
    bindings: HashMap<String, Binding>,
    /// The broadcasts to everyone, merged into each uid's stream when it is read.
    all: Broadcasts,
    /// The key standing for [`History::all`] in `order` (told apart by pointer, so no uid
    /// can be mistaken for it).
    all_key: Rc<str>,
}

impl History {
    /// A store with `size` messages per uid, kept `ttl_ms`, at most `max_bytes` in all, and
    /// `epoch` (random in the worker).
    pub fn new(size: usize, ttl_ms: u64, max_bytes: usize, epoch: u64) -> History {
        History {
            epoch,
            size,
            ttl: ttl_ms,
            max_bytes,
            counter: 0,
            streams: HashMap::default(),
            order: VecDeque::new(),
            messages: 0,
            bytes: 0,
            evicted: 0,
            bindings: HashMap::new(),
            all: Broadcasts::default(),
            all_key: Rc::from(""),
        }
    }

    /// Keeps a broadcast to everyone but `exclude`; its offset.
    pub fn append_all(
        &mut self,
        payload: Bytes,
        binary: bool,
        exclude: Vec<String>,
        now: u64,
    ) -> u64 {
        self.expire(now);
        self.counter += 1;
        let offset = self.counter;
        let b = Broadcast {
            entry: Entry {
                offset,
                at: now,
                payload,
                binary,
                delivered: true,
            },
            exclude,
        };
        let cost = b.cost();
        while self.bytes + cost > self.max_bytes && self.messages > 0 {
            if !self.drop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        self.all.list.push_back(b);
        self.all.top = offset;
        self.bytes += cost;
        self.messages += 1;
        while self.all.list.len() > self.size {
            let Some(front) = self.all.list.front().map(|b| b.entry.offset) else {
                break;
            };
            if let Some(c) = self.all.drop_front(front) {
                self.bytes -= c;
                self.messages -= 1;
            }
        }
        self.order.push_back((self.all_key.clone(), offset, now));
        offset
    }

    /// A stream's last position: its own last offset, or the last broadcast after it was
    /// made.
    fn top_of(&self, s: &Stream) -> u64 {
        if self.all.top > s.born {
            s.top.max(self.all.top)
        } else {
            s.top
        }
    }

    /// Drops the kept message at `offset` of `uid` (or of the broadcasts) when it is the
    /// oldest there; its cost.
    fn drop_entry(&mut self, uid: &Rc<str>, offset: u64) -> Option<usize> {
        if Rc::ptr_eq(uid, &self.all_key) {
            return self.all.drop_front(offset);
        }
        let s = self.streams.get_mut(uid)?;
        if s.entries.front().is_some_and(|f| f.offset == offset) {
            let old = s.entries.pop_front()?;
            s.floor = s.floor.max(old.offset);
            return Some(old.cost());
        }
        None
    }

    /// Keeps `payload` for `uid`; its offset.
    pub fn append(
        &mut self,
        uid: &str,
        payload: Bytes,
        binary: bool,
        delivered: bool,
        now: u64,
    ) -> u64 {
        self.expire(now);
        self.counter += 1;
        let offset = self.counter;
        let e = Entry {
            offset,
            at: now,
            payload,
            binary,
            delivered,
        };
        let cost = e.cost();
        // Room first: the oldest messages of the whole store go until this one fits.
        while self.bytes + cost > self.max_bytes && self.messages > 0 {
            if !self.drop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        let key: Rc<str> = match self.streams.get_key_value(uid) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Rc<str> = Rc::from(uid);
                let floor = offset - 1;
                self.streams.insert(
                    k.clone(),
                    Stream {
                        epoch: self.epoch,
                        floor,
                        top: floor,
                        born: floor,
                        ..Stream::default()
                    },
                );
                k
            }
        };
        let size = self.size;
        let mut dropped = 0;
        if let Some(s) = self.streams.get_mut(uid) {
            s.top = offset;
            s.last_at = now;
            s.entries.push_back(e);
            while s.entries.len() > size {
                if let Some(old) = s.entries.pop_front() {
                    s.floor = s.floor.max(old.offset);
                    dropped += old.cost();
                    self.messages -= 1;
                }
            }
        }
        self.bytes = self.bytes + cost - dropped;
        self.messages += 1;
        self.order.push_back((key, offset, now));
        // Entries dropped by a stream's size stay in `order` until reached: compact when
        // they are most of it.
        if self.order.len() > 64 && self.order.len() > 2 * self.messages {
            let (streams, all, all_key) = (&self.streams, &self.all, &self.all_key);
            self.order.retain(|(u, o, _)| {
                if Rc::ptr_eq(u, all_key) {
                    return all.holds(*o);
                }
                streams
                    .get(u)
                    .and_then(|s| s.entries.front())
                    .is_some_and(|f| f.offset <= *o)
            });
        }
        offset
    }

    /// Drops the oldest kept message of the store; false when there is none.
    fn drop_oldest(&mut self) -> bool {
        while let Some((uid, offset, _)) = self.order.pop_front() {
            if let Some(cost) = self.drop_entry(&uid, offset) {
                self.bytes -= cost;
                self.messages -= 1;
                return true;
            }
        }
        false
    }

    /// Drops the messages older than the ttl. Bounded work per call in the amortised sense:
    /// each message is dropped once. (Empty streams go in [`History::sweep`].)
    pub fn expire(&mut self, now: u64) {
        let ttl = self.ttl;
        while let Some((uid, offset, at)) = self.order.front().cloned() {
            if at.saturating_add(ttl) > now {
                break;
            }
            self.order.pop_front();
            if let Some(cost) = self.drop_entry(&uid, offset) {
                self.bytes -= cost;
                self.messages -= 1;
            }
        }
    }

    /// Drops what is past its time (called once a second): expired messages, bindings past
    /// their window, and empty streams two ttls after their last message — unless `held`
    /// says the uid has a connection somewhere: its position stays good while it does (it
    /// may be getting only broadcasts), and two ttls after.
    pub fn sweep(&mut self, now: u64, held: impl Fn(&str) -> bool) {
        self.expire(now);
        let ttl = self.ttl;
        self.streams.retain(|uid, s| {
            if !s.entries.is_empty() || s.last_at.saturating_add(2 * ttl) > now {
                return true;
            }
            if held(uid) {
                s.last_at = now;
                return true;
            }
            false
        });
        self.bindings
            .retain(|_, b| b.expires.is_none_or(|t| t > now));
    }

    /// The messages of `uid` after `offset` in `epoch`, or why the gap cannot be filled
    /// (`TooBig` past `max_bytes` of payloads). An answer also marks them delivered.
    pub fn since(
        &mut self,
        uid: &str,
        epoch: u64,
        offset: u64,
        now: u64,
        max_bytes: usize,
    ) -> Result<Found, Refusal> {
        self.expire(now);
        let Some(s) = self.streams.get(uid) else {
            if epoch != self.epoch {
                return Err(Refusal::ForeignEpoch);
            }
            if offset > self.counter {
                return Err(Refusal::Future);
            }
            // Nothing kept for this uid within two ttls: whatever came after the position
            // (if anything) is gone.
            return Err(Refusal::Gone);
        };
        if epoch != s.epoch {
            return Err(Refusal::ForeignEpoch);
        }
        let top = self.top_of(s);
        if offset > top {
            return Err(Refusal::Future);
        }
        // A message of the uid's, or a broadcast, after the position was dropped.
        if offset < s.floor || offset < self.all.floor {
            return Err(Refusal::Gone);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let own = s.entries.iter().filter(|e| e.offset > offset);
        for e in merge(own, self.all.after(offset, uid)) {
            bytes += e.payload.len();
            if bytes > max_bytes.min(MAX_RECOVERY_BYTES) {
                return Err(Refusal::TooBig);
            }
            out.push(e.clone());
        }
        let epoch = s.epoch;
        if let Some(s) = self.streams.get_mut(uid) {
            for e in s.entries.iter_mut().filter(|e| e.offset > offset) {
                e.delivered = true;
            }
        }
        Ok(Found {
            epoch,
            messages: out,
            top,
        })
    }

    /// The messages of `uid` nobody received (offline delivery), now marked delivered: the
    /// oldest first, up to `max_bytes` of payloads (the rest waits for the next login).
    pub fn undelivered(&mut self, uid: &str, now: u64, max_bytes: usize) -> Found {
        self.expire(now);
        let Some(s) = self.streams.get_mut(uid) else {
            return Found {
                epoch: self.epoch,
                ..Found::default()
            };
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in s.entries.iter_mut().filter(|e| !e.delivered) {
            bytes += e.payload.len();
            if bytes > max_bytes.min(MAX_RECOVERY_BYTES) {
                break;
            }
            e.delivered = true;
            out.push(e.clone());
        }
        Found {
            epoch: s.epoch,
            messages: out,
            top: s.top,
        }
    }

    /// Everything kept for `uid` (the backends' `history` command), oldest first: its own
    /// messages and the broadcasts since its stream was made.
    pub fn read(&mut self, uid: &str, now: u64) -> Found {
        self.expire(now);
        match self.streams.get(uid) {
            Some(s) => Found {
                epoch: s.epoch,
                messages: merge(s.entries.iter(), self.all.after(s.born, uid))
                    .into_iter()
                    .cloned()
                    .collect(),
                top: self.top_of(s),
            },
            None => Found {
                epoch: self.epoch,
                ..Found::default()
            },
        }
    }

    /// The uid's position now, its last offset: a uid with no stream gets an empty one, so
    /// that what is pushed next is kept after this position (a client that logs in, gets
    /// nothing and drops can still recover). The empty stream lives two ttls.
    pub fn position(&mut self, uid: &str, now: u64) -> (u64, u64) {
        if let Some(s) = self.streams.get(uid) {
            return (s.epoch, self.top_of(s));
        }
        let at = self.counter;
        self.streams.insert(
            Rc::from(uid),
            Stream {
                epoch: self.epoch,
                floor: at,
                top: at,
                last_at: now,
                born: at,
                ..Stream::default()
            },
        );
        (self.epoch, at)
    }

    /// The epoch of `uid`'s positions.
    pub fn epoch_of(&self, uid: &str) -> u64 {
        self.streams.get(uid).map_or(self.epoch, |s| s.epoch)
    }

    /// Everything kept, to hand to the worker replacing this one: the counter, the streams
    /// in pieces of about `chunk` payload bytes, and the bindings.
    pub fn export(
        &mut self,
        now: u64,
        chunk: usize,
    ) -> (u64, Vec<Vec<MovedStream>>, Vec<MovedBinding>) {
        self.expire(now);
        let mut pieces: Vec<Vec<MovedStream>> = Vec::new();
        let mut piece = Vec::new();
        let mut size = 0;
        for (uid, s) in &self.streams {
            // The broadcasts since the stream was made go as the uid's own (the next worker
            // keeps its own broadcasts), the newest `size` of all.
            let all = merge(s.entries.iter(), self.all.after(s.born, uid));
            let skip = all.len().saturating_sub(self.size);
            let mut floor = match skip {
                0 => s.floor,
                n => s.floor.max(all[n - 1].offset),
            };
            // A broadcast aimed at the uid that was dropped here is lost to it too.
            if self.all.floor > s.born {
                floor = floor.max(self.all.floor);
            }
            let entries: Vec<MovedEntry> = all[skip..]
                .iter()
                .map(|e| {
                    let text = std::str::from_utf8(&e.payload).ok().map(str::to_string);
                    MovedEntry {
                        offset: e.offset,
                        age_ms: now.saturating_sub(e.at),
                        bytes: text.is_none().then(|| e.payload.to_vec()),
                        text,
                        binary: e.binary,
                        delivered: e.delivered,
                    }
                })
                .collect();
            size += entries
                .iter()
                .map(|e| {
                    64 + e.text.as_ref().map_or(0, String::len)
                        + 4 * e.bytes.as_ref().map_or(0, Vec::len)
                })
                .sum::<usize>()
                + 64;
            piece.push(MovedStream {
                uid: uid.to_string(),
                epoch: s.epoch,
                top: self.top_of(s),
                floor,
                age_ms: now.saturating_sub(s.last_at),
                entries,
            });
            if size >= chunk {
                pieces.push(std::mem::take(&mut piece));
                size = 0;
            }
        }
        if !piece.is_empty() {
            pieces.push(piece);
        }
        let bindings = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires.is_none_or(|t| t > now))
            .map(|(pid, b)| MovedBinding {
                pid: pid.clone(),
                uid: b.uid.clone(),
                sid: b.sid.clone(),
                by: b.by.clone(),
                expires_in_ms: b.expires.map(|t| t - now),
            })
            .collect();
        (self.counter, pieces, bindings)
    }

    /// Takes up what a replaced worker handed over. A uid this store already keeps (a push
    /// reached it first) keeps its own stream; the handed one is dropped (its clients are
    /// told `recovered: false`). Returns how many streams were taken up.
    pub fn adopt(
        &mut self,
        counter: u64,
        streams: Vec<MovedStream>,
        bindings: Vec<MovedBinding>,
        now: u64,
    ) -> usize {
        self.counter = self.counter.max(counter);
        // Broadcasts kept here before the handover are on this store's own offsets, not the
        // handed streams': they cannot be placed among a handed stream's messages, so when
        // there are any, no handed position can be continued (`recovered: false`); the
        // positions handed out from now on are good.
        let lost = self.all.top > 0;
        let mut taken = 0;
        for m in streams {
            if self.streams.contains_key(m.uid.as_str()) {
                continue;
            }
            let key: Rc<str> = Rc::from(m.uid.as_str());
            let mut entries = VecDeque::with_capacity(m.entries.len());
            for e in m.entries.into_iter().take(self.size.max(1)) {
                let entry = Entry {
                    offset: e.offset,
                    at: now.saturating_sub(e.age_ms),
                    payload: match (e.text, e.bytes) {
                        (Some(t), _) => Bytes::from(t),
                        (None, Some(b)) => Bytes::from(b),
                        (None, None) => Bytes::new(),
                    },
                    binary: e.binary,
                    delivered: e.delivered,
                };
                self.bytes += entry.cost();
                self.messages += 1;
                self.order.push_back((key.clone(), entry.offset, entry.at));
                entries.push_back(entry);
            }
            self.streams.insert(
                key,
                Stream {
                    epoch: m.epoch,
                    entries,
                    top: m.top,
                    floor: if lost {
                        m.floor.max(m.top + 1)
                    } else {
                        m.floor
                    },
                    last_at: now.saturating_sub(m.age_ms),
                    born: self.counter,
                },
            );
            taken += 1;
        }
        // The keeping order is by time: the handed messages are older than some kept here.
        self.order.make_contiguous().sort_by_key(|(_, _, at)| *at);
        while self.bytes > self.max_bytes && self.messages > 0 {
            if !self.drop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        for b in bindings {
            if !self.bindings.contains_key(&b.pid) && self.bindings.len() < MAX_BINDINGS {
                let expires = b.expires_in_ms.map(|t| now + t);
                self.bindings.insert(
                    b.pid,
                    Binding {
                        uid: b.uid,
                        sid: b.sid,
                        expires,
                        by: b.by,
                    },
                );
            }
        }
        taken
    }

    /// Binds Socket.IO private id `pid` to `uid` and socket id `sid` for the session `by`;
    /// `ended` (when that session ended) is when the binding expires. An end told by another
    /// session than the last binder is ignored. False when the store is full of live
    /// bindings.
    pub fn bind(
        &mut self,
        pid: &str,
        uid: &str,
        sid: &str,
        by: &str,
        ended: Option<u64>,
        now: u64,
    ) -> bool {
        if let Some(b) = self.bindings.get_mut(pid) {
            if b.uid == uid && (ended.is_none() || b.by == by) {
                b.expires = ended;
                b.sid = sid.to_string();
                b.by = by.to_string();
            }
            return true;
        }
        if self.bindings.len() >= MAX_BINDINGS {
            self.bindings
                .retain(|_, b| b.expires.is_none_or(|t| t > now));
            if self.bindings.len() >= MAX_BINDINGS {
                return false;
            }
        }
        self.bindings.insert(
            pid.to_string(),
            Binding {
                uid: uid.to_string(),
                sid: sid.to_string(),
                expires: ended,
                by: by.to_string(),
            },
        );
        true
    }

    /// The binding of `pid`, if it is recoverable now. It is consumed: a private id recovers
    /// one connection once (the recovered session binds it again at once).
    pub fn take_binding(&mut self, pid: &str, now: u64) -> Option<Binding> {
        let b = self.bindings.remove(pid)?;
        b.expires.is_none_or(|t| t > now).then_some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn texts(f: &Found) -> Vec<String> {
        f.messages
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }

    #[test]
    fn offsets_grow_and_recovery_fills_the_gap() {
        let mut h = History::new(10, 60_000, 1 << 20, 7);
        let o1 = h.append("u1", b("a"), false, true, 0);
        let o2 = h.append("u2", b("x"), false, true, 0);
        let o3 = h.append("u1", b("b"), false, true, 1);
        let o4 = h.append("u1", b("c"), false, true, 2);
        assert!(o1 < o2 && o2 < o3 && o3 < o4);
        let f = h.since("u1", 7, o1, 3, usize::MAX).unwrap();
        assert_eq!(texts(&f), ["b", "c"]);
        assert_eq!(f.top, o4);
        assert!(h
            .since("u1", 7, o4, 3, usize::MAX)
            .unwrap()
            .messages
            .is_empty());
        // The position before anything was kept for the uid: everything.
        assert_eq!(
            texts(&h.since("u1", 7, 0, 3, usize::MAX).unwrap()),
            ["a", "b", "c"]
        );
        assert_eq!(h.messages, 4);
    }

    #[test]
    fn bad_positions_are_refused() {
        let mut h = History::new(10, 60_000, 1 << 20, 7);
        let o = h.append("u1", b("a"), false, true, 0);
        assert_eq!(
            h.since("u1", 8, o, 1, usize::MAX).unwrap_err(),
            Refusal::ForeignEpoch
        );
        assert_eq!(
            h.since("u1", 7, o + 5, 1, usize::MAX).unwrap_err(),
            Refusal::Future
        );
        // Another uid's offset is past this uid's top: refused, never another's messages.
        let o2 = h.append("u2", b("secret"), false, true, 0);
        assert_eq!(
            h.since("u1", 7, o2, 1, usize::MAX).unwrap_err(),
            Refusal::Future
        );
        assert_eq!(
            h.since("nobody", 7, 0, 1, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
    }

    #[test]
    fn size_bound_makes_older_positions_gone() {
        let mut h = History::new(2, 60_000, 1 << 20, 1);
        let o1 = h.append("u", b("1"), false, true, 0);
        let o2 = h.append("u", b("2"), false, true, 0);
        h.append("u", b("3"), false, true, 0);
        h.append("u", b("4"), false, true, 0);
        assert_eq!(h.messages, 2);
        assert_eq!(
            h.since("u", 1, o1, 0, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        assert_eq!(
            texts(&h.since("u", 1, o2 + 1, 0, usize::MAX).unwrap()),
            ["4"]
        );
        assert_eq!(h.bytes, 2 * (1 + ENTRY_OVERHEAD));
    }

    #[test]
    fn ttl_expires_and_counts_down() {
        let mut h = History::new(10, 1_000, 1 << 20, 1);
        let o1 = h.append("u", b("old"), false, true, 0);
        h.append("u", b("new"), false, true, 900);
        h.expire(1_500);
        assert_eq!(h.messages, 1);
        // Who had `old` misses only `new`, still kept; who had nothing missed `old`, gone.
        assert_eq!(
            texts(&h.since("u", 1, o1, 1_500, usize::MAX).unwrap()),
            ["new"]
        );
        assert_eq!(
            h.since("u", 1, o1 - 1, 1_500, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        h.expire(5_000);
        assert_eq!((h.messages, h.bytes), (0, 0));
        h.sweep(10_000, |_| false);
        assert_eq!(
            h.since("u", 1, o1, 10_000, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
    }

    #[test]
    fn memory_bound_evicts_oldest_first() {
        let max = 3 * (100 + ENTRY_OVERHEAD);
        let mut h = History::new(100, 60_000, max, 1);
        let p = Bytes::from(vec![b'x'; 100]);
        let a = h.append("a", p.clone(), false, true, 0);
        h.append("b", p.clone(), false, true, 1);
        h.append("c", p.clone(), false, true, 2);
        assert_eq!(h.evicted, 0);
        h.append("d", p, false, true, 3);
        assert_eq!(h.evicted, 1);
        assert_eq!(h.messages, 3);
        assert!(h.bytes <= max);
        // `a` lost its only message: its position before it is gone.
        assert_eq!(
            h.since("a", 1, a - 1, 4, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        assert_eq!(h.since("b", 1, a, 4, usize::MAX).unwrap().messages.len(), 1);
    }

    #[test]
    fn order_stays_bounded_when_streams_drop_by_size() {
        let mut h = History::new(1, 60_000, 1 << 30, 1);
        for i in 0..10_000 {
            h.append("u", b("m"), false, true, i);
        }
        assert_eq!(h.messages, 1);
        assert!(h.order.len() <= 130, "{}", h.order.len());
    }

    #[test]
    fn a_position_given_before_any_message_can_be_continued() {
        let mut h = History::new(10, 60_000, 1 << 20, 1);
        h.append("other", b("x"), false, true, 0);
        let (_, p) = h.position("u", 0);
        assert_eq!(h.position("u", 1), (1, p));
        h.append("u", b("while away"), false, false, 2);
        assert_eq!(
            texts(&h.since("u", 1, p, 3, usize::MAX).unwrap()),
            ["while away"]
        );
        // An empty stream goes after two ttls.
        h.sweep(130_000, |_| false);
        assert_eq!(
            h.since("u", 1, p, 130_000, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
    }

    #[test]
    fn a_handed_over_history_continues_in_its_epoch() {
        let mut old = History::new(10, 60_000, 1 << 20, 7);
        let o1 = old.append("u", b("one"), false, true, 0);
        old.append("u", b("two"), false, true, 10);
        old.bind("p", "u", "s", "e", None, 0);
        let mut new = History::new(10, 60_000, 1 << 20, 8);
        // A push reached the new worker first for `w`: its own stream stays.
        new.append("w", b("mine"), false, true, 0);
        old.append("w", b("theirs"), false, true, 0);
        let (counter, pieces, bindings) = old.export(20, 1);
        assert!(pieces.len() >= 2, "pieces of about `chunk` bytes");
        let taken: usize = pieces
            .into_iter()
            .map(|p| new.adopt(counter, p, bindings.clone(), 100))
            .sum();
        assert_eq!(taken, 1);
        let f = new.since("u", 7, o1, 100, usize::MAX).unwrap();
        assert_eq!(texts(&f), ["two"]);
        assert_eq!(f.epoch, 7);
        // New messages continue the handed stream, above the old counter.
        let o3 = new.append("u", b("three"), false, true, 100);
        assert!(o3 > counter);
        assert_eq!(new.epoch_of("u"), 7);
        assert_eq!(
            texts(&new.since("u", 7, o1, 100, usize::MAX).unwrap()),
            ["two", "three"]
        );
        assert_eq!(new.epoch_of("w"), 8);
        assert_eq!(texts(&new.read("w", 100)), ["mine"]);
        assert_eq!(new.take_binding("p", 100).unwrap().uid, "u");
        // Counted, and expired on time (kept at 0 and 10 on the old clock: 80 and 90 here).
        assert_eq!(new.messages, 4);
        new.expire(60_095);
        assert_eq!(texts(&new.read("u", 60_095)), ["three"]);
        assert_eq!(new.messages, 1);
    }

    #[test]
    fn broadcasts_merge_into_a_uids_recovery_in_order() {
        let mut h = History::new(10, 60_000, 1 << 20, 3);
        let (_, p) = h.position("u1", 0);
        h.append("u1", b("a"), false, true, 1);
        let ob = h.append_all(b("B"), false, Vec::new(), 2);
        h.append("u2", b("x"), false, true, 3);
        h.append_all(b("C"), false, vec!["u1".into()], 4);
        let od = h.append("u1", b("d"), false, true, 5);
        let f = h.since("u1", 3, p, 6, usize::MAX).unwrap();
        assert_eq!(texts(&f), ["a", "B", "d"]);
        assert_eq!(f.top, od);
        // A position at the broadcast's offset is good (it is the uid's too).
        assert_eq!(texts(&h.since("u1", 3, ob, 6, usize::MAX).unwrap()), ["d"]);
        // u2's stream was made after B: B is not u2's, C is.
        assert_eq!(texts(&h.read("u2", 6)), ["x", "C"]);
        // The last broadcast moves a uid's position; never another uid's messages.
        let oe = h.append_all(b("E"), false, Vec::new(), 7);
        assert_eq!(h.position("u1", 7), (3, oe));
        assert_eq!(
            h.since("u1", 3, oe + 1, 7, usize::MAX).unwrap_err(),
            Refusal::Future
        );
        assert_eq!((h.messages, h.all.list.len()), (6, 3));
    }

    #[test]
    fn a_dropped_broadcast_makes_the_positions_before_it_gone() {
        let mut h = History::new(2, 1_000, 1 << 20, 1);
        let (_, p) = h.position("u", 0);
        h.append_all(b("1"), false, Vec::new(), 0);
        let o2 = h.append_all(b("2"), false, Vec::new(), 0);
        h.append_all(b("3"), false, Vec::new(), 500);
        assert_eq!(h.all.list.len(), 2);
        assert_eq!(
            h.since("u", 1, p, 1, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        assert_eq!(
            texts(&h.since("u", 1, o2 - 1, 1, usize::MAX).unwrap()),
            ["2", "3"]
        );
        // By time too, and counted down.
        h.expire(1_200);
        assert_eq!((h.messages, h.bytes), (1, 1 + ENTRY_OVERHEAD));
        assert_eq!(
            h.since("u", 1, o2 - 1, 1_200, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        assert_eq!(
            texts(&h.since("u", 1, o2, 1_200, usize::MAX).unwrap()),
            ["3"]
        );
        // And by memory: broadcasts and uid messages share one bound, oldest first.
        let mut h = History::new(10, 60_000, 2 * (1 + ENTRY_OVERHEAD), 1);
        h.append_all(b("a"), false, Vec::new(), 0);
        h.append("u", b("b"), false, true, 1);
        h.append_all(b("c"), false, Vec::new(), 2);
        assert_eq!((h.evicted, h.messages, h.all.list.len()), (1, 2, 1));
    }

    #[test]
    fn a_held_uid_keeps_its_position_while_it_gets_only_broadcasts() {
        let mut h = History::new(10, 60_000, 1 << 20, 1);
        let (_, p) = h.position("u", 0);
        h.sweep(200_000, |u| u == "u");
        let o = h.append_all(b("late"), false, Vec::new(), 200_000);
        assert_eq!(
            texts(&h.since("u", 1, p, 200_001, usize::MAX).unwrap()),
            ["late"]
        );
        // Once nobody holds it, two ttls after it was last seen held.
        h.sweep(300_000, |_| false);
        assert!(h.since("u", 1, o, 300_000, usize::MAX).is_ok());
        h.sweep(320_001, |_| false);
        assert_eq!(
            h.since("u", 1, o, 320_001, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
    }

    #[test]
    fn a_handover_carries_the_broadcasts_as_the_uids_own() {
        let mut old = History::new(10, 60_000, 1 << 20, 7);
        let (_, p) = old.position("u", 0);
        old.append_all(b("all"), false, Vec::new(), 1);
        old.append("u", b("mine"), false, true, 2);
        let (counter, pieces, _) = old.export(3, 1 << 20);
        let mut new = History::new(10, 60_000, 1 << 20, 8);
        for piece in pieces {
            new.adopt(counter, piece, Vec::new(), 3);
        }
        assert_eq!(
            texts(&new.since("u", 7, p, 3, usize::MAX).unwrap()),
            ["all", "mine"]
        );
        let o = new.append_all(b("next"), false, Vec::new(), 4);
        assert!(o > counter);
        assert_eq!(
            texts(&new.since("u", 7, p, 4, usize::MAX).unwrap()),
            ["all", "mine", "next"]
        );
        // A broadcast kept by the new worker before the handover is not the handed uid's: a
        // handed position cannot be continued (its offsets are not the handed stream's).
        let mut early = History::new(10, 60_000, 1 << 20, 9);
        for _ in 0..5 {
            early.append_all(b("early"), false, Vec::new(), 0);
        }
        let mut old = History::new(10, 60_000, 1 << 20, 7);
        let (_, p) = old.position("w", 0);
        for _ in 0..10 {
            old.append("w", b("w1"), false, true, 0);
        }
        let (counter, pieces, _) = old.export(1, 1 << 20);
        for piece in pieces {
            early.adopt(counter, piece, Vec::new(), 1);
        }
        assert_eq!(
            early.since("w", 7, p, 1, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
        // Nor its last one: the broadcasts kept early would be missed.
        let (_, top) = early.position("w", 1);
        assert_eq!(
            early.since("w", 7, top, 1, usize::MAX).unwrap_err(),
            Refusal::Gone
        );
    }

    #[test]
    fn offline_messages_once() {
        let mut h = History::new(10, 60_000, 1 << 20, 1);
        h.append("u", b("seen"), false, true, 0);
        h.append("u", b("missed1"), false, false, 0);
        h.append("u", b("missed2"), false, false, 0);
        assert_eq!(
            texts(&h.undelivered("u", 1, usize::MAX)),
            ["missed1", "missed2"]
        );
        assert!(h.undelivered("u", 1, usize::MAX).messages.is_empty());
        // A byte bound: the oldest first, the rest at the next call.
        h.append("u", b("abc"), false, false, 2);
        h.append("u", b("def"), false, false, 2);
        assert_eq!(texts(&h.undelivered("u", 3, 4)), ["abc"]);
        assert_eq!(texts(&h.undelivered("u", 3, 4)), ["def"]);
        let o = h.read("u", 3).messages[0].offset;
        assert_eq!(h.since("u", 1, o, 3, 5).unwrap_err(), Refusal::TooBig);
        assert_eq!(h.read("u", 3).messages.len(), 5);
    }

    #[test]
    fn bindings_expire_and_are_used_once() {
        let mut h = History::new(10, 60_000, 1 << 20, 1);
        assert!(h.bind("p1", "u", "s1", "e1", None, 0));
        let got = h.take_binding("p1", 5).unwrap();
        assert_eq!((got.uid.as_str(), got.sid.as_str()), ("u", "s1"));
        assert!(h.take_binding("p1", 5).is_none());
        h.bind("p2", "u", "s2", "e1", Some(100), 0);
        assert!(h.take_binding("p2", 200).is_none());
        // A pid bound to one uid cannot be rebound to another.
        h.bind("p3", "u", "s3", "e1", None, 0);
        h.bind("p3", "evil", "s4", "e2", None, 0);
        assert_eq!(h.take_binding("p3", 0).unwrap().uid, "u");
        // After a recovery (session e2 bound it), the old session's end changes nothing.
        h.bind("p4", "u", "s", "e1", None, 0);
        h.bind("p4", "u", "s", "e2", None, 0);
        h.bind("p4", "u", "s", "e1", Some(10), 0);
        assert!(h.take_binding("p4", 50).is_some());
    }
}
