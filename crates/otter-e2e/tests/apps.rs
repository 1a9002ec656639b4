//! End-to-end: a built-in app (five services from one tiny busybox image made with umoci, no
//! container engine) runs on the first boot of a fresh image, with no registry anywhere: its
//! image comes from the read-only image store in the root. Prints the figures: root image
//! size, boot to the app serving, otterd's memory with five services.
//!
//! Runs when QEMU, OVMF, mmdebstrap, GRUB, root, podman, umoci, skopeo and busybox-static are
//! available; skipped with a message otherwise.

use anyhow::{Context, Result, bail, ensure};
use otter_e2e::scenario::{Device, Variant, VariantApp, Workbench, workspace_root};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn builtin_app_runs_on_first_boot_offline() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the QEMU apps scenario: {missing}");
        return;
    }
    for t in ["podman", "umoci", "skopeo"] {
        if otter_e2e::which(t).is_none() {
            eprintln!(
                "skipping the QEMU apps scenario: missing {t} (apt-get install podman umoci skopeo)"
            );
            return;
        }
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping the QEMU apps scenario: missing busybox-static");
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

/// `web` answers on 8080 with a health check; four more services wait for it to be healthy
/// (dependency order through `service_healthy`), one of them in the host's network.
const COMPOSE: &str = r#"
services:
  web:
    image: localhost/hello:1
    restart: always
    ports: ["8080:8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 5s
      timeout: 5s
      retries: 3
    mem_limit: 32m
  worker1:
    image: localhost/hello:1
    command: ["httpd", "-f", "-p", "8081", "-h", "/www"]
    restart: always
    depends_on:
      web: {condition: service_healthy}
  worker2:
    image: localhost/hello:1
    command: ["httpd", "-f", "-p", "8082", "-h", "/www"]
    restart: always
    depends_on: [web]
  worker3:
    image: localhost/hello:1
    command: ["sh", "-c", "exec httpd -f -p 8083 -h /www"]
    restart: always
    network_mode: host
    depends_on: [web]
  worker4:
    image: localhost/hello:1
    command: ["httpd", "-f", "-p", "8084", "-h", "/www"]
    restart: always
    volumes: ["state:/state"]
    depends_on: [worker1]
volumes:
  state: {}
"#;

fn scenario() -> Result<()> {
    let base = otter_e2e::test_dir("apps")?;
    let wb = Workbench::new(&base.join("work"))?;
    let archive = base.join("hello-1.tar");
    let st = Command::new(workspace_root().join("scripts/make-app-image"))
        .arg(&archive)
        .arg("localhost/hello:1")
        .arg("hello from a built-in app")
        .status()
        .context("running scripts/make-app-image")?;
    ensure!(st.success(), "scripts/make-app-image failed");
    let release = wb.build(
        "apps",
        &Variant {
            version: "1.0.0".into(),
            apps: vec![VariantApp {
                name: "hello".into(),
                compose: COMPOSE.into(),
                archives: vec![archive],
            }],
            ..Default::default()
        },
    )?;
    let root_img = wb.out.join(".work-apps-1.0.0-qemu-x86_64/rootfs.ext4");
    let root_size = std::fs::metadata(&root_img).map(|m| m.len()).unwrap_or(0);

    let mut dev = Device::new(&release.image, &base.join("dev"), &wb.ssh_key)?;
    let t0 = Instant::now();
    dev.power_on()?;
    let ssh_up = t0.elapsed();
    // The app answers (through the published port of the app's own network).
    let get = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'";
    let start = Instant::now();
    let serving = loop {
        if let Ok(out) = dev.sh(get)
            && out.contains("hello from a built-in app")
        {
            break t0.elapsed();
        }
        if start.elapsed() > Duration::from_secs(900) {
            let diag = dev
                .sh("otterd apps ls; journalctl -b --no-pager -n 80 -u 'otter-app-*' -u otterd")
                .unwrap_or_default();
            bail!("the built-in app did not answer on :8080 within 15 min:\n{diag}");
        }
        std::thread::sleep(Duration::from_secs(2));
    };

    // Every service comes up; web is healthy.
    let start = Instant::now();
    let ls = loop {
        let ls: serde_json::Value = serde_json::from_str(&dev.sh("otterd apps ls --json")?)
            .context("parsing otterd apps ls --json")?;
        let services = ls["services"].as_array().cloned().unwrap_or_default();
        let up = services
            .iter()
            .filter(|s| s["state"]["active"] == "running")
            .count();
        if up == 5
            && services
                .iter()
                .any(|s| s["service"] == "web" && s["state"]["health"] == "healthy")
        {
            break ls;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("not all five services came up: {ls:#}");
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    let all_up = t0.elapsed();
    ensure!(ls["source"] == "builtin", "{ls:#}");
    // Dependency order: worker1 started after web was healthy (its ExecStartPre waited).
    let order = dev.sh(
        "for s in web worker1 worker4; do systemctl show -p ActiveEnterTimestampMonotonic --value otter-app-hello.$s.service; done",
    )?;
    let t: Vec<u64> = order
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(
        t.len() == 3 && t[0] < t[1] && t[1] < t[2],
        "start order: {order}"
    );
    // Offline: the image is the root's read-only copy, nothing was pulled.
    let where_ = dev.sh(
        "id=$(podman image inspect --format '{{.Id}}' localhost/hello:1) && \
         test -d /usr/lib/containers/storage/overlay-images/$id && \
         ! test -e /data/containers/storage/overlay-images/$id && echo read-only-store",
    )?;
    ensure!(
        where_.contains("read-only-store"),
        "image location: {where_}"
    );
    // Logs reach the unit's journal.
    let logs = dev.sh("otterd apps logs hello.web -n 50")?;
    ensure!(!logs.trim().is_empty(), "no journal for hello.web");
    // Restart by hand.
    dev.sh("otterd apps restart hello.worker2")?;
    let state = dev.sh("systemctl is-active otter-app-hello.worker2.service")?;
    ensure!(state.trim() == "active", "worker2 after restart: {state}");
    // The OS health check still commits nothing extra here, but otterd lived through it all.
    // What podman and friends add to the root (installed sizes, KiB), and the image store.
    let pkgs = dev.sh(
        "dpkg-query -W -f '${Installed-Size}\\n' podman crun conmon containers-common golang-github-containers-common \
         golang-github-containernetworking-plugins golang-github-containernetworking-plugin-dnsname \
         iptables libgpgme11 libdevmapper1.02.1 libsubid4 dnsmasq-base 2>/dev/null | awk '{s+=$1} END {print s}'; \
         du -sk /usr/lib/containers/storage | cut -f1",
    )?;
    let mut pk = pkgs.split_whitespace();
    let (pkg_kib, store_kib) = (
        pk.next().unwrap_or("?").to_string(),
        pk.next().unwrap_or("?").to_string(),
    );
    let rss = dev.sh("ps -o rss= -C otterd | head -1")?;
    let mem = dev.sh("free -m | awk '/Mem:/ {print $3}'")?;
    eprintln!(
        "figures: root image {} MiB (with podman + 1 app image; podman and its packages {} KiB installed, image store {} KiB); SSH up after {:.0}s; app serving after {:.0}s; five services up after {:.0}s; otterd RSS {} KiB with 5 services; guest memory used {} MiB",
        root_size >> 20,
        pkg_kib,
        store_kib,
        ssh_up.as_secs_f64(),
        serving.as_secs_f64(),
        all_up.as_secs_f64(),
        rss.trim(),
        mem.trim()
    );
    dev.power_cut();
    Ok(())
}
