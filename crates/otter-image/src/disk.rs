//! GPT disk assembly: partition table (gpt crate) plus partition contents copied in at their
//! offsets, keeping the image sparse.

use crate::{ImageError, IoContext, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// One partition of the layout.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT partition name (label): how everything finds it.
    pub label: String,
    pub type_guid: String,
    pub size: u64,
    /// File holding the partition's content (may be smaller than `size`), or none (zeros).
    pub content: Option<PathBuf>,
}

/// Where a partition landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    pub number: u32,
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// Total image size for `parts`: 1 MiB in front (protective MBR, GPT, alignment) and 1 MiB
/// at the end (backup GPT).
pub fn image_size(parts: &[PartitionSpec]) -> u64 {
    MIB + parts.iter().map(|p| p.size).sum::<u64>() + MIB
}

/// A stable UUID derived from a name, so the same inputs give the same disk.
pub fn stable_uuid(seed: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("otter:{seed}").as_bytes(),
    )
}

/// Write a GPT disk image at `out` with `parts` in order (numbered from 1), 1 MiB aligned.
pub fn assemble(out: &Path, parts: &[PartitionSpec], disk_seed: &str) -> Result<Vec<Placed>> {
    for p in parts {
        if p.size % MIB != 0 {
            return Err(ImageError::Other(format!(
                "partition {} size {} is not a multiple of 1 MiB",
                p.label, p.size
            )));
        }
    }
    let total = image_size(parts);
    let gpt_err = |message: String| ImageError::Gpt {
        path: out.to_path_buf(),
        message,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .ctx(|| format!("creating disk image {}", out.display()))?;
    file.set_len(total)
        .ctx(|| format!("sizing disk image {} to {total} bytes", out.display()))?;
    let mut file = file;

    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut file)
        .map_err(|e| gpt_err(format!("writing protective MBR: {e}")))?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(stable_uuid(&format!("{disk_seed}/disk"))))
        .map_err(|e| gpt_err(format!("creating partition table: {e}")))?;

    let mut table = BTreeMap::new();
    let mut placed = Vec::new();
    let mut offset = MIB;
    for (i, p) in parts.iter().enumerate() {
        let number = i as u32 + 1;
        let part_type = gpt::partition_types::Type::from_str(&p.type_guid).map_err(|e| {
            gpt_err(format!(
                "partition type {} of {}: {e}",
                p.type_guid, p.label
            ))
        })?;
        table.insert(
            number,
            gpt::partition::Partition {
                part_type_guid: part_type,
                part_guid: stable_uuid(&format!("{disk_seed}/{}", p.label)),
                first_lba: offset / SECTOR,
                last_lba: (offset + p.size) / SECTOR - 1,
                flags: 0,
                name: p.label.clone(),
            },
        );
        placed.push(Placed {
            number,
            label: p.label.clone(),
            offset,
            size: p.size,
        });
        offset += p.size;
    }
    disk.update_partitions(table)
        .map_err(|e| gpt_err(format!("setting partitions: {e}")))?;
    let mut file = disk
        .write()
        .map_err(|e| gpt_err(format!("writing partition table: {e}")))?;

    for (p, at) in parts.iter().zip(&placed) {
        if let Some(content) = &p.content {
            copy_sparse(content, &mut file, at.offset, at.size)?;
        }
    }
    file.sync_all()
        .ctx(|| format!("syncing disk image {}", out.display()))?;
    Ok(placed)
}

/// Copy `src` into `dst` at `offset`, copying only the data extents of `src` (the image stays
/// sparse). The holes of the result are exactly the blocks the filesystem tools never wrote,
/// which is what the image's block map lists as unmapped; zeros they did write (a FAT table, an
/// empty directory cluster) stay data, because a flashed drive is not zeroed beforehand (see
/// [`crate::bmap`]). Where the filesystem cannot tell holes, everything is copied.
/// Written by hand: no crate does a sparse copy into an offset of another file.
pub fn copy_sparse(src: &Path, dst: &mut File, offset: u64, max: u64) -> Result<u64> {
    let mut input = File::open(src).ctx(|| format!("opening {}", src.display()))?;
    let len = input
        .metadata()
        .ctx(|| format!("reading size of {}", src.display()))?
        .len();
    if len > max {
        return Err(ImageError::Other(format!(
            "{} is {len} bytes, larger than its partition ({max} bytes)",
            src.display()
        )));
    }
    let extents = crate::bmap::data_extents(&input, len)
        .ctx(|| format!("finding the data in {}", src.display()))?;
    for (start, n) in extents {
        input
            .seek(SeekFrom::Start(start))
            .ctx(|| format!("seeking in {}", src.display()))?;
        dst.seek(SeekFrom::Start(offset + start))
            .ctx(|| "seeking in disk image".to_string())?;
        let copied = std::io::copy(&mut (&mut input).take(n), dst)
            .ctx(|| format!("copying {} into disk image", src.display()))?;
        if copied != n {
            return Err(ImageError::Other(format!(
                "{} shrank while being copied into the disk image",
                src.display()
            )));
        }
    }
    Ok(len)
}

/// The architecture an Otter image's root slot is for ("x86_64" or "arm64"), read from the
/// partition type of `otter-root-a` (Discoverable Partitions Specification), or `None` when the
/// type is neither.
pub fn root_arch(image: &Path) -> Result<Option<&'static str>> {
    let disk = open_gpt(image)?;
    let Some(root) = disk
        .partitions()
        .values()
        .find(|p| p.is_used() && p.name == "otter-root-a")
    else {
        return Ok(None);
    };
    let guid = root.part_type_guid.guid.to_string();
    // The types `otter build` writes (otter-config's `Arch::root_partition_type`).
    let arch = otter_config::board::Arch::ALL
        .into_iter()
        .find(|a| a.root_partition_type().eq_ignore_ascii_case(&guid));
    Ok(arch.map(|a| match a {
        otter_config::board::Arch::Amd64 => "x86_64",
        otter_config::board::Arch::Arm64 => "arm64",
    }))
}

/// The image's GPT, read only.
fn open_gpt(image: &Path) -> Result<gpt::GptDisk<std::fs::File>> {
    gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(image)
        .map_err(|e| ImageError::Gpt {
            path: image.to_path_buf(),
            message: format!("not a GPT disk image: {e}"),
        })
}

/// Read back the partition table of an image: (number, label, offset, size), to find
/// partitions by label (never by number).
pub fn read_partitions(image: &Path) -> Result<Vec<Placed>> {
    let disk = open_gpt(image)?;
    Ok(disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| Placed {
            number: *n,
            label: p.name.clone(),
            offset: p.first_lba * SECTOR,
            size: (p.last_lba + 1 - p.first_lba) * SECTOR,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_and_reads_back_by_label() {
        let d = tempfile::tempdir().unwrap();
        let content = d.path().join("p2");
        let mut data = vec![0u8; 3 * 4096];
        data[4096..8192].fill(0xAB);
        std::fs::write(&content, &data).unwrap();
        let parts = vec![
            PartitionSpec {
                label: "otter-boot".into(),
                type_guid: ESP_TYPE.into(),
                size: 2 * MIB,
                content: None,
            },
            PartitionSpec {
                label: "otter-root-a".into(),
                type_guid: LINUX_DATA_TYPE.into(),
                size: MIB,
                content: Some(content),
            },
        ];
        let img = d.path().join("disk.img");
        let placed = assemble(&img, &parts, "t").unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), image_size(&parts));
        let back = read_partitions(&img).unwrap();
        assert_eq!(back, placed);
        assert_eq!(back[1].label, "otter-root-a");
        assert_eq!(back[1].offset, 3 * MIB);
        let bytes = std::fs::read(&img).unwrap();
        let off = back[1].offset as usize;
        assert_eq!(&bytes[off..off + data.len()], &data[..]);
        // Same inputs, same bytes.
        let img2 = d.path().join("disk2.img");
        assemble(&img2, &parts, "t").unwrap();
        assert_eq!(std::fs::read(&img2).unwrap(), bytes);
    }

    #[test]
    fn keeps_holes_of_the_content_and_the_zeros_it_wrote() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let content = d.path().join("fs");
        let f = File::create(&content).unwrap();
        f.set_len(MIB).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        // Written zeros (think: an empty FAT) must reach the drive; block 2.. stays a hole.
        f.write_all_at(&[0u8; 4096], 4096).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let src_extents = crate::bmap::data_extents(&File::open(&content).unwrap(), MIB).unwrap();
        if src_extents == vec![(0, MIB)] {
            eprintln!("skipped: the filesystem of the temp dir has no SEEK_HOLE");
            return;
        }
        let parts = vec![PartitionSpec {
            label: "otter-boot".into(),
            type_guid: ESP_TYPE.into(),
            size: 2 * MIB,
            content: Some(content),
        }];
        let img = d.path().join("disk.img");
        assemble(&img, &parts, "t").unwrap();
        let bmap = crate::bmap::Bmap::create(&img).unwrap();
        let blocks = |b: u64| MIB / 4096 + b;
        let mapped = |blk: u64| bmap.ranges.iter().any(|r| r.first <= blk && blk <= r.last);
        assert!(mapped(blocks(0)));
        assert!(mapped(blocks(1)), "written zeros must stay mapped");
        assert!(!mapped(blocks(2)), "a hole of the content must stay a hole");
        assert!(mapped(0), "the partition table is mapped");
    }

    #[test]
    fn fat_tables_of_the_boot_partition_are_mapped() {
        // A FAT is mostly zeros (free clusters) that must reach the drive: garbage left there
        // by an earlier use of the card would be read as allocated clusters.
        let d = tempfile::tempdir().unwrap();
        let vfat = d.path().join("boot.vfat");
        crate::fat::make_fat(
            &vfat,
            32 * MIB,
            "otter-boot",
            &[("a/b".into(), vec![1; 5000])],
        )
        .unwrap();
        let boot = std::fs::read(&vfat).unwrap();
        let reserved = u16::from_le_bytes([boot[14], boot[15]]) as u64;
        let fats = boot[16] as u64;
        let mut per_fat = u16::from_le_bytes([boot[22], boot[23]]) as u64;
        if per_fat == 0 {
            per_fat = u32::from_le_bytes([boot[36], boot[37], boot[38], boot[39]]) as u64;
        }
        let fat_end = (reserved + fats * per_fat) * SECTOR;
        assert!(
            boot[(reserved * SECTOR) as usize..fat_end as usize]
                .chunks(4096)
                .any(|c| c.iter().all(|&b| b == 0)),
            "the FAT has all-zero blocks (else this test proves nothing)"
        );
        let parts = vec![PartitionSpec {
            label: "otter-boot".into(),
            type_guid: ESP_TYPE.into(),
            size: 32 * MIB,
            content: Some(vfat),
        }];
        let img = d.path().join("disk.img");
        assemble(&img, &parts, "t").unwrap();
        let bmap = crate::bmap::Bmap::create(&img).unwrap();
        for blk in (MIB / 4096)..(MIB + fat_end).div_ceil(4096) {
            assert!(
                bmap.ranges.iter().any(|r| r.first <= blk && blk <= r.last),
                "block {blk} of the FAT region is not in the bmap"
            );
        }
    }

    #[test]
    fn refuses_oversized_content() {
        let d = tempfile::tempdir().unwrap();
        let content = d.path().join("big");
        std::fs::write(&content, vec![1u8; (MIB + 1) as usize]).unwrap();
        let parts = vec![PartitionSpec {
            label: "x".into(),
            type_guid: LINUX_DATA_TYPE.into(),
            size: MIB,
            content: Some(content),
        }];
        let e = assemble(&d.path().join("d.img"), &parts, "t").unwrap_err();
        assert!(e.to_string().contains("larger than its partition"), "{e}");
    }
}
