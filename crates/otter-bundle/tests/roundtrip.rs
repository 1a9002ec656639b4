//! Happy paths: create → open → verify → install → read back, on files standing for slots.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;

use common::*;
use otter_bundle::*;

#[test]
fn roundtrip_default_chunk_size_into_larger_slot() {
    let f = Fixture::new();
    let size = 3 * 1024 * 1024 + 12_345; // not a multiple of the chunk size
    let (img, data) = f.write_image("rootfs.img", size, 1);
    let (bundle, created) = f.bundle("os.otb", &img, "1.2.0", DEFAULT_CHUNK_SIZE);
    let (slot, old) = f.slot("slot-b", size + 1_000_000);

    let reader = BundleReader::open(bundle.to_str().unwrap()).unwrap();
    assert_eq!(reader.manifest(), &created);
    assert_eq!(
        reader.signer_fingerprints(),
        vec![f.key.public().fingerprint()]
    );
    let mut v = reader.verify(&f.trusted()).unwrap();
    assert_eq!(v.signer(), f.key.public().fingerprint());
    v.check_policy(&policy(Some("1.1.0"))).unwrap();

    let mut events = Vec::new();
    let report = v
        .install_image("rootfs", &slot, &mut |p| events.push(p))
        .unwrap();

    let entry = &created.images[0];
    assert_eq!(entry.size, size as u64);
    assert_eq!(entry.sha256, sha_hex(&data));
    assert!(
        entry.zero_chunks() >= 2,
        "zero chunks are expected in the test image"
    );
    assert_eq!(report.plan.zero_chunks as usize, entry.zero_chunks());
    assert_eq!(report.bytes_written, size as u64);
    assert_eq!(report.bytes_fetched, entry.stored_bytes());

    let after = fs::read(&slot).unwrap();
    assert!(after[..size] == data[..], "slot prefix equals the image");
    assert!(
        after[size..] == old[size..],
        "bytes past the image are untouched"
    );
    assert_eq!(
        sha256_file_prefix(&slot, size as u64).unwrap(),
        sha_hex(&data)
    );

    // Progress: monotonic, complete, read-back reported.
    assert!(
        events
            .windows(2)
            .all(|w| w[0].done_bytes <= w[1].done_bytes)
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0].verified_bytes <= w[1].verified_bytes)
    );
    let last = events.last().unwrap();
    assert_eq!(last.done_bytes, size as u64);
    assert_eq!(last.total_bytes, size as u64);
    assert_eq!(last.verified_bytes, size as u64);
    assert_eq!(last.fetched_bytes, entry.stored_bytes());
}

#[test]
fn roundtrip_small_chunks_exact_size_slot() {
    let f = Fixture::new();
    let size = 1_000_001;
    let (img, data) = f.write_image("rootfs.img", size, 2);
    let (bundle, m) = f.bundle("os.otb", &img, "2.0.0-rc.1", 4096);
    assert_eq!(m.images[0].chunks.len(), size.div_ceil(4096));
    assert_eq!(
        m.images[0].chunk_len(m.images[0].chunks.len() - 1),
        size % 4096
    );
    let (slot, _) = f.slot("slot", size);
    install(bundle.to_str().unwrap(), &f.trusted(), &slot).unwrap();
    assert!(fs::read(&slot).unwrap() == data);
}

#[test]
fn bundle_file_layout_matches_the_documented_format() {
    let f = Fixture::new();
    let (img, data) = f.write_image("rootfs.img", 300_000, 3);
    let (bundle, m) = f.bundle("os.otb", &img, "1.0.0", 65536);
    let bytes = fs::read(&bundle).unwrap();
    assert_eq!(&bytes[..8], b"OTTERBND");
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        FORMAT_VERSION
    );
    let mlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let manifest: Manifest = serde_json::from_slice(&bytes[16..16 + mlen]).unwrap();
    assert_eq!(manifest, m);
    let n = u32::from_le_bytes(bytes[16 + mlen..20 + mlen].try_into().unwrap()) as usize;
    assert_eq!(n, 1);
    let sig_block = &bytes[20 + mlen..20 + mlen + 96];
    assert_eq!(&sig_block[..32], &f.key.public().to_bytes());
    let payload = &bytes[20 + mlen + 96..];
    assert_eq!(payload.len() as u64, m.payload_size());
    let img_entry = &m.images[0];
    // The block index comes first: one zstd frame of 16-byte truncated SHA-256 per 4 KiB block,
    // zeros for all-zero blocks.
    let ix = &img_entry.index;
    assert_eq!(ix.offset, 0);
    let raw = zstd::decode_all(&payload[..ix.csize as usize]).unwrap();
    assert_eq!(raw.len() as u64, ix.size);
    assert_eq!(sha_hex(&raw), ix.sha256);
    for (i, block) in data.chunks(4096).enumerate() {
        let h = &raw[i * 16..(i + 1) * 16];
        if block.iter().all(|&b| b == 0) {
            assert_eq!(h, [0u8; 16]);
        } else {
            assert_eq!(
                h,
                &<sha2::Sha256 as sha2::Digest>::digest(block)[..16],
                "block {i}"
            );
        }
    }
    // Then each stored chunk: an independent zstd frame of the raw chunk.
    assert_eq!(img_entry.chunks_offset, ix.csize);
    let mut off = img_entry.chunks_offset as usize;
    for (i, &csize) in img_entry.chunks.iter().enumerate() {
        let raw = &data[i * 65536..(i * 65536 + img_entry.chunk_len(i))];
        if csize == 0 {
            assert!(raw.iter().all(|&b| b == 0));
        } else {
            let frame = &payload[off..off + csize as usize];
            assert_eq!(zstd::decode_all(frame).unwrap(), raw);
        }
        off += csize as usize;
    }
    assert_eq!(off, payload.len());
    // Signature = Ed25519 over SHA-256("otter-bundle-v2\0" || manifest).
    let reader = BundleReader::open(bundle.to_str().unwrap()).unwrap();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, b"otter-bundle-v2\0");
    sha2::Digest::update(&mut h, &bytes[16..16 + mlen]);
    assert_eq!(
        reader.manifest_digest_hex(),
        hex::encode(sha2::Digest::finalize(h))
    );
    assert_eq!(reader.payload_offset() as usize, 20 + mlen + 96);
}

#[test]
fn several_images_and_several_keys() {
    let f = Fixture::new();
    let other = SigningKey::generate();
    let (root, root_data) = f.write_image("rootfs.img", 700_000, 4);
    let (boot, boot_data) = f.write_image("boot.img", 130_000, 5);
    let out = f.path("multi.otb");
    let opts = CreateOptions::new(COMPAT, "3.0.0");
    let m = create_bundle(
        &out,
        &[("rootfs", root.as_path()), ("boot", boot.as_path())],
        &opts,
        &[&other, &f.key],
    )
    .unwrap();
    assert_eq!(m.images.len(), 2);
    assert_eq!(m.images[1].index.offset, m.images[0].index.csize);
    assert_eq!(m.images[1].chunks_offset, m.images[0].chunks_end());

    let (slot_root, _) = f.slot("root-b", 800_000);
    let (slot_boot, _) = f.slot("boot-b", 130_000);
    let r = BundleReader::open(out.to_str().unwrap()).unwrap();
    assert_eq!(r.signer_fingerprints().len(), 2);
    // Only the second signer is trusted: still accepted.
    let mut v = r.verify(&f.trusted()).unwrap();
    v.install_image("boot", &slot_boot, &mut |_| {}).unwrap();
    v.install_image("rootfs", &slot_root, &mut |_| {}).unwrap();
    assert!(fs::read(&slot_boot).unwrap() == boot_data);
    assert!(fs::read(&slot_root).unwrap()[..700_000] == root_data[..]);
    let e = v
        .install_image("nope", &slot_boot, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::ImageNotFound { .. }), "{e}");
}

#[test]
fn all_zero_image_has_empty_payload() {
    let f = Fixture::new();
    let img = f.path("zero.img");
    fs::write(&img, vec![0u8; 600_000]).unwrap();
    let (bundle, m) = f.bundle("zero.otb", &img, "1.0.0", 65536);
    assert_eq!(m.images[0].chunk_bytes(), 0);
    let (slot, _) = f.slot("slot", 600_000);
    let report = install(bundle.to_str().unwrap(), &f.trusted(), &slot).unwrap();
    assert_eq!(
        report.bytes_fetched, m.images[0].index.csize,
        "only the index"
    );
    assert!(
        fs::read(&slot).unwrap().iter().all(|&b| b == 0),
        "zeros were written over old data"
    );
}

#[test]
fn inspect_needs_no_keys() {
    let f = Fixture::new();
    let (img, _) = f.write_image("rootfs.img", 200_000, 6);
    let (bundle, m) = f.bundle("os.otb", &img, "1.0.0", DEFAULT_CHUNK_SIZE);
    let r = BundleReader::open(bundle.to_str().unwrap()).unwrap();
    assert_eq!(r.manifest().version, "1.0.0");
    assert_eq!(r.manifest().compatible, COMPAT);
    assert_eq!(r.manifest().images[0].sha256, m.images[0].sha256);
    r.check_complete().unwrap();
}

#[test]
fn failed_create_leaves_nothing_behind() {
    let f = Fixture::new();
    let out = f.path("out").join("os.otb");
    fs::create_dir(f.path("out")).unwrap();
    let missing = f.path("missing.img");
    let opts = CreateOptions::new(COMPAT, "1.0.0");
    let e = create_bundle(&out, &[("rootfs", missing.as_path())], &opts, &[&f.key]).unwrap_err();
    assert!(e.to_string().contains("missing.img"), "{e}");
    assert_eq!(fs::read_dir(f.path("out")).unwrap().count(), 0);

    let (img, _) = f.write_image("rootfs.img", 10_000, 7);
    let e = create_bundle(&out, &[("rootfs", img.as_path())], &opts, &[]).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    let bad = CreateOptions::new(COMPAT, "latest");
    assert!(matches!(
        create_bundle(&out, &[("rootfs", img.as_path())], &bad, &[&f.key]),
        Err(Error::InvalidVersion { .. })
    ));
    let bad = CreateOptions::new("my board", "1.0.0");
    assert!(matches!(
        create_bundle(&out, &[("rootfs", img.as_path())], &bad, &[&f.key]),
        Err(Error::InvalidName { .. })
    ));
    assert_eq!(fs::read_dir(f.path("out")).unwrap().count(), 0);
}

#[test]
fn policy_rules() {
    let f = Fixture::new();
    let (img, _) = f.write_image("rootfs.img", 50_000, 8);
    let (bundle, _) = f.bundle("os.otb", &img, "1.5.0", DEFAULT_CHUNK_SIZE);
    let v = BundleReader::open(bundle.to_str().unwrap())
        .unwrap()
        .verify(&f.trusted())
        .unwrap();
    v.check_policy(&policy(None)).unwrap();
    v.check_policy(&policy(Some("1.5.0"))).unwrap(); // reinstall
    v.check_policy(&policy(Some("1.5.0+build.7"))).unwrap(); // build metadata ignored
    v.check_policy(&policy(Some("1.4.9"))).unwrap();
    v.check_policy(&policy(Some("1.5.0-rc.1"))).unwrap(); // release > its pre-release
    for running in ["1.5.1", "2.0.0", "1.10.0"] {
        let e = v.check_policy(&policy(Some(running))).unwrap_err();
        assert!(matches!(e, Error::Downgrade { .. }), "{running}: {e}");
    }
    let mut p = policy(Some("2.0.0"));
    p.allow_downgrade = true;
    v.check_policy(&p).unwrap();
    let mut p = policy(None);
    p.compatible = "other-board".into();
    let e = v.check_policy(&p).unwrap_err();
    assert!(matches!(e, Error::Incompatible { .. }));
    assert!(e.to_string().contains("other-board") && e.to_string().contains(COMPAT));
}

#[test]
fn page_cache_read_back_mode_installs_the_same_bytes() {
    let f = Fixture::new();
    let size = 900_000;
    let (img, data) = f.write_image("rootfs.img", size, 9);
    let (bundle, _) = f.bundle("os.otb", &img, "1.0.0", 65536);
    let (slot, _) = f.slot("slot", size);
    let mut v = BundleReader::open(bundle.to_str().unwrap())
        .unwrap()
        .verify(&f.trusted())
        .unwrap();
    let opts = InstallOptions {
        read_back: ReadBack::PageCache,
        ..Default::default()
    };
    let report = v
        .install_image_with("rootfs", &slot, &opts, &mut |_| {})
        .unwrap();
    assert!(report.verify_seconds <= report.seconds);
    assert!(fs::read(&slot).unwrap() == data);
    assert_eq!(InstallOptions::default().read_back, ReadBack::Storage);
}
