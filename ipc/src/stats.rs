//! The one table of a worker's figures: every counter and gauge, its kind and its help text.
//!
//! A worker keeps its figures in [`Stats`] and sends them to the master as its status row; the
//! `status` report, the JSON API's totals, `/metrics` and the master's `total:` line are all
//! produced by walking [`TABLE`]. A figure added here (one line in the `table!` invocation)
//! therefore appears in every output, named the same, with nothing else to edit.

/// How a figure behaves over time and across workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows while the worker lives (Prometheus `counter`, `_total` suffix); sums over
    /// workers.
    Counter,
    /// A level that goes up and down (Prometheus `gauge`); sums over workers.
    Gauge,
    /// A level that does not add up over workers (the same uid may be counted by several):
    /// shown per worker, left out of the whole server's totals.
    PerWorker,
}

/// One figure's description.
#[derive(Debug)]
pub struct Stat {
    /// Its name: the status row's key, the API's key, the metric's stem (`herald_<name>`).
    pub name: &'static str,
    /// Counter or gauge, and whether it sums over workers.
    pub kind: Kind,
    /// The doc comment it was declared with (a leading space included): see [`Stat::help`].
    doc: &'static str,
    /// Shown among the first columns of `status` and summed in its `total:` line.
    pub headline: bool,
}

/// Declares the figures once: the [`Stats`] struct's fields and the [`TABLE`] entries, in the
/// same order.
macro_rules! table {
    ($( #[doc = $help:literal] $name:ident : $kind:ident $(, $headline:ident)? ; )*) => {
        /// A worker's figures: counters it increments as things happen, gauges it fills in
        /// when a status row is asked for.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Stats {
            $( #[doc = $help] pub $name: u64, )*
        }

        /// Every figure of [`Stats`], in display order.
        pub const TABLE: &[Stat] = &[
            $( Stat {
                name: stringify!($name),
                kind: Kind::$kind,
                doc: $help,
                headline: table!(@headline $($headline)?),
            }, )*
        ];

        impl Stats {
            /// Each figure with its description, in [`TABLE`] order.
            pub fn values(&self) -> impl Iterator<Item = (&'static Stat, u64)> {
                TABLE.iter().zip([$( self.$name ),*])
            }
        }
    };
    (@headline headline) => { true };
    (@headline) => { false };
}

table! {
    /// Open connections on every port
    connections: Gauge, headline;
    /// Open connections on the WebSocket port
    ws: Gauge, headline;
    /// Open connections on the text port
    text: Gauge, headline;
    /// Open connections on the HTTP port
    http: Gauge, headline;
    /// Open connections on the Socket.IO port
    socketio: Gauge;
    /// Socket.IO sessions
    sessions: Gauge;
    /// Logged-in connections and sessions
    logged_in: Gauge;
    /// Distinct uids with a connection in the worker
    uids: PerWorker, headline;
    /// Pushes received from backends and relaying clients
    pushes: Counter, headline;
    /// Frames queued to client connections
    delivered: Counter, headline;
    /// Frames dropped for a connection over max_send_buffer
    send_fail: Counter, headline;
    /// Sibling answers missing (link full, broken or too slow)
    ipc_undelivered: Counter;
    /// Connections accepted
    accepted: Counter;
    /// Connections closed for a protocol violation
    rejected: Counter;
    /// Connections refused over max_connections
    over_max_connections: Counter;
    /// Connections refused over max_connections_per_ip
    over_per_ip: Counter;
    /// WebSocket handshakes refused for their Origin
    bad_origin: Counter;
    /// Logins refused
    auth_failed: Counter;
    /// Connections closed for not logging in in time
    auth_timeout: Counter;
    /// Connections closed after idle_timeout
    idle_closed: Counter;
    /// Connections closed after slow_timeout over max_send_buffer (reset: their output is lost)
    slow_closed: Counter;
    /// HTTP and Socket.IO requests not received whole within header_timeout (408)
    header_timeout: Counter;
    /// Connections refused to keep descriptors for backends (fd_reserve), or for lack of any
    out_of_fds: Counter;
    /// Frames, lines, bodies or heads over their limit
    oversize: Counter;
    /// Backend requests without a valid push_secret
    unauthorized: Counter;
    /// Sibling pushes dropped for arriving after their deadline (the entry had answered)
    late_dropped: Counter;
    /// Socket.IO connections handed to the worker owning their session
    handed_off: Counter;
    /// Socket.IO connections adopted from a sibling
    adopted: Counter;
    /// Links to sibling workers
    links: Gauge;
    /// Pushes and queries waiting for sibling answers
    inflight: Gauge;
    /// Resident memory of the worker in KiB
    rss_kib: Gauge;
    /// Resident memory of the worker in bytes
    resident_memory_bytes: Gauge;
    /// Open file descriptors of the worker (connections, listeners, links, logs)
    open_fds: Gauge;
    /// When the worker started, in seconds since the Unix epoch
    start_time_seconds: PerWorker;
    /// 1 when the worker reaches the cluster's Redis (0 without a cluster, or while it is down)
    cluster_up: PerWorker;
    /// Messages to or from other hosts dropped (the bus queue was full, or Redis was down)
    cluster_dropped: Counter;
    /// TLS handshakes completed
    tls_handshakes: Counter;
    /// TLS connections refused (not TLS, a bad handshake, no client certificate, renegotiation, too slow)
    tls_refused: Counter;
    /// TLS handshakes (a ClientHello) refused on a port that does not speak TLS
    tls_on_plain: Counter;
    /// Socket.IO TLS connections relayed, decrypted, to the worker owning their session
    tls_relayed: Counter;
    /// Messages from logged-in clients (WebSocket messages, Socket.IO events other than login)
    upstream_messages: Counter;
    /// Client messages over max_upstream_rate (dropped, or their connection closed)
    upstream_limited: Counter;
    /// Events produced here (login, message, logout, online, offline)
    events: Counter;
    /// Event lines dropped for a subscriber: its queue over max_send_buffer, a sibling link full, or no subscriber left
    events_dropped: Counter;
    /// Text connections subscribed to events
    subscribers: Gauge;
    /// Events the webhook endpoint accepted (2xx)
    webhook_sent: Counter;
    /// Events dropped because the webhook queue (webhook_queue) was full
    webhook_dropped: Counter;
    /// Webhook POSTs that failed (no answer, or not 2xx) and were retried
    webhook_retries: Counter;
    /// Messages kept in the history of the uids the worker owns
    history_messages: Gauge;
    /// Bytes of the messages kept in the history (payloads and bookkeeping)
    history_bytes: Gauge;
    /// Kept messages dropped before their time to stay under history_max_bytes
    history_evicted: Counter;
    /// Reconnections that got every message they missed (recovered)
    recovered: Counter;
    /// Reconnections that asked for recovery and could not get it (recovered: false)
    recovery_failed: Counter;
    /// Whole-cluster online/offline events decided here (Redis said the uid's first or last connection in the cluster)
    cluster_presence: Counter;
    /// Of those, offline events of uids whose worker died without saying so (reaped after its alive key expired)
    cluster_reaped: Counter;
    /// Uids forgotten from the record of those that dropped within history_ttl (over 100,000 in a worker): a broadcast to everyone is not kept for them
    history_drops_forgotten: Counter;
}

impl Stat {
    /// One line for operators (the metric's `# HELP`).
    pub fn help(&self) -> &'static str {
        self.doc.trim()
    }
}

impl Stats {
    /// The figure called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values().find(|(s, _)| s.name == name).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_struct_agree() {
        let s = Stats {
            pushes: 7,
            adopted: 2,
            ..Stats::default()
        };
        assert_eq!(s.get("pushes"), Some(7));
        assert_eq!(s.get("adopted"), Some(2));
        assert_eq!(s.get("nope"), None);
        assert_eq!(s.values().count(), TABLE.len());
        let mut names: Vec<&str> = TABLE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a name is used twice");
        assert!(TABLE.iter().all(|s| !s.help().is_empty()));
        let headline: Vec<&str> = TABLE
            .iter()
            .filter(|s| s.headline)
            .map(|s| s.name)
            .collect();
        assert_eq!(
            headline,
            [
                "connections",
                "ws",
                "text",
                "http",
                "uids",
                "pushes",
                "delivered",
                "send_fail"
            ]
        );
    }
}
