//! `--tls`: the server's WebSocket port speaks TLS (`tls = ["ws"]`) with a certificate made for
//! the run by `openssl` (a CA and a P-256 leaf for 127.0.0.1, in a temporary directory), and
//! the clients speak `wss://` through rustls, trusting that CA. [`Sock`] is a client's socket,
//! plain or TLS, read and written as plaintext without blocking.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The run's certificate directory (one per bench process).
pub fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("herald-bench-tls-{}", std::process::id()))
}

/// Makes the CA and the server's certificate (once per run); returns the `--set`s that turn
/// TLS on for the WebSocket port.
pub fn server_sets() -> Result<Vec<String>, String> {
    let d = dir();
    if !d.join("srv.pem").exists() {
        std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .output()
                .map_err(|e| format!("--tls needs openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bench-ca",
        ]);
        run(&ca)?;
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend([
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&req)?;
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .map_err(|e| format!("write san.ext: {e}"))?;
        run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
    }
    Ok(vec![
        "tls=[\"ws\"]".into(),
        format!("tls_cert=\"{}\"", d.join("srv.pem").display()),
        format!("tls_key=\"{}\"", d.join("srv.key").display()),
    ])
}

/// Removes the run's certificate directory.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(dir());
}

/// A client configuration trusting the CA in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A client's socket.
pub enum Sock {
    /// Plain TCP.
    Plain(TcpStream),
    /// TCP with a TLS session.
    Tls(TcpStream, Box<ClientConnection>),
}

impl Sock {
    /// `tcp`, with a TLS session when `cfg` is given.
    pub fn new(tcp: TcpStream, cfg: Option<&Arc<ClientConfig>>) -> io::Result<Sock> {
        match cfg {
            None => Ok(Sock::Plain(tcp)),
            Some(cfg) => {
                let name = ServerName::try_from("127.0.0.1").map_err(io::Error::other)?;
                let c = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
                Ok(Sock::Tls(tcp, Box::new(c)))
            }
        }
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) | Sock::Tls(s, _) => s,
        }
    }

    /// Whether a short read says nothing of the socket (TLS gives a record at a time).
    pub fn is_tls(&self) -> bool {
        matches!(self, Sock::Tls(..))
    }

    /// Writes the records the session holds, as far as the socket takes them.
    pub fn push(&mut self) -> io::Result<()> {
        if let Sock::Tls(s, c) = self {
            while c.wants_write() {
                match c.write_tls(s) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (s, c) = match self {
            Sock::Plain(s) => return s.read(buf),
            Sock::Tls(s, c) => (s, c),
        };
        loop {
            match c.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match c.read_tls(s) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            c.process_new_packets().map_err(io::Error::other)?;
            while c.wants_write() {
                match c.write_tls(s) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(buf),
            Sock::Tls(..) => {
                let n = match self {
                    Sock::Tls(_, c) => c.writer().write(buf)?,
                    Sock::Plain(_) => 0,
                };
                self.push()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl Source for Sock {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Sock::Plain(s) | Sock::Tls(s, _) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Sock::Plain(s) | Sock::Tls(s, _) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Sock::Plain(s) | Sock::Tls(s, _) => s.deregister(r),
        }
    }
}
