//! OS releases (`releases`) and app releases (`app_releases`).

use sqlx::Row;

use super::Db;

/// Releases whose id or version is `what`, oldest first: (id, version, compatible).
pub async fn by_id_or_version(db: &Db, what: &str) -> sqlx::Result<Vec<(String, String, String)>> {
    let rows = sqlx::query(
        "SELECT id, version, compatible FROM releases WHERE id = $1 OR version = $1 ORDER BY uploaded_at",
    )
    .bind(what)
    .fetch_all(&db.read)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("version")?,
                r.try_get("compatible")?,
            ))
        })
        .collect()
}
