//! One API call as data, and the decoding of its answer.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    /// `Content-Type: application/json`.
    Json(String),
}

/// What a transport hands back to [`Call::decode`].
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub etag: Option<String>,
    /// [`otter_proto::HEADER_POLL_INTERVAL`], seconds.
    pub poll_interval: Option<u64>,
}

/// One call whose answer decodes into `T`.
#[derive(Debug, Clone)]
pub struct Call<T> {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/admin/devices?limit=10`.
    pub path: String,
    pub body: Body,
    /// Sent as `If-None-Match`.
    pub if_none_match: Option<String>,
    /// `304 Not Modified` is an answer (`None`), not an error.
    pub(crate) not_modified_ok: bool,
    /// Names the call in errors instead of `METHOD path`.
    pub(crate) name: Option<String>,
    _answer: PhantomData<fn() -> T>,
}

impl<T> Call<T> {
    pub fn get(path: impl Into<String>) -> Self {
        Call {
            method: Method::Get,
            path: path.into(),
            body: Body::Empty,
            if_none_match: None,
            not_modified_ok: false,
            name: None,
            _answer: PhantomData,
        }
    }

    pub fn post(path: impl Into<String>, body: &impl Serialize) -> Self {
        // Serialising the protocol's own types cannot fail (string keys, no custom impls).
        let json = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
        Call {
            method: Method::Post,
            path: path.into(),
            body: Body::Json(json),
            if_none_match: None,
            not_modified_ok: false,
            name: None,
            _answer: PhantomData,
        }
    }

    /// Names the call in errors: `GET /api/v1/…`.
    pub fn what(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{} {}", self.method.as_str(), self.path),
        }
    }

    /// Turns a server error answer into an [`Error`].
    pub fn error(&self, status: u16, body: &str) -> Error {
        match serde_json::from_str::<otter_proto::ApiError>(body) {
            Ok(error) => Error::Api {
                what: self.what(),
                status,
                error,
            },
            Err(_) => Error::Http {
                what: self.what(),
                status,
                body: body.to_owned(),
            },
        }
    }
}

impl<T: DeserializeOwned> Call<T> {
    /// Decodes the answer (`url`: the server, for the message of an unexpected answer).
    pub fn decode(&self, a: &Answer, url: &str) -> Result<T, Error> {
        if a.status >= 400 {
            return Err(self.error(a.status, &a.body));
        }
        // An empty body (`204`, `304`) reads as JSON `null`: `()` or `None`.
        let text = if a.body.is_empty() || (a.status == 304 && self.not_modified_ok) {
            "null"
        } else {
            &a.body
        };
        serde_json::from_str(text).map_err(|e| Error::Decode {
            what: self.what(),
            url: url.to_owned(),
            message: format!("{e}: {}", truncate(&a.body)),
        })
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_answers_and_errors() {
        let c: Call<Option<u32>> = Call::get("/x");
        let ok = |status, body: &str| Answer {
            status,
            body: body.into(),
            ..Default::default()
        };
        assert_eq!(c.decode(&ok(200, "7"), "u").unwrap(), Some(7));
        assert_eq!(c.decode(&ok(204, ""), "u").unwrap(), None);
        let e = c
            .decode(
                &ok(404, r#"{"error":"unknown_device","message":"no device x"}"#),
                "u",
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "GET /x: no device x (404 unknown_device)");
        assert_eq!(e.status(), Some(404));
        let e = c.decode(&ok(502, "bad gateway"), "u").unwrap_err();
        assert_eq!(e.to_string(), "GET /x: HTTP 502: bad gateway");
        assert!(matches!(
            c.decode(&ok(200, "{"), "u"),
            Err(Error::Decode { .. })
        ));
    }
}
