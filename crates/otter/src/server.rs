//! `otter server`: runs the fleet server (the work is in the `otter-server` library).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "OTTER_LISTEN")]
    listen: SocketAddr,
    /// Folder for the SQLite database and artifacts (when --database / --storage are not given).
    #[arg(long, default_value = "otter-data", env = "OTTER_DATA")]
    data: PathBuf,
    /// sqlite://PATH or postgres://USER:PASSWORD@HOST/DB (default: sqlite in --data).
    #[arg(long, env = "OTTER_DATABASE")]
    database: Option<String>,
    /// Artifact store: a folder, file:///PATH, or s3://BUCKET/PREFIX (AWS_* variables).
    #[arg(long, env = "OTTER_STORAGE")]
    storage: Option<String>,
    /// Trusted release signing key (.pub) or folder of them; repeat for several.
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<PathBuf>,
    /// Seconds between device polls (the server adds ±10% jitter).
    #[arg(long, default_value_t = 60)]
    poll_interval: u64,
    /// Enrollment requests per minute per client address.
    #[arg(long, default_value_t = 60)]
    enroll_rate: u32,
    /// Seconds between rollout evaluations.
    #[arg(long, default_value_t = 5)]
    rollout_tick: u64,
    /// Largest bundle accepted by `otter release upload`, in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_bundle_size: u64,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a connection has to send a request's headers (from its opening or its previous
    /// response); closes idle and half-sent connections.
    #[arg(long, default_value_t = 30)]
    header_timeout: u64,
    /// Open connections at most (kept below the open-file limit); more are closed at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Log bytes kept per device (the oldest lines are pruned first).
    #[arg(long, default_value_t = 16 << 20)]
    log_quota: u64,
    /// Days device log lines are kept.
    #[arg(long, default_value_t = 30)]
    log_retention_days: u64,
    /// KiB of logs a device may send per minute (bursts up to 2 MiB).
    #[arg(long, default_value_t = 1024)]
    log_rate: u32,
    /// Days audit entries are kept.
    #[arg(long, default_value_t = 365)]
    audit_retention_days: u64,
    /// Create an admin token with this name, print it and exit (e.g. when the first was lost).
    #[arg(long, value_name = "NAME")]
    create_admin_token: Option<String>,
}

pub fn run(a: ServerArgs) -> Result<()> {
    let cfg = otter_server::Config {
        listen: a.listen,
        database: a.database,
        storage: a.storage,
        data_dir: a.data,
        trusted_keys: a.trusted_keys,
        poll_interval: Duration::from_secs(a.poll_interval.max(1)),
        poll_jitter: 0.1,
        enroll_rate_per_minute: a.enroll_rate,
        rollout_tick: Duration::from_secs(a.rollout_tick.max(1)),
        max_bundle_size: a.max_bundle_size,
        tls: a.tls_cert.zip(a.tls_key),
        header_timeout: Duration::from_secs(a.header_timeout.max(1)),
        max_connections: a.max_connections.max(1),
        log_quota_bytes: a.log_quota,
        log_retention: Duration::from_secs(a.log_retention_days.max(1) * 86400),
        log_rate_kib_per_minute: a.log_rate.max(1),
        audit_retention: Duration::from_secs(a.audit_retention_days.max(1) * 86400),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        if let Some(name) = a.create_admin_token {
            let db = otter_server::Db::open(&cfg.database_url()).await?;
            let token = otter_server::create_admin_token(&db, &name).await?;
            println!("admin token {name}: {token}");
            return Ok(());
        }
        let server = otter_server::Server::start(cfg).await?;
        let addr = server.local_addr()?;
        let url = format!("{}://{addr}", server.scheme());
        println!("otter server: listening on {url}");
        println!("  database   {}", redact(&server.state.cfg.database_url()));
        println!("  artifacts  {}", server.state.store.describe);
        println!("  dashboard  {url}/");
        if let Some(t) = &server.new_admin_token {
            println!();
            println!("  admin token (shown once; the server keeps only its hash):");
            println!("    {t}");
            println!("  log in with: otter login {url} --token {t}");
            println!("  dashboard:   {url}/login?token={t}");
        }
        server.serve().await
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}
