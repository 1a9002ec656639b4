//! Locating the UEFI firmware (OVMF / AAVMF).

use std::path::{Path, PathBuf};

use crate::{Arch, Error, Result};

/// A UEFI firmware: read-only code and the template of its variable store. The template is
/// copied for each VM (it becomes a writable pflash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

/// Candidate (code, vars template) pairs, best first, as absolute paths.
fn candidates(arch: Arch) -> &'static [(&'static str, &'static str)] {
    match arch {
        Arch::X86_64 => &[
            // Debian 12 / Ubuntu 22.04+ (ovmf): 4 MiB flash layout.
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            // Debian 11 and older (2 MiB layout).
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
            // Fedora (edk2-ovmf).
            (
                "/usr/share/edk2/ovmf/OVMF_CODE.fd",
                "/usr/share/edk2/ovmf/OVMF_VARS.fd",
            ),
            // Arch Linux (edk2-ovmf).
            (
                "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
                "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
            ),
            (
                "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd",
                "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd",
            ),
            // Firmware bundled with upstream QEMU builds.
            (
                "/usr/share/qemu/edk2-x86_64-code.fd",
                "/usr/share/qemu/edk2-i386-vars.fd",
            ),
        ],
        Arch::Aarch64 => &[
            // Debian / Ubuntu (qemu-efi-aarch64).
            (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
            // Fedora (edk2-aarch64).
            (
                "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
                "/usr/share/edk2/aarch64/vars-template-pflash.raw",
            ),
            // Firmware bundled with upstream QEMU builds.
            (
                "/usr/share/qemu/edk2-aarch64-code.fd",
                "/usr/share/qemu/edk2-arm-vars.fd",
            ),
        ],
    }
}

/// Find the UEFI firmware for `arch`. `OTTER_OVMF_CODE` and `OTTER_OVMF_VARS` (both) override
/// the search; otherwise the usual distribution paths are tried (Debian 12:
/// `/usr/share/OVMF/OVMF_CODE_4M.fd` + `OVMF_VARS_4M.fd`).
pub fn find_ovmf(arch: Arch) -> Result<Firmware> {
    let code = std::env::var_os("OTTER_OVMF_CODE").filter(|v| !v.is_empty());
    let vars = std::env::var_os("OTTER_OVMF_VARS").filter(|v| !v.is_empty());
    match (code, vars) {
        (Some(code), Some(vars)) => {
            let fw = Firmware {
                code: PathBuf::from(code),
                vars_template: PathBuf::from(vars),
            };
            for p in [&fw.code, &fw.vars_template] {
                if !p.is_file() {
                    return Err(Error::FirmwareNotFound {
                        arch,
                        searched: format!("{} (from OTTER_OVMF_CODE/OTTER_OVMF_VARS)", p.display()),
                        package: arch.firmware_package(),
                    });
                }
            }
            Ok(fw)
        }
        (Some(_), None) => Err(Error::FirmwareEnvIncomplete("OTTER_OVMF_CODE")),
        (None, Some(_)) => Err(Error::FirmwareEnvIncomplete("OTTER_OVMF_VARS")),
        (None, None) => find_ovmf_in(arch, Path::new("/")),
    }
}

/// Like [`find_ovmf`] without the environment override, with the standard paths taken relative
/// to `root` instead of `/` (for tests and for looking inside a sysroot).
pub fn find_ovmf_in(arch: Arch, root: &Path) -> Result<Firmware> {
    let rooted = |p: &str| root.join(p.trim_start_matches('/'));
    for (code, vars) in candidates(arch) {
        let (code, vars) = (rooted(code), rooted(vars));
        if code.is_file() && vars.is_file() {
            return Ok(Firmware {
                code,
                vars_template: vars,
            });
        }
    }
    let searched = candidates(arch)
        .iter()
        .map(|(c, _)| rooted(c).display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::FirmwareNotFound {
        arch,
        searched,
        package: arch.firmware_package(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, p: &str) {
        let p = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"fw").unwrap();
    }

    #[test]
    fn prefers_4m_debian_layout() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ] {
            touch(d.path(), f);
        }
        let fw = find_ovmf_in(Arch::X86_64, d.path()).unwrap();
        assert_eq!(fw.code, d.path().join("usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert_eq!(
            fw.vars_template,
            d.path().join("usr/share/OVMF/OVMF_VARS_4M.fd")
        );
    }

    #[test]
    fn needs_code_and_vars_together() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "/usr/share/OVMF/OVMF_CODE_4M.fd");
        touch(d.path(), "/usr/share/OVMF/OVMF_CODE.fd");
        touch(d.path(), "/usr/share/OVMF/OVMF_VARS.fd");
        let fw = find_ovmf_in(Arch::X86_64, d.path()).unwrap();
        assert_eq!(fw.code, d.path().join("usr/share/OVMF/OVMF_CODE.fd"));
    }

    #[test]
    fn aarch64_uses_aavmf() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "/usr/share/AAVMF/AAVMF_CODE.fd");
        touch(d.path(), "/usr/share/AAVMF/AAVMF_VARS.fd");
        let fw = find_ovmf_in(Arch::Aarch64, d.path()).unwrap();
        assert_eq!(fw.code, d.path().join("usr/share/AAVMF/AAVMF_CODE.fd"));
        assert!(find_ovmf_in(Arch::X86_64, d.path()).is_err());
    }

    #[test]
    fn missing_firmware_says_what_to_install() {
        let d = tempfile::tempdir().unwrap();
        let msg = find_ovmf_in(Arch::X86_64, d.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("apt-get install ovmf"), "{msg}");
        assert!(msg.contains("OVMF_CODE_4M.fd"), "{msg}");
        let msg = find_ovmf_in(Arch::Aarch64, d.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("apt-get install qemu-efi-aarch64"), "{msg}");
    }
}
