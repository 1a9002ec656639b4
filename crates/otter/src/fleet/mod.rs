//! Fleet commands against an `otter server`: login, devices, release, rollout, logs. Thin: they
//! call the admin API (docs/api.md) and print tables, or JSON with `--json`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use otter_client::admin::{self, DeviceFilter};
use otter_client::blocking::Client;
use otter_proto::admin::{
    AddTrustedKey, CreateEnrollmentKey, CreateRollout, DeviceStatus, PhaseSpec, PinAppsRequest,
    PinRequest, RolloutAction, Selector, TagChange, UploadAppRelease,
};
use serde::{Deserialize, Serialize};

mod args;
mod print;

pub use args::*;
use print::{
    ago, device_line, escape_controls, print_apps, print_json, print_rollout, terminal_safe,
};

#[derive(Serialize, Deserialize)]
struct Login {
    url: String,
    token: String,
}

fn login_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_LOGIN") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("otter/login.json")
}

/// The server and admin token: `OTTER_SERVER` and `OTTER_TOKEN`, else the saved login.
fn load_client() -> Result<Client> {
    if let (Ok(url), Ok(token)) = (std::env::var("OTTER_SERVER"), std::env::var("OTTER_TOKEN")) {
        return Ok(Client::new(&url, Some(token)));
    }
    let p = login_path();
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} : log in first (otter login URL) or set OTTER_SERVER and OTTER_TOKEN",
            p.display()
        )
    })?;
    let l: Login =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    Ok(Client::new(&l.url, Some(l.token)))
}

pub fn run(cmd: FleetCmd) -> Result<()> {
    match cmd {
        FleetCmd::Login { url, token } => login(&url, token),
        FleetCmd::Devices { cmd } => devices(&load_client()?, cmd),
        FleetCmd::Release { cmd } => release(&load_client()?, cmd),
        FleetCmd::AppRelease { cmd } => app_release(&load_client()?, cmd),
        FleetCmd::Rollout { cmd } => rollout(&load_client()?, cmd),
        FleetCmd::EnrollmentKey { cmd } => enrollment_keys(&load_client()?, cmd),
        FleetCmd::Logs {
            device,
            follow,
            lines,
            json,
        } => logs(&load_client()?, &device, follow, lines, json),
    }
}

fn enrollment_keys(c: &Client, cmd: EnrollmentKeyCmd) -> Result<()> {
    match cmd {
        EnrollmentKeyCmd::Create { name, json } => {
            let k = c.send(&admin::create_enrollment_key(&CreateEnrollmentKey {
                name: name.clone(),
            }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&k)?);
            } else {
                println!(
                    "enrollment key `{name}` ({}): {}\n(shown once; use it with otter configure IMAGE --server URL --enrollment-key KEY)",
                    k.id,
                    k.key.as_deref().unwrap_or("?")
                );
            }
        }
        EnrollmentKeyCmd::Ls { json } => {
            let keys = c.send(&admin::enrollment_keys())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{:<24}  {:<20}  {:<10}  state", "id", "name", "created");
                for k in &keys {
                    println!(
                        "{:<24}  {:<20}  {:<10}  {}",
                        k.id,
                        k.name,
                        ago(Some(k.created_at_ms)),
                        if k.revoked_at_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
        EnrollmentKeyCmd::Revoke { id } => {
            c.send(&admin::revoke_enrollment_key(&id))?;
            println!("enrollment key {id} revoked");
        }
    }
    Ok(())
}

fn login(url: &str, token: Option<String>) -> Result<()> {
    let token = match token {
        Some(t) => t,
        None => {
            eprint!("admin token: ");
            let mut t = String::new();
            std::io::stdin()
                .read_line(&mut t)
                .context("reading the token from standard input")?;
            t.trim().to_owned()
        }
    };
    let c = Client::new(url, Some(token.clone()));
    let who = c.send(&admin::whoami())?;
    let p = login_path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(
        &p,
        &serde_json::to_vec_pretty(&Login {
            url: c.url.clone(),
            token,
        })?,
    )?;
    println!(
        "logged in to {} as {} (server {}); saved in {}",
        c.url,
        who.admin,
        who.server_version,
        p.display()
    );
    Ok(())
}

fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

fn devices(c: &Client, cmd: DevicesCmd) -> Result<()> {
    match cmd {
        DevicesCmd::Ls {
            status,
            tag,
            board,
            version,
            online,
            offline,
            json,
        } => {
            let filter = DeviceFilter {
                status,
                tag,
                compatible: board,
                version,
                online: (online || offline).then_some(online),
                q: None,
                limit: Some(100_000),
            };
            let list = c.send(&admin::devices(&filter))?;
            if json {
                return print_json(&list);
            }
            let list = terminal_safe(list)?;
            println!(
                "{:<16}  {:<16}  {:<9}  {:<24}  {:<10}  {:<10}  {:<8}  UPDATE",
                "ID", "NAME", "STATUS", "BOARD", "VERSION", "TARGET", "SEEN"
            );
            for d in &list {
                device_line(d);
            }
            Ok(())
        }
        DevicesCmd::Show { id, json } => {
            let d = c.send(&admin::device(&id))?;
            if json {
                return print_json(&d);
            }
            let d = terminal_safe(d)?;
            let v = &d.device;
            println!("device      {}", v.id);
            println!("name        {}", v.name.as_deref().unwrap_or("-"));
            println!("status      {}", v.status.as_str());
            println!("board       {}", v.compatible);
            println!("tags        {}", v.tags.join(", "));
            println!("version     {}", v.os_version.as_deref().unwrap_or("-"));
            println!("slot        {}", v.booted_slot.as_deref().unwrap_or("-"));
            println!("target      {}", v.target_version.as_deref().unwrap_or("-"));
            println!("pinned      {}", v.pinned_release.as_deref().unwrap_or("-"));
            if let Some(u) = &v.update {
                println!(
                    "update      {} {}{}{}",
                    u.version,
                    u.phase.as_str(),
                    u.progress.map(|p| format!(" {p}%")).unwrap_or_default(),
                    u.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            println!("health      {}", v.health.map_or("-", |h| h.as_str()));
            print_apps(v);
            println!(
                "seen        {} ({})",
                ago(v.last_seen_ms),
                if v.online { "online" } else { "offline" }
            );
            println!("history:");
            for h in &d.history {
                println!(
                    "  {:>8}  {:<18} {:<22} {}",
                    ago(Some(h.at_ms)),
                    h.actor,
                    h.action,
                    h.detail
                );
            }
            Ok(())
        }
        DevicesCmd::Accept { id } => status_change(c, &id, DeviceStatus::Accepted),
        DevicesCmd::Reject { id } => status_change(c, &id, DeviceStatus::Rejected),
        DevicesCmd::Revoke { id } => status_change(c, &id, DeviceStatus::Revoked),
        DevicesCmd::Tag { id, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                bail!("give --add TAG and/or --remove TAG");
            }
            let d = terminal_safe(c.send(&admin::tags(&id, &TagChange { add, remove }))?)?;
            println!("{}: tags {}", d.id, d.tags.join(", "));
            Ok(())
        }
        DevicesCmd::PinApps {
            id, app_release, ..
        } => {
            let d = terminal_safe(c.send(&admin::pin_apps(&id, &PinAppsRequest { app_release }))?)?;
            match &d.pinned_app_release {
                Some(v) => println!("{}: apps pinned to {v}", d.id),
                None => println!("{}: apps not pinned", d.id),
            }
            Ok(())
        }
        DevicesCmd::Pin { id, release, .. } => {
            let d = terminal_safe(c.send(&admin::pin(&id, &PinRequest { release }))?)?;
            match &d.pinned_release {
                Some(v) => println!("{}: pinned to {v}", d.id),
                None => println!("{}: not pinned", d.id),
            }
            Ok(())
        }
    }
}

/// The app set of `otter app-release upload`: a JSON set, or one compose file as app `name`.
pub fn read_app_set(file: &Path, name: Option<String>) -> Result<otter_proto::AppSetBody> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match name {
        Some(name) => Ok(otter_proto::AppSetBody {
            apps: vec![otter_proto::AppBody {
                name,
                compose: text,
                images: Default::default(),
            }],
        }),
        None => serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not an app set (JSON {{\"apps\": [{{\"name\", \"compose\", \"images\"}}]}}); for a compose file give --name",
                file.display()
            )
        }),
    }
}

fn app_release(c: &Client, cmd: AppReleaseCmd) -> Result<()> {
    match cmd {
        AppReleaseCmd::Upload {
            file,
            version,
            name,
            json,
        } => {
            let set = read_app_set(&file, name)?;
            let r = c.send(&admin::upload_app_release(&UploadAppRelease {
                version,
                set,
            }))?;
            if json {
                return print_json(&r);
            }
            let r = terminal_safe(r)?;
            println!(
                "app release {} ({}): apps {}; id {}",
                r.version,
                &r.digest[..16.min(r.digest.len())],
                r.apps.join(", "),
                r.id
            );
            Ok(())
        }
        AppReleaseCmd::Ls { json } => {
            let list = c.send(&admin::app_releases())?;
            if json {
                return print_json(&list);
            }
            let list = terminal_safe(list)?;
            println!(
                "{:<16}  {:<12}  {:<24}  {:<16}  UPLOADED",
                "ID", "VERSION", "APPS", "DIGEST"
            );
            for r in &list {
                println!(
                    "{:<16}  {:<12}  {:<24}  {:<16}  {} by {}",
                    r.id,
                    r.version,
                    r.apps.join(","),
                    &r.digest[..16.min(r.digest.len())],
                    ago(Some(r.uploaded_at_ms)),
                    r.uploaded_by
                );
            }
            Ok(())
        }
        AppReleaseCmd::Show { id, json } => {
            let r = c.send(&admin::app_release(&id))?;
            if json {
                return print_json(&r);
            }
            let r = terminal_safe(r)?;
            println!("app release {} (id {})", r.version, r.id);
            println!("digest  {}", r.digest);
            println!("by      {} {}", r.uploaded_by, ago(Some(r.uploaded_at_ms)));
            for i in &r.images {
                println!("image   {i}");
            }
            for a in r.set.iter().flat_map(|s| &s.apps) {
                println!("--- app {} ---\n{}", a.name, a.compose.trim_end());
                for (svc, img) in &a.images {
                    println!("  images.{svc} = {img}");
                }
            }
            Ok(())
        }
    }
}

fn status_change(c: &Client, id: &str, to: DeviceStatus) -> Result<()> {
    let d = terminal_safe(c.send(&admin::set_status(id, to))?)?;
    println!("{}: {}", d.id, d.status.as_str());
    Ok(())
}

fn release(c: &Client, cmd: ReleaseCmd) -> Result<()> {
    match cmd {
        ReleaseCmd::Upload { bundle, json } => {
            let r = c.upload_release(&bundle)?;
            if json {
                return print_json(&r);
            }
            let r = terminal_safe(r)?;
            println!(
                "release {} for {} ({:.1} MiB, signed by {}): id {}",
                r.version,
                r.compatible,
                r.size as f64 / 1048576.0,
                r.signer,
                r.id
            );
            Ok(())
        }
        ReleaseCmd::Ls { json } => {
            let list = c.send(&admin::releases())?;
            if json {
                return print_json(&list);
            }
            let list = terminal_safe(list)?;
            println!(
                "{:<16}  {:<12}  {:<16}  {:>10}  {:<16}  UPLOADED",
                "ID", "VERSION", "BOARD", "MIB", "SIGNER"
            );
            for r in &list {
                println!(
                    "{:<16}  {:<12}  {:<16}  {:>10.1}  {:<16}  {} by {}",
                    r.id,
                    r.version,
                    r.compatible,
                    r.size as f64 / 1048576.0,
                    r.signer,
                    ago(Some(r.uploaded_at_ms)),
                    r.uploaded_by
                );
            }
            Ok(())
        }
        ReleaseCmd::TrustKey { key } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let k = c.send(&admin::add_trusted_key(&AddTrustedKey { pem }))?;
            println!("trusted key {}", k.fingerprint);
            Ok(())
        }
    }
}

fn rollout(c: &Client, cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Create(a) => {
            let spec = CreateRollout {
                release: a.release.unwrap_or_default(),
                app_release: a.app_release,
                selector: Selector {
                    tags: a.tag,
                    devices: a.device,
                },
                phases: Some(
                    a.phases
                        .iter()
                        .map(|&percent| PhaseSpec {
                            percent,
                            min_soak_secs: a.soak,
                        })
                        .collect(),
                ),
                success_threshold: Some(a.success),
                failure_threshold: Some(a.failure),
                device_deadline_secs: Some(a.deadline),
            };
            let r = c.send(&admin::create_rollout(&spec))?;
            if a.json {
                return print_json(&r);
            }
            print_rollout(&r);
            Ok(())
        }
        RolloutCmd::Status { id, json } => match id {
            Some(id) => {
                let r = c.send(&admin::rollout(&id))?;
                if json {
                    return print_json(&r);
                }
                let r = terminal_safe(r)?;
                print_rollout(&r);
                println!("  events:");
                for e in &r.events {
                    println!(
                        "    {:>8}  {:<14} {:<18} {}",
                        ago(Some(e.at_ms)),
                        e.actor,
                        e.action,
                        e.detail
                    );
                }
                Ok(())
            }
            None => {
                let list = c.send(&admin::rollouts())?;
                if json {
                    return print_json(&list);
                }
                let list = terminal_safe(list)?;
                for r in &list {
                    print_rollout(r);
                }
                Ok(())
            }
        },
        RolloutCmd::Pause { id } => control(c, &id, RolloutAction::Pause),
        RolloutCmd::Resume { id } => control(c, &id, RolloutAction::Resume),
        RolloutCmd::Abort { id } => control(c, &id, RolloutAction::Abort),
    }
}

fn control(c: &Client, id: &str, action: RolloutAction) -> Result<()> {
    let r = terminal_safe(c.send(&admin::control_rollout(id, action))?)?;
    println!("rollout {}: {}", r.id, r.state.as_str());
    Ok(())
}

fn logs(c: &Client, device: &str, follow: bool, lines: i64, json: bool) -> Result<()> {
    let mut batch = c.send(&admin::device_logs(device, None, lines))?;
    let mut cursor = None;
    loop {
        let mut out = std::io::stdout().lock();
        for l in &batch {
            if json {
                writeln!(out, "{}", serde_json::to_string(l)?)?;
            } else {
                // Log lines come from the device: no escape sequences, no forged lines.
                writeln!(
                    out,
                    "{} {:<7} {}: {}",
                    l.ts_ms,
                    escape_controls(&l.level),
                    escape_controls(l.source.as_deref().unwrap_or("-")),
                    escape_controls(&l.message)
                )?;
            }
        }
        out.flush()?;
        drop(out);
        if let Some(l) = batch.last() {
            cursor = Some(l.id);
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
        batch = match cursor {
            Some(a) => c.send(&admin::device_logs(device, Some(a), 1000))?,
            None => c.send(&admin::device_logs(device, None, lines))?,
        };
    }
}
