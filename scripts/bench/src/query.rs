//! Questions asked while pushes run (`unicast --query LINE --query-every-ms Q`): one text
//! connection sends LINE every Q ms and times each answer, so a run shows what a `count`,
//! `uids` or `status`-sized answer over every connected uid costs, and (against a run without
//! them, in the same sitting) how much it delays the pushes beside it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::util::{mono_ns, quantile, r3};

/// A running series of questions.
pub struct Asker {
    /// Set to end the series.
    stop: Arc<AtomicBool>,
    /// The thread asking; it returns each answer's time (ns) and the bytes of the last one.
    thread: JoinHandle<Result<(Vec<u64>, usize), String>>,
}

impl Asker {
    /// Starts asking `line` (a newline is added) every `every_ms` on a new connection to `text`.
    pub fn start(text: SocketAddrV4, line: &str, every_ms: u64) -> Result<Asker, String> {
        let stream = TcpStream::connect(text).map_err(|e| format!("query connection: {e}"))?;
        stream.set_nodelay(true).ok();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let req = format!("{}\n", line.trim_end());
        let thread = std::thread::spawn(move || {
            let mut w = stream.try_clone().map_err(|e| e.to_string())?;
            let mut r = BufReader::with_capacity(1 << 20, stream);
            let mut times = Vec::new();
            let mut answer = String::new();
            while !flag.load(Ordering::Relaxed) {
                let t0 = mono_ns();
                w.write_all(req.as_bytes())
                    .map_err(|e| format!("query write: {e}"))?;
                answer.clear();
                let n = r
                    .read_line(&mut answer)
                    .map_err(|e| format!("query read: {e}"))?;
                if n == 0 {
                    return Err("query connection closed".into());
                }
                times.push(mono_ns() - t0);
                let spent = (mono_ns() - t0) / 1_000_000;
                std::thread::sleep(Duration::from_millis(every_ms.saturating_sub(spent)));
            }
            Ok((times, answer.len()))
        });
        Ok(Asker { stop, thread })
    }

    /// Ends the series and adds its figures to `m`: questions answered, answer time
    /// p50/p99/max in ms, and the size of the last answer.
    pub fn finish(self, line: &str, m: &mut Map<String, Value>) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut times, bytes) = self
            .thread
            .join()
            .map_err(|_| "query thread panicked".to_string())??;
        times.sort_unstable();
        let ms = |q: f64| r3(quantile(&times, q) as f64 / 1e6);
        m.insert("query".into(), json!(line));
        m.insert("queries".into(), json!(times.len()));
        m.insert("query_p50_ms".into(), json!(ms(0.5)));
        m.insert("query_p99_ms".into(), json!(ms(0.99)));
        m.insert("query_max_ms".into(), json!(ms(1.0)));
        m.insert("query_answer_bytes".into(), json!(bytes));
        Ok(())
    }
}
