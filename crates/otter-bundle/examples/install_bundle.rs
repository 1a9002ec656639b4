//! Installs a bundle into a target file or device, optionally as a delta from a seed, and prints
//! what it cost. For measuring install time and memory (`/usr/bin/time -v`) of full and delta
//! installs on real images:
//!
//! `cargo run --release -p otter-bundle --example install_bundle -- BUNDLE TARGET KEYS_DIR [SEED]`
//!
//! Env: `SAVE_INDEX=path` saves the installed image's block index there; `SEED_INDEX=path` uses
//! such a saved index for SEED (whatever it describes: this is a measuring tool).

use std::path::PathBuf;
use std::time::Instant;

use otter_bundle::{BundleReader, InstallOptions, SavedIndex, Seed, load_trusted_keys};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, target, keys, rest @ ..] = args.as_slice() else {
        return Err("usage: install_bundle BUNDLE TARGET KEYS_DIR [SEED]".into());
    };
    let trusted = load_trusted_keys(&PathBuf::from(keys))?;
    let t = Instant::now();
    let mut v = BundleReader::open(bundle)?.verify(&trusted)?;
    let saved_index = match std::env::var_os("SEED_INDEX") {
        Some(p) => {
            let p = PathBuf::from(p);
            let id = SavedIndex::load(&p)?.identity;
            Some((p, id))
        }
        None => None,
    };
    let opts = InstallOptions {
        seed: rest.first().map(|s| Seed {
            slot: PathBuf::from(s),
            saved_index,
        }),
        save_index: std::env::var_os("SAVE_INDEX").map(PathBuf::from),
        ..Default::default()
    };
    let r = v.install_image_with("rootfs", &PathBuf::from(target), &opts, &mut |_| {})?;
    println!(
        "{:.1}s (verify {:.1}s): written {:.1} MiB, fetched {:.2} MiB (planned {:.2}), reused {:.1} MiB, {} requests, seed {:?}, patch {:?} ({} chunks, {} failed units{})",
        t.elapsed().as_secs_f64(),
        r.verify_seconds,
        r.bytes_written as f64 / 1048576.0,
        r.bytes_fetched as f64 / 1048576.0,
        r.fetch_planned as f64 / 1048576.0,
        r.bytes_reused as f64 / 1048576.0,
        r.requests,
        r.seed_index,
        r.patch_from,
        r.patched_chunks,
        r.patch_failed_units,
        r.patch_note
            .as_deref()
            .map(|n| format!(", note: {n}"))
            .unwrap_or_default()
    );
    Ok(())
}
