//! Patches against named releases: optional extra data in a bundle that makes the update from
//! one particular older image much smaller than block reuse alone.
//!
//! Block reuse (see [`crate::delta`]) finds every 4 KiB block the device already has, wherever
//! it is, but a block that changed by one byte is fetched whole, and the block index (16 bytes
//! per block) is downloaded by every delta. A *patch set* names one old image (its size, SHA-256
//! and the SHA-256 of its block index) and carries, for a device whose seed is exactly that
//! image:
//! - the new block index compressed with the old one as a zstd prefix (a few KiB instead of
//!   megabytes when the layout is stable);
//! - *units*: runs of up to [`UNIT_MAX_BYTES`] of chunks the old image lacks, each compressed
//!   as one zstd frame with a few ranges of the old image as its prefix (the bytes most like
//!   it, found by content anchors at build time).
//!
//! Everything stays checked: the patched index must hash to the signed `index.sha256`, every
//! block a unit produces is checked against that index before it is written, and the slot's
//! SHA-256 is checked at the end. A unit whose output does not match (damaged seed, damaged
//! patch) is dropped and its chunks are fetched as usual; a device on any other version ignores
//! the patch sets and installs by block reuse from the same bundle.
//!
//! The patch bytes travel as an extra image of the bundle (its *data image*, named in the patch
//! set), so bundles with patches keep format 2: older readers see one more image, which they
//! never install, and ignore the `patches` manifest field. Device memory stays bounded: one unit
//! (≤ 256 KiB) and its prefix (≤ [`REF_MAX_BYTES`]) at a time, plus the block indexes.
//!
//! Data image layout (all integers little-endian):
//! - head, at offset 0, `head` bytes: magic `OTPATCH1`, `u32` unit count `U`, `u32` index frame
//!   length `L`, `U` × (`u32` first chunk, `u16` chunk count), then the index frame (`L` bytes).
//! - zeros up to `units_offset` (a multiple of the data image's chunk size, so the head and the
//!   units are fetched separately without overlap);
//! - `units_len` bytes of unit records, in the head's order: `u32` first chunk, `u16` chunk
//!   count, `u16` reference count `R`, `R` × (`u32` old block, `u32` block count), `u32` frame
//!   length `F`, then the frame (`F` bytes).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::delta::{ChunkSource, coalesce, plan_delta, range_bytes};
use crate::error::{Error, Result};
use crate::index::{BLOCK_SIZE, BlockIndex, SeedMap, SlotIdentity, ZERO_HASH};
use crate::manifest::{ImageEntry, Manifest};
use crate::reader::BundleReader;
use crate::stream::{first_bad_block, stream_chunks};

/// Raw bytes of new chunks one unit covers at most: one zstd frame, decoded in one buffer.
pub const UNIT_MAX_BYTES: usize = 256 * 1024;
/// Bytes of old image a unit may use as its prefix: what a device reads from its seed and holds
/// for one unit.
pub const REF_MAX_BYTES: usize = 1024 * 1024;
/// Prefix ranges per unit at most.
pub const MAX_REFS: usize = 16;
/// Chunk size of a data image: its content is already compressed, so the chunk size only sets
/// how many manifest entries it takes and how much a device holds in flight.
pub const DATA_CHUNK_SIZE: u32 = 256 * 1024;
/// zstd level of the units and the index patch: built once, downloaded by many devices.
pub const PATCH_ZSTD_LEVEL: i32 = 19;
/// Patch sets per bundle at most (one per older release it names).
pub const MAX_PATCH_SETS: usize = 32;

const HEAD_MAGIC: &[u8; 8] = b"OTPATCH1";
/// Largest zstd window a device accepts for the index patch (old + new index): 2 GiB of index,
/// far beyond the largest image (the output buffer, not the window, bounds memory).
const INDEX_WINDOW_LOG_MAX: u32 = 31;

/// One patch set in the manifest (`patches`): what a device must hold to use it, and where its
/// data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchSet {
    /// The image of this bundle it produces, e.g. "rootfs".
    pub image: String,
    /// The old image it applies to.
    pub from: SlotIdentity,
    /// Lowercase hex SHA-256 of the old image's raw block index: how a device recognises the
    /// old image in its seed, from a saved index or by reading the slot.
    pub from_index_sha256: String,
    /// The bundle image holding the patch data.
    pub data: String,
    /// Length of the head at the start of the data image.
    pub head: u64,
    /// Offset of the unit records in the data image (a multiple of its chunk size).
    pub units_offset: u64,
    /// Length of the unit records.
    pub units_len: u64,
    /// Number of units.
    pub units: u64,
}

impl PatchSet {
    /// Checks the patch set against the manifest it is in.
    pub(crate) fn check(&self, m: &Manifest) -> std::result::Result<(), String> {
        let target = m
            .image(&self.image)
            .ok_or_else(|| format!("image {:?} is not in the bundle", self.image))?;
        if self.data == self.image {
            return Err("data image is the patched image".into());
        }
        let data = m
            .image(&self.data)
            .ok_or_else(|| format!("data image {:?} is not in the bundle", self.data))?;
        if m.patches.iter().any(|p| p.image == self.data) {
            return Err(format!("data image {:?} is itself patched", self.data));
        }
        crate::manifest::parse_version(&self.from.version).map_err(|e| e.to_string())?;
        crate::manifest::check_hex_digest(&self.from.sha256)
            .map_err(|e| format!("from.sha256: {e}"))?;
        crate::manifest::check_hex_digest(&self.from_index_sha256)
            .map_err(|e| format!("from_index_sha256: {e}"))?;
        if self.from.size == 0 || !self.from.size.is_multiple_of(u64::from(BLOCK_SIZE)) {
            return Err(format!(
                "from.size {} is not a positive multiple of {BLOCK_SIZE}",
                self.from.size
            ));
        }
        let cs = u64::from(data.chunk_size);
        let head_min = 16u64;
        let units_end = self.units_offset.checked_add(self.units_len);
        if self.head < head_min
            || self.head > self.units_offset
            || !self.units_offset.is_multiple_of(cs)
            || units_end.is_none_or(|e| e > data.size)
        {
            return Err(format!(
                "head {} / units {}+{} do not fit the {} byte data image in {cs} byte chunks",
                self.head, self.units_offset, self.units_len, data.size
            ));
        }
        // Each unit covers at least one chunk of the target.
        if self.units > target.chunks.len() as u64 {
            return Err(format!(
                "{} units for {} chunks",
                self.units,
                target.chunks.len()
            ));
        }
        Ok(())
    }
}

/// Where a unit's output goes: chunks `first..first + count` of the patched image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSpan {
    pub first: usize,
    pub count: usize,
}

/// The decoded head of a patch set: the units' spans and the new block index.
#[derive(Debug)]
pub(crate) struct Head {
    pub spans: Vec<UnitSpan>,
    pub index: BlockIndex,
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

/// The first `size` bytes of `index` as an index of their own (what a seed holding an older,
/// smaller image is indexed as); `None` if the index is shorter.
pub(crate) fn prefix_index(index: &BlockIndex, size: u64) -> Option<BlockIndex> {
    if size > index.size() || !size.is_multiple_of(u64::from(BLOCK_SIZE)) {
        return None;
    }
    let n = (size / u64::from(BLOCK_SIZE)) as usize;
    // A partial last block of `index` lies beyond `size`, so every kept block is whole.
    BlockIndex::new(size, index.hashes()[..n].to_vec()).ok()
}

/// The patch set of `manifest` for image `image` that applies to a seed indexed as `seed`, with
/// the seed's index cut to the old image's size.
pub(crate) fn select<'m>(
    manifest: &'m Manifest,
    image: &str,
    seed: &BlockIndex,
) -> Option<(&'m PatchSet, BlockIndex)> {
    manifest
        .patches
        .iter()
        .filter(|p| p.image == image)
        .find_map(|p| {
            let ix = prefix_index(seed, p.from.size)?;
            (ix.sha256() == p.from_index_sha256).then_some((p, ix))
        })
}

/// Chunks of `entry` covering raw bytes `start..end`.
fn chunks_covering(entry: &ImageEntry, start: u64, end: u64) -> Vec<usize> {
    if end <= start {
        return Vec::new();
    }
    let cs = u64::from(entry.chunk_size);
    ((start / cs) as usize..end.div_ceil(cs) as usize).collect()
}

/// Reads raw bytes `start..end` of image `entry` (verified against `index`) into memory.
fn read_range(
    reader: &BundleReader,
    entry: &ImageEntry,
    index: &BlockIndex,
    start: u64,
    end: u64,
    max_gap: u64,
) -> Result<(Vec<u8>, u64)> {
    let wanted = chunks_covering(entry, start, end);
    let mut out = Vec::with_capacity((end - start) as usize);
    let stats = stream_chunks(reader, entry, index, &wanted, max_gap, &mut |c| {
        let off = entry.chunk_offset(c.index);
        let from = start.saturating_sub(off) as usize;
        let to = ((end - off) as usize).min(c.data.len());
        out.extend_from_slice(&c.data[from..to]);
        Ok(())
    })?;
    Ok((out, stats.fetched))
}

/// Fetches and decodes the head of patch set `ps`: the new image's block index rebuilt from the
/// seed's (`old`), checked against the signed manifest, and the units' spans. Returns it with the
/// data image's entry and index and the payload bytes read.
pub(crate) fn load_head(
    reader: &BundleReader,
    ps: &PatchSet,
    old: &BlockIndex,
    max_gap: u64,
) -> Result<(Head, ImageEntry, BlockIndex, u64)> {
    let m = reader.manifest();
    let bad = |reason: String| Error::PatchInvalid {
        from: ps.from.version.clone(),
        reason,
    };
    let (Some(target), Some(data)) = (m.image(&ps.image), m.image(&ps.data)) else {
        return Err(bad("names images the bundle lacks".into()));
    };
    let data_index = reader.read_index(&ps.data)?;
    let (head, fetched) = read_range(reader, data, &data_index, 0, ps.head, max_gap)?;
    if head.len() < 16 || &head[..8] != HEAD_MAGIC {
        return Err(bad("head has no OTPATCH1 magic".into()));
    }
    let units = le_u32(&head, 8).unwrap_or(0) as usize;
    let frame_len = le_u32(&head, 12).unwrap_or(0) as usize;
    if units as u64 != ps.units || 16 + units * 6 + frame_len != head.len() {
        return Err(bad(format!(
            "head of {} bytes does not hold {units} units and a {frame_len} byte index frame",
            head.len()
        )));
    }
    let mut spans = Vec::with_capacity(units);
    let mut next = 0usize;
    for u in 0..units {
        let at = 16 + u * 6;
        let first = le_u32(&head, at).unwrap_or(0) as usize;
        let count = le_u16(&head, at + 4).unwrap_or(0) as usize;
        if first < next || count == 0 || first + count > target.chunks.len() {
            return Err(bad(format!("unit {u} covers chunks {first}+{count}")));
        }
        next = first + count;
        spans.push(UnitSpan { first, count });
    }
    let frame = &head[16 + units * 6..];
    let raw = decompress_with_prefix(
        frame,
        &old.to_bytes(),
        target.index.size as usize,
        INDEX_WINDOW_LOG_MAX,
    )
    .map_err(|e| bad(format!("index patch: {e}")))?;
    if raw.len() as u64 != target.index.size
        || hex::encode(Sha256::digest(&raw)) != target.index.sha256
    {
        return Err(bad(
            "the patched block index does not match the manifest's index sha256".into(),
        ));
    }
    let index = BlockIndex::from_bytes(target.size, &raw).map_err(bad)?;
    Ok((
        Head { spans, index },
        data.clone(),
        data_index,
        data.index.csize + fetched,
    ))
}

/// What applying the units did.
#[derive(Debug, Default)]
pub(crate) struct UnitsOutcome {
    /// Chunks written from units.
    pub written: BTreeSet<usize>,
    /// Payload bytes read.
    pub fetched: u64,
    /// Units whose output did not match the index (their chunks are fetched instead).
    pub failed_units: u64,
    /// Set when the data could not be read or parsed at all (every unit not applied is then
    /// fetched the usual way).
    pub stream_error: Option<String>,
}

/// Streams the units of `ps`, rebuilds each from the seed and its frame, checks every block of it
/// against `index`, and passes the chunks in `wanted` to `write` (offset, bytes). Problems with
/// the patch or the seed are recorded, not returned: the caller fetches what was not written.
/// Only errors from `write` are returned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_units(
    reader: &BundleReader,
    ps: &PatchSet,
    data: &ImageEntry,
    data_index: &BlockIndex,
    entry: &ImageEntry,
    index: &BlockIndex,
    wanted: &BTreeSet<usize>,
    seed: &File,
    max_gap: u64,
    write: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
) -> Result<UnitsOutcome> {
    let mut out = UnitsOutcome::default();
    let chunks = chunks_covering(data, ps.units_offset, ps.units_offset + ps.units_len);
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0u64;
    let mut write_error: Option<Error> = None;
    let mut dec = Decoder::default();
    let result = stream_chunks(reader, data, data_index, &chunks, max_gap, &mut |c| {
        let off = data.chunk_offset(c.index);
        let from = ps.units_offset.saturating_sub(off) as usize;
        let to = ((ps.units_offset + ps.units_len).saturating_sub(off) as usize).min(c.data.len());
        buf.extend_from_slice(&c.data[from.min(to)..to]);
        // Apply every complete record in the buffer.
        loop {
            match parse_record(&buf) {
                Ok(Some((rec, len))) => {
                    let r = dec.apply(&rec, &buf[len - rec.frame_len..len], entry, index, seed);
                    match r {
                        Ok(raw) => {
                            for k in 0..rec.count {
                                let i = rec.first + k;
                                if !wanted.contains(&i) {
                                    continue;
                                }
                                let o = k * entry.chunk_size as usize;
                                let data = &raw[o..o + entry.chunk_len(i)];
                                if let Err(e) = write(i, data) {
                                    write_error = Some(e);
                                    return Err(Error::Internal("write failed".into()));
                                }
                                out.written.insert(i);
                            }
                        }
                        Err(reason) => {
                            tracing::warn!(unit_first_chunk = rec.first, %reason, "patch unit unusable; fetching its chunks");
                            out.failed_units += 1;
                        }
                    }
                    buf.drain(..len);
                    consumed += len as u64;
                }
                Ok(None) => break,
                Err(reason) => {
                    return Err(Error::PatchInvalid {
                        from: ps.from.version.clone(),
                        reason: format!("unit record at {}: {reason}", consumed),
                    });
                }
            }
        }
        Ok(())
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    match result {
        Ok(stats) => {
            out.fetched = stats.fetched;
            if !buf.is_empty() || consumed != ps.units_len {
                out.stream_error = Some(format!(
                    "{} bytes of unit records left unparsed",
                    ps.units_len - consumed
                ));
            }
        }
        Err(e) => out.stream_error = Some(e.to_string()),
    }
    Ok(out)
}

/// Walks the unit records of a patch set's record stream (`units` as stored in the bundle) and
/// returns how many there are, or why the stream is malformed. What the installer does before it
/// decompresses a unit; public for the fuzzer (`fuzz/fuzz_targets/patch_records.rs`).
pub fn scan_records(units: &[u8]) -> std::result::Result<usize, String> {
    let mut at = 0;
    let mut n = 0;
    while at < units.len() {
        match parse_record(&units[at..])? {
            Some((_, len)) => {
                at += len;
                n += 1;
            }
            None => return Err(format!("record {n} at byte {at} is cut short")),
        }
    }
    Ok(n)
}

/// One unit record's header.
#[derive(Debug)]
struct Record {
    first: usize,
    count: usize,
    /// (old block, block count)
    refs: Vec<(u64, usize)>,
    frame_len: usize,
}

/// Parses the record at the start of `b`: `Ok(None)` if it is not complete yet, else the record
/// and its total length.
fn parse_record(b: &[u8]) -> std::result::Result<Option<(Record, usize)>, String> {
    let (Some(first), Some(count), Some(nrefs)) = (le_u32(b, 0), le_u16(b, 4), le_u16(b, 6)) else {
        return Ok(None);
    };
    let nrefs = nrefs as usize;
    if nrefs > MAX_REFS {
        return Err(format!("{nrefs} references, at most {MAX_REFS}"));
    }
    let mut refs = Vec::with_capacity(nrefs);
    for r in 0..nrefs {
        let (Some(block), Some(n)) = (le_u32(b, 8 + r * 8), le_u32(b, 12 + r * 8)) else {
            return Ok(None);
        };
        refs.push((u64::from(block), n as usize));
    }
    let at = 8 + nrefs * 8;
    let Some(frame_len) = le_u32(b, at) else {
        return Ok(None);
    };
    let frame_len = frame_len as usize;
    if frame_len > zstd::zstd_safe::compress_bound(UNIT_MAX_BYTES) {
        return Err(format!("frame of {frame_len} bytes"));
    }
    let len = at + 4 + frame_len;
    if b.len() < len {
        return Ok(None);
    }
    Ok(Some((
        Record {
            first: first as usize,
            count: count as usize,
            refs,
            frame_len,
        },
        len,
    )))
}

/// Buffers reused from unit to unit.
#[derive(Default)]
struct Decoder {
    prefix: Vec<u8>,
}

impl Decoder {
    /// Rebuilds a unit: reads its prefix from the seed, decompresses, and checks every block.
    fn apply(
        &mut self,
        rec: &Record,
        frame: &[u8],
        entry: &ImageEntry,
        index: &BlockIndex,
        seed: &File,
    ) -> std::result::Result<Vec<u8>, String> {
        let cs = entry.chunk_size as usize;
        if rec.count == 0
            || rec.count * cs > UNIT_MAX_BYTES.max(cs)
            || rec.first + rec.count > entry.chunks.len()
        {
            return Err(format!("covers chunks {}+{}", rec.first, rec.count));
        }
        let ref_blocks: usize = rec.refs.iter().map(|r| r.1).sum();
        if ref_blocks * BLOCK_SIZE as usize > REF_MAX_BYTES {
            return Err(format!("prefix of {ref_blocks} blocks"));
        }
        self.prefix.clear();
        self.prefix.resize(ref_blocks * BLOCK_SIZE as usize, 0);
        let mut at = 0;
        for &(block, n) in &rec.refs {
            let len = n * BLOCK_SIZE as usize;
            seed.read_exact_at(
                &mut self.prefix[at..at + len],
                block * u64::from(BLOCK_SIZE),
            )
            .map_err(|e| format!("cannot read the seed at block {block}: {e}"))?;
            at += len;
        }
        let last = rec.first + rec.count - 1;
        let size = entry.chunk_offset(last) as usize + entry.chunk_len(last)
            - entry.chunk_offset(rec.first) as usize;
        // A window as large as prefix plus output: the frame may refer anywhere in the prefix.
        let raw = decompress_with_prefix(frame, &self.prefix, size, 27)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        if raw.len() != size {
            return Err(format!(
                "decompressed to {} bytes, expected {size}",
                raw.len()
            ));
        }
        let first_block = rec.first * entry.chunk_blocks() as usize;
        if let Some(k) = first_bad_block(&raw, &index.hashes()[first_block..]) {
            return Err(format!(
                "block {} does not match its hash in the block index",
                first_block + k
            ));
        }
        Ok(raw)
    }
}

fn window_log(len: usize) -> u32 {
    (usize::BITS - len.max(1 << 10).saturating_sub(1).leading_zeros()).clamp(10, 30)
}

/// One zstd frame of `data` with `prefix` as its single-use dictionary (zstd's `--patch-from`).
pub(crate) fn compress_with_prefix(data: &[u8], prefix: &[u8], level: i32) -> Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |what: &str, code: usize| {
        Error::Internal(format!(
            "zstd {what}: {}",
            zstd::zstd_safe::get_error_name(code)
        ))
    };
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(|c| err("level", c))?;
    cctx.set_parameter(CParameter::WindowLog(window_log(prefix.len() + data.len())))
        .map_err(|c| err("window", c))?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(|c| err("content size", c))?;
    cctx.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(|c| err("checksum", c))?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(|c| err("prefix", c))?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data)
        .map_err(|c| err("compress", c))?;
    Ok(out)
}

/// Decompresses one frame made by [`compress_with_prefix`] into at most `max` bytes.
pub(crate) fn decompress_with_prefix(
    frame: &[u8],
    prefix: &[u8],
    max: usize,
    window_log_max: u32,
) -> std::result::Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let name = |c: usize| zstd::zstd_safe::get_error_name(c).to_string();
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(window_log_max))
        .map_err(name)?;
    if !prefix.is_empty() {
        dctx.ref_prefix(prefix).map_err(name)?;
    }
    // The capacity bounds the output: a frame that inflates beyond it is an error.
    let mut out = Vec::with_capacity(max);
    dctx.decompress(&mut out, frame).map_err(name)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Building patch sets.

/// Gear table for the rolling hash that places content anchors (fixed: builds are reproducible).
fn gear() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut x = 0x6f74_7465_7270_6174u64; // "otterpat"
    for v in t.iter_mut() {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *v = z ^ (z >> 31);
    }
    t
}

/// An anchor every ~512 bytes of content: the rolling hash covers the previous 64 bytes.
const ANCHOR_BITS: u32 = 9;

/// Calls `f(offset, key)` for each content anchor in `data` (offsets relative to `data`).
fn anchors(data: &[u8], g: &[u64; 256], f: &mut dyn FnMut(usize, u64)) {
    let mut h = 0u64;
    for (i, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(g[b as usize]);
        if i >= 64 && h >> (64 - ANCHOR_BITS) == 0 {
            f(i, h);
        }
    }
}

/// Anchors of the old image: key → offset of the anchor (first occurrence), zero blocks left
/// out.
struct OldAnchors {
    map: HashMap<u64, u64>,
}

impl OldAnchors {
    fn new(old: &[u8], old_index: &BlockIndex, g: &[u64; 256]) -> Self {
        let mut map = HashMap::new();
        let bs = BLOCK_SIZE as usize;
        // Runs of non-zero blocks, each scanned on its own.
        let mut b = 0;
        let n = old_index.len();
        while b < n {
            if old_index.hashes()[b] == ZERO_HASH {
                b += 1;
                continue;
            }
            let start = b;
            while b < n && old_index.hashes()[b] != ZERO_HASH {
                b += 1;
            }
            let s = start * bs;
            let e = (b * bs).min(old.len());
            anchors(&old[s..e], g, &mut |o, k| {
                map.entry(k).or_insert((s + o) as u64);
            });
        }
        OldAnchors { map }
    }
}

/// The old ranges (block aligned, `(first block, count)`) most like `unit` at image offset
/// `unit_start`, within [`REF_MAX_BYTES`].
fn find_refs(
    unit: &[u8],
    old_len: u64,
    anchors_old: &OldAnchors,
    g: &[u64; 256],
) -> Vec<(u64, usize)> {
    // For each anchor that matched: where the unit would start in the old image, and where
    // the anchor is there.
    let mut hits: Vec<(i64, i64)> = Vec::new();
    anchors(unit, g, &mut |o, k| {
        if let Some(&old) = anchors_old.map.get(&k) {
            hits.push((old as i64 - o as i64, old as i64));
        }
    });
    if hits.is_empty() {
        return Vec::new();
    }
    hits.sort_unstable();
    // Clusters of nearby alignments (a file that moved, grew or shrank a little inside).
    const CLUSTER: i64 = 64 * 1024;
    struct Cluster {
        votes: usize,
        last_start: i64,
        min_old: i64,
        max_old: i64,
    }
    let mut clusters: Vec<Cluster> = Vec::new();
    for (start, old) in hits {
        match clusters.last_mut() {
            Some(c) if start - c.last_start <= CLUSTER => {
                c.votes += 1;
                c.last_start = start;
                c.min_old = c.min_old.min(old);
                c.max_old = c.max_old.max(old);
            }
            _ => clusters.push(Cluster {
                votes: 1,
                last_start: start,
                min_old: old,
                max_old: old,
            }),
        }
    }
    clusters.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.min_old.cmp(&b.min_old)));
    let bs = i64::from(BLOCK_SIZE);
    // Anchors are ~512 bytes apart: the similar bytes reach a little beyond the outer ones.
    let margin = 8 * 1024i64;
    let old_end = old_len as i64 / bs * bs;
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    let mut total = 0i64;
    for c in clusters {
        // A lone anchor hit is as likely chance as similarity.
        if c.votes < 2 {
            break;
        }
        let mut s = (c.min_old - 64 - margin).max(0) / bs * bs;
        let mut e = ((c.max_old + margin + bs - 1) / bs * bs).min(old_end);
        if e <= s {
            continue;
        }
        let room = (REF_MAX_BYTES as i64 - total) / bs * bs;
        if room < bs {
            break;
        }
        if e - s > room {
            // Keep the middle of the cluster.
            let mid = (s + e) / 2 / bs * bs;
            s = (mid - room / 2).max(0) / bs * bs;
            e = (s + room).min(old_end);
        }
        total += e - s;
        ranges.push((s, e));
        if ranges.len() >= MAX_REFS {
            break;
        }
    }
    // In image order, overlaps merged; the nearest bytes of a prefix are the cheapest to refer
    // to, and order does not matter otherwise.
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(m) if s <= m.1 => m.1 = m.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| ((s / bs) as u64, ((e - s) / bs) as usize))
        .collect()
}

/// Builds the data image of a patch set from `old` (the old image's bytes and index) to `new`,
/// given the new image's manifest entry (its chunk lengths decide which units pay off). Returns
/// the data image's bytes and the patch set (with `data` still to be named by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    old: &[u8],
    old_index: &BlockIndex,
    from_version: &str,
    old_sha256: &str,
    new: &[u8],
    entry: &ImageEntry,
    new_index: &BlockIndex,
    level: i32,
) -> Result<(Vec<u8>, PatchSet)> {
    let map = SeedMap::new(old_index);
    let plan = plan_delta(entry, new_index, Some(&map));
    let cs = entry.chunk_size as usize;
    let per_unit = (UNIT_MAX_BYTES / cs).max(1);
    // Runs of fetched chunks, cut into units.
    let mut spans: Vec<UnitSpan> = Vec::new();
    for (i, s) in plan.sources.iter().enumerate() {
        if *s != ChunkSource::Fetch {
            continue;
        }
        match spans.last_mut() {
            Some(u) if u.first + u.count == i && u.count < per_unit => u.count += 1,
            _ => spans.push(UnitSpan { first: i, count: 1 }),
        }
    }
    let g = gear();
    let old_anchors = OldAnchors::new(old, old_index, &g);

    // Units are independent: make them on all cores, keep them in order.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<UnitSlot> = spans.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(span) = spans.get(u) else { return };
                    let r = make_unit(span, old, new, entry, &old_anchors, &g, level);
                    if let Ok(mut slot) = results[u].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let mut kept: Vec<(UnitSpan, Vec<u8>)> = Vec::new();
    for (span, slot) in spans.iter().zip(results) {
        let r = slot
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| Error::Internal("a patch worker stopped".into()))??;
        if let Some(rec) = r {
            kept.push((*span, rec));
        }
    }

    let index_frame = compress_with_prefix(&new_index.to_bytes(), &old_index.to_bytes(), level)?;
    let mut data = Vec::new();
    data.extend_from_slice(HEAD_MAGIC);
    data.extend_from_slice(&(kept.len() as u32).to_le_bytes());
    data.extend_from_slice(&(index_frame.len() as u32).to_le_bytes());
    for (span, _) in &kept {
        data.extend_from_slice(&(span.first as u32).to_le_bytes());
        data.extend_from_slice(&(span.count as u16).to_le_bytes());
    }
    data.extend_from_slice(&index_frame);
    let head = data.len() as u64;
    let units_offset = head.div_ceil(u64::from(DATA_CHUNK_SIZE)) * u64::from(DATA_CHUNK_SIZE);
    data.resize(units_offset as usize, 0);
    for (_, rec) in &kept {
        data.extend_from_slice(rec);
    }
    let units_len = data.len() as u64 - units_offset;
    Ok((
        data,
        PatchSet {
            image: entry.name.clone(),
            from: SlotIdentity {
                version: from_version.to_owned(),
                size: old_index.size(),
                sha256: old_sha256.to_owned(),
            },
            from_index_sha256: old_index.sha256(),
            data: String::new(),
            head,
            units_offset,
            units_len,
            units: kept.len() as u64,
        },
    ))
}

/// Where a worker leaves one unit's record (`None` inside: not worth keeping).
type UnitSlot = std::sync::Mutex<Option<Result<Option<Vec<u8>>>>>;

/// One unit's record, or `None` when it would not be smaller than the chunks it replaces.
fn make_unit(
    span: &UnitSpan,
    old: &[u8],
    new: &[u8],
    entry: &ImageEntry,
    old_anchors: &OldAnchors,
    g: &[u64; 256],
    level: i32,
) -> Result<Option<Vec<u8>>> {
    let start = entry.chunk_offset(span.first) as usize;
    let last = span.first + span.count - 1;
    let end = entry.chunk_offset(last) as usize + entry.chunk_len(last);
    let unit = &new[start..end];
    let refs = find_refs(unit, old.len() as u64, old_anchors, g);
    let mut prefix = Vec::new();
    for &(b, n) in &refs {
        let s = b as usize * BLOCK_SIZE as usize;
        prefix.extend_from_slice(&old[s..s + n * BLOCK_SIZE as usize]);
    }
    let frame = compress_with_prefix(unit, &prefix, level)?;
    let mut rec = Vec::with_capacity(12 + refs.len() * 8 + frame.len());
    rec.extend_from_slice(&(span.first as u32).to_le_bytes());
    rec.extend_from_slice(&(span.count as u16).to_le_bytes());
    rec.extend_from_slice(&(refs.len() as u16).to_le_bytes());
    for &(b, n) in &refs {
        rec.extend_from_slice(&(b as u32).to_le_bytes());
        rec.extend_from_slice(&(n as u32).to_le_bytes());
    }
    rec.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    rec.extend_from_slice(&frame);
    // The head entry costs 6 more bytes.
    let replaced: u64 = entry.chunks[span.first..=last].iter().sum();
    Ok((rec.len() as u64 + 6 < replaced).then_some(rec))
}

/// What a device whose seed is the old image of a patch set downloads with it: the figures of
/// `otter bundle diff` when the new bundle carries a patch set for the old image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchedDiff {
    /// The old release the patch set names.
    pub from_version: String,
    /// Compressed index of the data image.
    pub data_index_bytes: u64,
    /// Data image bytes read: head (with the index patch) and unit records.
    pub data_bytes: u64,
    /// Chunks produced by units.
    pub patched_chunks: u64,
    /// Chunks still fetched as usual (not covered by a unit).
    pub fetch_chunks: u64,
    /// HTTP requests for the chunks fetched as usual.
    pub requests: usize,
    /// Bytes of those chunks (ranges merged as install does).
    pub range_bytes: u64,
    /// Everything downloaded after the header: `data_index_bytes + data_bytes + range_bytes`.
    pub download_bytes: u64,
}

/// [`PatchedDiff`] for a device whose seed is indexed as `old`, if `reader`'s bundle has a patch
/// set for it. Reads the data image's head (and only that) from the bundle.
pub fn patched_diff(
    reader: &BundleReader,
    image: &str,
    old: &BlockIndex,
    max_gap: u64,
) -> Result<Option<PatchedDiff>> {
    let Some((ps, old_prefix)) = select(reader.manifest(), image, old) else {
        return Ok(None);
    };
    let (head, data, _, head_fetched) = load_head(reader, ps, &old_prefix, max_gap)?;
    let Some(entry) = reader.manifest().image(image) else {
        return Ok(None);
    };
    let map = SeedMap::new(&old_prefix);
    let plan = plan_delta(entry, &head.index, Some(&map));
    let mut covered = vec![false; entry.chunks.len()];
    for s in &head.spans {
        covered[s.first..s.first + s.count].fill(true);
    }
    let fetch: Vec<usize> = plan
        .fetch_list()
        .into_iter()
        .filter(|&i| !covered[i])
        .collect();
    let ranges = coalesce(entry, &fetch, max_gap);
    let units_chunks = chunks_covering(&data, ps.units_offset, ps.units_offset + ps.units_len);
    let units_bytes: u64 = units_chunks.iter().map(|&i| data.chunks[i]).sum();
    let data_bytes = head_fetched - data.index.csize + units_bytes;
    let range = range_bytes(&ranges);
    Ok(Some(PatchedDiff {
        from_version: ps.from.version.clone(),
        data_index_bytes: data.index.csize,
        data_bytes,
        patched_chunks: head.spans.iter().map(|s| s.count as u64).sum(),
        fetch_chunks: fetch.len() as u64,
        requests: ranges.len(),
        range_bytes: range,
        download_bytes: data.index.csize + data_bytes + range,
    }))
}

/// Reads the whole raw image `name` of a bundle into memory, checked against its hash (to build
/// patches from an older bundle).
pub(crate) fn read_image(
    reader: &BundleReader,
    name: &str,
) -> Result<(Vec<u8>, BlockIndex, ImageEntry)> {
    let entry = reader
        .manifest()
        .image(name)
        .ok_or_else(|| Error::ImageNotFound {
            name: name.to_owned(),
            available: reader
                .manifest()
                .images
                .iter()
                .map(|i| i.name.clone())
                .collect(),
        })?
        .clone();
    let index = reader.read_index(name)?;
    let mut out = vec![0u8; entry.size as usize];
    let all: Vec<usize> = (0..entry.chunks.len()).collect();
    stream_chunks(reader, &entry, &index, &all, u64::MAX, &mut |c| {
        let o = entry.chunk_offset(c.index) as usize;
        out[o..o + c.data.len()].copy_from_slice(c.data);
        Ok(())
    })?;
    let sha = hex::encode(Sha256::digest(&out));
    if sha != entry.sha256 {
        return Err(Error::Corrupt {
            source_name: reader.source_name(),
            reason: format!(
                "image {name:?} hashes to {sha}, its manifest says {}",
                entry.sha256
            ),
        });
    }
    Ok((out, index, entry))
}

/// Reads a whole file into memory (patch building compares whole images).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("cannot read image", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn prefix_frames_roundtrip_and_need_their_prefix() {
        let old = noise(200_000, 1);
        let mut new = old[50_000..150_000].to_vec();
        new[500] ^= 1;
        let frame = compress_with_prefix(&new, &old, 19).unwrap();
        assert!(frame.len() < 1000, "{}", frame.len());
        assert_eq!(
            decompress_with_prefix(&frame, &old, new.len(), 27).unwrap(),
            new
        );
        // Without the right prefix the output is wrong or the frame is refused; the block
        // hashes catch the former.
        let other = noise(200_000, 2);
        assert_ne!(
            decompress_with_prefix(&frame, &other, new.len(), 27).ok(),
            Some(new.clone())
        );
        // The capacity bounds the output.
        assert!(decompress_with_prefix(&frame, &old, new.len() - 1, 27).is_err());
    }

    #[test]
    fn anchors_find_moved_bytes() {
        let old = noise(1 << 20, 3);
        let ix = BlockIndex::new(
            old.len() as u64,
            old.chunks(4096).map(crate::index::block_hash).collect(),
        )
        .unwrap();
        let g = gear();
        let a = OldAnchors::new(&old, &ix, &g);
        // A unit made of old bytes 300_000.. with a few changes.
        let mut unit = old[300_000..300_000 + 64 * 1024].to_vec();
        for k in (0..unit.len()).step_by(1000) {
            unit[k] ^= 0xff;
        }
        let refs = find_refs(&unit, old.len() as u64, &a, &g);
        assert!(!refs.is_empty());
        let (b, n) = refs[0];
        let (s, e) = (b * 4096, (b + n as u64) * 4096);
        assert!(s <= 300_000 && e >= 300_000 + 60 * 1024, "{refs:?}");
        assert!(refs.iter().map(|r| r.1).sum::<usize>() * 4096 <= REF_MAX_BYTES);
    }

    #[test]
    fn records_parse_only_when_complete() {
        let mut rec = Vec::new();
        rec.extend_from_slice(&7u32.to_le_bytes());
        rec.extend_from_slice(&2u16.to_le_bytes());
        rec.extend_from_slice(&1u16.to_le_bytes());
        rec.extend_from_slice(&100u32.to_le_bytes());
        rec.extend_from_slice(&3u32.to_le_bytes());
        rec.extend_from_slice(&5u32.to_le_bytes());
        rec.extend_from_slice(b"abcde");
        for cut in 0..rec.len() {
            assert!(parse_record(&rec[..cut]).unwrap().is_none(), "{cut}");
        }
        let (r, len) = parse_record(&rec).unwrap().unwrap();
        assert_eq!((r.first, r.count, r.frame_len, len), (7, 2, 5, rec.len()));
        assert_eq!(r.refs, vec![(100, 3)]);
        let mut bad = rec.clone();
        bad[6..8].copy_from_slice(&(MAX_REFS as u16 + 1).to_le_bytes());
        assert!(parse_record(&bad).is_err());
    }
}
