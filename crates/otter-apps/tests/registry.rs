//! The real runtime's image operations against a real registry (Debian's `docker-registry` on
//! 127.0.0.1) and a scratch podman store: size from the manifest, pull with progress, list,
//! remove. Podman cannot run containers on a build host, so starting units is left to the
//! QEMU tests.
//!
//! Needs root, podman, skopeo, umoci, busybox-static and docker-registry; skipped otherwise.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_apps::runtime::{Podman, Runtime};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[test]
fn pull_size_pull_list_remove() {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let missing: Vec<&str> = ["podman", "skopeo", "umoci", "docker-registry"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !root || !missing.is_empty() || !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: needs root, busybox-static and {missing:?}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = d.path().join("registry.yml");
    std::fs::write(
        &conf,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            d.path().join("reg").display()
        ),
    )
    .unwrap();
    let _reg = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let archive = d.path().join("img.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-app-image");
    assert!(
        Command::new(script)
            .arg(&archive)
            .arg("localhost/reg-test:1")
            .status()
            .unwrap()
            .success()
    );
    let image = format!("127.0.0.1:{port}/reg-test:1");
    assert!(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{image}"))
            .status()
            .unwrap()
            .success()
    );
    let mut rt = Podman::system();
    rt.global_args = vec![
        "--root".into(),
        d.path().join("store").display().to_string(),
        "--runroot".into(),
        d.path().join("run").display().to_string(),
        "--storage-driver=overlay".into(),
    ];
    rt.storage_dir = d.path().join("store");
    // A plain-HTTP registry (a device lists such registries in registries.conf).
    rt.tls_verify = false;
    assert!(!rt.has_image(&image).unwrap());
    let size = rt.pull_size(&image).unwrap();
    let archive_size = std::fs::metadata(&archive).unwrap().len();
    // The compressed layer and config: less than the archive, but most of it.
    assert!(
        size > archive_size / 4 && size <= archive_size,
        "{size} vs {archive_size}"
    );
    let mut lines = Vec::new();
    rt.pull(&image, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Copying") || l.contains("Writing")),
        "{lines:?}"
    );
    assert!(rt.has_image(&image).unwrap());
    let images = rt.removable_images().unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].names.contains(&image), "{images:?}");
    assert!(
        images[0].names.iter().any(|n| n.contains("@sha256:")),
        "{images:?}"
    );
    assert!(rt.free_space().unwrap() > 0);
    rt.remove_image(&images[0].id).unwrap();
    assert!(!rt.has_image(&image).unwrap());
    // A pull that cannot succeed says which image and why.
    let e = rt
        .pull(&format!("127.0.0.1:{port}/none:1"), &mut |_| {})
        .unwrap_err();
    assert!(e.contains("none:1"), "{e}");
    let e = rt
        .pull_size(&format!("127.0.0.1:{port}/none:1"))
        .unwrap_err();
    assert!(e.contains("manifest"), "{e}");
}
