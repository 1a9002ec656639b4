//! Container apps on the device (the logic is in `otter-apps`; this is where otterd keeps
//! them and the `otterd apps` commands).
//!
//! At every boot the agent writes one systemd unit per service to `/run/systemd/system`
//! (RAM: rewritten each boot, so an OS update never meets the previous release's units) and
//! starts them in dependency order. Which apps: the built-in ones of the running root
//! (`/usr/lib/otter/apps/<name>/compose.yaml`, images in the root's read-only image store),
//! unless an app set was applied since (`otterd apps apply`, later the fleet server), which is
//! kept in `/var/lib/otter/apps/current.json` with its images in podman's storage on the data
//! partition.

use crate::{Paths, log, now};
use anyhow::{Context, Result, bail};
use otter_apps::runtime::{Podman, Runtime};
use otter_apps::update::{self, Policy, SetReport};
use otter_apps::{App, AppSet, AppSpec, unit};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the apps' files are, derived from the agent's paths (so `OTTERD_ROOT` moves them).
pub struct AppPaths {
    /// Built-in apps of the running root.
    pub builtin_dir: PathBuf,
    /// `current.json` and the compose files of applied app sets.
    pub state_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub lock: PathBuf,
    /// Last boot start result, for `otterd apps ls`.
    pub run_status: PathBuf,
    /// Registry credentials rendered from the device config's `[[registries]]`.
    pub auth_file: PathBuf,
}

impl AppPaths {
    pub fn new(p: &Paths) -> AppPaths {
        let lib = p
            .release
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/usr/lib/otter".into());
        let run_parent = p
            .run_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/run".into());
        AppPaths {
            builtin_dir: lib.join("apps"),
            state_dir: p.state_dir.join("apps"),
            unit_dir: run_parent.join("systemd/system"),
            lock: p.run_dir.join("updates.lock"),
            run_status: p.run_dir.join("apps.json"),
            auth_file: p.etc_dir.join(otter_apps::runtime::AUTH_FILE_ETC),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The running root's built-in apps.
    Builtin,
    /// An app set applied on the device (by hand or from the server).
    Applied,
}

/// The fleet server's app release an applied set came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub id: String,
    pub version: String,
}

/// `/var/lib/otter/apps/current.json`: the app set the device runs when it is not the
/// built-in one, and how the last apply went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Current {
    pub source: Source,
    /// The app release the set is (when it came from the fleet server and every app of it
    /// made it; a set applied by hand has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseRef>,
    pub set: AppSet,
    pub applied_at: u64,
    #[serde(default)]
    pub last_apply: Vec<update::AppReport>,
    /// Apps whose files are not in `/var/lib/otter/apps/<name>` (a built-in app kept as it
    /// was when another app was applied): name → directory.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dirs: std::collections::BTreeMap<String, PathBuf>,
}

/// Only one app transaction at a time, in this process or another (`otterd apps apply`, the
/// daemon's boot start and fleet updates, an OS install): an exclusive `flock` on
/// `/run/otter/apps.lock`, held until the returned file is dropped.
pub fn exclusive(paths: &Paths) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(&paths.run_dir)
        .with_context(|| format!("creating {}", paths.run_dir.display()))?;
    let p = paths.run_dir.join("apps.lock");
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", p.display()));
    }
    Ok(f)
}

/// The app release the device runs, if its apps came from the fleet server.
pub fn applied_release(paths: &Paths) -> Option<ReleaseRef> {
    load_current(&AppPaths::new(paths))
        .ok()
        .flatten()
        .filter(|c| c.source == Source::Applied)
        .and_then(|c| c.release)
}

pub fn runtime(ap: &AppPaths) -> Podman {
    let mut rt = Podman::system();
    rt.unit_dir = ap.unit_dir.clone();
    rt.lock_path = ap.lock.clone();
    rt.auth_file = ap.auth_file.clone();
    rt
}

fn load_current(ap: &AppPaths) -> Result<Option<Current>> {
    let path = ap.state_dir.join("current.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is damaged; remove it to go back to the built-in apps",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_current(ap: &AppPaths, c: &Current) -> Result<()> {
    std::fs::create_dir_all(&ap.state_dir)
        .with_context(|| format!("creating {}", ap.state_dir.display()))?;
    let path = ap.state_dir.join("current.json");
    let text = serde_json::to_vec_pretty(c).context("serialising the applied apps")?;
    crate::durable::replace(&path, &text, None)
}

/// The directory an applied app's relative paths resolve against (its compose file is
/// written there).
fn applied_dir(ap: &AppPaths, name: &str) -> PathBuf {
    ap.state_dir.join(name)
}

/// The apps the device runs now.
pub fn current_apps(paths: &Paths) -> Result<(Source, Vec<App>)> {
    let ap = AppPaths::new(paths);
    match load_current(&ap)? {
        Some(c) if c.source == Source::Applied => {
            let apps = c
                .set
                .resolve(&|n| {
                    c.dirs
                        .get(n)
                        .cloned()
                        .unwrap_or_else(|| applied_dir(&ap, n))
                })
                .context("the applied app set in current.json")?;
            Ok((Source::Applied, apps))
        }
        _ => Ok((
            Source::Builtin,
            otter_apps::app::load_builtin(&ap.builtin_dir)?,
        )),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootStatus {
    pub source: Source,
    pub apps: Vec<String>,
    /// (app, error)
    pub errors: Vec<(String, String)>,
    pub at: u64,
}

/// Start the apps at boot (called by the daemon; does nothing without apps).
pub fn boot(paths: &Paths) -> Result<()> {
    let ap = AppPaths::new(paths);
    let _one = exclusive(paths)?;
    // Apps bind-mount the lock file, so it must exist before they start.
    otter_apps::lock::ensure_lock_file(&ap.lock)
        .with_context(|| format!("creating {}", ap.lock.display()))?;
    let (source, apps) = current_apps(paths)?;
    if apps.is_empty() {
        return Ok(());
    }
    if !paths.host.is_device() {
        log("apps: test mode, not starting containers");
        return Ok(());
    }
    let mut rt = runtime(&ap);
    let errors = update::start_all(&mut rt, &apps, &mut |app, msg| {
        log(&format!("apps: {app}: {msg}"))
    });
    for (app, e) in &errors {
        log(&format!("apps: {app} did not start: {e}"));
    }
    let st = BootStatus {
        source,
        apps: apps.iter().map(|a| a.name.clone()).collect(),
        errors,
        at: now(),
    };
    if let Ok(j) = serde_json::to_vec_pretty(&st) {
        let _ = std::fs::write(&ap.run_status, j);
    }
    Ok(())
}

/// Start the apps in the background, so the agent's watchdog and health checks carry on.
pub fn spawn_boot(paths: &Paths) {
    let paths = paths.clone();
    std::thread::spawn(move || {
        if let Err(e) = boot(&paths) {
            log(&format!("apps: {e:#}"));
        }
    });
}

/// Apply `set` (from a file by hand): pull, replace, watch, roll back what fails; the result
/// becomes the current set.
pub fn apply(
    paths: &Paths,
    set: &AppSet,
    require_pinned: bool,
    policy: &Policy,
    rt: &mut dyn Runtime,
    log: update::Log,
) -> Result<SetReport> {
    apply_release(paths, set, None, require_pinned, policy, rt, log)
}

/// [`apply`] for the set of an app release (`release`: the fleet server's app release, kept
/// in `current.json` when every app of it made it, else the previous one stays named).
pub fn apply_release(
    paths: &Paths,
    set: &AppSet,
    release: Option<ReleaseRef>,
    require_pinned: bool,
    policy: &Policy,
    rt: &mut dyn Runtime,
    log: update::Log,
) -> Result<SetReport> {
    let ap = AppPaths::new(paths);
    let _one = exclusive(paths)?;
    let previous_release = load_current(&ap)
        .ok()
        .flatten()
        .filter(|c| c.source == Source::Applied)
        .and_then(|c| c.release);
    let (_, current) = current_apps(paths)?;
    // An app that does not change keeps its directory (a built-in app stays where its files
    // are, and is not restarted); the others get theirs under /var/lib/otter/apps.
    let kept = |name: &str| -> Option<PathBuf> {
        let spec = set.apps.iter().find(|s| s.name == name)?;
        current
            .iter()
            .find(|a| a.name == name && a.spec == *spec)
            .map(|a| a.dir.clone())
    };
    let target = set
        .resolve(&|n| kept(n).unwrap_or_else(|| applied_dir(&ap, n)))
        .context("the app set to apply")?;
    if require_pinned {
        AppSet::check_pinned(&target)?;
    }
    // The compose files go where the app's relative paths resolve.
    for spec in &set.apps {
        if kept(&spec.name).is_some() {
            continue;
        }
        let dir = applied_dir(&ap, &spec.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(otter_apps::app::COMPOSE_FILE);
        std::fs::write(&file, &spec.compose)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let report = update::apply(rt, &current, &target, policy, log);
    let all_ok = report.apps.iter().all(|r| !r.outcome.is_failure());
    save_current(
        &ap,
        &Current {
            source: Source::Applied,
            release: if all_ok {
                release
            } else if release.is_some() {
                previous_release
            } else {
                None
            },
            set: AppSet {
                apps: report.running.iter().map(|a| a.spec.clone()).collect(),
            },
            applied_at: now(),
            last_apply: report.apps.clone(),
            dirs: report
                .running
                .iter()
                .filter(|a| a.dir != applied_dir(&ap, &a.name))
                .map(|a| (a.name.clone(), a.dir.clone()))
                .collect(),
        },
    )?;
    Ok(report)
}

/// Before an OS reboot: wait while an app holds the update lock (at most `max_wait`), then
/// reboot holding it, so no app starts a critical section in between.
pub fn reboot_when_unlocked(paths: &Paths, max_wait: Duration) -> Result<()> {
    let ap = AppPaths::new(paths);
    let lock =
        otter_apps::lock::lock_within(&ap.lock, max_wait, Duration::from_secs(2), &mut || {
            log("an app holds the update lock (/run/otter/updates.lock); the reboot waits for it")
        })
        .with_context(|| format!("update lock {}", ap.lock.display()))?;
    if lock.is_none() {
        log(&format!(
            "the update lock was held for more than {}s; rebooting anyway",
            max_wait.as_secs()
        ));
    }
    crate::agent::reboot(paths)
}

/// How long an OS reboot for an update waits for apps holding the update lock.
pub const REBOOT_LOCK_WAIT: Duration = Duration::from_secs(3600);

#[derive(clap::Subcommand, Debug)]
pub enum AppsCmd {
    /// List the apps' services with their state and health.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show the journal of an app (APP) or one service (APP.SERVICE).
    Logs {
        target: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// Restart an app (APP, in dependency order) or one service (APP.SERVICE).
    Restart { target: String },
    /// Apply an app set (JSON: {"apps": [{"name", "compose", "images"}]}) or one compose
    /// file as app NAME: pull, replace, roll back what does not come up healthy.
    Apply {
        file: PathBuf,
        /// App name when FILE is a compose file.
        #[arg(long)]
        name: Option<String>,
        /// Seconds a new version has to become healthy.
        #[arg(long, default_value_t = 300)]
        deadline: u64,
        #[arg(long)]
        json: bool,
    },
}

/// The state of every service of the apps the device runs now (none without apps).
pub fn service_status(paths: &Paths) -> Result<Vec<update::ServiceStatus>> {
    let (_, apps) = current_apps(paths)?;
    if apps.is_empty() {
        return Ok(Vec::new());
    }
    Ok(update::status(&mut runtime(&AppPaths::new(paths)), &apps))
}

/// Units of `target` (`APP` or `APP.SERVICE`) in start order.
fn units_of(apps: &[App], target: &str) -> Result<Vec<unit::Unit>> {
    let (app, svc) = match target.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (target, None),
    };
    let Some(a) = apps.iter().find(|a| a.name == app) else {
        bail!(
            "no app `{app}` (apps: {})",
            apps.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let units: Vec<unit::Unit> = unit::render(a)
        .into_iter()
        .filter(|u| svc.is_none_or(|s| u.service == s))
        .collect();
    if units.is_empty() {
        bail!(
            "app `{app}` has no service `{}` (services: {})",
            svc.unwrap_or(""),
            a.compose
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(units)
}

pub fn render_status(rows: &[update::ServiceStatus]) -> String {
    if rows.is_empty() {
        return "no apps\n".into();
    }
    let mut out = format!(
        "{:<24} {:<10} {:<10} {:>8}  {}\n",
        "APP.SERVICE", "STATE", "HEALTH", "RESTARTS", "IMAGE"
    );
    for r in rows {
        let (state, health, restarts) = match &r.state {
            Some(s) => (
                format!("{:?}", s.active).to_lowercase(),
                format!("{:?}", s.health).to_lowercase(),
                s.restarts.to_string(),
            ),
            None => ("unknown".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<24} {:<10} {:<10} {:>8}  {}\n",
            format!("{}.{}", r.app, r.service),
            state,
            health,
            restarts,
            r.image
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("  error: {e}\n"));
        }
    }
    out
}

/// `otterd apps …`
pub fn run_cli(paths: &Paths, cmd: AppsCmd) -> Result<()> {
    let ap = AppPaths::new(paths);
    match cmd {
        AppsCmd::Ls { json } => {
            let (source, _) = current_apps(paths)?;
            let rows = service_status(paths)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "source": source,
                        "services": rows,
                        "last_apply": load_current(&ap).ok().flatten().map(|c| c.last_apply),
                    }))?
                );
            } else {
                print!("{}", render_status(&rows));
            }
            Ok(())
        }
        AppsCmd::Logs {
            target,
            follow,
            lines,
        } => {
            let (_, apps) = current_apps(paths)?;
            let units = units_of(&apps, &target)?;
            let mut cmd = std::process::Command::new("journalctl");
            cmd.arg("--no-pager").arg(format!("--lines={lines}"));
            if follow {
                cmd.arg("--follow");
            }
            for u in &units {
                cmd.arg(format!("--unit={}", u.name));
            }
            let st = cmd.status().context("running journalctl")?;
            if !st.success() {
                bail!("journalctl: {st}");
            }
            Ok(())
        }
        AppsCmd::Restart { target } => {
            let (_, apps) = current_apps(paths)?;
            let units = units_of(&apps, &target)?;
            // One job: systemd orders the restarts by the units' After= dependencies.
            let st = std::process::Command::new("systemctl")
                .arg("restart")
                .args(units.iter().map(|u| u.name.as_str()))
                .status()
                .context("running systemctl")?;
            if !st.success() {
                bail!(
                    "systemctl restart {}: {st} (see otterd apps logs {target})",
                    units
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            println!("restarted {target}");
            Ok(())
        }
        AppsCmd::Apply {
            file,
            name,
            deadline,
            json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let set: AppSet = match name {
                Some(name) => {
                    // One compose file replaces (or adds) that app; the others stay.
                    let (_, current) = current_apps(paths)?;
                    let mut apps: Vec<AppSpec> = current
                        .into_iter()
                        .filter(|a| a.name != name)
                        .map(|a| a.spec)
                        .collect();
                    apps.push(AppSpec {
                        name,
                        compose: text,
                        images: Default::default(),
                    });
                    AppSet { apps }
                }
                None => serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not an app set (JSON {{\"apps\": [{{\"name\", \"compose\", \"images\"}}]}}); for a compose file give --name",
                        file.display()
                    )
                })?,
            };
            let policy = Policy {
                deadline: Duration::from_secs(deadline),
                ..Policy::default()
            };
            let report = apply(
                paths,
                &set,
                false,
                &policy,
                &mut runtime(&ap),
                &mut |app, msg| {
                    if !json {
                        eprintln!("{app}: {msg}");
                    }
                    log(&format!("apps: {app}: {msg}"));
                },
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "apps": report.apps,
                        "pruned": report.pruned,
                    }))?
                );
            } else {
                for r in &report.apps {
                    println!("{}: {}", r.app, serde_json::to_string(&r.outcome)?);
                }
            }
            if report.apps.iter().any(|r| r.outcome.is_failure()) {
                bail!("not every app was updated (see above)");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "services:\n  web:\n    image: reg/web:1\n";

    fn setup() -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::under(d.path());
        (d, p)
    }

    #[test]
    fn paths_follow_the_agent_root() {
        let (d, p) = setup();
        let ap = AppPaths::new(&p);
        assert_eq!(ap.builtin_dir, d.path().join("usr/lib/otter/apps"));
        assert_eq!(ap.state_dir, d.path().join("var/lib/otter/apps"));
        assert_eq!(ap.unit_dir, d.path().join("run/systemd/system"));
        assert_eq!(ap.lock, d.path().join("run/otter/updates.lock"));
        assert_eq!(ap.auth_file, d.path().join("etc/containers/auth.json"));
        let s = AppPaths::new(&Paths::system());
        assert_eq!(
            s.builtin_dir,
            PathBuf::from(otter_apps::app::BUILTIN_APPS_DIR)
        );
        assert_eq!(s.unit_dir, PathBuf::from("/run/systemd/system"));
        assert_eq!(s.lock, PathBuf::from(otter_apps::lock::UPDATE_LOCK_PATH));
        assert_eq!(s.auth_file, PathBuf::from("/etc/containers/auth.json"));
    }

    #[test]
    fn builtin_apps_until_a_set_is_applied() {
        let (_d, p) = setup();
        let ap = AppPaths::new(&p);
        assert!(current_apps(&p).unwrap().1.is_empty());
        std::fs::create_dir_all(ap.builtin_dir.join("hello")).unwrap();
        std::fs::write(ap.builtin_dir.join("hello/compose.yaml"), APP).unwrap();
        let (src, apps) = current_apps(&p).unwrap();
        assert_eq!(src, Source::Builtin);
        assert_eq!(apps[0].name, "hello");
        // boot in test mode: makes the lock file, starts nothing.
        boot(&p).unwrap();
        assert!(ap.lock.exists());
        save_current(
            &ap,
            &Current {
                source: Source::Applied,
                release: None,
                set: AppSet {
                    apps: vec![AppSpec {
                        name: "other".into(),
                        compose: APP.into(),
                        images: Default::default(),
                    }],
                },
                applied_at: 1,
                last_apply: vec![],
                dirs: Default::default(),
            },
        )
        .unwrap();
        let (src, apps) = current_apps(&p).unwrap();
        assert_eq!(src, Source::Applied);
        assert_eq!(apps[0].name, "other");
        assert_eq!(apps[0].dir, ap.state_dir.join("other"));
        std::fs::write(ap.state_dir.join("current.json"), "{").unwrap();
        let e = format!("{:#}", current_apps(&p).unwrap_err());
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn applying_one_app_keeps_the_others_where_they_are() {
        use otter_apps::update::fake::{Behaviour, Fake};
        let (_d, p) = setup();
        let ap = AppPaths::new(&p);
        for (n, img) in [("a", "reg/a:1"), ("b", "reg/b:1")] {
            let dir = ap.builtin_dir.join(n);
            std::fs::create_dir_all(dir.join("conf")).unwrap();
            std::fs::write(
                dir.join("compose.yaml"),
                format!("services:\n  s:\n    image: {img}\n    volumes: [\"./conf:/conf\"]\n"),
            )
            .unwrap();
        }
        let mut rt = Fake::new();
        for i in ["reg/a:1", "reg/b:1", "reg/b:2"] {
            rt.image(i, Behaviour::Good);
        }
        rt.local.insert("reg/a:1".into(), "ia".into());
        rt.local.insert("reg/b:1".into(), "ib".into());
        let (_, builtin) = current_apps(&p).unwrap();
        update::start_all(&mut rt, &builtin, &mut |_, _| {});
        // What `otterd apps apply --name b` builds: a as it is, b replaced.
        let set = AppSet {
            apps: vec![
                builtin[0].spec.clone(),
                AppSpec {
                    name: "b".into(),
                    compose: "services:\n  s:\n    image: reg/b:2\n".into(),
                    images: Default::default(),
                },
            ],
        };
        let policy = Policy {
            settle: Duration::from_secs(1),
            ..Policy::default()
        };
        let r = apply(&p, &set, false, &policy, &mut rt, &mut |_, _| {}).unwrap();
        assert_eq!(
            r.apps[0].outcome,
            update::Outcome::Unchanged,
            "{:?}",
            r.apps
        );
        assert!(
            matches!(r.apps[1].outcome, update::Outcome::Updated { .. }),
            "{:?}",
            r.apps
        );
        let (src, apps) = current_apps(&p).unwrap();
        assert_eq!(src, Source::Applied);
        assert_eq!(apps[0].dir, ap.builtin_dir.join("a"));
        assert_eq!(apps[0].revision, builtin[0].revision);
        assert_eq!(apps[1].dir, ap.state_dir.join("b"));
        assert!(ap.state_dir.join("b/compose.yaml").is_file());
        assert!(!ap.state_dir.join("a").exists());
        // Pinning is enforced when asked (sets from a server).
        let e = apply(&p, &set, true, &policy, &mut rt, &mut |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("not pinned"), "{e:#}");
    }

    #[test]
    fn targets_name_apps_and_services() {
        let a = App::from_spec(
            &AppSpec {
                name: "shop".into(),
                compose:
                    "services:\n  db:\n    image: d\n  web:\n    image: w\n    depends_on: [db]\n"
                        .into(),
                images: Default::default(),
            },
            Path::new("/x"),
        )
        .unwrap();
        let apps = [a];
        let all: Vec<String> = units_of(&apps, "shop")
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(
            all,
            ["otter-app-shop.db.service", "otter-app-shop.web.service"]
        );
        assert_eq!(units_of(&apps, "shop.web").unwrap().len(), 1);
        assert!(format!("{}", units_of(&apps, "nope").unwrap_err()).contains("apps: shop"));
        assert!(
            format!("{}", units_of(&apps, "shop.x").unwrap_err()).contains("services: db, web")
        );
    }

    #[test]
    fn reboot_waits_for_the_lock_then_reboots() {
        let (_d, p) = setup();
        std::fs::create_dir_all(&p.state_dir).unwrap();
        let ap = AppPaths::new(&p);
        otter_apps::lock::ensure_lock_file(&ap.lock).unwrap();
        let held = otter_apps::lock::try_lock(&ap.lock).unwrap().unwrap();
        let t = std::time::Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            drop(held);
        });
        reboot_when_unlocked(&p, Duration::from_secs(30)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(2400));
        assert!(p.state_dir.join("reboot-requested").exists());
        release.join().unwrap();
    }

    #[test]
    fn status_table() {
        let rows = vec![update::ServiceStatus {
            app: "shop".into(),
            service: "web".into(),
            unit: "u".into(),
            image: "reg/web:1".into(),
            revision: "r".into(),
            state: Some(otter_apps::runtime::ServiceState {
                active: otter_apps::runtime::Active::Running,
                restarts: 2,
                health: otter_apps::runtime::Health::Healthy,
            }),
            error: None,
        }];
        let t = render_status(&rows);
        assert!(
            t.contains("shop.web")
                && t.contains("running")
                && t.contains("healthy")
                && t.contains("reg/web:1"),
            "{t}"
        );
        assert_eq!(render_status(&[]), "no apps\n");
    }
}
