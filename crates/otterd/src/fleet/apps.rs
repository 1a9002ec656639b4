//! App releases from the server: applying the targeted app set in the daemon and reporting it.

use super::*;

impl Client {
    /// Use `rt` for app updates and service states instead of podman and systemd.
    pub fn set_apps_runtime(&mut self, rt: Box<dyn Runtime + Send>) {
        self.apps_runtime = Some(rt);
        self.services = None;
    }

    fn take_runtime(&mut self) -> Box<dyn Runtime + Send> {
        self.apps_runtime.take().unwrap_or_else(|| {
            Box::new(crate::apps::runtime(&crate::apps::AppPaths::new(
                &self.paths,
            )))
        })
    }

    /// The services' state (cached for [`SERVICES_REFRESH`]).
    fn services(&mut self) -> Vec<ServiceReport> {
        if let Some((at, s)) = &self.services
            && (at.elapsed() < SERVICES_REFRESH || self.applying)
        {
            // Fresh enough, or an app update is running: what was read last.
            return s.clone();
        }
        if self.applying {
            return Vec::new();
        }
        let apps = match crate::apps::current_apps(&self.paths) {
            Ok((_, apps)) => apps,
            Err(_) => Vec::new(),
        };
        let rows =
            if apps.is_empty() || (!self.paths.host.is_device() && self.apps_runtime.is_none()) {
                Vec::new()
            } else {
                let mut rt = self.take_runtime();
                let rows = otter_apps::update::status(rt.as_mut(), &apps);
                self.apps_runtime = Some(rt);
                rows
            };
        let out: Vec<ServiceReport> = rows.into_iter().map(service_report).collect();
        self.services = Some((std::time::Instant::now(), out.clone()));
        out
    }

    pub(super) fn apps_report(&mut self) -> Option<AppsReport> {
        let (source, _) = crate::apps::current_apps(&self.paths).ok()?;
        let release = crate::apps::applied_release(&self.paths);
        let services = self.services();
        if source == crate::apps::Source::Builtin
            && services.is_empty()
            && self.state.apps_apply.is_none()
        {
            // No apps at all: say nothing (as an agent without apps support would).
            return None;
        }
        Some(AppsReport {
            source: match (&source, &release) {
                (crate::apps::Source::Builtin, _) => "builtin",
                (_, Some(_)) => "release",
                (_, None) => "applied",
            }
            .into(),
            app_release_id: release.as_ref().map(|r| r.id.clone()),
            version: release.map(|r| r.version),
            last_apply: self.state.apps_apply.clone(),
            services,
        })
    }

    fn app_target_key(t: &TargetApps) -> String {
        format!(
            "{}@{}",
            t.app_release_id,
            t.rollout_id.as_deref().unwrap_or("pin")
        )
    }

    fn set_apply(&mut self, a: AppApplyReport) {
        if self
            .state
            .apps_apply
            .as_ref()
            .is_none_or(|p| p.phase != a.phase || p.app_release_id != a.app_release_id)
        {
            self.state.apps_apply_at = Some(now());
        }
        self.state.apps_apply = Some(a);
    }

    /// Apply the targeted app release if it is not what runs: in this daemon, never during
    /// an OS update (installing, waiting for its reboot or on trial), each failed target once.
    pub(super) fn apps_step(&mut self) -> Result<CycleOutcome> {
        let Some(t) = self.state.apps_target.clone() else {
            return Ok(CycleOutcome::Idle);
        };
        let key = Self::app_target_key(&t);
        if self.state.failed_app_targets.contains(&key) {
            return Ok(CycleOutcome::Idle);
        }
        if crate::apps::applied_release(&self.paths).is_some_and(|r| r.id == t.app_release_id) {
            return Ok(CycleOutcome::Idle);
        }
        if let Some(l) = &self.state.apps_apply
            && l.app_release_id == t.app_release_id
            && l.phase == AppPhase::Deferred
            && self
                .state
                .apps_apply_at
                .is_some_and(|at| now().saturating_sub(at) < APPS_DEFER_RETRY.as_secs())
        {
            return Ok(CycleOutcome::Idle);
        }
        let st = read_state(&self.paths.state_dir.join("state.json"))?;
        if st.update.as_ref().is_some_and(|u| !u.phase.is_final()) {
            // The OS update goes first; the apps follow once it is committed or rolled back.
            return Ok(CycleOutcome::Idle);
        }
        let mut report = AppApplyReport {
            app_release_id: t.app_release_id.clone(),
            version: t.version.clone(),
            phase: AppPhase::Applying,
            progress: None,
            error: None,
            apps: Vec::new(),
        };
        let set: Result<otter_apps::AppSet> = if t.set.digest() != t.digest {
            Err(anyhow::anyhow!(
                "the app set's digest is {}, not the {} the server announced",
                t.set.digest(),
                t.digest
            ))
        } else {
            serde_json::to_value(&t.set)
                .and_then(serde_json::from_value)
                .context("the server's app set")
        };
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                report.phase = AppPhase::Failed;
                report.error = Some(format!("{e:#}"));
                return self.apps_done(&t, report);
            }
        };
        crate::log(&format!(
            "the fleet server targets app release {} ({}): applying it",
            t.version, t.app_release_id
        ));
        self.set_apply(report.clone());
        self.state.save(&self.paths)?;
        let _ = self.report(true);
        let mut rt = self.take_runtime();
        self.applying = true;
        let policy = self.apps_policy.clone();
        let paths = self.paths.clone();
        let mut last_sent = std::time::Instant::now();
        let result = {
            let mut log = |app: &str, msg: &str| {
                crate::log(&format!("apps: {app}: {msg}"));
                if let Some(a) = self.state.apps_apply.as_mut() {
                    a.progress = Some(format!("{app}: {msg}").chars().take(1000).collect());
                }
                if last_sent.elapsed() >= Duration::from_secs(5) {
                    last_sent = std::time::Instant::now();
                    let _ = self.report(true);
                }
            };
            crate::apps::apply_release(
                &paths,
                &set,
                Some(crate::apps::ReleaseRef {
                    id: t.app_release_id.clone(),
                    version: t.version.clone(),
                }),
                true,
                &policy,
                rt.as_mut(),
                &mut log,
            )
        };
        self.apps_runtime = Some(rt);
        self.applying = false;
        match result {
            Ok(r) => {
                let (phase, error, apps) = summarize(&r);
                report.phase = phase;
                report.error = error;
                report.apps = apps;
            }
            Err(e) => {
                report.phase = AppPhase::Failed;
                report.error = Some(format!("{e:#}"));
            }
        }
        self.apps_done(&t, report)
    }

    fn apps_done(&mut self, t: &TargetApps, report: AppApplyReport) -> Result<CycleOutcome> {
        let phase = report.phase;
        match &report.error {
            Some(e) => crate::log(&format!(
                "app release {}: {}: {e}",
                t.version,
                phase.as_str()
            )),
            None => crate::log(&format!("app release {}: {}", t.version, phase.as_str())),
        }
        if phase.is_failure() {
            let k = Self::app_target_key(t);
            if !self.state.failed_app_targets.contains(&k) {
                self.state.failed_app_targets.push(k);
                let n = self.state.failed_app_targets.len();
                if n > 20 {
                    self.state.failed_app_targets.drain(..n - 20);
                }
            }
        }
        let mut report = report;
        report.progress = None;
        self.set_apply(report);
        self.services = None;
        self.state.save(&self.paths)?;
        let _ = self.report(true);
        Ok(CycleOutcome::Apps {
            version: t.version.clone(),
            phase,
        })
    }
}

fn service_report(s: otter_apps::update::ServiceStatus) -> ServiceReport {
    use otter_apps::runtime::{Active, Health as H};
    let (state, health, restarts) = match &s.state {
        Some(st) => (
            match st.active {
                Active::Running => "running",
                Active::Starting => "starting",
                Active::Exited(_) => "exited",
                Active::Failed => "failed",
                Active::Inactive => "inactive",
            },
            match st.health {
                H::None => "none",
                H::Starting => "starting",
                H::Healthy => "healthy",
                H::Unhealthy => "unhealthy",
            },
            st.restarts,
        ),
        None => ("unknown", "none", 0),
    };
    ServiceReport {
        app: s.app,
        service: s.service,
        image: s.image,
        state: state.into(),
        health: health.into(),
        restarts,
    }
}

/// The phase of an app release from its apps' outcomes, the error, and each app's result.
fn summarize(r: &otter_apps::update::SetReport) -> (AppPhase, Option<String>, Vec<AppOutcome>) {
    use otter_apps::update::Outcome;
    let mut phase = AppPhase::Applied;
    let rank = |p: AppPhase| match p {
        AppPhase::RolledBack => 4,
        AppPhase::Refused => 3,
        AppPhase::Failed => 2,
        AppPhase::Deferred => 1,
        _ => 0,
    };
    let mut errors = Vec::new();
    let mut apps = Vec::new();
    for a in &r.apps {
        let (result, reason, p) = match &a.outcome {
            Outcome::Unchanged => ("unchanged", None, AppPhase::Applied),
            Outcome::Installed { .. } => ("installed", None, AppPhase::Applied),
            Outcome::Updated { .. } => ("updated", None, AppPhase::Applied),
            Outcome::Removed => ("removed", None, AppPhase::Applied),
            Outcome::RolledBack {
                reason, restored, ..
            } => (
                "rolled-back",
                Some(if *restored {
                    reason.clone()
                } else {
                    format!("{reason} (the previous version is not healthy either)")
                }),
                AppPhase::RolledBack,
            ),
            Outcome::Failed { reason } if reason.starts_with("refused before starting") => {
                ("failed", Some(reason.clone()), AppPhase::Refused)
            }
            Outcome::Failed { reason } => ("failed", Some(reason.clone()), AppPhase::Failed),
            Outcome::Deferred { reason } => ("deferred", Some(reason.clone()), AppPhase::Deferred),
        };
        if let Some(why) = &reason {
            errors.push(format!("{}: {why}", a.app));
        }
        if rank(p) > rank(phase) {
            phase = p;
        }
        apps.push(AppOutcome {
            app: a.app.clone(),
            result: result.into(),
            reason,
        });
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    (phase, error, apps)
}
