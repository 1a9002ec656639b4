//! The HTTP layer: routes, extractors and pages over the domain modules. A device protocol is
//! one module here (today `device`, Otter's own); it registers its routes in [`router`].

pub mod admin;
pub mod conn;
pub mod dashboard;
pub mod device;
pub mod extract;
pub mod openapi;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::AppState;
use crate::error::ApiErr;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(device::routes())
        .merge(admin::routes())
        .merge(dashboard::routes())
        .route("/api/openapi.json", axum::routing::get(openapi::handler))
        .fallback(|| async {
            ApiErr::not_found("not_found", "no such endpoint (see /api/openapi.json)")
        })
        .layer(DefaultBodyLimit::max(otter_proto::MAX_JSON_BODY))
        .with_state(state)
}
