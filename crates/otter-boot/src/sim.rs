//! A byte-level model of what the generated `grub.cfg` does with the two state files.
//!
//! The power-cut tests run it against every torn write, and the `grub-emu` test checks it
//! against real GRUB.

use crate::envblock::{grub_envblk_set, grub_read_vars};
use crate::state::{BootState, Slot, SlotState};

/// Where the GRUB script took the state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrubSource {
    Primary,
    Backup,
    /// Both copies invalid: boot A, then B, and write nothing.
    BuiltinDefault,
}

/// One of the two state files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvFile {
    Primary,
    Backup,
}

/// What one GRUB run decides and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubRun {
    pub source: GrubSource,
    /// The state after GRUB's decrement (what it saved), or the built-in default.
    pub state: BootState,
    /// Slot booted and whether as a trial (`otter.try=1`), assuming its kernel loads.
    pub boot: (Slot, bool),
    /// Files GRUB rewrites, in order, with their complete new content.
    pub writes: Vec<(EnvFile, Vec<u8>)>,
}

/// The state GRUB uses when neither file is valid.
pub fn builtin_default() -> BootState {
    BootState {
        order: [Slot::A, Slot::B],
        a: SlotState {
            good: true,
            tries: 0,
        },
        b: SlotState {
            good: true,
            tries: 0,
        },
    }
}

fn grub_load(file: Option<&[u8]>) -> Option<BootState> {
    let vars = grub_read_vars(file?)?;
    BootState::from_vars(&vars).ok()
}

/// Runs the GRUB script's logic on the current file contents (`None` = missing file).
pub fn grub_run(primary: Option<&[u8]>, backup: Option<&[u8]>) -> GrubRun {
    let (source, mut state) = match (grub_load(primary), grub_load(backup)) {
        (Some(s), _) => (GrubSource::Primary, s),
        (None, Some(s)) => (GrubSource::Backup, s),
        (None, None) => (GrubSource::BuiltinDefault, builtin_default()),
    };
    let boot = state.grub_boot_step().unwrap_or((state.order[0], false));
    let mut writes = Vec::new();
    if boot.1 && source != GrubSource::BuiltinDefault {
        let (name, value) = match boot.0 {
            Slot::A => ("A_TRY", state.a.tries),
            Slot::B => ("B_TRY", state.b.tries),
        };
        let value = value.to_string();
        let save = |file: Option<&[u8]>, vars: &[(&str, &str)]| -> Option<Vec<u8>> {
            let mut block = file?.to_vec();
            // save_env re-reads the file and needs a valid header, else it fails and writes nothing.
            grub_read_vars(&block)?;
            for (n, v) in vars {
                if !grub_envblk_set(&mut block, n, v) {
                    return None;
                }
            }
            Some(block)
        };
        match source {
            GrubSource::Primary => {
                if let Some(b) = save(primary, &[(name, &value)]) {
                    writes.push((EnvFile::Primary, b));
                }
                let all = state.to_vars();
                if let Some(b) = save(backup, &all) {
                    writes.push((EnvFile::Backup, b));
                }
            }
            GrubSource::Backup => {
                if let Some(b) = save(backup, &[(name, &value)]) {
                    writes.push((EnvFile::Backup, b));
                }
            }
            GrubSource::BuiltinDefault => {}
        }
    }
    GrubRun {
        source,
        state,
        boot,
        writes,
    }
}
