//! Installing from HTTP with range requests, against a local std::net server that misbehaves on
//! purpose: dropped connections, no Range support, truncated files.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::time::Instant;

use common::*;
use otter_bundle::*;

const SIZE: usize = 2_000_000;

struct Setup {
    f: Fixture,
    bytes: Vec<u8>,
    data: Vec<u8>,
    manifest: Manifest,
    /// Where the chunk frames start in the file (after the header and the block index).
    payload_offset: u64,
}

fn setup() -> Setup {
    let f = Fixture::new();
    let (img, data) = f.write_image("rootfs.img", SIZE, 7);
    let (bundle, manifest) = f.bundle("os.otb", &img, "1.0.0", 65536);
    let payload_offset = BundleReader::open(bundle.to_str().unwrap())
        .unwrap()
        .payload_offset()
        + manifest.images[0].chunks_offset;
    let bytes = fs::read(&bundle).unwrap();
    Setup {
        f,
        bytes,
        data,
        manifest,
        payload_offset,
    }
}

fn behaviour(s: &Setup, drop: DropMode, drop_after: usize) -> Behaviour {
    Behaviour {
        drop,
        drop_after,
        payload_from: s.payload_offset,
        ignore_range: false,
        not_found: false,
        drop_random: None,
    }
}

#[test]
fn http_roundtrip_uses_ranges() {
    let s = setup();
    let server = TestServer::start(s.bytes.clone(), Behaviour::default());
    let (slot, _) = s.f.slot("slot", SIZE);
    let report = install(&server.url, &s.f.trusted(), &slot).unwrap();
    assert!(fs::read(&slot).unwrap() == s.data);
    assert_eq!(report.bytes_fetched, s.manifest.payload_size());
    let reqs = server.requests();
    assert_eq!(
        reqs[0],
        (0, Some(65535)),
        "header fetched with a bounded range"
    );
    let payload_reqs: Vec<_> = reqs.iter().filter(|r| r.0 >= s.payload_offset).collect();
    assert_eq!(
        payload_reqs,
        vec![&(
            s.payload_offset,
            Some(s.payload_offset + s.manifest.images[0].chunk_bytes() - 1)
        )],
        "all chunks of the image in one ranged GET"
    );
}

#[test]
fn resumes_after_connection_drop_mid_payload() {
    let s = setup();
    let k = 300_000;
    let server = TestServer::start(
        s.bytes.clone(),
        behaviour(&s, DropMode::FirstPayloadRequest, k),
    );
    let (slot, _) = s.f.slot("slot", SIZE);
    let report = install(&server.url, &s.f.trusted(), &slot).unwrap();
    assert!(fs::read(&slot).unwrap() == s.data);
    assert_eq!(report.bytes_fetched, s.manifest.payload_size());
    let payload_reqs: Vec<u64> = server
        .requests()
        .iter()
        .map(|r| r.0)
        .filter(|&start| start >= s.payload_offset)
        .collect();
    assert_eq!(
        payload_reqs,
        vec![s.payload_offset, s.payload_offset + k as u64],
        "resumed from the first byte not yet consumed"
    );
}

#[test]
fn resumes_after_drop_during_header_fetch() {
    let s = setup();
    let server = TestServer::start(s.bytes.clone(), behaviour(&s, DropMode::FirstRequest, 100));
    let (slot, _) = s.f.slot("slot", SIZE);
    install(&server.url, &s.f.trusted(), &slot).unwrap();
    assert!(fs::read(&slot).unwrap() == s.data);
    assert_eq!(server.requests()[1].0, 100);
}

#[test]
fn server_without_range_support_still_works() {
    let s = setup();
    let mut b = behaviour(&s, DropMode::FirstPayloadRequest, 250_000);
    b.ignore_range = true;
    let server = TestServer::start(s.bytes.clone(), b);
    let (slot, _) = s.f.slot("slot", SIZE);
    install(&server.url, &s.f.trusted(), &slot).unwrap();
    assert!(fs::read(&slot).unwrap() == s.data);
}

#[test]
fn server_that_always_drops_gives_a_clean_error() {
    let s = setup();
    let server = TestServer::start(
        s.bytes.clone(),
        behaviour(&s, DropMode::EveryPayloadRequest, 1000),
    );
    let (slot, _) = s.f.slot("slot", SIZE);
    let t = Instant::now();
    let e = install(&server.url, &s.f.trusted(), &slot).unwrap_err();
    assert!(t.elapsed().as_secs() < 30, "gave up in bounded time");
    match &e {
        Error::Http { url, offset, .. } => {
            assert_eq!(url, &server.url);
            // 1 initial request + HTTP_MAX_RETRIES resumes, 1000 bytes each.
            let n = 1 + HTTP_MAX_RETRIES as u64;
            assert_eq!(*offset, s.payload_offset + n * 1000);
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&server.url) && msg.contains("offset"), "{msg}");
    let payload_reqs = server
        .requests()
        .iter()
        .filter(|r| r.0 >= s.payload_offset)
        .count();
    assert_eq!(payload_reqs, 1 + HTTP_MAX_RETRIES as usize);
}

#[test]
fn truncated_bundle_over_http_is_refused_before_writing() {
    let s = setup();
    let cut = s.bytes[..s.bytes.len() - 5000].to_vec();
    let server = TestServer::start(cut, Behaviour::default());
    let (slot, old) = s.f.slot("slot", SIZE);
    let e = install(&server.url, &s.f.trusted(), &slot).unwrap_err();
    let expected = s.manifest.payload_size();
    assert!(
        e.to_string().contains(&format!(
            "bundle truncated: expected {expected} payload bytes, got {}",
            expected - 5000
        )),
        "{e}"
    );
    assert_untouched(&slot, &old);
}

#[test]
fn unreachable_server_is_a_clean_error() {
    // A port that was just free: connection refused, retried, then a clean error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/bundle.otb");
    let e = BundleReader::open(&url).unwrap_err();
    assert!(matches!(e, Error::Http { offset: 0, .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}

#[test]
fn not_found_fails_at_once() {
    let s = setup();
    let b = Behaviour {
        not_found: true,
        ..Default::default()
    };
    let server = TestServer::start(s.bytes.clone(), b);
    let t = Instant::now();
    let e = BundleReader::open(&server.url).unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    assert!(t.elapsed().as_millis() < 2000);
}
