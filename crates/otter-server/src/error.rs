//! API errors: every failure answers with a status and a JSON [`otter_proto::ApiError`] naming
//! the problem. Server-side faults are logged with their cause and answered with a short message.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use otter_proto::ApiError;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct ApiErr {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiErr>;

impl ApiErr {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiErr {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// A fault of the server (database, storage): logged in full, answered with 500.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed on the server; see the server log"),
        )
    }
}

impl From<sqlx::Error> for ApiErr {
    fn from(e: sqlx::Error) -> Self {
        ApiErr::internal("database query", e)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl std::fmt::Display for ApiErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

/// `axum::Json` whose rejections are JSON [`ApiError`]s that say what is wrong with the body.
/// Every body is a JSON object: serde would also read a struct from an array of its fields
/// in order (`[]` for a struct whose fields all have defaults), which is refused.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = match Bytes::from_request(Request::from_parts(parts.clone(), body), state).await
        {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large(rej.status()));
            }
            Err(rej) => return Err(ApiErr::new(rej.status(), "invalid_body", rej.body_text())),
        };
        let array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let req = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
        match Json::<T>::from_request(req, state).await {
            Ok(_) if array => Err(ApiErr::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the JSON body must be an object, not an array",
            )),
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rej @ JsonRejection::JsonDataError(_)) => integral_floats_as_integers(&bytes)
                .and_then(|v| serde_json::from_value(v).ok())
                .map(JsonBody)
                .ok_or_else(|| json_rejection(rej)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

/// The body with every number that has a zero fraction (`5.0`) written as an integer, if it
/// has any: JSON (and JSON Schema, hence `/api/openapi.json`) does not tell `5.0` from `5`, but
/// serde refuses `5.0` for an integer field.
fn integral_floats_as_integers(bytes: &[u8]) -> Option<serde_json::Value> {
    use serde_json::Value;
    fn walk(v: &mut Value) -> bool {
        match v {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                // Exactly representable integers only (|f| < 2^53).
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    *v = Value::from(f as i64);
                    true
                } else {
                    false
                }
            }
            Value::Array(a) => each(a.iter_mut()),
            Value::Object(o) => each(o.values_mut()),
            _ => false,
        }
    }
    // Every element, not only up to the first changed one.
    fn each<'a>(items: impl Iterator<Item = &'a mut Value>) -> bool {
        let mut changed = false;
        for x in items {
            changed |= walk(x);
        }
        changed
    }
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut v).then_some(v)
}

fn json_rejection(rej: JsonRejection) -> ApiErr {
    let status = rej.status();
    let text = rej.body_text();
    match rej {
        JsonRejection::JsonDataError(_) => ApiErr::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the JSON body does not match the expected shape: {text}"),
        ),
        JsonRejection::JsonSyntaxError(_) => ApiErr::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {text}"),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiErr::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "send the body with Content-Type: application/json",
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => too_large(status),
        _ => ApiErr::new(status, "invalid_body", text),
    }
}

fn too_large(status: StatusCode) -> ApiErr {
    ApiErr::new(
        status,
        "body_too_large",
        format!(
            "the body is larger than {} bytes; send smaller batches",
            otter_proto::MAX_JSON_BODY
        ),
    )
}
