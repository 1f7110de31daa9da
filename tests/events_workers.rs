//! Events when workers change: the uids of a worker killed with `kill -9` go offline (said by
//! their owner worker); an owner worker replaced after `kill -9` announces no uid online again,
//! and neither the offline of its own uids (said by its backup) nor those of departures while
//! it was missing (said by its replacement) are lost; the PHP consumer connects again after a
//! graceful reload, with the chat going on through the new workers.

mod common;
mod events_common;

use common::*;
use events_common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};
#[test]
fn a_killed_workers_uids_go_offline() {
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .start();
    srv.wait_mesh();
    let sub = Sub::connect(&srv, r#"["login","online","offline"]"#);
    wait_subscribers_known(&srv, &[&sub]);
    let sub_pid = Owners::snapshot(&srv.worker_pids())
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let stats: Value = serde_json::from_slice(&r.body).expect("stats");
    let rows = stats["workers"].as_array().expect("rows").clone();
    let id_of = |pid: u32| {
        rows.iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .and_then(|r| r["worker"].as_u64())
    };
    let survivor = id_of(sub_pid).expect("survivor id");
    let victim_pid = srv
        .worker_pids()
        .into_iter()
        .find(|p| *p != sub_pid)
        .expect("victim");
    sub.drain(Duration::from_millis(300));

    let mut clients = Vec::new();
    let mut login_in = HashMap::new();
    let mut owner_of = HashMap::new();
    for i in 0..40 {
        let uid = format!("d{i}");
        clients.push(srv.login_acked(&uid));
    }
    while login_in.len() < 40 || owner_of.len() < 40 {
        let v = sub.wait("logins and onlines", LONG, |v| {
            v["uid"].as_str().is_some_and(|u| u.starts_with('d'))
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        let w = v["worker"].as_u64().expect("worker");
        match v["event"].as_str() {
            Some("login") => login_in.insert(uid, w),
            Some("online") => owner_of.insert(uid, w),
            _ => None,
        };
    }
    // In the victim, and owned by the survivor: the survivor must say offline when it dies.
    let doomed: HashSet<&String> = login_in
        .iter()
        .filter(|(u, w)| **w != survivor && owner_of.get(*u) == Some(&survivor))
        .map(|(u, _)| u)
        .collect();
    assert!(
        !doomed.is_empty(),
        "no uid in the victim owned by the survivor"
    );
    signal(victim_pid, libc::SIGKILL);
    let mut offline = HashSet::new();
    while offline.len() < doomed.len() {
        let v = sub.wait("offline of the dead worker's uids", LONG, |v| {
            v["event"] == "offline"
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        assert_ne!(
            login_in.get(&uid),
            Some(&survivor),
            "offline for {uid}, still connected"
        );
        offline.insert(uid);
    }
    for u in doomed {
        assert!(offline.contains(u), "no offline for {u}");
    }
}

#[test]
fn the_php_subscriber_reconnects_after_a_graceful_reload() {
    if !php_ready() {
        return;
    }
    let mut srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .set("drain_timeout=1")
        .start();
    srv.wait_mesh();
    let php = Lines::spawn(
        "subscriber.php",
        Command::new("php").args([
            workspace_root()
                .join("scripts/php/subscriber.php")
                .to_str()
                .expect("path"),
            "127.0.0.1",
            &srv.text.to_string(),
            "login,message",
        ]),
    );
    php.wait("subscribed", LONG, |l| l == "subscribed");
    let old = srv.worker_pids();
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload: {}", show(&out.stderr));
    assert!(wait_until(Duration::from_secs(20), || {
        let now = srv.worker_pids();
        now.len() == 2 && now.is_disjoint(&old)
    }));
    // The old worker retired the subscriber's connection; the script subscribed again.
    php.wait("subscribed again", LONG, |l| l == "subscribed");
    srv.wait_mesh();
    // New workers, same chat: a message reaches the consumer and its push comes back.
    let deadline = Instant::now() + LONG;
    let mut a = srv.login_acked("after");
    let mut b = srv.login_acked("other");
    loop {
        // Until every new worker knows the subscriber (a message before that has no taker).
        a.send_text(r#"{"to":"other","text":"after reload"}"#);
        if b.try_recv_text(Duration::from_millis(300)).as_deref() == Some("after: after reload") {
            break;
        }
        assert!(Instant::now() < deadline, "no chat after the reload");
    }
    assert_eq!(a.recv_text(LONG), "sent");
}

#[test]
fn an_owner_workers_restart_repeats_no_online() {
    if !php_ready() {
        return;
    }
    // The webhook hears every event a worker produces, even one for a subscriber it cannot
    // reach yet.
    let (port, _php, _dir, log) = webhook_endpoint("");
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set(&format!("webhook_url=http://127.0.0.1:{port}/herald.php"))
        .start();
    srv.wait_mesh();
    let sub = Sub::connect(&srv, r#"["login","online","offline"]"#);
    wait_subscribers_known(&srv, &[&sub]);
    let pids = srv.worker_pids();
    let sub_pid = Owners::snapshot(&pids)
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let victim_pid = pids
        .iter()
        .copied()
        .find(|p| *p != sub_pid)
        .expect("victim");
    sub.drain(Duration::from_millis(300));

    // Uids held by the subscriber's worker and owned by the other one (the victim).
    let mut clients = Vec::new();
    let mut login_in = HashMap::new();
    let mut owner_of = HashMap::new();
    for i in 0..40 {
        clients.push(srv.login_acked(&format!("k{i}")));
    }
    while login_in.len() < 40 || owner_of.len() < 40 {
        let v = sub.wait("logins and onlines", LONG, |v| {
            v["uid"].as_str().is_some_and(|u| u.starts_with('k'))
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        let w = v["worker"].as_u64().expect("worker");
        match v["event"].as_str() {
            Some("login") => login_in.insert(uid, w),
            Some("online") => owner_of.insert(uid, w),
            _ => None,
        };
    }
    let kept: HashSet<String> = login_in
        .iter()
        .filter(|(u, w)| owner_of.get(*u) != Some(w))
        .filter(|(_, w)| {
            // Held by the subscriber's worker: its login event names that worker's id.
            let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
            let stats: Value = serde_json::from_slice(&r.body).expect("stats");
            stats["workers"].as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["pid"].as_u64() == Some(u64::from(sub_pid))
                        && r["worker"].as_u64() == Some(**w)
                })
            })
        })
        .map(|(u, _)| u.clone())
        .collect();
    assert!(
        !kept.is_empty(),
        "no uid held by the survivor and owned by the victim"
    );

    // The owner dies; its replacement learns the survivor's uids when their link opens, and
    // announces none of them again.
    signal(victim_pid, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(20), || {
        let now = srv.worker_pids();
        now.len() == 2 && !now.contains(&victim_pid)
    }));
    wait_subscribers_known(&srv, &[&sub]);
    let onlines = |log: &std::path::Path| {
        webhook_recorded(log)
            .into_iter()
            .filter(|v| {
                v["event"] == "online" && v["uid"].as_str().is_some_and(|u| kept.contains(u))
            })
            .count()
    };
    assert!(wait_until(LONG, || onlines(&log) >= kept.len()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(onlines(&log), kept.len(), "online repeated");
    // And the new owner knows them: their last connection says offline, once each.
    let mut closed = 0;
    for (i, c) in clients.into_iter().enumerate() {
        if kept.contains(&format!("k{i}")) {
            c.close();
            closed += 1;
        }
    }
    let mut offline = HashSet::new();
    while offline.len() < closed {
        let v = sub.wait("offline of the kept uids", LONG, |v| {
            v["event"] == "offline" && v["uid"].as_str().is_some_and(|u| kept.contains(u))
        });
        assert!(
            offline.insert(v["uid"].as_str().unwrap_or_default().to_string()),
            "{v}"
        );
    }
}

#[test]
fn an_owner_workers_death_loses_no_offline() {
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .start();
    srv.wait_mesh();
    let sub = Sub::connect(&srv, r#"["login","logout","online","offline"]"#);
    wait_subscribers_known(&srv, &[&sub]);
    let pids = srv.worker_pids();
    let sub_pid = Owners::snapshot(&pids)
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let victim_pid = pids
        .iter()
        .copied()
        .find(|p| *p != sub_pid)
        .expect("victim");
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let stats: Value = serde_json::from_slice(&r.body).expect("stats");
    let victim_id = stats["workers"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["pid"].as_u64() == Some(u64::from(victim_pid)))
                .and_then(|r| r["worker"].as_u64())
        })
        .expect("the victim's worker id");
    sub.drain(Duration::from_millis(300));

    let mut clients = HashMap::new();
    let mut login_in = HashMap::new();
    let mut owner_of = HashMap::new();
    for i in 0..60 {
        let uid = format!("g{i}");
        clients.insert(uid.clone(), srv.login_acked(&uid));
    }
    while login_in.len() < 60 || owner_of.len() < 60 {
        let v = sub.wait("logins and onlines", LONG, |v| {
            v["uid"].as_str().is_some_and(|u| u.starts_with('g'))
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        let w = v["worker"].as_u64().expect("worker");
        match v["event"].as_str() {
            Some("login") => login_in.insert(uid, w),
            Some("online") => owner_of.insert(uid, w),
            _ => None,
        };
    }
    let pick = |held_by_victim: bool| -> HashSet<String> {
        login_in
            .iter()
            .filter(|(u, w)| (**w == victim_id) == held_by_victim && owner_of[*u] == victim_id)
            .map(|(u, _)| u.clone())
            .collect()
    };
    // Held and owned by the victim: only it knew them, and its backup must say offline.
    let only_victim = pick(true);
    // Held by the survivor, owned by the victim, and closed while the victim is not replaced.
    let in_gap = pick(false);
    assert!(
        !only_victim.is_empty() && !in_gap.is_empty(),
        "no uids of each kind"
    );

    // The master is held still, so the victim is not replaced before the gap's departures.
    signal(srv.master_pid(), libc::SIGSTOP);
    signal(victim_pid, libc::SIGKILL);
    let mut offline = HashSet::new();
    while offline.len() < only_victim.len() {
        let v = sub.wait("offline of the victim's own uids", LONG, |v| {
            v["event"] == "offline" && v["uid"].as_str().is_some_and(|u| only_victim.contains(u))
        });
        assert!(
            offline.insert(v["uid"].as_str().unwrap_or_default().to_string()),
            "{v}"
        );
    }
    for uid in &in_gap {
        if let Some(c) = clients.remove(uid) {
            c.close();
        }
    }
    // The survivor handled the closes (their logouts) before the replacement exists.
    let mut logouts = HashSet::new();
    while logouts.len() < in_gap.len() {
        let v = sub.wait("logouts in the gap", LONG, |v| {
            v["event"] == "logout" && v["uid"].as_str().is_some_and(|u| in_gap.contains(u))
        });
        logouts.insert(v["uid"].as_str().unwrap_or_default().to_string());
    }
    signal(srv.master_pid(), libc::SIGCONT);
    let mut gone = HashSet::new();
    while gone.len() < in_gap.len() {
        let v = sub.wait("offline of the uids that left in the gap", LONG, |v| {
            v["event"] == "offline" && v["uid"].as_str().is_some_and(|u| in_gap.contains(u))
        });
        assert!(
            gone.insert(v["uid"].as_str().unwrap_or_default().to_string()),
            "{v}"
        );
    }
    // Once each: nothing more for them.
    let more: Vec<Value> = sub
        .drain(Duration::from_millis(800))
        .into_iter()
        .filter(|v| v["event"] == "online" || v["event"] == "offline")
        .filter(|v| {
            v["uid"]
                .as_str()
                .is_some_and(|u| only_victim.contains(u) || in_gap.contains(u))
        })
        .collect();
    assert!(more.is_empty(), "{more:?}");
}
