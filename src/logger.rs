//! The process-wide logger: one line per event on stderr (the log file once daemonized),
//! `2026-11-21T22:45:01.123Z INFO  master  message`, tagged `master` or `worker N` so lines
//! of every process interleave readably in one file. The level filter is `log`'s global one.
//!
//! With `log_format = "json"` each line is one JSON object instead (`ts`, `level`, `process`,
//! `worker` when a worker wrote it, `pid`, `msg`), for log collectors. When stderr goes to the
//! systemd journal (`JOURNAL_STREAM` is set), every line starts with its sd-daemon priority
//! (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p warning` filters.

use log::{Level, Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// Lines are JSON objects (`log_format = "json"`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Switches between text and JSON lines (from the configuration, or the worker's flag).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// The sd-daemon priority prefix of `level` (syslog severities).
fn priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// One JSON log line, newline included.
pub fn json_line(now: SystemTime, level: Level, tag: &str, message: &str) -> String {
    let mut o = serde_json::Map::new();
    o.insert(
        "ts".into(),
        herald_master::clock::utc_millis(now).to_string().into(),
    );
    o.insert("level".into(), level.as_str().to_ascii_lowercase().into());
    match tag.strip_prefix("worker ") {
        Some(id) => {
            o.insert("process".into(), "worker".into());
            if let Ok(n) = id.parse::<u32>() {
                o.insert("worker".into(), n.into());
            }
        }
        None => {
            o.insert("process".into(), tag.into());
        }
    }
    o.insert("pid".into(), std::process::id().into());
    o.insert("msg".into(), message.into());
    let mut line = serde_json::Value::Object(o).to_string();
    line.push('\n');
    line
}

/// Writes log records of this process.
struct Logger {
    /// `master` or `worker N`: who wrote the line.
    tag: String,
    /// Stderr is the systemd journal: lines carry their priority.
    journal: bool,
}

/// One log line, newline included.
pub fn format_line(now: SystemTime, level: Level, tag: &str, message: &str) -> String {
    format!(
        "{} {:<5} {tag}  {message}\n",
        herald_master::clock::utc_millis(now),
        level.as_str()
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (now, level, msg) = (SystemTime::now(), record.level(), record.args().to_string());
        let mut line = if JSON.load(Ordering::Relaxed) {
            json_line(now, level, &self.tag, &msg)
        } else {
            format_line(now, level, &self.tag, &msg)
        };
        if self.journal {
            line.insert_str(0, priority(level));
        }
        // One write per line: lines of several processes sharing the file stay whole.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger for this process with its tag, at level `info` until told otherwise.
pub fn init(tag: String) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logger: &'static Logger = Box::leak(Box::new(Logger { tag, journal }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn line_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_301_101_123);
        assert_eq!(
            format_line(t, Level::Info, "master", "started"),
            "2026-11-21T22:45:01.123Z INFO  master  started\n"
        );
        assert_eq!(
            format_line(t, Level::Error, "worker 2", "x"),
            "2026-11-21T22:45:01.123Z ERROR worker 2  x\n"
        );
    }

    #[test]
    fn json_lines() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_301_101_123);
        let line = json_line(t, Level::Warn, "worker 2", "a \"quoted\" word");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["ts"], "2026-11-21T22:45:01.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["process"], "worker");
        assert_eq!(v["worker"], 2);
        assert_eq!(v["msg"], "a \"quoted\" word");
        let v: serde_json::Value =
            serde_json::from_str(&json_line(t, Level::Info, "master", "m")).unwrap_or_default();
        assert_eq!(
            (v["process"].as_str(), v.get("worker")),
            (Some("master"), None)
        );
        assert_eq!(priority(Level::Warn), "<4>");
    }
}
