//! Admin and device tokens (stored as SHA-256 hashes).

use sqlx::Row;

use super::Db;
use super::db::{audit, now_ms};

/// An admin token's row.
pub struct AdminToken {
    pub name: String,
    pub revoked: bool,
}

pub async fn admin_token(db: &Db, hash: &str) -> sqlx::Result<Option<AdminToken>> {
    let row = sqlx::query("SELECT name, revoked_at FROM admin_tokens WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(&db.read)
        .await?;
    row.map(|r| {
        Ok(AdminToken {
            name: r.try_get("name")?,
            revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        })
    })
    .transpose()
}

pub async fn admin_token_count(db: &Db) -> sqlx::Result<i64> {
    sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens")
        .fetch_one(&db.write)
        .await?
        .try_get("n")
}

/// Stores a new admin token's hash, audited.
pub async fn insert_admin_token(db: &Db, hash: &str, name: &str) -> sqlx::Result<()> {
    let mut tx = db.write.begin().await?;
    sqlx::query("INSERT INTO admin_tokens (token_hash, name, created_at) VALUES ($1, $2, $3)")
        .bind(hash)
        .bind(name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    audit(
        &mut *tx,
        "server",
        "admin_token_created",
        &format!("admin:{name}"),
        "",
    )
    .await?;
    tx.commit().await
}

/// A device token's row joined with what the poll path needs of its device.
pub struct DeviceToken {
    pub revoked: bool,
    pub device_id: String,
    pub status: String,
    pub target_etag: String,
    pub app_etag: String,
    pub last_seen: Option<i64>,
}

pub async fn device_token(db: &Db, hash: &str) -> sqlx::Result<Option<DeviceToken>> {
    let row = sqlx::query(
        "SELECT t.revoked_at, d.id, d.status, d.target_etag, d.app_etag, d.last_seen \
         FROM device_tokens t JOIN devices d ON d.id = t.device_id WHERE t.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&db.read)
    .await?;
    row.map(|r| {
        Ok(DeviceToken {
            revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            device_id: r.try_get("id")?,
            status: r.try_get("status")?,
            target_etag: r.try_get("target_etag")?,
            app_etag: r.try_get("app_etag")?,
            last_seen: r.try_get("last_seen")?,
        })
    })
    .transpose()
}

pub async fn insert_device_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    hash: &str,
    device_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO device_tokens (token_hash, device_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(hash)
    .bind(device_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `hash` is an unrevoked admin token's (the dashboard's cookie).
pub async fn admin_token_valid(db: &Db, hash: &str) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS x FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&db.read)
            .await?
            .is_some(),
    )
}
