//! Command-line options of the public modes, parsed by hand (`--name value` pairs).

use std::path::PathBuf;

/// The usage text printed by `--help` (kept in step with the `//!` header of main.rs).
pub const USAGE: &str = "\
herald-bench: load and benchmark tool for Herald (loopback only, bounded in time)

USAGE:
  herald-bench connect   --clients N [--procs P]
  herald-bench unicast   --clients N --conns K [--rate R] --pushes M
  herald-bench broadcast --clients N --count B [--spacing-ms S]
  herald-bench limit     --clients N --count B [--spacing-ms S] [--floor-procs F]
  herald-bench limit-unicast --clients N --conns K [--rate R] --pushes M
  herald-bench limit-connect --clients N [--floor-procs F]
  herald-bench limit-storm   --clients N --steady K --rate R --pushes M [--floor-procs F]
  herald-bench limit-idle    --clients N --seconds S [--floor-procs F] [--ping-interval T]
  herald-bench churn     --clients N --rate R --seconds S [--push-rate P]
  herald-bench cluster-unicast --clients N --conns K [--rate R] --pushes M
  herald-bench upstream  --clients N [--rate R] --pushes M
  herald-bench idle      --clients N --seconds S [--set ping_interval=0 ...]
  herald-bench storm     --clients N --steady K --rate R --pushes M
  herald-bench recover   --clients N --missed K
  herald-bench cluster-broadcast --clients N --count B [--spacing-ms S]

Each run prints exactly one JSON object on stdout; progress goes to stderr.

MODES:
  connect    open N WebSocket clients, log them in (uid u0..u{N-1}), hold them idle; report the
             connect rate and the server's RSS/PSS (master + workers) before, after, per client
  unicast    with N clients, push M lines {\"uid\":\"uX\",\"t\":NS} to random uids through K
             pipelined text-port connections, flat out or at R pushes/s; report pushes/s, ok/fail,
             deliveries, losses, latency p50/p99/p99.9/max (us), server CPU per push (us)
  broadcast  with N clients, B broadcasts of 100 bytes back to back (S=0) or S ms apart; report
             deliveries/s, per-broadcast completion p50/p99 (us), server CPU per delivery (us)
  limit      the same as broadcast against a trivial server (one write(2) per delivery of a
             pre-encoded frame, no WebSocket handshake): the ceiling
  limit-unicast  the same as unicast against that trivial server: each line is framed as it is
             and written to one client (one write(2) per push, no parsing, no login), and
             answered ok; the floor of a unicast push (its misrouted count is not reported)
  limit-connect  connect against the handshake floor: a trivial server that reads the upgrade
             request, answers 101 (Sec-WebSocket-Accept computed), reads the login frame and
             answers login success, nothing else; the connect rate, its memory and CPU per
             client, and the load tool's own CPU (client_cpu_connect_s)
  limit-storm  storm against the handshake floor: the dropping clients on its shared port,
             the K steady clients on a port of the first floor process, the pushes through
             its text port (each written to one steady client); the storm's figures
  limit-idle  idle against the handshake floor: each floor process writes a 2-byte ping
             frame (pre-encoded) to each of its sockets once every --ping-interval seconds
             (a slice of them each second) and reads and drops the pongs; idle's figures,
             plus pings_written and pongs_read (--ping-interval 0: a silent server's floor)
  (limit, limit-unicast, limit-connect, limit-storm, limit-idle: --floor-procs F runs
             the trivial server as F processes sharing the port with SO_REUSEPORT, each
             writing a broadcast to its own sockets, so that more than one process's 20,000
             open files fit: give F >= 6 for 100,000 clients; the text port is the first
             process's)
  cluster-unicast  two Herald nodes (--workers each) on a redis-server started for the run:
             the clients on node B, the pushes into node A; the unicast figures, with server
             CPU summed over both nodes and Redis, and Redis's own CPU per push apart
  upstream   N WebSocket clients send messages (to the next client's uid) that Herald turns into
             events for one backend subscribed on the text port, which answers each with a
             push; report messages/s, losses, latency client -> backend -> client, and server
             CPU per upstream message
  idle       open N clients, log them in, hold them idle; over S seconds report the server's
             CPU as a share of one core, the pings written and the CPU per ping, memory per
             client (RSS/PSS) and the kernel's TCP memory per client (/proc/net/sockstat)
  storm      N clients drop their connections at once and reconnect (each process keeping
             --inflight handshakes going) while K steady clients get R pushes/s (M in all, so
             M/R seconds: longer than the storm); report the time until all N are back, failed
             reconnects, the steady pushes' latency and losses, ListenOverflows/ListenDrops,
             and the CPU of the server and of the dropping clients' processes (the load tool
             itself) from the drop until all were back (storm_server_cpu_s, storm_client_cpu_s)
  recover    N WebSocket clients with a history (history_size=100 unless --set) hold their
             position (?envelope=1), all drop at once, K messages are pushed to each while away,
             and all reconnect at once with ?since=; report how many were recovered, the time
             to the last recovery answer, the missed messages received and the server's CPU
  cluster-broadcast  N clients spread over three Herald nodes (--workers each) on a
             redis-server started for the run, B broadcasts into node 0; the broadcast figures,
             with CPU summed over the nodes and Redis, and Redis's CPU per broadcast
  churn      keep about N clients connected while opening R new ones per second and closing R
             random ones per second for S seconds, pushing P/s to connected uids; report connects
             attempted/failed, disconnects, pushes ok/fail, losses (ok, the client stayed 1 s
             more, never received), server RSS/PSS at baseline, peak and 2 s after all left

OPTIONS:
  --clients N        WebSocket clients (default 2000)
  --procs P          client processes (default ceil(N/15000)+1)
  --conns K          unicast: text-port connections (default 4)
  --rate R           unicast: pushes per second (default: flat out);
                     churn: connects (and disconnects) per second (default 2000)
  --seconds S        churn, idle, limit-idle: duration in seconds (default 60)
  --ping-interval T  limit-idle: seconds between two pings to one client, 0 for none
                     (default 25, Herald's ping_interval)
  --push-rate P      churn: pushes per second (default 1000)
  --pushes M         unicast: pushes (default 20000)
  --steady K         storm: clients that stay connected and get the pushes (default 1000)
  --missed K         recover: messages pushed to each client while it is away (default 1)
  --query LINE       unicast: meanwhile, ask LINE (e.g. {\"cmd\":\"uids\"}) on its own text
                     connection every --query-every-ms (default 100); report answer times
  --window W         unicast flat out: unanswered lines per connection (default 256)
  --count B          broadcast/limit: broadcasts (default 30)
  --spacing-ms S     broadcast/limit: milliseconds between broadcasts (default 0)
  --herald PATH      server binary (default target/release/herald, else next to this binary)
  --workers W        Herald workers (default 1)
  --floor-procs F    limit modes: processes of the trivial server sharing its port (default 1)
  --json-out FILE    also append the JSON object as one line to FILE
  --seed S           seed of the random uid choice (default 1)
  --deadline S       global time limit in seconds; everything is killed after it (default 120)
  --inflight I       handshakes in progress per client process (default 128)
  --per-addr A       clients per source address 127.0.0.x at most (default 1000: the
                     kernel picks each connection's local port by probing the address's
                     ephemeral range, which costs more the fuller it is)
  --settle-ms T      wait at most T ms without progress for the last deliveries (default 2000)
  --hold-ms H        connect: hold the clients idle H ms before measuring memory (default 500)
  --server-wrap CMD  start Herald under CMD (split at spaces), e.g. \"valgrind --tool=callgrind\"
  --stop-grace-ms G  wait G ms after SIGTERM before killing Herald (default 3000)
  --set KEY=VALUE    a Herald setting for the run (repeatable), e.g. ping_interval=0
  --tls              the WebSocket port speaks TLS (tls = [\"ws\"], a certificate made with
                     openssl for the run) and the clients connect with wss:// (rustls)
  -h, --help         this text
";

/// Parsed options.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The mode: `connect`, `unicast`, `broadcast`, `limit`, `limit-storm`, … (see `USAGE`).
    pub mode: String,
    /// WebSocket clients.
    pub clients: usize,
    /// Client processes, when given.
    pub procs: Option<usize>,
    /// Text connections (unicast).
    pub conns: usize,
    /// Pushes per second, flat out when `None`.
    pub rate: Option<f64>,
    /// Pushes (unicast).
    pub pushes: u64,
    /// Unanswered lines per connection, flat out.
    pub window: usize,
    /// Broadcasts.
    pub count: usize,
    /// Milliseconds between broadcasts.
    pub spacing_ms: u64,
    /// Herald binary, when given.
    pub herald: Option<PathBuf>,
    /// Herald workers.
    pub workers: usize,
    /// Processes of the floor (`limit`) server sharing its port.
    pub floor_procs: usize,
    /// File to append the result line to.
    pub json_out: Option<PathBuf>,
    /// Random seed.
    pub seed: u64,
    /// Global deadline in seconds.
    pub deadline_s: f64,
    /// Handshakes in progress per client process.
    pub inflight: usize,
    /// Clients per source address at most.
    pub per_addr: usize,
    /// Settle time for the last deliveries.
    pub settle_ms: u64,
    /// `connect`: idle time before the memory is measured.
    pub hold_ms: u64,
    /// `churn`: duration in seconds.
    pub seconds: f64,
    /// `churn`: pushes per second.
    pub push_rate: f64,
    /// A command (split at spaces) that Herald is started under, e.g. valgrind.
    pub server_wrap: Vec<String>,
    /// Milliseconds between SIGTERM and SIGKILL when Herald is stopped.
    pub stop_grace_ms: u64,
    /// `storm`: clients that stay connected and receive the pushes.
    pub steady: usize,
    /// `recover`: messages pushed to each client while it is away.
    pub missed: usize,
    /// `unicast`: a question asked over and over while the pushes run.
    pub query: Option<String>,
    /// `unicast`: milliseconds between two questions.
    pub query_every_ms: u64,
    /// Herald settings (`--set KEY=VALUE`) for the run, such as turning pings off.
    pub sets: Vec<String>,
    /// `--tls`: clients over `wss://` to a WebSocket port speaking TLS.
    pub tls: bool,
    /// `limit-idle`: seconds between two pings the floor writes to one client (0: none).
    pub ping_interval: f64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mode: String::new(),
            clients: 2000,
            procs: None,
            conns: 4,
            rate: None,
            pushes: 20_000,
            window: 256,
            count: 30,
            spacing_ms: 0,
            herald: None,
            workers: 1,
            floor_procs: 1,
            json_out: None,
            seed: 1,
            deadline_s: 120.0,
            inflight: 128,
            per_addr: 1_000,
            settle_ms: 2000,
            hold_ms: 500,
            seconds: 60.0,
            push_rate: 1000.0,
            server_wrap: Vec::new(),
            stop_grace_ms: 3000,
            sets: Vec::new(),
            query: None,
            query_every_ms: 100,
            steady: 1000,
            missed: 1,
            tls: false,
            ping_interval: 25.0,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Print the usage.
    Help,
    /// Run a mode.
    Run(Box<Opts>),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" || a == "help" {
            return Ok(Parsed::Help);
        }
        if a == "--tls" {
            o.tls = true;
            continue;
        }
        if !a.starts_with("--") {
            if !o.mode.is_empty() {
                return Err(format!("unexpected argument {a}"));
            }
            o.mode = a.clone();
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{a} needs a value"))?
            .as_str();
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}");
        match a.as_str() {
            "--clients" => o.clients = v.parse().map_err(|e| bad(&e))?,
            "--procs" => o.procs = Some(v.parse().map_err(|e| bad(&e))?),
            "--conns" => o.conns = v.parse().map_err(|e| bad(&e))?,
            "--rate" => o.rate = Some(v.parse().map_err(|e| bad(&e))?),
            "--pushes" => o.pushes = v.parse().map_err(|e| bad(&e))?,
            "--window" => o.window = v.parse().map_err(|e| bad(&e))?,
            "--count" => o.count = v.parse().map_err(|e| bad(&e))?,
            "--spacing-ms" => o.spacing_ms = v.parse().map_err(|e| bad(&e))?,
            "--herald" => o.herald = Some(PathBuf::from(v)),
            "--workers" => o.workers = v.parse().map_err(|e| bad(&e))?,
            "--floor-procs" => o.floor_procs = v.parse().map_err(|e| bad(&e))?,
            "--json-out" => o.json_out = Some(PathBuf::from(v)),
            "--seed" => o.seed = v.parse().map_err(|e| bad(&e))?,
            "--deadline" => o.deadline_s = v.parse().map_err(|e| bad(&e))?,
            "--inflight" => o.inflight = v.parse().map_err(|e| bad(&e))?,
            "--per-addr" => o.per_addr = v.parse().map_err(|e| bad(&e))?,
            "--settle-ms" => o.settle_ms = v.parse().map_err(|e| bad(&e))?,
            "--hold-ms" => o.hold_ms = v.parse().map_err(|e| bad(&e))?,
            "--seconds" => o.seconds = v.parse().map_err(|e| bad(&e))?,
            "--push-rate" => o.push_rate = v.parse().map_err(|e| bad(&e))?,
            "--server-wrap" => o.server_wrap = v.split_whitespace().map(String::from).collect(),
            "--stop-grace-ms" => o.stop_grace_ms = v.parse().map_err(|e| bad(&e))?,
            "--steady" => o.steady = v.parse().map_err(|e| bad(&e))?,
            "--missed" => o.missed = v.parse().map_err(|e| bad(&e))?,
            "--query" => o.query = Some(v.to_string()),
            "--ping-interval" => o.ping_interval = v.parse().map_err(|e| bad(&e))?,
            "--query-every-ms" => o.query_every_ms = v.parse().map_err(|e| bad(&e))?,
            "--set" if v.contains('=') => o.sets.push(v.to_string()),
            "--set" => return Err(format!("--set {v}: expected KEY=VALUE")),
            _ => return Err(format!("unknown option {a} (see --help)")),
        }
    }
    match o.mode.as_str() {
        "connect" | "unicast" | "broadcast" | "limit" | "limit-unicast" | "churn"
        | "cluster-unicast" | "upstream" | "idle" | "storm" | "cluster-broadcast" | "recover"
        | "limit-connect" | "limit-storm" | "limit-idle" => {}
        "" => return Err("no mode given (see --help)".into()),
        m => return Err(format!("unknown mode {m} (see --help)")),
    }
    if o.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if o.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    if o.conns == 0 || o.window == 0 || o.per_addr == 0 || o.workers == 0 {
        return Err("--conns, --window, --per-addr and --workers must be at least 1".into());
    }
    if !(1..=64).contains(&o.floor_procs) {
        return Err("--floor-procs must be in 1..=64".into());
    }
    if o.clients.div_ceil(o.per_addr) > 254 {
        return Err("too many clients for 254 source addresses at --per-addr".into());
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.push_rate.is_finite() && o.push_rate >= 0.0)
    {
        return Err("--seconds must be positive and --push-rate not negative".into());
    }
    if !(o.ping_interval.is_finite() && (0.0..=3600.0).contains(&o.ping_interval)) {
        return Err("--ping-interval must be in [0, 3600] seconds".into());
    }
    if matches!(o.mode.as_str(), "churn" | "idle" | "limit-idle") && o.seconds + 30.0 > o.deadline_s
    {
        return Err(format!(
            "{}: --deadline {} leaves too little time for --seconds {} (give at least 30 s more)",
            o.mode, o.deadline_s, o.seconds
        ));
    }
    if o.deadline_s.is_nan() || o.deadline_s <= 0.0 || o.deadline_s > 3600.0 {
        return Err("--deadline must be in (0, 3600] seconds".into());
    }
    Ok(Parsed::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Parsed, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_a_unicast_line() {
        let Ok(Parsed::Run(o)) = p("unicast --clients 10 --conns 2 --rate 500 --pushes 7") else {
            panic!("not parsed");
        };
        assert_eq!(o.mode, "unicast");
        assert_eq!((o.clients, o.conns, o.pushes), (10, 2, 7));
        assert_eq!(o.rate, Some(500.0));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(p("").is_err());
        assert!(p("dance").is_err());
        assert!(p("connect --clients").is_err());
        assert!(p("connect --clients x").is_err());
        assert!(p("connect --bogus 1").is_err());
        assert!(p("unicast --rate 0").is_err());
        assert!(matches!(p("connect --help"), Ok(Parsed::Help)));
        assert!(p("churn --seconds 0").is_err());
        assert!(p("churn --seconds 100").is_err());
        assert!(p("churn --push-rate -1").is_err());
        assert!(p("limit --floor-procs 0").is_err());
        assert!(p("limit --floor-procs 65").is_err());
    }

    #[test]
    fn parses_a_churn_line() {
        let Ok(Parsed::Run(o)) =
            p("churn --clients 50 --rate 300 --seconds 5 --push-rate 40 --server-wrap valgrind")
        else {
            panic!("not parsed");
        };
        assert_eq!(o.mode, "churn");
        assert_eq!(
            (o.clients, o.rate, o.seconds, o.push_rate),
            (50, Some(300.0), 5.0, 40.0)
        );
        assert_eq!(o.server_wrap, vec!["valgrind"]);
    }

    #[test]
    fn parses_the_floor_modes() {
        let Ok(Parsed::Run(o)) = p("limit-storm --clients 200 --floor-procs 3") else {
            panic!("not parsed");
        };
        assert_eq!(
            (o.mode.as_str(), o.clients, o.floor_procs),
            ("limit-storm", 200, 3)
        );
        let Ok(Parsed::Run(o)) = p("limit-connect") else {
            panic!("not parsed");
        };
        assert_eq!(o.floor_procs, 1);
        let Ok(Parsed::Run(o)) = p("limit-idle --floor-procs 7 --ping-interval 0") else {
            panic!("not parsed");
        };
        assert_eq!((o.floor_procs, o.ping_interval), (7, 0.0));
        let Ok(Parsed::Run(o)) = p("limit-idle") else {
            panic!("not parsed");
        };
        assert_eq!(o.ping_interval, 25.0);
        assert!(p("limit-idle --ping-interval -1").is_err());
        assert!(p("limit-idle --seconds 100").is_err());
    }
}
