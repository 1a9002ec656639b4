//! The fault-injection hooks used by the end-to-end power-cut tests: each store is run in a
//! thread that never returns (as on the device, where the test then kills the VM), and the files
//! are inspected while it hangs. This also proves the store writes the primary first.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use otter_boot::sim::{GrubSource, grub_run};
use otter_boot::{BootState, Fault, GrubEnvStore, LoadSource, Slot};

fn wait_for_change(path: &Path, old: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = fs::read(path).unwrap();
        if now != old {
            // Give a torn write's fsync time to finish; the content no longer changes.
            std::thread::sleep(Duration::from_millis(200));
            return fs::read(path).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "store never wrote {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(dir: &Path, fault: Fault, old: BootState, new: BootState) -> GrubEnvStore {
    let st = GrubEnvStore::new(dir);
    st.init(&old).unwrap();
    let hanging = GrubEnvStore::new(dir).with_fault(fault);
    // The thread sleeps forever; the test process ends without joining it.
    std::thread::spawn(move || {
        let _ = hanging.store(&new);
    });
    st
}

fn install_states() -> (BootState, BootState) {
    let mut old = BootState::factory();
    old.mark_bad(Slot::B);
    let mut new = old;
    new.set_try(Slot::B, 1);
    (old, new)
}

#[test]
fn hang_after_primary_writes_primary_first() {
    let d = tempfile::tempdir().unwrap();
    let (old, new) = install_states();
    let st = start(d.path(), Fault::HangAfterPrimary, old, new);
    let p = wait_for_change(&st.primary_path(), &old.to_env_block());
    assert_eq!(p, new.to_env_block());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fs::read(st.backup_path()).unwrap(),
        old.to_env_block(),
        "backup written too early"
    );
    assert_eq!(st.load().unwrap(), (new, LoadSource::Primary));
    let g = grub_run(Some(&p), Some(&old.to_env_block()));
    assert_eq!((g.source, g.boot), (GrubSource::Primary, (Slot::B, true)));
}

#[test]
fn torn_primary_falls_back_to_backup() {
    let d = tempfile::tempdir().unwrap();
    let (old, new) = install_states();
    let st = start(d.path(), Fault::TornPrimary, old, new);
    let p = wait_for_change(&st.primary_path(), &old.to_env_block());
    assert_eq!(p.len(), 1024);
    assert!(
        BootState::from_env_block(&p).is_err(),
        "torn primary must be invalid"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs::read(st.backup_path()).unwrap(), old.to_env_block());
    assert_eq!(st.load().unwrap(), (old, LoadSource::Backup));
    let g = grub_run(Some(&p), Some(&old.to_env_block()));
    assert_eq!((g.source, g.boot), (GrubSource::Backup, (Slot::A, false)));
    // After the "reboot", the agent repairs the primary.
    assert_eq!(st.repair().unwrap(), LoadSource::Backup);
    assert_eq!(st.load().unwrap(), (old, LoadSource::Primary));
}
