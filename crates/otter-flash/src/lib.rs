//! Writing Otter disk images to drives (or files standing in for them).
//!
//! - [`drives`]: the drives of the host from sysfs, and what a target path is;
//! - [`safety`]: refuse a mounted drive, the drive the host runs from, and (unless forced) a
//!   drive that is not removable;
//! - [`write`]: plan the write from the image's block map (or its holes), write only the mapped
//!   ranges, then [`write::verify`] reads them back.
//!
//! Every path below `/proc` and `/sys` is read through a [`drives::HostView`], so tests feed
//! synthetic trees instead of the host's.

pub mod drives;
pub mod safety;
pub mod write;

pub use drives::{Drive, HostView, Target, list_drives, resolve_target};
pub use safety::check_device;
pub use write::{FlashPlan, Progress, Written, find_bmap, verify};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    // Not a `source`: the message already carries the I/O error, and error chains would
    // print it twice.
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    /// A safety rule said no; nothing was written.
    #[error("refusing to flash {target}: {reason}")]
    Refused { target: PathBuf, reason: String },
    /// Reading back found different bytes than were written.
    #[error("verification of {target} failed: {message}")]
    Verify { target: PathBuf, message: String },
    #[error("{0}")]
    Image(String),
}

pub type Result<T, E = FlashError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| FlashError::Io {
            context: context(),
            error,
        })
    }
}

/// Bytes in a human unit ("1.5 GiB"), for messages.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
