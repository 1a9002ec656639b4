//! Debian's `docker-registry` on 127.0.0.1 (plain HTTP) for scenarios with container apps; the
//! guest reaches it as `10.0.2.2:PORT`.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A registry process, killed when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Registry {
    /// Start one with its storage under `dir`.
    pub fn start(dir: &Path) -> Result<Registry> {
        let port = crate::free_port();
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(std::fs::File::create(dir.join("log"))?)
            .stderr(std::fs::File::create(dir.join("err"))?)
            .spawn()
            .context("starting docker-registry")?;
        let mut r = Registry { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = r.child.kill();
                anyhow::bail!("docker-registry did not start on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        r.port = port;
        Ok(r)
    }

    /// Push an OCI archive as `name` (e.g. `hello:2`); returns the reference the guest uses
    /// (`10.0.2.2:PORT/hello:2`).
    pub fn push(&self, archive: &Path, name: &str) -> Result<String> {
        let st = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .status()
            .context("running skopeo copy")?;
        ensure!(st.success(), "skopeo copy to the registry failed");
        Ok(format!("10.0.2.2:{}/{name}", self.port))
    }

    /// The manifest digest (`sha256:…`) of `name` (`hello:2`) in this registry.
    pub fn digest(&self, name: &str) -> Result<String> {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(format!("docker://127.0.0.1:{}/{name}", self.port))
            .output()
            .context("running skopeo inspect")?;
        ensure!(
            out.status.success(),
            "skopeo inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            d.starts_with("sha256:"),
            "skopeo inspect {name}: digest {d:?}"
        );
        Ok(d)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI archive at `archive` holding a tiny busybox web server image called `reference`
/// that answers `message` on port 8080 (`scripts/make-app-image`: umoci and skopeo, no
/// container engine).
pub fn make_app_image(archive: &Path, reference: &str, message: &str) -> Result<()> {
    let st = Command::new(crate::scenario::workspace_root().join("scripts/make-app-image"))
        .arg(archive)
        .arg(reference)
        .arg(message)
        .status()
        .context("running scripts/make-app-image")?;
    ensure!(st.success(), "scripts/make-app-image failed");
    Ok(())
}

/// A guest shell command that prints what the app on the guest's port 8080 answers to `GET /`
/// (bash's /dev/tcp: the test images have no curl).
pub const GUEST_GET_8080: &str = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'";
