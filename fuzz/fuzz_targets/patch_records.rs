//! A patch set's unit records, as the installer walks them before it decompresses anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = otter_bundle::patch::scan_records(data);
});
