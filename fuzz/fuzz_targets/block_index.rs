//! A block index section: the image size (first 8 bytes, little-endian) and the raw hashes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use otter_bundle::index::BlockIndex;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // Small sizes only: a real index is bounded by the manifest's checked size.
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % (1 << 24);
    let _ = BlockIndex::from_bytes(size, &data[8..]);
});
