//! Every bad input is refused; where the problem is detectable before writing, the target is
//! asserted byte-for-byte unchanged.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use otter_bundle::*;

const SIZE: usize = 1_500_000;
const CHUNK: u32 = 65536;

struct Case {
    f: Fixture,
    bundle: PathBuf,
    bytes: Vec<u8>,
    manifest: Manifest,
    slot: PathBuf,
    old: Vec<u8>,
}

impl Case {
    fn new() -> Self {
        let f = Fixture::new();
        let (img, _) = f.write_image("rootfs.img", SIZE, 42);
        let (bundle, manifest) = f.bundle("os.otb", &img, "1.0.0", CHUNK);
        let (slot, old) = f.slot("slot-b", SIZE + 4096);
        let bytes = fs::read(&bundle).unwrap();
        Case {
            f,
            bundle,
            bytes,
            manifest,
            slot,
            old,
        }
    }

    fn manifest_len(&self) -> usize {
        u32::from_le_bytes(self.bytes[12..16].try_into().unwrap()) as usize
    }

    fn payload_offset(&self) -> usize {
        let m = self.manifest_len();
        let n = u32::from_le_bytes(self.bytes[16 + m..20 + m].try_into().unwrap()) as usize;
        20 + m + 96 * n
    }

    /// Writes modified bundle bytes to a new file and returns its path as a string.
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.f.path(name);
        fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// Rebuilds the bundle from a (modified) manifest, signed by the trusted key.
    fn resigned(&self, name: &str, m: &Manifest) -> String {
        let json = serde_json::to_vec(m).unwrap();
        let mut out = format::encode_header(&json, &[self.f.key.sign_manifest(&json)]).unwrap();
        out.extend_from_slice(&self.bytes[self.payload_offset()..]);
        self.write(name, &out)
    }

    fn install(&self, bundle: &str) -> Result<InstallReport> {
        install(bundle, &self.f.trusted(), &self.slot)
    }

    fn untouched(&self) {
        assert_untouched(&self.slot, &self.old);
    }
}

fn replace_once(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let pos = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = hay.to_vec();
    out[pos..pos + to.len()].copy_from_slice(to);
    out
}

#[test]
fn not_a_bundle() {
    let c = Case::new();
    let mut b = c.bytes.clone();
    b[0] = b'X';
    let e = c.install(&c.write("bad-magic.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    let e = c
        .install(c.f.path("rootfs.img").to_str().unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    let mut b = c.bytes.clone();
    b[8] = 9;
    let e = c.install(&c.write("v9.otb", &b)).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedFormat { version: 9, .. }),
        "{e}"
    );
    let e = c
        .install(c.f.path("nonexistent.otb").to_str().unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("nonexistent.otb"), "{e}");
    c.untouched();
}

#[test]
fn corrupt_manifest_json() {
    let c = Case::new();
    let b = replace_once(&c.bytes, b"\"images\":[", b"\"images\":{");
    let e = c.install(&c.write("json.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    c.untouched();
}

#[test]
fn truncated_payload_is_refused_before_writing() {
    let c = Case::new();
    let cut = &c.bytes[..c.bytes.len() - 100];
    let e = c.install(&c.write("cut.otb", cut)).unwrap_err();
    let expected = c.manifest.payload_size();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "bundle truncated: expected {expected} payload bytes, got {}",
            expected - 100
        )),
        "{e}"
    );
    c.untouched();
}

#[test]
fn truncated_header_is_refused() {
    let c = Case::new();
    for cut in [3, 16, 100, c.payload_offset() - 1] {
        let e = c.install(&c.write("cut.otb", &c.bytes[..cut])).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    c.untouched();
}

#[test]
fn trailing_garbage_is_refused_before_writing() {
    let c = Case::new();
    let mut b = c.bytes.clone();
    b.extend_from_slice(b"junk");
    let e = c.install(&c.write("long.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    c.untouched();
}

#[test]
fn bit_flip_in_a_chunk_is_detected_at_that_chunk() {
    let c = Case::new();
    // A stored chunk in the middle of the image.
    let k = middle_stored_chunk(&c.manifest);
    let (at, len) = chunk_frame(&c.bytes, 0, k);
    let mut b = c.bytes.clone();
    b[at + len / 2] ^= 0x10;
    let e = c.install(&c.write("flip.otb", &b)).unwrap_err();
    match &e {
        Error::ChunkInvalid { index, .. } => assert_eq!(*index, k as u64, "{e}"),
        other => panic!("expected ChunkInvalid, got {other}"),
    }
    assert!(e.to_string().contains(&format!("chunk {k}")), "{e}");
    // The bad chunk's bytes never reached the target.
    let start = k * CHUNK as usize;
    let end = (start + CHUNK as usize).min(SIZE);
    assert!(fs::read(&c.slot).unwrap()[start..end] == c.old[start..end]);
}

#[test]
fn untrusted_key_is_refused_and_named() {
    let c = Case::new();
    let stranger = SigningKey::generate();
    let out = c.f.path("stranger.otb");
    let opts = CreateOptions {
        chunk_size: CHUNK,
        ..CreateOptions::new(COMPAT, "1.0.0")
    };
    let img = c.f.path("rootfs.img");
    create_bundle(&out, &[("rootfs", img.as_path())], &opts, &[&stranger]).unwrap();
    let e = c.install(out.to_str().unwrap()).unwrap_err();
    match &e {
        Error::UntrustedSigners { fingerprints, .. } => {
            assert_eq!(fingerprints, &vec![stranger.public().fingerprint()]);
        }
        other => panic!("expected UntrustedSigners, got {other}"),
    }
    assert!(e.to_string().contains(&stranger.public().fingerprint()));
    c.untouched();
}

#[test]
fn unsigned_bundle_is_refused() {
    let c = Case::new();
    let m = c.manifest_len();
    let mut b = c.bytes[..16 + m].to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&c.bytes[c.payload_offset()..]);
    let e = c.install(&c.write("unsigned.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::Unsigned { .. }), "{e}");
    c.untouched();
}

#[test]
fn tampered_manifest_is_refused() {
    let c = Case::new();
    // Same length, still valid JSON and a valid manifest: only the signature can catch it.
    let b = replace_once(&c.bytes, b"\"version\":\"1.0.0\"", b"\"version\":\"9.0.0\"");
    let e = c.install(&c.write("tampered.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::InvalidSignature { .. }), "{e}");
    assert!(e.to_string().contains(&c.f.key.public().fingerprint()));

    // The block index hash swapped for another valid hash.
    let h = c.manifest.images[0].index.sha256.clone();
    let mut h2 = h.clone().into_bytes();
    h2[0] = if h2[0] == b'0' { b'1' } else { b'0' };
    let b = replace_once(&c.bytes, h.as_bytes(), &h2);
    let e = c.install(&c.write("tampered2.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::InvalidSignature { .. }), "{e}");

    // A flipped signature bit.
    let mut b = c.bytes.clone();
    let sig_at = 20 + c.manifest_len() + 32 + 5;
    b[sig_at] ^= 1;
    let e = c.install(&c.write("badsig.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::InvalidSignature { .. }), "{e}");
    c.untouched();
}

#[test]
fn signature_of_another_bundle_is_not_accepted() {
    let c = Case::new();
    let (img2, _) = c.f.write_image("other.img", SIZE, 43);
    let (other, _) = c.f.bundle("other.otb", &img2, "1.0.0", CHUNK);
    let other = fs::read(&other).unwrap();
    let om = u32::from_le_bytes(other[12..16].try_into().unwrap()) as usize;
    let m = c.manifest_len();
    let mut b = c.bytes.clone();
    b[20 + m..20 + m + 96].copy_from_slice(&other[20 + om..20 + om + 96]);
    let e = c.install(&c.write("replayed.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::InvalidSignature { .. }), "{e}");
    c.untouched();
}

#[test]
fn other_board_is_refused() {
    let c = Case::new();
    let v = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    let mut p = policy(None);
    p.compatible = "another-board".into();
    assert!(matches!(
        v.check_policy(&p),
        Err(Error::Incompatible { .. })
    ));
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let c = Case::new();
    let v = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    let e = v.check_policy(&policy(Some("1.0.1"))).unwrap_err();
    assert!(matches!(e, Error::Downgrade { .. }), "{e}");
    let mut p = policy(Some("1.0.1"));
    p.allow_downgrade = true;
    v.check_policy(&p).unwrap();
    v.check_policy(&policy(Some("1.0.0"))).unwrap();
}

#[test]
fn image_larger_than_target_is_refused_before_writing() {
    let c = Case::new();
    let (small, old) = c.f.slot("small", SIZE - 1);
    let e = install(c.bundle.to_str().unwrap(), &c.f.trusted(), &small).unwrap_err();
    assert!(matches!(e, Error::TargetTooSmall { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&SIZE.to_string()) && msg.contains(&(SIZE - 1).to_string()),
        "{msg}"
    );
    assert_untouched(&small, &old);
}

#[test]
fn missing_target_is_not_created() {
    let c = Case::new();
    let missing = c.f.path("no-such-slot");
    let e = install(c.bundle.to_str().unwrap(), &c.f.trusted(), &missing).unwrap_err();
    assert!(e.to_string().contains("no-such-slot"), "{e}");
    assert!(!missing.exists());
    let e = install(
        c.bundle.to_str().unwrap(),
        &c.f.trusted(),
        Path::new("/dev/null"),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TargetKind { .. }), "{e}");
}

#[test]
fn signed_but_inconsistent_zero_chunk_is_refused_before_writing() {
    let c = Case::new();
    let z = c.manifest.images[0]
        .chunks
        .iter()
        .position(|&ch| ch == 0)
        .unwrap();
    let per = (CHUNK / 4096) as usize;
    let b = with_edited_index(&c.bytes, &c.f.key, |raw| raw[z * per * 16 + 3] = 1, |_| {});
    let e = c.install(&c.write("zero.otb", &b)).unwrap_err();
    assert!(
        matches!(e, Error::ChunkInvalid { index, .. } if index == z as u64),
        "{e}"
    );
    c.untouched();
}

#[test]
fn signed_block_hash_mismatch_is_caught_before_that_chunk_is_written() {
    let c = Case::new();
    let k = c.manifest.images[0]
        .chunks
        .iter()
        .rposition(|&ch| ch != 0)
        .unwrap();
    let per = (CHUNK / 4096) as usize;
    let b = with_edited_index(&c.bytes, &c.f.key, |raw| raw[k * per * 16] ^= 0x80, |_| {});
    let e = c.install(&c.write("hash.otb", &b)).unwrap_err();
    assert!(
        matches!(e, Error::ChunkInvalid { index, .. } if index == k as u64),
        "{e}"
    );
    let start = k * CHUNK as usize;
    let end = (start + CHUNK as usize).min(SIZE);
    assert!(fs::read(&c.slot).unwrap()[start..end] == c.old[start..end]);
}

#[test]
fn tampered_block_index_is_refused_before_writing() {
    let c = Case::new();
    // Index bytes changed, manifest left alone: the index no longer matches its signed hash.
    let b = with_edited_index(
        &c.bytes,
        &c.f.key,
        |raw| raw[100] ^= 1,
        |m| m.images[0].index.sha256 = c.manifest.images[0].index.sha256.clone(),
    );
    let e = c.install(&c.write("index.otb", &b)).unwrap_err();
    assert!(matches!(e, Error::IndexInvalid { .. }), "{e}");
    c.untouched();
}

#[test]
fn whole_image_hash_mismatch_fails_read_back() {
    let c = Case::new();
    let mut m = c.manifest.clone();
    m.images[0].sha256 = "f".repeat(64);
    let e = c.install(&c.resigned("whole.otb", &m)).unwrap_err();
    match &e {
        Error::ReadBackMismatch { chunk: None, .. } => {}
        other => panic!("expected ReadBackMismatch for the whole image, got {other}"),
    }
    assert!(e.to_string().contains("whole image"), "{e}");
}

#[test]
fn no_trusted_keys_means_no_install() {
    let c = Case::new();
    let e = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&[])
        .unwrap_err();
    assert!(matches!(e, Error::UntrustedSigners { .. }), "{e}");
}
