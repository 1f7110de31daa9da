//! Running out of file descriptors: a worker at its open-file limit must neither spin on a
//! listener it cannot accept from nor stop serving once descriptors free up.

mod common;

use common::*;
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
    // 64 descriptors: a handful for listeners, the mesh, logs and control; the rest for clients.
    let server = Server::builder().nofile(64).login_reply().start();
    let worker = *server.worker_pids().iter().next().expect("a worker");
    // Hold more connections than the worker can accept.
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", server.text)) {
            held.push(s);
        }
    }
    let log_says_paused = wait_until(Duration::from_secs(5), || {
        server.log().contains("pausing accepts")
    });
    assert!(
        log_says_paused,
        "worker never hit EMFILE:\n{}",
        server.log()
    );
    // While the queue stays full, the worker must idle, not spin: over one second it may use a
    // few ticks for its 100 ms retries, nowhere near a busy loop's ~100.
    let before = cpu_ticks(worker);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(worker) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        (used as f64) < 30.0 * elapsed,
        "worker used {used} ticks in {elapsed:.2}s while out of descriptors"
    );
    // Free the descriptors: the worker serves again, with the right bytes.
    drop(held);
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
