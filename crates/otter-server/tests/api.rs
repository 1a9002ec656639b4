//! The device and admin APIs end to end over HTTP, on SQLite (or PostgreSQL when
//! `OTTER_TEST_POSTGRES` is set: see scripts/postgres).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::json;

#[test]
fn enrollment_with_key_pending_accept_reject_revoke() {
    let s = start(|_| {});
    let key = s.enrollment_key("factory");

    // With a key: accepted at once.
    let mut a = device(1, "qemu-x86_64");
    s.enrolled(&mut a, &key);
    assert_eq!(a.id.len(), 16);
    assert_eq!(s.poll(&a, None).status, 200);

    // Without: pending, no token, until an admin accepts.
    let mut b = device(2, "qemu-x86_64");
    let r = s.enroll(&b, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "pending");
    assert!(r.json()["token"].is_null());
    b.id = r.json()["device_id"].as_str().unwrap().to_owned();
    let pending = s.admin_get("/api/v1/admin/devices?status=pending");
    assert_eq!(pending.json().as_array().unwrap().len(), 1);
    assert_eq!(s.enroll(&b, None).json()["status"], "pending");
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/accept", b.id),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let r = s.enroll(&b, None);
    assert_eq!(r.json()["status"], "accepted");
    b.token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(s.poll(&b, None).status, 200);

    // Rejected devices are told so.
    let c = device(3, "qemu-x86_64");
    let cid = s.enroll(&c, None).json()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.admin_post(&format!("/api/v1/admin/devices/{cid}/reject"), &json!({}));
    let r = s.enroll(&c, None);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "device_rejected")
    );

    // Revoking a device kills its token.
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/revoke", a.id),
        &json!({}),
    );
    assert_eq!(r.status, 200);
    let r = s.poll(&a, None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "token_revoked"));
    assert_eq!(s.enroll(&a, Some(&key)).error_code(), "device_revoked");

    // Re-enrolling gives a new token and revokes the old one.
    let old = b.token.clone();
    let r = s.enroll(&b, None);
    b.token = r.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(old, b.token);
    let mut stale = device(2, "qemu-x86_64");
    stale.token = old;
    assert_eq!(s.poll(&stale, None).error_code(), "token_revoked");

    // A revoked enrollment key no longer accepts devices.
    let keys = s.admin_get("/api/v1/admin/enrollment-keys").json();
    let kid = keys[0]["id"].as_str().unwrap();
    assert!(keys[0].get("key").is_none(), "secrets are never listed");
    let r = s.admin_post(
        &format!("/api/v1/admin/enrollment-keys/{kid}/revoke"),
        &json!({}),
    );
    assert_eq!(r.status, 204);
    let r = s.enroll(&device(4, "qemu-x86_64"), Some(&key));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "enrollment_key_revoked")
    );

    // The history records who did what.
    let d = s
        .admin_get(&format!("/api/v1/admin/devices/{}", b.id))
        .json();
    let actions: Vec<&str> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"device_pending"), "{actions:?}");
    assert!(actions.contains(&"device_accepted"), "{actions:?}");
    assert!(d["history"][0]["at_ms"].as_i64().unwrap() > 0);
}

#[test]
fn enrollment_proof_is_checked() {
    let s = start(|_| {});
    let dev = device(1, "qemu-x86_64");
    let good = otter_proto::EnrollRequest::signed(
        &dev.key,
        &s.challenge(),
        "qemu-x86_64",
        None,
        None,
        None,
    );
    // Signature over another board.
    let mut bad = good.clone();
    bad.compatible = "rpi4".into();
    let r = s.post_json(
        otter_proto::paths::ENROLL,
        None,
        &serde_json::to_value(&bad).unwrap(),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_proof"));
    // A challenge the server did not issue.
    let forged = otter_proto::EnrollRequest::signed(
        &dev.key,
        "123.abc.def",
        "qemu-x86_64",
        None,
        None,
        None,
    );
    let r = s.post_json(
        otter_proto::paths::ENROLL,
        None,
        &serde_json::to_value(&forged).unwrap(),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_challenge"));
    // An unknown enrollment key (signed: the key is part of the proof).
    let k = otter_proto::EnrollRequest::signed(
        &dev.key,
        &s.challenge(),
        "qemu-x86_64",
        None,
        Some("otk_nope".into()),
        None,
    );
    let r = s.post_json(
        otter_proto::paths::ENROLL,
        None,
        &serde_json::to_value(&k).unwrap(),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "bad_enrollment_key")
    );
    // Nothing was written by the refused attempts.
    assert_eq!(
        s.admin_get("/api/v1/admin/devices")
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r = s.post_json(
        otter_proto::paths::ENROLL,
        None,
        &serde_json::to_value(&good).unwrap(),
    );
    assert_eq!(r.json()["status"], "pending");
}

#[test]
fn enrollment_is_rate_limited() {
    let s = start(|c| c.enroll_rate_per_minute = 3);
    let codes: Vec<u16> = (0..5)
        .map(|i| s.enroll(&device(i, "x"), None).status)
        .collect();
    assert_eq!(&codes[..3], &[200, 200, 200]);
    assert_eq!(codes[4], 429);
    let r = s.enroll(&device(9, "x"), None);
    assert_eq!(r.error_code(), "rate_limited");
}

#[test]
fn poll_etag_pin_and_artifact_ranges() {
    let s = start(|c| c.poll_interval = std::time::Duration::from_secs(100));
    let key = s.enrollment_key("k");
    let mut a = device(1, "qemu-x86_64");
    let mut b = device(2, "qemu-x86_64");
    s.enrolled(&mut a, &key);
    s.enrolled(&mut b, &key);

    let r = s.poll(&a, None);
    assert_eq!(r.status, 200);
    let etag = r.etag.clone().unwrap();
    assert!(r.json()["release"].is_null());
    let iv: u64 = r.poll_interval.unwrap().parse().unwrap();
    assert!((90..=110).contains(&iv), "jittered around 100: {iv}");
    let r = s.poll(&a, Some(&etag));
    assert_eq!(r.status, 304);
    assert!(r.bytes.is_empty());
    assert!(r.poll_interval.is_some());

    let bundle = s.bundle("1.1.0", "qemu-x86_64");
    let up = s.upload(&bundle);
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.bytes));
    let rel = up.json();
    let rid = rel["id"].as_str().unwrap().to_owned();
    let size = std::fs::read(&bundle).unwrap().len() as u64;
    assert_eq!(rel["size"], size);
    assert_eq!(rel["version"], "1.1.0");
    // Same version again: refused.
    assert_eq!(s.upload(&bundle).error_code(), "release_exists");

    // Before a pin, the artifact is not for this device.
    let url = s.url(&format!("/api/v1/device/artifacts/{rid}"));
    let r = call("GET", &url, Some(&a.token), &[], None, "");
    assert_eq!((r.status, r.error_code().as_str()), (403, "not_targeted"));

    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin", a.id),
        &json!({"release": "1.1.0"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["target_version"], "1.1.0");
    let r = s.poll(&a, Some(&etag));
    assert_eq!(r.status, 200, "the target changed, so the ETag did");
    let t = r.json();
    assert_eq!(t["release"]["version"], "1.1.0");
    assert_eq!(t["release"]["size"], size);
    assert!(t["release"]["rollout_id"].is_null());
    let new_etag = r.etag.unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(s.poll(&a, Some(&new_etag)).status, 304);
    // b is not affected.
    assert_eq!(s.poll(&b, Some(&etag)).status, 304);

    let full = call("GET", &url, Some(&a.token), &[], None, "");
    assert_eq!(full.status, 200);
    assert_eq!(full.bytes, std::fs::read(&bundle).unwrap());
    let part = call(
        "GET",
        &url,
        Some(&a.token),
        &[("Range", "bytes=10-19")],
        None,
        "",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, full.bytes[10..20]);
    assert_eq!(part.content_range.unwrap(), format!("bytes 10-19/{size}"));
    let tail = call(
        "GET",
        &url,
        Some(&a.token),
        &[("Range", "bytes=-5")],
        None,
        "",
    );
    assert_eq!(tail.bytes, full.bytes[full.bytes.len() - 5..]);
    let r = call(
        "GET",
        &url,
        Some(&a.token),
        &[("Range", &format!("bytes={size}-"))],
        None,
        "",
    );
    assert_eq!(r.status, 416);
    // Another device may not fetch it.
    let r = call("GET", &url, Some(&b.token), &[], None, "");
    assert_eq!((r.status, r.error_code().as_str()), (403, "not_targeted"));
    // Nor without a token.
    assert_eq!(call("GET", &url, None, &[], None, "").status, 401);

    // Unpin: target none again, ETag back to the first.
    s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin", a.id),
        &json!({"release": null}),
    );
    assert_eq!(s.poll(&a, Some(&etag)).status, 304);
}

#[test]
fn bad_input_gets_json_errors_and_writes_nothing() {
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut a = device(1, "qemu-x86_64");
    s.enrolled(&mut a, &key);
    let report = s.url(otter_proto::paths::REPORT);

    let r = call(
        "POST",
        &report,
        Some(&a.token),
        &[],
        Some(b"{not json"),
        "application/json",
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = s.report(&a, &json!({"uptime_secs": "long"}));
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid_body"));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("uptime_secs")
    );
    let r = s.report(&a, &json!({"surprise": 1}));
    assert_eq!(r.status, 422);
    let r = s.report(&a, &json!({"booted_slot": "c"}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_field"));
    let r = call(
        "POST",
        &report,
        Some(&a.token),
        &[],
        Some(b"{}"),
        "text/plain",
    );
    assert_eq!(r.status, 415);
    let huge = vec![b' '; otter_proto::MAX_JSON_BODY + 10];
    let r = call(
        "POST",
        &report,
        Some(&a.token),
        &[],
        Some(&huge),
        "application/json",
    );
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    let r = call(
        "POST",
        &report,
        Some("otd_unknown"),
        &[],
        Some(b"{}"),
        "application/json",
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "unknown_token"));
    let r = call(
        "GET",
        &s.url("/api/v1/admin/devices"),
        Some(&a.token),
        &[],
        None,
        "",
    );
    assert_eq!(r.status, 401, "a device token is not an admin token");
    let r = call("GET", &s.url("/api/v1/nothing"), None, &[], None, "");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));

    // A valid report is stored and shown.
    let r = s.report(
        &a,
        &json!({"os_version": "1.0.0", "booted_slot": "a", "health": "healthy", "uptime_secs": 5, "free_bytes": 1000,
                "update": {"version": "1.1.0", "phase": "downloading", "progress": 40}}),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.bytes));
    let d = s
        .admin_get(&format!("/api/v1/admin/devices/{}", a.id))
        .json();
    assert_eq!(d["booted_slot"], "a");
    assert_eq!(d["update"]["progress"], 40);
    assert_eq!(d["online"], true);

    // Logs: batches in order, too big refused whole.
    let r = s.post_json(
        otter_proto::paths::LOGS,
        Some(&a.token),
        &json!({"entries": [{"ts_ms": 1, "message": "one"}, {"ts_ms": 2, "level": "err", "source": "otterd", "message": "two"}]}),
    );
    assert_eq!(r.json()["accepted"], 2);
    let too_many: Vec<_> = (0..otter_proto::MAX_LOG_BATCH + 1)
        .map(|i| json!({"ts_ms": i, "message": "x"}))
        .collect();
    let r = s.post_json(
        otter_proto::paths::LOGS,
        Some(&a.token),
        &json!({ "entries": too_many }),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "batch_too_large")
    );
    let logs = s
        .admin_get(&format!("/api/v1/admin/devices/{}/logs", a.id))
        .json();
    let msgs: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["one", "two"]);
    let after = logs[0]["id"].as_i64().unwrap();
    let later = s
        .admin_get(&format!(
            "/api/v1/admin/devices/{}/logs?after={after}",
            a.id
        ))
        .json();
    assert_eq!(later.as_array().unwrap().len(), 1);

    // Bundles: unsigned, foreign-signed, garbage: refused, nothing recorded or stored.
    let good = s.bundle("2.0.0", "qemu-x86_64");
    let reader = otter_bundle::BundleReader::open(good.to_str().unwrap()).unwrap();
    let all = std::fs::read(&good).unwrap();
    let mut unsigned = otter_bundle::format::encode_header(reader.manifest_bytes(), &[]).unwrap();
    unsigned.extend_from_slice(&all[reader.payload_offset() as usize..]);
    let unsigned_path = s.dir.path().join("unsigned.otb");
    std::fs::write(&unsigned_path, unsigned).unwrap();
    let r = s.upload(&unsigned_path);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "unsigned_bundle")
    );
    assert!(
        !r.json()["message"].as_str().unwrap().contains(".upload-"),
        "no temp paths in messages"
    );
    let foreign_key = otter_bundle::SigningKey::generate();
    let foreign_dir = s.dir.path().join("foreign");
    std::fs::create_dir_all(&foreign_dir).unwrap();
    let foreign = make_bundle(&foreign_dir, "2.0.0", "qemu-x86_64", &foreign_key);
    let r = s.upload(&foreign);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "untrusted_signer")
    );
    let garbage = s.dir.path().join("garbage.otb");
    std::fs::write(&garbage, b"hello world").unwrap();
    assert_eq!(s.upload(&garbage).error_code(), "invalid_bundle");
    let mut truncated = all.clone();
    truncated.truncate(all.len() - 3);
    std::fs::write(&garbage, truncated).unwrap();
    assert_eq!(s.upload(&garbage).error_code(), "invalid_bundle");
    assert_eq!(
        s.admin_get("/api/v1/admin/releases")
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let stored = s.dir.path().join("data/artifacts/releases");
    assert!(!stored.exists() || std::fs::read_dir(&stored).unwrap().next().is_none());

    // An incompatible board.
    let rpi = s.bundle("2.0.0", "rpi4");
    assert_eq!(s.upload(&rpi).status, 201);
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin", a.id),
        &json!({"release": "2.0.0"}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "incompatible_board")
    );
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "2.0.0", "selector": {"devices": [a.id]}}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "incompatible_board")
    );
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "2.0.0", "selector": {"devices": ["nope"]}}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_device"));
    assert_eq!(
        s.admin_get("/api/v1/admin/rollouts")
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn trusted_keys_through_the_api() {
    let s = start(|c| c.trusted_keys.clear());
    let bundle = s.bundle("1.0.0", "x");
    let r = s.upload(&bundle);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "no_trusted_keys")
    );
    let r = s.admin_post("/api/v1/admin/keys", &json!({"pem": "nope"}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_key"));
    let pem = std::fs::read_to_string(s.keys_dir.join("release.pub")).unwrap();
    let r = s.admin_post("/api/v1/admin/keys", &json!({ "pem": pem }));
    assert_eq!(r.status, 201);
    assert_eq!(
        s.admin_post("/api/v1/admin/keys", &json!({ "pem": pem }))
            .status,
        409
    );
    let r = s.upload(&bundle);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["signer"], s.signing_key.public().fingerprint());
}

fn rollout_json(s: &TestServer, id: &str) -> serde_json::Value {
    s.admin_get(&format!("/api/v1/admin/rollouts/{id}")).json()
}

#[test]
fn rollout_advances_on_success_and_pauses_on_failures() {
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut devs: Vec<TestDevice> = (0..20).map(|i| device(i, "qemu-x86_64")).collect();
    for d in &mut devs {
        s.enrolled(d, &key);
    }
    // One device of another board is never targeted.
    let mut other = device(99, "rpi4");
    s.enrolled(&mut other, &key);
    assert_eq!(s.upload(&s.bundle("1.1.0", "qemu-x86_64")).status, 201);
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.1.0", "phases": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
                "success_threshold": 1.0, "failure_threshold": 0.2}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    let ro = r.json();
    let id = ro["id"].as_str().unwrap().to_owned();
    assert_eq!(ro["total_devices"], 20);
    assert_eq!(ro["phases"][0]["devices"], 2);
    assert_eq!(ro["phases"][1]["devices"], 8);

    let targeted = |devs: &[TestDevice]| -> Vec<usize> {
        devs.iter()
            .enumerate()
            .filter(|(_, d)| !s.poll(d, None).json()["release"].is_null())
            .map(|(i, _)| i)
            .collect()
    };
    let phase0 = targeted(&devs);
    assert_eq!(phase0.len(), 2);
    assert!(s.poll(&other, None).json()["release"].is_null());
    let t = s.poll(&devs[phase0[0]], None).json();
    assert_eq!(t["release"]["rollout_id"], id.as_str());

    // Both succeed (one commits, one reports the version running): phase 2 starts.
    s.report(
        &devs[phase0[0]],
        &json!({"update": {"version": "1.1.0", "phase": "committed"}}),
    );
    s.report(&devs[phase0[1]], &json!({"os_version": "1.1.0"}));
    wait_for("phase 2", || rollout_json(&s, &id)["phase"] == 1);
    let phase1 = targeted(&devs);
    assert_eq!(phase1.len(), 10);

    // 3 of 10 fail (install error, rollback, rollback event) > 20%: the rollout pauses itself.
    let new: Vec<usize> = phase1
        .iter()
        .copied()
        .filter(|i| !phase0.contains(i))
        .collect();
    s.report(
        &devs[new[0]],
        &json!({"update": {"version": "1.1.0", "phase": "failed", "error": "disk full"}}),
    );
    s.report(
        &devs[new[1]],
        &json!({"update": {"version": "1.1.0", "phase": "rolled_back", "error": "health check"}}),
    );
    s.report(
        &devs[new[2]],
        &json!({"rollbacks": [{"version": "1.1.0", "reason": "kernel panic"}]}),
    );
    wait_for("auto pause", || rollout_json(&s, &id)["state"] == "paused");
    let ro = rollout_json(&s, &id);
    assert!(
        ro["reason"].as_str().unwrap().contains("3 of 10"),
        "{}",
        ro["reason"]
    );
    assert_eq!(ro["failures"].as_array().unwrap().len(), 3);
    let reasons: Vec<&str> = ro["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("disk full")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("kernel panic")),
        "{reasons:?}"
    );
    let events: Vec<&str> = ro["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"rollout_paused")
            && events.contains(&"phase_started")
            && events.contains(&"rollout_created"),
        "{events:?}"
    );
    let paused_by = &ro["events"][0];
    assert_eq!(paused_by["actor"], "server");
    // Paused: no further phase even when the rest succeed.
    for &i in &new[3..] {
        s.report(
            &devs[i],
            &json!({"update": {"version": "1.1.0", "phase": "committed"}}),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(rollout_json(&s, &id)["phase"], 1);

    // Pause / resume by hand; resume acknowledges the failures so far.
    let r = s.admin_post(&format!("/api/v1/admin/rollouts/{id}/pause"), &json!({}));
    assert_eq!((r.status, r.error_code().as_str()), (409, "bad_state"));
    let r = s.admin_post(&format!("/api/v1/admin/rollouts/{id}/resume"), &json!({}));
    assert_eq!(r.status, 200);
    // 7 of 10 succeeded < 100%: stays in phase 2 (success threshold 1.0).
    std::thread::sleep(std::time::Duration::from_millis(400));
    let ro = rollout_json(&s, &id);
    assert_eq!(
        (ro["state"].as_str(), ro["phase"].as_i64()),
        (Some("active"), Some(1))
    );

    // Abort: devices are no longer targeted.
    let r = s.admin_post(&format!("/api/v1/admin/rollouts/{id}/abort"), &json!({}));
    assert_eq!(r.json()["state"], "aborted");
    assert!(targeted(&devs).is_empty());
    let ro = rollout_json(&s, &id);
    assert_eq!(ro["events"][0]["actor"], "admin:admin");
}

#[test]
fn rollout_counts_silent_devices_and_completes() {
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut devs: Vec<TestDevice> = (0..4).map(|i| device(i, "b")).collect();
    for d in &mut devs {
        s.enrolled(d, &key);
    }
    s.admin_post(
        &format!("/api/v1/admin/devices/{}/tags", devs[0].id),
        &json!({"add": ["lab"]}),
    );
    s.admin_post(
        &format!("/api/v1/admin/devices/{}/tags", devs[1].id),
        &json!({"add": ["lab", "x"]}),
    );
    assert_eq!(s.upload(&s.bundle("1.1.0", "b")).status, 201);
    assert_eq!(s.upload(&s.bundle("1.2.0", "b")).status, 201);
    // Tag selector: only the lab devices; one phase; all succeed → completed.
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.1.0", "selector": {"tags": ["lab"]}, "phases": [{"percent": 100}]}),
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["total_devices"], 2);
    for d in &devs[..2] {
        s.report(
            d,
            &json!({"update": {"version": "1.1.0", "phase": "committed"}}),
        );
    }
    wait_for("completion", || {
        rollout_json(&s, &id)["state"] == "completed"
    });

    // A device that stays silent past the deadline counts as failed.
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.2.0", "selector": {"devices": [devs[2].id, devs[3].id]}, "phases": [{"percent": 100}],
                "device_deadline_secs": 1, "failure_threshold": 0.4}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    let id2 = r.json()["id"].as_str().unwrap().to_owned();
    s.report(
        &devs[2],
        &json!({"update": {"version": "1.2.0", "phase": "committed"}}),
    );
    wait_for("silent device fails", || {
        rollout_json(&s, &id2)["state"] == "paused"
    });
    let ro = rollout_json(&s, &id2);
    assert!(
        ro["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("silent")
    );
    assert_eq!(ro["failures"][0]["device_id"], devs[3].id.as_str());
    // Devices in an unfinished rollout are not taken by another.
    let r = s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.2.0", "selector": {"devices": [devs[3].id]}}),
    );
    assert_eq!(r.error_code(), "device_in_rollout");
}

#[test]
fn bundle_uploads_are_not_bound_by_the_json_limit_but_by_their_own() {
    let s = start(|c| c.max_bundle_size = 6 << 20);
    let dir = s.dir.path();
    // 3 MiB of incompressible bytes: far above the 1 MiB JSON limit, below the bundle limit.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let root = dir.join("big.img");
    std::fs::write(&root, &data).unwrap();
    let opts = |v: &str| otter_bundle::CreateOptions {
        compatible: "b".into(),
        version: v.into(),
        chunk_size: 65536,
        zstd_level: 1,
    };
    let big = dir.join("big.otb");
    otter_bundle::create_bundle(
        &big,
        &[("rootfs", root.as_path())],
        &opts("1.0.0"),
        &[&s.signing_key],
    )
    .unwrap();
    let r = s.upload(&big);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    assert!(r.json()["size"].as_u64().unwrap() > 3 << 20);

    // Twice the data: above --max-bundle-size.
    let mut twice = data.clone();
    twice.extend(data.iter().map(|b| b.wrapping_add(1)));
    std::fs::write(&root, &twice).unwrap();
    let huge = dir.join("huge.otb");
    otter_bundle::create_bundle(
        &huge,
        &[("rootfs", root.as_path())],
        &opts("2.0.0"),
        &[&s.signing_key],
    )
    .unwrap();
    let r = s.upload(&huge);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "bundle_too_large")
    );
    assert_eq!(
        s.admin_get("/api/v1/admin/releases")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
