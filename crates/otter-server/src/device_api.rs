//! The device API (`/api/v1/device/…`, types in `otter-proto`, described in `docs/api.md`).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use otter_proto::{
    Challenge, EnrollRequest, EnrollResponse, EnrollStatus, HEADER_POLL_INTERVAL, LogAck, LogBatch,
    MAX_LOG_BATCH, StateReport, TargetApps, TargetRelease, TargetState, paths,
};
use rand::Rng;
use sqlx::Row;

use crate::AppState;
use crate::auth::{self, DeviceAuth};
use crate::db::{audit, now_ms};
use crate::error::{ApiErr, ApiResult, JsonBody};
use crate::rollouts;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(paths::CHALLENGE, get(challenge))
        .route(paths::ENROLL, post(enroll))
        .route(paths::TARGET, get(target))
        .route(paths::REPORT, post(report))
        .route(paths::LOGS, post(logs))
        .route(
            &format!("{}/{{release_id}}", paths::ARTIFACTS),
            get(artifact),
        )
}

async fn challenge(State(st): State<AppState>) -> Json<Challenge> {
    Json(Challenge {
        challenge: auth::issue_challenge(&st.challenge_secret),
        expires_in_secs: auth::CHALLENGE_TTL_SECS,
    })
}

/// 1–128 characters of `[A-Za-z0-9._-]` (the bundle manifest's rule for `compatible`).
pub fn check_name_chars(field: &str, v: &str) -> ApiResult<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiErr::bad_request(
            "invalid_field",
            format!("{field} {v:?}: use 1-128 characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

pub fn check_len(field: &str, v: Option<&str>, max: usize) -> ApiResult<()> {
    match v {
        Some(s) if s.len() > max => Err(ApiErr::bad_request(
            "invalid_field",
            format!(
                "{field} is {} bytes long; at most {max} are allowed",
                s.len()
            ),
        )),
        _ => Ok(()),
    }
}

async fn enroll(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<JsonBody<EnrollRequest>, ApiErr>,
) -> ApiResult<Json<EnrollResponse>> {
    // Counted before the body is looked at, so garbage is rate-limited too.
    if st.enroll_limiter.check_key(&peer.ip()).is_err() {
        return Err(ApiErr::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many enrollment requests from {}: at most {} per minute; try again later",
                peer.ip(),
                st.cfg.enroll_rate_per_minute
            ),
        ));
    }
    let JsonBody(req) = body?;
    check_name_chars("compatible", &req.compatible)?;
    check_len("name", req.name.as_deref(), 128)?;
    check_len("os_version", req.os_version.as_deref(), 64)?;
    check_len("enrollment_key", req.enrollment_key.as_deref(), 128)?;
    auth::check_challenge(&st.challenge_secret, &req.challenge)?;
    let raw = req
        .verify_proof()
        .map_err(|e| ApiErr::bad_request("bad_proof", e.to_string()))?;
    let device_id = otter_proto::device_id_of(&raw);

    let mut key_ok = false;
    if let Some(key) = &req.enrollment_key {
        let row = sqlx::query("SELECT id, revoked_at FROM enrollment_keys WHERE key_hash = $1")
            .bind(auth::hash_secret(key))
            .fetch_optional(&st.db.read)
            .await?;
        match row {
            None => {
                return Err(ApiErr::forbidden(
                    "bad_enrollment_key",
                    "the enrollment key is not known to this server (check the device config)",
                ));
            }
            Some(r) if r.try_get::<Option<i64>, _>("revoked_at")?.is_some() => {
                return Err(ApiErr::forbidden(
                    "enrollment_key_revoked",
                    format!(
                        "the enrollment key {} was revoked by an admin",
                        r.try_get::<String, _>("id")?
                    ),
                ));
            }
            Some(_) => key_ok = true,
        }
    }

    let now = now_ms();
    let actor = format!("device:{device_id}");
    let subject = actor.clone();
    let mut tx = st.db.write.begin().await?;
    let existing = sqlx::query("SELECT status, public_key FROM devices WHERE id = $1")
        .bind(&device_id)
        .fetch_optional(&mut *tx)
        .await?;
    let status = match existing {
        None => {
            let status = if key_ok { "accepted" } else { "pending" };
            sqlx::query(
                "INSERT INTO devices (id, name, public_key, compatible, status, enrolled_at, target_etag, os_version, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&device_id)
            .bind(&req.name)
            .bind(&req.public_key)
            .bind(&req.compatible)
            .bind(status)
            .bind(now)
            .bind(rollouts::etag_for(None, None))
            .bind(&req.os_version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let how = if key_ok {
                "accepted with an enrollment key"
            } else {
                "waiting for an admin"
            };
            audit(
                &mut *tx,
                &actor,
                &format!("device_{status}"),
                &subject,
                &format!("enrolled ({how}), compatible {}", req.compatible),
            )
            .await?;
            status.to_owned()
        }
        Some(row) => {
            let pk: String = row.try_get("public_key")?;
            if pk != req.public_key {
                return Err(ApiErr::conflict(
                    "device_id_collision",
                    format!("device id {device_id} belongs to another key"),
                ));
            }
            let mut status: String = row.try_get("status")?;
            match status.as_str() {
                "rejected" => {
                    return Err(ApiErr::forbidden(
                        "device_rejected",
                        format!("device {device_id} was rejected by an admin"),
                    ));
                }
                "revoked" => {
                    return Err(ApiErr::forbidden(
                        "device_revoked",
                        format!(
                            "device {device_id} was revoked by an admin; an admin must accept it again"
                        ),
                    ));
                }
                "pending" if key_ok => {
                    status = "accepted".into();
                    audit(
                        &mut *tx,
                        &actor,
                        "device_accepted",
                        &subject,
                        "accepted with an enrollment key",
                    )
                    .await?;
                }
                _ => {}
            }
            sqlx::query(
                "UPDATE devices SET status = $1, name = COALESCE($2, name), compatible = $3, \
                 os_version = COALESCE($4, os_version), last_seen = $5 WHERE id = $6",
            )
            .bind(&status)
            .bind(&req.name)
            .bind(&req.compatible)
            .bind(&req.os_version)
            .bind(now)
            .bind(&device_id)
            .execute(&mut *tx)
            .await?;
            status
        }
    };
    let resp = if status == "accepted" {
        // A device that proves its key again (e.g. lost its token) gets a fresh token; the old
        // ones stop working.
        sqlx::query(
            "UPDATE device_tokens SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&device_id)
        .execute(&mut *tx)
        .await?;
        let token = auth::new_secret("otd");
        sqlx::query(
            "INSERT INTO device_tokens (token_hash, device_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(auth::hash_secret(&token))
        .bind(&device_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(&mut *tx, &actor, "token_issued", &subject, "").await?;
        EnrollResponse {
            device_id,
            status: EnrollStatus::Accepted,
            token: Some(token),
            retry_after_secs: None,
        }
    } else {
        EnrollResponse {
            device_id,
            status: EnrollStatus::Pending,
            token: None,
            retry_after_secs: Some(st.cfg.poll_interval.as_secs().clamp(5, 60)),
        }
    };
    tx.commit().await?;
    Ok(Json(resp))
}

fn poll_interval(st: &AppState) -> u64 {
    let base = st.cfg.poll_interval.as_secs_f64();
    let j = st.cfg.poll_jitter.clamp(0.0, 0.9);
    let f = if j > 0.0 {
        rand::thread_rng().gen_range(1.0 - j..=1.0 + j)
    } else {
        1.0
    };
    (base * f).round().max(1.0) as u64
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    v.split(',').any(|t| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t.trim_matches('"') == etag
    })
}

/// Seconds between `last_seen` updates on the read-only poll path: often enough for the
/// online/offline view, rare enough that polls stay reads.
const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

async fn target(
    State(st): State<AppState>,
    dev: DeviceAuth,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = now_ms();
    if dev
        .last_seen
        .is_none_or(|t| now - t > LAST_SEEN_RESOLUTION_MS)
    {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
            .bind(now)
            .bind(&dev.id)
            .execute(&st.db.write)
            .await?;
    }
    let interval = poll_interval(&st);
    let etag_header = HeaderValue::from_str(&format!("\"{}\"", dev.target_etag))
        .map_err(|e| ApiErr::internal("formatting the ETag", e))?;
    if etag_matches(&headers, &dev.target_etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag_header),
                (
                    header::HeaderName::from_static(HEADER_POLL_INTERVAL),
                    HeaderValue::from(interval),
                ),
            ],
        )
            .into_response());
    }
    let row = sqlx::query(
        "SELECT d.target_etag, d.app_etag, d.rollout_id, d.pinned_release_id, d.app_rollout_id, d.pinned_app_release_id, \
         r.id AS release_id, r.version, r.compatible, r.size, r.manifest_digest, r.object_path, \
         a.id AS app_release_id, a.version AS app_version, a.digest AS app_digest, a.set_json AS app_set \
         FROM devices d LEFT JOIN releases r ON r.id = d.target_release_id \
         LEFT JOIN app_releases a ON a.id = d.target_app_release_id WHERE d.id = $1",
    )
    .bind(&dev.id)
    .fetch_one(&st.db.read)
    .await?;
    let etag = rollouts::combined_etag(
        &row.try_get::<String, _>("target_etag")?,
        &row.try_get::<String, _>("app_etag")?,
    );
    let apps = match row.try_get::<Option<String>, _>("app_release_id")? {
        None => None,
        Some(id) => {
            let pinned: Option<String> = row.try_get("pinned_app_release_id")?;
            let set_json: String = row.try_get("app_set")?;
            Some(TargetApps {
                app_release_id: id,
                version: row.try_get("app_version")?,
                digest: row.try_get("app_digest")?,
                set: serde_json::from_str(&set_json)
                    .map_err(|e| ApiErr::internal("decoding an app set", e))?,
                rollout_id: if pinned.is_some() {
                    None
                } else {
                    row.try_get("app_rollout_id")?
                },
            })
        }
    };
    let release = match row.try_get::<Option<String>, _>("release_id")? {
        None => None,
        Some(id) => {
            let pinned: Option<String> = row.try_get("pinned_release_id")?;
            let rollout_id = if pinned.is_some() {
                None
            } else {
                row.try_get("rollout_id")?
            };
            let object = object_store::path::Path::from(row.try_get::<String, _>("object_path")?);
            let url = match st.store.presigned_url(&object).await {
                Ok(Some(u)) => u,
                Ok(None) => format!("{}/{id}", paths::ARTIFACTS),
                Err(e) => {
                    return Err(ApiErr::internal(
                        "presigning the artifact URL",
                        format!("{e:#}"),
                    ));
                }
            };
            Some(TargetRelease {
                url,
                release_id: id,
                version: row.try_get("version")?,
                compatible: row.try_get("compatible")?,
                size: row.try_get::<i64, _>("size")? as u64,
                manifest_digest: row.try_get("manifest_digest")?,
                rollout_id,
            })
        }
    };
    let body = TargetState {
        device_id: dev.id,
        release,
        poll_interval_secs: interval,
        apps,
    };
    Ok((
        [
            (
                header::ETAG,
                HeaderValue::from_str(&format!("\"{etag}\""))
                    .map_err(|e| ApiErr::internal("formatting the ETag", e))?,
            ),
            (
                header::HeaderName::from_static(HEADER_POLL_INTERVAL),
                HeaderValue::from(interval),
            ),
        ],
        Json(body),
    )
        .into_response())
}

async fn report(
    State(st): State<AppState>,
    dev: DeviceAuth,
    JsonBody(r): JsonBody<StateReport>,
) -> ApiResult<StatusCode> {
    check_len("os_version", r.os_version.as_deref(), 64)?;
    if let Some(s) = &r.booted_slot
        && s != "a"
        && s != "b"
    {
        return Err(ApiErr::bad_request(
            "invalid_field",
            format!("booted_slot {s:?}: must be \"a\" or \"b\""),
        ));
    }
    if let Some(u) = &r.update {
        check_len("update.version", Some(&u.version), 64)?;
        check_len("update.error", u.error.as_deref(), 4096)?;
        if u.progress.is_some_and(|p| p > 100) {
            return Err(ApiErr::bad_request(
                "invalid_field",
                "update.progress must be 0..=100",
            ));
        }
    }
    if r.rollbacks.len() > 100 {
        return Err(ApiErr::bad_request(
            "invalid_field",
            "at most 100 rollbacks in one report",
        ));
    }
    for rb in &r.rollbacks {
        check_len("rollbacks[].version", Some(&rb.version), 64)?;
        check_len("rollbacks[].reason", Some(&rb.reason), 4096)?;
    }
    if let Some(a) = &r.apps {
        check_apps_report(a)?;
    }
    let now = now_ms();
    let actor = format!("device:{}", dev.id);
    let apps_json = match &r.apps {
        Some(a) => {
            Some(serde_json::to_string(a).map_err(|e| ApiErr::internal("encoding the apps", e))?)
        }
        None => None,
    };
    let update_json = match &r.update {
        Some(u) => {
            Some(serde_json::to_string(u).map_err(|e| ApiErr::internal("encoding the update", e))?)
        }
        None => None,
    };
    let mut tx = st.db.write.begin().await?;
    let prev = sqlx::query("SELECT update_json, os_version, apps_json FROM devices WHERE id = $1")
        .bind(&dev.id)
        .fetch_one(&mut *tx)
        .await?;
    let prev_update: Option<otter_proto::UpdateReport> = prev
        .try_get::<Option<String>, _>("update_json")?
        .and_then(|s| serde_json::from_str(&s).ok());
    let prev_os: Option<String> = prev.try_get("os_version")?;
    let prev_apps: Option<otter_proto::AppsReport> = prev
        .try_get::<Option<String>, _>("apps_json")?
        .and_then(|s| serde_json::from_str(&s).ok());
    if apps_json.is_some() {
        sqlx::query("UPDATE devices SET apps_json = $1 WHERE id = $2")
            .bind(&apps_json)
            .bind(&dev.id)
            .execute(&mut *tx)
            .await?;
    }
    // History: a new app-release phase, and a change of what runs.
    if let Some(a) = &r.apps {
        let prev_apply = prev_apps.as_ref().and_then(|p| p.last_apply.as_ref());
        if let Some(l) = &a.last_apply
            && prev_apply.is_none_or(|p| p.app_release_id != l.app_release_id || p.phase != l.phase)
        {
            let detail = match &l.error {
                Some(e) => format!("apps {} {}: {e}", l.version, l.phase.as_str()),
                None => format!("apps {} {}", l.version, l.phase.as_str()),
            };
            audit(&mut *tx, &actor, "apps", &actor, &detail).await?;
        }
    }
    sqlx::query(
        "UPDATE devices SET os_version = COALESCE($1, os_version), booted_slot = COALESCE($2, booted_slot), \
         update_json = $3, health = COALESCE($4, health), uptime_secs = COALESCE($5, uptime_secs), \
         free_bytes = COALESCE($6, free_bytes), last_seen = $7, last_report = $7 WHERE id = $8",
    )
    .bind(&r.os_version)
    .bind(&r.booted_slot)
    .bind(&update_json)
    .bind(r.health.map(|h| h.as_str()))
    .bind(r.uptime_secs.map(|v| v as i64))
    .bind(r.free_bytes.map(|v| v as i64))
    .bind(now)
    .bind(&dev.id)
    .execute(&mut *tx)
    .await?;
    // History: what changed, not every report.
    if let Some(u) = &r.update {
        let changed = prev_update
            .as_ref()
            .is_none_or(|p| p.version != u.version || p.phase != u.phase);
        if changed {
            let detail = match &u.error {
                Some(e) => format!("{} {}: {e}", u.version, u.phase.as_str()),
                None => format!("{} {}", u.version, u.phase.as_str()),
            };
            audit(&mut *tx, &actor, "update", &actor, &detail).await?;
        }
    }
    if r.os_version.is_some() && r.os_version != prev_os {
        let detail = format!(
            "{} → {}",
            prev_os.as_deref().unwrap_or("?"),
            r.os_version.as_deref().unwrap_or("?")
        );
        audit(&mut *tx, &actor, "os_version", &actor, &detail).await?;
    }
    for rb in &r.rollbacks {
        audit(
            &mut *tx,
            &actor,
            "rollback",
            &actor,
            &format!("{}: {}", rb.version, rb.reason),
        )
        .await?;
    }
    rollouts::record_report(&mut tx, &dev.id, &r, now).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bounds on an apps report (the device's own data, stored as it came).
fn check_apps_report(a: &otter_proto::AppsReport) -> ApiResult<()> {
    check_len("apps.source", Some(&a.source), 16)?;
    check_len("apps.app_release_id", a.app_release_id.as_deref(), 64)?;
    check_len("apps.version", a.version.as_deref(), 64)?;
    if a.services.len() > 500 {
        return Err(ApiErr::bad_request(
            "invalid_field",
            "at most 500 services in apps.services",
        ));
    }
    for s in &a.services {
        check_len("apps.services[].app", Some(&s.app), 64)?;
        check_len("apps.services[].service", Some(&s.service), 64)?;
        check_len("apps.services[].image", Some(&s.image), 512)?;
        check_len("apps.services[].state", Some(&s.state), 32)?;
        check_len("apps.services[].health", Some(&s.health), 32)?;
    }
    if let Some(l) = &a.last_apply {
        check_len(
            "apps.last_apply.app_release_id",
            Some(&l.app_release_id),
            64,
        )?;
        check_len("apps.last_apply.version", Some(&l.version), 64)?;
        check_len("apps.last_apply.progress", l.progress.as_deref(), 1024)?;
        check_len("apps.last_apply.error", l.error.as_deref(), 4096)?;
        if l.apps.len() > 100 {
            return Err(ApiErr::bad_request(
                "invalid_field",
                "at most 100 entries in apps.last_apply.apps",
            ));
        }
        for o in &l.apps {
            check_len("apps.last_apply.apps[].app", Some(&o.app), 64)?;
            check_len("apps.last_apply.apps[].result", Some(&o.result), 32)?;
            check_len("apps.last_apply.apps[].reason", o.reason.as_deref(), 4096)?;
        }
    }
    Ok(())
}

async fn logs(
    State(st): State<AppState>,
    dev: DeviceAuth,
    JsonBody(batch): JsonBody<LogBatch>,
) -> ApiResult<Json<LogAck>> {
    if batch.entries.len() > MAX_LOG_BATCH {
        return Err(ApiErr::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} log entries in one batch; send at most {MAX_LOG_BATCH}",
                batch.entries.len()
            ),
        ));
    }
    for (i, e) in batch.entries.iter().enumerate() {
        check_len(&format!("entries[{i}].level"), Some(&e.level), 16)?;
        check_len(&format!("entries[{i}].source"), e.source.as_deref(), 128)?;
        check_len(&format!("entries[{i}].message"), Some(&e.message), 16384)?;
    }
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    for e in &batch.entries {
        sqlx::query(
            "INSERT INTO device_logs (device_id, ts, received_at, level, source, message) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&dev.id)
        .bind(e.ts_ms)
        .bind(now)
        .bind(&e.level)
        .bind(&e.source)
        .bind(&e.message)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Json(LogAck {
        accepted: batch.entries.len(),
    }))
}

async fn artifact(
    State(st): State<AppState>,
    dev: DeviceAuth,
    Path(release_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = sqlx::query(
        "SELECT r.object_path, r.size FROM devices d JOIN releases r ON r.id = d.target_release_id \
         WHERE d.id = $1 AND d.target_release_id = $2",
    )
    .bind(&dev.id)
    .bind(&release_id)
    .fetch_optional(&st.db.read)
    .await?;
    let Some(row) = row else {
        return Err(ApiErr::forbidden(
            "not_targeted",
            format!("release {release_id} is not targeted at device {}", dev.id),
        ));
    };
    let path = object_store::path::Path::from(row.try_get::<String, _>("object_path")?);
    let size = row.try_get::<i64, _>("size")? as u64;
    serve_object(&*st.store.store, &path, size, &headers).await
}

/// Serves an object with single-range support (`206`), or whole (`200`).
pub async fn serve_object(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    size: u64,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => {
            let parsed = http_range_header::parse_range_header(r)
                .and_then(|p| p.validate(size))
                .map_err(|e| {
                    ApiErr::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "bad_range",
                        format!("Range {r:?} for {size} bytes: {e}"),
                    )
                })?;
            // Several ranges: answer with the whole object, which HTTP allows.
            if parsed.len() == 1 {
                Some(parsed[0].clone())
            } else {
                None
            }
        }
    };
    let opts = GetOptions {
        range: range
            .as_ref()
            .map(|r| GetRange::Bounded(*r.start()..*r.end() + 1)),
        ..Default::default()
    };
    let got = store
        .get_opts(path, opts)
        .await
        .map_err(|e| ApiErr::internal(&format!("reading artifact {path}"), e))?;
    let stream = got.into_stream().map_err(std::io::Error::other);
    let body = Body::from_stream(stream);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    match range {
        Some(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start(), r.end()))
                    .map_err(|e| ApiErr::internal("formatting Content-Range", e))?,
            );
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(r.end() - r.start() + 1),
            );
        }
        None => {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_forms() {
        let mut h = HeaderMap::new();
        assert!(!etag_matches(&h, "abc"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(etag_matches(&h, "abc"));
        assert!(!etag_matches(&h, "abd"));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(etag_matches(&h, "abc"));
    }

    #[test]
    fn names() {
        assert!(check_name_chars("compatible", "qemu-x86_64").is_ok());
        assert!(check_name_chars("compatible", "").is_err());
        assert!(check_name_chars("compatible", "a b").is_err());
        assert!(check_len("x", Some("abc"), 2).is_err());
        assert!(check_len("x", None, 2).is_ok());
    }
}
