//! Devices: reading them for the admin API and the dashboard, and the admin's changes to them.

use otter_proto::admin::{Device, DeviceStatus, StoredLogEntry};
use serde::Deserialize;
use sqlx::{Any, Row, Transaction};

use super::{Db, now_ms};
use crate::error::{ApiErr, ApiResult};

const DEVICE_SELECT: &str = "SELECT d.*, t.version AS target_version, p.version AS pinned_version, \
     ta.version AS target_app_version, pa.version AS pinned_app_version \
     FROM devices d LEFT JOIN releases t ON t.id = d.target_release_id \
     LEFT JOIN releases p ON p.id = d.pinned_release_id \
     LEFT JOIN app_releases ta ON ta.id = d.target_app_release_id \
     LEFT JOIN app_releases pa ON pa.id = d.pinned_app_release_id";

/// `online_ms`: how long after its last poll a device counts as online.
fn device_from_row(r: &sqlx::any::AnyRow, online_ms: i64) -> ApiResult<Device> {
    let status: String = r.try_get("status")?;
    let last_seen: Option<i64> = r.try_get("last_seen")?;
    let tags: String = r.try_get("tags")?;
    let update = r
        .try_get::<Option<String>, _>("update_json")?
        .and_then(|s| serde_json::from_str(&s).ok());
    let health = match r.try_get::<Option<String>, _>("health")?.as_deref() {
        Some("healthy") => Some(otter_proto::Health::Healthy),
        Some("degraded") => Some(otter_proto::Health::Degraded),
        Some("unhealthy") => Some(otter_proto::Health::Unhealthy),
        _ => None,
    };
    Ok(Device {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        compatible: r.try_get("compatible")?,
        status: DeviceStatus::parse(&status)
            .ok_or_else(|| ApiErr::internal("reading a device", format!("bad status {status}")))?,
        tags: tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        pinned_release: r.try_get("pinned_version")?,
        target_version: r.try_get("target_version")?,
        os_version: r.try_get("os_version")?,
        booted_slot: r.try_get("booted_slot")?,
        update,
        health,
        uptime_secs: r
            .try_get::<Option<i64>, _>("uptime_secs")?
            .map(|v| v as u64),
        free_bytes: r.try_get::<Option<i64>, _>("free_bytes")?.map(|v| v as u64),
        enrolled_at_ms: r.try_get("enrolled_at")?,
        last_seen_ms: last_seen,
        online: last_seen.is_some_and(|t| now_ms() - t <= online_ms),
        pinned_app_release: r.try_get("pinned_app_version")?,
        target_app_version: r.try_get("target_app_version")?,
        apps: r
            .try_get::<Option<String>, _>("apps_json")?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub compatible: Option<String>,
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `true` or `false`.
    pub online: Option<bool>,
    /// Substring of the id or name.
    pub q: Option<String>,
    pub limit: Option<usize>,
}

/// The largest `limit` a device listing accepts.
pub const MAX_DEVICE_LIMIT: usize = 1_000_000;

pub async fn query(db: &Db, f: &DeviceFilter, online_ms: i64) -> ApiResult<Vec<Device>> {
    let mut sql = format!("{DEVICE_SELECT} WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    if let Some(s) = &f.status {
        if DeviceStatus::parse(s).is_none() {
            return Err(ApiErr::bad_request(
                "invalid_filter",
                format!("status {s:?}: use pending, accepted, rejected or revoked"),
            ));
        }
        args.push(s.clone());
        sql.push_str(&format!(" AND d.status = ${}", args.len()));
    }
    if let Some(c) = &f.compatible {
        args.push(c.clone());
        sql.push_str(&format!(" AND d.compatible = ${}", args.len()));
    }
    if let Some(v) = &f.version {
        args.push(v.clone());
        sql.push_str(&format!(" AND d.os_version = ${}", args.len()));
    }
    sql.push_str(" ORDER BY d.enrolled_at, d.id");
    let limit = f.limit.unwrap_or(1000);
    if limit > MAX_DEVICE_LIMIT {
        return Err(ApiErr::bad_request(
            "invalid_filter",
            format!("limit {limit}: use 0 to {MAX_DEVICE_LIMIT}"),
        ));
    }
    // Without filters applied below, the database stops at the limit.
    if f.tag.is_none() && f.online.is_none() && f.q.is_none() {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut q = sqlx::query(&sql);
    for a in &args {
        q = q.bind(a);
    }
    let rows = q.fetch_all(&db.read).await?;
    let mut out = Vec::new();
    for r in &rows {
        if out.len() >= limit {
            break;
        }
        let d = device_from_row(r, online_ms)?;
        if f.tag.as_ref().is_some_and(|t| !d.tags.contains(t))
            || f.online.is_some_and(|o| o != d.online)
            || f.q.as_ref().is_some_and(|q| {
                !d.id.contains(q.as_str())
                    && !d.name.as_deref().is_some_and(|n| n.contains(q.as_str()))
            })
        {
            continue;
        }
        out.push(d);
    }
    Ok(out)
}

/// The device `id`, if there is one.
pub async fn load(db: &Db, id: &str, online_ms: i64) -> ApiResult<Option<Device>> {
    let r = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
        .bind(id)
        .fetch_optional(&db.read)
        .await?;
    r.map(|r| device_from_row(&r, online_ms)).transpose()
}

/// Log lines of a device: after line `after` (oldest first), else the newest `limit`.
pub async fn logs(
    db: &Db,
    id: &str,
    after: Option<i64>,
    limit: i64,
) -> ApiResult<Vec<StoredLogEntry>> {
    let limit = limit.clamp(1, 10_000);
    let rows =
        match after {
            Some(a) => sqlx::query(
                "SELECT * FROM device_logs WHERE device_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(id)
            .bind(a)
            .bind(limit)
            .fetch_all(&db.read)
            .await?,
            None => {
                let mut rows = sqlx::query(
                    "SELECT * FROM device_logs WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(id)
                .bind(limit)
                .fetch_all(&db.read)
                .await?;
                rows.reverse();
                rows
            }
        };
    let mut out = Vec::new();
    for r in rows {
        out.push(StoredLogEntry {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            ts_ms: r.try_get("ts")?,
            received_at_ms: r.try_get("received_at")?,
            level: r.try_get("level")?,
            source: r.try_get("source")?,
            message: r.try_get("message")?,
        });
    }
    Ok(out)
}

/// A device's status (`None`: no such device), in the caller's transaction.
pub async fn status(tx: &mut Transaction<'_, Any>, id: &str) -> sqlx::Result<Option<String>> {
    let r = sqlx::query("SELECT status FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    r.map(|r| r.try_get("status")).transpose()
}

pub async fn set_status(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    to: DeviceStatus,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
        .bind(to.as_str())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes every token of the device.
pub async fn revoke_tokens(tx: &mut Transaction<'_, Any>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE device_tokens SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A device's tags as stored (`,a,b,`), `None`: no such device.
pub async fn tags(tx: &mut Transaction<'_, Any>, id: &str) -> sqlx::Result<Option<String>> {
    let r = sqlx::query("SELECT tags FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    r.map(|r| r.try_get("tags")).transpose()
}

pub async fn set_tags(tx: &mut Transaction<'_, Any>, id: &str, stored: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE devices SET tags = $1 WHERE id = $2")
        .bind(stored)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Pins the device's OS or apps (`pin_column` from [`super::rollouts::cols`]) to a release, or
/// unpins it (`None`).
pub async fn set_pin(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    pin_column: &str,
    release_id: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE devices SET {pin_column} = $1 WHERE id = $2"
    ))
    .bind(release_id)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Devices per status.
pub async fn count_by_status(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM devices GROUP BY status")
        .fetch_all(&db.read)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Accepted devices seen after `since` (ms).
pub async fn count_online(db: &Db, since: i64) -> sqlx::Result<i64> {
    sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE status = $1 AND last_seen > $2")
        .bind(DeviceStatus::Accepted.as_str())
        .bind(since)
        .fetch_one(&db.read)
        .await?
        .try_get("n")
}

/// Accepted devices per OS version: (version, devices, online since `since`), most first.
pub async fn count_by_version(
    db: &Db,
    since: i64,
) -> sqlx::Result<Vec<(Option<String>, i64, i64)>> {
    let rows = sqlx::query(
        "SELECT os_version, COUNT(*) AS n, SUM(CASE WHEN last_seen > $1 THEN 1 ELSE 0 END) AS online \
         FROM devices WHERE status = $2 GROUP BY os_version ORDER BY n DESC",
    )
    .bind(since)
    .bind(DeviceStatus::Accepted.as_str())
    .fetch_all(&db.read)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        // SUM is NUMERIC on PostgreSQL, INTEGER on SQLite.
        let on: i64 = r
            .try_get::<i64, _>("online")
            .or_else(|_| r.try_get::<f64, _>("online").map(|f| f as i64))
            .unwrap_or(0);
        out.push((r.try_get("os_version")?, r.try_get("n")?, on));
    }
    Ok(out)
}

/// A device's status and public key (`None`: not enrolled yet), in the caller's transaction.
pub async fn identity(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let r = sqlx::query("SELECT status, public_key FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    r.map(|r| Ok((r.try_get("status")?, r.try_get("public_key")?)))
        .transpose()
}

/// A device enrolling for the first time.
pub struct NewDevice<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub public_key: &'a str,
    pub compatible: &'a str,
    pub status: &'a str,
    pub os_version: Option<&'a str>,
    pub target_etag: &'a str,
}

pub async fn insert(
    tx: &mut Transaction<'_, Any>,
    d: &NewDevice<'_>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO devices (id, name, public_key, compatible, status, enrolled_at, target_etag, os_version, last_seen) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(d.id)
    .bind(d.name)
    .bind(d.public_key)
    .bind(d.compatible)
    .bind(d.status)
    .bind(now)
    .bind(d.target_etag)
    .bind(d.os_version)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An enrolled device enrolling again: what it says of itself now.
pub async fn update_enrolled(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    status: &str,
    name: Option<&str>,
    compatible: &str,
    os_version: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE devices SET status = $1, name = COALESCE($2, name), compatible = $3, \
         os_version = COALESCE($4, os_version), last_seen = $5 WHERE id = $6",
    )
    .bind(status)
    .bind(name)
    .bind(compatible)
    .bind(os_version)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_last_seen(db: &Db, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&db.write)
        .await?;
    Ok(())
}

/// What `GET /target` reads of a device: one indexed read.
pub struct TargetRow {
    pub target_etag: String,
    pub app_etag: String,
    pub rollout_id: Option<String>,
    pub pinned_release_id: Option<String>,
    pub app_rollout_id: Option<String>,
    pub pinned_app_release_id: Option<String>,
    pub release: Option<TargetReleaseRow>,
    pub apps: Option<TargetAppsRow>,
}

pub struct TargetReleaseRow {
    pub id: String,
    pub version: String,
    pub compatible: String,
    pub size: u64,
    pub manifest_digest: String,
    pub object_path: String,
}

pub struct TargetAppsRow {
    pub id: String,
    pub version: String,
    pub digest: String,
    pub set_json: String,
}

pub async fn target(db: &Db, id: &str) -> sqlx::Result<TargetRow> {
    let row = sqlx::query(
        "SELECT d.target_etag, d.app_etag, d.rollout_id, d.pinned_release_id, d.app_rollout_id, d.pinned_app_release_id, \
         r.id AS release_id, r.version, r.compatible, r.size, r.manifest_digest, r.object_path, \
         a.id AS app_release_id, a.version AS app_version, a.digest AS app_digest, a.set_json AS app_set \
         FROM devices d LEFT JOIN releases r ON r.id = d.target_release_id \
         LEFT JOIN app_releases a ON a.id = d.target_app_release_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&db.read)
    .await?;
    let release = match row.try_get::<Option<String>, _>("release_id")? {
        None => None,
        Some(id) => Some(TargetReleaseRow {
            id,
            version: row.try_get("version")?,
            compatible: row.try_get("compatible")?,
            size: row.try_get::<i64, _>("size")? as u64,
            manifest_digest: row.try_get("manifest_digest")?,
            object_path: row.try_get("object_path")?,
        }),
    };
    let apps = match row.try_get::<Option<String>, _>("app_release_id")? {
        None => None,
        Some(id) => Some(TargetAppsRow {
            id,
            version: row.try_get("app_version")?,
            digest: row.try_get("app_digest")?,
            set_json: row.try_get("app_set")?,
        }),
    };
    Ok(TargetRow {
        target_etag: row.try_get("target_etag")?,
        app_etag: row.try_get("app_etag")?,
        rollout_id: row.try_get("rollout_id")?,
        pinned_release_id: row.try_get("pinned_release_id")?,
        app_rollout_id: row.try_get("app_rollout_id")?,
        pinned_app_release_id: row.try_get("pinned_app_release_id")?,
        release,
        apps,
    })
}

/// The object path and size of release `release_id` when it is the device's target.
pub async fn targeted_object(
    db: &Db,
    device_id: &str,
    release_id: &str,
) -> sqlx::Result<Option<(String, u64)>> {
    let row = sqlx::query(
        "SELECT r.object_path, r.size FROM devices d JOIN releases r ON r.id = d.target_release_id \
         WHERE d.id = $1 AND d.target_release_id = $2",
    )
    .bind(device_id)
    .bind(release_id)
    .fetch_optional(&db.read)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("object_path")?,
            r.try_get::<i64, _>("size")? as u64,
        ))
    })
    .transpose()
}

/// What a device reported last, as stored (JSON text).
pub struct LastReport {
    pub update_json: Option<String>,
    pub os_version: Option<String>,
    pub apps_json: Option<String>,
}

pub async fn last_report(tx: &mut Transaction<'_, Any>, id: &str) -> sqlx::Result<LastReport> {
    let r = sqlx::query("SELECT update_json, os_version, apps_json FROM devices WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(LastReport {
        update_json: r.try_get("update_json")?,
        os_version: r.try_get("os_version")?,
        apps_json: r.try_get("apps_json")?,
    })
}

pub async fn set_apps_json(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    apps_json: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE devices SET apps_json = $1 WHERE id = $2")
        .bind(apps_json)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Stores a state report; what it leaves out keeps its earlier value (the update is replaced).
pub async fn store_report(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    r: &otter_proto::StateReport,
    update_json: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE devices SET os_version = COALESCE($1, os_version), booted_slot = COALESCE($2, booted_slot), \
         update_json = $3, health = COALESCE($4, health), uptime_secs = COALESCE($5, uptime_secs), \
         free_bytes = COALESCE($6, free_bytes), last_seen = $7, last_report = $7 WHERE id = $8",
    )
    .bind(&r.os_version)
    .bind(&r.booted_slot)
    .bind(update_json)
    .bind(r.health.map(|h| h.as_str()))
    .bind(r.uptime_secs.map(|v| v as i64))
    .bind(r.free_bytes.map(|v| v as i64))
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
