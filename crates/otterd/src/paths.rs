//! Where the agent finds things. On a device these are fixed; `OTTERD_ROOT` moves all of them
//! under one directory so the whole agent can be tested on files standing for partitions.

use crate::host::{FakeHost, Host, RealHost};
use anyhow::{Context, Result};
use otter_boot::{BootBackend, Slot};
use otter_config::{Bootloader, ReleaseInfo};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Paths {
    /// The `otter/` directory of the mounted boot partition (GRUB environment blocks).
    pub boot_state_dir: PathBuf,
    /// The agent's persistent state (data partition).
    pub state_dir: PathBuf,
    pub release: PathBuf,
    pub agent_config: PathBuf,
    pub keys_dir: PathBuf,
    pub health_dir: PathBuf,
    pub cmdline: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    /// `otter/device.toml` on the mounted boot partition.
    pub device_config: PathBuf,
    /// Provisioning state kept on the data partition (machine-id, user ids, last good
    /// config, saved clock); reachable before `/var` is mounted.
    pub persist_dir: PathBuf,
    /// The live `/etc` (an overlay on a device).
    pub etc_dir: PathBuf,
    /// The image's own `/etc`, read-only, which the config is rendered on top of.
    pub etc_image_dir: PathBuf,
    /// Runtime state (RAM): what was rendered, the last config outcome.
    pub run_dir: PathBuf,
    pub home_dir: PathBuf,
    pub zoneinfo_dir: PathBuf,
    /// The device's side effects: [`RealHost`](crate::host::RealHost) on a device, a
    /// [`FakeHost`](crate::host::FakeHost) under `OTTERD_ROOT` (no systemd; a reboot is
    /// recorded in `state_dir/reboot-requested`).
    pub host: Arc<dyn Host>,
}

impl Paths {
    pub fn system() -> Paths {
        Paths {
            boot_state_dir: "/boot/efi/otter".into(),
            state_dir: "/var/lib/otter".into(),
            release: otter_config::device::RELEASE_PATH.into(),
            agent_config: otter_config::device::AGENT_CONFIG_PATH.into(),
            keys_dir: otter_config::device::TRUSTED_KEYS_DIR.into(),
            health_dir: "/etc/otter/health.d".into(),
            cmdline: "/proc/cmdline".into(),
            slot_a: "/dev/disk/by-partlabel/otter-root-a".into(),
            slot_b: "/dev/disk/by-partlabel/otter-root-b".into(),
            device_config: otter_config::device_config::DEVICE_CONFIG_PATH.into(),
            persist_dir: "/data/otter".into(),
            etc_dir: "/etc".into(),
            etc_image_dir: "/run/otter/etc-image".into(),
            run_dir: "/run/otter".into(),
            home_dir: "/data/home".into(),
            zoneinfo_dir: "/usr/share/zoneinfo".into(),
            host: Arc::new(RealHost),
        }
    }

    /// `OTTERD_ROOT=/dir`: every path below `/dir` (same layout as on a device; slots are the
    /// files `dev/otter-root-a` and `dev/otter-root-b`).
    pub fn from_env() -> Paths {
        match std::env::var_os("OTTERD_ROOT") {
            Some(root) => Paths::under(&PathBuf::from(root)),
            None => Paths::system(),
        }
    }

    /// Every path below `r`, with a fake host.
    pub fn under(r: &std::path::Path) -> Paths {
        Paths {
            boot_state_dir: r.join("boot/efi/otter"),
            state_dir: r.join("var/lib/otter"),
            release: r.join("usr/lib/otter/release.toml"),
            agent_config: r.join("usr/lib/otter/agent.toml"),
            keys_dir: r.join("usr/lib/otter/keys"),
            health_dir: r.join("etc/otter/health.d"),
            cmdline: r.join("proc/cmdline"),
            slot_a: r.join("dev/otter-root-a"),
            slot_b: r.join("dev/otter-root-b"),
            device_config: r.join("boot/efi/otter/device.toml"),
            persist_dir: r.join("data/otter"),
            etc_dir: r.join("etc"),
            etc_image_dir: r.join("run/otter/etc-image"),
            run_dir: r.join("run/otter"),
            home_dir: r.join("data/home"),
            zoneinfo_dir: r.join("usr/share/zoneinfo"),
            host: Arc::new(FakeHost::new(&r.join("var/lib/otter"))),
        }
    }

    pub fn slot_device(&self, s: Slot) -> &PathBuf {
        match s {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    /// The saved block index of slot `s`'s image (written after a verified install, used as
    /// the seed index of the next delta install).
    pub fn slot_index(&self, s: Slot) -> PathBuf {
        self.state_dir
            .join(format!("slot-{}.index", s.to_string().to_lowercase()))
    }

    /// The slot the running system booted from, and whether the boot loader marked it as a trial
    /// boot.
    pub fn booted_slot(&self) -> Result<(Slot, bool)> {
        Ok(self.boot()?.booted()?)
    }

    /// The boot loader of this image (`release.toml`), which picks the boot backend.
    pub fn bootloader(&self) -> Result<Bootloader> {
        Ok(ReleaseInfo::load(&self.release)
            .context("finding the boot loader of this image")?
            .bootloader)
    }

    /// The boot backend: the one place otterd turns the image's boot loader into the code that
    /// reads and writes its state.
    pub fn boot(&self) -> Result<Box<dyn BootBackend>> {
        self.boot_with()
    }

    /// The boot backend for operation `op` (`commit`, `install`). Built with the
    /// `fault-injection` feature (end-to-end test images only), a fault armed for `op` in
    /// `state_dir/fault` wraps it ([`crate::fault`]).
    pub fn boot_for(&self, op: &str) -> Result<Box<dyn BootBackend>> {
        let backend = self.boot()?;
        #[cfg(feature = "fault-injection")]
        let backend = crate::fault::wrap(self, op, backend);
        #[cfg(not(feature = "fault-injection"))]
        let _ = op;
        Ok(backend)
    }

    fn boot_with(&self) -> Result<Box<dyn BootBackend>> {
        let paths = otter_boot::BackendPaths {
            state_dir: self.boot_state_dir.clone(),
            cmdline: self.cmdline.clone(),
        };
        Ok(otter_boot::backend::open(self.bootloader()?, &paths))
    }
}
