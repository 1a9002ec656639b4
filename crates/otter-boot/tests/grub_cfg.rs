//! The generated grub.cfg and the GRUB image: content, syntax (grub-script-check), build.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use otter_boot::{
    BootError, CONSOLE_ARM64, GrubConfig, SLOT_BOOTENV_PATH, build_grub_efi, efi_boot_path,
    grub_cfg, grub_modules, kernel_args, parse_slot_bootenv, slot_bootenv,
};

fn cfg() -> String {
    grub_cfg(&GrubConfig::default()).unwrap()
}

#[test]
fn script_reads_validates_and_saves_every_variable() {
    let s = cfg();
    // Explicit variable lists for load_env (ignore anything else in the block) and for the
    // backup re-sync.
    assert_eq!(
        s.matches("load_env --file \"$1\" ORDER A_OK A_TRY B_OK B_TRY")
            .count(),
        1
    );
    assert!(s.contains("save_env --file \"$otter_env_bak\" ORDER A_OK A_TRY B_OK B_TRY"));
    assert!(s.contains("set otter_env=\"($root)/otter/grubenv\""));
    assert!(s.contains("set otter_env_bak=\"($root)/otter/grubenv.bak\""));
    // Validation of every value.
    assert!(s.contains("regexp '^(A B|B A)$' \"$ORDER\""));
    for v in ["A_OK", "B_OK"] {
        assert!(s.contains(&format!("regexp '^[01]$' \"${v}\"")), "{v}");
    }
    for v in ["A_TRY", "B_TRY"] {
        assert!(s.contains(&format!("regexp '^[0-3]$' \"${v}\"")), "{v}");
        // Decrement chain and save of only the changed variable to the primary.
        assert!(s.contains(&format!("otter_save {v}")), "{v}");
    }
    for (from, to) in [("3", "2"), ("2", "1")] {
        assert!(s.contains(&format!(
            "if [ \"$B_TRY\" = {from} ]; then\n      set B_TRY={to}"
        )));
    }
    // Primary, then backup, then the built-in default.
    let p = s.find("if otter_load \"$otter_env\"").unwrap();
    let b = s.find("elif otter_load \"$otter_env_bak\"").unwrap();
    let d = s.find("set otter_src=default").unwrap();
    assert!(p < b && b < d);
    // Both partitions, their labels, the slot's own arguments, never a prompt.
    assert!(s.contains("otter_boot A 2 otter-root-a 1"));
    assert!(s.contains("otter_boot B 3 otter-root-b 1"));
    assert!(s.contains("set otter_part=\"($otter_disk,gpt$2)\""));
    assert!(s.contains(&format!(
        "load_env --file \"$otter_part{SLOT_BOOTENV_PATH}\" OTTER_CMDLINE"
    )));
    assert!(s.contains("unset OTTER_CMDLINE"));
    assert!(s.contains("root=PARTLABEL=$3 ro panic=5 otter.slot=$1 otter.try=$4"));
    assert!(s.contains("'console=ttyS0,115200' 'console=tty0'"));
    assert!(s.trim_end().ends_with("reboot\nfi"));
    assert!(
        !s.contains("sleep --interruptible"),
        "timeout 0 must not wait"
    );
}

#[test]
fn parameters_are_applied() {
    let s = grub_cfg(&GrubConfig {
        slot_a_partnum: 5,
        slot_b_partnum: 7,
        console_args: CONSOLE_ARM64.into(),
        extra_cmdline: "quiet  systemd.log_level=info".into(),
        timeout_secs: 4,
    })
    .unwrap();
    assert!(s.contains("otter_boot A 5 otter-root-a 1"));
    assert!(s.contains("otter_boot B 7 otter-root-b 0"));
    assert!(s.contains("'console=ttyAMA0,115200' 'console=tty0' 'quiet' 'systemd.log_level=info'"));
    assert!(s.contains("sleep --interruptible 4"));
    assert!(!s.contains("gpt2") && !s.contains(" 2 otter-root-a"));
}

#[test]
fn bad_parameters_are_rejected() {
    let base = GrubConfig::default();
    for c in [
        GrubConfig {
            slot_a_partnum: 2,
            slot_b_partnum: 2,
            ..base.clone()
        },
        GrubConfig {
            slot_a_partnum: 0,
            ..base.clone()
        },
        GrubConfig {
            extra_cmdline: "otter.slot=B".into(),
            ..base.clone()
        },
        GrubConfig {
            extra_cmdline: "a='b'".into(),
            ..base.clone()
        },
        GrubConfig {
            extra_cmdline: r"a=b\c".into(),
            ..base.clone()
        },
        GrubConfig {
            console_args: r#"a=b"c d""#.into(),
            ..base.clone()
        },
    ] {
        assert!(grub_cfg(&c).is_err(), "{c:?}");
    }
}

#[test]
fn kernel_args_follow_linux_quoting() {
    assert_eq!(kernel_args(" a  b=c\td ").unwrap(), ["a", "b=c", "d"]);
    assert_eq!(
        kernel_args(r#"x="1 2" "y=3 4" z"#).unwrap(),
        ["x=1 2", "y=3 4", "z"]
    );
    assert!(matches!(
        kernel_args(r#"x=a"b""#),
        Err(BootError::BadKernelArg { .. })
    ));
    assert!(kernel_args("").unwrap().is_empty());
}

#[test]
fn slot_bootenv_round_trip_and_limits() {
    let b = slot_bootenv("loglevel=7  foo=bar").unwrap();
    assert_eq!(b.len(), 1024);
    assert_eq!(parse_slot_bootenv(&b).unwrap(), "loglevel=7 foo=bar");
    assert_eq!(parse_slot_bootenv(&slot_bootenv("").unwrap()).unwrap(), "");
    assert!(slot_bootenv(&"x".repeat(1000)).is_err());
    assert!(
        slot_bootenv(r#"a="b c""#).is_err(),
        "GRUB would split the quoted value"
    );
    assert!(slot_bootenv("otter.try=1").is_err());
}

#[test]
fn grub_script_check_accepts_the_script() {
    let Ok(out) = Command::new("grub-script-check").arg("--version").output() else {
        common::skip("grub-script-check not installed (Debian package grub-common)");
        return;
    };
    assert!(out.status.success());
    let d = tempfile::tempdir().unwrap();
    for timeout_secs in [0, 5] {
        let path = d.path().join(format!("grub-{timeout_secs}.cfg"));
        std::fs::write(
            &path,
            grub_cfg(&GrubConfig {
                timeout_secs,
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
        let out = Command::new("grub-script-check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grub-script-check rejected the script: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And it does catch errors, so the check above means something.
    let bad = d.path().join("bad.cfg");
    std::fs::write(&bad, "if [ x = x ]; then\necho\n").unwrap();
    assert!(
        !Command::new("grub-script-check")
            .arg(&bad)
            .output()
            .unwrap()
            .status
            .success()
    );
}

#[test]
fn build_grub_efi_x86_64() {
    let have = Command::new("grub-mkimage")
        .arg("--version")
        .output()
        .is_ok()
        && std::path::Path::new("/usr/lib/grub/x86_64-efi/moddep.lst").is_file();
    if !have {
        common::skip(
            "grub-mkimage or /usr/lib/grub/x86_64-efi missing (Debian package grub-efi-amd64-bin)",
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join(efi_boot_path("x86_64-efi").unwrap());
    build_grub_efi(&out, "x86_64-efi", None).unwrap();
    let bin = std::fs::read(&out).unwrap();
    assert!(bin.starts_with(b"MZ"), "not a PE/EFI binary");
    assert!(bin.len() > 200_000, "suspiciously small: {}", bin.len());
    // The prefix and the state logic's modules are inside.
    assert!(bin.windows(9).any(|w| w == b"/EFI/BOOT"));
    for m in grub_modules("x86_64-efi") {
        assert!(
            bin.windows(m.len()).any(|w| w == m.as_bytes()),
            "module {m} missing"
        );
    }
}

#[test]
fn build_grub_efi_errors_name_the_package() {
    let d = tempfile::tempdir().unwrap();
    let err = build_grub_efi(&d.path().join("x.efi"), "x86_64-efi", Some(d.path())).unwrap_err();
    assert!(err.to_string().contains("grub-efi-amd64-bin"), "{err}");
    let err = build_grub_efi(&d.path().join("x.efi"), "arm64-efi", Some(d.path())).unwrap_err();
    assert!(err.to_string().contains("grub-efi-arm64-bin"), "{err}");
    assert!(err.to_string().contains("dpkg-deb -x"), "{err}");
    assert!(matches!(
        build_grub_efi(&d.path().join("x.efi"), "riscv", None),
        Err(BootError::UnsupportedArch { .. })
    ));
}
