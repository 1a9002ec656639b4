//! The block codec and the model of GRUB's `save_env` checked against `grub-editenv`, which is
//! built from the same envblk.c as GRUB. Skipped with a message if grub-editenv is missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::process::Command;

use otter_boot::{BootState, ENV_BLOCK_SIZE, Slot, env_block_decode, env_block_encode};

fn have_editenv() -> bool {
    let ok = Command::new("grub-editenv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip("grub-editenv not installed (Debian package grub-common)");
    }
    ok
}

/// grub-editenv's stdout, or None if it rejects the block.
fn try_editenv(args: &[&str], file: &std::path::Path) -> Option<Vec<u8>> {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        return Some(out.stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid environment block"),
        "grub-editenv {args:?}: {err}"
    );
    None
}

fn editenv(args: &[&str], file: &std::path::Path) -> Vec<u8> {
    try_editenv(args, file).unwrap()
}

#[test]
fn decoder_agrees_with_grub_on_valid_torn_and_odd_blocks() {
    if !have_editenv() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("env");
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    blocks.push(
        env_block_encode(&[("A", "x\\y"), ("N", "line1\nline2"), ("E", "")])
            .unwrap()
            .to_vec(),
    );
    let mut old = BootState::factory();
    old.mark_bad(Slot::B);
    let mut new = old;
    new.set_try(Slot::B, 3);
    let (o, n) = (old.to_env_block(), new.to_env_block());
    for k in (0..=100).chain([200, 511, 512, 1024]) {
        let mut c = o;
        c[..k].copy_from_slice(&n[..k]);
        blocks.push(c.to_vec());
        if k < 512 {
            c[k..512].fill(0);
            blocks.push(c.to_vec());
        }
    }
    let mut odd = n;
    odd[40..60].copy_from_slice(b"garbage-no-equals\n##");
    blocks.push(odd.to_vec());
    for b in blocks {
        fs::write(&f, &b).unwrap();
        let grub = try_editenv(&["list"], &f);
        let decoded = env_block_decode(&b);
        let (Some(grub), Ok(decoded)) = (&grub, &decoded) else {
            assert!(
                grub.is_none() && decoded.is_err(),
                "only one side rejects {b:?}"
            );
            continue;
        };
        let mut ours = Vec::new();
        for (name, value) in decoded {
            ours.extend_from_slice(name.as_bytes());
            ours.push(b'=');
            ours.extend_from_slice(value.as_bytes());
            ours.push(b'\n');
        }
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(grub),
            "block {:?}",
            String::from_utf8_lossy(&b[..80])
        );
    }
}

#[test]
fn grub_set_writes_what_our_encoder_writes() {
    if !have_editenv() {
        return;
    }
    // GRUB changing a value in our block gives exactly our block for the new state: the layout is
    // stable, so GRUB's in-place save_env and the agent's writes never fight.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("env");
    for s in BootState::all() {
        for slot in [Slot::A, Slot::B] {
            let mut want = s;
            if want.slot(slot).tries == 0 {
                continue;
            }
            want.slot_mut(slot).tries -= 1;
            fs::write(&f, s.to_env_block()).unwrap();
            let var = format!("{slot}_TRY={}", want.slot(slot).tries);
            editenv(&["set", &var], &f);
            let got = fs::read(&f).unwrap();
            assert_eq!(got.len(), ENV_BLOCK_SIZE);
            assert_eq!(got, want.to_env_block().to_vec(), "{s:?} {var}");
        }
    }
}
