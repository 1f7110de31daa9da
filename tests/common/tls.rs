//! TLS helpers for the end-to-end tests: a test CA and the certificates it signs (made with
//! `openssl` in a temporary directory), rustls clients (raw, HTTPS, WebSocket over TLS with
//! tungstenite), and `node` clients trusting the CA.

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub fn openssl_ready() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    require("openssl (apt install openssl)", ok)
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        show(&out.stderr)
    );
}

/// A test CA and what it signs, in a temporary directory.
pub struct Pki {
    /// Where the files are.
    pub dir: TempDir,
}

impl Pki {
    /// A CA, a server certificate `srv` (EC P-256, for 127.0.0.1 and localhost) and a client
    /// certificate `client`.
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let d = dir.path.as_path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=herald-test-ca",
            ],
        );
        let pki = Pki { dir };
        pki.issue("srv", "ec", "serverAuth");
        pki.issue("client", "ec", "clientAuth");
        pki
    }

    /// `NAME.pem` and `NAME.key` signed by the CA; `kind` `ec` or `rsa`.
    pub fn issue(&self, name: &str, kind: &str, usage: &str) {
        let d = self.dir.path.as_path();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut args = vec!["req", "-newkey"];
        if kind == "ec" {
            args.extend(["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        } else {
            args.push("rsa:2048");
        }
        let subj = format!("/CN={name}");
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(d, &args);
        let ext = format!("{name}.ext");
        std::fs::write(
            d.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
            ),
        )
        .expect("write ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A builder serving `ports` with TLS, with the `srv` certificate.
    pub fn server(&self, ports: &[&str]) -> Builder {
        let list: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
        Server::builder()
            .set(&format!("tls=[{}]", list.join(",")))
            .set(&format!("tls_cert=\"{}\"", self.p("srv.pem")))
            .set(&format!("tls_key=\"{}\"", self.p("srv.key")))
    }

    /// A rustls client trusting the CA, with the client certificate when `client_cert`.
    pub fn client_config(&self, client_cert: bool, alpn: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca.pem") {
            roots.add(c.expect("ca cert")).expect("add ca");
        }
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let mut cfg = if client_cert {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(self.path("client.pem"))
                    .expect("client.pem")
                    .map(|c| c.expect("client cert"))
                    .collect();
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).expect("client.key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        } else {
            b.with_no_client_auth()
        };
        if alpn {
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Arc::new(cfg)
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `port` and finishes the handshake (as far as the client sees it).
pub fn tls_connect(port: u16, cfg: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    tls_over(TcpStream::connect(("127.0.0.1", port))?, cfg)
}

/// Finishes a TLS handshake over `tcp`, already connected.
pub fn tls_over(tcp: TcpStream, cfg: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    tcp.set_read_timeout(Some(REPLY))?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Writes `line` and reads one reply line.
pub fn tls_line(s: &mut TlsStream, line: &str) -> std::io::Result<String> {
    s.write_all(line.as_bytes())?;
    s.flush()?;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\n") {
        match s.read(&mut b)? {
            0 => break,
            _ => got.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// One HTTP request over TLS with `Connection: close`; the whole response.
pub fn https(port: u16, cfg: &Arc<ClientConfig>, req: &[u8]) -> String {
    let mut s = tls_connect(port, cfg).expect("https connect");
    s.write_all(req).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket over TLS: rustls below, tungstenite above.
pub type Wss = tungstenite::WebSocket<TlsStream>;

pub fn wss_login(port: u16, cfg: &Arc<ClientConfig>, uid: &str) -> Wss {
    wss_login_over(tls_connect(port, cfg).expect("wss connect"), port, uid)
}

/// [`wss_login`] over a TLS stream already open to `port`.
pub fn wss_login_over(s: TlsStream, port: u16, uid: &str) -> Wss {
    let (mut ws, _) =
        tungstenite::client::client(format!("wss://127.0.0.1:{port}/"), s).expect("wss upgrade");
    ws.send(tungstenite::Message::text(uid)).expect("send uid");
    assert_eq!(
        wss_text(&mut ws),
        format!("login success, your uid is {uid}")
    );
    ws
}

pub fn wss_text(ws: &mut Wss) -> String {
    loop {
        match ws.read().expect("wss read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sum of a status counter over the workers, from `GET /api/stats` (plain HTTP port).
pub fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["totals"][key]
        .as_u64()
        .or_else(|| {
            v["workers"]
                .as_array()
                .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        })
        .unwrap_or(0)
}

/// A counter read over the HTTP port speaking (mutual) TLS.
pub fn stat_via(srv: &Server, cfg: &Arc<ClientConfig>, key: &str) -> u64 {
    let r = https(
        srv.http,
        cfg,
        b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["totals"][key].as_u64().unwrap_or(0)
}

/// The leaf certificate a new connection to `port` is shown.
pub fn leaf(port: u16, cfg: &Arc<ClientConfig>) -> Vec<u8> {
    try_leaf(port, cfg).expect("connect")
}

/// [`leaf`], or the error of a connection that failed (one reset while a reload closes the
/// old worker's listener, for a test that retries).
pub fn try_leaf(port: u16, cfg: &Arc<ClientConfig>) -> std::io::Result<Vec<u8>> {
    let s = tls_connect(port, cfg)?;
    Ok(s.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default())
}

pub fn der_of(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("a cert")
        .expect("cert")
        .as_ref()
        .to_vec()
}

/// A `node` process running one of scripts/node's clients, and the lines it prints.
pub struct NodeProc {
    /// The process.
    child: Child,
    /// Its stdout, a line at a time.
    lines: mpsc::Receiver<String>,
}

impl NodeProc {
    pub fn spawn(args: &[&str], ca: &Path) -> NodeProc {
        let mut child = Command::new("node")
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let out = child.stdout.take().expect("stdout");
        let rx = lines_of(out);
        NodeProc { child, lines: rx }
    }

    /// Waits until a line starting with each of `words` was seen, in any order.
    pub fn wait_all(&self, words: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut left: Vec<&str> = words.to_vec();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(l) => left.retain(|w| !l.starts_with(w)),
                Err(_) => panic!("node: no {left:?} line within {limit:?}"),
            }
        }
    }

    /// Waits for a line starting with `word`.
    pub fn wait_for(&self, word: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(word) => return l,
                Ok(_) => {}
                Err(_) => panic!("node: no `{word}` line within {limit:?}"),
            }
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn node_ready(package: &str) -> bool {
    require("node (apt install nodejs)", have_program("node"))
        && require(
            "scripts/node/node_modules (npm ci in scripts/node)",
            workspace_root()
                .join(format!("scripts/node/node_modules/{package}/package.json"))
                .exists(),
        )
}

/// A form POST to `/` with `body`, kept alive.
pub fn post(body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of an HTTP response (after the head).
pub fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}
