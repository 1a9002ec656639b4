//! How the fleet commands print what the server answered.

use anyhow::Result;
use otter_proto::admin::{Device, Rollout, RolloutKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Write as _;

/// `s` with every control character (C0 but tab, DEL, C1, which includes the 8-bit CSI) and
/// every bidirectional override shown as `\u{..}`: a device must not be able to move the admin's
/// cursor, recolour, clear or forge lines of the terminal through its name, version or log lines.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// `v` with [`escape_controls`] applied to every string in it, for printing as text. The JSON
/// output (`--json`) keeps the server's values: JSON escapes control characters itself.
pub fn terminal_safe<T: Serialize + DeserializeOwned>(v: T) -> Result<T> {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(e) = escape_controls(s) {
                    *s = e;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            serde_json::Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    let mut j = serde_json::to_value(&v)?;
    walk(&mut j);
    Ok(serde_json::from_value(j)?)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_text_is_kept() {
        assert_eq!(escape_controls("gw-1 ünïcode\ttab"), "gw-1 ünïcode\ttab");
        assert_eq!(
            escape_controls("a\u{1b}[2J\u{1b}[1;1Hroot\nforged line\r\u{9b}31m\u{7f}"),
            "a\\u{1b}[2J\\u{1b}[1;1Hroot\\u{a}forged line\\u{d}\\u{9b}31m\\u{7f}"
        );
        assert_eq!(escape_controls("ab\u{202E}cd"), "ab\\u{202e}cd");
    }

    #[test]
    fn terminal_safe_reaches_nested_strings() {
        let v = serde_json::json!({"name": "x\u{1b}]0;title\u{7}", "tags": ["a\nb"], "n": 3});
        let v = terminal_safe(v).unwrap();
        assert_eq!(v["name"], "x\\u{1b}]0;title\\u{7}");
        assert_eq!(v["tags"][0], "a\\u{a}b");
        assert_eq!(v["n"], 3);
    }
}
