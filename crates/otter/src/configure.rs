//! `otter configure`: show or edit the device config (`otter/device.toml`) inside an Otter
//! disk image without mounting it, or a device.toml file directly. Argument handling and
//! output; the edits are in `otter_config::edit`, the image access in `otter_image::bootpart`.

use anyhow::{Context, Result, bail};
use otter_config::DeviceConfig;
use otter_config::device_config::{DEVICE_CONFIG_FAT_PATH, LogStorage, Logging, Server};
use otter_config::edit;
use otter_image::bootpart::BootPartition;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ConfigureArgs {
    /// The Otter disk image (.img), or a device.toml file (e.g. on a mounted boot partition).
    pub target: PathBuf,
    /// Print the config (after the edits, if any) as TOML.
    #[arg(long)]
    pub show: bool,
    /// With --show: print JSON instead.
    #[arg(long, requires = "show")]
    pub json: bool,
    /// Validate and print what would change, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start from an empty config instead of the current one (e.g. to replace a broken file).
    #[arg(long)]
    pub reset: bool,
    /// A device.toml to merge in (its keys win; users, Wi-Fi networks and Ethernet interfaces
    /// merge by name).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Import a balenaOS config.json (keys without an Otter equivalent are listed).
    #[arg(long, value_name = "CONFIG_JSON")]
    pub from_balena: Option<PathBuf>,
    /// Import a ReswarmOS device-config.ini (keys without an Otter equivalent are listed).
    #[arg(long, value_name = "DEVICE_CONFIG_INI")]
    pub from_reswarm: Option<PathBuf>,
    /// The device's host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// IANA time zone, e.g. Europe/Berlin.
    #[arg(long)]
    pub timezone: Option<String>,
    /// Two-letter country code (Wi-Fi regulatory domain).
    #[arg(long)]
    pub country: Option<String>,
    /// A Wi-Fi network: SSID:PSK, or SSID alone for an open one (repeatable).
    #[arg(long, value_name = "SSID[:PSK]")]
    pub wifi: Vec<String>,
    /// Static Ethernet (repeatable); IFACE `*` means every interface.
    #[arg(long = "static", value_name = "IFACE=ADDR/PREFIX[,GATEWAY]")]
    pub static_ip: Vec<String>,
    /// DHCP on this Ethernet interface (drops its static settings; repeatable).
    #[arg(long, value_name = "IFACE")]
    pub dhcp: Vec<String>,
    /// DNS servers (replace the list; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "IP")]
    pub dns: Vec<String>,
    /// NTP servers (replace the list; comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "HOST")]
    pub ntp: Vec<String>,
    /// SSH public key file(s) (one key a line): for --user, else for root (repeatable).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Vec<PathBuf>,
    /// The user that --password, --sudo and --ssh-key apply to (added when missing).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Ask for the user's password (twice, without echo) and store its SHA-512 crypt hash.
    #[arg(long, requires = "user")]
    pub password: bool,
    /// Read the user's password from the first line of standard input (scripts).
    #[arg(long, requires = "user", conflicts_with = "password")]
    pub password_stdin: bool,
    /// Make the user a member of the sudo group.
    #[arg(long, requires = "user")]
    pub sudo: bool,
    /// The fleet server URL.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The fleet enrollment key (needs a server, from --server or the config).
    #[arg(long, value_name = "KEY")]
    pub enrollment_key: Option<String>,
    /// Keep the journal on the data partition across reboots.
    #[arg(long)]
    pub persistent_logs: bool,
    /// Keep the journal in RAM only.
    #[arg(long, conflicts_with = "persistent_logs")]
    pub volatile_logs: bool,
    /// Allow password and root password SSH logins (shown in a login banner).
    #[arg(long)]
    pub development_mode: bool,
    /// Remove a key (dotted, like network.proxy or users[1]); repeatable, applied before --set.
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,
    /// Set a key: dotted (logging.storage=volatile, network.wifi[0].hidden=true), the value
    /// TOML (`'["1.1.1.1"]'`, 42, true) or else a string; repeatable, applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigureArgs {
    fn has_edits(&self) -> bool {
        self.reset
            || self.from.is_some()
            || self.from_balena.is_some()
            || self.from_reswarm.is_some()
            || self.hostname.is_some()
            || self.timezone.is_some()
            || self.country.is_some()
            || !self.wifi.is_empty()
            || !self.static_ip.is_empty()
            || !self.dhcp.is_empty()
            || !self.dns.is_empty()
            || !self.ntp.is_empty()
            || !self.ssh_key.is_empty()
            || self.user.is_some()
            || self.server.is_some()
            || self.enrollment_key.is_some()
            || self.persistent_logs
            || self.volatile_logs
            || self.development_mode
            || !self.unset.is_empty()
            || !self.set.is_empty()
    }
}

/// A balena `config.json` from a board of another architecture than the image (a
/// `raspberrypi4-64` config into a qemu-x86_64 image) is likely a mistake: say so, import anyway
/// (the settings themselves do not depend on the board).
fn warn_other_board(target: &Path, config: &Path, text: &str) {
    use otter_config::import::{balena_device_arch, balena_device_type};
    let Some(device_type) = balena_device_type(text) else {
        return;
    };
    let Some(from) = balena_device_arch(&device_type) else {
        return;
    };
    let Ok(Some(image)) = otter_image::disk::root_arch(target) else {
        return;
    };
    if from != image {
        eprintln!(
            "otter configure: warning: {} is from a {device_type} ({from}) device, but {} is an {image} image; check that you configure the image for that board",
            config.display(),
            target.display()
        );
    }
}

/// Where the config lives: inside an image's boot partition, or a plain file.
enum Target {
    Image(BootPartition),
    File(PathBuf),
}

impl Target {
    fn open(path: &Path) -> Result<Target> {
        if path.extension().is_some_and(|e| e == "toml") {
            return Ok(Target::File(path.to_path_buf()));
        }
        Ok(Target::Image(BootPartition::open(path)?))
    }

    /// How errors name the config: `disk.img:otter/device.toml` or the file.
    fn label(&self) -> PathBuf {
        match self {
            Target::Image(b) => {
                PathBuf::from(format!("{}:{DEVICE_CONFIG_FAT_PATH}", b.image().display()))
            }
            Target::File(p) => p.clone(),
        }
    }

    fn read(&self) -> Result<Option<String>> {
        let bytes = match self {
            Target::Image(b) => b.read_file(DEVICE_CONFIG_FAT_PATH)?,
            Target::File(p) => match std::fs::read(p) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            },
        };
        bytes
            .map(|b| {
                String::from_utf8(b)
                    .with_context(|| format!("{} is not UTF-8 text", self.label().display()))
            })
            .transpose()
    }

    fn write(&self, text: &str) -> Result<()> {
        match self {
            Target::Image(b) => Ok(b.write_file(DEVICE_CONFIG_FAT_PATH, text.as_bytes())?),
            Target::File(p) => write_file_replacing(p, text),
        }
    }
}

/// Write `path` through a temporary file renamed over it, so it is always complete.
fn write_file_replacing(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

const HEADER: &str = "# Otter device config, written by `otter configure`. Every key is described in\n\
# docs/device-config.md; edit with `otter configure IMAGE --set key=value` or by hand.\n\n";

pub fn run(a: ConfigureArgs) -> Result<()> {
    let target = Target::open(&a.target)?;
    let label = target.label();
    let current_text = target.read()?;
    // The current file is parsed without checking values, so a bad value can be fixed here.
    let current: DeviceConfig = match &current_text {
        None => DeviceConfig::default(),
        Some(t) => toml_config(t).with_context(|| {
            format!(
                "{}: the current config cannot be read; fix it with --set/--unset, or replace it with --reset",
                label.display()
            )
        })?,
    };
    let edits = a.has_edits();
    let new = if edits {
        apply(
            &a,
            if a.reset {
                DeviceConfig::default()
            } else {
                current.clone()
            },
        )?
    } else {
        current.clone()
    };
    new.validate(&label)
        .map_err(|e| anyhow::anyhow!("{e} (nothing was written)"))?;

    let changes = edit::diff(&current, &new);
    // With --show, stdout carries the config; the summary goes to stderr.
    let mut summary: Box<dyn Write> = if a.show {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    if edits {
        let verb = if a.dry_run { "would change" } else { "changed" };
        if changes.is_empty() {
            writeln!(summary, "{}: no changes", label.display())?;
        } else {
            writeln!(
                summary,
                "{}: {verb} {} key(s):",
                label.display(),
                changes.len()
            )?;
            for c in &changes {
                writeln!(summary, "  {c}")?;
            }
        }
        if !changes.is_empty() && !a.dry_run {
            target.write(&format!("{HEADER}{}", new.to_toml()))?;
        }
    }
    if a.show {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&new)?);
        } else if new == DeviceConfig::default() {
            println!("# empty: the image's defaults");
        } else {
            print!("{}", new.to_toml());
        }
    } else if !edits {
        bail!(
            "nothing to do: pass --show to print the config, or edits like --hostname, --wifi, --set KEY=VALUE (see otter configure --help)"
        );
    }
    Ok(())
}

fn toml_config(text: &str) -> Result<DeviceConfig> {
    // Types and key names only; values are checked after the edits.
    let table = edit::parse_table(text).map_err(anyhow::Error::msg)?;
    edit::from_table(table).map_err(anyhow::Error::msg)
}

fn apply(a: &ConfigureArgs, mut c: DeviceConfig) -> Result<DeviceConfig> {
    if let Some(from) = &a.from {
        let overlay = edit::load_overlay(from)?;
        c = edit::merge(&c, overlay)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("merging {}", from.display()))?;
    }
    type Importer =
        fn(&Path, &str) -> otter_config::Result<(DeviceConfig, Vec<otter_config::import::Dropped>)>;
    let importers: [(&Option<PathBuf>, Importer); 2] = [
        (&a.from_balena, otter_config::import::from_balena),
        (&a.from_reswarm, otter_config::import::from_reswarm),
    ];
    for (path, import) in importers {
        let Some(path) = path else { continue };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (imported, dropped) = import(path, &text)?;
        if a.from_balena.as_ref() == Some(path) {
            warn_other_board(&a.target, path, &text);
        }
        c = edit::merge(&c, edit::to_table(&imported))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("merging {}", path.display()))?;
        for d in &dropped {
            if d.kept {
                eprintln!("otter configure: note on {}: {d}", path.display());
            } else {
                eprintln!("otter configure: not imported from {}: {d}", path.display());
            }
        }
    }
    if let Some(h) = &a.hostname {
        c.hostname = Some(h.clone());
    }
    if let Some(t) = &a.timezone {
        c.timezone = Some(t.clone());
    }
    if let Some(cc) = &a.country {
        c.country = Some(cc.clone());
    }
    for w in &a.wifi {
        edit::upsert_wifi(&mut c, w).map_err(anyhow::Error::msg)?;
    }
    for s in &a.static_ip {
        edit::upsert_static(&mut c, s).map_err(anyhow::Error::msg)?;
    }
    for d in &a.dhcp {
        edit::set_dhcp(&mut c, d);
    }
    if !a.dns.is_empty() {
        c.network.dns = a
            .dns
            .iter()
            .map(|d| {
                d.trim()
                    .parse()
                    .with_context(|| format!("--dns `{d}` is not an IP address"))
            })
            .collect::<Result<_>>()?;
    }
    if !a.ntp.is_empty() {
        c.time.ntp = a.ntp.iter().map(|s| s.trim().to_string()).collect();
    }
    let mut keys = Vec::new();
    for f in &a.ssh_key {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --ssh-key {}", f.display()))?;
        keys.extend(
            edit::parse_authorized_keys(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--ssh-key {}", f.display()))?,
        );
    }
    match &a.user {
        Some(name) => {
            let password = if a.password {
                Some(read_password_tty(name)?)
            } else if a.password_stdin {
                Some(read_password_stdin()?)
            } else {
                None
            };
            let hash = password
                .map(|p| otter_config::password::hash_password(&p).map_err(anyhow::Error::msg))
                .transpose()?;
            let u = edit::user_mut(&mut c, name);
            if let Some(h) = hash {
                u.password_hash = Some(h);
            }
            if a.sudo {
                u.sudo = true;
            }
            edit::add_keys(&mut u.ssh_authorized_keys, keys);
        }
        None => edit::add_keys(&mut c.ssh.root_authorized_keys, keys),
    }
    if let Some(url) = &a.server {
        match &mut c.server {
            Some(s) => s.url = url.clone(),
            None => {
                c.server = Some(Server {
                    url: url.clone(),
                    enrollment_key: None,
                    ..Default::default()
                })
            }
        }
    }
    if let Some(k) = &a.enrollment_key {
        match &mut c.server {
            Some(s) => s.enrollment_key = Some(k.clone()),
            None => bail!("--enrollment-key needs a server: add --server URL"),
        }
    }
    if a.persistent_logs || a.volatile_logs {
        let storage = if a.persistent_logs {
            LogStorage::Persistent
        } else {
            LogStorage::Volatile
        };
        match &mut c.logging {
            Some(l) => l.storage = storage,
            None => {
                c.logging = Some(Logging {
                    storage,
                    max_size: None,
                })
            }
        }
    }
    if a.development_mode {
        c.ssh.development_mode = true;
    }
    for k in &a.unset {
        c = edit::unset_key(&c, k)
            .map_err(anyhow::Error::msg)
            .context("--unset")?;
    }
    for s in &a.set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set `{s}`: write it as KEY=VALUE, like logging.storage=volatile");
        };
        c = edit::set_key(&c, k.trim(), v)
            .map_err(anyhow::Error::msg)
            .context("--set")?;
    }
    Ok(c)
}

fn read_password_tty(user: &str) -> Result<String> {
    let first = rpassword::prompt_password(format!("Password for {user}: "))
        .context("reading the password from the terminal (use --password-stdin without one)")?;
    let second = rpassword::prompt_password(format!("Password for {user} (again): "))
        .context("reading the password from the terminal")?;
    if first != second {
        bail!("the two passwords differ; nothing was written");
    }
    Ok(first)
}

fn read_password_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let p = line.strip_suffix('\n').unwrap_or(&line);
    Ok(p.strip_suffix('\r').unwrap_or(p).to_string())
}
