//! Running commands in the guest over SSH (OpenSSH client).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// An SSH client for a guest reached through a QEMU port forward on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub port: u16,
    /// Private key file (see [`generate_ssh_key`]).
    pub key: PathBuf,
    /// Default `root`.
    pub user: String,
    /// Default `127.0.0.1`.
    pub host: String,
}

impl Ssh {
    pub fn new(port: u16, key: impl Into<PathBuf>) -> Self {
        Ssh {
            port,
            key: key.into(),
            user: "root".into(),
            host: "127.0.0.1".into(),
        }
    }

    /// The `ssh` arguments before the remote command.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "IdentitiesOnly=yes",
        ]
        .map(String::from)
        .into();
        a.push("-i".into());
        a.push(self.key.display().to_string());
        a.push("-p".into());
        a.push(self.port.to_string());
        a.push(format!("{}@{}", self.user, self.host));
        a
    }

    /// The `ssh` command running `cmd` (a shell command line) in the guest; stdin closed.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.args()).arg("--").arg(cmd).stdin(Stdio::null());
        c
    }

    /// Run `cmd` in the guest and collect its output, whatever its exit status. Errors only if
    /// ssh cannot be run.
    ///
    /// A connection that sshd did not answer in time (a guest starved of CPU under TCG:
    /// "Connection timed out during banner exchange") is tried again, twice: the command never
    /// started, so running it again is safe.
    pub fn run(&self, cmd: &str) -> Result<Output> {
        let mut tries = 0;
        loop {
            let out = self
                .command(cmd)
                .output()
                .context("running ssh (apt-get install openssh-client)")?;
            tries += 1;
            if tries < 3 && out.status.code() == Some(255) && not_answered(&out.stderr) {
                std::thread::sleep(Duration::from_secs(3));
                continue;
            }
            return Ok(out);
        }
    }

    /// Run `cmd`; its stdout if it exits 0, else an error with the status and stderr (ssh's
    /// own failures exit 255).
    pub fn run_ok(&self, cmd: &str) -> Result<String> {
        let out = self.run(cmd)?;
        check(cmd, out)
    }

    /// Run `cmd` with a time limit: the ssh client is killed after `timeout`.
    pub fn run_timeout(&self, cmd: &str, timeout: Duration) -> Result<Output> {
        let mut p = self.spawn(cmd)?;
        p.wait_timeout(timeout)
    }

    /// Start `cmd` and return at once (e.g. an install during which the VM is killed). Its
    /// output is collected in the background.
    pub fn spawn(&self, cmd: &str) -> Result<SshProcess> {
        SshProcess::spawn(self.command(cmd), cmd)
    }

    /// Copy a local file to `remote` in the guest (through `cat`, no scp needed).
    pub fn upload(&self, local: &Path, remote: &str) -> Result<()> {
        let file = std::fs::File::open(local)
            .with_context(|| format!("opening {} to upload", local.display()))?;
        let cmd = format!("cat > {}", shell_quote(remote));
        let out = self
            .command(&cmd)
            .stdin(file)
            .output()
            .context("running ssh (apt-get install openssh-client)")?;
        check(&cmd, out)
            .map(|_| ())
            .with_context(|| format!("uploading {} to {remote}", local.display()))
    }

    /// Retry `true` until it succeeds (sshd up and the key accepted) or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.wait_ready_while(timeout, &mut || Ok(()))
    }

    /// [`Ssh::wait_ready`], stopping early when `alive` fails (e.g. the VM exited).
    pub fn wait_ready_while(
        &self,
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            alive()?;
            let last = match self.run_timeout("true", Duration::from_secs(30)) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() >= timeout {
                bail!(
                    "SSH to {}@{}:{} not ready after {timeout:.0?}; last error: {last}",
                    self.user,
                    self.host,
                    self.port
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn check(cmd: &str, out: Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    bail!(
        "guest command {cmd:?} failed ({}):\nstderr: {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

/// Quote a string for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A command running in the guest over ssh, started by [`Ssh::spawn`]. Its stdout and stderr are
/// collected by background threads. Dropping it kills the local ssh client.
#[derive(Debug)]
pub struct SshProcess {
    cmd: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn snapshot(b: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    b.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl SshProcess {
    /// Run any command (normally one from [`Ssh::command`]) with its output collected.
    pub fn spawn(mut command: Command, description: &str) -> Result<SshProcess> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {description:?}"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(s) = child.stdout.take() {
            readers.push(collect(s, stdout.clone()));
        }
        if let Some(s) = child.stderr.take() {
            readers.push(collect(s, stderr.clone()));
        }
        Ok(SshProcess {
            cmd: description.to_string(),
            child,
            stdout,
            stderr,
            readers,
        })
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&snapshot(&self.stdout)).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&snapshot(&self.stderr)).into_owned()
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking {:?}", self.cmd))
    }

    /// Wait until stdout or stderr contains `needle` (e.g. a progress line, to cut the power
    /// mid-install). Fails if the command ends first or after `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let has = |b: &Arc<Mutex<Vec<u8>>>| {
                let b = b.lock().unwrap_or_else(|p| p.into_inner());
                b.windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes())
            };
            if has(&self.stdout) || has(&self.stderr) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // Let the readers drain before the final look.
                self.join_readers();
                if has(&self.stdout) || has(&self.stderr) {
                    return Ok(());
                }
                bail!(
                    "{:?} ended ({status}) without printing {needle:?}\nstdout: {}\nstderr: {}",
                    self.cmd,
                    self.stdout_so_far().trim(),
                    self.stderr_so_far().trim()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{:?} did not print {needle:?} within {timeout:.0?}\nstdout: {}\nstderr: {}",
                    self.cmd,
                    self.stdout_so_far().trim(),
                    self.stderr_so_far().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    fn output(&mut self, status: ExitStatus) -> Output {
        self.join_readers();
        Output {
            status,
            stdout: snapshot(&self.stdout),
            stderr: snapshot(&self.stderr),
        }
    }

    /// Wait for the command to end and return all its output.
    pub fn wait(mut self) -> Result<Output> {
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for {:?}", self.cmd))?;
        Ok(self.output(status))
    }

    /// Wait up to `timeout`; on timeout the local ssh client is killed and an error returned.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Output> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(self.output(status));
            }
            if start.elapsed() >= timeout {
                self.kill();
                return Err(anyhow!(
                    "{:?} did not finish within {timeout:.0?}\nstdout: {}\nstderr: {}",
                    self.cmd,
                    self.stdout_so_far().trim(),
                    self.stderr_so_far().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill the local ssh client (the remote command may go on until it notices).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SshProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// ssh's stderr says the server did not get as far as its greeting: the remote command was
/// never started.
fn not_answered(stderr: &[u8]) -> bool {
    let e = String::from_utf8_lossy(stderr);
    e.contains("during banner exchange") || e.contains("kex_exchange_identification")
}

/// Make an ed25519 key pair without passphrase as `DIR/id_ed25519` (replacing one there).
/// Returns the private key path and the public key line (for `authorized_keys`).
pub fn generate_ssh_key(dir: &Path) -> Result<(PathBuf, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    for p in [&key, &public] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing old {}", p.display())),
        }
    }
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "otter-e2e", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (apt-get install openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?
        .trim()
        .to_string();
    Ok((key, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_arguments() {
        let s = Ssh::new(2222, "/k/id");
        let a = s.args().join(" ");
        for o in [
            "-o StrictHostKeyChecking=no",
            "-o UserKnownHostsFile=/dev/null",
            "-o BatchMode=yes",
            "-o ConnectTimeout=5",
            "-o LogLevel=ERROR",
        ] {
            assert!(a.contains(o), "{a}");
        }
        assert!(a.ends_with("-i /k/id -p 2222 root@127.0.0.1"), "{a}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn only_unanswered_connections_are_retried() {
        assert!(not_answered(
            b"Connection timed out during banner exchange\r\nConnection to 127.0.0.1 port 2222 timed out\r\n"
        ));
        assert!(not_answered(
            b"kex_exchange_identification: read: Connection reset by peer\r\n"
        ));
        assert!(!not_answered(
            b"Connection to 127.0.0.1 closed by remote host.\r\n"
        ));
        assert!(!not_answered(
            b"ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n"
        ));
    }

    #[test]
    fn generates_ed25519_keys() {
        if crate::which("ssh-keygen").is_none() {
            eprintln!("skipping: ssh-keygen missing (apt-get install openssh-client)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (key, line) = generate_ssh_key(d.path()).unwrap();
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        assert!(line.ends_with(" otter-e2e"), "{line}");
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(pem.contains("OPENSSH PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private key must not be readable by others"
        );
        // A second call replaces the pair instead of prompting.
        let (_, line2) = generate_ssh_key(d.path()).unwrap();
        assert_ne!(line, line2);
    }

    #[test]
    fn spawned_process_output_and_timeout() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; echo oops >&2; sleep 0.3; echo done"]);
        let mut p = SshProcess::spawn(c, "sh test").unwrap();
        p.wait_for_output("started", Duration::from_secs(10))
            .unwrap();
        let out = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\ndone\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

        let mut c = Command::new("sleep");
        c.arg("30");
        let mut p = SshProcess::spawn(c, "sleep").unwrap();
        let start = Instant::now();
        let err = p.wait_timeout(Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish"));
        assert!(start.elapsed() < Duration::from_secs(5));

        let mut c = Command::new("true");
        c.stdin(Stdio::null());
        let mut p = SshProcess::spawn(c, "true").unwrap();
        let err = p
            .wait_for_output("never", Duration::from_secs(10))
            .unwrap_err();
        assert!(err.to_string().contains("ended"), "{err}");
    }

    #[test]
    fn unreachable_guest_fails_fast_with_stderr() {
        if crate::which("ssh").is_none() {
            eprintln!("skipping: ssh missing (apt-get install openssh-client)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        // Nothing listens on this port.
        let s = Ssh::new(crate::free_port(), d.path().join("nokey"));
        let err = s.run_ok("true").unwrap_err().to_string();
        assert!(err.contains("failed"), "{err}");
        let err = s
            .wait_ready(Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not ready"), "{err}");
    }
}
