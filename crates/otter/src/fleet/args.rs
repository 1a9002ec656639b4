//! The fleet commands' arguments.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Store the server URL and an admin token for the other fleet commands.
    Login {
        /// e.g. http://127.0.0.1:8080
        url: String,
        /// The admin token (default: read from standard input).
        #[arg(long, env = "OTTER_TOKEN")]
        token: Option<String>,
    },
    /// Devices of the fleet.
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Releases (signed bundles) on the server.
    Release {
        #[command(subcommand)]
        cmd: ReleaseCmd,
    },
    /// App releases: versioned app sets (compose files, images pinned by digest) that
    /// devices apply without a reboot.
    AppRelease {
        #[command(subcommand)]
        cmd: AppReleaseCmd,
    },
    /// Phased rollouts of a release or an app release.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// Fleet enrollment keys: a device configured with one (`otter configure --enrollment-key`)
    /// is accepted at once.
    EnrollmentKey {
        #[command(subcommand)]
        cmd: EnrollmentKeyCmd,
    },
    /// A device's logs.
    Logs {
        device: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DevicesCmd {
    /// List devices.
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// The device's compatible string.
        #[arg(long)]
        board: Option<String>,
        /// Running OS version.
        #[arg(long)]
        version: Option<String>,
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// One device: state and history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Accept a pending (or rejected, or revoked) device.
    Accept { id: String },
    /// Reject a device (its tokens stop working).
    Reject { id: String },
    /// Revoke an accepted device's token (it must be accepted again).
    Revoke { id: String },
    /// Add or remove tags.
    Tag {
        id: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Pin a device to a release (version or id), overriding rollouts; --unpin removes the pin.
    Pin {
        id: String,
        #[arg(required_unless_present = "unpin")]
        release: Option<String>,
        #[arg(long, conflicts_with = "release")]
        unpin: bool,
    },
    /// Pin a device's apps to an app release (version or id), overriding app rollouts;
    /// --unpin removes the pin.
    PinApps {
        id: String,
        #[arg(required_unless_present = "unpin")]
        app_release: Option<String>,
        #[arg(long, conflicts_with = "app_release")]
        unpin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppReleaseCmd {
    /// Upload an app set (JSON: {"apps": [{"name", "compose", "images"}]}), or one compose
    /// file as app NAME (--name), as app release VERSION. Every image must be pinned by
    /// digest (NAME@sha256:…); the server checks the compose files.
    Upload {
        file: PathBuf,
        #[arg(long)]
        version: String,
        /// FILE is a compose file: the app set has this one app.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List app releases.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One app release, with its set.
    Show {
        /// Version or id.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentKeyCmd {
    /// Create a key; its secret is printed once (the server keeps only a hash).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List keys (without secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: devices can no longer enroll with it (enrolled ones keep their tokens).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Upload a signed bundle; the server checks it against the fleet's trusted keys.
    Upload {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List releases.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Trust a release signing key (.pub) on the server.
    TrustKey { key: PathBuf },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Release version or id.
    #[arg(required_unless_present = "app_release")]
    pub release: Option<String>,
    /// Roll out an app release (version or id) instead of an OS release.
    #[arg(long, conflicts_with = "release")]
    pub app_release: Option<String>,
    /// Only devices with this tag (repeat: all of them).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only these devices (repeat).
    #[arg(long)]
    pub device: Vec<String>,
    /// Cumulative percentages of the phases.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    pub phases: Vec<f64>,
    /// Minimum time each phase lasts (e.g. 600, 30s, 10m, 2h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub soak: u64,
    /// Advance when this share of the devices so far succeeded.
    #[arg(long, default_value_t = 0.95)]
    pub success: f64,
    /// Pause when this share of the devices so far failed.
    #[arg(long, default_value_t = 0.05)]
    pub failure: f64,
    /// A device silent this long after being targeted counts as failed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub deadline: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// Start a phased rollout.
    Create(CreateArgs),
    /// A rollout's phases, failures and events; without an id, all rollouts.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
}

/// `600`, `30s`, `10m`, `2h`, `1d` → seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?}: use seconds or a number with s, m, h or d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600"), Ok(600));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
    }
}
