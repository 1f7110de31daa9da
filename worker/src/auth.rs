//! Identity: how a WebSocket connection proves which uid it is, and how backends prove they
//! may push.
//!
//! * `uid` — the seeds' mode: the first text frame *is* the uid. No proof; for loopback or
//!   trusted networks only.
//! * `hmac` — the token is `UID.EXPIRY.SIG`, SIG the hex HMAC-SHA256 of `UID.EXPIRY` under the
//!   shared secret: a PHP backend makes one with a single `hash_hmac` call.
//! * `jwt` — an HS256 JWT whose `sub` is the uid and whose `exp` is checked, as is `nbf`
//!   when present (both with a 5 s leeway). A header with `crit` is refused: it names
//!   extensions the token relies on (RFC 7515 section 4.1.11), and Herald understands none.
//!
//! Secrets are compared in constant time and never logged; neither is a token.

/// The WebSocket authentication mode, defined with the configuration in `herald-ipc`.
pub use herald_ipc::config::AuthMode as Mode;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Why a token was refused (said in the log, with the remote address, never the token).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// Not of the mode's shape.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("expired token")]
    Expired,
    /// Before its `nbf` (not before) time.
    #[error("token not valid yet")]
    NotYetValid,
    /// A JWT whose `crit` header names extensions, which this server does not implement.
    #[error("JWT needs an unsupported critical extension")]
    UnsupportedCritical,
    /// A JWT that failed validation for another reason.
    #[error("invalid JWT: {0}")]
    Jwt(String),
}

/// A token checker for one mode and secret.
pub struct Auth {
    /// The mode.
    pub mode: Mode,
    /// The shared secret (hmac, jwt).
    secret: Vec<u8>,
}

/// Longest token accepted; anything longer is malformed without further work.
const MAX_TOKEN: usize = 4096;

/// The claims Herald reads from a JWT (`exp` and `nbf` are checked by the validator).
#[derive(serde::Deserialize)]
struct Claims {
    /// The uid the token logs in as (a string, or an integer taken as its digits).
    sub: serde_json::Value,
}

impl Auth {
    /// A checker.
    pub fn new(mode: Mode, secret: &str) -> Auth {
        Auth {
            mode,
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// The uid a login message or token stands for, checked per the mode. `now` is Unix time.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN {
            return Err(AuthError::Malformed);
        }
        match self.mode {
            Mode::Uid => Ok(token.to_string()),
            Mode::Hmac => self.verify_hmac(token, now),
            Mode::Jwt => self.verify_jwt(token),
        }
    }

    fn verify_hmac(&self, token: &str, now: u64) -> Result<String, AuthError> {
        let mut parts = token.rsplitn(3, '.');
        let (Some(sig), Some(exp), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed);
        };
        let expiry: u64 = exp.parse().map_err(|_| AuthError::Malformed)?;
        let sig = hex_decode(sig).ok_or(AuthError::Malformed)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).map_err(|_| AuthError::Malformed)?;
        mac.update(&token.as_bytes()[..uid.len() + 1 + exp.len()]);
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        if now > expiry {
            return Err(AuthError::Expired);
        }
        Ok(uid.to_string())
    }

    fn verify_jwt(&self, token: &str) -> Result<String, AuthError> {
        use jsonwebtoken::{
            decode, decode_header, errors::ErrorKind, Algorithm, DecodingKey, Validation,
        };
        let refusal = |e: jsonwebtoken::errors::Error| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            other => AuthError::Jwt(format!("{other:?}")),
        };
        // RFC 7515 section 4.1.11: a token whose `crit` lists extensions the recipient does
        // not understand is invalid, and an empty list is not allowed either. The header is
        // judged before the signature: such an extension may change what was signed.
        if decode_header(token).map_err(refusal)?.crit.is_some() {
            return Err(AuthError::UnsupportedCritical);
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map_err(refusal)?;
        match data.claims.sub {
            serde_json::Value::String(s) if !s.is_empty() => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(AuthError::Malformed),
        }
    }
}

/// An `hmac`-mode token for `uid` expiring at `exp` (Unix seconds): `UID.EXPIRY.SIG`, SIG the
/// lowercase hex HMAC-SHA256 of `UID.EXPIRY` under `secret` (what PHP's
/// `hash_hmac('sha256', "$uid.$exp", $secret)` gives), for backends written in Rust and tests.
pub fn hmac_token(secret: &str, uid: &str, exp: u64) -> String {
    let payload = format!("{uid}.{exp}");
    let sig = hmac_hex(secret.as_bytes(), payload.as_bytes());
    format!("{payload}.{sig}")
}

/// The lowercase hex HMAC-SHA256 of `msg` under `key` (PHP: `hash_hmac('sha256', $msg, $key)`):
/// the signature of tokens and of webhook bodies.
pub fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        Err(_) => String::new(),
    }
}

/// `token` from a request target's query string (`/path?token=…`).
pub fn token_from_target(target: &str) -> Option<String> {
    let (_, q) = target.split_once('?')?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Equality of secrets, in time that depends on their lengths but not on their bytes (the
/// `subtle` crate's comparison, which the optimiser cannot turn into an early exit).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_tokens() {
        let a = Auth::new(Mode::Hmac, "s3cret");
        let t = hmac_token("s3cret", "user.1", 2000);
        assert_eq!(a.verify(&t, 1000), Ok("user.1".into()));
        assert_eq!(a.verify(&t, 2001), Err(AuthError::Expired));
        let forged = hmac_token("other", "user.1", 2000);
        assert_eq!(a.verify(&forged, 1000), Err(AuthError::BadSignature));
        let swapped = t.replace("user.1", "admin1");
        assert_eq!(a.verify(&swapped, 1000), Err(AuthError::BadSignature));
        assert_eq!(a.verify("nodots", 0), Err(AuthError::Malformed));
        assert_eq!(a.verify("u.x.zz", 0), Err(AuthError::Malformed));
    }

    #[test]
    fn jwt_tokens() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let a = Auth::new(Mode::Jwt, "k");
        let mk = |key: &str, exp: u64| {
            encode(
                &Header::default(),
                &serde_json::json!({"sub": "u9", "exp": exp}),
                &EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        assert_eq!(a.verify(&mk("k", now + 60), now), Ok("u9".into()));
        assert_eq!(a.verify(&mk("k", now - 600), now), Err(AuthError::Expired));
        assert_eq!(
            a.verify(&mk("x", now + 60), now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(a.verify("garbage", now), Err(AuthError::Malformed));
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// An HS256 token under `key` with these claims and this header.
    fn jwt(header: &jsonwebtoken::Header, claims: serde_json::Value, key: &str) -> String {
        jsonwebtoken::encode(
            header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn jwt_not_before_is_enforced() {
        let a = Auth::new(Mode::Jwt, "k");
        let h = jsonwebtoken::Header::default();
        let t = now();
        let with_nbf = |nbf: u64| {
            jwt(
                &h,
                serde_json::json!({"sub": "u1", "exp": t + 600, "nbf": nbf}),
                "k",
            )
        };
        assert_eq!(a.verify(&with_nbf(t + 300), t), Err(AuthError::NotYetValid));
        assert_eq!(a.verify(&with_nbf(t + 60), t), Err(AuthError::NotYetValid));
        // Within the same 5 s leeway as exp, or already past: valid.
        assert_eq!(a.verify(&with_nbf(t + 2), t), Ok("u1".into()));
        assert_eq!(a.verify(&with_nbf(t - 60), t), Ok("u1".into()));
        // nbf stays optional.
        let without = jwt(&h, serde_json::json!({"sub": "u1", "exp": t + 600}), "k");
        assert_eq!(a.verify(&without, t), Ok("u1".into()));
        // A not-before that is not a number is refused, not ignored.
        let bad = jwt(
            &h,
            serde_json::json!({"sub": "u1", "exp": t + 600, "nbf": "soon"}),
            "k",
        );
        assert!(a.verify(&bad, t).is_err());
    }

    #[test]
    fn jwt_with_crit_is_refused() {
        let a = Auth::new(Mode::Jwt, "k");
        let t = now();
        let claims = serde_json::json!({"sub": "u1", "exp": t + 600});
        let mut h = jsonwebtoken::Header::default();
        assert_eq!(a.verify(&jwt(&h, claims.clone(), "k"), t), Ok("u1".into()));
        for crit in [vec!["exp".to_string()], vec!["b64".to_string()], vec![]] {
            h.crit = Some(crit.clone());
            let token = jwt(&h, claims.clone(), "k");
            assert_eq!(
                a.verify(&token, t),
                Err(AuthError::UnsupportedCritical),
                "{crit:?}"
            );
        }
        // Refused before the signature is looked at.
        h.crit = Some(vec!["x".into()]);
        let forged = jwt(&h, claims, "not the key");
        assert_eq!(a.verify(&forged, t), Err(AuthError::UnsupportedCritical));
    }

    #[test]
    fn query_token_and_secret_compare() {
        assert_eq!(
            token_from_target("/?a=1&token=x%2By").as_deref(),
            Some("x+y")
        );
        assert_eq!(token_from_target("/"), None);
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"ab"));
        assert!(!secret_eq(b"", b"a"));
        assert!(secret_eq(b"", b""));
        assert!(!secret_eq(b"\x00abc", b"\x01abc"));
    }
}
