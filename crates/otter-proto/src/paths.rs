//! Every API path, once: the server registers these patterns as its routes, and clients fill
//! them with [`fill`]. `{name}` marks a path parameter (axum's syntax).

/// `GET`: a fresh enrollment challenge (no auth).
pub const CHALLENGE: &str = "/api/v1/device/challenge";
/// `POST` an enrollment request.
pub const ENROLL: &str = "/api/v1/device/enroll";
/// `GET` the target state (`If-None-Match` → `304`).
pub const TARGET: &str = "/api/v1/device/target";
/// `POST` a state report.
pub const REPORT: &str = "/api/v1/device/report";
/// `POST` a log batch.
pub const LOGS: &str = "/api/v1/device/logs";
/// Followed by `/{release_id}`.
pub const ARTIFACTS: &str = "/api/v1/device/artifacts";

/// The admin API (`Authorization: Bearer ADMIN_TOKEN`).
pub mod admin {
    pub const WHOAMI: &str = "/api/v1/admin/whoami";
    /// `GET` with the query of a device filter.
    pub const DEVICES: &str = "/api/v1/admin/devices";
    pub const DEVICE: &str = "/api/v1/admin/devices/{id}";
    pub const DEVICE_ACCEPT: &str = "/api/v1/admin/devices/{id}/accept";
    pub const DEVICE_REJECT: &str = "/api/v1/admin/devices/{id}/reject";
    pub const DEVICE_REVOKE: &str = "/api/v1/admin/devices/{id}/revoke";
    pub const DEVICE_TAGS: &str = "/api/v1/admin/devices/{id}/tags";
    pub const DEVICE_PIN: &str = "/api/v1/admin/devices/{id}/pin";
    pub const DEVICE_PIN_APPS: &str = "/api/v1/admin/devices/{id}/pin-apps";
    /// `GET` with `?after=ID&limit=N`.
    pub const DEVICE_LOGS: &str = "/api/v1/admin/devices/{id}/logs";
    pub const ENROLLMENT_KEYS: &str = "/api/v1/admin/enrollment-keys";
    pub const ENROLLMENT_KEY_REVOKE: &str = "/api/v1/admin/enrollment-keys/{id}/revoke";
    pub const KEYS: &str = "/api/v1/admin/keys";
    /// `POST` the bundle file as the body.
    pub const RELEASES: &str = "/api/v1/admin/releases";
    pub const APP_RELEASES: &str = "/api/v1/admin/app-releases";
    pub const APP_RELEASE: &str = "/api/v1/admin/app-releases/{id}";
    pub const ROLLOUTS: &str = "/api/v1/admin/rollouts";
    pub const ROLLOUT: &str = "/api/v1/admin/rollouts/{id}";
    /// `{action}`: a [`crate::admin::RolloutAction`].
    pub const ROLLOUT_ACTION: &str = "/api/v1/admin/rollouts/{id}/{action}";
    /// `GET` with `?subject=…&limit=N`.
    pub const AUDIT: &str = "/api/v1/admin/audit";
}

/// Every path pattern (for checks that each is served and documented).
pub const ALL: &[&str] = &[
    CHALLENGE,
    ENROLL,
    TARGET,
    REPORT,
    LOGS,
    admin::WHOAMI,
    admin::DEVICES,
    admin::DEVICE,
    admin::DEVICE_ACCEPT,
    admin::DEVICE_REJECT,
    admin::DEVICE_REVOKE,
    admin::DEVICE_TAGS,
    admin::DEVICE_PIN,
    admin::DEVICE_PIN_APPS,
    admin::DEVICE_LOGS,
    admin::ENROLLMENT_KEYS,
    admin::ENROLLMENT_KEY_REVOKE,
    admin::KEYS,
    admin::RELEASES,
    admin::APP_RELEASES,
    admin::APP_RELEASE,
    admin::ROLLOUTS,
    admin::ROLLOUT,
    admin::ROLLOUT_ACTION,
    admin::AUDIT,
];

/// The artifact path of a release.
pub fn artifact(release_id: &str) -> String {
    format!("{ARTIFACTS}/{}", encode(release_id))
}

/// Fills the `{…}` parameters of `pattern` in order with `args`, percent-encoded.
pub fn fill(pattern: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut rest = pattern;
    let mut args = args.iter();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        match args.next() {
            Some(a) => out.push_str(&encode(a)),
            None => out.push_str(&rest[open..close]),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but unreserved characters (a path segment or a query value).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_patterns() {
        assert_eq!(
            fill(admin::DEVICE, &["a b/c"]),
            format!("{}/a%20b%2Fc", admin::DEVICES)
        );
        assert_eq!(
            fill(admin::ROLLOUT_ACTION, &["r1", "pause"]),
            format!("{}/r1/pause", admin::ROLLOUTS)
        );
        assert_eq!(fill(TARGET, &[]), TARGET);
        assert_eq!(artifact("a/b"), format!("{ARTIFACTS}/a%2Fb"));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        for p in ALL {
            assert!(p.starts_with(crate::API_PREFIX), "{p}");
        }
    }
}
