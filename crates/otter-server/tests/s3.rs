//! Artifacts in a real S3-compatible store: moto's server (PyPI `moto[server]`, installed by
//! scripts/deps) on 127.0.0.1. A release upload lands in the bucket under the prefix, the
//! targeted device gets a presigned URL and downloads (whole and by range) from the store
//! itself, without a token; devices not targeted get no URL.
//!
//! One test in its own binary: it sets the `AWS_*` variables the `s3://` storage reads.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_server() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("moto_server"))
            .find(|f| f.is_file())
    })
}

#[test]
fn artifacts_in_an_s3_bucket_are_served_by_presigned_urls() {
    let Some(moto) = moto_server() else {
        eprintln!(
            "skipping the S3 test: moto_server not found (pip install 'moto[server]'; scripts/deps does it)"
        );
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _moto = Moto(
        Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let start_t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start_t.elapsed() < Duration::from_secs(60),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // moto takes unsigned requests: make the bucket.
    let r = call(
        "PUT",
        &format!("{endpoint}/otter-test"),
        None,
        &[],
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    // SAFETY: this binary has one test, and no other thread reads the environment yet.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", &endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let s = start(|c| c.storage = Some("s3://otter-test/fleet".into()));
    let key = s.enrollment_key("k");
    let mut a = device(1, "qemu-x86_64");
    let mut b = device(2, "qemu-x86_64");
    s.enrolled(&mut a, &key);
    s.enrolled(&mut b, &key);

    let bundle = s.bundle("1.1.0", "qemu-x86_64");
    let bytes = std::fs::read(&bundle).unwrap();
    let up = s.upload(&bundle);
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.bytes));
    let rid = up.json()["id"].as_str().unwrap().to_owned();
    // The object is in the bucket, under the prefix.
    let list = call(
        "GET",
        &format!("{endpoint}/otter-test?list-type=2&prefix=fleet/"),
        None,
        &[],
        None,
        "",
    );
    let listing = String::from_utf8_lossy(&list.bytes).to_string();
    assert!(
        listing.contains("<Key>fleet/")
            && listing.contains(&format!("<Size>{}</Size>", bytes.len())),
        "bucket listing: {listing}"
    );

    // Only the targeted device gets a (presigned) URL.
    let r = s.admin_post(
        &format!("/api/v1/admin/devices/{}/pin", a.id),
        &json!({"release": "1.1.0"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let t = s.poll(&a, None).json();
    let url = t["release"]["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{endpoint}/otter-test/fleet/"))
            && url.contains("X-Amz-Signature="),
        "not a presigned URL of the bucket: {url}"
    );
    assert!(s.poll(&b, None).json()["release"].is_null());
    let full = call("GET", &url, None, &[], None, "");
    assert_eq!(full.status, 200);
    assert_eq!(full.bytes, bytes);
    let part = call("GET", &url, None, &[("Range", "bytes=8-15")], None, "");
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, bytes[8..16]);
    // (moto does not check signatures, so a tampered URL is not tested here; the signing itself
    // is checked against AWS's rules in store.rs's unit test.)
    // The server's own artifact route still serves the targeted device, and only it.
    let own = s.url(&format!("/api/v1/device/artifacts/{rid}"));
    assert_eq!(
        call("GET", &own, Some(&a.token), &[], None, "").bytes,
        bytes
    );
    assert_eq!(call("GET", &own, Some(&b.token), &[], None, "").status, 403);
}
