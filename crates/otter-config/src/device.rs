//! Files `otter build` bakes into every root filesystem, read by the agent on the device.
//!
//! * `/usr/lib/otter/release.toml` ([`ReleaseInfo`]): what this root is.
//! * `/usr/lib/otter/agent.toml` ([`AgentConfig`]): how the agent judges and handles updates.

use crate::{Bootloader, ConfigError, Result, check_version, parse_toml, read_toml};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const RELEASE_PATH: &str = "/usr/lib/otter/release.toml";
pub const AGENT_CONFIG_PATH: &str = "/usr/lib/otter/agent.toml";
pub const TRUSTED_KEYS_DIR: &str = "/usr/lib/otter/keys";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    pub name: String,
    pub version: String,
    pub compatible: String,
    pub board: String,
    /// Unix seconds of the build (SOURCE_DATE_EPOCH when set).
    pub build_time: u64,
    /// The board's boot loader, which the agent's boot backend must match. Left out for
    /// `grub-efi` (images built before the key existed are GRUB images).
    #[serde(default, skip_serializing_if = "Bootloader::is_grub_efi")]
    pub bootloader: Bootloader,
}

impl ReleaseInfo {
    pub fn load(path: &Path) -> Result<ReleaseInfo> {
        let r: ReleaseInfo = read_toml(path)?;
        check_version(path, "version", &r.version)?;
        Ok(r)
    }
    pub fn parse(path: &Path, text: &str) -> Result<ReleaseInfo> {
        let r: ReleaseInfo = parse_toml(path, text)?;
        check_version(path, "version", &r.version)?;
        Ok(r)
    }
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub health: HealthConfig,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let c: AgentConfig = read_toml(path)?;
        c.health.validate(path, "health")?;
        Ok(c)
    }
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// How a freshly tried slot proves it is healthy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds after boot within which the system must be healthy, else the update is
    /// rolled back.
    #[serde(default = "default_deadline")]
    pub deadline_secs: u64,
    /// Units that must be active (not failed) for the system to count as healthy, in
    /// addition to those wanted by `otter-health.target`.
    #[serde(default)]
    pub units: Vec<String>,
    /// Seconds each executable in `/etc/otter/health.d/` may run.
    #[serde(default = "default_check_timeout")]
    pub check_timeout_secs: u64,
    /// Boot attempts of a new slot before the boot loader falls back (1 = tried once).
    #[serde(default = "default_tries")]
    pub boot_tries: u8,
    /// Every service of the device's container apps must run (and be healthy, if it has a
    /// health check): an OS release that breaks the apps rolls back.
    #[serde(default = "default_apps")]
    pub apps: bool,
}

fn default_deadline() -> u64 {
    300
}
fn default_check_timeout() -> u64 {
    60
}
fn default_tries() -> u8 {
    1
}
fn default_apps() -> bool {
    true
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            deadline_secs: default_deadline(),
            units: Vec::new(),
            check_timeout_secs: default_check_timeout(),
            boot_tries: default_tries(),
            apps: default_apps(),
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self, path: &Path, prefix: &str) -> Result<()> {
        if !(10..=86400).contains(&self.deadline_secs) {
            return Err(ConfigError::invalid(
                path,
                &format!("{prefix}.deadline_secs"),
                format!(
                    "{} must be between 10 and 86400 seconds",
                    self.deadline_secs
                ),
            ));
        }
        if !(1..=3600).contains(&self.check_timeout_secs) {
            return Err(ConfigError::invalid(
                path,
                &format!("{prefix}.check_timeout_secs"),
                format!(
                    "{} must be between 1 and 3600 seconds",
                    self.check_timeout_secs
                ),
            ));
        }
        if !(1..=3).contains(&self.boot_tries) {
            return Err(ConfigError::invalid(
                path,
                &format!("{prefix}.boot_tries"),
                format!("{} must be 1, 2 or 3", self.boot_tries),
            ));
        }
        for u in &self.units {
            let ok = u.contains('.')
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
            if !ok {
                return Err(ConfigError::invalid(
                    path,
                    &format!("{prefix}.units"),
                    format!("`{u}` is not a systemd unit name like ssh.service"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_round_trip() {
        let r = ReleaseInfo {
            name: "demo".into(),
            version: "1.2.0".into(),
            compatible: "demo-qemu-x86_64".into(),
            board: "qemu-x86_64".into(),
            build_time: 1700000000,
            bootloader: crate::Bootloader::GrubEfi,
        };
        let back = ReleaseInfo::parse(Path::new("release.toml"), &r.to_toml()).unwrap();
        assert_eq!(back, r);
        let bad = r.to_toml().replace("1.2.0", "x");
        assert!(ReleaseInfo::parse(Path::new("release.toml"), &bad).is_err());
    }

    #[test]
    fn agent_defaults_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, "").unwrap();
        let c = AgentConfig::load(&p).unwrap();
        assert_eq!(c.health.deadline_secs, 300);
        assert_eq!(c.health.boot_tries, 1);
        std::fs::write(&p, "[health]\nunits = [\"bad unit\"]\n").unwrap();
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("health.units") && e.contains("agent.toml"),
            "{e}"
        );
        std::fs::write(&p, "[health]\nboot_tries = 9\n").unwrap();
        assert!(
            AgentConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("boot_tries")
        );
    }
}
