//! What the agent keeps about its fleet server: `fleet.json`, the contact marker, the device key.

use super::*;

/// What the agent remembers about its fleet server (`fleet.json` in the state directory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// The server the token below belongs to; a different `server.url` starts over.
    pub server_url: String,
    pub device_id: String,
    /// `pending`, `accepted` or `rejected`.
    pub enrollment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<otter_proto::TargetRelease>,
    /// Targets (release id + rollout) that failed or rolled back here: not retried until the
    /// server targets the release again with another rollout or a pin.
    #[serde(default)]
    pub failed_targets: Vec<String>,
    /// History events up to this one were acknowledged by the server (its time and index
    /// among events of the same second).
    #[serde(default)]
    pub reported_until: Option<(u64, String, String)>,
    /// Journal cursor of the last uploaded line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_cursor: Option<String>,
    /// Unix time of the last successful authenticated request.
    #[serde(default)]
    pub last_contact: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// An installed update waits for `server.reboot_window`.
    #[serde(default)]
    pub reboot_pending: bool,
    /// The app release the server targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps_target: Option<TargetApps>,
    /// App release targets (id + rollout) that failed here: not retried until the server
    /// targets the app release again with another rollout or a pin.
    #[serde(default)]
    pub failed_app_targets: Vec<String>,
    /// The app release being applied or applied last, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps_apply: Option<AppApplyReport>,
    /// Unix time `apps_apply` last changed phase.
    #[serde(default)]
    pub apps_apply_at: Option<u64>,
}

impl FleetState {
    pub fn path(paths: &Paths) -> PathBuf {
        paths.state_dir.join("fleet.json")
    }

    /// The saved state; empty when there is none. A damaged file is set aside
    /// (`fleet.json.corrupt-<time>`, logged) rather than overwritten: it holds the device token.
    /// The agent then enrolls again with its device key (`device.key`, untouched), and the
    /// token can be recovered from the kept copy by hand.
    pub fn load(paths: &Paths) -> FleetState {
        let p = Self::path(paths);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::log(&format!(
                        "cannot read {}: {e}; starting unenrolled",
                        p.display()
                    ));
                }
                return FleetState::default();
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                if let Err(err) = crate::durable::set_aside(&p, &e.to_string()) {
                    crate::log(&format!("{err:#}"));
                }
                FleetState::default()
            }
        }
    }

    pub(super) fn save(&self, paths: &Paths) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).context("serialising the fleet state")?;
        crate::durable::replace(&Self::path(paths), &text, None)
    }
}

/// The marker that this boot reached the server (RAM: gone at the next boot).
pub(super) fn contact_marker(paths: &Paths) -> PathBuf {
    paths.run_dir.join("server-reached")
}

/// Whether an authenticated request to the fleet server succeeded since this boot.
pub fn reached_since_boot(paths: &Paths) -> bool {
    contact_marker(paths).exists()
}

/// Whether a trial boot may commit as far as the server is concerned: no server configured,
/// `server.commit_offline`, or the server was reached since boot.
pub fn commit_allowed(paths: &Paths) -> std::result::Result<(), String> {
    match crate::provision::effective_config(paths).server {
        None => Ok(()),
        Some(s) if s.commit_offline => Ok(()),
        Some(s) if reached_since_boot(paths) => {
            let _ = s;
            Ok(())
        }
        Some(s) => Err(format!(
            "the fleet server {} was not reached since boot (a trial boot must reach it once to commit; \
             set server.commit_offline = true to commit without it)",
            s.url
        )),
    }
}

/// The device's own key (`device.key` in the state directory, made on first use).
pub fn device_key(paths: &Paths) -> Result<SigningKey> {
    let p = paths.state_dir.join("device.key");
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            let raw: [u8; 32] = hex::decode(t.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .with_context(|| {
                    format!(
                        "{} is damaged (expected 64 hex characters); remove it to enroll as a new device",
                        p.display()
                    )
                })?;
            Ok(SigningKey::from_bytes(&raw))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            std::fs::create_dir_all(&paths.state_dir)
                .with_context(|| format!("creating {}", paths.state_dir.display()))?;
            crate::durable::replace(&p, hex::encode(key.to_bytes()).as_bytes(), Some(0o600))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}
