//! App releases: versioned app sets (compose files + images pinned by digest) that rollouts
//! and pins target, applied by devices without a reboot. They are small JSON, kept in the
//! database (so several server processes share them with nothing else), and validated on
//! upload with the device's own parser (`otter-apps`), so a device never meets a set it would
//! refuse.

use otter_proto::AppSetBody;
use otter_proto::admin::{AppRelease, UploadAppRelease};

use crate::AppState;
use crate::error::{ApiErr, ApiResult};
use crate::store::{self, audit, now_ms};

/// Where a device keeps an applied app's files (relative paths in compose files resolve
/// there); used only to parse the set the way the device will.
const DEVICE_APPS_DIR: &str = "/var/lib/otter/apps";

/// Checks a set as a device would before applying it: every compose file in the subset,
/// unique valid names, `images` naming services, every image pinned by digest.
pub fn validate(set: &AppSetBody) -> ApiResult<otter_apps::AppSet> {
    if set.apps.is_empty() {
        return Err(ApiErr::bad_request(
            "invalid_app_set",
            "the app set has no apps: give at least one in `apps`",
        ));
    }
    let apps_set = otter_apps::AppSet {
        apps: set
            .apps
            .iter()
            .map(|a| otter_apps::AppSpec {
                name: a.name.clone(),
                compose: a.compose.clone(),
                images: a.images.clone(),
            })
            .collect(),
    };
    let apps = apps_set
        .resolve(&|n| std::path::Path::new(DEVICE_APPS_DIR).join(n))
        .map_err(|e| ApiErr::bad_request("invalid_app_set", e.to_string()))?;
    otter_apps::AppSet::check_pinned(&apps)
        .map_err(|e| ApiErr::bad_request("unpinned_image", e.to_string()))?;
    Ok(apps_set)
}

fn check_version(v: &str) -> ApiResult<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(ApiErr::bad_request(
            "invalid_field",
            format!("version {v:?}: use 1-64 characters of A-Z a-z 0-9 . _ - +"),
        ))
    }
}

pub async fn upload(st: &AppState, actor: &str, req: UploadAppRelease) -> ApiResult<AppRelease> {
    check_version(&req.version)?;
    let parsed = validate(&req.set)?;
    let resolved = parsed
        .resolve(&|n| std::path::Path::new(DEVICE_APPS_DIR).join(n))
        .map_err(|e| ApiErr::bad_request("invalid_app_set", e.to_string()))?;
    let names: Vec<String> = resolved.iter().map(|a| a.name.clone()).collect();
    let mut images: Vec<String> = resolved.iter().flat_map(|a| a.images()).collect();
    images.sort();
    images.dedup();
    let digest = req.set.digest();
    let set_json =
        serde_json::to_string(&req.set).map_err(|e| ApiErr::internal("encoding the app set", e))?;
    if store::releases::app_release_exists(&st.db, &req.version).await? {
        return Err(ApiErr::conflict(
            "app_release_exists",
            format!(
                "app release {} exists already: give the new set another version",
                req.version
            ),
        ));
    }
    let id = crate::auth::new_id();
    let now = now_ms();
    let mut tx = st.db.write.begin().await?;
    let release = AppRelease {
        id: id.clone(),
        version: req.version.clone(),
        digest: digest.clone(),
        apps: names.clone(),
        images,
        uploaded_at_ms: now,
        uploaded_by: actor.to_owned(),
        set: None,
    };
    let inserted = store::releases::insert_app_release(&mut tx, &release, &set_json).await?;
    if !inserted {
        return Err(ApiErr::conflict(
            "app_release_exists",
            format!(
                "app release {} exists already: give the new set another version",
                req.version
            ),
        ));
    }
    audit(
        &mut *tx,
        actor,
        "app_release_uploaded",
        &format!("app_release:{id}"),
        &format!(
            "app release {} ({}): apps {}",
            req.version,
            &digest[..16],
            names.join(", ")
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(release)
}

pub async fn list(st: &AppState) -> ApiResult<Vec<AppRelease>> {
    store::releases::app_releases(&st.db).await
}

/// An app release by id or version, with its set.
pub async fn load(st: &AppState, what: &str) -> ApiResult<AppRelease> {
    store::releases::app_release(&st.db, what)
        .await?
        .ok_or_else(|| {
            ApiErr::not_found(
                "unknown_app_release",
                format!("no app release with id or version {what:?} (otter app-release ls)"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use otter_proto::AppBody;

    const PINNED: &str = "reg.example.com/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn set(compose: &str) -> AppSetBody {
        AppSetBody {
            apps: vec![AppBody {
                name: "shop".into(),
                compose: compose.into(),
                images: Default::default(),
            }],
        }
    }

    #[test]
    fn pinned_sets_pass() {
        validate(&set(&format!("services:\n  web:\n    image: {PINNED}\n"))).unwrap();
        // `images` pins an image the compose file names by tag.
        let mut s = set("services:\n  web:\n    image: reg.example.com/web:1\n");
        s.apps[0].images.insert("web".into(), PINNED.into());
        validate(&s).unwrap();
    }

    #[test]
    fn unpinned_images_are_refused_naming_app_and_service() {
        let e = validate(&set(
            "services:\n  web:\n    image: reg.example.com/web:1\n",
        ))
        .unwrap_err();
        assert_eq!(e.code, "unpinned_image");
        assert!(
            e.message.contains("`shop`") && e.message.contains("`web`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_compose_is_refused_naming_the_key() {
        let e = validate(&set(&format!(
            "services:\n  web:\n    image: {PINNED}\n    build: .\n"
        )))
        .unwrap_err();
        assert_eq!(e.code, "invalid_app_set");
        assert!(e.message.contains("services.web.build"), "{}", e.message);
        let mut s = set(&format!("services:\n  web:\n    image: {PINNED}\n"));
        s.apps[0].images.insert("db".into(), PINNED.into());
        let e = validate(&s).unwrap_err();
        assert!(e.message.contains("images.db"), "{}", e.message);
        let mut s = set(&format!("services:\n  web:\n    image: {PINNED}\n"));
        s.apps[0].name = "Bad Name".into();
        assert!(validate(&s).unwrap_err().message.contains("Bad Name"));
        assert!(
            validate(&AppSetBody { apps: vec![] })
                .unwrap_err()
                .message
                .contains("no apps")
        );
    }

    #[test]
    fn versions() {
        check_version("2.1.0+build.7").unwrap();
        assert!(check_version("").is_err());
        assert!(check_version("a b").is_err());
        assert!(check_version(&"x".repeat(65)).is_err());
    }
}
