//! The configuration every process shares: built-in defaults, overridden by a TOML file, then
//! by command-line flags (`--set KEY=VALUE` reaches every key). The master sends it to each
//! worker over the control channel as JSON, in `Control::Start`.
//!
//! It lives in this crate, beside the messages, because it is part of the contract between the
//! master and a worker: the master checks and sends it without linking the worker crate, and
//! the worker checks the copy it receives with the same code.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use thiserror::Error;

/// How a WebSocket client proves its uid (`auth`): the worker's `auth` module checks the
/// tokens; the mode is here so the configuration can be checked without the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// First frame is the uid (seed mode).
    Uid,
    /// `UID.EXPIRY.HEXSIG` tokens.
    Hmac,
    /// HS256 JWT.
    Jwt,
}

/// The events a client's connection produces, by name (`webhook_events`, `subscribe`).
pub const EVENT_NAMES: [&str; 5] = ["login", "message", "logout", "online", "offline"];

/// A configuration that cannot run.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A listen address is neither `off` nor `HOST:PORT`.
    #[error("{key}: `{value}` is not an address (HOST:PORT or off)")]
    BadAddress {
        /// The key.
        key: &'static str,
        /// What was given.
        value: String,
    },
    /// A number is out of its range.
    #[error("{key}: {why}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Every setting. Durations are seconds (fractions allowed), sizes bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket port for browsers and apps (`off` disables it).
    pub ws: String,
    /// Text port: one JSON command per line, for backends (`off` disables it).
    pub text: String,
    /// HTTP publish API for backends (`off` disables it).
    pub http: String,
    /// Socket.IO port for socket.io clients v2 and v4 (`off` disables it).
    pub socketio: String,
    /// Worker processes; 0 means one per CPU.
    pub workers: usize,
    /// Pid file of the master (`stop`, `reload`, `status` find it there).
    pub pid_file: String,
    /// Where `status` and `connections` write their reports (default: beside the pid file).
    pub status_file: String,
    /// Log file for `start -d` (stdout and stderr go there once daemonized).
    pub log_file: String,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// `text` (one readable line per event) or `json` (one JSON object per line, for log
    /// collectors).
    pub log_format: String,
    /// After login, send `login success, your uid is UID` (seed 002's reply).
    pub login_reply: bool,
    /// Let a logged-in client push `UID:message` / `all:message` (seed 002). Off: any client
    /// could then push to anyone.
    pub client_relay: bool,
    /// Longest text-port line; a longer one closes that backend connection.
    pub max_line: usize,
    /// Largest HTTP request body.
    pub max_body: usize,
    /// Largest HTTP request head (request line and headers).
    pub max_header: usize,
    /// Largest WebSocket frame or message accepted from a client.
    pub max_frame: usize,
    /// Output queued for one connection before pushes to it are dropped and counted. What the
    /// kernel holds unsent for the connection counts too (measured when a write was short).
    pub max_send_buffer: usize,
    /// Uids, groups and excluded uids one push may name in all; a push naming more is refused
    /// (text port: an `{"error":…}` line; JSON API: 400).
    pub max_targets: usize,
    /// An HTTP or Socket.IO request (head and body) must arrive whole within this time from its
    /// first byte, however it trickles in; else 408 and the connection is closed. 0: no limit.
    pub header_timeout: f64,
    /// `SO_SNDBUF` of WebSocket and Socket.IO client sockets (the kernel doubles it for its
    /// bookkeeping): the most the kernel holds for a client that does not read. 0: the
    /// kernel's default, grown on its own up to `net.ipv4.tcp_wmem`'s maximum.
    pub client_sndbuf: usize,
    /// Descriptors a worker keeps for the text and HTTP ports and its sibling links: the
    /// WebSocket and Socket.IO ports refuse new clients (503) when fewer are left. At most a
    /// quarter of the open-file limit is kept.
    pub fd_reserve: usize,
    /// How long a push waits for its siblings' answers before replying with what it has.
    pub ipc_timeout: f64,
    /// Graceful stop and reload: how long old connections are served before closing with 1001.
    pub drain_timeout: f64,
    /// Fast stop: how long the master waits before SIGKILL.
    pub stop_timeout: f64,
    /// Bytes one sibling link may buffer before pushes to it count as undeliverable there.
    pub ipc_max_pending: usize,
    /// WebSocket authentication: `uid` (the first frame is the uid, as in the seeds), `hmac`
    /// or `jwt`. Empty: `uid` when the WebSocket port is on loopback, else start-up fails.
    pub auth: String,
    /// Shared secret for `hmac` and `jwt` tokens.
    pub auth_secret: String,
    /// A WebSocket must finish its handshake and log in within this time.
    pub auth_timeout: f64,
    /// The server pings every WebSocket this often.
    pub ping_interval: f64,
    /// A WebSocket (or idle HTTP keep-alive connection) that sent nothing for this long is
    /// closed.
    pub idle_timeout: f64,
    /// Connections one worker accepts at most (0: no limit but the open-file limit).
    pub max_connections: usize,
    /// Connections one remote IP may hold in one worker (0: no limit).
    pub max_connections_per_ip: usize,
    /// Origins allowed to open a WebSocket (exact `scheme://host[:port]`); empty allows all.
    pub allowed_origins: Vec<String>,
    /// A connection whose output stays over `max_send_buffer` this long is closed.
    pub slow_timeout: f64,
    /// When set, backends must present it: first text-port line `{"cmd":"auth","secret":…}`,
    /// or `Authorization: Bearer …` on HTTP.
    pub push_secret: String,
    /// How long a uid's group memberships outlive its last connection.
    pub group_ttl: f64,
    /// A socket.io client build (e.g. `…/socket.io-client/dist/socket.io.js`) served at
    /// `/socket.io/socket.io.js` on the Socket.IO port, as the seed's page loads it; empty:
    /// not served.
    pub socketio_client: String,
    /// When started as root: the user workers switch to once their ports are bound.
    pub user: String,
    /// When started as root: the group workers switch to (default: the user's own group).
    pub group: String,
    /// `redis://HOST:PORT/DB` (or `redis://:PASSWORD@HOST:PORT/DB`): this server is a node of
    /// a cluster whose nodes meet in that Redis; empty: a single host, no Redis.
    pub cluster: String,
    /// This node's name in the cluster (default: the host name and the master's pid); two
    /// running nodes must not share one.
    pub node_id: String,
    /// Prefix of every Redis key and channel Herald uses, so several clusters can share one
    /// Redis.
    pub cluster_prefix: String,
    /// With `rediss://`: a PEM file of the CA that signed Redis's certificate (empty: the
    /// system's trusted roots).
    pub cluster_ca: String,
    /// Which ports speak TLS: any of `ws`, `socketio`, `http`, `text` (default: none). Needs
    /// `tls_cert` and `tls_key`.
    pub tls: Vec<String>,
    /// PEM file of the server's certificate chain, leaf first (Let's Encrypt's
    /// `fullchain.pem`); re-read on reload.
    pub tls_cert: String,
    /// PEM file of the certificate's private key (PKCS#8, RSA or EC; Let's Encrypt's
    /// `privkey.pem`); re-read on reload.
    pub tls_key: String,
    /// PEM file of the CA(s) whose client certificates the text and HTTP ports require when
    /// they speak TLS (mutual TLS for backends); empty: no client certificate asked.
    pub tls_client_ca: String,
    /// What the three files held when the configuration was loaded (`start`, `reload`): the
    /// master reads them and sends their contents to the workers, so a file broken by a
    /// renewal cannot reach a worker, and the running material stays. Never read from the
    /// configuration file (loading overwrites it).
    #[serde(skip_serializing_if = "TlsPem::is_empty")]
    pub tls_pem: TlsPem,
    /// Events from clients (login, message, logout, online, offline) are produced, for
    /// subscribers on the text port and the webhook. Off by default: each logged-in client then
    /// costs a little more memory (its connection's name and login time).
    pub events: bool,
    /// Where events are POSTed as JSON, in batches (`http://HOST[:PORT]/PATH`); empty: no
    /// webhook. Setting it turns `events` on.
    pub webhook_url: String,
    /// Which events the webhook receives (`login`, `message`, `logout`, `online`, `offline`).
    pub webhook_events: Vec<String>,
    /// Key of the HMAC-SHA256 signature of every webhook body (`X-Herald-Signature`); empty:
    /// bodies are not signed.
    pub webhook_secret: String,
    /// Events in one webhook POST at most.
    pub webhook_batch: usize,
    /// How long the first event of a batch waits for others before the POST goes (seconds).
    pub webhook_delay: f64,
    /// Events waiting for the webhook per worker at most; beyond, events are dropped and
    /// counted (`webhook_dropped`), so an endpoint that is down costs bounded memory.
    pub webhook_queue: usize,
    /// How long one webhook POST may take (connect, send, answer) before it counts as failed
    /// and is retried.
    pub webhook_timeout: f64,
    /// Messages per second one logged-in client may send (0: no limit); what is over it is
    /// dropped and counted, or closes the connection (`upstream_rate_close`).
    pub max_upstream_rate: u32,
    /// A client over `max_upstream_rate` is closed with 1008 instead of having its excess
    /// messages dropped.
    pub upstream_rate_close: bool,
    /// Messages kept per uid so a client that drops for a moment can recover what it missed
    /// (0: no history, today's behaviour and bytes).
    pub history_size: usize,
    /// Seconds a kept message stays recoverable.
    pub history_ttl: f64,
    /// Bytes of kept messages one worker may hold (it keeps the uids it owns); the oldest
    /// message goes first when a new one would pass it. In a cluster the history is in Redis
    /// and this bound is not used: Redis's `maxmemory` and `history_size` bound it there.
    pub history_max_bytes: usize,
    /// Seconds after a Socket.IO session ends during which its client may recover it.
    pub recovery_window: f64,
    /// With a history: a push to a uid with no connection is kept and delivered at its next
    /// login within `history_ttl`.
    pub offline_delivery: bool,
}

/// The PEM contents of `tls_cert`, `tls_key` and `tls_client_ca`, as loaded.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsPem {
    /// The certificate chain.
    pub cert: String,
    /// The private key (kept out of `Debug`).
    pub key: String,
    /// The client CA(s); empty when no client certificate is required.
    pub client_ca: String,
}

impl TlsPem {
    /// Nothing was loaded (TLS is off).
    pub fn is_empty(&self) -> bool {
        self.cert.is_empty() && self.key.is_empty() && self.client_ca.is_empty()
    }
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &format_args!("{} bytes (hidden)", self.key.len()))
            .field("client_ca", &format_args!("{} bytes", self.client_ca.len()))
            .finish()
    }
}

/// The ports `tls` may name, as written in the configuration.
pub const TLS_PORTS: [&str; 4] = ["ws", "text", "http", "socketio"];

impl Default for Config {
    fn default() -> Self {
        Config {
            ws: "127.0.0.1:1234".into(),
            text: "127.0.0.1:5678".into(),
            http: "127.0.0.1:2121".into(),
            socketio: "127.0.0.1:2120".into(),
            workers: 0,
            pid_file: "herald.pid".into(),
            status_file: String::new(),
            log_file: "herald.log".into(),
            log_level: "info".into(),
            log_format: "text".into(),
            login_reply: false,
            client_relay: false,
            max_line: 1024 * 1024,
            max_body: 1024 * 1024,
            max_header: 16 * 1024,
            max_frame: 64 * 1024,
            max_send_buffer: 1024 * 1024,
            max_targets: 10_000,
            header_timeout: 10.0,
            client_sndbuf: 64 * 1024,
            fd_reserve: 128,
            ipc_timeout: 1.0,
            drain_timeout: 30.0,
            stop_timeout: 5.0,
            ipc_max_pending: 8 * 1024 * 1024,
            auth: String::new(),
            auth_secret: String::new(),
            auth_timeout: 10.0,
            ping_interval: 25.0,
            idle_timeout: 60.0,
            max_connections: 0,
            max_connections_per_ip: 0,
            allowed_origins: Vec::new(),
            slow_timeout: 30.0,
            push_secret: String::new(),
            group_ttl: 300.0,
            socketio_client: String::new(),
            user: String::new(),
            group: String::new(),
            cluster: String::new(),
            node_id: String::new(),
            cluster_prefix: "herald".into(),
            cluster_ca: String::new(),
            tls: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            tls_pem: TlsPem::default(),
            events: false,
            webhook_url: String::new(),
            webhook_events: ["login", "message", "logout", "online", "offline"]
                .map(String::from)
                .to_vec(),
            webhook_secret: String::new(),
            webhook_batch: 100,
            webhook_delay: 0.005,
            webhook_queue: 10_000,
            webhook_timeout: 5.0,
            max_upstream_rate: 0,
            upstream_rate_close: false,
            history_size: 0,
            history_ttl: 300.0,
            history_max_bytes: 64 * 1024 * 1024,
            recovery_window: 120.0,
            offline_delivery: false,
        }
    }
}

/// Largest `history_size`: a recovery sends at most this many messages in one loop turn.
pub const MAX_HISTORY: usize = 1000;

/// The listen addresses, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// WebSocket port, if enabled.
    pub ws: Option<SocketAddr>,
    /// Text port, if enabled.
    pub text: Option<SocketAddr>,
    /// HTTP port, if enabled.
    pub http: Option<SocketAddr>,
    /// Socket.IO port, if enabled.
    pub socketio: Option<SocketAddr>,
}

fn parse_addr(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Some)
        .ok_or_else(|| ConfigError::BadAddress {
            key,
            value: value.into(),
        })
}

impl Config {
    /// Checks every value and parses the addresses.
    pub fn validate(&self) -> Result<Listeners, ConfigError> {
        let l = Listeners {
            ws: parse_addr("ws", &self.ws)?,
            text: parse_addr("text", &self.text)?,
            http: parse_addr("http", &self.http)?,
            socketio: parse_addr("socketio", &self.socketio)?,
        };
        for (key, v) in [
            ("ipc_timeout", self.ipc_timeout),
            ("drain_timeout", self.drain_timeout),
            ("stop_timeout", self.stop_timeout),
            ("auth_timeout", self.auth_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("slow_timeout", self.slow_timeout),
            ("group_ttl", self.group_ttl),
            ("header_timeout", self.header_timeout),
            ("webhook_delay", self.webhook_delay),
            ("webhook_timeout", self.webhook_timeout),
            ("history_ttl", self.history_ttl),
            ("recovery_window", self.recovery_window),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::OutOfRange {
                    key,
                    why: format!("{v} is not a duration in seconds"),
                });
            }
        }
        for (key, v) in [
            ("max_line", self.max_line),
            ("max_body", self.max_body),
            ("max_header", self.max_header),
            ("max_frame", self.max_frame),
            ("max_send_buffer", self.max_send_buffer),
            ("ipc_max_pending", self.ipc_max_pending),
        ] {
            if v < 64 {
                return Err(ConfigError::OutOfRange {
                    key,
                    why: format!("{v} bytes is too small (at least 64)"),
                });
            }
        }
        if self.max_targets == 0 {
            return Err(ConfigError::OutOfRange {
                key: "max_targets",
                why: "a push must be allowed at least one target".into(),
            });
        }
        if self.client_sndbuf != 0 && !(4096..=64 * 1024 * 1024).contains(&self.client_sndbuf) {
            return Err(ConfigError::OutOfRange {
                key: "client_sndbuf",
                why: format!(
                    "{} bytes: 0 (the kernel's default) or 4096 to 67108864",
                    self.client_sndbuf
                ),
            });
        }
        if self.max_line > 8 * 1024 * 1024 || self.max_body > 8 * 1024 * 1024 {
            return Err(ConfigError::OutOfRange {
                key: "max_line",
                why: "max_line and max_body are at most 8 MiB (a push crosses IPC whole)".into(),
            });
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::OutOfRange {
                key: "log_format",
                why: format!("`{}` is not `text` or `json`", self.log_format),
            });
        }
        if self.history_size > MAX_HISTORY {
            return Err(ConfigError::OutOfRange {
                key: "history_size",
                why: format!(
                    "{} messages: at most {MAX_HISTORY} per uid (a recovery is answered in one turn)",
                    self.history_size
                ),
            });
        }
        if self.history_size > 0 && self.history_max_bytes < 4096 {
            return Err(ConfigError::OutOfRange {
                key: "history_max_bytes",
                why: format!(
                    "{} bytes is too small (at least 4096)",
                    self.history_max_bytes
                ),
            });
        }
        if self.offline_delivery && self.history_size == 0 {
            return Err(ConfigError::OutOfRange {
                key: "offline_delivery",
                why: "offline_delivery keeps messages in the history: set history_size too".into(),
            });
        }
        self.auth_mode(&l)?;
        if !self.cluster.is_empty()
            && !self.cluster.starts_with("redis://")
            && !self.cluster.starts_with("rediss://")
            && !self.cluster.starts_with("redis+unix://")
        {
            return Err(ConfigError::OutOfRange {
                key: "cluster",
                why: format!(
                    "`{}` is not a Redis URL (redis://HOST:PORT/DB, redis://:PASSWORD@HOST:PORT/DB, rediss:// for TLS)",
                    self.cluster
                ),
            });
        }
        let ok_name = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok_name(&self.node_id)
            || self.cluster_prefix.is_empty()
            || !ok_name(&self.cluster_prefix)
        {
            return Err(ConfigError::OutOfRange {
                key: "node_id",
                why: "node_id and cluster_prefix are letters, digits, `-`, `_` and `.`".into(),
            });
        }
        for p in &self.tls {
            if !TLS_PORTS.contains(&p.as_str()) {
                return Err(ConfigError::OutOfRange {
                    key: "tls",
                    why: format!("`{p}` is not one of ws, socketio, http, text"),
                });
            }
        }
        if !self.tls.is_empty() && (self.tls_cert.is_empty() || self.tls_key.is_empty()) {
            return Err(ConfigError::OutOfRange {
                key: "tls",
                why: "ports speaking TLS need tls_cert (PEM chain) and tls_key (PEM key)".into(),
            });
        }
        self.check_events()?;
        Ok(l)
    }

    /// Events are produced: asked for, or needed by a webhook.
    pub fn events_on(&self) -> bool {
        self.events || !self.webhook_url.is_empty()
    }

    /// The event and webhook keys.
    fn check_events(&self) -> Result<(), ConfigError> {
        if !self.webhook_url.is_empty() && !self.webhook_url.starts_with("http://") {
            return Err(ConfigError::OutOfRange {
                key: "webhook_url",
                why: format!(
                    "`{}` is not an http:// URL (http://HOST[:PORT]/PATH; put a TLS proxy in front for https)",
                    self.webhook_url
                ),
            });
        }
        for e in &self.webhook_events {
            if !EVENT_NAMES.contains(&e.as_str()) {
                return Err(ConfigError::OutOfRange {
                    key: "webhook_events",
                    why: format!("`{e}` is not one of {}", EVENT_NAMES.join(", ")),
                });
            }
        }
        if !(1..=10_000).contains(&self.webhook_batch) {
            return Err(ConfigError::OutOfRange {
                key: "webhook_batch",
                why: format!("{} events: 1 to 10000", self.webhook_batch),
            });
        }
        if !(1..=10_000_000).contains(&self.webhook_queue) {
            return Err(ConfigError::OutOfRange {
                key: "webhook_queue",
                why: format!("{} events: 1 to 10000000", self.webhook_queue),
            });
        }
        if self.webhook_timeout <= 0.0 {
            return Err(ConfigError::OutOfRange {
                key: "webhook_timeout",
                why: "a POST needs some time (more than 0 s)".into(),
            });
        }
        Ok(())
    }

    /// The WebSocket authentication mode, with the empty default resolved.
    pub fn auth_mode(&self, l: &Listeners) -> Result<AuthMode, ConfigError> {
        let mode = match self.auth.as_str() {
            "uid" => AuthMode::Uid,
            "hmac" => AuthMode::Hmac,
            "jwt" => AuthMode::Jwt,
            "" => match l.ws {
                Some(a) if !a.ip().is_loopback() => {
                    return Err(ConfigError::OutOfRange {
                        key: "auth",
                        why: format!(
                            "the WebSocket port {a} is not on loopback, so anyone could claim any uid: \
                             set auth = \"hmac\" or \"jwt\" with auth_secret, or auth = \"uid\" to accept that"
                        ),
                    })
                }
                _ => AuthMode::Uid,
            },
            other => {
                return Err(ConfigError::OutOfRange {
                    key: "auth",
                    why: format!("`{other}` is not one of uid, hmac, jwt"),
                })
            }
        };
        if mode != AuthMode::Uid && self.auth_secret.len() < 16 {
            return Err(ConfigError::OutOfRange {
                key: "auth_secret",
                why: format!(
                    "auth = {} needs auth_secret of at least 16 characters",
                    self.auth
                ),
            });
        }
        Ok(mode)
    }

    /// Whether the port named `name` (`ws`, `text`, `http`, `socketio`) speaks TLS.
    pub fn tls_on(&self, name: &str) -> bool {
        self.tls.iter().any(|p| p == name)
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let l = Config::default().validate().unwrap();
        assert_eq!(l.ws.unwrap().port(), 1234);
        assert_eq!(l.text.unwrap().port(), 5678);
        assert_eq!(l.http.unwrap().port(), 2121);
    }

    #[test]
    fn off_disables_and_garbage_is_refused() {
        let c = Config {
            http: "off".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap().http, None);
        let c = Config {
            ws: "nowhere".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn limits_are_checked() {
        for (c, key) in [
            (
                Config {
                    max_targets: 0,
                    ..Config::default()
                },
                "max_targets",
            ),
            (
                Config {
                    header_timeout: -1.0,
                    ..Config::default()
                },
                "header_timeout",
            ),
            (
                Config {
                    client_sndbuf: 100,
                    ..Config::default()
                },
                "client_sndbuf",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
        let off = Config {
            client_sndbuf: 0,
            header_timeout: 0.0,
            fd_reserve: 0,
            ..Config::default()
        };
        assert!(off.validate().is_ok());
    }

    #[test]
    fn tls_ports_are_checked() {
        let c = Config {
            tls: vec!["ws".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().starts_with("tls"));
        let c = Config {
            tls: vec!["smtp".into()],
            tls_cert: "c.pem".into(),
            tls_key: "k.pem".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("smtp"));
        let c = Config {
            tls: vec!["ws".into(), "text".into()],
            tls_cert: "c.pem".into(),
            tls_key: "k.pem".into(),
            ..Config::default()
        };
        assert!(c.validate().is_ok());
        assert!(c.tls_on("text") && !c.tls_on("http"));
        let pem = TlsPem {
            key: "SECRET".into(),
            ..TlsPem::default()
        };
        assert!(!format!("{pem:?}").contains("SECRET"));
    }

    #[test]
    fn event_keys_are_checked() {
        let ok = Config {
            webhook_url: "http://127.0.0.1:8080/herald.php".into(),
            webhook_events: vec!["message".into()],
            ..Config::default()
        };
        assert!(ok.validate().is_ok());
        assert!(ok.events_on());
        assert!(!Config::default().events_on());
        for (c, key) in [
            (
                Config {
                    webhook_url: "https://x/".into(),
                    ..Config::default()
                },
                "webhook_url",
            ),
            (
                Config {
                    webhook_events: vec!["msg".into()],
                    ..Config::default()
                },
                "webhook_events",
            ),
            (
                Config {
                    webhook_batch: 0,
                    ..Config::default()
                },
                "webhook_batch",
            ),
            (
                Config {
                    webhook_timeout: 0.0,
                    ..Config::default()
                },
                "webhook_timeout",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn history_options_are_checked() {
        let ok = Config {
            history_size: 100,
            offline_delivery: true,
            ..Config::default()
        };
        assert!(ok.validate().is_ok());
        // In a cluster the history lives in Redis.
        let clustered = Config {
            cluster: "redis://127.0.0.1:6379/0".into(),
            ..ok
        };
        assert!(clustered.validate().is_ok());
        for (bad, key) in [
            (
                Config {
                    history_size: MAX_HISTORY + 1,
                    ..Config::default()
                },
                "history_size",
            ),
            (
                Config {
                    history_size: 10,
                    history_max_bytes: 100,
                    ..Config::default()
                },
                "history_max_bytes",
            ),
            (
                Config {
                    offline_delivery: true,
                    ..Config::default()
                },
                "offline_delivery",
            ),
            (
                Config {
                    history_ttl: -1.0,
                    ..Config::default()
                },
                "history_ttl",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn public_websocket_needs_a_secret() {
        let c = Config {
            ws: "0.0.0.0:1234".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            ws: "0.0.0.0:1234".into(),
            auth: "hmac".into(),
            auth_secret: "0123456789abcdef".into(),
            ..Config::default()
        };
        assert!(c.validate().is_ok());
        let c = Config {
            ws: "0.0.0.0:1234".into(),
            auth: "uid".into(),
            ..Config::default()
        };
        assert!(c.validate().is_ok());
    }
}
