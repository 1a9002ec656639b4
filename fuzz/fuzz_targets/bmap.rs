//! bmap XML, read by `otter flash` next to an image (bmaptool's format).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = otter_image::bmap::Bmap::parse(text);
});
