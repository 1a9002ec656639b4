//! Secrets and who is asking: admin tokens, device tokens, enrollment keys (only SHA-256 hashes
//! are stored), enrollment challenges (HMAC with a secret kept in the database, so every server
//! process accepts the challenges of the others).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::AppState;
use crate::db::now_ms;
use crate::error::{ApiErr, ApiResult};

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

fn bearer(parts: &Parts) -> ApiResult<&str> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiErr::unauthorized(
                "missing_token",
                "send Authorization: Bearer TOKEN (a device token from enrollment, or an admin token)",
            )
        })?;
    h.to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiErr::unauthorized(
                "bad_token",
                "the Authorization header must be: Bearer TOKEN",
            )
        })
}

/// An authenticated admin.
pub struct Admin {
    pub name: String,
}

impl Admin {
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let row = sqlx::query("SELECT name, revoked_at FROM admin_tokens WHERE token_hash = $1")
            .bind(hash_secret(token))
            .fetch_optional(&state.db.read)
            .await?;
        let Some(row) = row else {
            return Err(ApiErr::unauthorized(
                "unknown_token",
                "this admin token is not known to the server (otter login again)",
            ));
        };
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(ApiErr::unauthorized(
                "token_revoked",
                "this admin token was revoked",
            ));
        }
        Ok(Admin {
            name: row.try_get("name")?,
        })
    }
}

/// An authenticated, accepted device, with what the poll path needs (one indexed query).
pub struct DeviceAuth {
    pub id: String,
    /// The `ETag` of the whole target state (OS and apps).
    pub target_etag: String,
    pub last_seen: Option<i64>,
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let row = sqlx::query(
            "SELECT t.revoked_at, d.id, d.status, d.target_etag, d.app_etag, d.last_seen \
             FROM device_tokens t JOIN devices d ON d.id = t.device_id WHERE t.token_hash = $1",
        )
        .bind(hash_secret(token))
        .fetch_optional(&state.db.read)
        .await?;
        let Some(row) = row else {
            return Err(ApiErr::unauthorized(
                "unknown_token",
                "this device token is not known to the server: enroll again",
            ));
        };
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Err(ApiErr::unauthorized(
                "token_revoked",
                "this device token was revoked: enroll again",
            ));
        }
        let status: String = row.try_get("status")?;
        if status != "accepted" {
            return Err(ApiErr::forbidden(
                "device_not_accepted",
                format!("this device is {status}: an admin must accept it"),
            ));
        }
        Ok(DeviceAuth {
            id: row.try_get("id")?,
            target_etag: crate::rollouts::combined_etag(
                &row.try_get::<String, _>("target_etag")?,
                &row.try_get::<String, _>("app_etag")?,
            ),
            last_seen: row.try_get("last_seen")?,
        })
    }
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

pub fn check_challenge(secret: &[u8], challenge: &str) -> ApiResult<()> {
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
    Ok(())
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
