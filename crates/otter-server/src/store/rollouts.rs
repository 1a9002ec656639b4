//! Rollout rows (`rollouts`, `rollout_devices`) and the rollout and target columns of devices.
//! Every state is bound from its enum ([`RolloutState`], [`DeviceState`]), never written as a
//! literal. Changes made by the rollout tick are conditional on the rollout still being in the
//! state and phase that was decided on, so two server processes never both apply one.

use std::collections::{HashMap, HashSet};

use otter_proto::admin::{
    PhaseStatus, Rollout, RolloutDeviceState as DeviceState, RolloutFailure, RolloutKind,
    RolloutState,
};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use super::Db;
use crate::error::{ApiErr, ApiResult};

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

/// `rollouts.kind`; an unknown text is an OS rollout (the only kind before app releases).
fn parse_kind(s: &str) -> RolloutKind {
    if s == RolloutKind::Apps.as_str() {
        RolloutKind::Apps
    } else {
        RolloutKind::Os
    }
}

fn parse_state(s: &str) -> ApiResult<RolloutState> {
    RolloutState::parse(s)
        .ok_or_else(|| ApiErr::internal("reading rollout", format!("bad state {s}")))
}

/// One phase as kept in `rollouts.phases_json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPhase {
    pub percent: f64,
    pub min_soak_secs: u64,
    pub started_at_ms: Option<i64>,
}

/// A device's pin, rollout and that rollout's release (one kind).
pub struct TargetInputs {
    pub pin: Option<String>,
    pub rollout: Option<String>,
    pub rollout_release: Option<String>,
}

pub async fn target_inputs(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    c: Cols,
) -> sqlx::Result<TargetInputs> {
    let row = sqlx::query(&format!(
        "SELECT {} AS pin, {} AS rollout, {} AS rollout_release FROM devices WHERE id = $1",
        c.pin, c.rollout, c.release
    ))
    .bind(device_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(TargetInputs {
        pin: row.try_get("pin")?,
        rollout: row.try_get("rollout")?,
        rollout_release: row.try_get("rollout_release")?,
    })
}

pub async fn set_target(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
    c: Cols,
    target: Option<&str>,
    etag: &str,
) -> sqlx::Result<()> {
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

/// Devices in an unfinished (active or paused) rollout of this kind, every phase counted.
pub async fn busy_devices(db: &Db, kind: RolloutKind) -> sqlx::Result<HashSet<String>> {
    let rows = sqlx::query(
        "SELECT rd.device_id AS id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id \
         WHERE r.state IN ($2, $3) AND r.kind = $1",
    )
    .bind(kind.as_str())
    .bind(RolloutState::Active.as_str())
    .bind(RolloutState::Paused.as_str())
    .fetch_all(&db.read)
    .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// Accepted devices without a pin of this kind, of board `compatible` (any board: `None`):
/// (id, tags as stored).
pub async fn candidates(
    db: &Db,
    c: Cols,
    compatible: Option<&str>,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query(&format!(
        "SELECT id, tags FROM devices WHERE status = $3 AND {} IS NULL AND (compatible = $1 OR $2 = 1)",
        c.pin
    ))
    .bind(compatible.unwrap_or_default())
    .bind(i64::from(compatible.is_none()))
    .bind(otter_proto::admin::DeviceStatus::Accepted.as_str())
    .fetch_all(&db.read)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("tags")?)))
        .collect()
}

/// What selecting one named device for a rollout checks.
pub struct Selectable {
    pub status: String,
    pub compatible: String,
    pub tags: String,
    pub pinned: bool,
}

pub async fn selectable(db: &Db, c: Cols, id: &str) -> sqlx::Result<Option<Selectable>> {
    let r = sqlx::query(&format!(
        "SELECT status, compatible, tags, {} AS pin FROM devices WHERE id = $1",
        c.pin
    ))
    .bind(id)
    .fetch_optional(&db.read)
    .await?;
    r.map(|r| {
        Ok(Selectable {
            status: r.try_get("status")?,
            compatible: r.try_get("compatible")?,
            tags: r.try_get("tags")?,
            pinned: r.try_get::<Option<String>, _>("pin")?.is_some(),
        })
    })
    .transpose()
}

/// A rollout being created (active, in phase 0).
pub struct NewRollout<'a> {
    pub id: &'a str,
    pub kind: RolloutKind,
    pub release_id: &'a str,
    pub phases: &'a [StoredPhase],
    pub success_threshold: f64,
    pub failure_threshold: f64,
    pub deadline_secs: u64,
    pub total: usize,
    pub created_by: &'a str,
}

pub async fn insert(tx: &mut Transaction<'_, Any>, r: &NewRollout<'_>, now: i64) -> ApiResult<()> {
    let phases =
        serde_json::to_string(r.phases).map_err(|e| ApiErr::internal("encoding phases", e))?;
    sqlx::query(
        "INSERT INTO rollouts (id, release_id, state, phase, phases_json, success_threshold, failure_threshold, deadline_secs, total, phase_started_at, created_at, created_by, updated_at, kind) \
         VALUES ($1, $2, $11, 0, $3, $4, $5, $6, $7, $8, $8, $9, $8, $10)",
    )
    .bind(r.id)
    .bind(r.release_id)
    .bind(phases)
    .bind(r.success_threshold)
    .bind(r.failure_threshold)
    .bind(r.deadline_secs as i64)
    .bind(r.total as i64)
    .bind(now)
    .bind(r.created_by)
    .bind(r.kind.as_str())
    .bind(RolloutState::Active.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds the rollout's devices, waiting: (device id, position, phase).
pub async fn insert_devices(
    tx: &mut Transaction<'_, Any>,
    rollout_id: &str,
    devices: &[(&str, usize, usize)],
) -> sqlx::Result<()> {
    // Many rows per statement: 100,000 single inserts would hold the writer for long.
    for chunk in devices.chunks(200) {
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
        let mut q = sqlx::query(&sql).bind(rollout_id);
        for (dev, pos, phase) in chunk {
            q = q.bind(*dev).bind(*pos as i64).bind(*phase as i64);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Targets the devices of phase `phase` (not pinned ones: a pin wins); `etag` is the ETag of
/// the rollout's target.
pub async fn start_phase(
    tx: &mut Transaction<'_, Any>,
    c: Cols,
    rollout_id: &str,
    release_id: &str,
    etag: &str,
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
    .bind(etag)
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

/// The device's OS rollout and its release's version, while the device is targeted in it.
pub async fn os_targeted(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT d.rollout_id, rel.version FROM devices d JOIN releases rel ON rel.id = d.rollout_release_id \
         JOIN rollout_devices rd ON rd.rollout_id = d.rollout_id AND rd.device_id = d.id \
         WHERE d.id = $1 AND rd.state = $2",
    )
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| Ok((r.try_get("rollout_id")?, r.try_get("version")?)))
        .transpose()
}

/// The device's app rollout and its app release, while the device is targeted in it.
pub async fn apps_targeted(
    tx: &mut Transaction<'_, Any>,
    device_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT d.app_rollout_id, d.app_rollout_release_id FROM devices d \
         JOIN rollout_devices rd ON rd.rollout_id = d.app_rollout_id AND rd.device_id = d.id \
         WHERE d.id = $1 AND rd.state = $2",
    )
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("app_rollout_id")?,
            r.try_get("app_rollout_release_id")?,
        ))
    })
    .transpose()
}

/// Records a targeted device's outcome (`reason` empty: none).
pub async fn finish_device(
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
    .bind((!reason.is_empty()).then_some(reason))
    .bind(now)
    .bind(rollout_id)
    .bind(device_id)
    .bind(DeviceState::Targeted.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn active_ids(db: &Db) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query("SELECT id FROM rollouts WHERE state = $1")
        .bind(RolloutState::Active.as_str())
        .fetch_all(&db.read)
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// An active rollout as the tick reads it.
pub struct ActiveRow {
    pub release_id: String,
    pub kind: RolloutKind,
    pub phase: i64,
    pub phases: Vec<StoredPhase>,
    pub success_threshold: f64,
    pub failure_threshold: f64,
    pub deadline_secs: i64,
    pub ack_failed: i64,
    pub phase_started_at: i64,
}

/// The rollout `id` if it is active.
pub async fn load_active(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> anyhow::Result<Option<ActiveRow>> {
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
        .map_err(|e| anyhow::anyhow!("decoding the phases of rollout {id}: {e}"))?;
    Ok(Some(ActiveRow {
        release_id: r.try_get("release_id")?,
        kind: parse_kind(&r.try_get::<String, _>("kind")?),
        phase: r.try_get("phase")?,
        phases,
        success_threshold: r.try_get("success_threshold")?,
        failure_threshold: r.try_get("failure_threshold")?,
        deadline_secs: r.try_get("deadline_secs")?,
        ack_failed: r.try_get("ack_failed")?,
        phase_started_at: r.try_get("phase_started_at")?,
    }))
}

/// Marks the rollout's devices targeted before `targeted_before` (ms) as failed with
/// `reason`; returns how many.
pub async fn expire_silent(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    targeted_before: i64,
    reason: &str,
    now: i64,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE rollout_devices SET state = $1, finished_at = $2, reason = $3 \
         WHERE rollout_id = $4 AND state = $5 AND targeted_at < $6",
    )
    .bind(DeviceState::Failed.as_str())
    .bind(now)
    .bind(reason)
    .bind(id)
    .bind(DeviceState::Targeted.as_str())
    .bind(targeted_before)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// The devices of phases up to `phase`, by state.
pub async fn phase_counts(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    phase: i64,
) -> ApiResult<Vec<(DeviceState, u64)>> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 AND phase <= $2 GROUP BY state",
    )
    .bind(id)
    .bind(phase)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let state: String = r.try_get("state")?;
        let state = DeviceState::parse(&state).ok_or_else(|| {
            ApiErr::internal("reading rollout devices", format!("bad state {state}"))
        })?;
        out.push((state, u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0)));
    }
    Ok(out)
}

/// Moves an active rollout in phase `phase` to `to`; false when it no longer is.
pub async fn finish_if_active(
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

/// Moves an active rollout from phase `phase` to `next`; false when it no longer is there.
pub async fn advance_if_active(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    phase: i64,
    next: i64,
    phases: &[StoredPhase],
    now: i64,
) -> anyhow::Result<bool> {
    let n = sqlx::query(
        "UPDATE rollouts SET phase = $1, phases_json = $2, phase_started_at = $3, updated_at = $3 \
         WHERE id = $4 AND state = $5 AND phase = $6",
    )
    .bind(next)
    .bind(serde_json::to_string(phases)?)
    .bind(now)
    .bind(id)
    .bind(RolloutState::Active.as_str())
    .bind(phase)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A rollout's state and kind (`None`: no such rollout).
pub async fn state_and_kind(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> ApiResult<Option<(RolloutState, RolloutKind)>> {
    let row = sqlx::query("SELECT state, kind FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state = parse_state(&row.try_get::<String, _>("state")?)?;
    Ok(Some((
        state,
        parse_kind(&row.try_get::<String, _>("kind")?),
    )))
}

pub async fn exists(db: &Db, id: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query("SELECT id FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.read)
        .await?
        .is_some())
}

/// Makes the rollout active again, acknowledging every failure so far (only new ones count).
pub async fn resume(tx: &mut Transaction<'_, Any>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE rollouts SET state = $1, reason = NULL, updated_at = $2, \
         ack_failed = (SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = $3 AND state = $4) WHERE id = $3",
    )
    .bind(RolloutState::Active.as_str())
    .bind(now)
    .bind(id)
    .bind(DeviceState::Failed.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_state(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    to: RolloutState,
    reason: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
        .bind(to.as_str())
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes every device out of the rollout (their targets are then stale: refresh them);
/// returns their ids.
pub async fn release_devices(
    tx: &mut Transaction<'_, Any>,
    c: Cols,
    id: &str,
) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query(&format!("SELECT id FROM devices WHERE {} = $1", c.rollout))
        .bind(id)
        .fetch_all(&mut **tx)
        .await?;
    sqlx::query(&format!(
        "UPDATE devices SET {r} = NULL, {rel} = NULL WHERE {r} = $1",
        r = c.rollout,
        rel = c.release
    ))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// The newest rollouts' ids, newest first.
pub async fn recent_ids(db: &Db, limit: i64) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query("SELECT id FROM rollouts ORDER BY created_at DESC LIMIT $1")
        .bind(limit)
        .fetch_all(&db.read)
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// A rollout with its per-phase counts and latest failures; `events` is left empty (the
/// audit table is read by the caller).
pub async fn load(db: &Db, id: &str) -> ApiResult<Option<Rollout>> {
    let Some(r) = sqlx::query(
        "SELECT ro.*, COALESCE(rel.version, ar.version) AS version, COALESCE(rel.compatible, '') AS compatible \
         FROM rollouts ro LEFT JOIN releases rel ON rel.id = ro.release_id AND ro.kind = $2 \
         LEFT JOIN app_releases ar ON ar.id = ro.release_id AND ro.kind = $3 WHERE ro.id = $1",
    )
    .bind(id)
    .bind(RolloutKind::Os.as_str())
    .bind(RolloutKind::Apps.as_str())
    .fetch_optional(&db.read)
    .await?
    else {
        return Ok(None);
    };
    let phases: Vec<StoredPhase> = serde_json::from_str(&r.try_get::<String, _>("phases_json")?)
        .map_err(|e| ApiErr::internal("decoding phases", e))?;
    let counts = sqlx::query(
        "SELECT phase, state, COUNT(*) AS n FROM rollout_devices WHERE rollout_id = $1 GROUP BY phase, state",
    )
    .bind(id)
    .fetch_all(&db.read)
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
    .fetch_all(&db.read)
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
    Ok(Some(Rollout {
        id: id.to_owned(),
        kind: parse_kind(&r.try_get::<String, _>("kind")?),
        release_id: r.try_get("release_id")?,
        version: r.try_get("version")?,
        compatible: r.try_get("compatible")?,
        state: parse_state(&r.try_get::<String, _>("state")?)?,
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
        events: Vec::new(),
    }))
}
