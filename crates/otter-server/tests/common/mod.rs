//! Test harness: a server on 127.0.0.1 (SQLite in a temporary folder, or a fresh PostgreSQL
//! database when `OTTER_TEST_POSTGRES` holds a URL), devices with Ed25519 keys, bundles.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use otter_proto::{Challenge, EnrollRequest, EnrollResponse};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub keys_dir: PathBuf,
    pub signing_key: otter_bundle::SigningKey,
    pub cfg: otter_server::Config,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A database URL for one test: SQLite in `dir`, or a new database on the PostgreSQL server of
/// `OTTER_TEST_POSTGRES`.
pub fn fresh_database(dir: &Path) -> String {
    match std::env::var("OTTER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            let name = format!("otter_test_{}", otter_server::auth::new_id());
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url)
                    .await
                    .expect("connecting to OTTER_TEST_POSTGRES");
                sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .unwrap();
            });
            // Replace the database name (the last path segment).
            let (base, _) = url
                .rsplit_once('/')
                .expect("postgres URL with a database name");
            format!("{base}/{name}")
        }
        _ => format!("sqlite://{}", dir.join("otter.db").display()),
    }
}

pub fn start(mut tweak: impl FnMut(&mut otter_server::Config)) -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("otter_server=info")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    otter_bundle::generate_keypair(&keys_dir, "release").unwrap();
    let signing_key = otter_bundle::SigningKey::load(&keys_dir.join("release.key")).unwrap();
    let mut cfg = otter_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: Some(fresh_database(dir.path())),
        storage: None,
        data_dir: dir.path().join("data"),
        trusted_keys: vec![keys_dir.join("release.pub")],
        poll_interval: Duration::from_secs(60),
        poll_jitter: 0.1,
        enroll_rate_per_minute: 10_000,
        rollout_tick: Duration::from_millis(100),
        max_bundle_size: 64 << 20,
        tls: None,
        ..Default::default()
    };
    tweak(&mut cfg);
    let kept = cfg.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(otter_server::Server::start(cfg)).unwrap();
    let addr = server.local_addr().unwrap();
    let admin_token = server
        .new_admin_token
        .clone()
        .expect("first start makes a token");
    rt.spawn(async move {
        server.serve().await.unwrap();
    });
    TestServer {
        base: format!("http://{addr}"),
        admin_token,
        dir,
        keys_dir,
        signing_key,
        cfg: kept,
        runtime: Some(rt),
    }
}

/// Another server process's worth of server (own runtime, own listener) on the same database and
/// artifact store as `first`. Gives its base URL; keep the runtime alive while using it.
pub fn start_peer(first: &TestServer) -> (String, tokio::runtime::Runtime) {
    let mut cfg = first.cfg.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(otter_server::Server::start(cfg)).unwrap();
    assert!(
        server.new_admin_token.is_none(),
        "the peer uses the shared admin token"
    );
    let base = format!("http://{}", server.local_addr().unwrap());
    rt.spawn(async move {
        server.serve().await.unwrap();
    });
    (base, rt)
}

/// status, headers we care about, JSON body (Null when empty).
pub struct Resp {
    pub status: u16,
    pub etag: Option<String>,
    pub poll_interval: Option<String>,
    pub content_range: Option<String>,
    pub bytes: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        if self.bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes))
            })
        }
    }
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    content_type: &str,
) -> Resp {
    let mut req = agent().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.set("Content-Type", content_type).send_bytes(b),
        None => req.call(),
    };
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = r.status();
    let etag = r.header("etag").map(str::to_owned);
    let poll_interval = r.header("otter-poll-interval").map(str::to_owned);
    let content_range = r.header("content-range").map(str::to_owned);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
    Resp {
        status,
        etag,
        poll_interval,
        content_range,
        bytes,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    pub fn admin_get(&self, path: &str) -> Resp {
        call(
            "GET",
            &self.url(path),
            Some(&self.admin_token),
            &[],
            None,
            "",
        )
    }
    pub fn admin_post(&self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        call(
            "POST",
            &self.url(path),
            Some(&self.admin_token),
            &[],
            Some(&b),
            "application/json",
        )
    }
    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        call(
            "POST",
            &self.url(path),
            token,
            &[],
            Some(&b),
            "application/json",
        )
    }
    pub fn enrollment_key(&self, name: &str) -> String {
        let r = self.admin_post(
            "/api/v1/admin/enrollment-keys",
            &serde_json::json!({ "name": name }),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
        r.json()["key"].as_str().unwrap().to_owned()
    }
    pub fn challenge(&self) -> String {
        let r = call(
            "GET",
            &self.url(otter_proto::paths::CHALLENGE),
            None,
            &[],
            None,
            "",
        );
        assert_eq!(r.status, 200);
        serde_json::from_slice::<Challenge>(&r.bytes)
            .unwrap()
            .challenge
    }
    pub fn enroll(&self, dev: &TestDevice, key: Option<&str>) -> Resp {
        let req = EnrollRequest::signed(
            &dev.key,
            &self.challenge(),
            &dev.compatible,
            Some(format!("dev-{}", dev.n)),
            key.map(str::to_owned),
            Some("1.0.0".into()),
        );
        self.post_json(
            otter_proto::paths::ENROLL,
            None,
            &serde_json::to_value(req).unwrap(),
        )
    }
    /// Enrolls with a fresh enrollment key; gives the device token.
    pub fn enrolled(&self, dev: &mut TestDevice, key: &str) {
        let r = self.enroll(dev, Some(key));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        let e: EnrollResponse = serde_json::from_slice(&r.bytes).unwrap();
        dev.id = e.device_id;
        dev.token = e.token.expect("accepted with a key");
    }
    pub fn poll(&self, dev: &TestDevice, etag: Option<&str>) -> Resp {
        let h;
        let headers: &[(&str, &str)] = match etag {
            Some(e) => {
                h = [("If-None-Match", e)];
                &h
            }
            None => &[],
        };
        call(
            "GET",
            &self.url(otter_proto::paths::TARGET),
            Some(&dev.token),
            headers,
            None,
            "",
        )
    }
    pub fn report(&self, dev: &TestDevice, body: &Value) -> Resp {
        self.post_json(otter_proto::paths::REPORT, Some(&dev.token), body)
    }
    /// A signed bundle of a small random root image.
    pub fn bundle(&self, version: &str, compatible: &str) -> PathBuf {
        make_bundle(self.dir.path(), version, compatible, &self.signing_key)
    }
    pub fn upload(&self, bundle: &Path) -> Resp {
        let b = std::fs::read(bundle).unwrap();
        call(
            "POST",
            &self.url("/api/v1/admin/releases"),
            Some(&self.admin_token),
            &[],
            Some(&b),
            "application/octet-stream",
        )
    }
}

pub fn make_bundle(
    dir: &Path,
    version: &str,
    compatible: &str,
    key: &otter_bundle::SigningKey,
) -> PathBuf {
    let rootfs = dir.join(format!("rootfs-{compatible}-{version}.img"));
    let data: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ version.len() as u8)
        .collect();
    std::fs::write(&rootfs, data).unwrap();
    let out = dir.join(format!("{compatible}-{version}.otb"));
    otter_bundle::create_bundle(
        &out,
        &[("rootfs", rootfs.as_path())],
        &otter_bundle::CreateOptions {
            compatible: compatible.into(),
            version: version.into(),
            chunk_size: 4096,
            zstd_level: 3,
        },
        &[key],
    )
    .unwrap();
    out
}

pub struct TestDevice {
    pub n: u32,
    pub key: SigningKey,
    pub compatible: String,
    pub id: String,
    pub token: String,
}

pub fn device(n: u32, compatible: &str) -> TestDevice {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    seed[4] = 0x5a;
    TestDevice {
        n,
        key: SigningKey::from_bytes(&seed),
        compatible: compatible.into(),
        id: String::new(),
        token: String::new(),
    }
}

/// Waits until `f` is true (rollout ticks run in the background).
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}
