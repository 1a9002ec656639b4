//! Two server processes (here: two servers with their own runtimes and listeners) on one database
//! and one artifact store, as behind a load balancer: every request may land on either, and
//! nothing depends on which one saw the previous request. With `OTTER_TEST_POSTGRES` set this is
//! the PostgreSQL scale-out setup; without, two servers on one SQLite file.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use otter_proto::{Challenge, EnrollRequest};
use serde_json::json;

#[test]
fn requests_can_land_on_any_server() {
    let a = start(|_| {});
    let (b_base, _b_rt) = start_peer(&a);
    let b = |path: &str| format!("{b_base}{path}");

    // The admin token made by the first works on the second.
    let r = call(
        "GET",
        &b("/api/v1/admin/whoami"),
        Some(&a.admin_token),
        &[],
        None,
        "",
    );
    assert_eq!(r.status, 200);

    // A challenge from A is accepted by B.
    let key = a.enrollment_key("k");
    let mut dev = device(1, "qemu-x86_64");
    let ch: Challenge = serde_json::from_slice(
        &call(
            "GET",
            &a.url(otter_proto::paths::CHALLENGE),
            None,
            &[],
            None,
            "",
        )
        .bytes,
    )
    .unwrap();
    let req = EnrollRequest::signed(
        &dev.key,
        &ch.challenge,
        "qemu-x86_64",
        None,
        Some(key),
        None,
    );
    let body = serde_json::to_vec(&req).unwrap();
    let r = call(
        "POST",
        &b(otter_proto::paths::ENROLL),
        None,
        &[],
        Some(&body),
        "application/json",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    dev.id = r.json()["device_id"].as_str().unwrap().to_owned();
    dev.token = r.json()["token"].as_str().unwrap().to_owned();

    // The token from B works on A; the ETag learnt on A is valid on B.
    let etag = a.poll(&dev, None).etag.unwrap();
    let poll_b = |etag: &str| {
        call(
            "GET",
            &b(otter_proto::paths::TARGET),
            Some(&dev.token),
            &[("If-None-Match", etag)],
            None,
            "",
        )
    };
    assert_eq!(poll_b(&etag).status, 304);

    // A release uploaded through B, pinned through A: B answers with it and serves the artifact
    // from the shared store.
    let bundle = a.bundle("1.1.0", "qemu-x86_64");
    let bytes = std::fs::read(&bundle).unwrap();
    let r = call(
        "POST",
        &b("/api/v1/admin/releases"),
        Some(&a.admin_token),
        &[],
        Some(&bytes),
        "application/octet-stream",
    );
    assert_eq!(r.status, 201);
    let rid = r.json()["id"].as_str().unwrap().to_owned();
    let r = a.admin_post(
        &format!("/api/v1/admin/devices/{}/pin", dev.id),
        &json!({"release": rid}),
    );
    assert_eq!(r.status, 200);
    let r = poll_b(&etag);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["release"]["release_id"], rid.as_str());
    let art = call(
        "GET",
        &b(&format!("/api/v1/device/artifacts/{rid}")),
        Some(&dev.token),
        &[],
        None,
        "",
    );
    assert_eq!(art.bytes, bytes);

    // Revocation through B stops the token on A at once.
    let r = call(
        "POST",
        &b(&format!("/api/v1/admin/devices/{}/revoke", dev.id)),
        Some(&a.admin_token),
        &[],
        Some(b"{}"),
        "application/json",
    );
    assert_eq!(r.status, 200);
    assert_eq!(a.poll(&dev, None).error_code(), "token_revoked");
}

#[test]
fn rollouts_advance_once_with_two_tickers() {
    let a = start(|_| {});
    let (_b_base, _b_rt) = start_peer(&a);
    let key = a.enrollment_key("k");
    let mut devs: Vec<TestDevice> = (0..10).map(|i| device(i, "b")).collect();
    for d in &mut devs {
        a.enrolled(d, &key);
    }
    assert_eq!(a.upload(&a.bundle("1.1.0", "b")).status, 201);
    let r = a.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"release": "1.1.0", "phases": [{"percent": 10}, {"percent": 20}, {"percent": 100}], "success_threshold": 1.0}),
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let status = || a.admin_get(&format!("/api/v1/admin/rollouts/{id}")).json();
    // Each device commits as soon as it is targeted; both servers' tickers evaluate.
    wait_for("completion", || {
        for d in &devs {
            if !a.poll(d, None).json()["release"].is_null() {
                a.report(
                    d,
                    &json!({"update": {"version": "1.1.0", "phase": "committed"}}),
                );
            }
        }
        status()["state"] == "completed"
    });
    let events = status()["events"].clone();
    let started = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "phase_started")
        .count();
    assert_eq!(started, 2, "each phase started exactly once: {events}");
    let completed = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rollout_completed")
        .count();
    assert_eq!(completed, 1);
}
