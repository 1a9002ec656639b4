//! The FAT boot partition, written with the `fatfs` crate (no mtools, no mount).

use crate::{ImageError, IoContext, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// Create a FAT filesystem image of `size` bytes at `path` holding `files`
/// (`(path inside, content)`, directories created as needed).
pub fn make_fat(path: &Path, size: u64, label: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
    let fat_err = |message: String| ImageError::Fat {
        path: path.to_path_buf(),
        message,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    file.set_len(size)
        .ctx(|| format!("sizing {} to {size} bytes", path.display()))?;
    let mut vol_label = [b' '; 11];
    for (i, b) in label.to_ascii_uppercase().bytes().take(11).enumerate() {
        vol_label[i] = b;
    }
    // FAT32 when there is room for it (the EFI spec's choice for system partitions);
    // smaller partitions get what fatfs picks.
    let mut opts = fatfs::FormatVolumeOptions::new()
        .volume_label(vol_label)
        .volume_id(0x07732e00);
    if size >= 128 * 1024 * 1024 {
        opts = opts.fat_type(fatfs::FatType::Fat32);
    }
    fatfs::format_volume(&mut file, opts).map_err(|e| fat_err(format!("formatting: {e}")))?;
    {
        // Fixed timestamps (the FAT epoch, 1980-01-01): same inputs, same partition bytes.
        let fs = fatfs::FileSystem::new(
            &mut file,
            fatfs::FsOptions::new().time_provider(&FIXED_TIME),
        )
        .map_err(|e| fat_err(format!("opening after format: {e}")))?;
        let root = fs.root_dir();
        for (dest, content) in files {
            let parts: Vec<&str> = dest.split('/').filter(|s| !s.is_empty()).collect();
            let Some((name, dirs)) = parts.split_last() else {
                continue;
            };
            let mut dir = root.clone();
            for d in dirs {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir
                        .create_dir(d)
                        .map_err(|e| fat_err(format!("creating directory {d} for {dest}: {e}")))?,
                };
            }
            let mut f = dir
                .create_file(name)
                .map_err(|e| fat_err(format!("creating {dest}: {e}")))?;
            f.truncate()
                .map_err(|e| fat_err(format!("truncating {dest}: {e}")))?;
            f.write_all(content)
                .map_err(|e| fat_err(format!("writing {dest}: {e}")))?;
            f.flush()
                .map_err(|e| fat_err(format!("flushing {dest}: {e}")))?;
        }
        drop(root);
        fs.unmount()
            .map_err(|e| fat_err(format!("closing filesystem: {e}")))?;
    }
    file.sync_all()
        .ctx(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Read a file from a FAT filesystem that starts at `offset` in `image` (a disk image).
pub fn read_file_at(image: &Path, offset: u64, size: u64, inner: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(image).ctx(|| format!("opening {}", image.display()))?;
    let part = fscommon::StreamSlice::new(file, offset, offset + size)
        .ctx(|| format!("slicing the boot partition of {}", image.display()))?;
    let fs =
        fatfs::FileSystem::new(part, fatfs::FsOptions::new()).map_err(|e| ImageError::Fat {
            path: image.to_path_buf(),
            message: format!("not a FAT filesystem at offset {offset}: {e}"),
        })?;
    let mut f = fs
        .root_dir()
        .open_file(inner)
        .map_err(|e| ImageError::Fat {
            path: image.to_path_buf(),
            message: format!("{inner}: {e}"),
        })?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)
        .ctx(|| format!("reading {inner} from {}", image.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_files_readable_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("boot.vfat");
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![7u8; 100_000]),
            ("otter/grubenv".to_string(), b"hello".to_vec()),
        ];
        make_fat(&p, 64 * 1024 * 1024, "otter-boot", &files).unwrap();
        let got = read_file_at(&p, 0, 64 * 1024 * 1024, "EFI/BOOT/BOOTX64.EFI").unwrap();
        assert_eq!(got, vec![7u8; 100_000]);
        assert_eq!(
            read_file_at(&p, 0, 64 << 20, "otter/grubenv").unwrap(),
            b"hello"
        );
        assert!(read_file_at(&p, 0, 64 << 20, "missing").is_err());
    }

    #[test]
    fn fat32_for_large_partitions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("boot.vfat");
        make_fat(&p, 128 * 1024 * 1024, "otter-boot", &[]).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    }
}
