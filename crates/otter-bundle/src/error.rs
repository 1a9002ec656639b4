//! One error type for the crate. Every message names the thing it concerns (file, URL, chunk index,
//! offset) and ends with a hint of what to do, because these errors end up in an operator's terminal or
//! in a device report read by someone who cannot attach a debugger.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "key file {} already exists; refusing to overwrite it (hint: pick another key name, or move the old key away deliberately)",
        .0.display()
    )]
    KeyExists(PathBuf),

    #[error(
        "cannot read key {}: {reason} (hint: secret keys are PKCS#8 PEM '-----BEGIN PRIVATE KEY-----', public keys SPKI PEM '-----BEGIN PUBLIC KEY-----', as written by `otter keys generate`)",
        path.display()
    )]
    KeyParse { path: PathBuf, reason: String },

    #[error(
        "no trusted public keys (*.pub) found in {} (hint: the image must ship at least one release public key there, or no bundle can ever be installed)",
        .0.display()
    )]
    NoTrustedKeys(PathBuf),

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error(
        "invalid version {value:?}: {reason} (hint: versions are semantic versions such as 1.4.0 or 2.0.0-rc.1)"
    )]
    InvalidVersion { value: String, reason: String },

    #[error("invalid bundle options: {0}")]
    InvalidOptions(String),

    #[error(
        "SOURCE_DATE_EPOCH={0:?} is not a number of seconds since 1970 (hint: unset it or set it to e.g. `git log -1 --format=%ct`)"
    )]
    SourceDateEpoch(String),

    #[error(
        "{source_name} is not an Otter bundle: bad magic (hint: is this the .otb file, and not an image or an HTML error page?)"
    )]
    BadMagic { source_name: String },

    #[error(
        "{source_name} uses bundle format version {version}, this build reads only version {supported} (hint: update otter/otterd first, or build the bundle with a matching otter)"
    )]
    UnsupportedFormat {
        source_name: String,
        version: u32,
        supported: u32,
    },

    #[error("bundle {source_name} is corrupt: {reason} (hint: copy or download the bundle again)")]
    Corrupt { source_name: String, reason: String },

    /// A patch set (for a device on release `from`) could not be used; install falls back to
    /// block reuse and fetching.
    #[error("patch from release {from} is unusable: {reason}")]
    PatchInvalid { from: String, reason: String },

    #[error(
        "bundle truncated: expected {expected} payload bytes, got {got} ({source_name}; hint: the copy or download is incomplete, fetch the bundle again)"
    )]
    Truncated {
        source_name: String,
        expected: u64,
        got: u64,
    },

    #[error(
        "bundle {source_name} has no signature; unsigned bundles are never installed (hint: sign it with `otter bundle create --key <release.key>`)"
    )]
    Unsigned { source_name: String },

    #[error(
        "bundle {source_name} is signed only by untrusted keys (fingerprints: {}) (hint: sign with a release key the device trusts, or add that public key to the image's trusted keys)",
        fingerprints.join(", ")
    )]
    UntrustedSigners {
        source_name: String,
        fingerprints: Vec<String>,
    },

    #[error(
        "bundle {source_name}: signature by trusted key {fingerprint} is INVALID: the manifest was modified after signing or the bundle is corrupt (hint: do not install it; fetch the bundle again from a trusted source)"
    )]
    InvalidSignature {
        source_name: String,
        fingerprint: String,
    },

    #[error(
        "bundle is for {bundle:?} but this device is {device:?} (hint: build the bundle for this board/product, compatible strings must match exactly)"
    )]
    Incompatible { bundle: String, device: String },

    #[error(
        "bundle version {bundle} is older than the running version {running}; downgrade refused (hint: allow downgrades explicitly if this is intended)"
    )]
    Downgrade { bundle: String, running: String },

    #[error("bundle has no image {name:?} (it has: {}) (hint: check the image name)", available.join(", "))]
    ImageNotFound {
        name: String,
        available: Vec<String>,
    },

    #[error(
        "target {} is a {kind}, not a block device or regular file (hint: pass the slot's partition, e.g. /dev/disk/by-partlabel/otter-root-b)",
        target.display()
    )]
    TargetKind { target: PathBuf, kind: &'static str },

    #[error(
        "image {image:?} is {image_size} bytes but target {} holds only {capacity} bytes; nothing was written (hint: the slot partition is too small for this image: grow the partition layout or shrink the image)",
        target.display()
    )]
    TargetTooSmall {
        image: String,
        target: PathBuf,
        image_size: u64,
        capacity: u64,
    },

    #[error(
        "image {image:?} chunk {index} (image offset {offset}) failed verification: {reason} (hint: the bundle is corrupt or was tampered with; fetch the bundle again; if an install was running, the slot may be partly written and must not be booted)"
    )]
    ChunkInvalid {
        image: String,
        index: u64,
        /// Byte offset of the chunk in the raw image, which is also its offset in the slot.
        offset: u64,
        reason: String,
    },

    #[error(
        "image {image:?}: block index failed verification: {reason} (hint: the bundle is corrupt or was tampered with; fetch the bundle again)"
    )]
    IndexInvalid { image: String, reason: String },

    #[error(
        "bundle {source_name}: image {image:?} has sha256 {got}, but the manifest says {expected}, although every chunk matched its own hash (hint: the signed manifest is inconsistent: the bundle was built wrongly or altered before signing; do not install it, rebuild it)"
    )]
    ImageHashMismatch {
        source_name: String,
        image: String,
        got: String,
        expected: String,
    },

    #[error(
        "read-back of {} does not match image {image:?}: {} (hint: the storage returned different data than written; the slot must not be booted; retry, and suspect the storage if it repeats)",
        target.display(),
        match chunk { Some(i) => format!("chunk {i} differs"), None => "whole image sha256 differs".to_string() }
    )]
    ReadBackMismatch {
        image: String,
        target: PathBuf,
        chunk: Option<u64>,
    },

    #[error(
        "cannot read bundle {source_name} at byte offset {offset}: {source} (hint: check the file or the storage it is on)"
    )]
    SourceRead {
        source_name: String,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error(
        "HTTP download of {url} failed at byte offset {offset}: {reason} (hint: check the network and that the server serves this file with range requests; the install can be retried)"
    )]
    Http {
        url: String,
        offset: u64,
        reason: String,
    },

    #[error(
        "cannot write target {} at byte offset {offset}: {source} (hint: check that the slot partition exists and is not in use or read-only)",
        target.display()
    )]
    Write {
        target: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("cannot encode manifest: {0}")]
    ManifestEncode(#[source] serde_json::Error),

    #[error("internal error: {0} (hint: this is a bug in otter-bundle, please report it)")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Wraps the error so it can travel through `std::io::Read`; [`Error::from_io`] unwraps it again.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// Recovers an [`Error`] that was carried inside an `io::Error`, if there is one.
    pub(crate) fn from_io(e: io::Error) -> std::result::Result<Error, io::Error> {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match e.into_inner().map(|b| b.downcast::<Error>()) {
                Some(Ok(err)) => Ok(*err),
                // Unreachable by the check above; keep a lossless fallback anyway.
                Some(Err(other)) => Err(io::Error::other(other)),
                None => Err(io::Error::other("unknown error")),
            }
        } else {
            Err(e)
        }
    }
}
