//! `otter build`: one `otter.toml` in, a disk image and the signed bundle of the same root out.

use crate::disk::{self, ESP_TYPE, LINUX_DATA_TYPE, PartitionSpec};
use crate::fs::{Ext4Options, auto_root_size, make_ext4, tree_usage};
use crate::rootfs::{self, BaseRecipe, Customisation};
use crate::{ImageError, IoContext, Result, fat};
use otter_config::{AgentConfig, Project, ReleaseInfo};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// The `otterd` binary for the board's architecture.
    pub otterd: PathBuf,
    /// Where base root filesystems are cached between builds.
    pub cache_dir: PathBuf,
    /// Scratch space (the extracted tree, filesystem images); default: inside `out_dir`.
    pub work_dir: Option<PathBuf>,
    /// Also write `<image>.img.zst`.
    pub compress: bool,
    /// Older releases' bundles (paths or URLs): the bundle carries a patch set for each, so
    /// devices on exactly those releases download less (`otter_bundle::patch`).
    pub delta_from: Vec<String>,
    /// Write the disk image (and its block map); `false` builds only the update bundle, for a
    /// release that is only ever installed as an update.
    pub disk_image: bool,
    /// Keep the work directory's root filesystem image (`rootfs_image` in the output) for
    /// benchmarks and `otter bundle create`; by default the whole work directory is removed.
    pub keep_rootfs: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct BuildOutput {
    /// The disk image (`None` when only the bundle was built).
    pub image: Option<PathBuf>,
    pub image_zst: Option<PathBuf>,
    /// Block map of the image (bmaptool format): what `otter flash` / `bmaptool copy` write.
    pub bmap: Option<PathBuf>,
    pub bundle: PathBuf,
    /// The root filesystem image, kept only when asked for ([`BuildOptions::keep_rootfs`]).
    pub rootfs_image: Option<PathBuf>,
    pub version: String,
    pub compatible: String,
    pub base_cached: bool,
    pub root_size: u64,
    pub image_size: Option<u64>,
    /// Bytes of the image listed in the block map (the rest is never written by a flash).
    pub image_mapped_size: Option<u64>,
    pub bundle_size: u64,
    pub image_zst_size: Option<u64>,
    /// (step, seconds)
    pub timings: Vec<(String, f64)>,
}

fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

/// Public keys the image will trust: the listed ones, else the `.pub` next to the signing key.
fn trusted_keys(p: &Project) -> Result<Vec<(String, String)>> {
    let s = &p.file.signing;
    let paths: Vec<PathBuf> = if s.trusted_keys.is_empty() {
        vec![p.resolve(&s.key).with_extension("pub")]
    } else {
        s.trusted_keys.iter().map(|k| p.resolve(k)).collect()
    };
    let mut out = Vec::new();
    for path in paths {
        let key = otter_bundle::PublicKey::load(&path).map_err(|e| {
            ImageError::Other(format!(
                "{}: signing.trusted_keys: {e} (make a key pair with `otter keys generate`)",
                p.path.display()
            ))
        })?;
        out.push((format!("{}.pub", key.fingerprint()), key.to_pem()?));
    }
    Ok(out)
}

pub fn build(p: &Project, o: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<BuildOutput> {
    let started = Instant::now();
    let mut timings = Vec::new();
    let mut lap = Instant::now();
    let mut mark = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), lap.elapsed().as_secs_f64()));
        lap = Instant::now();
    };

    // Check everything that can fail cheaply before the slow steps.
    let key_path = p.resolve(&p.file.signing.key);
    let signing_key = otter_bundle::SigningKey::load(&key_path).map_err(|e| {
        ImageError::Other(format!(
            "{}: signing.key: {e} (make one with `otter keys generate --out {}`)",
            p.path.display(),
            key_path.parent().unwrap_or(Path::new(".")).display()
        ))
    })?;
    let trusted = trusted_keys(p)?;
    let apps = crate::apps::check(p)?;
    if !o.otterd.is_file() {
        return Err(ImageError::Other(format!(
            "otterd binary {} not found: build it first (cargo build --release -p otterd) or pass --otterd",
            o.otterd.display()
        )));
    }
    if let Some(overlay) = &p.file.rootfs.overlay
        && !p.resolve(overlay).is_dir()
    {
        return Err(ImageError::Other(format!(
            "{}: rootfs.overlay: {} is not a directory",
            p.path.display(),
            p.resolve(overlay).display()
        )));
    }
    std::fs::create_dir_all(&o.out_dir).ctx(|| format!("creating {}", o.out_dir.display()))?;
    let stem = p.artifact_stem();
    let work = o
        .work_dir
        .clone()
        .unwrap_or_else(|| o.out_dir.join(format!(".work-{stem}")));
    std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    let epoch = source_date_epoch();

    // 1. Base (cached).
    let recipe = BaseRecipe::for_project(p);
    // Filesystem timestamps come from the base's epoch, not the build time: two builds of the
    // same tree give the same bytes, and an unchanged file keeps its blocks (delta updates).
    let fs_time = recipe.source_date_epoch;
    let (tarball, base_cached) = rootfs::base_tarball(&recipe, &o.cache_dir, log)?;
    mark("base rootfs", &mut timings);

    // 2. Customised tree.
    let tree = work.join("rootfs");
    log("rootfs: extracting and customising");
    rootfs::extract(&tarball, &tree)?;
    let release = ReleaseInfo {
        name: p.name().to_string(),
        version: p.version().to_string(),
        compatible: p.compatible(),
        board: p.board.name.clone(),
        build_time: epoch,
        bootloader: p.board.bootloader,
    };
    let agent = AgentConfig {
        health: p.file.health.clone(),
    };
    rootfs::customise(
        &tree,
        &Customisation {
            project: p,
            otterd: &o.otterd,
            trusted_keys: trusted,
            release_toml: release.to_toml(),
            agent_toml: agent.to_toml(),
            // The slot's own init: otterd provisions /etc from the device config, then starts
            // systemd (per slot, so a release without it still boots as it was built).
            slot_bootenv: otter_boot::slot_bootenv(
                format!("{} {}", rootfs::INIT_ARG, p.file.kernel.cmdline).trim(),
            )?
            .to_vec(),
            apps: &apps,
        },
    )?;
    mark("customise", &mut timings);

    // 3. Root filesystem image.
    // Same inputs, same filesystem bytes (reproducible images; unchanged files delta well).
    crate::fs::clamp_times(&tree, fs_time)?;
    let usage = tree_usage(&tree)?;
    let root_size = match p.file.rootfs.size {
        Some(s) => s.0,
        None => auto_root_size(usage),
    };
    let slot = p.board.partitions.slot.0;
    if root_size > slot {
        return Err(ImageError::Other(format!(
            "the root filesystem needs {} MiB but a slot is {} MiB (board {}: partitions.slot, or fewer packages)",
            root_size >> 20,
            slot >> 20,
            p.board_path.display()
        )));
    }
    if usage > root_size {
        return Err(ImageError::Other(format!(
            "{}: rootfs.size {} MiB is smaller than the content ({} MiB)",
            p.path.display(),
            root_size >> 20,
            usage >> 20
        )));
    }
    let root_img = work.join("rootfs.ext4");
    log(&format!("rootfs: ext4 image of {} MiB", root_size >> 20));
    make_ext4(
        &root_img,
        root_size,
        &tree,
        &Ext4Options {
            label: "otter-root",
            seed: &format!("{}/root", p.compatible()),
            journal: false,
            fake_time: fs_time,
        },
    )?;
    // The tree is large and rebuilt each time: gone as soon as the root image holds it.
    std::fs::remove_dir_all(&tree).ctx(|| format!("removing {}", tree.display()))?;
    mark("root filesystem", &mut timings);

    // 4–6. Boot and data partitions, the disk image and its block map.
    let disk = if o.disk_image {
        let d = write_disk(p, &work, &o.out_dir, &stem, &root_img, slot, fs_time, log)?;
        mark("disk image", &mut timings);
        Some(d)
    } else {
        log("disk: skipped (bundle only)");
        None
    };

    // 7. Signed bundle of the same root.
    let bundle = o.out_dir.join(format!("{stem}.otb"));
    log(&format!("bundle: {}", bundle.display()));
    let delta_from: Vec<&str> = o.delta_from.iter().map(String::as_str).collect();
    if !delta_from.is_empty() {
        log(&format!(
            "bundle: patch sets against {}",
            delta_from.join(", ")
        ));
    }
    otter_bundle::create_bundle_with_patches(
        &bundle,
        &[("rootfs", root_img.as_path())],
        &otter_bundle::CreateOptions {
            compatible: p.compatible(),
            version: p.version().to_string(),
            chunk_size: otter_bundle::DEFAULT_CHUNK_SIZE,
            zstd_level: 3,
        },
        &[&signing_key],
        &delta_from,
    )?;
    mark("bundle", &mut timings);

    // 8. Compressed image for downloads and flashing.
    let (image_zst, image_zst_size) = if let (true, Some(d)) = (o.compress, &disk) {
        let zst = o.out_dir.join(format!("{stem}.img.zst"));
        log(&format!("compress: {}", zst.display()));
        compress(&d.image, &zst)?;
        let size = std::fs::metadata(&zst)
            .ctx(|| format!("stat {}", zst.display()))?
            .len();
        mark("compress", &mut timings);
        (Some(zst), Some(size))
    } else {
        (None, None)
    };

    // The work directory holds a copy of everything in the outputs: keep it only when asked.
    let rootfs_image = if o.keep_rootfs || o.work_dir.is_some() {
        Some(root_img)
    } else {
        std::fs::remove_dir_all(&work).ctx(|| format!("removing {}", work.display()))?;
        None
    };
    timings.push(("total".into(), started.elapsed().as_secs_f64()));
    Ok(BuildOutput {
        image_size: disk.as_ref().map(|d| d.size),
        bundle_size: std::fs::metadata(&bundle)
            .ctx(|| format!("stat {}", bundle.display()))?
            .len(),
        image_mapped_size: disk.as_ref().map(|d| d.mapped),
        bmap: disk.as_ref().map(|d| d.bmap.clone()),
        image: disk.map(|d| d.image),
        image_zst,
        image_zst_size,
        bundle,
        rootfs_image,
        version: p.version().to_string(),
        compatible: p.compatible(),
        base_cached,
        root_size,
        timings,
    })
}

/// What [`write_disk`] made.
struct Disk {
    image: PathBuf,
    size: u64,
    bmap: PathBuf,
    mapped: u64,
}

/// Steps 4–6 of [`build`]: the boot partition (GRUB, its script, the A/B state, the device
/// config template), the data partition, the GPT disk image with the root in slot A, its bmap.
#[allow(clippy::too_many_arguments)]
fn write_disk(
    p: &Project,
    work: &Path,
    out_dir: &Path,
    stem: &str,
    root_img: &Path,
    slot: u64,
    fs_time: u64,
    log: &mut dyn FnMut(&str),
) -> Result<Disk> {
    // 4. Boot partition: GRUB, its script, the A/B state.
    log("boot: GRUB and A/B state");
    let grub_efi = work.join("grub.efi");
    otter_boot::build_grub_efi(&grub_efi, p.board.arch.grub_target(), None)?;
    let efi_name = otter_boot::efi_binary_name(p.board.arch);
    let grub_cfg = otter_boot::grub_cfg(&otter_boot::GrubConfig {
        slot_a_partnum: 2,
        slot_b_partnum: 3,
        console_args: p.board.console.clone(),
        extra_cmdline: String::new(),
        timeout_secs: 0,
    })?;
    let env = otter_boot::BootState::factory().to_env_block();
    let boot_files = vec![
        (
            format!("EFI/BOOT/{efi_name}"),
            std::fs::read(&grub_efi).ctx(|| format!("reading {}", grub_efi.display()))?,
        ),
        ("EFI/BOOT/grub.cfg".to_string(), grub_cfg.into_bytes()),
        ("otter/grubenv".to_string(), env.to_vec()),
        ("otter/grubenv.bak".to_string(), env.to_vec()),
        // The user-editable device config: every key commented out (an empty config).
        (
            otter_config::device_config::DEVICE_CONFIG_FAT_PATH.to_string(),
            otter_config::template::DEVICE_CONFIG_TEMPLATE
                .as_bytes()
                .to_vec(),
        ),
    ];
    let boot_img = work.join("boot.vfat");
    fat::make_fat(
        &boot_img,
        p.board.partitions.boot.0,
        "otter-boot",
        &boot_files,
    )?;

    // 5. Data partition.
    let data_tree = work.join("data");
    rootfs::data_skeleton(&data_tree)?;
    crate::fs::clamp_times(&data_tree, fs_time)?;
    let data_img = work.join("data.ext4");
    make_ext4(
        &data_img,
        p.board.partitions.data.0,
        &data_tree,
        &Ext4Options {
            label: "otter-data",
            seed: &format!("{}/data", p.compatible()),
            journal: true,
            fake_time: fs_time,
        },
    )?;

    // 6. Disk image.
    let image = out_dir.join(format!("{stem}.img"));
    log(&format!("disk: {}", image.display()));
    let parts = vec![
        PartitionSpec {
            label: "otter-boot".into(),
            type_guid: ESP_TYPE.into(),
            size: p.board.partitions.boot.0,
            content: Some(boot_img),
        },
        PartitionSpec {
            label: "otter-root-a".into(),
            type_guid: p.board.root_partition_type().into(),
            size: slot,
            content: Some(root_img.to_path_buf()),
        },
        PartitionSpec {
            label: "otter-root-b".into(),
            type_guid: p.board.root_partition_type().into(),
            size: slot,
            content: None,
        },
        PartitionSpec {
            label: "otter-data".into(),
            type_guid: LINUX_DATA_TYPE.into(),
            size: p.board.partitions.data.0,
            content: Some(data_img),
        },
    ];
    disk::assemble(&image, &parts, &p.compatible())?;
    let bmap_path = out_dir.join(format!("{stem}.bmap"));
    let bmap = crate::bmap::Bmap::create(&image)?;
    bmap.write(&bmap_path)?;
    log(&format!(
        "bmap: {} ({} of {} MiB mapped)",
        bmap_path.display(),
        bmap.mapped_bytes() >> 20,
        bmap.image_size >> 20
    ));
    Ok(Disk {
        image,
        size: disk::image_size(&parts),
        bmap: bmap_path,
        mapped: bmap.mapped_bytes(),
    })
}

/// zstd-compress `src` into `dst` (multi-threaded), via a temp file renamed at the end.
pub fn compress(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("zst.partial");
    let input = std::fs::File::open(src).ctx(|| format!("opening {}", src.display()))?;
    let output = std::fs::File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let mut enc = zstd::stream::Encoder::new(BufWriter::new(output), 3)
        .ctx(|| "starting zstd".to_string())?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    enc.multithread(threads)
        .ctx(|| "enabling zstd threads".to_string())?;
    std::io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut enc)
        .ctx(|| format!("compressing {}", src.display()))?;
    let w = enc
        .finish()
        .ctx(|| format!("finishing {}", tmp.display()))?;
    let f = w
        .into_inner()
        .map_err(|e| ImageError::Other(format!("flushing {}: {e}", tmp.display())))?;
    f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, dst).ctx(|| format!("renaming to {}", dst.display()))
}
