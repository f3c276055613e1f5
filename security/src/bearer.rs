//! Bearer credentials: the secret half of an ACL token as it travels (`authorization: Bearer
//! SECRET` on gRPC metadata and HTTP headers) and its SHA-256, which is all a master stores.
//!
//! A [`Secret`] never prints: `Debug` shows `Secret(<redacted>)` and there is no `Display`; only
//! [`Secret::expose`] gives the text, for the one place that sends or shows it.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// The metadata key (gRPC) and header (HTTP) that carry the secret.
pub const AUTHORIZATION: &str = "authorization";
/// Random bytes in a secret.
pub const SECRET_BYTES: usize = 32;
/// Length of a secret's text: URL-safe base64 of `SECRET_BYTES`, without padding.
pub const SECRET_TEXT_LEN: usize = 43;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A token's secret: `SECRET_BYTES` random bytes as URL-safe base64 (no padding).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The SHA-256 of a secret's bytes: what the token store keeps instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash(pub [u8; 32]);

/// Why a presented credential is not a usable secret. Messages never include the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the authorization header is not ASCII")]
    NotAscii,
    #[error("malformed token: {0}")]
    Malformed(String),
}

impl Secret {
    /// A new random secret (the thread RNG: ChaCha seeded from the OS).
    pub fn generate() -> Secret {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        Secret(B64.encode(bytes))
    }

    /// A secret given as text (`--token`, `DROVER_TOKEN`, a header); surrounding whitespace is
    /// ignored. The error says what is wrong with the shape, never the text itself.
    pub fn parse(text: &str) -> Result<Secret, BearerError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(BearerError::Malformed("it is empty".into()));
        }
        if text.len() != SECRET_TEXT_LEN {
            return Err(BearerError::Malformed(format!(
                "{} characters; a Drover token secret has {SECRET_TEXT_LEN}",
                text.len()
            )));
        }
        let bytes = B64
            .decode(text)
            .map_err(|_| BearerError::Malformed("not URL-safe base64 (A-Z a-z 0-9 - _)".into()))?;
        if bytes.len() != SECRET_BYTES {
            return Err(BearerError::Malformed(format!(
                "{} bytes; a Drover token secret has {SECRET_BYTES}",
                bytes.len()
            )));
        }
        Ok(Secret(text.to_string()))
    }

    /// The secret's text. Call it only to send the secret or to show it once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value of the `authorization` header/metadata entry.
    pub fn bearer_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    pub fn sha256(&self) -> SecretHash {
        // `parse` and `generate` guarantee valid base64 of SECRET_BYTES.
        let bytes = B64
            .decode(&self.0)
            .expect("a Secret holds valid URL-safe base64");
        SecretHash(Sha256::digest(&bytes).into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretHash {
    /// Lower-case hex, the stored form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Result<SecretHash, String> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not a SHA-256 in hex (64 hex digits)"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|e| format!("{text:?}: {e}"))?;
        }
        Ok(SecretHash(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", self.to_hex())
    }
}

/// The secret in an `authorization` value: `Bearer SECRET` (the scheme is case-insensitive).
pub fn parse_bearer(value: &str) -> Result<Secret, BearerError> {
    let (scheme, rest) = value
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(BearerError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::NotBearer);
    }
    Secret::parse(rest)
}

/// The bearer secret of a gRPC request, if it carries one.
pub fn from_metadata(
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<Secret>, BearerError> {
    match metadata.get(AUTHORIZATION) {
        None => Ok(None),
        Some(v) => parse_bearer(v.to_str().map_err(|_| BearerError::NotAscii)?).map(Some),
    }
}

/// The bearer secret of an HTTP request, if it carries one.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Option<Secret>, BearerError> {
    match headers.get(AUTHORIZATION) {
        None => Ok(None),
        Some(v) => parse_bearer(v.to_str().map_err(|_| BearerError::NotAscii)?).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_back_and_hash_stably() {
        // Proves the secret format round-trips, two secrets differ and the hash is SHA-256 of
        // the bytes (a known vector: 32 zero bytes).
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), SECRET_TEXT_LEN);
        assert_eq!(Secret::parse(a.expose()), Ok(a.clone()));
        assert_eq!(a.sha256(), a.clone().sha256());
        assert_ne!(a.sha256(), b.sha256());
        let zero = Secret(B64.encode([0u8; 32]));
        assert_eq!(
            zero.sha256().to_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        let hex = a.sha256().to_hex();
        assert_eq!(SecretHash::from_hex(&hex), Ok(a.sha256()));
        assert!(SecretHash::from_hex("xyz").is_err());
    }

    #[test]
    fn a_secret_never_prints() {
        // Proves Debug hides the secret (a token inside a logged struct stays hidden).
        let s = Secret::generate();
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains(s.expose()), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn malformed_credentials_are_named_without_echoing_them() {
        // Proves each bad shape gets its own reason and none repeats the input.
        let good = Secret::generate();
        assert_eq!(
            parse_bearer(&good.bearer_value()).map(|s| s.sha256()),
            Ok(good.sha256())
        );
        assert_eq!(
            parse_bearer(&format!("bearer  {}", good.expose())).map(|s| s.sha256()),
            Ok(good.sha256())
        );
        assert_eq!(parse_bearer("Basic abc"), Err(BearerError::NotBearer));
        assert_eq!(parse_bearer("Bearer"), Err(BearerError::NotBearer));
        let short = parse_bearer("Bearer hunter2").expect_err("short");
        assert_eq!(
            short.to_string(),
            "malformed token: 7 characters; a Drover token secret has 43"
        );
        let bad = "!".repeat(SECRET_TEXT_LEN);
        let err = Secret::parse(&bad).expect_err("not base64").to_string();
        assert!(err.contains("not URL-safe base64"), "{err}");
        assert!(!err.contains(&bad));
    }
}
