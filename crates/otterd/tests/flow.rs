//! The agent's whole update flow on files standing for the device (OTTERD_ROOT layout):
//! install → trial boot → commit, fallback → rollback recorded, and bad bundles refused with
//! nothing written.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_boot::{BootState, GrubEnvStore, Slot};
use otterd::Paths;
use otterd::agent::{self, Situation};
use otterd::install::{InstallOptions, install};
use otterd::state::{Phase, read_state};
use std::path::{Path, PathBuf};

struct Device {
    _dir: tempfile::TempDir,
    paths: Paths,
    key: otter_bundle::SigningKey,
    image: PathBuf,
    work: PathBuf,
}

const SLOT_SIZE: u64 = 8 << 20;

fn device() -> Device {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let paths = Paths::under(&root);
    for d in [
        &paths.boot_state_dir,
        &paths.state_dir,
        &paths.keys_dir,
        &root.join("proc"),
        &root.join("dev"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (secret, public) = otter_bundle::generate_keypair(&work, "k").unwrap();
    std::fs::copy(&public, paths.keys_dir.join("k.pub")).unwrap();
    std::fs::write(
        &paths.release,
        "name = \"demo\"\nversion = \"1.0.0\"\ncompatible = \"demo-qemu\"\nboard = \"qemu-x86_64\"\nbuild_time = 1\n",
    )
    .unwrap();
    std::fs::write(
        &paths.cmdline,
        "root=PARTLABEL=otter-root-a ro otter.slot=A otter.try=0\n",
    )
    .unwrap();
    GrubEnvStore::new(&paths.boot_state_dir)
        .init(&BootState::factory())
        .unwrap();
    std::fs::write(&paths.slot_a, vec![0xAAu8; SLOT_SIZE as usize]).unwrap();
    std::fs::write(&paths.slot_b, vec![0xBBu8; SLOT_SIZE as usize]).unwrap();
    let image = work.join("rootfs.img");
    let mut data: Vec<u8> = (0..(3u32 << 20) + 12345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    data[1 << 20..(1 << 20) + 300_000].fill(0);
    std::fs::write(&image, &data).unwrap();
    Device {
        _dir: dir,
        paths,
        key: otter_bundle::SigningKey::load(&secret).unwrap(),
        image,
        work,
    }
}

impl Device {
    fn bundle(&self, name: &str, version: &str, compatible: &str, image: &Path) -> String {
        self.bundle_with(name, version, compatible, image, &self.key)
    }
    fn bundle_with(
        &self,
        name: &str,
        version: &str,
        compatible: &str,
        image: &Path,
        key: &otter_bundle::SigningKey,
    ) -> String {
        let out = self.work.join(name);
        otter_bundle::create_bundle(
            &out,
            &[("rootfs", image)],
            &otter_bundle::CreateOptions {
                compatible: compatible.into(),
                version: version.into(),
                chunk_size: 64 * 1024,
                zstd_level: 3,
            },
            &[key],
        )
        .unwrap();
        out.display().to_string()
    }
    fn boot(&self) -> BootState {
        GrubEnvStore::new(&self.paths.boot_state_dir)
            .load()
            .unwrap()
            .0
    }
    /// What GRUB does at power-on: pick a slot (decrementing a try), then the kernel runs it.
    fn power_on(&self, release_version: &str) -> Slot {
        let store = GrubEnvStore::new(&self.paths.boot_state_dir);
        let mut s = store.load().unwrap().0;
        let (slot, tried) = s.grub_boot_step().unwrap();
        store.store(&s).unwrap();
        std::fs::write(
            &self.paths.cmdline,
            format!("ro otter.slot={slot} otter.try={}\n", tried as u8),
        )
        .unwrap();
        let rel = std::fs::read_to_string(&self.paths.release).unwrap();
        let rel: Vec<String> = rel
            .lines()
            .map(|l| {
                if l.starts_with("version") {
                    format!("version = \"{release_version}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.paths.release, rel.join("\n")).unwrap();
        slot
    }
    fn install(&self, src: &str, allow_downgrade: bool) -> anyhow::Result<()> {
        install(
            &self.paths,
            &InstallOptions {
                source: src.into(),
                allow_downgrade,
                ..Default::default()
            },
            &mut |_| {},
        )
        .map(|_| ())
    }
    fn slot_b(&self) -> Vec<u8> {
        std::fs::read(&self.paths.slot_b).unwrap()
    }
}

#[test]
fn install_trial_commit() {
    let d = device();
    let b = d.bundle("v11.otb", "1.1.0", "demo-qemu", &d.image);
    d.install(&b, false).unwrap();
    let img = std::fs::read(&d.image).unwrap();
    assert_eq!(&d.slot_b()[..img.len()], &img[..]);
    assert_eq!(
        std::fs::read(&d.paths.slot_a).unwrap(),
        vec![0xAA; SLOT_SIZE as usize]
    );
    let s = d.boot();
    assert_eq!(s.primary(), Slot::B);
    assert!(!s.b.good && s.b.tries == 1 && s.a.good);
    let st = read_state(&d.paths.state_dir.join("state.json")).unwrap();
    assert_eq!(st.update.as_ref().unwrap().phase, Phase::Installed);

    // Trial boot of B: the agent sees it, health passes (no checks configured), commit.
    assert_eq!(d.power_on("1.1.0"), Slot::B);
    let sit = agent::reconcile(&d.paths).unwrap();
    assert_eq!(
        sit,
        Situation::Trial {
            slot: Slot::B,
            version: "1.1.0".into()
        }
    );
    agent::run_trial(&d.paths, Slot::B).unwrap();
    let s = d.boot();
    assert!(s.b.good && s.primary() == Slot::B && s.a.good);
    let st = read_state(&d.paths.state_dir.join("state.json")).unwrap();
    assert_eq!(st.update.as_ref().unwrap().phase, Phase::Committed);
    assert_eq!(st.slots[&Slot::B].version, "1.1.0");
    // Committed: the next power-on boots B again.
    assert_eq!(d.power_on("1.1.0"), Slot::B);
    assert_eq!(
        agent::reconcile(&d.paths).unwrap(),
        Situation::Normal { slot: Slot::B }
    );
}

#[test]
fn fallback_is_recorded_as_rollback() {
    let d = device();
    let b = d.bundle("v12.otb", "1.2.0", "demo-qemu", &d.image);
    d.install(&b, false).unwrap();
    // B is tried (GRUB spends its try) but never comes up: the next power-on falls back.
    assert_eq!(d.power_on("1.2.0"), Slot::B);
    assert_eq!(d.power_on("1.0.0"), Slot::A);
    match agent::reconcile(&d.paths).unwrap() {
        Situation::RolledBack {
            slot,
            failed_version,
            reason,
        } => {
            assert_eq!((slot, failed_version.as_str()), (Slot::A, "1.2.0"));
            assert!(reason.contains("did not come up"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    let s = d.boot();
    assert_eq!(s.primary(), Slot::A);
    assert!(!s.b.good && s.b.tries == 0);
    let st = read_state(&d.paths.state_dir.join("state.json")).unwrap();
    let u = st.update.unwrap();
    assert_eq!((u.phase, u.version.as_str()), (Phase::RolledBack, "1.2.0"));
    assert!(st.history.iter().any(|e| e.event == "rolled_back"));
}

#[test]
fn failing_health_check_marks_bad_and_reboots() {
    let d = device();
    std::fs::create_dir_all(&d.paths.health_dir).unwrap();
    let check = d.paths.health_dir.join("50-app");
    std::fs::write(&check, "#!/bin/sh\necho 'app down' >&2\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A deadline already past: the first failed round decides.
    std::fs::write(&d.paths.agent_config, "[health]\ndeadline_secs = 10\n").unwrap();
    let b = d.bundle("v13.otb", "1.3.0", "demo-qemu", &d.image);
    d.install(&b, false).unwrap();
    assert_eq!(d.power_on("1.3.0"), Slot::B);
    assert!(matches!(
        agent::reconcile(&d.paths).unwrap(),
        Situation::Trial { .. }
    ));
    // /proc/uptime of the test machine is well past 10 s.
    agent::run_trial(&d.paths, Slot::B).unwrap();
    assert!(d.paths.state_dir.join("reboot-requested").exists());
    assert_eq!(d.boot().primary(), Slot::A);
    assert_eq!(d.power_on("1.0.0"), Slot::A);
    match agent::reconcile(&d.paths).unwrap() {
        Situation::RolledBack { reason, .. } => {
            assert!(
                reason.contains("50-app") && reason.contains("app down"),
                "{reason}"
            )
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[test]
fn bad_bundles_write_nothing() {
    let d = device();
    let before_b = d.slot_b();
    let before_boot = d.boot();
    let other_key = otter_bundle::SigningKey::generate();
    let big = d.work.join("big.img");
    std::fs::write(&big, vec![1u8; (SLOT_SIZE + 4096) as usize]).unwrap();
    let cases = [
        (
            d.bundle_with("untrusted.otb", "1.1.0", "demo-qemu", &d.image, &other_key),
            false,
            "trusted",
        ),
        (
            d.bundle("other-board.otb", "1.1.0", "other-board", &d.image),
            false,
            "compatible",
        ),
        (
            d.bundle("old.otb", "0.9.0", "demo-qemu", &d.image),
            false,
            "0.9.0",
        ),
        (
            d.bundle("big.otb", "1.1.0", "demo-qemu", &big),
            false,
            "holds only",
        ),
        (
            d.work.join("missing.otb").display().to_string(),
            false,
            "missing.otb",
        ),
    ];
    for (src, allow, needle) in &cases {
        let e = d.install(src, *allow).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(needle), "{src}: {msg}");
        assert!(d.slot_b() == before_b, "{src}: slot B changed");
        assert_eq!(d.boot(), before_boot, "{src}: boot state changed");
    }
    // Truncated bundle.
    let good = d.bundle("good.otb", "1.1.0", "demo-qemu", &d.image);
    let bytes = std::fs::read(&good).unwrap();
    let cut = d.work.join("cut.otb");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = d.install(&cut.display().to_string(), false).unwrap_err();
    assert!(format!("{e:#}").contains("truncated"), "{e:#}");
    assert!(d.slot_b() == before_b);
    // A downgrade is allowed when asked for.
    let old = d.bundle("old2.otb", "0.9.0", "demo-qemu", &d.image);
    d.install(&old, true).unwrap();
}

#[test]
fn interrupted_install_is_recorded_and_slot_stays_bad() {
    let d = device();
    let good = d.bundle("good.otb", "1.1.0", "demo-qemu", &d.image);
    // A bit flip in the payload: the install stops at that chunk, after marking B bad.
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x40;
    let bad = d.work.join("flip.otb");
    std::fs::write(&bad, &bytes).unwrap();
    let e = d.install(&bad.display().to_string(), false).unwrap_err();
    assert!(format!("{e:#}").contains("chunk"), "{e:#}");
    let s = d.boot();
    assert_eq!(s.primary(), Slot::A);
    assert!(
        !s.b.good && s.b.tries == 0,
        "a half-written slot is never tried"
    );
    let st = read_state(&d.paths.state_dir.join("state.json")).unwrap();
    assert_eq!(st.update.unwrap().phase, Phase::Failed);
    // Then a good install works.
    d.install(&good, false).unwrap();
    assert_eq!(d.boot().primary(), Slot::B);
}

#[test]
fn damaged_boot_state_is_repaired_at_boot() {
    let d = device();
    let dir = &d.paths.boot_state_dir;
    // Torn primary: the backup is used and the primary rewritten from it.
    let mut p = std::fs::read(dir.join("grubenv")).unwrap();
    p[30..60].fill(b'#');
    p[0] = b'X';
    std::fs::write(dir.join("grubenv"), &p).unwrap();
    assert_eq!(
        agent::reconcile(&d.paths).unwrap(),
        Situation::Normal { slot: Slot::A }
    );
    let (_, src) = GrubEnvStore::new(dir).load().unwrap();
    assert_eq!(src, otter_boot::LoadSource::Primary);
    // Both copies gone bad: the running slot is recorded as the only good one.
    for f in ["grubenv", "grubenv.bak"] {
        std::fs::write(dir.join(f), vec![0u8; 1024]).unwrap();
    }
    assert_eq!(
        agent::reconcile(&d.paths).unwrap(),
        Situation::Normal { slot: Slot::A }
    );
    let s = d.boot();
    assert_eq!(s.primary(), Slot::A);
    assert!(s.a.good && !s.b.good);
}

#[test]
fn second_update_is_a_delta_from_the_running_slot() {
    let d = device();
    // Incompressible data, so the figures mean something.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let v11: Vec<u8> = (0..3u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let img11 = d.work.join("rootfs-11.img");
    std::fs::write(&img11, &v11).unwrap();
    let b = d.bundle("v11.otb", "1.1.0", "demo-qemu", &img11);
    let first = install(
        &d.paths,
        &InstallOptions {
            source: b,
            allow_downgrade: false,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    // Slot A (the factory image, here 0xAA) has no saved index: it was read instead.
    assert!(
        first.delta.seed_index.starts_with("scanned"),
        "{:?}",
        first.delta
    );
    assert!(d.paths.slot_index(Slot::B).exists(), "index saved for B");
    assert_eq!(d.power_on("1.1.0"), Slot::B);
    agent::reconcile(&d.paths).unwrap();
    agent::run_trial(&d.paths, Slot::B).unwrap();
    assert!(d.boot().b.good);

    // 1.2.0 changes 3 blocks and appends 2: a device on B fetches only those chunks.
    let mut v12 = v11.clone();
    for at in [100_000usize, 1_500_000, 2_900_000] {
        v12[at] ^= 0x5a;
    }
    v12.extend_from_slice(&[0x33u8; 8192]);
    let img12 = d.work.join("rootfs-12.img");
    std::fs::write(&img12, &v12).unwrap();
    let b12 = d.bundle("v12.otb", "1.2.0", "demo-qemu", &img12);
    let full = std::fs::metadata(&b12).unwrap().len();
    let mut last = None;
    let out = install(
        &d.paths,
        &InstallOptions {
            source: b12,
            allow_downgrade: false,
            ..Default::default()
        },
        &mut |p| last = Some(p.clone()),
    )
    .unwrap();
    assert_eq!(out.slot, Slot::A);
    let slot_a = std::fs::read(&d.paths.slot_a).unwrap();
    assert!(slot_a[..v12.len()] == v12[..], "slot A holds 1.2.0");
    assert_eq!(
        out.delta.seed_index, "saved",
        "B's index from the first install"
    );
    assert!(
        out.delta.fetched_bytes * 4 < full,
        "{} of {full}",
        out.delta.fetched_bytes
    );
    assert_eq!(out.delta.fetched_bytes, out.delta.planned_bytes);
    assert!(out.delta.reused_bytes > 2 << 20, "{:?}", out.delta);
    assert!(d.paths.slot_index(Slot::A).exists());
    let last = last.unwrap();
    assert_eq!(last.stage, "verifying");
    assert_eq!(last.fetch_total, out.delta.fetched_bytes);

    // `otterd status --json` shows the figures.
    let s = otterd::status::status(&d.paths).unwrap();
    let u = s.update.unwrap();
    assert_eq!(u.phase, Phase::Installed);
    assert_eq!(u.delta.as_ref().unwrap(), &out.delta);
    let p = u.progress.unwrap();
    assert_eq!(p.fetched_bytes, out.delta.fetched_bytes);
    assert_eq!(p.reused_bytes, out.delta.reused_bytes);
    let json = serde_json::to_value(otterd::status::status(&d.paths).unwrap()).unwrap();
    assert_eq!(
        json["update"]["delta"]["reused_bytes"],
        out.delta.reused_bytes
    );
    let st = read_state(&d.paths.state_dir.join("state.json")).unwrap();
    assert_eq!(st.slots[&Slot::A].size, Some(v12.len() as u64));
}
