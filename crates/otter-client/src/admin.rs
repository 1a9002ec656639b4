//! The admin API's calls (`Authorization: Bearer ADMIN_TOKEN`).

use otter_proto::admin::{
    AddTrustedKey, AppRelease, AuditEntry, CreateEnrollmentKey, CreateRollout, Device,
    DeviceDetail, DeviceStatus, EnrollmentKey, PinAppsRequest, PinRequest, Release, Rollout,
    RolloutAction, StoredLogEntry, TagChange, TrustedKey, UploadAppRelease, WhoAmI,
};
use otter_proto::paths::{admin as p, encode, fill};
use serde_json::json;

use crate::Call;

/// Which devices `GET /api/v1/admin/devices` lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub tag: Option<String>,
    /// The board (`compatible`).
    pub compatible: Option<String>,
    /// The running OS version.
    pub version: Option<String>,
    pub online: Option<bool>,
    /// Substring of the id or name.
    pub q: Option<String>,
    pub limit: Option<usize>,
}

impl DeviceFilter {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(l) = self.limit {
            q.push(format!("limit={l}"));
        }
        for (k, v) in [
            ("status", &self.status),
            ("tag", &self.tag),
            ("compatible", &self.compatible),
            ("version", &self.version),
            ("q", &self.q),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        if let Some(o) = self.online {
            q.push(format!("online={o}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

pub fn whoami() -> Call<WhoAmI> {
    Call::get(p::WHOAMI)
}

pub fn devices(f: &DeviceFilter) -> Call<Vec<Device>> {
    Call::get(format!("{}{}", p::DEVICES, f.query()))
}

pub fn device(id: &str) -> Call<DeviceDetail> {
    Call::get(fill(p::DEVICE, &[id]))
}

/// Moves a device to `to`: accepted, rejected or revoked (pending is where devices start).
pub fn set_status(id: &str, to: DeviceStatus) -> Call<Device> {
    let pattern = match to {
        DeviceStatus::Accepted | DeviceStatus::Pending => p::DEVICE_ACCEPT,
        DeviceStatus::Rejected => p::DEVICE_REJECT,
        DeviceStatus::Revoked => p::DEVICE_REVOKE,
    };
    Call::post(fill(pattern, &[id]), &json!({}))
}

pub fn tags(id: &str, change: &TagChange) -> Call<Device> {
    Call::post(fill(p::DEVICE_TAGS, &[id]), change)
}

pub fn pin(id: &str, req: &PinRequest) -> Call<Device> {
    Call::post(fill(p::DEVICE_PIN, &[id]), req)
}

pub fn pin_apps(id: &str, req: &PinAppsRequest) -> Call<Device> {
    Call::post(fill(p::DEVICE_PIN_APPS, &[id]), req)
}

/// Log lines after line `after` (oldest first), else the newest `limit`.
pub fn device_logs(id: &str, after: Option<i64>, limit: i64) -> Call<Vec<StoredLogEntry>> {
    let base = fill(p::DEVICE_LOGS, &[id]);
    Call::get(match after {
        Some(a) => format!("{base}?after={a}&limit={limit}"),
        None => format!("{base}?limit={limit}"),
    })
}

pub fn enrollment_keys() -> Call<Vec<EnrollmentKey>> {
    Call::get(p::ENROLLMENT_KEYS)
}

pub fn create_enrollment_key(req: &CreateEnrollmentKey) -> Call<EnrollmentKey> {
    Call::post(p::ENROLLMENT_KEYS, req)
}

/// Answers `204 No Content`.
pub fn revoke_enrollment_key(id: &str) -> Call<()> {
    Call::post(fill(p::ENROLLMENT_KEY_REVOKE, &[id]), &json!({}))
}

pub fn trusted_keys() -> Call<Vec<TrustedKey>> {
    Call::get(p::KEYS)
}

pub fn add_trusted_key(req: &AddTrustedKey) -> Call<TrustedKey> {
    Call::post(p::KEYS, req)
}

pub fn releases() -> Call<Vec<Release>> {
    Call::get(p::RELEASES)
}

pub fn app_releases() -> Call<Vec<AppRelease>> {
    Call::get(p::APP_RELEASES)
}

pub fn upload_app_release(req: &UploadAppRelease) -> Call<AppRelease> {
    Call::post(p::APP_RELEASES, req)
}

/// By version or id, with its set.
pub fn app_release(id: &str) -> Call<AppRelease> {
    Call::get(fill(p::APP_RELEASE, &[id]))
}

pub fn rollouts() -> Call<Vec<Rollout>> {
    Call::get(p::ROLLOUTS)
}

pub fn create_rollout(spec: &CreateRollout) -> Call<Rollout> {
    Call::post(p::ROLLOUTS, spec)
}

pub fn rollout(id: &str) -> Call<Rollout> {
    Call::get(fill(p::ROLLOUT, &[id]))
}

pub fn control_rollout(id: &str, action: RolloutAction) -> Call<Rollout> {
    Call::post(fill(p::ROLLOUT_ACTION, &[id, action.as_str()]), &json!({}))
}

/// The newest `limit` audit entries, of `subject` only if given.
pub fn audit(subject: Option<&str>, limit: i64) -> Call<Vec<AuditEntry>> {
    Call::get(match subject {
        Some(s) => format!("{}?subject={}&limit={limit}", p::AUDIT, encode(s)),
        None => format!("{}?limit={limit}", p::AUDIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        let f = DeviceFilter {
            tag: Some("lab 1".into()),
            online: Some(false),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            devices(&f).path,
            format!("{}?limit=5&tag=lab%201&online=false", p::DEVICES)
        );
        assert_eq!(
            control_rollout("r/1", RolloutAction::Abort).path,
            format!("{}/r%2F1/abort", p::ROLLOUTS)
        );
        assert_eq!(
            set_status("d", DeviceStatus::Revoked).path,
            format!("{}/d/revoke", p::DEVICES)
        );
    }
}
