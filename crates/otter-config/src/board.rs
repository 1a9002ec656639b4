//! Board files (`boards/<name>.toml`): what differs between hardware targets.

use crate::{ByteSize, ConfigError, Result, is_simple_name, read_toml};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A board's CPU architecture, by its Debian name (`amd64`, `arm64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The Debian architecture name (`mmdebstrap --architectures`, package names).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The GRUB platform (`grub-mkimage -O`).
    pub fn grub_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-efi",
            Arch::Arm64 => "arm64-efi",
        }
    }

    /// The GPT partition type of a root partition (Discoverable Partitions Specification).
    pub fn root_partition_type(self) -> &'static str {
        match self {
            Arch::Amd64 => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            Arch::Arm64 => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.debian() == s)
            .ok_or_else(|| format!("`{s}` is not supported (use amd64 or arm64)"))
    }
}

/// The boot loader backend of a board: how the A/B boot state is stored and which slot boots.
/// A new boot loader is a new variant here and one backend in `otter-boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub enum Bootloader {
    /// GRUB on UEFI, state in two GRUB environment blocks on the EFI system partition.
    #[default]
    #[serde(rename = "grub-efi")]
    GrubEfi,
}

impl Bootloader {
    pub const ALL: [Bootloader; 1] = [Bootloader::GrubEfi];

    pub fn name(self) -> &'static str {
        match self {
            Bootloader::GrubEfi => "grub-efi",
        }
    }

    pub fn is_grub_efi(&self) -> bool {
        *self == Bootloader::GrubEfi
    }
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bootloader {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Bootloader::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("`{s}` is not supported (use grub-efi)"))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Board name, equal to the file stem (`qemu-x86_64`).
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Debian architecture (`amd64`, `arm64`).
    pub arch: Arch,
    /// The kernel package installed into the root filesystem.
    pub kernel_package: String,
    /// Extra packages every image for this board needs (firmware, …).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Boot loader backend. Only `grub-efi` for now.
    pub bootloader: Bootloader,
    /// Kernel console arguments (`console=ttyS0,115200 console=tty0`).
    #[serde(default)]
    pub console: String,
    pub partitions: Partitions,
}

/// The file as written: `arch` and `bootloader` as strings, so that an unknown value is
/// reported as `file: key `arch`: ...` rather than as a generic parse error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardFile {
    name: String,
    #[serde(default)]
    description: String,
    arch: String,
    kernel_package: String,
    #[serde(default)]
    packages: Vec<String>,
    bootloader: String,
    #[serde(default)]
    console: String,
    partitions: Partitions,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// `otter-boot`: EFI system partition (GRUB, boot state, device config).
    pub boot: ByteSize,
    /// `otter-root-a` and `otter-root-b`: each slot.
    pub slot: ByteSize,
    /// `otter-data` as built into the image (grown to the end of the disk on the device).
    pub data: ByteSize,
}

impl Board {
    /// Load and validate `path`.
    pub fn load(path: &Path) -> Result<Board> {
        let f: BoardFile = read_toml(path)?;
        let board = Board {
            arch: f
                .arch
                .parse()
                .map_err(|m| ConfigError::invalid(path, "arch", m))?,
            bootloader: f
                .bootloader
                .parse()
                .map_err(|m| ConfigError::invalid(path, "bootloader", m))?,
            name: f.name,
            description: f.description,
            kernel_package: f.kernel_package,
            packages: f.packages,
            console: f.console,
            partitions: f.partitions,
        };
        board.validate(path)?;
        Ok(board)
    }

    /// Find `boards/<name>.toml`: next to the project file first, then in its parents
    /// (a project inside the Otter repository finds the repository's boards).
    pub fn find(name: &str, project_dir: &Path) -> Result<PathBuf, String> {
        if !is_simple_name(name) {
            return Err(format!(
                "board name `{name}` must be made of a-z, 0-9, - and _"
            ));
        }
        let mut dir = Some(project_dir);
        let mut tried = Vec::new();
        while let Some(d) = dir {
            let candidate = d.join("boards").join(format!("{name}.toml"));
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
            dir = d.parent();
        }
        let candidate = Path::new("/usr/share/otter/boards").join(format!("{name}.toml"));
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
        Err(format!(
            "board `{name}` not found (looked for {})",
            tried.join(", ")
        ))
    }

    /// The GRUB platform of this board's architecture.
    pub fn grub_target(&self) -> &'static str {
        self.arch.grub_target()
    }

    /// The GPT partition type of a root partition for this architecture
    /// (Discoverable Partitions Specification).
    pub fn root_partition_type(&self) -> &'static str {
        self.arch.root_partition_type()
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if self.name != stem {
            return Err(ConfigError::invalid(
                path,
                "name",
                format!(
                    "`{}` must equal the file name `{stem}` (boards are found by name)",
                    self.name
                ),
            ));
        }
        if self.kernel_package.trim().is_empty() {
            return Err(ConfigError::invalid(
                path,
                "kernel_package",
                "must not be empty",
            ));
        }
        let p = &self.partitions;
        if p.boot.0 < 33 * ByteSize::MIB {
            return Err(ConfigError::invalid(
                path,
                "partitions.boot",
                format!(
                    "{} is too small: the EFI system partition needs at least 33M",
                    p.boot
                ),
            ));
        }
        if p.slot.0 < 128 * ByteSize::MIB {
            return Err(ConfigError::invalid(
                path,
                "partitions.slot",
                format!(
                    "{} is too small for a root filesystem (at least 128M)",
                    p.slot
                ),
            ));
        }
        if p.data.0 < 16 * ByteSize::MIB {
            return Err(ConfigError::invalid(
                path,
                "partitions.data",
                format!("{} is too small (at least 16M)", p.data),
            ));
        }
        for (key, v) in [
            ("partitions.boot", p.boot),
            ("partitions.slot", p.slot),
            ("partitions.data", p.data),
        ] {
            if v.0 % ByteSize::MIB != 0 {
                return Err(ConfigError::invalid(
                    path,
                    key,
                    format!(
                        "{} must be a whole number of MiB (partitions are 1 MiB aligned)",
                        v
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "qemu-x86_64"
arch = "amd64"
kernel_package = "linux-image-amd64"
bootloader = "grub-efi"
console = "console=ttyS0,115200"
[partitions]
boot = "64M"
slot = "1G"
data = "256M"
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_good_board() {
        let d = tempfile::tempdir().unwrap();
        let b = Board::load(&write(d.path(), "qemu-x86_64.toml", GOOD)).unwrap();
        assert_eq!(b.partitions.slot.0, 1 << 30);
        assert_eq!(b.grub_target(), "x86_64-efi");
    }

    #[test]
    fn name_must_match_file() {
        let d = tempfile::tempdir().unwrap();
        let e = Board::load(&write(d.path(), "other.toml", GOOD)).unwrap_err();
        assert!(e.to_string().contains("key `name`"), "{e}");
    }

    #[test]
    fn unknown_key_named() {
        let d = tempfile::tempdir().unwrap();
        let text = GOOD.replace("arch = \"amd64\"", "arch = \"amd64\"\nflavour = 1");
        let e = Board::load(&write(d.path(), "qemu-x86_64.toml", &text)).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("qemu-x86_64.toml") && s.contains("flavour"),
            "{s}"
        );
    }

    #[test]
    fn bad_values_named() {
        let d = tempfile::tempdir().unwrap();
        for (from, to, key) in [
            ("arch = \"amd64\"", "arch = \"mips\"", "arch"),
            ("slot = \"1G\"", "slot = \"1M\"", "partitions.slot"),
            ("boot = \"64M\"", "boot = \"64.5M\"", "partitions.boot"),
            (
                "bootloader = \"grub-efi\"",
                "bootloader = \"lilo\"",
                "bootloader",
            ),
        ] {
            let e = Board::load(&write(
                d.path(),
                "qemu-x86_64.toml",
                &GOOD.replace(from, to),
            ))
            .unwrap_err();
            assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}");
        }
        let e = Board::load(&write(
            d.path(),
            "qemu-x86_64.toml",
            &GOOD.replace("slot = \"1G\"", "slot = \"lots\""),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("lots"), "{e}");
    }

    #[test]
    fn unknown_arch_and_bootloader_name_value_and_file() {
        let d = tempfile::tempdir().unwrap();
        for (from, to, key, value) in [
            ("arch = \"amd64\"", "arch = \"riscv64\"", "arch", "riscv64"),
            (
                "bootloader = \"grub-efi\"",
                "bootloader = \"u-boot\"",
                "bootloader",
                "u-boot",
            ),
        ] {
            let e = Board::load(&write(
                d.path(),
                "qemu-x86_64.toml",
                &GOOD.replace(from, to),
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("qemu-x86_64.toml") && e.contains(key) && e.contains(value),
                "{e}"
            );
        }
        let b = Board::load(&write(d.path(), "qemu-x86_64.toml", GOOD)).unwrap();
        assert_eq!((b.arch, b.bootloader), (Arch::Amd64, Bootloader::GrubEfi));
        let arm = GOOD.replace("arch = \"amd64\"", "arch = \"arm64\"");
        let b = Board::load(&write(d.path(), "qemu-x86_64.toml", &arm)).unwrap();
        assert_eq!(b.grub_target(), "arm64-efi");
    }

    #[test]
    fn finds_board_in_parent() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("boards")).unwrap();
        std::fs::create_dir_all(d.path().join("examples/x")).unwrap();
        write(&d.path().join("boards"), "qemu-x86_64.toml", GOOD);
        let found = Board::find("qemu-x86_64", &d.path().join("examples/x")).unwrap();
        assert!(found.ends_with("boards/qemu-x86_64.toml"));
        assert!(Board::find("nope", &d.path().join("examples/x")).is_err());
        assert!(Board::find("../etc", d.path()).is_err());
    }
}
