//! The `otter` CLI as a user runs it: keys, bundle create/inspect/verify, and clear errors with a
//! non-zero exit for bad input.
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

#[test]
fn keys_bundle_inspect_verify() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = otter(&["keys", "generate", "--out", "keys"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(p.join("keys/otter-signing.key").is_file());
    // Never overwrite a key.
    let o = otter(&["keys", "generate", "--out", "keys"], p);
    assert!(!o.status.success());
    let o = otter(
        &["keys", "generate", "--out", "other", "--name", "other"],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));

    let img: Vec<u8> = (0..(2u32 << 20) + 777).map(|i| (i % 253) as u8).collect();
    std::fs::write(p.join("root.img"), &img).unwrap();
    let o = otter(
        &[
            "bundle",
            "create",
            "--rootfs",
            "root.img",
            "--version",
            "1.2.3",
            "--compatible",
            "demo-board",
            "--key",
            "keys/otter-signing.key",
            "-o",
            "b.otb",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = otter(&["bundle", "inspect", "b.otb", "--json"], p);
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["version"], "1.2.3");
    assert_eq!(m["compatible"], "demo-board");
    assert_eq!(m["images"][0]["size"], img.len() as u64);

    let o = otter(
        &[
            "bundle",
            "verify",
            "b.otb",
            "--trusted",
            "keys/otter-signing.pub",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = otter(
        &["bundle", "verify", "b.otb", "--trusted", "other/other.pub"],
        p,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("trusted"), "{}", text(&o));

    // A flipped payload bit is caught by verify (the signature alone cannot see it).
    let mut bytes = std::fs::read(p.join("b.otb")).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(p.join("flip.otb"), &bytes).unwrap();
    let o = otter(&["bundle", "verify", "flip.otb", "--trusted", "keys"], p);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("chunk"), "{}", text(&o));
}

#[test]
fn build_refuses_bad_config_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::os::unix::fs::symlink(repo.join("boards"), p.join("boards")).unwrap();
    let good = std::fs::read_to_string(repo.join("examples/qemu-x86_64/otter.toml")).unwrap();
    for (name, text_, needle) in [
        (
            "unknown.toml",
            good.replace("[kernel]", "[kernel]\ncmdlin = \"x\""),
            "cmdlin",
        ),
        (
            "version.toml",
            good.replace("version = \"1.0.0\"", "version = \"1.0\""),
            "image.version",
        ),
        (
            "board.toml",
            good.replace("board = \"qemu-x86_64\"", "board = \"pi9\""),
            "pi9",
        ),
    ] {
        std::fs::write(p.join(name), text_).unwrap();
        let o = otter(&["build", "--config", name, "--out", "out"], p);
        assert!(!o.status.success(), "{name}");
        let t = text(&o);
        assert!(t.contains(name) && t.contains(needle), "{name}: {t}");
        assert!(!p.join("out").exists(), "{name}: nothing written");
    }
    // A good config with a missing key: refused before any slow step.
    std::fs::write(p.join("otter.toml"), &good).unwrap();
    let o = otter(
        &[
            "build",
            "--config",
            "otter.toml",
            "--out",
            "out",
            "--otterd",
            "/bin/true",
        ],
        p,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("signing.key"), "{}", text(&o));
}
