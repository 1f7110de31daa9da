//! Small shared helpers: the monotonic clock, a seeded random generator, the open-file limit,
//! percentiles, and the kill list plus watchdog that keep every run bounded in time.
//!
//! Every process this tool starts (the server's process group, client processes, the `limit`
//! server) is put on the kill list; the watchdog thread kills them all and exits when the global
//! deadline passes, and `cleanup_all` does the same on an orderly exit or an error.

use std::sync::Mutex;
use std::time::Duration;

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock shared by every process on the machine, so a
/// send time taken in one process can be subtracted from a receive time taken in another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A xorshift64* generator: deterministic for a given `--seed`, cheap, good enough to pick uids.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced, xorshift cannot leave it).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// The value at quantile `q` (0..=1) of sorted `v`, nearest-rank; 0 for an empty slice.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals for the JSON output.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `n` events over `secs` seconds as a whole rate per second (0 when no time passed).
pub fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

/// What to kill on the way out: a pid, and whether it leads a process group to kill whole.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Victim {
    /// Process id (or process-group id when `group`).
    pub pid: i32,
    /// Kill the whole group `-pid` rather than the single process.
    pub group: bool,
}

static KILL_LIST: Mutex<Vec<Victim>> = Mutex::new(Vec::new());

/// Adds a process (or process group) to the list killed on exit or at the deadline.
pub fn register_victim(v: Victim) {
    if let Ok(mut l) = KILL_LIST.lock() {
        l.push(v);
    }
}

/// Removes a process from the kill list once it has been stopped in an orderly way.
pub fn unregister_victim(v: Victim) {
    if let Ok(mut l) = KILL_LIST.lock() {
        l.retain(|x| *x != v);
    }
}

/// Sends `sig` to a victim.
pub fn signal_victim(v: Victim, sig: i32) {
    let target = if v.group { -v.pid } else { v.pid };
    if v.pid > 0 {
        // SAFETY: kill(2) with a positive pid or a negative process-group id we created.
        unsafe { libc::kill(target, sig) };
    }
}

/// Kills everything on the kill list with SIGKILL and empties it.
pub fn cleanup_all() {
    let list: Vec<Victim> = match KILL_LIST.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return,
    };
    for v in list {
        signal_victim(v, libc::SIGKILL);
    }
}

/// Starts the watchdog: at `deadline_ns` (monotonic) it kills every registered process, prints
/// an error object for `mode` on stdout (and appends it to `json_out`), and exits with status 3.
pub fn start_watchdog(deadline_ns: u64, mode: String, json_out: Option<std::path::PathBuf>) {
    std::thread::spawn(move || loop {
        let now = mono_ns();
        if now >= deadline_ns {
            cleanup_all();
            let obj = serde_json::json!({"mode": mode, "error": "global deadline exceeded"});
            crate::emit(&obj, json_out.as_deref());
            eprintln!("herald-bench: global deadline exceeded, everything killed");
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(
            ((deadline_ns - now) / 1_000_000).clamp(1, 200),
        ));
    });
}

/// The log line prefix on stderr: which process is talking.
pub fn progress(msg: &str) {
    eprintln!("[herald-bench] {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(per_s(100_000, 1.25), 80_000.0);
        assert_eq!(per_s(3, 2.0), 2.0);
        assert_eq!(per_s(5, 0.0), 0.0);
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 0.999), 100);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }

    #[test]
    fn clock_moves_forward() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
    }
}
