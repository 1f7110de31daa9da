//! The process-wide logger: one line per event on stderr (the log file once daemonized),
//! `2026-11-21T22:45:01.123Z INFO  master  message`, tagged `master` or `worker N` so lines
//! of every process interleave readably in one file. The level filter is `log`'s global one.

use log::{Level, Log, Metadata, Record};
use std::io::Write;
use std::time::SystemTime;

/// Writes log records of this process.
struct Logger {
    /// `master` or `worker N`: who wrote the line.
    tag: String,
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
        let line = format_line(
            SystemTime::now(),
            record.level(),
            &self.tag,
            &record.args().to_string(),
        );
        // One write per line: lines of several processes sharing the file stay whole.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger for this process with its tag, at level `info` until told otherwise.
pub fn init(tag: String) {
    let logger: &'static Logger = Box::leak(Box::new(Logger { tag }));
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
}
