//! Files that must survive a power cut: after a cut, `path` holds the old content or the new,
//! never a mix, and never nothing. And one policy for a file that is damaged anyway.
//!
//! (The boot state on the FAT boot partition is written in place instead, see
//! `otter_boot::GrubEnvStore`: a FAT rename is not atomic.)

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replace `path` with `bytes`: write a temporary file next to it, fsync it, rename it over
/// `path`, fsync the directory. `mode` sets the new file's permissions exactly (default 0644
/// less the umask). Every error is returned, naming the file.
pub fn replace(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    // A suffix no real file has: next to files in /etc, `x.tmp` could be someone's file.
    tmp_name.push(".otter-tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode.unwrap_or(0o644))
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(m) = mode {
            // Exactly `m`: the umask and a leftover temporary file do not count.
            f.set_permissions(std::fs::Permissions::from_mode(m))
                .with_context(|| format!("chmod {}", tmp.display()))?;
        }
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(path)
}

/// Fsync the directory holding `path`, so a rename or creation in it is on disk.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some filesystems refuse fsync on a directory; the rename is then as durable as it gets.
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("syncing directory {}", dir.display())),
    }
}

/// The corrupt-file policy: a file that cannot be parsed is moved aside to
/// `<name>.corrupt-<unix time>` (kept for the operator, never deleted) and logged with `why`;
/// the caller then starts from an empty state. Returns where the file went.
pub fn set_aside(path: &Path, why: &str) -> Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{}", crate::now()));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "moving the damaged {} aside to {}",
            path.display(),
            aside.display()
        )
    })?;
    sync_dir(path)?;
    crate::log(&format!(
        "{} is damaged ({why}); kept as {} and starting afresh",
        path.display(),
        aside.display()
    ));
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        replace(&p, b"old", None).unwrap();
        replace(&p, b"new", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn replace_reports_a_missing_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope/state.json");
        let e = replace(&p, b"x", None).unwrap_err();
        assert!(
            format!("{e:#}").contains("nope/state.json.otter-tmp"),
            "{e:#}"
        );
    }

    #[test]
    fn set_aside_keeps_the_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fleet.json");
        std::fs::write(&p, b"{broken").unwrap();
        let aside = set_aside(&p, "test").unwrap();
        assert!(!p.exists());
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fleet.json.corrupt-")
        );
        assert_eq!(std::fs::read(&aside).unwrap(), b"{broken");
    }
}
