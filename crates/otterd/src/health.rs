//! Health checks of a freshly booted system. All must pass for an update to be committed:
//! 1. systemd finished starting up;
//! 2. every unit wanted by `otter-health.target` and every unit listed in the agent config is
//!    active;
//! 3. the agent's own checks: boot state readable, state directory writable;
//! 4. every executable in `/etc/otter/health.d/` exits 0 within its time limit;
//! 5. every service of the container apps the device runs is running, and healthy if it has a
//!    health check (unless `[health] apps = false`).

use crate::Paths;
use otter_config::HealthConfig;
use serde::Serialize;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    /// What is not yet (or not) healthy, one line each.
    pub failures: Vec<String>,
    /// `true` when a check can still change (systemd still starting).
    pub pending: bool,
}

pub fn check(paths: &Paths, cfg: &HealthConfig) -> HealthReport {
    let mut failures = Vec::new();
    let mut pending = false;

    // systemd: finished starting, and the health target's and configured units active.
    let systemctl = |args: &[&str]| paths.host.systemctl(args);
    match systemctl(&["is-system-running"]).as_deref() {
        Some("running") | Some("degraded") => {}
        Some(s @ ("initializing" | "starting")) => {
            pending = true;
            failures.push(format!("systemd is still {s}"));
        }
        Some(other) => failures.push(format!("systemd state is `{other}`")),
        None => failures.push("cannot run systemctl".to_string()),
    }
    let mut units: Vec<String> =
        systemctl(&["show", "-p", "Wants", "--value", "otter-health.target"])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
    units.extend(cfg.units.iter().cloned());
    units.sort();
    units.dedup();
    for u in units {
        let state = systemctl(&["is-active", &u]).unwrap_or_default();
        if state != "active" {
            failures.push(format!("unit {u} is {state}"));
        }
    }

    // The agent's own checks: it must be able to manage the next update.
    if let Err(e) = paths.boot().and_then(|b| Ok(b.load()?)) {
        failures.push(format!("boot state unreadable: {e:#}"));
    }
    let probe = paths.state_dir.join(".health-probe");
    if let Err(e) = std::fs::write(&probe, b"ok") {
        failures.push(format!(
            "state directory {} not writable: {e}",
            paths.state_dir.display()
        ));
    }
    let _ = std::fs::remove_file(&probe);

    failures.extend(run_checks(
        paths,
        Duration::from_secs(cfg.check_timeout_secs),
    ));
    if cfg.apps && paths.host.is_device() {
        match crate::apps::service_status(paths) {
            Ok(rows) => {
                let (f, p) = app_failures(&rows);
                failures.extend(f);
                pending |= p;
            }
            Err(e) => failures.push(format!("apps: {e:#}")),
        }
    }
    HealthReport {
        healthy: failures.is_empty(),
        failures,
        pending,
    }
}

/// What keeps the apps' services from counting as healthy (one line each), and whether that
/// can still change (a service still starting).
pub fn app_failures(rows: &[otter_apps::update::ServiceStatus]) -> (Vec<String>, bool) {
    use otter_apps::runtime::{Active, Health};
    let mut failures = Vec::new();
    let mut pending = false;
    for r in rows {
        let name = format!("app service {}.{}", r.app, r.service);
        let Some(st) = &r.state else {
            failures.push(format!(
                "{name}: state unknown ({})",
                r.error.as_deref().unwrap_or("no answer from systemd")
            ));
            continue;
        };
        match (st.active, st.health) {
            // A job that ran to completion (`restart: "no"`, exit 0) did its work.
            (Active::Running, Health::None | Health::Healthy) | (Active::Exited(0), _) => {}
            (Active::Running, Health::Starting) | (Active::Starting, _) => {
                pending = true;
                failures.push(format!("{name} is starting"));
            }
            (Active::Running, Health::Unhealthy) => failures.push(format!("{name} is unhealthy")),
            (Active::Exited(code), _) => failures.push(format!("{name} exited with {code}")),
            (Active::Failed, _) => failures.push(format!("{name} failed")),
            (Active::Inactive, _) => failures.push(format!("{name} is not running")),
        }
    }
    (failures, pending)
}

/// Run the executables of the health.d directory in name order; return one line per failure.
pub fn run_checks(paths: &Paths, timeout: Duration) -> Vec<String> {
    let mut failures = Vec::new();
    let Ok(dir) = std::fs::read_dir(&paths.health_dir) else {
        return failures;
    };
    let mut entries: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let child = Command::new(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("health check {name} could not start: {e}"));
                continue;
            }
        };
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => {
                    crate::notify::heartbeat();
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => break None,
            }
        };
        let mut out = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        if out.trim().is_empty()
            && let Some(mut o) = child.stdout.take()
        {
            let _ = o.read_to_string(&mut out);
        }
        let tail: String = out
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        match status {
            Some(s) if s.success() => {}
            Some(s) => failures.push(format!(
                "health check {name} failed ({s}){}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )),
            None => failures.push(format!(
                "health check {name} did not finish within {}s",
                timeout.as_secs()
            )),
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn health_d_scripts_decide() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::under(d.path());
        std::fs::create_dir_all(&paths.health_dir).unwrap();
        script(&paths.health_dir, "10-ok", "exit 0");
        std::fs::write(paths.health_dir.join("README"), "not executable").unwrap();
        assert!(run_checks(&paths, Duration::from_secs(5)).is_empty());
        script(
            &paths.health_dir,
            "20-bad",
            "echo 'app not answering' >&2; exit 3",
        );
        script(&paths.health_dir, "30-slow", "sleep 5");
        let f = run_checks(&paths, Duration::from_millis(500));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].contains("20-bad") && f[0].contains("app not answering"),
            "{f:?}"
        );
        assert!(
            f[1].contains("30-slow") && f[1].contains("did not finish"),
            "{f:?}"
        );
    }

    #[test]
    fn app_services_must_run_and_be_healthy() {
        use otter_apps::runtime::{Active, Health, ServiceState};
        use otter_apps::update::ServiceStatus;
        let row = |svc: &str, state: Option<(Active, Health)>| ServiceStatus {
            app: "shop".into(),
            service: svc.into(),
            unit: format!("otter-app-shop.{svc}.service"),
            image: "localhost/shop:1".into(),
            revision: "r1".into(),
            state: state.map(|(active, health)| ServiceState {
                active,
                restarts: 0,
                health,
            }),
            error: state.is_none().then(|| "systemctl timed out".to_string()),
        };
        let good = [
            row("web", Some((Active::Running, Health::Healthy))),
            row("worker", Some((Active::Running, Health::None))),
            row("migrate", Some((Active::Exited(0), Health::None))),
        ];
        assert_eq!(app_failures(&good), (vec![], false));
        assert_eq!(app_failures(&[]), (vec![], false));

        let (f, pending) = app_failures(&[
            row("web", Some((Active::Running, Health::Starting))),
            row("db", Some((Active::Starting, Health::None))),
        ]);
        assert!(pending);
        assert_eq!(
            f,
            [
                "app service shop.web is starting",
                "app service shop.db is starting"
            ]
        );

        let (f, pending) = app_failures(&[
            row("web", Some((Active::Running, Health::Unhealthy))),
            row("job", Some((Active::Exited(2), Health::None))),
            row("db", Some((Active::Failed, Health::None))),
            row("cache", Some((Active::Inactive, Health::None))),
            row("queue", None),
        ]);
        assert!(!pending);
        assert_eq!(
            f,
            [
                "app service shop.web is unhealthy",
                "app service shop.job exited with 2",
                "app service shop.db failed",
                "app service shop.cache is not running",
                "app service shop.queue: state unknown (systemctl timed out)",
            ]
        );
    }
}
