//! What devices report: their state (stored, its changes recorded in the history, its outcome
//! applied to their rollouts) and their log lines. Each report is checked against bounds
//! first: it is the device's own data, stored as it came.

use otter_proto::{LogBatch, MAX_LOG_BATCH, StateReport};

use crate::AppState;
use crate::devices::check_len;
use crate::error::{ApiErr, ApiResult};
use crate::rollouts;
use crate::store::{self, audit, now_ms};

/// Checks and records a device's state report.
pub async fn record(st: &AppState, device_id: &str, r: &StateReport) -> ApiResult<()> {
    check_len("os_version", r.os_version.as_deref(), 64)?;
    if let Some(s) = &r.booted_slot
        && s != "a"
        && s != "b"
    {
        return Err(ApiErr::bad_request(
            "invalid_field",
            format!("booted_slot {s:?}: must be \"a\" or \"b\""),
        ));
    }
    if let Some(u) = &r.update {
        check_len("update.version", Some(&u.version), 64)?;
        check_len("update.error", u.error.as_deref(), 4096)?;
        if u.progress.is_some_and(|p| p > 100) {
            return Err(ApiErr::bad_request(
                "invalid_field",
                "update.progress must be 0..=100",
            ));
        }
    }
    if r.rollbacks.len() > 100 {
        return Err(ApiErr::bad_request(
            "invalid_field",
            "at most 100 rollbacks in one report",
        ));
    }
    for rb in &r.rollbacks {
        check_len("rollbacks[].version", Some(&rb.version), 64)?;
        check_len("rollbacks[].reason", Some(&rb.reason), 4096)?;
    }
    if let Some(a) = &r.apps {
        check_apps_report(a)?;
    }
    let now = now_ms();
    let actor = format!("device:{device_id}");
    let apps_json = match &r.apps {
        Some(a) => {
            Some(serde_json::to_string(a).map_err(|e| ApiErr::internal("encoding the apps", e))?)
        }
        None => None,
    };
    let update_json = match &r.update {
        Some(u) => {
            Some(serde_json::to_string(u).map_err(|e| ApiErr::internal("encoding the update", e))?)
        }
        None => None,
    };
    let mut tx = st.db.write.begin().await?;
    let prev = store::devices::last_report(&mut tx, device_id).await?;
    // Unreadable earlier JSON (an older format) counts as no earlier report.
    let prev_update: Option<otter_proto::UpdateReport> =
        prev.update_json.and_then(|s| serde_json::from_str(&s).ok());
    let prev_os = prev.os_version;
    let prev_apps: Option<otter_proto::AppsReport> =
        prev.apps_json.and_then(|s| serde_json::from_str(&s).ok());
    if let Some(a) = &apps_json {
        store::devices::set_apps_json(&mut tx, device_id, a).await?;
    }
    // History: a new app-release phase, and a change of what runs.
    if let Some(a) = &r.apps {
        let prev_apply = prev_apps.as_ref().and_then(|p| p.last_apply.as_ref());
        if let Some(l) = &a.last_apply
            && prev_apply.is_none_or(|p| p.app_release_id != l.app_release_id || p.phase != l.phase)
        {
            let detail = match &l.error {
                Some(e) => format!("apps {} {}: {e}", l.version, l.phase.as_str()),
                None => format!("apps {} {}", l.version, l.phase.as_str()),
            };
            audit(&mut *tx, &actor, "apps", &actor, &detail).await?;
        }
    }
    store::devices::store_report(&mut tx, device_id, r, update_json.as_deref(), now).await?;
    // History: what changed, not every report.
    if let Some(u) = &r.update {
        let changed = prev_update
            .as_ref()
            .is_none_or(|p| p.version != u.version || p.phase != u.phase);
        if changed {
            let detail = match &u.error {
                Some(e) => format!("{} {}: {e}", u.version, u.phase.as_str()),
                None => format!("{} {}", u.version, u.phase.as_str()),
            };
            audit(&mut *tx, &actor, "update", &actor, &detail).await?;
        }
    }
    if r.os_version.is_some() && r.os_version != prev_os {
        let detail = format!(
            "{} → {}",
            prev_os.as_deref().unwrap_or("?"),
            r.os_version.as_deref().unwrap_or("?")
        );
        audit(&mut *tx, &actor, "os_version", &actor, &detail).await?;
    }
    for rb in &r.rollbacks {
        audit(
            &mut *tx,
            &actor,
            "rollback",
            &actor,
            &format!("{}: {}", rb.version, rb.reason),
        )
        .await?;
    }
    rollouts::record_report(&mut tx, device_id, r, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Bounds on an apps report (the device's own data, stored as it came).
fn check_apps_report(a: &otter_proto::AppsReport) -> ApiResult<()> {
    check_len("apps.source", Some(&a.source), 16)?;
    check_len("apps.app_release_id", a.app_release_id.as_deref(), 64)?;
    check_len("apps.version", a.version.as_deref(), 64)?;
    if a.services.len() > 500 {
        return Err(ApiErr::bad_request(
            "invalid_field",
            "at most 500 services in apps.services",
        ));
    }
    for s in &a.services {
        check_len("apps.services[].app", Some(&s.app), 64)?;
        check_len("apps.services[].service", Some(&s.service), 64)?;
        check_len("apps.services[].image", Some(&s.image), 512)?;
        check_len("apps.services[].state", Some(&s.state), 32)?;
        check_len("apps.services[].health", Some(&s.health), 32)?;
    }
    if let Some(l) = &a.last_apply {
        check_len(
            "apps.last_apply.app_release_id",
            Some(&l.app_release_id),
            64,
        )?;
        check_len("apps.last_apply.version", Some(&l.version), 64)?;
        check_len("apps.last_apply.progress", l.progress.as_deref(), 1024)?;
        check_len("apps.last_apply.error", l.error.as_deref(), 4096)?;
        if l.apps.len() > 100 {
            return Err(ApiErr::bad_request(
                "invalid_field",
                "at most 100 entries in apps.last_apply.apps",
            ));
        }
        for o in &l.apps {
            check_len("apps.last_apply.apps[].app", Some(&o.app), 64)?;
            check_len("apps.last_apply.apps[].result", Some(&o.result), 32)?;
            check_len("apps.last_apply.apps[].reason", o.reason.as_deref(), 4096)?;
        }
    }
    Ok(())
}

/// Checks and stores a batch of log lines; returns how many were stored.
pub async fn store_logs(st: &AppState, device_id: &str, batch: &LogBatch) -> ApiResult<usize> {
    if batch.entries.len() > MAX_LOG_BATCH {
        return Err(ApiErr::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} log entries in one batch; send at most {MAX_LOG_BATCH}",
                batch.entries.len()
            ),
        ));
    }
    for (i, e) in batch.entries.iter().enumerate() {
        check_len(&format!("entries[{i}].level"), Some(&e.level), 16)?;
        check_len(&format!("entries[{i}].source"), e.source.as_deref(), 128)?;
        check_len(&format!("entries[{i}].message"), Some(&e.message), 16384)?;
    }
    let bytes: i64 = batch.entries.iter().map(store::logs::entry_size).sum();
    let kib = u32::try_from((bytes + 1023) / 1024)
        .unwrap_or(u32::MAX)
        .max(1);
    let limited = match std::num::NonZeroU32::new(kib) {
        Some(n) => !matches!(
            st.log_limiter.check_key_n(&device_id.to_owned(), n),
            Ok(Ok(()))
        ),
        None => false,
    };
    if limited {
        return Err(ApiErr::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this device sent more than {} KiB of logs per minute (--log-rate); send the batch again later",
                st.cfg.log_rate_kib_per_minute
            ),
        ));
    }
    let quota = i64::try_from(st.cfg.log_quota_bytes).unwrap_or(i64::MAX);
    let pruned = store::logs::insert(&st.db, device_id, &batch.entries, now_ms(), quota).await?;
    if pruned > 0 {
        tracing::debug!("device {device_id}: {pruned} oldest log lines pruned (--log-quota)");
    }
    Ok(batch.entries.len())
}

/// Deletes device log lines and audit entries older than their retention, hourly.
pub async fn run_expiry(st: AppState) {
    let mut iv = tokio::time::interval(std::time::Duration::from_secs(3600));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if let Err(e) = expire(&st).await {
            tracing::error!("expiring old logs: {e:#}");
        }
    }
}

/// One pass of [`run_expiry`].
pub async fn expire(st: &AppState) -> ApiResult<(u64, u64)> {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let (logs, audit) = store::logs::expire(
        &st.db,
        now.saturating_sub(ms(st.cfg.log_retention)),
        now.saturating_sub(ms(st.cfg.audit_retention)),
    )
    .await?;
    if logs + audit > 0 {
        tracing::info!("expired {logs} device log lines and {audit} audit entries");
    }
    Ok((logs, audit))
}
