//! `herald`: the command line. It parses arguments, builds the configuration, and either runs
//! the master (`start`), talks to a running master through its pid file and signals (`stop`,
//! `restart`, `reload`, `status`, `connections`), or — as the hidden `worker` subcommand the
//! master execs — runs one worker on the control channel it inherited.
#![deny(missing_docs, rust_2018_idioms, unused_imports)]

mod commands;
mod config;
mod logger;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Real-time push server: WebSocket clients, text-line and HTTP push for backends, one master
/// supervising N worker processes that share the ports with SO_REUSEPORT.
#[derive(Debug, Parser)]
#[command(name = "herald", version, propagate_version = true)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Start the master and its workers (in the foreground unless -d).
    ///
    /// The configuration is built from the defaults, then the file given with -c, then every
    /// --set KEY=VALUE, then the dedicated flags. Fails at once if a port is taken or another
    /// master holds the pid file.
    Start(StartArgs),
    /// Stop a running master and every worker, and wait until all are gone.
    ///
    /// Sends TERM (workers close everything now), or QUIT with -g (workers stop accepting and
    /// serve their connections until they end or drain_timeout passes).
    Stop(StopArgs),
    /// Stop (if running), then start again with the same arguments.
    Restart(RestartArgs),
    /// Replace every worker, one at a time, with a freshly started one.
    ///
    /// Sends USR1 (the old worker stops once its successor listens) or, with -g, USR2 (the old
    /// worker stops accepting and drains its connections). The configuration file is re-read;
    /// an invalid one is logged and the running configuration kept.
    Reload(ReloadArgs),
    /// Print the master's status report: uptime, restarts and one row per worker.
    Status(StatusArgs),
    /// List every connection of every worker.
    Connections(Locate),
    /// Run one worker (started by the master; not for operators).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// How a command finds the master: the pid file, named by the configuration or directly.
#[derive(Debug, Clone, Args)]
struct Locate {
    /// TOML configuration file (see scripts/herald.toml.example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Pid file of the master [default: herald.pid, or pid_file in the configuration].
    #[arg(long, value_name = "PATH")]
    pid_file: Option<String>,
}

/// `herald start`.
#[derive(Debug, Clone, Args)]
struct StartArgs {
    /// Where the running server's pid file is.
    #[command(flatten)]
    locate: Locate,
    /// Run as a daemon: detach, write output to log_file, return once every worker listens.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// WebSocket listen address (HOST:PORT, or off).
    #[arg(long, value_name = "ADDR")]
    ws: Option<String>,
    /// Text-protocol listen address for backends (HOST:PORT, or off).
    #[arg(long, value_name = "ADDR")]
    text: Option<String>,
    /// HTTP push API listen address (HOST:PORT, or off).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Socket.IO listen address for socket.io clients, v2 and v4 (HOST:PORT, or off).
    #[arg(long, value_name = "ADDR")]
    socketio: Option<String>,
    /// Number of worker processes (0: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, value_name = "L")]
    log_level: Option<String>,
    /// Set any configuration key (repeatable), e.g. --set drain_timeout=10 --set http=off.
    /// VALUE is read as TOML (number, boolean, "string"), else taken as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// `herald stop`.
#[derive(Debug, Clone, Args)]
struct StopArgs {
    /// Where the running server's pid file is.
    #[command(flatten)]
    locate: Locate,
    /// Graceful: let workers finish their connections (up to drain_timeout).
    #[arg(short = 'g', long)]
    graceful: bool,
}

/// `herald restart`.
#[derive(Debug, Clone, Args)]
struct RestartArgs {
    /// The start options, for the new server.
    #[command(flatten)]
    start: StartArgs,
    /// Stop gracefully before starting again.
    #[arg(short = 'g', long)]
    graceful: bool,
}

/// `herald reload`.
#[derive(Debug, Clone, Args)]
struct ReloadArgs {
    /// Where the running server's pid file is.
    #[command(flatten)]
    locate: Locate,
    /// Graceful: each old worker drains its connections instead of closing them.
    #[arg(short = 'g', long)]
    graceful: bool,
}

/// `herald status`.
#[derive(Debug, Clone, Args)]
struct StatusArgs {
    /// Where the running server's pid file is.
    #[command(flatten)]
    locate: Locate,
    /// Refresh every second until Ctrl-C.
    #[arg(short = 'd', long = "watch")]
    watch: bool,
}

/// `herald worker` (hidden): what the master execs.
#[derive(Debug, Clone, Args)]
struct WorkerArgs {
    /// Stable worker id (0..workers).
    #[arg(long)]
    id: u32,
    /// The master's pid: names this instance's IPC sockets.
    #[arg(long)]
    instance: u32,
    /// The inherited control socket.
    #[arg(long, value_name = "FD")]
    control_fd: i32,
    /// Log level until the configuration arrives.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log line format (`text` or `json`), as the master's configuration says.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tag = match &cli.command {
        Command::Worker(w) => format!("worker {}", w.id),
        _ => "master".to_string(),
    };
    logger::init(tag);
    commands::dispatch(cli.command)
}
