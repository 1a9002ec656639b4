//! Findings of the outside security review (issue 14, part 4): each test failed before its fix.

mod common;

use common::*;

/// Finding 1: the loser of two concurrent uploads of one bundle must not delete the winner's
/// stored artifact.
#[test]
fn concurrent_uploads_of_one_bundle_keep_the_artifact() {
    let s = start(|_| {});
    let releases = s.dir.path().join("data/artifacts/releases");
    for round in 0..4 {
        let version = format!("1.0.{round}");
        let bundle = s.bundle(&version, "race");
        let bytes = std::fs::read(&bundle).unwrap();
        let statuses: Vec<u16> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..6)
                .map(|_| sc.spawn(|| s.upload(&bundle).status))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|&&st| st == 201).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|&st| st == 201 || st == 409),
            "{statuses:?}"
        );
        let list = s.admin_get("/api/v1/admin/releases").json();
        let rel = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version.as_str())
            .unwrap()
            .clone();
        let id = rel["id"].as_str().unwrap();
        let stored: Vec<_> = std::fs::read_dir(&releases)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(id))
            .collect();
        assert_eq!(stored.len(), 1, "round {round}: {stored:?}");
        assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes, "round {round}");
    }
}

fn assert_json_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    assert!(!r.json()["message"].as_str().unwrap_or("").is_empty());
}

/// Finding 6 and 8: out-of-range and malformed query parameters get 400 with a JSON body.
#[test]
fn bad_query_parameters_get_json_400() {
    let s = start(|_| {});
    let r = s.admin_get("/api/v1/admin/devices?limit=9223372036854775808");
    assert_json_error(&r, 400, "invalid_filter");
    for q in [
        "/api/v1/admin/devices?limit=-1",
        "/api/v1/admin/devices?limit=abc",
        "/api/v1/admin/devices?limit=99999999999999999999999",
        "/api/v1/admin/devices?online=maybe",
        "/api/v1/admin/audit?limit=x",
        "/api/v1/admin/devices/x/logs?after=9223372036854775808",
    ] {
        let r = s.admin_get(q);
        assert_json_error(&r, 400, "invalid_query");
    }
    assert_eq!(s.admin_get("/api/v1/admin/devices?limit=5").status, 200);
}

/// Finding 12: arrays are not objects, `limit=0` means none, `bearer` is `Bearer`.
#[test]
fn arrays_limit_zero_and_bearer_case() {
    use serde_json::json;
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut a = device(1, "b");
    s.enrolled(&mut a, &key);
    let r = s.report(&a, &json!([]));
    assert_json_error(&r, 422, "invalid_body");
    assert!(r.json()["message"].as_str().unwrap().contains("array"));
    let tags = format!("/api/v1/admin/devices/{}/tags", a.id);
    let r = s.admin_post(&tags, &json!([["lab"], []]));
    assert_json_error(&r, 422, "invalid_body");
    let r = s.admin_post(&tags, &json!({"add": ["lab"]}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let devs = s.admin_get("/api/v1/admin/devices?tag=lab&limit=0").json();
    assert_eq!(devs.as_array().unwrap().len(), 0, "{devs}");
    let devs = s.admin_get("/api/v1/admin/devices?tag=lab&limit=1").json();
    assert_eq!(devs.as_array().unwrap().len(), 1, "{devs}");

    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", s.admin_token);
        let r = call(
            "GET",
            &s.url("/api/v1/admin/devices"),
            None,
            &[("Authorization", &auth)],
            None,
            "",
        );
        assert_eq!(
            r.status,
            200,
            "{scheme}: {}",
            String::from_utf8_lossy(&r.bytes)
        );
    }
    let auth = format!("Basic {}", s.admin_token);
    let r = call(
        "GET",
        &s.url("/api/v1/admin/devices"),
        None,
        &[("Authorization", &auth)],
        None,
        "",
    );
    assert_json_error(&r, 401, "bad_token");
}

/// Finding 10: the data folder is 0700 and the database files 0600, also when an older server
/// made them 0755 / 0644.
#[test]
fn data_folder_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var("OTTER_TEST_POSTGRES").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for existing in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if existing {
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
            for f in ["otter.db", "otter.db-wal", "otter.db-shm"] {
                std::fs::write(data.join(f), b"").unwrap();
                std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644))
                    .unwrap();
            }
        }
        let s = start(|c| {
            c.database = None;
            c.data_dir = data.clone();
        });
        assert_eq!(s.admin_get("/api/v1/admin/devices").status, 200);
        assert_eq!(mode(&data), 0o700, "existing: {existing}");
        for f in ["otter.db", "otter.db-wal", "otter.db-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}, existing: {existing}");
        }
    }
}

/// Finding 4: a signed enroll body works once; what the server stores is signed.
#[test]
fn enrollment_cannot_be_replayed_or_altered() {
    use otter_proto::{EnrollRequest, EnrollResponse};
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut a = device(1, "b");
    let req = EnrollRequest::signed(
        &a.key,
        &s.challenge(),
        "b",
        Some("gw-1".into()),
        Some(key.clone()),
        Some("1.0.0".into()),
    );
    let body = serde_json::to_value(&req).unwrap();
    let r = s.post_json(otter_proto::paths::ENROLL, None, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let e: EnrollResponse = serde_json::from_slice(&r.bytes).unwrap();
    a.id = e.device_id;
    a.token = e.token.unwrap();
    let r = s.post_json(otter_proto::paths::ENROLL, None, &body);
    assert_json_error(&r, 409, "challenge_used");
    // The first token still works.
    assert_eq!(s.poll(&a, None).status, 200);

    // Fields outside the old signature: changing any one breaks the proof.
    for (field, value) in [
        ("name", serde_json::json!("evil")),
        ("os_version", serde_json::json!("6.6.6")),
        ("enrollment_key", serde_json::Value::Null),
    ] {
        let req = EnrollRequest::signed(
            &a.key,
            &s.challenge(),
            "b",
            Some("gw-1".into()),
            Some(key.clone()),
            Some("1.0.0".into()),
        );
        let mut body = serde_json::to_value(&req).unwrap();
        body[field] = value;
        let r = s.post_json(otter_proto::paths::ENROLL, None, &body);
        assert_json_error(&r, 400, "bad_proof");
    }
    assert_eq!(s.poll(&a, None).status, 200);
}

/// Finding 2: a connection that sends half a header, or nothing, is closed within the header
/// timeout; connections above --max-connections are closed at once.
#[test]
fn slow_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let s = start(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.max_connections = 4;
    });
    let addr = s.base.trim_start_matches("http://").to_owned();
    let closed_within = |mut c: std::net::TcpStream, secs: u64| {
        c.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return t.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t.elapsed(),
                Err(e) => panic!("still open after {:?}: {e}", t.elapsed()),
            }
        }
    };
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /api/v1/admin/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    let few = std::net::TcpStream::connect(&addr).unwrap();
    few.try_clone().unwrap().write_all(b"GE").unwrap();
    assert!(closed_within(half, 5) < Duration::from_secs(4));
    assert!(closed_within(silent, 5) < Duration::from_secs(4));
    assert!(closed_within(few, 5) < Duration::from_secs(4));

    // The cap: four held connections, the fifth is closed at once; the server serves again
    // when they go.
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let fifth = std::net::TcpStream::connect(&addr).unwrap();
    assert!(closed_within(fifth, 1) < Duration::from_millis(900));
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.admin_get("/api/v1/admin/devices").status, 200);
}

fn log_batch(from: usize, n: usize, len: usize) -> serde_json::Value {
    let entries: Vec<_> = (from..from + n)
        .map(|i| serde_json::json!({"ts_ms": i, "message": format!("{i:08} {}", "x".repeat(len))}))
        .collect();
    serde_json::json!({ "entries": entries })
}

/// Finding 3: a device's stored logs stay under --log-quota (oldest pruned first) and it
/// cannot send more than --log-rate.
#[test]
fn device_logs_have_a_quota_and_a_rate() {
    let s = start(|c| {
        c.log_quota_bytes = 64 << 10;
        c.log_rate_kib_per_minute = 1 << 20;
    });
    let key = s.enrollment_key("k");
    let mut a = device(1, "b");
    s.enrolled(&mut a, &key);
    let mut b = device(2, "b");
    s.enrolled(&mut b, &key);
    let r = s.post_json(
        otter_proto::paths::LOGS,
        Some(&b.token),
        &log_batch(0, 10, 10),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    for i in 0..20 {
        let r = s.post_json(
            otter_proto::paths::LOGS,
            Some(&a.token),
            &log_batch(i * 100, 100, 200),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    }
    let lines = |d: &TestDevice| {
        s.admin_get(&format!("/api/v1/admin/devices/{}/logs?limit=10000", d.id))
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let kept = lines(&a);
    let bytes: usize = kept.iter().map(|m| m.len() + 32 + 4).sum();
    assert!(bytes <= 64 << 10, "{bytes} bytes kept");
    assert!(kept.len() > 100, "{} lines kept", kept.len());
    assert!(
        kept.last().unwrap().starts_with("00001999"),
        "the newest line is kept"
    );
    assert!(
        !kept.iter().any(|m| m.starts_with("00000000")),
        "the oldest line is pruned"
    );
    // Another device's lines are untouched.
    assert_eq!(lines(&b).len(), 10);

    // The rate: 2 MiB at once, then 429 rate_limited.
    let s = start(|c| c.log_rate_kib_per_minute = 64);
    let mut a = device(1, "b");
    let key = s.enrollment_key("k");
    s.enrolled(&mut a, &key);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = s.post_json(
            otter_proto::paths::LOGS,
            Some(&a.token),
            &log_batch(i * 100, 100, 8000),
        );
        statuses.push(r.status);
        if r.status == 429 {
            assert_json_error(&r, 429, "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}
