//! Session ids: random from the operating system, with the owning worker's id recoverable, so
//! any worker routes a request it did not create to the owner without shared state.

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::Engine as _;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Length of a session id.
pub const SID_LEN: usize = 28;
/// Random bytes in a session id (144 bits).
pub const SID_RANDOM_BYTES: usize = 18;
/// The largest worker id a session id can carry (24 bits).
pub const MAX_SID_WORKER: u32 = (1 << 24) - 1;

/// Characters of a session id that carry its random bytes.
pub(super) const SID_RANDOM_CHARS: usize = SID_RANDOM_BYTES / 3 * 4;

pub(super) const B64URL: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Builds a session id from 18 random bytes and the owning worker: 24 characters of the
/// bytes in URL-safe base64, then 4 characters of the worker id (24 bits) XORed with the
/// first three random bytes, so ids of one worker do not share a visible suffix. Worker ids
/// above [`MAX_SID_WORKER`] are truncated to 24 bits.
pub fn encode_sid(worker: u32, random: [u8; SID_RANDOM_BYTES]) -> String {
    let w = worker & MAX_SID_WORKER;
    let tail = [
        random[0] ^ (w >> 16) as u8,
        random[1] ^ (w >> 8) as u8,
        random[2] ^ w as u8,
    ];
    let mut out = String::with_capacity(SID_LEN);
    B64URL.encode_string(random, &mut out);
    B64URL.encode_string(tail, &mut out);
    out
}

/// The worker that owns session `sid`, or `None` if `sid` is not a session id of this form
/// (the caller must still check the id against its worker count and its own sessions).
pub fn sid_worker(sid: &str) -> Option<u32> {
    if sid.len() != SID_LEN || !sid.is_ascii() {
        return None;
    }
    let mut head = [0u8; 3];
    let mut tail = [0u8; 3];
    if B64URL.decode_slice(&sid[..4], &mut head).ok()? != 3
        || B64URL
            .decode_slice(&sid[SID_RANDOM_CHARS..], &mut tail)
            .ok()?
            != 3
        || B64URL.decode(&sid[4..SID_RANDOM_CHARS]).is_err()
    {
        return None;
    }
    Some(
        (u32::from(head[0] ^ tail[0]) << 16)
            | (u32::from(head[1] ^ tail[1]) << 8)
            | u32::from(head[2] ^ tail[2]),
    )
}

/// Makes session ids for one worker. Every id's random bytes are read anew from the operating
/// system's random source (the `getrandom` crate), so an id says nothing about any other: the
/// id is all a polling client shows to prove which session it is.
#[derive(Debug)]
pub struct SidGen {
    /// The worker id every session id carries (at most [`MAX_SID_WORKER`]).
    worker: u32,
    /// Keys of the stand-in used only if the OS source fails (it does not, on a running
    /// Linux with the `getrandom` system call): SipHash of a counter, keyed by the standard
    /// library from the OS at start-up.
    fallback_keys: RandomState,
    /// Ids made by the stand-in so far, hashed to make each one's bytes.
    fallback_count: u64,
}

impl SidGen {
    /// A generator for `worker` (at most [`MAX_SID_WORKER`]).
    pub fn new(worker: u32) -> Self {
        debug_assert!(worker <= MAX_SID_WORKER);
        Self {
            worker,
            fallback_keys: RandomState::new(),
            fallback_count: 0,
        }
    }

    /// Fresh bytes from the OS; from the keyed stand-in, with an error logged, if the OS
    /// source fails, so that a session can still be opened.
    fn random_bytes(&mut self) -> [u8; SID_RANDOM_BYTES] {
        let mut r = [0u8; SID_RANDOM_BYTES];
        match getrandom::fill(&mut r) {
            Ok(()) => r,
            Err(e) => {
                if self.fallback_count == 0 {
                    log::error!("the OS random source failed ({e}); session ids use a keyed hash");
                }
                self.fallback_bytes()
            }
        }
    }

    /// The stand-in's bytes: SipHash of the next count and the 8-byte block's index.
    pub(super) fn fallback_bytes(&mut self) -> [u8; SID_RANDOM_BYTES] {
        self.fallback_count += 1;
        let mut r = [0u8; SID_RANDOM_BYTES];
        for (i, chunk) in r.chunks_mut(8).enumerate() {
            let h = self.fallback_keys.hash_one((self.fallback_count, i));
            chunk.copy_from_slice(&h.to_le_bytes()[..chunk.len()]);
        }
        r
    }

    /// A new session id; [`sid_worker`] of it is this generator's worker.
    pub fn next_sid(&mut self) -> String {
        let r = self.random_bytes();
        encode_sid(self.worker, r)
    }

    /// A new Socket.IO socket id (the `sid` in a v4 `40{"sid":…}`), same shape.
    pub fn next_socket_id(&mut self) -> String {
        self.next_sid()
    }
}
