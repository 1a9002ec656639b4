//! Planning a delta install: which chunks of the new image can be assembled from blocks the
//! device already has (the seed: its active slot), which must be fetched, and how the fetched
//! ones group into few HTTP range requests. Pure functions, shared by install and
//! `otter bundle diff`.

use serde::Serialize;

use crate::index::{BlockIndex, SeedMap, ZERO_HASH};
use crate::manifest::ImageEntry;

/// Two fetched ranges closer than this are merged into one request; the bytes between them are
/// downloaded and dropped. A request costs a round trip and a few hundred bytes of headers, so
/// a gap of a few KiB is cheaper as one request.
pub const DEFAULT_MAX_GAP: u64 = 4 * 1024;

/// Where a chunk of the new image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkSource {
    /// All zeros: written without fetching anything.
    Zero,
    /// Every non-zero block is in the seed: copied from there (each block re-checked).
    Seed,
    /// Fetched from the bundle.
    Fetch,
}

/// The outcome of planning one image against a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaPlan {
    /// Per chunk of the new image.
    #[serde(skip)]
    pub sources: Vec<ChunkSource>,
    /// Blocks of the new image.
    pub blocks: u64,
    /// All-zero blocks (never fetched).
    pub zero_blocks: u64,
    /// Non-zero blocks taken from the seed.
    pub seed_blocks: u64,
    /// Non-zero blocks in fetched chunks.
    pub fetch_blocks: u64,
    /// Of `fetch_blocks`, those the seed has, fetched anyway because their chunk also holds a
    /// block the seed lacks: the price of compressing blocks in chunks.
    pub fetch_blocks_in_seed: u64,
    pub zero_chunks: u64,
    pub seed_chunks: u64,
    pub fetch_chunks: u64,
    /// Compressed bytes of the fetched chunks (before range merging).
    pub fetch_bytes: u64,
    /// Compressed bytes of all chunks: what an install without a seed fetches.
    pub full_bytes: u64,
}

impl DeltaPlan {
    /// Chunks to fetch, in image order.
    pub fn fetch_list(&self) -> Vec<usize> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == ChunkSource::Fetch)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Plans image `entry` with block index `index` against `seed` (`None`: a full install).
pub fn plan_delta(entry: &ImageEntry, index: &BlockIndex, seed: Option<&SeedMap>) -> DeltaPlan {
    let per = entry.chunk_blocks().max(1) as usize;
    let mut p = DeltaPlan {
        sources: Vec::with_capacity(entry.chunks.len()),
        blocks: index.len() as u64,
        zero_blocks: 0,
        seed_blocks: 0,
        fetch_blocks: 0,
        fetch_blocks_in_seed: 0,
        zero_chunks: 0,
        seed_chunks: 0,
        fetch_chunks: 0,
        fetch_bytes: 0,
        full_bytes: entry.chunk_bytes(),
    };
    for (i, (&csize, hashes)) in entry
        .chunks
        .iter()
        .zip(index.hashes().chunks(per))
        .enumerate()
    {
        let first_block = i * per;
        let mut zero = 0u64;
        let mut found = 0u64;
        let mut missing = 0u64;
        for (k, h) in hashes.iter().enumerate() {
            if *h == ZERO_HASH {
                zero += 1;
            } else if index.block_len(first_block + k) == crate::index::BLOCK_SIZE as usize
                && seed.is_some_and(|s| s.find(h).is_some())
            {
                found += 1;
            } else {
                missing += 1;
            }
        }
        p.zero_blocks += zero;
        let source = if csize == 0 {
            ChunkSource::Zero
        } else if missing == 0 {
            ChunkSource::Seed
        } else {
            ChunkSource::Fetch
        };
        match source {
            ChunkSource::Zero => p.zero_chunks += 1,
            ChunkSource::Seed => {
                p.seed_chunks += 1;
                p.seed_blocks += found;
            }
            ChunkSource::Fetch => {
                p.fetch_chunks += 1;
                p.fetch_blocks += found + missing;
                p.fetch_blocks_in_seed += found;
                p.fetch_bytes += csize;
            }
        }
        p.sources.push(source);
    }
    p
}

/// One HTTP request (or one read of a local file): payload bytes `start..end`, holding the
/// frames of `chunks` (in order) and the bytes between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRange {
    pub start: u64,
    pub end: u64,
    pub chunks: Vec<usize>,
}

/// Groups the frames of chunks `wanted` (ascending; zero chunks are skipped) into ranges,
/// merging two frames when fewer than `max_gap` bytes lie between them. `u64::MAX` gives one
/// range from the first wanted frame to the end of the last.
pub fn coalesce(entry: &ImageEntry, wanted: &[usize], max_gap: u64) -> Vec<FetchRange> {
    let offsets = entry.chunk_payload_offsets();
    let mut out: Vec<FetchRange> = Vec::new();
    for &i in wanted {
        let (start, end) = (offsets[i], offsets[i + 1]);
        if start == end {
            continue;
        }
        match out.last_mut() {
            Some(r) if start >= r.end && start - r.end <= max_gap => {
                r.end = end;
                r.chunks.push(i);
            }
            _ => out.push(FetchRange {
                start,
                end,
                chunks: vec![i],
            }),
        }
    }
    out
}

/// Bytes downloaded for `ranges` (frames plus the gaps merged into them).
pub fn range_bytes(ranges: &[FetchRange]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// What a device holding `old` downloads to install image `new`: the figures of
/// `otter bundle diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    #[serde(flatten)]
    pub plan: DeltaPlan,
    /// Image size.
    pub image_bytes: u64,
    /// Compressed block index (always downloaded).
    pub index_bytes: u64,
    /// HTTP requests for the chunks after merging ranges closer than `max_gap`.
    pub requests: usize,
    pub max_gap: u64,
    /// Chunk bytes downloaded: fetched frames plus merged gaps.
    pub range_bytes: u64,
    /// Everything a delta install downloads: `index_bytes + range_bytes`.
    pub download_bytes: u64,
    /// What a full install downloads: `index_bytes + full_bytes`.
    pub full_download_bytes: u64,
    /// `download_bytes` in percent of `full_download_bytes`.
    pub percent_of_full: f64,
}

/// Plans `new` against a seed indexed as `old`, like an install would, and adds up what it
/// downloads.
pub fn diff(
    old: &BlockIndex,
    new: &ImageEntry,
    new_index: &BlockIndex,
    max_gap: u64,
) -> DiffReport {
    let map = SeedMap::new(old);
    let plan = plan_delta(new, new_index, Some(&map));
    let ranges = coalesce(new, &plan.fetch_list(), max_gap);
    let range_bytes = range_bytes(&ranges);
    let download = new.index.csize + range_bytes;
    let full = new.index.csize + plan.full_bytes;
    DiffReport {
        image_bytes: new.size,
        index_bytes: new.index.csize,
        requests: ranges.len(),
        max_gap,
        range_bytes,
        download_bytes: download,
        full_download_bytes: full,
        percent_of_full: if full == 0 {
            0.0
        } else {
            download as f64 * 100.0 / full as f64
        },
        plan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{BlockHash, block_hash};
    use crate::manifest::IndexRef;

    fn h(n: u8) -> BlockHash {
        block_hash(&[n; 4096])
    }

    /// 4 chunks of 2 blocks: [1,2] [0,0] [3,4] [5,0(partial)]
    fn entry() -> (ImageEntry, BlockIndex) {
        let hashes = vec![
            h(1),
            h(2),
            ZERO_HASH,
            ZERO_HASH,
            h(3),
            h(4),
            h(5),
            ZERO_HASH,
        ];
        let size = 7 * 4096 + 100;
        let index = BlockIndex::new(size, hashes).unwrap();
        let e = ImageEntry {
            name: "rootfs".into(),
            size,
            sha256: "0".repeat(64),
            block_size: 4096,
            chunk_size: 8192,
            index: IndexRef {
                offset: 0,
                csize: 10,
                size: 8 * 16,
                sha256: "0".repeat(64),
            },
            chunks_offset: 10,
            chunks: vec![100, 0, 200, 50],
        };
        (e, index)
    }

    #[test]
    fn plan_without_seed_fetches_all_stored_chunks() {
        let (e, ix) = entry();
        let p = plan_delta(&e, &ix, None);
        use ChunkSource::*;
        assert_eq!(p.sources, vec![Fetch, Zero, Fetch, Fetch]);
        assert_eq!(p.fetch_bytes, 350);
        assert_eq!(p.full_bytes, 350);
        assert_eq!((p.zero_blocks, p.seed_blocks, p.fetch_blocks), (3, 0, 5));
    }

    #[test]
    fn plan_with_seed_reuses_complete_chunks_only() {
        let (e, ix) = entry();
        // The seed holds blocks 1, 2, 4 and 5 at other places, plus junk.
        let seed =
            BlockIndex::new(6 * 4096, vec![h(9), h(2), h(4), h(1), ZERO_HASH, h(5)]).unwrap();
        let map = SeedMap::new(&seed);
        let p = plan_delta(&e, &ix, Some(&map));
        use ChunkSource::*;
        // Chunk 2 lacks block 3; chunk 3 = [5, zero] is complete.
        assert_eq!(p.sources, vec![Seed, Zero, Fetch, Seed]);
        assert_eq!(p.fetch_bytes, 200);
        assert_eq!(p.seed_blocks, 3);
        assert_eq!((p.fetch_blocks, p.fetch_blocks_in_seed), (2, 1));
        assert_eq!(p.fetch_list(), vec![2]);
    }

    #[test]
    fn diff_adds_up_the_download() {
        let (e, ix) = entry();
        let seed = BlockIndex::new(2 * 4096, vec![h(1), h(2)]).unwrap();
        let d = diff(&seed, &e, &ix, 0);
        // Chunk 0 from the seed; chunks 2 and 3 (adjacent frames) in one request.
        assert_eq!(d.requests, 1);
        assert_eq!(d.range_bytes, 250);
        assert_eq!(d.download_bytes, 260);
        assert_eq!(d.full_download_bytes, 360);
        assert!((d.percent_of_full - 72.22).abs() < 0.01);
        let same = diff(&ix, &e, &ix, 0);
        assert_eq!(
            same.download_bytes, 10,
            "only the index, block 5 is a full block"
        );
    }

    #[test]
    fn ranges_merge_across_small_gaps_and_zero_chunks() {
        let (e, _) = entry();
        // Frames: chunk0 10..110, chunk1 empty, chunk2 110..310, chunk3 310..360.
        let r = coalesce(&e, &[0, 1, 2, 3], 0);
        assert_eq!(
            r,
            vec![FetchRange {
                start: 10,
                end: 360,
                chunks: vec![0, 2, 3]
            }]
        );
        let r = coalesce(&e, &[0, 3], 199);
        assert_eq!(r.len(), 2);
        assert_eq!(range_bytes(&r), 150);
        let r = coalesce(&e, &[0, 3], 200);
        assert_eq!(
            r,
            vec![FetchRange {
                start: 10,
                end: 360,
                chunks: vec![0, 3]
            }]
        );
        assert!(coalesce(&e, &[1], 0).is_empty());
    }
}
