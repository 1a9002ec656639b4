//! The device ⇄ fleet server API of Otter: request and response bodies (serde), header names,
//! paths, and the enrollment proof (what a device signs with its Ed25519 key).
//!
//! This crate has no HTTP client or server in it, so the device agent can speak the protocol with a
//! blocking client (`ureq`) and the server with `axum`. The protocol is documented in `docs/api.md`.
//!
//! A device's life:
//! 1. `GET  /api/v1/device/challenge` → [`Challenge`] (no auth).
//! 2. `POST /api/v1/device/enroll` with an [`EnrollRequest`] signed by the device key → [`EnrollResponse`]:
//!    `accepted` with a device token, or `pending` (ask again after `retry_after_secs`), or `rejected`.
//! 3. `GET  /api/v1/device/target` (`Authorization: Bearer TOKEN`, `If-None-Match: ETAG`) →
//!    `200` [`TargetState`] with `ETag`, or `304`; both carry [`HEADER_POLL_INTERVAL`].
//! 4. `GET  /api/v1/device/artifacts/{release_id}` (ranges supported) for the targeted release only.
//! 5. `POST /api/v1/device/report` with a [`StateReport`]; `POST /api/v1/device/logs` with a [`LogBatch`].

pub mod admin;
mod enroll;

pub use enroll::{EnrollProofError, device_id_of, enroll_message};

use serde::{Deserialize, Serialize};

/// Prefix of every API path.
pub const API_PREFIX: &str = "/api/v1";
/// Response header on target polls (200 and 304): seconds until the next poll, jitter included.
pub const HEADER_POLL_INTERVAL: &str = "otter-poll-interval";
/// Largest JSON body the server takes on device and admin endpoints (log batches included).
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest number of entries in one [`LogBatch`].
pub const MAX_LOG_BATCH: usize = 1000;

pub mod paths {
    pub const CHALLENGE: &str = "/api/v1/device/challenge";
    pub const ENROLL: &str = "/api/v1/device/enroll";
    pub const TARGET: &str = "/api/v1/device/target";
    pub const REPORT: &str = "/api/v1/device/report";
    pub const LOGS: &str = "/api/v1/device/logs";
    /// Followed by `/{release_id}`.
    pub const ARTIFACTS: &str = "/api/v1/device/artifacts";
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `invalid_json`, `unknown_device`, `token_revoked`.
    pub error: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// A server-issued enrollment challenge. Stateless on the server (an HMAC over its issue time), so
/// any server process behind a load balancer accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge: String,
    pub expires_in_secs: u64,
}

/// Enrollment request. `signature` is the device key's Ed25519 signature over
/// [`enroll_message`]`(challenge, public_key, compatible)`, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The device's Ed25519 public key: 64 hex characters (32 raw bytes).
    pub public_key: String,
    /// The device's `compatible` string (board/product), as in the bundles it accepts.
    pub compatible: String,
    /// A name for people (hostname); the device id is derived from the key.
    #[serde(default)]
    pub name: Option<String>,
    /// A fleet enrollment key: with a valid one the device is accepted at once.
    #[serde(default)]
    pub enrollment_key: Option<String>,
    /// The OS version running now, if known.
    #[serde(default)]
    pub os_version: Option<String>,
    pub challenge: String,
    /// 128 hex characters.
    pub signature: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollStatus {
    Accepted,
    Pending,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    pub status: EnrollStatus,
    /// The device token, only when `accepted`. Shown once: the server keeps only its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When `pending`: enroll again (with a new challenge) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// What the server wants the device to run. Its `ETag` changes exactly when this changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub device_id: String,
    /// The release to run; `None`: keep what is installed.
    pub release: Option<TargetRelease>,
    /// Seconds until the next poll (also in the [`HEADER_POLL_INTERVAL`] header).
    pub poll_interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRelease {
    pub release_id: String,
    pub version: String,
    pub compatible: String,
    /// Where to fetch the bundle: a path on this server (`/api/v1/device/artifacts/ID`, send the
    /// device token; ranges supported) or an absolute presigned URL (no token).
    pub url: String,
    pub size: u64,
    /// SHA-256 of the bundle's signed manifest digest (`otter bundle inspect` shows it), hex.
    pub manifest_digest: String,
    /// The rollout that targets this device, or `None` for a pin.
    #[serde(default)]
    pub rollout_id: Option<String>,
}

/// The device's state, reported after every change and at least once per poll interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateReport {
    #[serde(default)]
    pub os_version: Option<String>,
    /// `a` or `b`.
    #[serde(default)]
    pub booted_slot: Option<String>,
    #[serde(default)]
    pub update: Option<UpdateReport>,
    /// Rollbacks that happened since the last report.
    #[serde(default)]
    pub rollbacks: Vec<RollbackEvent>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateReport {
    /// The version being installed.
    pub version: String,
    pub phase: UpdatePhase,
    /// 0..=100
    #[serde(default)]
    pub progress: Option<u8>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Phases of an update on the device. `committed` counts as success for a rollout; `failed` and
/// `rolled_back` as failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    Downloading,
    Installing,
    Installed,
    Rebooting,
    Trying,
    Committed,
    Failed,
    RolledBack,
}

impl UpdatePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePhase::Downloading => "downloading",
            UpdatePhase::Installing => "installing",
            UpdatePhase::Installed => "installed",
            UpdatePhase::Rebooting => "rebooting",
            UpdatePhase::Trying => "trying",
            UpdatePhase::Committed => "committed",
            UpdatePhase::Failed => "failed",
            UpdatePhase::RolledBack => "rolled_back",
        }
    }
    pub fn is_failure(self) -> bool {
        matches!(self, UpdatePhase::Failed | UpdatePhase::RolledBack)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackEvent {
    /// The version that was rolled back.
    pub version: String,
    pub reason: String,
    /// Unix milliseconds on the device, if it knows the time.
    #[serde(default)]
    pub at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A batch of log lines (at most [`MAX_LOG_BATCH`], body at most [`MAX_JSON_BODY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub entries: Vec<LogEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// Unix milliseconds on the device.
    pub ts_ms: i64,
    /// e.g. `info`, `warning`, `err` (syslog names); free text up to 16 characters.
    #[serde(default = "default_level")]
    pub level: String,
    /// Where the line came from (systemd unit, `otterd`…).
    #[serde(default)]
    pub source: Option<String>,
    pub message: String,
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    pub accepted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_rejects_unknown_fields_and_wrong_types() {
        assert!(serde_json::from_str::<StateReport>(r#"{"os_version":"1.0","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<StateReport>(r#"{"uptime_secs":"long"}"#).is_err());
        let r: StateReport = serde_json::from_str(
            r#"{"os_version":"1.0","update":{"version":"1.1","phase":"rolled_back","error":"health"}}"#,
        )
        .unwrap();
        assert_eq!(r.update.unwrap().phase, UpdatePhase::RolledBack);
    }

    #[test]
    fn enroll_response_omits_absent_token() {
        let r = EnrollResponse {
            device_id: "d".into(),
            status: EnrollStatus::Pending,
            token: None,
            retry_after_secs: Some(30),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"device_id":"d","status":"pending","retry_after_secs":30}"#
        );
    }

    #[test]
    fn log_entry_defaults_level() {
        let e: LogEntry = serde_json::from_str(r#"{"ts_ms":1,"message":"hi"}"#).unwrap();
        assert_eq!(e.level, "info");
    }
}
