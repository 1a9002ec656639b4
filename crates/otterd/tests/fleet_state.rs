//! The fleet state's corrupt-file policy: a damaged `fleet.json` (it holds the device token)
//! is kept aside, never silently overwritten.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otterd::Paths;
use otterd::fleet::FleetState;

#[test]
fn damaged_fleet_state_is_set_aside_not_lost() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths::under(d.path());
    std::fs::create_dir_all(&paths.state_dir).unwrap();
    let path = FleetState::path(&paths);
    std::fs::write(&path, b"{\"token\": \"secret\", broken").unwrap();
    assert_eq!(FleetState::load(&paths), FleetState::default());
    assert!(!path.exists());
    let aside: Vec<_> = std::fs::read_dir(&paths.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fleet.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(
        std::fs::read_to_string(&aside[0])
            .unwrap()
            .contains("secret")
    );
}

#[test]
fn missing_fleet_state_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths::under(d.path());
    assert_eq!(FleetState::load(&paths), FleetState::default());
}
