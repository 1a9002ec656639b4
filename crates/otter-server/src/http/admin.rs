//! The admin API (`/api/v1/admin/…`, `Authorization: Bearer ADMIN_TOKEN`), used by the CLI.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use otter_proto::admin::{
    AddTrustedKey, AppRelease, AuditEntry, CreateEnrollmentKey, CreateRollout, Device,
    DeviceDetail, DeviceStatus, EnrollmentKey, PinAppsRequest, PinRequest, Release, Rollout,
    RolloutAction, StoredLogEntry, TagChange, TrustedKey, UploadAppRelease, WhoAmI,
};
use serde::Deserialize;

use super::extract::{Admin, Path, Query};
use crate::AppState;
use crate::devices::{self, DeviceFilter, audit_for, load_device, query_devices, query_logs};
use crate::error::{ApiErr, ApiResult, JsonBody};
use crate::{app_releases, enrollment, releases, rollouts, store};

pub fn routes() -> Router<AppState> {
    use otter_proto::paths::admin::*;
    Router::new()
        .route(WHOAMI, get(whoami))
        .route(DEVICES, get(list_devices))
        .route(DEVICE, get(show_device))
        .route(DEVICE_ACCEPT, post(accept))
        .route(DEVICE_REJECT, post(reject))
        .route(DEVICE_REVOKE, post(revoke))
        .route(DEVICE_TAGS, post(tags))
        .route(DEVICE_PIN, post(pin))
        .route(DEVICE_PIN_APPS, post(pin_apps))
        .route(DEVICE_LOGS, get(device_logs))
        .route(
            ENROLLMENT_KEYS,
            get(list_enrollment_keys).post(create_enrollment_key),
        )
        .route(ENROLLMENT_KEY_REVOKE, post(revoke_enrollment_key))
        .route(KEYS, get(list_keys).post(add_key))
        .route(
            RELEASES,
            get(list_releases)
                .post(upload_release)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            APP_RELEASES,
            get(list_app_releases).post(upload_app_release),
        )
        .route(APP_RELEASE, get(show_app_release))
        .route(ROLLOUTS, get(list_rollouts).post(create_rollout))
        .route(ROLLOUT, get(show_rollout))
        .route(ROLLOUT_ACTION, post(control_rollout))
        .route(AUDIT, get(list_audit))
}

async fn whoami(admin: Admin) -> Json<WhoAmI> {
    Json(WhoAmI {
        admin: admin.name,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

async fn list_devices(
    State(st): State<AppState>,
    _admin: Admin,
    Query(f): Query<DeviceFilter>,
) -> ApiResult<Json<Vec<Device>>> {
    Ok(Json(query_devices(&st, &f).await?))
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

async fn accept(st: State<AppState>, admin: Admin, id: Path<String>) -> ApiResult<Json<Device>> {
    use DeviceStatus::*;
    change_status(st, admin, id, &[Pending, Rejected, Revoked], Accepted).await
}

async fn reject(st: State<AppState>, admin: Admin, id: Path<String>) -> ApiResult<Json<Device>> {
    use DeviceStatus::*;
    change_status(st, admin, id, &[Pending, Accepted, Revoked], Rejected).await
}

async fn revoke(st: State<AppState>, admin: Admin, id: Path<String>) -> ApiResult<Json<Device>> {
    use DeviceStatus::*;
    change_status(st, admin, id, &[Accepted], Revoked).await
}

/// An admin's status change of a device (allowed only from `from`), answered with the device.
async fn change_status(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    from: &[DeviceStatus],
    to: DeviceStatus,
) -> ApiResult<Json<Device>> {
    devices::set_status(&st, &admin.actor(), &id, from, to).await?;
    Ok(Json(load_device(&st, &id).await?))
}

async fn tags(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<TagChange>,
) -> ApiResult<Json<Device>> {
    devices::change_tags(&st, &admin.actor(), &id, &change).await?;
    Ok(Json(load_device(&st, &id).await?))
}

async fn pin(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PinRequest>,
) -> ApiResult<Json<Device>> {
    devices::pin(&st, &admin.actor(), &id, req.release.as_deref()).await?;
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
    devices::pin_apps(&st, &admin.actor(), &id, release.as_ref()).await?;
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
    Ok(Json(enrollment::list_keys(&st).await?))
}

async fn create_enrollment_key(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(req): JsonBody<CreateEnrollmentKey>,
) -> ApiResult<(StatusCode, Json<EnrollmentKey>)> {
    let key = enrollment::create_key(&st, &admin.actor(), req.name).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

async fn revoke_enrollment_key(
    State(st): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    enrollment::revoke_key(&st, &admin.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<TrustedKey>>> {
    Ok(Json(releases::list_trusted(&st).await?))
}

async fn add_key(
    State(st): State<AppState>,
    admin: Admin,
    JsonBody(req): JsonBody<AddTrustedKey>,
) -> ApiResult<(StatusCode, Json<TrustedKey>)> {
    let k = releases::add_trusted(&st, &admin.actor(), &req.pem).await?;
    Ok((StatusCode::CREATED, Json(k)))
}

async fn list_releases(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Vec<Release>>> {
    Ok(Json(releases::list(&st).await?))
}

async fn upload_release(
    State(st): State<AppState>,
    admin: Admin,
    body: Body,
) -> ApiResult<(StatusCode, Json<Release>)> {
    let r = releases::upload(&st, &admin.actor(), body.into_data_stream()).await?;
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
    Ok(Json(match &q.subject {
        Some(s) => audit_for(&st, s, limit).await?,
        None => store::audit_log::latest(&st.db, limit).await?,
    }))
}
