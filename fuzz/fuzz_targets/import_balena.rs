//! balenaOS `config.json`, imported by `otter configure --from-balena`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = otter_config::import::from_balena(Path::new("config.json"), text);
});
