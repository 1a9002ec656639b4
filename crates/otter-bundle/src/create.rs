//! Writing a bundle: chunk each image, hash its blocks and compress its chunks in parallel, build
//! the block indexes, sign the manifest, and write the file atomically.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{self, SignatureEntry};
use crate::index::{BLOCK_SIZE, BlockHash, BlockIndex, block_hash};
use crate::keys::SigningKey;
use crate::manifest::{
    CHUNK_ALIGN, ImageEntry, IndexRef, MAX_CHUNK_SIZE, Manifest, check_compatible,
    check_image_name, parse_version,
};
use crate::{DEFAULT_CHUNK_SIZE, FORMAT_VERSION};

/// zstd's own default: a good speed/ratio balance for root filesystems.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Board/product string the bundle is for.
    pub compatible: String,
    /// Release version (semver).
    pub version: String,
    /// Raw chunk size: a multiple of 4096 between 4 KiB and 64 MiB.
    pub chunk_size: u32,
    pub zstd_level: i32,
}

impl CreateOptions {
    /// Options with the default chunk size and compression level.
    pub fn new(compatible: impl Into<String>, version: impl Into<String>) -> Self {
        CreateOptions {
            compatible: compatible.into(),
            version: version.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }

    fn check(&self) -> Result<()> {
        check_compatible(&self.compatible)?;
        parse_version(&self.version)?;
        let cs = self.chunk_size;
        if !(CHUNK_ALIGN..=MAX_CHUNK_SIZE).contains(&cs) || !cs.is_multiple_of(CHUNK_ALIGN) {
            return Err(Error::InvalidOptions(format!(
                "chunk size {cs} must be a multiple of {CHUNK_ALIGN} between {CHUNK_ALIGN} and {MAX_CHUNK_SIZE} (default {DEFAULT_CHUNK_SIZE})"
            )));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            return Err(Error::InvalidOptions(format!(
                "zstd level {} is outside {}..={} (default {DEFAULT_ZSTD_LEVEL})",
                self.zstd_level,
                levels.start(),
                levels.end()
            )));
        }
        Ok(())
    }
}

/// Creates a signed bundle at `out` from `images` (name, path of the raw image). The file appears
/// atomically: it is written to a temporary file in the same directory and renamed.
pub fn create_bundle(
    out: &Path,
    images: &[(&str, &Path)],
    opts: &CreateOptions,
    keys: &[&SigningKey],
) -> Result<Manifest> {
    create_bundle_with_patches(out, images, opts, keys, &[])
}

/// [`create_bundle`], plus a patch set ([`crate::patch`]) for each image of each older bundle in
/// `delta_from` (paths or URLs) that has an image of the same name: devices running exactly that
/// older image download much less; every other device installs from the same bundle as usual.
/// The older bundles' signatures are not checked (they are the builder's own), but their images
/// are checked against their manifests before patches are made from them.
pub fn create_bundle_with_patches(
    out: &Path,
    images: &[(&str, &Path)],
    opts: &CreateOptions,
    keys: &[&SigningKey],
    delta_from: &[&str],
) -> Result<Manifest> {
    opts.check()?;
    if keys.is_empty() {
        return Err(Error::InvalidOptions(
            "no signing key given; a device never installs an unsigned bundle (hint: generate one with `otter keys generate`)".into(),
        ));
    }
    let mut seen_keys = HashSet::new();
    for k in keys {
        if !seen_keys.insert(k.public().to_bytes()) {
            return Err(Error::InvalidOptions(format!(
                "signing key {} given twice",
                k.public().fingerprint()
            )));
        }
    }
    if images.is_empty() {
        return Err(Error::InvalidOptions("no images given".into()));
    }
    let mut names: HashSet<String> = HashSet::new();
    for (name, _) in images {
        check_image_name(name)?;
        if !names.insert(name.to_string()) {
            return Err(Error::InvalidOptions(format!(
                "image name {name:?} given twice"
            )));
        }
    }
    let created = created_time()?;

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    // The chunk frames go to an anonymous temp file first because what precedes them (header,
    // block indexes) depends on them.
    let mut chunks_file = tempfile::tempfile_in(&dir)
        .map_err(|e| Error::io("cannot create temporary file in", &dir, e))?;
    let mut analysed = Vec::with_capacity(images.len());
    for (name, path) in images {
        let mut out = io::BufWriter::with_capacity(1024 * 1024, &mut chunks_file);
        let a = chunk_image(name, path, opts, &mut out, &dir)?;
        out.flush()
            .map_err(|e| Error::io("cannot write temporary payload in", &dir, e))?;
        analysed.push(a);
    }
    let mut patches = Vec::new();
    for src in delta_from {
        let made = make_patch_sets(
            src,
            images,
            &analysed,
            opts,
            &dir,
            &mut chunks_file,
            &mut names,
        )?;
        for (a, ps) in made {
            analysed.push(a);
            patches.push(ps);
        }
    }
    let (entries, index_frames) = layout(analysed, opts)?;

    let manifest = Manifest {
        format: FORMAT_VERSION,
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        created,
        images: entries,
        metadata: BTreeMap::new(),
        patches,
    };
    manifest
        .check()
        .map_err(|e| Error::Internal(format!("created manifest fails its own check: {e}")))?;
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(Error::ManifestEncode)?;
    let signatures: Vec<SignatureEntry> = keys
        .iter()
        .map(|k| k.sign_manifest(&manifest_bytes))
        .collect();
    let mut header = format::encode_header(&manifest_bytes, &signatures)?;
    for f in &index_frames {
        header.extend_from_slice(f);
    }

    write_atomically(out, &dir, &header, &mut chunks_file)?;
    Ok(manifest)
}

/// Patch sets against the older bundle `src` for every image it shares with `images`: each
/// one's data image chunked into `payload` like any other image.
fn make_patch_sets(
    src: &str,
    images: &[(&str, &Path)],
    analysed: &[Analysed],
    opts: &CreateOptions,
    dir: &Path,
    payload: &mut File,
    names: &mut HashSet<String>,
) -> Result<Vec<(Analysed, crate::patch::PatchSet)>> {
    let reader = crate::reader::BundleReader::open(src)?;
    let old_manifest = reader.manifest().clone();
    if old_manifest.compatible != opts.compatible {
        return Err(Error::InvalidOptions(format!(
            "--delta-from {src} is for {:?}, this bundle for {:?}",
            old_manifest.compatible, opts.compatible
        )));
    }
    let mut out = Vec::new();
    for ((name, path), a) in images.iter().zip(analysed) {
        if old_manifest.image(name).is_none() {
            continue;
        }
        let old_size = old_manifest.image(name).map_or(0, |e| e.size);
        if !old_size.is_multiple_of(u64::from(BLOCK_SIZE)) {
            // A device finds the old image by the index of its first from.size bytes, which
            // must be whole blocks (file system images always are).
            return Err(Error::InvalidOptions(format!(
                "--delta-from {src}: image {name:?} is {old_size} bytes, not a whole number of {BLOCK_SIZE} byte blocks; patch sets need block-sized images"
            )));
        }
        let (old, old_index, old_entry) = crate::patch::read_image(&reader, name)?;
        let new = crate::patch::read_file(path)?;
        // Payload offsets do not matter for planning; only sizes and chunk lengths do.
        let entry = ImageEntry {
            name: a.name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
            block_size: BLOCK_SIZE,
            chunk_size: a.chunk_size,
            index: IndexRef {
                offset: 0,
                csize: 1,
                size: a.index.len() as u64 * crate::index::HASH_LEN as u64,
                sha256: a.index.sha256(),
            },
            chunks_offset: 0,
            chunks: a.chunks.clone(),
        };
        let (data, mut ps) = crate::patch::build(
            &old,
            &old_index,
            &old_manifest.version,
            &old_entry.sha256,
            &new,
            &entry,
            &a.index,
            crate::patch::PATCH_ZSTD_LEVEL,
        )?;
        drop((old, new));
        let mut k = 1;
        let data_name = loop {
            let n = format!("{name}.patch{k}");
            if names.insert(n.clone()) {
                break n;
            }
            k += 1;
        };
        ps.data = data_name.clone();
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Error::io("cannot create temporary file in", dir, e))?;
        tmp.write_all(&data)
            .and_then(|()| tmp.flush())
            .map_err(|e| Error::io("cannot write temporary patch data in", dir, e))?;
        let data_opts = CreateOptions {
            chunk_size: crate::patch::DATA_CHUNK_SIZE,
            // Already compressed: level 1 only squeezes the head and the padding.
            zstd_level: 1,
            ..opts.clone()
        };
        let mut w = io::BufWriter::with_capacity(1024 * 1024, &mut *payload);
        let da = chunk_image(&data_name, tmp.path(), &data_opts, &mut w, dir)?;
        w.flush()
            .map_err(|e| Error::io("cannot write temporary payload in", dir, e))?;
        out.push((da, ps));
    }
    Ok(out)
}

/// An image chunked and hashed, before its place in the payload is known.
pub(crate) struct Analysed {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub chunk_size: u32,
    pub chunks: Vec<u64>,
    pub index: BlockIndex,
}

/// Places the images in the payload: the block indexes first (compressed, in image order), then
/// every image's chunk frames. Returns the manifest entries and the compressed index frames.
fn layout(
    analysed: Vec<Analysed>,
    opts: &CreateOptions,
) -> Result<(Vec<ImageEntry>, Vec<Vec<u8>>)> {
    let mut frames = Vec::with_capacity(analysed.len());
    let mut refs = Vec::with_capacity(analysed.len());
    let mut offset = 0u64;
    for a in &analysed {
        let raw = a.index.to_bytes();
        let frame = zstd::bulk::compress(&raw, opts.zstd_level).map_err(|e| {
            Error::Internal(format!(
                "zstd failed on the block index of image {:?}: {e}",
                a.name
            ))
        })?;
        refs.push(IndexRef {
            offset,
            csize: frame.len() as u64,
            size: raw.len() as u64,
            sha256: hex::encode(Sha256::digest(&raw)),
        });
        offset += frame.len() as u64;
        frames.push(frame);
    }
    let mut entries = Vec::with_capacity(analysed.len());
    for (a, index) in analysed.into_iter().zip(refs) {
        let chunks_offset = offset;
        offset += a.chunks.iter().sum::<u64>();
        entries.push(ImageEntry {
            name: a.name,
            size: a.size,
            sha256: a.sha256,
            block_size: BLOCK_SIZE,
            chunk_size: a.chunk_size,
            index,
            chunks_offset,
            chunks: a.chunks,
        });
    }
    Ok((entries, frames))
}

/// Chunks and compresses an image as [`create_bundle`] would, without writing a bundle: its
/// manifest entry (payload offsets as if it were the only image) and its block index. For
/// estimating what a delta would cost (`otter bundle diff` on raw images).
pub fn analyse_image(path: &Path, opts: &CreateOptions) -> Result<(ImageEntry, BlockIndex)> {
    opts.check()?;
    let a = chunk_image("rootfs", path, opts, &mut io::sink(), Path::new("."))?;
    let index = a.index.clone();
    let (mut entries, _) = layout(vec![a], opts)?;
    let entry = entries
        .pop()
        .ok_or_else(|| Error::Internal("analysed image lost".into()))?;
    Ok((entry, index))
}

fn created_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u64>()
            .map_err(|_| Error::SourceDateEpoch(v.clone())),
        _ => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}

fn write_atomically(out: &Path, dir: &Path, header: &[u8], payload: &mut File) -> Result<()> {
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot create temporary file in", dir, e))?;
    let tmp_path = tmp.path().to_owned();
    let werr = |e| Error::io("cannot write", &tmp_path, e);
    tmp.write_all(header).map_err(werr)?;
    payload
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot rewind temporary payload in", dir, e))?;
    // std uses copy_file_range here, so the payload is not copied through user space.
    io::copy(payload, tmp.as_file_mut()).map_err(werr)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(out)
        .map_err(|e| Error::io("cannot move finished bundle into place at", out, e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

struct RawChunk {
    index: usize,
    data: Vec<u8>,
}

struct DoneChunk {
    index: usize,
    hashes: Vec<BlockHash>,
    /// None for an all-zero chunk.
    compressed: Option<Vec<u8>>,
}

/// Reads the image sequentially (and hashes it whole), hashes blocks and compresses chunks on all
/// cores, and appends the chunk frames to `payload` in order.
fn chunk_image(
    name: &str,
    path: &Path,
    opts: &CreateOptions,
    payload: &mut dyn Write,
    tmp_dir: &Path,
) -> Result<Analysed> {
    let mut file = File::open(path).map_err(|e| Error::io("cannot open image", path, e))?;
    // seek, not metadata, so a block device works as the source too.
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|n| file.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| Error::io("cannot get size of image", path, e))?;
    if size == 0 {
        return Err(Error::InvalidOptions(format!(
            "image {name:?} ({}) is empty",
            path.display()
        )));
    }
    let chunk_size = opts.chunk_size as usize;
    let n_chunks = size.div_ceil(opts.chunk_size as u64) as usize;
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    // Bounds memory: at most `in_flight` raw chunks are read but not yet written out.
    let in_flight = (workers * 3).max(4);

    let (work_tx, work_rx) = sync_channel::<RawChunk>(in_flight);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = sync_channel::<Result<DoneChunk>>(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));

    thread::scope(|s| -> Result<Analysed> {
        // Reader: sequential read + whole-image hash.
        let reader_pool = Arc::clone(&pool);
        let reader = s.spawn(move || -> Result<String> {
            let mut whole = Sha256::new();
            for index in 0..n_chunks {
                if token_rx.recv().is_err() {
                    break; // collector stopped: it reports why
                }
                let len = (size - index as u64 * chunk_size as u64).min(chunk_size as u64) as usize;
                let mut data = reader_pool
                    .lock()
                    .ok()
                    .and_then(|mut p| p.pop())
                    .unwrap_or_else(|| Vec::with_capacity(chunk_size));
                data.resize(len, 0);
                file.read_exact(&mut data).map_err(|e| {
                    Error::io(
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            "image shrank while being read"
                        } else {
                            "cannot read image"
                        },
                        path,
                        e,
                    )
                })?;
                whole.update(&data);
                if work_tx.send(RawChunk { index, data }).is_err() {
                    break;
                }
            }
            Ok(hex::encode(whole.finalize()))
        });

        for _ in 0..workers {
            let work_rx = Arc::clone(&work_rx);
            let done_tx = done_tx.clone();
            let pool = Arc::clone(&pool);
            let level = opts.zstd_level;
            s.spawn(move || {
                let mut compressor = match zstd::bulk::Compressor::new(level) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = done_tx.send(Err(Error::Internal(format!("zstd init: {e}"))));
                        return;
                    }
                };
                loop {
                    let job = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(RawChunk { index, data }) = job else {
                        return;
                    };
                    let result = compress_chunk(&mut compressor, index, &data).map_err(|e| {
                        Error::Internal(format!("zstd failed on image {name:?} chunk {index}: {e}"))
                    });
                    if let Ok(mut p) = pool.lock() {
                        p.push(data);
                    }
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);

        // Collector: put chunks back in order and append them to the payload.
        let mut pending = BTreeMap::new();
        let mut chunks = Vec::with_capacity(n_chunks);
        let mut hashes = Vec::with_capacity(size.div_ceil(u64::from(BLOCK_SIZE)) as usize);
        let collected = (|| -> Result<()> {
            for result in done_rx.iter() {
                let done = result?;
                pending.insert(done.index, done);
                while let Some(done) = pending.remove(&chunks.len()) {
                    let csize = match &done.compressed {
                        Some(c) => {
                            payload.write_all(c).map_err(|e| {
                                Error::io("cannot write temporary payload in", tmp_dir, e)
                            })?;
                            c.len() as u64
                        }
                        None => 0,
                    };
                    chunks.push(csize);
                    hashes.extend_from_slice(&done.hashes);
                    let _ = token_tx.send(());
                }
                if chunks.len() == n_chunks {
                    break;
                }
            }
            Ok(())
        })();
        // Unblocks reader and workers if we stopped early.
        drop(done_rx);
        drop(token_tx);
        let whole = reader
            .join()
            .map_err(|_| Error::Internal("image reader thread panicked".into()))?;
        let whole = whole?;
        collected?;
        if chunks.len() != n_chunks {
            return Err(Error::Internal(format!(
                "image {name:?}: {} of {n_chunks} chunks produced",
                chunks.len()
            )));
        }
        Ok(Analysed {
            name: name.to_owned(),
            size,
            sha256: whole,
            chunk_size: opts.chunk_size,
            chunks,
            index: BlockIndex::new(size, hashes)?,
        })
    })
}

fn compress_chunk(
    compressor: &mut zstd::bulk::Compressor<'_>,
    index: usize,
    data: &[u8],
) -> io::Result<DoneChunk> {
    let hashes: Vec<BlockHash> = data.chunks(BLOCK_SIZE as usize).map(block_hash).collect();
    let compressed = if is_zero(data) {
        None
    } else {
        Some(compressor.compress(data)?)
    };
    Ok(DoneChunk {
        index,
        hashes,
        compressed,
    })
}

/// Checks 64-byte blocks with an OR-fold, which the compiler vectorises; the early exit per block
/// keeps it fast for data chunks too.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    blocks
        .by_ref()
        .all(|b| b.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[0; 100]));
        for pos in [0, 63, 64, 4000, 4095] {
            let mut v = vec![0u8; 4096];
            v[pos] = 1;
            assert!(!is_zero(&v), "{pos}");
        }
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn options_are_checked() {
        let ok = CreateOptions::new("board", "1.0.0");
        ok.check().unwrap();
        for bad in [
            CreateOptions {
                chunk_size: 1000,
                ..ok.clone()
            },
            CreateOptions {
                chunk_size: 0,
                ..ok.clone()
            },
            CreateOptions {
                chunk_size: MAX_CHUNK_SIZE + 4096,
                ..ok.clone()
            },
            CreateOptions {
                zstd_level: 99,
                ..ok.clone()
            },
            CreateOptions {
                version: "1".into(),
                ..ok.clone()
            },
            CreateOptions {
                compatible: "".into(),
                ..ok.clone()
            },
            CreateOptions {
                compatible: "a b".into(),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
