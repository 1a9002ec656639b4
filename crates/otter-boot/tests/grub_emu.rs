//! Runs the generated grub.cfg in real GRUB (`grub-emu`, Debian package grub-emu) against a GPT
//! disk image with the two state files, and checks its decisions and the bytes it writes
//! against the Rust model (`otter_boot::sim`). Skipped with a message if grub-emu is missing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use otter_boot::sim::{EnvFile, GrubSource, grub_run};
use otter_boot::{BootState, GrubConfig, Slot, grub_cfg, slot_bootenv};

const SECTOR: u64 = 512;
const PART_SECTORS: u64 = 4096; // 2 MiB each
const FIRST_LBA: u64 = 2048;
const EMU_MODULES: &str = "/usr/lib/grub/x86_64-emu";

fn grub_emu_available() -> bool {
    let ok = Command::new("grub-emu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Path::new(EMU_MODULES).is_dir();
    if !ok {
        common::skip(
            "grub-emu not installed (Debian package grub-emu): the real GRUB script is not exercised",
        );
    }
    ok
}

/// Contents of one slot partition.
#[derive(Clone, Default)]
struct SlotFiles {
    kernel: bool,
    bootenv: Option<String>,
}

struct Disk {
    dir: tempfile::TempDir,
}

impl Disk {
    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// GPT disk: 1 otter-boot (FAT, otter/grubenv[.bak]), 2/3 slots (FAT stand-ins for ext4:
    /// GRUB's file access is the same).
    fn new(primary: Option<&[u8]>, backup: Option<&[u8]>, slots: [SlotFiles; 2]) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk { dir };
        let total = FIRST_LBA + 3 * PART_SECTORS + 64;
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(disk.image())
            .unwrap();
        f.set_len(total * SECTOR).unwrap();
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size((total - 1) as u32);
        mbr.overwrite_lba0(&mut f).unwrap();
        let mut g = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(f, None)
            .unwrap();
        let labels = ["otter-boot", "otter-root-a", "otter-root-b"];
        for (i, label) in labels.iter().enumerate() {
            let ty = if i == 0 {
                gpt::partition_types::EFI
            } else {
                gpt::partition_types::LINUX_FS
            };
            g.add_partition_at(
                label,
                i as u32 + 1,
                FIRST_LBA + i as u64 * PART_SECTORS,
                PART_SECTORS,
                ty,
                0,
            )
            .unwrap();
        }
        let mut f = g.write().unwrap();

        let mut boot = Vec::new();
        if let Some(p) = primary {
            boot.push(("otter/grubenv".to_string(), p.to_vec()));
        }
        if let Some(b) = backup {
            boot.push(("otter/grubenv.bak".to_string(), b.to_vec()));
        }
        let mut parts = vec![fat(&boot)];
        for s in &slots {
            let mut files = Vec::new();
            if s.kernel {
                files.push(("vmlinuz".to_string(), b"kernel".to_vec()));
                files.push(("initrd.img".to_string(), b"initrd".to_vec()));
            }
            if let Some(c) = &s.bootenv {
                files.push((
                    "boot/otter/bootenv".to_string(),
                    slot_bootenv(c).unwrap().to_vec(),
                ));
            }
            parts.push(fat(&files));
        }
        for (i, p) in parts.iter().enumerate() {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(
                (FIRST_LBA + i as u64 * PART_SECTORS) * SECTOR,
            ))
            .unwrap();
            f.write_all(p).unwrap();
        }
        f.sync_all().unwrap();
        disk
    }

    fn read_boot_file(&self, name: &str) -> Option<Vec<u8>> {
        let img = fs::read(self.image()).unwrap();
        let start = (FIRST_LBA * SECTOR) as usize;
        let part = img[start..start + (PART_SECTORS * SECTOR) as usize].to_vec();
        let fs = fatfs::FileSystem::new(Cursor::new(part), fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file(&format!("otter/{name}")).ok()?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        Some(out)
    }

    /// Runs grub-emu on `cfg` (with stubs for linux/initrd, which grub-emu lacks) and returns
    /// the marker lines it printed.
    fn run(&self, cfg: &str) -> Emu {
        let d = self.dir.path();
        let link = d.join("x86_64-emu");
        if !link.exists() {
            std::os::unix::fs::symlink(EMU_MODULES, &link).unwrap();
        }
        fs::write(
            d.join("device.map"),
            format!("(hd0) {}\n", self.image().display()),
        )
        .unwrap();
        // The stubs stand in for the EFI loaders: "linux" fails when the kernel file is absent,
        // "initrd" records the boot and stops GRUB.
        let stubs = r#"
set root=hd0,gpt1
function linux {
  if [ -f "$1" ]; then
    echo "OTTER-LINUX $1"
    for a in "$@"; do
      echo "OTTER-ARG $a"
    done
    set otter_stub_kernel=ok
  else
    echo "OTTER-NO-KERNEL $1"
    set otter_stub_kernel=missing
  fi
  [ "$otter_stub_kernel" = ok ]
}
function initrd {
  echo "OTTER-BOOTED $1"
  halt
}
"#;
        fs::write(d.join("grub.cfg"), format!("{stubs}\n{cfg}")).unwrap();
        let out = Command::new("timeout")
            .args(["60", "grub-emu", "-d"])
            .arg(d)
            .arg("-m")
            .arg(d.join("device.map"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let clean = strip_ansi(&text);
        Emu {
            lines: clean
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }
}

struct Emu {
    lines: Vec<String>,
}

impl Emu {
    fn booted(&self) -> Option<(Slot, bool)> {
        let linux = self
            .lines
            .iter()
            .rev()
            .find(|l| l.starts_with("OTTER-LINUX "))?;
        self.lines
            .iter()
            .rev()
            .find(|l| l.starts_with("OTTER-BOOTED "))?;
        let slot = if linux.contains(",gpt2)") {
            Slot::A
        } else {
            Slot::B
        };
        let is_try = self.args().iter().any(|a| a == "otter.try=1");
        Some((slot, is_try))
    }

    /// Kernel arguments of the last `linux` call.
    fn args(&self) -> Vec<String> {
        let start = self
            .lines
            .iter()
            .rposition(|l| l.starts_with("OTTER-LINUX "))
            .unwrap_or(0);
        self.lines[start..]
            .iter()
            .filter_map(|l| l.strip_prefix("OTTER-ARG ").map(str::to_string))
            .skip(1) // the kernel path
            .collect()
    }

    fn dump(&self) -> String {
        self.lines.join("\n")
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

fn fat(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut img = Cursor::new(vec![0u8; (PART_SECTORS * SECTOR) as usize]);
    fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
    {
        let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).unwrap();
        let root = fs.root_dir();
        for (path, data) in files {
            let parts: Vec<&str> = path.split('/').collect();
            let mut dir = root.clone();
            for p in &parts[..parts.len() - 1] {
                dir = dir.open_dir(p).or_else(|_| dir.create_dir(p)).unwrap();
            }
            let mut f = dir.create_file(parts[parts.len() - 1]).unwrap();
            f.truncate().unwrap();
            f.write_all(data).unwrap();
        }
    }
    img.into_inner()
}

fn cfg() -> String {
    grub_cfg(&GrubConfig {
        extra_cmdline: "quiet".into(),
        ..Default::default()
    })
    .unwrap()
}

fn slots_ok() -> [SlotFiles; 2] {
    [
        SlotFiles {
            kernel: true,
            bootenv: None,
        },
        SlotFiles {
            kernel: true,
            bootenv: None,
        },
    ]
}

/// Runs GRUB once and checks decision and written bytes against the model.
fn check_against_model(primary: Option<&[u8]>, backup: Option<&[u8]>, what: &str) -> (Slot, bool) {
    let disk = Disk::new(primary, backup, slots_ok());
    let emu = disk.run(&cfg());
    let model = grub_run(primary, backup);
    assert_eq!(
        emu.booted(),
        Some(model.boot),
        "{what}: GRUB booted something else than the model\n{}",
        emu.dump()
    );
    let mut want_p = primary.map(<[u8]>::to_vec);
    let mut want_b = backup.map(<[u8]>::to_vec);
    for (file, content) in &model.writes {
        match file {
            EnvFile::Primary => want_p = Some(content.clone()),
            EnvFile::Backup => want_b = Some(content.clone()),
        }
    }
    assert_eq!(
        disk.read_boot_file("grubenv"),
        want_p,
        "{what}: primary bytes differ\n{}",
        emu.dump()
    );
    assert_eq!(
        disk.read_boot_file("grubenv.bak"),
        want_b,
        "{what}: backup bytes differ\n{}",
        emu.dump()
    );
    model.boot
}

#[test]
fn every_valid_state_matches_the_model() {
    if !grub_emu_available() {
        return;
    }
    for s in BootState::all() {
        let b = s.to_env_block();
        let boot = check_against_model(Some(&b), Some(&b), &format!("{s:?}"));
        assert_eq!(Some(boot), s.next_boot());
    }
}

#[test]
fn invalid_primary_uses_backup_and_writes_only_backup() {
    if !grub_emu_available() {
        return;
    }
    let mut s = BootState::factory();
    s.mark_bad(Slot::B);
    s.set_try(Slot::B, 2);
    let good = s.to_env_block();
    let mut bad_value = good;
    bad_value[33] = b'B'; // ORDER=B B
    assert!(BootState::from_env_block(&bad_value).is_err());
    let mut torn = good;
    torn[32..512].fill(0);
    let mut bad_header = good;
    bad_header[0] = b'X';
    let cases: [(&str, Option<&[u8]>); 4] = [
        ("bad value", Some(&bad_value)),
        ("torn sector", Some(&torn)),
        ("bad header", Some(&bad_header)),
        ("missing", None),
    ];
    for (what, primary) in cases {
        let boot = check_against_model(primary, Some(&good), what);
        assert_eq!(boot, (Slot::B, true), "{what}");
    }
    // A broken or missing backup does not stop a trial boot from a valid primary.
    for (what, backup) in [
        ("backup bad header", Some(&bad_header[..])),
        ("backup missing", None),
    ] {
        let boot = check_against_model(Some(&good), backup, what);
        assert_eq!(boot, (Slot::B, true), "{what}");
    }
}

#[test]
fn both_invalid_boots_a_without_writing() {
    if !grub_emu_available() {
        return;
    }
    let junk = [b'#'; 1024];
    let boot = check_against_model(Some(&junk), None, "both invalid");
    assert_eq!(boot, (Slot::A, false));
    assert_eq!(
        grub_run(Some(&junk), None).source,
        GrubSource::BuiltinDefault
    );
}

#[test]
fn stale_backup_is_resynced_and_try_counts_down_to_fallback() {
    if !grub_emu_available() {
        return;
    }
    // A power cut after the primary of set_try(B, 2) was written left the old backup.
    let mut old = BootState::factory();
    old.mark_bad(Slot::B);
    let mut new = old;
    new.set_try(Slot::B, 2);
    let disk = Disk::new(
        Some(&new.to_env_block()),
        Some(&old.to_env_block()),
        slots_ok(),
    );
    let cfg = cfg();
    let mut expect = new;
    for round in 0..4 {
        let want = expect.grub_boot_step();
        let emu = disk.run(&cfg);
        assert_eq!(emu.booted(), want, "round {round}\n{}", emu.dump());
        let p = disk.read_boot_file("grubenv").unwrap();
        let b = disk.read_boot_file("grubenv.bak").unwrap();
        assert_eq!(
            BootState::from_env_block(&p).unwrap(),
            expect,
            "round {round}"
        );
        assert_eq!(
            p, b,
            "round {round}: backup must be re-synced by the trial boot"
        );
    }
    assert_eq!(expect.next_boot(), Some((Slot::A, false)));
}

#[test]
fn kernel_command_line_and_slot_bootenv() {
    if !grub_emu_available() {
        return;
    }
    let mut s = BootState::factory();
    s.set_try(Slot::B, 1);
    let b = s.to_env_block();
    let slots = [
        SlotFiles {
            kernel: true,
            bootenv: None,
        },
        SlotFiles {
            kernel: true,
            bootenv: Some("loglevel=7 foo=bar".into()),
        },
    ];
    let disk = Disk::new(Some(&b), Some(&b), slots);
    let quoted_cfg = grub_cfg(&GrubConfig {
        extra_cmdline: r#"quiet dyndbg="file x.c +p""#.into(),
        ..Default::default()
    })
    .unwrap();
    let emu = disk.run(&quoted_cfg);
    assert_eq!(emu.booted(), Some((Slot::B, true)), "{}", emu.dump());
    let args = emu.args();
    let want = [
        "console=ttyS0,115200",
        "console=tty0",
        "quiet",
        // One word: GRUB's linux command passes it to Linux as "dyndbg=file x.c +p".
        "dyndbg=file x.c +p",
        "loglevel=7",
        "foo=bar",
        "root=PARTLABEL=otter-root-b",
        "ro",
        "panic=5",
        "otter.slot=B",
        "otter.try=1",
    ];
    assert_eq!(args, want, "{}", emu.dump());
    assert!(
        emu.lines
            .iter()
            .any(|l| l.starts_with("OTTER-LINUX (hd0,gpt3)/vmlinuz")),
        "{}",
        emu.dump()
    );
    assert!(
        emu.lines
            .iter()
            .any(|l| l == "OTTER-BOOTED (hd0,gpt3)/initrd.img"),
        "{}",
        emu.dump()
    );

    // Slot A has no bootenv: no slot arguments, and no error stops the boot.
    let mut s = BootState::factory();
    s.commit(Slot::A);
    let b = s.to_env_block();
    let disk = Disk::new(Some(&b), Some(&b), slots_ok());
    let emu = disk.run(&cfg());
    assert_eq!(emu.booted(), Some((Slot::A, false)), "{}", emu.dump());
    assert_eq!(
        emu.args(),
        [
            "console=ttyS0,115200",
            "console=tty0",
            "quiet",
            "root=PARTLABEL=otter-root-a",
            "ro",
            "panic=5",
            "otter.slot=A",
            "otter.try=0"
        ]
    );
}

#[test]
fn unloadable_trial_kernel_falls_back_to_the_good_slot() {
    if !grub_emu_available() {
        return;
    }
    let mut s = BootState::factory();
    s.set_try(Slot::B, 1);
    let b = s.to_env_block();
    let slots = [
        SlotFiles {
            kernel: true,
            bootenv: None,
        },
        SlotFiles {
            kernel: false,
            bootenv: None,
        },
    ];
    let disk = Disk::new(Some(&b), Some(&b), slots);
    let emu = disk.run(&cfg());
    assert_eq!(emu.booted(), Some((Slot::A, false)), "{}", emu.dump());
    // The try was used up even though the kernel was missing.
    let p = BootState::from_env_block(&disk.read_boot_file("grubenv").unwrap()).unwrap();
    assert_eq!(p.b.tries, 0);
}

#[test]
fn nothing_loadable_reboots_instead_of_prompting() {
    if !grub_emu_available() {
        return;
    }
    let b = BootState::factory().to_env_block();
    let none = [SlotFiles::default(), SlotFiles::default()];
    let disk = Disk::new(Some(&b), Some(&b), none);
    let started = std::time::Instant::now();
    let emu = disk.run(&cfg());
    assert_eq!(emu.booted(), None, "{}", emu.dump());
    let tried: Vec<&String> = emu
        .lines
        .iter()
        .filter(|l| l.starts_with("OTTER-NO-KERNEL"))
        .collect();
    // A (good), then the primary A anyway; B is not bootable and never tried.
    assert_eq!(tried.len(), 2, "{}", emu.dump());
    assert!(tried.iter().all(|l| l.contains("gpt2")), "{}", emu.dump());
    assert!(
        emu.lines.iter().any(|l| l.contains("rebooting in 10 s")),
        "{}",
        emu.dump()
    );
    // grub-emu exits on `reboot`; the 60 s guard would mean GRUB sat at a prompt.
    assert!(started.elapsed() < std::time::Duration::from_secs(50));
}

#[test]
fn timeout_waits_then_boots() {
    if !grub_emu_available() {
        return;
    }
    let mut s = BootState::factory();
    s.set_try(Slot::B, 1);
    let b = s.to_env_block();
    let disk = Disk::new(Some(&b), Some(&b), slots_ok());
    let c = grub_cfg(&GrubConfig {
        timeout_secs: 1,
        ..Default::default()
    })
    .unwrap();
    let emu = disk.run(&c);
    assert_eq!(emu.booted(), Some((Slot::B, true)), "{}", emu.dump());
}
