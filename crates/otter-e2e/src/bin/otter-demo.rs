//! The demo of the README: build release 1.0.0 and 1.1.0 of an image, boot 1.0.0 in QEMU,
//! update it to 1.1.0 from an HTTP server on this machine, and show the device's status.

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
    let mut dev = Device::new(&v1.image, &device_dir, &wb.ssh_key)?;
    say(t0, "booting 1.0.0 in QEMU (UEFI, GRUB, slot A)");
    dev.power_on()?;
    say(
        t0,
        &format!("device up; `otterd status`:\n{}", dev.sh("otterd status")?),
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
