//! Fault injection for the end-to-end power-cut tests, compiled only with the
//! `fault-injection` feature (which only the e2e harness's otterd build enables).
//!
//! The file `state_dir/fault` holding `OP:hang-after-primary` or `OP:torn-primary` makes the
//! next boot-state write of operation OP (`commit`) stop there: [`wrap`] puts a
//! [`FaultyBackend`] around the real backend. The file is consumed (renamed to `fault.used`),
//! so the boot after the simulated power cut runs normally.

use crate::Paths;
use otter_boot::{BootBackend, BootState, Fault, LoadSource, Result, Slot};

/// A backend whose stores stop as `fault` says; everything else is the inner backend's.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Box<dyn BootBackend>,
    fault: Fault,
}

impl BootBackend for FaultyBackend {
    fn load(&self) -> Result<(BootState, LoadSource)> {
        self.inner.load()
    }
    fn store(&self, s: &BootState) -> Result<()> {
        self.inner.store_faulted(s, self.fault)
    }
    fn store_faulted(&self, s: &BootState, fault: Fault) -> Result<()> {
        self.inner.store_faulted(s, fault)
    }
    fn repair(&self) -> Result<LoadSource> {
        self.inner.repair()
    }
    fn booted(&self) -> Result<(Slot, bool)> {
        self.inner.booted()
    }
    fn state_home_present(&self) -> bool {
        self.inner.state_home_present()
    }
}

/// `inner`, wrapped when a fault is armed for `op`.
pub fn wrap(paths: &Paths, op: &str, inner: Box<dyn BootBackend>) -> Box<dyn BootBackend> {
    match armed(paths, op) {
        Some(fault) => Box::new(FaultyBackend { inner, fault }),
        None => inner,
    }
}

fn armed(paths: &Paths, op: &str) -> Option<Fault> {
    let path = paths.state_dir.join("fault");
    let text = std::fs::read_to_string(&path).ok()?;
    let text = text.trim().strip_prefix(op)?.strip_prefix(':')?.to_string();
    std::fs::rename(&path, paths.state_dir.join("fault.used")).ok()?;
    if let Ok(f) = std::fs::File::open(&paths.state_dir) {
        let _ = f.sync_all();
    }
    let fault = match text.trim() {
        "hang-after-primary" => Fault::HangAfterPrimary,
        "torn-primary" => Fault::TornPrimary,
        _ => return None,
    };
    crate::log(&format!(
        "fault injected: {}: the next boot-state write stops midway",
        text.trim()
    ));
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_fault_is_consumed_once_and_only_for_its_operation() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::under(d.path());
        std::fs::create_dir_all(&paths.state_dir).unwrap();
        std::fs::write(paths.state_dir.join("fault"), "commit:torn-primary\n").unwrap();
        assert_eq!(armed(&paths, "install"), None);
        assert_eq!(armed(&paths, "commit"), Some(Fault::TornPrimary));
        assert_eq!(armed(&paths, "commit"), None);
        assert!(paths.state_dir.join("fault.used").exists());
    }
}
