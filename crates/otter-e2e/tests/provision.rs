//! End-to-end: an image configured with `otter configure` (hostname, a user with an SSH key, a
//! static address for the QEMU NIC, NTP server, persistent logging) boots in QEMU on a disk
//! bigger than the image; every setting takes effect; the host name changes at runtime without
//! a reboot; a broken edit is refused with the error on the console and in `otterd status`;
//! after a reboot the machine-id, journal and settings persist and `otter-data` fills the disk.
//!
//! Runs when QEMU, OVMF, mmdebstrap, GRUB and root are available (CI installs them).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Context, Result, bail, ensure};
use otter_e2e::scenario::{Device, Variant, Workbench};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn first_boot_provisioning_from_device_toml() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the QEMU provisioning scenario: {missing}");
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

const DISK: u64 = 4 << 30;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn wait_for(dev: &Device, what: &str, cmd: &str, want: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        if let Ok(out) = dev.sh(cmd) {
            if out.trim() == want {
                return Ok(());
            }
            last = out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("{what}: `{cmd}` printed `{}`, not `{want}`", last.trim())
}

fn check(dev: &Device, what: &str, cmd: &str, want: &str) -> Result<()> {
    let out = dev.sh(cmd)?;
    ensure!(
        out.contains(want),
        "{what}: `{cmd}` printed:\n{out}\n(expected `{want}`)"
    );
    Ok(())
}

fn scenario() -> Result<()> {
    let base = otter_e2e::test_dir("provision")?;
    let wb = Workbench::new(&base.join("work"))?;
    let release = wb.build(
        "prov",
        &Variant {
            version: "1.0.0".into(),
            ..Default::default()
        },
    )?;

    // The user's copy of the image, configured without root or mount.
    let img = base.join("configured.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(release.image()?)
        .arg(&img))?;
    let pubkey = std::fs::read_to_string(wb.ssh_key.with_extension("pub"))
        .context("reading the test SSH public key")?;
    let cfg = base.join("device.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"timezone = "Europe/Berlin"

[[users]]
name = "ops"
sudo = true
ssh_authorized_keys = ["{}"]

[network]
dns = ["10.0.2.3"]

[[network.ethernet]]
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.2"

[time]
ntp = ["10.0.2.2"]

[logging]
storage = "persistent"
"#,
            pubkey.trim()
        ),
    )?;
    run(Command::new(&wb.otter)
        .arg("configure")
        .arg(&img)
        .arg("--from")
        .arg(&cfg)
        .args(["--hostname", "e2e-gw"]))?;
    let shown = run(Command::new(&wb.otter)
        .arg("configure")
        .arg(&img)
        .arg("--show"))?;
    ensure!(
        shown.contains("e2e-gw") && shown.contains("10.0.2.15/24"),
        "otter configure --show:\n{shown}"
    );

    // Boot on a 4 GiB disk; SSH in as the configured user with its key.
    let mut dev = Device::new(&img, &base.join("device"), &wb.ssh_key)?;
    dev.opts.disk_size = Some(DISK);
    dev.ssh.user = "ops".into();
    dev.power_on()
        .context("logging in as the configured user `ops` with its SSH key")?;

    check(&dev, "host name", "hostname", "e2e-gw")?;
    check(&dev, "sudo group", "id", "(sudo)")?;
    check(&dev, "sudo works", "sudo -n id -u", "0")?;
    check(&dev, "static address", "ip -4 -o addr show", "10.0.2.15/24")?;
    check(
        &dev,
        "static, not DHCP",
        "nmcli -g ipv4.method connection show otter-ethernet",
        "manual",
    )?;
    check(&dev, "DNS server", "resolvectl dns", "10.0.2.3")?;
    check(
        &dev,
        "NTP server",
        "timedatectl show-timesync -p SystemNTPServers",
        "SystemNTPServers=10.0.2.2",
    )?;
    check(&dev, "time zone", "date +%Z", "CE")?;
    check(
        &dev,
        "persistent journal",
        "test -d /var/log/journal/$(cat /etc/machine-id) && echo persistent",
        "persistent",
    )?;
    let data_bytes: u64 = dev
        .sh("lsblk -bno SIZE /dev/disk/by-partlabel/otter-data")?
        .trim()
        .parse()
        .context("reading the size of otter-data")?;
    let fs_bytes: u64 = dev
        .sh("df -B1 --output=size /data | tail -1")?
        .trim()
        .parse()
        .context("reading the size of /data")?;
    let image_bytes = std::fs::metadata(&img)?.len();
    let expected = DISK - image_bytes;
    ensure!(
        data_bytes > (256 << 20) + expected - (4 << 20) && fs_bytes > data_bytes * 9 / 10,
        "otter-data did not fill the disk: partition {data_bytes} bytes, filesystem {fs_bytes} bytes, disk {DISK}, image {image_bytes}"
    );
    let machine_id = dev.sh("cat /etc/machine-id")?.trim().to_string();
    let host_key = dev
        .sh("sudo ssh-keygen -lf /var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key.pub")?
        .trim()
        .to_string();
    ensure!(machine_id.len() == 32, "machine-id `{machine_id}`");

    // Change the host name at runtime: applied by the watcher, no reboot.
    let boot_id = dev.boot_id()?;
    dev.sh("sudo sed -i 's/e2e-gw/e2e-renamed/' /boot/efi/otter/device.toml")?;
    wait_for(
        &dev,
        "host name changed at runtime",
        "hostname",
        "e2e-renamed",
        Duration::from_secs(60),
    )?;
    ensure!(
        dev.boot_id()? == boot_id,
        "the host name change rebooted the device"
    );

    // A broken edit: refused, the last good config stays, the error names the key.
    let console_before = dev.console().len();
    dev.sh("sudo sed -i 's/e2e-renamed/bad_name!/' /boot/efi/otter/device.toml")?;
    let start = Instant::now();
    loop {
        let st = dev.sh("sudo otterd status --json")?;
        let v: serde_json::Value = serde_json::from_str(&st)?;
        if v["config"]["source"] == "last-good" {
            let e = v["config"]["error"].as_str().unwrap_or_default();
            ensure!(e.contains("`hostname`"), "status error: {e}");
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the broken config was not reported: {st}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    check(&dev, "host name kept", "hostname", "e2e-renamed")?;
    dev.wait_console(
        "device config NOT applied",
        console_before,
        Duration::from_secs(30),
    )?;
    dev.sh("sudo sed -i 's/bad_name!/e2e-renamed/' /boot/efi/otter/device.toml")?;

    // Reboot: everything persists.
    let _ = dev.ssh.run("sudo systemctl reboot");
    dev.wait_rebooted(&boot_id, Duration::from_secs(600))?;
    check(&dev, "host name after reboot", "hostname", "e2e-renamed")?;
    check(&dev, "machine-id kept", "cat /etc/machine-id", &machine_id)?;
    check(
        &dev,
        "SSH host key kept",
        "sudo ssh-keygen -lf /var/lib/otter/ssh/etc/ssh/ssh_host_ed25519_key.pub",
        &host_key,
    )?;
    let boots = dev.sh("journalctl --list-boots --no-pager | tail -n +2 | wc -l")?;
    ensure!(
        boots.trim().parse::<u32>().unwrap_or(0) >= 2,
        "the journal did not keep the first boot: {boots}"
    );
    let data_after: u64 = dev
        .sh("lsblk -bno SIZE /dev/disk/by-partlabel/otter-data")?
        .trim()
        .parse()?;
    ensure!(
        data_after == data_bytes,
        "otter-data changed size on reboot"
    );
    dev.power_cut();
    eprintln!(
        "provisioning: all settings applied; otter-data {} MiB on a {} MiB disk",
        data_bytes >> 20,
        DISK >> 20
    );
    Ok(())
}
