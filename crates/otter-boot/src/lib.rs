//! Otter boot slot state for GRUB: which slot boots, trial boots with a try counter, commit,
//! rollback.
//!
//! - [`BootState`]: the A/B state and its transitions; [`BootState::next_boot`] models the GRUB
//!   script.
//! - [`GrubEnvStore`]: power-cut safe load/store of the state in two GRUB environment blocks on
//!   the boot partition (`otter/grubenv`, `otter/grubenv.bak`).
//! - [`BootBackend`]: the seam the device agent uses (load, store, booted slot);
//!   [`backend::open`] picks the implementation from the board's boot loader.
//! - [`grub_cfg`]: the GRUB script that reads the state, counts trial boots down and boots a slot.
//! - [`build_grub_efi`]: the GRUB EFI binary that runs it.
//!
//! The design and the power-cut argument are in `docs/boot-slots.md`.

pub mod backend;
mod envblock;
mod error;
mod grub_backend;
mod grubcfg;
mod image;
pub mod sim;
mod state;
mod store;

pub use backend::{BackendPaths, BootBackend};
pub use envblock::{ENV_BLOCK_HEADER, ENV_BLOCK_SIZE, env_block_decode, env_block_encode};
pub use error::{BootError, Result};
pub use grub_backend::GrubBackend;
pub use grubcfg::{
    CONSOLE_ARM64, CONSOLE_X86_64, GrubConfig, SLOT_BOOTENV_PATH, SLOT_CMDLINE_VAR, grub_cfg,
    kernel_args, parse_slot_bootenv, slot_bootenv,
};
pub use image::{
    GRUB_MODULES, GRUB_PREFIX, build_grub_efi, efi_binary_name, efi_boot_path, grub_modules,
};
pub use state::{BootState, MAX_TRIES, STATE_VARS, Slot, SlotState, parse_booted_slot};
pub use store::{BACKUP_FILE, Fault, GrubEnvStore, LoadSource, PRIMARY_FILE, STATE_DIR};
