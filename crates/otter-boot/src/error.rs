use std::path::PathBuf;

/// Everything that can go wrong in `otter-boot`. Messages name the file involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(
        "GRUB environment block content needs {needed} bytes but a block holds {max}: shorten the values"
    )]
    EnvBlockTooLarge { needed: usize, max: usize },

    #[error(
        "not a GRUB environment block: it must start with \"# GRUB Environment Block\\n\" (rewrite it with the agent or re-create it with `grub-editenv FILE create`)"
    )]
    EnvBlockBadHeader,

    #[error(
        "GRUB environment block is {len} bytes, expected exactly 1024 (the file was truncated or replaced; it is re-created on the next store)"
    )]
    EnvBlockBadSize { len: usize },

    #[error(
        "invalid GRUB environment variable name {name:?}: names must be non-empty, must not start with '#' and must not contain '=', '\\\\', NUL or a newline"
    )]
    BadVarName { name: String },

    #[error(
        "GRUB environment variable {name} has a NUL byte in its value, which GRUB cannot store"
    )]
    BadVarValue { name: String },

    #[error("GRUB environment variable {name} is given twice")]
    DuplicateVar { name: String },

    #[error("boot state variable {name} is missing from the environment block")]
    MissingVar { name: &'static str },

    #[error("boot state variable {name}={value:?} is invalid: allowed values are {allowed}")]
    BadValue {
        name: &'static str,
        value: String,
        allowed: &'static str,
    },

    #[error("invalid boot state file {path}: {source}")]
    InvalidFile {
        path: PathBuf,
        #[source]
        source: Box<BootError>,
    },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no valid boot state in {dir}: primary: {primary}; backup: {backup}. GRUB is booting its built-in default (slot A, then B); store a fresh state (e.g. BootState::recovered(booted_slot)) to repair both files"
    )]
    NoValidState {
        dir: PathBuf,
        primary: Box<BootError>,
        backup: Box<BootError>,
    },

    #[error("this system was not booted by Otter's boot loader ({path} has no otter.slot=)")]
    NotBootedByOtter { path: PathBuf },

    #[error("invalid slot {0:?}: expected A or B")]
    BadSlot(String),

    #[error(
        "kernel argument {arg:?} cannot be passed through GRUB: quotes and backslashes are rewritten by GRUB's `linux` command; remove them"
    )]
    BadKernelArg { arg: String },

    #[error("unknown fault {0:?}: use none, hang-after-primary or torn-primary")]
    BadFault(String),

    #[error("invalid GRUB configuration: {0}")]
    BadGrubConfig(String),

    #[error("unsupported GRUB platform {arch:?}: use \"x86_64-efi\" or \"arm64-efi\"")]
    UnsupportedArch { arch: String },

    #[error("{tool} not found: install the Debian package {package} (it provides {tool})")]
    ToolMissing { tool: &'static str, package: String },

    #[error("GRUB modules directory {dir} not found: install the Debian package {package}{hint}")]
    GrubModulesMissing {
        dir: PathBuf,
        package: String,
        hint: &'static str,
    },

    #[error("grub-mkimage failed ({status}) writing {out}: {stderr}")]
    GrubMkimageFailed {
        out: PathBuf,
        status: String,
        stderr: String,
    },
}

pub type Result<T, E = BootError> = std::result::Result<T, E>;

impl BootError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BootError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
