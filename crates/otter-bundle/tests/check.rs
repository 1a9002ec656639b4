//! `VerifiedBundle::check_payload`: the whole payload checked without writing anything, from a
//! file and over HTTP.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;

use common::*;
use otter_bundle::*;

const SIZE: usize = 1_500_000;
const CHUNK: u32 = 65536;

struct Case {
    f: Fixture,
    bytes: Vec<u8>,
    manifest: Manifest,
    payload_offset: usize,
}

impl Case {
    fn new() -> Self {
        let f = Fixture::new();
        let (img, _) = f.write_image("rootfs.img", SIZE, 42);
        let (bundle, manifest) = f.bundle("os.otb", &img, "1.0.0", CHUNK);
        let payload_offset = BundleReader::open(bundle.to_str().unwrap())
            .unwrap()
            .payload_offset() as usize;
        let bytes = fs::read(&bundle).unwrap();
        Case {
            f,
            bytes,
            manifest,
            payload_offset,
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.f.path(name);
        fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// A stored chunk in the middle of the image, and the bundle with one bit of it flipped.
    fn flipped(&self) -> (usize, Vec<u8>) {
        let k = middle_stored_chunk(&self.manifest);
        let (at, len) = chunk_frame(&self.bytes, 0, k);
        let mut b = self.bytes.clone();
        b[at + len / 2] ^= 0x10;
        (k, b)
    }

    /// The bundle rebuilt from a (modified) manifest, signed by the trusted key.
    fn resigned(&self, name: &str, m: &Manifest) -> String {
        let json = serde_json::to_vec(m).unwrap();
        let mut out = format::encode_header(&json, &[self.f.key.sign_manifest(&json)]).unwrap();
        out.extend_from_slice(&self.bytes[self.payload_offset..]);
        self.write(name, &out)
    }

    fn check(&self, bundle: &str) -> Result<PayloadReport> {
        check(bundle, &self.f.trusted())
    }
}

fn check(bundle: &str, trusted: &[PublicKey]) -> Result<PayloadReport> {
    let v = BundleReader::open(bundle)?.verify(trusted)?;
    v.check_payload(&mut |_, _| {})
}

fn assert_names_chunk(e: &Error, k: usize) {
    match e {
        Error::ChunkInvalid { image, index, .. } => {
            assert_eq!(image, "rootfs", "{e}");
            assert_eq!(*index, k as u64, "{e}");
        }
        other => panic!("expected ChunkInvalid for chunk {k}, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("chunk {k} ")) && msg.contains("\"rootfs\""),
        "{msg}"
    );
}

#[test]
fn good_bundle_passes_and_reports_progress() {
    let c = Case::new();
    let v = BundleReader::open(c.f.path("os.otb").to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    let mut calls = Vec::new();
    let report = v
        .check_payload(&mut |done, total| calls.push((done, total)))
        .unwrap();
    let chunks = c.manifest.images[0].chunks.len();
    assert!(c.manifest.images[0].zero_chunks() > 0, "test covers zeros");
    assert_eq!(report.images, 1);
    assert_eq!(report.chunks, chunks as u64);
    assert_eq!(report.bytes, SIZE as u64);
    assert!(report.seconds >= 0.0);
    assert_eq!(calls.first(), Some(&(0, SIZE as u64)));
    assert_eq!(calls.last(), Some(&(SIZE as u64, SIZE as u64)));
    assert_eq!(calls.len(), chunks + 1, "once up front, then per chunk");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
}

#[test]
fn every_image_of_a_multi_image_bundle_is_checked() {
    let c = Case::new();
    let (img2, _) = c.f.write_image("data.img", 300_000, 9);
    let out = c.f.path("two.otb");
    let opts = CreateOptions {
        chunk_size: 4096 * 4,
        ..CreateOptions::new(COMPAT, "1.0.0")
    };
    let rootfs = c.f.path("rootfs.img");
    let m = create_bundle(
        &out,
        &[("rootfs", rootfs.as_path()), ("data", img2.as_path())],
        &opts,
        &[&c.f.key],
    )
    .unwrap();
    let report = check(out.to_str().unwrap(), &c.f.trusted()).unwrap();
    assert_eq!(report.images, 2);
    let chunks: usize = m.images.iter().map(|i| i.chunks.len()).sum();
    assert_eq!(report.chunks, chunks as u64);
    assert_eq!(report.bytes, SIZE as u64 + 300_000);

    // A flipped bit in the second image's payload (it is last in the file) names that image.
    let mut b = fs::read(&out).unwrap();
    let d = &m.images[1];
    let k = d.chunks.iter().position(|&ch| ch > 64).unwrap();
    let (at, len) = chunk_frame(&b, 1, k);
    b[at + len / 2] ^= 1;
    let e = check(&c.write("two-flip.otb", &b), &c.f.trusted()).unwrap_err();
    assert!(
        matches!(&e, Error::ChunkInvalid { image, index, .. } if image == "data" && *index == k as u64),
        "{e}"
    );
}

#[test]
fn bit_flip_names_the_chunk_and_leaves_the_bundle_alone() {
    let c = Case::new();
    let (k, b) = c.flipped();
    let path = c.write("flip.otb", &b);
    let e = c.check(&path).unwrap_err();
    assert_names_chunk(&e, k);
    assert!(fs::read(&path).unwrap() == b, "the bundle is only read");
}

#[test]
fn flips_in_two_chunks_name_the_first() {
    let c = Case::new();
    let chunks = &c.manifest.images[0].chunks;
    let stored: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i] > 64).collect();
    let (first, last) = (stored[1], stored[stored.len() - 1]);
    let mut b = c.bytes.clone();
    for i in [first, last] {
        let (at, len) = chunk_frame(&c.bytes, 0, i);
        b[at + len / 2] ^= 0x01;
    }
    for _ in 0..3 {
        let e = c.check(&c.write("flip2.otb", &b)).unwrap_err();
        assert_names_chunk(&e, first);
    }
}

#[test]
fn whole_image_mismatch_is_its_own_error() {
    let c = Case::new();
    let mut m = c.manifest.clone();
    m.images[0].sha256 = "f".repeat(64);
    let e = c.check(&c.resigned("whole.otb", &m)).unwrap_err();
    match &e {
        Error::ImageHashMismatch {
            image, expected, ..
        } => {
            assert_eq!(image, "rootfs");
            assert_eq!(expected, &"f".repeat(64));
        }
        other => panic!("expected ImageHashMismatch, got {other}"),
    }
    assert!(e.to_string().contains("\"rootfs\""), "{e}");
}

#[test]
fn signed_block_hash_mismatch_names_the_chunk() {
    let c = Case::new();
    let k = c.manifest.images[0]
        .chunks
        .iter()
        .rposition(|&ch| ch != 0)
        .unwrap();
    let per = (CHUNK / 4096) as usize;
    // The second block of chunk k gets another (valid-looking) hash in a signed index.
    let b = with_edited_index(
        &c.bytes,
        &c.f.key,
        |raw| raw[(k * per + 1) * 16] ^= 1,
        |_| {},
    );
    let e = c.check(&c.write("hash.otb", &b)).unwrap_err();
    assert_names_chunk(&e, k);
    assert!(
        e.to_string().contains(&format!("block {}", k * per + 1)),
        "{e}"
    );
}

#[test]
fn block_index_not_matching_the_manifest_is_refused() {
    let c = Case::new();
    // The index frame changed after signing: its hash no longer matches the manifest's.
    let m = &c.manifest.images[0];
    let raw = raw_index(&c.bytes);
    let mut other = raw.clone();
    other[20] ^= 1;
    let frame = zstd::bulk::compress(&other, 3).unwrap();
    let mut b = c.bytes.clone();
    if frame.len() as u64 == m.index.csize {
        let at = c.payload_offset + m.index.offset as usize;
        b[at..at + frame.len()].copy_from_slice(&frame);
    } else {
        // Same effect: a bit flip inside the frame.
        let at = c.payload_offset + m.index.offset as usize + m.index.csize as usize / 2;
        b[at] ^= 0x08;
    }
    let e = c.check(&c.write("index.otb", &b)).unwrap_err();
    assert!(
        matches!(&e, Error::IndexInvalid { image, .. } if image == "rootfs"),
        "{e}"
    );
}

#[test]
fn inconsistent_zero_chunk_names_the_chunk() {
    let c = Case::new();
    let z = c.manifest.images[0]
        .chunks
        .iter()
        .position(|&ch| ch == 0)
        .unwrap();
    let per = (CHUNK / 4096) as usize;
    // A zero chunk whose index says one of its blocks is not zero.
    let b = with_edited_index(&c.bytes, &c.f.key, |raw| raw[z * per * 16] = 7, |_| {});
    let e = c.check(&c.write("zero.otb", &b)).unwrap_err();
    assert_names_chunk(&e, z);
}

#[test]
fn incomplete_bundles_are_refused() {
    let c = Case::new();
    let cut = &c.bytes[..c.bytes.len() - 100];
    let e = c.check(&c.write("cut.otb", cut)).unwrap_err();
    let expected = c.manifest.payload_size();
    assert!(
        e.to_string().contains(&format!(
            "bundle truncated: expected {expected} payload bytes, got {}",
            expected - 100
        )),
        "{e}"
    );
    let mut long = c.bytes.clone();
    long.extend_from_slice(b"junk");
    let e = c.check(&c.write("long.otb", &long)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[test]
fn untrusted_bundles_never_reach_the_payload_check() {
    let c = Case::new();
    let e = BundleReader::open(c.f.path("os.otb").to_str().unwrap())
        .unwrap()
        .verify(&[])
        .unwrap_err();
    assert!(matches!(e, Error::UntrustedSigners { .. }), "{e}");
}

// --- Over HTTP, with the test server from `common`. ---

fn payload_requests(server: &TestServer, payload_offset: usize) -> Vec<(u64, Option<u64>)> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.0 >= payload_offset as u64)
        .collect()
}

#[test]
fn http_good_bundle_passes_with_two_ranged_gets() {
    let c = Case::new();
    let server = TestServer::start(c.bytes.clone(), Behaviour::default());
    let report = check(&server.url, &c.f.trusted()).unwrap();
    assert_eq!(report.bytes, SIZE as u64);
    assert_eq!(
        report.chunks,
        c.manifest.images[0].chunks.len() as u64,
        "all chunks"
    );
    let start = c.payload_offset as u64;
    let img = &c.manifest.images[0];
    assert_eq!(
        payload_requests(&server, c.payload_offset),
        vec![
            (start, Some(start + img.index.csize - 1)),
            (
                start + img.chunks_offset,
                Some(start + c.manifest.payload_size() - 1)
            )
        ],
        "the block index, then all chunks in one ranged GET"
    );
}

#[test]
fn http_resumes_after_a_dropped_connection() {
    let c = Case::new();
    // Mid-chunks.
    let k = c.manifest.payload_size() as usize / 2;
    let start = c.payload_offset as u64 + c.manifest.images[0].chunks_offset;
    let server = TestServer::start(
        c.bytes.clone(),
        Behaviour {
            drop: DropMode::FirstPayloadRequest,
            drop_after: k,
            payload_from: start,
            ..Default::default()
        },
    );
    check(&server.url, &c.f.trusted()).unwrap();
    let starts: Vec<u64> = payload_requests(&server, start as usize)
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(starts, vec![start, start + k as u64]);
}

#[test]
fn http_bit_flip_names_the_chunk() {
    let c = Case::new();
    let (k, b) = c.flipped();
    let server = TestServer::start(b, Behaviour::default());
    let e = check(&server.url, &c.f.trusted()).unwrap_err();
    assert_names_chunk(&e, k);
}

#[test]
fn http_truncated_bundle_is_refused() {
    let c = Case::new();
    let server = TestServer::start(
        c.bytes[..c.bytes.len() - 5000].to_vec(),
        Behaviour::default(),
    );
    let e = check(&server.url, &c.f.trusted()).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(
        payload_requests(&server, c.payload_offset).is_empty(),
        "refused before fetching the payload"
    );
}
