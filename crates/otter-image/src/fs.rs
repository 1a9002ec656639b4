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

/// Make the tree's timestamps depend only on its content and `epoch`: every mtime later than
/// `epoch` becomes `epoch` (files written by this build), and every atime becomes the mtime
/// (atimes change whenever a file is read). mke2fs copies both into the inodes, so without
/// this two builds of the same inputs differ in their inode tables.
pub fn clamp_times(root: &Path, epoch: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, epoch: i64) -> Result<()> {
        for entry in std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            let meta = path
                .symlink_metadata()
                .ctx(|| format!("stat {}", path.display()))?;
            if meta.is_dir() {
                walk(&path, epoch)?;
            }
            set(&path, meta.mtime().min(epoch))?;
        }
        Ok(())
    }
    fn set(path: &Path, t: i64) -> Result<()> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(std::io::Error::other)
            .ctx(|| format!("{} has a NUL byte", path.display()))?;
        let ts = libc::timespec {
            tv_sec: t as libc::time_t,
            tv_nsec: 0,
        };
        let times = [ts, ts];
        // SAFETY: a valid C path and two timespecs; AT_SYMLINK_NOFOLLOW sets a link's own times.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| format!("setting the times of {}", path.display()));
        }
        Ok(())
    }
    let epoch = epoch as i64;
    walk(root, epoch)?;
    set(
        root,
        std::fs::symlink_metadata(root)
            .map(|m| m.mtime().min(epoch))
            .unwrap_or(epoch),
    )
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
    set_ctimes(out, tree, o.fake_time)
}

/// mke2fs copies each source file's ctime, which records when the build touched the file and
/// cannot be set from user space, and its atime, which reading moves; set both to `epoch` in
/// every inode with debugfs so the same inputs give the same inode tables.
fn set_ctimes(image: &Path, tree: &Path, epoch: u64) -> Result<()> {
    fn walk(dir: &Path, rel: &str, cmds: &mut String, epoch: u64) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("listing {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            let path = format!("{rel}/{name}");
            if path.contains('"') || path.contains('\n') {
                continue; // not expressible in a debugfs command; keeps its build-time ctime
            }
            // atime too: reading the tree (mke2fs itself) moves it.
            cmds.push_str(&format!(
                "sif \"{path}\" ctime @{epoch}\nsif \"{path}\" atime @{epoch}\n"
            ));
            let ft = e
                .file_type()
                .ctx(|| format!("stat {}", e.path().display()))?;
            if ft.is_dir() {
                walk(&e.path(), &path, cmds, epoch)?;
            }
        }
        Ok(())
    }
    let mut cmds = format!("sif / ctime @{epoch}\nsif / atime @{epoch}\n");
    walk(tree, "", &mut cmds, epoch)?;
    let script = image.with_extension("debugfs");
    std::fs::write(&script, cmds).ctx(|| format!("writing {}", script.display()))?;
    let mut cmd = Command::new("debugfs");
    cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image);
    let r = run(
        &mut cmd,
        &format!("setting inode times in {}", image.display()),
        "e2fsprogs",
    );
    let _ = std::fs::remove_file(&script);
    r.map(|_| ())
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

    #[test]
    fn same_tree_same_bytes() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: mkfs.ext4 not installed (apt-get install e2fsprogs)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/tool"), vec![7u8; 10000]).unwrap();
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        let o = Ext4Options {
            label: "otter-test",
            seed: "t",
            journal: false,
            fake_time: 1_700_000_000,
        };
        let make = |name: &str| {
            // Touch the tree as a new build would: new ctimes, atimes and mtimes.
            std::fs::write(tree.join("usr/bin/tool"), vec![7u8; 10000]).unwrap();
            clamp_times(&tree, o.fake_time).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let img = d.path().join(name);
            make_ext4(&img, 8 << 20, &tree, &o).unwrap();
            std::fs::read(img).unwrap()
        };
        let a = make("a.ext4");
        let b = make("b.ext4");
        assert!(a == b, "two filesystems from the same tree differ");
    }
}
