//! GPT disk assembly: partition table (gpt crate) plus partition contents copied in at their
//! offsets, keeping the image sparse.

use crate::{ImageError, IoContext, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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

/// Copy `src` into `dst` at `offset`, skipping all-zero blocks (the image stays sparse).
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
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf).ctx(|| format!("reading {}", src.display()))?;
        if n == 0 {
            break;
        }
        let block = &buf[..n];
        // Skip zero 4 KiB pieces; the target file is fresh (all zeros) by construction.
        for (i, piece) in block.chunks(4096).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(offset + pos + (i as u64) * 4096))
                    .ctx(|| "seeking in disk image".to_string())?;
                dst.write_all(piece)
                    .ctx(|| format!("writing {} into disk image", src.display()))?;
            }
        }
        pos += n as u64;
    }
    Ok(len)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read back the partition table of an image: (number, label, offset, size), to find
/// partitions by label (never by number).
pub fn read_partitions(image: &Path) -> Result<Vec<Placed>> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(image)
        .map_err(|e| ImageError::Gpt {
            path: image.to_path_buf(),
            message: format!("not a GPT disk image: {e}"),
        })?;
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
