//! The update lock: `/run/otter/updates.lock`. An app that must not be interrupted (a robot
//! moving, a payment in flight) holds a `flock(2)` on it, shared or exclusive, with
//! `flock /run/otter/updates.lock CMD` or from its own code, after bind-mounting the file into
//! its container. While it is held, otterd neither restarts apps for an update nor reboots
//! into a new OS: it takes the lock exclusively before either, and waits.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const UPDATE_LOCK_PATH: &str = "/run/otter/updates.lock";

/// The lock, held by otterd until dropped.
#[derive(Debug)]
pub struct UpdateLock {
    _file: File,
    pub path: PathBuf,
}

/// Make sure the lock file exists (apps bind-mount it, so it must be there before they start).
pub fn ensure_lock_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|_| ())
}

/// Take the lock now if no app holds it. `Ok(None)`: an app holds it.
pub fn try_lock(path: &Path) -> std::io::Result<Option<UpdateLock>> {
    ensure_lock_file(path)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(UpdateLock {
            _file: file,
            path: path.to_path_buf(),
        }));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Wait up to `max_wait` for the lock, calling `waiting` once when it is found held (to log
/// that the update is deferred). `Ok(None)`: still held when the time ran out.
pub fn lock_within(
    path: &Path,
    max_wait: Duration,
    poll: Duration,
    waiting: &mut dyn FnMut(),
) -> std::io::Result<Option<UpdateLock>> {
    let start = Instant::now();
    let mut told = false;
    loop {
        if let Some(l) = try_lock(path)? {
            return Ok(Some(l));
        }
        if !told {
            waiting();
            told = true;
        }
        if start.elapsed() >= max_wait {
            return Ok(None);
        }
        std::thread::sleep(
            poll.min(max_wait.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold_shared(path: &Path) -> File {
        let f = File::open(path).unwrap();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
            0
        );
        f
    }

    #[test]
    fn free_lock_is_taken_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/otter/updates.lock");
        let l = try_lock(&p).unwrap().expect("free");
        assert!(p.is_file());
        // A second open file description cannot take it while held.
        assert!(try_lock(&p).unwrap().is_none());
        drop(l);
        assert!(try_lock(&p).unwrap().is_some());
    }

    #[test]
    fn an_app_holding_it_defers_otterd() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("updates.lock");
        ensure_lock_file(&p).unwrap();
        let app = hold_shared(&p);
        let mut told = 0;
        let r = lock_within(
            &p,
            Duration::from_millis(200),
            Duration::from_millis(50),
            &mut || told += 1,
        )
        .unwrap();
        assert!(r.is_none());
        assert_eq!(told, 1);
        // Released while otterd waits: it gets the lock.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(app);
        });
        let r = lock_within(
            &p,
            Duration::from_secs(5),
            Duration::from_millis(20),
            &mut || {},
        )
        .unwrap();
        assert!(r.is_some());
        t.join().unwrap();
    }

    #[test]
    fn flock_command_holds_it() {
        // The way a shell script in an app holds it.
        if std::process::Command::new("flock")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no flock(1)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("updates.lock");
        ensure_lock_file(&p).unwrap();
        let mut child = std::process::Command::new("flock")
            .arg("--shared")
            .arg(&p)
            .arg("sleep")
            .arg("2")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(try_lock(&p).unwrap().is_none());
        child.wait().unwrap();
        assert!(try_lock(&p).unwrap().is_some());
    }
}
