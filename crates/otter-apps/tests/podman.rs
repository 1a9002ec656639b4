//! The rendered units against the real tools: `systemd-analyze verify` reads every unit, and
//! podman 4.3 (Debian 12) accepts every `podman run` argument (as `podman create`, since
//! podman cannot run containers on a build host) and records them as meant.
//!
//! Needs root, podman, umoci, skopeo and busybox-static; skipped with a message otherwise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_apps::app::{App, AppSpec};
use otter_apps::unit;
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn skip() -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("needs root".into());
    }
    for t in ["podman", "umoci", "skopeo", "systemd-analyze"] {
        if !have(t) {
            return Some(format!("needs {t} (apt-get install podman umoci skopeo)"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs busybox-static".into());
    }
    None
}

const COMPOSE: &str = r#"
services:
  db:
    image: localhost/otter-test:1
    restart: always
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost:8080/"]
      interval: 10s
      timeout: 1500ms
      retries: 5
      start_period: 1m
    volumes:
      - data:/data
  init:
    image: localhost/otter-test:1
    command: ["true"]
  web:
    image: localhost/otter-test:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo \"$$HOME\" 100% && exec httpd -f -p 8080 -h /www"]
    environment:
      MODE: prod
      QUOTE: "it's \"quoted\""
    env_file:
      - path: ./missing.env
        required: false
    ports: ["18080:8080", "127.0.0.1::9090/udp"]
    volumes:
      - ./conf:/etc/web:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 16m}
      - /scratch
    restart: on-failure:3
    depends_on:
      db: {condition: service_healthy}
      init: {condition: service_completed_successfully}
    devices: ["/dev/null:/dev/ttyS9:rw"]
    cap_add: [NET_ADMIN]
    labels: {tier: front}
    mem_limit: 128m
    cpus: 0.5
    healthcheck:
      test: wget -q -O- http://localhost:8080/ || exit 1
  agent:
    image: localhost/otter-test:1
    privileged: true
    network_mode: host
    healthcheck: {disable: true}
  sidecar:
    image: localhost/otter-test:1
    network_mode: service:web
volumes:
  data: {}
"#;

/// Split an `ExecStart=` line back into words the way systemd does (the subset we write).
fn sd_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_q = !in_q;
                any = true;
            }
            '\\' if in_q => match chars.next() {
                Some('n') => cur.push('\n'),
                Some('t') => cur.push('\t'),
                Some(o) => cur.push(o),
                None => {}
            },
            '%' | '$' if chars.peek() == Some(&c) => {
                chars.next();
                cur.push(c);
            }
            ' ' if !in_q => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Store {
    dir: tempfile::TempDir,
    network: String,
}

impl Store {
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"));
        c
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.podman().args(["rm", "--all", "--force"]).output();
        // Networks are host-wide (/etc/cni/net.d).
        let _ = self
            .podman()
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn make_image(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-app-image");
    let archive = dir.join("img.tar");
    let st = Command::new(script)
        .arg(&archive)
        .arg("localhost/otter-test:1")
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

#[test]
fn units_verify_and_podman_accepts_every_argument() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let app_name = format!("t{}", std::process::id());
    let app_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(app_dir.path().join("conf")).unwrap();
    let app = App::from_spec(
        &AppSpec {
            name: app_name.clone(),
            compose: COMPOSE.into(),
            images: Default::default(),
        },
        app_dir.path(),
    )
    .unwrap();
    let units = unit::render(&app);

    // 1. systemd reads every unit (unknown keys, bad quoting, bad values are errors).
    let udir = tempfile::tempdir().unwrap();
    for u in &units {
        std::fs::write(udir.path().join(&u.name), &u.text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units.iter().map(|u| udir.path().join(&u.name)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about our units count (the host's own units may have findings).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("otter-app-") && !l.contains("Failed to create"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{stderr}");

    // 2. podman accepts the arguments.
    let store = Store {
        dir: tempfile::tempdir().unwrap(),
        network: unit::network_name(&app_name),
    };
    let archive = make_image(store.dir.path());
    store.ok(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
    store.ok(&["network", "create", &store.network]);
    // The build host has no journald socket; the driver is the only difference.
    let journald = Path::new("/run/systemd/journal/socket").exists();
    let mut ids = std::collections::BTreeMap::new();
    for u in &units {
        let line = u
            .text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let mut words = sd_split(line);
        assert_eq!(words[..2], ["/usr/bin/podman", "run"]);
        words.drain(..2);
        // `podman create` takes the same flags as `run` except detaching.
        words.retain(|w| w != "-d");
        if !journald {
            for w in words.iter_mut() {
                if w == "--log-driver=journald" {
                    *w = "--log-driver=k8s-file".into();
                }
            }
        }
        let mut args = vec!["create".to_string()];
        args.extend(words);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ids.insert(u.service.clone(), store.ok(&argv));
    }
    let inspect = |svc: &str| -> serde_json::Value {
        let out = store.ok(&["inspect", &format!("{app_name}.{svc}")]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
    };
    let web = inspect("web");
    let cfg = &web["Config"];
    let host = &web["HostConfig"];
    assert_eq!(host["Memory"], 128 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q -O- http://localhost:8080/ || exit 1"])
    );
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["echo \"$HOME\" 100% && exec httpd -f -p 8080 -h /www"])
    );
    assert_eq!(cfg["Labels"]["tier"], "front");
    assert_eq!(cfg["Labels"]["otter.app"], app_name.as_str());
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"MODE=prod"), "{env:?}");
    assert!(env.contains(&"QUOTE=it's \"quoted\""), "{env:?}");
    assert_eq!(
        host["PortBindings"]["8080/tcp"][0]["HostPort"], "18080",
        "{}",
        host["PortBindings"]
    );
    assert_eq!(host["PortBindings"]["9090/udp"][0]["HostIp"], "127.0.0.1");
    assert!(
        host["CapAdd"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_NET_ADMIN"),
        "{}",
        host["CapAdd"]
    );
    let db = inspect("db");
    assert_eq!(
        db["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "wget", "-q", "-O-", "http://localhost:8080/"])
    );
    assert_eq!(db["Config"]["Healthcheck"]["Retries"], 5);
    let mounts = db["Mounts"].to_string();
    assert!(mounts.contains(&format!("{app_name}_data")), "{mounts}");
    let agent = inspect("agent");
    assert_eq!(agent["HostConfig"]["Privileged"], true);
    assert_eq!(agent["HostConfig"]["NetworkMode"], "host");
    let sidecar = inspect("sidecar");
    assert!(
        sidecar["HostConfig"]["NetworkMode"]
            .as_str()
            .unwrap()
            .starts_with("container:"),
        "{}",
        sidecar["HostConfig"]["NetworkMode"]
    );
    assert_eq!(ids.len(), 5);
}
