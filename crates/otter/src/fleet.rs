//! Fleet commands against an `otter server`: login, devices, release, rollout, logs. Thin: they
//! call the admin API (docs/api.md) and print tables, or JSON with `--json`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use otter_proto::admin::{
    AppRelease, CreateEnrollmentKey, CreateRollout, Device, DeviceDetail, EnrollmentKey, PhaseSpec,
    Release, Rollout, RolloutKind, Selector, StoredLogEntry, UploadAppRelease, WhoAmI,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Store the server URL and an admin token for the other fleet commands.
    Login {
        /// e.g. http://127.0.0.1:8080
        url: String,
        /// The admin token (default: read from standard input).
        #[arg(long, env = "OTTER_TOKEN")]
        token: Option<String>,
    },
    /// Devices of the fleet.
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Releases (signed bundles) on the server.
    Release {
        #[command(subcommand)]
        cmd: ReleaseCmd,
    },
    /// App releases: versioned app sets (compose files, images pinned by digest) that
    /// devices apply without a reboot.
    AppRelease {
        #[command(subcommand)]
        cmd: AppReleaseCmd,
    },
    /// Phased rollouts of a release or an app release.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// Fleet enrollment keys: a device configured with one (`otter configure --enrollment-key`)
    /// is accepted at once.
    EnrollmentKey {
        #[command(subcommand)]
        cmd: EnrollmentKeyCmd,
    },
    /// A device's logs.
    Logs {
        device: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DevicesCmd {
    /// List devices.
    Ls {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// The device's compatible string.
        #[arg(long)]
        board: Option<String>,
        /// Running OS version.
        #[arg(long)]
        version: Option<String>,
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// One device: state and history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Accept a pending (or rejected, or revoked) device.
    Accept { id: String },
    /// Reject a device (its tokens stop working).
    Reject { id: String },
    /// Revoke an accepted device's token (it must be accepted again).
    Revoke { id: String },
    /// Add or remove tags.
    Tag {
        id: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Pin a device to a release (version or id), overriding rollouts; --unpin removes the pin.
    Pin {
        id: String,
        #[arg(required_unless_present = "unpin")]
        release: Option<String>,
        #[arg(long, conflicts_with = "release")]
        unpin: bool,
    },
    /// Pin a device's apps to an app release (version or id), overriding app rollouts;
    /// --unpin removes the pin.
    PinApps {
        id: String,
        #[arg(required_unless_present = "unpin")]
        app_release: Option<String>,
        #[arg(long, conflicts_with = "app_release")]
        unpin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppReleaseCmd {
    /// Upload an app set (JSON: {"apps": [{"name", "compose", "images"}]}), or one compose
    /// file as app NAME (--name), as app release VERSION. Every image must be pinned by
    /// digest (NAME@sha256:…); the server checks the compose files.
    Upload {
        file: PathBuf,
        #[arg(long)]
        version: String,
        /// FILE is a compose file: the app set has this one app.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List app releases.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One app release, with its set.
    Show {
        /// Version or id.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnrollmentKeyCmd {
    /// Create a key; its secret is printed once (the server keeps only a hash).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List keys (without secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: devices can no longer enroll with it (enrolled ones keep their tokens).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Upload a signed bundle; the server checks it against the fleet's trusted keys.
    Upload {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List releases.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Trust a release signing key (.pub) on the server.
    TrustKey { key: PathBuf },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Release version or id.
    #[arg(required_unless_present = "app_release")]
    release: Option<String>,
    /// Roll out an app release (version or id) instead of an OS release.
    #[arg(long, conflicts_with = "release")]
    app_release: Option<String>,
    /// Only devices with this tag (repeat: all of them).
    #[arg(long)]
    tag: Vec<String>,
    /// Only these devices (repeat).
    #[arg(long)]
    device: Vec<String>,
    /// Cumulative percentages of the phases.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    phases: Vec<f64>,
    /// Minimum time each phase lasts (e.g. 600, 30s, 10m, 2h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    soak: u64,
    /// Advance when this share of the devices so far succeeded.
    #[arg(long, default_value_t = 0.95)]
    success: f64,
    /// Pause when this share of the devices so far failed.
    #[arg(long, default_value_t = 0.05)]
    failure: f64,
    /// A device silent this long after being targeted counts as failed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    deadline: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// Start a phased rollout.
    Create(CreateArgs),
    /// A rollout's phases, failures and events; without an id, all rollouts.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
}

/// `600`, `30s`, `10m`, `2h`, `1d` → seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?}: use seconds or a number with s, m, h or d"))
}

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

struct Client {
    url: String,
    token: String,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .build()
}

impl Client {
    fn load() -> Result<Client> {
        if let (Ok(url), Ok(token)) = (std::env::var("OTTER_SERVER"), std::env::var("OTTER_TOKEN"))
        {
            return Ok(Client {
                url: url.trim_end_matches('/').to_owned(),
                token,
                agent: agent(),
            });
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
        Ok(Client {
            url: l.url,
            token: l.token,
            agent: agent(),
        })
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<T> {
        match r {
            Ok(resp) => {
                let text = resp
                    .into_string()
                    .with_context(|| format!("{what}: reading the answer"))?;
                let text = if text.is_empty() { "null" } else { &text };
                serde_json::from_str(text)
                    .with_context(|| format!("{what}: unexpected answer from {}", self.url))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<otter_proto::ApiError>(&text) {
                    Ok(e) => bail!("{what}: {} ({code} {})", e.message, e.error),
                    Err(_) => bail!("{what}: HTTP {code}: {text}"),
                }
            }
            Err(e) => bail!("{what}: cannot reach {}: {e}", self.url),
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.finish(&format!("GET {path}"), self.req("GET", path).call())
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.finish(
            &format!("POST {path}"),
            self.req("POST", path).send_json(body),
        )
    }
}

fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(cmd: FleetCmd) -> Result<()> {
    match cmd {
        FleetCmd::Login { url, token } => login(&url, token),
        FleetCmd::Devices { cmd } => devices(&Client::load()?, cmd),
        FleetCmd::Release { cmd } => release(&Client::load()?, cmd),
        FleetCmd::AppRelease { cmd } => app_release(&Client::load()?, cmd),
        FleetCmd::Rollout { cmd } => rollout(&Client::load()?, cmd),
        FleetCmd::EnrollmentKey { cmd } => enrollment_keys(&Client::load()?, cmd),
        FleetCmd::Logs {
            device,
            follow,
            lines,
            json,
        } => logs(&Client::load()?, &device, follow, lines, json),
    }
}

fn enrollment_keys(c: &Client, cmd: EnrollmentKeyCmd) -> Result<()> {
    match cmd {
        EnrollmentKeyCmd::Create { name, json } => {
            let k: EnrollmentKey = c.post(
                "/api/v1/admin/enrollment-keys",
                &CreateEnrollmentKey { name: name.clone() },
            )?;
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
            let keys: Vec<EnrollmentKey> = c.get("/api/v1/admin/enrollment-keys")?;
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
            let _: serde_json::Value = c.post(
                &format!("/api/v1/admin/enrollment-keys/{}/revoke", urlencode(&id)),
                &serde_json::json!({}),
            )?;
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
    let c = Client {
        url: url.trim_end_matches('/').to_owned(),
        token,
        agent: agent(),
    };
    let who: WhoAmI = c.get("/api/v1/admin/whoami")?;
    let p = login_path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(
        &p,
        &serde_json::to_vec_pretty(&Login {
            url: c.url.clone(),
            token: c.token.clone(),
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

fn device_line(d: &Device) {
    let update = d
        .update
        .as_ref()
        .map(|u| match u.progress {
            Some(p) => format!("{} {} {p}%", u.version, u.phase.as_str()),
            None => format!("{} {}", u.version, u.phase.as_str()),
        })
        .unwrap_or_default();
    println!(
        "{:<16}  {:<16}  {:<9}  {:<24}  {:<10}  {:<10}  {:<8}  {}",
        d.id,
        d.name.as_deref().unwrap_or("-"),
        d.status.as_str(),
        d.compatible,
        d.os_version.as_deref().unwrap_or("-"),
        d.target_version.as_deref().unwrap_or("-"),
        if d.online { "online" } else { "offline" },
        update
    );
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
            let mut q = vec!["limit=100000".to_owned()];
            for (k, v) in [
                ("status", status),
                ("tag", tag),
                ("compatible", board),
                ("version", version),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", urlencode(&v)));
                }
            }
            if online {
                q.push("online=true".into());
            }
            if offline {
                q.push("online=false".into());
            }
            let list: Vec<Device> = c.get(&format!("/api/v1/admin/devices?{}", q.join("&")))?;
            if json {
                return print_json(&list);
            }
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
            let d: DeviceDetail = c.get(&format!("/api/v1/admin/devices/{}", urlencode(&id)))?;
            if json {
                return print_json(&d);
            }
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
        DevicesCmd::Accept { id } => status_change(c, &id, "accept"),
        DevicesCmd::Reject { id } => status_change(c, &id, "reject"),
        DevicesCmd::Revoke { id } => status_change(c, &id, "revoke"),
        DevicesCmd::Tag { id, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                bail!("give --add TAG and/or --remove TAG");
            }
            let d: Device = c.post(
                &format!("/api/v1/admin/devices/{}/tags", urlencode(&id)),
                &otter_proto::admin::TagChange { add, remove },
            )?;
            println!("{}: tags {}", d.id, d.tags.join(", "));
            Ok(())
        }
        DevicesCmd::PinApps {
            id, app_release, ..
        } => {
            let d: Device = c.post(
                &format!("/api/v1/admin/devices/{}/pin-apps", urlencode(&id)),
                &otter_proto::admin::PinAppsRequest { app_release },
            )?;
            match &d.pinned_app_release {
                Some(v) => println!("{}: apps pinned to {v}", d.id),
                None => println!("{}: apps not pinned", d.id),
            }
            Ok(())
        }
        DevicesCmd::Pin { id, release, .. } => {
            let d: Device = c.post(
                &format!("/api/v1/admin/devices/{}/pin", urlencode(&id)),
                &otter_proto::admin::PinRequest { release },
            )?;
            match &d.pinned_release {
                Some(v) => println!("{}: pinned to {v}", d.id),
                None => println!("{}: not pinned", d.id),
            }
            Ok(())
        }
    }
}

/// The apps part of `otter devices show`.
fn print_apps(v: &Device) {
    println!(
        "apps target {}",
        v.target_app_version.as_deref().unwrap_or("-")
    );
    if let Some(p) = &v.pinned_app_release {
        println!("apps pin    {p}");
    }
    let Some(a) = &v.apps else {
        println!("apps        -");
        return;
    };
    println!(
        "apps        {}{}",
        a.source,
        a.version
            .as_ref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    if let Some(l) = &a.last_apply {
        println!(
            "apps update {} {}{}{}",
            l.version,
            l.phase.as_str(),
            l.progress
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            l.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    if !a.services.is_empty() {
        println!(
            "  {:<24} {:<10} {:<10} {:>8}  IMAGE",
            "APP.SERVICE", "STATE", "HEALTH", "RESTARTS"
        );
        for s in &a.services {
            println!(
                "  {:<24} {:<10} {:<10} {:>8}  {}",
                format!("{}.{}", s.app, s.service),
                s.state,
                s.health,
                s.restarts,
                s.image
            );
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
            let r: AppRelease = c.post(
                "/api/v1/admin/app-releases",
                &UploadAppRelease { version, set },
            )?;
            if json {
                return print_json(&r);
            }
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
            let list: Vec<AppRelease> = c.get("/api/v1/admin/app-releases")?;
            if json {
                return print_json(&list);
            }
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
            let r: AppRelease = c.get(&format!("/api/v1/admin/app-releases/{}", urlencode(&id)))?;
            if json {
                return print_json(&r);
            }
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

fn status_change(c: &Client, id: &str, action: &str) -> Result<()> {
    let d: Device = c.post(
        &format!("/api/v1/admin/devices/{}/{action}", urlencode(id)),
        &serde_json::json!({}),
    )?;
    println!("{}: {}", d.id, d.status.as_str());
    Ok(())
}

fn release(c: &Client, cmd: ReleaseCmd) -> Result<()> {
    match cmd {
        ReleaseCmd::Upload { bundle, json } => {
            let f = std::fs::File::open(&bundle)
                .with_context(|| format!("opening {}", bundle.display()))?;
            let len = f.metadata()?.len();
            let r: Release = c.finish(
                &format!("uploading {}", bundle.display()),
                c.req("POST", "/api/v1/admin/releases")
                    .set("Content-Type", "application/octet-stream")
                    .set("Content-Length", &len.to_string())
                    .send(f),
            )?;
            if json {
                return print_json(&r);
            }
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
            let list: Vec<Release> = c.get("/api/v1/admin/releases")?;
            if json {
                return print_json(&list);
            }
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
            let k: otter_proto::admin::TrustedKey = c.post(
                "/api/v1/admin/keys",
                &otter_proto::admin::AddTrustedKey { pem },
            )?;
            println!("trusted key {}", k.fingerprint);
            Ok(())
        }
    }
}

fn print_rollout(r: &Rollout) {
    match r.kind {
        RolloutKind::Os => println!(
            "rollout {}: release {} ({}) for {}, {} device(s), {}",
            r.id,
            r.version,
            r.release_id,
            r.compatible,
            r.total_devices,
            r.state.as_str()
        ),
        RolloutKind::Apps => println!(
            "rollout {}: app release {} ({}), {} device(s), {}",
            r.id,
            r.version,
            r.release_id,
            r.total_devices,
            r.state.as_str()
        ),
    }
    if let Some(reason) = &r.reason {
        println!("  {reason}");
    }
    for (i, p) in r.phases.iter().enumerate() {
        let mark = if i == r.phase { ">" } else { " " };
        println!(
            " {mark} phase {} {:>5}%  {:>6} device(s)  {:>6} succeeded  {:>6} failed  {}",
            i + 1,
            p.percent,
            p.devices,
            p.succeeded,
            p.failed,
            p.started_at_ms
                .map(|t| format!("started {}", ago(Some(t))))
                .unwrap_or_else(|| "not started".into())
        );
    }
    if !r.failures.is_empty() {
        println!("  failures:");
        for f in r.failures.iter().take(20) {
            println!("    {}  {}", f.device_id, f.reason);
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
            let r: Rollout = c.post("/api/v1/admin/rollouts", &spec)?;
            if a.json {
                return print_json(&r);
            }
            print_rollout(&r);
            Ok(())
        }
        RolloutCmd::Status { id, json } => match id {
            Some(id) => {
                let r: Rollout = c.get(&format!("/api/v1/admin/rollouts/{}", urlencode(&id)))?;
                if json {
                    return print_json(&r);
                }
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
                let list: Vec<Rollout> = c.get("/api/v1/admin/rollouts")?;
                if json {
                    return print_json(&list);
                }
                for r in &list {
                    print_rollout(r);
                }
                Ok(())
            }
        },
        RolloutCmd::Pause { id } => control(c, &id, "pause"),
        RolloutCmd::Resume { id } => control(c, &id, "resume"),
        RolloutCmd::Abort { id } => control(c, &id, "abort"),
    }
}

fn control(c: &Client, id: &str, action: &str) -> Result<()> {
    let r: Rollout = c.post(
        &format!("/api/v1/admin/rollouts/{}/{action}", urlencode(id)),
        &serde_json::json!({}),
    )?;
    println!("rollout {}: {}", r.id, r.state.as_str());
    Ok(())
}

fn logs(c: &Client, device: &str, follow: bool, lines: i64, json: bool) -> Result<()> {
    let base = format!("/api/v1/admin/devices/{}/logs", urlencode(device));
    let mut batch: Vec<StoredLogEntry> = c.get(&format!("{base}?limit={lines}"))?;
    let mut cursor = None;
    loop {
        let mut out = std::io::stdout().lock();
        for l in &batch {
            if json {
                writeln!(out, "{}", serde_json::to_string(l)?)?;
            } else {
                writeln!(
                    out,
                    "{} {:<7} {}: {}",
                    l.ts_ms,
                    l.level,
                    l.source.as_deref().unwrap_or("-"),
                    l.message
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
            Some(a) => c.get(&format!("{base}?after={a}&limit=1000"))?,
            None => c.get(&format!("{base}?limit={lines}"))?,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600"), Ok(600));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
