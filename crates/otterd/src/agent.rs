//! What the agent does at every boot, and the commit / rollback / reboot operations.

use crate::health::{self, HealthReport};
pub use crate::lifecycle::Situation;
use crate::lifecycle::{self, Effect, Input, Outcome};
use crate::state::StateFile;
use crate::{Paths, now};
use anyhow::{Context, Result};
use otter_boot::{BootBackend, Slot};
use otter_config::{AgentConfig, ReleaseInfo};
use std::path::Path;
use std::time::Duration;

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
    let boot = match store.load() {
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
    let st = file.load()?;
    let input = Input::Boot {
        booted,
        version: release.version.clone(),
        build_time: release.build_time,
    };
    let out = lifecycle::transition(&st, &boot, input, now())?;
    apply(&file, store.as_ref(), &out, "writing the boot state")?;
    out.situation
        .context("the lifecycle gave no situation for a boot")
}

/// Carry out a transition's file writes in the order it gives. Returns whether it asks for a
/// reboot, which the caller does after releasing the state lock.
pub(crate) fn apply(
    file: &StateFile,
    store: &dyn BootBackend,
    out: &Outcome,
    boot_write: &str,
) -> Result<bool> {
    let mut reboot = false;
    for e in &out.effects {
        match e {
            Effect::SaveRecord => file.save(&out.record)?,
            Effect::StoreBoot => store
                .store(&out.boot)
                .with_context(|| boot_write.to_string())?,
            Effect::Reboot => reboot = true,
        }
    }
    Ok(reboot)
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
    let (boot, _) = store.load().context("reading the boot state")?;
    let file = StateFile::lock(&paths.state_dir)?;
    let st = file.load()?;
    let input = Input::Commit {
        booted,
        why: why.to_string(),
    };
    let out = lifecycle::transition(&st, &boot, input, now())?;
    apply(&file, store.as_ref(), &out, "writing the boot state")?;
    Ok(())
}

fn mark_unhealthy_and_reboot(paths: &Paths, slot: Slot, reason: &str) -> Result<()> {
    let do_reboot = {
        let store = paths.boot()?;
        let file = StateFile::lock(&paths.state_dir)?;
        let st = file.load()?;
        let (boot, _) = store.load().context("reading the boot state")?;
        let input = Input::HealthDeadline {
            slot,
            reason: reason.to_string(),
        };
        let out = lifecycle::transition(&st, &boot, input, now())?;
        apply(&file, store.as_ref(), &out, "writing the boot state")?
    };
    if do_reboot {
        reboot(paths)?;
    }
    Ok(())
}

/// Go back to the other slot: a slot on trial is marked bad; a committed slot hands over to
/// the other one if that holds a good system.
pub fn rollback(paths: &Paths, do_reboot: bool) -> Result<String> {
    let store = paths.boot()?;
    let (booted, _) = store.booted()?;
    let (boot, _) = store.load().context("reading the boot state")?;
    let msg = {
        let file = StateFile::lock(&paths.state_dir)?;
        let st = file.load()?;
        let out = lifecycle::transition(&st, &boot, Input::Rollback { booted }, now())?;
        apply(&file, store.as_ref(), &out, "writing the boot state")?;
        out.message.unwrap_or_default()
    };
    if do_reboot {
        reboot(paths)?;
    }
    Ok(msg)
}

pub fn reboot(paths: &Paths) -> Result<()> {
    paths.host.reboot()
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
    if paths.host.is_device() {
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
        && paths.host.is_device()
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
