//! The host's drives as sysfs describes them, and what a flash target path is.

use crate::{FlashError, IoContext, Result, human_size};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where `/proc` and `/sys` are read from: `/` on the host, a synthetic tree in tests.
#[derive(Debug, Clone)]
pub struct HostView {
    root: PathBuf,
}

impl HostView {
    /// The running host.
    pub fn host() -> HostView {
        HostView {
            root: PathBuf::from("/"),
        }
    }

    /// A tree holding `proc/` and `sys/` (and `dev/` for names) like the host's.
    pub fn at(root: impl Into<PathBuf>) -> HostView {
        HostView { root: root.into() }
    }

    pub(crate) fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    pub(crate) fn proc(&self, rel: &str) -> PathBuf {
        self.root.join("proc").join(rel)
    }

    /// A host path (`/dev/sda2`) inside this view.
    pub(crate) fn host_path(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The sysfs directory of the block device `major:minor` (canonical).
    pub(crate) fn block_dir_by_devnum(&self, major: u32, minor: u32) -> Option<PathBuf> {
        fs::canonicalize(self.sys(&format!("dev/block/{major}:{minor}"))).ok()
    }

    /// The sysfs directory of the block device called `name` (canonical).
    pub(crate) fn block_dir_by_name(&self, name: &str) -> Option<PathBuf> {
        fs::canonicalize(self.sys(&format!("class/block/{name}")))
            .or_else(|_| fs::canonicalize(self.sys(&format!("block/{name}"))))
            .ok()
    }
}

/// A whole drive (not a partition).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drive {
    /// Kernel name (`sdb`, `mmcblk0`).
    pub name: String,
    /// `/dev/NAME`.
    pub path: PathBuf,
    pub size: u64,
    /// Removable for flashing: removable media (the kernel's flag), or a drive on a
    /// hot-pluggable bus (USB, SD card), which the kernel often flags as fixed.
    pub removable: bool,
    /// The kernel's `removable` flag as is.
    pub removable_media: bool,
    pub read_only: bool,
    pub vendor: Option<String>,
    pub model: Option<String>,
    /// `usb`, `sd`, `mmc` (eMMC), `nvme`, `sata`, `virtio`, `scsi`, when known.
    pub transport: Option<String>,
    /// `major:minor`.
    pub dev: String,
}

impl Drive {
    /// "SanDisk Ultra" or the name.
    pub fn description(&self) -> String {
        let v: Vec<&str> = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect();
        if v.is_empty() {
            "unknown model".to_string()
        } else {
            v.join(" ")
        }
    }

    /// One line for messages: "/dev/sdb (SanDisk Ultra, 29.8 GiB, usb)".
    pub fn summary(&self) -> String {
        format!(
            "{} ({}, {}{})",
            self.path.display(),
            self.description(),
            human_size(self.size),
            self.transport
                .as_deref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default()
        )
    }
}

/// Device names that are never flash targets: virtual, stacked or optical devices.
fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "sr", "nbd", "zd", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The drive whose sysfs directory is `dir` (named `name`).
pub(crate) fn drive_at(dir: &Path, name: &str) -> Result<Drive> {
    let sectors: u64 = read_trimmed(&dir.join("size"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FlashError::Image(format!("{}: no readable size", dir.display())))?;
    let flag = |f: &str| read_trimmed(&dir.join(f)).as_deref() == Some("1");
    let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let path_text = canonical.to_string_lossy().to_string();
    let mmc_type = read_trimmed(&dir.join("device/type"));
    let transport = if path_text.contains("/usb") {
        Some("usb")
    } else if name.starts_with("mmcblk") {
        Some(if mmc_type.as_deref() == Some("SD") {
            "sd"
        } else {
            "mmc"
        })
    } else if name.starts_with("nvme") {
        Some("nvme")
    } else if path_text.contains("/ata") {
        Some("sata")
    } else if path_text.contains("/virtio") || name.starts_with("vd") {
        Some("virtio")
    } else if name.starts_with("sd") {
        Some("scsi")
    } else {
        None
    };
    let removable_media = flag("removable");
    let removable = removable_media || matches!(transport, Some("usb") | Some("sd"));
    // SD/MMC cards name themselves in device/name; others in device/model.
    let model = read_trimmed(&dir.join("device/model")).or_else(|| {
        if name.starts_with("mmcblk") {
            read_trimmed(&dir.join("device/name"))
        } else {
            None
        }
    });
    Ok(Drive {
        name: name.to_string(),
        path: PathBuf::from("/dev").join(name),
        size: sectors * 512,
        removable,
        removable_media,
        read_only: flag("ro"),
        vendor: read_trimmed(&dir.join("device/vendor")),
        model,
        transport: transport.map(str::to_string),
        dev: read_trimmed(&dir.join("dev")).unwrap_or_default(),
    })
}

/// The drives of the host (all of them; see [`Drive::removable`] for the candidates), sorted by
/// name, skipping virtual devices (loop, ram, zram, dm, md, optical) and empty card readers.
pub fn list_drives(view: &HostView) -> Result<Vec<Drive>> {
    let block = view.sys("block");
    let mut out = Vec::new();
    let entries = fs::read_dir(&block).ctx(|| format!("listing {}", block.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", block.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if is_virtual(&name) {
            continue;
        }
        let d = drive_at(&entry.path(), &name)?;
        if d.size == 0 {
            continue;
        }
        out.push(d);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a flash writes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A regular file (created when missing): stands in for a drive in tests and VMs.
    File(PathBuf),
    /// A whole drive.
    Device(Drive),
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::File(p) => p,
            Target::Device(d) => &d.path,
        }
    }
}

/// What `path` names: a regular file (or a file to create), or a whole drive. A partition, a
/// directory or a character device is refused with what to pass instead.
pub fn resolve_target(view: &HostView, path: &Path) -> Result<Target> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.starts_with("/dev") {
                return Err(FlashError::Refused {
                    target: path.to_path_buf(),
                    reason: "no such device (see the drives `otter flash IMAGE` lists)".into(),
                });
            }
            return Ok(Target::File(path.to_path_buf()));
        }
        Err(e) => {
            return Err(FlashError::Io {
                context: format!("looking at {}", path.display()),
                error: e,
            });
        }
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Target::File(path.to_path_buf()));
    }
    if !ft.is_block_device() {
        return Err(FlashError::Refused {
            target: path.to_path_buf(),
            reason: "not a drive or a regular file".into(),
        });
    }
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dir = view
        .block_dir_by_devnum(major, minor)
        .ok_or_else(|| FlashError::Refused {
            target: path.to_path_buf(),
            reason: format!("block device {major}:{minor} is not in sysfs"),
        })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        return Err(FlashError::Refused {
            target: path.to_path_buf(),
            reason: format!(
                "{name} is a partition; an image goes onto the whole drive: /dev/{disk}"
            ),
        });
    }
    Ok(Target::Device(drive_at(&dir, &name)?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builds a synthetic `/sys` + `/proc` tree.
    pub struct FakeHost {
        pub dir: tempfile::TempDir,
    }

    impl FakeHost {
        pub fn new() -> FakeHost {
            let dir = tempfile::tempdir().unwrap();
            for d in ["sys/block", "sys/class/block", "sys/dev/block", "proc/self"] {
                fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            fs::write(dir.path().join("proc/self/mountinfo"), "").unwrap();
            fs::write(
                dir.path().join("proc/swaps"),
                "Filename\tType\tSize\tUsed\tPriority\n",
            )
            .unwrap();
            FakeHost { dir }
        }

        pub fn view(&self) -> HostView {
            HostView::at(self.dir.path())
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn register(&self, name: &str, devdir: &Path, dev: &str) {
            fs::write(devdir.join("dev"), format!("{dev}\n")).unwrap();
            symlink(devdir, self.root().join("sys/class/block").join(name)).unwrap();
            symlink(devdir, self.root().join("sys/dev/block").join(dev)).unwrap();
        }

        /// A disk under `bus` (a path below sys/devices), with `/sys/block/NAME` linking to it.
        pub fn disk(&self, name: &str, bus: &str, dev: &str, sectors: u64, removable: bool) {
            let devdir = self
                .root()
                .join("sys/devices")
                .join(bus)
                .join("block")
                .join(name);
            fs::create_dir_all(devdir.join("device")).unwrap();
            fs::create_dir_all(devdir.join("holders")).unwrap();
            fs::write(devdir.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(
                devdir.join("removable"),
                if removable { "1\n" } else { "0\n" },
            )
            .unwrap();
            fs::write(devdir.join("ro"), "0\n").unwrap();
            symlink(&devdir, self.root().join("sys/block").join(name)).unwrap();
            self.register(name, &devdir, dev);
        }

        pub fn model(&self, disk: &str, vendor: &str, model: &str) {
            let d = self.root().join("sys/block").join(disk).join("device");
            fs::write(d.join("vendor"), format!("{vendor}  \n")).unwrap();
            fs::write(d.join("model"), format!("{model}\n")).unwrap();
        }

        pub fn partition(&self, disk: &str, name: &str, dev: &str) {
            let devdir = fs::canonicalize(self.root().join("sys/block").join(disk))
                .unwrap()
                .join(name);
            fs::create_dir_all(devdir.join("holders")).unwrap();
            fs::write(devdir.join("partition"), "1\n").unwrap();
            fs::write(devdir.join("size"), "2048\n").unwrap();
            self.register(name, &devdir, dev);
        }

        /// A device-mapper (or md) device `name` stacked on `slaves`.
        pub fn stacked(&self, name: &str, dev: &str, slaves: &[&str]) {
            let devdir = self.root().join("sys/devices/virtual/block").join(name);
            fs::create_dir_all(devdir.join("slaves")).unwrap();
            fs::create_dir_all(devdir.join("holders")).unwrap();
            fs::write(devdir.join("size"), "2048\n").unwrap();
            symlink(&devdir, self.root().join("sys/block").join(name)).unwrap();
            self.register(name, &devdir, dev);
            for s in slaves {
                let sdir = fs::canonicalize(self.root().join("sys/class/block").join(s)).unwrap();
                symlink(&sdir, devdir.join("slaves").join(s)).unwrap();
                symlink(&devdir, sdir.join("holders").join(name)).unwrap();
            }
        }

        /// Append a mountinfo line for `dev` mounted at `at`.
        pub fn mount(&self, dev: &str, at: &str, source: &str) {
            let p = self.root().join("proc/self/mountinfo");
            let mut s = fs::read_to_string(&p).unwrap();
            let id = s.lines().count() + 20;
            s.push_str(&format!(
                "{id} 1 {dev} / {at} rw,relatime shared:1 - ext4 {source} rw\n"
            ));
            fs::write(p, s).unwrap();
        }

        pub fn swap(&self, path: &str) {
            let p = self.root().join("proc/swaps");
            let mut s = fs::read_to_string(&p).unwrap();
            s.push_str(&format!("{path}\tpartition\t1048572\t0\t-2\n"));
            fs::write(p, s).unwrap();
        }
    }

    /// A host with a SATA system disk, an NVMe disk, a USB stick, an SD card, an eMMC and a
    /// loop device.
    pub fn typical() -> FakeHost {
        let h = FakeHost::new();
        h.disk(
            "sda",
            "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0",
            "8:0",
            500_000_000,
            false,
        );
        h.model("sda", "ATA", "Samsung SSD 860");
        h.partition("sda", "sda1", "8:1");
        h.partition("sda", "sda2", "8:2");
        h.disk(
            "sdb",
            "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
            "8:16",
            60_000_000,
            true,
        );
        h.model("sdb", "SanDisk", "Ultra");
        h.partition("sdb", "sdb1", "8:17");
        h.disk(
            "nvme0n1",
            "pci0000:00/0000:00:1d.0/nvme/nvme0",
            "259:0",
            1_000_000_000,
            false,
        );
        h.disk(
            "mmcblk0",
            "platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa",
            "179:0",
            62_000_000,
            false,
        );
        fs::write(h.root().join("sys/block/mmcblk0/device/type"), "SD\n").unwrap();
        fs::write(h.root().join("sys/block/mmcblk0/device/name"), "SC32G\n").unwrap();
        h.disk(
            "mmcblk1",
            "platform/fe310000.mmc/mmc_host/mmc1/mmc1:0001",
            "179:32",
            30_000_000,
            false,
        );
        fs::write(h.root().join("sys/block/mmcblk1/device/type"), "MMC\n").unwrap();
        h.disk("loop0", "virtual", "7:0", 1000, false);
        h.disk(
            "sdc",
            "pci0000:00/0000:00:14.0/usb2/2-2/host7/target7:0:0/7:0:0:0",
            "8:32",
            0,
            true,
        );
        h
    }

    #[test]
    fn lists_drives_with_transport_and_removable() {
        let h = typical();
        let drives = list_drives(&h.view()).unwrap();
        let names: Vec<&str> = drives.iter().map(|d| d.name.as_str()).collect();
        // loop0 is virtual, sdc is an empty card reader.
        assert_eq!(names, vec!["mmcblk0", "mmcblk1", "nvme0n1", "sda", "sdb"]);
        let get = |n: &str| drives.iter().find(|d| d.name == n).unwrap();
        let sdb = get("sdb");
        assert_eq!(sdb.transport.as_deref(), Some("usb"));
        assert!(sdb.removable && sdb.removable_media);
        assert_eq!(sdb.size, 60_000_000 * 512);
        assert_eq!(sdb.description(), "SanDisk Ultra");
        assert_eq!(sdb.dev, "8:16");
        assert_eq!(sdb.path, PathBuf::from("/dev/sdb"));
        assert!(sdb.summary().contains("28.6 GiB"), "{}", sdb.summary());
        let sda = get("sda");
        assert_eq!(sda.transport.as_deref(), Some("sata"));
        assert!(!sda.removable);
        // An SD card counts as removable even with the kernel flag off; eMMC does not.
        let sd = get("mmcblk0");
        assert_eq!(sd.transport.as_deref(), Some("sd"));
        assert!(sd.removable && !sd.removable_media);
        assert_eq!(sd.model.as_deref(), Some("SC32G"));
        let emmc = get("mmcblk1");
        assert_eq!(emmc.transport.as_deref(), Some("mmc"));
        assert!(!emmc.removable);
        assert_eq!(get("nvme0n1").transport.as_deref(), Some("nvme"));
    }

    #[test]
    fn resolves_files_and_refuses_odd_targets() {
        let h = FakeHost::new();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk.img");
        assert!(matches!(
            resolve_target(&h.view(), &f).unwrap(),
            Target::File(_)
        ));
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            resolve_target(&h.view(), &f).unwrap(),
            Target::File(_)
        ));
        let e = resolve_target(&h.view(), d.path()).unwrap_err();
        assert!(
            e.to_string().contains("not a drive or a regular file"),
            "{e}"
        );
        let e = resolve_target(&h.view(), Path::new("/dev/otter-no-such-disk")).unwrap_err();
        assert!(e.to_string().contains("no such device"), "{e}");
    }
}
