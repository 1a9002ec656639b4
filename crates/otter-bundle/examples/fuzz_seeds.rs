//! Writes seed inputs for the bundle fuzzers (`fuzz/`, run by `scripts/fuzz`) from a real bundle
//! made by this crate: its header, manifest and block index, plus patch-set unit records.
//!
//!     cargo run -p otter-bundle --example fuzz_seeds -- OUT_DIR
use otter_bundle::format::read_header;
use otter_bundle::index::{BlockIndex, block_hash};
use otter_bundle::keys::SigningKey;
use otter_bundle::{CreateOptions, create_bundle};
use std::path::PathBuf;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds OUT_DIR")?);
    let work = tempfile::tempdir()?;
    // A small image: some zero blocks, some repeated, some distinct.
    let mut image = vec![0u8; 256 * 1024];
    for (i, b) in image.iter_mut().enumerate().skip(64 * 1024) {
        *b = (i * 7 % 251) as u8;
    }
    let img = work.path().join("rootfs.img");
    std::fs::write(&img, &image)?;
    let key = SigningKey::generate();
    let bundle = work.path().join("seed.otb");
    create_bundle(
        &bundle,
        &[("rootfs", &img)],
        &CreateOptions::new("fuzz-board", "1.2.3"),
        &[&key],
    )?;
    let bytes = std::fs::read(&bundle)?;
    let header = read_header(&mut &bytes[..], "seed.otb")?;
    let dir = |name: &str| -> Res<PathBuf> {
        let d = out.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    std::fs::write(
        dir("bundle_header")?.join("seed"),
        &bytes[..header.payload_start as usize],
    )?;
    std::fs::write(dir("manifest")?.join("seed"), &header.manifest_bytes)?;
    let index = BlockIndex::new(
        image.len() as u64,
        image.chunks(4096).map(block_hash).collect(),
    )?;
    let mut raw = (image.len() as u64).to_le_bytes().to_vec();
    raw.extend_from_slice(&index.to_bytes());
    std::fs::write(dir("block_index")?.join("seed"), raw)?;
    // Two unit records: chunks 0..2 from old blocks 3 (+4) and 9 (+1), then chunk 2 with none.
    let frame = zstd::encode_all(&image[64 * 1024..80 * 1024], 3)?;
    let mut units = Vec::new();
    for (first, count, refs) in [(0u32, 2u16, vec![(3u32, 4u32), (9, 1)]), (2, 1, vec![])] {
        units.extend_from_slice(&first.to_le_bytes());
        units.extend_from_slice(&count.to_le_bytes());
        units.extend_from_slice(&(refs.len() as u16).to_le_bytes());
        for (block, n) in refs {
            units.extend_from_slice(&block.to_le_bytes());
            units.extend_from_slice(&n.to_le_bytes());
        }
        units.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        units.extend_from_slice(&frame);
    }
    assert_eq!(otter_bundle::patch::scan_records(&units), Ok(2));
    std::fs::write(dir("patch_records")?.join("seed"), units)?;
    Ok(())
}
