//! The admin API (`/api/v1/admin/…`, `Authorization: Bearer ADMIN_TOKEN`), used by the CLI.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use otter_proto::admin::{
    AddTrustedKey, AppRelease, AuditEntry, CreateEnrollmentKey, CreateRollout, Device,
    DeviceDetail, DeviceStatus, EnrollmentKey, PinAppsRequest, PinRequest, Release, Rollout,
    RolloutAction, StoredLogEntry, TagChange, TrustedKey, UploadAppRelease, WhoAmI,
};
use serde::Deserialize;
use sqlx::Row;

use crate::AppState;
use crate::auth::{self, Admin};
use crate::db::{audit, now_ms};
use crate::device_api::check_name_chars;
use crate::error::{ApiErr, ApiResult, JsonBody};
use crate::{app_releases, releases, rollouts};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/whoami", get(whoami))
        .route("/api/v1/admin/devices", get(list_devices))
        .route("/api/v1/admin/devices/{id}", get(show_device))
        .route("/api/v1/admin/devices/{id}/accept", post(accept))
        .route("/api/v1/admin/devices/{id}/reject", post(reject))
        .route("/api/v1/admin/devices/{id}/revoke", post(revoke))
        .route("/api/v1/admin/devices/{id}/tags", post(tags))
        .route("/api/v1/admin/devices/{id}/pin", post(pin))
        .route("/api/v1/admin/devices/{id}/pin-apps", post(pin_apps))
        .route("/api/v1/admin/devices/{id}/logs", get(device_logs))
        .route(
            "/api/v1/admin/enrollment-keys",
            get(list_enrollment_keys).post(create_enrollment_key),
        )
        .route(
            "/api/v1/admin/enrollment-keys/{id}/revoke",
            post(revoke_enrollment_key),
        )
        .route("/api/v1/admin/keys", get(list_keys).post(add_key))
        .route(
            "/api/v1/admin/releases",
            get(list_releases)
                .post(upload_release)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/admin/app-releases",
            get(list_app_releases).post(upload_app_release),
        )
        .route("/api/v1/admin/app-releases/{id}", get(show_app_release))
        .route(
            "/api/v1/admin/rollouts",
            get(list_rollouts).post(create_rollout),
        )
        .route("/api/v1/admin/rollouts/{id}", get(show_rollout))
        .route(
            "/api/v1/admin/rollouts/{id}/{action}",
            post(control_rollout),
        )
        .route("/api/v1/admin/audit", get(list_audit))
}

async fn whoami(admin: Admin) -> Json<WhoAmI> {
    Json(WhoAmI {
        admin: admin.name,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

const DEVICE_SELECT: &str = "SELECT d.*, t.version AS target_version, p.version AS pinned_version, \
     ta.version AS target_app_version, pa.version AS pinned_app_version \
     FROM devices d LEFT JOIN releases t ON t.id = d.target_release_id \
     LEFT JOIN releases p ON p.id = d.pinned_release_id \
     LEFT JOIN app_releases ta ON ta.id = d.target_app_release_id \
     LEFT JOIN app_releases pa ON pa.id = d.pinned_app_release_id";

pub fn device_from_row(st: &AppState, r: &sqlx::any::AnyRow) -> ApiResult<Device> {
    let status: String = r.try_get("status")?;
    let last_seen: Option<i64> = r.try_get("last_seen")?;
    let online_ms = 3 * st.cfg.poll_interval.as_millis() as i64;
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

pub async fn query_devices(st: &AppState, f: &DeviceFilter) -> ApiResult<Vec<Device>> {
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
    // Without filters applied below, the database stops at the limit.
    if f.tag.is_none() && f.online.is_none() && f.q.is_none() {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut q = sqlx::query(&sql);
    for a in &args {
        q = q.bind(a);
    }
    let rows = q.fetch_all(&st.db.read).await?;
    let mut out = Vec::new();
    for r in &rows {
        let d = device_from_row(st, r)?;
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
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

async fn list_devices(
    State(st): State<AppState>,
    _admin: Admin,
    Query(f): Query<DeviceFilter>,
) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(query_devices(&st, &f).await?))
}

pub async fn load_device(st: &AppState, id: &str) -> ApiResult<Device> {
    let r = sqlx::query(&format!("{DEVICE_SELECT} WHERE d.id = $1"))
        .bind(id)
        .fetch_optional(&st.db.read)
        .await?
        .ok_or_else(|| unknown_device(id))?;
    device_from_row(st, &r)
}

fn unknown_device(id: &str) -> ApiErr {
    ApiErr::not_found(
        "unknown_device",
        format!("no device {id} (otter devices ls)"),
    )
}

pub async fn audit_for(st: &AppState, subject: &str, limit: i64) -> ApiResult<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT at, actor, action, subject, detail FROM audit WHERE subject = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(subject)
    .bind(limit)
    .fetch_all(&st.db.read)
    .await?;
    rows.iter().map(audit_from_row).collect()
}

fn audit_from_row(r: &sqlx::any::AnyRow) -> ApiResult<AuditEntry> {
    Ok(AuditEntry {
        at_ms: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
    })
}

async fn show_device(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
    let device = load_device(&st, &id).await?;
    let history = audit_for(&st, &format!("device:{id}"), 200).await?;
    Ok(Json(DeviceDetail { device, history }))
}

/// Moves a device between statuses; revoking or rejecting also revokes its tokens.
async fn set_status(
    st: &AppState,
    admin: &Admin,
    id: &str,
    from: &[&str],
    to: &str,
) -> ApiResult<Json<Device>> {
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let status: String = sqlx::query("SELECT status FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| unknown_device(id))?
        .try_get("status")?;
    if !from.contains(&status.as_str()) {
        return Err(ApiErr::conflict(
            "bad_state",
            format!(
                "device {id} is {status}; this needs it {}",
                from.join(" or ")
            ),
        ));
    }
    sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
        .bind(to)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if to != "accepted" {
        sqlx::query(
            "UPDATE device_tokens SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    audit(
        &mut *tx,
        &admin.actor(),
        &format!("device_{to}"),
        &format!("device:{id}"),
        &format!("{status} → {to}"),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(load_device(st, id).await?))
}

async fn accept(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Device>> {
    set_status(
        &st,
        &admin,
        &id,
        &["pending", "rejected", "revoked"],
        "accepted",
    )
    .await
}

async fn reject(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Device>> {
    set_status(
        &st,
        &admin,
        &id,
        &["pending", "accepted", "revoked"],
        "rejected",
    )
    .await
}

async fn revoke(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Device>> {
    set_status(&st, &admin, &id, &["accepted"], "revoked").await
}

async fn tags(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<TagChange>,
) -> ApiResult<Json<Device>> {
    for t in change.add.iter().chain(&change.remove) {
        check_name_chars("tag", t)?;
    }
    let mut tx = st.db.write.begin().await?;
    let current: String = sqlx::query("SELECT tags FROM devices WHERE id = $1")
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| unknown_device(&id))?
        .try_get("tags")?;
    let mut set: std::collections::BTreeSet<String> = current
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    for t in &change.remove {
        set.remove(t);
    }
    set.extend(change.add.iter().cloned());
    if set.len() > 64 {
        return Err(ApiErr::bad_request(
            "too_many_tags",
            "at most 64 tags per device",
        ));
    }
    let joined: Vec<String> = set.into_iter().collect();
    let stored = if joined.is_empty() {
        String::new()
    } else {
        format!(",{},", joined.join(","))
    };
    sqlx::query("UPDATE devices SET tags = $1 WHERE id = $2")
        .bind(&stored)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut *tx,
        &admin.actor(),
        "device_tags",
        &format!("device:{id}"),
        &format!("tags: {}", joined.join(", ")),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(load_device(&st, &id).await?))
}

async fn pin(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PinRequest>,
) -> ApiResult<Json<Device>> {
    let device = load_device(&st, &id).await?;
    let release = match &req.release {
        None => None,
        Some(r) => {
            let (rid, version, compatible) = rollouts::resolve_release(&st, r).await?;
            if compatible != device.compatible {
                return Err(ApiErr::bad_request(
                    "incompatible_board",
                    format!(
                        "release {version} is for {compatible}; device {id} is {}",
                        device.compatible
                    ),
                ));
            }
            Some((rid, version))
        }
    };
    let mut tx = st.db.write.begin().await?;
    sqlx::query("UPDATE devices SET pinned_release_id = $1 WHERE id = $2")
        .bind(release.as_ref().map(|r| r.0.clone()))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    rollouts::refresh_target(&mut tx, &id).await?;
    let detail = match &release {
        Some((rid, v)) => format!("pinned to {v} ({rid})"),
        None => "unpinned".into(),
    };
    audit(
        &mut *tx,
        &admin.actor(),
        "device_pin",
        &format!("device:{id}"),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(load_device(&st, &id).await?))
}

async fn pin_apps(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PinAppsRequest>,
) -> ApiResult<Json<Device>> {
    load_device(&st, &id).await?;
    let release = match &req.app_release {
        None => None,
        Some(r) => Some(app_releases::load(&st, r).await?),
    };
    let mut tx = st.db.write.begin().await?;
    sqlx::query("UPDATE devices SET pinned_app_release_id = $1 WHERE id = $2")
        .bind(release.as_ref().map(|r| r.id.clone()))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    rollouts::refresh_target(&mut tx, &id).await?;
    let detail = match &release {
        Some(r) => format!("apps pinned to {} ({})", r.version, r.id),
        None => "apps unpinned".into(),
    };
    audit(
        &mut *tx,
        &admin.actor(),
        "device_pin_apps",
        &format!("device:{id}"),
        &detail,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(load_device(&st, &id).await?))
}

async fn list_app_releases(
    State(st): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<Vec<AppRelease>>> {
    Ok(Json(app_releases::list(&st).await?))
}

async fn upload_app_release(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(req): JsonBody<UploadAppRelease>,
) -> ApiResult<(StatusCode, Json<AppRelease>)> {
    let r = app_releases::upload(&st, &admin.actor(), req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn show_app_release(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<AppRelease>> {
    Ok(Json(app_releases::load(&st, &id).await?))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    /// Only lines with an id above this (for following).
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn query_logs(
    st: &AppState,
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
            .fetch_all(&st.db.read)
            .await?,
            None => {
                let mut rows = sqlx::query(
                    "SELECT * FROM device_logs WHERE device_id = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(id)
                .bind(limit)
                .fetch_all(&st.db.read)
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

async fn device_logs(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<StoredLogEntry>>> {
    load_device(&st, &id).await?;
    Ok(Json(
        query_logs(&st, &id, q.after, q.limit.unwrap_or(200)).await?,
    ))
}

async fn list_enrollment_keys(
    State(st): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<Vec<EnrollmentKey>>> {
    let rows = sqlx::query(
        "SELECT id, name, created_at, revoked_at FROM enrollment_keys ORDER BY created_at",
    )
    .fetch_all(&st.db.read)
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
    Ok(Json(out))
}

async fn create_enrollment_key(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(req): JsonBody<CreateEnrollmentKey>,
) -> ApiResult<(StatusCode, Json<EnrollmentKey>)> {
    check_name_chars("name", &req.name)?;
    let id = auth::new_id();
    let key = auth::new_secret("otk");
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    sqlx::query(
        "INSERT INTO enrollment_keys (id, name, key_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(&req.name)
    .bind(auth::hash_secret(&key))
    .bind(now)
    .bind(admin.actor())
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        &admin.actor(),
        "enrollment_key_created",
        &format!("enrollment_key:{id}"),
        &req.name,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentKey {
            id,
            name: req.name,
            created_at_ms: now,
            revoked_at_ms: None,
            key: Some(key),
        }),
    ))
}

async fn revoke_enrollment_key(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let mut tx = st.db.write.begin().await?;
    let n = sqlx::query(
        "UPDATE enrollment_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(&id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(ApiErr::not_found(
            "unknown_enrollment_key",
            format!("no unrevoked enrollment key {id}"),
        ));
    }
    audit(
        &mut *tx,
        &admin.actor(),
        "enrollment_key_revoked",
        &format!("enrollment_key:{id}"),
        "",
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<TrustedKey>>> {
    let mut out = Vec::new();
    for k in &st.flag_keys {
        out.push(TrustedKey {
            fingerprint: k.fingerprint(),
            pem: k
                .to_pem()
                .map_err(|e| ApiErr::internal("encoding a key", e))?,
            added_at_ms: 0,
            source: "flag".into(),
        });
    }
    let rows = sqlx::query("SELECT * FROM trusted_keys ORDER BY added_at")
        .fetch_all(&st.db.read)
        .await?;
    for r in rows {
        out.push(TrustedKey {
            fingerprint: r.try_get("fingerprint")?,
            pem: r.try_get("pem")?,
            added_at_ms: r.try_get("added_at")?,
            source: r.try_get("source")?,
        });
    }
    Ok(Json(out))
}

async fn add_key(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(req): JsonBody<AddTrustedKey>,
) -> ApiResult<(StatusCode, Json<TrustedKey>)> {
    let key = releases::parse_public_key_pem(&req.pem)
        .map_err(|e| ApiErr::bad_request("invalid_key", format!("pem: {e}")))?;
    let pem = key
        .to_pem()
        .map_err(|e| ApiErr::internal("encoding a key", e))?;
    let fp = key.fingerprint();
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let n = sqlx::query(
        "INSERT INTO trusted_keys (fingerprint, pem, added_at, source) VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(&fp)
    .bind(&pem)
    .bind(now)
    .bind(admin.actor())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(ApiErr::conflict(
            "key_exists",
            format!("key {fp} is already trusted"),
        ));
    }
    audit(
        &mut *tx,
        &admin.actor(),
        "key_trusted",
        &format!("key:{fp}"),
        "",
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(TrustedKey {
            fingerprint: fp,
            pem,
            added_at_ms: now,
            source: admin.actor(),
        }),
    ))
}

async fn list_releases(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<Release>>> {
    Ok(Json(releases::list(&st).await?))
}

async fn upload_release(
    State(st): State<AppState>,
    admin: Admin,
    body: Body,
) -> ApiResult<(StatusCode, Json<Release>)> {
    let r = releases::upload(&st, &admin.actor(), body).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn list_rollouts(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<Rollout>>> {
    Ok(Json(rollouts::list(&st).await?))
}

async fn create_rollout(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(spec): JsonBody<CreateRollout>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    let id = rollouts::create(&st, &admin.actor(), spec).await?;
    Ok((StatusCode::CREATED, Json(rollouts::load(&st, &id).await?)))
}

async fn show_rollout(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    Ok(Json(rollouts::load(&st, &id).await?))
}

async fn control_rollout(
    State(st): State<AppState>,
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<Rollout>> {
    let Some(action) = RolloutAction::parse(&action) else {
        // An unknown rollout is reported first, as for a known action.
        rollouts::ensure_exists(&st, &id).await?;
        return Err(ApiErr::not_found(
            "unknown_action",
            format!("{action}: use pause, resume or abort"),
        ));
    };
    rollouts::control(&st, &admin.actor(), &id, action).await?;
    Ok(Json(rollouts::load(&st, &id).await?))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    subject: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    State(st): State<AppState>,
    _admin: Admin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let rows = match &q.subject {
        Some(s) => return Ok(Json(audit_for(&st, s, limit).await?)),
        None => {
            sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&st.db.read)
                .await?
        }
    };
    Ok(Json(
        rows.iter().map(audit_from_row).collect::<ApiResult<_>>()?,
    ))
}
