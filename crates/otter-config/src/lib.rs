//! Configuration schemas of Otter.
//!
//! * [`project`]: `otter.toml`, what `otter build` makes.
//! * [`board`]: `boards/*.toml`, what a board needs (architecture, kernel, bootloader, partition sizes).
//! * [`device`]: files baked into every image that the device agent reads: the release
//!   description (`/usr/lib/otter/release.toml`) and the agent settings (`/usr/lib/otter/agent.toml`).
//! * [`device_config`]: `otter/device.toml` on the boot partition, the per-device settings.
//!
//! Every parser rejects unknown keys and bad values with an error that names the file and the key.

pub mod board;
pub mod device;
pub mod device_config;
pub mod edit;
pub mod import;
pub mod password;
pub mod project;
mod size;
pub mod template;

pub use board::{Arch, Board, Bootloader};
pub use device::{AgentConfig, HealthConfig, ReleaseInfo};
pub use device_config::DeviceConfig;
pub use project::Project;
pub use size::{ByteSize, parse_size};

use std::path::{Path, PathBuf};

/// An error in a configuration file. The message always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(path: &Path, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Read and parse a TOML file into `T`, rejecting unknown keys (the types use
/// `deny_unknown_fields`); the error names the file, the line and the key.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// `true` when `s` is a non-empty name made of `[a-z0-9]` and inner `-`.
pub(crate) fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Validate a release version: semantic versioning (`1.2.3`, `1.2.3-rc.1`).
pub fn check_version(path: &Path, key: &str, version: &str) -> Result<semver::Version> {
    semver::Version::parse(version).map_err(|e| {
        ConfigError::invalid(
            path,
            key,
            format!("`{version}` is not a semantic version like 1.2.0 ({e})"),
        )
    })
}
