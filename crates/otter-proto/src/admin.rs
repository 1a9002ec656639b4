//! Admin API bodies (used by the `otter` CLI and scripts; `Authorization: Bearer ADMIN_TOKEN`).

use serde::{Deserialize, Serialize};

use crate::{AppSetBody, AppsReport, Health, UpdateReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Pending,
    Accepted,
    Rejected,
    /// Accepted once, then its token was revoked: it must enroll again.
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Accepted => "accepted",
            DeviceStatus::Rejected => "rejected",
            DeviceStatus::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeviceStatus::Pending,
            "accepted" => DeviceStatus::Accepted,
            "rejected" => DeviceStatus::Rejected,
            "revoked" => DeviceStatus::Revoked,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub name: Option<String>,
    pub public_key: String,
    pub compatible: String,
    pub status: DeviceStatus,
    pub tags: Vec<String>,
    pub pinned_release: Option<String>,
    /// Version the device is targeted at (pin or rollout), if any.
    pub target_version: Option<String>,
    pub os_version: Option<String>,
    pub booted_slot: Option<String>,
    pub update: Option<UpdateReport>,
    pub health: Option<Health>,
    pub uptime_secs: Option<u64>,
    pub free_bytes: Option<u64>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub online: bool,
    /// App release version the device is pinned to.
    #[serde(default)]
    pub pinned_app_release: Option<String>,
    /// App release version the device is targeted at (pin or rollout), if any.
    #[serde(default)]
    pub target_app_version: Option<String>,
    /// The apps as the device last reported them.
    #[serde(default)]
    pub apps: Option<AppsReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    /// Newest first.
    pub history: Vec<AuditEntry>,
}

/// `POST /api/v1/admin/devices/{id}/tags`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagChange {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /api/v1/admin/devices/{id}/pin`: `release` is a release id or version; `null` unpins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    pub release: Option<String>,
}

/// `POST /api/v1/admin/devices/{id}/pin-apps`: `app_release` is an app release id or version;
/// `null` unpins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinAppsRequest {
    pub app_release: Option<String>,
}

/// `POST /api/v1/admin/app-releases`: a versioned app set. Every image must be pinned by
/// digest; the compose files must be in the subset of docs/apps.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadAppRelease {
    /// 1-64 characters of A-Z a-z 0-9 . _ - + ; unique among app releases.
    pub version: String,
    pub set: AppSetBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRelease {
    pub id: String,
    pub version: String,
    /// SHA-256 of the set's canonical JSON (what devices check).
    pub digest: String,
    /// The apps' names.
    pub apps: Vec<String>,
    /// Every image reference (pinned by digest).
    pub images: Vec<String>,
    pub uploaded_at_ms: i64,
    pub uploaded_by: String,
    /// The set itself (only in `GET /app-releases/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<AppSetBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub version: String,
    pub compatible: String,
    pub size: u64,
    pub manifest_digest: String,
    /// Fingerprint of the trusted key whose signature was accepted.
    pub signer: String,
    pub uploaded_at_ms: i64,
    pub uploaded_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub fingerprint: String,
    pub pem: String,
    pub added_at_ms: i64,
    /// `flag` for keys from `--trusted-key`, else who added it.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTrustedKey {
    /// SPKI PEM of an Ed25519 public key (an `otter keys generate` `.pub` file).
    pub pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentKey {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentKey {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// The secret, only in the answer that created it (the server keeps a hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which devices a rollout targets: accepted devices whose `compatible` is the release's (the
/// board), that carry all `tags`, and, when `devices` is not empty, are in that list (each listed
/// device must exist and be compatible, else the rollout is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Devices whose tags include all of these.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Explicit device ids.
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Cumulative share of the targeted devices, 0 < percent ≤ 100, increasing; the last is 100.
    pub percent: f64,
    /// The phase lasts at least this long before the next starts.
    #[serde(default)]
    pub min_soak_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// OS release id or version (give this or `app_release`).
    #[serde(default)]
    pub release: String,
    /// App release id or version: the rollout updates the devices' apps (no reboot) instead
    /// of their OS.
    #[serde(default)]
    pub app_release: Option<String>,
    #[serde(default)]
    pub selector: Selector,
    /// Default: 1%, 10%, 50%, 100% with 10 minutes soak each.
    #[serde(default)]
    pub phases: Option<Vec<PhaseSpec>>,
    /// Advance when succeeded/targeted-so-far ≥ this (0..=1, default 0.95).
    #[serde(default)]
    pub success_threshold: Option<f64>,
    /// Pause when failed/targeted-so-far > this (0..=1, default 0.05).
    #[serde(default)]
    pub failure_threshold: Option<f64>,
    /// A targeted device that has not finished (committed or failed) this long after it was
    /// targeted counts as failed (default 3600).
    #[serde(default)]
    pub device_deadline_secs: Option<u64>,
}

/// What a rollout updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// An OS release (`release_id` names a release).
    #[default]
    Os,
    /// An app release (`release_id` names an app release); success is the set applied with
    /// every service running and healthy.
    Apps,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Os => "os",
            RolloutKind::Apps => "apps",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Active,
    Paused,
    Aborted,
    Completed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => RolloutState::Active,
            "paused" => RolloutState::Paused,
            "aborted" => RolloutState::Aborted,
            "completed" => RolloutState::Completed,
            _ => return None,
        })
    }
}

/// A device's state within one rollout (the server stores it as this text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutDeviceState {
    /// In a phase not started yet.
    Waiting,
    /// Its phase started: the device is told to update and has not reported an outcome yet.
    Targeted,
    Succeeded,
    /// Failed to install or apply, rolled back, or silent past the deadline.
    Failed,
}

impl RolloutDeviceState {
    pub const ALL: [RolloutDeviceState; 4] = [
        RolloutDeviceState::Waiting,
        RolloutDeviceState::Targeted,
        RolloutDeviceState::Succeeded,
        RolloutDeviceState::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutDeviceState::Waiting => "waiting",
            RolloutDeviceState::Targeted => "targeted",
            RolloutDeviceState::Succeeded => "succeeded",
            RolloutDeviceState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Compares with the stored text (`state == "failed"`).
impl PartialEq<&str> for RolloutDeviceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What an admin can do to a rollout (`POST /api/v1/admin/rollouts/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

impl RolloutAction {
    pub const ALL: [RolloutAction; 3] = [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Abort,
    ];
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub percent: f64,
    pub min_soak_secs: u64,
    /// Devices added in this phase.
    pub devices: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub started_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutFailure {
    pub device_id: String,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    #[serde(default)]
    pub kind: RolloutKind,
    /// The release (or, for `apps`, the app release).
    pub release_id: String,
    pub version: String,
    /// The board of an OS release; empty for an app release (any board).
    pub compatible: String,
    pub state: RolloutState,
    /// Index of the current phase in `phases`.
    pub phase: usize,
    pub phases: Vec<PhaseStatus>,
    pub success_threshold: f64,
    pub failure_threshold: f64,
    pub device_deadline_secs: u64,
    pub total_devices: u64,
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub failures: Vec<RolloutFailure>,
    /// Newest first.
    pub events: Vec<AuditEntry>,
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// `admin:NAME`, `device:ID` or `server` (automatic decisions).
    pub actor: String,
    pub action: String,
    /// e.g. `device:ID`, `rollout:ID`, `release:ID`.
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogEntry {
    pub id: i64,
    pub device_id: String,
    pub ts_ms: i64,
    pub received_at_ms: i64,
    pub level: String,
    pub source: Option<String>,
    pub message: String,
}

/// `GET /api/v1/admin/whoami`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub admin: String,
    pub server_version: String,
}
