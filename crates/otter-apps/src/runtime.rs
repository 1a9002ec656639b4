//! What the update logic needs from the machine, as a small trait: [`Podman`] is the real one
//! (podman and systemctl), tests use a fake.

use crate::unit::Unit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A failed runtime operation, with what was being done.
pub type RtResult<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Active {
    /// Started and running (for a oneshot: finished, remaining after exit).
    Running,
    /// Being started or restarted.
    Starting,
    /// Ended with this exit status and will not be restarted.
    Exited(i32),
    Failed,
    /// Not started.
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// The service has no health check.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub active: Active,
    /// Restarts systemd made since the unit was last started by hand.
    pub restarts: u32,
    pub health: Health,
}

/// An image in local storage: its id and every reference it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub names: Vec<String>,
}

pub trait Runtime {
    /// Is the image in local storage (the writable one or the read-only store)?
    fn has_image(&mut self, image: &str) -> RtResult<bool>;
    /// Bytes pulling `image` would add to storage (an estimate, from the registry).
    fn pull_size(&mut self, image: &str) -> RtResult<u64>;
    fn pull(&mut self, image: &str, progress: &mut dyn FnMut(&str)) -> RtResult<()>;
    /// Free bytes on the filesystem images are stored on.
    fn free_space(&mut self) -> RtResult<u64>;
    /// Images in the writable storage (those a prune may remove).
    fn removable_images(&mut self) -> RtResult<Vec<ImageInfo>>;
    /// Remove an image by id.
    fn remove_image(&mut self, id: &str) -> RtResult<()>;
    /// Write `units`, delete the unit files named in `remove`, reload systemd.
    fn install_units(&mut self, units: &[Unit], remove: &[String]) -> RtResult<()>;
    /// Start (queue the start of) a unit; `state` follows it.
    fn start(&mut self, unit: &Unit) -> RtResult<()>;
    fn stop(&mut self, unit: &str) -> RtResult<()>;
    fn state(&mut self, unit: &Unit) -> RtResult<ServiceState>;
    /// Take the update lock if no app holds it (`Ok(false)`: held). Kept until `unlock`.
    fn try_lock(&mut self) -> RtResult<bool>;
    fn unlock(&mut self);
    /// Time since the runtime was made (a fake advances it in `sleep`).
    fn elapsed(&mut self) -> Duration;
    fn sleep(&mut self, d: Duration);
}

/// Run a command; its stdout, or an error with the command, status and stderr.
fn run(cmd: &mut Command, what: &str) -> RtResult<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {:?} {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Registry credentials the device config renders (relative to `/etc`: containers-auth.json).
pub const AUTH_FILE_ETC: &str = "containers/auth.json";

/// The real runtime: podman and systemd.
pub struct Podman {
    pub podman: PathBuf,
    /// For registry manifests: podman 4.3's `manifest inspect` reads only manifest lists.
    pub skopeo: PathBuf,
    pub systemctl: PathBuf,
    /// Where unit files are written (`/run/systemd/system`: rewritten at every boot, so an OS
    /// update never meets units of the previous release).
    pub unit_dir: PathBuf,
    /// Where podman keeps images (for the free-space check).
    pub storage_dir: PathBuf,
    pub lock_path: PathBuf,
    /// Arguments before every podman subcommand (tests point `--root` at a scratch store).
    pub global_args: Vec<String>,
    /// `false`: talk plain HTTP / unverified TLS to registries (tests; a device lists its
    /// insecure registries in /etc/containers/registries.conf instead).
    pub tls_verify: bool,
    /// `registries.conf` and its drop-in directory: registries marked `insecure` there get
    /// `--tls-verify=false` for skopeo, which does not apply that setting to `inspect`.
    pub registries_conf: PathBuf,
    /// Registry credentials (`/etc/containers/auth.json`, from the device config's
    /// `[[registries]]`): given to podman and skopeo as `REGISTRY_AUTH_FILE` when it exists.
    pub auth_file: PathBuf,
    lock: Option<crate::lock::UpdateLock>,
    /// Unit → its `ExecMainStartTimestampMonotonic` when we queued its start: until that
    /// changes, what systemd shows is the previous run's state, not this start's.
    queued: std::collections::BTreeMap<String, String>,
    started: Instant,
}

impl Podman {
    pub fn system() -> Podman {
        Podman {
            podman: crate::unit::PODMAN.into(),
            skopeo: "/usr/bin/skopeo".into(),
            systemctl: "/usr/bin/systemctl".into(),
            unit_dir: "/run/systemd/system".into(),
            storage_dir: crate::unit::GRAPHROOT.into(),
            lock_path: crate::lock::UPDATE_LOCK_PATH.into(),
            global_args: Vec::new(),
            tls_verify: true,
            registries_conf: "/etc/containers/registries.conf".into(),
            auth_file: Path::new("/etc").join(AUTH_FILE_ETC),
            lock: None,
            queued: Default::default(),
            started: Instant::now(),
        }
    }

    fn podman(&self) -> Command {
        let mut c = Command::new(&self.podman);
        c.args(&self.global_args);
        self.with_auth(&mut c);
        c
    }

    fn with_auth(&self, c: &mut Command) {
        if self.auth_file.is_file() {
            c.env("REGISTRY_AUTH_FILE", &self.auth_file);
        }
    }

    fn skopeo(&self) -> Command {
        let mut c = Command::new(&self.skopeo);
        self.with_auth(&mut c);
        c
    }

    fn systemctl(&self) -> Command {
        Command::new(&self.systemctl)
    }

    /// The unit's systemd properties.
    fn show(&self, unit: &str) -> RtResult<std::collections::BTreeMap<String, String>> {
        let out = run(
            self.systemctl().args([
                "show",
                "--property=ActiveState,SubState,NRestarts,Result,ExecMainStatus,ExecMainStartTimestampMonotonic",
                unit,
            ]),
            &format!("reading the state of {unit}"),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Container health from `podman inspect` (podman 4.3 names it `Healthcheck`, later
    /// versions also `Health`).
    fn health(&self, container: &str) -> RtResult<Health> {
        let out = run(
            self.podman()
                .args(["inspect", "--type=container", "--format=json", container]),
            &format!("inspecting container {container}"),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| format!("podman inspect {container}: bad JSON: {e}"))?;
        let state = &v[0]["State"];
        let status = state["Health"]["Status"]
            .as_str()
            .or_else(|| state["Healthcheck"]["Status"].as_str())
            .unwrap_or("");
        Ok(match status {
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            _ => Health::Starting,
        })
    }
}

/// Registry locations marked `insecure = true` in `conf` and `conf`.d/*.conf.
pub fn insecure_registries(conf: &Path) -> Vec<String> {
    let mut files = vec![conf.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(conf.with_extension("conf.d")) {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(v) = text.parse::<toml::Table>() else {
            continue;
        };
        for r in v
            .get("registry")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            if r.get("insecure").and_then(|i| i.as_bool()) == Some(true)
                && let Some(loc) = r
                    .get("location")
                    .or_else(|| r.get("prefix"))
                    .and_then(|l| l.as_str())
            {
                out.push(loc.to_string());
            }
        }
    }
    out
}

/// Does `image` come from one of `locations` (`host[:port][/path]` prefixes)?
pub fn matches_location(image: &str, locations: &[String]) -> bool {
    locations.iter().any(|l| {
        image
            .strip_prefix(l.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ':', '@']))
    })
}

/// A unit's [`Active`] state from its `systemctl show` properties.
/// `queued_at`: the unit's `ExecMainStartTimestampMonotonic` when its start was queued; while
/// it is unchanged and the unit is not active, the start has not begun (it waits on its
/// dependencies) and the exit status shown is the previous run's.
pub fn active_state(
    props: &std::collections::BTreeMap<String, String>,
    queued_at: Option<&str>,
) -> Active {
    let get = |k: &str| props.get(k).map(String::as_str).unwrap_or("");
    let stamp = get("ExecMainStartTimestampMonotonic");
    let never_ran = stamp.parse::<u64>().unwrap_or(0) == 0 || queued_at == Some(stamp);
    let status = get("ExecMainStatus").parse::<i32>().unwrap_or(0);
    match (get("ActiveState"), get("SubState")) {
        ("inactive" | "failed", _) if never_ran => Active::Inactive,
        // A oneshot that finished (RemainAfterExit) counts as running.
        ("active", "running" | "exited") | ("reloading", _) => Active::Running,
        ("active", "auto-restart") | ("activating" | "deactivating", _) => Active::Starting,
        ("failed", _) => Active::Failed,
        ("inactive", _) => Active::Exited(status),
        _ => Active::Inactive,
    }
}

/// Sum of layer sizes in an image manifest (OCI or Docker v2), the config blob included.
pub fn manifest_size(manifest: &serde_json::Value) -> Option<u64> {
    let layers = manifest["layers"].as_array()?;
    let mut total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    total += manifest["config"]["size"].as_u64().unwrap_or(0);
    Some(total)
}

/// The arch podman would pick from a manifest list.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

impl Runtime for Podman {
    fn has_image(&mut self, image: &str) -> RtResult<bool> {
        let st = self
            .podman()
            .args(["image", "exists", image])
            .status()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        match st.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!("podman image exists {image}: {st}")),
        }
    }

    fn pull_size(&mut self, image: &str) -> RtResult<u64> {
        let what = format!("reading the manifest of {image} from its registry");
        let tls_verify = self.tls_verify
            && !matches_location(image, &insecure_registries(&self.registries_conf));
        let raw = run(
            self.skopeo()
                .args(["inspect", "--raw"])
                .args((!tls_verify).then_some("--tls-verify=false"))
                .arg(format!("docker://{image}")),
            &what,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&raw).map_err(|e| format!("{what}: bad JSON: {e}"))?;
        if let Some(s) = manifest_size(&v) {
            return Ok(s);
        }
        // A manifest list: the entry for this machine.
        let digest = v["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m["platform"]["architecture"].as_str() == Some(oci_arch()))
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("{what}: no image for {} in the manifest list", oci_arch()))?;
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        let raw = run(
            self.skopeo()
                .args(["inspect", "--raw"])
                .args((!tls_verify).then_some("--tls-verify=false"))
                .arg(format!("docker://{repo}@{digest}")),
            &what,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&raw).map_err(|e| format!("{what}: bad JSON: {e}"))?;
        manifest_size(&v).ok_or_else(|| format!("{what}: no layers in the manifest"))
    }

    fn pull(&mut self, image: &str, progress: &mut dyn FnMut(&str)) -> RtResult<()> {
        use std::io::BufRead;
        let mut child = self
            .podman()
            .arg("pull")
            // Only ever to turn it off: an explicit `true` would override registries.conf.
            .args((!self.tls_verify).then_some("--tls-verify=false"))
            .arg(image)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run podman pull: {e}"))?;
        let mut tail = Vec::new();
        if let Some(err) = child.stderr.take() {
            for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
                progress(&line);
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
        let st = child
            .wait()
            .map_err(|e| format!("waiting for podman pull: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("podman pull {image}: {st}: {}", tail.join(" | ")))
        }
    }

    fn free_space(&mut self) -> RtResult<u64> {
        // The storage directory may not exist before the first pull; its parents share the fs.
        let mut p: &Path = &self.storage_dir;
        while !p.exists() {
            p = p
                .parent()
                .ok_or("no existing parent of the storage directory")?;
        }
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|e| format!("bad path {}: {e}", p.display()))?;
        // SAFETY: statvfs fills the struct we own; the path is a valid C string.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(format!(
                "statvfs {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(s.f_bavail as u64 * s.f_frsize as u64)
    }

    fn removable_images(&mut self) -> RtResult<Vec<ImageInfo>> {
        let out = run(
            self.podman().args(["images", "--format=json"]),
            "listing images",
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("podman images: bad JSON: {e}"))?;
        let mut images = Vec::new();
        for img in v.as_array().into_iter().flatten() {
            // Images of the read-only store (built into the root) cannot be removed.
            if img["ReadOnly"].as_bool() == Some(true) {
                continue;
            }
            let Some(id) = img["Id"].as_str() else {
                continue;
            };
            let strings = |k: &str| -> Vec<String> {
                img[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            };
            let mut names = strings("Names");
            names.extend(strings("RepoDigests"));
            names.sort();
            names.dedup();
            images.push(ImageInfo {
                id: id.to_string(),
                names,
            });
        }
        Ok(images)
    }

    fn remove_image(&mut self, id: &str) -> RtResult<()> {
        run(
            self.podman().args(["rmi", "--ignore", id]),
            &format!("removing image {id}"),
        )
        .map(|_| ())
    }

    fn install_units(&mut self, units: &[Unit], remove: &[String]) -> RtResult<()> {
        std::fs::create_dir_all(&self.unit_dir)
            .map_err(|e| format!("creating {}: {e}", self.unit_dir.display()))?;
        for u in units {
            let path = self.unit_dir.join(&u.name);
            let tmp = path.with_extension("service.tmp");
            std::fs::write(&tmp, &u.text)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        for r in remove {
            let path = self.unit_dir.join(r);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            }
        }
        run(
            self.systemctl().arg("daemon-reload"),
            "systemctl daemon-reload",
        )
        .map(|_| ())
    }

    fn start(&mut self, unit: &Unit) -> RtResult<()> {
        // Forget the restart count and a previous failure, so the state is this start's.
        let _ = run(
            self.systemctl().args(["reset-failed", &unit.name]),
            "reset-failed",
        );
        if let Ok(p) = self.show(&unit.name) {
            let stamp = p
                .get("ExecMainStartTimestampMonotonic")
                .cloned()
                .unwrap_or_default();
            self.queued.insert(unit.name.clone(), stamp);
        }
        run(
            // Queued, not waited for: a start waiting on a dependency's health would block for
            // that unit's own timeout; `watch` judges with the update's deadline instead, and
            // systemd still orders the queued starts by the units' dependencies.
            self.systemctl().args(["start", "--no-block", &unit.name]),
            &format!("starting {}", unit.name),
        )
        .map(|_| ())
    }

    fn stop(&mut self, unit: &str) -> RtResult<()> {
        run(
            self.systemctl().args(["stop", unit]),
            &format!("stopping {unit}"),
        )
        .map(|_| ())
    }

    fn state(&mut self, unit: &Unit) -> RtResult<ServiceState> {
        let p = self.show(&unit.name)?;
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        let restarts = get("NRestarts").parse().unwrap_or(0);
        let active = active_state(&p, self.queued.get(&unit.name).map(String::as_str));
        let health = if unit.has_health && active == Active::Running && !unit.runs_once {
            self.health(&unit.container)?
        } else {
            Health::None
        };
        Ok(ServiceState {
            active,
            restarts,
            health,
        })
    }

    fn try_lock(&mut self) -> RtResult<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        match crate::lock::try_lock(&self.lock_path) {
            Ok(Some(l)) => {
                self.lock = Some(l);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(format!("update lock {}: {e}", self.lock_path.display())),
        }
    }

    fn unlock(&mut self) {
        self.lock = None;
    }

    fn elapsed(&mut self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries_from_conf_and_dropins() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("registries.conf");
        std::fs::write(
            &conf,
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nlocation = \"reg.local:5000\"\ninsecure = true\n[[registry]]\nlocation = \"secure.io\"\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            d.path().join("registries.conf.d/50-e2e.conf"),
            "[[registry]]\nprefix = \"10.0.2.2:5000\"\ninsecure = true\n",
        )
        .unwrap();
        std::fs::write(d.path().join("registries.conf.d/bad.conf"), "[[[").unwrap();
        let l = insecure_registries(&conf);
        assert_eq!(l, ["reg.local:5000", "10.0.2.2:5000"]);
        assert!(matches_location("10.0.2.2:5000/hello:2", &l));
        assert!(matches_location("reg.local:5000/a/b@sha256:x", &l));
        assert!(!matches_location("reg.local:50001/a", &l));
        assert!(!matches_location("secure.io/a:1", &l));
        assert!(insecure_registries(&d.path().join("none.conf")).is_empty());
    }

    #[test]
    fn unit_states() {
        let st = |props: &[(&str, &str)]| {
            let map: std::collections::BTreeMap<String, String> = props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            active_state(&map, None)
        };
        let started = ("ExecMainStartTimestampMonotonic", "123");
        assert_eq!(
            st(&[("ActiveState", "inactive"), ("SubState", "dead")]),
            Active::Inactive
        );
        assert_eq!(
            st(&[("ActiveState", "active"), ("SubState", "running"), started]),
            Active::Running
        );
        assert_eq!(
            st(&[("ActiveState", "active"), ("SubState", "exited"), started]),
            Active::Running
        );
        assert_eq!(
            st(&[("ActiveState", "activating"), ("SubState", "start-pre")]),
            Active::Starting
        );
        assert_eq!(
            st(&[
                ("ActiveState", "activating"),
                ("SubState", "auto-restart"),
                started
            ]),
            Active::Starting
        );
        assert_eq!(
            st(&[("ActiveState", "failed"), ("SubState", "failed"), started]),
            Active::Failed
        );
        assert_eq!(
            st(&[
                ("ActiveState", "inactive"),
                ("SubState", "dead"),
                ("ExecMainStatus", "0"),
                started
            ]),
            Active::Exited(0)
        );
        assert_eq!(
            st(&[
                ("ActiveState", "inactive"),
                ("SubState", "dead"),
                ("ExecMainStatus", "3"),
                started
            ]),
            Active::Exited(3)
        );
        // Queued behind a dependency: the previous run's exit status is not this start's.
        let map: std::collections::BTreeMap<String, String> = [
            ("ActiveState", "inactive"),
            ("SubState", "dead"),
            ("ExecMainStatus", "137"),
            ("ExecMainStartTimestampMonotonic", "123"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(active_state(&map, Some("123")), Active::Inactive);
        assert_eq!(active_state(&map, Some("100")), Active::Exited(137));
    }

    #[test]
    fn manifest_sizes() {
        let m: serde_json::Value = serde_json::from_str(
            r#"{"schemaVersion":2,"config":{"size":100},"layers":[{"size":1000},{"size":24}]}"#,
        )
        .unwrap();
        assert_eq!(manifest_size(&m), Some(1124));
        let list: serde_json::Value =
            serde_json::from_str(r#"{"manifests":[{"digest":"sha256:x"}]}"#).unwrap();
        assert_eq!(manifest_size(&list), None);
    }

    #[test]
    fn free_space_of_a_missing_dir_uses_its_parent() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Podman::system();
        p.storage_dir = d.path().join("not/yet/there");
        assert!(p.free_space().unwrap() > 0);
    }

    #[test]
    fn install_units_writes_and_removes_files() {
        // systemctl is replaced by `true`, so only the files are checked.
        let d = tempfile::tempdir().unwrap();
        let mut p = Podman::system();
        p.unit_dir = d.path().join("units");
        p.systemctl = "true".into();
        let u = Unit {
            name: "otter-app-a.b.service".into(),
            app: "a".into(),
            service: "b".into(),
            container: "a.b".into(),
            image: "x".into(),
            has_health: false,
            runs_once: false,
            text: "[Unit]\n".into(),
        };
        std::fs::create_dir_all(&p.unit_dir).unwrap();
        std::fs::write(p.unit_dir.join("otter-app-a.old.service"), "x").unwrap();
        p.install_units(
            &[u],
            &["otter-app-a.old.service".into(), "gone.service".into()],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(p.unit_dir.join("otter-app-a.b.service")).unwrap(),
            "[Unit]\n"
        );
        assert!(!p.unit_dir.join("otter-app-a.old.service").exists());
        p.systemctl = "false".into();
        let e = p.install_units(&[], &[]).unwrap_err();
        assert!(e.contains("daemon-reload"), "{e}");
    }
}
