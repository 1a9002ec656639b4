//! Writing an image's mapped ranges to a target, and reading them back.
//!
//! The ranges come from the image's block map (found next to the image the way `bmaptool`
//! finds it, or given), else from the holes of a raw image, else (a compressed image without a
//! block map) the whole image is written. Only those ranges are written: whatever the target
//! held elsewhere stays. Each range's checksum is checked against the bmap while it is written
//! (a damaged image is caught), and [`verify`] reads the ranges back from the target.

use crate::drives::Target;
use crate::{FlashError, IoContext, Result, human_size};
use otter_image::bmap::{BLOCK_SIZE, Bmap, ChecksumType, data_extents};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const BUF: usize = 4 << 20;
/// Ranges the flasher checksums itself (no bmap) are cut to this size, so a verification error
/// points at a small part of the drive.
const PIECE: u64 = 64 << 20;

/// How far a write or a verification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    /// `None` while the size is unknown (a compressed image without a bmap).
    pub total: Option<u64>,
}

/// Bytes `offset..offset + len` of the image, with their checksum when known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRange {
    pub offset: u64,
    pub len: u64,
    pub checksum: Option<String>,
}

/// What to write: the image, how it is read, and which ranges.
#[derive(Debug, Clone)]
pub struct FlashPlan {
    pub image: PathBuf,
    /// zstd-compressed (`.img.zst`), read as a stream.
    pub compressed: bool,
    /// The block map used, if any.
    pub bmap: Option<PathBuf>,
    /// `None` for a compressed image without a bmap: known once it is decompressed.
    pub image_size: Option<u64>,
    checksum_type: ChecksumType,
    /// Sorted, not overlapping; empty when the whole image is streamed.
    ranges: Vec<ImageRange>,
}

/// What was written, with a checksum for every range: what [`verify`] checks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub target: PathBuf,
    pub image_size: u64,
    /// Bytes written (the mapped part of the image).
    pub bytes: u64,
    pub checksum_type: &'static str,
    pub ranges: Vec<ImageRange>,
    #[serde(skip)]
    cs: ChecksumType,
}

/// The bmap for `image` the way `bmaptool` finds it: `IMAGE.bmap`, then with one extension
/// after another taken off (`x.img.zst` → `x.img.zst.bmap`, `x.img.bmap`, `x.bmap`).
pub fn find_bmap(image: &Path) -> Option<PathBuf> {
    let mut p = image.to_path_buf();
    loop {
        let mut candidate = p.clone().into_os_string();
        candidate.push(".bmap");
        let candidate = PathBuf::from(candidate);
        if candidate.is_file() {
            return Some(candidate);
        }
        p.extension()?;
        p = p.with_extension("");
    }
}

impl FlashPlan {
    /// Plan writing `image` (`.img` or `.img.zst`), with `bmap` or the one found next to it.
    pub fn new(image: &Path, bmap: Option<&Path>) -> Result<FlashPlan> {
        let mut f = File::open(image).ctx(|| format!("opening image {}", image.display()))?;
        let meta = f
            .metadata()
            .ctx(|| format!("reading size of {}", image.display()))?;
        if !meta.is_file() {
            return Err(FlashError::Image(format!(
                "{}: not an image file",
                image.display()
            )));
        }
        let mut magic = [0u8; 4];
        let compressed = f.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC;
        let bmap_path = match bmap {
            Some(p) => Some(p.to_path_buf()),
            None => find_bmap(image),
        };
        let bmap = match &bmap_path {
            Some(p) => Some(Bmap::load(p).map_err(|e| {
                FlashError::Image(format!(
                    "{e} (pass the image's own bmap with --bmap, or flash without one by moving it away)"
                ))
            })?),
            None => None,
        };
        if let Some(b) = &bmap
            && !compressed
            && b.image_size != meta.len()
        {
            return Err(FlashError::Image(format!(
                "bmap {} is for an image of {} bytes, but {} has {} bytes: it belongs to another image (pass the right one with --bmap)",
                bmap_path.as_deref().unwrap_or(Path::new("")).display(),
                b.image_size,
                image.display(),
                meta.len()
            )));
        }
        let (image_size, checksum_type, ranges) = match &bmap {
            Some(b) => {
                let ranges = b
                    .ranges
                    .iter()
                    .map(|r| {
                        let (offset, len) = b.byte_range(r);
                        ImageRange {
                            offset,
                            len,
                            checksum: r.checksum.clone(),
                        }
                    })
                    .filter(|r| r.len > 0)
                    .collect();
                (
                    Some(b.image_size),
                    b.checksum_type.unwrap_or(ChecksumType::Sha256),
                    ranges,
                )
            }
            None if compressed => (None, ChecksumType::Sha256, Vec::new()),
            None => {
                let size = meta.len();
                let extents = data_extents(&f, size)
                    .ctx(|| format!("finding the data in {}", image.display()))?;
                (
                    Some(size),
                    ChecksumType::Sha256,
                    block_ranges(&extents, size),
                )
            }
        };
        Ok(FlashPlan {
            image: image.to_path_buf(),
            compressed,
            bmap: bmap_path,
            image_size,
            checksum_type,
            ranges,
        })
    }

    /// Bytes that will be written (`None`: the whole image, size not known yet).
    pub fn mapped_bytes(&self) -> Option<u64> {
        self.image_size?;
        Some(self.ranges.iter().map(|r| r.len).sum())
    }

    /// Where the ranges come from, for messages.
    pub fn describe(&self) -> String {
        match (&self.bmap, self.image_size) {
            (Some(b), _) => format!("mapped blocks of {}", b.display()),
            (None, Some(_)) => "data blocks of the image, no bmap found".into(),
            (None, None) => "the whole image: compressed, no bmap found".into(),
        }
    }

    /// Write the planned ranges to `target`, then flush them to the medium. A file target is
    /// created or extended to the image size; a drive is opened exclusively (fails while
    /// mounted) and must be large enough. Checks each range against the bmap's checksum.
    pub fn write(&self, target: &Target, progress: &mut dyn FnMut(Progress)) -> Result<Written> {
        let tpath = target.path().to_path_buf();
        refuse_same_file(&tpath, &self.image, "the image itself")?;
        if let Some(b) = &self.bmap {
            refuse_same_file(&tpath, b, "the image's bmap")?;
        }
        let out = open_target(target, self.image_size)?;
        let device_size = match target {
            Target::Device(_) => Some(
                (&out)
                    .seek(SeekFrom::End(0))
                    .ctx(|| format!("finding the size of {}", tpath.display()))?,
            ),
            Target::File(_) => None,
        };
        let input =
            File::open(&self.image).ctx(|| format!("opening image {}", self.image.display()))?;
        let mut reader = if self.compressed {
            Reader::Zstd {
                dec: zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                    1 << 20,
                    input,
                ))
                .ctx(|| format!("starting to decompress {}", self.image.display()))?,
                pos: 0,
            }
        } else {
            Reader::Raw(input)
        };
        let mut buf = vec![0u8; BUF];
        let total = self.mapped_bytes();
        let mut done = 0u64;
        let mut written = Vec::new();
        let write_at = |data: &[u8], at: u64| -> Result<()> {
            out.write_all_at(data, at).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    FlashError::Image(format!(
                        "{} is full at byte {at}: the image is larger than it",
                        tpath.display()
                    ))
                } else {
                    FlashError::Io {
                        context: format!("writing {} at byte {at}", tpath.display()),
                        error: e,
                    }
                }
            })
        };
        if self.image_size.is_some() {
            for r in &self.ranges {
                let mut h = self.checksum_type.hasher();
                let end = r.offset + r.len;
                let mut at = r.offset;
                while at < end {
                    let n = (end - at).min(BUF as u64) as usize;
                    let got = reader
                        .read_at(at, &mut buf[..n])
                        .ctx(|| format!("reading image {} at byte {at}", self.image.display()))?;
                    if got < n {
                        return Err(FlashError::Image(format!(
                            "image {} ends at byte {}, but its bmap maps bytes up to {end}: the bmap belongs to another image, or the image is truncated",
                            self.image.display(),
                            at + got as u64
                        )));
                    }
                    h.update(&buf[..n]);
                    write_at(&buf[..n], at)?;
                    at += n as u64;
                    done += n as u64;
                    progress(Progress { done, total });
                }
                let sum = h.finish_hex();
                if let Some(want) = &r.checksum
                    && !want.eq_ignore_ascii_case(&sum)
                {
                    return Err(FlashError::Image(format!(
                        "image {} does not match its bmap {}: bytes {}..{end} have {} {sum}, the bmap says {want} (a damaged download, or the bmap of another image)",
                        self.image.display(),
                        self.bmap.as_deref().unwrap_or(Path::new("")).display(),
                        r.offset,
                        self.checksum_type.name()
                    )));
                }
                written.push(ImageRange {
                    offset: r.offset,
                    len: r.len,
                    checksum: Some(sum),
                });
            }
        } else {
            // Compressed and no bmap: everything, in pieces checksummed here.
            let mut at = 0u64;
            loop {
                let piece_end = at + PIECE;
                let start = at;
                let mut h = self.checksum_type.hasher();
                while at < piece_end {
                    let n = (piece_end - at).min(BUF as u64) as usize;
                    let got = reader.read_at(at, &mut buf[..n]).ctx(|| {
                        format!("decompressing image {} at byte {at}", self.image.display())
                    })?;
                    if got == 0 {
                        break;
                    }
                    if let Some(size) = device_size
                        && at + got as u64 > size
                    {
                        return Err(FlashError::Image(format!(
                            "the image is larger than {} ({}): {} were written before this was known (a bmap next to the image avoids this)",
                            tpath.display(),
                            human_size(size),
                            human_size(at)
                        )));
                    }
                    h.update(&buf[..got]);
                    write_at(&buf[..got], at)?;
                    at += got as u64;
                    done += got as u64;
                    progress(Progress { done, total });
                    if got < n {
                        break;
                    }
                }
                if at > start {
                    written.push(ImageRange {
                        offset: start,
                        len: at - start,
                        checksum: Some(h.finish_hex()),
                    });
                }
                if at < piece_end {
                    break;
                }
            }
        }
        let image_size = self.image_size.unwrap_or(done);
        if let Target::File(_) = target {
            let len = out
                .metadata()
                .ctx(|| format!("reading size of {}", tpath.display()))?
                .len();
            if len < image_size {
                out.set_len(image_size)
                    .ctx(|| format!("extending {} to {image_size} bytes", tpath.display()))?;
            }
        }
        out.sync_all()
            .ctx(|| format!("flushing {} to the medium", tpath.display()))?;
        if let Target::Device(_) = target {
            // Ask the kernel to re-read the partition table, so the new partitions show up
            // without replugging. Best effort: a failure changes nothing on the drive.
            const BLKRRPART: libc::c_ulong = 0x125F;
            // SAFETY: an ioctl without arguments on a descriptor we own.
            unsafe {
                libc::ioctl(out.as_raw_fd(), BLKRRPART as _);
            }
        }
        Ok(Written {
            target: tpath,
            image_size,
            bytes: done,
            checksum_type: self.checksum_type.name(),
            ranges: written,
            cs: self.checksum_type,
        })
    }
}

/// Merge data extents into whole 4 KiB blocks, clipped to `size`.
fn block_ranges(extents: &[(u64, u64)], size: u64) -> Vec<ImageRange> {
    let mut out: Vec<ImageRange> = Vec::new();
    for &(start, len) in extents {
        let s = start / BLOCK_SIZE * BLOCK_SIZE;
        let e = ((start + len).div_ceil(BLOCK_SIZE) * BLOCK_SIZE).min(size);
        match out.last_mut() {
            Some(prev) if s <= prev.offset + prev.len => {
                prev.len = prev.len.max(e - prev.offset);
            }
            _ => out.push(ImageRange {
                offset: s,
                len: e - s,
                checksum: None,
            }),
        }
    }
    out
}

fn refuse_same_file(target: &Path, other: &Path, what: &str) -> Result<()> {
    if let (Ok(a), Ok(b)) = (std::fs::metadata(target), std::fs::metadata(other))
        && a.dev() == b.dev()
        && a.ino() == b.ino()
    {
        return Err(FlashError::Refused {
            target: target.to_path_buf(),
            reason: format!("it is {what}"),
        });
    }
    Ok(())
}

fn open_target(target: &Target, image_size: Option<u64>) -> Result<File> {
    match target {
        Target::File(p) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .ctx(|| format!("opening {}", p.display()))?;
            if let Some(size) = image_size {
                let len = f
                    .metadata()
                    .ctx(|| format!("reading size of {}", p.display()))?
                    .len();
                if len < size {
                    f.set_len(size)
                        .ctx(|| format!("extending {} to {size} bytes", p.display()))?;
                }
            }
            Ok(f)
        }
        Target::Device(d) => {
            if let Some(size) = image_size
                && size > d.size
            {
                return Err(FlashError::Refused {
                    target: d.path.clone(),
                    reason: format!(
                        "the image ({}) is larger than the drive ({})",
                        human_size(size),
                        human_size(d.size)
                    ),
                });
            }
            // O_EXCL on a block device: the kernel refuses while it is mounted or claimed.
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_EXCL)
                .open(&d.path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EBUSY) => FlashError::Refused {
                        target: d.path.clone(),
                        reason: "the drive is busy (mounted, or open in another program)".into(),
                    },
                    Some(libc::EACCES) | Some(libc::EPERM) => FlashError::Refused {
                        target: d.path.clone(),
                        reason: "permission denied: run as root (sudo otter flash ...)".into(),
                    },
                    _ => FlashError::Io {
                        context: format!("opening {}", d.path.display()),
                        error: e,
                    },
                })
        }
    }
}

/// Read the written ranges back from `target` and compare their checksums; the error names the
/// first range that differs. Cached pages are dropped first, so the data comes from the medium.
pub fn verify(target: &Path, written: &Written, progress: &mut dyn FnMut(Progress)) -> Result<u64> {
    let f = File::open(target).ctx(|| format!("opening {} to verify", target.display()))?;
    // SAFETY: an advice call on a descriptor we own; no memory is passed.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    let mut buf = vec![0u8; BUF];
    let mut done = 0u64;
    let total = Some(written.bytes);
    let count = written.ranges.len();
    for (i, r) in written.ranges.iter().enumerate() {
        let mut h = written.cs.hasher();
        let end = r.offset + r.len;
        let mut at = r.offset;
        while at < end {
            let n = (end - at).min(BUF as u64) as usize;
            let got = read_full_at(&f, &mut buf[..n], at)
                .ctx(|| format!("reading back {} at byte {at}", target.display()))?;
            if got < n {
                return Err(FlashError::Verify {
                    target: target.to_path_buf(),
                    message: format!(
                        "range {} of {count} (bytes {}..{end}) ends early at byte {}: the target is shorter than written",
                        i + 1,
                        r.offset,
                        at + got as u64
                    ),
                });
            }
            h.update(&buf[..n]);
            at += n as u64;
            done += n as u64;
            progress(Progress { done, total });
        }
        let sum = h.finish_hex();
        let want = r.checksum.as_deref().unwrap_or_default();
        if !want.eq_ignore_ascii_case(&sum) {
            return Err(FlashError::Verify {
                target: target.to_path_buf(),
                message: format!(
                    "range {} of {count} (bytes {}..{end}, blocks {}-{}) reads back with {} {sum}, written was {want}: the drive did not keep what was written (a failing or fake-capacity card?)",
                    i + 1,
                    r.offset,
                    r.offset / BLOCK_SIZE,
                    (end - 1) / BLOCK_SIZE,
                    written.checksum_type
                ),
            });
        }
    }
    Ok(done)
}

fn read_full_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The image, read at increasing offsets: a raw file anywhere, a zstd stream forward only.
enum Reader {
    Raw(File),
    Zstd {
        dec: zstd::stream::read::Decoder<'static, BufReader<File>>,
        pos: u64,
    },
}

impl Reader {
    /// Fill `buf` from `offset`; fewer bytes only at the end of the image.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Raw(f) => read_full_at(f, buf, offset),
            Reader::Zstd { dec, pos } => {
                if offset < *pos {
                    return Err(std::io::Error::other(format!(
                        "compressed image read backwards (byte {offset} after {pos})"
                    )));
                }
                let skip = offset - *pos;
                let skipped = std::io::copy(&mut dec.by_ref().take(skip), &mut std::io::sink())?;
                *pos += skipped;
                if skipped < skip {
                    return Ok(0);
                }
                let mut n = 0;
                while n < buf.len() {
                    match dec.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                *pos += n as u64;
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_round_merge_and_clip() {
        let r = block_ranges(
            &[(100, 10), (4096, 4096), (3 * 4096, 1), (5 * 4096, 50)],
            5 * 4096 + 50,
        );
        let spans: Vec<(u64, u64)> = r.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(spans, vec![(0, 8192), (3 * 4096, 4096), (5 * 4096, 50)]);
    }

    #[test]
    fn finds_bmaps_like_bmaptool() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a-1.0-pc.img.zst");
        assert_eq!(find_bmap(&img), None);
        std::fs::write(d.path().join("a-1.0-pc.bmap"), "").unwrap();
        assert_eq!(find_bmap(&img), Some(d.path().join("a-1.0-pc.bmap")));
        std::fs::write(d.path().join("a-1.0-pc.img.bmap"), "").unwrap();
        assert_eq!(find_bmap(&img), Some(d.path().join("a-1.0-pc.img.bmap")));
        assert_eq!(
            find_bmap(&d.path().join("a-1.0-pc.img")),
            Some(d.path().join("a-1.0-pc.img.bmap"))
        );
    }
}
