//! An `otter server` process on 127.0.0.1 for end-to-end scenarios and the demo, driven with the
//! `otter` fleet commands exactly as a user would run them.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FleetServer {
    child: Child,
    pub port: u16,
    pub url: String,
    pub admin_token: String,
    otter: PathBuf,
    pub log: PathBuf,
}

impl FleetServer {
    /// `otter server` with its data in `dir` (started afresh), trusting `trusted_key`.
    pub fn start(otter: &Path, dir: &Path, trusted_key: &Path) -> Result<FleetServer> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port();
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(otter)
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.join("data"))
            .arg("--trusted-key")
            .arg(trusted_key)
            // Short intervals: a test device should not idle for a minute between polls.
            .args(["--poll-interval", "5", "--rollout-tick", "1"])
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} server", otter.display()))?;
        let stdout = child.stdout.take().context("otter server: no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log2) {
                    let _ = writeln!(f, "{line}");
                }
                let t = line.trim();
                if !sent && t.starts_with("ota_") {
                    let _ = tx.send(t.to_string());
                    sent = true;
                }
            }
        });
        let admin_token = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(t) => t,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "otter server printed no admin token; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Ok(FleetServer {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            admin_token,
            otter: otter.to_path_buf(),
            log,
        })
    }

    /// The server's URL as a QEMU guest reaches it.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.port)
    }

    /// Run `otter ARGS` against this server (OTTER_SERVER / OTTER_TOKEN); its stdout.
    pub fn otter(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.otter)
            .args(args)
            .env("OTTER_SERVER", &self.url)
            .env("OTTER_TOKEN", &self.admin_token)
            .output()
            .with_context(|| format!("running otter {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "otter {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `otter ARGS --json`, parsed.
    pub fn otter_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.otter(&a)?;
        serde_json::from_str(&text).with_context(|| format!("otter {}: {text}", a.join(" ")))
    }

    /// A dashboard page (signed in with the admin token), as HTML.
    pub fn dashboard(&self, path: &str) -> Result<String> {
        let agent = ureq_like_get(&self.url, path, &self.admin_token)?;
        Ok(agent)
    }

    /// Poll `check` every 2 s (calling `between` each time, e.g. to power a rebooted VM on
    /// again) until it gives `Some`.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut between: impl FnMut() -> Result<()>,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut last_err = String::new();
        while start.elapsed() < timeout {
            between()?;
            match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        bail!("timed out after {timeout:?} waiting for {what} {last_err}")
    }

    /// A copy of `image` at `dest` (sparse), set up with `otter configure` as a user would for
    /// this server: host name `hostname`, the server's guest URL and a new enrollment key.
    pub fn configured_image(&self, image: &Path, dest: &Path, hostname: &str) -> Result<()> {
        let key = self.otter_json(&["enrollment-key", "create", hostname])?["key"]
            .as_str()
            .context("the server gave no enrollment key")?
            .to_string();
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(dest)
            .status()
            .context("running cp")?;
        ensure!(
            st.success(),
            "copying {} to {}",
            image.display(),
            dest.display()
        );
        let out = Command::new(&self.otter)
            .arg("configure")
            .arg(dest)
            .args(["--hostname", hostname, "--server"])
            .arg(self.guest_url())
            .args(["--enrollment-key", &key])
            .output()
            .context("running otter configure")?;
        ensure!(
            out.status.success(),
            "otter configure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Wait until a device named `name` (any device for `None`) is accepted; its id.
    pub fn wait_enrolled(&self, name: Option<&str>, timeout: Duration) -> Result<String> {
        self.wait(
            "the device to enroll",
            timeout,
            || Ok(()),
            || {
                let list = self.otter_json(&["devices", "ls"])?;
                Ok(list.as_array().and_then(|a| {
                    a.iter()
                        .find(|d| d["status"] == "accepted" && name.is_none_or(|n| d["name"] == n))
                        .and_then(|d| d["id"].as_str().map(str::to_string))
                }))
            },
        )
    }

    /// `otter rollout create TARGET… --phases 100 --soak 0 EXTRA…` (TARGET: an OS version, or
    /// `--app-release V`): one phase for every targeted device, no soak; the rollout's id.
    pub fn rollout_all(&self, target: &[&str], extra: &[&str]) -> Result<String> {
        let mut args = vec!["rollout", "create"];
        args.extend_from_slice(target);
        args.extend_from_slice(&["--phases", "100", "--soak", "0"]);
        args.extend_from_slice(extra);
        let ro = self.otter_json(&args)?;
        ro["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("otter rollout create gave no id: {ro}"))
    }

    /// Wait until rollout `id` is in `state` (calling `between` while waiting, e.g. to power
    /// a rebooted VM on); its `otter rollout status --json`. A rollout that ends up paused,
    /// aborted or completed instead fails the wait at once.
    pub fn wait_rollout(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
        between: impl FnMut() -> Result<()>,
    ) -> Result<Value> {
        let what = format!("rollout {id} to be {state}");
        self.wait(&what, timeout, between, || {
            let r = self.otter_json(&["rollout", "status", id])?;
            if r["state"] == state {
                return Ok(Some(Ok(r)));
            }
            // Errors in here count as passing (a server busy for a moment): a settled state
            // other than the one awaited is the outcome instead.
            if ["paused", "aborted", "completed"]
                .iter()
                .any(|s| r["state"] == *s)
            {
                return Ok(Some(Err(anyhow::anyhow!(
                    "rollout {id} is {} instead of {state}: {r}",
                    r["state"]
                ))));
            }
            Ok(None)
        })?
    }
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a dashboard page with the admin session cookie, over a plain TCP connection (the harness
/// has no HTTP client dependency; the dashboard speaks HTTP/1.1 on loopback).
fn ureq_like_get(base: &str, path: &str, token: &str) -> Result<String> {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport)
        .with_context(|| format!("connecting to {hostport}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nCookie: otter_admin={token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    ensure!(
        text.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        text.lines().next().unwrap_or("")
    );
    Ok(text)
}
