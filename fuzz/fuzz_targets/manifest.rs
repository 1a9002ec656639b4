//! The bundle manifest (JSON): parse and consistency check; a manifest that passes survives a
//! write and a second parse unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_bundle::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json(data) {
        let _ = m.payload_size();
        let text = serde_json::to_vec(&m).expect("a parsed manifest serialises");
        let again = Manifest::from_json(&text).expect("a written manifest parses");
        assert_eq!(m, again);
    }
});
