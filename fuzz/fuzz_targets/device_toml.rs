//! `otter/device.toml`, written by users and by `otter configure`, read at every boot.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_config::DeviceConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = DeviceConfig::parse(Path::new("device.toml"), text);
    let _ = otter_config::edit::parse_table(text);
});
