//! ext4 filesystem images made from directory trees (`mkfs.ext4 -d`, no mount).

use crate::{IoContext, Result, run};
use std::path::Path;
use std::process::Command;

/// Bytes a tree needs on ext4: file data rounded to 4 KiB blocks plus one inode each.
pub fn tree_usage(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .ctx(|| format!("stat {}", entry.path().display()))?;
            *total += 256;
            if meta.is_dir() {
                *total += 4096;
                walk(&entry.path(), total)?;
            } else if meta.is_file() {
                *total += meta.len().div_ceil(4096) * 4096;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

/// Default root filesystem size for a tree: content plus 15% and 64 MiB headroom, rounded up
/// to 16 MiB.
pub fn auto_root_size(usage: u64) -> u64 {
    let want = usage + usage * 15 / 100 + 64 * 1024 * 1024;
    want.div_ceil(16 << 20) * (16 << 20)
}

pub struct Ext4Options<'a> {
    pub label: &'a str,
    /// Seed for the filesystem UUID and directory hash seed (same seed, same filesystem).
    pub seed: &'a str,
    pub journal: bool,
    /// Unix time used for every timestamp mke2fs writes itself.
    pub fake_time: u64,
}

/// `mkfs.ext4 -d tree` into a new file of `size` bytes.
pub fn make_ext4(out: &Path, size: u64, tree: &Path, o: &Ext4Options) -> Result<()> {
    if out.exists() {
        std::fs::remove_file(out).ctx(|| format!("removing old {}", out.display()))?;
    }
    let uuid = crate::disk::stable_uuid(&format!("{}/fs", o.seed));
    let hash_seed = crate::disk::stable_uuid(&format!("{}/hash", o.seed));
    let features = if o.journal {
        "has_journal"
    } else {
        "^has_journal"
    };
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("E2FSPROGS_FAKE_TIME", o.fake_time.to_string())
        .arg("-F")
        .arg("-q")
        .args(["-b", "4096", "-L", o.label, "-U"])
        .arg(uuid.to_string())
        .arg("-E")
        .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
        .args(["-O", features, "-d"])
        .arg(tree)
        .arg(out)
        .arg(format!("{}k", size / 1024));
    run(
        &mut cmd,
        &format!("making ext4 filesystem {}", out.display()),
        "e2fsprogs",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_has_headroom() {
        let s = auto_root_size(100 << 20);
        assert!(s >= (115 << 20) + (64 << 20));
        assert_eq!(s % (16 << 20), 0);
    }

    #[test]
    fn makes_ext4_from_tree() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: mkfs.ext4 not installed (apt-get install e2fsprogs)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hello"), "hi").unwrap();
        assert!(tree_usage(&tree).unwrap() >= 4096);
        let img = d.path().join("fs.ext4");
        let o = Ext4Options {
            label: "otter-test",
            seed: "t",
            journal: false,
            fake_time: 1_700_000_000,
        };
        make_ext4(&img, 8 << 20, &tree, &o).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hello"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi");
    }
}
