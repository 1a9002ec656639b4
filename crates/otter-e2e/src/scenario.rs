//! Building blocks of the end-to-end scenarios and the demo: build releases with the `otter`
//! CLI as a user would, and drive a device (one QEMU disk, power-cycled) over SSH.

use crate::{HttpServer, Ssh, Vm, VmOptions, free_port, generate_ssh_key};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `crates/otter-e2e`).
pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The release `otter` and `otterd` binaries: `$OTTER_BIN_DIR`, else `target/release`,
/// built with cargo when missing, or when that `otterd` lacks the `fault-injection` feature the
/// power-cut scenarios use (`otterd --version` says `+fault-injection`).
pub fn binaries() -> Result<(PathBuf, PathBuf)> {
    let dir = match std::env::var_os("OTTER_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => PathBuf::from(t).join("release"),
            None => workspace_root().join("target/release"),
        },
    };
    let (otter, otterd) = (dir.join("otter"), dir.join("otterd"));
    if !otter.is_file() || !has_fault_injection(&otterd) {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(BUILD_ARGS)
            .current_dir(workspace_root())
            .status()
            .with_context(|| format!("running cargo {}", BUILD_ARGS.join(" ")))?;
        if !status.success() {
            bail!("cargo {} failed", BUILD_ARGS.join(" "));
        }
    }
    Ok((otter, otterd))
}

/// How the e2e images' binaries are built (scripts/test builds the same).
pub const BUILD_ARGS: &[&str] = &[
    "build",
    "--release",
    "-p",
    "otter",
    "-p",
    "otterd",
    "--features",
    "otterd/fault-injection",
];

fn has_fault_injection(otterd: &Path) -> bool {
    Command::new(otterd)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("+fault-injection"))
        .unwrap_or(false)
}

/// How one release differs from the plain demo image.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    pub version: String,
    /// Extra kernel arguments carried in the slot (e.g. `init=/bin/false` to break booting).
    pub kernel_cmdline: String,
    /// Executables for `/etc/otter/health.d/`: (name, shell script body).
    pub health_checks: Vec<(String, String)>,
    pub deadline_secs: u64,
    /// Trial boots an update gets (`[health] boot_tries`); 0 keeps the default (1).
    pub boot_tries: u8,
    /// Built-in container apps (`[[apps]]`).
    pub apps: Vec<VariantApp>,
    /// Extra files in the root: (path relative to `/`, content).
    pub files: Vec<(String, String)>,
    /// Build only the bundle (`otter build --bundle-only`): a release the tests only install
    /// as an update needs no disk image (and CI's disk is small).
    pub bundle_only: bool,
}

/// A built-in app of a [`Variant`]: its compose file and the OCI archives of its images.
#[derive(Debug, Clone, Default)]
pub struct VariantApp {
    pub name: String,
    pub compose: String,
    pub archives: Vec<PathBuf>,
}

impl Variant {
    /// The plain image at `version`.
    pub fn version(version: &str) -> Variant {
        Variant {
            version: version.into(),
            ..Default::default()
        }
    }

    /// This variant, built as a bundle only.
    pub fn bundle_only(self) -> Variant {
        Variant {
            bundle_only: true,
            ..self
        }
    }
}

#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    /// The disk image; `None` for a [`Variant::bundle_only`] build.
    pub disk_image: Option<PathBuf>,
    pub bundle: PathBuf,
    /// Size of the root filesystem image in the bundle.
    pub root_size: u64,
}

impl Release {
    /// The disk image, for a release built with one.
    pub fn image(&self) -> Result<&Path> {
        self.disk_image.as_deref().with_context(|| {
            format!(
                "release {} was built as a bundle only: it has no disk image",
                self.version
            )
        })
    }
}

/// Keys, an SSH identity and a project directory; builds releases with `otter build`.
pub struct Workbench {
    pub dir: PathBuf,
    pub otter: PathBuf,
    pub otterd: PathBuf,
    pub ssh_key: PathBuf,
    pub out: PathBuf,
    pub cache: PathBuf,
}

impl Workbench {
    /// Prepare `dir` (kept between runs: keys and builds are reused when present).
    pub fn new(dir: &Path) -> Result<Workbench> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (otter, otterd) = binaries()?;
        let keys = dir.join("keys");
        if !keys.join("otter-signing.key").is_file() {
            run(Command::new(&otter)
                .args(["keys", "generate", "--out"])
                .arg(&keys))?;
        }
        let ssh_key = dir.join("ssh/id_ed25519");
        if !ssh_key.is_file() {
            generate_ssh_key(&dir.join("ssh"))?;
        }
        let cache = std::env::var_os("OTTER_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/otter-cache"));
        Ok(Workbench {
            out: dir.join("out"),
            dir: dir.to_path_buf(),
            otter,
            otterd,
            ssh_key,
            cache,
        })
    }

    /// Write the project for `v` and build it with `otter build`.
    pub fn build(&self, name: &str, v: &Variant) -> Result<Release> {
        let pdir = self
            .dir
            .join("projects")
            .join(format!("{name}-{}", v.version));
        if pdir.exists() {
            std::fs::remove_dir_all(&pdir)
                .with_context(|| format!("cleaning {}", pdir.display()))?;
        }
        let overlay = pdir.join("overlay");
        std::fs::create_dir_all(overlay.join("etc/otter/health.d"))
            .with_context(|| format!("creating {}", overlay.display()))?;
        for (path, content) in &v.files {
            let p = overlay.join(path.trim_start_matches('/'));
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
        }
        for (check, body) in &v.health_checks {
            let p = overlay.join("etc/otter/health.d").join(check);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))
                .with_context(|| format!("writing {}", p.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        let board_dir = workspace_root().join("boards");
        let toml = format!(
            r#"[image]
name = "{name}"
version = "{version}"
board = "qemu-x86_64"

[signing]
key = "{key}"

[kernel]
cmdline = "{cmdline}"

[rootfs]
overlay = "overlay"
root_authorized_keys = ["{ssh_pub}"]

[health]
deadline_secs = {deadline}
units = ["ssh.service"]
{tries}"#,
            version = v.version,
            key = self.dir.join("keys/otter-signing.key").display(),
            // A TCG guest on a busy host can fail the kernel's IO-APIC timer check and panic
            // ("IO-APIC + timer doesn't work"); VM kernels skip that check.
            cmdline = format!("no_timer_check {}", v.kernel_cmdline).trim_end(),
            ssh_pub = self.ssh_key.with_extension("pub").display(),
            deadline = if v.deadline_secs == 0 {
                300
            } else {
                v.deadline_secs
            },
            tries = if v.boot_tries == 0 {
                String::new()
            } else {
                format!("boot_tries = {}\n", v.boot_tries)
            },
        );
        let mut toml = toml;
        for a in &v.apps {
            let adir = pdir.join("apps").join(&a.name);
            std::fs::create_dir_all(&adir)
                .with_context(|| format!("creating {}", adir.display()))?;
            std::fs::write(adir.join("compose.yaml"), &a.compose)?;
            let mut images = Vec::new();
            for ar in &a.archives {
                let name = ar.file_name().context("archive without a file name")?;
                std::fs::copy(ar, adir.join(name))
                    .with_context(|| format!("copying {}", ar.display()))?;
                images.push(format!("\"apps/{}/{}\"", a.name, name.to_string_lossy()));
            }
            toml.push_str(&format!(
                "\n[[apps]]\nname = \"{}\"\ncompose = \"apps/{}/compose.yaml\"\nimages = [{}]\n",
                a.name,
                a.name,
                images.join(", ")
            ));
        }
        std::fs::write(pdir.join("otter.toml"), toml)?;
        // Boards are found next to the project or in its parents; link the repository's.
        std::os::unix::fs::symlink(&board_dir, pdir.join("boards"))
            .with_context(|| format!("linking boards into {}", pdir.display()))?;
        // A kept workbench may hold an earlier build of this version: start from none.
        let stem = format!("{name}-{}-qemu-x86_64", v.version);
        for ext in ["img", "bmap", "otb"] {
            let f = self.out.join(format!("{stem}.{ext}"));
            if f.exists() {
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            }
        }
        let mut cmd = Command::new(&self.otter);
        cmd.arg("build")
            .arg("--config")
            .arg(pdir.join("otter.toml"))
            .arg("--out")
            .arg(&self.out)
            .arg("--otterd")
            .arg(&self.otterd)
            .arg("--cache")
            .arg(&self.cache)
            .args(["--no-compress", "--json"]);
        if v.bundle_only {
            cmd.arg("--bundle-only");
        }
        let out: Value = serde_json::from_str(&run(&mut cmd)?)
            .context("parsing the output of otter build --json")?;
        let path = |key: &str| out[key].as_str().map(PathBuf::from);
        // What a build leaves behind: its outputs, not its multi-GB scratch space.
        let work = self.out.join(format!(".work-{stem}"));
        ensure!(!work.exists(), "otter build left {} behind", work.display());
        let img = self.out.join(format!("{stem}.img"));
        ensure!(
            v.bundle_only != img.exists() && v.bundle_only == path("image").is_none(),
            "otter build {}: {} (bundle only: {})",
            v.version,
            if img.exists() {
                "wrote a disk image"
            } else {
                "wrote no disk image"
            },
            v.bundle_only
        );
        Ok(Release {
            version: v.version.clone(),
            disk_image: path("image"),
            bundle: path("bundle").context("otter build --json names no bundle")?,
            root_size: out["root_size"]
                .as_u64()
                .context("otter build --json gives no root_size")?,
        })
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\n{}\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// One device: a disk (qcow2 overlay over a built image) that is powered on and off.
///
/// QEMU runs with `-no-reboot`: a guest reboot (or a watchdog reset) ends the QEMU process and
/// the device is powered on again from the same disk and UEFI variables, a cold boot. Warm
/// resets under TCG occasionally hung in the firmware with no output; cold boots never did.
pub struct Device {
    pub dir: PathBuf,
    pub opts: VmOptions,
    pub ssh: Ssh,
    pub vm: Option<Vm>,
    /// Serial logs of every power-on of this device, oldest first.
    pub logs: Vec<PathBuf>,
}

impl Device {
    pub fn new(image: &Path, dir: &Path, ssh_key: &Path) -> Result<Device> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let mut opts = VmOptions::new(image);
        opts.ssh_port = Some(port);
        opts.overlay = Some(dir.join("disk.qcow2"));
        opts.memory_mib = 768;
        opts.no_reboot = true;
        Ok(Device {
            dir: dir.to_path_buf(),
            opts,
            ssh: Ssh::new(port, ssh_key),
            vm: None,
            logs: Vec::new(),
        })
    }

    fn start(&mut self) -> Result<()> {
        let vm = Vm::start(self.opts.clone(), &self.dir)?;
        self.logs.push(vm.serial_log_path().to_path_buf());
        self.vm = Some(vm);
        Ok(())
    }

    /// Power on and wait until SSH answers.
    pub fn power_on(&mut self) -> Result<()> {
        self.start()?;
        let start = Instant::now();
        loop {
            let vm = self.vm()?;
            match vm.wait_ssh_ready(&self.ssh, Duration::from_secs(600)) {
                Ok(()) => return Ok(()),
                // The guest rebooted on its way up (e.g. a failed trial): power on again.
                Err(_) if !vm.is_running() && start.elapsed() < Duration::from_secs(900) => {
                    self.start()?
                }
                Err(e) => return Err(e.context("waiting for the device to come up (SSH)")),
            }
        }
    }

    /// Power on without waiting for anything (to cut the power again during the boot).
    pub fn power_on_nowait(&mut self) -> Result<()> {
        self.start()
    }

    /// If the guest rebooted (QEMU exited), power it on again, as a reset would.
    pub fn keep_alive(&mut self) -> Result<()> {
        if let Some(vm) = &self.vm
            && !vm.is_running()
        {
            self.start()?;
        }
        Ok(())
    }

    /// Pull the plug (SIGKILL QEMU).
    pub fn power_cut(&mut self) {
        if let Some(vm) = self.vm.take() {
            let _ = vm.kill();
        }
    }

    pub fn vm(&self) -> Result<&Vm> {
        self.vm.as_ref().context("the device is powered off")
    }

    /// Everything the device printed on its serial console, over all its power-ons.
    pub fn console(&self) -> String {
        self.logs
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn console_tail(&self, n: usize) -> String {
        let all = self.console();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wait until `needle` appears on the serial console after `from_bytes` of [`Self::console`]
    /// (follows reboots).
    pub fn wait_console(
        &mut self,
        needle: &str,
        from_bytes: usize,
        timeout: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.keep_alive()?;
            let all = self.console();
            if all.get(from_bytes..).is_some_and(|t| t.contains(needle)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bail!(
            "`{needle}` did not appear on the console within {timeout:?}:\n{}",
            self.console_tail(60)
        )
    }

    pub fn sh(&self, cmd: &str) -> Result<String> {
        self.ssh.run_ok(cmd)
    }

    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .sh("cat /proc/sys/kernel/random/boot_id")?
            .trim()
            .to_string())
    }

    pub fn status(&self) -> Result<Value> {
        let text = self.sh("otterd status --json")?;
        serde_json::from_str(&text).with_context(|| format!("parsing otterd status:\n{text}"))
    }

    /// Wait until the device has rebooted (a new boot id answers over SSH).
    pub fn wait_rebooted(&mut self, old_boot_id: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.keep_alive()?;
            if let Ok(id) = self.boot_id()
                && id != old_boot_id
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        bail!(
            "the device did not come back within {timeout:?}; console:\n{}",
            self.console_tail(60)
        )
    }

    /// Poll `otterd status --json` until `pred` holds (following reboots).
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < timeout {
            self.keep_alive()?;
            if let Ok(s) = self.status() {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}; last status:\n{last:#}\nconsole:\n{}",
            self.console_tail(40)
        )
    }

    /// `otterd install URL --json ARGS` (no reboot): the install's outcome (version, seconds,
    /// bytes downloaded and reused, peak memory).
    pub fn install_json(&self, url: &str, args: &str) -> Result<Value> {
        let out = self.sh(&format!("otterd install {url} --json {args}"))?;
        let last = out
            .lines()
            .rev()
            .find(|l| l.contains("\"seconds\""))
            .unwrap_or("");
        serde_json::from_str(last).with_context(|| format!("otterd install output:\n{out}"))
    }

    /// `otterd reboot`, then wait for the device to be back up.
    pub fn reboot(&mut self) -> Result<()> {
        let before = self.boot_id()?;
        let _ = self.ssh.run("otterd reboot");
        self.wait_rebooted(&before, Duration::from_secs(900))
    }

    /// `otterd install URL --reboot`, then wait for the device to be back up.
    pub fn install_and_reboot(&mut self, url: &str) -> Result<()> {
        let before = self.boot_id()?;
        // The SSH session may be cut by the reboot; the outcome is read from the status.
        let out = self.ssh.run(&format!("otterd install {url} --reboot"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("closed by remote host") && out.status.code() != Some(255) {
                bail!("otterd install failed: {stderr}");
            }
        }
        self.wait_rebooted(&before, Duration::from_secs(900))
    }
}

/// `status.update.phase`, or "" when there is no update record.
pub fn phase(s: &Value) -> &str {
    s["update"]["phase"].as_str().unwrap_or("")
}

/// Serve `out` to guests over HTTP.
pub fn serve(out: &Path) -> Result<HttpServer> {
    HttpServer::serve_dir(out)
}

/// The URL a guest uses for a file served by `server`.
pub fn guest_url(server: &HttpServer, file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    server.guest_url(&name)
}
