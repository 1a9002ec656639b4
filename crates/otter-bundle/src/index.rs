//! Block indexes: a 16-byte hash of every 4 KiB block of an image.
//!
//! A bundle carries one per image (a section of its payload, hashed in the signed manifest), so a
//! device can find which blocks of the new image it already has in its active slot, wherever
//! they sit there. The device indexes its active slot in the same form ([`index_slot`]) and
//! keeps that index in a small file ([`SavedIndex`]) so the next update need not read the slot.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::thread;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Granularity of the index: file systems allocate in 4 KiB blocks, so unchanged file data of a
/// new image sits at 4 KiB-aligned offsets of the old one, even when it moved.
pub const BLOCK_SIZE: u32 = 4096;
/// Bytes of SHA-256 kept per block: 128 bits, so an accidental or crafted collision is out of
/// reach, at half the size of a full hash.
pub const HASH_LEN: usize = 16;
/// A block hash.
pub type BlockHash = [u8; HASH_LEN];
/// The hash recorded for an all-zero block (a flag, not a SHA-256): zero blocks are never
/// fetched nor looked up, they are written as zeros.
pub const ZERO_HASH: BlockHash = [0; HASH_LEN];

/// The hash of one block: [`ZERO_HASH`] for all zeros, else the first 16 bytes of its SHA-256.
/// A partial last block is hashed as it is (no padding).
pub fn block_hash(data: &[u8]) -> BlockHash {
    if crate::create::is_zero(data) {
        return ZERO_HASH;
    }
    let full = Sha256::digest(data);
    let mut h = ZERO_HASH;
    h.copy_from_slice(&full[..HASH_LEN]);
    h
}

/// The hashes of every block of an image of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    size: u64,
    hashes: Vec<BlockHash>,
}

impl BlockIndex {
    /// An index from its hashes; `hashes.len()` must be the block count of `size`.
    pub fn new(size: u64, hashes: Vec<BlockHash>) -> Result<Self> {
        let n = size.div_ceil(u64::from(BLOCK_SIZE));
        if hashes.len() as u64 != n {
            return Err(Error::Internal(format!(
                "block index of a {size} byte image needs {n} hashes, got {}",
                hashes.len()
            )));
        }
        Ok(BlockIndex { size, hashes })
    }

    /// Parses the raw index section (16 bytes per block, in order).
    pub fn from_bytes(size: u64, raw: &[u8]) -> std::result::Result<Self, String> {
        let n = size.div_ceil(u64::from(BLOCK_SIZE));
        if raw.len() as u64 != n * HASH_LEN as u64 {
            return Err(format!(
                "block index is {} bytes, a {size} byte image needs {}",
                raw.len(),
                n * HASH_LEN as u64
            ));
        }
        let hashes = raw
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = ZERO_HASH;
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(BlockIndex { size, hashes })
    }

    /// The raw index section.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// Size in bytes of the image this indexes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Raw length of block `i` (only the last one may be short).
    pub fn block_len(&self, i: usize) -> usize {
        (self.size - i as u64 * u64::from(BLOCK_SIZE)).min(u64::from(BLOCK_SIZE)) as usize
    }

    pub fn zero_blocks(&self) -> usize {
        self.hashes.iter().filter(|h| **h == ZERO_HASH).count()
    }

    /// Lowercase hex SHA-256 of the raw index section.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for b in &self.hashes {
            h.update(b);
        }
        hex::encode(h.finalize())
    }
}

/// Finds blocks by hash in an indexed seed (the device's active slot). Zero blocks and a partial
/// last block are left out: zeros are never copied, and a short block cannot stand for a full one.
#[derive(Debug, Default)]
pub struct SeedMap {
    /// Block hash → block number in the seed (the first occurrence).
    map: HashMap<BlockHash, u32>,
}

impl SeedMap {
    pub fn new(index: &BlockIndex) -> Self {
        let mut map = HashMap::with_capacity(index.len() - index.zero_blocks().min(index.len()));
        for (i, h) in index.hashes.iter().enumerate() {
            if *h == ZERO_HASH || index.block_len(i) != BLOCK_SIZE as usize {
                continue;
            }
            // Block numbers fit u32 up to 16 TiB slots.
            if let Ok(i) = u32::try_from(i) {
                map.entry(*h).or_insert(i);
            }
        }
        SeedMap { map }
    }

    /// Byte offset in the seed of a block with hash `h`.
    pub fn find(&self, h: &BlockHash) -> Option<u64> {
        self.map
            .get(h)
            .map(|&i| u64::from(i) * u64::from(BLOCK_SIZE))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Read size when indexing a slot.
const SCAN_BUF: usize = 4 * 1024 * 1024;

/// Indexes the first `len` bytes (all of it when `None`) of a slot: a block device or a file.
/// Reads sequentially on one thread while the blocks of the previous buffer are hashed on all
/// cores. `progress` gets the bytes indexed so far.
pub fn index_slot(
    path: &Path,
    len: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<BlockIndex> {
    let mut file = File::open(path).map_err(|e| Error::io("cannot open slot", path, e))?;
    // Seeking to the end gives the size of block devices, whose metadata length is 0.
    let capacity = file
        .seek(SeekFrom::End(0))
        .and_then(|n| file.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| Error::io("cannot get size of slot", path, e))?;
    let size = match len {
        Some(l) if l > capacity => {
            return Err(Error::io(
                "cannot index slot",
                path,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("it has {capacity} bytes, {l} requested"),
                ),
            ));
        }
        Some(l) => l,
        None => capacity,
    };
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let mut hashes = Vec::with_capacity(size.div_ceil(u64::from(BLOCK_SIZE)) as usize);
    let (full_tx, full_rx) = sync_channel::<io::Result<Vec<u8>>>(2);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(3);
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; SCAN_BUF]);
    }
    thread::scope(|s| -> Result<()> {
        s.spawn(move || {
            let mut pos = 0u64;
            while pos < size {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let n = (size - pos).min(SCAN_BUF as u64) as usize;
                buf.resize(n, 0);
                let r = file.read_exact(&mut buf).map(|()| buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        let mut pos = 0u64;
        while pos < size {
            let buf = match full_rx.recv() {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => return Err(Error::io("cannot read slot", path, e)),
                Err(_) => return Err(Error::Internal("slot reader thread stopped".into())),
            };
            hash_blocks_parallel(&buf, workers, &mut hashes);
            pos += buf.len() as u64;
            progress(pos);
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })?;
    BlockIndex::new(size, hashes)
}

/// Appends the block hashes of `buf` (whole blocks, except maybe at the very end) to `out`.
fn hash_blocks_parallel(buf: &[u8], workers: usize, out: &mut Vec<BlockHash>) {
    let blocks: Vec<&[u8]> = buf.chunks(BLOCK_SIZE as usize).collect();
    let per = blocks.len().div_ceil(workers).max(1);
    let parts: Vec<Vec<BlockHash>> = thread::scope(|s| {
        let handles: Vec<_> = blocks
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|b| block_hash(b)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for p in parts {
        out.extend_from_slice(&p);
    }
}

/// What a slot holds, as the agent recorded it when it installed the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotIdentity {
    /// Release version of the image in the slot.
    pub version: String,
    /// Image size in bytes (the slot may be larger).
    pub size: u64,
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
}

/// A slot's block index saved in a file, with what it indexes. Layout:
/// magic `OTTERSIX`, `u32` version 1, `u32` header length `H`, `H` bytes of JSON header
/// ([`SavedHeader`]), then one zstd frame of the raw index (16 bytes per block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedIndex {
    pub identity: SlotIdentity,
    pub index: BlockIndex,
}

const SAVED_MAGIC: &[u8; 8] = b"OTTERSIX";
const SAVED_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct SavedHeader {
    #[serde(flatten)]
    identity: SlotIdentity,
    block_size: u32,
    /// SHA-256 of the raw index, so a damaged file is noticed.
    index_sha256: String,
}

impl SavedIndex {
    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.identity.size != self.index.size() {
            return Err(Error::Internal(format!(
                "saved index for {} bytes describes {} bytes",
                self.identity.size,
                self.index.size()
            )));
        }
        let header = serde_json::to_vec(&SavedHeader {
            identity: self.identity.clone(),
            block_size: BLOCK_SIZE,
            index_sha256: self.index.sha256(),
        })
        .map_err(Error::ManifestEncode)?;
        let body = zstd::bulk::compress(&self.index.to_bytes(), 3)
            .map_err(|e| Error::io("cannot compress slot index for", path, e))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".slot-index.")
            .tempfile_in(&dir)
            .map_err(|e| Error::io("cannot create temporary file in", &dir, e))?;
        let werr = |e| Error::io("cannot write slot index", path, e);
        let f = tmp.as_file_mut();
        f.write_all(SAVED_MAGIC).map_err(werr)?;
        f.write_all(&SAVED_VERSION.to_le_bytes()).map_err(werr)?;
        f.write_all(&(header.len() as u32).to_le_bytes())
            .map_err(werr)?;
        f.write_all(&header).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        tmp.persist(path)
            .map_err(|e| Error::io("cannot move slot index into place at", path, e.error))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads and checks a saved index. Errors say what is wrong with the file.
    pub fn load(path: &Path) -> Result<SavedIndex> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io("cannot read slot index", path, e))?;
        let bad = |reason: String| {
            Error::io(
                "damaged slot index",
                path,
                io::Error::new(io::ErrorKind::InvalidData, reason),
            )
        };
        if bytes.len() < 16 || &bytes[..8] != SAVED_MAGIC {
            return Err(bad("not an Otter slot index (bad magic)".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != SAVED_VERSION {
            return Err(bad(format!(
                "version {version}, this build reads {SAVED_VERSION}"
            )));
        }
        let hlen = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let header = bytes
            .get(16..16 + hlen)
            .ok_or_else(|| bad("header truncated".into()))?;
        let header: SavedHeader =
            serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
        if header.block_size != BLOCK_SIZE {
            return Err(bad(format!("block size {}", header.block_size)));
        }
        let n = header.identity.size.div_ceil(u64::from(BLOCK_SIZE));
        let raw_len = n
            .checked_mul(HASH_LEN as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| bad("size out of range".into()))?;
        let raw = zstd::bulk::decompress(&bytes[16 + hlen..], raw_len)
            .map_err(|e| bad(format!("index data: {e}")))?;
        let index = BlockIndex::from_bytes(header.identity.size, &raw).map_err(bad)?;
        if index.sha256() != header.index_sha256 {
            return Err(bad("index data does not match its hash".into()));
        }
        Ok(SavedIndex {
            identity: header.identity,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        // xorshift: every block differs.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut v: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8 | 1
            })
            .collect();
        // A zero block in the middle.
        if n > 3 * 4096 {
            v[4096..8192].fill(0);
        }
        v
    }

    #[test]
    fn block_hashes_flag_zeros_and_truncate_sha256() {
        assert_eq!(block_hash(&[0u8; 4096]), ZERO_HASH);
        let d = data(4096);
        assert_eq!(block_hash(&d)[..], Sha256::digest(&d)[..16]);
    }

    #[test]
    fn index_slot_matches_block_hashes_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slot");
        let d = data(SCAN_BUF * 2 + 3 * 4096 + 100);
        std::fs::write(&p, &d).unwrap();
        let mut seen = 0;
        let ix = index_slot(&p, None, &mut |n| seen = n).unwrap();
        assert_eq!(seen, d.len() as u64);
        assert_eq!(ix.len(), d.len().div_ceil(4096));
        for (i, b) in d.chunks(4096).enumerate() {
            assert_eq!(ix.hashes()[i], block_hash(b), "block {i}");
        }
        assert_eq!(ix.hashes()[1], ZERO_HASH);
        assert_eq!(ix.block_len(ix.len() - 1), 100);
        let part = index_slot(&p, Some(8192 + 10), &mut |_| {}).unwrap();
        assert_eq!(part.hashes()[..2], ix.hashes()[..2]);
        assert_eq!(part.hashes()[2], block_hash(&d[8192..8202]));
        assert!(index_slot(&p, Some(d.len() as u64 + 1), &mut |_| {}).is_err());

        let map = SeedMap::new(&ix);
        // Zero and partial blocks are left out.
        assert_eq!(map.len(), ix.len() - 2);
        assert_eq!(map.find(&ix.hashes()[2]), Some(2 * 4096));
        assert_eq!(map.find(&ZERO_HASH), None);
    }

    #[test]
    fn saved_index_roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slot");
        let d = data(10 * 4096 + 7);
        std::fs::write(&p, &d).unwrap();
        let index = index_slot(&p, None, &mut |_| {}).unwrap();
        let saved = SavedIndex {
            identity: SlotIdentity {
                version: "1.2.0".into(),
                size: d.len() as u64,
                sha256: hex::encode(Sha256::digest(&d)),
            },
            index,
        };
        let f = dir.path().join("sub/a.index");
        saved.save(&f).unwrap();
        assert_eq!(SavedIndex::load(&f).unwrap(), saved);
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&f, &bytes).unwrap();
        let e = SavedIndex::load(&f).unwrap_err();
        assert!(e.to_string().contains("damaged slot index"), "{e}");
        std::fs::write(&f, b"nonsense").unwrap();
        assert!(SavedIndex::load(&f).is_err());
        assert!(SavedIndex::load(&dir.path().join("missing")).is_err());
    }
}
