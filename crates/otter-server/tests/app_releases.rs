//! App releases over HTTP (SQLite, or PostgreSQL with `OTTER_TEST_POSTGRES`): upload with
//! validation, list, a phased rollout of an app release that devices' target states carry,
//! reports that move it (applied and healthy) or pause it (rolled back), pins, and an OS
//! rollout running beside an app rollout on the same device.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::{Value, json};

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn set(image: &str) -> Value {
    json!({"apps": [{"name": "shop", "compose": format!(
        "services:\n  web:\n    image: {image}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n"
    )}]})
}

fn upload(s: &TestServer, version: &str, set: Value) -> Resp {
    s.admin_post(
        "/api/v1/admin/app-releases",
        &json!({"version": version, "set": set}),
    )
}

fn rollout_json(s: &TestServer, id: &str) -> Value {
    s.admin_get(&format!("/api/v1/admin/rollouts/{id}")).json()
}

/// An apps report: `running` the app release (id) the device runs, `last` (id, phase, error).
fn apps_report(running: Option<&str>, last: Option<(&str, &str, &str)>, health: &str) -> Value {
    json!({"os_version": "1.0.0", "apps": {
        "source": if running.is_some() { "release" } else { "builtin" },
        "app_release_id": running,
        "version": running.map(|_| "v"),
        "last_apply": last.map(|(id, phase, error)| json!({
            "app_release_id": id, "version": "v", "phase": phase,
            "error": if error.is_empty() { Value::Null } else { json!(error) }})),
        "services": [{"app": "shop", "service": "web", "image": "i", "state": "running",
                      "health": health, "restarts": 0}]
    }})
}

#[test]
fn upload_validates_lists_and_refuses_duplicates() {
    let s = start(|_| {});
    let pinned = format!("reg.example.com/shop@{DIGEST_A}");
    let r = upload(&s, "1.0.0", set(&pinned));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    let ar = r.json();
    assert_eq!(ar["version"], "1.0.0");
    assert_eq!(ar["apps"], json!(["shop"]));
    assert_eq!(ar["images"], json!([pinned]));
    assert_eq!(ar["digest"].as_str().unwrap().len(), 64);

    // Unpinned image: refused, naming app and service.
    let r = upload(&s, "1.0.1", set("reg.example.com/shop:1"));
    assert_eq!((r.status, r.error_code().as_str()), (400, "unpinned_image"));
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("`shop`") && msg.contains("`web`"), "{msg}");
    // Outside the compose subset: refused, naming the key.
    let bad = json!({"apps": [{"name": "shop", "compose": format!(
        "services:\n  web:\n    image: r/x@{DIGEST_A}\n    hostname: x\n")}]});
    let r = upload(&s, "1.0.2", bad);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_app_set")
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("services.web.hostname"),
        "{}",
        r.json()
    );
    // Unknown fields and bad versions.
    let r = s.admin_post(
        "/api/v1/admin/app-releases",
        &json!({"version": "2", "set": {"apps": [], "extra": 1}}),
    );
    assert_eq!(r.status, 422, "{}", r.json());
    assert!(r.json()["message"].as_str().unwrap().contains("extra"));
    let r = upload(&s, "has space", set(&pinned));
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_field"));
    // The same version again: conflict.
    let r = upload(
        &s,
        "1.0.0",
        set(&format!("reg.example.com/shop@{DIGEST_B}")),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "app_release_exists")
    );

    let list = s.admin_get("/api/v1/admin/app-releases").json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(list[0]["set"].is_null(), "the list leaves the sets out");
    let one = s.admin_get("/api/v1/admin/app-releases/1.0.0").json();
    assert_eq!(one["set"], set(&pinned));
    let r = s.admin_get("/api/v1/admin/app-releases/9.9");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_app_release")
    );
    let audit = s
        .admin_get(&format!(
            "/api/v1/admin/audit?subject=app_release:{}",
            ar["id"].as_str().unwrap()
        ))
        .json();
    assert_eq!(audit[0]["action"], "app_release_uploaded", "{audit}");
}

#[test]
fn app_rollout_targets_devices_moves_on_reports_and_pauses_on_rollbacks() {
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    // Two boards: an app release goes to both.
    let mut devs: Vec<TestDevice> = (0..4)
        .map(|i| device(i, if i < 2 { "qemu-x86_64" } else { "rpi4" }))
        .collect();
    for d in &mut devs {
        s.enrolled(d, &key);
    }
    let a = upload(&s, "1.0.0", set(&format!("reg/shop@{DIGEST_A}"))).json();
    let a_id = a["id"].as_str().unwrap().to_owned();
    // Before: the target state has no apps, and its ETag is what it was.
    let before = s.poll(&devs[0], None);
    assert!(before.json().get("apps").is_none(), "{}", before.json());
    let etag_before = before.etag.clone().unwrap();

    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"app_release": "1.0.0", "phases": [{"percent": 50}, {"percent": 100}],
                "success_threshold": 1.0, "failure_threshold": 0.4}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    let ro = r.json();
    let id = ro["id"].as_str().unwrap().to_owned();
    assert_eq!(ro["kind"], "apps");
    assert_eq!(ro["version"], "1.0.0");
    assert_eq!(ro["total_devices"], 4);
    // Both kinds at once are refused; so is a second app rollout of the same devices.
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.1.0", "app_release": "1.0.0"}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_rollout")
    );
    let r = s.admin_post("/api/v1/admin/rollouts", &json!({"app_release": "1.0.0"}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "no_devices"));

    let targeted: Vec<usize> = (0..4)
        .filter(|&i| !s.poll(&devs[i], None).json()["apps"].is_null())
        .collect();
    assert_eq!(targeted.len(), 2, "phase 1 is half the devices");
    let first = &devs[targeted[0]];
    let t = s.poll(first, None);
    let body = t.json();
    assert_eq!(body["apps"]["app_release_id"], a_id.as_str());
    assert_eq!(body["apps"]["rollout_id"], id.as_str());
    assert_eq!(body["apps"]["digest"], a["digest"]);
    assert_eq!(body["apps"]["set"], set(&format!("reg/shop@{DIGEST_A}")));
    assert!(body["release"].is_null(), "no OS target: {body}");
    let etag = t.etag.clone().unwrap();
    assert_ne!(etag, etag_before);
    assert_eq!(s.poll(first, Some(&etag)).status, 304);

    // Applying, then applied but still starting: nothing counts yet.
    s.report(
        first,
        &apps_report(None, Some((&a_id, "applying", "")), "none"),
    );
    s.report(
        first,
        &apps_report(Some(&a_id), Some((&a_id, "applied", "")), "starting"),
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(rollout_json(&s, &id)["phases"][0]["succeeded"], 0);
    // Healthy: success. The other one too: phase 2 starts.
    s.report(
        first,
        &apps_report(Some(&a_id), Some((&a_id, "applied", "")), "healthy"),
    );
    s.report(
        &devs[targeted[1]],
        &apps_report(Some(&a_id), Some((&a_id, "applied", "")), "healthy"),
    );
    wait_for("phase 2", || rollout_json(&s, &id)["phase"] == 1);
    // The server shows the device's apps.
    let d = s
        .admin_get(&format!("/api/v1/admin/devices/{}", first.id))
        .json();
    assert_eq!(d["apps"]["source"], "release", "{d}");
    assert_eq!(d["apps"]["services"][0]["health"], "healthy");
    assert_eq!(d["target_app_version"], "1.0.0");
    let hist: Vec<String> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(hist.iter().any(|h| h == "apps v applied"), "{hist:?}");

    // Phase 2: one rolls back (> 40% of... 1 of 4 = 25%, not yet), one refuses: paused.
    let rest: Vec<usize> = (0..4).filter(|i| !targeted.contains(i)).collect();
    s.report(
        &devs[rest[0]],
        &apps_report(
            None,
            Some((&a_id, "rolled_back", "shop: web unhealthy")),
            "healthy",
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(rollout_json(&s, &id)["state"], "active");
    s.report(
        &devs[rest[1]],
        &apps_report(None, Some((&a_id, "refused", "no space")), "healthy"),
    );
    wait_for("auto pause", || rollout_json(&s, &id)["state"] == "paused");
    let ro = rollout_json(&s, &id);
    let reasons: Vec<&str> = ro["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("rolled back") && r.contains("unhealthy")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("refused")), "{reasons:?}");

    // An OS rollout beside it on the same devices: both targets at once.
    assert_eq!(s.upload(&s.bundle("1.1.0", "qemu-x86_64")).status, 201);
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.1.0", "phases": [{"percent": 100}]}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    let t = s.poll(&devs[0], None).json();
    assert_eq!(t["release"]["version"], "1.1.0", "{t}");
    assert_eq!(t["apps"]["version"], "1.0.0", "{t}");

    // Abort the app rollout: apps are no longer targeted, the OS still is.
    let r = s.admin_post(&format!("/api/v1/admin/rollouts/{id}/abort"), &json!({}));
    assert_eq!(r.json()["state"], "aborted");
    let t = s.poll(&devs[0], None).json();
    assert!(t.get("apps").is_none(), "{t}");
    assert_eq!(t["release"]["version"], "1.1.0");

    // A pin targets one device's apps; unpinning removes it.
    let b = upload(&s, "2.0.0", set(&format!("reg/shop@{DIGEST_B}"))).json();
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin-apps", devs[3].id),
        &json!({"app_release": "2.0.0"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["pinned_app_release"], "2.0.0");
    let t = s.poll(&devs[3], None).json();
    assert_eq!(t["apps"]["app_release_id"], b["id"]);
    assert!(t["apps"]["rollout_id"].is_null());
    // A pinned device is left out of app rollouts.
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"app_release": "2.0.0", "selector": {"devices": [devs[3].id]}}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (409, "device_pinned"));
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin-apps", devs[3].id),
        &json!({"app_release": null}),
    );
    assert!(r.json()["pinned_app_release"].is_null());
    assert!(s.poll(&devs[3], None).json().get("apps").is_none());
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin-apps", devs[3].id),
        &json!({"app_release": "nope"}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "unknown_app_release")
    );
}

#[test]
fn bad_apps_reports_are_refused() {
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut d = device(1, "qemu-x86_64");
    s.enrolled(&mut d, &key);
    let r = s.report(&d, &json!({"apps": {"source": "builtin", "nonsense": 1}}));
    assert_eq!(r.status, 422, "{}", r.json());
    let long = "x".repeat(100);
    let r = s.report(
        &d,
        &json!({"apps": {"source": "builtin", "services": [
        {"app": long, "service": "web", "image": "i", "state": "running", "health": "none"}]}}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_field"));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("apps.services[].app")
    );
    // An old agent's report (no apps) still works.
    assert_eq!(s.report(&d, &json!({"os_version": "1.0.0"})).status, 204);
}
