//! Shared helpers for the integration tests: generated images, keys, slots, a tiny HTTP server.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use otter_bundle::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

pub const COMPAT: &str = "test-board";

pub fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic image of `size` bytes: random, zero and compressible regions, with at least one
/// long zero run so zero chunks exist at any chunk size used in tests.
pub fn image_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let len = rng.gen_range(1..200_000).min(size - pos);
        let region = &mut data[pos..pos + len];
        match rng.gen_range(0..3) {
            0 => rng.fill(region),
            1 => {} // zeros
            _ => {
                let words = [
                    &b"otter "[..],
                    b"bundle ",
                    b"rootfs ",
                    b"\x00\x01\x02",
                    b"ext4 ",
                ];
                let mut i = 0;
                while i < region.len() {
                    let w = words[rng.gen_range(0..words.len())];
                    let n = w.len().min(region.len() - i);
                    region[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
        }
        pos += len;
    }
    let z = size / 3;
    let zl = (600_000).min(size - z);
    data[z..z + zl].fill(0);
    // Never end on a zero byte by accident of the generator, and start with data.
    data[0] = 0x42;
    if let Some(last) = data.last_mut() {
        *last = 0x17;
    }
    data
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub keys_dir: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (sk, _pk) = generate_keypair(&keys_dir, "release").unwrap();
        let key = SigningKey::load(&sk).unwrap();
        Fixture { dir, key, keys_dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn trusted(&self) -> Vec<PublicKey> {
        load_trusted_keys(&self.keys_dir).unwrap()
    }

    pub fn write_image(&self, name: &str, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let p = self.path(name);
        let data = image_bytes(size, seed);
        fs::write(&p, &data).unwrap();
        (p, data)
    }

    pub fn bundle(
        &self,
        name: &str,
        image: &Path,
        version: &str,
        chunk_size: u32,
    ) -> (PathBuf, Manifest) {
        let out = self.path(name);
        let opts = CreateOptions {
            compatible: COMPAT.into(),
            version: version.into(),
            chunk_size,
            zstd_level: 3,
        };
        let m = create_bundle(&out, &[("rootfs", image)], &opts, &[&self.key]).unwrap();
        (out, m)
    }

    /// A slot of `size` bytes filled with a non-zero pattern standing for the old OS.
    pub fn slot(&self, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
        let p = self.path(name);
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8 | 0x80).collect();
        fs::write(&p, &data).unwrap();
        (p, data)
    }
}

pub fn policy(version: Option<&str>) -> InstallPolicy {
    InstallPolicy {
        compatible: COMPAT.into(),
        running_version: version.map(Into::into),
        allow_downgrade: false,
    }
}

pub fn assert_untouched(path: &Path, original: &[u8]) {
    let now = fs::read(path).unwrap();
    assert_eq!(now.len(), original.len(), "target size changed");
    assert!(now == original, "target {} was modified", path.display());
}

/// Opens, verifies and installs; returns the install result.
pub fn install(bundle: &str, trusted: &[PublicKey], target: &Path) -> Result<InstallReport> {
    let mut v = BundleReader::open(bundle)?.verify(trusted)?;
    v.check_policy(&policy(None))?;
    v.install_image("rootfs", target, &mut |_| {})
}

// ---------------------------------------------------------------------------------------------
// Test HTTP server (std::net only), serving one file with Range support and scripted failures.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMode {
    Never,
    /// Close the connection after K body bytes on the first request whose range starts at or after
    /// `payload_from`.
    FirstPayloadRequest,
    /// Same, on every such request.
    EveryPayloadRequest,
    /// On the very first request (the header fetch).
    FirstRequest,
}

#[derive(Clone, Debug)]
pub struct Behaviour {
    pub drop: DropMode,
    pub drop_after: usize,
    pub payload_from: u64,
    /// Answer 200 with the whole file, as a server without Range support does.
    pub ignore_range: bool,
    /// Answer every request with 404.
    pub not_found: bool,
    /// With this seed, close about half of the requests at or after `payload_from` after a
    /// pseudo-random number of body bytes (at least one, so every retry makes progress).
    pub drop_random: Option<u64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            drop: DropMode::Never,
            drop_after: 0,
            payload_from: 0,
            ignore_range: false,
            not_found: false,
            drop_random: None,
        }
    }
}

/// (range start, range end inclusive) of each request, in order.
pub type RequestLog = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

pub struct TestServer {
    pub url: String,
    /// (range start, range end inclusive) requested, in order.
    pub requests: RequestLog,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(body: Vec<u8>, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/bundle.otb", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let body = Arc::new(body);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let handle = thread::spawn(move || {
            // Bounded: the server stops by itself after a minute even if the test forgets it.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut count = 0usize;
            let mut payload_count = 0usize;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = serve(
                            stream,
                            &body,
                            &behaviour,
                            &requests2,
                            &mut count,
                            &mut payload_count,
                        );
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TestServer {
            url,
            requests,
            stop,
            handle: Some(handle),
        }
    }

    pub fn requests(&self) -> Vec<(u64, Option<u64>)> {
        self.requests.lock().unwrap().clone()
    }
}

impl std::ops::Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A well-mixed 64-bit function of `x` (SplitMix64's finaliser).
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `n` blocks of 4 KiB, each distinct random data (from `seed`), except blocks listed in
/// `zeros`, which are all zero.
pub fn random_blocks(n: usize, seed: u64, zeros: std::ops::Range<usize>) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n * 4096];
    for (i, b) in v.chunks_mut(4096).enumerate() {
        if !zeros.contains(&i) {
            rng.fill(b);
        }
    }
    v
}

fn serve(
    mut stream: TcpStream,
    body: &[u8],
    b: &Behaviour,
    requests: &Mutex<Vec<(u64, Option<u64>)>>,
    count: &mut usize,
    payload_count: &mut usize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range: Option<(u64, Option<u64>)> = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if first {
            first = false;
            continue;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
            && let Some((s, e)) = v.trim().trim_start_matches("bytes=").split_once('-')
        {
            range = Some((s.parse().unwrap_or(0), e.parse().ok()));
        }
    }
    let len = body.len() as u64;
    let (start, end_incl) = range.unwrap_or((0, None));
    requests.lock().unwrap().push((start, end_incl));
    let this = *count;
    *count += 1;
    let is_payload = start >= b.payload_from && range.is_some();
    let payload_idx = *payload_count;
    if is_payload {
        *payload_count += 1;
    }
    let drop_now = match b.drop {
        DropMode::Never => false,
        DropMode::FirstRequest => this == 0,
        DropMode::FirstPayloadRequest => is_payload && payload_idx == 0,
        DropMode::EveryPayloadRequest => is_payload,
    };

    if b.not_found {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let (status, from, to) = if b.ignore_range || range.is_none() {
        ("200 OK", 0, len)
    } else if start >= len {
        let msg = format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(msg.as_bytes())?;
        return Ok(());
    } else {
        let to = end_incl.map_or(len, |e| (e + 1).min(len));
        ("206 Partial Content", start, to)
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        to - from
    );
    if status.starts_with("206") {
        head.push_str(&format!("Content-Range: bytes {from}-{}/{len}\r\n", to - 1));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut send_to = to;
    if let Some(seed) = b.drop_random
        && is_payload
        && to - from > 1
    {
        let r = splitmix(seed ^ (this as u64).wrapping_mul(0x9E37_79B9));
        if r.is_multiple_of(2) {
            send_to = from + 1 + (r >> 8) % (to - from - 1);
        }
    }
    if drop_now {
        // K bytes past the requested start, also when the whole file is sent.
        send_to = (start + b.drop_after as u64).clamp(from, to);
    }
    stream.write_all(&body[from as usize..send_to as usize])?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Taking bundles apart, for tests that corrupt or re-sign them.

/// Where the payload starts in bundle `bytes`.
pub fn payload_offset(bytes: &[u8]) -> usize {
    let m = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let n = u32::from_le_bytes(bytes[16 + m..20 + m].try_into().unwrap()) as usize;
    20 + m + 96 * n
}

/// The parsed manifest of bundle `bytes`.
pub fn manifest_of(bytes: &[u8]) -> Manifest {
    let m = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[16..16 + m]).unwrap()
}

/// (start, length) in the bundle file of the frame of chunk `k` of image `img`.
pub fn chunk_frame(bytes: &[u8], img: usize, k: usize) -> (usize, usize) {
    let m = manifest_of(bytes);
    let offsets = m.images[img].chunk_payload_offsets();
    (
        payload_offset(bytes) + offsets[k] as usize,
        (offsets[k + 1] - offsets[k]) as usize,
    )
}

/// A stored chunk near the middle of image 0, with a frame longer than 64 bytes.
pub fn middle_stored_chunk(m: &Manifest) -> usize {
    let chunks = &m.images[0].chunks;
    (chunks.len() / 2..chunks.len())
        .chain(0..chunks.len())
        .find(|&i| chunks[i] > 64)
        .unwrap()
}

/// The raw block index of image 0 of bundle `bytes`.
pub fn raw_index(bytes: &[u8]) -> Vec<u8> {
    let m = manifest_of(bytes);
    let ix = &m.images[0].index;
    let at = payload_offset(bytes) + ix.offset as usize;
    zstd::bulk::decompress(&bytes[at..at + ix.csize as usize], ix.size as usize).unwrap()
}

/// Bundle `bytes` (one image) with its block index replaced by `edit(raw index)` and its
/// manifest edited by `edit_manifest` after the index fields were updated, signed by `key`: a
/// validly signed bundle whose hashes say what the test wants.
pub fn with_edited_index(
    bytes: &[u8],
    key: &SigningKey,
    edit: impl FnOnce(&mut Vec<u8>),
    edit_manifest: impl FnOnce(&mut Manifest),
) -> Vec<u8> {
    let mut m = manifest_of(bytes);
    assert_eq!(m.images.len(), 1);
    let p = payload_offset(bytes);
    let old_csize = m.images[0].index.csize as usize;
    let mut raw = raw_index(bytes);
    edit(&mut raw);
    let frame = zstd::bulk::compress(&raw, 3).unwrap();
    let img = &mut m.images[0];
    img.index.csize = frame.len() as u64;
    img.index.sha256 = sha_hex(&raw);
    img.chunks_offset = frame.len() as u64;
    edit_manifest(&mut m);
    let json = serde_json::to_vec(&m).unwrap();
    let mut out = format::encode_header(&json, &[key.sign_manifest(&json)]).unwrap();
    out.extend_from_slice(&frame);
    out.extend_from_slice(&bytes[p + old_csize..]);
    out
}
