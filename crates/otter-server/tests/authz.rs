//! The authorization matrix: for every route of the API, an anonymous caller, an admin, the
//! device itself, another device, a revoked device, a rejected device and a device still pending
//! get exactly what they should. A new route must be added here (the test fails on a path of
//! `otter_proto::paths::ALL` it does not cover).

mod common;

use common::{Resp, call, device, start};
use otter_proto::paths::{self, admin as a};
use serde_json::json;
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    Admin,
    Device,
    OtherDevice,
    Revoked,
    Rejected,
}

/// What a caller must get: let through (any answer but 401/403), or refused with this status
/// and error code.
#[derive(Debug, PartialEq)]
enum Expect {
    Through,
    Refused(u16, &'static str),
}

fn admin_route(who: Who) -> Expect {
    match who {
        Who::Admin => Expect::Through,
        Who::Anonymous => Expect::Refused(401, "missing_token"),
        // Device tokens are never admin tokens.
        _ => Expect::Refused(401, "unknown_token"),
    }
}

fn device_route(who: Who) -> Expect {
    match who {
        Who::Device | Who::OtherDevice => Expect::Through,
        Who::Anonymous => Expect::Refused(401, "missing_token"),
        Who::Admin => Expect::Refused(401, "unknown_token"),
        Who::Revoked => Expect::Refused(401, "token_revoked"),
        Who::Rejected => Expect::Refused(401, "token_revoked"),
    }
}

fn check(r: &Resp, what: &str, who: Who, want: &Expect) {
    let body = String::from_utf8_lossy(&r.bytes);
    match want {
        Expect::Through => assert!(
            r.status != 401 && r.status != 403 && r.status < 500,
            "{what} as {who:?}: {} {body}",
            r.status
        ),
        Expect::Refused(status, code) => {
            assert_eq!(r.status, *status, "{what} as {who:?}: {body}");
            assert_eq!(r.error_code(), *code, "{what} as {who:?}: {body}");
        }
    }
}

/// Who may call it.
type Rule = fn(Who) -> Expect;
/// (method, path pattern, filled path, body, rule)
type Route = (&'static str, &'static str, String, Option<Vec<u8>>, Rule);

#[test]
fn every_route_for_every_caller() {
    let s = start(|_| {});
    let key = s.enrollment_key("lab");
    let mut dev = device(1, "board-x");
    s.enrolled(&mut dev, &key);
    let mut other = device(2, "board-y");
    s.enrolled(&mut other, &key);
    let mut revoked = device(3, "board-x");
    s.enrolled(&mut revoked, &key);
    let r = s.admin_post(&paths::fill(a::DEVICE_REVOKE, &[&revoked.id]), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let mut rejected = device(4, "board-x");
    s.enrolled(&mut rejected, &key);
    let r = s.admin_post(&paths::fill(a::DEVICE_REJECT, &[&rejected.id]), &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));

    // A pending device (no enrollment key) is given no token, before and after a second try,
    // and is not accepted by enrolling again.
    let pending = device(5, "board-x");
    for _ in 0..2 {
        let r = s.enroll(&pending, None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        assert_eq!(r.json()["status"], "pending");
        assert!(r.json()["token"].is_null(), "{}", r.json());
    }

    // A release targeted at `dev` only: its artifact is for `dev`, not for `other`.
    let bundle = s.bundle("1.1.0", "board-x");
    let up = s.upload(&bundle);
    assert_eq!(up.status, 201);
    let release_id = up.json()["id"].as_str().unwrap().to_owned();
    let r = s.admin_post(
        &paths::fill(a::DEVICE_PIN, &[&dev.id]),
        &json!({"release": "1.1.0"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));

    let token = |who: Who| -> Option<String> {
        match who {
            Who::Anonymous => None,
            Who::Admin => Some(s.admin_token.clone()),
            Who::Device => Some(dev.token.clone()),
            Who::OtherDevice => Some(other.token.clone()),
            Who::Revoked => Some(revoked.token.clone()),
            Who::Rejected => Some(rejected.token.clone()),
        }
    };
    let everyone = [
        Who::Anonymous,
        Who::Admin,
        Who::Device,
        Who::OtherDevice,
        Who::Revoked,
        Who::Rejected,
    ];
    let report = serde_json::to_vec(&json!({"os_version": "1.0.0", "booted_slot": "A"})).unwrap();
    let logs = serde_json::to_vec(&json!({"entries": [{"ts_ms": 1, "message": "x"}]})).unwrap();
    let dev_id = dev.id.clone();
    // (method, pattern, filled path, body, expectation by caller)
    let routes: Vec<Route> = vec![
        (
            "GET",
            paths::CHALLENGE,
            paths::CHALLENGE.into(),
            None,
            |_| Expect::Through,
        ),
        (
            "GET",
            paths::TARGET,
            paths::TARGET.into(),
            None,
            device_route,
        ),
        (
            "POST",
            paths::REPORT,
            paths::REPORT.into(),
            Some(report.clone()),
            device_route,
        ),
        (
            "POST",
            paths::LOGS,
            paths::LOGS.into(),
            Some(logs.clone()),
            device_route,
        ),
        ("GET", a::WHOAMI, a::WHOAMI.into(), None, admin_route),
        ("GET", a::DEVICES, a::DEVICES.into(), None, admin_route),
        (
            "GET",
            a::DEVICE,
            paths::fill(a::DEVICE, &[&dev_id]),
            None,
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_ACCEPT,
            paths::fill(a::DEVICE_ACCEPT, &[&dev_id]),
            Some(b"{}".to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_REJECT,
            paths::fill(a::DEVICE_REJECT, &["no-such-device"]),
            Some(b"{}".to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_REVOKE,
            paths::fill(a::DEVICE_REVOKE, &["no-such-device"]),
            Some(b"{}".to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_TAGS,
            paths::fill(a::DEVICE_TAGS, &[&dev_id]),
            Some(br#"{"add":["t"],"remove":[]}"#.to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_PIN,
            paths::fill(a::DEVICE_PIN, &[&dev_id]),
            Some(br#"{"release":"1.1.0"}"#.to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::DEVICE_PIN_APPS,
            paths::fill(a::DEVICE_PIN_APPS, &[&dev_id]),
            Some(br#"{"app_release":null}"#.to_vec()),
            admin_route,
        ),
        (
            "GET",
            a::DEVICE_LOGS,
            paths::fill(a::DEVICE_LOGS, &[&dev_id]),
            None,
            admin_route,
        ),
        (
            "GET",
            a::ENROLLMENT_KEYS,
            a::ENROLLMENT_KEYS.into(),
            None,
            admin_route,
        ),
        (
            "POST",
            a::ENROLLMENT_KEYS,
            a::ENROLLMENT_KEYS.into(),
            Some(br#"{"name":"k2"}"#.to_vec()),
            admin_route,
        ),
        (
            "POST",
            a::ENROLLMENT_KEY_REVOKE,
            paths::fill(a::ENROLLMENT_KEY_REVOKE, &["no-such-key"]),
            Some(b"{}".to_vec()),
            admin_route,
        ),
        ("GET", a::KEYS, a::KEYS.into(), None, admin_route),
        ("GET", a::RELEASES, a::RELEASES.into(), None, admin_route),
        (
            "GET",
            a::APP_RELEASES,
            a::APP_RELEASES.into(),
            None,
            admin_route,
        ),
        (
            "GET",
            a::APP_RELEASE,
            paths::fill(a::APP_RELEASE, &["no-such-release"]),
            None,
            admin_route,
        ),
        ("GET", a::ROLLOUTS, a::ROLLOUTS.into(), None, admin_route),
        (
            "GET",
            a::ROLLOUT,
            paths::fill(a::ROLLOUT, &["no-such-rollout"]),
            None,
            admin_route,
        ),
        (
            "POST",
            a::ROLLOUT_ACTION,
            paths::fill(a::ROLLOUT_ACTION, &["no-such-rollout", "pause"]),
            Some(b"{}".to_vec()),
            admin_route,
        ),
        ("GET", a::AUDIT, a::AUDIT.into(), None, admin_route),
    ];
    let mut covered = BTreeSet::new();
    for (method, pattern, path, body, rule) in &routes {
        covered.insert(*pattern);
        for who in everyone {
            let t = token(who);
            let r = call(
                method,
                &s.url(path),
                t.as_deref(),
                &[],
                body.as_deref(),
                "application/json",
            );
            check(&r, &format!("{method} {path}"), who, &rule(who));
        }
    }
    // The enrollment route takes no token: anyone may ask (the proof is the signature).
    covered.insert(paths::ENROLL);
    // Uploads (releases, app releases, rollouts, keys by POST) need the admin too.
    for (pattern, ct) in [
        (a::RELEASES, "application/octet-stream"),
        (a::APP_RELEASES, "application/json"),
        (a::ROLLOUTS, "application/json"),
        (a::KEYS, "application/json"),
    ] {
        for who in everyone.into_iter().filter(|w| *w != Who::Admin) {
            let r = call(
                "POST",
                &s.url(pattern),
                token(who).as_deref(),
                &[],
                Some(b"{}"),
                ct,
            );
            check(&r, &format!("POST {pattern}"), who, &admin_route(who));
        }
    }
    for p in paths::ALL {
        assert!(
            covered.contains(p),
            "{p} is not in the authorization matrix"
        );
    }

    // Artifacts: the device it is targeted at may read it; another device may not.
    let art = paths::artifact(&release_id);
    let r = call("GET", &s.url(&art), Some(&dev.token), &[], None, "");
    assert_eq!(r.status, 200);
    for who in [
        Who::OtherDevice,
        Who::Anonymous,
        Who::Admin,
        Who::Revoked,
        Who::Rejected,
    ] {
        let r = call("GET", &s.url(&art), token(who).as_deref(), &[], None, "");
        let want = match who {
            Who::OtherDevice => Expect::Refused(403, "not_targeted"),
            w => device_route(w),
        };
        check(&r, &format!("GET {art}"), who, &want);
    }
}
