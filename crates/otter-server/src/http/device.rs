//! The device API (`/api/v1/device/…`, types in `otter-proto`, described in `docs/api.md`).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use otter_proto::{
    Challenge, EnrollRequest, EnrollResponse, HEADER_POLL_INTERVAL, LogAck, LogBatch, StateReport,
    paths,
};
use rand::Rng;

use super::extract::{DeviceAuth, Path};
use crate::AppState;
use crate::auth;
use crate::error::{ApiErr, ApiResult, JsonBody};
use crate::store::now_ms;
use crate::{enrollment, reports, targets};

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
    Ok(Json(enrollment::enroll(&st, req).await?))
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

async fn target(
    State(st): State<AppState>,
    dev: DeviceAuth,
    headers: HeaderMap,
) -> ApiResult<Response> {
    targets::seen(&st, &dev.id, dev.last_seen, now_ms()).await?;
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
    let (etag, body) = targets::target(&st, &dev.id, interval).await?;
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
    reports::record(&st, &dev.id, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs(
    State(st): State<AppState>,
    dev: DeviceAuth,
    JsonBody(batch): JsonBody<LogBatch>,
) -> ApiResult<Json<LogAck>> {
    let accepted = reports::store_logs(&st, &dev.id, &batch).await?;
    Ok(Json(LogAck { accepted }))
}

async fn artifact(
    State(st): State<AppState>,
    dev: DeviceAuth,
    Path(release_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (path, size) = targets::artifact(&st, &dev.id, &release_id).await?;
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
}
