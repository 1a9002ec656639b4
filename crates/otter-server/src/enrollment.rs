//! Enrollment: a device proves its key over a server-issued challenge and is recorded pending,
//! or accepted at once with a valid enrollment key; an accepted device gets a fresh token. Also
//! the enrollment keys admins create and revoke.

use otter_proto::admin::EnrollmentKey;
use otter_proto::{EnrollRequest, EnrollResponse, EnrollStatus};

use crate::AppState;
use crate::auth;
use crate::devices::{check_len, check_name_chars};
use crate::error::{ApiErr, ApiResult};
use crate::rollouts;
use crate::store::{self, audit, now_ms};

/// Enrolls (or re-enrolls) the device whose key signed `req`.
pub async fn enroll(st: &AppState, req: EnrollRequest) -> ApiResult<EnrollResponse> {
    check_name_chars("compatible", &req.compatible)?;
    check_len("name", req.name.as_deref(), 128)?;
    check_len("os_version", req.os_version.as_deref(), 64)?;
    check_len("enrollment_key", req.enrollment_key.as_deref(), 128)?;
    let issued = auth::check_challenge(&st.challenge_secret, &req.challenge)?;
    let raw = req
        .verify_proof()
        .map_err(|e| ApiErr::bad_request("bad_proof", e.to_string()))?;
    let device_id = otter_proto::device_id_of(&raw);

    let mut key_ok = false;
    if let Some(key) = &req.enrollment_key {
        match store::keys::enrollment_key_by_hash(&st.db, &auth::hash_secret(key)).await? {
            None => {
                return Err(ApiErr::forbidden(
                    "bad_enrollment_key",
                    "the enrollment key is not known to this server (check the device config)",
                ));
            }
            Some((id, true)) => {
                return Err(ApiErr::forbidden(
                    "enrollment_key_revoked",
                    format!("the enrollment key {id} was revoked by an admin"),
                ));
            }
            Some((_, false)) => key_ok = true,
        }
    }

    let now = now_ms();
    let actor = format!("device:{device_id}");
    let subject = actor.clone();
    let mut tx = st.db.write.begin().await?;
    // Single use: a replayed request (or a second one with the same challenge) is refused.
    let expires_at = (issued + auth::CHALLENGE_TTL_SECS as i64 + 60) * 1000;
    if !store::keys::use_challenge(&mut tx, &req.challenge, expires_at, now).await? {
        return Err(ApiErr::conflict(
            "challenge_used",
            "this challenge was used for an enrollment already: get a new one from GET /api/v1/device/challenge",
        ));
    }
    let existing = store::devices::identity(&mut tx, &device_id).await?;
    let status = match existing {
        None => {
            let status = if key_ok { "accepted" } else { "pending" };
            let new = store::devices::NewDevice {
                id: &device_id,
                name: req.name.as_deref(),
                public_key: &req.public_key,
                compatible: &req.compatible,
                status,
                os_version: req.os_version.as_deref(),
                target_etag: &rollouts::etag_for(None, None),
            };
            store::devices::insert(&mut tx, &new, now).await?;
            let how = if key_ok {
                "accepted with an enrollment key"
            } else {
                "waiting for an admin"
            };
            audit(
                &mut *tx,
                &actor,
                &format!("device_{status}"),
                &subject,
                &format!("enrolled ({how}), compatible {}", req.compatible),
            )
            .await?;
            status.to_owned()
        }
        Some((mut status, pk)) => {
            if pk != req.public_key {
                return Err(ApiErr::conflict(
                    "device_id_collision",
                    format!("device id {device_id} belongs to another key"),
                ));
            }
            match status.as_str() {
                "rejected" => {
                    return Err(ApiErr::forbidden(
                        "device_rejected",
                        format!("device {device_id} was rejected by an admin"),
                    ));
                }
                "revoked" => {
                    return Err(ApiErr::forbidden(
                        "device_revoked",
                        format!(
                            "device {device_id} was revoked by an admin; an admin must accept it again"
                        ),
                    ));
                }
                "pending" if key_ok => {
                    status = "accepted".into();
                    audit(
                        &mut *tx,
                        &actor,
                        "device_accepted",
                        &subject,
                        "accepted with an enrollment key",
                    )
                    .await?;
                }
                _ => {}
            }
            store::devices::update_enrolled(
                &mut tx,
                &device_id,
                &status,
                req.name.as_deref(),
                &req.compatible,
                req.os_version.as_deref(),
                now,
            )
            .await?;
            status
        }
    };
    let resp = if status == "accepted" {
        // A device that proves its key again (e.g. lost its token) gets a fresh token; the old
        // ones stop working.
        store::devices::revoke_tokens(&mut tx, &device_id, now).await?;
        let token = auth::new_secret("otd");
        store::tokens::insert_device_token(&mut tx, &auth::hash_secret(&token), &device_id, now)
            .await?;
        audit(&mut *tx, &actor, "token_issued", &subject, "").await?;
        EnrollResponse {
            device_id,
            status: EnrollStatus::Accepted,
            token: Some(token),
            retry_after_secs: None,
        }
    } else {
        EnrollResponse {
            device_id,
            status: EnrollStatus::Pending,
            token: None,
            retry_after_secs: Some(st.cfg.poll_interval.as_secs().clamp(5, 60)),
        }
    };
    tx.commit().await?;
    Ok(resp)
}

pub async fn list_keys(st: &AppState) -> ApiResult<Vec<EnrollmentKey>> {
    Ok(store::keys::enrollment_keys(&st.db).await?)
}

/// A new enrollment key; its secret is in the answer only (the server keeps its hash).
pub async fn create_key(st: &AppState, actor: &str, name: String) -> ApiResult<EnrollmentKey> {
    check_name_chars("name", &name)?;
    let id = auth::new_id();
    let key = auth::new_secret("otk");
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    store::keys::insert_enrollment_key(&mut tx, &id, &name, &auth::hash_secret(&key), now, actor)
        .await?;
    audit(
        &mut *tx,
        actor,
        "enrollment_key_created",
        &format!("enrollment_key:{id}"),
        &name,
    )
    .await?;
    tx.commit().await?;
    Ok(EnrollmentKey {
        id,
        name,
        created_at_ms: now,
        revoked_at_ms: None,
        key: Some(key),
    })
}

pub async fn revoke_key(st: &AppState, actor: &str, id: &str) -> ApiResult<()> {
    let mut tx = st.db.write.begin().await?;
    if !store::keys::revoke_enrollment_key(&mut tx, id, now_ms()).await? {
        return Err(ApiErr::not_found(
            "unknown_enrollment_key",
            format!("no unrevoked enrollment key {id}"),
        ));
    }
    audit(
        &mut *tx,
        actor,
        "enrollment_key_revoked",
        &format!("enrollment_key:{id}"),
        "",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
