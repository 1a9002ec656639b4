//! Table tests of [`transition`]: every input from every relevant phase, the effects' order,
//! and the power-cut orders of docs/architecture.md (a cut between two effects, then a boot).

use super::*;
use otter_boot::Slot::{A, B};

const NOW: u64 = 1000;

fn update(phase: Phase, slot: Slot) -> Update {
    Update {
        phase,
        version: "1.1.0".into(),
        slot,
        from_slot: slot.other(),
        from_version: "1.0.0".into(),
        source: "bundle".into(),
        started_at: 1,
        updated_at: 1,
        progress: None,
        delta: None,
        reason: None,
    }
}

fn record(u: Option<Update>) -> AgentState {
    let mut st = AgentState::default();
    st.slots.insert(
        A,
        SlotInfo {
            version: "1.0.0".into(),
            installed_at: 1,
            size: None,
            sha256: None,
        },
    );
    st.update = u;
    st
}

/// A running on A, B being tried (tries left) or already tried (counter at 0).
fn trial_of_b(tries: u8) -> BootState {
    let mut b = BootState::factory();
    b.set_try(B, 1);
    b.b.tries = tries;
    b
}

/// B marked bad after its trial: A first and good again.
fn marked_bad_b() -> BootState {
    let mut b = trial_of_b(0);
    b.mark_bad(B);
    b
}

fn boot_on(slot: Slot, version: &str) -> Input {
    Input::Boot {
        booted: slot,
        version: version.into(),
        build_time: 7,
    }
}

fn kinds(st: &AgentState) -> Vec<&str> {
    st.history.iter().map(|e| e.event.as_str()).collect()
}

type BootRow = (
    &'static str,
    Option<Phase>,
    BootState,
    Slot,
    Option<Phase>,
    &'static str,
    bool,
    Option<&'static str>,
);

/// Boot: (record phase, update slot, boot state, booted) → (new phase, situation kind, boot
/// state stored, event recorded, B marked bad).
#[test]
fn boot_table() {
    use Phase::*;
    let committed_b = {
        let mut b = trial_of_b(0);
        b.commit(B);
        b
    };
    #[rustfmt::skip]
    let rows: Vec<BootRow> = vec![
        // name, phase before, boot state, booted, phase after, situation, boot stored, event
        ("no update, normal", None, BootState::factory(), A, None, "normal", false, None),
        ("installed, trial boots B", Some(Installed), trial_of_b(0), B, Some(Trying), "trial", false, None),
        ("trying, trial reboots into B", Some(Trying), trial_of_b(0), B, Some(Trying), "trial", false, None),
        ("installed, commit reached boot state only", Some(Installed), committed_b, B, Some(Committed), "normal", false, None),
        ("trying, commit reached boot state only", Some(Trying), committed_b, B, Some(Committed), "normal", false, None),
        ("unhealthy, but committed in boot state", Some(Unhealthy), committed_b, B, Some(Committed), "normal", false, None),
        ("unhealthy on B, not committed", Some(Unhealthy), trial_of_b(0), B, Some(Unhealthy), "trial", false, None),
        ("installed, B never came up", Some(Installed), trial_of_b(0), A, Some(RolledBack), "rolled_back", true, Some("rolled_back")),
        ("installed, B tries left, fell back", Some(Installed), trial_of_b(1), A, Some(RolledBack), "rolled_back", true, Some("rolled_back")),
        ("trying, reset during trial", Some(Trying), trial_of_b(0), A, Some(RolledBack), "rolled_back", true, Some("rolled_back")),
        ("unhealthy, mark_bad stored", Some(Unhealthy), marked_bad_b(), A, Some(RolledBack), "rolled_back", false, Some("rolled_back")),
        ("unhealthy, cut before mark_bad", Some(Unhealthy), trial_of_b(2), A, Some(RolledBack), "rolled_back", true, Some("rolled_back")),
        ("installing, cut while writing", Some(Installing), { let mut b = BootState::factory(); b.mark_bad(B); b }, A, Some(Failed), "normal", false, Some("install_failed")),
        ("installing, cut before mark_bad", Some(Installing), { let mut b = BootState::factory(); b.commit(B); b.commit(A); b }, A, Some(Failed), "normal", true, Some("install_failed")),
        ("installing, set_try stored, record not", Some(Installing), trial_of_b(0), B, Some(Installing), "trial", false, None),
        ("committed stays", Some(Committed), committed_b, B, Some(Committed), "normal", false, None),
        ("rolled back stays", Some(RolledBack), BootState::factory(), A, Some(RolledBack), "normal", false, None),
        ("failed stays", Some(Failed), BootState::factory(), A, Some(Failed), "normal", false, None),
    ];
    for (name, before, boot, booted, after, situation, stored, event) in rows {
        let st = record(before.map(|p| update(p, B)));
        let version = if booted == B { "1.1.0" } else { "1.0.0" };
        let out = transition(&st, &boot, boot_on(booted, version), NOW).unwrap();
        assert_eq!(out.record.update.as_ref().map(|u| u.phase), after, "{name}");
        let got = match out.situation.as_ref().unwrap() {
            Situation::Normal { slot } => {
                assert_eq!(*slot, booted, "{name}");
                "normal"
            }
            Situation::Trial { slot, .. } => {
                assert_eq!(*slot, booted, "{name}");
                "trial"
            }
            Situation::RolledBack { slot, .. } => {
                assert_eq!(*slot, booted, "{name}");
                "rolled_back"
            }
        };
        assert_eq!(got, situation, "{name}");
        assert_eq!(
            out.effects,
            if stored {
                vec![Effect::StoreBoot, Effect::SaveRecord]
            } else {
                vec![Effect::SaveRecord]
            },
            "{name}"
        );
        assert_eq!(out.boot != boot, stored, "{name}: boot state changed");
        if stored {
            assert!(
                !out.boot.slot(B).good && out.boot.slot(B).tries == 0,
                "{name}"
            );
            assert_eq!(out.boot.primary(), A, "{name}");
        }
        assert_eq!(
            kinds(&out.record),
            event.into_iter().collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(out.record.slots[&booted].version, version, "{name}");
    }
}

#[test]
fn unhealthy_reason_survives_the_fallback() {
    let mut u = update(Phase::Unhealthy, B);
    u.reason = Some("unit x failed".into());
    let out = transition(&record(Some(u)), &trial_of_b(0), boot_on(A, "1.0.0"), NOW).unwrap();
    assert_eq!(
        out.record.update.clone().unwrap().reason.as_deref(),
        Some("unit x failed")
    );
    assert_eq!(out.record.history[0].detail, "unit x failed");
}

#[test]
fn install_started_records_before_marking_bad() {
    let st = record(None);
    let out = transition(
        &st,
        &BootState::factory(),
        Input::InstallStarted {
            update: update(Phase::Installing, B),
        },
        NOW,
    )
    .unwrap();
    assert_eq!(out.effects, vec![Effect::SaveRecord, Effect::StoreBoot]);
    assert!(!out.boot.slot(B).good);
    assert_eq!(out.record.update.clone().unwrap().phase, Phase::Installing);
    assert_eq!(kinds(&out.record), ["install_started"]);
    // Power cut after the record, before the boot state: the next boot fails the install.
    let next = transition(
        &out_record_only(&st, B),
        &BootState::factory(),
        boot_on(A, "1.0.0"),
        NOW,
    )
    .unwrap();
    assert_eq!(next.record.update.unwrap().phase, Phase::Failed);
}

fn out_record_only(st: &AgentState, slot: Slot) -> AgentState {
    let mut st = st.clone();
    st.update = Some(update(Phase::Installing, slot));
    st
}

#[test]
fn install_failed_and_verified() {
    let st = record(Some(update(Phase::Installing, B)));
    let mut marked = BootState::factory();
    marked.mark_bad(B);
    let out = transition(
        &st,
        &marked,
        Input::InstallFailed {
            reason: "disk".into(),
        },
        NOW,
    )
    .unwrap();
    assert_eq!(out.effects, vec![Effect::SaveRecord]);
    assert_eq!(out.boot, marked);
    let u = out.record.update.clone().unwrap();
    assert_eq!(
        (u.phase, u.reason.as_deref()),
        (Phase::Failed, Some("disk"))
    );
    assert_eq!(kinds(&out.record), ["install_failed"]);

    let out = transition(
        &st,
        &marked,
        Input::InstallVerified {
            info: SlotInfo {
                version: "1.1.0".into(),
                installed_at: NOW,
                size: Some(1),
                sha256: None,
            },
            tries: 1,
            progress: Progress::default(),
            delta: DeltaInfo::default(),
        },
        NOW,
    )
    .unwrap();
    assert_eq!(out.effects, vec![Effect::StoreBoot, Effect::SaveRecord]);
    assert_eq!(out.boot.slot(B).tries, 1);
    assert_eq!(out.boot.primary(), B);
    assert_eq!(out.record.update.clone().unwrap().phase, Phase::Installed);
    assert_eq!(out.record.slots[&B].version, "1.1.0");
    assert_eq!(kinds(&out.record), ["installed"]);
    assert!(
        transition(
            &record(None),
            &marked,
            Input::InstallFailed { reason: "x".into() },
            NOW
        )
        .is_err()
    );
}

#[test]
fn commit_table() {
    let mut st = record(Some(update(Phase::Trying, B)));
    st.slots.insert(
        B,
        SlotInfo {
            version: "1.1.0".into(),
            installed_at: 2,
            size: None,
            sha256: None,
        },
    );
    let out = transition(
        &st,
        &trial_of_b(0),
        Input::Commit {
            booted: B,
            why: "health checks passed".into(),
        },
        NOW,
    )
    .unwrap();
    assert_eq!(out.effects, vec![Effect::StoreBoot, Effect::SaveRecord]);
    assert!(out.boot.slot(B).good && out.boot.primary() == B);
    assert_eq!(out.record.update.as_ref().unwrap().phase, Phase::Committed);
    assert_eq!(out.record.history[0].event, EventKind::Committed);
    assert_eq!(out.record.history[0].version, "1.1.0");
    // Power cut after the boot state, before the record: the next boot commits the record.
    let next = transition(&st, &out.boot, boot_on(B, "1.1.0"), NOW).unwrap();
    assert_eq!(next.record.update.unwrap().phase, Phase::Committed);
    // Committing a committed slot is refused.
    let e = transition(
        &st,
        &out.boot,
        Input::Commit {
            booted: B,
            why: String::new(),
        },
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("already committed"), "{e}");
}

#[test]
fn health_deadline_saves_reason_then_marks_bad_then_reboots() {
    let st = record(Some(update(Phase::Trying, B)));
    let out = transition(
        &st,
        &trial_of_b(0),
        Input::HealthDeadline {
            slot: B,
            reason: "unit x".into(),
        },
        NOW,
    )
    .unwrap();
    assert_eq!(
        out.effects,
        vec![Effect::SaveRecord, Effect::StoreBoot, Effect::Reboot]
    );
    assert!(!out.boot.slot(B).good && out.boot.primary() == A);
    let u = out.record.update.as_ref().unwrap();
    assert_eq!(
        (u.phase, u.reason.as_deref()),
        (Phase::Unhealthy, Some("unit x"))
    );
    // Cut after the record only: GRUB falls back (B's counter is 0); the boot rolls back with
    // the saved reason.
    let next = transition(&out.record, &trial_of_b(0), boot_on(A, "1.0.0"), NOW).unwrap();
    let u = next.record.update.unwrap();
    assert_eq!(
        (u.phase, u.reason.as_deref()),
        (Phase::RolledBack, Some("unit x"))
    );
}

#[test]
fn rollback_table() {
    // On a trial: the booted slot is marked bad.
    let st = record(Some(update(Phase::Trying, B)));
    let out = transition(&st, &trial_of_b(0), Input::Rollback { booted: B }, NOW).unwrap();
    assert_eq!(out.effects, vec![Effect::SaveRecord, Effect::StoreBoot]);
    assert!(!out.boot.slot(B).good);
    assert_eq!(out.record.update.as_ref().unwrap().phase, Phase::Unhealthy);
    assert_eq!(kinds(&out.record), ["rollback_requested"]);
    assert_eq!(
        out.message.as_deref(),
        Some("slot B marked bad; slot A (1.0.0) boots next")
    );
    // On a committed slot: the other, good one becomes primary.
    let mut both = BootState::factory();
    both.commit(B);
    let out = transition(&record(None), &both, Input::Rollback { booted: B }, NOW).unwrap();
    assert_eq!(out.boot.primary(), A);
    assert_eq!(
        out.message.as_deref(),
        Some("slot A (1.0.0) is primary again")
    );
    // Nothing good to go back to.
    let e = transition(
        &record(None),
        &BootState::factory(),
        Input::Rollback { booted: A },
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no committed system"), "{e}");
}

#[test]
fn event_kind_keeps_the_stored_strings() {
    for (k, s) in [
        (EventKind::InstallStarted, "install_started"),
        (EventKind::Installed, "installed"),
        (EventKind::InstallFailed, "install_failed"),
        (EventKind::Committed, "committed"),
        (EventKind::RolledBack, "rolled_back"),
        (EventKind::RollbackRequested, "rollback_requested"),
        (EventKind::Other("future".into()), "future"),
    ] {
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{s}\""));
        assert_eq!(
            serde_json::from_str::<EventKind>(&format!("\"{s}\"")).unwrap(),
            k
        );
    }
}

#[test]
fn server_mapping() {
    use Phase::*;
    for (phase, fetched, pending, want) in [
        (Installing, 0, false, UpdatePhase::Installing),
        (Installing, 5, false, UpdatePhase::Downloading),
        (Installed, 0, true, UpdatePhase::Installed),
        (Installed, 0, false, UpdatePhase::Rebooting),
        (Trying, 0, false, UpdatePhase::Trying),
        (Unhealthy, 0, false, UpdatePhase::Trying),
        (Committed, 0, false, UpdatePhase::Committed),
        (RolledBack, 0, false, UpdatePhase::RolledBack),
        (Failed, 0, false, UpdatePhase::Failed),
    ] {
        let mut u = update(phase, B);
        u.progress = Some(Progress {
            fetched_bytes: fetched,
            ..Default::default()
        });
        assert_eq!(server_phase(&u, pending), want, "{phase:?}");
    }
    assert_eq!(server_health(Some(Trying), true), None);
    assert_eq!(server_health(Some(Installed), true), None);
    assert_eq!(
        server_health(Some(Unhealthy), true),
        Some(Health::Unhealthy)
    );
    assert_eq!(server_health(Some(Committed), true), Some(Health::Healthy));
    assert_eq!(server_health(None, false), None);
}
