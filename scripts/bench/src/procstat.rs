//! What the server's processes cost, read from `/proc`: the process tree under a pid (master
//! plus workers, via `/proc/PID/task/TID/children`), memory (RSS and PSS from `smaps_rollup`) and
//! CPU time (utime+stime from `/proc/PID/stat`, plus the nanosecond run time of every thread from
//! `/proc/PID/task/TID/schedstat`, which is far finer than the 10 ms clock ticks of `stat`).

use std::fs;

/// The pid and every descendant of it (depth first), found through the `children` files.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if out.contains(&pid) || !alive(pid) {
            continue;
        }
        out.push(pid);
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            if let Ok(s) = fs::read_to_string(path) {
                stack.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Whether `/proc/PID` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).first().is_some_and(|st| *st != "Z"),
        Err(_) => false,
    }
}

/// The fields of a `/proc/PID/stat` line after the command name, starting with the state (3).
fn stat_fields(s: &str) -> Vec<&str> {
    match s.rfind(')') {
        Some(i) => s[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Memory and CPU of a set of processes at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// How many processes were read.
    pub procs: usize,
    /// Sum of resident set sizes, bytes.
    pub rss: u64,
    /// Sum of proportional set sizes, bytes.
    pub pss: u64,
    /// Sum of anonymous resident memory (heap, stacks: what a leak grows), bytes; the rest of
    /// `rss` is file-backed (the binary's and libraries' pages as they are first used).
    pub anon: u64,
    /// Sum of utime+stime, nanoseconds (clock-tick resolution).
    pub cpu_ns: u64,
    /// Sum of the run time of every thread from schedstat, nanoseconds.
    pub sched_ns: u64,
    /// The whole machine's CPU time so far, in clock ticks over all CPUs (`/proc/stat`).
    pub machine_ticks: u64,
    /// Of that, time the hypervisor gave to others while this machine wanted to run ("steal").
    pub steal_ticks: u64,
}

/// Share of the machine's CPU time between two samples that the hypervisor took away, in
/// percent: on a shared virtual machine, a latency tail in milliseconds with a high figure here
/// is the host's doing, not the server's.
pub fn steal_pct(s0: &Sample, s1: &Sample) -> f64 {
    let total = s1.machine_ticks.saturating_sub(s0.machine_ticks);
    if total == 0 {
        return 0.0;
    }
    let steal = s1.steal_ticks.saturating_sub(s0.steal_ticks);
    (steal as f64 * 1000.0 / total as f64).round() / 10.0
}

/// (all ticks, steal ticks) from the `cpu` line of `/proc/stat`.
fn machine_cpu(text: &str) -> (u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = v.iter().take(8).sum();
    (total, v.get(7).copied().unwrap_or(0))
}

/// Reads memory and CPU of `root` and all its descendants.
pub fn sample_tree(root: i32) -> Sample {
    sample(&process_tree(root))
}

/// Reads memory and CPU of the given processes; ones that vanished count as zero.
pub fn sample(pids: &[i32]) -> Sample {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut s = Sample::default();
    if let Ok(stat) = fs::read_to_string("/proc/stat") {
        (s.machine_ticks, s.steal_ticks) = machine_cpu(&stat);
    }
    for &pid in pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        s.procs += 1;
        let f = stat_fields(&stat);
        // Field 14 is utime, 15 stime; f[0] is field 3.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|x| x.parse::<u64>().ok()))
            .sum();
        s.cpu_ns += ticks * 1_000_000_000 / tck;
        if let Ok(roll) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            let (rss, pss, anon) = parse_rollup(&roll);
            s.rss += rss;
            s.pss += pss;
            s.anon += anon;
        }
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(ss) = fs::read_to_string(t.path().join("schedstat")) {
                    s.sched_ns += ss
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    s
}

/// RSS and PSS in bytes from the text of `smaps_rollup`.
fn parse_rollup(text: &str) -> (u64, u64, u64) {
    let mut rss = 0;
    let mut pss = 0;
    let mut anon = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let key = it.next().unwrap_or("");
        let kb: u64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        match key {
            "Rss:" => rss = kb * 1024,
            "Pss:" => pss = kb * 1024,
            "Anonymous:" => anon = kb * 1024,
            _ => {}
        }
    }
    (rss, pss, anon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_parsing() {
        let t =
            "00400000-7ffd [rollup]\nRss:                3200 kB\nPss:                1100 kB\n\
                 Pss_Anon:            900 kB\nAnonymous:          1000 kB\n";
        assert_eq!(parse_rollup(t), (3200 * 1024, 1100 * 1024, 1000 * 1024));
    }

    #[test]
    fn machine_cpu_line() {
        let t = "cpu  100 0 50 800 10 0 20 20 5 0\ncpu0 1 2 3\n";
        assert_eq!(machine_cpu(t), (1000, 20));
        let (s0, s1) = (
            Sample {
                machine_ticks: 1000,
                steal_ticks: 20,
                ..Sample::default()
            },
            Sample {
                machine_ticks: 2000,
                steal_ticks: 135,
                ..Sample::default()
            },
        );
        assert_eq!(steal_pct(&s0, &s1), 11.5);
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id() as i32;
        let tree = process_tree(me);
        assert_eq!(tree[0], me);
        let s = sample(&tree);
        assert!(s.procs >= 1);
        assert!(s.rss > 0);
        assert!(s.pss > 0);
    }

    #[test]
    fn stat_fields_skip_the_name() {
        let f = stat_fields("12 (a) b) S 1 2 3");
        assert_eq!(f[0], "S");
    }
}
