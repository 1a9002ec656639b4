//! The demo of the README: build release 1.0.0 and 1.1.0 of an image with a built-in container
//! app, start `otter server`, configure a copy of 1.0.0 with `otter configure` (host name, fleet
//! server, enrollment key), boot it in QEMU on a bigger disk, see the app answer, let the device
//! enroll, roll 1.1.0 out to it from the server, then roll out version 2 of the app (its image in
//! a local registry, pinned by digest) without a reboot, and show the device's status.

use anyhow::{Context, Result};
use otter_e2e::fleet::FleetServer;
use otter_e2e::registry::{GUEST_GET_8080, Registry, make_app_image};
use otter_e2e::scenario::{Device, Variant, VariantApp, Workbench, phase};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("otter-demo: error: {e:#}");
        std::process::exit(1);
    }
}

/// The demo's app: busybox httpd on port 8080, with a health check.
const HELLO_COMPOSE: &str = r#"services:
  web:
    image: localhost/hello:1
    restart: always
    ports: ["8080:8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 10s
      retries: 3
    mem_limit: 32m
"#;

/// What the app answers, once it answers with something containing `want`.
fn app_answer(dev: &Device, want: &str, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        match dev.sh(&format!("{GUEST_GET_8080} | tail -1")) {
            Ok(out) if out.contains(want) => return Ok(out.trim().to_string()),
            other => anyhow::ensure!(
                start.elapsed() < timeout,
                "the app did not answer on :8080 within {timeout:?} ({other:?}); otterd apps ls:\n{}",
                dev.sh("otterd apps ls").unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_secs(3));
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
    // A container registry on this machine (Debian's docker-registry, plain HTTP on
    // 127.0.0.1; the VM reaches it as 10.0.2.2), for the app update from the server.
    let registry = Registry::start(&dir.join("registry"))?;
    // The app: a tiny web server image made without a container engine (umoci, skopeo).
    let archive = dir.join("hello.tar");
    make_app_image(
        &archive,
        "localhost/hello:1",
        "hello from a container app built into the image",
    )?;
    let with_app = |version: &str| Variant {
        version: version.into(),
        apps: vec![VariantApp {
            name: "hello".into(),
            compose: HELLO_COMPOSE.into(),
            archives: vec![archive.clone()],
        }],
        // The demo registry speaks plain HTTP.
        files: vec![(
            "etc/containers/registries.conf.d/50-demo.conf".into(),
            format!(
                "[[registry]]\nlocation = \"10.0.2.2:{}\"\ninsecure = true\n",
                registry.port
            ),
        )],
        ..Default::default()
    };
    say(
        t0,
        "building release 1.0.0 (the first build makes the Debian base: a few minutes)",
    );
    let v1 = wb.build("otter-demo", &with_app("1.0.0"))?;
    let v1_image = v1.image()?;
    say(t0, &format!("image  {}", v1_image.display()));
    say(t0, "building release 1.1.0");
    // Devices only ever install 1.1.0 as an update: no disk image needed.
    let v2 = wb.build("otter-demo", &with_app("1.1.0").bundle_only())?;
    say(t0, &format!("bundle {}", v2.bundle.display()));

    // The fleet server on this machine, with zero configuration but a data folder of its own.
    let server = FleetServer::start(
        &wb.otter,
        &dir.join("server"),
        &wb.dir.join("keys/otter-signing.pub"),
    )?;
    say(
        t0,
        &format!(
            "otter server: {} (dashboard {}/login?token={})",
            server.url, server.url, server.admin_token
        ),
    );
    let key = server.otter_json(&["enrollment-key", "create", "demo"])?["key"]
        .as_str()
        .context("the server gave no enrollment key")?
        .to_string();
    say(t0, "otter enrollment-key create demo");

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
        .arg(v1_image)
        .arg(&img)
        .status()?;
    anyhow::ensure!(cp.success(), "copying {}", v1_image.display());
    let guest_server = server.guest_url();
    let configure = std::process::Command::new(&wb.otter)
        .arg("configure")
        .arg(&img)
        .args([
            "--hostname",
            "demo-gateway",
            "--timezone",
            "Europe/Berlin",
            "--persistent-logs",
            "--server",
            &guest_server,
            "--enrollment-key",
            &key,
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
            "otter configure {} --hostname demo-gateway --timezone Europe/Berlin --persistent-logs --server {guest_server} --enrollment-key …\n{}",
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
            "device up as `{}`; data partition grown to {} on first boot",
            dev.sh("hostname")?.trim(),
            dev.sh("df -h --output=size /data | tail -1")?.trim(),
        ),
    );
    say(
        t0,
        &format!(
            "the built-in app runs (no network needed: its image is in the root); it answers `{}`; otterd apps ls:\n{}",
            app_answer(&dev, "built into the image", Duration::from_secs(600))?,
            dev.sh("otterd apps ls")?.trim_end()
        ),
    );
    let device_id = server.wait_enrolled(None, Duration::from_secs(300))?;
    say(
        t0,
        &format!(
            "the device enrolled with its fleet key; otter devices ls:\n{}",
            server.otter(&["devices", "ls"])?.trim_end()
        ),
    );
    server.otter(&["release", "upload", &v2.bundle.display().to_string()])?;
    let ro_id = server.rollout_all(&["1.1.0"], &[])?;
    say(
        t0,
        "otter release upload …1.1.0….otb; otter rollout create 1.1.0 --phases 100 --soak 0",
    );
    say(
        t0,
        "the device downloads 1.1.0 from the server (delta), reboots into slot B, runs its health checks, commits",
    );
    server.wait_rollout(&ro_id, "completed", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    dev.wait_status("1.1.0 committed", Duration::from_secs(600), |s| {
        phase(s) == "committed"
    })?;
    say(
        t0,
        &format!(
            "otter rollout status {ro_id}:\n{}",
            server.otter(&["rollout", "status", &ro_id])?.trim_end()
        ),
    );
    say(
        t0,
        &format!(
            "`otterd status` on the device:\n{}",
            dev.sh("otterd status")?
        ),
    );
    say(
        t0,
        &format!(
            "the app runs on 1.1.0 too: `{}`",
            app_answer(&dev, "built into the image", Duration::from_secs(600))?
        ),
    );

    // An app update from the server: version 2 of the app's image pushed to the registry,
    // released pinned by digest, rolled out; the device pulls it and swaps the container, no
    // reboot.
    let a2 = dir.join("hello-2.tar");
    make_app_image(
        &a2,
        "localhost/hello:2",
        "hello v2 of the app, rolled out from otter server",
    )?;
    registry.push(&a2, "hello:2")?;
    let pinned = format!(
        "10.0.2.2:{}/hello@{}",
        registry.port,
        registry.digest("hello:2")?
    );
    let set = dir.join("hello-2.0.0.json");
    std::fs::write(
        &set,
        serde_json::to_string_pretty(&serde_json::json!({
            "apps": [{"name": "hello", "compose": HELLO_COMPOSE.replace("localhost/hello:1", &pinned)}]
        }))?,
    )?;
    server.otter(&[
        "app-release",
        "upload",
        &set.display().to_string(),
        "--version",
        "2.0.0",
    ])?;
    let boot_id = dev.boot_id()?;
    let ro_apps = server.rollout_all(&["--app-release", "2.0.0"], &[])?;
    say(
        t0,
        &format!(
            "hello:2 pushed to the registry; otter app-release upload {} --version 2.0.0; otter rollout create --app-release 2.0.0 --phases 100 --soak 0",
            set.display()
        ),
    );
    let t_apps = Instant::now();
    server.wait_rollout(&ro_apps, "completed", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    anyhow::ensure!(
        dev.boot_id()? == boot_id,
        "the device rebooted for the app update"
    );
    say(
        t0,
        &format!(
            "app release 2.0.0 applied in {:.0} s without a reboot (pull, replace, health check, report); the app answers `{}`; otter devices show:\n{}",
            t_apps.elapsed().as_secs_f64(),
            app_answer(&dev, "v2", Duration::from_secs(300))?,
            server.otter(&["devices", "show", &device_id])?.trim_end()
        ),
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
