//! How the fleet commands print what the server answered.

use anyhow::Result;
use otter_proto::admin::{Device, Rollout, RolloutKind};
use serde::Serialize;

pub fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub fn device_line(d: &Device) {
    let update = d
        .update
        .as_ref()
        .map(|u| match u.progress {
            Some(p) => format!("{} {} {p}%", u.version, u.phase.as_str()),
            None => format!("{} {}", u.version, u.phase.as_str()),
        })
        .unwrap_or_default();
    println!(
        "{:<16}  {:<16}  {:<9}  {:<24}  {:<10}  {:<10}  {:<8}  {}",
        d.id,
        d.name.as_deref().unwrap_or("-"),
        d.status.as_str(),
        d.compatible,
        d.os_version.as_deref().unwrap_or("-"),
        d.target_version.as_deref().unwrap_or("-"),
        if d.online { "online" } else { "offline" },
        update
    );
}

/// The apps part of `otter devices show`.
pub fn print_apps(v: &Device) {
    println!(
        "apps target {}",
        v.target_app_version.as_deref().unwrap_or("-")
    );
    if let Some(p) = &v.pinned_app_release {
        println!("apps pin    {p}");
    }
    let Some(a) = &v.apps else {
        println!("apps        -");
        return;
    };
    println!(
        "apps        {}{}",
        a.source,
        a.version
            .as_ref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    if let Some(l) = &a.last_apply {
        println!(
            "apps update {} {}{}{}",
            l.version,
            l.phase.as_str(),
            l.progress
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            l.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    if !a.services.is_empty() {
        println!(
            "  {:<24} {:<10} {:<10} {:>8}  IMAGE",
            "APP.SERVICE", "STATE", "HEALTH", "RESTARTS"
        );
        for s in &a.services {
            println!(
                "  {:<24} {:<10} {:<10} {:>8}  {}",
                format!("{}.{}", s.app, s.service),
                s.state,
                s.health,
                s.restarts,
                s.image
            );
        }
    }
}

pub fn print_rollout(r: &Rollout) {
    match r.kind {
        RolloutKind::Os => println!(
            "rollout {}: release {} ({}) for {}, {} device(s), {}",
            r.id,
            r.version,
            r.release_id,
            r.compatible,
            r.total_devices,
            r.state.as_str()
        ),
        RolloutKind::Apps => println!(
            "rollout {}: app release {} ({}), {} device(s), {}",
            r.id,
            r.version,
            r.release_id,
            r.total_devices,
            r.state.as_str()
        ),
    }
    if let Some(reason) = &r.reason {
        println!("  {reason}");
    }
    for (i, p) in r.phases.iter().enumerate() {
        let mark = if i == r.phase { ">" } else { " " };
        println!(
            " {mark} phase {} {:>5}%  {:>6} device(s)  {:>6} succeeded  {:>6} failed  {}",
            i + 1,
            p.percent,
            p.devices,
            p.succeeded,
            p.failed,
            p.started_at_ms
                .map(|t| format!("started {}", ago(Some(t))))
                .unwrap_or_else(|| "not started".into())
        );
    }
    if !r.failures.is_empty() {
        println!("  failures:");
        for f in r.failures.iter().take(20) {
            println!("    {}  {}", f.device_id, f.reason);
        }
    }
}
