//! The Compose subset of app sets: from images, local app directories and the fleet server.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = otter_apps::compose::parse("compose.yaml", text);
});
