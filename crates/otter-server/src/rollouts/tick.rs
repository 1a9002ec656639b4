//! The rollout tick: every server process evaluates every active rollout every few seconds.
//! One evaluation is load (store) → [`engine::step`] (pure) → apply (store), in one
//! transaction.

use anyhow::Context;
use otter_proto::admin::RolloutState;
use sqlx::{Any, Transaction};

use super::{Decision, cols, engine, start_phase};
use crate::AppState;
use crate::store::rollouts::ActiveRow;
use crate::store::{self, audit, now_ms};

/// Evaluates every active rollout once.
pub async fn tick(st: &AppState) -> anyhow::Result<()> {
    for id in store::rollouts::active_ids(&st.db).await? {
        evaluate(st, &id)
            .await
            .with_context(|| format!("rollout {id}"))?;
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

/// What the engine needs of an active rollout.
fn rule(r: &ActiveRow) -> engine::Active {
    engine::Active {
        phase: usize::try_from(r.phase).unwrap_or(0),
        soak_secs: r.phases.iter().map(|p| p.min_soak_secs).collect(),
        phase_started_at_ms: r.phase_started_at,
        success_threshold: r.success_threshold,
        failure_threshold: r.failure_threshold,
        ack_failed: u64::try_from(r.ack_failed).unwrap_or(0),
    }
}

/// One tick of one rollout. Every change is conditional on the rollout still being active in
/// the phase that was decided on, so two processes never both apply it.
async fn evaluate(st: &AppState, id: &str) -> anyhow::Result<()> {
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let Some(ro) = store::rollouts::load_active(&mut tx, id).await? else {
        return Ok(());
    };
    // Devices silent past the deadline count as failed.
    let deadline = ro.deadline_secs;
    let why = format!("silent past the deadline ({deadline} s)");
    let silent =
        store::rollouts::expire_silent(&mut tx, id, now - deadline * 1000, &why, now).await?;
    if silent > 0 {
        let detail =
            format!("{silent} device(s) silent past the deadline ({deadline} s) count as failed");
        audit(
            &mut *tx,
            "server",
            "devices_silent",
            &format!("rollout:{id}"),
            &detail,
        )
        .await?;
    }
    let by_state = store::rollouts::phase_counts(&mut tx, id, ro.phase)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let counts = engine::Counts::of(&by_state);
    let decision = engine::step(&rule(&ro), counts, now);
    apply(&mut tx, id, ro, counts, decision, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Carries out a tick's decision.
async fn apply(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    mut ro: ActiveRow,
    c: engine::Counts,
    decision: Decision,
    now: i64,
) -> anyhow::Result<()> {
    let subject = format!("rollout:{id}");
    let phase = ro.phase;
    let (succeeded, total) = (c.succeeded, c.total);
    match decision {
        Decision::Wait => {}
        Decision::Pause(why) => {
            let reason = why.to_string();
            let to = RolloutState::Paused;
            if store::rollouts::finish_if_active(tx, id, phase, to, Some(&reason), now).await? {
                audit(&mut **tx, "server", "rollout_paused", &subject, &reason).await?;
            }
        }
        Decision::Complete => {
            let to = RolloutState::Completed;
            if store::rollouts::finish_if_active(tx, id, phase, to, None, now).await? {
                let detail = format!("{succeeded} of {total} device(s) succeeded");
                audit(&mut **tx, "server", "rollout_completed", &subject, &detail).await?;
            }
        }
        Decision::Advance(next) => {
            let Some(p) = ro.phases.get_mut(next) else {
                anyhow::bail!("no phase {next} to advance to (phases_json is damaged)");
            };
            p.started_at_ms = Some(now);
            let percent = p.percent;
            let next = next as i64;
            if store::rollouts::advance_if_active(tx, id, phase, next, &ro.phases, now).await? {
                start_phase(tx, cols(ro.kind), id, &ro.release_id, next, now).await?;
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
