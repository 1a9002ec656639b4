//! What a device's report means for the rollouts it is in: success, failure, or not yet.

use otter_proto::{AppPhase, StateReport, UpdatePhase};
use sqlx::{Any, Transaction};

use super::DeviceState;
use crate::store::{self, audit};

/// Applies a device's report to its rollouts. OS: success when it committed or runs the
/// release, failure on an install error or a rollback of it. Apps: success when the app
/// release is applied and every service runs (healthy, where it has a health check), failure
/// when it was rolled back, failed or refused.
pub async fn record_report(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    r: &StateReport,
    now: i64,
) -> sqlx::Result<()> {
    record_os(tx, device_id, r, now).await?;
    record_apps(tx, device_id, r, now).await
}

async fn record_os(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    r: &StateReport,
    now: i64,
) -> sqlx::Result<()> {
    let Some((rollout_id, version)) = store::rollouts::os_targeted(tx, device_id).await? else {
        return Ok(());
    };
    let Some((state, reason)) = os_outcome(r, &version) else {
        return Ok(());
    };
    finish_device(tx, &rollout_id, device_id, state, &reason, now).await
}

/// What a state report means for a rollout of the OS release `version`.
fn os_outcome(r: &StateReport, version: &str) -> Option<(DeviceState, String)> {
    let mut outcome: Option<(DeviceState, String)> = None;
    if let Some(rb) = r.rollbacks.iter().find(|rb| rb.version == version) {
        outcome = Some((DeviceState::Failed, format!("rolled back: {}", rb.reason)));
    } else if let Some(u) = r.update.as_ref().filter(|u| u.version == version) {
        if u.phase.is_failure() {
            let why = u.error.clone().unwrap_or_else(|| u.phase.as_str().into());
            let what = if u.phase == UpdatePhase::RolledBack {
                "rolled back"
            } else {
                "install failed"
            };
            outcome = Some((DeviceState::Failed, format!("{what}: {why}")));
        } else if u.phase == UpdatePhase::Committed {
            outcome = Some((DeviceState::Succeeded, String::new()));
        }
    } else if r.os_version.as_deref() == Some(version) {
        outcome = Some((DeviceState::Succeeded, String::new()));
    }
    outcome
}

async fn record_apps(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    r: &StateReport,
    now: i64,
) -> sqlx::Result<()> {
    let Some(apps) = &r.apps else { return Ok(()) };
    let Some((rollout_id, release_id)) = store::rollouts::apps_targeted(tx, device_id).await?
    else {
        return Ok(());
    };
    let Some((state, reason)) = app_outcome(apps, &release_id) else {
        return Ok(());
    };
    finish_device(tx, &rollout_id, device_id, state, &reason, now).await
}

/// What an apps report means for a rollout of app release `release_id`.
pub fn app_outcome(
    apps: &otter_proto::AppsReport,
    release_id: &str,
) -> Option<(DeviceState, String)> {
    if let Some(l) = apps
        .last_apply
        .as_ref()
        .filter(|l| l.app_release_id == release_id)
    {
        if l.phase.is_failure() {
            let why = l.error.clone().unwrap_or_else(|| l.phase.as_str().into());
            let what = match l.phase {
                AppPhase::RolledBack => "rolled back",
                AppPhase::Refused => "refused",
                _ => "apply failed",
            };
            return Some((DeviceState::Failed, format!("{what}: {why}")));
        }
        if l.phase != AppPhase::Applied {
            return None;
        }
    }
    let runs = apps.app_release_id.as_deref() == Some(release_id);
    (runs && apps.services.iter().all(|s| s.is_ok()))
        .then(|| (DeviceState::Succeeded, String::new()))
}

async fn finish_device(
    tx: &mut Transaction<'_, Any>,
    rollout_id: &str,
    device_id: &str,
    state: DeviceState,
    reason: &str,
    now: i64,
) -> sqlx::Result<()> {
    store::rollouts::finish_device(tx, rollout_id, device_id, state, reason, now).await?;
    if state == DeviceState::Failed {
        audit(
            &mut **tx,
            &format!("device:{device_id}"),
            "device_failed",
            &format!("rollout:{rollout_id}"),
            reason,
        )
        .await?;
    }
    Ok(())
}
