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
//! applied without a reboot): the two kinds use their own device columns ([`Cols`]), so a
//! device can be in one rollout of each kind at once, and a pin of one kind does not stop a
//! rollout of the other.

use std::collections::HashMap;

use anyhow::Context;
use otter_proto::admin::{
    CreateRollout, PhaseSpec, PhaseStatus, Rollout, RolloutAction, RolloutFailure, RolloutKind,
    RolloutState,
};
use otter_proto::{AppPhase, StateReport, UpdatePhase};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use crate::AppState;
use crate::db::{audit, now_ms};
use crate::error::{ApiErr, ApiResult};

pub mod engine;
pub use engine::{Decision, DeviceState};

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

/// The device columns a rollout kind works on.
#[derive(Debug, Clone, Copy)]
pub struct Cols {
    /// The rollout the device is in.
    pub rollout: &'static str,
    /// That rollout's release.
    pub release: &'static str,
    pub pin: &'static str,
    /// What `GET /target` answers (pin, else rollout).
    pub target: &'static str,
    pub etag: &'static str,
}

pub const OS: Cols = Cols {
    rollout: "rollout_id",
    release: "rollout_release_id",
    pin: "pinned_release_id",
    target: "target_release_id",
    etag: "target_etag",
};

pub const APPS: Cols = Cols {
    rollout: "app_rollout_id",
    release: "app_rollout_release_id",
    pin: "pinned_app_release_id",
    target: "target_app_release_id",
    etag: "app_etag",
};

pub fn cols(kind: RolloutKind) -> Cols {
    match kind {
        RolloutKind::Os => OS,
        RolloutKind::Apps => APPS,
    }
}

fn parse_kind(s: &str) -> RolloutKind {
    if s == "apps" {
        RolloutKind::Apps
    } else {
        RolloutKind::Os
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
        refresh_kind(tx, device_id, c).await?;
    }
    Ok(())
}

async fn refresh_kind(tx: &mut Transaction<'_, Any>, device_id: &str, c: Cols) -> sqlx::Result<()> {
    let row = sqlx::query(&format!(
        "SELECT {} AS pin, {} AS rollout, {} AS rollout_release FROM devices WHERE id = $1",
        c.pin, c.rollout, c.release
    ))
    .bind(device_id)
    .fetch_one(&mut **tx)
    .await?;
    let pinned: Option<String> = row.try_get("pin")?;
    let rollout: Option<String> = row.try_get("rollout")?;
    let rollout_release: Option<String> = row.try_get("rollout_release")?;
    let (target, etag) = match (&pinned, &rollout_release) {
        (Some(p), _) => (Some(p.clone()), etag_for(Some(p), Some("pin"))),
        (None, Some(r)) => (Some(r.clone()), etag_for(Some(r), rollout.as_deref())),
        (None, None) => (None, etag_for(None, None)),
    };
    sqlx::query(&format!(
        "UPDATE devices SET {} = $1, {} = $2 WHERE id = $3",
        c.target, c.etag
    ))
    .bind(target)
    .bind(etag)
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPhase {
    percent: f64,
    min_soak_secs: u64,
    started_at_ms: Option<i64>,
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

/// Finds a release by id, or by version when that is unambiguous.
pub async fn resolve_release(st: &AppState, what: &str) -> ApiResult<(String, String, String)> {
    let rows = sqlx::query(
        "SELECT id, version, compatible FROM releases WHERE id = $1 OR version = $1 ORDER BY uploaded_at",
    )
    .bind(what)
    .fetch_all(&st.db.read)
    .await?;
    if let Some(r) = rows
        .iter()
        .find(|r| r.try_get::<String, _>("id").is_ok_and(|id| id == what))
    {
        return Ok((
            r.try_get("id")?,
            r.try_get("version")?,
            r.try_get("compatible")?,
        ));
    }
    match rows.len() {
        0 => Err(ApiErr::not_found(
            "unknown_release",
            format!("no release with id or version {what:?} (otter release ls)"),
        )),
        1 => Ok((
            rows[0].try_get("id")?,
            rows[0].try_get("version")?,
            rows[0].try_get("compatible")?,
        )),
        _ => Err(ApiErr::conflict(
            "ambiguous_release",
            format!(
                "version {what} exists for several boards; give the release id (otter release ls)"
            ),
        )),
    }
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
            let (id, v, c) = resolve_release(st, &spec.release).await?;
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
    let busy_rows = sqlx::query(
        "SELECT rd.device_id AS id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
         WHERE r.state IN ($2, $3) AND r.kind = $1",
    )
    .bind(kind.as_str())
    .bind(RolloutState::Active.as_str())
    .bind(RolloutState::Paused.as_str())
    .fetch_all(&st.db.read)
    .await?;
    let mut busy = std::collections::HashSet::new();
    for r in busy_rows {
        busy.insert(r.try_get::<String, _>("id")?);
    }
    let mut devices: Vec<String> = Vec::new();
    if spec.selector.devices.is_empty() {
        // An app release runs on any board (its images name their platforms).
        let rows = sqlx::query(&format!(
            "SELECT id, tags FROM devices WHERE status = 'accepted' AND {} IS NULL AND (compatible = $1 OR $2 = 1)",
            c.pin
        ))
        .bind(compatible.clone().unwrap_or_default())
        .bind(i64::from(compatible.is_none()))
        .fetch_all(&st.db.read)
        .await?;
        for r in rows {
            let id: String = r.try_get("id")?;
            let tags: String = r.try_get("tags")?;
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
            let r = sqlx::query(&format!(
                "SELECT status, compatible, tags, {} AS pin FROM devices WHERE id = $1",
                c.pin
            ))
            .bind(id)
            .fetch_optional(&st.db.read)
            .await?
            .ok_or_else(|| {
                ApiErr::not_found(
                    "unknown_device",
                    format!("no device {id} (otter devices ls)"),
                )
            })?;
            let dc: String = r.try_get("compatible")?;
            if let Some(compatible) = &compatible
                && &dc != compatible
            {
                return Err(ApiErr::bad_request(
                    "incompatible_board",
                    format!("device {id} is {dc}; release {version} is for {compatible}"),
                ));
            }
            let status: String = r.try_get("status")?;
            if status != "accepted" {
                return Err(ApiErr::conflict(
                    "device_not_accepted",
                    format!("device {id} is {status}"),
                ));
            }
            if r.try_get::<Option<String>, _>("pin")?.is_some() {
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
            let tags: String = r.try_get("tags")?;
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
    sqlx::query(
        "INSERT INTO rollouts (id, release_id, state, phase, phases_json, success_threshold, failure_threshold, deadline_secs, total, phase_started_at, created_at, created_by, updated_at, kind) \
         VALUES ($1, $2, $11, 0, $3, $4, $5, $6, $7, $8, $8, $9, $8, $10)",
    )
    .bind(&id)
    .bind(&release_id)
    .bind(serde_json::to_string(&stored).map_err(|e| ApiErr::internal("encoding phases", e))?)
    .bind(success)
    .bind(failure)
    .bind(deadline as i64)
    .bind(devices.len() as i64)
    .bind(now)
    .bind(actor)
    .bind(kind.as_str())
    .bind(RolloutState::Active.as_str())
    .execute(&mut *tx)
    .await?;
    // Many rows per statement: 100,000 single inserts would hold the writer for long.
    for (chunk_no, chunk) in devices.chunks(200).enumerate() {
        let mut sql = String::from(
            "INSERT INTO rollout_devices (rollout_id, device_id, position, phase, state) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let b = i * 3;
            sql.push_str(&format!(
                "($1, ${}, ${}, ${}, '{}')",
                b + 2,
                b + 3,
                b + 4,
                DeviceState::Waiting.as_str()
            ));
        }
        let mut q = sqlx::query(&sql).bind(&id);
        for (i, dev) in chunk.iter().enumerate() {
            let pos = chunk_no * 200 + i;
            let phase = cum.iter().position(|&c| pos < c).unwrap_or(cum.len() - 1);
            q = q.bind(dev).bind(pos as i64).bind(phase as i64);
        }
        q.execute(&mut *tx).await?;
    }
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

/// Targets the devices of phase `phase` (not pinned ones: a pin wins).
async fn start_phase(
    tx: &mut Transaction<'_, Any>,
    c: Cols,
    rollout_id: &str,
    release_id: &str,
    phase: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE devices SET {rollout} = $1, {release} = $2, \
         {target} = CASE WHEN {pin} IS NULL THEN $2 ELSE {target} END, \
         {etag} = CASE WHEN {pin} IS NULL THEN $3 ELSE {etag} END \
         WHERE id IN (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND phase = $4)",
        rollout = c.rollout,
        release = c.release,
        target = c.target,
        pin = c.pin,
        etag = c.etag,
    ))
    .bind(rollout_id)
    .bind(release_id)
    .bind(etag_for(Some(release_id), Some(rollout_id)))
    .bind(phase)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE rollout_devices SET state = $4, targeted_at = $1 WHERE rollout_id = $2 AND phase = $3 AND state = $5",
    )
    .bind(now)
    .bind(rollout_id)
    .bind(phase)
    .bind(DeviceState::Targeted.as_str())
    .bind(DeviceState::Waiting.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

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
    let row = sqlx::query(
        "SELECT d.rollout_id, rel.version FROM devices d JOIN releases rel ON rel.id = d.rollout_release_id \
         JOIN rollout_devices rd ON rd.rollout_id = d.rollout_id AND rd.device_id = d.id \
         WHERE d.id = $1 AND rd.state = $2",
    )
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let rollout_id: String = row.try_get("rollout_id")?;
    let version: String = row.try_get("version")?;
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
    } else if r.os_version.as_deref() == Some(version.as_str()) {
        outcome = Some((DeviceState::Succeeded, String::new()));
    }
    let Some((state, reason)) = outcome else {
        return Ok(());
    };
    finish_device(tx, &rollout_id, device_id, state, &reason, now).await
}

async fn record_apps(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    r: &StateReport,
    now: i64,
) -> sqlx::Result<()> {
    let Some(apps) = &r.apps else { return Ok(()) };
    let row = sqlx::query(
        "SELECT d.app_rollout_id, d.app_rollout_release_id FROM devices d \
         JOIN rollout_devices rd ON rd.rollout_id = d.app_rollout_id AND rd.device_id = d.id \
         WHERE d.id = $1 AND rd.state = $2",
    )
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let rollout_id: String = row.try_get("app_rollout_id")?;
    let release_id: String = row.try_get("app_rollout_release_id")?;
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
    sqlx::query(
        "UPDATE rollout_devices SET state = $1, reason = $2, finished_at = $3 \
         WHERE rollout_id = $4 AND device_id = $5 AND state = $6",
    )
    .bind(state.as_str())
    .bind(if reason.is_empty() {
        None
    } else {
        Some(reason.to_owned())
    })
    .bind(now)
    .bind(rollout_id)
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .execute(&mut **tx)
    .await?;
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

/// Evaluates every active rollout once.
pub async fn tick(st: &AppState) -> anyhow::Result<()> {
    let ids = sqlx::query("SELECT id FROM rollouts WHERE state = $1")
        .bind(RolloutState::Active.as_str())
        .fetch_all(&st.db.read)
        .await?;
    for r in ids {
        let id: String = r.try_get("id")?;
        evaluate(st, &id).await?;
    }
    Ok(())
}

pub async fn run_ticker(st: AppState) {
    let mut iv = tokio::time::interval(st.cfg.rollout_tick);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if let Err(e) = tick(&st).await {
            tracing::error!("evaluating rollouts: {e:#}");
        }
    }
}

/// One tick of one rollout: load its counts (store), decide ([`engine::step`], pure), apply
/// the decision (store). Every change is conditional on the rollout still being active in the
/// phase that was decided on, so two processes never both apply it.
async fn evaluate(st: &AppState, id: &str) -> anyhow::Result<()> {
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let Some(ro) = load_active(&mut tx, id).await? else {
        return Ok(());
    };
    expire_silent(&mut tx, &ro, now).await?;
    let counts = phase_counts(&mut tx, id, ro.rule.phase).await?;
    let decision = engine::step(&ro.rule, counts, now);
    apply(&mut tx, ro, counts, decision, now).await?;
    tx.commit().await?;
    Ok(())
}

/// An active rollout as [`evaluate`] needs it.
struct ActiveRollout {
    id: String,
    release_id: String,
    kind: RolloutKind,
    phases: Vec<StoredPhase>,
    deadline_secs: i64,
    rule: engine::Active,
}

async fn load_active(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> anyhow::Result<Option<ActiveRollout>> {
    let Some(r) = sqlx::query(
        "SELECT release_id, kind, phase, phases_json, success_threshold, failure_threshold, deadline_secs, ack_failed, phase_started_at \
         FROM rollouts WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(RolloutState::Active.as_str())
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    let phases: Vec<StoredPhase> = serde_json::from_str(&r.try_get::<String, _>("phases_json")?)
        .with_context(|| format!("decoding the phases of rollout {id}"))?;
    let rule = engine::Active {
        phase: usize::try_from(r.try_get::<i64, _>("phase")?).unwrap_or(0),
        soak_secs: phases.iter().map(|p| p.min_soak_secs).collect(),
        phase_started_at_ms: r.try_get("phase_started_at")?,
        success_threshold: r.try_get("success_threshold")?,
        failure_threshold: r.try_get("failure_threshold")?,
        ack_failed: u64::try_from(r.try_get::<i64, _>("ack_failed")?).unwrap_or(0),
    };
    Ok(Some(ActiveRollout {
        id: id.to_owned(),
        release_id: r.try_get("release_id")?,
        kind: parse_kind(&r.try_get::<String, _>("kind")?),
        phases,
        deadline_secs: r.try_get("deadline_secs")?,
        rule,
    }))
}

/// Targeted devices silent past the deadline count as failed.
async fn expire_silent(
    tx: &mut Transaction<'_, Any>,
    ro: &ActiveRollout,
    now: i64,
) -> anyhow::Result<()> {
    let deadline = ro.deadline_secs;
    let silent = sqlx::query(
        "UPDATE rollout_devices SET state = $1, finished_at = $2, reason = $3 \
         WHERE rollout_id = $4 AND state = $5 AND targeted_at < $6",
    )
    .bind(DeviceState::Failed.as_str())
    .bind(now)
    .bind(format!("silent past the deadline ({deadline} s)"))
    .bind(&ro.id)
    .bind(DeviceState::Targeted.as_str())
    .bind(now - deadline * 1000)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if silent > 0 {
        audit(
            &mut **tx,
            "server",
            "devices_silent",
            &format!("rollout:{}", ro.id),
            &format!("{silent} device(s) silent past the deadline ({deadline} s) count as failed"),
        )
        .await?;
    }
    Ok(())
}

/// The devices of phases up to `phase`, by state.
async fn phase_counts(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    phase: usize,
) -> anyhow::Result<engine::Counts> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 AND phase <= $2 GROUP BY state",
    )
    .bind(id)
    .bind(phase as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut c = engine::Counts::default();
    for r in rows {
        let n = u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0);
        c.total += n;
        match DeviceState::parse(&r.try_get::<String, _>("state")?) {
            Some(DeviceState::Failed) => c.failed += n,
            Some(DeviceState::Succeeded) => c.succeeded += n,
            _ => {}
        }
    }
    Ok(c)
}

/// Carries out a tick's decision; each change only if the rollout is still active in the
/// phase decided on (another process may have been first).
async fn apply(
    tx: &mut Transaction<'_, Any>,
    mut ro: ActiveRollout,
    c: engine::Counts,
    decision: Decision,
    now: i64,
) -> anyhow::Result<()> {
    let subject = format!("rollout:{}", ro.id);
    let phase = ro.rule.phase as i64;
    let (succeeded, total) = (c.succeeded, c.total);
    match decision {
        Decision::Wait => {}
        Decision::Pause(why) => {
            let reason = why.to_string();
            if set_state(tx, &ro.id, phase, RolloutState::Paused, Some(&reason), now).await? {
                audit(&mut **tx, "server", "rollout_paused", &subject, &reason).await?;
            }
        }
        Decision::Complete => {
            if set_state(tx, &ro.id, phase, RolloutState::Completed, None, now).await? {
                let detail = format!("{succeeded} of {total} device(s) succeeded");
                audit(&mut **tx, "server", "rollout_completed", &subject, &detail).await?;
            }
        }
        Decision::Advance(next) => {
            let Some(p) = ro.phases.get_mut(next) else {
                anyhow::bail!("rollout {}: no phase {next} to advance to", ro.id);
            };
            p.started_at_ms = Some(now);
            let percent = p.percent;
            let n = sqlx::query(
                "UPDATE rollouts SET phase = $1, phases_json = $2, phase_started_at = $3, updated_at = $3 \
                 WHERE id = $4 AND state = $5 AND phase = $6",
            )
            .bind(next as i64)
            .bind(serde_json::to_string(&ro.phases)?)
            .bind(now)
            .bind(&ro.id)
            .bind(RolloutState::Active.as_str())
            .bind(phase)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 1 {
                start_phase(tx, cols(ro.kind), &ro.id, &ro.release_id, next as i64, now).await?;
                let detail = format!(
                    "phase {} ({percent}%) after {succeeded} of {total} succeeded",
                    next + 1
                );
                audit(&mut **tx, "server", "phase_started", &subject, &detail).await?;
            }
        }
    }
    Ok(())
}

/// Moves an active rollout in phase `phase` to `to`; false when it no longer is.
async fn set_state(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    phase: i64,
    to: RolloutState,
    reason: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5 AND phase = $6",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(now)
    .bind(id)
    .bind(RolloutState::Active.as_str())
    .bind(phase)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Pause, resume or abort by an admin.
pub async fn control(st: &AppState, actor: &str, id: &str, action: RolloutAction) -> ApiResult<()> {
    let now = now_ms();
    let subject = format!("rollout:{id}");
    let mut tx = st.db.write.begin().await?;
    let row = sqlx::query("SELECT state, kind FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| unknown_rollout(id))?;
    let state: String = row.try_get("state")?;
    let state = RolloutState::parse(&state)
        .ok_or_else(|| ApiErr::internal("reading rollout", format!("bad state {state}")))?;
    let c = cols(parse_kind(&row.try_get::<String, _>("kind")?));
    let to = engine::control(state, action)
        .map_err(|e| ApiErr::conflict("bad_state", format!("rollout {id} {e}")))?;
    let reason = engine::control_reason(action, actor);
    if action == RolloutAction::Resume {
        // Failures seen so far are acknowledged by whoever resumes: only new ones count.
        sqlx::query(
            "UPDATE rollouts SET state = $1, reason = NULL, updated_at = $2, \
             ack_failed = (SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = $3 AND state = $4) WHERE id = $3",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .bind(DeviceState::Failed.as_str())
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
            .bind(to.as_str())
            .bind(&reason)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if action == RolloutAction::Abort {
        // Devices stop being targeted; what they installed stays.
        let ids = sqlx::query(&format!("SELECT id FROM devices WHERE {} = $1", c.rollout))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "UPDATE devices SET {r} = NULL, {rel} = NULL WHERE {r} = $1",
            r = c.rollout,
            rel = c.release
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        for r in ids {
            refresh_target(&mut tx, &r.try_get::<String, _>("id")?).await?;
        }
    }
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
    sqlx::query("SELECT id FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(&st.db.read)
        .await?
        .ok_or_else(|| unknown_rollout(id))?;
    Ok(())
}

pub async fn load(st: &AppState, id: &str) -> ApiResult<Rollout> {
    let r = sqlx::query(
        "SELECT ro.*, COALESCE(rel.version, ar.version) AS version, COALESCE(rel.compatible, '') AS compatible \
         FROM rollouts ro LEFT JOIN releases rel ON rel.id = ro.release_id AND ro.kind = 'os' \
         LEFT JOIN app_releases ar ON ar.id = ro.release_id AND ro.kind = 'apps' WHERE ro.id = $1",
    )
    .bind(id)
    .fetch_optional(&st.db.read)
    .await?
    .ok_or_else(|| ApiErr::not_found("unknown_rollout", format!("no rollout {id}")))?;
    let phases: Vec<StoredPhase> = serde_json::from_str(&r.try_get::<String, _>("phases_json")?)
        .map_err(|e| ApiErr::internal("decoding phases", e))?;
    let counts = sqlx::query(
        "SELECT phase, state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 GROUP BY phase, state",
    )
    .bind(id)
    .fetch_all(&st.db.read)
    .await?;
    let mut per: HashMap<(i64, DeviceState), u64> = HashMap::new();
    for c in counts {
        let state: String = c.try_get("state")?;
        let state = DeviceState::parse(&state).ok_or_else(|| {
            ApiErr::internal("reading rollout devices", format!("bad state {state}"))
        })?;
        per.insert(
            (c.try_get("phase")?, state),
            c.try_get::<i64, _>("n")? as u64,
        );
    }
    let get = |p: i64, s: DeviceState| per.get(&(p, s)).copied().unwrap_or(0);
    let phase_status = phases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let i = i as i64;
            PhaseStatus {
                percent: p.percent,
                min_soak_secs: p.min_soak_secs,
                devices: DeviceState::ALL.iter().map(|s| get(i, *s)).sum(),
                succeeded: get(i, DeviceState::Succeeded),
                failed: get(i, DeviceState::Failed),
                started_at_ms: p.started_at_ms,
            }
        })
        .collect();
    let fails = sqlx::query(
        "SELECT device_id, reason, finished_at FROM rollout_devices WHERE rollout_id = $1 AND state = $2 ORDER BY finished_at DESC LIMIT 100",
    )
    .bind(id)
    .bind(DeviceState::Failed.as_str())
    .fetch_all(&st.db.read)
    .await?;
    let mut failures = Vec::new();
    for f in fails {
        failures.push(RolloutFailure {
            device_id: f.try_get("device_id")?,
            reason: f
                .try_get::<Option<String>, _>("reason")?
                .unwrap_or_default(),
            at_ms: f.try_get::<Option<i64>, _>("finished_at")?.unwrap_or(0),
        });
    }
    let state: String = r.try_get("state")?;
    Ok(Rollout {
        id: id.to_owned(),
        kind: parse_kind(&r.try_get::<String, _>("kind")?),
        release_id: r.try_get("release_id")?,
        version: r.try_get("version")?,
        compatible: r.try_get("compatible")?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| ApiErr::internal("reading rollout", format!("bad state {state}")))?,
        phase: r.try_get::<i64, _>("phase")? as usize,
        phases: phase_status,
        success_threshold: r.try_get("success_threshold")?,
        failure_threshold: r.try_get("failure_threshold")?,
        device_deadline_secs: r.try_get::<i64, _>("deadline_secs")? as u64,
        total_devices: r.try_get::<i64, _>("total")? as u64,
        reason: r.try_get("reason")?,
        created_at_ms: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        failures,
        events: crate::admin_api::audit_for(st, &format!("rollout:{id}"), 100).await?,
    })
}

pub async fn list(st: &AppState) -> ApiResult<Vec<Rollout>> {
    let ids = sqlx::query("SELECT id FROM rollouts ORDER BY created_at DESC LIMIT 200")
        .fetch_all(&st.db.read)
        .await?;
    let mut out = Vec::new();
    for r in ids {
        out.push(load(st, &r.try_get::<String, _>("id")?).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
