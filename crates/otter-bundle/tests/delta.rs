//! Delta installs: a device reuses the blocks of its active slot (the seed) and fetches only the
//! chunks it lacks. The old and new images are made of distinct random 4 KiB blocks, so which
//! chunks must be fetched is known exactly.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use otter_bundle::*;

const CHUNK: u32 = 16 * 1024;
const PER: usize = (CHUNK / 4096) as usize;
const OLD_BLOCKS: usize = 600;

struct Case {
    f: Fixture,
    old: Vec<u8>,
    new: Vec<u8>,
    /// The active slot, holding the old image (and junk after it).
    seed: PathBuf,
    bundle: PathBuf,
    manifest: Manifest,
    /// Chunks of the new image holding a block the old one lacks.
    new_chunks: Vec<usize>,
}

fn block(data: &[u8], i: usize) -> &[u8] {
    &data[i * 4096..(i + 1) * 4096]
}

/// NEW = OLD with 7 blocks inserted at block 101 (everything after moves by 7 blocks, which is
/// not a whole chunk), 20 blocks removed at block 300, block 450 changed, and 3 blocks appended.
fn case() -> Case {
    let f = Fixture::new();
    let old = random_blocks(OLD_BLOCKS, 1, 200..260);
    let fresh = random_blocks(11, 2, 0..0);
    let mut new = Vec::new();
    new.extend_from_slice(&old[..101 * 4096]);
    new.extend_from_slice(&fresh[..7 * 4096]);
    new.extend_from_slice(&old[101 * 4096..300 * 4096]);
    new.extend_from_slice(&old[320 * 4096..]);
    let changed = 450 + 7 - 20;
    new[changed * 4096 + 100] ^= 0x55;
    new.extend_from_slice(&fresh[8 * 4096..]);
    let old_img = f.path("old.img");
    let new_img = f.path("new.img");
    fs::write(&old_img, &old).unwrap();
    fs::write(&new_img, &new).unwrap();
    let (bundle, manifest) = f.bundle("new.otb", &new_img, "2.0.0", CHUNK);

    // The chunks that hold a block not found anywhere in OLD.
    let old_blocks: std::collections::HashSet<&[u8]> = old.chunks(4096).collect();
    let mut new_chunks: Vec<usize> = (0..new.len() / 4096)
        .filter(|&i| {
            let b = block(&new, i);
            b.iter().any(|&x| x != 0) && !old_blocks.contains(b)
        })
        .map(|i| i / PER)
        .collect();
    new_chunks.dedup();

    let seed = f.path("slot-a");
    let mut slot = old.clone();
    slot.extend_from_slice(&random_blocks(10, 3, 0..0));
    fs::write(&seed, &slot).unwrap();
    Case {
        f,
        old,
        new,
        seed,
        bundle,
        manifest,
        new_chunks,
    }
}

impl Case {
    fn target(&self, name: &str) -> PathBuf {
        self.f.slot(name, self.new.len() + 8192).0
    }

    fn install(
        &self,
        src: &str,
        target: &Path,
        opts: &InstallOptions,
        events: &mut Vec<Progress>,
    ) -> Result<InstallReport> {
        let mut v = BundleReader::open(src)?.verify(&self.f.trusted())?;
        v.install_image_with("rootfs", target, opts, &mut |p| events.push(p))
    }

    fn seed_opts(&self) -> InstallOptions {
        InstallOptions {
            seed: Some(Seed {
                slot: self.seed.clone(),
                saved_index: None,
            }),
            ..Default::default()
        }
    }

    fn assert_installed(&self, target: &Path) {
        let got = fs::read(target).unwrap();
        assert!(
            got[..self.new.len()] == self.new[..],
            "target holds the new image"
        );
    }

    fn fetch_bytes(&self, chunks: &[usize]) -> u64 {
        chunks
            .iter()
            .map(|&i| self.manifest.images[0].chunks[i])
            .sum()
    }
}

#[test]
fn delta_from_seed_with_shifted_inserted_and_removed_data() {
    let c = case();
    assert_eq!(c.new_chunks.len(), 5, "{:?}", c.new_chunks);
    let target = c.target("slot-b");
    let mut events = Vec::new();
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target,
            &c.seed_opts(),
            &mut events,
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(
        r.plan.fetch_list(),
        c.new_chunks,
        "only chunks with new blocks"
    );
    let img = &c.manifest.images[0];
    assert_eq!(
        r.bytes_fetched,
        img.index.csize + c.fetch_bytes(&c.new_chunks),
        "frames of new chunks (4 KiB gaps merged) and the index"
    );
    assert!(r.bytes_fetched * 10 < img.stored_bytes(), "{r:?}");
    assert_eq!(r.fetch_planned, r.bytes_fetched, "the plan was exact");
    assert_eq!(r.seed_mismatches, 0);
    assert!(matches!(
        r.seed_index,
        Some(SeedIndexSource::Scanned { .. })
    ));
    let zero_chunks = img.zero_chunks() as u64;
    assert_eq!(
        r.plan.seed_chunks + r.plan.fetch_chunks + zero_chunks,
        img.chunks.len() as u64
    );
    assert!(r.bytes_reused > 0 && r.bytes_reused.is_multiple_of(4096));

    // The bytes to fetch are known before the first chunk is fetched, and never change.
    let first_fetching = events
        .iter()
        .position(|p| p.stage == Stage::Fetching)
        .unwrap();
    assert_eq!(events[first_fetching].fetch_total, r.bytes_fetched);
    assert_eq!(events[first_fetching].fetched_bytes, img.index.csize);
    assert!(
        events
            .windows(2)
            .all(|w| w[0].done_bytes <= w[1].done_bytes)
    );
    let last = events.last().unwrap();
    assert_eq!(last.stage, Stage::Verifying);
    assert_eq!(last.verified_bytes, c.new.len() as u64);
    assert_eq!(last.fetched_bytes, r.bytes_fetched);
}

#[test]
fn without_a_seed_everything_is_fetched() {
    let c = case();
    let target = c.target("slot-b");
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target,
            &InstallOptions::default(),
            &mut Vec::new(),
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.bytes_fetched, c.manifest.payload_size());
    assert_eq!(r.bytes_reused, 0);
    assert_eq!(r.seed_index, None);
}

#[test]
fn saved_index_is_used_when_fresh_and_ignored_when_stale() {
    let c = case();
    // Install the OLD image with a saved index, as otterd does, into what becomes the seed.
    let old_img = c.f.path("old.img");
    let (old_bundle, old_m) = c.f.bundle("old.otb", &old_img, "1.0.0", CHUNK);
    let index_file = c.f.path("state/slot-a.index");
    let r = c
        .install(
            old_bundle.to_str().unwrap(),
            &c.seed,
            &InstallOptions {
                save_index: Some(index_file.clone()),
                ..Default::default()
            },
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(r.index_save_error, None);
    let saved = SavedIndex::load(&index_file).unwrap();
    let identity = SlotIdentity {
        version: "1.0.0".into(),
        size: old_m.images[0].size,
        sha256: old_m.images[0].sha256.clone(),
    };
    assert_eq!(saved.identity, identity);
    assert_eq!(
        saved.index,
        index_slot(&c.seed, Some(c.old.len() as u64), &mut |_| {}).unwrap()
    );

    let target = c.target("slot-b");
    let opts = |id: SlotIdentity| InstallOptions {
        seed: Some(Seed {
            slot: c.seed.clone(),
            saved_index: Some((index_file.clone(), id)),
        }),
        ..Default::default()
    };
    let mut events = Vec::new();
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target,
            &opts(identity.clone()),
            &mut events,
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.seed_index, Some(SeedIndexSource::Saved));
    assert_eq!(r.plan.fetch_list(), c.new_chunks);
    assert!(
        events.iter().all(|p| p.seed_indexed_bytes == 0),
        "the slot was not read to index it"
    );

    // The slot holds another version than the index describes: stale, the slot is indexed.
    let stale = SlotIdentity {
        version: "1.0.1".into(),
        ..identity.clone()
    };
    let target2 = c.target("slot-b2");
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target2,
            &opts(stale),
            &mut Vec::new(),
        )
        .unwrap();
    c.assert_installed(&target2);
    match &r.seed_index {
        Some(SeedIndexSource::Scanned { reason }) => {
            assert!(
                reason.contains("stale") && reason.contains("1.0.1"),
                "{reason}"
            )
        }
        other => panic!("expected a scanned seed, got {other:?}"),
    }
    assert_eq!(r.plan.fetch_list(), c.new_chunks);

    // A damaged index file: also indexed from the slot.
    fs::write(&index_file, b"OTTERSIX garbage").unwrap();
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target2,
            &opts(identity),
            &mut Vec::new(),
        )
        .unwrap();
    assert!(
        matches!(&r.seed_index, Some(SeedIndexSource::Scanned { reason }) if reason.contains("damaged")),
        "{:?}",
        r.seed_index
    );
}

#[test]
fn corrupt_seed_block_is_fetched_instead() {
    let c = case();
    // Index the pristine seed, then corrupt one block the new image reuses: the saved index
    // still claims it, so only the re-check before writing can catch it.
    let identity = SlotIdentity {
        version: "1.0.0".into(),
        size: c.old.len() as u64,
        sha256: sha_hex(&c.old),
    };
    let index_file = c.f.path("slot-a.index");
    SavedIndex {
        identity: identity.clone(),
        index: index_slot(&c.seed, Some(c.old.len() as u64), &mut |_| {}).unwrap(),
    }
    .save(&index_file)
    .unwrap();
    let mut seed = fs::read(&c.seed).unwrap();
    // Old block 40 is new block 40 (before the insertion), in chunk 10.
    seed[40 * 4096 + 7] ^= 0xff;
    fs::write(&c.seed, &seed).unwrap();

    let target = c.target("slot-b");
    let opts = InstallOptions {
        seed: Some(Seed {
            slot: c.seed.clone(),
            saved_index: Some((index_file, identity)),
        }),
        ..Default::default()
    };
    let r = c
        .install(c.bundle.to_str().unwrap(), &target, &opts, &mut Vec::new())
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.seed_mismatches, 1);
    let mut expect = c.new_chunks.clone();
    expect.push(10);
    expect.sort();
    let img = &c.manifest.images[0];
    assert_eq!(r.bytes_fetched, img.index.csize + c.fetch_bytes(&expect));
    assert!(r.bytes_fetched > r.fetch_planned);
}

#[test]
fn seed_equal_to_target_is_refused_and_missing_seed_means_full_install() {
    let c = case();
    let target = c.target("slot-b");
    let before = fs::read(&target).unwrap();
    let same = InstallOptions {
        seed: Some(Seed {
            slot: target.clone(),
            saved_index: None,
        }),
        ..Default::default()
    };
    let e = c
        .install(c.bundle.to_str().unwrap(), &target, &same, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("seed"), "{e}");
    assert_untouched(&target, &before);

    let missing = InstallOptions {
        seed: Some(Seed {
            slot: c.f.path("no-such-slot"),
            saved_index: None,
        }),
        ..Default::default()
    };
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target,
            &missing,
            &mut Vec::new(),
        )
        .unwrap();
    c.assert_installed(&target);
    assert!(matches!(
        &r.seed_index,
        Some(SeedIndexSource::Unusable { reason }) if reason.contains("no-such-slot")
    ));
    assert_eq!(r.bytes_fetched, c.manifest.payload_size());
}

// --- Over HTTP. ---

fn payload_start(c: &Case) -> u64 {
    BundleReader::open(c.bundle.to_str().unwrap())
        .unwrap()
        .payload_offset()
}

#[test]
fn http_delta_fetches_only_missing_chunks_with_ranges() {
    let c = case();
    let bytes = fs::read(&c.bundle).unwrap();
    let server = TestServer::start(bytes, Behaviour::default());
    let target = c.target("slot-b");
    let r = c
        .install(&server.url, &target, &c.seed_opts(), &mut Vec::new())
        .unwrap();
    c.assert_installed(&target);
    let p = payload_start(&c);
    let img = &c.manifest.images[0];
    let chunk_reqs: Vec<(u64, Option<u64>)> = server
        .requests()
        .into_iter()
        .filter(|r| r.0 >= p + img.chunks_offset)
        .collect();
    let ranges = coalesce(img, &c.new_chunks, DEFAULT_MAX_GAP);
    assert_eq!(r.requests, ranges.len());
    let expect: Vec<(u64, Option<u64>)> = ranges
        .iter()
        .map(|r| (p + r.start, Some(p + r.end - 1)))
        .collect();
    assert_eq!(chunk_reqs, expect, "one ranged GET per merged range");
    assert!(ranges.len() < c.new_chunks.len(), "some ranges were merged");
    assert_eq!(r.bytes_fetched, img.index.csize + range_bytes(&ranges));
}

#[test]
fn http_server_without_range_support_falls_back_to_one_stream() {
    let c = case();
    let bytes = fs::read(&c.bundle).unwrap();
    let server = TestServer::start(
        bytes,
        Behaviour {
            ignore_range: true,
            ..Default::default()
        },
    );
    let target = c.target("slot-b");
    let r = c
        .install(&server.url, &target, &c.seed_opts(), &mut Vec::new())
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.requests, 1, "all wanted chunks in one stream");
    // Header, block index, then the chunks: each request gets the whole file from byte 0.
    assert_eq!(server.requests().len(), 3, "{:?}", server.requests());
    let img = &c.manifest.images[0];
    let offsets = img.chunk_payload_offsets();
    let (first, last) = (c.new_chunks[0], *c.new_chunks.last().unwrap());
    assert_eq!(
        r.bytes_fetched,
        img.index.csize + offsets[last + 1] - offsets[first],
        "from the first wanted frame to the end of the last"
    );
}

#[test]
fn http_connections_dropped_at_random_offsets_resume_to_the_same_result() {
    let c = case();
    let bytes = fs::read(&c.bundle).unwrap();
    let p = payload_start(&c);
    let mut resumes = 0;
    for seed in 1..=4u64 {
        let server = TestServer::start(
            bytes.clone(),
            Behaviour {
                payload_from: p,
                drop_random: Some(seed),
                ..Default::default()
            },
        );
        let target = c.target(&format!("slot-{seed}"));
        let r = c
            .install(&server.url, &target, &c.seed_opts(), &mut Vec::new())
            .unwrap();
        c.assert_installed(&target);
        let payload_reqs = server.requests().iter().filter(|q| q.0 >= p).count();
        // The index and the ranges, plus the resumes.
        resumes += payload_reqs - (1 + r.requests);
        assert_eq!(r.bytes_fetched, r.fetch_planned, "resumes re-fetch nothing");
    }
    assert!(
        resumes >= 4,
        "connections were dropped and resumed: {resumes}"
    );
}

#[test]
fn http_full_install_with_random_drops_is_identical() {
    let c = case();
    let bytes = fs::read(&c.bundle).unwrap();
    let p = payload_start(&c);
    let server = TestServer::start(
        bytes,
        Behaviour {
            payload_from: p,
            drop_random: Some(99),
            ..Default::default()
        },
    );
    let target = c.target("slot-b");
    let r = c
        .install(
            &server.url,
            &target,
            &InstallOptions::default(),
            &mut Vec::new(),
        )
        .unwrap();
    c.assert_installed(&target);
    assert_eq!(r.bytes_fetched, c.manifest.payload_size());
}

#[test]
fn diff_predicts_what_install_fetches() {
    let c = case();
    let old_index = index_slot(&c.seed, None, &mut |_| {}).unwrap();
    let v = BundleReader::open(c.bundle.to_str().unwrap()).unwrap();
    let new_index = v.read_index("rootfs").unwrap();
    let img = &c.manifest.images[0];
    let d = diff(&old_index, img, &new_index, DEFAULT_MAX_GAP);
    let target = c.target("slot-b");
    let r = c
        .install(
            c.bundle.to_str().unwrap(),
            &target,
            &c.seed_opts(),
            &mut Vec::new(),
        )
        .unwrap();
    assert_eq!(d.download_bytes, r.bytes_fetched);
    assert_eq!(d.requests, r.requests);
    assert_eq!(d.plan, r.plan);

    // analyse_image on the raw new image gives the same figures as the bundle.
    let opts = CreateOptions {
        chunk_size: CHUNK,
        zstd_level: 3,
        ..CreateOptions::new(COMPAT, "2.0.0")
    };
    let (entry, ix) = analyse_image(&c.f.path("new.img"), &opts).unwrap();
    assert_eq!(ix, new_index);
    assert_eq!(entry.chunks, img.chunks);
    let d2 = diff(&old_index, &entry, &ix, DEFAULT_MAX_GAP);
    assert_eq!(d2.download_bytes, d.download_bytes);
}

#[test]
fn image_ending_in_a_short_zero_block_reuses_the_chunk_around_it() {
    let c = case();
    // NEW = the first 50 blocks of OLD and 100 zero bytes: its last chunk is 2 old blocks and a
    // short zero block.
    let mut new = c.old[..50 * 4096].to_vec();
    new.extend_from_slice(&[0u8; 100]);
    let img = c.f.path("short.img");
    fs::write(&img, &new).unwrap();
    let (bundle, m) = c.f.bundle("short.otb", &img, "2.0.0", CHUNK);
    let target = c.target("slot-b");
    let r = c
        .install(
            bundle.to_str().unwrap(),
            &target,
            &c.seed_opts(),
            &mut Vec::new(),
        )
        .unwrap();
    assert!(fs::read(&target).unwrap()[..new.len()] == new[..]);
    assert_eq!(r.plan.fetch_chunks, 0, "{:?}", r.plan);
    assert_eq!(r.bytes_fetched, m.images[0].index.csize);

    // A short block with data is always fetched, with its chunk.
    let mut new = c.old[..50 * 4096].to_vec();
    new.extend_from_slice(&c.old[60 * 4096..60 * 4096 + 100]);
    fs::write(&img, &new).unwrap();
    let (bundle, _) = c.f.bundle("short2.otb", &img, "2.0.1", CHUNK);
    let r = c
        .install(
            bundle.to_str().unwrap(),
            &target,
            &c.seed_opts(),
            &mut Vec::new(),
        )
        .unwrap();
    assert!(fs::read(&target).unwrap()[..new.len()] == new[..]);
    assert_eq!(r.plan.fetch_list(), vec![12]);
}
