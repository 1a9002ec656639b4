//! Reading the audit table (writing is [`super::audit`], inside the writer's transaction).

use otter_proto::admin::AuditEntry;
use sqlx::Row;

use super::Db;

/// The newest `limit` entries about `subject` (e.g. `rollout:ID`), newest first.
pub async fn for_subject(db: &Db, subject: &str, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT at, actor, action, subject, detail FROM audit WHERE subject = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(subject)
    .bind(limit)
    .fetch_all(&db.read)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The newest `limit` entries, newest first.
pub async fn latest(db: &Db, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT $1")
        .bind(limit)
        .fetch_all(&db.read)
        .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<AuditEntry> {
    Ok(AuditEntry {
        at_ms: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
    })
}
