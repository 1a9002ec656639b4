//! Install throughput against `dd` writing the raw image.
//!
//! Run: `cargo bench -p otter-bundle --bench install_throughput`
//! Env: OTTER_BENCH_IMAGE=path (use this image instead of a generated one),
//!      OTTER_BENCH_SIZE_MIB=1024 (generated image size), OTTER_BENCH_DIR=dir (scratch space,
//!      needs ~3× the image size), OTTER_BENCH_RUNS=2.
//! The generated image mixes zeros (25%), compressible data (50%) and random data (25%) in 4 MiB
//! regions, roughly like a root filesystem image.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use otter_bundle::{
    BundleReader, CreateOptions, DEFAULT_CHUNK_SIZE, InstallOptions, ReadBack, SigningKey,
    create_bundle,
};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BoxResult<()> {
    // `cargo bench` passes --bench. `cargo test --all-targets` also builds and runs this binary,
    // without it: do not spend a minute and 3 GiB of disk there.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "install_throughput: skipped (run it with `cargo bench -p otter-bundle --bench install_throughput`)"
        );
        return Ok(());
    }
    let runs: usize = env_num("OTTER_BENCH_RUNS", 2);
    let scratch = match std::env::var_os("OTTER_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let image = match std::env::var_os("OTTER_BENCH_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = scratch.path().join("bench.img");
            let mib = env_num("OTTER_BENCH_SIZE_MIB", 1024);
            let t = Instant::now();
            generate_image(&p, mib as u64 * 1024 * 1024)?;
            eprintln!(
                "generated {mib} MiB image in {:.1}s",
                t.elapsed().as_secs_f64()
            );
            p
        }
    };
    let size = fs::metadata(&image)?.len();
    let mb = size as f64 / 1e6;

    let key = SigningKey::generate();
    let bundle = scratch.path().join("bench.otb");
    let t = Instant::now();
    let m = create_bundle(
        &bundle,
        &[("rootfs", image.as_path())],
        &CreateOptions {
            compatible: "bench".into(),
            version: "1.0.0".into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: 3,
        },
        &[&key],
    )?;
    let create_s = t.elapsed().as_secs_f64();
    let img = &m.images[0];
    println!(
        "image {:.0} MB, bundle payload {:.0} MB ({:.0}%), {} chunks ({} zero); create {:.1}s = {:.0} MB/s",
        mb,
        m.payload_size() as f64 / 1e6,
        100.0 * m.payload_size() as f64 / size as f64,
        img.chunks.len(),
        img.zero_chunks(),
        create_s,
        mb / create_s
    );

    let target = scratch.path().join("slot.img");
    {
        // An existing slot with old data, as on a device.
        let f = File::create(&target)?;
        f.set_len(size)?;
    }
    let trusted = vec![key.public()];
    let modes = [ReadBack::Storage, ReadBack::PageCache];
    let mut dd_best = f64::MAX;
    let mut otter_best = [f64::MAX; 2];
    for run in 1..=runs {
        sync();
        let t = Instant::now();
        let status = Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", target.display()))
            .args(["bs=4M", "conv=fsync,notrunc", "status=none"])
            .status()?;
        let dd_s = t.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("dd failed: {status}").into());
        }
        dd_best = dd_best.min(dd_s);
        println!(
            "run {run}: dd bs=4M conv=fsync,notrunc      {dd_s:.2}s = {:>6.0} MB/s",
            mb / dd_s
        );

        for (i, mode) in modes.iter().enumerate() {
            sync();
            let t = Instant::now();
            let mut v =
                BundleReader::open(bundle.to_str().ok_or("non-UTF-8 path")?)?.verify(&trusted)?;
            let opts = InstallOptions {
                read_back: *mode,
                ..Default::default()
            };
            let report = v.install_image_with("rootfs", &target, &opts, &mut |_| {})?;
            let otter_s = t.elapsed().as_secs_f64();
            otter_best[i] = otter_best[i].min(otter_s);
            println!(
                "run {run}: otter install, read-back {:<9} {otter_s:.2}s = {:>6.0} MB/s \
                 (stream+verify+write {:.2}s, fsync+read-back {:.2}s)",
                format!("{mode:?}"),
                mb / otter_s,
                report.seconds - report.verify_seconds,
                report.verify_seconds,
            );
        }
    }
    println!("best: dd {:.0} MB/s", mb / dd_best);
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "best: otter (read-back {mode:?}) {:.0} MB/s, ratio otter/dd = {:.2}",
            mb / otter_best[i],
            dd_best / otter_best[i]
        );
    }
    Ok(())
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// xorshift64*: fast and deterministic; quality is irrelevant here.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn generate_image(path: &Path, size: u64) -> BoxResult<()> {
    const REGION: usize = 4 * 1024 * 1024;
    let words: [&[u8]; 8] = [
        b"usr/lib/",
        b"libc.so.6 ",
        b"\x7fELF\x02\x01\x01",
        b"#!/bin/sh\n",
        b"\0\0\0\0",
        b"systemd ",
        b"otter ",
        b"etc/ssl/certs ",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = BufWriter::with_capacity(REGION, File::create(path)?);
    let mut buf = vec![0u8; REGION];
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(REGION as u64) as usize;
        let region = &mut buf[..n];
        match rng.next() % 4 {
            0 => region.fill(0),
            1 => {
                for c in region.chunks_mut(8) {
                    let r = rng.next().to_le_bytes();
                    c.copy_from_slice(&r[..c.len()]);
                }
            }
            _ => {
                let mut i = 0;
                while i < n {
                    let w = words[(rng.next() % words.len() as u64) as usize];
                    let k = w.len().min(n - i);
                    region[i..i + k].copy_from_slice(&w[..k]);
                    i += k;
                    // Sprinkle some entropy so it does not compress to nothing.
                    if i < n && rng.next().is_multiple_of(4) {
                        region[i] = rng.next() as u8;
                        i += 1;
                    }
                }
            }
        }
        out.write_all(region)?;
        written += n as u64;
    }
    out.flush()?;
    Ok(())
}
