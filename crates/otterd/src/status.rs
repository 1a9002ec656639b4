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
    /// Problems reading any of the above.
    pub errors: Vec<String>,
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
    let boot = match paths.boot_store().load() {
        Ok((b, _)) => Some(b),
        Err(e) => {
            errors.push(format!("boot state: {e}"));
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
    for e in &s.errors {
        out.push_str(&format!("error     {e}\n"));
    }
    out
}
