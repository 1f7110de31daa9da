//! The TLS stream against a real rustls client over loopback: an idle connection holds no
//! buffer, and one whose client does not read holds a bounded amount.

use super::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig};
use std::sync::Arc;

/// A certificate and key made by `openssl` for this test; `None` (skip) without openssl,
/// except under CI.
fn cert() -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let dir = std::env::temp_dir().join(format!("herald-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem"])
        .args(["-out", "c.pem", "-days", "1", "-subj", "/CN=localhost"])
        .current_dir(&dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if !made {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is missing under CI"
        );
        eprintln!("SKIP: openssl is missing (apt install openssl)");
        return None;
    }
    let certs = CertificateDer::pem_file_iter(dir.join("c.pem"))
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("k.pem")).ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Some((certs, key))
}

/// Trusts any certificate: this test is about the server's buffers, not about trust.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads from `s` until `want` bytes came, retrying on `WouldBlock` (a few seconds at most).
fn read_some(s: &mut Stream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..5000 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = s.flush();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("server read: {e}"),
        }
        if got.len() >= want {
            break;
        }
    }
    got
}

#[test]
fn an_idle_tls_stream_holds_no_buffers_and_a_full_one_is_bounded() {
    let Some((certs, key)) = cert() else {
        return;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sc = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .expect("server config");
    let cc = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth()
        })
        .map(Arc::new)
        .expect("client config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The client: a blocking rustls stream in a thread. It says hello, reads one answer,
    // then reads nothing more until told.
    let client = std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(cc, name).expect("client");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(b"hello").expect("client write");
        let mut answer = [0u8; 5];
        s.read_exact(&mut answer).expect("client read");
        assert_eq!(&answer, b"world");
        let _ = done_rx.recv();
    });
    let (tcp, _) = listener.accept().expect("accept");
    tcp.set_nonblocking(true).expect("nonblocking");
    let session = UnbufferedServerConnection::new(sc).expect("session");
    let mut server = Stream::tls(TcpStream::from_std(tcp), session);
    assert_eq!(read_some(&mut server, 5), b"hello");
    assert!(!server.handshaking() && server.take_handshake_news());
    assert_eq!(server.write(b"world").expect("server write"), 5);
    server.flush().expect("flushed");
    // Idle: nothing held but the session.
    let Stream::Tls(t) = &server else {
        panic!("not TLS")
    };
    assert_eq!(
        (
            t.incoming.capacity(),
            t.outgoing.capacity(),
            t.plain.capacity()
        ),
        (0, 0, 0)
    );
    // A client that does not read: the kernel fills, then writes say WouldBlock and the
    // stream holds at most BUFFER_LIMIT of ciphertext.
    let chunk = [b'x'; 8192];
    let mut blocked = false;
    for _ in 0..100_000 {
        match server.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) => panic!("server write: {e}"),
        }
    }
    assert!(blocked, "the socket never filled");
    let Stream::Tls(t) = &server else {
        panic!("not TLS")
    };
    assert!(
        t.outgoing.len() <= crate::tls::BUFFER_LIMIT,
        "{}",
        t.outgoing.len()
    );
    let _ = done_tx.send(());
    drop(server);
    let _ = client.join();
}
