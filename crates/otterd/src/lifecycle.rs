//! The update lifecycle, decided in pure code: one [`transition`] from (the agent's record, the
//! boot state, an [`Input`]) to (new record, new boot state, [`Effect`]s in the order they must
//! happen). Nothing here touches a file; `agent.rs` and `install.rs` load, call [`transition`]
//! and carry out the effects in order ([`crate::agent::apply`]).
//!
//! The order of the effects is the power-cut argument: whenever the agent's record and the boot
//! state disagree after a cut, the next boot's [`Input::Boot`] resolves it (see the table tests
//! and docs/architecture.md).

use crate::state::{AgentState, DeltaInfo, Phase, Progress, SlotInfo, Update};
use anyhow::{Result, bail};
use otter_boot::{BootState, Slot};
use otter_proto::{Health, UpdatePhase};
use serde::{Deserialize, Serialize};

/// What a history entry records. Stored in `state.json` as the snake_case string
/// (`rolled_back`, …); a string this agent does not know is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EventKind {
    InstallStarted,
    Installed,
    InstallFailed,
    Committed,
    RolledBack,
    RollbackRequested,
    /// Written by another version of the agent.
    Other(String),
}

impl EventKind {
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::InstallStarted => "install_started",
            EventKind::Installed => "installed",
            EventKind::InstallFailed => "install_failed",
            EventKind::Committed => "committed",
            EventKind::RolledBack => "rolled_back",
            EventKind::RollbackRequested => "rollback_requested",
            EventKind::Other(s) => s,
        }
    }
}

impl From<String> for EventKind {
    fn from(s: String) -> EventKind {
        match s.as_str() {
            "install_started" => EventKind::InstallStarted,
            "installed" => EventKind::Installed,
            "install_failed" => EventKind::InstallFailed,
            "committed" => EventKind::Committed,
            "rolled_back" => EventKind::RolledBack,
            "rollback_requested" => EventKind::RollbackRequested,
            _ => EventKind::Other(s),
        }
    }
}

impl From<EventKind> for String {
    fn from(e: EventKind) -> String {
        e.as_str().to_string()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Comparing with the stored string (`e.event == "rolled_back"` in tests and tools).
impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What the boot turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Situation {
    /// Running a committed slot; nothing to decide.
    Normal { slot: Slot },
    /// Running a slot on trial: health decides commit or rollback.
    Trial { slot: Slot, version: String },
    /// Back on the old slot (`slot`) after the update to `failed_version` did not come up
    /// healthy; recorded.
    RolledBack {
        slot: Slot,
        failed_version: String,
        reason: String,
    },
}

impl std::fmt::Display for Situation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Situation::Normal { slot } => write!(f, "running committed slot {slot}"),
            Situation::Trial { slot, version } => {
                write!(
                    f,
                    "trial boot of {version} in slot {slot}: running health checks"
                )
            }
            Situation::RolledBack {
                slot,
                failed_version,
                reason,
            } => write!(
                f,
                "update to {failed_version} rolled back, running slot {slot}: {reason}"
            ),
        }
    }
}

/// What happened, as the lifecycle sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The agent starts on `booted`, which runs `version` (built at `build_time`).
    Boot {
        booted: Slot,
        version: String,
        build_time: u64,
    },
    /// A verified, policy-checked bundle is about to be written into `update.slot`.
    InstallStarted { update: Update },
    /// Writing or verifying the slot failed.
    InstallFailed { reason: String },
    /// The slot is written and verified: arm a trial boot of `tries` boots.
    InstallVerified {
        info: SlotInfo,
        tries: u8,
        progress: Progress,
        delta: DeltaInfo,
    },
    /// Commit the booted slot (health checks passed, or by hand).
    Commit { booted: Slot, why: String },
    /// The trial of `slot` did not become healthy within its deadline.
    HealthDeadline { slot: Slot, reason: String },
    /// `otterd rollback` on `booted`.
    Rollback { booted: Slot },
}

/// A side effect, carried out in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Write the new record (`state.json`).
    SaveRecord,
    /// Write the new boot state through the boot backend.
    StoreBoot,
    /// Reboot the device.
    Reboot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub record: AgentState,
    pub boot: BootState,
    pub effects: Vec<Effect>,
    /// [`Input::Boot`]: what this boot is.
    pub situation: Option<Situation>,
    /// A line for the operator ([`Input::Rollback`]).
    pub message: Option<String>,
}

/// The one transition function of the device's update lifecycle. `now` stamps the record.
/// Errors are refusals (nothing to do, or not allowed) and change nothing.
pub fn transition(
    record: &AgentState,
    boot: &BootState,
    input: Input,
    now: u64,
) -> Result<Outcome> {
    let mut st = record.clone();
    let mut b = *boot;
    let mut situation = None;
    let mut message = None;
    let effects = match input {
        Input::Boot {
            booted,
            version,
            build_time,
        } => {
            let (s, boot_changed) = on_boot(&mut st, &mut b, booted, version, build_time, now);
            situation = Some(s);
            // The boot state first: a cut before the record is saved repeats this decision.
            if boot_changed {
                vec![Effect::StoreBoot, Effect::SaveRecord]
            } else {
                vec![Effect::SaveRecord]
            }
        }
        Input::InstallStarted { update } => {
            let (version, target, source) =
                (update.version.clone(), update.slot, update.source.clone());
            st.update = Some(update);
            st.slots.remove(&target);
            st.record_at(now, EventKind::InstallStarted, &version, target, &source);
            // Recorded as installing before the slot is marked bad: a cut in between leaves an
            // `installing` record that the next boot turns into `failed`.
            b.mark_bad(target);
            vec![Effect::SaveRecord, Effect::StoreBoot]
        }
        Input::InstallFailed { reason } => {
            let Some(u) = st.update.as_mut() else {
                bail!("no install in progress");
            };
            u.phase = Phase::Failed;
            u.reason = Some(reason.clone());
            u.updated_at = now;
            let (version, slot) = (u.version.clone(), u.slot);
            st.record_at(now, EventKind::InstallFailed, &version, slot, &reason);
            vec![Effect::SaveRecord]
        }
        Input::InstallVerified {
            info,
            tries,
            progress,
            delta,
        } => {
            let Some(u) = st.update.as_mut() else {
                bail!("no install in progress");
            };
            let (target, version) = (u.slot, u.version.clone());
            u.phase = Phase::Installed;
            u.progress = Some(progress);
            u.delta = Some(delta);
            u.updated_at = now;
            st.slots.insert(target, info);
            st.record_at(
                now,
                EventKind::Installed,
                &version,
                target,
                "reboot to try it",
            );
            b.set_try(target, tries);
            // Armed before recorded: after a cut in between, the trial boots with an
            // `installing` record; its commit, or the fallback's `Boot`, settles it.
            vec![Effect::StoreBoot, Effect::SaveRecord]
        }
        Input::Commit { booted, why } => {
            if b.slot(booted).good && b.primary() == booted {
                bail!("slot {booted} is already committed");
            }
            b.commit(booted);
            let version = st
                .slots
                .get(&booted)
                .map(|s| s.version.clone())
                .unwrap_or_default();
            if let Some(u) = st.update.as_mut()
                && u.slot == booted
            {
                u.phase = Phase::Committed;
                u.updated_at = now;
            }
            st.record_at(now, EventKind::Committed, &version, booted, &why);
            vec![Effect::StoreBoot, Effect::SaveRecord]
        }
        Input::HealthDeadline { slot, reason } => {
            if let Some(u) = st.update.as_mut()
                && u.slot == slot
            {
                u.phase = Phase::Unhealthy;
                u.reason = Some(reason);
                u.updated_at = now;
            }
            b.mark_bad(slot);
            // The reason is saved before the boot state changes, so it survives any power cut.
            vec![Effect::SaveRecord, Effect::StoreBoot, Effect::Reboot]
        }
        Input::Rollback { booted } => {
            let other = booted.other();
            if !b.slot(other).good {
                bail!("slot {other} holds no committed system to roll back to");
            }
            let version = st
                .slots
                .get(&other)
                .map(|s| s.version.clone())
                .unwrap_or_else(|| "unknown".into());
            let msg = if b.slot(booted).good {
                b.commit(other);
                format!("slot {other} ({version}) is primary again")
            } else {
                if let Some(u) = st.update.as_mut()
                    && u.slot == booted
                {
                    u.phase = Phase::Unhealthy;
                    u.reason = Some("rolled back by hand (otterd rollback)".into());
                    u.updated_at = now;
                }
                b.mark_bad(booted);
                format!("slot {booted} marked bad; slot {other} ({version}) boots next")
            };
            st.record_at(now, EventKind::RollbackRequested, &version, other, &msg);
            message = Some(msg);
            vec![Effect::SaveRecord, Effect::StoreBoot]
        }
    };
    Ok(Outcome {
        record: st,
        boot: b,
        effects,
        situation,
        message,
    })
}

/// At boot: what the boot loader did since the last run, given what the record expected.
/// Returns the situation and whether the boot state changed.
fn on_boot(
    st: &mut AgentState,
    boot: &mut BootState,
    booted: Slot,
    version: String,
    build_time: u64,
    now: u64,
) -> (Situation, bool) {
    let known = st.slots.get(&booted).map(|s| s.version.as_str());
    if known != Some(version.as_str()) {
        st.slots.insert(
            booted,
            SlotInfo {
                version: version.clone(),
                installed_at: build_time,
                size: None,
                sha256: None,
            },
        );
    }
    let booted_good = boot.slot(booted).good;
    let mut situation = if booted_good {
        Situation::Normal { slot: booted }
    } else {
        Situation::Trial {
            slot: booted,
            version,
        }
    };
    let mut boot_changed = false;
    let mut event = None;
    if let Some(u) = st.update.as_mut() {
        if u.slot == booted {
            match u.phase {
                Phase::Installed | Phase::Trying if !booted_good => {
                    u.phase = Phase::Trying;
                    u.updated_at = now;
                }
                // Committed in the boot state but the record did not follow (power cut).
                Phase::Installed | Phase::Trying | Phase::Unhealthy if booted_good => {
                    u.phase = Phase::Committed;
                    u.updated_at = now;
                }
                _ => {}
            }
        } else {
            match u.phase {
                Phase::Installed | Phase::Trying | Phase::Unhealthy => {
                    let reason = match (&u.phase, &u.reason) {
                        (Phase::Unhealthy, Some(r)) => r.clone(),
                        (Phase::Installed, _) => format!(
                            "slot {} with {} did not come up: the boot loader fell back to slot {booted} \
                             (kernel panic, hang or reset before the agent started)",
                            u.slot, u.version
                        ),
                        _ => format!(
                            "slot {} with {} was not committed (reset during its trial boot, before a commit \
                             reached the boot state); the boot loader fell back to slot {booted}",
                            u.slot, u.version
                        ),
                    };
                    u.phase = Phase::RolledBack;
                    u.reason = Some(reason.clone());
                    u.updated_at = now;
                    if boot.slot(u.slot).good
                        || boot.slot(u.slot).tries > 0
                        || boot.primary() != booted
                    {
                        boot.mark_bad(u.slot);
                        boot_changed = true;
                    }
                    situation = Situation::RolledBack {
                        slot: booted,
                        failed_version: u.version.clone(),
                        reason: reason.clone(),
                    };
                    event = Some((EventKind::RolledBack, u.version.clone(), u.slot, reason));
                }
                Phase::Installing => {
                    let reason =
                        "the install was interrupted (power loss or crash while writing the slot)"
                            .to_string();
                    u.phase = Phase::Failed;
                    u.reason = Some(reason.clone());
                    u.updated_at = now;
                    if boot.slot(u.slot).good || boot.slot(u.slot).tries > 0 {
                        boot.mark_bad(u.slot);
                        boot_changed = true;
                    }
                    event = Some((EventKind::InstallFailed, u.version.clone(), u.slot, reason));
                }
                _ => {}
            }
        }
    }
    if let Some((kind, version, slot, detail)) = event {
        st.record_at(now, kind, &version, slot, &detail);
    }
    (situation, boot_changed)
}

/// The update phase reported to the fleet server for the record's update.
pub fn server_phase(u: &Update, reboot_pending: bool) -> UpdatePhase {
    match u.phase {
        Phase::Installing if u.progress.as_ref().is_some_and(|p| p.fetched_bytes > 0) => {
            UpdatePhase::Downloading
        }
        Phase::Installing => UpdatePhase::Installing,
        Phase::Installed if reboot_pending => UpdatePhase::Installed,
        Phase::Installed => UpdatePhase::Rebooting,
        Phase::Trying | Phase::Unhealthy => UpdatePhase::Trying,
        Phase::Committed => UpdatePhase::Committed,
        Phase::RolledBack => UpdatePhase::RolledBack,
        Phase::Failed => UpdatePhase::Failed,
    }
}

/// The health reported to the fleet server: none while a trial decides, unhealthy when it
/// failed, healthy on a running committed system.
pub fn server_health(phase: Option<Phase>, booted_known: bool) -> Option<Health> {
    match phase {
        Some(Phase::Trying) | Some(Phase::Installed) => None,
        Some(Phase::Unhealthy) => Some(Health::Unhealthy),
        _ if booted_known => Some(Health::Healthy),
        _ => None,
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
