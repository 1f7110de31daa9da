//! A single worker without a master, for poking at the protocols by hand:
//! `cargo run -p herald-worker --example solo -- '{"ws":"127.0.0.1:1234"}'`.
use herald_ipc::{codec::write_frame, Control};
use std::io::Write;

fn main() {
    let cfg: serde_json::Value = std::env::args()
        .nth(1)
        .map(|a| serde_json::from_str(&a).expect("config JSON"))
        .unwrap_or(serde_json::json!({}));
    let (mut master, worker) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut out = Vec::new();
    write_frame(&Control::Start { config: cfg }, &mut out).expect("frame");
    master.write_all(&out).expect("send start");
    std::thread::spawn(move || {
        // Keep the master end open; read and discard what the worker says.
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut master, &mut sink);
    });
    if let Err(e) = herald_worker::run(0, std::process::id(), worker) {
        eprintln!("worker: {e}");
        std::process::exit(1);
    }
}
