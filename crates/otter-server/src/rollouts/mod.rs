//! Rollouts: a release targeted at a set of devices in phases (e.g. 1% → 10% → 50% → 100%).
//!
//! Every targeted device gets a random position; phase k covers the first ⌈pₖ·N⌉ positions.
//! Starting a phase sets the target (and the target ETag) of its devices in one `UPDATE`, so the
//! poll path stays a single indexed read. A device's reports mark it `succeeded` (committed the
//! release, or runs it) or `failed` (install error, rollback); a device that stays silent past the
//! deadline counts as failed. A tick (every process runs one; each change is a conditional
//! `UPDATE` in a transaction, so two processes never both apply it) pauses a rollout whose failure
//! ratio exceeds its threshold, and advances it when the current phase has soaked long enough and
//! its success ratio reaches the threshold. Every change is recorded in the audit table.
//!
//! A rollout updates either the devices' OS (an OS release) or their apps (an app release,
//! applied without a reboot): the two kinds use their own device columns ([`Cols`](crate::store::rollouts::Cols)), so a
//! device can be in one rollout of each kind at once, and a pin of one kind does not stop a
//! rollout of the other.

use otter_proto::admin::{
    CreateRollout, DeviceStatus, PhaseSpec, Rollout, RolloutAction, RolloutKind,
};
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use sqlx::{Any, Transaction};

use crate::AppState;
use crate::error::{ApiErr, ApiResult};
use crate::store::rollouts::{Cols, StoredPhase};
use crate::store::{self, audit, now_ms};

pub mod engine;
mod outcome;
mod tick;

pub use engine::{Decision, DeviceState};
pub use outcome::{app_outcome, record_report};
pub use store::rollouts::{APPS, OS, cols};
pub use tick::{run_ticker, tick};

/// The target ETag of a device: changes exactly when what `GET /target` answers changes.
pub fn etag_for(release_id: Option<&str>, source: Option<&str>) -> String {
    match release_id {
        None => "none".into(),
        Some(r) => {
            let h = Sha256::digest(format!("{r}\n{}", source.unwrap_or("")).as_bytes());
            hex::encode(&h[..8])
        }
    }
}

/// The `ETag` of a device's whole target state: the OS part alone while no app release is
/// targeted (so it is what it was before app releases existed).
pub fn combined_etag(os: &str, apps: &str) -> String {
    if apps == "none" {
        os.to_owned()
    } else {
        format!("{os}-{apps}")
    }
}

/// Recomputes one device's targets (OS and apps) from its pins and rollouts (inside the
/// caller's transaction).
pub async fn refresh_target(tx: &mut Transaction<'_, Any>, device_id: &str) -> sqlx::Result<()> {
    for c in [OS, APPS] {
        let i = store::rollouts::target_inputs(tx, device_id, c).await?;
        // A pin wins over a rollout.
        let (target, etag) = match (&i.pin, &i.rollout_release) {
            (Some(p), _) => (Some(p.as_str()), etag_for(Some(p), Some("pin"))),
            (None, Some(r)) => (Some(r.as_str()), etag_for(Some(r), i.rollout.as_deref())),
            (None, None) => (None, etag_for(None, None)),
        };
        store::rollouts::set_target(tx, device_id, c, target, &etag).await?;
    }
    Ok(())
}

/// Targets the devices of phase `phase` (not pinned ones: a pin wins).
async fn start_phase(
    tx: &mut Transaction<'_, Any>,
    c: Cols,
    rollout_id: &str,
    release_id: &str,
    phase: i64,
    now: i64,
) -> sqlx::Result<()> {
    let etag = etag_for(Some(release_id), Some(rollout_id));
    store::rollouts::start_phase(tx, c, rollout_id, release_id, &etag, phase, now).await
}

pub const DEFAULT_SUCCESS_THRESHOLD: f64 = 0.95;
pub const DEFAULT_FAILURE_THRESHOLD: f64 = 0.05;
pub const DEFAULT_DEADLINE_SECS: u64 = 3600;

pub fn default_phases() -> Vec<PhaseSpec> {
    [1.0, 10.0, 50.0, 100.0]
        .into_iter()
        .map(|percent| PhaseSpec {
            percent,
            min_soak_secs: 600,
        })
        .collect()
}

fn check_spec(phases: &[PhaseSpec], success: f64, failure: f64, deadline: u64) -> ApiResult<()> {
    let bad = |m: String| ApiErr::bad_request("invalid_rollout", m);
    if phases.is_empty() || phases.len() > 20 {
        return Err(bad(format!("{} phases: give 1 to 20", phases.len())));
    }
    let mut prev = 0.0;
    for (i, p) in phases.iter().enumerate() {
        if !(p.percent > prev && p.percent <= 100.0) {
            return Err(bad(format!(
                "phase {}: percent {} must be above the previous phase's ({prev}) and at most 100",
                i + 1,
                p.percent
            )));
        }
        prev = p.percent;
    }
    if prev != 100.0 {
        return Err(bad(format!(
            "the last phase must be 100 percent, not {prev}"
        )));
    }
    if !(success > 0.0 && success <= 1.0) {
        return Err(bad(format!(
            "success_threshold {success}: must be in (0, 1]"
        )));
    }
    if !(0.0..1.0).contains(&failure) {
        return Err(bad(format!(
            "failure_threshold {failure}: must be in [0, 1)"
        )));
    }
    if deadline == 0 {
        return Err(bad("device_deadline_secs must be above 0".into()));
    }
    Ok(())
}

/// Number of devices covered by phases up to and including each phase.
fn cumulative_counts(phases: &[PhaseSpec], n: usize) -> Vec<usize> {
    phases
        .iter()
        .map(|p| {
            let c = (p.percent / 100.0 * n as f64).ceil() as usize;
            c.clamp(usize::from(n > 0), n)
        })
        .collect()
}

pub async fn create(st: &AppState, actor: &str, spec: CreateRollout) -> ApiResult<String> {
    let phases = spec.phases.clone().unwrap_or_else(default_phases);
    let success = spec.success_threshold.unwrap_or(DEFAULT_SUCCESS_THRESHOLD);
    let failure = spec.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD);
    let deadline = spec.device_deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS);
    check_spec(&phases, success, failure, deadline)?;
    let app_release = spec.app_release.as_deref().filter(|a| !a.is_empty());
    let (kind, release_id, version, compatible) = match (spec.release.is_empty(), app_release) {
        (false, None) => {
            let (id, v, c) = crate::releases::resolve(st, &spec.release).await?;
            (RolloutKind::Os, id, v, Some(c))
        }
        (true, Some(a)) => {
            let ar = crate::app_releases::load(st, a).await?;
            (RolloutKind::Apps, ar.id, ar.version, None)
        }
        (false, Some(_)) => {
            return Err(ApiErr::bad_request(
                "invalid_rollout",
                "give either `release` (an OS release) or `app_release`, not both",
            ));
        }
        (true, None) => {
            return Err(ApiErr::bad_request(
                "invalid_rollout",
                "give `release` (an OS release id or version) or `app_release` (an app release)",
            ));
        }
    };
    let c = cols(kind);
    let what = match kind {
        RolloutKind::Os => "release",
        RolloutKind::Apps => "app release",
    };

    // Devices in an unfinished rollout (of the same kind) are not taken by another one.
    // Every device of such a rollout counts, also those of phases not started yet.
    let busy = store::rollouts::busy_devices(&st.db, kind).await?;
    let mut devices: Vec<String> = Vec::new();
    if spec.selector.devices.is_empty() {
        // An app release runs on any board (its images name their platforms).
        for (id, tags) in store::rollouts::candidates(&st.db, c, compatible.as_deref()).await? {
            let has_all = spec
                .selector
                .tags
                .iter()
                .all(|t| tags.split(',').any(|x| x == t));
            if has_all && !busy.contains(&id) {
                devices.push(id);
            }
        }
    } else {
        for id in &spec.selector.devices {
            let r = store::rollouts::selectable(&st.db, c, id)
                .await?
                .ok_or_else(|| {
                    ApiErr::not_found(
                        "unknown_device",
                        format!("no device {id} (otter devices ls)"),
                    )
                })?;
            let dc = r.compatible;
            if let Some(compatible) = &compatible
                && &dc != compatible
            {
                return Err(ApiErr::bad_request(
                    "incompatible_board",
                    format!("device {id} is {dc}; release {version} is for {compatible}"),
                ));
            }
            let status = r.status;
            if status != DeviceStatus::Accepted.as_str() {
                return Err(ApiErr::conflict(
                    "device_not_accepted",
                    format!("device {id} is {status}"),
                ));
            }
            if r.pinned {
                return Err(ApiErr::conflict(
                    "device_pinned",
                    format!("device {id} is pinned to an {what}; unpin it first"),
                ));
            }
            if busy.contains(id) {
                return Err(ApiErr::conflict(
                    "device_in_rollout",
                    format!("device {id} is in another active or paused rollout of an {what}"),
                ));
            }
            let tags = r.tags;
            if spec
                .selector
                .tags
                .iter()
                .all(|t| tags.split(',').any(|x| x == t))
                && !devices.contains(id)
            {
                devices.push(id.clone());
            }
        }
    }
    if devices.is_empty() {
        let board = compatible
            .as_ref()
            .map(|c| format!(" of board {c}"))
            .unwrap_or_default();
        return Err(ApiErr::bad_request(
            "no_devices",
            format!(
                "no accepted device{board} without an {what} pin and outside other rollouts of one matches the selector"
            ),
        ));
    }
    devices.shuffle(&mut rand::thread_rng());
    let cum = cumulative_counts(&phases, devices.len());
    let now = now_ms();
    let stored: Vec<StoredPhase> = phases
        .iter()
        .enumerate()
        .map(|(i, p)| StoredPhase {
            percent: p.percent,
            min_soak_secs: p.min_soak_secs,
            started_at_ms: (i == 0).then_some(now),
        })
        .collect();
    let id = crate::auth::new_id();
    let mut tx = st.db.write.begin().await?;
    let new = store::rollouts::NewRollout {
        id: &id,
        kind,
        release_id: &release_id,
        phases: &stored,
        success_threshold: success,
        failure_threshold: failure,
        deadline_secs: deadline,
        total: devices.len(),
        created_by: actor,
    };
    store::rollouts::insert(&mut tx, &new, now).await?;
    let placed: Vec<(&str, usize, usize)> = devices
        .iter()
        .enumerate()
        .map(|(pos, dev)| {
            let phase = cum.iter().position(|&c| pos < c).unwrap_or(cum.len() - 1);
            (dev.as_str(), pos, phase)
        })
        .collect();
    store::rollouts::insert_devices(&mut tx, &id, &placed).await?;
    let phase_text: Vec<String> = phases.iter().map(|p| format!("{}%", p.percent)).collect();
    audit(
        &mut *tx,
        actor,
        "rollout_created",
        &format!("rollout:{id}"),
        &format!(
            "{what} {version} ({release_id}) to {} device(s), phases {}",
            devices.len(),
            phase_text.join(" → ")
        ),
    )
    .await?;
    start_phase(&mut tx, c, &id, &release_id, 0, now).await?;
    tx.commit().await?;
    Ok(id)
}

/// Pause, resume or abort by an admin.
pub async fn control(st: &AppState, actor: &str, id: &str, action: RolloutAction) -> ApiResult<()> {
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let (state, kind) = store::rollouts::state_and_kind(&mut tx, id)
        .await?
        .ok_or_else(|| unknown_rollout(id))?;
    let to = engine::control(state, action)
        .map_err(|e| ApiErr::conflict("bad_state", format!("rollout {id} {e}")))?;
    let reason = engine::control_reason(action, actor);
    if action == RolloutAction::Resume {
        store::rollouts::resume(&mut tx, id, now).await?;
    } else {
        store::rollouts::set_state(&mut tx, id, to, &reason, now).await?;
    }
    if action == RolloutAction::Abort {
        // Devices stop being targeted; what they installed stays.
        for device in store::rollouts::release_devices(&mut tx, cols(kind), id).await? {
            refresh_target(&mut tx, &device).await?;
        }
    }
    let subject = format!("rollout:{id}");
    audit(
        &mut *tx,
        actor,
        &format!("rollout_{}", to.as_str()),
        &subject,
        &reason,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

fn unknown_rollout(id: &str) -> ApiErr {
    ApiErr::not_found(
        "unknown_rollout",
        format!("no rollout {id} (otter rollout status)"),
    )
}

/// Fails with `unknown_rollout` when there is no rollout `id`.
pub async fn ensure_exists(st: &AppState, id: &str) -> ApiResult<()> {
    if store::rollouts::exists(&st.db, id).await? {
        Ok(())
    } else {
        Err(unknown_rollout(id))
    }
}

/// A rollout with its counts, latest failures and history.
pub async fn load(st: &AppState, id: &str) -> ApiResult<Rollout> {
    let mut r = store::rollouts::load(&st.db, id)
        .await?
        .ok_or_else(|| ApiErr::not_found("unknown_rollout", format!("no rollout {id}")))?;
    r.events = store::audit_log::for_subject(&st.db, &format!("rollout:{id}"), 100).await?;
    Ok(r)
}

/// The newest 200 rollouts, newest first.
pub async fn list(st: &AppState) -> ApiResult<Vec<Rollout>> {
    let mut out = Vec::new();
    for id in store::rollouts::recent_ids(&st.db, 200).await? {
        out.push(load(st, &id).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use otter_proto::AppPhase;

    fn ph(ps: &[f64]) -> Vec<PhaseSpec> {
        ps.iter()
            .map(|&percent| PhaseSpec {
                percent,
                min_soak_secs: 0,
            })
            .collect()
    }

    #[test]
    fn phase_sizes() {
        assert_eq!(
            cumulative_counts(&ph(&[1.0, 10.0, 50.0, 100.0]), 1000),
            vec![10, 100, 500, 1000]
        );
        // A tiny fleet still gets one device in the first phase.
        assert_eq!(cumulative_counts(&ph(&[1.0, 100.0]), 3), vec![1, 3]);
        assert_eq!(cumulative_counts(&ph(&[100.0]), 0), vec![0]);
    }

    #[test]
    fn spec_checks() {
        assert!(check_spec(&ph(&[10.0, 100.0]), 0.9, 0.1, 60).is_ok());
        assert!(check_spec(&ph(&[10.0, 50.0]), 0.9, 0.1, 60).is_err());
        assert!(check_spec(&ph(&[50.0, 10.0, 100.0]), 0.9, 0.1, 60).is_err());
        assert!(check_spec(&ph(&[100.0]), 1.5, 0.1, 60).is_err());
        assert!(check_spec(&ph(&[100.0]), 0.9, 1.0, 60).is_err());
        assert!(check_spec(&ph(&[100.0]), 0.9, 0.1, 0).is_err());
        assert!(check_spec(&[], 0.9, 0.1, 60).is_err());
    }

    #[test]
    fn app_outcomes() {
        use otter_proto::{AppApplyReport, AppsReport, ServiceReport};
        let svc = |health: &str| ServiceReport {
            app: "a".into(),
            service: "web".into(),
            image: "i".into(),
            state: "running".into(),
            health: health.into(),
            restarts: 0,
        };
        let apply = |phase| AppApplyReport {
            app_release_id: "ar2".into(),
            version: "2".into(),
            phase,
            progress: None,
            error: Some("web: unhealthy".into()),
            apps: vec![],
        };
        let mut rep = AppsReport {
            source: "release".into(),
            app_release_id: Some("ar1".into()),
            version: Some("1".into()),
            last_apply: Some(apply(AppPhase::Applying)),
            services: vec![svc("healthy")],
        };
        // Still applying: nothing yet.
        assert_eq!(app_outcome(&rep, "ar2"), None);
        rep.last_apply = Some(apply(AppPhase::RolledBack));
        let (state, why) = app_outcome(&rep, "ar2").unwrap();
        assert_eq!(state, "failed");
        assert!(
            why.contains("rolled back") && why.contains("unhealthy"),
            "{why}"
        );
        rep.last_apply = Some(apply(AppPhase::Deferred));
        assert_eq!(app_outcome(&rep, "ar2"), None);
        // Applied, but a service is still starting: not yet.
        rep.last_apply = Some(apply(AppPhase::Applied));
        rep.app_release_id = Some("ar2".into());
        rep.services = vec![svc("starting")];
        assert_eq!(app_outcome(&rep, "ar2"), None);
        rep.services = vec![svc("healthy"), svc("none")];
        assert_eq!(app_outcome(&rep, "ar2").unwrap().0, "succeeded");
        // Another release's outcome says nothing about this one.
        assert_eq!(app_outcome(&rep, "ar3"), None);
    }

    #[test]
    fn etags() {
        assert_eq!(combined_etag("abc", "none"), "abc");
        assert_eq!(combined_etag("abc", "def"), "abc-def");
        assert_eq!(etag_for(None, None), "none");
        assert_ne!(
            etag_for(Some("r1"), Some("a")),
            etag_for(Some("r1"), Some("b"))
        );
        assert_eq!(
            etag_for(Some("r1"), Some("a")),
            etag_for(Some("r1"), Some("a"))
        );
    }
}
