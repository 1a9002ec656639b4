//! Where bundle bytes come from: a local file, or an HTTP(S) URL read with range requests that
//! resume after a dropped connection.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// Retries after a failed HTTP request or a dropped connection, counted since the last retry
/// that made real progress (see [`PROGRESS_RESETS_RETRIES`]).
pub const HTTP_MAX_RETRIES: u32 = 5;
/// A connection that delivered at least this much before failing counts as progress: the retry
/// budget starts over, so a long download over a flaky link still completes, while a server that
/// fails every time stops us after [`HTTP_MAX_RETRIES`].
pub const PROGRESS_RESETS_RETRIES: u64 = 1024 * 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The first header request asks for this much; most manifests fit.
const HEADER_WINDOW: u64 = 64 * 1024;
const UNKNOWN_LEN: u64 = u64::MAX;

/// How to open a bundle source.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Sent as `Authorization: Bearer …` with every HTTP request (ignored for local files):
    /// a fleet server serves a release's artifact only to the devices it targets.
    pub bearer_token: Option<String>,
}

#[derive(Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Http(HttpSource),
}

#[derive(Clone)]
pub(crate) struct HttpSource {
    url: String,
    agent: ureq::Agent,
    /// Total file length as reported by the server, `UNKNOWN_LEN` until learned.
    total: Arc<AtomicU64>,
    /// Whether the server honours `Range`: `RANGES_UNKNOWN` until the first answer.
    ranges: Arc<AtomicU8>,
    /// `Authorization` header value sent with every request (a fleet server's device token).
    authorization: Option<String>,
}

const RANGES_UNKNOWN: u8 = 0;
const RANGES_YES: u8 = 1;
const RANGES_NO: u8 = 2;

pub(crate) fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

impl Source {
    pub fn with_options(source: &str, opts: &OpenOptions) -> Self {
        if is_url(source) {
            let agent = ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(15))
                // A stalled connection is treated like a dropped one and resumed.
                .timeout_read(Duration::from_secs(30))
                .user_agent(concat!("otter-bundle/", env!("CARGO_PKG_VERSION")))
                .build();
            Source::Http(HttpSource {
                url: source.to_owned(),
                agent,
                total: Arc::new(AtomicU64::new(UNKNOWN_LEN)),
                ranges: Arc::new(AtomicU8::new(RANGES_UNKNOWN)),
                authorization: opts.bearer_token.as_ref().map(|t| format!("Bearer {t}")),
            })
        } else {
            Source::File(PathBuf::from(source))
        }
    }

    /// For error messages: the path or URL.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Http(h) => h.url.clone(),
        }
    }

    /// Total bundle length, when known.
    pub fn len(&self) -> Result<Option<u64>> {
        match self {
            Source::File(p) => {
                let mut f = File::open(p).map_err(|e| Error::io("cannot open bundle", p, e))?;
                // seek works for block devices too, where metadata().len() is 0.
                let len = f
                    .seek(SeekFrom::End(0))
                    .map_err(|e| Error::io("cannot get size of bundle", p, e))?;
                Ok(Some(len))
            }
            Source::Http(h) => Ok(match h.total.load(Ordering::Relaxed) {
                UNKNOWN_LEN => None,
                n => Some(n),
            }),
        }
    }

    /// Whether ranges can be read without downloading what precedes them: always for files;
    /// for HTTP once the server answered a range request (`None` before).
    pub fn ranges_supported(&self) -> Option<bool> {
        match self {
            Source::File(_) => Some(true),
            Source::Http(h) => match h.ranges.load(Ordering::Relaxed) {
                RANGES_YES => Some(true),
                RANGES_NO => Some(false),
                _ => None,
            },
        }
    }

    /// A reader from byte 0, for parsing the header.
    pub fn header_reader(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Source::File(p) => {
                let f = File::open(p).map_err(|e| Error::io("cannot open bundle", p, e))?;
                Ok(Box::new(BufReader::with_capacity(64 * 1024, f)))
            }
            Source::Http(h) => Ok(Box::new(WindowedReader {
                src: h.clone(),
                pos: 0,
                window: HEADER_WINDOW,
                cur: None,
            })),
        }
    }

    /// A reader for bytes `start..end`. It ends early (returns 0) only if a local file is shorter;
    /// an HTTP source that cannot deliver the range yields an error.
    pub fn range_reader(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send>> {
        if start >= end {
            return Ok(Box::new(io::empty()));
        }
        match self {
            Source::File(p) => {
                let mut f = File::open(p).map_err(|e| Error::io("cannot open bundle", p, e))?;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| Error::io("cannot seek in bundle", p, e))?;
                Ok(Box::new(
                    BufReader::with_capacity(1024 * 1024, f).take(end - start),
                ))
            }
            Source::Http(h) => Ok(Box::new(HttpRangeReader::new(h.clone(), start, end, false))),
        }
    }
}

/// Reads an HTTP resource sequentially over `[pos, end)` with one ranged GET, re-requesting from
/// the first byte not yet returned whenever the connection fails.
pub(crate) struct HttpRangeReader {
    src: HttpSource,
    pos: u64,
    end: u64,
    /// Header reads stop at the end of the file instead of failing there.
    clamp_to_total: bool,
    body: Option<Box<dyn Read + Send + Sync>>,
    failures: u32,
    since_failure: u64,
}

enum Attempt {
    Retry(String),
    Fatal(Error),
}

impl HttpRangeReader {
    pub fn new(src: HttpSource, start: u64, end: u64, clamp_to_total: bool) -> Self {
        HttpRangeReader {
            src,
            pos: start,
            end,
            clamp_to_total,
            body: None,
            failures: 0,
            since_failure: 0,
        }
    }

    fn fatal(&self, reason: String) -> Attempt {
        Attempt::Fatal(Error::Http {
            url: self.src.url.clone(),
            offset: self.pos,
            reason,
        })
    }

    /// The file is shorter than the range we need.
    fn short_file(&mut self, total: u64) -> std::result::Result<(), Attempt> {
        self.src.total.store(total, Ordering::Relaxed);
        if self.clamp_to_total {
            self.end = self.end.min(total);
            Ok(())
        } else {
            // Absolute offsets; install maps these to payload offsets.
            Err(Attempt::Fatal(Error::Truncated {
                source_name: self.src.url.clone(),
                expected: self.end,
                got: total,
            }))
        }
    }

    fn connect(&mut self) -> std::result::Result<(), Attempt> {
        let range = format!("bytes={}-{}", self.pos, self.end - 1);
        let mut req = self
            .src
            .agent
            .get(&self.src.url)
            .set("Range", &range)
            // Transfer-level compression would make byte ranges meaningless.
            .set("Accept-Encoding", "identity");
        if let Some(auth) = &self.src.authorization {
            req = req.set("Authorization", auth);
        }
        let resp = req.call();
        match resp {
            Ok(resp) if resp.status() == 206 => {
                self.src.ranges.store(RANGES_YES, Ordering::Relaxed);
                let cr = resp.header("Content-Range").unwrap_or("").to_owned();
                let Some((start, total)) = parse_content_range(&cr) else {
                    return Err(
                        self.fatal(format!("206 response with unparsable Content-Range {cr:?}"))
                    );
                };
                if start != self.pos {
                    return Err(self.fatal(format!(
                        "asked for {range} but the server sent a range starting at {start}"
                    )));
                }
                if let Some(total) = total {
                    self.src.total.store(total, Ordering::Relaxed);
                    if total < self.end {
                        self.short_file(total)?;
                    }
                }
                self.body = Some(resp.into_reader());
                Ok(())
            }
            Ok(resp) if resp.status() == 200 => {
                // The server ignores Range and sends the whole file: skip what we already have.
                self.src.ranges.store(RANGES_NO, Ordering::Relaxed);
                let total = resp
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(total) = total {
                    self.src.total.store(total, Ordering::Relaxed);
                    if total < self.end {
                        self.short_file(total)?;
                    }
                }
                if self.pos > 0 {
                    tracing::warn!(url = %self.src.url, skip = self.pos, "server ignores Range requests; skipping bytes");
                }
                let mut body = resp.into_reader();
                match io::copy(&mut (&mut body).take(self.pos), &mut io::sink()) {
                    Ok(n) if n == self.pos => {}
                    Ok(n) => {
                        return Err(Attempt::Retry(format!(
                            "connection closed after {n} bytes while skipping to {} (server ignores Range)",
                            self.pos
                        )));
                    }
                    Err(e) => return Err(Attempt::Retry(e.to_string())),
                }
                self.body = Some(body);
                Ok(())
            }
            Ok(resp) => Err(self.fatal(format!(
                "unexpected HTTP status {} {} for a range request",
                resp.status(),
                resp.status_text()
            ))),
            Err(ureq::Error::Status(416, resp)) => {
                let cr = resp.header("Content-Range").unwrap_or("").to_owned();
                match cr
                    .strip_prefix("bytes */")
                    .and_then(|t| t.trim().parse().ok())
                {
                    Some(total) => {
                        self.short_file(total)?;
                        Ok(())
                    }
                    None => Err(self.fatal(format!(
                        "server says range {range} is not satisfiable (file shorter than expected?)"
                    ))),
                }
            }
            Err(ureq::Error::Status(code, resp)) if code == 408 || code == 429 || code >= 500 => {
                Err(Attempt::Retry(format!(
                    "HTTP {code} {}",
                    resp.status_text()
                )))
            }
            Err(ureq::Error::Status(code, resp)) => {
                Err(self.fatal(format!("HTTP {code} {}", resp.status_text())))
            }
            Err(ureq::Error::Transport(t)) => Err(Attempt::Retry(t.to_string())),
        }
    }

    /// Waits before the next attempt, or gives up.
    fn backoff(&mut self, reason: String) -> io::Result<()> {
        self.body = None;
        if self.since_failure >= PROGRESS_RESETS_RETRIES {
            self.failures = 0;
        }
        self.since_failure = 0;
        self.failures += 1;
        if self.failures > HTTP_MAX_RETRIES {
            return Err(Error::Http {
                url: self.src.url.clone(),
                offset: self.pos,
                reason: format!("{reason}; gave up after {HTTP_MAX_RETRIES} retries"),
            }
            .into_io());
        }
        let delay = BACKOFF_BASE * 2u32.pow(self.failures - 1);
        tracing::warn!(url = %self.src.url, offset = self.pos, attempt = self.failures, %reason, "HTTP transfer failed, resuming");
        std::thread::sleep(delay);
        Ok(())
    }
}

impl Read for HttpRangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.end || buf.is_empty() {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                match self.connect() {
                    Ok(()) => {}
                    Err(Attempt::Fatal(e)) => return Err(e.into_io()),
                    Err(Attempt::Retry(reason)) => self.backoff(reason)?,
                }
                continue;
            };
            let want = buf
                .len()
                .min((self.end - self.pos).min(usize::MAX as u64) as usize);
            match body.read(&mut buf[..want]) {
                Ok(0) => self.backoff(format!(
                    "connection closed by the server with {} bytes of the range still to come",
                    self.end - self.pos
                ))?,
                Ok(n) => {
                    self.pos += n as u64;
                    self.since_failure += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.backoff(e.to_string())?,
            }
        }
    }
}

/// Reads from byte 0 to the end of the file in growing ranged windows, so parsing a header does
/// not start a download of the whole payload.
struct WindowedReader {
    src: HttpSource,
    pos: u64,
    window: u64,
    cur: Option<HttpRangeReader>,
}

impl Read for WindowedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(cur) = self.cur.as_mut() {
                let n = cur.read(buf)?;
                if n > 0 {
                    self.pos += n as u64;
                    return Ok(n);
                }
                self.cur = None;
            }
            let total = self.src.total.load(Ordering::Relaxed);
            if self.pos >= total || buf.is_empty() {
                return Ok(0);
            }
            let end = self.pos.saturating_add(self.window).min(total);
            self.window = self.window.saturating_mul(4);
            self.cur = Some(HttpRangeReader::new(self.src.clone(), self.pos, end, true));
        }
    }
}

/// `bytes START-END/TOTAL` or `bytes START-END/*` → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, Some(100))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("garbage"), None);
    }

    #[test]
    fn url_detection() {
        assert!(is_url("http://x/y.otb"));
        assert!(is_url("HTTPS://x/y.otb"));
        assert!(!is_url("/tmp/http://x"));
        assert!(!is_url("bundle.otb"));
        assert!(!is_url("ht"));
    }
}
