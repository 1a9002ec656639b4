//! The device's side effects behind one seam: reboot, systemd, commands that apply a config
//! change, ownership of files. [`RealHost`] acts on the running system; [`FakeHost`] (the
//! `OTTERD_ROOT` test layout) acts on nothing and records what it was asked, so the agent's
//! decisions run in tests unchanged.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub trait Host: Send + Sync + std::fmt::Debug {
    /// A real device: systemd runs the services, the app containers, the journal and the fleet
    /// client. `false` on the fake host, where none of them exists.
    fn is_device(&self) -> bool;
    /// Reboot the device (returns once the reboot is requested).
    fn reboot(&self) -> Result<()>;
    /// `systemctl ARGS`' standard output, trimmed; `None` if it cannot run.
    fn systemctl(&self, args: &[&str]) -> Option<String>;
    /// Run a command that applies a change (`systemctl try-restart`, `udevadm`, `iw`); success.
    fn run(&self, argv: &[&str]) -> bool;
    /// Set the kernel's host name; success.
    fn set_hostname(&self, name: &str) -> bool;
    /// Give `path` to `uid:gid`.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()>;
}

/// The running system.
#[derive(Debug, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn is_device(&self) -> bool {
        true
    }

    fn reboot(&self) -> Result<()> {
        let _ = std::process::Command::new("sync").status();
        if !self.run(&["systemctl", "reboot"]) {
            std::process::Command::new("reboot")
                .arg("-f")
                .status()
                .context("rebooting")?;
        }
        Ok(())
    }

    fn systemctl(&self, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("systemctl")
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn run(&self, argv: &[&str]) -> bool {
        let Some((program, args)) = argv.split_first() else {
            return false;
        };
        std::process::Command::new(program)
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn set_hostname(&self, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        // SAFETY: sethostname reads `len` bytes from a valid buffer.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        rc == 0
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }
}

/// Tests: no systemd, no reboot. A reboot request is the file `reboot-requested` in the state
/// directory (the end-to-end tests wait for it); every call is recorded in [`FakeHost::calls`].
#[derive(Debug)]
pub struct FakeHost {
    reboot_marker: PathBuf,
    calls: Mutex<Vec<String>>,
}

impl FakeHost {
    pub fn new(state_dir: &Path) -> FakeHost {
        FakeHost {
            reboot_marker: state_dir.join("reboot-requested"),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// What the agent asked of the host so far, one line per call.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn note(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

impl Host for FakeHost {
    fn is_device(&self) -> bool {
        false
    }

    fn reboot(&self) -> Result<()> {
        self.note("reboot".into());
        std::fs::write(&self.reboot_marker, b"1").context("recording the reboot request")
    }

    /// A system that finished starting, with every unit active and none wanted by the health
    /// target.
    fn systemctl(&self, args: &[&str]) -> Option<String> {
        self.note(format!("systemctl {}", args.join(" ")));
        Some(
            match args.first().copied() {
                Some("is-system-running") => "running",
                Some("is-active") => "active",
                _ => "",
            }
            .to_string(),
        )
    }

    fn run(&self, argv: &[&str]) -> bool {
        self.note(argv.join(" "));
        true
    }

    fn set_hostname(&self, name: &str) -> bool {
        self.note(format!("hostname {name}"));
        true
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        self.note(format!("chown {uid}:{gid} {}", path.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_host_records_and_marks_the_reboot() {
        let d = tempfile::tempdir().unwrap();
        let h = FakeHost::new(d.path());
        assert!(!h.is_device());
        assert_eq!(
            h.systemctl(&["is-system-running"]).as_deref(),
            Some("running")
        );
        assert!(h.run(&["systemctl", "try-restart", "x.service"]));
        h.reboot().unwrap();
        assert!(d.path().join("reboot-requested").exists());
        assert_eq!(
            h.calls(),
            [
                "systemctl is-system-running",
                "systemctl try-restart x.service",
                "reboot"
            ]
        );
    }
}
