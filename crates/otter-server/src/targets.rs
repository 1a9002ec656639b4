//! What a device is told to run (`GET /target`) and what it may download: the target columns
//! are kept by [`crate::rollouts`] (pins and rollouts), this reads them for the device.

use otter_proto::{TargetApps, TargetRelease, TargetState, paths};

use crate::AppState;
use crate::error::{ApiErr, ApiResult};
use crate::rollouts::combined_etag;
use crate::store;

/// Seconds between `last_seen` updates on the read-only poll path: often enough for the
/// online/offline view, rare enough that polls stay reads.
const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

/// Records that the device polled, at most every [`LAST_SEEN_RESOLUTION_MS`].
pub async fn seen(
    st: &AppState,
    device_id: &str,
    last_seen: Option<i64>,
    now: i64,
) -> ApiResult<()> {
    if last_seen.is_none_or(|t| now - t > LAST_SEEN_RESOLUTION_MS) {
        store::devices::set_last_seen(&st.db, device_id, now).await?;
    }
    Ok(())
}

/// The device's target state and its ETag.
pub async fn target(
    st: &AppState,
    device_id: &str,
    poll_interval_secs: u64,
) -> ApiResult<(String, TargetState)> {
    let row = store::devices::target(&st.db, device_id).await?;
    let etag = combined_etag(&row.target_etag, &row.app_etag);
    let apps = match row.apps {
        None => None,
        Some(a) => Some(TargetApps {
            app_release_id: a.id,
            version: a.version,
            digest: a.digest,
            set: serde_json::from_str(&a.set_json)
                .map_err(|e| ApiErr::internal("decoding an app set", e))?,
            // A pinned device is in no rollout as far as it is told.
            rollout_id: if row.pinned_app_release_id.is_some() {
                None
            } else {
                row.app_rollout_id
            },
        }),
    };
    let release = match row.release {
        None => None,
        Some(r) => {
            let rollout_id = if row.pinned_release_id.is_some() {
                None
            } else {
                row.rollout_id
            };
            let object = object_store::path::Path::from(r.object_path);
            let url = match st.store.presigned_url(&object).await {
                Ok(Some(u)) => u,
                Ok(None) => format!("{}/{}", paths::ARTIFACTS, r.id),
                Err(e) => {
                    return Err(ApiErr::internal(
                        "presigning the artifact URL",
                        format!("{e:#}"),
                    ));
                }
            };
            Some(TargetRelease {
                url,
                release_id: r.id,
                version: r.version,
                compatible: r.compatible,
                size: r.size,
                manifest_digest: r.manifest_digest,
                rollout_id,
            })
        }
    };
    let state = TargetState {
        device_id: device_id.to_owned(),
        release,
        poll_interval_secs,
        apps,
    };
    Ok((etag, state))
}

/// Where release `release_id`'s bundle is and its size, if it is the device's target (a device
/// downloads only what it is told to run).
pub async fn artifact(
    st: &AppState,
    device_id: &str,
    release_id: &str,
) -> ApiResult<(object_store::path::Path, u64)> {
    let Some((path, size)) = store::devices::targeted_object(&st.db, device_id, release_id).await?
    else {
        return Err(ApiErr::forbidden(
            "not_targeted",
            format!("release {release_id} is not targeted at device {device_id}"),
        ));
    };
    Ok((object_store::path::Path::from(path), size))
}
