//! Secrets: admin tokens, device tokens, enrollment keys (only SHA-256 hashes are stored),
//! enrollment challenges (HMAC with a secret kept in the database, so every server process
//! accepts the challenges of the others). Pure: who is asking is found by `http::extract`.

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{ApiErr, ApiResult};
use crate::store::now_ms;

/// A new random secret: `PREFIX_` + 43 characters of base64url (256 bits).
pub fn new_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Short random id (16 hex characters) for rows people refer to.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// What is stored instead of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

type HmacSha256 = Hmac<Sha256>;

/// How long a challenge stays valid.
pub const CHALLENGE_TTL_SECS: u64 = 300;

/// `ISSUED_SECS.NONCE.MAC`
pub fn issue_challenge(secret: &[u8]) -> String {
    let issued = now_ms() / 1000;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let body = format!("{issued}.{}", hex::encode(nonce));
    format!("{body}.{}", challenge_mac(secret, &body))
}

fn challenge_mac(secret: &[u8], body: &str) -> String {
    // new_from_slice only fails for fixed-size-key MACs; HMAC takes any key length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a challenge's HMAC and age; gives its issue time (seconds since the epoch).
pub fn check_challenge(secret: &[u8], challenge: &str) -> ApiResult<i64> {
    let bad = |why: &str| {
        ApiErr::bad_request(
            "bad_challenge",
            format!("challenge {why}: get a new one from GET /api/v1/device/challenge"),
        )
    };
    let (body, mac) = challenge
        .rsplit_once('.')
        .ok_or_else(|| bad("is malformed"))?;
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(body.as_bytes());
    let mac = hex::decode(mac).map_err(|_| bad("is malformed"))?;
    m.verify_slice(&mac)
        .map_err(|_| bad("was not issued by this server"))?;
    let issued: i64 = body
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("is malformed"))?;
    let age = now_ms() / 1000 - issued;
    if !(-60..=CHALLENGE_TTL_SECS as i64).contains(&age) {
        return Err(bad("has expired"));
    }
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_verify_only_with_their_secret() {
        let c = issue_challenge(b"one");
        check_challenge(b"one", &c).unwrap();
        assert_eq!(
            check_challenge(b"two", &c).unwrap_err().code,
            "bad_challenge"
        );
        let mut forged = c.clone();
        forged.replace_range(0..1, "9");
        assert!(check_challenge(b"one", &forged).is_err());
        assert!(check_challenge(b"one", "nonsense").is_err());
        // An old one, correctly signed.
        let body = format!("{}.00", now_ms() / 1000 - 1000);
        let old = format!("{body}.{}", challenge_mac(b"one", &body));
        assert!(
            check_challenge(b"one", &old)
                .unwrap_err()
                .message
                .contains("expired")
        );
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret("otd");
        assert!(a.starts_with("otd_") && a.len() == 47);
        assert_ne!(a, new_secret("otd"));
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }
}
