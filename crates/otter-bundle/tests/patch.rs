//! Patch sets against a named older image (`create_bundle_with_patches`): a device whose seed
//! is that image rebuilds the changed chunks from small frames; every other device installs from
//! the same bundle by block reuse; damaged patches or seeds fall back to fetching.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use otter_bundle::*;

const CHUNK: u32 = 16 * 1024;

struct Case {
    f: Fixture,
    new: Vec<u8>,
    /// The active slot: OLD and junk after it.
    seed: PathBuf,
    old_bundle: PathBuf,
    /// NEW with a patch set against OLD.
    bundle: PathBuf,
    manifest: Manifest,
    /// NEW without patches.
    plain: PathBuf,
}

/// OLD: 400 random blocks. NEW: one byte in 64 changed in blocks 50..150 (no block survives
/// whole), 3000 new bytes inserted at block 200 (every later block shifts off its 4 KiB grid),
/// padded to whole blocks. Block reuse finds little after block 50; a byte-level patch finds
/// nearly everything.
fn case() -> Case {
    let f = Fixture::new();
    let old = random_blocks(400, 11, 300..310);
    let mut new = old[..200 * 4096].to_vec();
    for b in 50..150 {
        for k in (0..4096).step_by(64) {
            new[b * 4096 + k] ^= 0x5a;
        }
    }
    new.extend_from_slice(&random_blocks(1, 12, 0..0)[..3000]);
    new.extend_from_slice(&old[200 * 4096..]);
    new.resize(new.len().div_ceil(4096) * 4096, 0x33);
    let old_img = f.path("old.img");
    let new_img = f.path("new.img");
    fs::write(&old_img, &old).unwrap();
    fs::write(&new_img, &new).unwrap();
    let (old_bundle, _) = f.bundle("old.otb", &old_img, "1.0.0", CHUNK);
    let (plain, _) = f.bundle("plain.otb", &new_img, "2.0.0", CHUNK);
    let bundle = f.path("new.otb");
    let manifest = create_bundle_with_patches(
        &bundle,
        &[("rootfs", new_img.as_path())],
        &CreateOptions {
            compatible: COMPAT.into(),
            version: "2.0.0".into(),
            chunk_size: CHUNK,
            zstd_level: 3,
        },
        &[&f.key],
        &[old_bundle.to_str().unwrap()],
    )
    .unwrap();
    let seed = f.path("slot-a");
    let mut slot = old.clone();
    slot.extend_from_slice(&random_blocks(5, 13, 0..0));
    fs::write(&seed, &slot).unwrap();
    Case {
        f,
        new,
        seed,
        old_bundle,
        bundle,
        manifest,
        plain,
    }
}

impl Case {
    fn target(&self, name: &str) -> PathBuf {
        self.f.slot(name, self.new.len() + 8192).0
    }

    fn install(&self, bundle: &Path, seed: Option<&Path>) -> (PathBuf, InstallReport) {
        let target = self.target(&format!(
            "slot-b-{}",
            bundle.file_name().unwrap().to_string_lossy()
        ));
        let opts = InstallOptions {
            seed: seed.map(|s| Seed {
                slot: s.to_owned(),
                saved_index: None,
            }),
            ..Default::default()
        };
        let mut v = BundleReader::open(bundle.to_str().unwrap())
            .unwrap()
            .verify(&self.f.trusted())
            .unwrap();
        let r = v
            .install_image_with("rootfs", &target, &opts, &mut |_| {})
            .unwrap();
        (target, r)
    }

    fn assert_installed(&self, target: &Path) {
        let got = fs::read(target).unwrap();
        assert!(got[..self.new.len()] == self.new[..], "target holds NEW");
    }
}

#[test]
fn bundle_names_the_old_image_and_stays_format_2() {
    let c = case();
    let m = &c.manifest;
    assert_eq!(m.format, 2);
    assert_eq!(m.patches.len(), 1);
    let ps = &m.patches[0];
    assert_eq!(ps.image, "rootfs");
    assert_eq!(ps.from.version, "1.0.0");
    assert_eq!(ps.from.size, 400 * 4096);
    assert_eq!(ps.data, "rootfs.patch1");
    assert!(ps.units > 0);
    assert_eq!(m.images.len(), 2, "the patch data travels as an image");
    // The whole bundle checks like any other.
    let v = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    v.check_payload(&mut |_, _| {}).unwrap();
    // Reproducible: the same inputs give the same bytes.
    let again = c.f.path("again.otb");
    create_bundle_with_patches(
        &again,
        &[("rootfs", c.f.path("new.img").as_path())],
        &CreateOptions {
            compatible: COMPAT.into(),
            version: "2.0.0".into(),
            chunk_size: CHUNK,
            zstd_level: 3,
        },
        &[&c.f.key],
        &[c.old_bundle.to_str().unwrap()],
    )
    .unwrap();
    if std::env::var("SOURCE_DATE_EPOCH").is_ok() {
        assert_eq!(fs::read(&again).unwrap(), fs::read(&c.bundle).unwrap());
    }
}

#[test]
fn patched_install_gives_the_identical_image_and_downloads_less() {
    let c = case();
    let (t, plain) = c.install(&c.plain, Some(&c.seed));
    c.assert_installed(&t);
    assert_eq!(plain.patch_from, None);
    let (t, r) = c.install(&c.bundle, Some(&c.seed));
    c.assert_installed(&t);
    assert_eq!(r.patch_from.as_deref(), Some("1.0.0"), "{r:?}");
    assert!(r.patched_chunks > 0, "{r:?}");
    assert_eq!(r.patch_failed_units, 0);
    assert_eq!(r.seed_mismatches, 0);
    assert_eq!(r.fetch_planned, r.bytes_fetched, "the plan was exact");
    assert!(
        r.bytes_fetched * 4 < plain.bytes_fetched,
        "patched {} vs block reuse {}",
        r.bytes_fetched,
        plain.bytes_fetched
    );

    // `otter bundle diff` figures agree with the install.
    let reader = BundleReader::open(c.bundle.to_str().unwrap()).unwrap();
    let old_index = BundleReader::open(c.old_bundle.to_str().unwrap())
        .unwrap()
        .read_index("rootfs")
        .unwrap();
    let d = patched_diff(&reader, "rootfs", &old_index, DEFAULT_MAX_GAP)
        .unwrap()
        .unwrap();
    assert_eq!(d.from_version, "1.0.0");
    assert_eq!(d.download_bytes, r.bytes_fetched);
    assert_eq!(d.patched_chunks, r.patched_chunks);
}

#[test]
fn saved_seed_index_selects_the_patch_too() {
    let c = case();
    let old_index = BundleReader::open(c.old_bundle.to_str().unwrap())
        .unwrap()
        .read_index("rootfs")
        .unwrap();
    let ps = &c.manifest.patches[0];
    let file = c.f.path("slot-a.index");
    SavedIndex {
        identity: ps.from.clone(),
        index: old_index,
    }
    .save(&file)
    .unwrap();
    let target = c.target("slot-b");
    let mut v = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    let r = v
        .install_image_with(
            "rootfs",
            &target,
            &InstallOptions {
                seed: Some(Seed {
                    slot: c.seed.clone(),
                    saved_index: Some((file, ps.from.clone())),
                }),
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.seed_index, Some(SeedIndexSource::Saved));
    assert_eq!(r.patch_from.as_deref(), Some("1.0.0"));
}

#[test]
fn device_on_another_version_installs_from_the_same_bundle() {
    let c = case();
    // A seed holding something else: the first 250 blocks of NEW and junk.
    let other = c.f.path("other-slot");
    let mut data = c.new[..250 * 4096].to_vec();
    data.extend_from_slice(&random_blocks(100, 14, 0..0));
    fs::write(&other, &data).unwrap();
    let (t, r) = c.install(&c.bundle, Some(&other));
    c.assert_installed(&t);
    assert_eq!(r.patch_from, None);
    assert_eq!(r.patched_chunks, 0);
    assert!(r.bytes_reused >= 200 * 4096, "{r:?}");
    // And without any seed.
    let (t, r) = c.install(&c.bundle, None);
    c.assert_installed(&t);
    assert_eq!(r.patch_from, None);
}

#[test]
fn damaged_patch_data_falls_back_to_fetching() {
    let c = case();
    let mut bytes = fs::read(&c.bundle).unwrap();
    let m = manifest_of(&bytes);
    let data_img = m
        .images
        .iter()
        .position(|i| i.name == "rootfs.patch1")
        .unwrap();
    // The last stored chunk of the data image holds unit records.
    let k = m.images[data_img]
        .chunks
        .iter()
        .rposition(|&c| c > 0)
        .unwrap();
    let (start, len) = chunk_frame(&bytes, data_img, k);
    bytes[start + len / 2] ^= 0xff;
    let bad = c.f.path("bad-patch.otb");
    fs::write(&bad, &bytes).unwrap();

    // The bundle no longer checks as a whole...
    let v = BundleReader::open(bad.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    assert!(v.check_payload(&mut |_, _| {}).is_err());
    // ...but a device on OLD still installs NEW: what the patch did not produce is fetched.
    let (t, r) = c.install(&bad, Some(&c.seed));
    c.assert_installed(&t);
    assert!(r.patch_note.is_some(), "{r:?}");
}

#[test]
fn damaged_seed_blocks_make_units_fail_and_chunks_get_fetched() {
    let c = case();
    let old_index = BundleReader::open(c.old_bundle.to_str().unwrap())
        .unwrap()
        .read_index("rootfs")
        .unwrap();
    let ps = c.manifest.patches[0].clone();
    let file = c.f.path("slot-a.index");
    // The saved index says the slot holds OLD, but blocks 60..140 were damaged since.
    SavedIndex {
        identity: ps.from.clone(),
        index: old_index,
    }
    .save(&file)
    .unwrap();
    let mut slot = fs::read(&c.seed).unwrap();
    for b in 60..140 {
        slot[b * 4096 + 7] ^= 0x01;
    }
    fs::write(&c.seed, &slot).unwrap();
    let target = c.target("slot-b");
    let mut v = BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .verify(&c.f.trusted())
        .unwrap();
    let r = v
        .install_image_with(
            "rootfs",
            &target,
            &InstallOptions {
                seed: Some(Seed {
                    slot: c.seed.clone(),
                    saved_index: Some((file, ps.from.clone())),
                }),
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.patch_from.as_deref(), Some("1.0.0"));
    assert!(r.patch_failed_units > 0, "{r:?}");
    assert!(r.seed_mismatches > 0, "{r:?}");
}

#[test]
fn patch_sets_naming_missing_images_are_refused() {
    let c = case();
    let mut m = c.manifest.clone();
    m.patches[0].data = "nope".into();
    assert!(m.check().unwrap_err().contains("data image"));
    let mut m = c.manifest.clone();
    m.patches[0].units_offset += 1;
    assert!(m.check().is_err());
    let mut m = c.manifest.clone();
    m.patches[0].from.size = 4097;
    assert!(m.check().is_err());
    let mut m = c.manifest.clone();
    let p = m.patches[0].clone();
    m.patches.push(p);
    assert!(m.check().is_err(), "one data image per patch set");
}
