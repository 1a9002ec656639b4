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
pub mod paths;

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

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `invalid_json`, `unknown_device`, `token_revoked`.
    pub error: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// A server-issued enrollment challenge: an HMAC over its issue time, so any server process
/// behind a load balancer accepts it. Single-use: the servers record used challenges in their
/// shared database until they expire, and a second enrollment with one is refused (409
/// `challenge_used`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge: String,
    pub expires_in_secs: u64,
}

/// Enrollment request. `signature` is the device key's Ed25519 signature over
/// [`enroll_message`] (v2: challenge, public key, compatible, name, OS version, the enrollment
/// key's SHA-256), hex-encoded. Each challenge enrolls once.
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
    /// The app set to run (an app release); `None`: keep the apps the device runs. Absent in
    /// answers of servers that predate app releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<TargetApps>,
}

/// An app release the server wants the device to run: the whole set of apps (apps the device
/// runs that are not in it are removed). Applied without a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetApps {
    pub app_release_id: String,
    pub version: String,
    /// SHA-256 (hex) of the set's canonical JSON ([`AppSetBody::digest`]); the device checks it.
    pub digest: String,
    pub set: AppSetBody,
    /// The rollout that targets this device, or `None` for a pin.
    #[serde(default)]
    pub rollout_id: Option<String>,
}

/// An app set as the server carries it (the JSON of `otter_apps::AppSet`): every image is
/// pinned by digest, through a service's `image` or `images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSetBody {
    pub apps: Vec<AppBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBody {
    /// a-z, 0-9, `-`, `_` (names the units and containers).
    pub name: String,
    /// The compose file, as text (the subset in docs/apps.md).
    pub compose: String,
    /// Service name → image reference replacing that service's `image`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub images: std::collections::BTreeMap<String, String>,
}

impl AppSetBody {
    /// SHA-256 (hex) of the set's JSON as serialised here (fields in declaration order, maps
    /// sorted): the same on the server and the device.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
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
    /// The device's apps; absent from agents that predate app releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<AppsReport>,
}

/// What runs on the device as apps, and how the last app release went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsReport {
    /// `builtin` (the root's own apps), `applied` (an app set applied by hand) or `release`
    /// (an app release from the server).
    pub source: String,
    /// The app release running (when `source` is `release`).
    #[serde(default)]
    pub app_release_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// The app release being applied or applied last.
    #[serde(default)]
    pub last_apply: Option<AppApplyReport>,
    #[serde(default)]
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppApplyReport {
    pub app_release_id: String,
    pub version: String,
    pub phase: AppPhase,
    /// The last progress line (pulls) while `applying`.
    #[serde(default)]
    pub progress: Option<String>,
    /// Why it did not apply (every phase but `applying` and `applied`).
    #[serde(default)]
    pub error: Option<String>,
    /// Per app: `unchanged`, `installed`, `updated`, `removed`, `rolled-back`, `failed`,
    /// `deferred`, with the reason.
    #[serde(default)]
    pub apps: Vec<AppOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppOutcome {
    pub app: String,
    pub result: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Phases of an app release on the device. `applied` counts as success for a rollout (with
/// every service running and, where it has a health check, healthy); `rolled_back`, `failed`
/// and `refused` as failure; `deferred` (an app held the update lock) is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppPhase {
    Applying,
    Applied,
    /// A new version did not come up healthy; the previous one runs again.
    RolledBack,
    /// Nothing changed (a pull failed, the set is invalid, a new app failed and was removed).
    Failed,
    /// Refused before it started: the images would not fit on the data partition.
    Refused,
    /// An app held the update lock for too long; the device tries again later.
    Deferred,
}

impl AppPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AppPhase::Applying => "applying",
            AppPhase::Applied => "applied",
            AppPhase::RolledBack => "rolled_back",
            AppPhase::Failed => "failed",
            AppPhase::Refused => "refused",
            AppPhase::Deferred => "deferred",
        }
    }
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            AppPhase::RolledBack | AppPhase::Failed | AppPhase::Refused
        )
    }
}

/// One service of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceReport {
    pub app: String,
    pub service: String,
    pub image: String,
    /// `running`, `starting`, `exited`, `failed`, `inactive` or `unknown`.
    pub state: String,
    /// `none` (no health check), `starting`, `healthy`, `unhealthy`.
    pub health: String,
    #[serde(default)]
    pub restarts: u32,
}

impl ServiceReport {
    /// Running, and healthy if it has a health check (a finished one-shot counts as running).
    pub fn is_ok(&self) -> bool {
        self.state == "running" && (self.health == "none" || self.health == "healthy")
    }
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
    fn old_payloads_still_parse_and_new_fields_are_optional() {
        // A report of an agent without apps, and a target of a server without app releases.
        let r: StateReport = serde_json::from_str(r#"{"os_version":"1.0"}"#).unwrap();
        assert!(r.apps.is_none());
        let t: TargetState =
            serde_json::from_str(r#"{"device_id":"d","release":null,"poll_interval_secs":30}"#)
                .unwrap();
        assert!(t.apps.is_none());
        // No app target: the answer looks as it did before.
        let j = serde_json::to_string(&t).unwrap();
        assert!(!j.contains("apps"), "{j}");
        // Unknown fields in an apps report are refused like the rest of the report.
        assert!(
            serde_json::from_str::<StateReport>(r#"{"apps":{"source":"builtin","bogus":1}}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<StateReport>(
                r#"{"apps":{"source":"release","last_apply":{"app_release_id":"a","version":"1","phase":"exploded"}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn app_reports_round_trip() {
        let r = StateReport {
            apps: Some(AppsReport {
                source: "release".into(),
                app_release_id: Some("ar1".into()),
                version: Some("2".into()),
                last_apply: Some(AppApplyReport {
                    app_release_id: "ar1".into(),
                    version: "2".into(),
                    phase: AppPhase::RolledBack,
                    progress: None,
                    error: Some("hello: unhealthy".into()),
                    apps: vec![AppOutcome {
                        app: "hello".into(),
                        result: "rolled-back".into(),
                        reason: Some("unhealthy".into()),
                    }],
                }),
                services: vec![ServiceReport {
                    app: "hello".into(),
                    service: "web".into(),
                    image: "reg/hello@sha256:00".into(),
                    state: "running".into(),
                    health: "healthy".into(),
                    restarts: 1,
                }],
            }),
            ..Default::default()
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""phase":"rolled_back""#), "{j}");
        let back: StateReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        let a = back.apps.unwrap();
        assert!(a.services[0].is_ok());
        assert!(a.last_apply.unwrap().phase.is_failure());
        assert!(!AppPhase::Deferred.is_failure());
    }

    #[test]
    fn app_set_digest_follows_the_content() {
        let mut s = AppSetBody {
            apps: vec![AppBody {
                name: "a".into(),
                compose: "services: {}".into(),
                images: Default::default(),
            }],
        };
        let d1 = s.digest();
        assert_eq!(d1.len(), 64);
        assert_eq!(d1, s.clone().digest());
        s.apps[0].compose.push(' ');
        assert_ne!(d1, s.digest());
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
