//! Makes a bundle of a raw image with a patch set against an older bundle, and prints what the
//! patch costs and saves. For tuning patch making on real images:
//!
//! `cargo run --release -p otter-bundle --example patch_bundle -- NEW.img OLD.otb KEY OUT.otb`

use std::path::Path;
use std::time::Instant;

use otter_bundle::{
    BundleReader, CreateOptions, DEFAULT_MAX_GAP, SigningKey, create_bundle_with_patches, diff,
    patched_diff,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [new, old, key, out] = args.as_slice() else {
        return Err("usage: patch_bundle NEW.img OLD.otb KEY OUT.otb".into());
    };
    let key = SigningKey::load(Path::new(key))?;
    let old_reader = BundleReader::open(old)?;
    let opts = CreateOptions::new(old_reader.manifest().compatible.clone(), "9.9.9");
    let t = Instant::now();
    let m = create_bundle_with_patches(
        Path::new(out),
        &[("rootfs", Path::new(new))],
        &opts,
        &[&key],
        &[old.as_str()],
    )?;
    println!("created in {:.1}s", t.elapsed().as_secs_f64());
    let r = BundleReader::open(out)?;
    let old_index = old_reader.read_index("rootfs")?;
    let entry = m.image("rootfs").ok_or("no rootfs")?;
    let plain = diff(&old_index, entry, &r.read_index("rootfs")?, DEFAULT_MAX_GAP);
    println!(
        "block reuse: {:.2} MB ({} chunks), header {:.2} MB",
        plain.download_bytes as f64 / 1e6,
        plain.plan.fetch_chunks,
        r.payload_offset() as f64 / 1e6
    );
    if let Some(p) = patched_diff(&r, "rootfs", &old_index, DEFAULT_MAX_GAP)? {
        println!("patched: {p:#?}");
    }
    for ps in &m.patches {
        let d = m.image(&ps.data).ok_or("no data image")?;
        println!(
            "patch set: {} units, head {} B, units {} B, data image stored {} B",
            ps.units,
            ps.head,
            ps.units_len,
            d.stored_bytes()
        );
    }
    Ok(())
}
