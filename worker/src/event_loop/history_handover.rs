//! A graceful reload keeps the history: a draining worker that owns uids hands its store
//! (every stream with its epoch, and the Socket.IO bindings) to the new worker with the same
//! worker id, in pieces that each fit a frame. The new worker takes up what it does not keep
//! already (`History::adopt`): the streams keep their epochs and its offset counter continues
//! above the old one, so clients' positions stay good across the reload.

use super::Worker;
use herald_ipc::{ChannelError, HistoryMsg, PeerMsg};
use std::time::Instant;

/// How long a draining worker may wait for its successor to read the history it hands over.
const HANDOVER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Payload bytes per piece of a handover (JSON makes each a few times larger; frames hold
/// 16 MiB).
const HANDOVER_PIECE: usize = 1024 * 1024;

impl Worker {
    /// Drain (a graceful reload): hands the whole history to the worker replacing this one
    /// (the sibling with the same worker id), in pieces that each fit a frame, so that its
    /// uids keep their positions. What does not fit the link's buffer is not handed over
    /// (those uids' clients are told `recovered: false`).
    pub(super) fn history_handover(&mut self) {
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        h.handover_due = true;
        h.handover_by = Some(Instant::now() + HANDOVER_TIME);
        self.try_handover();
    }

    /// A draining worker still waits to hand its history over (for at most
    /// [`HANDOVER_TIME`]): it stays, even with no connection left.
    pub(super) fn handover_waits(&self, now: Instant) -> bool {
        self.hist
            .as_ref()
            .is_some_and(|h| h.handover_due && h.handover_by.is_some_and(|t| now < t))
    }

    /// Hands the history over if the successor is known and linked (else later: see
    /// `recovery_tick`).
    pub(super) fn try_handover(&mut self) {
        let Some(to) = self
            .peers
            .iter()
            .filter(|p| p.worker == self.id && p.pid != self.pid)
            .map(|p| p.pid)
            .max()
        else {
            return;
        };
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        let Some((_, link)) = self
            .links
            .iter_mut()
            .find(|(_, l)| l.outbound && l.peer_pid == to)
        else {
            return;
        };
        h.handover_due = false;
        let now = h.ms();
        let (counter, pieces, bindings) = h.store.export(now, HANDOVER_PIECE);
        let total = pieces.len();
        let mut sent = 0;
        // The link's buffer holds a few pieces: the rest waits for the new worker to read,
        // for at most HANDOVER_TIME (a one-time pause of this retiring worker, which has
        // closed its listeners).
        let until = Instant::now() + HANDOVER_TIME;
        let bindings_msg = PeerMsg::History(HistoryMsg::Handover {
            counter,
            streams: Vec::new(),
            bindings,
        });
        let msgs = pieces
            .into_iter()
            .map(|streams| {
                PeerMsg::History(HistoryMsg::Handover {
                    counter,
                    streams,
                    bindings: Vec::new(),
                })
            })
            .chain(std::iter::once(bindings_msg));
        'pieces: for m in msgs {
            loop {
                match link.chan.send(&m) {
                    Ok(()) => break,
                    Err(ChannelError::Full { .. }) if Instant::now() < until => {
                        if link.chan.flush().is_err() {
                            break 'pieces;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => {
                        log::warn!("history: handover to pid {to} stopped after {sent} of {total} pieces: {e}");
                        break 'pieces;
                    }
                }
            }
            sent += 1;
        }
        link.dirty = true;
        log::info!(
            "history: handed {} of {total} pieces to pid {to}",
            sent.min(total)
        );
    }
}
