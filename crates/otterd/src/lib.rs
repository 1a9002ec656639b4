//! The Otter device agent.
//!
//! * [`agent`]: what happens at every boot: find the booted slot, notice a fallback, run the
//!   health checks of a trial boot, then commit or mark bad and reboot.
//! * [`install`]: install a signed bundle into the other slot and arm a trial boot.
//! * [`state`]: the agent's record of updates, kept on the data partition.
//! * [`health`]: the health checks.

pub mod agent;
pub mod health;
pub mod install;
pub mod paths;
pub mod state;
pub mod status;
mod notify;

pub use paths::Paths;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
