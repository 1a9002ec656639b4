//! Device log storage with a per-device quota (oldest lines pruned first) and an age limit;
//! the audit log's age limit. `device_log_usage` keeps each device's stored size, so a batch
//! costs an update, not a scan of the device's lines.

use otter_proto::LogEntry;
use sqlx::Row;

use super::Db;

/// What one stored line counts against the quota: its characters (as SQL's `LENGTH`) and a
/// fixed 32 for the row.
const ROW_SIZE_SQL: &str =
    "CAST(LENGTH(message) + COALESCE(LENGTH(source), 0) + LENGTH(level) + 32 AS BIGINT)";

pub fn entry_size(e: &LogEntry) -> i64 {
    let chars = e.message.chars().count()
        + e.source.as_deref().map_or(0, |s| s.chars().count())
        + e.level.chars().count();
    i64::try_from(chars).unwrap_or(i64::MAX / 2) + 32
}

/// Stores log lines of a device, all or none, then prunes its oldest lines while it holds more
/// than `quota` bytes. Gives how many lines were pruned.
pub async fn insert(
    db: &Db,
    id: &str,
    entries: &[LogEntry],
    now: i64,
    quota: i64,
) -> sqlx::Result<u64> {
    let mut tx = db.write.begin().await?;
    let mut added = 0i64;
    for e in entries {
        sqlx::query(
            "INSERT INTO device_logs (device_id, ts, received_at, level, source, message) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(e.ts_ms)
        .bind(now)
        .bind(&e.level)
        .bind(&e.source)
        .bind(&e.message)
        .execute(&mut *tx)
        .await?;
        added += entry_size(e);
    }
    sqlx::query(
        "INSERT INTO device_log_usage (device_id, bytes) VALUES ($1, $2) \
         ON CONFLICT (device_id) DO UPDATE SET bytes = device_log_usage.bytes + excluded.bytes",
    )
    .bind(id)
    .bind(added)
    .execute(&mut *tx)
    .await?;
    let mut used: i64 = sqlx::query("SELECT bytes FROM device_log_usage WHERE device_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("bytes")?;
    let mut pruned = 0u64;
    while used > quota {
        let rows = sqlx::query(&format!(
            "SELECT id, {ROW_SIZE_SQL} AS n FROM device_logs WHERE device_id = $1 ORDER BY id LIMIT 1000"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            used = 0;
            break;
        }
        let mut cutoff = 0i64;
        let mut freed = 0i64;
        for r in &rows {
            cutoff = r.try_get("id")?;
            freed += r.try_get::<i64, _>("n")?;
            pruned += 1;
            if used - freed <= quota {
                break;
            }
        }
        sqlx::query("DELETE FROM device_logs WHERE device_id = $1 AND id <= $2")
            .bind(id)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        used -= freed;
    }
    if pruned > 0 {
        sqlx::query("UPDATE device_log_usage SET bytes = $2 WHERE device_id = $1")
            .bind(id)
            .bind(used.max(0))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(pruned)
}

/// Deletes device log lines received before `logs_before` and audit entries before
/// `audit_before` (ms), and recounts each device's stored size. Gives (log lines, audit
/// entries) deleted.
pub async fn expire(db: &Db, logs_before: i64, audit_before: i64) -> sqlx::Result<(u64, u64)> {
    let mut tx = db.write.begin().await?;
    let logs = sqlx::query("DELETE FROM device_logs WHERE received_at < $1")
        .bind(logs_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let audit = sqlx::query("DELETE FROM audit WHERE at < $1")
        .bind(audit_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if logs > 0 {
        sqlx::query(&format!(
            "UPDATE device_log_usage SET bytes = COALESCE((SELECT CAST(SUM({ROW_SIZE_SQL}) AS BIGINT) \
             FROM device_logs l WHERE l.device_id = device_log_usage.device_id), 0)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((logs, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(m: &str) -> LogEntry {
        serde_json::from_value(serde_json::json!({"ts_ms": 1, "message": m})).unwrap()
    }

    #[tokio::test]
    async fn quota_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::open(&url).await.unwrap();
        let size = entry_size(&line("aaaa"));
        assert_eq!(
            insert(&db, "d", &[line("aaaa"), line("bbbb")], 1_000, 10 * size)
                .await
                .unwrap(),
            0
        );
        // Quota of two lines: a third pushes out the oldest.
        assert_eq!(
            insert(&db, "d", &[line("cccc")], 5_000, 2 * size)
                .await
                .unwrap(),
            1
        );
        let usage = |db: &Db| {
            let db = db.read.clone();
            async move {
                sqlx::query("SELECT bytes FROM device_log_usage WHERE device_id = 'd'")
                    .fetch_one(&db)
                    .await
                    .unwrap()
                    .try_get::<i64, _>("bytes")
                    .unwrap()
            }
        };
        assert_eq!(usage(&db).await, 2 * size);
        // Lines received before 2000 expire; the usage is recounted.
        assert_eq!(expire(&db, 2_000, 0).await.unwrap(), (1, 0));
        assert_eq!(usage(&db).await, size);
        super::super::audit(&db.write, "a", "x", "s", "")
            .await
            .unwrap();
        assert_eq!(expire(&db, 0, i64::MAX).await.unwrap(), (0, 1));
    }
}
