//! `herald-bench`: Herald's load and benchmark tool (issue 6, "The benchmark").
//!
//! ```text
//! herald-bench connect   --clients N [--procs P]
//! herald-bench unicast   --clients N --conns K [--rate R] --pushes M
//! herald-bench broadcast --clients N --count B [--spacing-ms S]
//! herald-bench limit     --clients N --count B [--spacing-ms S] [--floor-procs F]
//! herald-bench limit-unicast --clients N --conns K [--rate R] --pushes M
//! herald-bench limit-connect --clients N [--floor-procs F]
//! herald-bench limit-storm   --clients N --steady K --rate R --pushes M [--floor-procs F]
//! herald-bench limit-idle    --clients N --seconds S [--floor-procs F] [--ping-interval T]
//! herald-bench churn     --clients N --rate R --seconds S [--push-rate P]
//! herald-bench upstream  --clients N [--rate R] --pushes M
//! herald-bench idle      --clients N --seconds S [--set KEY=VALUE ...]
//! herald-bench storm     --clients N --steady K --rate R --pushes M
//! herald-bench recover   --clients N --missed K
//! herald-bench cluster-broadcast --clients N --count B [--spacing-ms S]
//! common: --herald PATH  --workers W  --json-out FILE  --seed S  --deadline SECONDS
//!         --server-wrap CMD  --stop-grace-ms G  --tls  --floor-procs F (limit modes)
//! ```
//!
//! Each run starts its own server — `herald start --workers W --ws … --text … --http …
//! --pid-file TMP/herald.pid --set login_reply=true` on free ports of 127.0.0.1 in its own process
//! group and temporary directory, or for `limit` a trivial in-process-tree server — connects N
//! WebSocket clients spread over several client processes (this binary re-executed with the
//! hidden subcommand `_clients`, coordinated over pipes) and over source addresses
//! 127.0.0.1..127.0.0.x, logs each in as uid `u{i}`, measures, stops everything, and prints
//! exactly one JSON object on stdout (progress goes to stderr). With `--json-out FILE` the object
//! is also appended to FILE as one line.
//!
//! * `connect` — connect rate, and the server's memory: RSS and PSS summed over the master and
//!   its workers (`/proc/PID/smaps_rollup`) before and after, and per connection.
//! * `unicast` — `{"uid":"uX","t":NS}` lines to random uids through K pipelined text-port
//!   connections, flat out or at `--rate R`; pushes/s, ok/fail, deliveries, losses (acknowledged
//!   `ok` but never received), end-to-end latency p50/p99/p99.9/max in µs (`t` is the
//!   `CLOCK_MONOTONIC` send time; clients stamp the receive time with the same clock), and server
//!   CPU per push: utime+stime of master+workers from `/proc/PID/stat` (and the finer schedstat
//!   run time) divided by pushes.
//! * `broadcast` — B broadcasts of a 100-byte message back to back or `--spacing-ms` apart;
//!   deliveries/s, per-broadcast completion time (send to last client) p50/p99, server CPU per
//!   delivery.
//! * `limit` — the same broadcasts from a server that `write`s one pre-encoded 100-byte frame per
//!   socket per broadcast (one syscall per delivery; no handshake): the ceiling.
//! * `limit-unicast` — the `unicast` pushes through that server's text port: each line framed as
//!   it is and written to one client, answered `ok` (one syscall per push, nothing parsed): the
//!   floor of a unicast push.
//! * `limit-connect`, `limit-storm` — `connect` and `storm` against the handshake floor: the
//!   same trivial server, which also answers the WebSocket upgrade (`101` with the computed
//!   `Sec-WebSocket-Accept`) and reads the login frame before `login success`. See `floor.rs`.
//! * `limit-idle` — `idle` against the handshake floor, whose processes ping each socket every
//!   `--ping-interval` seconds (default 25, 0 for none) and drop the pongs. See `idle.rs`.
//! * `--floor-procs F` runs any of the five floor modes' server as F processes sharing the port
//!   with `SO_REUSEPORT` (one process holds at most 20,000 sockets here).
//! * `churn` — about N clients stay connected while each second R new ones connect and R random
//!   ones leave, for S seconds, with P pushes per second to connected uids (through one text
//!   connection per client process); connects attempted/failed, disconnects, pushes ok/fail,
//!   losses (`ok`, the client stayed connected 1 s more, never received), and server RSS/PSS at
//!   baseline, peak and 2 s after every client left (`memory_return_pct`). See `churn.rs`.
//! * `upstream` — client messages through a backend subscribed to events and back as pushes;
//!   messages/s, latency, server CPU per message. See `upstream.rs`.
//!
//! `--server-wrap CMD` starts Herald under a wrapper (`scripts/profile` uses valgrind's
//! callgrind); `--stop-grace-ms` gives it time to write its output after SIGTERM.
//!
//! Every run is bounded: a watchdog kills every process it started and exits with status 3
//! after `--deadline` seconds (default 120); errors print `{"mode":…,"error":…}` and exit 1.
//! Only loopback addresses are ever used. See `--help` for every option.

mod args;
mod churn;
mod clients;
mod cluster_bc;
mod floor;
mod floor_ws;
mod idle;
mod limit;
mod modes;
mod procstat;
mod push;
mod query;
mod recover;
mod server;
mod storm;
mod tls;
mod upstream;
mod util;
mod ws;

use std::io::Write;

use serde_json::{json, Value};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("_clients") => return child_exit(clients::child_main(&argv[1..])),
        Some("_limit-server") => return child_exit(limit::child_main(&argv[1..])),
        _ => {}
    }
    let opts = match args::parse(&argv) {
        Ok(args::Parsed::Help) => {
            print!("{}", args::USAGE);
            return;
        }
        Ok(args::Parsed::Run(o)) => o,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            println!("{}", json!({"error": e}));
            std::process::exit(2);
        }
    };
    util::raise_nofile();
    server::install_signal_handlers();
    let start = util::mono_ns();
    let total = (opts.deadline_s * 1e9) as u64;
    let deadlines = modes::Deadlines {
        all: start + total,
        connect: start + total / 2,
    };
    util::start_watchdog(deadlines.all, opts.mode.clone(), opts.json_out.clone());
    let result = modes::run(&opts, deadlines);
    util::cleanup_all();
    if opts.tls {
        tls::cleanup();
    }
    let (obj, code) = match result {
        Ok(v) => (v, 0),
        Err(e) => {
            eprintln!("herald-bench: {e}");
            (json!({"mode": opts.mode, "error": e}), 1)
        }
    };
    emit(&obj, opts.json_out.as_deref());
    std::process::exit(code);
}

/// Prints the result object and appends it to `--json-out`.
pub(crate) fn emit(obj: &Value, json_out: Option<&std::path::Path>) {
    println!("{obj}");
    if let Some(path) = json_out {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{obj}"));
        if let Err(e) = appended {
            eprintln!("herald-bench: --json-out {}: {e}", path.display());
        }
    }
}

/// Exit of a hidden child process: errors go to stderr with status 1.
fn child_exit(r: Result<(), String>) {
    if let Err(e) = r {
        eprintln!("herald-bench child: {e}");
        std::process::exit(1);
    }
}
