//! Big answers written off the event loop: a `uids` answer over 100,000 uids is a merge of
//! every worker's list and a megabyte of JSON, tens of milliseconds that would hold up every
//! push of the worker that asked. Such answers go to one thread per worker (started at the
//! first one), which merges and writes them and hands the bytes back through a channel and a
//! `mio::Waker`; the loop then sends them like any other answer.

use crate::query::{render_http, render_text, Merged};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use herald_ipc::Query;
use mio::Waker;
use std::sync::Arc;

/// Answers waiting for the thread at most; beyond, the loop writes the answer itself (slower
/// for the others, never lost).
const QUEUE: usize = 64;

/// Lists of uids above this many bytes in all are written by the thread.
pub const BIG: usize = 64 * 1024;

/// Where a written answer goes.
#[derive(Debug, Clone, Copy)]
pub enum To {
    /// Reply slot `seq` of text connection `slot` (if still connection `id`).
    Text {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
        /// Reply slot.
        seq: u64,
    },
    /// The answer to HTTP connection `slot` (if still connection `id`).
    Http {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
    },
}

/// An answer to write.
pub struct Job {
    /// Where it goes.
    pub to: To,
    /// The question.
    pub query: Query,
    /// The merged shares.
    pub merged: Merged,
    /// A worker did not answer in time.
    pub partial: bool,
}

/// A written answer: the text line, or the HTTP status and JSON body.
pub enum Written {
    /// The text port's line, with its newline.
    Text(Vec<u8>),
    /// The status and JSON body.
    Http(u16, String),
}

/// Writes `job` (on the thread, or on the loop when the thread is busy or gone).
pub fn write(job: &Job) -> Written {
    match job.to {
        To::Text { .. } => Written::Text(render_text(&job.query, &job.merged, job.partial)),
        To::Http { .. } => {
            let (status, body) = render_http(&job.query, &job.merged, job.partial);
            Written::Http(status, body)
        }
    }
}

/// The thread's two ends, as the loop holds them.
pub struct Renderer {
    /// Answers to write.
    tx: Sender<Job>,
    /// Answers written.
    pub rx: Receiver<(To, Written)>,
}

impl Renderer {
    /// Starts the thread; it wakes the loop through `waker` after each answer.
    pub fn start(waker: Arc<Waker>) -> std::io::Result<Renderer> {
        let (tx, jobs) = bounded::<Job>(QUEUE);
        let (done, rx) = bounded::<(To, Written)>(QUEUE);
        std::thread::Builder::new()
            .name("herald-render".into())
            .spawn(move || {
                for job in jobs {
                    let out = write(&job);
                    if done.send((job.to, out)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Renderer { tx, rx })
    }

    /// Hands `job` to the thread; gives it back when the thread has no room or is gone.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => Box::new(j),
        })
    }
}

/// Whether `merged` is big enough to be written off the loop.
pub fn is_big(merged: &Merged) -> bool {
    match merged {
        Merged::Uids { lists, .. } => lists.iter().map(String::len).sum::<usize>() >= BIG,
        _ => false,
    }
}
