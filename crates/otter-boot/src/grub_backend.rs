//! GRUB on UEFI: the state in two GRUB environment blocks ([`GrubEnvStore`]), the booted slot
//! from the kernel command line the generated `grub.cfg` writes.

use std::path::PathBuf;

use crate::backend::{BackendPaths, BootBackend, booted_from_cmdline};
use crate::error::Result;
use crate::state::{BootState, Slot};
use crate::store::{Fault, GrubEnvStore, LoadSource};

#[derive(Debug, Clone)]
pub struct GrubBackend {
    store: GrubEnvStore,
    cmdline: PathBuf,
}

impl GrubBackend {
    pub fn new(paths: &BackendPaths) -> GrubBackend {
        GrubBackend {
            store: GrubEnvStore::new(&paths.state_dir),
            cmdline: paths.cmdline.clone(),
        }
    }
}

impl BootBackend for GrubBackend {
    fn load(&self) -> Result<(BootState, LoadSource)> {
        self.store.load()
    }

    fn store(&self, s: &BootState) -> Result<()> {
        self.store.store(s)
    }

    fn store_faulted(&self, s: &BootState, fault: Fault) -> Result<()> {
        self.store.clone().with_fault(fault).store(s)
    }

    fn repair(&self) -> Result<LoadSource> {
        self.store.repair()
    }

    fn booted(&self) -> Result<(Slot, bool)> {
        booted_from_cmdline(&self.cmdline)
    }

    fn state_home_present(&self) -> bool {
        self.store.dir().is_dir()
    }
}
