//! Boots OVMF with a blank disk under whatever accelerator works here (TCG in CI) and checks
//! that the firmware reaches its boot manager on the serial log. Skipped when QEMU or OVMF is
//! missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use otter_vm::{Accel, Arch, RunningVm, Serial, VmOptions, find_ovmf};

fn missing() -> Option<String> {
    let ok = |p: &str| {
        std::process::Command::new(p)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("qemu-system-x86_64") {
        return Some("qemu-system-x86_64 missing (apt-get install qemu-system-x86)".into());
    }
    if !ok("qemu-img") {
        return Some("qemu-img missing (apt-get install qemu-utils)".into());
    }
    find_ovmf(Arch::X86_64).err().map(|e| e.to_string())
}

#[test]
fn ovmf_reaches_boot_manager_on_blank_disk() {
    if let Some(why) = missing() {
        eprintln!("skipping: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("blank.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let log = d.path().join("serial.log");
    let mut opts = VmOptions::new(&image);
    opts.serial = Serial::File(log.clone());
    opts.accel = Accel::Auto;
    opts.ssh_port = Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    opts.no_reboot = true;
    let mut vm = RunningVm::spawn(&opts, &d.path().join("work")).unwrap();
    assert_eq!(vm.serial_log(), Some(log.as_path()));
    assert!(vm.prepared().disk.ends_with("work/overlay.qcow2"));

    let start = Instant::now();
    let timeout = Duration::from_secs(240);
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        if text.contains("BdsDxe") {
            break;
        }
        if let Some(status) = vm.try_wait().unwrap() {
            panic!(
                "QEMU exited ({status}); qemu.log:\n{}\nserial:\n{text}",
                vm.qemu_output()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "no BdsDxe on the serial log after {timeout:?}; serial:\n{text}\nqemu.log:\n{}",
            vm.qemu_output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("OVMF boot manager after {:?}", start.elapsed());

    let status = vm.kill().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "power cut is SIGKILL");
    assert!(!vm.is_running().unwrap());
    // The image itself was not written.
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
    let head = std::fs::read(&image).unwrap();
    assert!(head.iter().all(|b| *b == 0));
}

#[test]
fn qemu_failing_at_start_is_reported() {
    if let Some(why) = missing() {
        eprintln!("skipping: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("blank.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut opts = VmOptions::new(&image);
    opts.serial = Serial::File(d.path().join("serial.log"));
    opts.accel = Accel::Tcg;
    // A port that is taken makes the user-mode network fail to start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    opts.ssh_port = Some(taken.local_addr().unwrap().port());
    let err = RunningVm::spawn(&opts, &d.path().join("work"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("QEMU exited right after start"), "{err}");
    assert!(err.contains("hostfwd") || err.contains("forward"), "{err}");
}
