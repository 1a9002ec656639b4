//! The first bytes of a downloaded bundle: fixed header, manifest length, manifest, signatures.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_bundle::format::{encode_header, read_header};
use otter_bundle::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let Ok(h) = read_header(&mut r, "fuzz") else {
        return;
    };
    // Round trip: what was read encodes back to the same bytes.
    let again =
        encode_header(&h.manifest_bytes, &h.signatures).expect("a header that was read encodes");
    assert_eq!(&data[..again.len()], &again[..]);
    assert_eq!(h.payload_start, again.len() as u64);
    let _ = Manifest::from_json(&h.manifest_bytes);
});
