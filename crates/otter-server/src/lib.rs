//! The Otter fleet server: device enrollment and polling, releases, rollouts, an admin API and a
//! server-rendered dashboard.
//!
//! All state is in the database ([`db`]) and the artifact store ([`store::artifacts`]); several server
//! processes may share one PostgreSQL database and one bucket behind a load balancer. The only
//! per-process state is the enrollment rate limiter (abuse protection, not data).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let cfg = otter_server::Config::default();
//! let server = otter_server::Server::start(cfg).await?;
//! if let Some(token) = &server.new_admin_token { println!("admin token: {token}"); }
//! server.serve().await?;
//! # Ok(()) }
//! ```

// Layers, each using only those below it (see docs/architecture.md):
// `http` (routes, extractors, pages) → domain (`rollouts`, `releases`, `app_releases`,
// `devices`, `enrollment`, `reports`, `targets`, `auth`) → `store` (SQL, the artifact store).
pub mod app_releases;
pub mod auth;
pub mod devices;
pub mod enrollment;
pub mod error;
pub mod http;
pub mod releases;
pub mod reports;
pub mod rollouts;
pub mod store;
pub mod targets;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use otter_bundle::PublicKey;

pub use store::db;
pub use store::db::{Backend, Db};

/// How to run the server. `Default` is the zero-configuration single machine setup.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://{data_dir}/otter.db`.
    pub database: Option<String>,
    /// A folder, `file:///PATH`, `memory://` (tests) or `s3://bucket/prefix`; default
    /// `{data_dir}/artifacts`.
    pub storage: Option<String>,
    pub data_dir: PathBuf,
    /// Release signing keys trusted in addition to those added through the admin API.
    pub trusted_keys: Vec<PathBuf>,
    /// Base poll interval told to devices.
    pub poll_interval: Duration,
    /// Poll interval jitter: ± this fraction.
    pub poll_jitter: f64,
    /// Enrollment requests per minute per client address (burst of the same size).
    pub enroll_rate_per_minute: u32,
    /// How often this process evaluates rollouts.
    pub rollout_tick: Duration,
    /// Largest bundle accepted by `release upload`.
    pub max_bundle_size: u64,
    /// Serve HTTPS with this PEM certificate chain and PEM private key (rustls).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A connection must send a request's headers within this time, counted from its opening
    /// or from the end of its previous response: so it also closes idle keep-alive
    /// connections and half-sent headers.
    pub header_timeout: Duration,
    /// Open connections at most (also kept below the open-file limit); more are closed at once.
    pub max_connections: usize,
    /// Log bytes kept per device; the oldest lines go first.
    pub log_quota_bytes: u64,
    /// Log lines older than this are deleted (checked hourly).
    pub log_retention: Duration,
    /// Log bytes a device may send per minute, in KiB (bursts of 2 MiB or this, the larger).
    pub log_rate_kib_per_minute: u32,
    /// Audit entries older than this are deleted (checked hourly).
    pub audit_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: None,
            storage: None,
            data_dir: PathBuf::from("otter-data"),
            trusted_keys: Vec::new(),
            poll_interval: Duration::from_secs(60),
            poll_jitter: 0.1,
            enroll_rate_per_minute: 60,
            rollout_tick: Duration::from_secs(5),
            max_bundle_size: 8 << 30,
            tls: None,
            header_timeout: Duration::from_secs(30),
            max_connections: 4096,
            log_quota_bytes: 16 << 20,
            log_retention: Duration::from_secs(30 * 86400),
            log_rate_kib_per_minute: 1024,
            audit_retention: Duration::from_secs(365 * 86400),
        }
    }
}

impl Config {
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("otter.db").display()))
    }
}

pub struct Inner {
    pub db: Db,
    pub store: store::artifacts::Artifacts,
    pub cfg: Config,
    /// Keys from `--trusted-key` (the admin API adds more, in the database).
    pub flag_keys: Vec<PublicKey>,
    pub challenge_secret: Vec<u8>,
    pub enroll_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Log KiB per device.
    pub log_limiter: DefaultKeyedRateLimiter<String>,
}

/// Shared by every request handler.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Server {
    pub state: AppState,
    /// Set when this start created the first admin token (print it: only its hash is kept).
    pub new_admin_token: Option<String>,
    listener: tokio::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl Server {
    /// Opens the database and the artifact store, migrates, creates the first admin token if
    /// there is none, and binds the listening socket.
    pub async fn start(cfg: Config) -> Result<Server> {
        let uses_data_dir = cfg.database.is_none() || cfg.storage.is_none();
        if uses_data_dir {
            store::files::private_dir(&cfg.data_dir)?;
        }
        let db = Db::open(&cfg.database_url()).await?;
        let store = store::artifacts::Artifacts::open(cfg.storage.as_deref(), &cfg.data_dir)?;
        let mut flag_keys = Vec::new();
        for p in &cfg.trusted_keys {
            if p.is_dir() {
                flag_keys.extend(otter_bundle::load_trusted_keys(p)?);
            } else {
                flag_keys.push(PublicKey::load(p)?);
            }
        }
        let secret_hex = db
            .setting_or_init("challenge_secret", || auth::new_secret("ch"))
            .await?;
        let new_admin_token = ensure_admin_token(&db).await?;
        let tls = match &cfg.tls {
            None => None,
            Some((cert, key)) => {
                // One crypto provider for the process (several rustls users are linked in).
                let _ = rustls::crypto::ring::default_provider().install_default();
                Some(
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                        .await
                        .with_context(|| {
                            format!(
                                "loading the TLS certificate {} and key {} (PEM)",
                                cert.display(),
                                key.display()
                            )
                        })?,
                )
            }
        };
        let rate = NonZeroU32::new(cfg.enroll_rate_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let log_rate =
            NonZeroU32::new(cfg.log_rate_kib_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let log_burst = log_rate.max(NonZeroU32::new(2048).unwrap_or(NonZeroU32::MIN));
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let state = AppState(Arc::new(Inner {
            db,
            store,
            cfg,
            flag_keys,
            challenge_secret: secret_hex.into_bytes(),
            enroll_limiter: RateLimiter::keyed(Quota::per_minute(rate)),
            log_limiter: RateLimiter::keyed(Quota::per_minute(log_rate).allow_burst(log_burst)),
        }));
        Ok(Server {
            state,
            new_admin_token,
            listener,
            tls,
        })
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the process ends (or the task is dropped), evaluating rollouts on the side.
    pub async fn serve(self) -> Result<()> {
        let ticker = tokio::spawn(rollouts::run_ticker(self.state.clone()));
        let expiry = tokio::spawn(reports::run_expiry(self.state.clone()));
        let app = router(self.state.clone());
        let make = app.into_make_service_with_connect_info::<SocketAddr>();
        let cfg = &self.state.cfg;
        let timeout = cfg.header_timeout;
        // Keep file descriptors for the database, artifacts and logs.
        let max_connections = match http::conn::raise_open_file_limit() {
            Some(files) => cfg
                .max_connections
                .min(usize::try_from(files.saturating_sub(64)).unwrap_or(usize::MAX)),
            None => cfg.max_connections,
        };
        if max_connections < cfg.max_connections {
            tracing::warn!(
                "at most {max_connections} connections (the open-file limit), not --max-connections {}",
                cfg.max_connections
            );
        }
        let std = self.listener.into_std().context("preparing the listener")?;
        let result = match self.tls {
            None => {
                let mut server = axum_server::from_tcp(std)
                    .context("preparing the listener")?
                    .map(|a| http::conn::Capped::new(a, max_connections))
                    .first_request_timeout(timeout);
                limit_http(server.http_builder(), timeout);
                server.serve(make).await.context("serving HTTP")
            }
            Some(tls) => {
                let mut server = axum_server::from_tcp_rustls(std, tls)
                    .context("preparing the TLS listener")?
                    .map(|a| http::conn::Capped::new(a, max_connections))
                    .first_request_timeout(timeout);
                limit_http(server.http_builder(), timeout);
                server.serve(make).await.context("serving HTTPS")
            }
        };
        ticker.abort();
        expiry.abort();
        result
    }
}

/// hyper's timeouts: HTTP/1 headers (from a connection's opening and between its requests, so
/// idle keep-alive connections close too); HTTP/2 pings that close dead peers.
fn limit_http(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    b.http1().header_read_timeout(Some(timeout));
    b.http2()
        .keep_alive_interval(Some(timeout))
        .keep_alive_timeout(timeout);
}

/// Creates the admin token `admin` when there is no admin token at all; returns the secret.
pub async fn ensure_admin_token(db: &Db) -> Result<Option<String>> {
    if store::tokens::admin_token_count(db).await? > 0 {
        return Ok(None);
    }
    Ok(Some(create_admin_token(db, "admin").await?))
}

/// A new admin token named `name` (for `otter server admin-token NAME`); returns the secret.
pub async fn create_admin_token(db: &Db, name: &str) -> Result<String> {
    let token = auth::new_secret("ota");
    store::tokens::insert_admin_token(db, &auth::hash_secret(&token), name)
        .await
        .context("storing the admin token")?;
    Ok(token)
}

/// Every route: the device API, the admin API, the dashboard.
pub fn router(state: AppState) -> Router {
    http::router(state)
}
