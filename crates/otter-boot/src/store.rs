//! Loading and storing the boot state on the mounted boot partition, power-cut safe.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::envblock::{ENV_BLOCK_SIZE, render};
use crate::error::{BootError, Result};
use crate::state::BootState;

/// Directory of the boot state on the boot partition (the store's `dir` is `<mount>/otter`).
pub const STATE_DIR: &str = "otter";
/// Primary copy of the boot state, inside [`STATE_DIR`].
pub const PRIMARY_FILE: &str = "grubenv";
/// Backup copy of the boot state, inside [`STATE_DIR`].
pub const BACKUP_FILE: &str = "grubenv.bak";

/// Fault injection for the end-to-end power-cut tests. Never set in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// After writing and fsyncing the primary, sleep forever (the test then kills the VM): the
    /// primary holds the new state, the backup the old one.
    HangAfterPrimary,
    /// Write a torn primary and sleep forever: the first half of the new block's content, then
    /// zeros to the end of the first sector, as a sector whose programming was interrupted may read
    /// back. The primary is then invalid, so GRUB and [`GrubEnvStore::load`] must use the backup.
    TornPrimary,
}

impl FromStr for Fault {
    type Err = BootError;
    /// Parses `none`, `hang-after-primary` or `torn-primary` (the agent's test-only fault file).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" | "none" => Ok(Fault::None),
            "hang-after-primary" => Ok(Fault::HangAfterPrimary),
            "torn-primary" => Ok(Fault::TornPrimary),
            other => Err(BootError::BadFault(other.to_string())),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::None => "none",
            Fault::HangAfterPrimary => "hang-after-primary",
            Fault::TornPrimary => "torn-primary",
        })
    }
}

/// Which copy [`GrubEnvStore::load`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    Primary,
    /// The primary was missing or invalid; [`GrubEnvStore::store`] or
    /// [`GrubEnvStore::repair`] rewrites it.
    Backup,
}

/// The boot state files `grubenv` and `grubenv.bak` in a directory (the mounted boot
/// partition's `otter/`).
#[derive(Debug, Clone)]
pub struct GrubEnvStore {
    dir: PathBuf,
    fault: Fault,
}

impl GrubEnvStore {
    pub fn new(dir: &Path) -> Self {
        GrubEnvStore {
            dir: dir.to_path_buf(),
            fault: Fault::None,
        }
    }

    pub fn with_fault(mut self, f: Fault) -> Self {
        self.fault = f;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn primary_path(&self) -> PathBuf {
        self.dir.join(PRIMARY_FILE)
    }

    pub fn backup_path(&self) -> PathBuf {
        self.dir.join(BACKUP_FILE)
    }

    /// Creates the directory and both files from scratch (image build time, or to reset).
    pub fn init(&self, s: &BootState) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| BootError::io("creating directory", &self.dir, e))?;
        let block = s.to_env_block();
        replace_file(&self.primary_path(), &block)?;
        replace_file(&self.backup_path(), &block)
    }

    /// Reads the state the way GRUB does: the primary if it is valid, else the backup.
    pub fn load(&self) -> Result<(BootState, LoadSource)> {
        let primary = match read_state(&self.primary_path()) {
            Ok(s) => return Ok((s, LoadSource::Primary)),
            Err(e) => e,
        };
        match read_state(&self.backup_path()) {
            Ok(s) => Ok((s, LoadSource::Backup)),
            Err(backup) => Err(BootError::NoValidState {
                dir: self.dir.clone(),
                primary: Box::new(primary),
                backup: Box::new(backup),
            }),
        }
    }

    /// Writes `s` to the primary, then to the backup, each in place and fsynced.
    ///
    /// Whenever power is cut, one file holds a complete valid state (docs/boot-slots.md).
    pub fn store(&self, s: &BootState) -> Result<()> {
        let block = s.to_env_block();
        let primary = self.primary_path();
        // One code path for production and faults, so the fault tests check the real order.
        let first = match self.fault {
            Fault::TornPrimary => torn_block(&primary, s),
            Fault::None | Fault::HangAfterPrimary => block,
        };
        write_block(&primary, &first)?;
        if self.fault != Fault::None {
            hang_forever();
        }
        write_block(&self.backup_path(), &block)
    }

    /// Makes both files hold the state [`load`](Self::load) finds: rewrites an invalid primary
    /// from the backup, and a stale or invalid backup from the primary (files already right are
    /// not written). Returns where the state was found. Ignores the fault hook.
    pub fn repair(&self) -> Result<LoadSource> {
        let (s, src) = self.load()?;
        let block = s.to_env_block();
        write_block(&self.primary_path(), &block)?;
        write_block(&self.backup_path(), &block)?;
        Ok(src)
    }
}

fn read_state(path: &Path) -> Result<BootState> {
    let mut buf = Vec::with_capacity(ENV_BLOCK_SIZE);
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| BootError::io("reading boot state", path, e))?;
    BootState::from_env_block(&buf).map_err(|e| BootError::InvalidFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Writes a block over an existing 1024-byte file in place: the file keeps its clusters, which
/// GRUB's `save_env` writes through, and a FAT directory never goes through a non-atomic rename.
/// Anything else (missing, wrong size) goes through [`replace_file`], the repair path.
fn write_block(path: &Path, block: &[u8; ENV_BLOCK_SIZE]) -> Result<()> {
    let len = match fs::metadata(path) {
        Ok(m) if m.is_file() => Some(m.len()),
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(BootError::io("inspecting boot state", path, e)),
    };
    if len != Some(ENV_BLOCK_SIZE as u64) {
        return replace_file(path, block);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| BootError::io("opening boot state for writing", path, e))?;
    let mut current = [0u8; ENV_BLOCK_SIZE];
    // Skip identical writes: fewer flash writes, fewer moments at risk.
    if f.read_exact_at(&mut current, 0).is_ok() && current == *block {
        return Ok(());
    }
    f.write_all_at(block, 0)
        .map_err(|e| BootError::io("writing boot state", path, e))?;
    f.sync_all()
        .map_err(|e| BootError::io("syncing boot state", path, e))
}

/// Creates `path` with `block` through a synced temporary file and a rename.
fn replace_file(path: &Path, block: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp).map_err(|e| BootError::io("creating", &tmp, e))?;
    f.write_all(block)
        .map_err(|e| BootError::io("writing", &tmp, e))?;
    f.sync_all()
        .map_err(|e| BootError::io("syncing", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| BootError::io("renaming temporary file to", path, e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some filesystems refuse fsync on directories; the rename is then as durable as it gets.
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) => Ok(()),
        Err(e) => Err(BootError::io("syncing directory", dir, e)),
    }
}

/// The torn primary of [`Fault::TornPrimary`]: the new content's first half, zeros to the end of
/// the first sector, the old second sector.
fn torn_block(primary: &Path, s: &BootState) -> [u8; ENV_BLOCK_SIZE] {
    let mut out = [b'#'; ENV_BLOCK_SIZE];
    if let Ok(old) = fs::read(primary) {
        let n = old.len().min(ENV_BLOCK_SIZE);
        out[..n].copy_from_slice(&old[..n]);
    }
    let text = render(&s.to_vars());
    let cut = text.len() / 2;
    out[..cut].copy_from_slice(&text[..cut]);
    out[cut..512].fill(0);
    out
}

fn hang_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Slot;

    #[test]
    fn init_load_store_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("otter");
        let st = GrubEnvStore::new(&dir);
        st.init(&BootState::factory()).unwrap();
        assert_eq!(fs::read(st.primary_path()).unwrap().len(), ENV_BLOCK_SIZE);
        assert_eq!(
            st.load().unwrap(),
            (BootState::factory(), LoadSource::Primary)
        );
        let mut s = BootState::factory();
        s.set_try(Slot::B, 2);
        st.store(&s).unwrap();
        assert_eq!(st.load().unwrap(), (s, LoadSource::Primary));
        assert_eq!(
            fs::read(st.primary_path()).unwrap(),
            fs::read(st.backup_path()).unwrap()
        );
        assert!(!dir.join("grubenv.tmp").exists());
    }

    #[test]
    fn store_writes_in_place_keeping_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let st = GrubEnvStore::new(d.path());
        st.init(&BootState::factory()).unwrap();
        let ino = (
            fs::metadata(st.primary_path()).unwrap().ino(),
            fs::metadata(st.backup_path()).unwrap().ino(),
        );
        let mut s = BootState::factory();
        s.commit(Slot::B);
        st.store(&s).unwrap();
        assert_eq!(
            ino,
            (
                fs::metadata(st.primary_path()).unwrap().ino(),
                fs::metadata(st.backup_path()).unwrap().ino()
            )
        );
    }

    #[test]
    fn falls_back_to_backup_and_repairs() {
        let d = tempfile::tempdir().unwrap();
        let st = GrubEnvStore::new(d.path());
        let mut s = BootState::factory();
        s.commit(Slot::B);
        st.init(&s).unwrap();
        let mut junk = s.to_env_block();
        junk[30] = b'X';
        fs::write(st.primary_path(), junk).unwrap();
        assert_eq!(st.load().unwrap(), (s, LoadSource::Backup));
        assert_eq!(st.repair().unwrap(), LoadSource::Backup);
        assert_eq!(st.load().unwrap(), (s, LoadSource::Primary));
        assert_eq!(st.repair().unwrap(), LoadSource::Primary);

        // A stale backup (power cut after the primary) is brought up to date.
        fs::write(st.backup_path(), BootState::factory().to_env_block()).unwrap();
        assert_eq!(st.repair().unwrap(), LoadSource::Primary);
        assert_eq!(fs::read(st.backup_path()).unwrap(), s.to_env_block());

        // A missing or truncated primary is re-created by the next store.
        for damage in [None, Some(100usize)] {
            match damage {
                None => fs::remove_file(st.primary_path()).unwrap(),
                Some(n) => fs::write(st.primary_path(), &junk[..n]).unwrap(),
            }
            assert_eq!(st.load().unwrap().1, LoadSource::Backup);
            st.store(&s).unwrap();
            assert_eq!(st.load().unwrap(), (s, LoadSource::Primary));
        }
    }

    #[test]
    fn no_valid_state_names_both_files() {
        let d = tempfile::tempdir().unwrap();
        let st = GrubEnvStore::new(d.path());
        fs::write(st.backup_path(), [b'#'; ENV_BLOCK_SIZE]).unwrap();
        let err = st.load().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BootError::NoValidState { .. }));
        assert!(
            msg.contains("grubenv:") || msg.contains("grubenv "),
            "{msg}"
        );
        assert!(msg.contains("grubenv.bak"), "{msg}");
        assert!(msg.contains("BootState::recovered"), "{msg}");
    }

    #[test]
    fn torn_primary_is_invalid_for_every_state() {
        let d = tempfile::tempdir().unwrap();
        let st = GrubEnvStore::new(d.path());
        st.init(&BootState::factory()).unwrap();
        for s in BootState::all() {
            let torn = torn_block(&st.primary_path(), &s);
            assert!(BootState::from_env_block(&torn).is_err(), "{s:?}");
            assert!(torn.starts_with(crate::envblock::ENV_BLOCK_HEADER));
        }
    }

    #[test]
    fn fault_names() {
        for f in [Fault::None, Fault::HangAfterPrimary, Fault::TornPrimary] {
            assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
        }
        assert!("x".parse::<Fault>().is_err());
    }
}
