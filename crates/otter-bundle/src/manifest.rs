//! The manifest: JSON describing what a bundle contains. It is the signed part of a bundle; the
//! payload is trusted only through the chunk hashes listed here.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::error::{Error, Result};

/// Largest accepted chunk size; bounds the memory an install needs per in-flight chunk.
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// Chunks are multiples of 4 KiB so every write to a block device is aligned to its blocks.
pub const CHUNK_ALIGN: u32 = 4096;
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Image name, e.g. "rootfs".
    pub name: String,
    /// Raw image size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole raw image.
    pub sha256: String,
    /// Raw size of every chunk but the last.
    pub chunk_size: u32,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Lowercase hex SHA-256 of the raw chunk bytes.
    pub sha256: String,
    /// Raw length.
    pub size: u32,
    /// Offset of the compressed bytes, relative to the payload start.
    pub offset: u64,
    /// Compressed length; 0 means an all-zero chunk that has no payload bytes.
    pub csize: u64,
}

impl Chunk {
    pub fn is_zero(&self) -> bool {
        self.csize == 0
    }
}

impl Manifest {
    pub fn image(&self, name: &str) -> Option<&ImageEntry> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Total payload length in bytes (all stored chunks of all images).
    pub fn payload_size(&self) -> u64 {
        self.images.iter().map(|i| i.stored_bytes()).sum()
    }

    /// Parses and checks the manifest's internal consistency. Does not establish trust.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// Checks everything install relies on, so install never trusts a field it did not check:
    /// chunk count and sizes add up to the image size, stored chunks are packed back to back in
    /// manifest order (this makes the payload one sequential stream per image), compressed
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
        let mut offset = 0u64;
        for img in &self.images {
            check_image_name(&img.name).map_err(|e| e.to_string())?;
            if !names.insert(img.name.as_str()) {
                return Err(format!("image name {:?} appears twice", img.name));
            }
            offset = img
                .check(offset)
                .map_err(|e| format!("image {:?}: {e}", img.name))?;
        }
        Ok(())
    }
}

impl ImageEntry {
    /// Bytes this image occupies in the payload.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.csize).sum()
    }

    /// Where this image's compressed bytes start in the payload.
    pub fn payload_start(&self) -> u64 {
        self.chunks.first().map_or(0, |c| c.offset)
    }

    /// One past the last payload byte of this image.
    pub fn payload_end(&self) -> u64 {
        self.payload_start() + self.stored_bytes()
    }

    pub fn zero_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_zero()).count()
    }

    /// Byte offset of chunk `index` in the raw image (and in the target).
    pub fn chunk_offset(&self, index: usize) -> u64 {
        index as u64 * u64::from(self.chunk_size)
    }

    /// Returns the payload offset just after this image.
    fn check(&self, mut offset: u64) -> std::result::Result<u64, String> {
        if self.size == 0 {
            return Err("size is 0".into());
        }
        check_hex_digest(&self.sha256).map_err(|e| format!("sha256: {e}"))?;
        if self.chunk_size < CHUNK_ALIGN
            || self.chunk_size > MAX_CHUNK_SIZE
            || !self.chunk_size.is_multiple_of(CHUNK_ALIGN)
        {
            return Err(format!(
                "chunk_size {} must be a multiple of {CHUNK_ALIGN} between {CHUNK_ALIGN} and {MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        let cs = u64::from(self.chunk_size);
        let expected_chunks = self.size.div_ceil(cs);
        if self.chunks.len() as u64 != expected_chunks {
            return Err(format!(
                "{} chunks listed, a {} byte image in {cs} byte chunks has {expected_chunks}",
                self.chunks.len(),
                self.size
            ));
        }
        let max_csize = zstd::zstd_safe::compress_bound(self.chunk_size as usize) as u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let expect_size = (self.size - i as u64 * cs).min(cs);
            if u64::from(c.size) != expect_size {
                return Err(format!(
                    "chunk {i}: size {} but expected {expect_size}",
                    c.size
                ));
            }
            check_hex_digest(&c.sha256).map_err(|e| format!("chunk {i}: sha256: {e}"))?;
            if c.offset != offset {
                return Err(format!(
                    "chunk {i}: payload offset {} but chunks must be packed, expected {offset}",
                    c.offset
                ));
            }
            if c.csize > max_csize {
                return Err(format!(
                    "chunk {i}: compressed size {} exceeds the zstd bound {max_csize}",
                    c.csize
                ));
            }
            offset = offset
                .checked_add(c.csize)
                .ok_or_else(|| format!("chunk {i}: payload offset overflows"))?;
        }
        Ok(offset)
    }
}

fn check_hex_digest(s: &str) -> std::result::Result<(), String> {
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
                chunk_size: 4096,
                chunks: vec![
                    Chunk {
                        sha256: h.clone(),
                        size: 4096,
                        offset: 0,
                        csize: 100,
                    },
                    Chunk {
                        sha256: h.clone(),
                        size: 4096,
                        offset: 100,
                        csize: 0,
                    },
                    Chunk {
                        sha256: h.clone(),
                        size: 1808,
                        offset: 100,
                        csize: 50,
                    },
                ],
            }],
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn valid_sample_roundtrips() {
        let m = sample();
        m.check().unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert_eq!(m.payload_size(), 150);
        assert_eq!(m.images[0].payload_end(), 150);
        assert_eq!(m.images[0].zero_chunks(), 1);
        // metadata is optional on input and omitted when empty
        assert!(!String::from_utf8(json).unwrap().contains("metadata"));
    }

    #[test]
    fn inconsistencies_are_rejected() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("format", Box::new(|m| m.format = 2)),
            ("compatible", Box::new(|m| m.compatible = "a b".into())),
            ("version", Box::new(|m| m.version = "1.2".into())),
            ("no images", Box::new(|m| m.images.clear())),
            ("last size", Box::new(|m| m.images[0].chunks[2].size = 1809)),
            ("image size", Box::new(|m| m.images[0].size = 20000)),
            (
                "missing chunk",
                Box::new(|m| {
                    m.images[0].chunks.pop();
                }),
            ),
            ("gap", Box::new(|m| m.images[0].chunks[2].offset = 101)),
            (
                "hex",
                Box::new(|m| m.images[0].chunks[0].sha256 = "AB".repeat(32)),
            ),
            ("chunk size", Box::new(|m| m.images[0].chunk_size = 5000)),
            (
                "csize bound",
                Box::new(|m| m.images[0].chunks[2].csize = 1 << 40),
            ),
            (
                "dup name",
                Box::new(|m| {
                    let mut i = m.images[0].clone();
                    for c in &mut i.chunks {
                        c.offset += 150;
                    }
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
