//! `otter bundle diff`: what a device on OLD downloads for NEW, for raw images and bundles.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

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

/// `n` distinct pseudo-random 4 KiB blocks.
fn blocks(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn diff_of_images_and_of_bundles_agree() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // NEW = OLD with 2 blocks inserted after block 50: 2 new blocks, the rest shifted.
    let old = blocks(200, 1);
    let mut new = old[..50 * 4096].to_vec();
    new.extend_from_slice(&blocks(2, 2));
    new.extend_from_slice(&old[50 * 4096..]);
    std::fs::write(p.join("old.img"), &old).unwrap();
    std::fs::write(p.join("new.img"), &new).unwrap();

    let o = otter(&["bundle", "diff", "old.img", "new.img", "--json"], p);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["blocks"], 202);
    assert_eq!(
        j["seed_blocks"].as_u64().unwrap() + j["fetch_blocks"].as_u64().unwrap(),
        202
    );
    // The 2 new blocks sit in one 16 KiB chunk (blocks 48-51): fetched with the 2 old ones there.
    assert_eq!(j["fetch_chunks"], 1);
    assert_eq!(j["fetch_blocks_in_seed"], 2);
    assert_eq!(j["requests"], 1);
    let pct = j["percent_of_full"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 15.0, "{pct}");

    // The same figures from two bundles.
    assert!(
        otter(&["keys", "generate", "--out", "keys"], p)
            .status
            .success()
    );
    for (img, v) in [("old.img", "1.0.0"), ("new.img", "1.1.0")] {
        let o = otter(
            &[
                "bundle",
                "create",
                "--rootfs",
                img,
                "--version",
                v,
                "--compatible",
                "b",
                "--key",
                "keys/otter-signing.key",
                "-o",
                &format!("{v}.otb"),
            ],
            p,
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = otter(&["bundle", "diff", "1.0.0.otb", "1.1.0.otb", "--json"], p);
    assert!(o.status.success(), "{}", text(&o));
    let jb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["download_bytes", "requests", "seed_blocks", "fetch_chunks"] {
        assert_eq!(jb[k], j[k], "{k}");
    }
    assert!(jb["header_bytes"].as_u64().unwrap() > 0);

    // Human output names what matters.
    let o = otter(&["bundle", "diff", "1.0.0.otb", "new.img"], p);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("download") && t.contains("HTTP request"), "{t}");

    let o = otter(&["bundle", "diff", "missing.img", "new.img"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.img"), "{}", text(&o));
}
