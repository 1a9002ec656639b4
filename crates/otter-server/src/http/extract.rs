//! Who is asking: the `Authorization: Bearer` token of an admin or a device.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::AppState;
use crate::auth::hash_secret;
use crate::error::{ApiErr, ApiResult};
use crate::rollouts::combined_etag;
use crate::store::tokens;

fn bearer(parts: &Parts) -> ApiResult<&str> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiErr::unauthorized(
                "missing_token",
                "send Authorization: Bearer TOKEN (a device token from enrollment, or an admin token)",
            )
        })?;
    h.to_str()
        .ok()
        .and_then(|s| {
            // Auth schemes are case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
            let (scheme, token) = s.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiErr::unauthorized(
                "bad_token",
                "the Authorization header must be: Bearer TOKEN",
            )
        })
}

/// An authenticated admin.
pub struct Admin {
    pub name: String,
}

impl Admin {
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let Some(row) = tokens::admin_token(&state.db, &hash_secret(token)).await? else {
            return Err(ApiErr::unauthorized(
                "unknown_token",
                "this admin token is not known to the server (otter login again)",
            ));
        };
        if row.revoked {
            return Err(ApiErr::unauthorized(
                "token_revoked",
                "this admin token was revoked",
            ));
        }
        Ok(Admin { name: row.name })
    }
}

/// An authenticated, accepted device, with what the poll path needs (one indexed query).
pub struct DeviceAuth {
    pub id: String,
    /// The `ETag` of the whole target state (OS and apps).
    pub target_etag: String,
    pub last_seen: Option<i64>,
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        let Some(row) = tokens::device_token(&state.db, &hash_secret(token)).await? else {
            return Err(ApiErr::unauthorized(
                "unknown_token",
                "this device token is not known to the server: enroll again",
            ));
        };
        if row.revoked {
            return Err(ApiErr::unauthorized(
                "token_revoked",
                "this device token was revoked: enroll again",
            ));
        }
        let status = row.status;
        if status != "accepted" {
            return Err(ApiErr::forbidden(
                "device_not_accepted",
                format!("this device is {status}: an admin must accept it"),
            ));
        }
        Ok(DeviceAuth {
            id: row.device_id,
            target_etag: combined_etag(&row.target_etag, &row.app_etag),
            last_seen: row.last_seen,
        })
    }
}

/// `axum::extract::Query` whose rejection is a JSON `ApiError` (400 `invalid_query`) naming
/// the parameter, instead of axum's `400 text/plain`.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiErr::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// `axum::extract::Path` whose rejection is a JSON `ApiError` (400 `invalid_path`).
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiErr::bad_request("invalid_path", e.body_text())),
        }
    }
}
