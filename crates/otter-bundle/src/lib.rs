//! Otter update bundles (`.otb`): create, sign, open, verify and stream-install into an A/B slot.
//!
//! A bundle is a small header (magic, version, JSON manifest, Ed25519 signatures) followed by a
//! payload of zstd frames, one per non-zero chunk of each image. The manifest lists every chunk's
//! SHA-256, so after the signature check each chunk is verified before it is written. The format
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
mod error;
pub mod format;
mod install;
pub mod keys;
pub mod manifest;
mod reader;
mod source;
mod stream;

/// Version of the binary format written and read by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Default raw chunk size: large enough for good compression and few manifest entries, small
/// enough that a bit flip costs little to re-fetch and memory stays tiny.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

pub use check::PayloadReport;
pub use create::{CreateOptions, DEFAULT_ZSTD_LEVEL, create_bundle};
pub use error::{Error, Result};
pub use format::SignatureEntry;
pub use install::{
    InstallOptions, InstallReport, Progress, ReadBack, sha256_file_prefix, target_capacity,
};
pub use keys::{PublicKey, SigningKey, generate_keypair, load_trusted_keys};
pub use manifest::{Chunk, ImageEntry, Manifest};
pub use reader::{BundleReader, InstallPolicy, VerifiedBundle};
pub use source::{HTTP_MAX_RETRIES, PROGRESS_RESETS_RETRIES};

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
