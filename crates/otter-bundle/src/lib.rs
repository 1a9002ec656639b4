//! Otter update bundles (`.otb`): create, sign, open, verify and stream-install into an A/B slot.
//!
//! A bundle is a small header (magic, version, JSON manifest, Ed25519 signatures) followed by a
//! payload: per image a block index (a 16-byte hash of every 4 KiB block, hashed in the signed
//! manifest), then zstd frames, one per non-zero chunk (a run of blocks, 64 KiB by default). After
//! the signature check every block is verified against the index before it is written. A device
//! that has an older release in its active slot reuses the blocks it already has and fetches only
//! the chunks it lacks, with HTTP range requests. A bundle may also carry patch sets against
//! named older images ([`patch`]), used only by devices running exactly one of them. The format
//! is documented byte by byte in `docs/bundle-format.md`.
//!
//! ```no_run
//! # fn main() -> otter_bundle::Result<()> {
//! use otter_bundle::*;
//! use std::path::Path;
//! let trusted = load_trusted_keys(Path::new("/usr/lib/otter/keys"))?;
//! let mut bundle = BundleReader::open("https://updates.example.com/os-1.2.0.otb")?.verify(&trusted)?;
//! bundle.check_policy(&InstallPolicy {
//!     compatible: "acme-gw".into(),
//!     running_version: Some("1.1.0".into()),
//!     allow_downgrade: false,
//! })?;
//! let report = bundle.install_image("rootfs", Path::new("/dev/disk/by-partlabel/otter-root-b"), &mut |p| {
//!     eprintln!("{}/{}", p.done_bytes, p.total_bytes);
//! })?;
//! # let _ = report; Ok(()) }
//! ```

mod check;
mod create;
pub mod delta;
mod error;
pub mod format;
pub mod index;
mod install;
pub mod keys;
pub mod manifest;
pub mod patch;
mod reader;
mod source;
mod stream;

/// Version of the binary format written and read by this crate.
pub const FORMAT_VERSION: u32 = 2;
/// Default raw chunk size, i.e. the unit of compression and of download. Chosen by measurement
/// (docs/bundle-format.md, "Choosing the chunk size"): small enough that a delta fetches little
/// beyond the blocks it lacks, large enough that zstd still compresses well.
pub const DEFAULT_CHUNK_SIZE: u32 = 16 * 1024;

pub use check::PayloadReport;
pub use create::{
    CreateOptions, DEFAULT_ZSTD_LEVEL, analyse_image, create_bundle, create_bundle_with_patches,
};
pub use delta::{
    ChunkSource, DEFAULT_MAX_GAP, DeltaPlan, DiffReport, FetchRange, coalesce, diff, plan_delta,
    range_bytes,
};
pub use error::{Error, Result};
pub use format::SignatureEntry;
pub use index::{
    BLOCK_SIZE, BlockHash, BlockIndex, HASH_LEN, SavedIndex, SeedMap, SlotIdentity, ZERO_HASH,
    block_hash, index_slot,
};
pub use install::{
    InstallOptions, InstallReport, Progress, ReadBack, Seed, SeedIndexSource, Stage,
    sha256_file_prefix, target_capacity,
};
pub use keys::{PublicKey, SigningKey, generate_keypair, load_trusted_keys};
pub use manifest::{ImageEntry, IndexRef, Manifest};
pub use patch::{PatchSet, PatchedDiff, patched_diff};
pub use reader::{BundleReader, InstallPolicy, VerifiedBundle};
pub use source::{HTTP_MAX_RETRIES, OpenOptions, PROGRESS_RESETS_RETRIES};

#[cfg(test)]
mod tests {
    /// otterd runs installs on a worker thread and reports progress from another.
    #[test]
    fn bundles_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<crate::BundleReader>();
        assert_send::<crate::VerifiedBundle>();
        assert_send::<crate::Error>();
    }
}
