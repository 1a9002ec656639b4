//! The demo of the README: build release 1.0.0 and 1.1.0 of an image, configure a copy of
//! 1.0.0 with `otter configure`, boot it in QEMU on a bigger disk, update it to 1.1.0 from an
//! HTTP server on this machine, and show the device's status.

use anyhow::Result;
use otter_e2e::scenario::{Device, Variant, Workbench, guest_url, phase, serve};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("otter-demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn say(t0: Instant, msg: &str) {
    println!("[{:>5.0}s] {msg}", t0.elapsed().as_secs_f64());
}

fn run() -> Result<()> {
    if let Err(missing) = otter_e2e::requirements() {
        anyhow::bail!("the demo needs: {missing} (scripts/deps installs them)");
    }
    let t0 = Instant::now();
    let dir = otter_e2e::scenario::workspace_root().join("target/demo");
    let wb = Workbench::new(&dir)?;
    say(
        t0,
        "building release 1.0.0 (the first build makes the Debian base: a few minutes)",
    );
    let v1 = wb.build(
        "otter-demo",
        &Variant {
            version: "1.0.0".into(),
            ..Default::default()
        },
    )?;
    say(t0, &format!("image  {}", v1.image.display()));
    say(t0, "building release 1.1.0");
    let v2 = wb.build(
        "otter-demo",
        &Variant {
            version: "1.1.0".into(),
            ..Default::default()
        },
    )?;
    say(t0, &format!("bundle {}", v2.bundle.display()));

    let http = serve(&wb.out)?;
    // A new device each run: the previous run's disk already holds 1.1.0.
    let device_dir = dir.join("device");
    if device_dir.exists() {
        std::fs::remove_dir_all(&device_dir)?;
    }
    std::fs::create_dir_all(&device_dir)?;
    // This device's copy of the image, set up the way a user would before flashing.
    let img = device_dir.join("device.img");
    let cp = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&v1.image)
        .arg(&img)
        .status()?;
    anyhow::ensure!(cp.success(), "copying {}", v1.image.display());
    let configure = std::process::Command::new(&wb.otter)
        .arg("configure")
        .arg(&img)
        .args([
            "--hostname",
            "demo-gateway",
            "--timezone",
            "Europe/Berlin",
            "--persistent-logs",
        ])
        .output()?;
    anyhow::ensure!(
        configure.status.success(),
        "otter configure: {}",
        String::from_utf8_lossy(&configure.stderr)
    );
    say(
        t0,
        &format!(
            "otter configure {} --hostname demo-gateway --timezone Europe/Berlin --persistent-logs\n{}",
            img.display(),
            String::from_utf8_lossy(&configure.stdout).trim_end()
        ),
    );
    let mut dev = Device::new(&img, &device_dir, &wb.ssh_key)?;
    dev.opts.disk_size = Some(4 << 30);
    say(
        t0,
        "booting 1.0.0 in QEMU (UEFI, GRUB, slot A) on a 4 GiB disk",
    );
    dev.power_on()?;
    say(
        t0,
        &format!(
            "device up as `{}`; data partition grown to {} on first boot; `otterd status`:\n{}",
            dev.sh("hostname")?.trim(),
            dev.sh("df -h --output=size /data | tail -1")?.trim(),
            dev.sh("otterd status")?
        ),
    );
    let url = guest_url(&http, &v2.bundle);
    say(t0, &format!("on the device: otterd install {url} --reboot"));
    dev.install_and_reboot(&url)?;
    say(
        t0,
        "rebooted into slot B; waiting for the health checks to commit 1.1.0",
    );
    dev.wait_status("1.1.0 committed", Duration::from_secs(600), |s| {
        phase(s) == "committed"
    })?;
    say(
        t0,
        &format!("`otterd status`:\n{}", dev.sh("otterd status")?),
    );
    let rss = dev.sh("ps -o rss= -C otterd | head -1")?;
    say(
        t0,
        &format!("otterd daemon on the device: {} KiB resident", rss.trim()),
    );
    say(
        t0,
        &format!(
            "done. Console log: {}",
            dev.logs
                .last()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    );
    dev.power_cut();
    Ok(())
}
