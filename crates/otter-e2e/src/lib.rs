//! Harness for Otter's end-to-end tests: boot images in QEMU ([`Vm`]), follow the serial console
//! ([`SerialLog`]), run commands over SSH ([`Ssh`]) and serve update files to the guest
//! ([`HttpServer`], reached from the guest as `http://10.0.2.2:PORT/`).
//!
//! Scenario tests start with
//!
//! ```no_run
//! if let Err(missing) = otter_e2e::requirements() {
//!     eprintln!("skipping: {missing}");
//!     return;
//! }
//! ```

pub mod fleet;
mod http;
pub mod registry;
pub mod scenario;
mod serial;
mod ssh;
mod vm;

use std::path::{Path, PathBuf};

pub use http::{HttpServer, RequestRecord};
pub use otter_vm::{Accel, Arch, Serial, VmOptions};
pub use serial::SerialLog;
pub use ssh::{Ssh, SshProcess, generate_ssh_key};
pub use vm::Vm;

/// Find an executable by name in `PATH` and the sbin directories (which a non-login root shell
/// may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn check_programs(missing: &mut Vec<String>, programs: &[(&str, &str)]) {
    for (program, package) in programs {
        if which(program).is_none() {
            missing.push(format!("{program} (apt-get install {package})"));
        }
    }
}

fn qemu_missing(missing: &mut Vec<String>) {
    check_programs(
        missing,
        &[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
        ],
    );
    if let Err(e) = otter_vm::find_ovmf(Arch::X86_64) {
        missing.push(format!("OVMF firmware: {e}"));
    }
}

fn report(missing: Vec<String>) -> Result<(), String> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing: {}", missing.join("; ")))
    }
}

/// Everything the full end-to-end scenarios need: QEMU, qemu-img, OVMF, mmdebstrap, GRUB's
/// x86_64-efi modules, mkfs.ext4, ssh/ssh-keygen and root. The error names what is missing and
/// how to install it, for a "skipping: ..." message.
pub fn requirements() -> Result<(), String> {
    let mut missing = Vec::new();
    qemu_missing(&mut missing);
    check_programs(
        &mut missing,
        &[
            ("mmdebstrap", "mmdebstrap"),
            ("grub-mkimage", "grub-efi-amd64-bin"),
            ("mkfs.ext4", "e2fsprogs"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ],
    );
    if !Path::new("/usr/lib/grub/x86_64-efi").is_dir() {
        missing.push(
            "GRUB x86_64-efi modules in /usr/lib/grub/x86_64-efi (apt-get install grub-efi-amd64-bin)"
                .into(),
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (run the tests as root: image builds need it)".into());
    }
    report(missing)
}

/// What booting a VM needs (QEMU, qemu-img, OVMF), without the image-building tools.
pub fn qemu_requirements() -> Result<(), String> {
    let mut missing = Vec::new();
    qemu_missing(&mut missing);
    report(missing)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
    }
}

/// A fresh, empty directory for one test's files (images, overlays, logs), kept after the test
/// so its logs can be read: `$OTTER_E2E_DIR/NAME`, or `target/e2e/NAME` in the workspace
/// (`$CARGO_TARGET_DIR/e2e/NAME` when that is set).
pub fn test_dir(name: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let base = match (
        std::env::var_os("OTTER_E2E_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(t)) => PathBuf::from(t).join("e2e"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e"),
    };
    let dir = base.join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing old test dir {}", dir.display()));
        }
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating test dir {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("surely-not-a-program-otter").is_none());
    }

    #[test]
    fn requirements_name_what_is_missing() {
        // Whatever this machine has, an Err must say what to install.
        if let Err(msg) = requirements() {
            assert!(msg.starts_with("missing: "), "{msg}");
        }
        if let Err(msg) = qemu_requirements() {
            assert!(msg.contains("apt-get install"), "{msg}");
        }
    }

    #[test]
    fn test_dir_is_fresh() {
        let d = test_dir("harness-selftest").unwrap();
        std::fs::write(d.join("x"), b"1").unwrap();
        let d2 = test_dir("harness-selftest").unwrap();
        assert_eq!(d, d2);
        assert!(!d2.join("x").exists());
        std::fs::remove_dir_all(d2).unwrap();
    }
}
