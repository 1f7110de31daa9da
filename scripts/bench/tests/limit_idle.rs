//! End-to-end check of `limit-idle`, without Herald: the handshake floor, as three processes on
//! one port, pings each of its logged-in clients once per `--ping-interval`, the clients answer
//! each ping with a masked pong, and the floor reads them; with `--ping-interval 0` nothing is
//! sent either way. Only counts are asserted, never timings.

use std::process::Command;

/// Runs the bench binary with `args` and parses the one JSON object it prints.
fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line expected: {stdout}"
    );
    serde_json::from_str(stdout.trim()).expect("JSON object")
}

/// A count of the result as a number.
fn count(v: &serde_json::Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

#[test]
fn the_floor_pings_every_client_each_interval_and_reads_every_pong() {
    let v = run(&[
        "limit-idle",
        "--clients",
        "300",
        "--floor-procs",
        "3",
        "--ping-interval",
        "1",
        "--seconds",
        "3",
        "--deadline",
        "60",
    ]);
    assert_eq!(v["mode"], "limit-idle", "{v}");
    assert_eq!(v["connected"], 300, "{v}");
    assert_eq!(v["floor_procs"], 3, "{v}");
    assert_eq!(v["clients_closed"], 0, "{v}");
    // Three sweeps of all 300 in 3 s, give or take one at either edge of the window.
    let written = count(&v, "pings_written");
    assert!((600..=1200).contains(&written), "{v}");
    // Every ping is answered and read, but for the last sweep's, which may still be on its way
    // when the window closes.
    let answered = count(&v, "pings_answered");
    let pongs = count(&v, "pongs_read");
    assert!((written - answered).abs() <= 300, "{v}");
    assert!((written - pongs).abs() <= 300, "{v}");
    assert_eq!(count(&v, "pong_bytes_read"), pongs * 6, "{v}");
    assert!(v["idle_sched_pct_of_core"].is_number(), "{v}");
    assert!(v["sched_us_per_ping"].is_number(), "{v}");
}

#[test]
fn with_pings_off_nothing_is_sent_either_way() {
    let v = run(&[
        "limit-idle",
        "--clients",
        "100",
        "--ping-interval",
        "0",
        "--seconds",
        "2",
        "--deadline",
        "60",
    ]);
    assert_eq!(v["connected"], 100, "{v}");
    assert_eq!(v["pings_written"], 0, "{v}");
    assert_eq!(v["pings_answered"], 0, "{v}");
    assert_eq!(v["pong_bytes_read"], 0, "{v}");
    assert_eq!(v["ping_interval"], 0.0, "{v}");
}
