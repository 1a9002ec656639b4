//! Applying an app set: pull first, then replace services, watch them, and roll an app back
//! to its previous version when the new one does not come up healthy.
//!
//! Per app, one transaction:
//! 1. nothing to do if the revision is unchanged;
//! 2. refuse before any change if the images to pull would not fit (keeping a reserve);
//! 3. pull every missing image (the old version keeps running meanwhile; a failed pull
//!    changes nothing);
//! 4. take the update lock (an app holding it defers the restart, up to `lock_wait`);
//! 5. stop the old services (reverse start order), write the new units, start them in order;
//! 6. watch until every service is running and healthy for `settle`, or the `deadline`
//!    passes, a service fails, exits, crash-loops or turns unhealthy;
//! 7. on failure, stop the new services and bring the old units back (their images were
//!    kept); the failure is reported.
//!
//! Images no running app uses are pruned at the end, so a previous version's images stay
//! until its successor is healthy.

use crate::app::App;
use crate::runtime::{Active, Health, ImageInfo, Runtime, ServiceState};
use crate::unit::{self, Unit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long a new version has to become healthy after its services were started.
    pub deadline: Duration,
    /// How long every service must stay running and healthy to count as a success.
    pub settle: Duration,
    pub poll: Duration,
    /// More restarts than this while watching is a crash loop.
    pub max_restarts: u32,
    /// How long an app holding the update lock may defer the update.
    pub lock_wait: Duration,
    /// Free space that must remain on the data partition after the pulls.
    pub reserve_bytes: u64,
    /// Pulled images take about this many times their compressed (registry) size on disk.
    pub unpack_factor: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            deadline: Duration::from_secs(300),
            settle: Duration::from_secs(10),
            poll: Duration::from_secs(2),
            max_restarts: 3,
            lock_wait: Duration::from_secs(3600),
            reserve_bytes: 128 << 20,
            unpack_factor: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Unchanged,
    /// A new app, running and healthy.
    Installed {
        revision: String,
    },
    Updated {
        from: String,
        to: String,
    },
    Removed,
    /// The new version failed; the previous one runs again (`restored`: and is healthy).
    RolledBack {
        failed: String,
        restored_revision: String,
        restored: bool,
        reason: String,
    },
    /// Nothing was changed (pull failed, no space) or a new app failed and was removed.
    Failed {
        reason: String,
    },
    /// An app held the update lock for longer than the policy allows; retried later.
    Deferred {
        reason: String,
    },
}

impl Outcome {
    /// The update did not do what was asked (for reporting).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::RolledBack { .. } | Outcome::Failed { .. } | Outcome::Deferred { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppReport {
    pub app: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub struct SetReport {
    pub apps: Vec<AppReport>,
    /// What runs now: the target's apps that made it, the previous versions of those rolled
    /// back or deferred. Save this as the current set.
    pub running: Vec<App>,
    /// Ids of the images pruned.
    pub pruned: Vec<String>,
}

/// `(app, message)` progress and events, for the journal and status.
pub type Log<'a> = &'a mut dyn FnMut(&str, &str);

/// Normalise an image reference the way podman names images (`nginx` →
/// `docker.io/library/nginx:latest`), so references can be compared with storage names.
pub fn normalize_ref(r: &str) -> String {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

/// Remove every removable image no reference in `keep` names.
pub fn prune(rt: &mut dyn Runtime, keep: &BTreeSet<String>, log: Log) -> Vec<String> {
    let keep: BTreeSet<String> = keep.iter().map(|k| normalize_ref(k)).collect();
    let images: Vec<ImageInfo> = match rt.removable_images() {
        Ok(i) => i,
        Err(e) => {
            log("", &format!("prune: {e}"));
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for img in images {
        // Podman lists tags under `Names` and digests under `RepoDigests`, so a reference
        // pinned by digest matches one of those too.
        let used = img.names.iter().any(|n| keep.contains(&normalize_ref(n)));
        if used {
            continue;
        }
        match rt.remove_image(&img.id) {
            Ok(()) => {
                log(
                    "",
                    &format!("pruned image {} ({})", img.id, img.names.join(", ")),
                );
                removed.push(img.id);
            }
            Err(e) => log("", &format!("prune: {e}")),
        }
    }
    removed
}

/// Start every app's units in order, without health gating (boot: images are local).
/// Returns one error string per app that could not be started.
pub fn start_all(rt: &mut dyn Runtime, apps: &[App], log: Log) -> Vec<(String, String)> {
    let units: Vec<Unit> = apps.iter().flat_map(unit::render).collect();
    if let Err(e) = rt.install_units(&units, &[]) {
        return apps.iter().map(|a| (a.name.clone(), e.clone())).collect();
    }
    let mut errors = Vec::new();
    for a in apps {
        for u in units.iter().filter(|u| u.app == a.name) {
            log(&a.name, &format!("starting {}", u.name));
            if let Err(e) = rt.start(u) {
                errors.push((a.name.clone(), e));
                break;
            }
        }
    }
    errors
}

/// Stop `units` in reverse start order; errors are logged, not fatal (the unit may be gone).
fn stop_all(rt: &mut dyn Runtime, units: &[Unit], app: &str, log: Log) {
    for u in units.iter().rev() {
        if let Err(e) = rt.stop(&u.name) {
            log(app, &format!("stopping {}: {e}", u.name));
        }
    }
}

/// Replace `from` by `to`: stop, write, start. An error names the unit that did not start.
fn switch(
    rt: &mut dyn Runtime,
    app: &str,
    from: &[Unit],
    to: &[Unit],
    log: Log,
) -> Result<(), String> {
    stop_all(rt, from, app, log);
    let keep: BTreeSet<&str> = to.iter().map(|u| u.name.as_str()).collect();
    let remove: Vec<String> = from
        .iter()
        .filter(|u| !keep.contains(u.name.as_str()))
        .map(|u| u.name.clone())
        .collect();
    rt.install_units(to, &remove)?;
    for u in to {
        log(app, &format!("starting {}", u.name));
        rt.start(u)?;
    }
    Ok(())
}

fn describe(u: &Unit, s: &ServiceState) -> String {
    let health = match s.health {
        Health::None => String::new(),
        h => format!(", health {}", format!("{h:?}").to_lowercase()),
    };
    format!(
        "{}: {}{health}, {} restarts",
        u.service,
        match s.active {
            Active::Running => "running".to_string(),
            Active::Starting => "starting".into(),
            Active::Exited(c) => format!("exited with status {c}"),
            Active::Failed => "failed".into(),
            Active::Inactive => "not running".into(),
        },
        s.restarts
    )
}

/// Watch `units` until they are all up and healthy for `settle` (Ok), or one fails or the
/// deadline passes (Err with the reason).
pub fn watch(rt: &mut dyn Runtime, units: &[Unit], p: &Policy) -> Result<(), String> {
    let start = rt.elapsed();
    let mut baseline: BTreeMap<String, u32> = BTreeMap::new();
    let mut ok_since: Option<Duration> = None;
    loop {
        let now = rt.elapsed();
        let mut pending = Vec::new();
        for u in units {
            let s = rt.state(u)?;
            let base = *baseline.entry(u.name.clone()).or_insert(s.restarts);
            let restarts = s.restarts.saturating_sub(base);
            let fail = |why: &str| Err(format!("service {why} ({})", describe(u, &s)));
            if restarts > p.max_restarts {
                return fail(&format!("{} is crash-looping", u.service));
            }
            match s.active {
                Active::Failed => return fail(&format!("{} failed", u.service)),
                Active::Exited(0) if u.runs_once => continue,
                Active::Exited(c) => {
                    return fail(&format!("{} exited with status {c}", u.service));
                }
                // Its start job is queued behind its dependencies (starts do not block): the
                // deadline decides.
                Active::Inactive | Active::Starting => pending.push(describe(u, &s)),
                Active::Running => match s.health {
                    Health::Unhealthy => {
                        return fail(&format!("{} fails its health check", u.service));
                    }
                    Health::Starting => pending.push(describe(u, &s)),
                    Health::Healthy | Health::None => {}
                },
            }
        }
        if pending.is_empty() {
            let since = *ok_since.get_or_insert(now);
            if now.saturating_sub(since) >= p.settle {
                return Ok(());
            }
        } else {
            ok_since = None;
        }
        if now.saturating_sub(start) >= p.deadline {
            return Err(format!(
                "not healthy within {}s: {}",
                p.deadline.as_secs(),
                pending.join("; ")
            ));
        }
        rt.sleep(p.poll);
    }
}

/// Update one app from `old` to `new` (either may be absent: install, remove).
pub fn update_app(
    rt: &mut dyn Runtime,
    old: Option<&App>,
    new: Option<&App>,
    p: &Policy,
    log: Log,
) -> Outcome {
    let name = new.or(old).map(|a| a.name.clone()).unwrap_or_default();
    let old_units = old.map(unit::render).unwrap_or_default();
    let Some(new) = new else {
        log(&name, "removing");
        stop_all(rt, &old_units, &name, log);
        let names: Vec<String> = old_units.iter().map(|u| u.name.clone()).collect();
        return match rt.install_units(&[], &names) {
            Ok(()) => Outcome::Removed,
            Err(e) => Outcome::Failed { reason: e },
        };
    };
    if old.is_some_and(|o| o.revision == new.revision) {
        return Outcome::Unchanged;
    }
    let new_units = unit::render(new);

    // Space and pulls, before anything stops.
    let mut missing = Vec::new();
    for img in new.images() {
        match rt.has_image(&img) {
            Ok(true) => {}
            Ok(false) => missing.push(img),
            Err(e) => return Outcome::Failed { reason: e },
        }
    }
    if !missing.is_empty() {
        let mut need = 0u64;
        for img in &missing {
            match rt.pull_size(img) {
                Ok(s) => need += s.saturating_mul(p.unpack_factor),
                Err(e) => return Outcome::Failed { reason: e },
            }
        }
        let free = match rt.free_space() {
            Ok(f) => f,
            Err(e) => return Outcome::Failed { reason: e },
        };
        if free < need.saturating_add(p.reserve_bytes) {
            return Outcome::Failed {
                reason: format!(
                    "refused before starting: the new images need about {} MiB and the data partition has {} MiB free ({} MiB must stay free); remove unused apps or data, or make the images smaller",
                    need >> 20,
                    free >> 20,
                    p.reserve_bytes >> 20
                ),
            };
        }
        for img in &missing {
            log(&name, &format!("pulling {img}"));
            let mut progress = |line: &str| log(&name, &format!("pull {img}: {line}"));
            if let Err(e) = rt.pull(img, &mut progress) {
                return Outcome::Failed {
                    reason: format!("pulling {img}: {e} (the running version was left as it was)"),
                };
            }
        }
    }

    // The update lock: an app in a critical section defers its restart.
    let waited_from = rt.elapsed();
    let mut told = false;
    loop {
        match rt.try_lock() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Outcome::Failed { reason: e },
        }
        if !told {
            log(
                &name,
                "an app holds the update lock; waiting to restart services",
            );
            told = true;
        }
        if rt.elapsed().saturating_sub(waited_from) >= p.lock_wait {
            return Outcome::Deferred {
                reason: format!(
                    "the update lock ({}) was held for more than {}s; will retry",
                    crate::lock::UPDATE_LOCK_PATH,
                    p.lock_wait.as_secs()
                ),
            };
        }
        rt.sleep(p.poll);
    }

    let result =
        switch(rt, &name, &old_units, &new_units, log).and_then(|()| watch(rt, &new_units, p));
    let outcome = match (result, old) {
        (Ok(()), None) => {
            log(&name, &format!("revision {} is healthy", new.revision));
            Outcome::Installed {
                revision: new.revision.clone(),
            }
        }
        (Ok(()), Some(o)) => {
            log(
                &name,
                &format!("revision {} is healthy (was {})", new.revision, o.revision),
            );
            Outcome::Updated {
                from: o.revision.clone(),
                to: new.revision.clone(),
            }
        }
        (Err(reason), None) => {
            log(
                &name,
                &format!("revision {} failed: {reason}; removing it", new.revision),
            );
            stop_all(rt, &new_units, &name, log);
            let names: Vec<String> = new_units.iter().map(|u| u.name.clone()).collect();
            let _ = rt.install_units(&[], &names);
            Outcome::Failed { reason }
        }
        (Err(reason), Some(o)) => {
            log(
                &name,
                &format!(
                    "revision {} failed: {reason}; rolling back to {}",
                    new.revision, o.revision
                ),
            );
            let restored = switch(rt, &name, &new_units, &old_units, log)
                .and_then(|()| watch(rt, &old_units, p));
            if let Err(e) = &restored {
                log(
                    &name,
                    &format!(
                        "the previous revision {} is not healthy either: {e}",
                        o.revision
                    ),
                );
            }
            Outcome::RolledBack {
                failed: new.revision.clone(),
                restored_revision: o.revision.clone(),
                restored: restored.is_ok(),
                reason,
            }
        }
    };
    rt.unlock();
    outcome
}

/// Bring the device from `current` to `target`, app by app (by name), then prune images no
/// running app uses.
pub fn apply(
    rt: &mut dyn Runtime,
    current: &[App],
    target: &[App],
    p: &Policy,
    log: Log,
) -> SetReport {
    let by_name = |set: &[App]| -> BTreeMap<String, App> {
        set.iter().map(|a| (a.name.clone(), a.clone())).collect()
    };
    let cur = by_name(current);
    let tgt = by_name(target);
    let names: BTreeSet<&String> = cur.keys().chain(tgt.keys()).collect();
    let mut reports = Vec::new();
    let mut running = Vec::new();
    let mut changed = false;
    for n in names {
        let outcome = update_app(rt, cur.get(n), tgt.get(n), p, log);
        let now = match &outcome {
            Outcome::Unchanged | Outcome::Installed { .. } | Outcome::Updated { .. } => tgt.get(n),
            Outcome::Removed => None,
            Outcome::RolledBack { .. } | Outcome::Deferred { .. } => cur.get(n),
            Outcome::Failed { .. } => cur.get(n),
        };
        changed |= outcome != Outcome::Unchanged;
        running.extend(now.cloned());
        reports.push(AppReport {
            app: n.clone(),
            outcome,
        });
    }
    let pruned = if changed {
        let keep: BTreeSet<String> = running.iter().flat_map(App::images).collect();
        prune(rt, &keep, log)
    } else {
        Vec::new()
    };
    SetReport {
        apps: reports,
        running,
        pruned,
    }
}

/// One line per service for `otterd apps ls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub app: String,
    pub service: String,
    pub unit: String,
    pub image: String,
    pub revision: String,
    pub state: Option<ServiceState>,
    /// Why the state could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn status(rt: &mut dyn Runtime, apps: &[App]) -> Vec<ServiceStatus> {
    let mut out = Vec::new();
    for a in apps {
        for u in unit::render(a) {
            let (state, error) = match rt.state(&u) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            out.push(ServiceStatus {
                app: a.name.clone(),
                service: u.service.clone(),
                unit: u.name.clone(),
                image: u.image.clone(),
                revision: a.revision.clone(),
                state,
                error,
            });
        }
    }
    out
}

/// A runtime that simulates podman and systemd (images behave as scripted), for tests here
/// and in crates using this one (feature `fake`).
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    use super::*;
    use crate::runtime::RtResult;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Behaviour {
        /// Runs; healthy after 3 s if it has a health check.
        Good,
        /// Runs, but its health check fails after 5 s.
        Unhealthy,
        /// Exits with status 1 every 2 s and is restarted.
        CrashLoop,
        /// Health stays `starting` forever.
        Slow,
        /// Runs once and exits 0.
        Once,
        /// Its start stays queued (waiting on a dependency that never becomes healthy).
        Queued,
    }

    #[derive(Default)]
    pub struct Fake {
        pub now: Duration,
        /// In the registry: image → (behaviour, compressed size).
        pub registry: BTreeMap<String, (Behaviour, u64)>,
        /// In local storage (image → id).
        pub local: BTreeMap<String, String>,
        pub read_only: BTreeSet<String>,
        pub free: u64,
        pub units: BTreeMap<String, Unit>,
        /// unit → time started
        pub running: BTreeMap<String, Duration>,
        /// Held by an app until this time.
        pub lock_held_until: Option<Duration>,
        pub locked: bool,
        pub fail_pull: BTreeSet<String>,
        pub calls: Vec<String>,
    }

    impl Fake {
        pub fn new() -> Fake {
            Fake {
                free: 10 << 30,
                ..Default::default()
            }
        }
        pub fn image(&mut self, name: &str, b: Behaviour) {
            self.registry.insert(name.into(), (b, 10 << 20));
        }
        fn behaviour(&self, image: &str) -> Behaviour {
            self.registry
                .get(image)
                .map(|r| r.0)
                .unwrap_or(Behaviour::Good)
        }
    }

    impl Runtime for Fake {
        fn has_image(&mut self, image: &str) -> RtResult<bool> {
            Ok(self.local.contains_key(image))
        }
        fn pull_size(&mut self, image: &str) -> RtResult<u64> {
            self.registry
                .get(image)
                .map(|r| r.1)
                .ok_or_else(|| format!("{image}: manifest unknown"))
        }
        fn pull(&mut self, image: &str, progress: &mut dyn FnMut(&str)) -> RtResult<()> {
            self.calls.push(format!("pull {image}"));
            if self.fail_pull.contains(image) || !self.registry.contains_key(image) {
                return Err(format!("{image}: connection refused"));
            }
            progress("Copying blob 1/1");
            self.now += Duration::from_secs(5);
            let size = self.registry[image].1 * 2;
            self.free = self.free.saturating_sub(size);
            self.local.insert(image.into(), format!("id-{image}"));
            Ok(())
        }
        fn free_space(&mut self) -> RtResult<u64> {
            Ok(self.free)
        }
        fn removable_images(&mut self) -> RtResult<Vec<ImageInfo>> {
            Ok(self
                .local
                .iter()
                .filter(|(n, _)| !self.read_only.contains(*n))
                .map(|(n, id)| ImageInfo {
                    id: id.clone(),
                    names: vec![normalize_ref(n)],
                })
                .collect())
        }
        fn remove_image(&mut self, id: &str) -> RtResult<()> {
            self.calls.push(format!("rmi {id}"));
            if self
                .running
                .keys()
                .any(|u| self.local.get(&self.units[u].image).map(String::as_str) == Some(id))
            {
                return Err(format!("image {id} is in use"));
            }
            self.local.retain(|_, i| i != id);
            Ok(())
        }
        fn install_units(&mut self, units: &[Unit], remove: &[String]) -> RtResult<()> {
            for u in units {
                self.units.insert(u.name.clone(), u.clone());
            }
            for r in remove {
                self.units.remove(r);
            }
            self.calls.push("daemon-reload".into());
            Ok(())
        }
        fn start(&mut self, unit: &Unit) -> RtResult<()> {
            self.calls.push(format!("start {}", unit.name));
            let Some(u) = self.units.get(&unit.name) else {
                return Err(format!("Unit {} not found", unit.name));
            };
            if !self.local.contains_key(&u.image) {
                return Err(format!("{}: image {} not known", unit.name, u.image));
            }
            self.running.insert(unit.name.clone(), self.now);
            Ok(())
        }
        fn stop(&mut self, unit: &str) -> RtResult<()> {
            self.calls.push(format!("stop {unit}"));
            self.running.remove(unit);
            Ok(())
        }
        fn state(&mut self, unit: &Unit) -> RtResult<ServiceState> {
            let Some(started) = self.running.get(&unit.name).copied() else {
                return Ok(ServiceState {
                    active: Active::Inactive,
                    restarts: 0,
                    health: Health::None,
                });
            };
            let up = self.now - started;
            let b = self.behaviour(&unit.image);
            let h = |healthy: bool| {
                if !unit.has_health {
                    Health::None
                } else if healthy {
                    Health::Healthy
                } else {
                    Health::Starting
                }
            };
            Ok(match b {
                Behaviour::Good => ServiceState {
                    active: Active::Running,
                    restarts: 0,
                    health: h(up >= Duration::from_secs(3)),
                },
                Behaviour::Slow => ServiceState {
                    active: Active::Running,
                    restarts: 0,
                    health: h(false),
                },
                Behaviour::Unhealthy => ServiceState {
                    active: Active::Running,
                    restarts: 0,
                    health: if !unit.has_health {
                        Health::None
                    } else if up >= Duration::from_secs(5) {
                        Health::Unhealthy
                    } else {
                        Health::Starting
                    },
                },
                Behaviour::CrashLoop => ServiceState {
                    active: if up.as_secs().is_multiple_of(2) {
                        Active::Starting
                    } else {
                        Active::Running
                    },
                    restarts: (up.as_secs() / 2) as u32,
                    health: Health::None,
                },
                Behaviour::Queued => ServiceState {
                    active: Active::Inactive,
                    restarts: 0,
                    health: Health::None,
                },
                Behaviour::Once => ServiceState {
                    active: if up >= Duration::from_secs(1) {
                        Active::Exited(0)
                    } else {
                        Active::Running
                    },
                    restarts: 0,
                    health: Health::None,
                },
            })
        }
        fn try_lock(&mut self) -> RtResult<bool> {
            if self.lock_held_until.is_some_and(|t| self.now < t) {
                return Ok(false);
            }
            self.locked = true;
            Ok(true)
        }
        fn unlock(&mut self) {
            self.locked = false;
        }
        fn elapsed(&mut self) -> Duration {
            self.now
        }
        fn sleep(&mut self, d: Duration) {
            self.now += d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Behaviour, Fake};
    use super::*;
    use crate::app::AppSpec;
    use std::path::Path;

    fn app(name: &str, compose: &str) -> App {
        App::from_spec(
            &AppSpec {
                name: name.into(),
                compose: compose.into(),
                images: Default::default(),
            },
            Path::new("/apps").join(name).as_path(),
        )
        .unwrap()
    }

    fn shop(web_image: &str) -> App {
        app(
            "shop",
            &format!(
                "services:\n  db:\n    image: reg/db:1\n    healthcheck: {{test: [\"CMD\", \"ok\"]}}\n  web:\n    image: {web_image}\n    healthcheck: {{test: \"curl localhost\"}}\n    depends_on: {{db: {{condition: service_healthy}}}}\n"
            ),
        )
    }

    fn run(rt: &mut Fake, cur: &[App], tgt: &[App]) -> (SetReport, Vec<String>) {
        let mut events = Vec::new();
        let r = apply(
            rt,
            cur,
            tgt,
            &Policy {
                deadline: Duration::from_secs(60),
                ..Policy::default()
            },
            &mut |a, m| events.push(format!("{a}: {m}")),
        );
        (r, events)
    }

    fn fake_with(images: &[(&str, Behaviour)]) -> Fake {
        let mut f = Fake::new();
        for (i, b) in images {
            f.image(i, *b);
        }
        f
    }

    #[test]
    fn install_new_app_pulls_starts_in_order_and_waits_for_health() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
        ]);
        let (r, ev) = run(&mut rt, &[], &[shop("reg/web:1")]);
        assert!(
            matches!(r.apps[0].outcome, Outcome::Installed { .. }),
            "{:?}\n{ev:#?}",
            r.apps
        );
        let starts: Vec<&String> = rt.calls.iter().filter(|c| c.starts_with("start")).collect();
        assert_eq!(
            starts,
            [
                "start otter-app-shop.db.service",
                "start otter-app-shop.web.service"
            ]
        );
        let first_start = rt
            .calls
            .iter()
            .position(|c| c.starts_with("start"))
            .unwrap();
        assert!(
            rt.calls[..first_start]
                .iter()
                .filter(|c| c.starts_with("pull"))
                .count()
                == 2
        );
        assert!(
            ev.iter()
                .any(|e| e.contains("pull reg/web:1: Copying blob")),
            "{ev:#?}"
        );
        assert_eq!(r.running.len(), 1);
        assert!(!rt.locked, "the update lock is released");
    }

    #[test]
    fn unchanged_app_is_left_alone() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
        ]);
        let a = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&a));
        rt.calls.clear();
        let (r, _) = run(&mut rt, std::slice::from_ref(&a), std::slice::from_ref(&a));
        assert_eq!(r.apps[0].outcome, Outcome::Unchanged);
        assert!(rt.calls.is_empty(), "{:?}", rt.calls);
    }

    #[test]
    fn update_replaces_services_and_prunes_old_images_after_health() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:2", Behaviour::Good),
        ]);
        let v1 = shop("reg/web:1");
        let v2 = shop("reg/web:2");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        rt.calls.clear();
        let (r, ev) = run(
            &mut rt,
            std::slice::from_ref(&v1),
            std::slice::from_ref(&v2),
        );
        assert!(
            matches!(r.apps[0].outcome, Outcome::Updated { .. }),
            "{:?}\n{ev:#?}",
            r.apps
        );
        // Pull first, then stop in reverse order, then start in order.
        let c: Vec<&str> = rt.calls.iter().map(String::as_str).collect();
        let pull = c.iter().position(|x| *x == "pull reg/web:2").unwrap();
        let stop_web = c
            .iter()
            .position(|x| *x == "stop otter-app-shop.web.service")
            .unwrap();
        let stop_db = c
            .iter()
            .position(|x| *x == "stop otter-app-shop.db.service")
            .unwrap();
        let start_web = c
            .iter()
            .rposition(|x| *x == "start otter-app-shop.web.service")
            .unwrap();
        assert!(
            pull < stop_web && stop_web < stop_db && stop_db < start_web,
            "{c:#?}"
        );
        // The old image is pruned only after the new version is healthy; the shared db stays.
        let rmi = c
            .iter()
            .position(|x| *x == "rmi id-reg/web:1")
            .expect("pruned");
        assert!(rmi > start_web);
        assert!(rt.local.contains_key("reg/db:1") && rt.local.contains_key("reg/web:2"));
        assert_eq!(r.pruned, ["id-reg/web:1"]);
        assert_eq!(r.running[0].revision, v2.revision);
    }

    #[test]
    fn unhealthy_version_is_rolled_back_and_its_image_dropped() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:bad", Behaviour::Unhealthy),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        let (r, ev) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:bad")]);
        match &r.apps[0].outcome {
            Outcome::RolledBack {
                reason,
                restored,
                restored_revision,
                ..
            } => {
                assert!(reason.contains("web fails its health check"), "{reason}");
                assert!(*restored);
                assert_eq!(*restored_revision, v1.revision);
            }
            o => panic!("{o:?}\n{ev:#?}"),
        }
        assert_eq!(rt.units["otter-app-shop.web.service"].image, "reg/web:1");
        assert!(rt.running.contains_key("otter-app-shop.web.service"));
        assert!(rt.local.contains_key("reg/web:1"), "previous image kept");
        assert!(!rt.local.contains_key("reg/web:bad"), "failed image pruned");
        assert_eq!(r.running[0].revision, v1.revision);
    }

    #[test]
    fn crash_loop_is_rolled_back() {
        let compose =
            |img: &str| format!("services:\n  worker:\n    image: {img}\n    restart: always\n");
        let mut rt = fake_with(&[
            ("reg/w:1", Behaviour::Good),
            ("reg/w:2", Behaviour::CrashLoop),
        ]);
        let v1 = app("w", &compose("reg/w:1"));
        run(&mut rt, &[], std::slice::from_ref(&v1));
        let (r, _) = run(
            &mut rt,
            std::slice::from_ref(&v1),
            &[app("w", &compose("reg/w:2"))],
        );
        match &r.apps[0].outcome {
            Outcome::RolledBack { reason, .. } => {
                assert!(reason.contains("crash-looping"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn never_healthy_times_out_and_rolls_back() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:slow", Behaviour::Slow),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        let t0 = rt.now;
        let (r, _) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:slow")]);
        match &r.apps[0].outcome {
            Outcome::RolledBack { reason, .. } => {
                assert!(
                    reason.contains("not healthy within 60s")
                        && reason.contains("web: running, health starting"),
                    "{reason}"
                )
            }
            o => panic!("{o:?}"),
        }
        assert!(rt.now - t0 >= Duration::from_secs(60));
    }

    #[test]
    fn a_start_that_stays_queued_is_judged_by_the_deadline() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:q", Behaviour::Queued),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        let t0 = rt.now;
        let (r, _) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:q")]);
        match &r.apps[0].outcome {
            Outcome::RolledBack {
                reason, restored, ..
            } => {
                assert!(
                    reason.contains("not healthy within 60s")
                        && reason.contains("web: not running"),
                    "{reason}"
                );
                assert!(*restored);
            }
            o => panic!("{o:?}"),
        }
        assert!(
            rt.now - t0 < Duration::from_secs(120),
            "bounded by the deadline"
        );
    }

    #[test]
    fn failed_new_app_is_removed() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:bad", Behaviour::Unhealthy),
        ]);
        let (r, _) = run(&mut rt, &[], &[shop("reg/web:bad")]);
        assert!(matches!(r.apps[0].outcome, Outcome::Failed { .. }));
        assert!(rt.units.is_empty() && rt.running.is_empty());
        assert!(r.running.is_empty());
        assert!(rt.local.is_empty(), "{:?}", rt.local);
    }

    #[test]
    fn pull_failure_changes_nothing() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:2", Behaviour::Good),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        rt.fail_pull.insert("reg/web:2".into());
        rt.calls.clear();
        let (r, _) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:2")]);
        match &r.apps[0].outcome {
            Outcome::Failed { reason } => assert!(
                reason.contains("pulling reg/web:2") && reason.contains("left as it was"),
                "{reason}"
            ),
            o => panic!("{o:?}"),
        }
        assert!(
            !rt.calls
                .iter()
                .any(|c| c.starts_with("stop") || c.starts_with("start")),
            "{:?}",
            rt.calls
        );
        assert_eq!(r.running[0].revision, v1.revision);
    }

    #[test]
    fn update_that_would_fill_the_disk_is_refused_before_it_starts() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
        ]);
        rt.registry
            .insert("reg/web:huge".into(), (Behaviour::Good, 900 << 20));
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        rt.free = 1 << 30;
        rt.calls.clear();
        let (r, _) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:huge")]);
        match &r.apps[0].outcome {
            Outcome::Failed { reason } => assert!(
                reason.contains("refused before starting")
                    && reason.contains("1800 MiB")
                    && reason.contains("1024 MiB free"),
                "{reason}"
            ),
            o => panic!("{o:?}"),
        }
        assert!(rt.calls.is_empty(), "{:?}", rt.calls);
    }

    #[test]
    fn update_lock_defers_the_restart() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
            ("reg/web:2", Behaviour::Good),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        // Held for 40 s: the update waits, then goes ahead.
        rt.lock_held_until = Some(rt.now + Duration::from_secs(40));
        let t0 = rt.now;
        rt.calls.clear();
        let (r, ev) = run(&mut rt, std::slice::from_ref(&v1), &[shop("reg/web:2")]);
        assert!(matches!(r.apps[0].outcome, Outcome::Updated { .. }));
        assert!(
            ev.iter().any(|e| e.contains("holds the update lock")),
            "{ev:#?}"
        );
        let first_stop = rt.calls.iter().position(|c| c.starts_with("stop")).unwrap();
        assert!(
            rt.calls[..first_stop].iter().any(|c| c == "pull reg/web:2"),
            "pulled while waiting"
        );
        assert!(rt.now - t0 >= Duration::from_secs(40));
        // Held past lock_wait: deferred, the old version still runs, nothing stopped.
        let v2 = shop("reg/web:2");
        rt.registry
            .insert("reg/web:3".into(), (Behaviour::Good, 1 << 20));
        rt.lock_held_until = Some(rt.now + Duration::from_secs(100_000));
        rt.calls.clear();
        let (r, _) = run(&mut rt, std::slice::from_ref(&v2), &[shop("reg/web:3")]);
        assert!(
            matches!(r.apps[0].outcome, Outcome::Deferred { .. }),
            "{:?}",
            r.apps
        );
        assert!(!rt.calls.iter().any(|c| c.starts_with("stop")));
        assert_eq!(r.running[0].revision, v2.revision);
    }

    #[test]
    fn removed_app_is_stopped_and_its_units_deleted() {
        let mut rt = fake_with(&[
            ("reg/db:1", Behaviour::Good),
            ("reg/web:1", Behaviour::Good),
        ]);
        let v1 = shop("reg/web:1");
        run(&mut rt, &[], std::slice::from_ref(&v1));
        let (r, _) = run(&mut rt, std::slice::from_ref(&v1), &[]);
        assert_eq!(r.apps[0].outcome, Outcome::Removed);
        assert!(rt.units.is_empty() && rt.running.is_empty() && rt.local.is_empty());
    }

    #[test]
    fn one_shot_services_count_as_done_and_read_only_images_stay() {
        let compose = "services:\n  init:\n    image: reg/init:1\n  web:\n    image: reg/web:1\n    depends_on: {init: {condition: service_completed_successfully}}\n";
        let mut rt = fake_with(&[
            ("reg/init:1", Behaviour::Once),
            ("reg/web:1", Behaviour::Good),
        ]);
        rt.local.insert("builtin/old:1".into(), "id-ro".into());
        rt.read_only.insert("builtin/old:1".into());
        let (r, _) = run(&mut rt, &[], &[app("a", compose)]);
        assert!(
            matches!(r.apps[0].outcome, Outcome::Installed { .. }),
            "{:?}",
            r.apps
        );
        assert!(rt.local.contains_key("builtin/old:1"));
    }

    #[test]
    fn start_all_and_status() {
        let mut rt = fake_with(&[]);
        rt.local.insert("reg/db:1".into(), "i1".into());
        rt.local.insert("reg/web:1".into(), "i2".into());
        let a = shop("reg/web:1");
        let mut ev = Vec::new();
        let errs = start_all(&mut rt, std::slice::from_ref(&a), &mut |_, m| {
            ev.push(m.to_string())
        });
        assert!(errs.is_empty());
        assert_eq!(rt.running.len(), 2);
        rt.now += Duration::from_secs(5);
        let st = status(&mut rt, std::slice::from_ref(&a));
        assert_eq!(st.len(), 2);
        assert_eq!(st[1].service, "web");
        assert_eq!(st[1].state.as_ref().unwrap().health, Health::Healthy);
        // An image that is not there: the start error names the app.
        let b = app("b", "services:\n  x:\n    image: reg/none:1\n");
        let errs = start_all(&mut rt, &[b], &mut |_, _| {});
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.contains("reg/none:1"), "{errs:?}");
    }

    #[test]
    fn references_are_normalised_like_podman() {
        assert_eq!(normalize_ref("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize_ref("team/app:2"), "docker.io/team/app:2");
        assert_eq!(normalize_ref("10.0.2.2:5000/web:1"), "10.0.2.2:5000/web:1");
        assert_eq!(normalize_ref("localhost/web"), "localhost/web:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_ref(&format!("reg.io/web@{d}")),
            format!("reg.io/web@{d}")
        );
    }
}
