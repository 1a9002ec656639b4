//! End-to-end, one device in QEMU:
//! 1. a built-in app (five services from one tiny busybox image made with umoci, no container
//!    engine) runs on the first boot of a fresh image: its image comes from the read-only image
//!    store in the root, and its reference names no reachable registry;
//! 2. an update of the app from a real registry (Debian's docker-registry on 127.0.0.1, the
//!    guest reaches it as 10.0.2.2) is applied without a reboot;
//! 3. a broken version (its health check fails) is rolled back by itself;
//! 4. an app holding the update lock delays the reboot into a new OS release until it lets go.
//!
//! Prints the figures: root image size, boot to the app serving, otterd's memory with five
//! services. Runs when QEMU, OVMF, mmdebstrap, GRUB, root, podman, umoci, skopeo,
//! busybox-static and docker-registry are available; skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use anyhow::{Context, Result, bail, ensure};
use otter_e2e::registry::{GUEST_GET_8080, Registry, make_app_image};
use otter_e2e::scenario::{Device, Variant, VariantApp, Workbench};
use std::path::Path;
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
/// `@WEB@` is web's image, `@PATH@` what its health check fetches.
const COMPOSE: &str = r#"
services:
  web:
    image: @WEB@
    restart: always
    ports: ["8080:8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/@PATH@"]
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

fn compose(web: &str, health_path: &str) -> String {
    COMPOSE.replace("@WEB@", web).replace("@PATH@", health_path)
}

fn wait_serving(dev: &Device, want: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match dev.sh(GUEST_GET_8080) {
            Ok(out) if out.contains(want) => return Ok(()),
            Ok(out) => last = out,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let diag = dev.sh("otterd apps ls").unwrap_or_default();
    bail!("the app did not serve `{want}` within {timeout:?}; last answer: {last}\n{diag}")
}

/// Run `otterd apps apply ARGS` detached from the SSH session (under TCG load sshd can miss
/// its keepalives, and a dropped session must not kill the update); (exit code, output).
fn apply(dev: &Device, args: &str, timeout: Duration) -> Result<(i32, String)> {
    dev.sh(&format!(
        "rm -f /tmp/apply.rc; setsid -f sh -c 'otterd apps apply {args} --json > /tmp/apply.out 2> /tmp/apply.err; echo $? > /tmp/apply.rc' < /dev/null > /dev/null 2>&1"
    ))?;
    let start = Instant::now();
    loop {
        if let Ok(rc) = dev.sh("cat /tmp/apply.rc 2>/dev/null")
            && let Ok(code) = rc.trim().parse::<i32>()
        {
            let out = dev.sh("cat /tmp/apply.out; echo; cat /tmp/apply.err")?;
            return Ok((code, out));
        }
        ensure!(
            start.elapsed() < timeout,
            "otterd apps apply {args} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn scenario() -> Result<()> {
    let base = otter_e2e::test_dir("apps")?;
    let wb = Workbench::new(&base.join("work"))?;
    let reg = Registry::start(&base.join("registry"))?;
    let archive = base.join("hello-1.tar");
    make_app_image(&archive, "localhost/hello:1", "hello from a built-in app")?;
    let variant = |version: &str| Variant {
        version: version.into(),
        apps: vec![VariantApp {
            name: "hello".into(),
            compose: compose("localhost/hello:1", ""),
            archives: vec![archive.clone()],
        }],
        // An OS update commits once the five services are up (they count in its health
        // checks): minutes under TCG on a loaded machine.
        deadline_secs: 900,
        // The test registry speaks plain HTTP.
        files: vec![(
            "etc/containers/registries.conf.d/50-e2e.conf".into(),
            format!(
                "[[registry]]\nlocation = \"10.0.2.2:{}\"\ninsecure = true\n",
                reg.port
            ),
        )],
        ..Default::default()
    };
    let release = wb.build("apps", &variant("1.0.0"))?;
    let root_size = release.root_size;

    let mut dev = Device::new(release.image()?, &base.join("dev"), &wb.ssh_key)?;
    let t0 = Instant::now();
    dev.power_on()?;
    let ssh_up = t0.elapsed();
    // The app answers (through the published port of the app's own network).
    wait_serving(&dev, "hello from a built-in app", Duration::from_secs(900))?;
    let serving = t0.elapsed();

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
         containernetworking-plugins golang-github-containernetworking-plugin-dnsname \
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

    // 2. An update from the registry, without a reboot.
    let boot_id = dev.boot_id()?;
    let a2 = base.join("hello-2.tar");
    make_app_image(&a2, "localhost/hello:2", "hello v2 from the registry")?;
    let v2 = reg.push(&a2, "hello:2")?;
    dev.sh(&format!(
        "cat > /tmp/hello-v2.yaml <<'EOF'\n{}\nEOF",
        compose(&v2, "")
    ))?;
    let t = Instant::now();
    let (rc, out) = apply(
        &dev,
        "/tmp/hello-v2.yaml --name hello",
        Duration::from_secs(900),
    )?;
    ensure!(
        rc == 0 && out.contains("\"updated\""),
        "apply v2 ({rc}): {out}"
    );
    eprintln!(
        "figures: app update (pull + replace 5 services + healthy) took {:.0}s",
        t.elapsed().as_secs_f64()
    );
    wait_serving(&dev, "hello v2 from the registry", Duration::from_secs(120))?;
    ensure!(
        dev.boot_id()? == boot_id,
        "the device rebooted during the app update"
    );
    // The old built-in image is in the read-only store (never pruned); v2 is in the data store.
    let where_ = dev.sh(&format!(
        "id=$(podman image inspect --format '{{{{.Id}}}}' {v2}) && test -d /data/containers/storage/overlay-images/$id && echo data-store"
    ))?;
    ensure!(where_.contains("data-store"), "v2 location: {where_}");

    // 3. A broken version: its health check fails, it is rolled back by itself.
    let a3 = base.join("hello-3.tar");
    make_app_image(&a3, "localhost/hello:3", "hello v3 (broken)")?;
    let v3 = reg.push(&a3, "hello:3")?;
    dev.sh(&format!(
        "cat > /tmp/hello-v3.yaml <<'EOF'\n{}\nEOF",
        compose(&v3, "no-such-page")
    ))?;
    let (rc, text) = apply(
        &dev,
        "/tmp/hello-v3.yaml --name hello --deadline 240",
        Duration::from_secs(1200),
    )?;
    ensure!(rc != 0, "a broken version was accepted: {text}");
    ensure!(
        text.contains("rolled-back") && text.contains("health"),
        "apply v3: {text}"
    );
    wait_serving(&dev, "hello v2 from the registry", Duration::from_secs(180))?;
    let ls = dev.sh("otterd apps ls --json")?;
    ensure!(
        ls.contains("rolled-back"),
        "the rollback is not reported: {ls}"
    );
    ensure!(
        dev.boot_id()? == boot_id,
        "the device rebooted during the rollback"
    );

    // 4. An app holding the update lock delays the reboot into a new OS release.
    let os2 = wb.build("apps", &variant("1.1.0").bundle_only())?;
    let http = otter_e2e::scenario::serve(&wb.out)?;
    let url = otter_e2e::scenario::guest_url(&http, &os2.bundle);
    // `flock --no-fork` execs the command with the lock: killing that one pid releases it.
    dev.sh(
        "setsid -f sh -c 'echo $$ > /run/lock-holder.pid; exec flock --no-fork --shared /run/otter/updates.lock sleep 100000' >/dev/null 2>&1 < /dev/null; sleep 1; cat /run/lock-holder.pid",
    )?;
    let install = dev.ssh.spawn(&format!("otterd install {url} --reboot"))?;
    // Installed, and still up while the lock is held.
    let start = Instant::now();
    loop {
        // A poll: a guest too busy to answer this once is asked again.
        let k = dev.sh("dmesg | grep 'otterd:' || true").unwrap_or_default();
        if k.contains("holds the update lock") {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(900),
            "the install did not reach the lock: {}",
            install.stderr_so_far()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let held = Duration::from_secs(30);
    std::thread::sleep(held);
    ensure!(
        dev.boot_id()? == boot_id,
        "rebooted although an app held the update lock"
    );
    let released = Instant::now();
    dev.sh("kill $(cat /run/lock-holder.pid)")?;
    dev.wait_rebooted(&boot_id, Duration::from_secs(900))?;
    drop(install);
    eprintln!(
        "figures: the reboot waited for the update lock ({}s held after the install), rebooted {:.0}s after its release",
        held.as_secs(),
        released.elapsed().as_secs_f64()
    );
    let st = dev.wait_status("the new release committed", Duration::from_secs(600), |s| {
        otter_e2e::scenario::phase(s) == "committed"
    })?;
    ensure!(st.to_string().contains("1.1.0"), "{st:#}");
    wait_serving(&dev, "hello v2 from the registry", Duration::from_secs(600))?;
    dev.power_cut();
    Ok(())
}
