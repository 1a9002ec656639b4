//! Carries [`Call`]s over `ureq` (blocking): the `otter` CLI and the device agent.

use std::path::Path;
use std::time::Duration;

use otter_proto::admin::Release;
use serde::de::DeserializeOwned;

use crate::{Answer, Body, Call, Error, Result};

/// A server and, once known, a bearer token (an admin's or a device's).
#[derive(Clone)]
pub struct Client {
    /// `http(s)://host:port`, no trailing `/`.
    pub url: String,
    pub token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// With a default agent (10 s to connect, no overall timeout: uploads may be long).
    pub fn new(url: &str, token: Option<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .build();
        Client::with_agent(url, token, agent)
    }

    /// With the caller's agent (timeouts, proxy, TLS roots, user agent).
    pub fn with_agent(url: &str, token: Option<String>, agent: ureq::Agent) -> Client {
        Client {
            url: url.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .set("Accept", "application/json");
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    /// Sends the call; the answer as it came (status, body, `ETag`, poll interval), error
    /// statuses included.
    pub fn answer<T>(&self, call: &Call<T>) -> Result<Answer> {
        let mut req = self.request(call.method.as_str(), &call.path);
        if let Some(e) = &call.if_none_match {
            req = req.set("If-None-Match", e);
        }
        let resp = match &call.body {
            Body::Json(b) => req.set("Content-Type", "application/json").send_string(b),
            Body::Empty => req.call(),
        };
        self.finish(&call.what(), resp)
    }

    fn finish(
        &self,
        what: &str,
        resp: std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<Answer> {
        let resp = match resp {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => {
                return Err(Error::Unreachable {
                    what: what.to_owned(),
                    url: self.url.clone(),
                    message: e.to_string(),
                });
            }
        };
        let status = resp.status();
        let etag = resp.header("ETag").map(str::to_owned);
        let poll_interval = resp
            .header(otter_proto::HEADER_POLL_INTERVAL)
            .and_then(|v| v.trim().parse().ok());
        let body = resp.into_string().map_err(|e| Error::Unreachable {
            what: what.to_owned(),
            url: self.url.clone(),
            message: format!("reading the answer: {e}"),
        })?;
        Ok(Answer {
            status,
            body,
            etag,
            poll_interval,
        })
    }

    /// Sends the call and decodes its answer.
    pub fn send<T: DeserializeOwned>(&self, call: &Call<T>) -> Result<T> {
        let a = self.answer(call)?;
        call.decode(&a, &self.url)
    }

    /// Sends the call; its decoded answer and the answer's headers.
    pub fn send_with_answer<T: DeserializeOwned>(&self, call: &Call<T>) -> Result<(T, Answer)> {
        let a = self.answer(call)?;
        Ok((call.decode(&a, &self.url)?, a))
    }

    /// `POST /api/v1/admin/releases` with a signed bundle file as the body.
    pub fn upload_release(&self, bundle: &Path) -> Result<Release> {
        let what = format!("uploading {}", bundle.display());
        let io = |source| Error::Io {
            what: what.clone(),
            source,
        };
        let f = std::fs::File::open(bundle).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let resp = self
            .request("POST", otter_proto::paths::admin::RELEASES)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string())
            .send(f);
        let a = self.finish(&what, resp)?;
        // The body is the file, so this call is decoded but not sent as a `Call`.
        let mut call: Call<Release> = Call::get(otter_proto::paths::admin::RELEASES);
        call.method = crate::Method::Post;
        call.name = Some(what);
        call.decode(&a, &self.url)
    }
}
