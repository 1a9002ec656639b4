//! Installing an image from a verified bundle into a slot (block device or a file standing for
//! one), reusing what the device already has.
//!
//! 1. The image's block index is fetched and checked against the signed manifest.
//! 2. With a seed (the active slot), its index is loaded from a saved file or made by reading the
//!    slot, and [`crate::delta::plan_delta`] decides per chunk: zeros, copy from the seed, or
//!    fetch. The bytes to fetch are known here, before the download starts.
//! 3. Seed chunks are assembled from the seed's blocks, every block re-read and checked against
//!    the new image's index before it is written; a chunk with a mismatching block is fetched
//!    instead.
//! 4. The chunks to fetch come verified from the pipeline in [`crate::stream`] (range requests
//!    merged over small gaps, resumed after dropped connections), and are written at their
//!    offsets. Memory stays bounded by a few chunks; nothing is spooled to disk.
//! 5. The target is flushed, its page cache dropped, and the image read back and hashed whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::delta::{DEFAULT_MAX_GAP, DeltaPlan, coalesce, plan_delta, range_bytes};
use crate::error::{Error, Result};
use crate::index::{
    BLOCK_SIZE, BlockIndex, SavedIndex, SeedMap, SlotIdentity, ZERO_HASH, index_slot,
};
use crate::manifest::ImageEntry;
use crate::reader::{BundleReader, VerifiedBundle};
use crate::stream::{check_zero_chunks, first_bad_block, stream_chunks};

/// What an install is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetching the block index, indexing the seed, planning.
    #[default]
    Planning,
    /// Writing zeros and chunks assembled from the seed.
    Reusing,
    /// Downloading and writing the chunks the seed lacks.
    Fetching,
    /// Reading the slot back and hashing it.
    Verifying,
}

/// Reported often during an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub stage: Stage,
    /// Image bytes written to the target so far.
    pub done_bytes: u64,
    /// Image size.
    pub total_bytes: u64,
    /// Payload bytes read from the bundle so far (compressed: block index, fetched chunks and the
    /// gaps merged between them).
    pub fetched_bytes: u64,
    /// Payload bytes this install reads in all: known once planning is done, before the chunk
    /// download starts; grows only if a seed block turns out not to match (it is fetched then).
    pub fetch_total: u64,
    /// Image bytes copied from the seed so far.
    pub reused_bytes: u64,
    /// Seed bytes read and indexed (only when the seed has no usable saved index).
    pub seed_indexed_bytes: u64,
    /// Image bytes read back from the target and hashed (the final verification pass).
    pub verified_bytes: u64,
}

/// How the seed was indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SeedIndexSource {
    /// From the saved index file.
    Saved,
    /// By reading the seed slot, because the saved index was not usable (the reason says why).
    Scanned { reason: String },
    /// The seed could not be read at all: the install fetched everything.
    Unusable { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstallReport {
    pub bytes_written: u64,
    /// Payload bytes read from the bundle: block index, chunks, merged gaps.
    pub bytes_fetched: u64,
    /// Image bytes copied from the seed (zeros not counted).
    pub bytes_reused: u64,
    /// Payload bytes the plan said would be read, before the download started.
    pub fetch_planned: u64,
    /// Ranges read for chunks: one HTTP request each, not counting resumes.
    pub requests: usize,
    /// The plan (a full install's plan when there is no seed).
    pub plan: DeltaPlan,
    pub seed_index: Option<SeedIndexSource>,
    /// Chunks planned from the seed (or from a patch unit) that had a mismatching block, and
    /// were fetched instead.
    pub seed_mismatches: u64,
    /// Chunks rebuilt from patch units ([`crate::patch`]) instead of fetched.
    pub patched_chunks: u64,
    /// Patch units whose output did not match the block index (their chunks were fetched).
    pub patch_failed_units: u64,
    /// The release of the patch set used, if the bundle had one for the seed's image.
    pub patch_from: Option<String>,
    /// Why a patch set for the seed's image was not used, or stopped being used.
    pub patch_note: Option<String>,
    /// Set when [`InstallOptions::save_index`] was asked for and failing: the install itself is
    /// good; the next delta will index the slot instead.
    pub index_save_error: Option<String>,
    /// Wall time of the whole install, including the read-back verification.
    pub seconds: f64,
    /// Part of `seconds` spent in fsync and the read-back verification.
    pub verify_seconds: f64,
}

/// Where the final read-back verification reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadBack {
    /// Drop the target's cached pages after fsync, so the read-back comes from the storage
    /// itself and catches data the device failed to store. Costs one extra read of the image from
    /// the storage.
    #[default]
    Storage,
    /// Read back through the page cache: catches errors of our own write path (offsets, lengths)
    /// but not a device that loses writes. Only costs hashing, so installs run at nearly the
    /// speed of a raw write.
    PageCache,
}

/// Blocks the device already has: its active slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The active slot (block device or file). Only read, never written.
    pub slot: PathBuf,
    /// A saved index of `slot` ([`SavedIndex`]) and what the slot must hold for it to be used.
    /// When it is `None`, missing, damaged or describes something else, the slot is read and
    /// indexed instead (slower, same result).
    pub saved_index: Option<(PathBuf, SlotIdentity)>,
}

/// Tuning for [`VerifiedBundle::install_image_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    pub read_back: ReadBack,
    /// Reuse blocks from this slot (delta install).
    pub seed: Option<Seed>,
    /// Merge fetched ranges closer than this many bytes into one request.
    pub max_gap: u64,
    /// After a verified install, save the new image's block index here, so the next delta
    /// install with this slot as its seed need not read the slot.
    pub save_index: Option<PathBuf>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            read_back: ReadBack::default(),
            seed: None,
            max_gap: DEFAULT_MAX_GAP,
            save_index: None,
        }
    }
}

/// Read-back block size.
const READBACK_BLOCK: usize = 4 * 1024 * 1024;

impl VerifiedBundle {
    /// Writes image `image` into `target` and verifies it. Returns Ok only when every block
    /// matched its signed hash before being written and the target's first `size` bytes read
    /// back match the image's signed SHA-256. Before the first write it checks that the image
    /// exists, that the target exists and is large enough, that the bundle is complete (when its
    /// length is known), and fetches and checks the block index; a failure there leaves the
    /// target untouched.
    ///
    /// Call [`VerifiedBundle::check_policy`] first.
    pub fn install_image(
        &mut self,
        image: &str,
        target: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<InstallReport> {
        install(
            &self.reader,
            image,
            target,
            &InstallOptions::default(),
            progress,
        )
    }

    /// [`Self::install_image`] with explicit options: a seed for a delta install, read-back mode.
    pub fn install_image_with(
        &mut self,
        image: &str,
        target: &Path,
        opts: &InstallOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<InstallReport> {
        install(&self.reader, image, target, opts, progress)
    }
}

fn install(
    reader: &BundleReader,
    image: &str,
    target: &Path,
    opts: &InstallOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<InstallReport> {
    let started = Instant::now();
    let manifest = reader.manifest();
    let entry = manifest.image(image).ok_or_else(|| Error::ImageNotFound {
        name: image.to_owned(),
        available: manifest.images.iter().map(|i| i.name.clone()).collect(),
    })?;

    // --- Everything that can be checked before touching the target. ---
    let (file, capacity) = open_target(target)?;
    if entry.size > capacity {
        return Err(Error::TargetTooSmall {
            image: entry.name.clone(),
            target: target.to_owned(),
            image_size: entry.size,
            capacity,
        });
    }
    reader.check_complete()?;
    if let Some(seed) = &opts.seed {
        check_seed_is_not_target(&seed.slot, target)?;
    }
    let mut p = Progress {
        total_bytes: entry.size,
        ..Progress::default()
    };
    progress(p);

    // --- The seed's index, then the new image's: rebuilt from the seed's with a patch set for
    // exactly the seed's image, if the bundle has one, else fetched whole. ---
    let (seed_ix, seed_index) = match &opts.seed {
        Some(seed) => match seed_index(seed, &mut |n| {
            p.seed_indexed_bytes = n;
            progress(p);
        }) {
            Ok((ix, how)) => (Some(ix), Some(how)),
            // A seed is an optimisation: without it, the install fetches everything.
            Err(e) => {
                tracing::warn!(seed = %seed.slot.display(), error = %e, "seed slot unusable; installing in full");
                (
                    None,
                    Some(SeedIndexSource::Unusable {
                        reason: e.to_string(),
                    }),
                )
            }
        },
        None => (None, None),
    };
    let mut patch_note = None;
    let mut patch = None;
    if let Some((ps, old)) = seed_ix
        .as_ref()
        .and_then(|ix| crate::patch::select(manifest, image, ix))
    {
        match crate::patch::load_head(reader, ps, &old, opts.max_gap) {
            Ok((head, data, data_index, fetched)) => {
                p.fetched_bytes += fetched;
                patch = Some((ps, head, data, data_index));
            }
            Err(e) => {
                tracing::warn!(from = %ps.from.version, error = %e, "patch set unusable; installing by block reuse");
                patch_note = Some(e.to_string());
            }
        }
    }
    let index = match patch.as_mut() {
        // Checked against the manifest's index hash in load_head.
        Some((_, head, _, _)) => {
            std::mem::replace(&mut head.index, BlockIndex::new(0, Vec::new())?)
        }
        None => {
            let ix = reader.read_index(image)?;
            p.fetched_bytes += entry.index.csize;
            ix
        }
    };
    check_zero_chunks(entry, &index)?;
    progress(p);
    let seed_map = seed_ix.as_ref().map(SeedMap::new);
    let index_fetched = p.fetched_bytes;

    let plan = plan_delta(entry, &index, seed_map.as_ref());
    let mut fetch = plan.fetch_list();
    let gap = match reader.source.ranges_supported() {
        Some(false) => u64::MAX,
        _ => opts.max_gap,
    };
    // Chunks the patch's units produce are not fetched (unless a unit fails).
    let mut patched = std::collections::BTreeSet::new();
    let mut patch_bytes = 0u64;
    if let Some((ps, head, data, _)) = &patch {
        let wanted: std::collections::BTreeSet<usize> = fetch.iter().copied().collect();
        for s in &head.spans {
            patched.extend((s.first..s.first + s.count).filter(|i| wanted.contains(i)));
        }
        fetch.retain(|i| !patched.contains(i));
        let units = (ps.units_offset / u64::from(data.chunk_size)) as usize
            ..(ps.units_offset + ps.units_len).div_ceil(u64::from(data.chunk_size)) as usize;
        patch_bytes = data.chunks[units].iter().sum();
    }
    let fetch_planned = index_fetched + patch_bytes + range_bytes(&coalesce(entry, &fetch, gap));
    p.fetch_total = fetch_planned;
    p.stage = Stage::Reusing;
    progress(p);

    // --- Zeros and seed chunks. ---
    let mut mismatches = Vec::new();
    let mut seed_file = None;
    if let (Some(seed), Some(map)) = (&opts.seed, &seed_map) {
        let f = File::open(&seed.slot)
            .map_err(|e| Error::io("cannot open seed slot", &seed.slot, e))?;
        // Read ahead: seed blocks are mostly read in ascending runs.
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        reuse_chunks(
            entry,
            &index,
            &plan,
            &f,
            &seed.slot,
            map,
            &file,
            target,
            &mut |n, reused| {
                p.done_bytes += n;
                p.reused_bytes += reused;
                progress(p);
            },
            &mut mismatches,
        )?;
        seed_file = Some(f);
    } else {
        write_zero_chunks(entry, &plan, &file, target, &mut |n| {
            p.done_bytes += n;
            progress(p);
        })?;
    }

    // --- Patch units: chunks rebuilt from the seed and small frames, each block checked. ---
    let mut patched_chunks = 0u64;
    let mut patch_failed_units = 0u64;
    if let (Some((ps, _, data, data_index)), Some(seed_f)) = (&patch, &seed_file) {
        let before = p.fetched_bytes;
        let outcome = crate::patch::apply_units(
            reader,
            ps,
            data,
            data_index,
            entry,
            &index,
            &patched,
            seed_f,
            opts.max_gap,
            &mut |i, bytes| {
                let offset = entry.chunk_offset(i);
                write_at(&file, bytes, offset, target)?;
                p.done_bytes += bytes.len() as u64;
                progress(p);
                Ok(())
            },
        )?;
        p.fetched_bytes = before + outcome.fetched;
        patched_chunks = outcome.written.len() as u64;
        patch_failed_units = outcome.failed_units;
        if let Some(e) = &outcome.stream_error {
            tracing::warn!(from = %ps.from.version, error = %e, "patch data unusable; fetching the rest");
            patch_note = Some(e.clone());
        }
        // What the units did not produce is fetched the usual way.
        mismatches.extend(patched.iter().filter(|i| !outcome.written.contains(i)));
    }
    if !mismatches.is_empty() {
        tracing::warn!(
            chunks = mismatches.len(),
            "seed blocks or patch units did not match; fetching those chunks"
        );
        fetch.extend_from_slice(&mismatches);
        fetch.sort_unstable();
        fetch.dedup();
        p.fetch_total = p.fetched_bytes + range_bytes(&coalesce(entry, &fetch, gap));
    }

    // --- Fetch, verify, write. ---
    p.stage = Stage::Fetching;
    progress(p);
    let before_fetch = p.fetched_bytes;
    let stats = stream_chunks(reader, entry, &index, &fetch, opts.max_gap, &mut |chunk| {
        let offset = entry.chunk_offset(chunk.index);
        file.write_all_at(chunk.data, offset)
            .map_err(|e| Error::Write {
                target: target.to_owned(),
                offset,
                source: e,
            })?;
        p.done_bytes += chunk.data.len() as u64;
        p.fetched_bytes = before_fetch + chunk.fetched;
        progress(p);
        Ok(())
    })?;
    let fetched = before_fetch + stats.fetched;
    p.fetched_bytes = fetched;
    let written_at = Instant::now();
    file.sync_all()
        .map_err(|e| Error::io("cannot flush (fsync) target", target, e))?;

    // --- Read back. ---
    p.stage = Stage::Verifying;
    if opts.read_back == ReadBack::Storage {
        // Drop the cached pages so the read-back comes from the storage, not from what we just
        // wrote. Best effort: it is only advice to the kernel.
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    let total = entry.size;
    let digest = hash_prefix(&file, total, target, "cannot read back target", &mut |n| {
        p.verified_bytes = n;
        progress(p)
    })?;
    if digest != entry.sha256 {
        return Err(Error::ReadBackMismatch {
            image: entry.name.clone(),
            target: target.to_owned(),
            chunk: first_bad_chunk(&file, entry, &index, target)?,
        });
    }
    let index_save_error = opts.save_index.as_ref().and_then(|path| {
        SavedIndex {
            identity: SlotIdentity {
                version: manifest.version.clone(),
                size: entry.size,
                sha256: entry.sha256.clone(),
            },
            index,
        }
        .save(path)
        .err()
        .map(|e| e.to_string())
    });
    Ok(InstallReport {
        bytes_written: total,
        bytes_fetched: fetched,
        bytes_reused: p.reused_bytes,
        fetch_planned,
        requests: stats.ranges,
        plan,
        seed_index,
        seed_mismatches: mismatches.len() as u64,
        patched_chunks,
        patch_failed_units,
        patch_from: patch.as_ref().map(|(ps, ..)| ps.from.version.clone()),
        patch_note,
        index_save_error,
        seconds: started.elapsed().as_secs_f64(),
        verify_seconds: written_at.elapsed().as_secs_f64(),
    })
}

/// Writing the new image over the seed would destroy the blocks it copies from.
fn check_seed_is_not_target(seed: &Path, target: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // A seed that does not exist is reported later as unusable (the install goes on in full).
    let (Ok(s), Ok(t)) = (fs::metadata(seed), fs::metadata(target)) else {
        return Ok(());
    };
    let same = (s.dev() == t.dev() && s.ino() == t.ino())
        || (s.file_type().is_block_device() && s.rdev() == t.rdev());
    if same {
        return Err(Error::InvalidOptions(format!(
            "seed slot {} is the install target {}; the seed must be the other (active) slot",
            seed.display(),
            target.display()
        )));
    }
    Ok(())
}

/// The seed's block index: the saved one if it describes what the slot holds, else made by
/// reading the slot.
fn seed_index(seed: &Seed, progress: &mut dyn FnMut(u64)) -> Result<(BlockIndex, SeedIndexSource)> {
    let reason = match &seed.saved_index {
        None => "no saved index".to_string(),
        Some((path, expect)) => match SavedIndex::load(path) {
            Ok(saved) if &saved.identity == expect => {
                return Ok((saved.index, SeedIndexSource::Saved));
            }
            Ok(saved) => format!(
                "saved index {} is stale: it describes version {} ({} bytes, sha256 {}), the slot holds version {} ({} bytes, sha256 {})",
                path.display(),
                saved.identity.version,
                saved.identity.size,
                saved.identity.sha256,
                expect.version,
                expect.size,
                expect.sha256
            ),
            Err(e) => e.to_string(),
        },
    };
    tracing::info!(slot = %seed.slot.display(), %reason, "indexing the seed slot");
    // The image size, when known, bounds the read; else the whole slot.
    let len = seed.saved_index.as_ref().map(|(_, id)| id.size);
    let ix = match index_slot(&seed.slot, len, progress) {
        Err(Error::Io { .. }) if len.is_some() => index_slot(&seed.slot, None, progress)?,
        other => other?,
    };
    Ok((ix, SeedIndexSource::Scanned { reason }))
}

/// Writes every zero chunk (a full install: the slot still holds the old OS there).
fn write_zero_chunks(
    entry: &ImageEntry,
    plan: &DeltaPlan,
    file: &File,
    target: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let zeros = vec![0u8; entry.chunk_size as usize];
    for (i, s) in plan.sources.iter().enumerate() {
        if *s == crate::delta::ChunkSource::Zero {
            let len = entry.chunk_len(i);
            write_at(file, &zeros[..len], entry.chunk_offset(i), target)?;
            progress(len as u64);
        }
    }
    Ok(())
}

/// Writes zero chunks and chunks assembled from the seed. Every non-zero block is read from the
/// seed and checked against the new image's index before its chunk is written; a chunk with a
/// block that does not match is left out and its index pushed to `mismatches`.
#[allow(clippy::too_many_arguments)]
fn reuse_chunks(
    entry: &ImageEntry,
    index: &BlockIndex,
    plan: &DeltaPlan,
    seed: &File,
    seed_path: &Path,
    map: &SeedMap,
    file: &File,
    target: &Path,
    progress: &mut dyn FnMut(u64, u64),
    mismatches: &mut Vec<usize>,
) -> Result<()> {
    use crate::delta::ChunkSource;
    let bs = BLOCK_SIZE as usize;
    let per = entry.chunk_blocks() as usize;
    let mut buf = vec![0u8; entry.chunk_size as usize];
    for (i, s) in plan.sources.iter().enumerate() {
        let len = entry.chunk_len(i);
        let chunk = &mut buf[..len];
        match s {
            ChunkSource::Fetch => continue,
            ChunkSource::Zero => chunk.fill(0),
            ChunkSource::Seed => {
                let first = i * per;
                let hashes = &index.hashes()[first..first + len.div_ceil(bs)];
                // Runs of blocks that are consecutive in the seed are read with one pread.
                let mut k = 0;
                let mut ok = true;
                // Only the image's last block can be short; it is never taken from the seed.
                let full = |k: usize| (k + 1) * bs <= len;
                while k < hashes.len() {
                    if hashes[k] == ZERO_HASH {
                        chunk[k * bs..((k + 1) * bs).min(len)].fill(0);
                        k += 1;
                        continue;
                    }
                    let found = if full(k) { map.find(&hashes[k]) } else { None };
                    let Some(at) = found else {
                        ok = false; // the plan said otherwise: fetch it
                        break;
                    };
                    let mut n = 1;
                    while k + n < hashes.len()
                        && full(k + n)
                        && hashes[k + n] != ZERO_HASH
                        && map.find(&hashes[k + n]) == Some(at + (n * bs) as u64)
                    {
                        n += 1;
                    }
                    if let Err(e) = seed.read_exact_at(&mut chunk[k * bs..(k + n) * bs], at) {
                        // A seed that cannot be read is like one that does not match.
                        tracing::warn!(seed = %seed_path.display(), offset = at, error = %e, "cannot read seed; fetching the chunk");
                        ok = false;
                        break;
                    }
                    k += n;
                }
                if !ok || first_bad_block(chunk, hashes).is_some() {
                    mismatches.push(i);
                    continue;
                }
            }
        }
        write_at(file, chunk, entry.chunk_offset(i), target)?;
        let reused = if *s == ChunkSource::Seed {
            len as u64
        } else {
            0
        };
        progress(len as u64, reused);
    }
    Ok(())
}

fn write_at(file: &File, data: &[u8], offset: u64, target: &Path) -> Result<()> {
    file.write_all_at(data, offset).map_err(|e| Error::Write {
        target: target.to_owned(),
        offset,
        source: e,
    })
}

/// Capacity of a slot (a block device's size, or a regular file's length), read without
/// opening it for writing: lets a caller refuse an oversized image before changing any state.
pub fn target_capacity(target: &Path) -> Result<u64> {
    check_target_kind(target)?;
    let mut file = File::open(target).map_err(|e| Error::io("cannot open target", target, e))?;
    // Seeking to the end gives the size of block devices, whose metadata length is 0.
    file.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("cannot get size of target", target, e))
}

/// Only block devices and regular files (tests) are targets; returns whether it is a block
/// device.
fn check_target_kind(target: &Path) -> Result<bool> {
    let meta = fs::metadata(target).map_err(|e| Error::io("cannot open target", target, e))?;
    let ft = meta.file_type();
    let is_block = ft.is_block_device();
    if !(ft.is_file() || is_block) {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(Error::TargetKind {
            target: target.to_owned(),
            kind,
        });
    }
    Ok(is_block)
}

/// Opens an existing block device or regular file for writing, without creating or truncating
/// it, and returns it with its capacity.
fn open_target(target: &Path) -> Result<(File, u64)> {
    let is_block = check_target_kind(target)?;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if is_block {
        // On Linux, O_EXCL on a block device fails with EBUSY if it is mounted: we never write a
        // file system that is in use.
        opts.custom_flags(libc::O_EXCL);
    }
    let mut file = opts.open(target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::io(
                "target is in use (mounted, or held by another program); refusing to write",
                target,
                e,
            )
        } else {
            Error::io("cannot open target for writing", target, e)
        }
    })?;
    // Seeking to the end gives the size of block devices, whose metadata length is 0.
    let capacity = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("cannot get size of target", target, e))?;
    Ok((file, capacity))
}

/// After a whole-image mismatch: the first chunk whose bytes on the target differ from the index.
fn first_bad_chunk(
    file: &File,
    entry: &ImageEntry,
    index: &BlockIndex,
    target: &Path,
) -> Result<Option<u64>> {
    let mut buf = vec![0u8; entry.chunk_size as usize];
    let per = entry.chunk_blocks() as usize;
    for i in 0..entry.chunks.len() {
        let data = &mut buf[..entry.chunk_len(i)];
        file.read_exact_at(data, entry.chunk_offset(i))
            .map_err(|e| Error::io("cannot read back target", target, e))?;
        if first_bad_block(data, &index.hashes()[i * per..]).is_some() {
            return Ok(Some(i as u64));
        }
    }
    Ok(None)
}

/// SHA-256 of the first `len` bytes of `file`, reading in one thread and hashing in this one.
fn hash_prefix(
    file: &File,
    len: u64,
    path: &Path,
    action: &'static str,
    on_progress: &mut dyn FnMut(u64),
) -> Result<String> {
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(2);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(3);
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; READBACK_BLOCK]);
    }
    thread::scope(|s| {
        s.spawn(move || {
            let mut pos = 0u64;
            while pos < len {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let n = (len - pos).min(READBACK_BLOCK as u64) as usize;
                buf.resize(n, 0);
                let r = file.read_exact_at(&mut buf, pos).map(|()| buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        let mut h = Sha256::new();
        let mut pos = 0u64;
        while pos < len {
            let buf = match full_rx.recv() {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => return Err(Error::io(action, path, e)),
                Err(_) => return Err(Error::Internal("read-back thread stopped".into())),
            };
            h.update(&buf);
            pos += buf.len() as u64;
            on_progress(pos);
            // The reader may already be done; a failed send is harmless then.
            let _ = empty_tx.send(buf);
        }
        Ok(hex::encode(h.finalize()))
    })
}

/// Hex SHA-256 of the first `len` bytes of the file or block device at `path`; an error if it is
/// shorter than `len`.
pub fn sha256_file_prefix(path: &Path, len: u64) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("cannot get size of", path, e))?;
    if size < len {
        return Err(Error::io(
            "cannot hash",
            path,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it has only {size} bytes, {len} requested"),
            ),
        ));
    }
    hash_prefix(&file, len, path, "cannot read", &mut |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hash_matches_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(READBACK_BLOCK * 2 + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs::write(&p, &data).unwrap();
        for len in [
            0,
            1,
            READBACK_BLOCK,
            READBACK_BLOCK + 1,
            data.len() - 1,
            data.len(),
        ] {
            assert_eq!(
                sha256_file_prefix(&p, len as u64).unwrap(),
                hex::encode(Sha256::digest(&data[..len])),
                "{len}"
            );
        }
        let e = sha256_file_prefix(&p, data.len() as u64 + 1).unwrap_err();
        assert!(e.to_string().contains("requested"), "{e}");
    }

    #[test]
    fn read_back_names_the_differing_chunk() {
        use crate::index::block_hash;
        use crate::manifest::IndexRef;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slot");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let hashes = data.chunks(4096).map(block_hash).collect();
        let index = BlockIndex::new(data.len() as u64, hashes).unwrap();
        let entry = ImageEntry {
            name: "rootfs".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
            block_size: 4096,
            chunk_size: 4096,
            index: IndexRef {
                offset: 0,
                csize: 1,
                size: 48,
                sha256: "0".repeat(64),
            },
            chunks_offset: 1,
            chunks: vec![1, 1, 1],
        };
        fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(first_bad_chunk(&f, &entry, &index, &p).unwrap(), None);
        let mut bad = data.clone();
        bad[9000] ^= 1;
        fs::write(&p, &bad).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(first_bad_chunk(&f, &entry, &index, &p).unwrap(), Some(2));
    }

    #[test]
    fn target_must_exist_and_be_file_or_block_device() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(open_target(&missing).is_err());
        assert!(!missing.exists(), "must never create the target");
        assert!(matches!(
            open_target(dir.path()),
            Err(Error::TargetKind {
                kind: "directory",
                ..
            })
        ));
        assert!(matches!(
            open_target(Path::new("/dev/null")),
            Err(Error::TargetKind {
                kind: "character device",
                ..
            })
        ));
        let f = dir.path().join("slot");
        fs::write(&f, vec![1u8; 5000]).unwrap();
        let (_, cap) = open_target(&f).unwrap();
        assert_eq!(cap, 5000);
        assert_eq!(fs::read(&f).unwrap(), vec![1u8; 5000], "not truncated");
    }
}
