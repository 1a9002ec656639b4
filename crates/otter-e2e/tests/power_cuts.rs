//! End-to-end: power cuts at random instants of an OS update, in QEMU (UEFI + GRUB, TCG).
//!
//! Each round starts `otterd install URL --reboot` (1.0.0 ⇄ 1.1.0, a delta each way) and pulls
//! the plug after a random delay that covers the download and write, the read-back, the
//! boot-state write of the install, the reboot, the trial boot and the commit. The device is then
//! powered on and must:
//! - boot a slot (no power-on ends without SSH);
//! - run a committed slot, or the fully written trial slot (which then commits by itself);
//! - say in `otterd status` what happened: the version of the slot it booted; an install cut
//!   short is `failed` with "interrupted"; a cut never causes a rollback (one cut per trial uses
//!   one of its 3 tries);
//! - keep the canary (4 MiB of random bytes on the data partition, written and synced just before
//!   the round) byte for byte.
//!
//! Then the trial boot of an update is cut twice in a row (tries 1 and 2 of the 3 these images
//! allow, `[health] boot_tries = 3`; the default is 1), and the update must still commit:
//! repeated cuts never roll back a good update within the documented try count. That is also
//! the "second update succeeds" check.
//!
//! `OTTER_POWER_CUTS` rounds (default 1, CI's bounded sample, beside the two trial-boot cuts),
//! `OTTER_POWER_CUT_SEED` to repeat a run (printed at the start), `OTTER_POWER_CUT_WINDOW`
//! seconds of delay range (default 150).
//! `scripts/power-cuts N` runs a long campaign; figures in docs/proof.md.

use anyhow::{Context, Result, bail, ensure};
use otter_e2e::scenario::{Device, Release, Variant, Workbench, guest_url, phase, serve};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn random_power_cuts() {
    if let Err(missing) = otter_e2e::requirements() {
        eprintln!("skipping the QEMU power-cut scenario: {missing}");
        return;
    }
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough to spread cut instants; written out so a run is repeatable from its seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

const CANARY: &str = "/var/lib/otter-canary.bin";

/// `dev.sh(cmd)`, tried again when SSH itself fails (a TCG guest on a loaded host sometimes does
/// not answer the SSH banner in time); every command given here may run twice.
fn sh(dev: &Device, cmd: &str) -> Result<String> {
    let mut last = None;
    for _ in 0..5 {
        match dev.sh(cmd) {
            Ok(out) => return Ok(out),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{cmd}: no attempt")))
}

/// `otterd status --json`, through [`sh`].
fn status(dev: &Device) -> Result<Value> {
    let text = sh(dev, "otterd status --json")?;
    serde_json::from_str(&text).with_context(|| format!("parsing otterd status:\n{text}"))
}

fn write_canary(dev: &Device) -> Result<String> {
    let out = sh(
        dev,
        &format!(
            "head -c 4194304 /dev/urandom > {CANARY} && sync {CANARY} && sync && sha256sum {CANARY}"
        ),
    )?;
    Ok(out.split_whitespace().next().unwrap_or("").to_string())
}

fn check_canary(dev: &Device, want: &str) -> Result<()> {
    let out = sh(dev, &format!("sha256sum {CANARY} || echo missing"))?;
    let got = out.split_whitespace().next().unwrap_or("");
    ensure!(
        got == want,
        "data lost: the canary's SHA-256 is {got}, was {want} before the cut"
    );
    Ok(())
}

/// Wait until the update is no longer in flight (a trial commits or rolls back by itself).
fn settle(dev: &mut Device) -> Result<Value> {
    dev.wait_status("the update to settle", Duration::from_secs(900), |s| {
        !matches!(
            phase(s),
            "installing" | "installed" | "trying" | "unhealthy"
        )
    })
}

/// One row of the figures: what the device was doing when the power went, and how it came back.
struct Round {
    delay: u64,
    stage: String,
    booted: String,
    version: String,
    phase: String,
}

fn scenario() -> Result<()> {
    let base = otter_e2e::test_dir("power_cuts")?;
    let wb = Workbench::new(&base.join("work"))?;
    // Three trial boots per update (`[health] boot_tries`, 1 by default): the trial part cuts two.
    let v1 = wb.build(
        "e2e",
        &Variant {
            boot_tries: 3,
            ..Variant::version("1.0.0")
        },
    )?;
    let v2 = wb.build(
        "e2e",
        &Variant {
            boot_tries: 3,
            ..Variant::version("1.1.0").bundle_only()
        },
    )?;
    let http = serve(&wb.out)?;
    let rounds = env_num("OTTER_POWER_CUTS", 1);
    let window = env_num("OTTER_POWER_CUT_WINDOW", 150);
    let seed = env_num(
        "OTTER_POWER_CUT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    )
    .max(1);
    eprintln!("== {rounds} power cuts, delays 0..{window} s, OTTER_POWER_CUT_SEED={seed}");
    let mut rng = Rng(seed);
    let mut dev = Device::new(v1.image()?, &base.join("dev"), &wb.ssh_key)?;
    dev.power_on()?;
    let mut table = Vec::new();
    for i in 0..rounds {
        let s = status(&dev)?;
        let from = s["version"].as_str().unwrap_or("").to_string();
        let target: &Release = if from == "1.0.0" { &v2 } else { &v1 };
        let to = if from == "1.0.0" { "1.1.0" } else { "1.0.0" };
        let canary = write_canary(&dev)?;
        let delay = rng.below(window + 1);
        eprintln!(
            "== cut {}/{rounds}: {from} -> {to}, power off after {delay} s",
            i + 1
        );
        let mut proc = dev.ssh.spawn(&format!(
            "otterd install {} --allow-downgrade --reboot",
            guest_url(&http, &target.bundle)
        ))?;
        let stage = watch(&dev, to, Duration::from_secs(delay));
        dev.power_cut();
        proc.kill();
        // It must boot a slot: power_on fails if SSH never answers (15 minutes, reboots
        // followed).
        dev.power_on()
            .with_context(|| format!("cut {} ({stage}, after {delay} s): unbootable", i + 1))?;
        let s = settle(&mut dev)?;
        let row = check_after_cut(&s, &from, to, &stage, delay)?;
        check_canary(&dev, &canary).with_context(|| format!("cut {} ({stage})", i + 1))?;
        eprintln!(
            "   ok: cut during {stage}: booted {} running {} ({})",
            row.booted, row.version, row.phase
        );
        table.push(row);
    }

    // Cuts during trial boots: two in a row, then the update commits on its last try.
    let s = status(&dev)?;
    let from = s["version"].as_str().unwrap_or("").to_string();
    let (target, to) = if from == "1.0.0" {
        (&v2, "1.1.0")
    } else {
        (&v1, "1.0.0")
    };
    eprintln!("== two cuts during trial boots of {from} -> {to}");
    let canary = write_canary(&dev)?;
    sh(
        &dev,
        &format!(
            "otterd install {} --allow-downgrade",
            guest_url(&http, &target.bundle)
        ),
    )?;
    let s = status(&dev)?;
    ensure!(phase(&s) == "installed", "after install: {s:#}");
    // The install has set the boot state for a trial: pull the plug rather than reboot.
    dev.power_cut();
    for k in 1..=2 {
        // Power on, and cut once GRUB has counted the trial and the kernel is on its way: a
        // trial commits only after userland is up and its health checks pass.
        let mark = dev.console().len();
        dev.power_on_nowait()?;
        dev.wait_console("trial boot,", mark, Duration::from_secs(600))
            .with_context(|| format!("trial boot {k}"))?;
        let extra = rng.below(16);
        std::thread::sleep(Duration::from_secs(extra));
        let line = dev.console()[mark..]
            .lines()
            .find(|l| l.contains("trial boot,"))
            .unwrap_or("")
            .trim()
            .to_string();
        eprintln!("   trial boot {k}: `{line}`, power cut {extra} s later");
        dev.power_cut();
    }
    dev.power_on()?;
    let s = settle(&mut dev)?;
    ensure!(
        s["version"] == to && phase(&s) == "committed",
        "after two cut trial boots the update must commit on its third try: {s:#}"
    );
    check_canary(&dev, &canary)?;
    eprintln!("   committed {to} on the last try; canary intact");
    dev.power_cut();

    eprintln!(
        "== power cuts: {} rounds, 0 unbootable, 0 data loss",
        table.len()
    );
    eprintln!("   delay  stage                    booted version  phase");
    for r in &table {
        eprintln!(
            "   {:>4}s  {:<24} {:<6} {:<8} {}",
            r.delay, r.stage, r.booted, r.version, r.phase
        );
    }
    Ok(())
}

/// Follow the install to `to` for `delay`, polling its status, and name the last stage seen.
fn watch(dev: &Device, to: &str, delay: Duration) -> String {
    let start = Instant::now();
    let mut stage = "starting".to_string();
    while start.elapsed() < delay {
        match dev.status() {
            Ok(s) if s["version"] == to => stage = format!("trial boot: {}", phase(&s)),
            Ok(s) => match phase(&s) {
                "installing" => {
                    let p = &s["update"]["progress"];
                    let done = p["done_bytes"].as_u64().unwrap_or(0);
                    let total = p["total_bytes"].as_u64().unwrap_or(0).max(1);
                    stage = if done >= total {
                        "install: read-back".into()
                    } else {
                        format!("install: write {}%", done * 100 / total)
                    };
                }
                "installed" => stage = "install: boot state set".into(),
                _ => {}
            },
            // No answer once the install is done: the reboot or the trial boot's start.
            Err(_) if stage.starts_with("install: boot") || stage.starts_with("reboot") => {
                stage = "reboot into the trial".into()
            }
            Err(_) => {}
        }
        let left = delay.saturating_sub(start.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(2)));
    }
    stage
}

/// What the device says after coming back from a cut taken during an update `from` → `to`.
fn check_after_cut(s: &Value, from: &str, to: &str, stage: &str, delay: u64) -> Result<Round> {
    let booted = s["booted_slot"].as_str().unwrap_or("").to_string();
    let version = s["version"].as_str().unwrap_or("").to_string();
    let p = phase(s).to_string();
    ensure!(!booted.is_empty(), "no booted slot after the cut: {s:#}");
    // The version it reports is the one its booted slot holds.
    let slot_version = s["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["booted"] == true))
        .and_then(|x| x["version"].as_str())
        .unwrap_or("");
    ensure!(
        slot_version == version,
        "status says {version}, its booted slot holds {slot_version}: {s:#}"
    );
    if version == to {
        // The new slot runs only after a complete, verified install; it commits by itself.
        ensure!(p == "committed", "running {to} but not committed: {s:#}");
    } else if version == from {
        match p.as_str() {
            "failed" => {
                let reason = s["update"]["reason"].as_str().unwrap_or("");
                ensure!(
                    reason.contains("interrupted"),
                    "an install cut short must say so: {s:#}"
                );
            }
            // Cut before the install recorded anything: the record is as before.
            "committed" | "" => {}
            "rolled_back" => bail!(
                "cut during {stage} after {delay} s: a power cut rolled a good update back: {s:#}"
            ),
            other => bail!("unexpected phase {other} on {from}: {s:#}"),
        }
    } else {
        bail!("running {version}, neither {from} nor {to}: {s:#}");
    }
    Ok(Round {
        delay,
        stage: stage.to_string(),
        booted,
        version,
        phase: p,
    })
}
