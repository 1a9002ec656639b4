//! Builds Otter disk images without loop devices or `mount`.
//!
//! Pipeline ([`build::build`]): Debian base with mmdebstrap (cached by a hash of its inputs)
//! → customised tree (agent, units, read-only root layout) → ext4 root image → FAT boot
//! partition (GRUB, A/B state) → data partition → GPT disk image → signed bundle → `.img.zst`.

pub mod apps;
pub mod bmap;
pub mod bootpart;
pub mod build;
pub mod disk;
pub mod fat;
pub mod fs;
pub mod rootfs;

pub use build::{BuildOptions, BuildOutput, build};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("`{program}` failed ({status}) while {doing}:\n{output}")]
    Command {
        program: String,
        doing: String,
        status: String,
        output: String,
    },
    #[error("`{program}` not found while {doing}: install it (apt-get install {package})")]
    MissingTool {
        program: String,
        doing: String,
        package: String,
    },
    #[error("{0}")]
    Config(#[from] otter_config::ConfigError),
    #[error("boot setup: {0}")]
    Boot(#[from] otter_boot::BootError),
    #[error("bundle: {0}")]
    Bundle(#[from] otter_bundle::Error),
    #[error("GPT of {path}: {message}")]
    Gpt { path: PathBuf, message: String },
    #[error("FAT boot partition {path}: {message}")]
    Fat { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ImageError::Io {
            context: context(),
            source,
        })
    }
}

/// Run a command, capturing its output; the error names the program, what we were doing and
/// the tail of its output.
pub(crate) fn run(cmd: &mut std::process::Command, doing: &str, package: &str) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().to_string();
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::MissingTool {
                program: program.clone(),
                doing: doing.to_string(),
                package: package.to_string(),
            }
        } else {
            ImageError::Io {
                context: format!("running {program} while {doing}"),
                source: e,
            }
        }
    })?;
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Command {
            program,
            doing: doing.to_string(),
            status: out.status.to_string(),
            output: tail.join("\n"),
        });
    }
    Ok(text)
}
