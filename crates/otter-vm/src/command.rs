//! Building the QEMU command line.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Accel, Arch, Error, Firmware, Result, Serial, VmOptions, find_ovmf};

/// Format of the disk QEMU opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// Detect qcow2 by its magic; anything else is raw.
    pub fn detect(path: &Path) -> Result<DiskFormat> {
        let mut f = std::fs::File::open(path).map_err(|source| Error::Image {
            path: path.to_owned(),
            source,
        })?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match f.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Image {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(if got == 4 && magic == *b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }
}

/// Files prepared for one QEMU run, and the resolved accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The disk QEMU opens: the overlay, or the image itself with `persist`.
    pub disk: PathBuf,
    pub disk_format: DiskFormat,
    /// Firmware code (read-only pflash).
    pub firmware_code: PathBuf,
    /// This VM's writable UEFI variable store.
    pub efi_vars: PathBuf,
    /// `Kvm` or `Tcg` after [`prepare`]; `Auto` gives QEMU's own fallback (`-accel kvm -accel tcg`).
    pub accel: Accel,
}

fn validate(opts: &VmOptions) -> Result<()> {
    if opts.memory_mib < 128 {
        return Err(Error::InvalidOptions(format!(
            "memory {} MiB is too small for UEFI: use at least 128 (default 768)",
            opts.memory_mib
        )));
    }
    if opts.cpus == 0 {
        return Err(Error::InvalidOptions("cpus must be at least 1".into()));
    }
    if opts.persist && opts.overlay.is_some() {
        return Err(Error::InvalidOptions(
            "persist (boot the image itself) and an overlay exclude each other: drop one".into(),
        ));
    }
    let mut host_ports: Vec<u16> = opts.ssh_port.into_iter().collect();
    host_ports.extend(opts.extra_hostfwd.iter().map(|(h, _)| *h));
    for (i, p) in host_ports.iter().enumerate() {
        if *p == 0 {
            return Err(Error::InvalidOptions(
                "host port 0 cannot be forwarded: pick a free port".into(),
            ));
        }
        if host_ports[..i].contains(p) {
            return Err(Error::InvalidOptions(format!(
                "host port {p} is forwarded twice"
            )));
        }
    }
    Ok(())
}

/// Make the files a run needs: the overlay (unless `persist`), the UEFI variable store, the work
/// directory; and resolve [`Accel::Auto`]. `workdir` holds the throwaway overlay
/// (`overlay.qcow2`) and variable store (`efivars.fd`) when no explicit paths are given.
pub fn prepare(opts: &VmOptions, workdir: &Path) -> Result<Prepared> {
    validate(opts)?;
    let firmware = find_ovmf(opts.arch)?;
    prepare_with_firmware(opts, workdir, &firmware)
}

/// [`prepare`] with a given firmware instead of [`find_ovmf`].
pub fn prepare_with_firmware(
    opts: &VmOptions,
    workdir: &Path,
    firmware: &Firmware,
) -> Result<Prepared> {
    validate(opts)?;
    let image_format = DiskFormat::detect(&opts.image)?;
    std::fs::create_dir_all(workdir).map_err(|e| {
        Error::io(
            format!("creating VM work directory {}", workdir.display()),
            e,
        )
    })?;

    let (disk, disk_format) = if opts.persist {
        (opts.image.clone(), image_format)
    } else {
        let (overlay, keep) = match &opts.overlay {
            Some(p) => (p.clone(), true),
            None => (workdir.join("overlay.qcow2"), false),
        };
        if !keep || !overlay.exists() {
            create_overlay(&opts.image, image_format, &overlay, opts.disk_size)?;
        }
        (overlay, DiskFormat::Qcow2)
    };

    let (efi_vars, keep_vars) = match (&opts.efi_vars, &opts.overlay) {
        (Some(v), _) => (v.clone(), true),
        (None, Some(overlay)) => {
            let mut name = overlay.as_os_str().to_owned();
            name.push(".efivars.fd");
            (PathBuf::from(name), true)
        }
        (None, None) => (workdir.join("efivars.fd"), false),
    };
    if !keep_vars || !efi_vars.exists() {
        if let Some(parent) = efi_vars.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        // Remove first: a read-only leftover would make the copy fail.
        let _ = std::fs::remove_file(&efi_vars);
        std::fs::copy(&firmware.vars_template, &efi_vars).map_err(|e| {
            Error::io(
                format!(
                    "copying UEFI variable store {} to {}",
                    firmware.vars_template.display(),
                    efi_vars.display()
                ),
                e,
            )
        })?;
        make_writable(&efi_vars)?;
    }

    Ok(Prepared {
        disk,
        disk_format,
        firmware_code: firmware.code.clone(),
        efi_vars,
        accel: resolve_accel(opts.arch, opts.accel)?,
    })
}

fn make_writable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut perm = meta.permissions();
    if perm.mode() & 0o200 == 0 {
        perm.set_mode(perm.mode() | 0o200);
        std::fs::set_permissions(path, perm)
            .map_err(|e| Error::io(format!("making {} writable", path.display()), e))?;
    }
    Ok(())
}

fn create_overlay(
    image: &Path,
    format: DiskFormat,
    overlay: &Path,
    size: Option<u64>,
) -> Result<()> {
    // The backing path is stored in the overlay and resolved relative to it: make it absolute.
    let backing = std::fs::canonicalize(image).map_err(|source| Error::Image {
        path: image.to_owned(),
        source,
    })?;
    if let Some(parent) = overlay.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::remove_file(overlay) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                format!("removing old overlay {}", overlay.display()),
                e,
            ));
        }
    }
    let mut cmd = Command::new("qemu-img");
    cmd.arg("create")
        .arg("-q")
        .args(["-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&backing)
        .arg(overlay);
    if let Some(size) = size {
        // Never smaller than the image: qemu-img would cut the partition table off.
        let image_size = std::fs::metadata(&backing).map(|m| m.len()).unwrap_or(0);
        cmd.arg(size.max(image_size).to_string());
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::ProgramNotFound {
            program: "qemu-img",
            package: "qemu-utils",
            source,
        })?;
    if !out.status.success() {
        return Err(Error::OverlayCreate {
            overlay: overlay.to_owned(),
            image: backing,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Resolve `Auto` to `Kvm` or `Tcg`; check that an explicit `Kvm` is usable. KVM is usable when
/// the guest has the host's architecture, `/dev/kvm` opens read-write and QEMU starts a paused
/// KVM machine without failing (nested KVM can fail right at start, e.g. "failed to set MSR").
/// The probe result is cached for the process. `OTTER_VM_ACCEL=tcg` makes `Auto` TCG without
/// probing: for hosts whose KVM passes the probe but fails once the guest runs (nested KVM
/// that answers "emulation failure" in the firmware).
pub fn resolve_accel(arch: Arch, accel: Accel) -> Result<Accel> {
    match accel {
        Accel::Tcg => Ok(Accel::Tcg),
        Accel::Auto if std::env::var("OTTER_VM_ACCEL").is_ok_and(|v| v == "tcg") => Ok(Accel::Tcg),
        Accel::Auto => Ok(match kvm_usable(arch) {
            Ok(()) => Accel::Kvm,
            Err(_) => Accel::Tcg,
        }),
        Accel::Kvm => match kvm_usable(arch) {
            Ok(()) => Ok(Accel::Kvm),
            Err(reason) => Err(Error::KvmUnusable { arch, reason }),
        },
    }
}

fn kvm_usable(arch: Arch) -> std::result::Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<Arch, std::result::Result<(), String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(arch).or_insert_with(|| probe_kvm(arch)).clone()
}

fn probe_kvm(arch: Arch) -> std::result::Result<(), String> {
    match Arch::host() {
        Some(h) if h == arch => {}
        h => {
            return Err(format!(
                "guest is {arch}, host is {}",
                h.map_or_else(|| std::env::consts::ARCH.to_string(), |h| h.to_string())
            ));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let mut child = Command::new(arch.qemu_binary())
        .args(["-accel", "kvm", "-machine", arch.machine(), "-cpu", "host"])
        .args(["-m", "64", "-smp", "1", "-nodefaults", "-S"])
        .args(["-display", "none", "-monitor", "none", "-serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", arch.qemu_binary()))?;
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                let first = err.lines().next().unwrap_or("").trim().to_string();
                return Err(format!("QEMU KVM probe exited with {status}: {first}"));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the QEMU KVM probe: {e}"));
            }
        }
    }
}

/// Escape a value for QEMU's comma-separated option syntax (`,` → `,,`).
fn escape(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape(path.as_os_str()));
    s.push(suffix);
    s
}

/// The QEMU arguments (without the program) for `opts` and the prepared files. Pure.
pub fn qemu_args(opts: &VmOptions, prepared: &Prepared) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));

    push(&["-name", "otter"]);
    push(&["-machine", opts.arch.machine()]);
    match prepared.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        // Unresolved: let QEMU fall back by itself; `max` is `host` under KVM.
        Accel::Auto => push(&["-accel", "kvm", "-accel", "tcg", "-cpu", "max"]),
    }
    let smp = opts.cpus.to_string();
    let mem = opts.memory_mib.to_string();
    push(&["-smp", &smp, "-m", &mem]);

    a.push("-drive".into());
    a.push(opt(
        "if=pflash,format=raw,unit=0,readonly=on,file=",
        &prepared.firmware_code,
        "",
    ));
    a.push("-drive".into());
    a.push(opt(
        "if=pflash,format=raw,unit=1,file=",
        &prepared.efi_vars,
        "",
    ));

    a.push("-drive".into());
    a.push(opt(
        "if=none,id=disk0,discard=unmap,file=",
        &prepared.disk,
        &format!(",format={}", prepared.disk_format.as_str()),
    ));
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);

    let mut netdev = String::from("user,id=net0");
    let fwds = opts
        .ssh_port
        .map(|p| (p, 22))
        .into_iter()
        .chain(opts.extra_hostfwd.iter().copied());
    for (host, guest) in fwds {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    push(&["-netdev", &netdev]);
    // romfile= : no iPXE option ROM (not needed, and not installed everywhere).
    push(&["-device", "virtio-net-pci,netdev=net0,romfile="]);
    push(&["-device", "virtio-rng-pci"]);

    if opts.watchdog {
        push(&["-device", "i6300esb", "-action", "watchdog=reset"]);
    }
    if opts.no_reboot {
        push(&["-no-reboot"]);
    }

    match &opts.serial {
        Serial::Stdio => push(&["-display", "none", "-serial", "mon:stdio"]),
        Serial::File(path) => {
            push(&["-display", "none", "-monitor", "none", "-chardev"]);
            a.push(opt("file,id=serial0,path=", path, ""));
            a.extend(["-serial", "chardev:serial0"].map(OsString::from));
        }
        Serial::UnixSocket(path) => {
            push(&["-display", "none", "-monitor", "none", "-chardev"]);
            a.push(opt("socket,id=serial0,server=on,wait=off,path=", path, ""));
            a.extend(["-serial", "chardev:serial0"].map(OsString::from));
        }
        Serial::None => push(&["-display", "none", "-monitor", "none", "-serial", "none"]),
    }
    a
}

/// Prepare the run's files (see [`prepare`]) and build the QEMU command. Standard streams are
/// left to the caller ([`crate::RunningVm::spawn`] sets them).
pub fn qemu_command(opts: &VmOptions, workdir: &Path) -> Result<Command> {
    let prepared = prepare(opts, workdir)?;
    let mut cmd = Command::new(opts.arch.qemu_binary());
    cmd.args(qemu_args(opts, &prepared));
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(accel: Accel) -> Prepared {
        Prepared {
            disk: "/w/overlay.qcow2".into(),
            disk_format: DiskFormat::Qcow2,
            firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            efi_vars: "/w/efivars.fd".into(),
            accel,
        }
    }

    fn line(opts: &VmOptions, p: &Prepared) -> String {
        qemu_args(opts, p)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn defaults_interactive_tcg() {
        let opts = VmOptions::new("/images/otter.img");
        assert_eq!(
            line(&opts, &prepared(Accel::Tcg)),
            "-name otter -machine q35 -accel tcg -cpu max -smp 2 -m 768 \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/w/efivars.fd \
             -drive if=none,id=disk0,discard=unmap,file=/w/overlay.qcow2,format=qcow2 \
             -device virtio-blk-pci,drive=disk0,bootindex=0 \
             -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile= \
             -device virtio-rng-pci -device i6300esb -action watchdog=reset \
             -display none -serial mon:stdio"
        );
    }

    #[test]
    fn serial_file_forwards_no_watchdog_no_reboot() {
        let mut opts = VmOptions::new("/images/otter.img");
        opts.serial = Serial::File("/logs/serial,1.log".into());
        opts.ssh_port = Some(2222);
        opts.extra_hostfwd = vec![(8080, 80), (9000, 9001)];
        opts.watchdog = false;
        opts.no_reboot = true;
        opts.memory_mib = 512;
        opts.cpus = 1;
        let l = line(&opts, &prepared(Accel::Tcg));
        assert!(l.contains("-smp 1 -m 512"), "{l}");
        assert!(
            l.contains(
                "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,\
                 hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:9000-:9001 "
            ),
            "{l}"
        );
        assert!(!l.contains("i6300esb"), "{l}");
        assert!(l.contains(" -no-reboot "), "{l}");
        // Commas in paths are doubled.
        assert!(
            l.ends_with(
                "-display none -monitor none -chardev file,id=serial0,path=/logs/serial,,1.log \
                 -serial chardev:serial0"
            ),
            "{l}"
        );
    }

    #[test]
    fn serial_socket_and_none() {
        let mut opts = VmOptions::new("/i.img");
        opts.serial = Serial::UnixSocket("/run/otter.sock".into());
        let l = line(&opts, &prepared(Accel::Tcg));
        assert!(
            l.ends_with(
                "-chardev socket,id=serial0,server=on,wait=off,path=/run/otter.sock \
                 -serial chardev:serial0"
            ),
            "{l}"
        );
        opts.serial = Serial::None;
        let l = line(&opts, &prepared(Accel::Tcg));
        assert!(
            l.ends_with("-display none -monitor none -serial none"),
            "{l}"
        );
    }

    #[test]
    fn accelerators() {
        let opts = VmOptions::new("/i.img");
        assert!(line(&opts, &prepared(Accel::Kvm)).contains("-accel kvm -cpu host "));
        assert!(line(&opts, &prepared(Accel::Auto)).contains("-accel kvm -accel tcg -cpu max "));
    }

    #[test]
    fn persist_raw_disk() {
        let opts = VmOptions::new("/images/otter.img");
        let mut p = prepared(Accel::Tcg);
        p.disk = "/images/otter.img".into();
        p.disk_format = DiskFormat::Raw;
        assert!(
            line(&opts, &p).contains(
                "-drive if=none,id=disk0,discard=unmap,file=/images/otter.img,format=raw "
            )
        );
    }

    #[test]
    fn aarch64_machine() {
        let mut opts = VmOptions::new("/i.img");
        opts.arch = Arch::Aarch64;
        let l = line(&opts, &prepared(Accel::Tcg));
        assert!(
            l.starts_with("-name otter -machine virt -accel tcg -cpu max "),
            "{l}"
        );
        assert_eq!(opts.arch.qemu_binary(), "qemu-system-aarch64");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let mut opts = VmOptions::new("/i.img");
        opts.persist = true;
        opts.overlay = Some("/o.qcow2".into());
        assert!(validate(&opts).unwrap_err().to_string().contains("exclude"));
        let mut opts = VmOptions::new("/i.img");
        opts.ssh_port = Some(2222);
        opts.extra_hostfwd = vec![(2222, 80)];
        assert!(validate(&opts).unwrap_err().to_string().contains("twice"));
        let mut opts = VmOptions::new("/i.img");
        opts.memory_mib = 16;
        assert!(validate(&opts).is_err());
        let mut opts = VmOptions::new("/i.img");
        opts.cpus = 0;
        assert!(validate(&opts).is_err());
    }

    #[test]
    fn missing_image_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let opts = VmOptions::new(d.path().join("nope.img"));
        let msg = prepare(&opts, &d.path().join("w")).unwrap_err().to_string();
        assert!(msg.contains("nope.img"), "{msg}");
    }

    #[test]
    fn detects_qcow2_magic() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw.img");
        std::fs::write(&raw, [0u8; 16]).unwrap();
        assert_eq!(DiskFormat::detect(&raw).unwrap(), DiskFormat::Raw);
        let q = d.path().join("q.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        let empty = d.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(DiskFormat::detect(&empty).unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn tcg_needs_no_probe() {
        assert_eq!(
            resolve_accel(Arch::Aarch64, Accel::Tcg).unwrap(),
            Accel::Tcg
        );
    }

    #[test]
    fn kvm_for_foreign_arch_is_unusable() {
        let foreign = match Arch::host() {
            Some(Arch::X86_64) => Arch::Aarch64,
            _ => Arch::X86_64,
        };
        assert_eq!(resolve_accel(foreign, Accel::Auto).unwrap(), Accel::Tcg);
        let msg = resolve_accel(foreign, Accel::Kvm).unwrap_err().to_string();
        assert!(msg.contains("use accel tcg"), "{msg}");
    }

    fn have_qemu_img() -> bool {
        Command::new("qemu-img")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn fake_firmware(dir: &Path) -> Firmware {
        let fw = Firmware {
            code: dir.join("CODE.fd"),
            vars_template: dir.join("VARS.fd"),
        };
        std::fs::write(&fw.code, b"code").unwrap();
        std::fs::write(&fw.vars_template, b"template").unwrap();
        fw
    }

    #[test]
    fn throwaway_overlay_and_fresh_vars() {
        if !have_qemu_img() {
            eprintln!("skipping: qemu-img missing (apt-get install qemu-utils)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let fw = fake_firmware(d.path());
        let image = d.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let work = d.path().join("work");
        let mut opts = VmOptions::new(&image);
        opts.accel = Accel::Tcg;
        let p = prepare_with_firmware(&opts, &work, &fw).unwrap();
        assert_eq!(p.disk, work.join("overlay.qcow2"));
        assert_eq!(p.disk_format, DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(&p.disk).unwrap(), DiskFormat::Qcow2);
        assert_eq!(p.efi_vars, work.join("efivars.fd"));
        assert_eq!(p.accel, Accel::Tcg);
        // A second run starts from scratch again.
        std::fs::write(&p.efi_vars, b"changed").unwrap();
        std::fs::write(&p.disk, b"junk").unwrap();
        let p = prepare_with_firmware(&opts, &work, &fw).unwrap();
        assert_eq!(std::fs::read(&p.efi_vars).unwrap(), b"template");
        assert_eq!(DiskFormat::detect(&p.disk).unwrap(), DiskFormat::Qcow2);
        // The image is untouched.
        assert_eq!(std::fs::read(&image).unwrap(), vec![0u8; 1 << 20]);
    }

    #[test]
    fn kept_overlay_and_vars_survive_runs() {
        if !have_qemu_img() {
            eprintln!("skipping: qemu-img missing (apt-get install qemu-utils)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let fw = fake_firmware(d.path());
        let image = d.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let mut opts = VmOptions::new(&image);
        opts.accel = Accel::Tcg;
        opts.overlay = Some(d.path().join("dev/device.qcow2"));
        let p = prepare_with_firmware(&opts, &d.path().join("w1"), &fw).unwrap();
        assert_eq!(p.disk, d.path().join("dev/device.qcow2"));
        assert_eq!(p.efi_vars, d.path().join("dev/device.qcow2.efivars.fd"));
        std::fs::write(&p.efi_vars, b"nvram state").unwrap();
        let before = std::fs::read(&p.disk).unwrap();
        let p2 = prepare_with_firmware(&opts, &d.path().join("w2"), &fw).unwrap();
        assert_eq!(p2, p);
        assert_eq!(std::fs::read(&p.efi_vars).unwrap(), b"nvram state");
        assert_eq!(std::fs::read(&p.disk).unwrap(), before);

        // Explicit vars path.
        opts.efi_vars = Some(d.path().join("nv/vars.fd"));
        let p3 = prepare_with_firmware(&opts, &d.path().join("w3"), &fw).unwrap();
        assert_eq!(p3.efi_vars, d.path().join("nv/vars.fd"));
        assert_eq!(std::fs::read(&p3.efi_vars).unwrap(), b"template");
    }

    #[test]
    fn persist_boots_the_image_itself() {
        let d = tempfile::tempdir().unwrap();
        let fw = fake_firmware(d.path());
        let image = d.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let mut opts = VmOptions::new(&image);
        opts.accel = Accel::Tcg;
        opts.persist = true;
        let p = prepare_with_firmware(&opts, &d.path().join("w"), &fw).unwrap();
        assert_eq!(p.disk, image);
        assert_eq!(p.disk_format, DiskFormat::Raw);
        assert!(!d.path().join("w/overlay.qcow2").exists());
    }
}
