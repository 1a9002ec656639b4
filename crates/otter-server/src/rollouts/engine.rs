//! The rollout decisions, pure: what a tick does to an active rollout ([`step`]), what an
//! admin's action does to a rollout ([`control`]), and what a device's state in a rollout is
//! stored as. No database, no clock: the caller loads, this decides, the caller applies.

use std::fmt;

use otter_proto::admin::{RolloutAction, RolloutState};

/// A device's state within one rollout (`rollout_devices.state`).
pub use otter_proto::admin::RolloutDeviceState as DeviceState;

/// What [`step`] needs to know of an active rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// Index of the current phase.
    pub phase: usize,
    /// Minimum soak of each phase, seconds.
    pub soak_secs: Vec<u64>,
    pub phase_started_at_ms: i64,
    pub success_threshold: f64,
    pub failure_threshold: f64,
    /// Failures acknowledged by the last resume: they no longer count.
    pub ack_failed: u64,
}

/// Devices of the phases started so far, by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl Counts {
    /// From the number of devices in each state.
    pub fn of(by_state: &[(DeviceState, u64)]) -> Counts {
        let mut c = Counts::default();
        for &(state, n) in by_state {
            c.total += n;
            match state {
                DeviceState::Failed => c.failed += n,
                DeviceState::Succeeded => c.succeeded += n,
                DeviceState::Waiting | DeviceState::Targeted => {}
            }
        }
        c
    }
}

/// Why a rollout paused itself; its `Display` is the reason stored and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseReason {
    /// Failures counted (acknowledged ones left out).
    pub failed: u64,
    pub total: u64,
    pub failure_threshold: f64,
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "paused itself: {} of {} device(s) failed ({:.1}%), above the failure threshold of {:.1}%",
            self.failed,
            self.total,
            100.0 * self.failed as f64 / self.total as f64,
            100.0 * self.failure_threshold
        )
    }
}

/// What a tick does to an active rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing yet: the phase soaks, or too few devices succeeded so far.
    Wait,
    /// Start this phase (the index of the next one).
    Advance(usize),
    Pause(PauseReason),
    /// The last phase soaked and succeeded.
    Complete,
}

/// Decides one tick of an active rollout. Failures win over success: a phase whose failure
/// ratio exceeds the threshold pauses even when it also reached the success ratio.
pub fn step(r: &Active, c: Counts, now_ms: i64) -> Decision {
    let failed = c.failed.saturating_sub(r.ack_failed);
    if c.total > 0 && failed as f64 / c.total as f64 > r.failure_threshold {
        return Decision::Pause(PauseReason {
            failed,
            total: c.total,
            failure_threshold: r.failure_threshold,
        });
    }
    // An empty phase (a tiny fleet) has nothing to wait for but its soak.
    let ratio_ok = c.total == 0 || c.succeeded as f64 / c.total as f64 >= r.success_threshold;
    let soak_ms = r
        .soak_secs
        .get(r.phase)
        .map_or(0, |s| (*s as i64).saturating_mul(1000));
    if now_ms - r.phase_started_at_ms < soak_ms || !ratio_ok {
        return Decision::Wait;
    }
    let next = r.phase + 1;
    if next >= r.soak_secs.len() {
        Decision::Complete
    } else {
        Decision::Advance(next)
    }
}

/// An admin's action that the rollout's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    pub state: RolloutState,
    pub action: RolloutAction,
    /// The states the action needs.
    pub needs: &'static [RolloutState],
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needs: Vec<&str> = self.needs.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "is {}; {} needs it {}",
            self.state.as_str(),
            self.action.as_str(),
            needs.join(" or ")
        )
    }
}

/// The state an admin's action moves a rollout to.
pub fn control(state: RolloutState, action: RolloutAction) -> Result<RolloutState, NotAllowed> {
    use RolloutState::*;
    let (needs, to): (&'static [RolloutState], RolloutState) = match action {
        RolloutAction::Pause => (&[Active], Paused),
        RolloutAction::Resume => (&[Paused], Active),
        RolloutAction::Abort => (&[Active, Paused], Aborted),
    };
    if needs.contains(&state) {
        Ok(to)
    } else {
        Err(NotAllowed {
            state,
            action,
            needs,
        })
    }
}

/// The reason recorded for an admin's action.
pub fn control_reason(action: RolloutAction, actor: &str) -> String {
    let done = match action {
        RolloutAction::Pause => "paused",
        RolloutAction::Resume => "resumed",
        RolloutAction::Abort => "aborted",
    };
    format!("{done} by {actor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// Phase 1 of 3 (10 min soak each), started at t = 0, 90% to advance, 10% to pause.
    fn active(phase: usize, ack_failed: u64) -> Active {
        Active {
            phase,
            soak_secs: vec![600, 600, 600],
            phase_started_at_ms: 0,
            success_threshold: 0.9,
            failure_threshold: 0.1,
            ack_failed,
        }
    }

    fn counts(total: u64, succeeded: u64, failed: u64) -> Counts {
        Counts {
            total,
            succeeded,
            failed,
        }
    }

    fn pause(failed: u64, total: u64) -> Decision {
        Decision::Pause(PauseReason {
            failed,
            total,
            failure_threshold: 0.1,
        })
    }

    #[test]
    fn step_table() {
        use Decision::*;
        #[rustfmt::skip]
        let table: Vec<(&str, Active, Counts, i64, Decision)> = vec![
            ("soaking, all succeeded", active(0, 0), counts(10, 10, 0), 9 * MIN, Wait),
            ("soaked, all succeeded", active(0, 0), counts(10, 10, 0), 10 * MIN, Advance(1)),
            ("soaked, exactly the success ratio", active(0, 0), counts(10, 9, 1), 10 * MIN, Advance(1)),
            ("soaked, below the success ratio", active(0, 0), counts(10, 8, 1), 10 * MIN, Wait),
            ("failure ratio at the threshold is no pause", active(0, 0), counts(10, 0, 1), MIN, Wait),
            ("failure ratio above the threshold", active(0, 0), counts(10, 0, 2), MIN, pause(2, 10)),
            ("failures win over a met success ratio", active(0, 0), counts(100, 89, 11), 20 * MIN, pause(11, 100)),
            ("acknowledged failures do not count", active(0, 2), counts(10, 0, 2), MIN, Wait),
            ("only new failures count", active(0, 1), counts(10, 0, 3), MIN, pause(2, 10)),
            ("more acknowledged than failed", active(0, 5), counts(10, 10, 2), 10 * MIN, Advance(1)),
            ("empty phase waits for its soak", active(0, 0), counts(0, 0, 0), 5 * MIN, Wait),
            ("empty phase advances after its soak", active(0, 0), counts(0, 0, 0), 10 * MIN, Advance(1)),
            ("middle phase advances", active(1, 0), counts(50, 50, 0), 10 * MIN, Advance(2)),
            ("last phase completes", active(2, 0), counts(100, 95, 0), 10 * MIN, Complete),
            ("last phase below the ratio waits", active(2, 0), counts(100, 80, 5), 10 * MIN, Wait),
            ("last phase pauses on failures", active(2, 0), counts(100, 80, 20), 10 * MIN, pause(20, 100)),
            ("clock before the phase start", active(0, 0), counts(10, 10, 0), -MIN, Wait),
        ];
        for (what, r, c, now, want) in table {
            assert_eq!(step(&r, c, now), want, "{what}");
        }
    }

    #[test]
    fn counts_of_states() {
        use DeviceState::*;
        let c = Counts::of(&[(Waiting, 5), (Targeted, 3), (Succeeded, 10), (Failed, 2)]);
        assert_eq!(c, counts(20, 10, 2));
        assert_eq!(Counts::of(&[]), counts(0, 0, 0));
    }

    #[test]
    fn zero_soak_and_a_phase_past_the_list() {
        let mut r = active(0, 0);
        r.soak_secs = vec![0, 0];
        assert_eq!(step(&r, counts(1, 1, 0), 0), Decision::Advance(1));
        // A phase index past the list (never stored so) soaks 0 s and completes.
        r.phase = 5;
        assert_eq!(step(&r, counts(1, 1, 0), 0), Decision::Complete);
    }

    #[test]
    fn zero_failure_threshold_pauses_on_the_first_failure() {
        let mut r = active(0, 0);
        r.failure_threshold = 0.0;
        assert_eq!(
            step(&r, counts(1000, 0, 1), 0),
            Decision::Pause(PauseReason {
                failed: 1,
                total: 1000,
                failure_threshold: 0.0
            })
        );
    }

    #[test]
    fn pause_reason_text() {
        let Decision::Pause(p) = pause(2, 10) else {
            unreachable!()
        };
        assert_eq!(
            p.to_string(),
            "paused itself: 2 of 10 device(s) failed (20.0%), above the failure threshold of 10.0%"
        );
    }

    #[test]
    fn control_table() {
        use RolloutAction::*;
        use RolloutState::*;
        #[rustfmt::skip]
        let table = [
            (Active, Pause, Ok(Paused)),
            (Paused, Pause, Err("is paused; pause needs it active")),
            (Completed, Pause, Err("is completed; pause needs it active")),
            (Paused, Resume, Ok(Active)),
            (Active, Resume, Err("is active; resume needs it paused")),
            (Aborted, Resume, Err("is aborted; resume needs it paused")),
            (Active, Abort, Ok(Aborted)),
            (Paused, Abort, Ok(Aborted)),
            (Completed, Abort, Err("is completed; abort needs it active or paused")),
            (Aborted, Abort, Err("is aborted; abort needs it active or paused")),
        ];
        for (state, action, want) in table {
            let got = control(state, action).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "{state:?} {action:?}");
        }
    }

    #[test]
    fn texts() {
        assert_eq!(
            control_reason(RolloutAction::Abort, "admin:x"),
            "aborted by admin:x"
        );
        assert_eq!(
            control_reason(RolloutAction::Pause, "admin:x"),
            "paused by admin:x"
        );
        assert_eq!(
            control_reason(RolloutAction::Resume, "admin:x"),
            "resumed by admin:x"
        );
        for s in DeviceState::ALL {
            assert_eq!(DeviceState::parse(s.as_str()), Some(s));
        }
        for a in RolloutAction::ALL {
            assert_eq!(RolloutAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(RolloutAction::parse("stop"), None);
    }
}
