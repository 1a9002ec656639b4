//! End-to-end, one device in QEMU managed by `otter server` on this machine: its built-in app
//! runs and is reported; an app release (the app's new image pushed to a real registry —
//! Debian's docker-registry on 127.0.0.1, the guest reaches it as 10.0.2.2 — and pinned by
//! digest) is uploaded and rolled out; the device applies it without a reboot, and the server
//! shows the new app version with healthy services and the rollout completed. An unpinned app
//! set is refused on upload. A broken app release (its health check fails) is rolled back by
//! the device, the failure reaches the server and its rollout pauses itself.
//!
//! Runs when QEMU, OVMF, mmdebstrap, GRUB, root, podman, umoci, skopeo, busybox-static and
//! docker-registry are available; skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Result, ensure};
use otter_e2e::fleet::FleetServer;
use otter_e2e::registry::{GUEST_GET_8080, Registry, make_app_image};
use otter_e2e::scenario::{Device, Variant, VariantApp, Workbench};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn app_release_from_the_server_is_applied_without_a_reboot() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the QEMU app-release scenario: {missing}");
        return;
    }
    for t in ["podman", "umoci", "skopeo", "docker-registry"] {
        if otter_e2e::which(t).is_none() {
            eprintln!("skipping the QEMU app-release scenario: missing {t}");
            return;
        }
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping the QEMU app-release scenario: missing busybox-static");
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

/// One web service answering on 8080, with a health check.
fn compose(image: &str) -> String {
    compose_checking(image, "")
}

/// [`compose`] whose health check fetches `/PATH` (a missing page makes it unhealthy).
fn compose_checking(image: &str, path: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    restart: always
    ports: ["8080:8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/{path}"]
      interval: 5s
      timeout: 5s
      retries: 3
"#
    )
}

fn serving(dev: &Device, want: &str) -> bool {
    dev.sh(GUEST_GET_8080).is_ok_and(|out| out.contains(want))
}

fn scenario() -> Result<()> {
    let t0 = Instant::now();
    let base = otter_e2e::test_dir("apps_server")?;
    let wb = Workbench::new(&base.join("work"))?;
    let reg = Registry::start(&base.join("registry"))?;
    let archive = base.join("hello-1.tar");
    make_app_image(&archive, "localhost/hello:1", "hello from a built-in app")?;
    let v1 = wb.build(
        "appsrv",
        &Variant {
            version: "1.0.0".into(),
            apps: vec![VariantApp {
                name: "hello".into(),
                compose: compose("localhost/hello:1"),
                archives: vec![archive.clone()],
            }],
            files: vec![(
                "etc/containers/registries.conf.d/50-e2e.conf".into(),
                format!(
                    "[[registry]]\nlocation = \"10.0.2.2:{}\"\ninsecure = true\n",
                    reg.port
                ),
            )],
            ..Default::default()
        },
    )?;
    eprintln!(
        "apps_server: image built after {:.0}s",
        t0.elapsed().as_secs_f64()
    );

    let server = FleetServer::start(
        &wb.otter,
        &base.join("server"),
        &wb.dir.join("keys/otter-signing.pub"),
    )?;
    let img = base.join("device.img");
    server.configured_image(v1.image()?, &img, "apps-gw")?;

    let mut dev = Device::new(&img, &base.join("device"), &wb.ssh_key)?;
    dev.power_on()?;
    let device_id = server.wait_enrolled(Some("apps-gw"), Duration::from_secs(600))?;
    eprintln!("apps_server: device {device_id} enrolled");
    // The built-in app is reported, running and healthy.
    server.wait(
        "the built-in app reported healthy",
        Duration::from_secs(900),
        || dev.keep_alive(),
        || {
            let d = server.otter_json(&["devices", "show", &device_id])?;
            let ok = d["apps"]["source"] == "builtin"
                && d["apps"]["services"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s["service"] == "web" && s["health"] == "healthy")
                });
            Ok(ok.then_some(()))
        },
    )?;
    ensure!(
        serving(&dev, "hello from a built-in app"),
        "the built-in app does not serve"
    );

    // An app set whose image is given by tag is refused on upload, naming the service.
    let v2_tag = {
        let a2 = base.join("hello-2.tar");
        make_app_image(&a2, "localhost/hello:2", "hello v2 from the server")?;
        reg.push(&a2, "hello:2")?
    };
    let tagged = base.join("tagged.yaml");
    std::fs::write(&tagged, compose(&v2_tag))?;
    let refused = Command::new(&wb.otter)
        .args(["app-release", "upload"])
        .arg(&tagged)
        .args(["--name", "hello", "--version", "2.0.0"])
        .env("OTTER_SERVER", &server.url)
        .env("OTTER_TOKEN", &server.admin_token)
        .output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && err.contains("not pinned by digest") && err.contains("`web`"),
        "an unpinned app set was not refused as expected: {err}"
    );

    // The same image pinned by digest: uploaded, rolled out.
    let pinned = format!("10.0.2.2:{}/hello@{}", reg.port, reg.digest("hello:2")?);
    let set = base.join("set-2.json");
    std::fs::write(
        &set,
        serde_json::to_string_pretty(&serde_json::json!({
            "apps": [{"name": "hello", "compose": compose(&pinned)}]
        }))?,
    )?;
    let ar = server.otter_json(&[
        "app-release",
        "upload",
        &set.display().to_string(),
        "--version",
        "2.0.0",
    ])?;
    ensure!(ar["images"][0] == pinned.as_str(), "app release: {ar}");
    let listed = server.otter_json(&["app-release", "ls"])?;
    ensure!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["version"] == "2.0.0")),
        "otter app-release ls: {listed}"
    );
    let boot_id = dev.boot_id()?;
    let thresholds = ["--success", "1", "--failure", "0.5"];
    let ro_id = server.rollout_all(&["--app-release", "2.0.0"], &thresholds)?;
    let ro = server.otter_json(&["rollout", "status", &ro_id])?;
    ensure!(ro["kind"] == "apps", "rollout: {ro}");
    let t = Instant::now();
    server.wait_rollout(&ro_id, "completed", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    eprintln!(
        "figures: app release from the server applied (target poll, pull, replace, healthy, reported) in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    ensure!(
        dev.boot_id()? == boot_id,
        "the device rebooted for the app update"
    );
    ensure!(
        serving(&dev, "hello v2 from the server"),
        "v2 does not serve"
    );
    let d = server.otter_json(&["devices", "show", &device_id])?;
    let apps = &d["apps"];
    ensure!(
        apps["source"] == "release"
            && apps["version"] == "2.0.0"
            && apps["last_apply"]["phase"] == "applied",
        "the server's view of the device's apps: {apps:#}"
    );
    let services = apps["services"].as_array().cloned().unwrap_or_default();
    ensure!(
        !services.is_empty()
            && services.iter().all(|s| s["state"] == "running"
                && s["health"] == "healthy"
                && s["image"] == pinned.as_str()),
        "services: {apps:#}"
    );
    let text = server.otter(&["devices", "show", &device_id])?;
    ensure!(
        text.contains("release 2.0.0") && text.contains("hello.web"),
        "otter devices show:\n{text}"
    );
    let page = server.dashboard(&format!("/devices/{device_id}"))?;
    ensure!(
        page.contains("hello.web") && page.contains("2.0.0") && page.contains("healthy"),
        "the dashboard's device page does not show the apps"
    );
    let page = server.dashboard(&format!("/rollouts/{ro_id}"))?;
    ensure!(page.contains("2.0.0"), "the dashboard's rollout page");

    // A broken 3.0.0: its health check fails; the device rolls it back to 2.0.0 by itself,
    // reports why, and the rollout pauses.
    let a3 = base.join("hello-3.tar");
    make_app_image(&a3, "localhost/hello:3", "hello v3 (broken)")?;
    reg.push(&a3, "hello:3")?;
    let pinned3 = format!("10.0.2.2:{}/hello@{}", reg.port, reg.digest("hello:3")?);
    let set3 = base.join("set-3.json");
    std::fs::write(
        &set3,
        serde_json::to_string_pretty(&serde_json::json!({
            "apps": [{"name": "hello", "compose": compose_checking(&pinned3, "no-such-page")}]
        }))?,
    )?;
    server.otter(&[
        "app-release",
        "upload",
        &set3.display().to_string(),
        "--version",
        "3.0.0",
    ])?;
    let ro3_id = server.rollout_all(&["--app-release", "3.0.0"], &thresholds)?;
    let t = Instant::now();
    let paused = server.wait_rollout(&ro3_id, "paused", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    eprintln!(
        "figures: broken app release rolled back on the device and its rollout paused in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    let why = paused["failures"][0]["reason"].as_str().unwrap_or_default();
    ensure!(
        why.contains("rolled back") && why.contains("health"),
        "rollout failure reason: {paused:#}"
    );
    let d = server.otter_json(&["devices", "show", &device_id])?;
    ensure!(
        d["apps"]["version"] == "2.0.0" && d["apps"]["last_apply"]["phase"] == "rolled_back",
        "after the rollback: {:#}",
        d["apps"]
    );
    ensure!(
        dev.boot_id()? == boot_id,
        "the device rebooted during the rollback"
    );
    ensure!(
        serving(&dev, "hello v2 from the server"),
        "v2 does not serve after the rollback"
    );
    eprintln!("apps_server: done after {:.0}s", t0.elapsed().as_secs_f64());
    dev.power_cut();
    Ok(())
}
