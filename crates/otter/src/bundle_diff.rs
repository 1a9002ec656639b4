//! `otter bundle diff OLD NEW`: what a device running OLD downloads to install NEW.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::Read;
use std::path::Path;

#[derive(Args)]
pub struct DiffArgs {
    /// What the device has: a bundle (.otb, path or URL) or a raw root image.
    pub old: String,
    /// What it installs: a bundle (.otb, path or URL) or a raw root image (then compressed here
    /// as `otter bundle create` would, with --chunk-size and --zstd-level).
    pub new: String,
    /// Image to compare, for bundles.
    #[arg(long, default_value = "rootfs")]
    pub image: String,
    /// Chunk size when NEW is a raw image.
    #[arg(long, default_value_t = otter_bundle::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// zstd level when NEW is a raw image.
    #[arg(long, default_value_t = otter_bundle::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Merge fetched ranges closer than this many bytes into one request (as install does).
    #[arg(long, default_value_t = otter_bundle::DEFAULT_MAX_GAP)]
    pub max_gap: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A bundle is recognised by its magic, so a misnamed file still works.
fn is_bundle(src: &str) -> Result<bool> {
    if src.starts_with("http://") || src.starts_with("https://") {
        return Ok(true);
    }
    let mut magic = [0u8; 8];
    let mut f = std::fs::File::open(src).with_context(|| format!("opening {src}"))?;
    let n = f
        .read(&mut magic)
        .with_context(|| format!("reading {src}"))?;
    Ok(n == 8 && &magic == otter_bundle::format::MAGIC)
}

pub fn run(a: DiffArgs) -> Result<()> {
    let (old, old_kind) = if is_bundle(&a.old)? {
        let r = otter_bundle::BundleReader::open(&a.old)?;
        let ix = r
            .read_index(&a.image)
            .with_context(|| format!("reading the block index of {}", a.old))?;
        (ix, format!("bundle {}", r.manifest().version))
    } else {
        let ix = otter_bundle::index_slot(Path::new(&a.old), None, &mut |_| {})
            .with_context(|| format!("indexing image {}", a.old))?;
        (ix, "image".to_string())
    };
    let mut new_reader = None;
    let (entry, new_index, header, new_kind) = if is_bundle(&a.new)? {
        let r = otter_bundle::BundleReader::open(&a.new)?;
        let ix = r
            .read_index(&a.image)
            .with_context(|| format!("reading the block index of {}", a.new))?;
        let Some(e) = r.manifest().image(&a.image) else {
            bail!("{} has no image {:?}", a.new, a.image);
        };
        let out = (
            e.clone(),
            ix,
            Some(r.payload_offset()),
            format!("bundle {}", r.manifest().version),
        );
        new_reader = Some(r);
        out
    } else {
        let opts = otter_bundle::CreateOptions {
            chunk_size: a.chunk_size,
            zstd_level: a.zstd_level,
            ..otter_bundle::CreateOptions::new("diff", "0.0.0")
        };
        let (e, ix) = otter_bundle::analyse_image(Path::new(&a.new), &opts)
            .with_context(|| format!("analysing image {}", a.new))?;
        (e, ix, None, "image".to_string())
    };
    let d = otter_bundle::diff(&old, &entry, &new_index, a.max_gap);
    // A device on exactly OLD uses NEW's patch set for it, if NEW carries one.
    let patched = match &new_reader {
        Some(r) => otter_bundle::patched_diff(r, &a.image, &old, a.max_gap)
            .with_context(|| format!("reading the patch set of {} for OLD", a.new))?,
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&d)?;
        v["patched"] = serde_json::to_value(&patched)?;
        v["old"] = a.old.clone().into();
        v["new"] = a.new.clone().into();
        v["chunk_size"] = entry.chunk_size.into();
        // The bundle header (manifest and signatures) is downloaded too.
        v["header_bytes"] = header.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let p = &d.plan;
    println!("old         {} ({old_kind})", a.old);
    println!(
        "new         {} ({new_kind}, {:.1} MiB, chunks of {} KiB)",
        a.new,
        mib(d.image_bytes),
        entry.chunk_size / 1024
    );
    println!(
        "blocks      {} of 4 KiB: {} zero, {} reused from old, {} fetched ({} of those are in old too, fetched with their chunk)",
        p.blocks, p.zero_blocks, p.seed_blocks, p.fetch_blocks, p.fetch_blocks_in_seed
    );
    println!(
        "chunks      {} zero, {} reused, {} fetched",
        p.zero_chunks, p.seed_chunks, p.fetch_chunks
    );
    println!(
        "download    {:.2} MiB = {:.2} MiB block index + {:.2} MiB chunks in {} HTTP request(s) (ranges merged over gaps ≤ {} bytes){}",
        mib(d.download_bytes),
        mib(d.index_bytes),
        mib(d.range_bytes),
        d.requests,
        d.max_gap,
        match header {
            Some(h) => format!(", plus the {:.2} MiB bundle header", mib(h)),
            None => String::new(),
        }
    );
    println!(
        "            {:.1}% of the full payload ({:.2} MiB)",
        d.percent_of_full,
        mib(d.full_download_bytes)
    );
    if let Some(pd) = &patched {
        println!(
            "patched     {:.2} MiB with NEW's patch set for {}: {:.2} MiB patch data (index patch and {} chunks rebuilt) + {:.2} MiB of {} other chunks in {} request(s){}",
            mib(pd.download_bytes),
            pd.from_version,
            mib(pd.data_index_bytes + pd.data_bytes),
            pd.patched_chunks,
            mib(pd.range_bytes),
            pd.fetch_chunks,
            pd.requests,
            match header {
                Some(h) => format!(", plus the {:.2} MiB bundle header", mib(h)),
                None => String::new(),
            }
        );
    }
    if header.is_some() {
        println!("note        bundles were read without checking signatures; figures only");
    }
    Ok(())
}
