//! A test VM: otter-vm's QEMU process with its serial console in a log file.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use otter_vm::{RunningVm, Serial, VmOptions};

use crate::serial::{SerialLog, TAIL_LINES};
use crate::ssh::Ssh;

/// A QEMU VM for a test. Each start gets its own run directory `DIR/vm-NN/` with `serial.log`
/// (the guest console), `qemu.log` (QEMU's own messages) and, unless the options name a kept
/// overlay, a throwaway overlay. Dropping the `Vm` kills QEMU.
///
/// To power-cycle one device, start several `Vm`s one after another with the same
/// [`VmOptions::overlay`].
#[derive(Debug)]
pub struct Vm {
    inner: Mutex<RunningVm>,
    serial: SerialLog,
    run_dir: PathBuf,
    ssh_port: Option<u16>,
}

impl Vm {
    /// Start QEMU with `opts`, its serial console going to `DIR/vm-NN/serial.log` (any
    /// `opts.serial` is replaced).
    pub fn start(mut opts: VmOptions, dir: &Path) -> Result<Vm> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let run_dir = (1..10_000)
            .map(|n| dir.join(format!("vm-{n:02}")))
            .find(|p| std::fs::create_dir(p).is_ok())
            .ok_or_else(|| anyhow!("cannot create a vm-NN run directory in {}", dir.display()))?;
        let serial_path = run_dir.join("serial.log");
        opts.serial = Serial::File(serial_path.clone());
        let vm = RunningVm::spawn(&opts, &run_dir).with_context(|| {
            format!(
                "starting QEMU for {} (run dir {})",
                opts.image.display(),
                run_dir.display()
            )
        })?;
        Ok(Vm {
            inner: Mutex::new(vm),
            serial: SerialLog::new(serial_path),
            run_dir,
            ssh_port: opts.ssh_port,
        })
    }

    fn lock(&self) -> MutexGuard<'_, RunningVm> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Error if QEMU has exited (with its status and own messages).
    fn check_running(&self) -> Result<()> {
        let mut vm = self.lock();
        match vm.try_wait()? {
            None => Ok(()),
            Some(status) => {
                let out = vm.qemu_output();
                if out.is_empty() {
                    bail!("QEMU exited ({status})")
                } else {
                    bail!("QEMU exited ({status}); its messages:\n{out}")
                }
            }
        }
    }

    /// Wait until `needle` appears on the serial console after the previous match (see
    /// [`SerialLog`]). Fails early if QEMU exits; errors show the last 60 console lines.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_serial_any(&[needle], timeout).map(|_| ())
    }

    /// Wait for the first of several strings (e.g. `["login:", "Kernel panic"]`); returns its
    /// index.
    pub fn wait_for_serial_any(&self, needles: &[&str], timeout: Duration) -> Result<usize> {
        self.serial
            .wait_for_any_with(needles, timeout, &mut || self.check_running())
    }

    /// The whole serial log so far (raw).
    pub fn serial_log(&self) -> String {
        self.serial.contents()
    }

    /// The last `n` serial lines, escape sequences removed.
    pub fn serial_tail(&self, n: usize) -> String {
        self.serial.tail(n)
    }

    /// The serial log with its cursor (mark, rewind, path).
    pub fn serial(&self) -> &SerialLog {
        &self.serial
    }

    pub fn serial_log_path(&self) -> &Path {
        self.serial.path()
    }

    /// `DIR/vm-NN` of this run.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid()
    }

    pub fn ssh_port(&self) -> Option<u16> {
        self.ssh_port
    }

    /// An [`Ssh`] client for this VM's forwarded SSH port.
    pub fn ssh(&self, key: &Path) -> Result<Ssh> {
        let port = self
            .ssh_port
            .ok_or_else(|| anyhow!("this VM was started without ssh_port in its VmOptions"))?;
        Ok(Ssh::new(port, key))
    }

    /// [`Ssh::wait_ready`], but failing as soon as QEMU exits.
    pub fn wait_ssh_ready(&self, ssh: &Ssh, timeout: Duration) -> Result<()> {
        ssh.wait_ready_while(timeout, &mut || self.check_running())
            .map_err(|e| {
                anyhow!(
                    "{e:#}\nlast {TAIL_LINES} serial lines:\n{}",
                    self.serial.tail(TAIL_LINES)
                )
            })
    }

    /// Whether QEMU still runs.
    pub fn is_running(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(None))
    }

    /// Cut the power: SIGKILL QEMU (the guest flushes nothing).
    pub fn kill(&self) -> Result<()> {
        self.lock().kill().context("killing QEMU")?;
        Ok(())
    }

    /// Wait up to `timeout` for QEMU to exit by itself (guest power-off, or a reboot with
    /// `no_reboot`).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.lock().try_wait()? {
                return Ok(s);
            }
            if start.elapsed() >= timeout {
                bail!(
                    "QEMU did not exit within {timeout:.0?}; last {TAIL_LINES} serial lines:\n{}",
                    self.serial.tail(TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boot OVMF on a blank disk through the harness: the firmware's boot manager and shell
    /// show on the serial log; a second power-on of the same device keeps its overlay and
    /// UEFI variables.
    #[test]
    fn qemu_smoke_ovmf_blank_disk() {
        if let Err(missing) = crate::qemu_requirements() {
            eprintln!("skipping: {missing}");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let image = d.path().join("blank.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let overlay = d.path().join("device.qcow2");
        let mut opts = VmOptions::new(&image);
        opts.overlay = Some(overlay.clone());
        opts.ssh_port = Some(crate::free_port());
        opts.accel = otter_vm::Accel::Tcg;

        let vm = Vm::start(opts.clone(), d.path()).unwrap();
        assert_eq!(vm.run_dir(), d.path().join("vm-01"));
        assert!(vm.is_running());
        vm.wait_for_serial("BdsDxe", Duration::from_secs(240))
            .unwrap();
        let which = vm
            .wait_for_serial_any(&["Shell>", "Kernel panic"], Duration::from_secs(240))
            .unwrap();
        assert_eq!(which, 0);
        assert!(vm.serial_log().contains("UEFI Interactive Shell"));
        vm.kill().unwrap();
        assert!(!vm.is_running());
        assert!(vm.wait_exit(Duration::from_secs(5)).is_ok());
        let err = vm
            .wait_for_serial("never printed", Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("QEMU exited"), "{err}");
        assert!(err.contains("Shell>"), "error shows the log tail: {err}");
        drop(vm);

        // Power on again: same overlay and NVRAM, new run dir and log.
        assert!(overlay.exists());
        assert!(d.path().join("device.qcow2.efivars.fd").exists());
        let vm = Vm::start(opts, d.path()).unwrap();
        assert_eq!(vm.run_dir(), d.path().join("vm-02"));
        vm.wait_for_serial("BdsDxe", Duration::from_secs(240))
            .unwrap();
    }
}
