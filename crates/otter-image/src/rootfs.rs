//! The root filesystem tree: a Debian base made by mmdebstrap (cached by a hash of its
//! inputs), then customised into an Otter root: read-only, agent installed, state on the data
//! partition.

use crate::{ImageError, IoContext, Result, run};
use otter_config::Project;
use sha2::{Digest, Sha256};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the way the base is made changes, so old caches are not reused.
const RECIPE_VERSION: &str = "otter-rootfs-4";

/// `SOURCE_DATE_EPOCH` for mmdebstrap when the user sets none (2023-11-14): mmdebstrap clamps
/// file times to it and the initramfs is built reproducibly, so the same packages give the same
/// bytes (what delta updates between releases depend on).
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_700_000_000;

/// Kernel argument that makes `otterd` the first process (it provisions, then starts systemd).
pub const INIT_ARG: &str = "init=/usr/lib/otter/init";

/// Packages every Otter root has, on top of mmdebstrap's minbase.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "initramfs-tools",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "netbase",
    "procps",
    "e2fsprogs",
    "less",
    // Device config (otter/device.toml): networking, users, time.
    "network-manager",
    "wpasupplicant",
    // `country` (Wi-Fi regulatory domain): the database and the tool that sets it at runtime.
    "wireless-regdb",
    "iw",
    "sudo",
    "systemd-timesyncd",
    "tzdata",
];

/// What mmdebstrap is asked for; its hash names the cache entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseRecipe {
    pub recipe: String,
    pub arch: otter_config::Arch,
    pub suite: String,
    pub mirror: String,
    pub extra_sources: Vec<String>,
    pub packages: Vec<String>,
    /// Passed to mmdebstrap (and through it to dpkg and mkinitramfs).
    pub source_date_epoch: u64,
}

impl BaseRecipe {
    pub fn for_project(p: &Project) -> BaseRecipe {
        let d = &p.file.debian;
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.push(p.board.kernel_package.clone());
        packages.extend(p.board.packages.iter().cloned());
        packages.extend(d.packages.iter().cloned());
        if !p.file.apps.is_empty() {
            packages.extend(crate::apps::APP_PACKAGES.iter().map(|s| s.to_string()));
        }
        packages.sort();
        packages.dedup();
        let extra_sources = d
            .extra_suites
            .iter()
            .map(|s| {
                if s.starts_with("deb ") {
                    s.clone()
                } else {
                    format!("deb {} {} main", d.mirror, s)
                }
            })
            .collect();
        BaseRecipe {
            recipe: RECIPE_VERSION.into(),
            arch: p.board.arch,
            suite: d.suite.clone(),
            mirror: d.mirror.clone(),
            extra_sources,
            packages,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(DEFAULT_SOURCE_DATE_EPOCH),
        }
    }

    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..12])
    }
}

/// Return the base tarball for `recipe`, building it with mmdebstrap unless the cache has it.
/// Returns (path, came from cache).
pub fn base_tarball(
    recipe: &BaseRecipe,
    cache_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, bool)> {
    std::fs::create_dir_all(cache_dir)
        .ctx(|| format!("creating cache directory {}", cache_dir.display()))?;
    let path = cache_dir.join(format!("rootfs-{}-{}.tar", recipe.arch, recipe.hash()));
    if path.is_file() {
        log(&format!("base rootfs: cached {}", path.display()));
        return Ok((path, true));
    }
    log(&format!(
        "base rootfs: mmdebstrap {} {} ({} packages), this takes a few minutes",
        recipe.suite,
        recipe.arch,
        recipe.packages.len()
    ));
    // Per process: two builds that miss the cache at once (parallel tests) each write their own
    // file; the renames are atomic, so the cache entry is always one whole tarball.
    let partial = path.with_extension(format!("tar.partial.{}", std::process::id()));
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", recipe.source_date_epoch.to_string())
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", recipe.arch))
        .arg(format!("--include={}", recipe.packages.join(",")))
        // Documentation and translations are dead weight on a device.
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .arg("--format=tar")
        .arg(&recipe.suite)
        .arg(&partial)
        .arg(format!("deb {} {} main", recipe.mirror, recipe.suite));
    for s in &recipe.extra_sources {
        cmd.arg(s);
    }
    run(
        &mut cmd,
        "building the Debian base with mmdebstrap",
        "mmdebstrap",
    )?;
    std::fs::rename(&partial, &path).ctx(|| format!("storing {}", path.display()))?;
    Ok((path, false))
}

/// Everything the customisation writes into the tree.
pub struct Customisation<'a> {
    pub project: &'a Project,
    pub otterd: &'a Path,
    /// (file name, PEM) of every public key the device trusts for updates.
    pub trusted_keys: Vec<(String, String)>,
    pub release_toml: String,
    pub agent_toml: String,
    pub slot_bootenv: Vec<u8>,
    /// Built-in apps (checked by [`crate::apps::check`]).
    pub apps: &'a [crate::apps::BuiltinApp],
}

/// Extract `tarball` into `tree` (which must not exist yet).
pub fn extract(tarball: &Path, tree: &Path) -> Result<()> {
    if tree.exists() {
        std::fs::remove_dir_all(tree).ctx(|| format!("removing old tree {}", tree.display()))?;
    }
    std::fs::create_dir_all(tree).ctx(|| format!("creating {}", tree.display()))?;
    let mut cmd = Command::new("tar");
    cmd.arg("--numeric-owner")
        .arg("-xpf")
        .arg(tarball)
        .arg("-C")
        .arg(tree);
    run(
        &mut cmd,
        "extracting the base rootfs (this needs root)",
        "tar",
    )?;
    Ok(())
}

fn write(tree: &Path, rel: &str, content: &[u8], mode: u32) -> Result<()> {
    let p = tree.join(rel.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    // Replace rather than write through: the base may have a symlink here.
    if p.symlink_metadata().is_ok() {
        std::fs::remove_file(&p).ctx(|| format!("replacing {}", p.display()))?;
    }
    std::fs::write(&p, content).ctx(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", p.display()))?;
    Ok(())
}

fn link(tree: &Path, rel: &str, target: &str) -> Result<()> {
    let p = tree.join(rel.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    if p.symlink_metadata().is_ok() {
        std::fs::remove_file(&p).ctx(|| format!("replacing {}", p.display()))?;
    }
    symlink(target, &p).ctx(|| format!("linking {} -> {target}", p.display()))
}

fn mkdir(tree: &Path, rel: &str, mode: u32) -> Result<()> {
    let p = tree.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", p.display()))
}

/// Find the newest `prefix-*` file in `dir` (kernel and initrd of the installed kernel).
fn newest_with_prefix(dir: &Path, prefix: &str) -> Result<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        ImageError::Other(format!(
            "no {prefix}* in {}: is the board's kernel_package a kernel?",
            dir.display()
        ))
    })
}

const FSTAB: &str = "\
# Otter: the root filesystem is read-only (mounted by the initramfs, not listed here).
PARTLABEL=otter-boot  /boot/efi  vfat     umask=0077,noatime,x-systemd.device-timeout=60s  0 0
PARTLABEL=otter-data  /data      ext4     noatime,x-systemd.device-timeout=60s  0 2
overlay               /var       overlay  lowerdir=/var,upperdir=/data/var/upper,workdir=/data/var/work,x-systemd.requires-mounts-for=/data  0 0
/data/home            /home      none     bind,x-systemd.requires-mounts-for=/data  0 0
tmpfs                 /tmp       tmpfs    mode=1777,nosuid,nodev  0 0
";

const OTTERD_SERVICE: &str = "\
[Unit]
Description=Otter device agent (health check, commit or roll back, updates)
Documentation=https://github.com/otter-os/otter
RequiresMountsFor=/boot/efi /var/lib/otter
After=local-fs.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/otterd daemon
WatchdogSec=60
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
";

const HEALTH_TARGET: &str = "\
[Unit]
Description=Units that must be running for a new OS release to be committed
Documentation=https://github.com/otter-os/otter
";

const SSH_KEYGEN_SERVICE: &str = "\
[Unit]
Description=Create this device's SSH host keys once (kept on the data partition)
Before=ssh.service
RequiresMountsFor=/var/lib/otter
ConditionPathExists=!/var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/bin/mkdir -p /var/lib/otter/ssh/etc/ssh
ExecStart=/usr/bin/ssh-keygen -A -f /var/lib/otter/ssh

[Install]
WantedBy=ssh.service
";

const SSHD_CONF: &str = "\
# Otter: host keys are made on first boot and kept on the data partition.
HostKey /var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key
HostKey /var/lib/otter/ssh/etc/ssh/ssh_host_ecdsa_key
HostKey /var/lib/otter/ssh/etc/ssh/ssh_host_rsa_key
# Keys from the device config (otter/device.toml) are rendered under /etc/otter.
AuthorizedKeysFile .ssh/authorized_keys /etc/otter/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
";

const CONFIG_PATH_UNIT: &str = "\
[Unit]
Description=Apply otter/device.toml when it changes
Documentation=https://github.com/otter-os/otter
RequiresMountsFor=/boot/efi

[Path]
PathChanged=/boot/efi/otter/device.toml
Unit=otter-config.service

[Install]
WantedBy=multi-user.target
";

const CONFIG_SERVICE: &str = "\
[Unit]
Description=Apply the device config (otter/device.toml)
Documentation=https://github.com/otter-os/otter
RequiresMountsFor=/boot/efi /data

[Service]
Type=oneshot
ExecStart=/usr/bin/otterd config apply
";

const SYSTEM_CONF: &str = "\
# Otter: a hung system must end in a reset so the boot loader's try counter runs out.
[Manager]
RuntimeWatchdogSec=30s
RebootWatchdogSec=2min
";

/// Turn the extracted base into an Otter root.
pub fn customise(tree: &Path, c: &Customisation) -> Result<()> {
    let p = c.project;

    // The agent and what it reads.
    let otterd = std::fs::read(c.otterd)
        .ctx(|| format!("reading the otterd binary {}", c.otterd.display()))?;
    write(tree, "usr/bin/otterd", &otterd, 0o755)?;
    write(
        tree,
        "usr/lib/otter/release.toml",
        c.release_toml.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/otter/agent.toml",
        c.agent_toml.as_bytes(),
        0o644,
    )?;
    for (name, pem) in &c.trusted_keys {
        write(
            tree,
            &format!("usr/lib/otter/keys/{name}"),
            pem.as_bytes(),
            0o644,
        )?;
    }
    mkdir(tree, "etc/otter/health.d", 0o755)?;

    // Units.
    write(
        tree,
        "usr/lib/systemd/system/otterd.service",
        OTTERD_SERVICE.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/systemd/system/otter-health.target",
        HEALTH_TARGET.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/systemd/system/otter-ssh-keygen.service",
        SSH_KEYGEN_SERVICE.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/systemd/system/otter-config.path",
        CONFIG_PATH_UNIT.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/systemd/system/otter-config.service",
        CONFIG_SERVICE.as_bytes(),
        0o644,
    )?;
    link(tree, "usr/lib/otter/init", "/usr/bin/otterd")?;
    let wants = [
        ("multi-user.target.wants", "otterd.service"),
        ("multi-user.target.wants", "otter-config.path"),
        ("multi-user.target.wants", "NetworkManager.service"),
        ("multi-user.target.wants", "systemd-resolved.service"),
        ("multi-user.target.wants", "systemd-timesyncd.service"),
        ("ssh.service.wants", "otter-ssh-keygen.service"),
        ("otter-health.target.wants", "ssh.service"),
    ];
    for (dir, unit) in wants {
        let target = if tree.join("usr/lib/systemd/system").join(unit).exists()
            || tree.join("lib/systemd/system").join(unit).exists()
        {
            format!("/lib/systemd/system/{unit}")
        } else {
            return Err(ImageError::Other(format!(
                "unit {unit} is missing from the base rootfs (package list incomplete?)"
            )));
        };
        link(tree, &format!("etc/systemd/system/{dir}/{unit}"), &target)?;
    }
    write(
        tree,
        "etc/systemd/system.conf.d/otter-watchdog.conf",
        SYSTEM_CONF.as_bytes(),
        0o644,
    )?;

    // Read-only root layout: /var and /home on the data partition, /tmp in RAM.
    write(tree, "etc/fstab", FSTAB.as_bytes(), 0o644)?;
    mkdir(tree, "boot/efi", 0o755)?;
    mkdir(tree, "data", 0o755)?;
    // A fresh machine-id per device: empty on a read-only /etc makes systemd create one at
    // boot (persisting it belongs to first-boot provisioning).
    write(tree, "etc/machine-id", b"", 0o444)?;
    write(
        tree,
        "etc/hostname",
        format!("{}\n", p.name()).as_bytes(),
        0o644,
    )?;

    // SSH: host keys are per device, never baked into the image.
    for entry in std::fs::read_dir(tree.join("etc/ssh")).ctx(|| "listing etc/ssh".to_string())? {
        let entry = entry.ctx(|| "listing etc/ssh".to_string())?;
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(entry.path())
                .ctx(|| format!("removing {}", entry.path().display()))?;
        }
    }
    write(
        tree,
        "etc/ssh/sshd_config.d/otter.conf",
        SSHD_CONF.as_bytes(),
        0o644,
    )?;
    if !p.file.rootfs.root_authorized_keys.is_empty() {
        let mut keys = String::new();
        for k in &p.file.rootfs.root_authorized_keys {
            let path = p.resolve(k);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ImageError::Other(format!(
                    "{}: rootfs.root_authorized_keys: cannot read {}: {e}",
                    p.path.display(),
                    path.display()
                ))
            })?;
            keys.push_str(text.trim_end());
            keys.push('\n');
        }
        mkdir(tree, "root/.ssh", 0o700)?;
        write(tree, "root/.ssh/authorized_keys", keys.as_bytes(), 0o600)?;
    }

    // Kernel and initrd where GRUB looks for them, and this slot's kernel arguments.
    let kernel = newest_with_prefix(&tree.join("boot"), "vmlinuz-")?;
    let initrd = newest_with_prefix(&tree.join("boot"), "initrd.img-")?;
    link(tree, "vmlinuz", &format!("boot/{kernel}"))?;
    link(tree, "initrd.img", &format!("boot/{initrd}"))?;
    write(tree, "boot/otter/bootenv", &c.slot_bootenv, 0o644)?;

    // Apps: podman's config, the compose files, the images in the read-only store.
    crate::apps::install(tree, c.apps, &mut |m| tracing::info!("{m}"))?;

    // The user's own files last, so they can override anything above.
    if let Some(overlay) = &p.file.rootfs.overlay {
        let src = p.resolve(overlay);
        if !src.is_dir() {
            return Err(ImageError::Other(format!(
                "{}: rootfs.overlay: {} is not a directory",
                p.path.display(),
                src.display()
            )));
        }
        let mut cmd = Command::new("cp");
        cmd.arg("-a").arg(format!("{}/.", src.display())).arg(tree);
        run(&mut cmd, "copying the rootfs overlay", "coreutils")?;
    }
    Ok(())
}

/// The initial content of the data partition: overlay directories for /var, /home.
pub fn data_skeleton(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", dir.display()))?;
    }
    for d in ["var/upper", "var/work", "home"] {
        mkdir(dir, d, 0o755)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_is_key_only_by_default() {
        // The device config's development mode (otterd: sshd_config.d/00-otter-development.conf,
        // read first) is the only way to turn password and root password logins on.
        for line in [
            "PasswordAuthentication no\n",
            "KbdInteractiveAuthentication no\n",
            "PermitRootLogin prohibit-password\n",
            "AuthorizedKeysFile .ssh/authorized_keys /etc/otter/authorized_keys/%u\n",
            "HostKey /var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key\n",
        ] {
            assert!(SSHD_CONF.contains(line), "{line}");
        }
        // Host keys: made once on the data partition, before sshd starts.
        assert!(SSH_KEYGEN_SERVICE.contains("ssh-keygen -A -f /var/lib/otter/ssh\n"));
        assert!(
            SSH_KEYGEN_SERVICE
                .contains("ConditionPathExists=!/var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key\n")
        );
        assert!(CONFIG_PATH_UNIT.contains("PathChanged=/boot/efi/otter/device.toml\n"));
    }
}
