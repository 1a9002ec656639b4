//! Private files: the data folder is 0700 and the SQLite database (with its `-wal` and `-shm`
//! files, which hold the challenge secret and token hashes too) 0600, whatever the umask.
//! Modes that are wider, from before this rule or made by hand, are narrowed at start, with a
//! log line.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data folder {}", dir.display()))?;
    narrow(dir, 0o700)
}

/// The file of a `sqlite:` URL, if it names one (not `:memory:`).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Before SQLite opens `db`: creates it 0600 if it does not exist (SQLite gives the `-wal` and
/// `-shm` files the database file's mode) and narrows the modes of existing files.
pub fn private_database(db: &Path) -> Result<()> {
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .with_context(|| format!("creating the database file {}", db.display()))?;
    }
    for f in database_files(db) {
        if f.exists() {
            narrow(&f, 0o600)?;
        }
    }
    Ok(())
}

/// The database file and its `-wal`, `-shm` and `-journal` companions.
pub fn database_files(db: &Path) -> Vec<PathBuf> {
    let mut out = vec![db.to_owned()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        out.push(PathBuf::from(s));
    }
    out
}

/// Sets `mode` on `path` when its permissions allow more (group or others bits).
fn narrow(path: &Path, mode: u32) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let old = meta.permissions().mode() & 0o7777;
    if old & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
        tracing::warn!(
            "{} was mode {old:o}, readable by others: now {mode:o}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/otter/otter.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/otter/otter.db"))
        );
        assert_eq!(sqlite_file("sqlite://x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }
}
