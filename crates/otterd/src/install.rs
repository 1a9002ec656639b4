//! `otterd install`: a signed bundle into the slot that is not running, then a trial boot.
//!
//! Order matters for safety: verify the signature and policy first (no write at all on a bad
//! bundle); mark the target slot bad before its first byte changes (the boot loader never
//! picks a half-written slot); arm the trial boot only after the whole slot is verified.
//!
//! Installs are deltas: the running slot is the seed, so only the chunks it lacks are
//! downloaded. Its block index comes from `slot-X.index` in the state directory, saved after the
//! install that wrote it, when that still describes the slot (version, size and SHA-256 as
//! recorded in the state); else the slot is read and indexed.

use crate::agent::apply;
use crate::lifecycle::{self, Input};
use crate::state::{DeltaInfo, Phase, Progress, SlotInfo, StateFile, Update};
use crate::{Paths, now};
use anyhow::{Context, Result, bail};
use otter_config::ReleaseInfo;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub source: String,
    pub allow_downgrade: bool,
    /// Sent as `Authorization: Bearer` with HTTP requests (a fleet server's artifact URL).
    pub bearer_token: Option<String>,
    /// The signed manifest's digest the fleet server announced: a bundle with another manifest
    /// is refused before anything is written.
    pub expect_manifest_digest: Option<String>,
    /// Download every chunk instead of reusing the running slot's blocks (`--no-delta`: for a
    /// running slot suspected to be damaged, and for measuring).
    pub no_delta: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallOutcome {
    pub version: String,
    pub slot: otter_boot::Slot,
    pub bytes_written: u64,
    pub bytes_fetched: u64,
    pub delta: DeltaInfo,
    pub seconds: f64,
    /// Peak resident memory of this process so far (KiB).
    pub peak_rss_kib: u64,
}

pub fn install(
    paths: &Paths,
    o: &InstallOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<InstallOutcome> {
    let store = paths.boot()?;
    let (booted, _) = store.booted()?;
    let target = booted.other();
    let release = ReleaseInfo::load(&paths.release)?;
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
    let reader = otter_bundle::BundleReader::open_with(
        &o.source,
        &otter_bundle::OpenOptions {
            bearer_token: o.bearer_token.clone(),
        },
    )
    .with_context(|| format!("opening bundle {}", o.source))?;
    if let Some(want) = &o.expect_manifest_digest {
        let got = reader.manifest_digest_hex();
        if !got.eq_ignore_ascii_case(want) {
            bail!(
                "bundle {}: its manifest digest is {got}, but the fleet server announced {want} for this release; nothing was written",
                o.source
            );
        }
    }
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

    // An OS install and an app update never run at once.
    let _apps = crate::apps::exclusive(paths)?;
    let file = StateFile::lock(&paths.state_dir)?;
    let st = file.load()?;
    // The running slot is the seed. Its saved index counts only if it describes what the state
    // says the slot holds.
    let seed_identity = st.slots.get(&booted).and_then(|info| {
        Some(otter_bundle::SlotIdentity {
            version: info.version.clone(),
            size: info.size?,
            sha256: info.sha256.clone()?,
        })
    });
    let seed = otter_bundle::Seed {
        slot: paths.slot_device(booted).clone(),
        saved_index: seed_identity
            .filter(|id| id.version == release.version)
            .map(|id| (paths.slot_index(booted), id)),
    };
    let started_at = now();
    let update = Update {
        phase: Phase::Installing,
        version: version.clone(),
        slot: target,
        from_slot: booted,
        from_version: release.version.clone(),
        source: o.source.clone(),
        started_at,
        updated_at: started_at,
        progress: None,
        delta: None,
        reason: None,
    };
    // From here the target slot is about to change: the boot loader must not pick it, and its
    // saved index no longer describes it.
    let (boot, _) = store.load().context("reading the boot state")?;
    let out = lifecycle::transition(&st, &boot, Input::InstallStarted { update }, started_at)?;
    apply(&file, store.as_ref(), &out, "marking the target slot bad")?;
    let mut st = out.record;
    let target_index = paths.slot_index(target);
    match std::fs::remove_file(&target_index) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing {}", target_index.display()));
        }
    }

    let mut last_save = Instant::now();
    let mut last_stage = otter_bundle::Stage::Planning;
    let mut progress_cb = |p: otter_bundle::Progress| {
        let pr = progress_of(&p);
        on_progress(&pr);
        // Progress for `otterd status`, at most once a second and at every change of stage.
        if last_save.elapsed() >= Duration::from_secs(1) || p.stage != last_stage {
            last_save = Instant::now();
            last_stage = p.stage;
            if let Some(u) = st.update.as_mut() {
                u.progress = Some(pr);
                u.updated_at = now();
            }
            let _ = file.save(&st);
        }
    };
    let opts = otter_bundle::InstallOptions {
        seed: (!o.no_delta).then_some(seed),
        save_index: Some(target_index),
        ..Default::default()
    };
    let result = bundle.install_image_with("rootfs", &device, &opts, &mut progress_cb);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("{e:#}");
            let out = lifecycle::transition(
                &st,
                &boot_of(&*store)?,
                Input::InstallFailed { reason },
                now(),
            )?;
            apply(&file, store.as_ref(), &out, "writing the boot state")?;
            return Err(anyhow::Error::new(e).context(format!(
                "installing {} into slot {target} ({})",
                o.source,
                device.display()
            )));
        }
    };
    if let Some(e) = &report.index_save_error {
        crate::log(&format!(
            "warning: could not save the block index of slot {target} ({e}); the next update will read the slot instead"
        ));
    }
    let delta = DeltaInfo {
        planned_bytes: report.fetch_planned,
        fetched_bytes: report.bytes_fetched,
        reused_bytes: report.bytes_reused,
        full_bytes: image.index.csize + report.plan.full_bytes,
        requests: report.requests as u64,
        seed_index: match &report.seed_index {
            Some(otter_bundle::SeedIndexSource::Saved) => "saved".into(),
            Some(otter_bundle::SeedIndexSource::Scanned { reason }) => {
                format!("scanned ({reason})")
            }
            Some(otter_bundle::SeedIndexSource::Unusable { reason }) => {
                format!("unusable ({reason})")
            }
            None => "none".into(),
        },
        seed_mismatches: report.seed_mismatches,
    };

    // Verified: arm the trial boot.
    let tries = crate::agent::load_agent_config(paths)?.health.boot_tries;
    let input = Input::InstallVerified {
        info: SlotInfo {
            version: version.clone(),
            installed_at: now(),
            size: Some(image.size),
            sha256: Some(image.sha256.clone()),
        },
        tries,
        progress: Progress {
            stage: "done".into(),
            done_bytes: report.bytes_written,
            total_bytes: report.bytes_written,
            fetched_bytes: report.bytes_fetched,
            fetch_total: report.bytes_fetched,
            reused_bytes: report.bytes_reused,
            verified_bytes: report.bytes_written,
        },
        delta: delta.clone(),
    };
    let out = lifecycle::transition(&st, &boot_of(&*store)?, input, now())?;
    apply(&file, store.as_ref(), &out, "arming the trial boot")?;
    Ok(InstallOutcome {
        version,
        slot: target,
        bytes_written: report.bytes_written,
        bytes_fetched: report.bytes_fetched,
        delta,
        seconds: report.seconds,
        peak_rss_kib: peak_rss_kib(),
    })
}

fn boot_of(store: &dyn otter_boot::BootBackend) -> Result<otter_boot::BootState> {
    Ok(store.load().context("reading the boot state")?.0)
}

fn progress_of(p: &otter_bundle::Progress) -> Progress {
    Progress {
        stage: serde_json::to_value(p.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        done_bytes: p.done_bytes,
        total_bytes: p.total_bytes,
        fetched_bytes: p.fetched_bytes,
        fetch_total: p.fetch_total,
        reused_bytes: p.reused_bytes,
        verified_bytes: p.verified_bytes,
    }
}

/// One line of progress for a terminal: stage, written, downloaded and reused bytes.
pub fn progress_line(p: &Progress) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let pct = |a: u64, b: u64| (a * 100).checked_div(b).unwrap_or(0);
    match p.stage.as_str() {
        "verifying" => format!(
            "verifying: {:3}% ({:.0} / {:.0} MiB read back)",
            pct(p.verified_bytes, p.total_bytes),
            mib(p.verified_bytes),
            mib(p.total_bytes)
        ),
        stage => format!(
            "{}: {:3}% written, downloaded {:.1} / {:.1} MiB, reused {:.0} MiB",
            if stage.is_empty() {
                "installing"
            } else {
                stage
            },
            pct(p.done_bytes, p.total_bytes),
            mib(p.fetched_bytes),
            mib(p.fetch_total.max(p.fetched_bytes)),
            mib(p.reused_bytes)
        ),
    }
}

/// Peak resident set of this process in KiB (`getrusage`).
fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
        u.ru_maxrss.max(0) as u64
    } else {
        0
    }
}
