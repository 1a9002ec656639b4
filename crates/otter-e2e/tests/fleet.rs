//! A QEMU device managed by `otter server` on this machine: it enrolls with a fleet key from its
//! device config, a rollout of 1.1.0 reaches it, it updates and commits by itself, and the
//! dashboard and `otter rollout status` show the rollout done; then a broken 1.2.0 (its kernel
//! panics) is rolled back by the device and its rollout pauses itself.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Result, ensure};
use otter_e2e::fleet::FleetServer;
use otter_e2e::scenario::{Device, Variant, Workbench, phase};
use std::time::Duration;

#[test]
fn fleet_rollout_update_commit_and_self_pausing_rollout() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the fleet VM scenario: {missing}");
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

fn scenario() -> Result<()> {
    let base = otter_e2e::test_dir("fleet")?;
    let wb = Workbench::new(&base.join("work"))?;
    let v1 = wb.build("fleet", &Variant::version("1.0.0"))?;
    let v11 = wb.build("fleet", &Variant::version("1.1.0").bundle_only())?;
    let v12 = wb.build(
        "fleet",
        &Variant {
            version: "1.2.0".into(),
            kernel_cmdline: "init=/bin/false".into(),
            bundle_only: true,
            ..Default::default()
        },
    )?;

    let server = FleetServer::start(
        &wb.otter,
        &base.join("server"),
        &wb.dir.join("keys/otter-signing.pub"),
    )?;

    // The device's image, configured for the fleet.
    let img = base.join("device.img");
    server.configured_image(v1.image()?, &img, "fleet-gw")?;

    let mut dev = Device::new(&img, &base.join("device"), &wb.ssh_key)?;
    dev.power_on()?;
    let device_id = server.wait_enrolled(Some("fleet-gw"), Duration::from_secs(300))?;
    eprintln!("fleet: device {device_id} enrolled");
    let shown = server.otter_json(&["devices", "show", &device_id])?;
    ensure!(shown["os_version"] == "1.0.0", "device: {shown}");

    // Roll 1.1.0 out; the device installs it, reboots, commits after its health checks.
    server.otter(&["release", "upload", &v11.bundle.display().to_string()])?;
    server.otter(&["release", "upload", &v12.bundle.display().to_string()])?;
    let thresholds = ["--success", "1", "--failure", "0.5"];
    let ro_id = server.rollout_all(&["1.1.0"], &thresholds)?;
    server.wait_rollout(&ro_id, "completed", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    let status = dev.wait_status(
        "1.1.0 committed on the device",
        Duration::from_secs(300),
        |s| phase(s) == "committed" && s["version"] == "1.1.0",
    )?;
    ensure!(status["booted_slot"] == "B", "{status:#}");
    let text = server.otter(&["rollout", "status", &ro_id])?;
    ensure!(text.contains("completed"), "otter rollout status:\n{text}");
    let page = server.dashboard(&format!("/rollouts/{ro_id}"))?;
    ensure!(
        page.contains("completed") && page.contains("1.1.0"),
        "the dashboard's rollout page does not show it done"
    );
    let overview = server.dashboard("/")?;
    ensure!(
        overview.contains("1.1.0"),
        "the dashboard overview lacks 1.1.0"
    );
    let shown = server.otter_json(&["devices", "show", &device_id])?;
    ensure!(
        shown["os_version"] == "1.1.0" && shown["update"]["phase"] == "committed",
        "device after the rollout: {shown}"
    );
    let logs = server.otter(&["logs", &device_id, "-n", "2000"])?;
    ensure!(
        logs.contains("otterd"),
        "the device uploaded no agent logs:\n{logs}"
    );

    // A broken 1.2.0: the kernel panics, GRUB falls back, the device reports the rollback,
    // the rollout pauses itself.
    let ro2_id = server.rollout_all(&["1.2.0"], &thresholds)?;
    let paused = server.wait_rollout(&ro2_id, "paused", Duration::from_secs(1200), || {
        dev.keep_alive()
    })?;
    ensure!(
        paused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failure"),
        "paused for another reason: {paused}"
    );
    let status = dev.wait_status(
        "the rollback on the device",
        Duration::from_secs(300),
        |s| phase(s) == "rolled_back",
    )?;
    ensure!(
        status["version"] == "1.1.0" && status["booted_slot"] == "B",
        "{status:#}"
    );
    let shown = server.otter_json(&["devices", "show", &device_id])?;
    ensure!(
        shown["update"]["phase"] == "rolled_back" && shown["os_version"] == "1.1.0",
        "device after the broken rollout: {shown}"
    );
    dev.power_cut();
    eprintln!("fleet: 1.1.0 rolled out and committed; broken 1.2.0 rolled back, rollout paused");
    Ok(())
}
