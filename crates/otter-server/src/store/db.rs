//! The database: SQLite (default, one file) or PostgreSQL (several server processes share it),
//! through sqlx's `Any` driver so one set of SQL serves both. Everything the server knows lives
//! here; no process keeps state of its own beyond caches of constants.
//!
//! SQLite allows one writer at a time: writes go through a pool of one connection (so they queue
//! instead of failing with "database is locked") and reads through a pool of several (WAL mode).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    /// Reads (and, on PostgreSQL, writes too).
    pub read: AnyPool,
    /// Writes and transactions.
    pub write: AnyPool,
    pub backend: Backend,
}

/// Schema versions, applied in order. `{ID}` becomes an auto-increment primary key column.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE admin_tokens (token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, created_at BIGINT NOT NULL, revoked_at BIGINT);
CREATE TABLE enrollment_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, created_by TEXT NOT NULL, revoked_at BIGINT);
CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  name TEXT,
  public_key TEXT NOT NULL,
  compatible TEXT NOT NULL,
  status TEXT NOT NULL,
  tags TEXT NOT NULL DEFAULT '',
  enrolled_at BIGINT NOT NULL,
  pinned_release_id TEXT,
  rollout_id TEXT,
  rollout_release_id TEXT,
  target_release_id TEXT,
  target_etag TEXT NOT NULL,
  os_version TEXT,
  booted_slot TEXT,
  update_json TEXT,
  health TEXT,
  uptime_secs BIGINT,
  free_bytes BIGINT,
  last_seen BIGINT,
  last_report BIGINT
);
CREATE INDEX devices_status ON devices (status);
CREATE INDEX devices_compatible ON devices (compatible);
CREATE INDEX devices_rollout ON devices (rollout_id);
CREATE TABLE device_tokens (token_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, created_at BIGINT NOT NULL, revoked_at BIGINT);
CREATE INDEX device_tokens_device ON device_tokens (device_id);
CREATE TABLE trusted_keys (fingerprint TEXT PRIMARY KEY, pem TEXT NOT NULL, added_at BIGINT NOT NULL, source TEXT NOT NULL);
CREATE TABLE releases (
  id TEXT PRIMARY KEY,
  version TEXT NOT NULL,
  compatible TEXT NOT NULL,
  size BIGINT NOT NULL,
  manifest_digest TEXT NOT NULL,
  signer TEXT NOT NULL,
  object_path TEXT NOT NULL,
  uploaded_at BIGINT NOT NULL,
  uploaded_by TEXT NOT NULL,
  UNIQUE (compatible, version)
);
CREATE TABLE rollouts (
  id TEXT PRIMARY KEY,
  release_id TEXT NOT NULL,
  state TEXT NOT NULL,
  phase BIGINT NOT NULL,
  phases_json TEXT NOT NULL,
  success_threshold DOUBLE PRECISION NOT NULL,
  failure_threshold DOUBLE PRECISION NOT NULL,
  deadline_secs BIGINT NOT NULL,
  total BIGINT NOT NULL,
  ack_failed BIGINT NOT NULL DEFAULT 0,
  phase_started_at BIGINT NOT NULL,
  reason TEXT,
  created_at BIGINT NOT NULL,
  created_by TEXT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state);
CREATE TABLE rollout_devices (
  rollout_id TEXT NOT NULL,
  device_id TEXT NOT NULL,
  position BIGINT NOT NULL,
  phase BIGINT NOT NULL,
  state TEXT NOT NULL,
  targeted_at BIGINT,
  finished_at BIGINT,
  reason TEXT,
  PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_phase ON rollout_devices (rollout_id, phase, state);
CREATE TABLE audit (id {ID}, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX audit_subject ON audit (subject, id);
CREATE TABLE device_logs (id {ID}, device_id TEXT NOT NULL, ts BIGINT NOT NULL, received_at BIGINT NOT NULL, level TEXT NOT NULL, source TEXT, message TEXT NOT NULL);
CREATE INDEX device_logs_device ON device_logs (device_id, id);
"#,
    r#"
CREATE TABLE app_releases (
  id TEXT PRIMARY KEY,
  version TEXT NOT NULL UNIQUE,
  digest TEXT NOT NULL,
  set_json TEXT NOT NULL,
  apps TEXT NOT NULL,
  images TEXT NOT NULL,
  uploaded_at BIGINT NOT NULL,
  uploaded_by TEXT NOT NULL
);
ALTER TABLE devices ADD COLUMN pinned_app_release_id TEXT;
ALTER TABLE devices ADD COLUMN app_rollout_id TEXT;
ALTER TABLE devices ADD COLUMN app_rollout_release_id TEXT;
ALTER TABLE devices ADD COLUMN target_app_release_id TEXT;
ALTER TABLE devices ADD COLUMN app_etag TEXT NOT NULL DEFAULT 'none';
ALTER TABLE devices ADD COLUMN apps_json TEXT;
CREATE INDEX devices_app_rollout ON devices (app_rollout_id);
ALTER TABLE rollouts ADD COLUMN kind TEXT NOT NULL DEFAULT 'os'
"#,
    r#"
CREATE TABLE used_challenges (challenge TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);
CREATE INDEX used_challenges_expiry ON used_challenges (expires_at)
"#,
    r#"
CREATE TABLE device_log_usage (device_id TEXT PRIMARY KEY, bytes BIGINT NOT NULL);
INSERT INTO device_log_usage (device_id, bytes) SELECT device_id, CAST(SUM(LENGTH(message) + COALESCE(LENGTH(source), 0) + LENGTH(level) + 32) AS BIGINT) FROM device_logs GROUP BY device_id;
CREATE INDEX device_logs_received ON device_logs (received_at);
CREATE INDEX audit_at ON audit (at)
"#,
];

impl Db {
    /// Opens (creating a SQLite file if needed) and migrates. `url`: `sqlite://PATH` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            bail!("database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB");
        };
        let db = match backend {
            Backend::Sqlite => {
                let file = super::files::sqlite_file(url);
                if let Some(f) = &file {
                    super::files::private_database(f)?;
                }
                let url = if url.contains('?') {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = AnyConnectOptions::from_str(&url)
                    .with_context(|| format!("database URL {url:?}"))?;
                let pragmas = || {
                    AnyPoolOptions::new().after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                };
                let write = pragmas()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts.clone())
                    .await
                    .with_context(|| format!("opening SQLite database {url}"))?;
                let readers = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
                let read = pragmas()
                    .max_connections(readers as u32)
                    .connect_with(opts)
                    .await
                    .with_context(|| format!("opening SQLite database {url}"))?;
                if let Some(f) = &file {
                    // The -wal and -shm files exist now: SQLite made them with the database
                    // file's mode; an older server may have left wider ones.
                    super::files::private_database(f)?;
                }
                Db {
                    read,
                    write,
                    backend,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .with_context(|| {
                        format!("connecting to PostgreSQL at {}", redact_password(url))
                    })?;
                Db {
                    read: pool.clone(),
                    write: pool,
                    backend,
                }
            }
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write.begin().await.context("starting the migration")?;
        if self.backend == Backend::Postgres {
            // Several server processes may start at once: one migrates, the others wait.
            tx.execute("SELECT pg_advisory_xact_lock(7402191)")
                .await
                .context("locking for migration")?;
        }
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .context("creating schema_version")?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .context("reading schema_version")?
            .try_get("v")
            .ok();
        let current = current.unwrap_or(0) as usize;
        if current > MIGRATIONS.len() {
            bail!(
                "the database schema is version {current}, newer than this server knows ({}): upgrade otter",
                MIGRATIONS.len()
            );
        }
        let id_col = match self.backend {
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
            for stmt in m.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let stmt = stmt.replace("{ID}", id_col);
                tx.execute(stmt.as_str())
                    .await
                    .with_context(|| format!("applying schema version {}: {stmt}", i + 1))?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind((i + 1) as i64)
                .execute(&mut *tx)
                .await
                .context("recording schema_version")?;
        }
        tx.commit().await.context("committing the migration")?;
        Ok(())
    }

    /// A setting shared by every server process; the first process to ask sets it to `init()`.
    pub async fn setting_or_init(
        &self,
        name: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(init())
        .execute(&self.write)
        .await
        .with_context(|| format!("initialising setting {name}"))?;
        let v: String = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await
            .with_context(|| format!("reading setting {name}"))?
            .try_get("value")?;
        Ok(v)
    }
}

fn redact_password(url: &str) -> String {
    // postgres://user:secret@host/db → postgres://user:***@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Records one state change (who, what, on what) inside the caller's transaction.
pub async fn audit<'c, E>(
    exec: E,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> sqlx::Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(exec)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_password("postgres://otter:s3cret@127.0.0.1:5432/otter"),
            "postgres://otter:***@127.0.0.1:5432/otter"
        );
        assert_eq!(
            redact_password("postgres://otter@127.0.0.1/otter"),
            "postgres://otter@127.0.0.1/otter"
        );
    }

    #[tokio::test]
    async fn migrates_once_and_keeps_settings() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::open(&url).await.unwrap();
        let a = db.setting_or_init("x", || "first".into()).await.unwrap();
        drop(db);
        let db = Db::open(&url).await.unwrap();
        let b = db.setting_or_init("x", || "second".into()).await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
        assert!(Db::open("mysql://x").await.is_err());
    }
}
