//! Devices as admins see and change them: status, tags, pins, logs, history. The rules are
//! here; the rows are in [`crate::store::devices`].

use std::collections::BTreeSet;

use otter_proto::admin::{AppRelease, AuditEntry, Device, DeviceStatus, StoredLogEntry, TagChange};

use crate::AppState;
use crate::error::{ApiErr, ApiResult};
use crate::rollouts;
use crate::store::{self, audit, now_ms};

pub use crate::store::devices::DeviceFilter;

/// How long after its last poll a device counts as online: three poll intervals.
fn online_ms(st: &AppState) -> i64 {
    3 * st.cfg.poll_interval.as_millis() as i64
}

pub fn unknown_device(id: &str) -> ApiErr {
    ApiErr::not_found(
        "unknown_device",
        format!("no device {id} (otter devices ls)"),
    )
}

pub async fn query_devices(st: &AppState, f: &DeviceFilter) -> ApiResult<Vec<Device>> {
    store::devices::query(&st.db, f, online_ms(st)).await
}

pub async fn load_device(st: &AppState, id: &str) -> ApiResult<Device> {
    store::devices::load(&st.db, id, online_ms(st))
        .await?
        .ok_or_else(|| unknown_device(id))
}

pub async fn audit_for(st: &AppState, subject: &str, limit: i64) -> ApiResult<Vec<AuditEntry>> {
    Ok(store::audit_log::for_subject(&st.db, subject, limit).await?)
}

pub async fn query_logs(
    st: &AppState,
    id: &str,
    after: Option<i64>,
    limit: i64,
) -> ApiResult<Vec<StoredLogEntry>> {
    store::devices::logs(&st.db, id, after, limit).await
}

/// Moves a device between statuses (`from` → `to`); revoking or rejecting also revokes its
/// tokens.
pub async fn set_status(
    st: &AppState,
    actor: &str,
    id: &str,
    from: &[DeviceStatus],
    to: DeviceStatus,
) -> ApiResult<()> {
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let status = store::devices::status(&mut tx, id)
        .await?
        .ok_or_else(|| unknown_device(id))?;
    if !from.iter().any(|f| f.as_str() == status) {
        let needs: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        return Err(ApiErr::conflict(
            "bad_state",
            format!(
                "device {id} is {status}; this needs it {}",
                needs.join(" or ")
            ),
        ));
    }
    store::devices::set_status(&mut tx, id, to).await?;
    if to != DeviceStatus::Accepted {
        store::devices::revoke_tokens(&mut tx, id, now).await?;
    }
    audit(
        &mut *tx,
        actor,
        &format!("device_{}", to.as_str()),
        &format!("device:{id}"),
        &format!("{status} → {}", to.as_str()),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Adds and removes tags (at most 64 per device).
pub async fn change_tags(
    st: &AppState,
    actor: &str,
    id: &str,
    change: &TagChange,
) -> ApiResult<()> {
    for t in change.add.iter().chain(&change.remove) {
        check_name_chars("tag", t)?;
    }
    let mut tx = st.db.write.begin().await?;
    let current = store::devices::tags(&mut tx, id)
        .await?
        .ok_or_else(|| unknown_device(id))?;
    let mut set: BTreeSet<String> = current
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    for t in &change.remove {
        set.remove(t);
    }
    set.extend(change.add.iter().cloned());
    if set.len() > 64 {
        return Err(ApiErr::bad_request(
            "too_many_tags",
            "at most 64 tags per device",
        ));
    }
    let joined: Vec<String> = set.into_iter().collect();
    let stored = if joined.is_empty() {
        String::new()
    } else {
        format!(",{},", joined.join(","))
    };
    store::devices::set_tags(&mut tx, id, &stored).await?;
    audit(
        &mut *tx,
        actor,
        "device_tags",
        &format!("device:{id}"),
        &format!("tags: {}", joined.join(", ")),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Pins the device's OS to a release (id or version), or unpins it (`None`).
pub async fn pin(st: &AppState, actor: &str, id: &str, release: Option<&str>) -> ApiResult<()> {
    let device = load_device(st, id).await?;
    let release = match release {
        None => None,
        Some(r) => {
            let (rid, version, compatible) = crate::releases::resolve(st, r).await?;
            if compatible != device.compatible {
                return Err(ApiErr::bad_request(
                    "incompatible_board",
                    format!(
                        "release {version} is for {compatible}; device {id} is {}",
                        device.compatible
                    ),
                ));
            }
            Some((rid, version))
        }
    };
    let detail = match &release {
        Some((rid, v)) => format!("pinned to {v} ({rid})"),
        None => "unpinned".into(),
    };
    let rid = release.as_ref().map(|r| r.0.as_str());
    set_pin(st, actor, id, rollouts::OS.pin, rid, "device_pin", &detail).await
}

/// Pins the device's apps to an app release, or unpins them (`None`).
pub async fn pin_apps(
    st: &AppState,
    actor: &str,
    id: &str,
    release: Option<&AppRelease>,
) -> ApiResult<()> {
    let detail = match release {
        Some(r) => format!("apps pinned to {} ({})", r.version, r.id),
        None => "apps unpinned".into(),
    };
    let rid = release.map(|r| r.id.as_str());
    set_pin(
        st,
        actor,
        id,
        rollouts::APPS.pin,
        rid,
        "device_pin_apps",
        &detail,
    )
    .await
}

async fn set_pin(
    st: &AppState,
    actor: &str,
    id: &str,
    column: &str,
    release_id: Option<&str>,
    action: &str,
    detail: &str,
) -> ApiResult<()> {
    let mut tx = st.db.write.begin().await?;
    store::devices::set_pin(&mut tx, id, column, release_id).await?;
    // A pin wins over a rollout: the target follows.
    rollouts::refresh_target(&mut tx, id).await?;
    audit(&mut *tx, actor, action, &format!("device:{id}"), detail).await?;
    tx.commit().await?;
    Ok(())
}

/// 1–128 characters of `[A-Za-z0-9._-]` (the bundle manifest's rule for `compatible`).
pub fn check_name_chars(field: &str, v: &str) -> ApiResult<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiErr::bad_request(
            "invalid_field",
            format!("{field} {v:?}: use 1-128 characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// At most `max` characters (as `/api/openapi.json` says: JSON Schema's `maxLength` counts
/// characters, so a limit in bytes would refuse strings the document allows).
pub fn check_len(field: &str, v: Option<&str>, max: usize) -> ApiResult<()> {
    match v.map(|s| s.chars().count()) {
        Some(n) if n > max => Err(ApiErr::bad_request(
            "invalid_field",
            format!("{field} is {n} characters long; at most {max} are allowed"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name_chars("compatible", "qemu-x86_64").is_ok());
        assert!(check_name_chars("compatible", "").is_err());
        assert!(check_name_chars("compatible", "a b").is_err());
        assert!(check_len("x", Some("abc"), 2).is_err());
        assert!(check_len("x", None, 2).is_ok());
    }
}
