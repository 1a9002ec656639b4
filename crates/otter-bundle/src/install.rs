//! Streaming an image from a verified bundle into a slot (block device or a file standing for one).
//!
//! Pipeline: a reader thread pulls the image's compressed bytes sequentially from the source,
//! worker threads decompress and hash each chunk against the signed manifest, and the calling
//! thread writes verified chunks at their offsets (positional writes, so order does not matter).
//! Memory stays bounded by a few chunks; nothing is spooled to disk. After the last chunk the
//! target is flushed, its page cache dropped, and the image read back and hashed whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::ImageEntry;
use crate::reader::{BundleReader, VerifiedBundle};

/// Reported after every chunk written and every block read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Image bytes written to the target so far.
    pub done_bytes: u64,
    /// Image size.
    pub total_bytes: u64,
    /// Payload bytes read from the bundle (compressed; zero chunks cost nothing).
    pub fetched_bytes: u64,
    /// Image bytes read back from the target and hashed (the final verification pass).
    pub verified_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstallReport {
    pub bytes_written: u64,
    pub bytes_fetched: u64,
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

/// Tuning for [`VerifiedBundle::install_image_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstallOptions {
    pub read_back: ReadBack,
}

/// Read-back block size.
const READBACK_BLOCK: usize = 4 * 1024 * 1024;

impl VerifiedBundle {
    /// Writes image `image` into `target` and verifies it. Returns Ok only when every chunk
    /// matched its signed hash before being written and the target's first `size` bytes read back
    /// match the image's signed SHA-256. Before the first write it checks that the image exists,
    /// that zero chunks are consistent, that the target exists and is large enough, and that the
    /// bundle is complete (when its length is known); a failure there leaves the target untouched.
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

    /// [`Self::install_image`] with explicit options.
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
    check_zero_chunks(entry)?;
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

    // --- Stream, verify, write. ---
    let fetched = write_chunks(reader, entry, &file, target, progress)?;
    let written_at = Instant::now();
    file.sync_all()
        .map_err(|e| Error::io("cannot flush (fsync) target", target, e))?;

    // --- Read back. ---
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
        progress(Progress {
            done_bytes: total,
            total_bytes: total,
            fetched_bytes: fetched,
            verified_bytes: n,
        })
    })?;
    if digest != entry.sha256 {
        return Err(Error::ReadBackMismatch {
            image: entry.name.clone(),
            target: target.to_owned(),
            chunk: first_bad_chunk(&file, entry, target)?,
        });
    }
    Ok(InstallReport {
        bytes_written: total,
        bytes_fetched: fetched,
        seconds: started.elapsed().as_secs_f64(),
        verify_seconds: written_at.elapsed().as_secs_f64(),
    })
}

/// A zero chunk is written without reading anything, so its hash must be checked up front.
fn check_zero_chunks(entry: &ImageEntry) -> Result<()> {
    let full = hex::encode(Sha256::digest(vec![0u8; entry.chunk_size as usize]));
    for (index, c) in entry.chunks.iter().enumerate() {
        if !c.is_zero() {
            continue;
        }
        let expected = if c.size == entry.chunk_size {
            full.clone()
        } else {
            hex::encode(Sha256::digest(vec![0u8; c.size as usize]))
        };
        if c.sha256 != expected {
            return Err(Error::ChunkInvalid {
                image: entry.name.clone(),
                index: index as u64,
                offset: entry.chunk_offset(index),
                reason: "stored as all-zero (csize 0) but its sha256 is not that of zeros".into(),
            });
        }
    }
    Ok(())
}

/// Opens an existing block device or regular file for writing, without creating or truncating
/// it, and returns it with its capacity.
fn open_target(target: &Path) -> Result<(File, u64)> {
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

enum Work {
    Data { index: usize, compressed: Vec<u8> },
    Zero { index: usize },
}

enum Ready {
    Data { index: usize, raw: Vec<u8> },
    Zero { index: usize },
}

/// Returns the number of payload bytes fetched.
fn write_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    file: &File,
    target: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    let manifest = reader.manifest();
    let payload_size = manifest.payload_size();
    let base = reader.payload_offset();
    let mut stream = reader
        .source
        .range_reader(base + entry.payload_start(), base + entry.payload_end())?;
    let source_name = reader.source_name();

    let chunk_size = entry.chunk_size as usize;
    // Bounded queues keep a handful of chunks in flight whatever the chunk size (≤ ~16 MiB).
    let depth = (16 * 1024 * 1024 / chunk_size).clamp(1, 4);
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);

    let abort = AtomicBool::new(false);
    let fetched = AtomicU64::new(0);
    let raw_pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let compressed_pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let (work_tx, work_rx) = sync_channel::<Work>(depth);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (ready_tx, ready_rx) = sync_channel::<Ready>(depth);
    let zeros = vec![0u8; chunk_size];
    let total = entry.size;

    thread::scope(|s| -> Result<u64> {
        let (abort, fetched, raw_pool, compressed_pool) =
            (&abort, &fetched, &raw_pool, &compressed_pool);

        // Reader: sequential, so an HTTP source needs a single ranged GET (plus resumes).
        let reader_thread = s.spawn(move || -> Result<()> {
            let image_start = entry.payload_start();
            let mut consumed = 0u64;
            for (index, c) in entry.chunks.iter().enumerate() {
                if abort.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let work = if c.is_zero() {
                    Work::Zero { index }
                } else {
                    let mut buf = pop(compressed_pool).unwrap_or_default();
                    buf.resize(c.csize as usize, 0);
                    let n = read_full(&mut stream, &mut buf).map_err(|e| {
                        abort.store(true, Ordering::Relaxed);
                        match Error::from_io(e) {
                            // The HTTP reader reports absolute offsets; report payload offsets.
                            Ok(Error::Truncated { got, .. }) => Error::Truncated {
                                source_name: source_name.clone(),
                                expected: payload_size,
                                got: got.saturating_sub(base),
                            },
                            Ok(other) => other,
                            Err(e) => Error::SourceRead {
                                source_name: source_name.clone(),
                                offset: base + image_start + consumed,
                                source: e,
                            },
                        }
                    })?;
                    if n < buf.len() {
                        abort.store(true, Ordering::Relaxed);
                        return Err(Error::Truncated {
                            source_name: source_name.clone(),
                            expected: payload_size,
                            got: image_start + consumed + n as u64,
                        });
                    }
                    consumed += c.csize;
                    fetched.fetch_add(c.csize, Ordering::Relaxed);
                    Work::Data {
                        index,
                        compressed: buf,
                    }
                };
                if work_tx.send(work).is_err() {
                    return Ok(()); // consumers stopped; they report why
                }
            }
            Ok(())
        });

        // Workers: decompress and check every chunk before it may be written.
        let mut worker_threads = Vec::with_capacity(workers);
        for _ in 0..workers {
            let work_rx = Arc::clone(&work_rx);
            let ready_tx = ready_tx.clone();
            worker_threads.push(s.spawn(move || -> Result<()> {
                let mut dec = zstd::bulk::Decompressor::new()
                    .map_err(|e| Error::Internal(format!("zstd init: {e}")))?;
                loop {
                    let job = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return Ok(()),
                    };
                    let Ok(job) = job else { return Ok(()) };
                    if abort.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let ready = match job {
                        Work::Zero { index } => Ready::Zero { index },
                        Work::Data { index, compressed } => {
                            let mut raw = pop(raw_pool).unwrap_or_default();
                            let checked =
                                decode_chunk(&mut dec, entry, index, &compressed, &mut raw);
                            push(compressed_pool, compressed);
                            if let Err(e) = checked {
                                abort.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                            Ready::Data { index, raw }
                        }
                    };
                    if ready_tx.send(ready).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(ready_tx);
        drop(work_rx);

        // Writer (this thread, so it can call `progress`).
        let mut done = 0u64;
        let mut written_chunks = 0usize;
        let write_result = (|| -> Result<()> {
            for ready in ready_rx.iter() {
                if abort.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let (index, data): (usize, &[u8]) = match &ready {
                    Ready::Data { index, raw } => (*index, raw),
                    Ready::Zero { index } => (*index, &zeros[..entry.chunks[*index].size as usize]),
                };
                let offset = entry.chunk_offset(index);
                file.write_all_at(data, offset).map_err(|e| Error::Write {
                    target: target.to_owned(),
                    offset,
                    source: e,
                })?;
                done += data.len() as u64;
                written_chunks += 1;
                if let Ready::Data { raw, .. } = ready {
                    push(raw_pool, raw);
                }
                progress(Progress {
                    done_bytes: done,
                    total_bytes: total,
                    fetched_bytes: fetched.load(Ordering::Relaxed),
                    verified_bytes: 0,
                });
            }
            Ok(())
        })();
        if write_result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Unblocks workers (and through them the reader) if we stopped early.
        drop(ready_rx);

        let reader_result = reader_thread
            .join()
            .map_err(|_| Error::Internal("bundle reader thread panicked".into()))?;
        let mut worker_error: Option<Error> = None;
        for w in worker_threads {
            let r = w
                .join()
                .map_err(|_| Error::Internal("chunk worker thread panicked".into()))?;
            if let Err(e) = r {
                // Name the lowest failing chunk when both workers found one.
                let lower = match (&worker_error, &e) {
                    (
                        Some(Error::ChunkInvalid { index: old, .. }),
                        Error::ChunkInvalid { index: new, .. },
                    ) => new < old,
                    (None, _) => true,
                    _ => false,
                };
                if lower {
                    worker_error = Some(e);
                }
            }
        }
        write_result?;
        if let Some(e) = worker_error {
            return Err(e);
        }
        reader_result?;
        if written_chunks != entry.chunks.len() {
            return Err(Error::Internal(format!(
                "pipeline ended after {written_chunks} of {} chunks without an error",
                entry.chunks.len()
            )));
        }
        Ok(fetched.load(Ordering::Relaxed))
    })
}

/// Decompresses chunk `index` into `raw` and checks its length and hash against the manifest.
fn decode_chunk(
    dec: &mut zstd::bulk::Decompressor<'_>,
    entry: &ImageEntry,
    index: usize,
    compressed: &[u8],
    raw: &mut Vec<u8>,
) -> Result<()> {
    let c = &entry.chunks[index];
    let invalid = |reason: String| Error::ChunkInvalid {
        image: entry.name.clone(),
        index: index as u64,
        offset: entry.chunk_offset(index),
        reason,
    };
    raw.clear();
    // The capacity bounds the output: a frame that inflates beyond one chunk is an error, not
    // an allocation.
    raw.reserve_exact(entry.chunk_size as usize);
    dec.decompress_to_buffer(compressed, raw)
        .map_err(|e| invalid(format!("cannot decompress: {e}")))?;
    if raw.len() != c.size as usize {
        return Err(invalid(format!(
            "decompressed to {} bytes, manifest says {}",
            raw.len(),
            c.size
        )));
    }
    let got = hex::encode(Sha256::digest(&raw[..]));
    if got != c.sha256 {
        return Err(invalid(format!(
            "sha256 {got} differs from the manifest's {}",
            c.sha256
        )));
    }
    Ok(())
}

fn pop(pool: &Mutex<Vec<Vec<u8>>>) -> Option<Vec<u8>> {
    pool.lock().ok().and_then(|mut p| p.pop())
}

fn push(pool: &Mutex<Vec<Vec<u8>>>, buf: Vec<u8>) {
    if let Ok(mut p) = pool.lock() {
        p.push(buf);
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// After a whole-image mismatch: find the first chunk whose bytes on the target differ.
fn first_bad_chunk(file: &File, entry: &ImageEntry, target: &Path) -> Result<Option<u64>> {
    let mut buf = vec![0u8; entry.chunk_size as usize];
    for (index, c) in entry.chunks.iter().enumerate() {
        let data = &mut buf[..c.size as usize];
        file.read_exact_at(data, entry.chunk_offset(index))
            .map_err(|e| Error::io("cannot read back target", target, e))?;
        if hex::encode(Sha256::digest(&data[..])) != c.sha256 {
            return Ok(Some(index as u64));
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
        use crate::manifest::Chunk;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slot");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = data
            .chunks(4096)
            .map(|c| Chunk {
                sha256: hex::encode(Sha256::digest(c)),
                size: c.len() as u32,
                offset: 0,
                csize: 1,
            })
            .collect();
        let entry = ImageEntry {
            name: "rootfs".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
            chunk_size: 4096,
            chunks,
        };
        fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(first_bad_chunk(&f, &entry, &p).unwrap(), None);
        let mut bad = data.clone();
        bad[9000] ^= 1;
        fs::write(&p, &bad).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(first_bad_chunk(&f, &entry, &p).unwrap(), Some(2));
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
