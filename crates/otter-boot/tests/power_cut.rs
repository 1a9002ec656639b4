//! Power cut at every byte of every state write, by the agent and by GRUB.
//!
//! For a full update cycle (install into B, trial boot, commit, install into A, failed trial,
//! rollback, retry, commit), every write is cut after each byte prefix (the rest of the file
//! keeps its old bytes), and also as a torn sector (a prefix, then zeros to the end of the
//! sector). After each cut, the GRUB model (checked against real GRUB in `grub_emu.rs`) must boot
//! the slot chosen before or after the write, never the built-in default and never a slot
//! that is being written, and `GrubEnvStore::load` must return a valid state; the next store
//! must repair everything.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use otter_boot::sim::{EnvFile, GrubSource, grub_run};
use otter_boot::{BootState, ENV_BLOCK_SIZE, GrubEnvStore, LoadSource, Slot};

#[derive(Clone, Debug, PartialEq)]
struct Files {
    p: Option<Vec<u8>>,
    b: Option<Vec<u8>>,
}

fn put(dir: &Path, f: &Files) {
    let st = GrubEnvStore::new(dir);
    for (path, c) in [(st.primary_path(), &f.p), (st.backup_path(), &f.b)] {
        match c {
            Some(c) => fs::write(path, c).unwrap(),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }
}

fn get(dir: &Path) -> Files {
    let st = GrubEnvStore::new(dir);
    Files {
        p: fs::read(st.primary_path()).ok(),
        b: fs::read(st.backup_path()).ok(),
    }
}

fn grub_boot(f: &Files) -> (Slot, bool, GrubSource) {
    let r = grub_run(f.p.as_deref(), f.b.as_deref());
    (r.boot.0, r.boot.1, r.source)
}

fn grub_apply(f: &Files) -> Files {
    let mut out = f.clone();
    for (file, c) in grub_run(f.p.as_deref(), f.b.as_deref()).writes {
        match file {
            EnvFile::Primary => out.p = Some(c),
            EnvFile::Backup => out.b = Some(c),
        }
    }
    out
}

/// All ways a write of `new` over `old` can be cut: every byte prefix, and every torn sector
/// (prefix, zeros to the end of that sector, old bytes after it).
fn cuts(old: &[u8], new: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(old.len(), ENV_BLOCK_SIZE);
    assert_eq!(new.len(), ENV_BLOCK_SIZE);
    let mut out = Vec::new();
    for k in 0..=ENV_BLOCK_SIZE {
        let mut c = old.to_vec();
        c[..k].copy_from_slice(&new[..k]);
        out.push(c.clone());
        let sector_end = (k / 512 + 1) * 512;
        if k % 512 != 0 && sector_end <= ENV_BLOCK_SIZE {
            c[k..sector_end].fill(0);
            out.push(c);
        }
    }
    out
}

enum Step {
    /// The agent stores a new state (after the closure changes it).
    Store(&'static str, fn(&mut BootState)),
    /// The device reboots through GRUB.
    Grub,
    /// The agent starts (Some) or finishes (None) writing an image into a slot.
    Writing(Option<Slot>),
}

fn scenario() -> Vec<Step> {
    use Step::*;
    vec![
        Grub,
        Store("mark_bad(B)", |s| s.mark_bad(Slot::B)),
        Writing(Some(Slot::B)),
        Grub, // power lost while writing B
        Writing(None),
        Store("set_try(B,1)", |s| s.set_try(Slot::B, 1)),
        Grub,
        Store("commit(B)", |s| s.commit(Slot::B)),
        Grub,
        Store("mark_bad(A)", |s| s.mark_bad(Slot::A)),
        Writing(Some(Slot::A)),
        Grub,
        Writing(None),
        Store("set_try(A,3)", |s| s.set_try(Slot::A, 3)),
        Grub,
        Grub,
        Grub,
        Grub, // tries used up: back to B
        Store("mark_bad(A) after rollback", |s| s.mark_bad(Slot::A)),
        Store("set_try(A,2)", |s| s.set_try(Slot::A, 2)),
        Grub,
        Store("commit(A)", |s| s.commit(Slot::A)),
        Grub,
        Store("mark_bad(A) of primary", |s| s.mark_bad(Slot::A)),
        Grub,
    ]
}

#[test]
fn every_cut_of_every_write_stays_bootable() {
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("scratch");
    let probe = work.path().join("probe");
    fs::create_dir_all(&scratch).unwrap();
    fs::create_dir_all(&probe).unwrap();

    let home = work.path().join("device");
    let store = GrubEnvStore::new(&home);
    store.init(&BootState::factory()).unwrap();
    let mut files = get(&home);
    let mut writing: Option<Slot> = None;
    let mut checked = 0usize;
    let mut repaired_from_backup = 0usize;
    let mut seen = HashMap::new();

    for (i, step) in scenario().into_iter().enumerate() {
        match step {
            Step::Writing(s) => writing = s,
            Step::Store(what, change) => {
                let (mut state, src) = store.load().unwrap();
                assert_eq!(src, LoadSource::Primary, "step {i}");
                change(&mut state);
                put(&scratch, &files);
                GrubEnvStore::new(&scratch).store(&state).unwrap();
                let new = get(&scratch);
                let (old_p, old_b) = (files.p.clone().unwrap(), files.b.clone().unwrap());
                let (new_p, new_b) = (new.p.clone().unwrap(), new.b.clone().unwrap());
                assert!(
                    old_p[512..] == new_p[512..],
                    "step {i} {what}: a store must change only the first sector"
                );
                let before = grub_boot(&files).0;
                let after = grub_boot(&new).0;
                let mut torn = Vec::new();
                for c in cuts(&old_p, &new_p) {
                    torn.push(Files {
                        p: Some(c),
                        b: Some(old_b.clone()),
                    });
                }
                for c in cuts(&old_b, &new_b) {
                    torn.push(Files {
                        p: Some(new_p.clone()),
                        b: Some(c),
                    });
                }
                let mut step_repairs = 0;
                for (n, t) in torn.iter().enumerate() {
                    let what = format!("step {i} {what}");
                    let source = check_cut(&probe, t, &[before, after], writing, &what, &mut seen);
                    // The agent's next store repairs both files. Stores fsync (slow), so check
                    // a few cuts that invalidated the primary per write, and a sample of the rest.
                    let from_backup = source == LoadSource::Backup;
                    if (from_backup && n % 7 == 1 && step_repairs < 6) || n % 101 == 0 {
                        step_repairs += 1;
                        repaired_from_backup += usize::from(from_backup);
                        put(&probe, t);
                        GrubEnvStore::new(&probe).store(&state).unwrap();
                        assert_eq!(get(&probe), new, "{what}: store must repair");
                    }
                    checked += 1;
                }
                files = new;
                put(&home, &files);
            }
            Step::Grub => {
                let booted = grub_boot(&files);
                assert_ne!(booted.2, GrubSource::BuiltinDefault);
                if let Some(w) = writing {
                    assert_ne!(booted.0, w, "step {i}: GRUB boots the slot being written");
                }
                let new = grub_apply(&files);
                let after = grub_boot(&new).0;
                // GRUB writes the primary, then the backup; cut each at every byte.
                let mut torn = Vec::new();
                if let (Some(op), Some(np)) = (&files.p, &new.p) {
                    for c in cuts(op, np) {
                        torn.push(Files {
                            p: Some(c),
                            b: files.b.clone(),
                        });
                    }
                }
                if let (Some(ob), Some(nb)) = (&files.b, &new.b) {
                    for c in cuts(ob, nb) {
                        torn.push(Files {
                            p: new.p.clone(),
                            b: Some(c),
                        });
                    }
                }
                for t in torn {
                    let what = format!("step {i} GRUB");
                    check_cut(&probe, &t, &[booted.0, after], writing, &what, &mut seen);
                    checked += 1;
                }
                files = new;
                put(&home, &files);
            }
        }
    }
    assert!(checked > 30_000, "only {checked} cuts checked");
    assert!(
        repaired_from_backup >= 40,
        "only {repaired_from_backup} repairs of an invalid primary"
    );
    // The scenario ends where it should: A marked bad, B committed and primary.
    let (s, _) = store.load().unwrap();
    assert_eq!(s.order, [Slot::B, Slot::A]);
    assert!(s.b.good && !s.a.good);
}

type Decoded = (Option<BootState>, Option<BootState>);

/// Checks one torn state; returns where the agent found the state.
///
/// The file round trip through `GrubEnvStore::load` is done once per distinct pair of decoded
/// copies (`seen`): tens of thousands of file writes would make the test slow on a busy disk.
fn check_cut(
    dir: &Path,
    t: &Files,
    allowed: &[Slot],
    writing: Option<Slot>,
    what: &str,
    seen: &mut HashMap<Decoded, (BootState, LoadSource)>,
) -> LoadSource {
    let (slot, _, source) = grub_boot(t);
    assert_ne!(
        source,
        GrubSource::BuiltinDefault,
        "{what}: both copies broken"
    );
    assert!(
        allowed.contains(&slot),
        "{what}: booted {slot}, allowed {allowed:?}"
    );
    if let Some(w) = writing {
        assert_ne!(slot, w, "{what}: boots the slot being written");
    }
    let decode = |c: &Option<Vec<u8>>| c.as_deref().and_then(|b| BootState::from_env_block(b).ok());
    let key = (decode(&t.p), decode(&t.b));
    let (state, source) = *seen.entry(key).or_insert_with(|| {
        put(dir, t);
        GrubEnvStore::new(dir)
            .load()
            .unwrap_or_else(|e| panic!("{what}: agent cannot load: {e}"))
    });
    assert!(
        allowed.contains(&state.next_boot().unwrap().0),
        "{what}: agent state {state:?}"
    );
    // The agent and GRUB read the same copy.
    let grub_src = match source {
        LoadSource::Primary => GrubSource::Primary,
        LoadSource::Backup => GrubSource::Backup,
    };
    assert_eq!(
        grub_src,
        grub_boot(t).2,
        "{what}: agent and GRUB disagree on the copy"
    );
    source
}

#[test]
fn hang_after_primary_leaves_new_primary_and_old_backup_semantics() {
    // What Fault::HangAfterPrimary leaves behind, built by hand: GRUB and the agent follow the
    // new primary, and the next store re-syncs the backup.
    let d = tempfile::tempdir().unwrap();
    let st = GrubEnvStore::new(d.path());
    let mut old = BootState::factory();
    old.mark_bad(Slot::B);
    st.init(&old).unwrap();
    let mut new = old;
    new.set_try(Slot::B, 1);
    fs::write(st.primary_path(), new.to_env_block()).unwrap();
    assert_eq!(st.load().unwrap(), (new, LoadSource::Primary));
    let f = get(d.path());
    assert_eq!(grub_boot(&f), (Slot::B, true, GrubSource::Primary));
    // GRUB's trial boot also copies the full state into the stale backup.
    let after = grub_apply(&f);
    assert_eq!(after.p, after.b);
}
