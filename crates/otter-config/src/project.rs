//! `otter.toml`: one file describes an image (what goes in, for which board, signed by whom).

use crate::{
    Board, ByteSize, ConfigError, HealthConfig, Result, check_version, is_simple_name, read_toml,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    pub image: ImageSection,
    #[serde(default)]
    pub debian: DebianSection,
    pub signing: SigningSection,
    #[serde(default)]
    pub kernel: KernelSection,
    #[serde(default)]
    pub rootfs: RootfsSection,
    #[serde(default)]
    pub health: HealthConfig,
    /// Built-in container apps (`[[apps]]`): in the image, running from first boot.
    #[serde(default)]
    pub apps: Vec<AppEntry>,
}

/// One built-in app: a compose file (its directory is copied into the image with it, for
/// env files and bind-mounted config) and, optionally, OCI archives holding its images
/// (otherwise `otter build` pulls them from their registries).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppEntry {
    pub name: String,
    /// The app's `compose.yaml`, relative to this file.
    pub compose: PathBuf,
    /// OCI archives (`podman save --format oci-archive`, `skopeo copy … oci-archive:…`)
    /// loaded into the image's read-only image store instead of pulling.
    #[serde(default)]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Product name, used in file names and the default `compatible`.
    pub name: String,
    /// Release version (semantic versioning).
    pub version: String,
    /// Board name: `boards/<board>.toml`.
    pub board: String,
    /// What a bundle must name to be installed on devices running this image.
    /// Default: `<name>-<board>`.
    #[serde(default)]
    pub compatible: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianSection {
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Extra suites of the same mirror (`bookworm-updates`), or full `deb …` lines.
    #[serde(default)]
    pub extra_suites: Vec<String>,
    /// Packages added to the base set.
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_suite() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

impl Default for DebianSection {
    fn default() -> Self {
        DebianSection {
            suite: default_suite(),
            mirror: default_mirror(),
            extra_suites: Vec::new(),
            packages: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// The Ed25519 signing key (`otter keys generate`), relative to this file.
    pub key: PathBuf,
    /// Public keys the device trusts for updates (baked into the image). Default: the public
    /// half of `key`. List several to rotate keys.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// Extra kernel arguments. Carried inside the root slot, so an update can change them.
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RootfsSection {
    /// A directory copied over the root filesystem (files keep their modes).
    #[serde(default)]
    pub overlay: Option<PathBuf>,
    /// Size of the root filesystem image; default: what the content needs plus headroom.
    #[serde(default)]
    pub size: Option<ByteSize>,
    /// Public SSH keys allowed to log in as root (development images; devices get their
    /// users from the device config).
    #[serde(default)]
    pub root_authorized_keys: Vec<PathBuf>,
}

/// A loaded and validated project: the file, its board and resolved paths.
#[derive(Debug, Clone)]
pub struct Project {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub file: ProjectFile,
    pub board: Board,
    pub board_path: PathBuf,
}

impl Project {
    pub fn load(path: &Path) -> Result<Project> {
        let file: ProjectFile = read_toml(path)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        file.validate(path)?;
        let board_path = Board::find(&file.image.board, &dir)
            .map_err(|m| ConfigError::invalid(path, "image.board", m))?;
        let board = Board::load(&board_path)?;
        Ok(Project {
            path: path.to_path_buf(),
            dir,
            file,
            board,
            board_path,
        })
    }

    pub fn name(&self) -> &str {
        &self.file.image.name
    }
    pub fn version(&self) -> &str {
        &self.file.image.version
    }
    pub fn compatible(&self) -> String {
        self.file
            .image
            .compatible
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.file.image.name, self.board.name))
    }
    /// `<name>-<version>-<board>`: the stem of every output file.
    pub fn artifact_stem(&self) -> String {
        format!("{}-{}-{}", self.name(), self.version(), self.board.name)
    }
    /// A path from the project file, made absolute relative to its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

impl ProjectFile {
    fn validate(&self, path: &Path) -> Result<()> {
        let img = &self.image;
        if !is_simple_name(&img.name) {
            return Err(ConfigError::invalid(
                path,
                "image.name",
                format!(
                    "`{}` must be made of a-z, 0-9 and - (it names files)",
                    img.name
                ),
            ));
        }
        check_version(path, "image.version", &img.version)?;
        if let Some(c) = &img.compatible
            && (c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)))
        {
            return Err(ConfigError::invalid(
                path,
                "image.compatible",
                format!("`{c}` must be made of letters, digits, `.`, `_` and `-`"),
            ));
        }
        let d = &self.debian;
        if d.suite.is_empty() || d.suite.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                path,
                "debian.suite",
                "must be one word like bookworm",
            ));
        }
        if !(d.mirror.starts_with("http://") || d.mirror.starts_with("https://")) {
            return Err(ConfigError::invalid(
                path,
                "debian.mirror",
                format!("`{}` must be an http:// or https:// URL", d.mirror),
            ));
        }
        for p in &d.packages {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:=_".contains(c))
            {
                return Err(ConfigError::invalid(
                    path,
                    "debian.packages",
                    format!("`{p}` is not a Debian package name"),
                ));
            }
        }
        if self.kernel.cmdline.contains('\n') || self.kernel.cmdline.len() > 400 {
            return Err(ConfigError::invalid(
                path,
                "kernel.cmdline",
                "must be one line of at most 400 characters",
            ));
        }
        if let Some(s) = self.rootfs.size
            && s.0 < 64 * ByteSize::MIB
        {
            return Err(ConfigError::invalid(
                path,
                "rootfs.size",
                format!("{s} is too small for a root filesystem"),
            ));
        }
        self.health.validate(path, "health")?;
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in self.apps.iter().enumerate() {
            let key = format!("apps[{i}].name");
            // Also a systemd unit and container name part: no dots.
            if !is_simple_name(&a.name) || a.name.len() > 63 {
                return Err(ConfigError::invalid(
                    path,
                    &key,
                    format!(
                        "`{}` must be 1-63 characters of a-z, 0-9, - and _ (it names units and containers)",
                        a.name
                    ),
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(ConfigError::invalid(
                    path,
                    &key,
                    format!("app `{}` is listed twice", a.name),
                ));
            }
            if a.compose.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    &format!("apps[{i}].compose"),
                    "must name the app's compose file",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOARD: &str = r#"
name = "qemu-x86_64"
arch = "amd64"
kernel_package = "linux-image-amd64"
bootloader = "grub-efi"
[partitions]
boot = "64M"
slot = "1G"
data = "256M"
"#;

    const GOOD: &str = r#"
[image]
name = "demo"
version = "1.0.0"
board = "qemu-x86_64"

[signing]
key = "keys/otter-signing.key"

[debian]
packages = ["curl"]

[kernel]
cmdline = "quiet"

[health]
deadline_secs = 120
units = ["ssh.service"]
"#;

    fn setup(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("boards")).unwrap();
        std::fs::write(d.path().join("boards/qemu-x86_64.toml"), BOARD).unwrap();
        std::fs::create_dir_all(d.path().join("proj")).unwrap();
        let p = d.path().join("proj/otter.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn loads_and_derives_names() {
        let (_d, p) = setup(GOOD);
        let pr = Project::load(&p).unwrap();
        assert_eq!(pr.compatible(), "demo-qemu-x86_64");
        assert_eq!(pr.artifact_stem(), "demo-1.0.0-qemu-x86_64");
        assert_eq!(pr.file.debian.suite, "bookworm");
        assert_eq!(pr.file.health.deadline_secs, 120);
        assert!(
            pr.resolve(&pr.file.signing.key)
                .ends_with("proj/keys/otter-signing.key")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        for (text, key) in [
            (
                GOOD.replace("[debian]", "[debian]\nmirrors = []"),
                "mirrors",
            ),
            (GOOD.replace("[image]", "[image]\nflavor = \"x\""), "flavor"),
            (format!("{GOOD}\n[extras]\na = 1\n"), "extras"),
        ] {
            let (_d, p) = setup(&text);
            let e = Project::load(&p).unwrap_err().to_string();
            assert!(e.contains("otter.toml") && e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, key) in [
            ("version = \"1.0.0\"", "version = \"one\"", "image.version"),
            ("name = \"demo\"", "name = \"Demo Box\"", "image.name"),
            ("board = \"qemu-x86_64\"", "board = \"nope\"", "image.board"),
            (
                "packages = [\"curl\"]",
                "packages = [\"curl; rm\"]",
                "debian.packages",
            ),
            (
                "deadline_secs = 120",
                "deadline_secs = 0",
                "health.deadline_secs",
            ),
        ] {
            let (_d, p) = setup(&GOOD.replace(from, to));
            let e = Project::load(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
    }

    #[test]
    fn apps() {
        let text = format!(
            "{GOOD}\n[[apps]]\nname = \"hello\"\ncompose = \"apps/hello/compose.yaml\"\nimages = [\"apps/hello/hello.tar\"]\n\n[[apps]]\nname = \"b\"\ncompose = \"b.yaml\"\n"
        );
        let (_d, p) = setup(&text);
        let pr = Project::load(&p).unwrap();
        assert_eq!(pr.file.apps.len(), 2);
        assert_eq!(
            pr.file.apps[0].images,
            [PathBuf::from("apps/hello/hello.tar")]
        );
        assert!(pr.file.apps[1].images.is_empty());
        for (bad, key) in [
            (
                text.replace("name = \"b\"", "name = \"hello\""),
                "apps[1].name",
            ),
            (
                text.replace("name = \"b\"", "name = \"B.x\""),
                "apps[1].name",
            ),
            (
                text.replace("compose = \"b.yaml\"", "compose = \"\""),
                "apps[1].compose",
            ),
        ] {
            let (_d, p) = setup(&bad);
            let e = Project::load(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let (_d, p) = setup(&text.replace("images = [", "image = ["));
        let e = Project::load(&p).unwrap_err().to_string();
        assert!(e.contains("image"), "{e}");
    }

    #[test]
    fn missing_required_section() {
        let (_d, p) = setup(&GOOD.replace("[signing]\nkey = \"keys/otter-signing.key\"", ""));
        let e = Project::load(&p).unwrap_err().to_string();
        assert!(e.contains("signing"), "{e}");
    }
}
