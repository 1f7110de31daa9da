//! A latency histogram with fixed buckets, as Prometheus reads them: how long a backend waited
//! for its answer (from the loop turn that read the push to its `ok`/`fail` or JSON reply), so an
//! operator can see the tail a frozen sibling or a slow cluster causes.

use serde_json::{json, Value};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit).
pub const BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Counts per bucket (not cumulative), their sum and their number.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Observations per bucket; the last one is above every bound.
    counts: [u64; BOUNDS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_us: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Records `n` observations of the same duration.
    pub fn observe_n(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.counts[i] += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
    }

    /// As the status row carries it: `{"buckets":[…per bucket…],"sum_us":…}`.
    pub fn to_json(&self) -> Value {
        json!({ "buckets": self.counts.to_vec(), "sum_us": self.sum_us })
    }
}

/// The Prometheus lines of one worker's histogram (`{"buckets":…,"sum_us":…}`) for family
/// `name`, labelled with `worker`: cumulative `_bucket{le}`, `_sum` in seconds, `_count`.
pub fn render(name: &str, labels: &str, h: &Value, out: &mut String) {
    use std::fmt::Write;
    let Some(counts) = h["buckets"].as_array() else {
        return;
    };
    let mut total = 0u64;
    for (i, c) in counts.iter().enumerate() {
        total += c.as_u64().unwrap_or(0);
        let le = match BOUNDS_US.get(i) {
            Some(b) => format!("{}", *b as f64 / 1e6),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {total}");
    }
    let sum = h["sum_us"].as_u64().unwrap_or(0) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_in_the_exposition() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        render("x", "worker=\"1\"", &h.to_json(), &mut out);
        assert!(
            out.contains("x_bucket{worker=\"1\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"1\",le=\"0.00025\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{worker=\"1\",le=\"1\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{worker=\"1\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{worker=\"1\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{worker=\"1\"} 3.000251\n"), "{out}");
    }
}
