//! OS releases (`releases`) and app releases (`app_releases`).

use otter_proto::admin::{AppRelease, Release};
use sqlx::{Any, Row, Transaction};

use super::Db;
use crate::error::{ApiErr, ApiResult};

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

/// The id of a release with id `id`, or of the same version for the same board.
pub async fn duplicate(
    db: &Db,
    id: &str,
    compatible: &str,
    version: &str,
) -> sqlx::Result<Option<String>> {
    let r =
        sqlx::query("SELECT id FROM releases WHERE id = $1 OR (compatible = $2 AND version = $3)")
            .bind(id)
            .bind(compatible)
            .bind(version)
            .fetch_optional(&db.read)
            .await?;
    r.map(|r| r.try_get("id")).transpose()
}

pub async fn insert(
    tx: &mut Transaction<'_, Any>,
    r: &Release,
    object_path: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO releases (id, version, compatible, size, manifest_digest, signer, object_path, uploaded_at, uploaded_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&r.id)
    .bind(&r.version)
    .bind(&r.compatible)
    .bind(r.size as i64)
    .bind(&r.manifest_digest)
    .bind(&r.signer)
    .bind(object_path)
    .bind(r.uploaded_at_ms)
    .bind(&r.uploaded_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every release, newest first.
pub async fn list(db: &Db) -> sqlx::Result<Vec<Release>> {
    let rows = sqlx::query("SELECT * FROM releases ORDER BY uploaded_at DESC")
        .fetch_all(&db.read)
        .await?;
    rows.iter().map(release_from_row).collect()
}

fn release_from_row(r: &sqlx::any::AnyRow) -> Result<Release, sqlx::Error> {
    Ok(Release {
        id: r.try_get("id")?,
        version: r.try_get("version")?,
        compatible: r.try_get("compatible")?,
        size: r.try_get::<i64, _>("size")? as u64,
        manifest_digest: r.try_get("manifest_digest")?,
        signer: r.try_get("signer")?,
        uploaded_at_ms: r.try_get("uploaded_at")?,
        uploaded_by: r.try_get("uploaded_by")?,
    })
}

pub async fn app_release_exists(db: &Db, version: &str) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("SELECT id FROM app_releases WHERE version = $1")
            .bind(version)
            .fetch_optional(&db.read)
            .await?
            .is_some(),
    )
}

/// False when an app release of that version exists already.
pub async fn insert_app_release(
    tx: &mut Transaction<'_, Any>,
    r: &AppRelease,
    set_json: &str,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "INSERT INTO app_releases (id, version, digest, set_json, apps, images, uploaded_at, uploaded_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (version) DO NOTHING",
    )
    .bind(&r.id)
    .bind(&r.version)
    .bind(&r.digest)
    .bind(set_json)
    .bind(r.apps.join(","))
    .bind(r.images.join("\n"))
    .bind(r.uploaded_at_ms)
    .bind(&r.uploaded_by)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// The newest 1000 app releases (without their sets).
pub async fn app_releases(db: &Db) -> ApiResult<Vec<AppRelease>> {
    let rows = sqlx::query("SELECT * FROM app_releases ORDER BY uploaded_at DESC LIMIT 1000")
        .fetch_all(&db.read)
        .await?;
    rows.iter().map(|r| app_from_row(r, false)).collect()
}

/// An app release by id or version, with its set.
pub async fn app_release(db: &Db, what: &str) -> ApiResult<Option<AppRelease>> {
    let r = sqlx::query("SELECT * FROM app_releases WHERE id = $1 OR version = $1")
        .bind(what)
        .fetch_optional(&db.read)
        .await?;
    r.map(|r| app_from_row(&r, true)).transpose()
}

fn app_from_row(r: &sqlx::any::AnyRow, with_set: bool) -> ApiResult<AppRelease> {
    let split = |s: String, sep: char| -> Vec<String> {
        s.split(sep)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let set = if with_set {
        let j: String = r.try_get("set_json")?;
        Some(serde_json::from_str(&j).map_err(|e| ApiErr::internal("decoding an app set", e))?)
    } else {
        None
    };
    Ok(AppRelease {
        id: r.try_get("id")?,
        version: r.try_get("version")?,
        digest: r.try_get("digest")?,
        apps: split(r.try_get("apps")?, ','),
        images: split(r.try_get("images")?, '\n'),
        uploaded_at_ms: r.try_get("uploaded_at")?,
        uploaded_by: r.try_get("uploaded_by")?,
        set,
    })
}
