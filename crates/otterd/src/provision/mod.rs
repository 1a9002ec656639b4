//! Provisioning from the device config (`otter/device.toml` on the boot partition).
//!
//! At every boot, before systemd starts ([`preinit`]), `/etc` becomes an overlay of the image's
//! `/etc` with a RAM upper layer, and the config is rendered into it ([`render`]). So `/etc` is
//! always the image's plus the config: an OS update never meets stale files, and the config
//! file stays the single source of truth. `otterd config apply` re-renders at runtime and
//! restarts only what changed.
//!
//! A config that does not parse or validate is not applied: the device keeps its last good
//! config (a copy on the data partition) and the error goes to the kernel log (serial console),
//! the journal and `otterd status`.

pub mod grow;
pub mod preinit;
pub mod render;

use crate::{Paths, log, now};
use anyhow::{Context, Result};
use otter_config::DeviceConfig;
use render::{Entry, ImageEtc, Rendered};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Which config is in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigSource {
    /// `otter/device.toml` as it is on the boot partition.
    DeviceToml,
    /// The file is broken; the last config that worked is in effect.
    LastGood,
    /// No file (or a broken one and no good copy): the image's defaults.
    Defaults,
}

/// What the last apply did; kept in `/run/otter/config.json` for `otterd status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigStatus {
    pub source: ConfigSource,
    /// Why `device.toml` was not applied (file, key, reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Files in `/etc` the config changed in this apply.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Services restarted or reloaded because of the change.
    #[serde(default)]
    pub restarted: Vec<String>,
    pub applied_at: u64,
}

/// The config to use, from the text of `device.toml` (`None`: no such file).
pub fn choose_config(
    paths: &Paths,
    text: Option<std::io::Result<String>>,
) -> (DeviceConfig, ConfigSource, Option<String>) {
    let file = paths.device_config.clone();
    let parsed = match text {
        None => None,
        Some(Err(e)) => Some(Err(format!("cannot read {}: {e}", file.display()))),
        Some(Ok(t)) => Some(DeviceConfig::parse(&file, &t).map_err(|e| e.to_string())),
    };
    match parsed {
        None => (DeviceConfig::default(), ConfigSource::Defaults, None),
        Some(Ok(c)) => (c, ConfigSource::DeviceToml, None),
        Some(Err(error)) => {
            let good = paths.persist_dir.join("device.toml.good");
            match std::fs::read_to_string(&good)
                .ok()
                .and_then(|t| DeviceConfig::parse(&good, &t).ok())
            {
                Some(c) => (c, ConfigSource::LastGood, Some(error)),
                None => (DeviceConfig::default(), ConfigSource::Defaults, Some(error)),
            }
        }
    }
}

/// The image's `/etc` as a directory (on a device: a read-only bind of the image's `/etc`).
pub struct ImageEtcDir {
    pub etc: PathBuf,
    pub zoneinfo: PathBuf,
}

impl ImageEtc for ImageEtcDir {
    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.etc.join(rel)).ok()
    }
    fn has_timezone(&self, tz: &str) -> bool {
        self.zoneinfo.join(tz).is_file()
    }
}

fn read_uids(paths: &Paths) -> BTreeMap<String, u32> {
    std::fs::read_to_string(paths.persist_dir.join("users.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Write `content` to `path` through a temporary file and rename, so a reader (or a power cut)
/// sees the old or the new file, never half of one.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        anyhow::bail!(
            "{} is a directory; cannot replace it with a file",
            path.display()
        );
    }
    crate::durable::replace(path, content, Some(mode))
}

fn current_matches(path: &Path, e: &Entry) -> bool {
    match e {
        Entry::File { content, mode } => {
            let Ok(meta) = path.symlink_metadata() else {
                return false;
            };
            meta.is_file()
                && meta.permissions().mode() & 0o7777 == *mode
                && std::fs::read(path).map(|c| &c == content).unwrap_or(false)
        }
        Entry::Symlink { target } => std::fs::read_link(path)
            .map(|t| t == Path::new(target))
            .unwrap_or(false),
    }
}

/// Write `r` into `paths.etc_dir`, put back the image's version of files rendered last time but
/// not now, and create home directories. Returns the `/etc`-relative paths that changed.
pub fn write_rendered(paths: &Paths, r: &Rendered) -> Result<Vec<String>> {
    let manifest_path = paths.run_dir.join("rendered.json");
    let before: BTreeSet<String> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut changed = Vec::new();
    for (rel, e) in &r.files {
        let path = paths.etc_dir.join(rel);
        if current_matches(&path, e) {
            continue;
        }
        match e {
            Entry::File { content, mode } => write_atomic(&path, content, *mode)?,
            Entry::Symlink { target } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                let tmp = path.with_extension("otter-tmp");
                let _ = std::fs::remove_file(&tmp);
                symlink(target, &tmp).with_context(|| format!("linking {}", tmp.display()))?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("replacing {}", path.display()))?;
            }
        }
        changed.push(rel.clone());
    }
    for rel in before.iter().filter(|p| !r.files.contains_key(*p)) {
        let path = paths.etc_dir.join(rel);
        let image = paths.etc_image_dir.join(rel);
        match image.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&image)
                    .with_context(|| format!("reading {}", image.display()))?;
                let _ = std::fs::remove_file(&path);
                symlink(&target, &path).with_context(|| format!("restoring {}", path.display()))?;
            }
            Ok(m) => {
                let content = std::fs::read(&image)
                    .with_context(|| format!("reading {}", image.display()))?;
                write_atomic(&path, &content, m.permissions().mode() & 0o7777)?;
            }
            Err(_) => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
            },
        }
        changed.push(rel.clone());
    }
    let now_set: BTreeSet<&String> = r.files.keys().collect();
    std::fs::create_dir_all(&paths.run_dir)
        .with_context(|| format!("creating {}", paths.run_dir.display()))?;
    write_atomic(
        &manifest_path,
        serde_json::to_string(&now_set)?.as_bytes(),
        0o644,
    )?;
    for (name, uid, gid) in &r.homes {
        let home = paths.home_dir.join(name);
        if !home.exists() {
            std::fs::create_dir_all(&home)
                .with_context(|| format!("creating home directory {}", home.display()))?;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))
                .with_context(|| format!("chmod {}", home.display()))?;
            paths
                .host
                .chown(&home, *uid, *gid)
                .with_context(|| format!("chown {}", home.display()))?;
        }
    }
    Ok(changed)
}

/// Render and write the config given as `text` (see [`choose_config`]); record the outcome.
/// `runtime`: also restart what the change affects (not at preinit: nothing runs yet).
pub fn apply(
    paths: &Paths,
    text: Option<std::io::Result<String>>,
    runtime: bool,
) -> Result<ConfigStatus> {
    let (cfg, source, error) = choose_config(paths, text);
    if let Some(e) = &error {
        log(&format!(
            "device config NOT applied: {e}; {}",
            match source {
                ConfigSource::LastGood => "keeping the last good config",
                _ => "using the image's defaults",
            }
        ));
    }
    let image = ImageEtcDir {
        etc: paths.etc_image_dir.clone(),
        zoneinfo: paths.zoneinfo_dir.clone(),
    };
    let mut uids = read_uids(paths);
    let before_uids = uids.clone();
    let rendered = render::render(&cfg, &image, &mut uids);
    std::fs::create_dir_all(&paths.persist_dir)
        .with_context(|| format!("creating {}", paths.persist_dir.display()))?;
    if uids != before_uids {
        write_atomic(
            &paths.persist_dir.join("users.json"),
            serde_json::to_string_pretty(&uids)?.as_bytes(),
            0o600,
        )?;
    }
    let changed = write_rendered(paths, &rendered)?;
    // The config in effect, for the rest of the agent (health overrides, server).
    write_atomic(
        &paths.run_dir.join("device.toml"),
        cfg.to_toml().as_bytes(),
        0o600,
    )?;
    if source == ConfigSource::DeviceToml {
        // Keep a copy to fall back on if a later edit breaks the file.
        write_atomic(
            &paths.persist_dir.join("device.toml.good"),
            cfg.to_toml().as_bytes(),
            0o600,
        )?;
    }
    for w in &rendered.warnings {
        log(&format!("device config: {w}"));
    }
    let restarted = if runtime {
        restart_affected(paths, &cfg, &changed)
    } else {
        Vec::new()
    };
    let status = ConfigStatus {
        source,
        error,
        warnings: rendered.warnings.clone(),
        changed,
        restarted,
        applied_at: now(),
    };
    write_atomic(
        &paths.run_dir.join("config.json"),
        serde_json::to_string_pretty(&status)?.as_bytes(),
        0o644,
    )?;
    Ok(status)
}

/// What to restart for a changed `/etc`-relative path.
pub fn actions_for(changed: &[String]) -> Vec<&'static str> {
    let mut a = BTreeSet::new();
    for rel in changed {
        let act = if rel == "hostname" || rel == "hosts" {
            "hostname"
        } else if rel.starts_with("NetworkManager/") {
            "NetworkManager.service"
        } else if rel.starts_with("systemd/resolved.conf.d/") {
            "systemd-resolved.service"
        } else if rel.starts_with("systemd/timesyncd.conf.d/") {
            "systemd-timesyncd.service"
        } else if rel.starts_with("systemd/journald.conf.d/") {
            "systemd-journald.service"
        } else if rel.starts_with("ssh/") || rel.starts_with("otter/development-banner") {
            "ssh.service"
        } else if rel.starts_with("udev/") {
            "udev-rules"
        } else if rel.starts_with("systemd/system.conf.d/") {
            "daemon-reexec"
        } else if rel.starts_with("modprobe.d/otter-regdom") {
            // The module option covers the next boot; `iw reg set` the running kernel.
            "wifi-regdom"
        } else {
            // Read afresh by whoever uses them (accounts, keys, certificates, health checks,
            // the time zone, which systemd watches): nothing to restart.
            continue;
        };
        a.insert(act);
    }
    a.into_iter().collect()
}

fn restart_affected(paths: &Paths, cfg: &DeviceConfig, changed: &[String]) -> Vec<String> {
    let mut done = Vec::new();
    for act in actions_for(changed) {
        let ok = match act {
            "hostname" => {
                let name = cfg
                    .hostname
                    .clone()
                    .or_else(|| {
                        std::fs::read_to_string(paths.etc_dir.join("hostname"))
                            .ok()
                            .map(|s| s.trim().to_string())
                    })
                    .unwrap_or_default();
                paths.host.set_hostname(&name)
            }
            "udev-rules" => {
                paths.host.run(&["udevadm", "control", "--reload"])
                    && paths.host.run(&["udevadm", "trigger"])
            }
            "daemon-reexec" => paths.host.run(&["systemctl", "daemon-reexec"]),
            "wifi-regdom" => {
                let cc = cfg.country.as_deref().unwrap_or("00");
                if paths.host.run(&["iw", "reg", "set", cc]) {
                    true
                } else {
                    log(&format!(
                        "device config: Wi-Fi country {cc} takes effect at the next boot (`iw reg set` is not available or failed)"
                    ));
                    continue;
                }
            }
            "ssh.service" => paths.host.run(&["systemctl", "reload-or-restart", act]),
            unit => paths.host.run(&["systemctl", "try-restart", unit]),
        };
        if ok {
            done.push(act.to_string());
        } else {
            log(&format!(
                "device config: applying the change to {act} failed"
            ));
        }
    }
    done
}

/// `otterd config apply`: read the file from the mounted boot partition and apply it.
pub fn apply_from_boot_partition(paths: &Paths) -> Result<ConfigStatus> {
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Some(Ok(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e)),
    };
    // A write by `otter configure` interrupted between its renames leaves `device.toml.old`.
    let text = read(&paths.device_config)
        .or_else(|| read(&paths.device_config.with_extension("toml.old")));
    apply(paths, text, true)
}

/// The device config in effect (as last applied), or the defaults.
pub fn effective_config(paths: &Paths) -> DeviceConfig {
    let p = paths.run_dir.join("device.toml");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|t| DeviceConfig::parse(&p, &t).ok())
        .unwrap_or_default()
}

/// The last apply's outcome, if any.
pub fn last_status(paths: &Paths) -> Option<ConfigStatus> {
    std::fs::read_to_string(paths.run_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Human-readable summary of an apply.
pub fn render_status(st: &ConfigStatus) -> String {
    let mut out = String::new();
    out.push_str(match st.source {
        ConfigSource::DeviceToml => "config: otter/device.toml in effect\n",
        ConfigSource::LastGood => {
            "config: last good config in effect (otter/device.toml has an error)\n"
        }
        ConfigSource::Defaults => "config: image defaults in effect\n",
    });
    if let Some(e) = &st.error {
        out.push_str(&format!("error: {e}\n"));
    }
    for w in &st.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if st.changed.is_empty() {
        out.push_str("changed: nothing\n");
    } else {
        out.push_str(&format!("changed: {}\n", st.changed.join(", ")));
    }
    if !st.restarted.is_empty() {
        out.push_str(&format!("restarted: {}\n", st.restarted.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Img;
    impl ImageEtc for Img {
        fn read(&self, rel: &str) -> Option<String> {
            match rel {
                "passwd" => Some("root:x:0:0:root:/root:/bin/bash\n".into()),
                "group" => Some("root:x:0:\nsudo:x:27:\n".into()),
                _ => None,
            }
        }
        fn has_timezone(&self, _: &str) -> bool {
            true
        }
    }

    const FULL: &str = r#"
hostname = "gw-1"
timezone = "Europe/Berlin"
country = "DE"
udev_rules = ["KERNEL==\"ttyUSB0\", SYMLINK+=\"modem\""]
ca_certificates = ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"]
[[users]]
name = "ops"
sudo = true
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops"]
[ssh]
development_mode = true
root_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA root"]
[network]
dns = ["10.0.2.3"]
proxy = "http://proxy:3128"
[[network.wifi]]
ssid = "Lab"
psk = "password123"
[time]
ntp = ["10.0.2.2"]
[logging]
storage = "volatile"
[health]
checks = ["true"]
"#;

    /// What each rendered file restarts; files read afresh on use restart nothing.
    fn expected(rel: &str) -> Option<&'static str> {
        Some(match rel {
            "hostname" | "hosts" => "hostname",
            r if r.starts_with("NetworkManager/") => "NetworkManager.service",
            r if r.starts_with("systemd/resolved.conf.d/") => "systemd-resolved.service",
            r if r.starts_with("systemd/timesyncd.conf.d/") => "systemd-timesyncd.service",
            r if r.starts_with("systemd/journald.conf.d/") => "systemd-journald.service",
            r if r.starts_with("ssh/") || r == "otter/development-banner" => "ssh.service",
            r if r.starts_with("udev/") => "udev-rules",
            r if r.starts_with("systemd/system.conf.d/") => "daemon-reexec",
            r if r.starts_with("modprobe.d/") => "wifi-regdom",
            "passwd" | "group" | "shadow" | "gshadow" | "localtime" | "timezone" | "motd"
            | "environment" => return None,
            r if r.starts_with("otter/authorized_keys/")
                || r.starts_with("ssl/certs/")
                || r.starts_with("sudoers.d/")
                || r.starts_with("otter/health.d/")
                || r == "otter/proxy.env" =>
            {
                return None;
            }
            r => panic!("rendered file {r} has no restart rule in this test"),
        })
    }

    #[test]
    fn each_rendered_file_restarts_only_its_service() {
        let cfg = DeviceConfig::parse(Path::new("device.toml"), FULL).unwrap();
        let r = render::render(&cfg, &Img, &mut BTreeMap::new());
        assert!(r.files.len() > 20, "{:?}", r.files.keys());
        for rel in r.files.keys() {
            let got = actions_for(std::slice::from_ref(rel));
            let want: Vec<&str> = expected(rel).into_iter().collect();
            assert_eq!(got, want, "{rel}");
        }
        // Several changes: each service once, nothing else.
        let changed: Vec<String> = [
            "hostname",
            "hosts",
            "passwd",
            "modprobe.d/otter-regdom.conf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(actions_for(&changed), ["hostname", "wifi-regdom"]);
        assert!(actions_for(&[]).is_empty());
    }
}
