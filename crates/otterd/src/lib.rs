//! The Otter device agent.
//!
//! * [`agent`]: what happens at every boot: find the booted slot, notice a fallback, run the
//!   health checks of a trial boot, then commit or mark bad and reboot.
//! * [`install`]: install a signed bundle into the other slot and arm a trial boot.
//! * [`lifecycle`]: the update lifecycle as one pure transition function; the rest carry
//!   out its effects.
//! * [`state`]: the agent's record of updates, kept on the data partition.
//! * [`host`]: the device's side effects (reboot, systemd, chown), real or fake.
//! * [`health`]: the health checks.
//! * [`provision`]: the device config rendered into `/etc`, at boot and at runtime.
//! * [`fleet`]: the fleet server client: enroll, poll, install what is targeted, report, logs.
//! * [`apps`]: container apps (started at boot, `otterd apps`).

pub mod agent;
pub mod apps;
pub mod durable;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fleet;
pub mod health;
pub mod host;
pub mod install;
pub mod lifecycle;
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
