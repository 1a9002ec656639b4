//! `otterd status`: one view of boot slots, versions and the update in progress.

use crate::Paths;
use crate::state::{Event, Update, read_state};
use anyhow::Result;
use otter_boot::Slot;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub booted: bool,
    pub primary: bool,
    pub good: bool,
    pub tries_left: u8,
    pub version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub booted_slot: Option<Slot>,
    pub primary_slot: Option<Slot>,
    /// The running slot is on trial (not committed yet).
    pub trial: bool,
    pub version: Option<String>,
    pub compatible: Option<String>,
    pub slots: Vec<SlotStatus>,
    pub update: Option<Update>,
    pub history: Vec<Event>,
    /// How the device config was last applied (`None`: not since boot).
    pub config: Option<crate::provision::ConfigStatus>,
    /// The fleet server connection, when the device config names a server.
    pub fleet: Option<FleetStatus>,
    /// Problems reading any of the above.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub server: String,
    pub device_id: String,
    /// `pending`, `accepted`, `rejected`, or empty before the first answer.
    pub enrollment: String,
    pub target_version: Option<String>,
    /// Unix time of the last successful request.
    pub last_contact: Option<u64>,
    /// Reached since this boot (a trial boot needs it to commit).
    pub reached_since_boot: bool,
    pub reboot_pending: bool,
    pub last_error: Option<String>,
}

fn fleet_status(paths: &Paths) -> Option<FleetStatus> {
    let server = crate::provision::effective_config(paths).server?;
    let f = crate::fleet::FleetState::load(paths);
    let url = server.url.trim_end_matches('/').to_string();
    let same = f.server_url == url;
    Some(FleetStatus {
        server: url,
        device_id: f.device_id.clone(),
        enrollment: if same {
            f.enrollment.clone()
        } else {
            String::new()
        },
        target_version: f
            .target
            .as_ref()
            .filter(|_| same)
            .map(|t| t.version.clone()),
        last_contact: f.last_contact.filter(|_| same),
        reached_since_boot: crate::fleet::reached_since_boot(paths),
        reboot_pending: same && f.reboot_pending,
        last_error: f.last_error.filter(|_| same),
    })
}

pub fn status(paths: &Paths) -> Result<Status> {
    let mut errors = Vec::new();
    let booted = match paths.booted_slot() {
        Ok((s, _)) => Some(s),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let release = match otter_config::ReleaseInfo::load(&paths.release) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let boot = match paths.boot().and_then(|b| Ok(b.load()?)) {
        Ok((b, _)) => Some(b),
        Err(e) => {
            errors.push(format!("boot state: {e:#}"));
            None
        }
    };
    let st = match read_state(&paths.state_dir.join("state.json")) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("{e:#}"));
            Default::default()
        }
    };
    let slots = [Slot::A, Slot::B]
        .into_iter()
        .map(|s| SlotStatus {
            slot: s,
            booted: booted == Some(s),
            primary: boot.as_ref().map(|b| b.primary()) == Some(s),
            good: boot.as_ref().map(|b| b.slot(s).good).unwrap_or(false),
            tries_left: boot.as_ref().map(|b| b.slot(s).tries).unwrap_or(0),
            version: st.slots.get(&s).map(|i| i.version.clone()),
        })
        .collect();
    let trial = match (&boot, booted) {
        (Some(b), Some(s)) => !b.slot(s).good,
        _ => false,
    };
    let history = st.history.iter().rev().take(10).rev().cloned().collect();
    Ok(Status {
        booted_slot: booted,
        primary_slot: boot.as_ref().map(|b| b.primary()),
        trial,
        version: release.as_ref().map(|r| r.version.clone()),
        compatible: release.map(|r| r.compatible),
        slots,
        update: st.update,
        history,
        config: crate::provision::last_status(paths),
        fleet: fleet_status(paths),
        errors,
    })
}

/// A human summary of `s`.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
    out.push_str(&format!(
        "running   {} on slot {}{}\n",
        opt(&s.version),
        s.booted_slot.map(|x| x.to_string()).unwrap_or("?".into()),
        if s.trial {
            " (on trial, not committed)"
        } else {
            ""
        }
    ));
    for sl in &s.slots {
        out.push_str(&format!(
            "slot {}    {:<10} {}{}{}\n",
            sl.slot,
            sl.version.clone().unwrap_or_else(|| "-".into()),
            if sl.good { "good" } else { "not good" },
            if sl.primary { ", primary" } else { "" },
            if sl.tries_left > 0 {
                format!(", {} tries left", sl.tries_left)
            } else {
                String::new()
            },
        ));
    }
    if let Some(u) = &s.update {
        let phase = serde_json::to_value(u.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "update    {} -> {} (slot {}): {phase}\n",
            u.from_version, u.version, u.slot
        ));
        if let Some(p) = &u.progress
            && p.total_bytes > 0
            && phase == "installing"
        {
            out.push_str(&format!("progress  {}\n", crate::install::progress_line(p)));
        }
        if let Some(d) = &u.delta {
            out.push_str(&format!(
                "download  {:.1} MiB of {:.1} MiB for a full install ({} requests), {:.1} MiB reused; seed index {}\n",
                d.fetched_bytes as f64 / 1048576.0,
                d.full_bytes as f64 / 1048576.0,
                d.requests,
                d.reused_bytes as f64 / 1048576.0,
                d.seed_index
            ));
        }
        if let Some(r) = &u.reason {
            out.push_str(&format!("reason    {r}\n"));
        }
    }
    if let Some(c) = &s.config {
        let src = match c.source {
            crate::provision::ConfigSource::DeviceToml => "otter/device.toml",
            crate::provision::ConfigSource::LastGood => {
                "last good config (otter/device.toml rejected)"
            }
            crate::provision::ConfigSource::Defaults => "image defaults",
        };
        out.push_str(&format!("config    {src}\n"));
        if let Some(e) = &c.error {
            out.push_str(&format!("error     device config: {e}\n"));
        }
        for w in &c.warnings {
            out.push_str(&format!("warning   device config: {w}\n"));
        }
    }
    if let Some(f) = &s.fleet {
        let since = |t: u64| {
            let s = crate::now().saturating_sub(t);
            match s {
                0..=119 => format!("{s}s ago"),
                120..=7199 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        };
        out.push_str(&format!(
            "server    {} as device {}: {}{}\n",
            f.server,
            if f.device_id.is_empty() {
                "?"
            } else {
                &f.device_id
            },
            if f.enrollment.is_empty() {
                "not enrolled yet"
            } else {
                &f.enrollment
            },
            f.last_contact
                .map(|t| format!(", last contact {}", since(t)))
                .unwrap_or_default()
        ));
        if let Some(t) = &f.target_version {
            out.push_str(&format!(
                "target    {t}{}\n",
                if f.reboot_pending {
                    " (installed; waiting for the reboot window)"
                } else {
                    ""
                }
            ));
        }
        if let Some(e) = &f.last_error {
            out.push_str(&format!("error     fleet server: {e}\n"));
        }
    }
    for e in &s.errors {
        out.push_str(&format!("error     {e}\n"));
    }
    out
}
