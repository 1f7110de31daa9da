//! Building the configuration from its sources, weakest first: `Config::default()`, the TOML
//! file (`-c`), each `--set KEY=VALUE`, then the dedicated flags (`--ws`, `--workers`, …).
//! Unknown keys are errors (`Config` denies them), so a typo is never silently ignored.

use herald_ipc::{Config, ConfigError};
use log::LevelFilter;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration that could not be built.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a wrong key or type.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, as the TOML parser says it.
        message: String,
    },
    /// A `--set` is not `KEY=VALUE`.
    #[error("--set {arg}: expected KEY=VALUE")]
    SetSyntax {
        /// The argument.
        arg: String,
    },
    /// A `--set` names an unknown key or gives a wrong type.
    #[error("--set: {0}")]
    Set(String),
    /// The merged configuration is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The TLS files (`tls_cert`, `tls_key`, `tls_client_ca`) cannot make a server.
    #[error(transparent)]
    Tls(#[from] herald_worker::tls::TlsError),
    /// `log_level` names no level.
    #[error("log_level: `{0}` is not one of off, error, warn, info, debug, trace")]
    LogLevel(String),
}

/// The dedicated command-line flags: the strongest source.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--ws ADDR`.
    pub ws: Option<String>,
    /// `--text ADDR`.
    pub text: Option<String>,
    /// `--http ADDR`.
    pub http: Option<String>,
    /// `--socketio ADDR`.
    pub socketio: Option<String>,
    /// `--workers N`.
    pub workers: Option<usize>,
    /// `--pid-file PATH`.
    pub pid_file: Option<String>,
    /// `--log-level L`.
    pub log_level: Option<String>,
}

/// Everything the configuration is built from; kept whole so a reload can build it again.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `-c FILE`, re-read on every reload.
    pub file: Option<PathBuf>,
    /// `--set KEY=VALUE`, in order (a later one wins).
    pub sets: Vec<String>,
    /// The dedicated flags.
    pub flags: Flags,
}

/// A `--set` value: a TOML value if it parses as one (`4`, `2.5`, `true`, `"x"`), else the
/// text itself as a string (`127.0.0.1:1234`, `off`).
fn set_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

/// Parses a level name.
pub fn parse_level(text: &str) -> Result<LevelFilter, LoadError> {
    text.parse::<LevelFilter>()
        .map_err(|_| LoadError::LogLevel(text.into()))
}

fn read_table(path: &Path) -> Result<toml::Table, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let table = text.parse::<toml::Table>().map_err(|e| LoadError::File {
        path: path.display().to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    // Deserialise the file alone once, so a wrong key is blamed on the file.
    toml::Value::Table(table.clone())
        .try_into::<Config>()
        .map_err(|e| LoadError::File {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
    Ok(table)
}

/// Builds and validates the configuration.
pub fn load(s: &Sources) -> Result<Config, LoadError> {
    load_noting(s).map(|(c, _)| c)
}

/// [`load`], and the keys where a `--set` or a flag overrides a different value of the file
/// (worded for the log): a reload keeps the start command's flags, and says so when an edited
/// file loses to them.
pub fn load_noting(s: &Sources) -> Result<(Config, Vec<String>), LoadError> {
    let mut table = match &s.file {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    let file = table.clone();
    let mut notes = Vec::new();
    let mut note = |key: &str, given: &str, how: &str| {
        if let Some(v) = file.get(key) {
            let in_file = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if in_file != given.trim_matches('"') {
                notes.push(format!(
                    "{how} {key}={given} overrides {key} = {v} of the configuration file"
                ));
            }
        }
    };
    for arg in &s.sets {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(LoadError::SetSyntax { arg: arg.clone() });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(LoadError::SetSyntax { arg: arg.clone() });
        }
        note(key, value.trim(), "--set");
        table.insert(key.to_string(), set_value(value.trim()));
    }
    let mut config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| LoadError::Set(e.to_string().trim_end().to_string()))?;
    let f = &s.flags;
    for (key, given) in [
        ("ws", f.ws.clone()),
        ("text", f.text.clone()),
        ("http", f.http.clone()),
        ("socketio", f.socketio.clone()),
        ("workers", f.workers.map(|w| w.to_string())),
        ("pid_file", f.pid_file.clone()),
        ("log_level", f.log_level.clone()),
    ] {
        if let Some(g) = given {
            note(key, &g, "the flag");
        }
    }
    if let Some(v) = &f.ws {
        config.ws = v.clone();
    }
    if let Some(v) = &f.text {
        config.text = v.clone();
    }
    if let Some(v) = &f.http {
        config.http = v.clone();
    }
    if let Some(v) = &f.socketio {
        config.socketio = v.clone();
    }
    if let Some(v) = f.workers {
        config.workers = v;
    }
    if let Some(v) = &f.pid_file {
        config.pid_file = v.clone();
    }
    if let Some(v) = &f.log_level {
        config.log_level = v.clone();
    }
    config.validate()?;
    parse_level(&config.log_level)?;
    Ok((config, notes))
}

/// Reads the TLS files `c` names into `c.tls_pem` (whatever the sources said of it), and checks
/// that they make a server. Done by `start` and by every reload, not by the commands that
/// only find the master (they need not read a private key).
pub fn load_tls(c: &mut Config) -> Result<(), LoadError> {
    c.tls_pem = herald_worker::tls::load(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_over_a_different_file_value_is_noted() {
        let file = temp_file("notes.toml", "drain_timeout = 20.0\nworkers = 2\n");
        let s = Sources {
            file: Some(file),
            sets: vec!["drain_timeout=7".into(), "group_ttl=5".into()],
            flags: Flags {
                workers: Some(2),
                ..Flags::default()
            },
        };
        let (c, notes) = load_noting(&s).unwrap();
        assert_eq!(c.drain_timeout, 7.0);
        assert_eq!(
            notes,
            ["--set drain_timeout=7 overrides drain_timeout = 20.0 of the configuration file"]
        );
    }

    fn sets(v: &[&str]) -> Sources {
        Sources {
            sets: v.iter().map(|s| s.to_string()).collect(),
            ..Sources::default()
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_alone() {
        assert_eq!(load(&Sources::default()).unwrap(), Config::default());
    }

    #[test]
    fn set_values_are_typed_or_strings() {
        let c = load(&sets(&[
            "workers=3",
            "drain_timeout=2",
            "stop_timeout=0.5",
            "client_relay=true",
            "ws=127.0.0.1:9000",
            "http=off",
            "log_file=\"/tmp/x y.log\"",
        ]))
        .unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.drain_timeout, 2.0);
        assert_eq!(c.stop_timeout, 0.5);
        assert!(c.client_relay);
        assert_eq!(c.ws, "127.0.0.1:9000");
        assert_eq!(c.http, "off");
        assert_eq!(c.log_file, "/tmp/x y.log");
    }

    #[test]
    fn precedence_file_then_set_then_flags() {
        let file = temp_file(
            "p.toml",
            "workers = 2\nws = \"127.0.0.1:1111\"\ntext = \"127.0.0.1:2222\"\nmax_line = 4096\n",
        );
        let s = Sources {
            file: Some(file),
            sets: vec!["workers=5".into(), "text=127.0.0.1:3333".into()],
            flags: Flags {
                text: Some("127.0.0.1:4444".into()),
                ..Flags::default()
            },
        };
        let c = load(&s).unwrap();
        assert_eq!(c.ws, "127.0.0.1:1111"); // file
        assert_eq!(c.max_line, 4096); // file
        assert_eq!(c.workers, 5); // --set beats the file
        assert_eq!(c.text, "127.0.0.1:4444"); // a flag beats --set
        assert_eq!(c.http, Config::default().http); // default
    }

    /// The commented example names every key with its default, and nothing else.
    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/herald.toml.example");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let table: toml::Table = uncommented.parse().unwrap();
        let config: Config = toml::Value::Table(table.clone()).try_into().unwrap();
        assert_eq!(config, Config::default());
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let missing: Vec<&String> = defaults
            .keys()
            .filter(|k| !table.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "example lacks {missing:?}");
    }

    #[test]
    fn typos_and_bad_values_are_clear_errors() {
        let e = load(&sets(&["wokers=3"])).unwrap_err().to_string();
        assert!(e.contains("unknown field `wokers`"), "{e}");
        let e = load(&sets(&["workers"])).unwrap_err().to_string();
        assert_eq!(e, "--set workers: expected KEY=VALUE");
        let e = load(&sets(&["workers=many"])).unwrap_err().to_string();
        assert!(e.starts_with("--set: "), "{e}");
        let e = load(&sets(&["ws=nowhere"])).unwrap_err().to_string();
        assert!(e.contains("ws"), "{e}");
        let e = load(&sets(&["log_level=loud"])).unwrap_err().to_string();
        assert!(e.contains("log_level"), "{e}");
        let file = temp_file("bad.toml", "workers = 2\nbogus = 1\n");
        let e = load(&Sources {
            file: Some(file.clone()),
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(&file.display().to_string()), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = load(&Sources {
            file: Some(PathBuf::from("/nonexistent/herald.toml")),
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("cannot read /nonexistent/herald.toml"), "{e}");
    }
}
