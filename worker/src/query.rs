//! Whole-server answers: every worker's [`Share`] of a [`Query`] merged into one [`Merged`]
//! answer, and that answer rendered for the text port, the JSON API or `/metrics`.
//!
//! Pure functions: the event loop gathers the shares (see `gather`), this module only
//! combines and words them. A `partial` answer is one that misses a worker's share (it did not
//! answer within `ipc_timeout`, or its link broke); every rendering says so.

use base64::Engine;
use herald_ipc::stats::{Kind, TABLE};
use herald_ipc::{Query, Share};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The whole server's answer to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// Connections summed over workers (online, kick).
    Connections(u64),
    /// Distinct uids and their connections (uids): each worker's sorted list, merged as the
    /// answer is written (see [`each_uid`]).
    Uids {
        /// Connections summed over workers.
        connections: u64,
        /// Each worker's uids, ascending, each followed by `\n`.
        lists: Vec<String>,
    },
    /// Distinct uids counted, and their connections (count).
    Count {
        /// Connections summed over workers.
        connections: u64,
        /// Distinct uids over workers.
        uids: u64,
    },
    /// Every answering worker's (pid, generation), folded into one number that moves when any
    /// of them does.
    Generation(u64),
    /// Every group and its distinct members.
    Groups(BTreeMap<String, BTreeSet<String>>),
    /// The groups of one uid.
    GroupsOf(BTreeSet<String>),
    /// Every worker's status row, in the order they answered.
    Workers(Vec<Value>),
    /// A uid's history, from the worker that keeps it: (epoch, last offset, messages).
    History(u64, u64, Vec<herald_ipc::Kept>),
    /// A change every worker applied.
    Done,
}

/// Merges every worker's share of `q`; shares of another shape (a confused or newer sibling)
/// are left out.
pub fn merge(q: &Query, shares: &[Share]) -> Merged {
    match q {
        Query::Online { .. } | Query::Kick { .. } => Merged::Connections(
            shares
                .iter()
                .map(|s| match s {
                    Share::Connections { connections } => *connections,
                    _ => 0,
                })
                .sum(),
        ),
        Query::Count { .. } => {
            let mut connections = 0;
            let mut lists: Vec<std::borrow::Cow<'_, [u64]>> = Vec::with_capacity(shares.len());
            for s in shares {
                match s {
                    Share::Hashes {
                        connections: c,
                        hashes,
                    } => {
                        connections += c;
                        lists.push(hashes.as_slice().into());
                    }
                    // A sibling of an older build answers with the uids themselves.
                    Share::Uids {
                        connections: c,
                        uids,
                    } => {
                        connections += c;
                        let mut h: Vec<u64> =
                            uids.iter().map(|u| herald_ipc::uid_hash(u)).collect();
                        h.sort_unstable();
                        lists.push(h.into());
                    }
                    _ => {}
                }
            }
            Merged::Count {
                connections,
                uids: distinct_in_sorted(&lists),
            }
        }
        Query::Generation => {
            let mut pairs: Vec<(u32, u64)> = shares
                .iter()
                .filter_map(|s| match s {
                    Share::Generation { pid, generation } => Some((*pid, *generation)),
                    _ => None,
                })
                .collect();
            pairs.sort_unstable();
            let fold = pairs.iter().fold(pairs.len() as u64, |acc, (pid, g)| {
                herald_ipc::uid_hash(&format!("{acc}:{pid}:{g}"))
            });
            Merged::Generation(fold)
        }
        Query::Uids { .. } => {
            let (mut connections, mut lists) = (0, Vec::new());
            for s in shares {
                match s {
                    Share::UidList {
                        connections: c,
                        uids,
                    } => {
                        connections += c;
                        lists.push(uids.clone());
                    }
                    // A sibling of an older build answers with a vector of uids.
                    Share::Uids {
                        connections: c,
                        uids,
                    } => {
                        connections += c;
                        let mut v: Vec<&str> = uids
                            .iter()
                            .map(String::as_str)
                            .filter(|u| !u.contains('\n'))
                            .collect();
                        v.sort_unstable();
                        lists.push(v.iter().flat_map(|u| [*u, "\n"]).collect());
                    }
                    _ => {}
                }
            }
            Merged::Uids { connections, lists }
        }
        Query::Groups => {
            let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in shares {
                if let Share::Groups { groups } = s {
                    for (g, members) in groups {
                        all.entry(g.clone())
                            .or_default()
                            .extend(members.iter().cloned());
                    }
                }
            }
            Merged::Groups(all)
        }
        Query::GroupsOf { .. } => Merged::GroupsOf(
            shares
                .iter()
                .filter_map(|s| match s {
                    Share::GroupsOf { groups } => Some(groups.iter().cloned()),
                    _ => None,
                })
                .flatten()
                .collect(),
        ),
        Query::Stats => Merged::Workers(
            shares
                .iter()
                .filter_map(|s| match s {
                    Share::Stats { row } => Some(row.clone()),
                    _ => None,
                })
                .collect(),
        ),
        Query::Join { .. } | Query::Leave { .. } | Query::Ungroup { .. } => Merged::Done,
        Query::History { .. } => shares
            .iter()
            .filter_map(|s| match s {
                Share::History {
                    epoch,
                    top,
                    messages,
                } => Some(Merged::History(*epoch, *top, messages.clone())),
                _ => None,
            })
            .max_by_key(|m| match m {
                Merged::History(_, top, _) => *top,
                _ => 0,
            })
            .unwrap_or(Merged::History(0, 0, Vec::new())),
    }
}

/// Calls `f` with every distinct uid of the ascending `\n`-terminated lists, in order: a merge
/// that reads each list once (k is the number of workers and nodes, a handful), so 100,000
/// uids cost one comparison per list each, and no allocation.
pub fn each_uid(lists: &[String], mut f: impl FnMut(&str)) {
    let mut at = vec![0usize; lists.len()];
    let mut last: Option<&str> = None;
    loop {
        let mut min: Option<(usize, &str)> = None;
        for (i, l) in lists.iter().enumerate() {
            let rest = &l[at[i].min(l.len())..];
            let Some(end) = rest.find('\n') else {
                continue;
            };
            let head = &rest[..end];
            if min.is_none_or(|(_, m)| head < m) {
                min = Some((i, head));
            }
        }
        let Some((i, u)) = min else {
            return;
        };
        at[i] += u.len() + 1;
        if last != Some(u) {
            f(u);
            last = Some(u);
        }
    }
}

/// Writes the distinct uids of `lists` as a JSON array; returns how many there were.
fn uids_json(lists: &[String], out: &mut String) -> u64 {
    let mut n = 0u64;
    out.push('[');
    each_uid(lists, |u| {
        if n > 0 {
            out.push(',');
        }
        n += 1;
        if u.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            out.push_str(&Value::from(u).to_string());
        } else {
            out.push('"');
            out.push_str(u);
            out.push('"');
        }
    });
    out.push(']');
    n
}

/// A uid's history as the text port and the API answer it: its position and the kept
/// messages (text as it was pushed, binary as base64 with `"binary":true`).
fn history_json(uid: &str, epoch: u64, top: u64, messages: &[herald_ipc::Kept]) -> Value {
    let list: Vec<Value> = messages
        .iter()
        .map(|k| match (k.binary, std::str::from_utf8(&k.payload)) {
            (false, Ok(t)) => json!({ "offset": k.offset, "data": t }),
            _ => json!({
                "offset": k.offset,
                "data": base64::engine::general_purpose::STANDARD.encode(&k.payload),
                "binary": true
            }),
        })
        .collect();
    json!({
        "uid": uid,
        "epoch": format!("{epoch:x}"),
        "offset": top,
        "messages": list,
    })
}

/// How many distinct values the ascending lists hold together: a merge that walks each list
/// once (k is the number of workers and nodes, a handful).
pub fn distinct_in_sorted(lists: &[std::borrow::Cow<'_, [u64]>]) -> u64 {
    let mut at = vec![0usize; lists.len()];
    let mut count = 0u64;
    let mut last: Option<u64> = None;
    loop {
        // The smallest head among the lists.
        let mut min: Option<(usize, u64)> = None;
        for (i, l) in lists.iter().enumerate() {
            if let Some(&v) = l.get(at[i]) {
                if min.is_none_or(|(_, m)| v < m) {
                    min = Some((i, v));
                }
            }
        }
        let Some((i, v)) = min else {
            return count;
        };
        at[i] += 1;
        if last != Some(v) {
            count += 1;
            last = Some(v);
        }
    }
}

/// Group sizes, as `groups` answers them.
fn group_sizes(groups: &BTreeMap<String, BTreeSet<String>>) -> Map<String, Value> {
    groups
        .iter()
        .map(|(g, members)| (g.clone(), json!(members.len())))
        .collect()
}

/// The text port's reply line (with its `\n`) for a merged answer.
pub fn render_text(q: &Query, m: &Merged, partial: bool) -> Vec<u8> {
    let with_partial = |mut v: Map<String, Value>| {
        if partial {
            v.insert("partial".into(), json!(true));
        }
        Value::Object(v).to_string()
    };
    let mut line = match (q, m) {
        (Query::Online { .. }, Merged::Connections(n)) => if *n > 0 { "1" } else { "0" }.into(),
        (Query::Kick { .. }, Merged::Connections(n)) => if *n > 0 { "ok" } else { "fail" }.into(),
        (Query::Count { .. }, Merged::Count { connections, uids }) => {
            let mut o = Map::new();
            o.insert("connections".into(), json!(connections));
            o.insert("uids".into(), json!(uids));
            with_partial(o)
        }
        (Query::Uids { .. }, Merged::Uids { lists, .. }) => {
            let mut s =
                String::with_capacity(lists.iter().map(|l| l.len() + 3 * l.len() / 8).sum());
            if partial {
                s.push_str("{\"uids\":");
                uids_json(lists, &mut s);
                s.push_str(",\"partial\":true}");
            } else {
                uids_json(lists, &mut s);
            }
            s
        }
        (Query::Groups, Merged::Groups(g)) => {
            if partial {
                json!({ "groups": group_sizes(g), "partial": true }).to_string()
            } else {
                Value::Object(group_sizes(g)).to_string()
            }
        }
        (Query::History { uid }, Merged::History(epoch, top, msgs)) => {
            let mut v = history_json(uid, *epoch, *top, msgs);
            if partial {
                v["partial"] = json!(true);
            }
            v.to_string()
        }
        _ => "ok".into(),
    };
    line.push('\n');
    line.into_bytes()
}

/// The sum over workers of every figure that adds up, keyed by the table's names.
fn totals(rows: &[Value]) -> Map<String, Value> {
    TABLE
        .iter()
        .filter(|s| s.kind != Kind::PerWorker)
        .map(|s| {
            let t: u64 = rows.iter().filter_map(|r| r.get(s.name)?.as_u64()).sum();
            (s.name.to_string(), json!(t))
        })
        .collect()
}

/// The JSON API's (status, body) for a merged answer.
pub fn render_http(q: &Query, m: &Merged, partial: bool) -> (u16, String) {
    let mut v = match (q, m) {
        (Query::Online { .. }, Merged::Connections(n)) => {
            json!({ "online": *n > 0, "connections": n })
        }
        (Query::Kick { .. }, Merged::Connections(n)) => json!({ "ok": *n > 0, "connections": n }),
        (Query::Uids { .. }, Merged::Uids { connections, lists }) => {
            // Written directly: a JSON value of 100,000 strings would allocate each twice.
            let mut s = String::from("{\"uids\":");
            let count = uids_json(lists, &mut s);
            s.push_str(&format!(",\"count\":{count},\"connections\":{connections}"));
            if partial {
                s.push_str(",\"partial\":true");
            }
            s.push('}');
            return (200, s);
        }
        (Query::Count { .. }, Merged::Count { connections, uids }) => {
            json!({ "count": uids, "connections": connections })
        }
        (Query::Groups, Merged::Groups(g)) => json!({ "groups": group_sizes(g) }),
        (Query::Stats, Merged::Workers(rows)) => json!({ "totals": totals(rows), "workers": rows }),
        (Query::History { uid }, Merged::History(epoch, top, msgs)) => {
            history_json(uid, *epoch, *top, msgs)
        }
        _ => json!({ "ok": true }),
    };
    if partial {
        v["partial"] = json!(true);
    }
    (200, v.to_string())
}

/// A row's Prometheus labels: its worker, and in a cluster its node first (worker numbers
/// repeat from node to node: without the node two samples would share one series).
fn metric_labels(r: &Value) -> Option<String> {
    let id = r.get("worker")?;
    Some(match r.get("cluster_node").and_then(Value::as_str) {
        Some(node) => format!(
            "node=\"{}\",worker=\"{id}\"",
            node.replace(['\\', '"'], "_")
        ),
        None => format!("worker=\"{id}\""),
    })
}

/// Prometheus text exposition of every worker's status row: one family per figure of the
/// table (counters end in `_total`), each sample labelled with its worker (and its node, in a
/// cluster).
pub fn render_metrics(rows: &[Value], partial: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for s in TABLE {
        let (name, kind) = match s.kind {
            Kind::Counter => (format!("herald_{}_total", s.name), "counter"),
            Kind::Gauge | Kind::PerWorker => (format!("herald_{}", s.name), "gauge"),
        };
        let _ = write!(out, "# HELP {name} {}\n# TYPE {name} {kind}\n", s.help());
        for r in rows {
            if let (Some(l), Some(v)) = (metric_labels(r), r.get(s.name).and_then(Value::as_u64)) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    }
    out.push_str(
        "# HELP herald_push_seconds How long a backend waited for the answer to a push\n# TYPE herald_push_seconds histogram\n",
    );
    for r in rows {
        if let (Some(l), Some(h)) = (metric_labels(r), r.get("push_latency")) {
            crate::histogram::render("herald_push_seconds", &l, h, &mut out);
        }
    }
    out.push_str(
        "# HELP herald_delivery_queue_seconds How long frames waited in a client's output queue before the kernel took them\n# TYPE herald_delivery_queue_seconds histogram\n",
    );
    for r in rows {
        if let (Some(l), Some(h)) = (metric_labels(r), r.get("delivery_latency")) {
            crate::histogram::render("herald_delivery_queue_seconds", &l, h, &mut out);
        }
    }
    let _ = write!(
        out,
        "# HELP herald_build_info The running build\n# TYPE herald_build_info gauge\nherald_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = write!(
        out,
        "# HELP herald_workers_answered Workers whose figures are included\n# TYPE herald_workers_answered gauge\nherald_workers_answered {}\n# HELP herald_partial 1 when a worker did not answer in time\n# TYPE herald_partial gauge\nherald_partial {}\n",
        rows.len(),
        partial as u8
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_hashes_and_older_shares_alike() {
        let h = |u: &[&str]| {
            let mut v: Vec<u64> = u.iter().map(|s| herald_ipc::uid_hash(s)).collect();
            v.sort_unstable();
            v
        };
        let shares = [
            Share::Hashes {
                connections: 3,
                hashes: h(&["a", "b", "c"]),
            },
            Share::Hashes {
                connections: 2,
                hashes: h(&["c", "d"]),
            },
            // An older sibling's share: uids, hashed here.
            uids(2, &["d", "e"]),
            Share::Hashes {
                connections: 0,
                hashes: vec![],
            },
        ];
        let q = Query::Count { group: None };
        assert_eq!(
            merge(&q, &shares),
            Merged::Count {
                connections: 7,
                uids: 5
            }
        );
        assert_eq!(
            render_text(&q, &merge(&q, &shares), true),
            b"{\"connections\":7,\"uids\":5,\"partial\":true}\n"
        );
        let lists: Vec<std::borrow::Cow<'_, [u64]>> = vec![
            vec![1, 2, 2, 9].into(),
            vec![].into(),
            vec![0, 2, 10].into(),
        ];
        assert_eq!(distinct_in_sorted(&lists), 5);
        assert_eq!(distinct_in_sorted(&[]), 0);
    }

    #[test]
    fn uid_lists_merge_in_order_once_each() {
        let list = |c: u64, u: &str| Share::UidList {
            connections: c,
            uids: u.to_string(),
        };
        let shares = [
            list(3, "a\nc\nz\u{e9}\n"),
            list(1, "b\nc\n"),
            uids(2, &["\"q\"", "a"]),
            list(0, ""),
        ];
        let q = Query::Uids { group: None };
        let m = merge(&q, &shares);
        assert_eq!(
            String::from_utf8(render_text(&q, &m, false)).expect("utf-8"),
            "[\"\\\"q\\\"\",\"a\",\"b\",\"c\",\"z\u{e9}\"]\n"
        );
        let (_, body) = render_http(&q, &m, true);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["count"], json!(5));
        assert_eq!(v["connections"], json!(6));
        assert_eq!(v["partial"], json!(true));
        assert_eq!(v["uids"][0], json!("\"q\""));
        let mut seen = Vec::new();
        each_uid(&[], |u| seen.push(u.to_string()));
        assert!(seen.is_empty());
    }

    #[test]
    fn a_generation_moves_when_any_worker_moves() {
        let g = |pairs: &[(u32, u64)]| {
            let shares: Vec<Share> = pairs
                .iter()
                .map(|&(pid, generation)| Share::Generation { pid, generation })
                .collect();
            merge(&Query::Generation, &shares)
        };
        assert_eq!(
            g(&[(1, 5), (2, 7)]),
            g(&[(2, 7), (1, 5)]),
            "order does not matter"
        );
        assert_ne!(g(&[(1, 5), (2, 7)]), g(&[(1, 5), (2, 8)]));
        assert_ne!(
            g(&[(1, 5), (2, 7)]),
            g(&[(1, 5), (3, 7)]),
            "a replaced worker"
        );
        assert_ne!(g(&[(1, 5), (2, 7)]), g(&[(1, 5)]), "a missing worker");
    }

    fn uids(c: u64, u: &[&str]) -> Share {
        Share::Uids {
            connections: c,
            uids: u.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn merging_and_rendering() {
        let shares = [uids(2, &["a", "b"]), uids(1, &["b"])];
        let q = Query::Count { group: None };
        let m = merge(&q, &shares);
        assert_eq!(
            render_text(&q, &m, false),
            b"{\"connections\":3,\"uids\":2}\n"
        );
        let q = Query::Uids { group: None };
        assert_eq!(
            render_text(&q, &merge(&q, &shares), false),
            b"[\"a\",\"b\"]\n"
        );
        let q = Query::Groups;
        let m = merge(
            &q,
            &[
                Share::Groups {
                    groups: vec![("g".into(), vec!["a".into()])],
                },
                Share::Groups {
                    groups: vec![("g".into(), vec!["b".into(), "a".into()])],
                },
            ],
        );
        assert_eq!(render_text(&q, &m, false), b"{\"g\":2}\n");
        let q = Query::Online { uid: "a".into() };
        let m = merge(
            &q,
            &[
                Share::Connections { connections: 0 },
                Share::Connections { connections: 1 },
            ],
        );
        assert_eq!(render_text(&q, &m, true), b"1\n");
        let (status, v) = render_http(&q, &m, true);
        let v: Value = serde_json::from_str(&v).expect("json");
        assert_eq!(status, 200);
        assert_eq!(v, json!({"online":true,"connections":1,"partial":true}));
    }

    #[test]
    fn a_share_of_the_wrong_shape_is_left_out() {
        let q = Query::Online { uid: "a".into() };
        let m = merge(&q, &[Share::Done, Share::Connections { connections: 2 }]);
        assert_eq!(m, Merged::Connections(2));
    }

    /// Every figure of the table appears in the API's totals (unless it does not add up over
    /// workers) and in `/metrics`, with no list to keep in step.
    #[test]
    fn every_figure_reaches_every_output() {
        let row = |w: u64| {
            let mut o = Map::new();
            o.insert("worker".into(), json!(w));
            for s in TABLE {
                o.insert(s.name.into(), json!(1));
            }
            Value::Object(o)
        };
        let rows = vec![row(0), row(1)];
        let (_, v) = render_http(&Query::Stats, &Merged::Workers(rows.clone()), false);
        let v: Value = serde_json::from_str(&v).expect("json");
        let metrics = render_metrics(&rows, false);
        for s in TABLE {
            let metric = match s.kind {
                Kind::Counter => format!("herald_{}_total{{worker=\"1\"}} 1\n", s.name),
                _ => format!("herald_{}{{worker=\"1\"}} 1\n", s.name),
            };
            assert!(metrics.contains(&metric), "{metric}");
            if s.kind == Kind::PerWorker {
                assert!(v["totals"].get(s.name).is_none(), "{}", s.name);
            } else {
                assert_eq!(v["totals"][s.name], json!(2), "{}", s.name);
            }
        }
        assert!(v["totals"]["handed_off"] == json!(2));
    }
}
