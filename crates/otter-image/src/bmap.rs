//! Block maps (`.bmap`): which blocks of a sparse disk image hold data, in the XML format of
//! `bmaptool` (format 2.0), so `otter flash` and `bmaptool copy` write only those blocks.
//!
//! A block is *mapped* when the image file has data there (`SEEK_DATA`/`SEEK_HOLE`), exactly as
//! `bmaptool create` decides: holes are blocks the image's producer never wrote. All-zero blocks
//! that were written are kept mapped on purpose: a FAT table, a directory cluster or a partition
//! table entry may be all zeros and still matter, and the target of a flash is not zeroed. The
//! disk assembly ([`crate::disk::assemble`]) keeps the holes of its partition images for the same
//! reason.
//!
//! Written by hand because no crate writes bmaptool's format; XML is read with `roxmltree`.

use crate::{ImageError, IoContext, Result};
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Block size of the bmaps we write (the page and ext4 block size; `bmaptool` uses the
/// filesystem block size of the image file, usually also 4 KiB).
pub const BLOCK_SIZE: u64 = 4096;

/// The bmap format version we write.
pub const FORMAT_VERSION: &str = "2.0";

/// The hash used for the checksums of a bmap file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumType {
    /// Format 1.3 (`sha1=` attributes, `BmapFileSHA1`).
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumType {
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha512 => "sha512",
        }
    }

    /// Length of the checksum in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Sha1 => 40,
            ChecksumType::Sha256 => 64,
            ChecksumType::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            ChecksumType::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            ChecksumType::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            ChecksumType::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn parse(s: &str) -> Option<ChecksumType> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Some(ChecksumType::Sha1),
            "sha256" => Some(ChecksumType::Sha256),
            "sha512" => Some(ChecksumType::Sha512),
            _ => None,
        }
    }
}

/// A running checksum of one of the [`ChecksumType`]s.
#[derive(Clone)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The checksum as lowercase hex (as bmap files spell it).
    pub fn finish_hex(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Mapped blocks `first..=last` and, when the bmap has one, their checksum (of the image's
/// bytes of these blocks; the last block of the image may be partial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmapRange {
    pub first: u64,
    pub last: u64,
    pub checksum: Option<String>,
}

/// A parsed or generated block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// `None` for bmaps without checksums (formats before 1.3).
    pub checksum_type: Option<ChecksumType>,
    /// Sorted, not overlapping.
    pub ranges: Vec<BmapRange>,
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes of the image that are mapped (the last block may be partial).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.byte_range(r).1).sum()
    }

    /// `(offset, length)` in bytes of a range, clipped to the image size.
    pub fn byte_range(&self, r: &BmapRange) -> (u64, u64) {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        (start, end.saturating_sub(start))
    }

    /// The block map of a sparse image file: its data extents, rounded out to whole blocks,
    /// with a SHA-256 checksum of each range.
    pub fn create(image: &Path) -> Result<Bmap> {
        let mut file = File::open(image).ctx(|| format!("opening image {}", image.display()))?;
        let size = file
            .metadata()
            .ctx(|| format!("reading size of {}", image.display()))?
            .len();
        if size == 0 {
            return Err(ImageError::Other(format!(
                "{}: cannot make a block map of an empty image",
                image.display()
            )));
        }
        let extents =
            data_extents(&file, size).ctx(|| format!("finding data in {}", image.display()))?;
        let mut ranges: Vec<BmapRange> = Vec::new();
        for (start, len) in extents {
            let first = start / BLOCK_SIZE;
            let last = (start + len).div_ceil(BLOCK_SIZE) - 1;
            match ranges.last_mut() {
                Some(prev) if first <= prev.last + 1 => prev.last = prev.last.max(last),
                _ => ranges.push(BmapRange {
                    first,
                    last,
                    checksum: None,
                }),
            }
        }
        let mut bmap = Bmap {
            image_size: size,
            block_size: BLOCK_SIZE,
            checksum_type: Some(ChecksumType::Sha256),
            ranges,
        };
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..bmap.ranges.len() {
            let (offset, len) = bmap.byte_range(&bmap.ranges[i]);
            let mut h = ChecksumType::Sha256.hasher();
            file.seek(SeekFrom::Start(offset))
                .ctx(|| format!("seeking in {}", image.display()))?;
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..n])
                    .ctx(|| format!("reading {} at {}", image.display(), offset + len - left))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            bmap.ranges[i].checksum = Some(h.finish_hex());
        }
        Ok(bmap)
    }

    /// The bmap file text in bmaptool's format 2.0 (needs checksums of one type), with its
    /// `BmapFileChecksum` computed as bmaptool does: the checksum of the whole file with the
    /// checksum's own digits set to ASCII `0`.
    pub fn to_xml(&self) -> Result<String> {
        let cs = self.checksum_type.ok_or_else(|| {
            ImageError::Other("a bmap of format 2.0 needs range checksums".into())
        })?;
        if cs == ChecksumType::Sha1 {
            return Err(ImageError::Other(
                "bmap format 2.0 is written with sha256 or sha512 checksums, not sha1".into(),
            ));
        }
        let mapped = self.mapped_blocks();
        let blocks = self.blocks_count();
        let percent = if blocks == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / blocks as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str(
            "<!-- The block map of a disk image made by otter build: the blocks that hold data.\n     \
             Only these have to be written to a drive (otter flash, or bmaptool copy).\n     \
             Format: bmaptool's bmap format version 2.0. -->\n\n",
        );
        x.push_str(&format!("<bmap version=\"{FORMAT_VERSION}\">\n"));
        x.push_str(&format!(
            "    <!-- Image size in bytes: {} -->\n",
            human(self.image_size)
        ));
        x.push_str(&format!(
            "    <ImageSize> {} </ImageSize>\n\n",
            self.image_size
        ));
        x.push_str("    <!-- Size of a block in bytes -->\n");
        x.push_str(&format!(
            "    <BlockSize> {} </BlockSize>\n\n",
            self.block_size
        ));
        x.push_str("    <!-- Count of blocks in the image file -->\n");
        x.push_str(&format!("    <BlocksCount> {blocks} </BlocksCount>\n\n"));
        x.push_str(&format!(
            "    <!-- Count of mapped blocks: {} or {percent:.1}% -->\n",
            human(mapped * self.block_size)
        ));
        x.push_str(&format!(
            "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n"
        ));
        x.push_str("    <!-- Type of checksum used in this file -->\n");
        x.push_str(&format!(
            "    <ChecksumType> {} </ChecksumType>\n\n",
            cs.name()
        ));
        x.push_str(
            "    <!-- The checksum of this bmap file. When it is calculated, the value of\n         \
             the checksum has be zero (all ASCII \"0\" symbols).  -->\n",
        );
        x.push_str("    <BmapFileChecksum> ");
        let checksum_at = x.len();
        x.push_str(&"0".repeat(cs.hex_len()));
        x.push_str(" </BmapFileChecksum>\n\n");
        x.push_str(
            "    <!-- The block map: ranges of mapped blocks; 'chksum' is the checksum of the\n         \
             image's bytes in the range. -->\n",
        );
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let sum = r.checksum.as_deref().ok_or_else(|| {
                ImageError::Other(format!(
                    "bmap range {}-{} has no checksum; every range needs one in format 2.0",
                    r.first, r.last
                ))
            })?;
            if r.first == r.last {
                x.push_str(&format!(
                    "        <Range chksum=\"{sum}\"> {} </Range>\n",
                    r.first
                ));
            } else {
                x.push_str(&format!(
                    "        <Range chksum=\"{sum}\"> {}-{} </Range>\n",
                    r.first, r.last
                ));
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let mut h = cs.hasher();
        h.update(x.as_bytes());
        let sum = h.finish_hex();
        x.replace_range(checksum_at..checksum_at + sum.len(), &sum);
        Ok(x)
    }

    /// Write the bmap file (via a temp file renamed into place: never a half-written bmap).
    pub fn write(&self, path: &Path) -> Result<()> {
        let xml = self.to_xml()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, xml).ctx(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).ctx(|| format!("renaming to {}", path.display()))
    }

    /// Read and check a bmap file (ours or `bmaptool create`'s, formats 1.x and 2.x).
    pub fn load(path: &Path) -> Result<Bmap> {
        let text =
            std::fs::read_to_string(path).ctx(|| format!("reading bmap {}", path.display()))?;
        Bmap::parse(&text).map_err(|e| ImageError::Other(format!("bmap {}: {e}", path.display())))
    }

    /// Parse bmap XML and check it: version, sizes and counts agree, ranges inside the image
    /// and not overlapping, and the file checksum when there is one.
    pub fn parse(text: &str) -> std::result::Result<Bmap, String> {
        let doc = roxmltree::Document::parse(text).map_err(|e| format!("not valid XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            ));
        }
        let version = root
            .attribute("version")
            .ok_or("<bmap> has no version attribute")?;
        let (major, minor) = version
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("bad version {version:?}"))?;
        if major > 2 {
            return Err(format!(
                "format version {version} is newer than this otter understands (up to 2.x)"
            ));
        }
        let child = |name: &str| root.children().find(|n| n.has_tag_name(name));
        let number = |name: &str| -> std::result::Result<u64, String> {
            let n = child(name).ok_or_else(|| format!("no <{name}>"))?;
            let t = n.text().unwrap_or("").trim();
            t.parse::<u64>()
                .map_err(|_| format!("<{name}> is {t:?}, not a number"))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks = number("BlocksCount")?;
        let mapped = number("MappedBlocksCount")?;
        if block_size == 0 {
            return Err("<BlockSize> is 0".into());
        }
        if blocks != image_size.div_ceil(block_size) {
            return Err(format!(
                "<BlocksCount> {blocks} does not match <ImageSize> {image_size} in blocks of {block_size}"
            ));
        }
        // Format 2.0 (and its twin 1.4) name the checksum type; 1.3 used SHA-1; older had none.
        let (checksum_type, range_attr, file_tag) = if major >= 2 || (major == 1 && minor == 4) {
            let t = child("ChecksumType")
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or("no <ChecksumType>")?;
            let cs = ChecksumType::parse(t)
                .ok_or_else(|| format!("checksum type {t:?} is not supported (sha256, sha512)"))?;
            (Some(cs), "chksum", "BmapFileChecksum")
        } else if major == 1 && minor == 3 {
            (Some(ChecksumType::Sha1), "sha1", "BmapFileSHA1")
        } else {
            (None, "", "")
        };
        if let Some(cs) = checksum_type
            && let Some(sum) = child(file_tag).and_then(|n| n.text()).map(str::trim)
        {
            check_file_checksum(text, sum, cs)?;
        }
        let map = child("BlockMap").ok_or("no <BlockMap>")?;
        let mut ranges = Vec::new();
        for r in map.children().filter(|n| n.has_tag_name("Range")) {
            let t = r.text().unwrap_or("").trim();
            let (first, last) = match t.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u64>(), b.trim().parse::<u64>()),
                None => (t.parse::<u64>(), t.parse::<u64>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                return Err(format!("bad range {t:?}"));
            };
            if first > last {
                return Err(format!("bad range {t:?}: first block after last"));
            }
            if last >= blocks {
                return Err(format!(
                    "range {t:?} goes past the end of the image ({blocks} blocks)"
                ));
            }
            let checksum = match checksum_type {
                Some(cs) => match r.attribute(range_attr) {
                    Some(s) => {
                        let s = s.trim().to_ascii_lowercase();
                        if s.len() != cs.hex_len() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(format!("range {t:?}: bad {} checksum {s:?}", cs.name()));
                        }
                        Some(s)
                    }
                    None => None,
                },
                None => None,
            };
            ranges.push(BmapRange {
                first,
                last,
                checksum,
            });
        }
        ranges.sort_by_key(|r| r.first);
        for w in ranges.windows(2) {
            if w[1].first <= w[0].last {
                return Err(format!(
                    "ranges {}-{} and {}-{} overlap",
                    w[0].first, w[0].last, w[1].first, w[1].last
                ));
            }
        }
        let bmap = Bmap {
            image_size,
            block_size,
            checksum_type,
            ranges,
        };
        if bmap.mapped_blocks() != mapped {
            return Err(format!(
                "<MappedBlocksCount> is {mapped} but the ranges hold {} blocks",
                bmap.mapped_blocks()
            ));
        }
        Ok(bmap)
    }
}

/// bmaptool's rule: the checksum of the file with the first occurrence of the checksum
/// replaced by ASCII zeros.
fn check_file_checksum(text: &str, sum: &str, cs: ChecksumType) -> std::result::Result<(), String> {
    if sum.len() != cs.hex_len() {
        return Err(format!("bad file checksum {sum:?}"));
    }
    let at = text
        .find(sum)
        .ok_or("file checksum not found in the file")?;
    let mut h = cs.hasher();
    h.update(&text.as_bytes()[..at]);
    h.update("0".repeat(sum.len()).as_bytes());
    h.update(&text.as_bytes()[at + sum.len()..]);
    let got = h.finish_hex();
    if !got.eq_ignore_ascii_case(sum) {
        return Err(format!(
            "the file's checksum is {got}, but it says {sum}: the bmap was changed or damaged"
        ));
    }
    Ok(())
}

/// `(offset, length)` of the data extents of `file` (of `size` bytes), from `SEEK_DATA` and
/// `SEEK_HOLE`; the whole file when the filesystem cannot tell.
pub fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a file descriptor we own (borrowed from `file`), no memory involved.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // No data after `pos`.
                Some(libc::ENXIO) => break,
                // The filesystem does not know holes: everything is data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if out.is_empty() && pos == 0 => {
                    return Ok(vec![(0, size)]);
                }
                _ => return Err(e),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(size);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// A sparse file: data at the given 4 KiB blocks (filled with `fill`), holes elsewhere.
    fn sparse(path: &Path, size: u64, blocks: &[(u64, u8)]) {
        let f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        for &(b, fill) in blocks {
            let len = BLOCK_SIZE.min(size - b * BLOCK_SIZE) as usize;
            f.write_all_at(&vec![fill; len], b * BLOCK_SIZE).unwrap();
        }
        f.sync_all().unwrap();
    }

    fn holes_supported(dir: &Path) -> bool {
        let p = dir.join("probe");
        sparse(&p, 64 * BLOCK_SIZE, &[(10, 1)]);
        let f = File::open(&p).unwrap();
        data_extents(&f, 64 * BLOCK_SIZE).unwrap() != vec![(0, 64 * BLOCK_SIZE)]
    }

    #[test]
    fn creates_ranges_from_holes_with_checksums() {
        let d = tempfile::tempdir().unwrap();
        if !holes_supported(d.path()) {
            eprintln!("skipped: the filesystem of the temp dir has no SEEK_HOLE");
            return;
        }
        let img = d.path().join("a.img");
        // 100 blocks and a partial one; explicitly written zeros at block 4 stay mapped.
        let size = 100 * BLOCK_SIZE + 100;
        sparse(
            &img,
            size,
            &[(0, 1), (1, 2), (4, 0), (5, 3), (50, 4), (100, 5)],
        );
        let b = Bmap::create(&img).unwrap();
        let spans: Vec<(u64, u64)> = b.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, vec![(0, 1), (4, 5), (50, 50), (100, 100)]);
        assert_eq!(b.blocks_count(), 101);
        assert_eq!(b.mapped_blocks(), 6);
        assert_eq!(b.mapped_bytes(), 5 * BLOCK_SIZE + 100);
        let bytes = std::fs::read(&img).unwrap();
        for r in &b.ranges {
            let (o, l) = b.byte_range(r);
            let want = hex::encode(sha2::Sha256::digest(&bytes[o as usize..(o + l) as usize]));
            assert_eq!(r.checksum.as_deref(), Some(want.as_str()));
        }
    }

    #[test]
    fn xml_round_trip_and_file_checksum() {
        let b = Bmap {
            image_size: 10 * 4096 + 1,
            block_size: 4096,
            checksum_type: Some(ChecksumType::Sha256),
            ranges: vec![
                BmapRange {
                    first: 0,
                    last: 2,
                    checksum: Some("ab".repeat(32)),
                },
                BmapRange {
                    first: 10,
                    last: 10,
                    checksum: Some("cd".repeat(32)),
                },
            ],
        };
        let xml = b.to_xml().unwrap();
        assert!(xml.contains("<Range chksum=\"cdcd"), "{xml}");
        assert!(xml.contains("> 10 </Range>"), "{xml}");
        let back = Bmap::parse(&xml).unwrap();
        assert_eq!(back, b);
        // The file checksum is what bmaptool computes: sha256 with its own digits zeroed.
        let start = xml.find("<BmapFileChecksum> ").unwrap() + "<BmapFileChecksum> ".len();
        let sum = &xml[start..start + 64];
        let zeroed = xml.replacen(sum, &"0".repeat(64), 1);
        assert_eq!(hex::encode(sha2::Sha256::digest(zeroed.as_bytes())), sum);
        // Any change is caught.
        let tampered = xml.replacen("> 10 </Range>", "> 9 </Range>", 1);
        let e = Bmap::parse(&tampered).unwrap_err();
        assert!(e.contains("changed or damaged"), "{e}");
    }

    #[test]
    fn parses_bmaptool_files_and_refuses_bad_ones() {
        // As bmaptool 3.6 writes it (comments trimmed), including its file checksum.
        let mut t = String::from(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> 8193 </ImageSize>\n    \
             <BlockSize> 4096 </BlockSize>\n    <BlocksCount> 3 </BlocksCount>\n    \
             <MappedBlocksCount> 2      </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    \
             <BmapFileChecksum> ",
        );
        let at = t.len();
        t.push_str(&"0".repeat(64));
        t.push_str(" </BmapFileChecksum>\n    <BlockMap>\n        <Range chksum=\"");
        t.push_str(&"1".repeat(64));
        t.push_str("\"> 0 </Range>\n        <Range chksum=\"");
        t.push_str(&"2".repeat(64));
        t.push_str("\"> 2 </Range>\n    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(sha2::Sha256::digest(t.as_bytes()));
        t.replace_range(at..at + 64, &sum);
        let b = Bmap::parse(&t).unwrap();
        assert_eq!(b.image_size, 8193);
        assert_eq!(b.mapped_bytes(), 4096 + 1);
        assert_eq!(b.byte_range(&b.ranges[1]), (8192, 1));

        // Version 1.0 without checksums.
        let old = "<bmap version=\"1.0\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>\
                   <BlocksCount>2</BlocksCount><MappedBlocksCount>1</MappedBlocksCount>\
                   <BlockMap><Range>1</Range></BlockMap></bmap>";
        let b = Bmap::parse(old).unwrap();
        assert_eq!(b.checksum_type, None);
        assert_eq!(b.ranges[0].checksum, None);

        for (bad, says) in [
            (
                old.replace("<BlocksCount>2", "<BlocksCount>3"),
                "BlocksCount",
            ),
            (old.replace("<Range>1<", "<Range>2<"), "past the end"),
            (
                old.replace("<MappedBlocksCount>1", "<MappedBlocksCount>2"),
                "MappedBlocksCount",
            ),
            (
                old.replace("<Range>1</Range>", "<Range>0-1</Range><Range>1</Range>")
                    .replace("<MappedBlocksCount>1", "<MappedBlocksCount>3"),
                "overlap",
            ),
            (old.replace("version=\"1.0\"", "version=\"3.0\""), "newer"),
            (old.replace("</bmap>", ""), "XML"),
        ] {
            let e = Bmap::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{e} should mention {says}");
        }
    }

    #[test]
    fn write_is_atomic_and_load_reads_it() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        let mut f = File::create(&img).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        drop(f);
        let b = Bmap::create(&img).unwrap();
        let path = d.path().join("x.bmap");
        b.write(&path).unwrap();
        assert!(!d.path().join("x.bmap.partial").exists());
        assert_eq!(Bmap::load(&path).unwrap(), b);
        let e = Bmap::load(&d.path().join("nope.bmap")).unwrap_err();
        assert!(e.to_string().contains("nope.bmap"), "{e}");
    }

    #[test]
    fn empty_image_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("e.img");
        File::create(&img).unwrap();
        let e = Bmap::create(&img).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
