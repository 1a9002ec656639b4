//! The Otter device agent.
//!
//! * [`agent`]: what happens at every boot: find the booted slot, notice a fallback, run the
//!   health checks of a trial boot, then commit or mark bad and reboot.
//! * [`install`]: install a signed bundle into the other slot and arm a trial boot.
//! * [`state`]: the agent's record of updates, kept on the data partition.
//! * [`health`]: the health checks.
//! * [`provision`]: the device config rendered into `/etc`, at boot and at runtime.
//! * [`fleet`]: the fleet server client: enroll, poll, install what is targeted, report, logs.

pub mod agent;
pub mod fleet;
pub mod health;
pub mod install;
pub mod notify;
pub mod paths;
pub mod provision;
pub mod state;
pub mod status;

pub use paths::Paths;

/// Log a line to stderr (the journal) and, on a device, to the kernel log, which reaches the
/// serial console even when a getty owns it.
pub fn log(msg: &str) {
    eprintln!("otterd: {msg}");
    if std::env::var_os("OTTERD_ROOT").is_none()
        && let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")
    {
        use std::io::Write;
        // One write per record: each write(2) to /dev/kmsg is one kernel log line.
        let _ = k.write_all(format!("otterd: {msg}\n").as_bytes());
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The update lock (`/run/otter/updates.lock`): an app that holds it (`flock`) defers the
/// reboot into an installed update until it lets go.
pub fn update_lock_path(paths: &Paths) -> std::path::PathBuf {
    paths.run_dir.join("updates.lock")
}

/// Take the update lock without waiting: `None` while an app holds it. Held by the agent
/// (the returned file) while it reboots, so no app starts a critical section in between.
pub fn take_update_lock(paths: &Paths) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let _ = std::fs::create_dir_all(&paths.run_dir);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(update_lock_path(paths))
        .ok()?;
    // SAFETY: flock on a descriptor we own; released when the file is dropped.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}
