//! Building the GRUB EFI binary that runs the generated `grub.cfg`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{BootError, Result};

/// GRUB modules built into the EFI image: GPT + FAT for the boot partition, ext2 for the slots'
/// kernels, loadenv/regexp/test for the state logic, sleep/reboot so it never stops at a prompt.
pub const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "configfile",
    "linux",
    "loadenv",
    "regexp",
    "test",
    "echo",
    "search",
    "cat",
    "ls",
    "halt",
    "reboot",
    "sleep",
];

/// Prefix baked into the image: `grub.cfg` is read from the same directory as the binary.
pub const GRUB_PREFIX: &str = "/EFI/BOOT";

/// Path of the EFI binary on the boot partition for a GRUB platform.
pub fn efi_boot_path(arch: &str) -> Result<&'static str> {
    match arch {
        "x86_64-efi" => Ok("EFI/BOOT/BOOTX64.EFI"),
        "arm64-efi" => Ok("EFI/BOOT/BOOTAA64.EFI"),
        _ => Err(BootError::UnsupportedArch {
            arch: arch.to_string(),
        }),
    }
}

/// The removable-media EFI binary name firmware starts for a board architecture
/// (`BOOTX64.EFI`, `BOOTAA64.EFI`), in `EFI/BOOT/`.
pub fn efi_binary_name(arch: otter_config::Arch) -> &'static str {
    match arch {
        otter_config::Arch::Amd64 => "BOOTX64.EFI",
        otter_config::Arch::Arm64 => "BOOTAA64.EFI",
    }
}

fn package_for(arch: &str) -> Result<&'static str> {
    match arch {
        "x86_64-efi" => Ok("grub-efi-amd64-bin"),
        "arm64-efi" => Ok("grub-efi-arm64-bin"),
        _ => Err(BootError::UnsupportedArch {
            arch: arch.to_string(),
        }),
    }
}

/// Modules for a platform: [`GRUB_MODULES`], plus `gzio` on arm64, whose Debian kernels are
/// gzip-compressed images that GRUB must inflate before starting them.
pub fn grub_modules(arch: &str) -> Vec<&'static str> {
    let mut m = GRUB_MODULES.to_vec();
    if arch == "arm64-efi" {
        m.push("gzio");
    }
    m
}

/// Runs `grub-mkimage -O <arch> -p /EFI/BOOT -o <out> <modules>`. `modules_dir` overrides
/// `/usr/lib/grub/<arch>` (e.g. an unpacked `grub-efi-arm64-bin` .deb on an amd64 host).
pub fn build_grub_efi(out: &Path, arch: &str, modules_dir: Option<&Path>) -> Result<()> {
    let package = package_for(arch)?;
    let dir: PathBuf = match modules_dir {
        Some(d) => d.to_path_buf(),
        None => Path::new("/usr/lib/grub").join(arch),
    };
    if !dir.join("moddep.lst").is_file() {
        let hint = if arch == "arm64-efi" {
            " (on an amd64 host it does not install: unpack its .deb with `dpkg-deb -x` and pass its usr/lib/grub/arm64-efi as the modules directory)"
        } else {
            ""
        };
        return Err(BootError::GrubModulesMissing {
            dir,
            package: package.to_string(),
            hint,
        });
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| BootError::io("creating directory", parent, e))?;
    }
    let output = Command::new("grub-mkimage")
        .arg("-d")
        .arg(&dir)
        .args(["-O", arch, "-p", GRUB_PREFIX, "-o"])
        .arg(out)
        .args(grub_modules(arch))
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BootError::ToolMissing {
                tool: "grub-mkimage",
                package: format!("{package} (with grub-common)"),
            });
        }
        Err(e) => return Err(BootError::io("running grub-mkimage for", out, e)),
    };
    if !output.status.success() {
        return Err(BootError::GrubMkimageFailed {
            out: out.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
