//! The `status` and `connections` reports: plain-text tables in the spirit of Workerman's
//! status, built from what the master knows (ids, pids, restarts, exits) and the rows each
//! worker answers. Pure functions: the supervisor gathers, this module only formats.

use crate::clock;
use herald_ipc::stats::TABLE;
use serde_json::Value;
use std::time::SystemTime;

/// The figures of the stats table shown first and summed in the `total` line, then `qps`.
fn headline() -> impl Iterator<Item = &'static str> {
    TABLE
        .iter()
        .filter(|s| s.headline)
        .map(|s| s.name)
        .chain(["qps"])
}

/// Status-row columns shown first, in order: memory, addresses, then the headline figures;
/// every other key of the row follows, sorted.
fn status_columns() -> Vec<&'static str> {
    ["rss", "listen"].into_iter().chain(headline()).collect()
}

/// Connection-row columns, in the order they are shown (after `worker`).
const CONNECTION_COLUMNS: &[&str] = &[
    "id",
    "protocol",
    "uid",
    "remote",
    "bytes_in",
    "bytes_out",
    "send_queue",
];

/// One worker id's history, for the global block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Worker id.
    pub id: u32,
    /// How often it died unasked and was restarted.
    pub restarts: u32,
    /// How its last process ended (`exit 0`, `killed by SIGKILL`), if one did.
    pub last_exit: Option<String>,
}

/// What the master knows about the whole server.
#[derive(Debug, Clone)]
pub struct Global {
    /// Herald's version.
    pub version: String,
    /// The master's pid.
    pub master_pid: u32,
    /// When the master started.
    pub started: SystemTime,
    /// Now, for the uptime.
    pub now: SystemTime,
    /// `/proc/loadavg`'s first three fields.
    pub load: String,
    /// Configured worker count.
    pub workers: usize,
    /// Worker processes alive (more than `workers` during a reload).
    pub processes: usize,
    /// Per-id history.
    pub slots: Vec<SlotInfo>,
}

/// One live worker process and its answer.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// Worker id.
    pub worker: u32,
    /// Process id.
    pub pid: u32,
    /// `ready`, `starting`, `draining`, `stopping`: what the master has told it.
    pub state: &'static str,
    /// The answer, or `None` if it did not answer in time.
    pub reply: Option<T>,
}

/// The first three fields of `/proc/loadavg`, or `?`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "?".into())
}

/// A table cell for a JSON value: no spaces, so a row splits on whitespace.
fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".to_string(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    s.replace(char::is_whitespace, "_")
}

/// `rss_kib` shown as `812K`, `23.4M`, `1.2G`.
fn human_kib(kib: &Value) -> String {
    let Some(k) = kib.as_f64() else {
        return cell(kib);
    };
    if k < 1024.0 {
        format!("{k:.0}K")
    } else if k < 1024.0 * 1024.0 {
        format!("{:.1}M", k / 1024.0)
    } else {
        format!("{:.1}G", k / 1024.0 / 1024.0)
    }
}

/// Left-aligned columns separated by two spaces. A row shorter than the header is padded
/// only as far as it goes (the `no answer` rows).
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() && i + 1 < r.len() {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows.iter().map(|r| r.as_slice())) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < r.len() {
                let w = width.get(i).copied().unwrap_or(0);
                for _ in c.chars().count()..w {
                    line.push(' ');
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn rule(title: &str) -> String {
    if title.is_empty() {
        return format!("{}\n", "-".repeat(100));
    }
    format!("{:-^100}\n", format!(" {title} "))
}

/// The status report.
pub fn format_status(g: &Global, answers: &[Answer<Value>]) -> String {
    let mut out = rule("HERALD STATUS");
    let uptime = g.now.duration_since(g.started).unwrap_or_default();
    out.push_str(&format!("herald version: {}\n", g.version));
    out.push_str(&format!("master pid:     {}\n", g.master_pid));
    out.push_str(&format!(
        "start time:     {}   uptime: {}\n",
        clock::utc_seconds(g.started),
        clock::duration_dhms(uptime)
    ));
    out.push_str(&format!("load average:   {}\n", g.load));
    out.push_str(&format!(
        "workers:        {} configured, {} processes\n",
        g.workers, g.processes
    ));
    let slot_rows: Vec<Vec<String>> = g
        .slots
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.restarts.to_string(),
                s.last_exit
                    .clone()
                    .unwrap_or_else(|| "-".into())
                    .replace(' ', "_"),
            ]
        })
        .collect();
    out.push_str(&table(
        &["worker".into(), "restarts".into(), "last_exit".into()],
        &slot_rows,
    ));

    out.push_str(&rule("WORKER STATUS"));
    let first = status_columns();
    let totals_of: Vec<&str> = headline().collect();
    let mut extra: Vec<String> = Vec::new();
    for a in answers {
        if let Some(Value::Object(m)) = &a.reply {
            for k in m.keys() {
                let known = first.contains(&k.as_str())
                    || matches!(
                        k.as_str(),
                        "worker"
                            | "pid"
                            | "rss_kib"
                            | "push_latency"
                            | "delivery_latency"
                            | "cluster_node"
                            | "cluster_nodes"
                    );
                if !known && !extra.contains(k) {
                    extra.push(k.clone());
                }
            }
        }
    }
    extra.sort();
    let columns: Vec<String> = first.iter().map(|s| s.to_string()).chain(extra).collect();
    let mut header: Vec<String> = vec!["worker".into(), "pid".into(), "state".into()];
    header.extend(columns.iter().cloned());
    let mut sorted: Vec<&Answer<Value>> = answers.iter().collect();
    sorted.sort_by_key(|a| (a.worker, a.pid));
    let mut totals = vec![0f64; totals_of.len()];
    let mut rows = Vec::new();
    for a in &sorted {
        let mut row = vec![a.worker.to_string(), a.pid.to_string(), a.state.to_string()];
        match &a.reply {
            Some(Value::Object(m)) => {
                for c in &columns {
                    let v = if c == "rss" {
                        m.get("rss_kib").map(human_kib)
                    } else {
                        m.get(c.as_str()).map(cell)
                    };
                    row.push(v.unwrap_or_else(|| "-".into()));
                }
                for (i, k) in totals_of.iter().enumerate() {
                    totals[i] += m.get(*k).and_then(Value::as_f64).unwrap_or(0.0);
                }
            }
            Some(other) => row.push(cell(other)),
            None => row.push("no answer".into()),
        }
        rows.push(row);
    }
    out.push_str(&table(&header, &rows));
    out.push_str(&rule(""));
    let answered = sorted.iter().filter(|a| a.reply.is_some()).count();
    let sums: Vec<String> = totals_of
        .iter()
        .zip(&totals)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push_str(&format!(
        "total: {} (answered {answered} of {})\n",
        sums.join(", "),
        sorted.len()
    ));
    out.push_str(&cluster_block(&sorted));
    out
}

/// The `CLUSTER` block of the status report, when the workers are nodes of a cluster: this
/// node's name, how many workers reach Redis, and the live nodes as worker 0 last listed them.
fn cluster_block(sorted: &[&Answer<Value>]) -> String {
    let rows: Vec<&serde_json::Map<String, Value>> = sorted
        .iter()
        .filter_map(|a| match &a.reply {
            Some(Value::Object(m)) if m.contains_key("cluster_node") => Some(m),
            _ => None,
        })
        .collect();
    let Some(first) = rows.first() else {
        return String::new();
    };
    let up = rows
        .iter()
        .filter(|m| m.get("cluster_up").and_then(Value::as_u64) == Some(1))
        .count();
    // Worker 0 keeps the list (the others' may be empty).
    let nodes: Vec<String> = rows
        .iter()
        .filter_map(|m| m.get("cluster_nodes")?.as_array().cloned())
        .max_by_key(Vec::len)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    let mut out = rule("CLUSTER");
    out.push_str(&format!(
        "this node:      {}\n",
        first
            .get("cluster_node")
            .and_then(Value::as_str)
            .unwrap_or("-")
    ));
    out.push_str(&format!(
        "redis:          {up} of {} workers connected\n",
        rows.len()
    ));
    out.push_str(&format!(
        "live nodes:     {} ({})\n",
        nodes.len(),
        if nodes.is_empty() {
            "none listed yet".to_string()
        } else {
            nodes.join(", ")
        }
    ));
    out
}

/// The connections report: a header, one line per connection, then a `total:` line (and a
/// `no answer:` line naming silent workers, if any).
pub fn format_connections(answers: &[Answer<Vec<Value>>]) -> String {
    let mut header = vec!["worker".to_string()];
    header.extend(CONNECTION_COLUMNS.iter().map(|s| s.to_string()));
    let mut sorted: Vec<&Answer<Vec<Value>>> = answers.iter().collect();
    sorted.sort_by_key(|a| (a.worker, a.pid));
    let mut rows = Vec::new();
    let mut silent = Vec::new();
    for a in &sorted {
        match &a.reply {
            Some(conns) => {
                for c in conns {
                    let mut row = vec![a.worker.to_string()];
                    for k in CONNECTION_COLUMNS {
                        row.push(c.get(*k).map(cell).unwrap_or_else(|| "-".into()));
                    }
                    rows.push(row);
                }
            }
            None => silent.push(format!("worker {} (pid {})", a.worker, a.pid)),
        }
    }
    let mut out = table(&header, &rows);
    out.push_str(&format!(
        "total: {} connections in {} processes\n",
        rows.len(),
        sorted.len()
    ));
    if !silent.is_empty() {
        out.push_str(&format!("no answer: {}\n", silent.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn global() -> Global {
        Global {
            version: "0.1.0".into(),
            master_pid: 10,
            started: UNIX_EPOCH + Duration::from_secs(1_795_301_101),
            now: UNIX_EPOCH + Duration::from_secs(1_795_301_101 + 90_061),
            load: "0.10, 0.20, 0.30".into(),
            workers: 2,
            processes: 2,
            slots: vec![
                SlotInfo {
                    id: 0,
                    restarts: 0,
                    last_exit: None,
                },
                SlotInfo {
                    id: 1,
                    restarts: 2,
                    last_exit: Some("killed by SIGKILL".into()),
                },
            ],
        }
    }

    #[test]
    fn status_has_global_block_rows_and_totals() {
        let answers = vec![
            Answer {
                worker: 1,
                pid: 12,
                state: "ready",
                reply: None,
            },
            Answer {
                worker: 0,
                pid: 11,
                state: "ready",
                reply: Some(json!({
                    "worker": 0, "pid": 11, "rss_kib": 2048,
                    "listen": ["ws://127.0.0.1:1234", "tcp://127.0.0.1:5678"],
                    "connections": 3, "ws": 2, "text": 1, "http": 0, "uids": 2,
                    "pushes": 5, "delivered": 4, "send_fail": 0, "qps": 1.5,
                    "zzz": "extra"
                })),
            },
        ];
        let s = format_status(&global(), &answers);
        assert!(s.contains("start time:     2026-11-21T22:45:01Z   uptime: 1 days 01:01:01"));
        assert!(s.contains("load average:   0.10, 0.20, 0.30"));
        assert!(s.contains("1       2         killed_by_SIGKILL"), "{s}");
        let lines: Vec<&str> = s.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("worker  pid"))
            .unwrap();
        let cols: Vec<&str> = lines[header].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "worker",
                "pid",
                "state",
                "rss",
                "listen",
                "connections",
                "ws",
                "text",
                "http",
                "uids",
                "pushes",
                "delivered",
                "send_fail",
                "qps",
                "zzz"
            ]
        );
        let row0: Vec<&str> = lines[header + 1].split_whitespace().collect();
        assert_eq!(row0[0], "0");
        assert_eq!(row0[3], "2.0M");
        assert_eq!(row0[4], "ws://127.0.0.1:1234,tcp://127.0.0.1:5678");
        assert_eq!(row0[5], "3");
        assert_eq!(row0[14], "extra");
        assert_eq!(lines[header + 2], "1       12   ready  no answer");
        assert!(s.contains("total: connections 3, ws 2, text 1, http 0, uids 2"));
        assert!(s.contains("(answered 1 of 2)"));
    }

    #[test]
    fn connections_lists_each_and_names_the_silent() {
        let answers = vec![
            Answer {
                worker: 0,
                pid: 11,
                state: "ready",
                reply: Some(vec![
                    json!({
                        "id": 1, "protocol": "ws", "uid": "u1", "remote": "127.0.0.1:5000",
                        "bytes_in": 10, "bytes_out": 20, "send_queue": 0
                    }),
                    json!({
                        "id": 2, "protocol": "text", "uid": null, "remote": "127.0.0.1:5001",
                        "bytes_in": 1, "bytes_out": 2, "send_queue": 0
                    }),
                ]),
            },
            Answer {
                worker: 1,
                pid: 12,
                state: "ready",
                reply: None,
            },
        ];
        let s = format_connections(&answers);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "worker",
                "id",
                "protocol",
                "uid",
                "remote",
                "bytes_in",
                "bytes_out",
                "send_queue"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["0", "2", "text", "-", "127.0.0.1:5001", "1", "2", "0"]
        );
        assert_eq!(lines[3], "total: 2 connections in 2 processes");
        assert_eq!(lines[4], "no answer: worker 1 (pid 12)");
    }
}
