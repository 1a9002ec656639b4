//! First boot: grow `otter-data` to the end of the disk the image was flashed onto.
//!
//! The GPT is edited by hand here (the `gpt` crate keeps the backup header where it was, and
//! a flashed image's backup header sits at the end of the *image*, not of the disk). Order for
//! power-cut safety: the new backup table at the new end of the disk first, then the primary
//! table; until the primary header is rewritten, it still names the old, intact backup.
//! Then the kernel is told the new size (BLKPG) and the mounted ext4 is resized online.

use anyhow::{Context, Result, bail};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SIGNATURE: &[u8; 8] = b"EFI PART";

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn read_at(d: &mut (impl Read + Seek), off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    d.seek(SeekFrom::Start(off))?;
    let mut b = vec![0u8; len];
    d.read_exact(&mut b)?;
    Ok(b)
}

fn write_at(d: &mut (impl Write + Seek), off: u64, b: &[u8]) -> std::io::Result<()> {
    d.seek(SeekFrom::Start(off))?;
    d.write_all(b)
}

fn name_of(entry: &[u8]) -> String {
    let units: Vec<u16> = entry[56..128]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// What growing did: the partition (1-based number), its start and new length in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Grown {
    pub number: u32,
    pub start: u64,
    pub old_len: u64,
    pub new_len: u64,
}

/// Grow the partition labelled `label` (it must be the last one) to the end of a disk of
/// `disk_size` bytes with `lb`-byte logical blocks. `Ok(None)`: already fills the disk.
pub fn grow_gpt(
    disk: &mut (impl Read + Write + Seek),
    disk_size: u64,
    lb: u64,
    label: &str,
) -> Result<Option<Grown>> {
    let hdr = read_at(disk, lb, lb as usize).context("reading the primary GPT header")?;
    if &hdr[0..8] != SIGNATURE {
        bail!("no GPT on this disk (no primary header signature)");
    }
    let hsize = u32_at(&hdr, 12) as usize;
    if !(92..=lb as usize).contains(&hsize) {
        bail!("GPT header size {hsize} is invalid");
    }
    let mut check = hdr[..hsize].to_vec();
    check[16..20].fill(0);
    if crc32fast::hash(&check) != u32_at(&hdr, 16) {
        bail!("the primary GPT header's checksum is wrong; not touching the partition table");
    }
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80) as u64;
    let esize = u32_at(&hdr, 84) as u64;
    if !(128..=4096).contains(&esize) || count == 0 || count > 1024 {
        bail!("GPT entry table ({count} entries of {esize} bytes) is invalid");
    }
    let table_bytes = count * esize;
    let mut table = read_at(disk, entries_lba * lb, table_bytes as usize)
        .context("reading the GPT partition entries")?;
    if crc32fast::hash(&table) != u32_at(&hdr, 88) {
        bail!("the GPT partition entries' checksum is wrong; not touching the partition table");
    }
    let table_sectors = table_bytes.div_ceil(lb);
    let disk_last = disk_size / lb - 1;
    let new_last_usable = disk_last - table_sectors - 1;

    let mut found = None;
    let mut highest_end = 0u64;
    for i in 0..count as usize {
        let e = &table[i * esize as usize..(i + 1) * esize as usize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        highest_end = highest_end.max(last);
        if name_of(e) == label {
            found = Some((i, first, last));
        }
    }
    let Some((idx, first, last)) = found else {
        bail!("no partition labelled {label}");
    };
    if last != highest_end {
        bail!("{label} is not the last partition on the disk; cannot grow it");
    }
    // End on a 1 MiB boundary (flash erase blocks), never beyond the usable area.
    let align = (1 << 20) / lb;
    let new_last = ((new_last_usable + 1) / align) * align - 1;
    if new_last <= last + align {
        return Ok(None);
    }
    let off = idx * esize as usize;
    table[off + 40..off + 48].copy_from_slice(&new_last.to_le_bytes());
    let table_crc = crc32fast::hash(&table);

    let build = |current: u64, backup: u64, entries_at: u64| -> Vec<u8> {
        let mut h = hdr[..hsize].to_vec();
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[48..56].copy_from_slice(&new_last_usable.to_le_bytes());
        h[72..80].copy_from_slice(&entries_at.to_le_bytes());
        h[88..92].copy_from_slice(&table_crc.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        let mut sector = vec![0u8; lb as usize];
        sector[..hsize].copy_from_slice(&h);
        sector
    };
    let backup_entries = disk_last - table_sectors;
    write_at(disk, backup_entries * lb, &table).context("writing the backup GPT entries")?;
    write_at(disk, disk_last * lb, &build(disk_last, 1, backup_entries))
        .context("writing the backup GPT header")?;
    disk.flush().context("flushing the backup GPT")?;
    write_at(disk, entries_lba * lb, &table).context("writing the primary GPT entries")?;
    write_at(disk, lb, &build(1, disk_last, entries_lba))
        .context("writing the primary GPT header")?;
    disk.flush().context("flushing the primary GPT")?;
    Ok(Some(Grown {
        number: idx as u32 + 1,
        start: first * lb,
        old_len: (last - first + 1) * lb,
        new_len: (new_last - first + 1) * lb,
    }))
}

/// A partition as the kernel lists it under `/sys/class/block`.
#[derive(Debug, Clone)]
pub struct BlockPart {
    /// `/dev/vda4`
    pub dev: PathBuf,
    /// `/dev/vda`
    pub disk: PathBuf,
    pub disk_name: String,
}

/// Find the partition with GPT name `label` from sysfs (no udev needed: this runs before it).
pub fn find_partition(sys_class_block: &Path, label: &str) -> Option<BlockPart> {
    for e in std::fs::read_dir(sys_class_block).ok()?.flatten() {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        let mut name = None;
        let mut devname = None;
        for l in uevent.lines() {
            if let Some(v) = l.strip_prefix("PARTNAME=") {
                name = Some(v.to_string());
            }
            if let Some(v) = l.strip_prefix("DEVNAME=") {
                devname = Some(v.to_string());
            }
        }
        if name.as_deref() != Some(label) {
            continue;
        }
        let devname = devname?;
        // The parent directory of a partition in sysfs is its disk.
        let real = std::fs::canonicalize(e.path()).ok()?;
        let disk_name = real.parent()?.file_name()?.to_string_lossy().to_string();
        return Some(BlockPart {
            dev: PathBuf::from("/dev").join(devname),
            disk: PathBuf::from("/dev").join(&disk_name),
            disk_name,
        });
    }
    None
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;

/// Grow `otter-data` on a device to the end of its disk and resize its (mounted) ext4.
pub fn grow_data_partition() -> Result<Option<Grown>> {
    use std::os::fd::AsRawFd;
    let part = find_partition(Path::new("/sys/class/block"), "otter-data")
        .context("finding the otter-data partition in /sys/class/block")?;
    let sys = PathBuf::from("/sys/block").join(&part.disk_name);
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))
        .with_context(|| format!("reading the size of {}", part.disk.display()))?
        .trim()
        .parse()
        .context("parsing the disk size")?;
    let lb: u64 = std::fs::read_to_string(sys.join("queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512);
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part.disk)
        .with_context(|| format!("opening {}", part.disk.display()))?;
    let Some(g) = grow_gpt(&mut disk, sectors * 512, lb, "otter-data").with_context(|| {
        format!(
            "growing otter-data in the partition table of {}",
            part.disk.display()
        )
    })?
    else {
        return Ok(None);
    };
    disk.sync_all()
        .with_context(|| format!("syncing {}", part.disk.display()))?;
    let mut p = BlkpgPartition {
        start: g.start as i64,
        length: g.new_len as i64,
        pno: g.number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: (&mut p as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG takes a pointer to a blkpg_ioctl_arg whose data points to a
    // blkpg_partition; both live until the call returns.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg) };
    if rc != 0 {
        bail!(
            "telling the kernel the new size of {}: {}",
            part.dev.display(),
            std::io::Error::last_os_error()
        );
    }
    let out = std::process::Command::new("resize2fs")
        .arg(&part.dev)
        .output()
        .context("running resize2fs")?;
    if !out.status.success() {
        bail!(
            "resize2fs {} failed: {}",
            part.dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GPT with partitions (label, first, last) on a disk of `sectors` 512-byte sectors.
    fn make_gpt(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let lb = 512u64;
        let mut d = vec![0u8; (sectors * lb) as usize];
        let mut table = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut table[i * 128..(i + 1) * 128];
            e[0] = 1; // any non-zero type GUID
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (k, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
            }
        }
        let tcrc = crc32fast::hash(&table);
        let last = sectors - 1;
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&last.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&tcrc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[512..604].copy_from_slice(&h);
        d[1024..1024 + table.len()].copy_from_slice(&table);
        d
    }

    #[test]
    fn grows_the_last_partition_and_moves_the_backup() {
        let small = 8 * 2048; // 8 MiB image
        let mut img = make_gpt(
            small,
            &[("otter-boot", 2048, 4095), ("otter-data", 4096, 6143)],
        );
        img.resize(64 << 20, 0); // flashed onto a 64 MiB disk
        let mut c = Cursor::new(img);
        let g = grow_gpt(&mut c, 64 << 20, 512, "otter-data")
            .unwrap()
            .unwrap();
        assert_eq!(g.number, 2);
        assert_eq!(g.start, 4096 * 512);
        assert_eq!(g.old_len, 1 << 20);
        // Up to the last whole MiB before the backup table.
        assert_eq!(g.new_len, (64 << 20) - (1 << 20) - 4096 * 512);
        // Both headers valid and consistent: read them back with the gpt crate.
        let img = c.into_inner();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&img).unwrap();
        let disk = gpt::GptConfig::new()
            .writable(false)
            .only_valid_headers(true)
            .open(f.path())
            .unwrap();
        let p = disk
            .partitions()
            .values()
            .find(|p| p.name == "otter-data")
            .unwrap();
        assert_eq!(p.last_lba, 4096 + g.new_len / 512 - 1);
        assert_eq!(
            disk.backup_header().unwrap().current_lba,
            (64 << 20) / 512 - 1
        );
        // Growing again is a no-op.
        let mut c = Cursor::new(img);
        assert_eq!(grow_gpt(&mut c, 64 << 20, 512, "otter-data").unwrap(), None);
    }

    #[test]
    fn refuses_when_not_last_or_corrupt() {
        let mut img = make_gpt(
            8 * 2048,
            &[("otter-data", 2048, 4095), ("other", 4096, 6143)],
        );
        img.resize(64 << 20, 0);
        let e = grow_gpt(&mut Cursor::new(img.clone()), 64 << 20, 512, "otter-data").unwrap_err();
        assert!(e.to_string().contains("not the last"), "{e}");
        img[1024 + 40] ^= 1; // corrupt the entries
        let e = grow_gpt(&mut Cursor::new(img), 64 << 20, 512, "otter-data").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let e = grow_gpt(
            &mut Cursor::new(vec![0u8; 1 << 20]),
            1 << 20,
            512,
            "otter-data",
        )
        .unwrap_err();
        assert!(e.to_string().contains("no GPT"), "{e}");
    }

    #[test]
    fn finds_partitions_in_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("devices/vda");
        std::fs::create_dir_all(disk.join("vda4")).unwrap();
        std::fs::write(
            disk.join("vda4/uevent"),
            "MAJOR=253\nMINOR=4\nDEVNAME=vda4\nDEVTYPE=partition\nPARTN=4\nPARTNAME=otter-data\n",
        )
        .unwrap();
        let class = d.path().join("class");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(disk.join("vda4"), class.join("vda4")).unwrap();
        let p = find_partition(&class, "otter-data").unwrap();
        assert_eq!(p.dev, PathBuf::from("/dev/vda4"));
        assert_eq!(p.disk, PathBuf::from("/dev/vda"));
        assert!(find_partition(&class, "otter-boot").is_none());
    }
}
