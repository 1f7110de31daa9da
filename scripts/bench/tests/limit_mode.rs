//! End-to-end check of the bench's own machinery, without Herald: the `limit` mode spawns its
//! trivial server and two client processes, and every broadcast must reach every client; with
//! `--floor-procs 3` the server is three processes on one port; `limit-storm` drops and
//! reconnects clients through the handshake floor while pushes go on; `limit-idle` pings each
//! of the floor's clients once per `--ping-interval` and reads their pongs (nothing either way
//! with `--ping-interval 0`). Only counts are asserted, never timings.

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

#[test]
fn limit_mode_delivers_every_broadcast_to_every_client() {
    let v = run(&[
        "limit",
        "--clients",
        "300",
        "--count",
        "5",
        "--procs",
        "2",
        "--deadline",
        "60",
    ]);
    assert_eq!(v["mode"], "limit");
    assert_eq!(v["connected"], 300, "{v}");
    assert_eq!(v["accepted"], 300, "{v}");
    assert_eq!(v["deliveries"], 1500, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert_eq!(v["client_procs"], 2);
}

#[test]
fn three_floor_processes_share_the_port_and_each_broadcast_reaches_all() {
    let v = run(&[
        "limit",
        "--clients",
        "300",
        "--count",
        "3",
        "--spacing-ms",
        "20",
        "--procs",
        "2",
        "--floor-procs",
        "3",
        "--deadline",
        "60",
    ]);
    assert_eq!(v["floor_procs"], 3, "{v}");
    assert_eq!(v["accepted"], 300, "{v}");
    let per: Vec<u64> = v["accepted_per_proc"]
        .as_array()
        .expect("accepted_per_proc")
        .iter()
        .map(|x| x.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per.len(), 3, "{v}");
    assert_eq!(per.iter().sum::<u64>(), 300, "{v}");
    assert_eq!(v["deliveries"], 900, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
}

#[test]
fn a_storm_against_the_handshake_floor_comes_back_whole() {
    let v = run(&[
        "limit-storm",
        "--clients",
        "200",
        "--steady",
        "20",
        "--rate",
        "500",
        "--pushes",
        "1000",
        "--procs",
        "2",
        "--floor-procs",
        "2",
        "--deadline",
        "60",
    ]);
    assert_eq!(v["mode"], "limit-storm", "{v}");
    assert_eq!(v["connected"], 200, "{v}");
    assert_eq!(v["steady"], 20, "{v}");
    assert_eq!(v["dropped"], 200, "{v}");
    assert_eq!(v["back"], 200, "{v}");
    assert_eq!(v["failed_total"], 0, "{v}");
    assert_eq!(v["ok"], 1000, "{v}");
    assert_eq!(v["losses"], 0, "{v}");
}

#[test]
fn errors_are_one_json_object_with_a_nonzero_exit() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "connect",
            "--clients",
            "10",
            "--herald",
            "/nonexistent/herald",
        ])
        .output()
        .expect("run herald-bench");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
    assert!(
        v["error"].as_str().unwrap_or("").contains("not found"),
        "{v}"
    );
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
