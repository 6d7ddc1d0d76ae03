//! `X-Hub-Signature: sha256=<hex>`: HMAC-SHA256 over the raw body bytes,
//! compared in constant time. Any other algorithm prefix is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature header")]
    Missing,
    #[error("X-Hub-Signature must be `sha256=<hex>`")]
    Malformed,
    #[error("X-Hub-Signature does not match any configured secret")]
    Mismatch,
}

/// The signature bytes from a header value, or why it cannot be one.
pub fn parse_header(value: Option<&str>) -> Result<Vec<u8>, SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?.trim();
    let hex_part = value
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    hex::decode(hex_part).map_err(|_| SignatureError::Malformed)
}

/// Whether `signature` is HMAC-SHA256(secret, body). Constant-time.
pub fn verify(secret: &[u8], body: &[u8], signature: &[u8]) -> bool {
    // An empty key signs for anyone.
    if secret.is_empty() {
        return false;
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

/// `sha256=<hex>` for a body, as Bitbucket computes it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitbucket_test_vector() {
        let expected = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello World!"),
            expected
        );
        let sig = parse_header(Some(expected)).expect("well formed");
        assert!(verify(b"It's a Secret to Everybody", b"Hello World!", &sig));
        assert!(!verify(b"another secret", b"Hello World!", &sig));
        assert!(!verify(
            b"It's a Secret to Everybody",
            b"Hello World?",
            &sig
        ));
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        assert_eq!(parse_header(None), Err(SignatureError::Missing));
        for bad in ["sha1=abcd", "sha256=zz", "a4771c39", "sha256=", "SHA256=00"] {
            assert_eq!(
                parse_header(Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
