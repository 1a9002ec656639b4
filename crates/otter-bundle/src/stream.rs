//! The chunk pipeline shared by install and [`crate::VerifiedBundle::check_payload`]: it reads
//! the wanted chunks of an image from the bundle, checks every block of each one against the
//! signed block index, and hands the verified raw bytes to a sink in image order.
//!
//! Threads:
//! - A reader thread fetches the wanted chunks' frames, range by range (see
//!   [`crate::delta::coalesce`]): one sequential read per range, so an HTTP source needs one
//!   ranged GET per range (plus resumes, see [`crate::source`]). Bytes between frames of a range
//!   are read and dropped.
//! - Worker threads decompress each chunk into a buffer capped at `chunk_size`, then check its
//!   length and every block's hash.
//! - The calling thread runs the sink (write to the slot, or hash the whole image).
//!
//! For every chunk the reader queues a one-shot result slot, in order, before it hands the chunk
//! to a worker. The calling thread waits on the slots in that order. So chunks reach the sink in
//! order, and the first error in image order is the one reported. All queues are bounded, so only
//! a few chunks are in memory at a time whatever the image size.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::delta::{FetchRange, coalesce};
use crate::error::{Error, Result};
use crate::index::{BLOCK_SIZE, BlockIndex, ZERO_HASH, block_hash};
use crate::manifest::ImageEntry;
use crate::reader::BundleReader;

/// One chunk whose raw bytes matched the block index.
pub(crate) struct VerifiedChunk<'a> {
    /// Index of the chunk in the image.
    pub index: usize,
    /// The raw bytes (zeros for a zero chunk).
    pub data: &'a [u8],
    /// Payload bytes read from the bundle so far. The reader may be a few chunks ahead of `index`.
    pub fetched: u64,
}

/// What a stream cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamStats {
    /// Payload bytes read (frames and the gaps merged between them).
    pub fetched: u64,
    /// Ranges read: one HTTP request each, not counting resumes.
    pub ranges: usize,
}

enum Decoded {
    Data(Vec<u8>),
    Zero,
}

/// Where the result for one chunk arrives; queued in order.
type Slot = Receiver<Result<Decoded>>;

struct Job {
    index: usize,
    compressed: Vec<u8>,
    done: SyncSender<Result<Decoded>>,
}

type Pool = Mutex<Vec<Vec<u8>>>;

/// State shared by the pipeline's threads.
#[derive(Default)]
struct Shared {
    /// Set when the sink stops early: workers then drop what is still queued.
    abort: AtomicBool,
    /// Payload bytes read so far.
    fetched: AtomicU64,
    ranges: AtomicUsize,
    /// Reused buffers for raw and compressed chunks.
    raw_pool: Pool,
    compressed_pool: Pool,
}

/// Streams chunks `wanted` (ascending) of image `entry`: every stored chunk is read from the
/// payload, decompressed and checked block by block against `index`, then passed to `sink` on the
/// calling thread, in order. Zero chunks are passed as zeros without reading anything; callers
/// check them up front with [`check_zero_chunks`]. Frames closer than `max_gap` bytes are read
/// in one range; a server known to ignore `Range` gets a single range for everything.
///
/// Stops at the first error, in order: a chunk that fails its checks ([`Error::ChunkInvalid`]),
/// a read error, or an error from `sink`.
pub(crate) fn stream_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    index: &BlockIndex,
    wanted: &[usize],
    max_gap: u64,
    sink: &mut dyn FnMut(VerifiedChunk<'_>) -> Result<()>,
) -> Result<StreamStats> {
    let gap = match reader.source.ranges_supported() {
        // Every request would re-send the file from its start: read it all in one go.
        Some(false) => u64::MAX,
        _ => max_gap,
    };
    let ranges = coalesce(entry, wanted, gap);

    let chunk_size = entry.chunk_size as usize;
    // Bounded queues keep a handful of chunks in flight whatever the chunk size (≤ ~16 MiB for
    // the default sizes).
    let depth = (16 * 1024 * 1024 / chunk_size).clamp(1, 16);
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    // Chunks read ahead of the sink: enough to keep every worker busy.
    let lookahead = depth.max(workers);

    let shared = Shared::default();
    let zeros = if wanted.iter().any(|&i| entry.chunks[i] == 0) {
        vec![0u8; chunk_size]
    } else {
        Vec::new()
    };
    let (job_tx, job_rx) = sync_channel::<Job>(workers);
    // Shared by the workers; dropped with the last of them, which stops the reader.
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (slot_tx, slot_rx) = sync_channel::<Slot>(lookahead);

    thread::scope(|s| {
        let shared = &shared;
        let ranges = &ranges;
        let reader_thread =
            s.spawn(move || read_chunks(reader, entry, wanted, ranges, &slot_tx, &job_tx, shared));
        let worker_threads: Vec<_> = (0..workers)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                s.spawn(move || decode_chunks(entry, index, &job_rx, shared))
            })
            .collect();
        drop(job_rx);

        // Takes `slot_rx` and drops it on return, so a reader still running stops at its next chunk.
        let result = deliver(entry, wanted, slot_rx, &zeros, shared, sink);
        if result.is_err() {
            // Workers skip what is still queued, so the reader is not held up.
            shared.abort.store(true, Ordering::Relaxed);
        }
        let mut panicked = reader_thread.join().is_err().then_some("bundle reader");
        for w in worker_threads {
            if w.join().is_err() {
                panicked.get_or_insert("chunk worker");
            }
        }
        if let Some(what) = panicked {
            return Err(Error::Internal(format!("{what} thread panicked")));
        }
        result.map(|()| StreamStats {
            fetched: shared.fetched.load(Ordering::Relaxed),
            ranges: shared.ranges.load(Ordering::Relaxed),
        })
    })
}

/// Calling thread: waits for each chunk's result in order and passes it to `sink`.
fn deliver(
    entry: &ImageEntry,
    wanted: &[usize],
    slots: Receiver<Slot>,
    zeros: &[u8],
    shared: &Shared,
    sink: &mut dyn FnMut(VerifiedChunk<'_>) -> Result<()>,
) -> Result<()> {
    for &index in wanted {
        let slot = slots.recv().map_err(|_| {
            Error::Internal(format!(
                "bundle reader stopped before chunk {index} of image {:?} without an error",
                entry.name
            ))
        })?;
        let decoded = slot.recv().map_err(|_| {
            Error::Internal(format!(
                "chunk {index} of image {:?} was dropped without a result",
                entry.name
            ))
        })??;
        let data: &[u8] = match &decoded {
            Decoded::Data(raw) => raw,
            Decoded::Zero => &zeros[..entry.chunk_len(index)],
        };
        sink(VerifiedChunk {
            index,
            data,
            fetched: shared.fetched.load(Ordering::Relaxed),
        })?;
        if let Decoded::Data(raw) = decoded {
            push(&shared.raw_pool, raw);
        }
    }
    Ok(())
}

/// Reader thread: queues a result slot per wanted chunk, in order, and hands stored chunks to the
/// workers. A read error is delivered in the slot of the chunk it hit, and ends the thread.
fn read_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    wanted: &[usize],
    ranges: &[FetchRange],
    slots: &SyncSender<Slot>,
    jobs: &SyncSender<Job>,
    shared: &Shared,
) {
    let payload_size = reader.manifest().payload_size();
    let base = reader.payload_offset();
    let source_name = reader.source_name();
    let offsets = entry.chunk_payload_offsets();
    let mut ranges = ranges.iter();
    // The open range: its reader, and the payload offset of its next byte and of its end.
    let mut current: Option<(Box<dyn Read + Send>, u64, u64)> = None;
    for &index in wanted {
        if shared.abort.load(Ordering::Relaxed) {
            return;
        }
        let (done, slot) = sync_channel(1);
        if slots.send(slot).is_err() {
            return; // the sink stopped; it reports why
        }
        let csize = entry.chunks[index];
        if csize == 0 {
            // Capacity 1 and a single send: never blocks.
            let _ = done.send(Ok(Decoded::Zero));
            continue;
        }
        let start = offsets[index];
        let read_err = |e: io::Error, at: u64| match Error::from_io(e) {
            // The HTTP reader reports absolute offsets; report payload offsets.
            Ok(Error::Truncated { got, .. }) => Error::Truncated {
                source_name: source_name.clone(),
                expected: payload_size,
                got: got.saturating_sub(base),
            },
            Ok(other) => other,
            Err(e) => Error::SourceRead {
                source_name: source_name.clone(),
                offset: base + at,
                source: e,
            },
        };
        if current.as_ref().is_none_or(|c| start >= c.2) {
            // The next range holds this chunk: ranges and wanted chunks are in the same order.
            let Some(r) = ranges.find(|r| r.end > start) else {
                let _ = done.send(Err(Error::Internal(format!(
                    "chunk {index} of image {:?} is in no fetch range",
                    entry.name
                ))));
                return;
            };
            match reader.source.range_reader(base + r.start, base + r.end) {
                Ok(rd) => {
                    shared.ranges.fetch_add(1, Ordering::Relaxed);
                    current = Some((rd, r.start, r.end));
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                    return;
                }
            }
        }
        let Some((stream, pos, _)) = current.as_mut() else {
            return;
        };
        // Skip the gap before this frame.
        if start > *pos {
            let gap = start - *pos;
            match io::copy(&mut (&mut *stream).take(gap), &mut io::sink()) {
                Ok(n) => {
                    *pos += n;
                    shared.fetched.fetch_add(n, Ordering::Relaxed);
                    if n < gap {
                        let _ = done.send(Err(Error::Truncated {
                            source_name: source_name.clone(),
                            expected: payload_size,
                            got: *pos,
                        }));
                        return;
                    }
                }
                Err(e) => {
                    let _ = done.send(Err(read_err(e, *pos)));
                    return;
                }
            }
        }
        let mut buf = pop(&shared.compressed_pool).unwrap_or_default();
        buf.resize(csize as usize, 0);
        let failed = match read_full(&mut **stream, &mut buf) {
            Ok(n) if n == buf.len() => None,
            Ok(n) => Some(Error::Truncated {
                source_name: source_name.clone(),
                expected: payload_size,
                got: *pos + n as u64,
            }),
            Err(e) => Some(read_err(e, *pos)),
        };
        if let Some(e) = failed {
            let _ = done.send(Err(e));
            return;
        }
        *pos += csize;
        shared.fetched.fetch_add(csize, Ordering::Relaxed);
        let job = Job {
            index,
            compressed: buf,
            done,
        };
        if jobs.send(job).is_err() {
            return; // no worker left; the dropped slot tells the sink
        }
    }
}

/// Worker thread: decompresses and checks chunks until the reader is done.
fn decode_chunks(
    entry: &ImageEntry,
    index: &BlockIndex,
    jobs: &Mutex<Receiver<Job>>,
    shared: &Shared,
) {
    // A worker that cannot get a decompressor still answers every job, with the error, so the
    // pipeline never waits for it.
    let mut dec = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd init: {e}"));
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            index: i,
            compressed,
            done,
        }) = job
        else {
            return; // the reader is done
        };
        if shared.abort.load(Ordering::Relaxed) {
            continue; // the sink stopped: drain the queue so the reader is not blocked
        }
        let mut raw = pop(&shared.raw_pool).unwrap_or_default();
        let checked = match dec.as_mut() {
            Ok(dec) => decode_chunk(dec, entry, index, i, &compressed, &mut raw),
            Err(e) => Err(Error::Internal(e.clone())),
        };
        push(&shared.compressed_pool, compressed);
        // Capacity 1 and a single send: never blocks. A closed slot means the sink stopped.
        let _ = done.send(checked.map(|()| Decoded::Data(raw)));
    }
}

/// Decompresses chunk `i` into `raw` and checks its length and every block's hash.
fn decode_chunk(
    dec: &mut zstd::bulk::Decompressor<'_>,
    entry: &ImageEntry,
    index: &BlockIndex,
    i: usize,
    compressed: &[u8],
    raw: &mut Vec<u8>,
) -> Result<()> {
    let invalid = |reason: String| Error::ChunkInvalid {
        image: entry.name.clone(),
        index: i as u64,
        offset: entry.chunk_offset(i),
        reason,
    };
    raw.clear();
    // The capacity bounds the output: a frame that inflates beyond one chunk is an error, not
    // an allocation.
    raw.reserve_exact(entry.chunk_size as usize);
    dec.decompress_to_buffer(compressed, raw)
        .map_err(|e| invalid(format!("cannot decompress: {e}")))?;
    let len = entry.chunk_len(i);
    if raw.len() != len {
        return Err(invalid(format!(
            "decompressed to {} bytes, the image has {len} there",
            raw.len()
        )));
    }
    let first = i * entry.chunk_blocks() as usize;
    if let Some(k) = first_bad_block(raw, &index.hashes()[first..]) {
        return Err(invalid(format!(
            "block {} (image offset {}) does not match its hash in the block index",
            first + k,
            (first + k) as u64 * u64::from(BLOCK_SIZE)
        )));
    }
    Ok(())
}

/// The first block of `data` whose hash differs from `hashes` (in order), if any.
pub(crate) fn first_bad_block(data: &[u8], hashes: &[crate::index::BlockHash]) -> Option<usize> {
    data.chunks(BLOCK_SIZE as usize)
        .zip(hashes)
        .position(|(b, h)| block_hash(b) != *h)
}

/// A zero chunk has no payload bytes, so nothing in the stream checks it: every block of it must
/// be flagged zero in the index. Checked up front, before anything is written.
pub(crate) fn check_zero_chunks(entry: &ImageEntry, index: &BlockIndex) -> Result<()> {
    let per = entry.chunk_blocks() as usize;
    for (i, (&csize, hashes)) in entry
        .chunks
        .iter()
        .zip(index.hashes().chunks(per))
        .enumerate()
    {
        if csize == 0 && hashes.iter().any(|h| *h != ZERO_HASH) {
            return Err(Error::ChunkInvalid {
                image: entry.name.clone(),
                index: i as u64,
                offset: entry.chunk_offset(i),
                reason: "stored as all-zero (no payload bytes) but the block index has non-zero blocks in it".into(),
            });
        }
    }
    Ok(())
}

fn pop(pool: &Pool) -> Option<Vec<u8>> {
    pool.lock().ok().and_then(|mut p| p.pop())
}

fn push(pool: &Pool, buf: Vec<u8>) {
    if let Ok(mut p) = pool.lock() {
        p.push(buf);
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
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
