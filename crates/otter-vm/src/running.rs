//! A running QEMU process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::command::{Prepared, prepare, qemu_args};
use crate::{Error, Result, Serial, VmOptions};

/// How long [`RunningVm::spawn`] watches QEMU for an immediate failure (bad option, missing
/// file, a forwarded port already taken). QEMU sets up its network only after loading the
/// firmware, which took longer than 300 ms on a host with both cores busy.
const STARTUP_CHECK: Duration = Duration::from_secs(2);

/// A QEMU process booting an image. Dropping it kills QEMU (SIGKILL) if it still runs.
#[derive(Debug)]
pub struct RunningVm {
    child: Child,
    exited: Option<ExitStatus>,
    prepared: Prepared,
    workdir: PathBuf,
    serial_log: Option<PathBuf>,
    qemu_log: Option<PathBuf>,
    // Declared last: removed after the process is gone.
    _tempdir: Option<tempfile::TempDir>,
}

impl RunningVm {
    /// Prepare the files (see [`crate::prepare`]) in `workdir` and start QEMU.
    ///
    /// With [`Serial::Stdio`] QEMU gets the terminal. Otherwise its stdin is closed and its own
    /// messages (stdout/stderr) go to `workdir/qemu.log`; if QEMU exits within a moment of
    /// starting, the error contains them.
    pub fn spawn(opts: &VmOptions, workdir: &Path) -> Result<RunningVm> {
        Self::spawn_inner(opts, workdir.to_owned(), None)
    }

    /// Like [`RunningVm::spawn`] in a new temporary work directory, removed when the VM is
    /// dropped (a kept [`VmOptions::overlay`] or [`VmOptions::efi_vars`] lives elsewhere).
    pub fn spawn_temp(opts: &VmOptions) -> Result<RunningVm> {
        let tmp = tempfile::Builder::new()
            .prefix("otter-vm-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary VM work directory", e))?;
        Self::spawn_inner(opts, tmp.path().to_owned(), Some(tmp))
    }

    fn spawn_inner(
        opts: &VmOptions,
        workdir: PathBuf,
        tempdir: Option<tempfile::TempDir>,
    ) -> Result<RunningVm> {
        let prepared = prepare(opts, &workdir)?;
        let program = opts.arch.qemu_binary();
        let mut cmd = std::process::Command::new(program);
        cmd.args(qemu_args(opts, &prepared));

        let qemu_log = match opts.serial {
            Serial::Stdio => None,
            _ => {
                let path = workdir.join("qemu.log");
                let out = File::create(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                let err = out
                    .try_clone()
                    .map_err(|e| Error::io(format!("duplicating {}", path.display()), e))?;
                cmd.stdin(Stdio::null()).stdout(out).stderr(err);
                Some(path)
            }
        };
        if let Serial::File(p) = &opts.serial
            && let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }

        let child = cmd.spawn().map_err(|source| Error::ProgramNotFound {
            program,
            package: opts.arch.qemu_package(),
            source,
        })?;
        let serial_log = match &opts.serial {
            Serial::File(p) => Some(p.clone()),
            _ => None,
        };
        let mut vm = RunningVm {
            child,
            exited: None,
            prepared,
            workdir,
            serial_log,
            qemu_log,
            _tempdir: tempdir,
        };
        if vm.qemu_log.is_some()
            && let Some(status) = vm.wait_timeout(STARTUP_CHECK)?
        {
            return Err(Error::QemuExited {
                status,
                output: vm.qemu_output(),
            });
        }
        Ok(vm)
    }

    /// Boot interactively until QEMU exits (the `otter vm IMAGE` use): a temporary work
    /// directory, QEMU in the foreground.
    pub fn run(opts: &VmOptions) -> Result<ExitStatus> {
        let mut vm = RunningVm::spawn_temp(opts)?;
        vm.wait()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The serial log file, with [`Serial::File`].
    pub fn serial_log(&self) -> Option<&Path> {
        self.serial_log.as_deref()
    }

    /// QEMU's own output (`workdir/qemu.log`), unless the serial console is on stdio.
    pub fn qemu_log(&self) -> Option<&Path> {
        self.qemu_log.as_deref()
    }

    /// QEMU's own output so far (empty with [`Serial::Stdio`] or if unreadable).
    pub fn qemu_output(&self) -> String {
        self.qemu_log
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    }

    /// The files this run uses.
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The exit status if QEMU has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("checking QEMU (pid {})", self.pid()), e))?;
        }
        Ok(self.exited)
    }

    /// Wait for QEMU to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io(format!("waiting for QEMU (pid {})", self.pid()), e))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Wait up to `timeout` for QEMU to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Kill QEMU with SIGKILL (a power cut: nothing is flushed by the guest) and reap it.
    /// Returns the exit status (of the earlier exit if QEMU had already stopped).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        match self.child.kill() {
            Ok(()) => {}
            // Exited between the check and the kill.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(Error::io(format!("killing QEMU (pid {})", self.pid()), e)),
        }
        self.wait()
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.try_wait()?.is_none())
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
