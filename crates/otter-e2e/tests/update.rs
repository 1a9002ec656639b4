//! End-to-end: real images built with `otter build`, booted in QEMU (UEFI + GRUB), updated
//! with `otterd install` from an HTTP server on the host.
//!
//! Runs when QEMU, OVMF, mmdebstrap, GRUB and root are available (CI installs them); skipped
//! with a message otherwise. One test function drives every scenario in sequence: VMs under
//! TCG share two cores, and the builds are shared.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Context, Result};
use otter_e2e::scenario::{Device, Release, Variant, Workbench, guest_url, phase, serve};
use std::process::Command;
use std::time::Duration;

#[test]
fn update_rollback_and_power_cuts() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the QEMU end-to-end scenarios: {missing}");
        return;
    }
    if let Err(e) = scenarios() {
        panic!("{e:#}");
    }
}

fn scenarios() -> Result<()> {
    let base = otter_e2e::test_dir("update")?;
    let wb = Workbench::new(&base.join("work"))?;
    let name = "e2e";
    let v1 = wb.build(
        name,
        &Variant {
            version: "1.0.0".into(),
            ..Default::default()
        },
    )?;
    let v2 = wb.build(
        name,
        &Variant {
            version: "1.1.0".into(),
            bundle_only: true,
            ..Default::default()
        },
    )?;
    let bad_boot = wb.build(
        name,
        &Variant {
            version: "1.2.0".into(),
            // The kernel cannot start init: panic, `panic=5` resets, the try counter runs out.
            kernel_cmdline: "init=/bin/false".into(),
            bundle_only: true,
            ..Default::default()
        },
    )?;
    let bad_health = wb.build(
        name,
        &Variant {
            version: "1.3.0".into(),
            health_checks: vec![(
                "50-app-answers".into(),
                "echo 'app did not answer on :8080' >&2; exit 1".into(),
            )],
            deadline_secs: 150,
            bundle_only: true,
            ..Default::default()
        },
    )?;
    let http = serve(&wb.out)?;

    // (a) Install 1.1.0 from HTTP, reboot, health checks commit it on slot B.
    eprintln!("== (a) update 1.0.0 -> 1.1.0");
    let mut dev = Device::new(v1.image()?, &base.join("dev-a"), &wb.ssh_key)?;
    dev.power_on()?;
    let s = dev.status()?;
    assert_eq!(s["booted_slot"], "A", "{s:#}");
    assert_eq!(s["version"], "1.0.0", "{s:#}");
    let first_request = http.requests().len();
    http.reset_bytes_served();
    let o = dev.install_json(&guest_url(&http, &v2.bundle), "")?;
    eprintln!(
        "   delta install in the guest: {:.1} s, peak RSS {} KiB, downloaded {} bytes, reused {} bytes",
        o["seconds"].as_f64().unwrap_or(0.0),
        o["peak_rss_kib"],
        o["delta"]["fetched_bytes"],
        o["delta"]["reused_bytes"]
    );
    dev.reboot()?;
    let s = dev.wait_status("1.1.0 committed", Duration::from_secs(600), |s| {
        phase(s) == "committed"
    })?;
    assert_delta(&wb, &http, first_request, &v1, &v2, &s)?;
    assert_eq!(s["booted_slot"], "B", "{s:#}");
    assert_eq!(s["primary_slot"], "B", "{s:#}");
    assert_eq!(s["version"], "1.1.0", "{s:#}");
    assert_eq!(s["trial"], false, "{s:#}");
    assert_eq!(s["slots"][1]["good"], true, "{s:#}");
    assert_eq!(
        s["slots"][0]["good"], true,
        "old slot kept as fallback: {s:#}"
    );
    // The agent runs under systemd's watchdog and was never restarted.
    let restarts = dev.sh("systemctl show -p NRestarts --value otterd")?;
    assert_eq!(restarts.trim(), "0", "otterd was restarted");
    let watchdog = dev.sh("systemctl show -p WatchdogUSec --value otterd")?;
    assert_eq!(watchdog.trim(), "1min", "otterd runs with a watchdog");
    dev.power_cut();

    // (b) A release whose kernel cannot start init: back on A by itself, rollback recorded.
    eprintln!("== (b) bad boot -> rollback");
    let mut dev = Device::new(v1.image()?, &base.join("dev-b"), &wb.ssh_key)?;
    dev.power_on()?;
    // A full install (no reuse of the running slot), for the figures next to the delta above.
    let o = dev.install_json(&guest_url(&http, &bad_boot.bundle), "--no-delta")?;
    eprintln!(
        "   full install in the guest: {:.1} s, peak RSS {} KiB, downloaded {} bytes, reused {} bytes",
        o["seconds"].as_f64().unwrap_or(0.0),
        o["peak_rss_kib"],
        o["delta"]["fetched_bytes"],
        o["delta"]["reused_bytes"]
    );
    assert_eq!(
        o["delta"]["reused_bytes"], 0,
        "--no-delta reused blocks: {o}"
    );
    dev.reboot()?;
    let s = dev.wait_status("rollback of 1.2.0", Duration::from_secs(300), |s| {
        phase(s) == "rolled_back"
    })?;
    assert_eq!(s["booted_slot"], "A", "{s:#}");
    assert_eq!(s["version"], "1.0.0", "{s:#}");
    assert_eq!(s["update"]["version"], "1.2.0", "{s:#}");
    let reason = s["update"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("did not come up"), "reason: {reason}");
    assert_eq!(s["slots"][1]["good"], false, "{s:#}");
    assert_eq!(s["primary_slot"], "A", "{s:#}");
    let console = dev.console();
    assert!(
        console.contains("Kernel panic"),
        "the bad slot was really tried"
    );

    // (c) A release whose health check fails: marked bad after the deadline, back on A.
    eprintln!("== (c) failing health check -> rollback");
    dev.install_and_reboot(&guest_url(&http, &bad_health.bundle))?;
    // First boot is slot B on trial; the agent then marks it bad and reboots.
    let s = dev.wait_status("rollback of 1.3.0", Duration::from_secs(900), |s| {
        phase(s) == "rolled_back" && s["update"]["version"] == "1.3.0"
    })?;
    assert_eq!(s["booted_slot"], "A", "{s:#}");
    let reason = s["update"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("50-app-answers") && reason.contains("did not answer"),
        "reason: {reason}"
    );

    // (d1) Power cut in the middle of an install: the device boots the old slot.
    eprintln!("== (d1) power cut during install");
    http.set_throttle(Some(4 << 20));
    let mut proc = dev
        .ssh
        .spawn(&format!("otterd install {}", guest_url(&http, &v2.bundle)))?;
    dev.wait_status("install under way", Duration::from_secs(300), |s| {
        phase(s) == "installing" && s["update"]["progress"]["done_bytes"].as_u64().unwrap_or(0) > 0
    })?;
    dev.power_cut();
    proc.kill();
    http.set_throttle(None);
    dev.power_on()?;
    let s = dev.status()?;
    assert_eq!(s["booted_slot"], "A", "{s:#}");
    assert_eq!(s["version"], "1.0.0", "{s:#}");
    assert_eq!(phase(&s), "failed", "{s:#}");
    assert!(
        s["update"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted"),
        "{s:#}"
    );

    // (d2) Power cut in the middle of the commit's boot-state write: old slot boots.
    eprintln!("== (d2) power cut during commit");
    dev.sh(&format!("otterd install {}", guest_url(&http, &v2.bundle)))?;
    dev.sh("echo commit:torn-primary > /var/lib/otter/fault && sync")?;
    let mark = dev.console().len();
    let _ = dev.ssh.run("otterd reboot");
    dev.wait_console("otterd: fault injected", mark, Duration::from_secs(600))
        .context("waiting for the commit to reach the injected fault")?;
    // The torn write happens right after the message; give it a moment, then pull the plug.
    std::thread::sleep(Duration::from_secs(2));
    dev.power_cut();
    dev.power_on()?;
    let s = dev.status()?;
    assert_eq!(s["booted_slot"], "A", "{s:#}");
    assert_eq!(phase(&s), "rolled_back", "{s:#}");

    // ... and a second install succeeds.
    let first_request = http.requests().len();
    http.reset_bytes_served();
    dev.install_and_reboot(&guest_url(&http, &v2.bundle))?;
    let s = dev.wait_status("1.1.0 committed", Duration::from_secs(600), |s| {
        phase(s) == "committed"
    })?;
    assert_delta(&wb, &http, first_request, &v1, &v2, &s)?;
    assert_eq!(s["booted_slot"], "B", "{s:#}");
    assert_eq!(s["version"], "1.1.0", "{s:#}");
    dev.power_cut();
    Ok(())
}

/// The install of `new` on a device running `old` was a delta: only what `otter bundle diff`
/// says such a device needs crossed the network (requests to `http` since `first_request`),
/// in as many chunk requests as it planned, every one a range request; `s` is the device's
/// status after the install.
fn assert_delta(
    wb: &Workbench,
    http: &otter_e2e::HttpServer,
    first_request: usize,
    old: &Release,
    new: &Release,
    s: &serde_json::Value,
) -> Result<()> {
    let diff = Command::new(&wb.otter)
        .args(["bundle", "diff", "--json"])
        .arg(&old.bundle)
        .arg(&new.bundle)
        .output()?;
    assert!(diff.status.success(), "otter bundle diff failed");
    let diff: serde_json::Value = serde_json::from_slice(&diff.stdout)?;
    let planned =
        diff["download_bytes"].as_u64().unwrap_or(0) + diff["header_bytes"].as_u64().unwrap_or(0);
    let served = http.bytes_served();
    let full = std::fs::metadata(&new.bundle)?.len();
    let bundle_name = new
        .bundle
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let reqs: Vec<_> = http.requests()[first_request..]
        .iter()
        .filter(|r| r.target.ends_with(&bundle_name))
        .cloned()
        .collect();
    eprintln!(
        "   delta: {served} bytes served in {} requests for a {full}-byte bundle; otter bundle diff planned {planned} bytes, {} chunk requests",
        reqs.len(),
        diff["requests"]
    );
    assert!(
        reqs.iter().all(|r| r.range.is_some() && r.status == 206),
        "a request without a range: {reqs:?}"
    );
    // The header is read in 64 KiB windows, so a little more than the header may be read.
    assert!(
        served <= planned + (256 << 10) && served < full / 10,
        "served {served} bytes, planned {planned} (full bundle {full})"
    );
    assert_eq!(s["update"]["delta"]["requests"], diff["requests"], "{s:#}");
    assert_eq!(
        s["update"]["delta"]["fetched_bytes"], s["update"]["delta"]["planned_bytes"],
        "{s:#}"
    );
    Ok(())
}
