//! `GET /metrics`: every worker's counters in Prometheus text format, gathered over the mesh.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn metrics_cover_every_worker_and_count_pushes() {
    let server = Server::builder().workers(2).login_reply().start();
    server.wait_mesh();
    let mut c = server.login_acked("m1");
    let before = metric_sum(&server, "herald_pushes_total");
    assert_eq!(server.text_push(b"{\"uid\":\"m1\",\"k\":1}\n"), b"ok\n");
    assert_eq!(
        c.try_recv_text(Duration::from_secs(5)).as_deref(),
        Some(r#"{"uid":"m1","k":1}"#)
    );
    assert_eq!(server.text_push(b"{\"uid\":\"nobody\"}\n"), b"fail\n");
    let r = server.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    let body = String::from_utf8(r.body).expect("utf-8");
    assert!(
        body.contains("# TYPE herald_pushes_total counter\n"),
        "{body}"
    );
    assert!(body.contains("herald_workers_answered 2\n"), "{body}");
    assert!(body.contains("herald_partial 0\n"), "{body}");
    let sum = |name: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(sum("herald_pushes_total"), before + 2, "{body}");
    assert_eq!(sum("herald_logged_in"), 1, "{body}");
    assert!(sum("herald_delivered_total") >= 1, "{body}");
    let r = server.http(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
}

/// Sum over workers of one metric, read from a fresh `GET /metrics`.
fn metric_sum(server: &Server, name: &str) -> u64 {
    let r = server.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The exposition is read by a real Prometheus parser (the Python `prometheus_client`), and
/// carries what a Prometheus user looks for: memory in bytes, the build, start time and open
/// descriptors of each worker.
#[test]
fn metrics_pass_a_real_prometheus_parser() {
    let has_parser = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        "python3 with prometheus_client (pip install prometheus-client)",
        has_parser,
    ) {
        return;
    }
    let server = Server::builder().workers(2).start();
    server.wait_mesh();
    // A few answered pushes, so the histogram holds observations.
    for i in 0..5 {
        server.text_push(format!("{{\"uid\":\"nobody\",\"n\":{i}}}\n").as_bytes());
    }
    let r = server.http(&get("/metrics"));
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .lines()
            .any(|l| l.starts_with("herald_push_seconds_count{") && !l.ends_with(" 0")),
        "{}",
        r.text()
    );
    let dir = TempDir::new();
    let file = dir.path.join("metrics.txt");
    std::fs::write(&file, r.text()).expect("write metrics");
    // Parses every family; prints `name type samples` per family, and fails on any error.
    let script = concat!(
        "import sys\n",
        "from prometheus_client.parser import text_string_to_metric_families\n",
        "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n",
        "    print(f.name, f.type, len(f.samples))\n",
    );
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{}",
        show(&out.stderr),
        r.text()
    );
    let families = String::from_utf8_lossy(&out.stdout).into_owned();
    for (name, kind, samples) in [
        ("herald_resident_memory_bytes", "gauge", "2"),
        ("herald_open_fds", "gauge", "2"),
        ("herald_start_time_seconds", "gauge", "2"),
        ("herald_build_info", "gauge", "1"),
        // The parser names a counter family without its `_total`.
        ("herald_pushes", "counter", "2"),
    ] {
        let line = format!("{name} {kind} {samples}");
        assert!(
            families.lines().any(|l| l == line),
            "no `{line}` in:\n{families}"
        );
    }
    assert!(r.text().contains(&format!(
        "herald_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    // The push latency histogram: 13 buckets, a sum and a count per worker.
    assert!(
        families
            .lines()
            .any(|l| l == "herald_push_seconds histogram 30"),
        "{families}"
    );
    assert!(
        families
            .lines()
            .any(|l| l == "herald_delivery_queue_seconds histogram 30"),
        "{families}"
    );
}

/// Every metric the Grafana dashboard in `scripts/` queries is one Herald exposes.
#[test]
fn the_grafana_dashboard_uses_exposed_metrics() {
    let text = std::fs::read_to_string(workspace_root().join("scripts/grafana-dashboard.json"))
        .expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let server = Server::builder().start();
    let body = server.http(&get("/metrics")).text();
    let mut used = 0;
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("herald_") {
                    let base = name.strip_suffix("_bucket").unwrap_or(name);
                    assert!(
                        body.contains(&format!("# TYPE herald_{base} ")),
                        "the dashboard queries herald_{name}, which /metrics does not have"
                    );
                    used += 1;
                }
            }
        }
    }
    assert!(used >= 10, "{used}");
}

/// `herald_delivery_queue_seconds`: a frame written at once counts in the lowest buckets; the
/// frames of a client that stops reading count, once it reads again, for as long as they
/// waited in its queue.
#[test]
fn delivery_queue_histogram_counts_what_waited_for_a_slow_reader() {
    use std::io::Read;
    let server = Server::builder()
        .login_reply()
        .set("client_sndbuf=4096")
        .set("max_send_buffer=8388608")
        .start();
    let mut quick = server.login_acked("quick");
    assert_eq!(server.text_push(b"{\"uid\":\"quick\",\"k\":1}\n"), b"ok\n");
    assert!(quick.try_recv_text(Duration::from_secs(5)).is_some());
    let h = |server: &Server| -> (u64, u64) {
        let r = server.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let value = |prefix: &str| -> u64 {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        (
            value("herald_delivery_queue_seconds_bucket{worker=\"0\",le=\"0.1\"}"),
            value("herald_delivery_queue_seconds_count{"),
        )
    };
    let (fast0, count0) = h(&server);
    assert!(count0 >= 1, "the login reply and the push were counted");
    assert_eq!(fast0, count0, "nothing waited 100 ms yet");
    // A client with a small receive buffer that stops reading: 2 MB of pushes wait for it.
    let mut slow = ws_login(server.ws, "slow", Some(4096));
    let big = "x".repeat(32 * 1024);
    let line = format!("{{\"uid\":\"slow\",\"b\":\"{big}\"}}\n");
    let lines = line.repeat(64);
    let replies = server.text_push(lines.as_bytes());
    assert_eq!(replies, b"ok\n".repeat(64), "every push was queued");
    std::thread::sleep(Duration::from_millis(300));
    // Read everything: the queue drains, and its wait is recorded.
    let total = 64 * line.len() - 64;
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    slow.set_read_timeout(Some(Duration::from_secs(10))).ok();
    while got < total {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got >= total, "read {got} of at least {total} bytes");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (fast, count) = h(&server);
            count > fast && count > count0
        }),
        "no frame counted as waiting over 100 ms: {:?}",
        h(&server)
    );
}
