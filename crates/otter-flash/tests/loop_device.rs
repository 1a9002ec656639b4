//! Flashing a real block device: a loop device over a file. Needs root and `losetup`; skipped
//! with a message otherwise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_flash::{FlashPlan, HostView, Target, check_device, resolve_target, verify};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for a loop device");
            return None;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Loop(PathBuf::from(
                String::from_utf8_lossy(&o.stdout).trim(),
            ))),
            Ok(o) => {
                eprintln!(
                    "skipped: losetup failed (no loop devices here?): {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: losetup not available ({e}); apt-get install mount");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn flashes_a_loop_device_with_the_safety_rules() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("img.img");
    let f = File::create(&img).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(&[0x5A; 8192], 1 << 20).unwrap();
    f.sync_all().unwrap();
    let backing = d.path().join("backing.bin");
    std::fs::write(&backing, vec![0xA5u8; 8 << 20]).unwrap();
    let Some(lo) = Loop::attach(&backing) else {
        return;
    };
    let view = HostView::host();
    let Target::Device(drive) = resolve_target(&view, &lo.0).unwrap() else {
        panic!("{} is not seen as a drive", lo.0.display());
    };
    assert_eq!(drive.size, 8 << 20);
    // A loop device is no removable drive: only with force.
    let e = check_device(&view, &drive, false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    check_device(&view, &drive, true).unwrap();

    let plan = FlashPlan::new(&img, None).unwrap();
    let target = Target::Device(drive.clone());
    {
        // Held open exclusively by someone else (as a mount would): refused.
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&lo.0)
            .unwrap();
        let e = plan.write(&target, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
    }
    let written = plan.write(&target, &mut |_| {}).unwrap();
    verify(&lo.0, &written, &mut |_| {}).unwrap();
    drop(lo);
    let back = std::fs::read(&backing).unwrap();
    assert!(
        back[..1 << 20].iter().all(|&b| b == 0xA5),
        "holes not written"
    );
    assert!(back[(1 << 20)..(1 << 20) + 8192].iter().all(|&b| b == 0x5A));
    assert!(back[(1 << 20) + 8192..].iter().all(|&b| b == 0xA5));

    // An image larger than the drive is refused before writing.
    let big = d.path().join("big.img");
    File::create(&big).unwrap().set_len(16 << 20).unwrap();
    let Some(lo) = Loop::attach(&backing) else {
        return;
    };
    let Target::Device(drive) = resolve_target(&view, &lo.0).unwrap() else {
        panic!("not a drive");
    };
    let e = FlashPlan::new(&big, None)
        .unwrap()
        .write(&Target::Device(drive), &mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("larger than the drive"), "{e}");
}
