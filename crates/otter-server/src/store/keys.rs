//! Enrollment keys (hashes only) and the trusted release keys added through the admin API.

use otter_proto::admin::{EnrollmentKey, TrustedKey};
use sqlx::{Any, Row, Transaction};

use super::Db;

pub async fn enrollment_keys(db: &Db) -> sqlx::Result<Vec<EnrollmentKey>> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, revoked_at FROM enrollment_keys ORDER BY created_at",
    )
    .fetch_all(&db.read)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(EnrollmentKey {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            created_at_ms: r.try_get("created_at")?,
            revoked_at_ms: r.try_get("revoked_at")?,
            key: None,
        });
    }
    Ok(out)
}

/// An enrollment key by the hash of its secret: (id, revoked).
pub async fn enrollment_key_by_hash(db: &Db, hash: &str) -> sqlx::Result<Option<(String, bool)>> {
    let r = sqlx::query("SELECT id, revoked_at FROM enrollment_keys WHERE key_hash = $1")
        .bind(hash)
        .fetch_optional(&db.read)
        .await?;
    r.map(|r| {
        Ok((
            r.try_get("id")?,
            r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        ))
    })
    .transpose()
}

pub async fn insert_enrollment_key(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    name: &str,
    hash: &str,
    now: i64,
    created_by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO enrollment_keys (id, name, key_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(hash)
    .bind(now)
    .bind(created_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// False when there is no unrevoked key `id`.
pub async fn revoke_enrollment_key(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE enrollment_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Keys added through the admin API, oldest first.
pub async fn trusted_keys(db: &Db) -> sqlx::Result<Vec<TrustedKey>> {
    let rows = sqlx::query("SELECT * FROM trusted_keys ORDER BY added_at")
        .fetch_all(&db.read)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(TrustedKey {
            fingerprint: r.try_get("fingerprint")?,
            pem: r.try_get("pem")?,
            added_at_ms: r.try_get("added_at")?,
            source: r.try_get("source")?,
        });
    }
    Ok(out)
}

/// False when the key is trusted already.
pub async fn insert_trusted_key(
    tx: &mut Transaction<'_, Any>,
    k: &TrustedKey,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "INSERT INTO trusted_keys (fingerprint, pem, added_at, source) VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(&k.fingerprint)
    .bind(&k.pem)
    .bind(k.added_at_ms)
    .bind(&k.source)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records `challenge` as used until `expires_at` (ms) and forgets expired ones; `false` when
/// it was used before.
pub async fn use_challenge(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    challenge: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM used_challenges WHERE expires_at < $1")
        .bind(now)
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query(
        "INSERT INTO used_challenges (challenge, expires_at) VALUES ($1, $2) \
         ON CONFLICT (challenge) DO NOTHING",
    )
    .bind(challenge)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}
