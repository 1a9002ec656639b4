//! `otterd install`: a signed bundle into the slot that is not running, then a trial boot.
//!
//! Order matters for safety: verify the signature and policy first (no write at all on a bad
//! bundle); mark the target slot bad before its first byte changes (the boot loader never
//! picks a half-written slot); arm the trial boot only after the whole slot is verified.

use crate::state::{Phase, Progress, SlotInfo, StateFile, Update};
use crate::{Paths, now};
use anyhow::{Context, Result, bail};
use otter_config::ReleaseInfo;
use std::time::{Duration, Instant};

pub struct InstallOptions {
    pub source: String,
    pub allow_downgrade: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallOutcome {
    pub version: String,
    pub slot: otter_boot::Slot,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub seconds: f64,
}

pub fn install(
    paths: &Paths,
    o: &InstallOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<InstallOutcome> {
    let (booted, _) = paths.booted_slot()?;
    let target = booted.other();
    let release = ReleaseInfo::load(&paths.release)?;
    let store = paths.boot_store();
    let (boot, _) = store.load().context("reading the boot state")?;
    if !boot.slot(booted).good {
        bail!(
            "slot {booted} is on trial (not committed yet): wait for the health checks to commit it, \
             or run `otterd commit` / `otterd rollback` first"
        );
    }

    // Signature and policy: all before any write.
    let trusted = otter_bundle::load_trusted_keys(&paths.keys_dir)
        .with_context(|| format!("loading trusted keys from {}", paths.keys_dir.display()))?;
    let reader = otter_bundle::BundleReader::open(&o.source)
        .with_context(|| format!("opening bundle {}", o.source))?;
    let mut bundle = reader
        .verify(&trusted)
        .with_context(|| format!("verifying bundle {}", o.source))?;
    bundle
        .check_policy(&otter_bundle::InstallPolicy {
            compatible: release.compatible.clone(),
            running_version: Some(release.version.clone()),
            allow_downgrade: o.allow_downgrade,
        })
        .with_context(|| format!("bundle {}", o.source))?;
    let manifest = bundle.manifest().clone();
    let version = manifest.version.clone();
    let Some(image) = manifest.image("rootfs") else {
        bail!("bundle {} has no `rootfs` image", o.source);
    };
    let device = paths.slot_device(target).clone();
    let capacity =
        otter_bundle::target_capacity(&device).with_context(|| format!("slot {target}"))?;
    if image.size > capacity {
        bail!(
            "bundle {}: its root image is {} bytes but slot {target} ({}) holds only {capacity} bytes; nothing was written",
            o.source,
            image.size,
            device.display()
        );
    }

    let file = StateFile::lock(&paths.state_dir)?;
    let mut st = file.load()?;
    let started_at = now();
    st.update = Some(Update {
        phase: Phase::Installing,
        version: version.clone(),
        slot: target,
        from_slot: booted,
        from_version: release.version.clone(),
        source: o.source.clone(),
        started_at,
        updated_at: started_at,
        progress: None,
        reason: None,
    });
    st.slots.remove(&target);
    st.record("install_started", &version, target, &o.source);
    file.save(&st)?;

    // From here the target slot is about to change: the boot loader must not pick it.
    let (mut boot, _) = store.load().context("reading the boot state")?;
    boot.mark_bad(target);
    store.store(&boot).context("marking the target slot bad")?;

    let mut last_save = Instant::now();
    let mut progress_cb = |p: otter_bundle::Progress| {
        let pr = Progress {
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
            fetched_bytes: p.fetched_bytes,
        };
        on_progress(&pr);
        // Progress for `otterd status`, at most once a second.
        if last_save.elapsed() >= Duration::from_secs(1) {
            last_save = Instant::now();
            if let Some(u) = st.update.as_mut() {
                u.progress = Some(pr);
                u.updated_at = now();
            }
            let _ = file.save(&st);
        }
    };
    let result = bundle.install_image("rootfs", &device, &mut progress_cb);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("{e:#}");
            if let Some(u) = st.update.as_mut() {
                u.phase = Phase::Failed;
                u.reason = Some(reason.clone());
                u.updated_at = now();
            }
            st.record("install_failed", &version, target, &reason);
            file.save(&st)?;
            return Err(anyhow::Error::new(e).context(format!(
                "installing {} into slot {target} ({})",
                o.source,
                device.display()
            )));
        }
    };

    // Verified: arm the trial boot.
    let tries = crate::agent::load_agent_config(paths)?.health.boot_tries;
    let (mut boot, _) = store.load().context("reading the boot state")?;
    boot.set_try(target, tries);
    store.store(&boot).context("arming the trial boot")?;

    st.slots.insert(
        target,
        SlotInfo {
            version: version.clone(),
            installed_at: now(),
        },
    );
    if let Some(u) = st.update.as_mut() {
        u.phase = Phase::Installed;
        u.progress = Some(Progress {
            done_bytes: report.bytes_written,
            total_bytes: report.bytes_written,
            fetched_bytes: report.bytes_fetched,
        });
        u.updated_at = now();
    }
    st.record("installed", &version, target, "reboot to try it");
    file.save(&st)?;
    Ok(InstallOutcome {
        version,
        slot: target,
        bytes_written: report.bytes_written,
        bytes_fetched: report.bytes_fetched,
        seconds: report.seconds,
    })
}
