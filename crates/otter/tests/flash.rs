//! `otter flash` as a user runs it, into a file standing in for a drive, and the drive list.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

fn otter(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otter"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run otter")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 2 MiB sparse image with data in blocks 0 and 300, and its bmap next to it.
fn image(dir: &Path) -> bool {
    let p = dir.join("demo-1.0-pc.img");
    let f = File::create(&p).unwrap();
    f.set_len(2 << 20).unwrap();
    f.write_all_at(&[0x11; 4096], 0).unwrap();
    f.write_all_at(&[0x22; 4096], 300 * 4096).unwrap();
    f.sync_all().unwrap();
    let b = otter_image::bmap::Bmap::create(&p).unwrap();
    b.write(&dir.join("demo-1.0-pc.bmap")).unwrap();
    b.ranges.len() == 2
}

#[test]
fn flashes_an_image_into_a_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    if !image(p) {
        eprintln!("skipped: the temp dir's filesystem does not report holes");
        return;
    }
    std::fs::write(p.join("card.bin"), vec![0xA5u8; 2 << 20]).unwrap();
    let o = otter(&["flash", "demo-1.0-pc.img", "card.bin", "--json"], p);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["written_bytes"], 2 * 4096);
    assert_eq!(v["image_size"], 2 << 20);
    assert_eq!(v["verified"], true);
    assert_eq!(v["bmap"], "demo-1.0-pc.bmap");
    let card = std::fs::read(p.join("card.bin")).unwrap();
    assert!(card[..4096].iter().all(|&b| b == 0x11));
    assert!(card[4096..300 * 4096].iter().all(|&b| b == 0xA5));
    assert!(card[300 * 4096..301 * 4096].iter().all(|&b| b == 0x22));
    assert!(card[301 * 4096..].iter().all(|&b| b == 0xA5));

    // The text form says what it did; a new file is created.
    let o = otter(&["flash", "demo-1.0-pc.img", "new.bin"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("wrote 8.0 KiB of the 2.0 MiB image to new.bin"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("verified"), "{}", text(&o));
    assert_eq!(std::fs::metadata(p.join("new.bin")).unwrap().len(), 2 << 20);
}

#[test]
fn bad_input_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = otter(&["flash", "missing.img", "x.bin"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.img"), "{}", text(&o));
    assert!(
        !p.join("x.bin").exists(),
        "nothing is written for a bad image"
    );
    if !image(p) {
        return;
    }
    let o = otter(&["flash", "demo-1.0-pc.img", "demo-1.0-pc.img"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("it is the image itself"), "{}", text(&o));
    let o = otter(
        &["flash", "demo-1.0-pc.img", "x.bin", "--bmap", "other.bmap"],
        p,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("other.bmap"), "{}", text(&o));
    assert!(!p.join("x.bin").exists());
}

#[test]
fn lists_drives_without_a_device() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("a.img"), [1u8; 4096]).unwrap();
    // Whatever drives this machine has, the listing works and says something.
    let o = otter(&["flash", "a.img"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!o.stdout.is_empty());
    let o = otter(&["flash", "a.img", "--json"], p);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["image_size"], 4096);
    for drive in v["drives"].as_array().unwrap() {
        assert_eq!(drive["removable"], true, "only removable drives are listed");
        assert!(drive["path"].as_str().unwrap().starts_with("/dev/"));
    }
}
