//! Flashing into plain files standing in for drives: only mapped blocks are written, the bmap
//! is found or given, compressed images stream, and verification catches a bad write.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_flash::{FlashError, FlashPlan, Progress, Target, verify};
use otter_image::bmap::{BLOCK_SIZE, Bmap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PATTERN: u8 = 0xA5;
const BLOCKS: u64 = 300;

/// A sparse image of 300 blocks and 123 bytes: data at a few places (one block of written
/// zeros among them), holes elsewhere. Returns its path and the data blocks.
fn sparse_image(dir: &Path) -> (PathBuf, u64, Vec<u64>) {
    let p = dir.join("demo-1.0-pc.img");
    let size = BLOCKS * BLOCK_SIZE + 123;
    let f = File::create(&p).unwrap();
    f.set_len(size).unwrap();
    let data_blocks: Vec<u64> = vec![0, 1, 2, 7, 100, 101, 200, BLOCKS];
    for &b in &data_blocks {
        let len = BLOCK_SIZE.min(size - b * BLOCK_SIZE) as usize;
        let fill: Vec<u8> = if b == 7 {
            vec![0; len]
        } else {
            (0..len).map(|i| (i as u64 * 31 + b) as u8 | 1).collect()
        };
        f.write_all_at(&fill, b * BLOCK_SIZE).unwrap();
    }
    f.sync_all().unwrap();
    (p, size, data_blocks)
}

/// Whether the temp dir's filesystem reports holes (else these tests cannot say much).
fn holes_work(image: &Path) -> bool {
    let f = File::open(image).unwrap();
    let size = f.metadata().unwrap().len();
    otter_image::bmap::data_extents(&f, size).unwrap() != vec![(0, size)]
}

fn prefilled(path: &Path, size: u64) {
    std::fs::write(path, vec![PATTERN; size as usize]).unwrap();
}

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

/// Check `target` against `image`: equal in `mapped` blocks, the pattern elsewhere.
fn check_target(target: &Path, image: &Path, mapped: &[u64]) {
    let t = std::fs::read(target).unwrap();
    let i = std::fs::read(image).unwrap();
    assert_eq!(t.len(), i.len(), "target has the image's size");
    for (b, (tb, ib)) in t
        .chunks(BLOCK_SIZE as usize)
        .zip(i.chunks(BLOCK_SIZE as usize))
        .enumerate()
    {
        if mapped.contains(&(b as u64)) {
            assert_eq!(tb, ib, "mapped block {b} matches the image");
        } else {
            assert!(
                tb.iter().all(|&x| x == PATTERN),
                "unmapped block {b} was left alone"
            );
        }
    }
}

#[test]
fn writes_only_mapped_blocks_guided_by_the_bmap() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, data) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    let bmap = Bmap::create(&img).unwrap();
    bmap.write(&d.path().join("demo-1.0-pc.bmap")).unwrap();
    let target = d.path().join("sdcard.bin");
    prefilled(&target, size);

    let plan = FlashPlan::new(&img, None).unwrap();
    assert_eq!(plan.bmap, Some(d.path().join("demo-1.0-pc.bmap")));
    assert!(!plan.compressed);
    let mut last = None;
    let written = plan
        .write(&Target::File(target.clone()), &mut |p| last = Some(p))
        .unwrap();
    let mapped_bytes = (data.len() as u64 - 1) * BLOCK_SIZE + 123;
    assert_eq!(written.bytes, mapped_bytes);
    assert_eq!(
        last,
        Some(Progress {
            done: mapped_bytes,
            total: Some(mapped_bytes)
        })
    );
    check_target(&target, &img, &data);
    assert_eq!(
        verify(&target, &written, &mut no_progress()).unwrap(),
        mapped_bytes
    );
}

#[test]
fn without_a_bmap_the_image_holes_guide_the_write_and_a_new_file_is_created() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, data) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    let plan = FlashPlan::new(&img, None).unwrap();
    assert_eq!(plan.bmap, None);
    // A shorter target is extended, its head kept where unmapped.
    let target = d.path().join("short.bin");
    prefilled(&target, size);
    let written = plan
        .write(&Target::File(target.clone()), &mut no_progress())
        .unwrap();
    check_target(&target, &img, &data);
    verify(&target, &written, &mut no_progress()).unwrap();

    let fresh = d.path().join("fresh.bin");
    plan.write(&Target::File(fresh.clone()), &mut no_progress())
        .unwrap();
    assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(&img).unwrap());
}

fn compress(src: &Path, dst: &Path) {
    let data = std::fs::read(src).unwrap();
    std::fs::write(dst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
}

#[test]
fn compressed_image_with_and_without_a_bmap() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, data) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    let zst = d.path().join("demo-1.0-pc.img.zst");
    compress(&img, &zst);
    Bmap::create(&img)
        .unwrap()
        .write(&d.path().join("demo-1.0-pc.bmap"))
        .unwrap();
    // Only the .zst and its bmap are needed.
    let raw = d.path().join("raw-copy.img");
    std::fs::rename(&img, &raw).unwrap();

    let plan = FlashPlan::new(&zst, None).unwrap();
    assert!(plan.compressed);
    assert_eq!(plan.image_size, Some(size));
    let target = d.path().join("t.bin");
    prefilled(&target, size);
    let written = plan
        .write(&Target::File(target.clone()), &mut no_progress())
        .unwrap();
    check_target(&target, &raw, &data);
    verify(&target, &written, &mut no_progress()).unwrap();

    // No bmap: the whole image is streamed (its size is learnt at the end).
    std::fs::remove_file(d.path().join("demo-1.0-pc.bmap")).unwrap();
    let plan = FlashPlan::new(&zst, None).unwrap();
    assert_eq!(plan.image_size, None);
    let mut totals = Vec::new();
    let target = d.path().join("t2.bin");
    prefilled(&target, size);
    let written = plan
        .write(&Target::File(target.clone()), &mut |p| totals.push(p.total))
        .unwrap();
    assert!(totals.iter().all(|t| t.is_none()));
    assert_eq!(written.image_size, size);
    assert_eq!(written.bytes, size);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&raw).unwrap()
    );
    verify(&target, &written, &mut no_progress()).unwrap();
}

#[test]
fn verification_catches_a_corrupted_write() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, _) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    Bmap::create(&img)
        .unwrap()
        .write(&d.path().join("demo-1.0-pc.bmap"))
        .unwrap();
    let target = d.path().join("t.bin");
    prefilled(&target, size);
    let plan = FlashPlan::new(&img, None).unwrap();
    let written = plan
        .write(&Target::File(target.clone()), &mut no_progress())
        .unwrap();

    // Damage outside the written ranges is not the flash's business.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    f.write_all_at(&[0], 50 * BLOCK_SIZE).unwrap();
    verify(&target, &written, &mut no_progress()).unwrap();
    // A flipped byte in block 101 (the 3rd range: 0-2, 7, 100-101, ...) is caught and named.
    f.write_all_at(&[0xFF], 101 * BLOCK_SIZE + 17).unwrap();
    f.sync_all().unwrap();
    let e = verify(&target, &written, &mut no_progress()).unwrap_err();
    assert!(matches!(e, FlashError::Verify { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("range 3 of 5") && msg.contains("blocks 100-101") && msg.contains("t.bin"),
        "{msg}"
    );
    // A target cut short is caught too.
    f.set_len(200 * BLOCK_SIZE).unwrap();
    let e = verify(&target, &written, &mut no_progress()).unwrap_err();
    assert!(e.to_string().contains("range 3 of 5"), "{e}");
}

#[test]
fn an_image_that_does_not_match_its_bmap_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, _) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    let bmap = d.path().join("demo-1.0-pc.bmap");
    Bmap::create(&img).unwrap().write(&bmap).unwrap();
    // Damage the image after its bmap was made.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0x42], 200 * BLOCK_SIZE + 5).unwrap();
    let plan = FlashPlan::new(&img, None).unwrap();
    let e = plan
        .write(&Target::File(d.path().join("t.bin")), &mut no_progress())
        .unwrap_err();
    assert!(
        e.to_string().contains("does not match its bmap")
            && e.to_string()
                .contains(&format!("bytes {}..", 200 * BLOCK_SIZE)),
        "{e}"
    );
    // A bmap of another size is refused before anything is written.
    f.set_len(size + BLOCK_SIZE).unwrap();
    let e = FlashPlan::new(&img, Some(&bmap)).unwrap_err();
    assert!(e.to_string().contains("belongs to another image"), "{e}");
    // And the image is never its own target.
    let plan = FlashPlan::new(&img, Some(Path::new("/nonexistent.bmap")));
    assert!(plan.unwrap_err().to_string().contains("nonexistent.bmap"));
    let plan = FlashPlan::new(&d.path().join("t-none.img"), None);
    assert!(plan.is_err());
    std::fs::remove_file(&bmap).unwrap();
    let plan = FlashPlan::new(&img, None).unwrap();
    let e = plan
        .write(&Target::File(img.clone()), &mut no_progress())
        .unwrap_err();
    assert!(e.to_string().contains("it is the image itself"), "{e}");
}

fn bmaptool() -> Option<PathBuf> {
    let out = Command::new("bmaptool").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("bmaptool"))
}

#[test]
fn bmap_round_trip_and_bmaptool_compatibility() {
    let d = tempfile::tempdir().unwrap();
    let (img, size, data) = sparse_image(d.path());
    if !holes_work(&img) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    let ours = d.path().join("ours.bmap");
    let b = Bmap::create(&img).unwrap();
    b.write(&ours).unwrap();
    assert_eq!(Bmap::load(&ours).unwrap(), b);

    let Some(tool) = bmaptool() else {
        eprintln!("skipped the bmaptool part: bmaptool not installed (apt-get install bmap-tools)");
        return;
    };
    // bmaptool copies with our bmap (it checks the file checksum and each range's checksum).
    // It truncates a file target, so the result is the image itself.
    let target = d.path().join("by-bmaptool.bin");
    let out = Command::new(&tool)
        .arg("copy")
        .arg("--bmap")
        .arg(&ours)
        .arg(&img)
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bmaptool copy refused our bmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&img).unwrap()
    );

    // And we read bmaptool's own: the same ranges, and it flashes.
    let theirs = d.path().join("theirs.bmap");
    let out = Command::new(&tool)
        .arg("create")
        .arg("-o")
        .arg(&theirs)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tb = Bmap::load(&theirs).unwrap();
    assert_eq!(tb.image_size, b.image_size);
    if tb.block_size == b.block_size {
        assert_eq!(tb.ranges, b.ranges, "bmaptool maps the same blocks");
    }
    let target = d.path().join("by-us.bin");
    prefilled(&target, size);
    let plan = FlashPlan::new(&img, Some(&theirs)).unwrap();
    let written = plan
        .write(&Target::File(target.clone()), &mut no_progress())
        .unwrap();
    check_target(&target, &img, &data);
    verify(&target, &written, &mut no_progress()).unwrap();
}
