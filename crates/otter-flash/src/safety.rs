//! The rules that keep `otter flash` from overwriting the wrong drive.
//!
//! Never (not even with `force`): the drive the host runs from (holding `/`, `/boot`,
//! `/boot/efi`, `/usr` or swap, through partitions and device-mapper/md stacks), a drive with a
//! mounted partition or a partition in use by another device (LVM, LUKS, RAID), a read-only
//! drive. Only with `force`: a drive that is not removable.

use crate::drives::{Drive, HostView};
use crate::{FlashError, IoContext, Result};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Mount points whose drive is "the drive the host runs from".
const SYSTEM_MOUNTS: [&str; 4] = ["/", "/boot", "/boot/efi", "/usr"];

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Parse `/proc/self/mountinfo` text (lines that do not parse are skipped: the kernel writes
/// this file, and a stranger line must not hide the others).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let Some((ma, mi)) = fields[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        let source = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 2))
            .map(|s| unescape(s))
            .unwrap_or_default();
        out.push(Mount {
            major,
            minor,
            mount_point: unescape(fields[4]),
            source,
        });
    }
    out
}

/// Swap areas from `/proc/swaps`: (path, type).
fn parse_swaps(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((unescape(f.next()?), f.next()?.to_string()))
        })
        .collect()
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The whole drives under the block device in sysfs directory `dir`: the disk of a partition,
/// the disks under a device-mapper or md device (through `slaves/`, recursively).
fn base_drives(dir: &Path, out: &mut BTreeSet<String>, depth: u32) {
    if depth > 16 {
        return;
    }
    let slaves = dir.join("slaves");
    let mut had_slaves = false;
    if let Ok(entries) = fs::read_dir(&slaves) {
        for e in entries.flatten() {
            if let Ok(d) = fs::canonicalize(e.path()) {
                had_slaves = true;
                base_drives(&d, out, depth + 1);
            }
        }
    }
    if had_slaves {
        return;
    }
    if dir.join("partition").exists() {
        if let Some(parent) = dir.parent() {
            out.insert(dir_name(parent));
        }
    } else {
        out.insert(dir_name(dir));
    }
}

impl HostView {
    fn mounts(&self) -> Result<Vec<Mount>> {
        let p = self.proc("self/mountinfo");
        let text = fs::read_to_string(&p).ctx(|| format!("reading {}", p.display()))?;
        Ok(parse_mountinfo(&text))
    }

    /// The sysfs directory of the device a mount is on: by its device number, else (btrfs
    /// shows anonymous numbers) by its source `/dev/...` path.
    fn mount_dir(&self, m: &Mount) -> Option<PathBuf> {
        self.block_dir_by_devnum(m.major, m.minor)
            .or_else(|| self.dev_path_dir(Path::new(&m.source)))
    }

    /// The sysfs directory of a `/dev/...` path (following `/dev/mapper/x` → `dm-0`).
    fn dev_path_dir(&self, p: &Path) -> Option<PathBuf> {
        if !p.starts_with("/dev/") {
            return None;
        }
        let resolved = fs::canonicalize(self.host_path(p)).unwrap_or_else(|_| p.to_path_buf());
        self.block_dir_by_name(&dir_name(&resolved))
    }

    /// Swap areas as (description, sysfs directory of their device).
    fn swap_dirs(&self) -> Vec<(String, PathBuf)> {
        let text = fs::read_to_string(self.proc("swaps")).unwrap_or_default();
        let mut out = Vec::new();
        for (path, kind) in parse_swaps(&text) {
            let p = Path::new(&path);
            let dir = if kind == "file" {
                // A swap file lives on the filesystem of its directory's device.
                use std::os::unix::fs::MetadataExt;
                fs::metadata(self.host_path(p)).ok().and_then(|m| {
                    self.block_dir_by_devnum(libc::major(m.dev()), libc::minor(m.dev()))
                })
            } else {
                self.dev_path_dir(p)
            };
            if let Some(d) = dir {
                out.push((path, d));
            }
        }
        out
    }

    /// The drives the running system lives on, each with why ("/ on sda2").
    pub fn system_drives(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for m in self.mounts()? {
            if !SYSTEM_MOUNTS.contains(&m.mount_point.as_str()) {
                continue;
            }
            if let Some(dir) = self.mount_dir(&m) {
                let mut drives = BTreeSet::new();
                base_drives(&dir, &mut drives, 0);
                for d in drives {
                    out.push((d, format!("{} is on {}", m.mount_point, dir_name(&dir))));
                }
            }
        }
        for (path, dir) in self.swap_dirs() {
            let mut drives = BTreeSet::new();
            base_drives(&dir, &mut drives, 0);
            for d in drives {
                out.push((d, format!("swap {path} is on it")));
            }
        }
        Ok(out)
    }
}

/// The drive, its partitions and everything stacked on them (holders), as sysfs directories.
fn drive_family(view: &HostView, drive: &Drive) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Some(dir) = view.block_dir_by_name(&drive.name) else {
        return out;
    };
    let mut todo = vec![dir.clone()];
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                todo.push(e.path());
            }
        }
    }
    while let Some(d) = todo.pop() {
        if out.len() > 256 || out.contains(&d) {
            continue;
        }
        if let Ok(entries) = fs::read_dir(d.join("holders")) {
            for e in entries.flatten() {
                if let Ok(h) = fs::canonicalize(e.path()) {
                    todo.push(h);
                }
            }
        }
        out.push(d);
    }
    out
}

/// Check that `drive` may be overwritten. `force` allows a drive that is not removable and
/// nothing else.
pub fn check_device(view: &HostView, drive: &Drive, force: bool) -> Result<()> {
    let refuse = |reason: String| FlashError::Refused {
        target: drive.path.clone(),
        reason,
    };
    if let Some((_, why)) = view
        .system_drives()?
        .into_iter()
        .find(|(d, _)| *d == drive.name)
    {
        return Err(refuse(format!(
            "it is the drive this computer runs from ({why}); not even --force overwrites it"
        )));
    }
    let family = drive_family(view, drive);
    for m in view.mounts()? {
        if let Some(dir) = view.mount_dir(&m)
            && family.contains(&dir)
        {
            return Err(refuse(format!(
                "{} is mounted at {}: unmount it first (umount {})",
                dir_name(&dir),
                m.mount_point,
                m.mount_point
            )));
        }
    }
    for (path, dir) in view.swap_dirs() {
        if family.contains(&dir) {
            return Err(refuse(format!(
                "{path} is in use as swap: swapoff {path} first"
            )));
        }
    }
    // A partition held by another device: LVM, LUKS or RAID is using it.
    let own: Vec<&PathBuf> = family
        .iter()
        .filter(|d| {
            d.join("partition").exists() || view.block_dir_by_name(&drive.name).as_ref() == Some(d)
        })
        .collect();
    if let Some(holder) = family.iter().find(|d| !own.contains(d)) {
        return Err(refuse(format!(
            "it is in use by {} (device mapper, LVM, LUKS or RAID): close that first",
            dir_name(holder)
        )));
    }
    if drive.read_only {
        return Err(refuse(
            "the drive is read-only (an SD card's write-protect switch?)".into(),
        ));
    }
    if !drive.removable && !force {
        return Err(refuse(format!(
            "{} is not a removable drive; pass --force if you really mean to overwrite it",
            drive.summary()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drives::list_drives;
    use crate::drives::tests::{FakeHost, typical};

    fn drive(h: &FakeHost, name: &str) -> Drive {
        list_drives(&h.view())
            .unwrap()
            .into_iter()
            .find(|d| d.name == name)
            .unwrap()
    }

    fn refusal(h: &FakeHost, name: &str, force: bool) -> String {
        check_device(&h.view(), &drive(h, name), force)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_mountinfo_with_escapes() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw\n\
             garbage\n\
             37 1 0:33 / /home rw shared:2 - btrfs /dev/nvme0n1p2 rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/mnt/my disk");
        assert_eq!((m[0].major, m[0].minor), (98, 0));
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].source, "/dev/nvme0n1p2");
    }

    #[test]
    fn removable_unmounted_drive_is_fine() {
        let h = typical();
        h.mount("8:2", "/", "/dev/sda2");
        check_device(&h.view(), &drive(&h, "sdb"), false).unwrap();
        check_device(&h.view(), &drive(&h, "mmcblk0"), false).unwrap();
    }

    #[test]
    fn refuses_the_system_drive_even_forced() {
        let h = typical();
        h.mount("8:2", "/", "/dev/sda2");
        let e = refusal(&h, "sda", true);
        assert!(e.contains("runs from") && e.contains("/ is on sda2"), "{e}");
    }

    #[test]
    fn refuses_the_system_drive_through_lvm_and_swap() {
        let h = typical();
        // / on an LVM volume over nvme0n1, swap on mmcblk1.
        h.stacked("dm-0", "253:0", &["nvme0n1"]);
        h.mount("253:0", "/", "/dev/mapper/vg-root");
        h.swap("/dev/mmcblk1");
        let e = refusal(&h, "nvme0n1", true);
        assert!(e.contains("runs from") && e.contains("dm-0"), "{e}");
        let e = refusal(&h, "mmcblk1", true);
        assert!(e.contains("runs from") && e.contains("swap"), "{e}");
    }

    #[test]
    fn refuses_btrfs_root_found_by_source() {
        let h = typical();
        fs::create_dir_all(h.dir.path().join("dev")).unwrap();
        // btrfs reports an anonymous device number; the source names the partition.
        h.mount("0:33", "/", "/dev/sda2");
        let e = refusal(&h, "sda", true);
        assert!(e.contains("runs from"), "{e}");
    }

    #[test]
    fn refuses_mounted_and_held_partitions() {
        let h = typical();
        h.mount("8:17", "/media/user/STICK", "/dev/sdb1");
        let e = refusal(&h, "sdb", true);
        assert!(
            e.contains("sdb1 is mounted at /media/user/STICK") && e.contains("umount"),
            "{e}"
        );

        let h = typical();
        h.stacked("dm-3", "253:3", &["sdb1"]);
        let e = refusal(&h, "sdb", true);
        assert!(e.contains("in use by dm-3"), "{e}");

        let h = typical();
        h.stacked("dm-3", "253:3", &["sdb1"]);
        h.mount("253:3", "/media/secret", "/dev/mapper/luks-1");
        let e = refusal(&h, "sdb", true);
        assert!(e.contains("dm-3 is mounted at /media/secret"), "{e}");

        let h = typical();
        h.swap("/dev/sdb1");
        let e = refusal(&h, "sdb", true);
        assert!(e.contains("runs from") && e.contains("swap"), "{e}");
    }

    #[test]
    fn fixed_drive_needs_force_and_read_only_never() {
        let h = typical();
        let e = refusal(&h, "nvme0n1", false);
        assert!(
            e.contains("not a removable drive") && e.contains("--force"),
            "{e}"
        );
        check_device(&h.view(), &drive(&h, "nvme0n1"), true).unwrap();
        fs::write(h.dir.path().join("sys/block/sdb/ro"), "1\n").unwrap();
        let e = refusal(&h, "sdb", true);
        assert!(e.contains("read-only"), "{e}");
    }
}
