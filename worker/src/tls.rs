//! TLS material and configurations: reading `tls_cert`, `tls_key` and `tls_client_ca` (done by
//! the master's loading, at `start` and on every `reload`), checking that they make a usable
//! server (the key matches the certificate), and building the rustls server configuration each
//! TLS port uses. No socket here: the per-connection state machine is [`crate::stream`], the
//! loop's glue `event_loop::tls`.
//!
//! Policy: TLS 1.3 and 1.2 with the ring provider's suites only (AEAD with ECDHE: AES-GCM and
//! ChaCha20-Poly1305; no CBC, no RSA key exchange), ALPN `http/1.1` on the ports that speak
//! HTTP, and, with `tls_client_ca`, a client certificate signed by that CA required on the
//! backends' ports (text, HTTP).

use crate::config::{Config, TlsPem};
use crate::conn::{Port, PortMap};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;
use thiserror::Error;

/// Most ciphertext a TLS connection holds for output (one record and change): what the socket
/// does not take beyond it waits, as plaintext frames shared by reference, in the connection's
/// output queue.
pub const BUFFER_LIMIT: usize = 16 * 1024 + 256;

/// TLS material that cannot make a server.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// The option naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{key}: {path}: {why}")]
    Pem {
        /// The option naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination (most often: the key does not match the certificate).
    #[error("tls_cert/tls_key: {0}")]
    Server(String),
}

/// Reads the files `cfg` names and checks they make a server; the contents then travel to
/// the workers in `cfg.tls_pem`. Without TLS ports, nothing is read.
pub fn load(cfg: &Config) -> Result<TlsPem, TlsError> {
    if cfg.tls.is_empty() {
        return Ok(TlsPem::default());
    }
    let read = |key: &'static str, path: &str| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            key,
            path: path.to_string(),
            source,
        })
    };
    let pem = TlsPem {
        cert: read("tls_cert", &cfg.tls_cert)?,
        key: read("tls_key", &cfg.tls_key)?,
        client_ca: if cfg.tls_client_ca.is_empty() {
            String::new()
        } else {
            read("tls_client_ca", &cfg.tls_client_ca)?
        },
    };
    // Build once: a mismatched key or a bad CA is found now, not in a worker.
    let names = Names {
        cert: &cfg.tls_cert,
        key: &cfg.tls_key,
        client_ca: &cfg.tls_client_ca,
    };
    server_config(&pem, &names, true, true)?;
    Ok(pem)
}

/// File names, for messages.
struct Names<'a> {
    /// `tls_cert`.
    cert: &'a str,
    /// `tls_key`.
    key: &'a str,
    /// `tls_client_ca`.
    client_ca: &'a str,
}

/// The crypto provider: ring, whose suites are all AEAD with forward secrecy.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One server configuration: with `http`, ALPN `http/1.1`; with `backend` and a client CA,
/// client certificates are required.
fn server_config(
    pem: &TlsPem,
    names: &Names<'_>,
    http: bool,
    backend: bool,
) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            key: "tls_cert",
            path: names.cert.into(),
            why: format!("not a PEM certificate chain ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: "tls_cert",
            path: names.cert.into(),
            why: "no CERTIFICATE in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| TlsError::Pem {
        key: "tls_key",
        path: names.key.into(),
        why: format!("no PEM private key (PKCS#8, RSA or EC) in it ({e})"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Server(e.to_string()))?;
    let builder = if backend && !pem.client_ca.is_empty() {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem.client_ca.as_bytes()) {
            let c = c.map_err(|e| TlsError::Pem {
                key: "tls_client_ca",
                path: names.client_ca.into(),
                why: format!("not a PEM certificate ({e})"),
            })?;
            roots.add(c).map_err(|e| TlsError::Pem {
                key: "tls_client_ca",
                path: names.client_ca.into(),
                why: format!("not a usable CA certificate ({e})"),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Pem {
                key: "tls_client_ca",
                path: names.client_ca.into(),
                why: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut sc = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Server(match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key in {} does not match the certificate in {}",
                names.key, names.cert
            ),
            other => other.to_string(),
        })
    })?;
    if http {
        sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(sc)
}

/// The server configuration of every port that speaks TLS, built once per worker.
#[derive(Default)]
pub struct Acceptors(PortMap<Option<Arc<ServerConfig>>>);

impl Acceptors {
    /// Builds them from the material the master sent.
    pub fn new(cfg: &Config) -> Result<Acceptors, TlsError> {
        let mut a = Acceptors::default();
        if cfg.tls.is_empty() {
            return Ok(a);
        }
        let names = Names {
            cert: &cfg.tls_cert,
            key: &cfg.tls_key,
            client_ca: &cfg.tls_client_ca,
        };
        for port in Port::ALL {
            if cfg.tls_on(config_name(port)) {
                let backend = matches!(port, Port::Text | Port::Http);
                let sc = server_config(&cfg.tls_pem, &names, port != Port::Text, backend)?;
                a.0[port] = Some(Arc::new(sc));
            }
        }
        Ok(a)
    }

    /// No port speaks TLS.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, c)| c.is_none())
    }

    /// The configuration of `port`, when it speaks TLS.
    pub fn get(&self, port: Port) -> Option<&Arc<ServerConfig>> {
        self.0[port].as_ref()
    }
}

/// The port's name in the `tls` option.
pub fn config_name(port: Port) -> &'static str {
    match port {
        Port::Ws => "ws",
        Port::Text => "text",
        Port::Http => "http",
        Port::Sio => "socketio",
    }
}
