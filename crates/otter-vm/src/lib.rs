//! Boot an Otter disk image in QEMU.
//!
//! The VM is a UEFI machine (OVMF on x86_64, AAVMF on aarch64) with the image as a virtio-blk disk,
//! virtio-net with user-mode networking (the guest reaches the host as `10.0.2.2`), an optional
//! i6300esb watchdog and the first serial port on the terminal, a log file or a Unix socket.
//!
//! By default the image is never written: QEMU boots a throwaway qcow2 overlay backed by it. An
//! explicit [`VmOptions::overlay`] keeps the overlay (and the UEFI variable store next to it) so
//! several QEMU runs behave like one device being power-cycled.
//!
//! ```no_run
//! use otter_vm::{RunningVm, Serial, VmOptions};
//! # fn main() -> Result<(), otter_vm::Error> {
//! let mut opts = VmOptions::new("otter.img");
//! opts.serial = Serial::File("serial.log".into());
//! opts.ssh_port = Some(2222);
//! let mut vm = RunningVm::spawn(&opts, std::path::Path::new("vm-work"))?;
//! vm.kill()?; // power cut
//! # Ok(()) }
//! ```

mod command;
mod firmware;
mod running;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use command::{
    DiskFormat, Prepared, prepare, prepare_with_firmware, qemu_args, qemu_command, resolve_accel,
};
pub use firmware::{Firmware, find_ovmf, find_ovmf_in};
pub use running::RunningVm;

/// Guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Arch {
    #[default]
    X86_64,
    Aarch64,
}

impl Arch {
    /// The QEMU system emulator for this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The QEMU machine type used.
    pub fn machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "q35",
            Arch::Aarch64 => "virt",
        }
    }

    /// The guest kernel's name for the serial console QEMU connects (`console=` argument).
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The Debian package that provides the UEFI firmware.
    pub fn firmware_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "ovmf",
            Arch::Aarch64 => "qemu-efi-aarch64",
        }
    }

    /// The Debian package that provides [`Arch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// The architecture of the machine this program runs on, if it is one QEMU can emulate here.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

/// The guest for a board's architecture (`arch` in `boards/*.toml`).
impl From<otter_config::Arch> for Arch {
    fn from(a: otter_config::Arch) -> Arch {
        match a {
            otter_config::Arch::Amd64 => Arch::X86_64,
            otter_config::Arch::Arm64 => Arch::Aarch64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" | "x64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(Error::InvalidOptions(format!(
                "unknown architecture {s:?}: use x86_64 (amd64) or aarch64 (arm64)"
            ))),
        }
    }
}

/// Where the guest's first serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// Interactive console on the terminal, multiplexed with the QEMU monitor
    /// (`-serial mon:stdio`): Ctrl-A X quits, Ctrl-A C switches to the monitor.
    Stdio,
    /// Append-free log file (truncated when QEMU starts); no monitor.
    File(PathBuf),
    /// A Unix socket QEMU listens on (`socat - UNIX-CONNECT:PATH`); the guest does not wait for a
    /// client.
    UnixSocket(PathBuf),
    /// No serial port output at all.
    None,
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when it is usable for this guest (same architecture, `/dev/kvm` writable and a quick
    /// probe run of QEMU succeeds), otherwise TCG. [`prepare`] resolves it to `Kvm` or `Tcg`.
    #[default]
    Auto,
    /// Software emulation (always works, slow).
    Tcg,
    /// Hardware virtualisation; QEMU fails if it is not usable.
    Kvm,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

impl FromStr for Accel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Accel::Auto),
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(Error::InvalidOptions(format!(
                "unknown accelerator {s:?}: use auto, kvm or tcg"
            ))),
        }
    }
}

/// How to boot an image. Build with [`VmOptions::new`] and change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    /// Disk image: raw GPT image (`.img`); a qcow2 image is detected by its magic and also works.
    pub image: PathBuf,
    pub arch: Arch,
    /// Guest memory. Default 768: firmware reboots get much slower with more.
    pub memory_mib: u32,
    /// Default 2.
    pub cpus: u32,
    /// Forward `127.0.0.1:PORT` on the host to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// More `(host port, guest port)` TCP forwards, host side bound to 127.0.0.1.
    pub extra_hostfwd: Vec<(u16, u16)>,
    pub serial: Serial,
    /// `false` (default): boot a qcow2 overlay so `image` is not changed. `true`: boot and change
    /// the image itself (`overlay` must then be `None`).
    pub persist: bool,
    /// Overlay to use and keep (created, backed by `image`, if it does not exist). Several runs
    /// with the same overlay are the same device being power-cycled. Its UEFI variable store is
    /// kept beside it (`<overlay>.efivars.fd`) unless `efi_vars` says otherwise.
    pub overlay: Option<PathBuf>,
    /// UEFI variable store (writable pflash) to use and keep; copied from the firmware's template
    /// if missing. Default: beside `overlay`, or a fresh copy in the work directory.
    pub efi_vars: Option<PathBuf>,
    pub accel: Accel,
    /// Add an i6300esb watchdog whose expiry resets the guest (default true).
    pub watchdog: bool,
    /// `-no-reboot`: a guest reboot (or watchdog reset) makes QEMU exit instead.
    pub no_reboot: bool,
    /// Size of the virtual disk when an overlay is made (default: the image's size), like a
    /// bigger SD card than the image; the device grows its data partition into the rest.
    pub disk_size: Option<u64>,
}

impl VmOptions {
    /// Defaults: x86_64, 768 MiB, 2 CPUs, no port forwards, serial on stdio, throwaway overlay,
    /// accelerator auto, watchdog on, guest reboots reboot.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        VmOptions {
            image: image.into(),
            arch: Arch::X86_64,
            memory_mib: 768,
            cpus: 2,
            ssh_port: None,
            extra_hostfwd: Vec::new(),
            serial: Serial::Stdio,
            persist: false,
            overlay: None,
            efi_vars: None,
            accel: Accel::Auto,
            watchdog: true,
            no_reboot: false,
            disk_size: None,
        }
    }
}

/// Errors of this crate. Each message says what failed and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{arch} UEFI firmware not found (looked for {searched}): apt-get install {package}, or set OTTER_OVMF_CODE and OTTER_OVMF_VARS to the firmware code and variable-store template"
    )]
    FirmwareNotFound {
        arch: Arch,
        searched: String,
        package: &'static str,
    },
    #[error("OTTER_OVMF_CODE and OTTER_OVMF_VARS must both be set (only {0} is)")]
    FirmwareEnvIncomplete(&'static str),
    #[error("disk image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} not found or not runnable ({source}): apt-get install {package}")]
    ProgramNotFound {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img could not create overlay {overlay} backed by {image}: {stderr}")]
    OverlayCreate {
        overlay: PathBuf,
        image: PathBuf,
        stderr: String,
    },
    #[error(
        "KVM was requested but is not usable for {arch} guests here ({reason}): use accel tcg or auto"
    )]
    KvmUnusable { arch: Arch, reason: String },
    #[error("QEMU exited right after start ({status}): {output}")]
    QemuExited {
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("invalid VM options: {0}")]
    InvalidOptions(String),
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
