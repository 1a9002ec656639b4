//! The agent's own record (`/var/lib/otter/state.json` on the data partition): which version
//! each slot holds, the update in progress or last finished, and a bounded history.
//!
//! Boot-loader state (which slot boots) lives on the boot partition and is the truth for
//! booting; this file is the truth for *why*: versions, errors, rollback reasons.

pub use crate::lifecycle::EventKind;
use anyhow::{Context, Result};
use otter_boot::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const HISTORY_MAX: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writing the new slot.
    Installing,
    /// Written and verified; the next boot tries it.
    Installed,
    /// Booted into the new slot; health checks running.
    Trying,
    /// The new slot failed its health checks; marked bad, rebooting to the old one.
    Unhealthy,
    /// The new slot is committed.
    Committed,
    /// Back on the old slot; the reason says why.
    RolledBack,
    /// The install itself failed (nothing to boot changed).
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Committed | Phase::RolledBack | Phase::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// planning, reusing, fetching or verifying (see `otter_bundle::Stage`).
    #[serde(default)]
    pub stage: String,
    /// Image bytes written to the slot.
    pub done_bytes: u64,
    /// Image size.
    pub total_bytes: u64,
    /// Bundle bytes downloaded (or read) so far.
    pub fetched_bytes: u64,
    /// Bundle bytes this install downloads in all; known before the chunk download starts.
    #[serde(default)]
    pub fetch_total: u64,
    /// Image bytes copied from the running slot instead of downloaded.
    #[serde(default)]
    pub reused_bytes: u64,
    /// Image bytes read back and checked (last stage).
    #[serde(default)]
    pub verified_bytes: u64,
}

/// How a finished install got its bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaInfo {
    /// Bundle bytes the plan said would be downloaded, before the download started.
    pub planned_bytes: u64,
    /// Bundle bytes actually downloaded (or read).
    pub fetched_bytes: u64,
    /// Image bytes copied from the running slot.
    pub reused_bytes: u64,
    /// Bundle bytes a full install downloads.
    pub full_bytes: u64,
    /// HTTP range requests for chunks (resumes not counted).
    pub requests: u64,
    /// How the running slot was indexed: saved, scanned (with why) or unusable.
    pub seed_index: String,
    /// Chunks whose blocks in the running slot did not match, fetched instead.
    #[serde(default)]
    pub seed_mismatches: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub phase: Phase,
    pub version: String,
    pub slot: Slot,
    pub from_slot: Slot,
    pub from_version: String,
    pub source: String,
    pub started_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Delta figures of the finished install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaInfo>,
    /// Why it failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub version: String,
    pub installed_at: u64,
    /// Image size and SHA-256 written into the slot: with the version, they tell whether the
    /// slot's saved block index still describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: u64,
    pub event: EventKind,
    pub version: String,
    pub slot: Slot,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotInfo>,
    #[serde(default)]
    pub update: Option<Update>,
    #[serde(default)]
    pub history: Vec<Event>,
}

impl AgentState {
    pub fn record(&mut self, event: EventKind, version: &str, slot: Slot, detail: &str) {
        self.record_at(crate::now(), event, version, slot, detail);
    }

    pub fn record_at(
        &mut self,
        time: u64,
        event: EventKind,
        version: &str,
        slot: Slot,
        detail: &str,
    ) {
        self.history.push(Event {
            time,
            event,
            version: version.to_string(),
            slot,
            detail: detail.to_string(),
        });
        if self.history.len() > HISTORY_MAX {
            let extra = self.history.len() - HISTORY_MAX;
            self.history.drain(..extra);
        }
    }
}

/// The state file with an exclusive lock held for read-modify-write.
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Lock and open the state in `dir` (created if missing). Blocks while another otterd
    /// process holds the lock.
    pub fn lock(dir: &Path) -> Result<StateFile> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the agent state directory {}", dir.display()))?;
        let lock_path = dir.join("state.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own; std has no portable advisory lock that
        // works on the stable toolchain's minimum we target.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", lock_path.display()));
        }
        Ok(StateFile {
            path: dir.join("state.json"),
            _lock: lock,
        })
    }

    /// The record. A damaged file is set aside ([`crate::durable::set_aside`]) and the agent
    /// starts from an empty record: the boot state stays the truth for booting, the next boot's
    /// reconcile re-learns the running slot's version, and the damaged file is kept for the
    /// operator. (`otterd status` uses [`read_state`], which reports the damage instead.)
    pub fn load(&self) -> Result<AgentState> {
        match read_state(&self.path) {
            Err(e) if self.path.exists() && is_damage(&e) => {
                crate::durable::set_aside(&self.path, &format!("{:#}", e.root_cause()))?;
                Ok(AgentState::default())
            }
            r => r,
        }
    }

    /// Durable replace ([`crate::durable::replace`]).
    pub fn save(&self, s: &AgentState) -> Result<()> {
        let text = serde_json::to_vec_pretty(s).context("serialising agent state")?;
        crate::durable::replace(&self.path, &text, None)
    }
}

fn is_damage(e: &anyhow::Error) -> bool {
    e.root_cause().downcast_ref::<serde_json::Error>().is_some()
}

/// Read the state without locking (for `status`). A missing file is an empty state.
pub fn read_state(path: &Path) -> Result<AgentState> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged; move it away to start afresh",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_history_bound() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::lock(d.path()).unwrap();
        let mut s = f.load().unwrap();
        assert_eq!(s, AgentState::default());
        s.slots.insert(
            Slot::A,
            SlotInfo {
                version: "1.0.0".into(),
                installed_at: 1,
                size: Some(4096),
                sha256: None,
            },
        );
        for i in 0..60 {
            s.record(EventKind::Committed, &format!("1.0.{i}"), Slot::B, "");
        }
        f.save(&s).unwrap();
        let back = f.load().unwrap();
        assert_eq!(back.history.len(), HISTORY_MAX);
        assert_eq!(back.history.last().unwrap().version, "1.0.59");
        assert_eq!(back, s);
    }

    #[test]
    fn damaged_state_is_set_aside_by_the_agent() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("state.json"), "{nope").unwrap();
        let f = StateFile::lock(d.path()).unwrap();
        assert_eq!(f.load().unwrap(), AgentState::default());
        let aside: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(!d.path().join("state.json").exists());
    }

    #[test]
    fn damaged_state_is_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("state.json"), "{nope").unwrap();
        let e = read_state(&d.path().join("state.json")).unwrap_err();
        assert!(format!("{e:#}").contains("damaged"));
    }
}
