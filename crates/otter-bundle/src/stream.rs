//! The chunk pipeline shared by install and [`crate::VerifiedBundle::check_payload`]: it reads an
//! image's compressed chunks from the bundle, checks each one against the signed manifest, and
//! hands the verified raw bytes to a sink in manifest order.
//!
//! Threads:
//! - A reader thread fetches the image's payload range sequentially, so an HTTP source needs a
//!   single ranged GET (plus resumes, see [`crate::source`]).
//! - Worker threads decompress each chunk into a buffer capped at `chunk_size`, then check its
//!   length and SHA-256.
//! - The calling thread runs the sink (write to the slot, or hash the whole image).
//!
//! For every chunk the reader queues a one-shot result slot, in manifest order, before it hands
//! the chunk to a worker. The calling thread waits on the slots in that order. So chunks reach the
//! sink in order, and the first error in manifest order is the one reported. All queues are
//! bounded, so only a few chunks are in memory at a time whatever the image size.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::ImageEntry;
use crate::reader::BundleReader;

/// One chunk whose raw bytes matched the manifest's size and SHA-256.
pub(crate) struct VerifiedChunk<'a> {
    /// Index of the chunk in the image.
    pub index: usize,
    /// The raw bytes (zeros for a zero chunk).
    pub data: &'a [u8],
    /// Payload bytes read from the bundle so far. The reader may be a few chunks ahead of `index`.
    pub fetched: u64,
}

enum Decoded {
    Data(Vec<u8>),
    Zero,
}

/// Where the result for one chunk arrives; queued in manifest order.
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
    /// Reused buffers for raw and compressed chunks.
    raw_pool: Pool,
    compressed_pool: Pool,
}

/// Streams image `entry` of `reader`: every chunk is read from the payload, decompressed and
/// checked against the manifest, then passed to `sink` on the calling thread, in manifest order.
/// Zero chunks are passed as zeros. They are not checked here: callers check them up front with
/// [`check_zero_chunks`].
///
/// Stops at the first error, in manifest order: a chunk that fails its checks ([`Error::ChunkInvalid`]),
/// a read error, or an error from `sink`. Returns the payload bytes fetched.
pub(crate) fn stream_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    sink: &mut dyn FnMut(VerifiedChunk<'_>) -> Result<()>,
) -> Result<u64> {
    let base = reader.payload_offset();
    let stream = reader
        .source
        .range_reader(base + entry.payload_start(), base + entry.payload_end())?;

    let chunk_size = entry.chunk_size as usize;
    // Bounded queues keep a handful of chunks in flight whatever the chunk size (≤ ~16 MiB for
    // the default sizes).
    let depth = (16 * 1024 * 1024 / chunk_size).clamp(1, 4);
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    // Chunks read ahead of the sink: enough to keep every worker busy.
    let lookahead = depth.max(workers);

    let shared = Shared::default();
    let zeros = if entry.zero_chunks() > 0 {
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
        let reader_thread =
            s.spawn(move || read_chunks(reader, entry, stream, &slot_tx, &job_tx, shared));
        let worker_threads: Vec<_> = (0..workers)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                s.spawn(move || decode_chunks(entry, &job_rx, shared))
            })
            .collect();
        drop(job_rx);

        // Takes `slot_rx` and drops it on return, so a reader still running stops at its next chunk.
        let result = deliver(entry, slot_rx, &zeros, shared, sink);
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
        result.map(|()| shared.fetched.load(Ordering::Relaxed))
    })
}

/// Calling thread: waits for each chunk's result in manifest order and passes it to `sink`.
fn deliver(
    entry: &ImageEntry,
    slots: Receiver<Slot>,
    zeros: &[u8],
    shared: &Shared,
    sink: &mut dyn FnMut(VerifiedChunk<'_>) -> Result<()>,
) -> Result<()> {
    for (index, c) in entry.chunks.iter().enumerate() {
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
            Decoded::Zero => &zeros[..c.size as usize],
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

/// Reader thread: queues a result slot per chunk, in order, and hands stored chunks to the
/// workers. A read error is delivered in the slot of the chunk it hit, and ends the thread.
fn read_chunks(
    reader: &BundleReader,
    entry: &ImageEntry,
    mut stream: Box<dyn Read + Send>,
    slots: &SyncSender<Slot>,
    jobs: &SyncSender<Job>,
    shared: &Shared,
) {
    let payload_size = reader.manifest().payload_size();
    let base = reader.payload_offset();
    let source_name = reader.source_name();
    let image_start = entry.payload_start();
    let mut consumed = 0u64;
    for (index, c) in entry.chunks.iter().enumerate() {
        if shared.abort.load(Ordering::Relaxed) {
            return;
        }
        let (done, slot) = sync_channel(1);
        if slots.send(slot).is_err() {
            return; // the sink stopped; it reports why
        }
        if c.is_zero() {
            // Capacity 1 and a single send: never blocks.
            let _ = done.send(Ok(Decoded::Zero));
            continue;
        }
        let mut buf = pop(&shared.compressed_pool).unwrap_or_default();
        buf.resize(c.csize as usize, 0);
        let failed = match read_full(&mut stream, &mut buf) {
            Ok(n) if n == buf.len() => None,
            Ok(n) => Some(Error::Truncated {
                source_name: source_name.clone(),
                expected: payload_size,
                got: image_start + consumed + n as u64,
            }),
            Err(e) => Some(match Error::from_io(e) {
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
            }),
        };
        if let Some(e) = failed {
            let _ = done.send(Err(e));
            return;
        }
        consumed += c.csize;
        shared.fetched.fetch_add(c.csize, Ordering::Relaxed);
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
fn decode_chunks(entry: &ImageEntry, jobs: &Mutex<Receiver<Job>>, shared: &Shared) {
    // A worker that cannot get a decompressor still answers every job, with the error, so the
    // pipeline never waits for it.
    let mut dec = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd init: {e}"));
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            index,
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
            Ok(dec) => decode_chunk(dec, entry, index, &compressed, &mut raw),
            Err(e) => Err(Error::Internal(e.clone())),
        };
        push(&shared.compressed_pool, compressed);
        // Capacity 1 and a single send: never blocks. A closed slot means the sink stopped.
        let _ = done.send(checked.map(|()| Decoded::Data(raw)));
    }
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

/// A zero chunk has no payload bytes, so nothing in the stream checks it: its hash must be that
/// of `size` zeros. Checked up front, before anything is written.
pub(crate) fn check_zero_chunks(entry: &ImageEntry) -> Result<()> {
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

fn pop(pool: &Pool) -> Option<Vec<u8>> {
    pool.lock().ok().and_then(|mut p| p.pop())
}

fn push(pool: &Pool, buf: Vec<u8>) {
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
