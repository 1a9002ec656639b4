//! Files inside the `otter-boot` partition of a disk image, read and written in place with
//! `fatfs` over a slice of the image file: no root, loop device or `mount`.
//!
//! A write never leaves the image without a complete config: the new content goes to
//! `NAME.new`, then the old file is renamed `NAME.old`, the new one renamed into place and
//! the old one removed, with the image synced between the steps. An interrupted write leaves
//! either the old or the new file complete under `NAME`, or, between the two renames, the old
//! one under `NAME.old`, which [`BootPartition::read_file`] then returns.

use crate::disk::{Placed, read_partitions};
use crate::{ImageError, IoContext, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// GPT labels that make a disk image an Otter image.
pub const BOOT_LABEL: &str = "otter-boot";
pub const ROOT_A_LABEL: &str = "otter-root-a";

/// The boot partition of an Otter disk image.
#[derive(Debug, Clone)]
pub struct BootPartition {
    image: PathBuf,
    part: Placed,
}

/// Magic numbers of compressed files people may pass instead of the `.img`.
const COMPRESSED: &[(&[u8], &str, &str)] = &[
    (&[0x28, 0xB5, 0x2F, 0xFD], "zstd", "zstd -d"),
    (&[0x1F, 0x8B], "gzip", "gunzip"),
    (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], "xz", "unxz"),
];

impl BootPartition {
    /// Find `otter-boot` in `image` (by GPT label), refusing files that are not Otter images.
    pub fn open(image: &Path) -> Result<BootPartition> {
        let not_otter = |why: String| {
            ImageError::Other(format!(
                "{} is not an Otter disk image: {why}; pass the .img that `otter build` made",
                image.display()
            ))
        };
        let mut f = File::open(image).ctx(|| format!("opening {}", image.display()))?;
        let len = f
            .metadata()
            .ctx(|| format!("reading the size of {}", image.display()))?
            .len();
        let mut head = [0u8; 8];
        let n = f
            .read(&mut head)
            .ctx(|| format!("reading {}", image.display()))?;
        for (magic, kind, tool) in COMPRESSED {
            if head[..n].starts_with(magic) {
                return Err(ImageError::Other(format!(
                    "{} is {kind}-compressed: decompress it first ({tool} {}) or pass the .img next to it",
                    image.display(),
                    image.display()
                )));
            }
        }
        let parts = read_partitions(image)
            .map_err(|e| not_otter(format!("no GPT partition table ({e})")))?;
        let labels: Vec<&str> = parts.iter().map(|p| p.label.as_str()).collect();
        let boot = parts.iter().find(|p| p.label == BOOT_LABEL);
        let (Some(boot), true) = (boot, labels.contains(&ROOT_A_LABEL)) else {
            return Err(not_otter(format!(
                "it has no {BOOT_LABEL} and {ROOT_A_LABEL} partitions (found: {})",
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    labels.join(", ")
                }
            )));
        };
        if boot.offset + boot.size > len {
            return Err(not_otter(format!(
                "the {BOOT_LABEL} partition ends at byte {} but the file has only {len} bytes (truncated?)",
                boot.offset + boot.size
            )));
        }
        Ok(BootPartition {
            image: image.to_path_buf(),
            part: boot.clone(),
        })
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Where the partition lies in the image.
    pub fn placement(&self) -> &Placed {
        &self.part
    }

    fn fat_err(&self, message: String) -> ImageError {
        ImageError::Fat {
            path: self.image.clone(),
            message,
        }
    }

    fn open_fs<'f>(
        &self,
        file: &'f File,
    ) -> Result<fatfs::FileSystem<fscommon::StreamSlice<&'f File>>> {
        let slice =
            fscommon::StreamSlice::new(file, self.part.offset, self.part.offset + self.part.size)
                .ctx(|| format!("slicing the boot partition of {}", self.image.display()))?;
        fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).map_err(|e| {
            self.fat_err(format!(
                "the {BOOT_LABEL} partition holds no FAT filesystem: {e}"
            ))
        })
    }

    /// The content of `inner` (e.g. `otter/device.toml`), or none when neither it nor the
    /// `inner.old` an interrupted write leaves behind exists.
    pub fn read_file(&self, inner: &str) -> Result<Option<Vec<u8>>> {
        let file = File::open(&self.image).ctx(|| format!("opening {}", self.image.display()))?;
        let fs = self.open_fs(&file)?;
        let root = fs.root_dir();
        for name in [inner.to_string(), format!("{inner}.old")] {
            match root.open_file(&name) {
                Ok(mut f) => {
                    let mut out = Vec::new();
                    f.read_to_end(&mut out)
                        .ctx(|| format!("reading {name} from {}", self.image.display()))?;
                    return Ok(Some(out));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.fat_err(format!("opening {name}: {e}")));
                }
            }
        }
        Ok(None)
    }

    /// Replace `inner` with `content` (directories created as needed), as described in the
    /// module documentation.
    pub fn write_file(&self, inner: &str, content: &[u8]) -> Result<()> {
        let parts: Vec<&str> = inner.split('/').filter(|s| !s.is_empty()).collect();
        let Some((name, dirs)) = parts.split_last() else {
            return Err(ImageError::Other(format!("`{inner}` is not a file path")));
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .ctx(|| format!("opening {} for writing", self.image.display()))?;
        let sync = || {
            file.sync_all()
                .ctx(|| format!("syncing {}", self.image.display()))
        };
        let fs = self.open_fs(&file)?;
        {
            let mut dir = fs.root_dir();
            for d in dirs {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir
                        .create_dir(d)
                        .map_err(|e| self.fat_err(format!("creating directory {d}: {e}")))?,
                };
            }
            let new = format!("{name}.new");
            let old = format!("{name}.old");
            let gone = |r: std::io::Result<()>, what: &str| match r {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.fat_err(format!("removing {what}: {e}"))),
            };
            // A leftover from an interrupted write: only complete once renamed into place.
            gone(dir.remove(&new), &new)?;
            let mut f = dir
                .create_file(&new)
                .map_err(|e| self.fat_err(format!("creating {new}: {e}")))?;
            f.truncate()
                .map_err(|e| self.fat_err(format!("truncating {new}: {e}")))?;
            f.write_all(content)
                .map_err(|e| self.fat_err(format!("writing {new}: {e}")))?;
            f.flush()
                .map_err(|e| self.fat_err(format!("flushing {new}: {e}")))?;
            drop(f);
            sync()?;
            let exists = dir.open_file(name).is_ok();
            if exists {
                // `NAME.old` from an interrupted write is older than `NAME`.
                gone(dir.remove(&old), &old)?;
                dir.rename(name, &dir, &old)
                    .map_err(|e| self.fat_err(format!("renaming {name} to {old}: {e}")))?;
                sync()?;
            }
            dir.rename(&new, &dir, name)
                .map_err(|e| self.fat_err(format!("renaming {new} to {name}: {e}")))?;
            sync()?;
            gone(dir.remove(&old), &old)?;
        }
        fs.unmount()
            .map_err(|e| self.fat_err(format!("closing the filesystem: {e}")))?;
        sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{ESP_TYPE, LINUX_DATA_TYPE, MIB, PartitionSpec, assemble};
    use crate::fat::make_fat;

    fn image(dir: &Path, labels: &[&str]) -> PathBuf {
        let boot = dir.join("boot.vfat");
        make_fat(
            &boot,
            4 * MIB,
            "otter-boot",
            &[("otter/grubenv".into(), b"env".to_vec())],
        )
        .unwrap();
        let parts: Vec<PartitionSpec> = labels
            .iter()
            .map(|l| PartitionSpec {
                label: l.to_string(),
                type_guid: if *l == "otter-boot" {
                    ESP_TYPE
                } else {
                    LINUX_DATA_TYPE
                }
                .into(),
                size: if *l == "otter-boot" { 4 * MIB } else { MIB },
                content: (*l == "otter-boot").then(|| boot.clone()),
            })
            .collect();
        let img = dir.join("disk.img");
        assemble(&img, &parts, "t").unwrap();
        img
    }

    #[test]
    fn write_read_replace() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), &["otter-boot", "otter-root-a", "otter-root-b"]);
        let b = BootPartition::open(&img).unwrap();
        assert_eq!(b.read_file("otter/device.toml").unwrap(), None);
        b.write_file("otter/device.toml", b"hostname = \"a\"\n")
            .unwrap();
        assert_eq!(
            b.read_file("otter/device.toml").unwrap().unwrap(),
            b"hostname = \"a\"\n"
        );
        let long = vec![b'x'; 100_000];
        b.write_file("otter/device.toml", &long).unwrap();
        assert_eq!(b.read_file("otter/device.toml").unwrap().unwrap(), long);
        b.write_file("otter/device.toml", b"short").unwrap();
        assert_eq!(b.read_file("otter/device.toml").unwrap().unwrap(), b"short");
        // Other files untouched, no leftovers.
        let fs_file = File::open(&img).unwrap();
        let fs = b.open_fs(&fs_file).unwrap();
        let names: Vec<String> = fs
            .root_dir()
            .open_dir("otter")
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        assert_eq!(names, ["grubenv", "device.toml"]);
        drop(fs);
        assert_eq!(
            crate::fat::read_file_at(
                &img,
                b.placement().offset,
                b.placement().size,
                "otter/grubenv"
            )
            .unwrap(),
            b"env"
        );
        // New directories are made.
        b.write_file("a/b/c.txt", b"deep").unwrap();
        assert_eq!(b.read_file("a/b/c.txt").unwrap().unwrap(), b"deep");
    }

    #[test]
    fn interrupted_write_leaves_the_old_file_readable() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), &["otter-boot", "otter-root-a"]);
        let b = BootPartition::open(&img).unwrap();
        b.write_file("otter/device.toml", b"old").unwrap();
        // Simulate a stop between the two renames: NAME.old and NAME.new, no NAME.
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let fs = b.open_fs(&f).unwrap();
            let dir = fs.root_dir().open_dir("otter").unwrap();
            let mut n = dir.create_file("device.toml.new").unwrap();
            n.write_all(b"new").unwrap();
            drop(n);
            dir.rename("device.toml", &dir, "device.toml.old").unwrap();
            drop(dir);
            fs.unmount().unwrap();
        }
        assert_eq!(b.read_file("otter/device.toml").unwrap().unwrap(), b"old");
        // The next write cleans up.
        b.write_file("otter/device.toml", b"next").unwrap();
        assert_eq!(b.read_file("otter/device.toml").unwrap().unwrap(), b"next");
        let f = File::open(&img).unwrap();
        let fs = b.open_fs(&f).unwrap();
        let dir = fs.root_dir().open_dir("otter").unwrap();
        assert!(dir.open_file("device.toml.old").is_err());
        assert!(dir.open_file("device.toml.new").is_err());
    }

    #[test]
    fn refuses_non_otter_files() {
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.img");
        std::fs::write(&junk, vec![0u8; 2 << 20]).unwrap();
        let e = BootPartition::open(&junk).unwrap_err().to_string();
        assert!(
            e.contains("not an Otter disk image") && e.contains("junk.img"),
            "{e}"
        );

        let other = image(d.path(), &["otter-boot", "data"]);
        let e = BootPartition::open(&other).unwrap_err().to_string();
        assert!(e.contains("found: otter-boot, data"), "{e}");

        let zst = d.path().join("x.img.zst");
        std::fs::write(&zst, [0x28, 0xB5, 0x2F, 0xFD, 0, 0, 0, 0]).unwrap();
        let e = BootPartition::open(&zst).unwrap_err().to_string();
        assert!(
            e.contains("zstd-compressed") && e.contains("zstd -d"),
            "{e}"
        );

        let e = BootPartition::open(&d.path().join("missing.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.img"), "{e}");
    }

    #[test]
    fn refuses_truncated_images() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), &["otter-boot", "otter-root-a"]);
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(3 * MIB).unwrap();
        drop(f);
        let e = BootPartition::open(&img).unwrap_err().to_string();
        assert!(e.contains("truncated") || e.contains("GPT"), "{e}");
    }
    /// `fsck.fat -n` findings of the boot partition, without the lines that count clusters
    /// (none when dosfstools is missing).
    fn fsck_findings(img: &Path, b: &BootPartition) -> Option<Vec<String>> {
        let part = img.with_extension("part");
        let bytes = std::fs::read(img).unwrap();
        let (o, n) = (b.placement().offset as usize, b.placement().size as usize);
        std::fs::write(&part, &bytes[o..o + n]).unwrap();
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&part)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // Its summary line shows it checked the filesystem.
        assert!(text.contains(" files, "), "fsck.fat did not run: {text}");
        Some(
            text.lines()
                .filter(|l| {
                    !l.contains("Free cluster summary")
                        && !l.contains(" files, ")
                        && !l.starts_with("fsck.fat ")
                })
                .map(String::from)
                .collect(),
        )
    }

    #[test]
    fn writes_leave_the_filesystem_as_consistent_as_they_found_it() {
        let d = tempfile::tempdir().unwrap();
        let img = image(d.path(), &["otter-boot", "otter-root-a"]);
        let b = BootPartition::open(&img).unwrap();
        b.write_file("otter/device.toml", b"first").unwrap();
        let Some(before) = fsck_findings(&img, &b) else {
            eprintln!("skipped: fsck.fat not found (apt-get install dosfstools)");
            return;
        };
        for i in 0..5 {
            let content = vec![b'a' + i; 1000 + 3000 * i as usize];
            b.write_file("otter/device.toml", &content).unwrap();
        }
        b.write_file("otter/device.toml", b"small again").unwrap();
        let after = fsck_findings(&img, &b).unwrap();
        // fatfs 0.3 writes long-name entries before `.`/`..` of new directories, which fsck
        // reports; a replace must add no finding of its own.
        assert_eq!(before, after);
    }
}
