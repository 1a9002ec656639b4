//! Streaming an image from a verified bundle into a slot (block device or a file standing for one).
//!
//! The chunks come verified from the pipeline in [`crate::stream`] (a reader thread, worker threads
//! that decompress and hash each chunk against the signed manifest); the calling thread writes
//! them at their offsets. Memory stays bounded by a few chunks; nothing is spooled to disk. After the last chunk the
//! target is flushed, its page cache dropped, and the image read back and hashed whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::ImageEntry;
use crate::reader::{BundleReader, VerifiedBundle};
use crate::stream::{check_zero_chunks, stream_chunks};

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

/// Streams the verified chunks into `file`. Returns the number of payload bytes fetched.
fn write_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    file: &File,
    target: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    let total = entry.size;
    let mut done = 0u64;
    stream_chunks(reader, entry, &mut |chunk| {
        let offset = entry.chunk_offset(chunk.index);
        file.write_all_at(chunk.data, offset)
            .map_err(|e| Error::Write {
                target: target.to_owned(),
                offset,
                source: e,
            })?;
        done += chunk.data.len() as u64;
        progress(Progress {
            done_bytes: done,
            total_bytes: total,
            fetched_bytes: chunk.fetched,
            verified_bytes: 0,
        });
        Ok(())
    })
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
