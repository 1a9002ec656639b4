//! What the agent does at every boot, and the commit / rollback / reboot operations.

use crate::health::{self, HealthReport};
use crate::state::{Phase, SlotInfo, StateFile};
use crate::{Paths, now};
use anyhow::{Context, Result, bail};
use otter_boot::Slot;
use otter_config::{AgentConfig, ReleaseInfo};
use std::path::Path;
use std::time::Duration;

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

/// The image's agent settings, with the device config's `[health]` overrides applied.
pub fn load_agent_config(paths: &Paths) -> Result<AgentConfig> {
    let mut c = if paths.agent_config.exists() {
        AgentConfig::load(&paths.agent_config)?
    } else {
        AgentConfig::default()
    };
    if let Some(h) = crate::provision::effective_config(paths).health {
        if let Some(d) = h.deadline_secs {
            c.health.deadline_secs = d;
        }
        for u in h.units {
            if !c.health.units.contains(&u) {
                c.health.units.push(u);
            }
        }
    }
    Ok(c)
}

/// Work out what this boot is, record what happened since the last one, and repair the
/// boot state (mark a slot that fell back as bad).
pub fn reconcile(paths: &Paths) -> Result<Situation> {
    let store = paths.boot()?;
    let (booted, _try_flag) = store.booted()?;
    let release = ReleaseInfo::load(&paths.release)?;
    let mut boot = match store.load() {
        Ok((b, otter_boot::LoadSource::Primary)) => b,
        Ok((b, otter_boot::LoadSource::Backup)) => {
            // A power cut tore the primary copy; GRUB used the backup too. Make both whole.
            crate::log("boot state: primary copy invalid, repairing it from the backup");
            store.repair().context("repairing the boot state")?;
            b
        }
        Err(otter_boot::BootError::NoValidState { .. }) if store.state_home_present() => {
            // Both copies lost: GRUB booted its built-in default. The running slot is the only
            // one known to work.
            crate::log(&format!(
                "boot state: both copies invalid; rewriting it with slot {booted} as the only good slot"
            ));
            let b = otter_boot::BootState::recovered(booted);
            store.store(&b).context("rewriting the boot state")?;
            b
        }
        Err(e) => return Err(e).context("reading the boot state"),
    };
    let file = StateFile::lock(&paths.state_dir)?;
    let mut st = file.load()?;

    let known = st.slots.get(&booted).map(|s| s.version.as_str());
    if known != Some(release.version.as_str()) {
        st.slots.insert(
            booted,
            SlotInfo {
                version: release.version.clone(),
                installed_at: release.build_time,
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
            version: release.version.clone(),
        }
    };

    let mut boot_changed = false;
    if let Some(u) = st.update.as_mut() {
        if u.slot == booted {
            match u.phase {
                Phase::Installed | Phase::Trying if !booted_good => {
                    u.phase = Phase::Trying;
                    u.updated_at = now();
                }
                // Committed in the boot state but the record did not follow (power cut).
                Phase::Installed | Phase::Trying | Phase::Unhealthy if booted_good => {
                    u.phase = Phase::Committed;
                    u.updated_at = now();
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
                    u.updated_at = now();
                    if boot.slot(u.slot).good
                        || boot.slot(u.slot).tries > 0
                        || boot.primary() != booted
                    {
                        boot.mark_bad(u.slot);
                        boot_changed = true;
                    }
                    let (version, slot) = (u.version.clone(), u.slot);
                    st.record("rolled_back", &version, slot, &reason);
                    situation = Situation::RolledBack {
                        slot: booted,
                        failed_version: version,
                        reason,
                    };
                }
                Phase::Installing => {
                    let reason =
                        "the install was interrupted (power loss or crash while writing the slot)"
                            .to_string();
                    u.phase = Phase::Failed;
                    u.reason = Some(reason.clone());
                    u.updated_at = now();
                    let (version, slot) = (u.version.clone(), u.slot);
                    if boot.slot(slot).good || boot.slot(slot).tries > 0 {
                        boot.mark_bad(slot);
                        boot_changed = true;
                    }
                    st.record("install_failed", &version, slot, &reason);
                }
                _ => {}
            }
        }
    }
    if boot_changed {
        store.store(&boot).context("writing the boot state")?;
    }
    file.save(&st)?;
    Ok(situation)
}

fn uptime() -> Duration {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_default()
}

/// Run the health checks of a trial boot until they pass (commit) or the deadline passes
/// (mark bad, reboot). Returns the last report.
pub fn run_trial(paths: &Paths, slot: Slot) -> Result<HealthReport> {
    let cfg = load_agent_config(paths)?.health;
    let deadline = Duration::from_secs(cfg.deadline_secs);
    let started = std::time::Instant::now();
    let boot_time = uptime();
    loop {
        crate::notify::heartbeat();
        let mut report = health::check(paths, &cfg);
        if report.healthy
            && let Err(why) = crate::fleet::commit_allowed(paths)
        {
            report.healthy = false;
            report.failures.push(why);
        }
        if report.healthy {
            crate::log(&format!("slot {slot} is healthy; committing"));
            commit(paths, "health checks passed")?;
            return Ok(report);
        }
        let elapsed = boot_time + started.elapsed();
        if elapsed >= deadline {
            let reason = format!(
                "health checks failed within {}s of boot: {}",
                cfg.deadline_secs,
                report.failures.join("; ")
            );
            crate::log(&format!("slot {slot}: {reason}; rolling back"));
            mark_unhealthy_and_reboot(paths, slot, &reason)?;
            return Ok(report);
        }
        crate::notify::notify(&format!(
            "STATUS=trial of slot {slot}: {}",
            report.failures.join("; ")
        ));
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Commit the booted slot (it becomes primary and good).
pub fn commit(paths: &Paths, why: &str) -> Result<()> {
    let store = paths.boot_for("commit")?;
    let (booted, _) = store.booted()?;
    let (mut boot, _) = store.load().context("reading the boot state")?;
    let file = StateFile::lock(&paths.state_dir)?;
    let mut st = file.load()?;
    if boot.slot(booted).good && boot.primary() == booted {
        bail!("slot {booted} is already committed");
    }
    boot.commit(booted);
    store.store(&boot).context("writing the boot state")?;
    let version = st
        .slots
        .get(&booted)
        .map(|s| s.version.clone())
        .unwrap_or_default();
    if let Some(u) = st.update.as_mut()
        && u.slot == booted
    {
        u.phase = Phase::Committed;
        u.updated_at = now();
    }
    st.record("committed", &version, booted, why);
    file.save(&st)
}

fn mark_unhealthy_and_reboot(paths: &Paths, slot: Slot, reason: &str) -> Result<()> {
    {
        let file = StateFile::lock(&paths.state_dir)?;
        let mut st = file.load()?;
        // The reason is saved before the boot state changes, so it survives any power cut.
        if let Some(u) = st.update.as_mut()
            && u.slot == slot
        {
            u.phase = Phase::Unhealthy;
            u.reason = Some(reason.to_string());
            u.updated_at = now();
        }
        file.save(&st)?;
        let store = paths.boot()?;
        let (mut boot, _) = store.load().context("reading the boot state")?;
        boot.mark_bad(slot);
        store.store(&boot).context("writing the boot state")?;
    }
    reboot(paths)
}

/// Go back to the other slot: a slot on trial is marked bad; a committed slot hands over to
/// the other one if that holds a good system.
pub fn rollback(paths: &Paths, do_reboot: bool) -> Result<String> {
    let store = paths.boot()?;
    let (booted, _) = store.booted()?;
    let other = booted.other();
    let (mut boot, _) = store.load().context("reading the boot state")?;
    if !boot.slot(other).good {
        bail!("slot {other} holds no committed system to roll back to");
    }
    let file = StateFile::lock(&paths.state_dir)?;
    let mut st = file.load()?;
    let version = st
        .slots
        .get(&other)
        .map(|s| s.version.clone())
        .unwrap_or_else(|| "unknown".into());
    let msg = if boot.slot(booted).good {
        boot.commit(other);
        format!("slot {other} ({version}) is primary again")
    } else {
        if let Some(u) = st.update.as_mut()
            && u.slot == booted
        {
            u.phase = Phase::Unhealthy;
            u.reason = Some("rolled back by hand (otterd rollback)".into());
            u.updated_at = now();
        }
        boot.mark_bad(booted);
        format!("slot {booted} marked bad; slot {other} ({version}) boots next")
    };
    st.record("rollback_requested", &version, other, &msg);
    file.save(&st)?;
    store.store(&boot).context("writing the boot state")?;
    if do_reboot {
        reboot(paths)?;
    }
    Ok(msg)
}

pub fn reboot(paths: &Paths) -> Result<()> {
    if paths.test_mode {
        std::fs::write(paths.state_dir.join("reboot-requested"), b"1")
            .context("recording the reboot request")?;
        return Ok(());
    }
    let _ = std::process::Command::new("sync").status();
    let ok = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        std::process::Command::new("reboot")
            .arg("-f")
            .status()
            .context("rebooting")?;
    }
    Ok(())
}

/// The long-running agent (systemd unit `otterd.service`).
pub fn daemon(paths: &Paths) -> Result<()> {
    crate::notify::notify("READY=1");
    crate::notify::start_watchdog();
    let situation = loop {
        crate::notify::heartbeat();
        match reconcile(paths) {
            Ok(s) => break s,
            Err(e) => {
                eprintln!("otterd: {e:#}; retrying in 10s");
                crate::notify::notify(&format!("STATUS=error: {e:#}"));
                // A trial boot that cannot even read its state must not stay forever: after
                // the deadline, reboot so the boot loader falls back.
                if let Ok((_, true)) = paths.booted_slot() {
                    let deadline = load_agent_config(paths)
                        .map(|c| c.health.deadline_secs)
                        .unwrap_or(300);
                    if uptime() > Duration::from_secs(deadline) {
                        eprintln!("otterd: trial boot past its deadline without state; rebooting");
                        reboot(paths)?;
                    }
                }
                std::thread::sleep(Duration::from_secs(10));
            }
        }
    };
    crate::log(&situation.to_string());
    // Apps start whatever the boot is (a trial boot's apps may be what its checks test).
    crate::apps::spawn_boot(paths);
    if !paths.test_mode {
        // The fleet client runs beside the trial: a trial boot must reach the server to commit.
        let p = paths.clone();
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || crate::fleet::run(p))
            .context("starting the fleet client thread")?;
    }
    match &situation {
        Situation::Trial { slot, .. } => {
            crate::notify::notify(&format!("STATUS=trial boot of slot {slot}"));
            run_trial(paths, *slot)?;
        }
        Situation::RolledBack { reason, .. } => {
            crate::notify::notify(&format!("STATUS=rolled back: {reason}"));
        }
        Situation::Normal { slot } => {
            crate::notify::notify(&format!("STATUS=running slot {slot}"));
        }
    }
    // The clock chain's "last saved clock": hourly and at shutdown, so a device without an
    // RTC never starts further back than its last run.
    stop_on_sigterm();
    crate::provision::preinit::save_clock(paths);
    if let Some(server) = crate::provision::effective_config(paths).server
        && !paths.test_mode
    {
        std::thread::spawn(move || {
            // The network may take a while; try for ten minutes, then leave it to NTP.
            for _ in 0..20 {
                // Only while NTP has not synchronised, and only forward.
                if Path::new("/run/systemd/timesync/synchronized").exists() {
                    return;
                }
                match crate::provision::preinit::server_date(&server.url) {
                    Ok(t) => {
                        if t > crate::now() + 60 {
                            crate::provision::preinit::clock_floor(t);
                        }
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_secs(30)),
                }
            }
        });
    }
    let mut last_save = std::time::Instant::now();
    loop {
        crate::notify::heartbeat();
        for _ in 0..10 {
            if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                crate::provision::preinit::save_clock(paths);
                crate::notify::notify("STOPPING=1");
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if last_save.elapsed() > Duration::from_secs(3600) {
            crate::provision::preinit::save_clock(paths);
            last_save = std::time::Instant::now();
        }
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn stop_on_sigterm() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}
