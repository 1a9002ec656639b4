//! The manifest: JSON describing what a bundle contains. It is the signed part of a bundle; the
//! payload is trusted only through the hashes listed here: each image's whole SHA-256 and the
//! SHA-256 of its block index, which holds a hash of every 4 KiB block.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::index::{BLOCK_SIZE, HASH_LEN};
use crate::patch::PatchSet;

/// Largest accepted chunk size; bounds the memory an install needs per in-flight chunk.
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// Chunks are whole numbers of blocks, so every write to a block device is aligned to its blocks.
pub const CHUNK_ALIGN: u32 = BLOCK_SIZE;
/// Largest block index: readers hold an image's index in memory. 1 GiB of index is a 256 GiB
/// image, far beyond any slot.
pub const MAX_INDEX_SIZE: u64 = 1 << 30;
/// More images than this in one bundle is surely a mistake (an A/B slot holds one or two).
pub const MAX_IMAGES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bundle format version, equal to the one in the binary header.
    pub format: u32,
    /// Board/product string; a device installs only bundles whose `compatible` equals its own.
    pub compatible: String,
    /// Release version (semver).
    pub version: String,
    /// Creation time, unix seconds (SOURCE_DATE_EPOCH when set, for reproducible bundles).
    pub created: u64,
    pub images: Vec<ImageEntry>,
    /// Free-form extra information (e.g. build id, git commit). Signed like the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Patches against named older images ([`crate::patch`]); optional, so bundles without them
    /// are byte-identical to before and older readers ignore the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchSet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Image name, e.g. "rootfs".
    pub name: String,
    /// Raw image size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole raw image.
    pub sha256: String,
    /// Granularity of the block index: always 4096.
    pub block_size: u32,
    /// Raw size of every chunk but the last: a multiple of `block_size`.
    pub chunk_size: u32,
    /// The block index section of this image (see [`crate::BlockIndex`]).
    pub index: IndexRef,
    /// Payload offset of this image's first chunk frame.
    pub chunks_offset: u64,
    /// Compressed length of each chunk, in image order; 0 means an all-zero chunk that has no
    /// payload bytes. Chunk frames are packed, so chunk `i` starts at `chunks_offset` plus the
    /// sum of the lengths before it.
    pub chunks: Vec<u64>,
}

/// Where an image's block index lies in the payload, and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// Payload offset of the index's zstd frame.
    pub offset: u64,
    /// Compressed length of the frame.
    pub csize: u64,
    /// Raw length: 16 bytes per block.
    pub size: u64,
    /// Lowercase hex SHA-256 of the raw index.
    pub sha256: String,
}

impl Manifest {
    pub fn image(&self, name: &str) -> Option<&ImageEntry> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Total payload length in bytes (block indexes and stored chunks of all images).
    pub fn payload_size(&self) -> u64 {
        self.images
            .iter()
            .map(|i| i.index.csize + i.chunk_bytes())
            .sum()
    }

    /// Parses and checks the manifest's internal consistency. Does not establish trust.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// Checks everything install relies on, so install never trusts a field it did not check:
    /// chunk count and index length follow from the image size, the block indexes are packed
    /// at the start of the payload in manifest order, the chunk frames are packed after them
    /// image by image (so each image's chunks are one contiguous range), and compressed
    /// lengths are bounded (this bounds memory).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT_VERSION {
            return Err(format!(
                "manifest format {} differs from {FORMAT_VERSION}",
                self.format
            ));
        }
        check_compatible(&self.compatible).map_err(|e| e.to_string())?;
        parse_version(&self.version).map_err(|e| e.to_string())?;
        if self.images.is_empty() {
            return Err("manifest lists no images".into());
        }
        if self.images.len() > MAX_IMAGES {
            return Err(format!(
                "manifest lists {} images, at most {MAX_IMAGES} are allowed",
                self.images.len()
            ));
        }
        let mut names = HashSet::new();
        let mut index_offset = 0u64;
        for img in &self.images {
            check_image_name(&img.name).map_err(|e| e.to_string())?;
            if !names.insert(img.name.as_str()) {
                return Err(format!("image name {:?} appears twice", img.name));
            }
            index_offset = img
                .check_index(index_offset)
                .map_err(|e| format!("image {:?}: {e}", img.name))?;
        }
        let mut chunk_offset = index_offset;
        for img in &self.images {
            chunk_offset = img
                .check_chunks(chunk_offset)
                .map_err(|e| format!("image {:?}: {e}", img.name))?;
        }
        if self.patches.len() > crate::patch::MAX_PATCH_SETS {
            return Err(format!(
                "{} patch sets, at most {} are allowed",
                self.patches.len(),
                crate::patch::MAX_PATCH_SETS
            ));
        }
        let mut data_names = HashSet::new();
        for (k, p) in self.patches.iter().enumerate() {
            if !data_names.insert(p.data.as_str()) {
                return Err(format!("patch set {k}: data image {:?} used twice", p.data));
            }
            p.check(self).map_err(|e| format!("patch set {k}: {e}"))?;
        }
        Ok(())
    }
}

impl ImageEntry {
    /// Number of index blocks (the last may be partial).
    pub fn n_blocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size.max(1)))
    }

    /// Blocks per chunk.
    pub fn chunk_blocks(&self) -> u64 {
        u64::from(self.chunk_size / self.block_size.max(1))
    }

    /// Bytes of chunk frames of this image in the payload (the index not included).
    pub fn chunk_bytes(&self) -> u64 {
        self.chunks.iter().sum()
    }

    /// Payload bytes of this image: its index and its chunks.
    pub fn stored_bytes(&self) -> u64 {
        self.index.csize + self.chunk_bytes()
    }

    /// One past the last payload byte of this image's chunks.
    pub fn chunks_end(&self) -> u64 {
        self.chunks_offset + self.chunk_bytes()
    }

    pub fn zero_chunks(&self) -> usize {
        self.chunks.iter().filter(|&&c| c == 0).count()
    }

    /// Byte offset of chunk `index` in the raw image (and in the target).
    pub fn chunk_offset(&self, index: usize) -> u64 {
        index as u64 * u64::from(self.chunk_size)
    }

    /// Raw length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> usize {
        (self.size - self.chunk_offset(index)).min(u64::from(self.chunk_size)) as usize
    }

    /// Payload offset of every chunk's frame, and the end, in one pass: `n_chunks + 1` values.
    pub fn chunk_payload_offsets(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        let mut o = self.chunks_offset;
        out.push(o);
        for c in &self.chunks {
            o += c;
            out.push(o);
        }
        out
    }

    /// Checks size, block and chunk geometry and the index reference; returns the payload
    /// offset just after this image's index.
    fn check_index(&self, offset: u64) -> std::result::Result<u64, String> {
        if self.size == 0 {
            return Err("size is 0".into());
        }
        check_hex_digest(&self.sha256).map_err(|e| format!("sha256: {e}"))?;
        if self.block_size != BLOCK_SIZE {
            return Err(format!(
                "block_size {} is not {BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.chunk_size < CHUNK_ALIGN
            || self.chunk_size > MAX_CHUNK_SIZE
            || !self.chunk_size.is_multiple_of(CHUNK_ALIGN)
        {
            return Err(format!(
                "chunk_size {} must be a multiple of {CHUNK_ALIGN} between {CHUNK_ALIGN} and {MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        let expect_index = self
            .n_blocks()
            .checked_mul(HASH_LEN as u64)
            .ok_or("image size overflows")?;
        let ix = &self.index;
        if expect_index > MAX_INDEX_SIZE {
            return Err(format!(
                "size {} is beyond the largest image this format takes ({} GiB)",
                self.size,
                (MAX_INDEX_SIZE / HASH_LEN as u64 * u64::from(BLOCK_SIZE)) >> 30
            ));
        }
        if ix.size != expect_index {
            return Err(format!(
                "index size {} but a {} byte image has {} blocks of {HASH_LEN} bytes = {expect_index}",
                ix.size,
                self.size,
                self.n_blocks()
            ));
        }
        check_hex_digest(&ix.sha256).map_err(|e| format!("index sha256: {e}"))?;
        if ix.offset != offset {
            return Err(format!(
                "index payload offset {} but indexes must be packed at the payload start, expected {offset}",
                ix.offset
            ));
        }
        let bound = zstd::zstd_safe::compress_bound(ix.size as usize) as u64;
        if ix.csize == 0 || ix.csize > bound {
            return Err(format!(
                "index compressed size {} is outside 1..={bound}",
                ix.csize
            ));
        }
        offset
            .checked_add(ix.csize)
            .ok_or_else(|| "index payload offset overflows".into())
    }

    /// Checks the chunk list; returns the payload offset just after this image's chunks.
    fn check_chunks(&self, offset: u64) -> std::result::Result<u64, String> {
        let cs = u64::from(self.chunk_size);
        let expected_chunks = self.size.div_ceil(cs);
        if self.chunks.len() as u64 != expected_chunks {
            return Err(format!(
                "{} chunks listed, a {} byte image in {cs} byte chunks has {expected_chunks}",
                self.chunks.len(),
                self.size
            ));
        }
        if self.chunks_offset != offset {
            return Err(format!(
                "chunks start at payload offset {} but chunks must be packed after the indexes and the previous image, expected {offset}",
                self.chunks_offset
            ));
        }
        let max_csize = zstd::zstd_safe::compress_bound(self.chunk_size as usize) as u64;
        let mut end = offset;
        for (i, &c) in self.chunks.iter().enumerate() {
            if c > max_csize {
                return Err(format!(
                    "chunk {i}: compressed size {c} exceeds the zstd bound {max_csize}"
                ));
            }
            end = end
                .checked_add(c)
                .ok_or_else(|| format!("chunk {i}: payload offset overflows"))?;
        }
        Ok(end)
    }
}

pub(crate) fn check_hex_digest(s: &str) -> std::result::Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not 64 lowercase hex digits"))
    }
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// `compatible` must be 1–128 characters of `[A-Za-z0-9._-]`.
pub fn check_compatible(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(is_name_char) {
        return Err(Error::InvalidName {
            what: "compatible",
            value: s.to_owned(),
            reason: "must be 1-128 characters of A-Z a-z 0-9 . _ - (e.g. \"acme-gateway-x86_64\")",
        });
    }
    Ok(())
}

/// Image names must be 1–64 characters of `[A-Za-z0-9._-]`.
pub fn check_image_name(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(is_name_char) {
        return Err(Error::InvalidName {
            what: "image name",
            value: s.to_owned(),
            reason: "must be 1-64 characters of A-Z a-z 0-9 . _ - (e.g. \"rootfs\")",
        });
    }
    Ok(())
}

/// Parses a release version as semver.
pub fn parse_version(s: &str) -> Result<semver::Version> {
    semver::Version::parse(s).map_err(|e| Error::InvalidVersion {
        value: s.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let h = "ab".repeat(32);
        Manifest {
            format: FORMAT_VERSION,
            compatible: "board-1".into(),
            version: "1.2.3".into(),
            created: 0,
            images: vec![ImageEntry {
                name: "rootfs".into(),
                size: 10000,
                sha256: h.clone(),
                block_size: 4096,
                chunk_size: 4096,
                index: IndexRef {
                    offset: 0,
                    csize: 20,
                    size: 48,
                    sha256: h.clone(),
                },
                chunks_offset: 20,
                chunks: vec![100, 0, 50],
            }],
            metadata: BTreeMap::new(),
            patches: Vec::new(),
        }
    }

    #[test]
    fn valid_sample_roundtrips() {
        let m = sample();
        m.check().unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert_eq!(m.payload_size(), 170);
        assert_eq!(m.images[0].chunks_end(), 170);
        assert_eq!(m.images[0].zero_chunks(), 1);
        assert_eq!(m.images[0].chunk_payload_offsets(), vec![20, 120, 120, 170]);
        assert_eq!(m.images[0].chunk_len(2), 1808);
        // metadata is optional on input and omitted when empty
        assert!(!String::from_utf8(json).unwrap().contains("metadata"));
    }

    #[test]
    fn inconsistencies_are_rejected() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("format", Box::new(|m| m.format = 1)),
            ("compatible", Box::new(|m| m.compatible = "a b".into())),
            ("version", Box::new(|m| m.version = "1.2".into())),
            ("no images", Box::new(|m| m.images.clear())),
            ("image size", Box::new(|m| m.images[0].size = 20000)),
            (
                "huge image",
                Box::new(|m| {
                    let img = &mut m.images[0];
                    img.size = 1 << 50;
                    img.index.size = (1u64 << 50) / 4096 * 16;
                }),
            ),
            (
                "missing chunk",
                Box::new(|m| {
                    m.images[0].chunks.pop();
                }),
            ),
            ("chunks gap", Box::new(|m| m.images[0].chunks_offset = 21)),
            ("index offset", Box::new(|m| m.images[0].index.offset = 1)),
            ("index size", Box::new(|m| m.images[0].index.size = 32)),
            ("index csize", Box::new(|m| m.images[0].index.csize = 0)),
            (
                "hex",
                Box::new(|m| m.images[0].index.sha256 = "AB".repeat(32)),
            ),
            ("block size", Box::new(|m| m.images[0].block_size = 512)),
            ("chunk size", Box::new(|m| m.images[0].chunk_size = 5000)),
            ("csize bound", Box::new(|m| m.images[0].chunks[2] = 1 << 40)),
            (
                "dup name",
                Box::new(|m| {
                    let i = m.images[0].clone();
                    m.images.push(i);
                }),
            ),
        ];
        for (what, f) in cases {
            let mut m = sample();
            f(&mut m);
            assert!(m.check().is_err(), "{what} should be rejected");
        }
    }

    #[test]
    fn two_images_pack_indexes_first() {
        let mut m = sample();
        let mut second = m.images[0].clone();
        second.name = "boot".into();
        second.index.offset = 20;
        m.images[0].chunks_offset = 40;
        second.chunks_offset = 190;
        m.images.push(second);
        m.check().unwrap();
        assert_eq!(m.payload_size(), 340);
    }

    #[test]
    fn names_and_versions() {
        check_compatible("acme-gw_1.0").unwrap();
        assert!(check_compatible("").is_err());
        assert!(check_compatible("a/b").is_err());
        assert!(check_image_name("rootfs").is_ok());
        assert!(check_image_name("root fs").is_err());
        assert!(parse_version("1.0.0-rc.1").is_ok());
        assert!(parse_version("v1.0").is_err());
    }
}
