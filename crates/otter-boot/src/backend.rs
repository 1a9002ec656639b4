//! The boot-loader seam: what the device agent needs from a boot loader, whichever it is.
//!
//! The agent decides with [`BootState`] (pure) and acts through a [`BootBackend`]: load the
//! state the way the boot loader reads it, store a new one power-cut safe, and tell which slot
//! the running system booted from. [`open`] picks the backend from the board's
//! [`Bootloader`]; a new boot loader is one new file with its backend plus one arm there.

use std::path::{Path, PathBuf};

use otter_config::Bootloader;

use crate::error::Result;
use crate::state::{BootState, Slot};
use crate::store::{Fault, LoadSource};

/// One boot loader's storage of the A/B state, as the running system sees it.
pub trait BootBackend: Send + Sync + std::fmt::Debug {
    /// The state as the boot loader reads it, and which copy it came from.
    /// `BootError::NoValidState` when no copy is valid (the boot loader then boots its default).
    fn load(&self) -> Result<(BootState, LoadSource)>;

    /// Store `s` so that a power cut at any moment leaves the old or the new decision.
    fn store(&self, s: &BootState) -> Result<()>;

    /// Store `s` but stop as `fault` says, a simulated power cut (end-to-end tests only; the
    /// agent reaches this only when built with its `fault-injection` feature).
    fn store_faulted(&self, s: &BootState, fault: Fault) -> Result<()>;

    /// Make every copy hold what [`load`](Self::load) finds (after a torn write).
    fn repair(&self) -> Result<LoadSource>;

    /// The slot the running system booted from, and whether the boot loader marked it a trial
    /// boot.
    fn booted(&self) -> Result<(Slot, bool)>;

    /// Whether the place the state lives in is there (the boot partition is mounted): only then
    /// is a state that fails to load lost, and rewriting it safe.
    fn state_home_present(&self) -> bool;
}

/// Where a backend finds its files on the running system.
#[derive(Debug, Clone)]
pub struct BackendPaths {
    /// The boot loader's state directory on the mounted boot partition (`/boot/efi/otter`).
    pub state_dir: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
}

/// The backend for `bootloader`: the one match a new boot loader adds an arm to.
pub fn open(bootloader: Bootloader, paths: &BackendPaths) -> Box<dyn BootBackend> {
    match bootloader {
        Bootloader::GrubEfi => Box::new(crate::grub_backend::GrubBackend::new(paths)),
    }
}

/// Read the kernel command line at `path` and find the booted slot (`otter.slot=`,
/// `otter.try=`), which every Otter boot script passes.
pub fn booted_from_cmdline(path: &Path) -> Result<(Slot, bool)> {
    let cmdline =
        std::fs::read_to_string(path).map_err(|e| crate::BootError::io("reading", path, e))?;
    crate::state::parse_booted_slot(&cmdline).ok_or_else(|| crate::BootError::NotBootedByOtter {
        path: path.to_path_buf(),
    })
}
