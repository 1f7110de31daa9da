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
