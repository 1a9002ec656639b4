//! The device side of the fleet server protocol (`otter-proto`, docs/api.md): enroll with the
//! device's own Ed25519 key, poll the target state with `ETag`s, install what the server targets,
//! report every phase of it, and upload the journal in batches.
//!
//! Reports are not queued as messages: they are derived from the agent's own state file
//! (`state.json`: the update in progress and a bounded history), which survives reboots and
//! power cuts. What the server has acknowledged is remembered in `fleet.json` (the history
//! cursor), so a device offline for days sends the outcome of everything that happened, in order,
//! once it is back; intermediate progress of an install it finished offline is not replayed.
//! Logs work the same way with the journal's cursor: the journal (persistent or capped in RAM,
//! `logging` in the device config) is the bounded queue.

use crate::state::{AgentState, EventKind, Phase, read_state};
use crate::{Paths, now};
use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use otter_apps::runtime::Runtime;
use otter_client::{Call, blocking as fleet_client, device as device_api};
use otter_config::device_config::Server;
use otter_proto::{
    ApiError, AppApplyReport, AppOutcome, AppPhase, AppsReport, Challenge, EnrollRequest,
    EnrollResponse, EnrollStatus, LogBatch, LogEntry, RollbackEvent, ServiceReport, StateReport,
    TargetApps, TargetState, UpdatePhase, UpdateReport,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Poll interval until the server has told us its own.
const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// Log lines per upload.
const LOG_BATCH: usize = 500;
/// Longest message uploaded; longer ones are cut (the journal keeps the whole line).
const LOG_MESSAGE_MAX: usize = 4096;

mod apps;
mod logs;
mod state;

use state::contact_marker;
pub use state::{FleetState, commit_allowed, device_key, reached_since_boot};

/// An HTTP answer reduced to what the agent needs.
enum Answer {
    Ok(u16, String, Option<String>, Option<u64>),
    Error(u16, String),
}

/// One fleet server connection.
pub struct Client {
    paths: Paths,
    server: Server,
    agent: ureq::Agent,
    key: SigningKey,
    pub state: FleetState,
    poll_interval: Duration,
    last_report: Option<(StateReport, u64)>,
    /// Runs app updates (podman and systemd; tests put a fake here).
    apps_runtime: Option<Box<dyn Runtime + Send>>,
    pub apps_policy: otter_apps::update::Policy,
    /// The services' state, read at most every [`SERVICES_REFRESH`].
    services: Option<(std::time::Instant, Vec<ServiceReport>)>,
    /// An app update is running (it has the runtime).
    applying: bool,
}

/// How often the services' state is read for reports (each read asks systemd and podman).
const SERVICES_REFRESH: Duration = Duration::from_secs(15);
/// A deferred app release (an app held the update lock) is tried again after this long.
const APPS_DEFER_RETRY: Duration = Duration::from_secs(600);

/// What one [`Client::cycle`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CycleOutcome {
    /// Waiting for an admin to accept the device.
    Pending,
    Rejected,
    /// Polled; nothing to do.
    Idle,
    /// Installed the targeted release; the caller reboots (now or in the window).
    Installed {
        version: String,
        reboot_now: bool,
    },
    /// The install failed (reported).
    InstallFailed {
        version: String,
        error: String,
    },
    /// Applied (or tried to apply) the targeted app release; reported.
    Apps {
        version: String,
        phase: AppPhase,
    },
}

impl Client {
    pub fn new(paths: &Paths, server: Server) -> Result<Client> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("otterd/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = crate::provision::effective_config(paths).network.proxy {
            b = b.proxy(
                ureq::Proxy::new(&p)
                    .with_context(|| format!("network.proxy `{p}` is not usable by the agent"))?,
            );
        }
        let mut state = FleetState::load(paths);
        let url = server.url.trim_end_matches('/').to_string();
        if state.server_url != url {
            // Another server: its tokens, targets and cursors mean nothing here.
            state = FleetState {
                server_url: url,
                ..Default::default()
            };
        }
        let key = device_key(paths)?;
        state.device_id = otter_proto::device_id_of(&key.verifying_key().to_bytes());
        Ok(Client {
            paths: paths.clone(),
            server,
            agent: b.build(),
            key,
            state,
            poll_interval: DEFAULT_POLL,
            last_report: None,
            apps_runtime: None,
            apps_policy: otter_apps::update::Policy::default(),
            services: None,
            applying: false,
        })
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.state.server_url)
    }

    /// Sends one call of the device API (paths and bodies from otter-client).
    fn call<T>(&self, call: &Call<T>) -> Answer {
        let token = self.state.token.clone();
        let client =
            fleet_client::Client::with_agent(&self.state.server_url, token, self.agent.clone());
        match client.answer(call) {
            Ok(a) if a.status >= 400 => {
                let msg = serde_json::from_str::<ApiError>(&a.body)
                    .map(|e| format!("{}: {}", e.error, e.message))
                    .unwrap_or(a.body);
                Answer::Error(a.status, msg)
            }
            Ok(a) => Answer::Ok(a.status, a.body, a.etag, a.poll_interval),
            Err(otter_client::Error::Unreachable { message, .. }) => Answer::Error(0, message),
            Err(e) => Answer::Error(0, e.to_string()),
        }
    }

    fn contact(&mut self) {
        self.state.last_contact = Some(now());
        self.state.last_error = None;
        let _ = std::fs::create_dir_all(&self.paths.run_dir);
        let _ = std::fs::write(contact_marker(&self.paths), now().to_string());
    }

    fn fail<T>(&mut self, what: &str, code: u16, msg: String) -> Result<T> {
        let e = if code == 0 {
            format!("{what}: {} unreachable: {msg}", self.state.server_url)
        } else {
            format!("{what}: HTTP {code}: {msg}")
        };
        self.state.last_error = Some(e.clone());
        let _ = self.state.save(&self.paths);
        bail!(e)
    }

    /// Enroll (again): gives the enrollment status.
    fn enroll(&mut self) -> Result<EnrollStatus> {
        self.state.token = None;
        let challenge: Challenge = match self.call(&device_api::challenge()) {
            Answer::Ok(_, text, _, _) => serde_json::from_str(&text)
                .with_context(|| format!("the server's challenge is not JSON: {text}"))?,
            Answer::Error(code, msg) => return self.fail("enrollment challenge", code, msg),
        };
        let release = otter_config::ReleaseInfo::load(&self.paths.release)?;
        let name = crate::provision::effective_config(&self.paths)
            .hostname
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty());
        let req = EnrollRequest::signed(
            &self.key,
            &challenge.challenge,
            &release.compatible,
            name,
            self.server.enrollment_key.clone(),
            Some(release.version.clone()),
        );
        let resp: EnrollResponse = match self.call(&device_api::enroll(&req)) {
            Answer::Ok(_, text, _, _) => serde_json::from_str(&text)
                .with_context(|| format!("the server's enrollment answer is not JSON: {text}"))?,
            Answer::Error(code, msg) => return self.fail("enrollment", code, msg),
        };
        self.state.enrollment = match resp.status {
            EnrollStatus::Accepted => "accepted",
            EnrollStatus::Pending => "pending",
            EnrollStatus::Rejected => "rejected",
        }
        .into();
        if resp.status == EnrollStatus::Accepted {
            let Some(token) = resp.token else {
                bail!("the server accepted the enrollment but sent no token");
            };
            self.state.token = Some(token);
            self.state.etag = None;
            crate::log(&format!(
                "enrolled with {} as device {}",
                self.state.server_url, self.state.device_id
            ));
        } else if let Some(s) = resp.retry_after_secs {
            self.poll_interval = Duration::from_secs(s.clamp(5, 3600));
        }
        self.state.save(&self.paths)?;
        Ok(resp.status)
    }

    /// The report for the current state, and the history cursor it would acknowledge.
    pub fn build_report(
        &mut self,
        st: &AgentState,
    ) -> (StateReport, Option<(u64, String, String)>) {
        let release = otter_config::ReleaseInfo::load(&self.paths.release).ok();
        let booted = self.paths.booted_slot().ok().map(|(s, _)| s);
        let update = st.update.as_ref().map(|u| {
            let progress = u.progress.as_ref().and_then(|p| {
                let pct = (p.done_bytes * 100).checked_div(p.total_bytes)?;
                Some(pct.min(100) as u8)
            });
            let phase = crate::lifecycle::server_phase(u, self.state.reboot_pending);
            UpdateReport {
                version: u.version.clone(),
                phase,
                progress: if phase == UpdatePhase::Committed {
                    Some(100)
                } else {
                    progress
                },
                error: u.reason.clone().filter(|_| phase.is_failure()),
            }
        });
        // Rollbacks the server has not acknowledged yet.
        let start = match &self.state.reported_until {
            None => 0,
            Some((t, ev, ver)) => st
                .history
                .iter()
                .rposition(|e| e.time == *t && e.event.as_str() == ev && &e.version == ver)
                .map(|i| i + 1)
                .unwrap_or_else(|| st.history.iter().take_while(|e| e.time <= *t).count()),
        };
        let rollbacks = st.history[start.min(st.history.len())..]
            .iter()
            .filter(|e| e.event == EventKind::RolledBack)
            .map(|e| RollbackEvent {
                version: e.version.clone(),
                reason: e.detail.clone(),
                at_ms: Some(e.time as i64 * 1000),
            })
            .collect();
        let cursor = st
            .history
            .last()
            .map(|e| (e.time, e.event.to_string(), e.version.clone()));
        let health =
            crate::lifecycle::server_health(st.update.as_ref().map(|u| u.phase), booted.is_some());
        (
            StateReport {
                os_version: release.map(|r| r.version),
                booted_slot: booted.map(|s| s.to_string().to_lowercase()),
                update,
                rollbacks,
                health,
                uptime_secs: std::fs::read_to_string("/proc/uptime")
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                    .map(|s| s as u64),
                free_bytes: free_bytes(&self.paths.state_dir),
                apps: self.apps_report(),
            },
            cursor,
        )
    }

    /// Send the state if it changed since the last report, or once per poll interval.
    pub fn report(&mut self, force: bool) -> Result<()> {
        let st = read_state(&self.paths.state_dir.join("state.json"))?;
        let (report, cursor) = self.build_report(&st);
        let mut comparable = report.clone();
        comparable.uptime_secs = None;
        comparable.free_bytes = None;
        if !force
            && let Some((last, at)) = &self.last_report
            && last == &comparable
            && now().saturating_sub(*at) < self.poll_interval.as_secs()
        {
            return Ok(());
        }
        match self.call(&device_api::report(&report)) {
            Answer::Ok(..) => {
                self.contact();
                self.last_report = Some((comparable, now()));
                if cursor.is_some() {
                    self.state.reported_until = cursor;
                }
                self.state.save(&self.paths)
            }
            Answer::Error(401, msg) | Answer::Error(403, msg) => {
                // Revoked or unknown token: enroll again.
                self.state.token = None;
                self.fail("report", 401, msg)
            }
            Answer::Error(code, msg) => self.fail("report", code, msg),
        }
    }

    /// Poll the target state: `Some` when the server sent a (new) target.
    fn poll(&mut self) -> Result<Option<TargetState>> {
        let etag = self.state.etag.clone();
        match self.call(&device_api::target(etag.as_deref())) {
            Answer::Ok(code, text, etag, interval) => {
                self.contact();
                if let Some(i) = interval {
                    self.poll_interval = Duration::from_secs(i.clamp(1, 86400));
                }
                if code == 304 {
                    self.state.save(&self.paths)?;
                    return Ok(None);
                }
                let t: TargetState = serde_json::from_str(&text)
                    .with_context(|| format!("the server's target state is not valid: {text}"))?;
                self.state.etag = etag;
                self.state.target = t.release.clone();
                self.state.apps_target = t.apps.clone();
                self.state.save(&self.paths)?;
                Ok(Some(t))
            }
            Answer::Error(304, _) => {
                self.contact();
                Ok(None)
            }
            Answer::Error(401, msg) | Answer::Error(403, msg) => {
                self.state.token = None;
                self.fail("target poll", 401, msg)
            }
            Answer::Error(code, msg) => self.fail("target poll", code, msg),
        }
    }

    fn target_key(r: &otter_proto::TargetRelease) -> String {
        format!(
            "{}@{}",
            r.release_id,
            r.rollout_id.as_deref().unwrap_or("pin")
        )
    }

    /// One round: enroll if needed, report, poll, install a new target. Errors are kept in the
    /// fleet state for `otterd status` too.
    pub fn cycle(&mut self) -> Result<CycleOutcome> {
        if self.state.token.is_none() {
            match self.enroll()? {
                EnrollStatus::Accepted => {}
                EnrollStatus::Pending => return Ok(CycleOutcome::Pending),
                EnrollStatus::Rejected => {
                    self.poll_interval = Duration::from_secs(600);
                    return Ok(CycleOutcome::Rejected);
                }
            }
        }
        self.report(false)?;
        self.poll()?;
        self.remember_failures()?;
        match self.os_step()? {
            CycleOutcome::Idle => self.apps_step(),
            other => Ok(other),
        }
    }

    /// The OS part of a cycle: install a new target release.
    fn os_step(&mut self) -> Result<CycleOutcome> {
        let Some(target) = self.state.target.clone() else {
            return Ok(CycleOutcome::Idle);
        };
        let release = otter_config::ReleaseInfo::load(&self.paths.release)?;
        let st = read_state(&self.paths.state_dir.join("state.json"))?;
        if target.version == release.version
            || self
                .state
                .failed_targets
                .contains(&Self::target_key(&target))
        {
            return Ok(CycleOutcome::Idle);
        }
        if let Some(u) = &st.update
            && u.version == target.version
            && matches!(u.phase, Phase::Installed | Phase::Trying | Phase::Unhealthy)
        {
            // Installed already: waiting for the reboot (window) or the trial.
            return Ok(CycleOutcome::Installed {
                version: target.version.clone(),
                reboot_now: self.may_reboot_now(),
            });
        }
        if target.compatible != release.compatible {
            let e = format!(
                "the server targets release {} for `{}`, but this device is `{}`",
                target.version, target.compatible, release.compatible
            );
            self.state.last_error = Some(e.clone());
            self.state.save(&self.paths)?;
            bail!(e);
        }
        Ok(self.install(&target))
    }

    /// Failed or rolled-back targets are not retried.
    fn remember_failures(&mut self) -> Result<()> {
        let Some(target) = &self.state.target else {
            return Ok(());
        };
        let st = read_state(&self.paths.state_dir.join("state.json"))?;
        if let Some(u) = &st.update
            && u.version == target.version
            && matches!(u.phase, Phase::Failed | Phase::RolledBack)
        {
            let k = Self::target_key(target);
            if !self.state.failed_targets.contains(&k) {
                self.state.failed_targets.push(k);
                let n = self.state.failed_targets.len();
                if n > 20 {
                    self.state.failed_targets.drain(..n - 20);
                }
                self.state.save(&self.paths)?;
            }
        }
        Ok(())
    }

    fn install(&mut self, target: &otter_proto::TargetRelease) -> CycleOutcome {
        let absolute = target.url.starts_with("http://") || target.url.starts_with("https://");
        let source = if absolute {
            target.url.clone()
        } else {
            self.url(&target.url)
        };
        crate::log(&format!(
            "the fleet server targets {} (release {}): installing it",
            target.version, target.release_id
        ));
        let opts = crate::install::InstallOptions {
            source,
            // The server decides what runs; a pin to an older release is a deliberate downgrade.
            allow_downgrade: true,
            // Presigned object-store URLs carry their own authorisation.
            bearer_token: if absolute {
                None
            } else {
                self.state.token.clone()
            },
            expect_manifest_digest: Some(target.manifest_digest.clone()),
            no_delta: false,
        };
        let mut last_report = std::time::Instant::now();
        let paths = self.paths.clone();
        let result = {
            let mut progress = |_: &crate::state::Progress| {
                if last_report.elapsed() >= Duration::from_secs(5) {
                    last_report = std::time::Instant::now();
                    let _ = self.report(true);
                }
            };
            crate::install::install(&paths, &opts, &mut progress)
        };
        match result {
            Ok(outcome) => {
                self.state.reboot_pending = !self.may_reboot_now();
                let _ = self.state.save(&self.paths);
                let _ = self.report(true);
                CycleOutcome::Installed {
                    version: outcome.version,
                    reboot_now: !self.state.reboot_pending,
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                crate::log(&format!("install of {} failed: {error}", target.version));
                let _ = self.report(true);
                let _ = self.remember_failures();
                CycleOutcome::InstallFailed {
                    version: target.version.clone(),
                    error,
                }
            }
        }
    }

    /// Inside `server.reboot_window` (local time), or no window set.
    pub fn may_reboot_now(&self) -> bool {
        let Some(w) = &self.server.reboot_window else {
            return true;
        };
        let Ok((start, end)) = otter_config::device_config::parse_time_window(w) else {
            return true;
        };
        in_window(local_minutes(), start, end)
    }

    /// Mark the pending reboot as done (just before rebooting).
    pub fn rebooting(&mut self) {
        self.state.reboot_pending = false;
        let _ = self.state.save(&self.paths);
        let _ = self.report(true);
    }
}

fn in_window(now: u32, start: u32, end: u32) -> bool {
    if start < end {
        (start..end).contains(&now)
    } else {
        now >= start || now < end
    }
}

/// Minutes since local midnight.
fn local_minutes() -> u32 {
    let t = now() as libc::time_t;
    // SAFETY: localtime_r writes only into the struct we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 60 + tm.tm_min) as u32
    } else {
        ((now() / 60) % 1440) as u32
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// The fleet thread of `otterd daemon`: runs for as long as the agent, following config changes.
pub fn run(paths: Paths) {
    let mut client: Option<Client> = None;
    let mut failures: u32 = 0;
    let mut last_logged: Option<String> = None;
    loop {
        let Some(server) = crate::provision::effective_config(&paths).server else {
            client = None;
            std::thread::sleep(Duration::from_secs(15));
            continue;
        };
        if client.as_ref().is_none_or(|c| c.server != server) {
            match Client::new(&paths, server) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    crate::log(&format!("fleet server: {e:#}"));
                    std::thread::sleep(Duration::from_secs(60));
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let mut pause = c.poll_interval();
        let ok = match c.cycle() {
            Ok(CycleOutcome::Installed {
                version,
                reboot_now: true,
            }) => {
                crate::log(&format!("{version} installed; rebooting to try it"));
                c.rebooting();
                // An app holding the update lock (/run/otter/updates.lock) delays the reboot.
                if let Err(e) =
                    crate::apps::reboot_when_unlocked(&paths, crate::apps::REBOOT_LOCK_WAIT)
                {
                    crate::log(&format!("reboot failed: {e:#}"));
                }
                true
            }
            Ok(CycleOutcome::Installed { version, .. }) => {
                crate::log(&format!(
                    "{version} installed; waiting for the reboot window {}",
                    c.server.reboot_window.as_deref().unwrap_or("")
                ));
                true
            }
            Ok(CycleOutcome::Pending) => {
                crate::log(&format!(
                    "waiting for the fleet server to accept device {}",
                    c.state.device_id
                ));
                true
            }
            Ok(_) => true,
            Err(e) => {
                // The same error every few seconds (no network yet) is logged once.
                let msg = format!("fleet server: {e:#}");
                if last_logged.as_deref() != Some(msg.as_str()) {
                    crate::log(&msg);
                    last_logged = Some(msg);
                }
                // Back off from 5 s up to the poll interval while the server cannot be reached.
                failures = failures.saturating_add(1);
                pause = pause.min(Duration::from_secs(5 << failures.min(4)));
                false
            }
        };
        if ok {
            failures = 0;
            last_logged = None;
            if let Err(e) = c.upload_logs() {
                crate::log(&format!("fleet server: {e:#}"));
            }
        }
        // Sleep until the next poll, but report a local change (a commit, a rollback) at once.
        let until = std::time::Instant::now() + jitter(pause);
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_secs(2));
            if ok && c.state.token.is_some() && c.report(false).is_err() {
                break;
            }
        }
    }
}

/// ±10 % so devices that started together do not poll together.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let f: f64 = rand::thread_rng().gen_range(0.9..1.1);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_midnight() {
        assert!(in_window(120, 60, 180));
        assert!(!in_window(180, 60, 180));
        assert!(in_window(23 * 60 + 30, 23 * 60, 5 * 60));
        assert!(in_window(60, 23 * 60, 5 * 60));
        assert!(!in_window(12 * 60, 23 * 60, 5 * 60));
    }

    #[test]
    fn device_key_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::under(d.path());
        let a = device_key(&paths).unwrap();
        let b = device_key(&paths).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(paths.state_dir.join("device.key"), "zz").unwrap();
        let e = device_key(&paths).unwrap_err();
        assert!(format!("{e:#}").contains("damaged"));
    }
}
