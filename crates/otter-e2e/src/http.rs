//! A small HTTP/1.1 file server for tests (GET/HEAD, single byte ranges).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How long a kept-alive connection may be idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_HEADER_BYTES: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// The request target as sent (with any query).
    pub target: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    pub status: u16,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    bytes_served: AtomicU64,
    /// Bytes per second per response; 0 = unlimited.
    throttle: AtomicU64,
    /// Close each response's connection after this many body bytes; u64::MAX = never.
    cut_after: AtomicU64,
    requests: Mutex<Vec<RequestRecord>>,
}

/// Serves the files of a directory on `127.0.0.1:port` (the guest reaches it as
/// `http://10.0.2.2:port/`). GET and HEAD; one `Range: bytes=a-b`, `a-` or `-n` gives 206 with
/// `Content-Range`; other methods 405; missing files and any path leaving the directory 404.
/// Stopped when dropped.
#[derive(Debug)]
pub struct HttpServer {
    pub port: u16,
    root: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Start serving `dir` on 127.0.0.1 with a free port.
    pub fn serve_dir(dir: impl AsRef<Path>) -> Result<HttpServer> {
        let root = std::fs::canonicalize(dir.as_ref())
            .with_context(|| format!("HTTP server root {}", dir.as_ref().display()))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = listener
            .local_addr()
            .context("reading the bound port")?
            .port();
        let shared = Arc::new(Shared {
            cut_after: AtomicU64::new(u64::MAX),
            ..Shared::default()
        });
        let (sh, rt) = (shared.clone(), root.clone());
        let accept = std::thread::Builder::new()
            .name(format!("http-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (sh, rt) = (sh.clone(), rt.clone());
                    let _ = std::thread::Builder::new()
                        .name(format!("http-{port}-conn"))
                        .spawn(move || {
                            let _ = handle_connection(conn, &rt, &sh);
                        });
                }
            })
            .context("starting the HTTP accept thread")?;
        Ok(HttpServer {
            port,
            root,
            shared,
            accept: Some(accept),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// URL of `path` (relative to the root) as the guest sees it: `http://10.0.2.2:PORT/path`.
    pub fn guest_url(&self, path: &str) -> String {
        format!(
            "http://10.0.2.2:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// URL of `path` from the host: `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Response body bytes sent so far (all requests).
    pub fn bytes_served(&self) -> u64 {
        self.shared.bytes_served.load(Ordering::SeqCst)
    }

    /// Set the byte counter back to 0.
    pub fn reset_bytes_served(&self) {
        self.shared.bytes_served.store(0, Ordering::SeqCst);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Limit each response to about `bytes_per_sec` (None: unlimited), e.g. to make an install
    /// slow enough to cut the power in the middle.
    pub fn set_throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .throttle
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Drop the connection after `bytes` of each response body (None: never), to test resuming
    /// interrupted downloads.
    pub fn set_cut_after(&self, bytes: Option<u64>) {
        self.shared
            .cut_after
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    close: bool,
    range: Option<String>,
}

/// Read one request head; None at a clean end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    let mut total = 0;
    // Skip empty lines between requests (RFC 9112 2.2).
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if !line.trim().is_empty() {
            break;
        }
        if total > MAX_HEADER_BYTES {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(std::io::Error::other("bad request line"));
    };
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        close: version != "HTTP/1.1",
        range: None,
    };
    let mut body_len = 0u64;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        total += n;
        if n == 0 || total > MAX_HEADER_BYTES {
            return Err(std::io::Error::other("truncated or oversized request head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => req.range = Some(value.to_string()),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    req.close = true;
                } else if v.contains("keep-alive") {
                    req.close = false;
                }
            }
            "content-length" => body_len = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    if body_len > 0 {
        std::io::copy(&mut r.by_ref().take(body_len), &mut std::io::sink())?;
    }
    Ok(Some(req))
}

/// Resolve a request target to a file under `root`, refusing anything that leaves it.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let mut path = target;
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        path = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    let mut out = root.to_path_buf();
    for comp in Path::new(&decoded).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(c) => out.push(c),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    // Symlinks must not lead out either.
    let real = std::fs::canonicalize(&out).ok()?;
    real.starts_with(root).then_some(real)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// The outcome of a `Range` header against a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeOutcome {
    /// No usable range: send the whole file (200).
    Full,
    /// Send bytes `start..=end` (206).
    Partial(u64, u64),
    /// 416.
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(h) = header else {
        return RangeOutcome::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        // Several ranges: allowed to answer with the whole file.
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeOutcome::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            None => RangeOutcome::Full,
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial(len - n.min(len), len - 1),
        },
        // bytes=a-
        (false, true) => match num(a) {
            None => RangeOutcome::Full,
            Some(s) if s >= len => RangeOutcome::Unsatisfiable,
            Some(s) => RangeOutcome::Partial(s, len - 1),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeOutcome::Unsatisfiable
                } else {
                    RangeOutcome::Partial(s, e.min(len - 1))
                }
            }
            _ => RangeOutcome::Full,
        },
        (true, true) => RangeOutcome::Full,
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("txt") | Some("log") => "text/plain; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn handle_connection(conn: TcpStream, root: &Path, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(_) => {
                let _ = simple(&mut out, 400, true, &[]);
                break;
            }
        };
        let keep = respond(&mut out, &req, root, shared)?;
        if req.close || !keep {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

fn simple(
    out: &mut TcpStream,
    code: u16,
    close: bool,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let body = format!("{code} {}\n", status_text(code));
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        status_text(code),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "\r\n"
    });
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

/// Note a request (before answering, so a client that got the answer finds it listed).
fn record(shared: &Shared, req: &Request, status: u16) {
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(RequestRecord {
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.range.clone(),
            status,
        });
}

/// Answer one request; returns whether the connection may be kept.
fn respond(
    out: &mut TcpStream,
    req: &Request,
    root: &Path,
    shared: &Shared,
) -> std::io::Result<bool> {
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            record(shared, req, 405);
            simple(out, 405, req.close, &[("Allow", "GET, HEAD".into())])?;
            return Ok(true);
        }
    };
    let Some(path) = resolve(root, &req.target).filter(|p| p.is_file()) else {
        record(shared, req, 404);
        simple(out, 404, req.close, &[])?;
        return Ok(true);
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => {
            record(shared, req, 404);
            simple(out, 404, req.close, &[])?;
            return Ok(true);
        }
    };
    let len = file.metadata()?.len();
    let (code, start, count, content_range) = match parse_range(req.range.as_deref(), len) {
        RangeOutcome::Full => (200, 0, len, None),
        RangeOutcome::Partial(s, e) => (206, s, e - s + 1, Some(format!("bytes {s}-{e}/{len}"))),
        RangeOutcome::Unsatisfiable => {
            record(shared, req, 416);
            simple(
                out,
                416,
                req.close,
                &[("Content-Range", format!("bytes */{len}"))],
            )?;
            return Ok(true);
        }
    };
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {}\r\nContent-Length: {count}\r\nAccept-Ranges: bytes\r\n",
        status_text(code),
        content_type(&path)
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    if req.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    record(shared, req, code);
    out.write_all(head.as_bytes())?;
    if head_only {
        out.flush()?;
        return Ok(true);
    }

    file.seek(SeekFrom::Start(start))?;
    let cut_after = shared.cut_after.load(Ordering::SeqCst);
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < count {
        let rate = shared.throttle.load(Ordering::SeqCst);
        let mut want = ((count - sent) as usize).min(CHUNK);
        if rate > 0 {
            // About ten writes per second.
            want = want.min(((rate / 10).max(1)) as usize);
        }
        if cut_after != u64::MAX {
            if sent >= cut_after {
                out.flush()?;
                return Ok(false);
            }
            want = want.min((cut_after - sent) as usize);
        }
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            // The file shrank: the promised length cannot be kept.
            return Ok(false);
        }
        // Counted before writing so a client that has read the body sees it counted.
        shared.bytes_served.fetch_add(n as u64, Ordering::SeqCst);
        if let Err(e) = out.write_all(&buf[..n]) {
            shared.bytes_served.fetch_sub(n as u64, Ordering::SeqCst);
            return Err(e);
        }
        sent += n as u64;
        if rate > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    out.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_semantics() {
        use RangeOutcome::*;
        let r = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(r("bytes=0-4", 10), Partial(0, 4));
        assert_eq!(r("bytes=5-", 10), Partial(5, 9));
        assert_eq!(r("bytes=3-100", 10), Partial(3, 9));
        assert_eq!(r("bytes=-3", 10), Partial(7, 9));
        assert_eq!(r("bytes=-30", 10), Partial(0, 9));
        assert_eq!(r("bytes=9-9", 10), Partial(9, 9));
        assert_eq!(r("bytes=10-", 10), Unsatisfiable);
        assert_eq!(r("bytes=10-12", 10), Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), Full);
        assert_eq!(r("bytes=0-1,4-5", 10), Full);
        assert_eq!(r("items=0-1", 10), Full);
        assert_eq!(r("bytes=a-b", 10), Full);
        assert_eq!(r("bytes=+1-2", 10), Full);
    }

    #[test]
    fn path_resolution_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a b.bin"), b"x").unwrap();
        assert_eq!(
            resolve(&root, "/sub/a%20b.bin?x=1"),
            Some(root.join("sub/a b.bin"))
        );
        assert_eq!(
            resolve(&root, "http://10.0.2.2:8000/sub/a%20b.bin"),
            Some(root.join("sub/a b.bin"))
        );
        assert_eq!(resolve(&root, "/../etc/passwd"), None);
        assert_eq!(resolve(&root, "/sub/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(&root, "sub/a%20b.bin"), None);
        assert_eq!(resolve(&root, "/sub/%zz"), None);
        assert_eq!(resolve(&root, "/sub/a%00"), None);
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        assert_eq!(resolve(&root, "/escape/passwd"), None);
    }

    /// A raw HTTP response.
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Read one response from a kept-alive connection (`head`: no body follows).
    fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> Resp {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if !head {
            let n: usize = resp.header("content-length").unwrap().parse().unwrap();
            resp.body = vec![0; n];
            r.read_exact(&mut resp.body).unwrap();
        }
        resp
    }

    fn request(port: u16, raw: &str) -> Resp {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (&s).write_all(raw.as_bytes()).unwrap();
        let head = raw.starts_with("HEAD");
        read_response(&mut BufReader::new(s), head)
    }

    fn get(port: u16, path: &str, range: Option<&str>) -> Resp {
        let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
        request(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}Connection: close\r\n\r\n"),
        )
    }

    fn served_dir() -> (tempfile::TempDir, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("update.bin"), &data).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/manifest.json"), b"{}").unwrap();
        (d, data)
    }

    #[test]
    fn serves_files_and_ranges() {
        let (d, data) = served_dir();
        let srv = HttpServer::serve_dir(d.path()).unwrap();
        let p = srv.port;
        assert_eq!(
            srv.guest_url("/update.bin"),
            format!("http://10.0.2.2:{p}/update.bin")
        );

        let r = get(p, "/update.bin", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, data);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("content-length"), Some("200000"));

        let r = get(p, "/update.bin", Some("bytes=10-19"));
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[10..20]);
        assert_eq!(r.header("content-range"), Some("bytes 10-19/200000"));

        let r = get(p, "/update.bin", Some("bytes=199990-"));
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[199_990..]);
        assert_eq!(
            r.header("content-range"),
            Some("bytes 199990-199999/200000")
        );

        let r = get(p, "/update.bin", Some("bytes=-5"));
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[199_995..]);

        let r = get(p, "/update.bin", Some("bytes=200000-"));
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), Some("bytes */200000"));

        let r = get(p, "/sub/manifest.json", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{}");

        let expected = 200_000 + 10 + 10 + 5 + 2;
        assert_eq!(srv.bytes_served(), expected);

        let r = request(p, "HEAD /update.bin HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("200000"));
        assert_eq!(srv.bytes_served(), expected, "HEAD sends no body");

        let reqs = srv.requests();
        assert_eq!(reqs.len(), 7);
        assert_eq!(reqs[1].range.as_deref(), Some("bytes=10-19"));
        assert_eq!(reqs[1].status, 206);
        assert_eq!(reqs[6].method, "HEAD");
        srv.reset_bytes_served();
        assert_eq!(srv.bytes_served(), 0);
    }

    #[test]
    fn rejects_missing_traversal_and_other_methods() {
        let (d, _) = served_dir();
        let srv = HttpServer::serve_dir(d.path()).unwrap();
        let p = srv.port;
        assert_eq!(get(p, "/nope.bin", None).status, 404);
        assert_eq!(get(p, "/sub", None).status, 404);
        assert_eq!(get(p, "/../../etc/passwd", None).status, 404);
        assert_eq!(get(p, "/%2e%2e/%2e%2e/etc/passwd", None).status, 404);
        let r = request(
            p,
            "POST /update.bin HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        (&s).write_all(b"garbage\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut BufReader::new(s), false).status, 400);
    }

    #[test]
    fn keeps_connections_alive() {
        let (d, data) = served_dir();
        let srv = HttpServer::serve_dir(d.path()).unwrap();
        let s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for (a, b) in [(0usize, 99usize), (100, 199), (1000, 1999)] {
            (&s).write_all(
                format!("GET /update.bin HTTP/1.1\r\nRange: bytes={a}-{b}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let resp = read_response(&mut r, false);
            assert_eq!(resp.status, 206);
            assert_eq!(resp.body, &data[a..=b]);
        }
        assert_eq!(srv.bytes_served(), 1200);
    }

    #[test]
    fn cut_and_throttle() {
        let (d, data) = served_dir();
        let srv = HttpServer::serve_dir(d.path()).unwrap();
        srv.set_cut_after(Some(1000));
        let s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (&s).write_all(b"GET /update.bin HTTP/1.1\r\n\r\n").unwrap();
        let mut all = Vec::new();
        (&s).read_to_end(&mut all).unwrap();
        let body_at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            &all[body_at..],
            &data[..1000],
            "connection closed after 1000 bytes"
        );
        assert!(String::from_utf8_lossy(&all[..body_at]).contains("Content-Length: 200000"));
        srv.set_cut_after(None);

        srv.set_throttle(Some(20_000));
        let start = std::time::Instant::now();
        let r = get(srv.port, "/update.bin", Some("bytes=0-9999"));
        assert_eq!(r.body, &data[..10_000]);
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        srv.set_throttle(None);
    }

    #[test]
    fn stops_on_drop() {
        let (d, _) = served_dir();
        let srv = HttpServer::serve_dir(d.path()).unwrap();
        let port = srv.port;
        assert_eq!(get(port, "/update.bin", Some("bytes=0-0")).status, 206);
        drop(srv);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
