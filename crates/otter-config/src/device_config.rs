//! The device config: `otter/device.toml` on the `otter-boot` partition.
//!
//! One file a user edits (or `otter configure` writes) to set up a device: hostname, users,
//! SSH, network, time, logging, udev rules, CA certificates, the fleet server and health
//! settings. `otterd` renders it into `/etc` at every boot (docs/device-config.md).
//!
//! Every key is optional; an empty file is a valid config (the image's defaults).

use crate::{ByteSize, ConfigError, Result, parse_toml};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Where the device config lives inside the boot partition.
pub const DEVICE_CONFIG_FAT_PATH: &str = "otter/device.toml";
/// Where the boot partition is mounted on a device.
pub const DEVICE_CONFIG_PATH: &str = "/boot/efi/otter/device.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device's host name (RFC 1123 label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// ISO 3166 country code for the Wi-Fi regulatory domain, e.g. `DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default, skip_serializing_if = "Ssh::is_default")]
    pub ssh: Ssh,
    #[serde(default, skip_serializing_if = "Network::is_default")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "Time::is_default")]
    pub time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// udev rules, each the text of one rules file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udev_rules: Vec<String>,
    /// Extra CA certificates (PEM) trusted by the device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<DeviceHealth>,
    /// Credentials for container registries the device pulls app images from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistryAuth>,
}

/// `[[registries]]`: a container registry's login, rendered to podman's auth file
/// (`/etc/containers/auth.json`, 0600).
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// The registry as image references name it: `registry.example.com`, `10.0.0.5:5000`
    /// (no scheme, no path).
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    // The password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A registry host as image references name it: DNS name or IPv4 address, optional `:port`.
fn check_registry_host(h: &str) -> std::result::Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if h.contains("://") || h.contains('/') {
        return Err(format!(
            "`{h}`: give the host as image references name it (registry.example.com or HOST:PORT), without scheme or path"
        ));
    }
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Err(format!("`{h}` is not a host name or address"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("`{h}`: port `{p}` must be 1-65535"));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash (`$6$…`, `$y$…`); `otter configure --password` makes one.
    /// No hash: the account has no password (key-only login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Member of the `sudo` group (sudo without a password when the user has none).
    #[serde(default)]
    pub sudo: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Allow password and root password login, and say so in a login banner.
    #[serde(default)]
    pub development_mode: bool,
    /// Keys allowed to log in as root (in addition to those baked into the image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_authorized_keys: Vec<String>,
}

impl Ssh {
    fn is_default(&self) -> bool {
        self == &Ssh::default()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wifi: Vec<Wifi>,
    /// Ethernet settings; none means DHCP on every Ethernet interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ethernet: Vec<Ethernet>,
    /// DNS servers used for every connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// HTTP(S) proxy for the system and the agent, e.g. `http://proxy.local:3128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
}

impl Network {
    fn is_default(&self) -> bool {
        self == &Network::default()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    pub ssid: String,
    /// WPA2/WPA3 passphrase (8–63 characters) or 64 hex digits; none for an open network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    #[serde(default)]
    pub hidden: bool,
    /// Higher is preferred when several networks are in range.
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ethernet {
    /// Interface name (`eth0`, `enp0s2`); none means every Ethernet interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Static addresses with prefix length (`192.168.1.20/24`); none means DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// NTP servers (host names or addresses); none means the image's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
}

impl Time {
    fn is_default(&self) -> bool {
        self == &Time::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStorage {
    /// The journal lives on the data partition and survives reboots.
    Persistent,
    /// The journal lives in RAM only.
    Volatile,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub storage: LogStorage,
    /// Most space the journal may use (RAM for volatile, disk for persistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// The fleet server, e.g. `https://otter.example.com`.
    pub url: String,
    /// Fleet enrollment key; none means the device waits as pending until accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_key: Option<String>,
    /// Commit an update even when the server cannot be reached after the reboot. Off by default:
    /// a trial boot must reach the server once, so a release that breaks networking rolls back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commit_offline: bool,
    /// When the device may reboot into an update it installed from the server, as local time
    /// `HH:MM-HH:MM` (may wrap midnight, e.g. `23:00-05:00`); none means right after install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<String>,
}

/// A daily time window `HH:MM-HH:MM` in minutes since midnight (`start`, `end`); it wraps
/// midnight when `end <= start`.
pub fn parse_time_window(s: &str) -> std::result::Result<(u32, u32), String> {
    let hm = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a window like `02:00-04:30`"))?;
    match (hm(a), hm(b)) {
        (Some(a), Some(b)) if a != b => Ok((a, b)),
        (Some(_), Some(_)) => Err(format!("`{s}`: start and end are the same")),
        _ => Err(format!(
            "`{s}` is not a window like `02:00-04:30` (24-hour HH:MM-HH:MM)"
        )),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceHealth {
    /// Overrides the image's health deadline (seconds after boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Extra units that must be active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
    /// Extra commands (run with `/bin/sh -c`) that must exit 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

impl DeviceConfig {
    /// Parse and validate `text` (the content of `path`, used in error messages).
    pub fn parse(path: &Path, text: &str) -> Result<DeviceConfig> {
        let c: DeviceConfig = parse_toml(path, text)?;
        c.validate(path)?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<DeviceConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The TOML text of this config (validated configs round-trip through it).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Check every value; the error names `path` and the key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(path, key, msg));
        if let Some(h) = &self.hostname
            && !is_hostname(h)
        {
            return bad(
                "hostname",
                format!(
                    "`{h}` is not a host name: use 1–63 letters, digits and inner `-`, like gateway-17"
                ),
            );
        }
        if let Some(tz) = &self.timezone {
            let ok = !tz.is_empty()
                && !tz.starts_with('/')
                && !tz.contains("..")
                && tz
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            if !ok {
                return bad(
                    "timezone",
                    format!("`{tz}` is not a time zone name like Europe/Berlin or UTC"),
                );
            }
        }
        if let Some(cc) = &self.country
            && !(cc.len() == 2 && cc.chars().all(|c| c.is_ascii_uppercase()) || cc == "00")
        {
            return bad(
                "country",
                format!("`{cc}` is not a two-letter ISO 3166 country code like DE or US"),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if !is_user_name(&u.name) {
                return bad(
                    &format!("{key}.name"),
                    format!(
                        "`{}` is not a user name: start with a-z, then a-z, 0-9 or `-`, at most 32 characters",
                        u.name
                    ),
                );
            }
            if RESERVED_USERS.contains(&u.name.as_str()) {
                return bad(
                    &format!("{key}.name"),
                    format!(
                        "`{}` is a system account or group; pick another name (root's keys go in ssh.root_authorized_keys)",
                        u.name
                    ),
                );
            }
            if !names.insert(u.name.clone()) {
                return bad(
                    &format!("{key}.name"),
                    format!("user `{}` is listed twice", u.name),
                );
            }
            if let Some(h) = &u.password_hash
                && !is_crypt_hash(h)
            {
                return bad(
                    &format!("{key}.password_hash"),
                    "is not a crypt(3) hash like $6$salt$hash or $y$…; make one with `otter configure --user NAME --password` (plain-text passwords are never stored)".into(),
                );
            }
            for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
                if let Err(m) = check_ssh_key(k) {
                    return bad(&format!("{key}.ssh_authorized_keys[{j}]"), m);
                }
            }
        }
        for (j, k) in self.ssh.root_authorized_keys.iter().enumerate() {
            if let Err(m) = check_ssh_key(k) {
                return bad(&format!("ssh.root_authorized_keys[{j}]"), m);
            }
        }
        let mut ssids = std::collections::BTreeSet::new();
        for (i, w) in self.network.wifi.iter().enumerate() {
            let key = format!("network.wifi[{i}]");
            if w.ssid.is_empty() || w.ssid.len() > 32 {
                return bad(
                    &format!("{key}.ssid"),
                    format!("`{}` must be 1 to 32 bytes long", w.ssid),
                );
            }
            if w.ssid.chars().any(|c| c.is_control()) {
                return bad(&format!("{key}.ssid"), "contains control characters".into());
            }
            if !ssids.insert(w.ssid.clone()) {
                return bad(
                    &format!("{key}.ssid"),
                    format!("network `{}` is listed twice", w.ssid),
                );
            }
            if let Some(psk) = &w.psk {
                let hex = psk.len() == 64 && psk.chars().all(|c| c.is_ascii_hexdigit());
                let pass = (8..=63).contains(&psk.len())
                    && psk.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
                if !hex && !pass {
                    return bad(
                        &format!("{key}.psk"),
                        "must be a passphrase of 8 to 63 printable ASCII characters or 64 hex digits (leave it out for an open network)".into(),
                    );
                }
            }
        }
        let mut ifaces = std::collections::BTreeSet::new();
        for (i, e) in self.network.ethernet.iter().enumerate() {
            let key = format!("network.ethernet[{i}]");
            if let Some(n) = &e.interface {
                let ok = !n.is_empty()
                    && n.len() <= 15
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return bad(
                        &format!("{key}.interface"),
                        format!("`{n}` is not an interface name like eth0 or enp0s2"),
                    );
                }
            }
            if !ifaces.insert(e.interface.clone()) {
                return bad(
                    &format!("{key}.interface"),
                    format!(
                        "{} is configured twice",
                        e.interface.as_deref().unwrap_or("the all-interfaces entry")
                    ),
                );
            }
            for (j, a) in e.addresses.iter().enumerate() {
                if let Err(m) = parse_cidr(a) {
                    return bad(&format!("{key}.addresses[{j}]"), m);
                }
            }
            if e.gateway.is_some() && e.addresses.is_empty() {
                return bad(
                    &format!("{key}.gateway"),
                    "a gateway needs static addresses; leave both out for DHCP".into(),
                );
            }
            if let Some(g) = e.gateway {
                let same_family = e
                    .addresses
                    .iter()
                    .any(|a| parse_cidr(a).is_ok_and(|(ip, _)| ip.is_ipv4() == g.is_ipv4()));
                if !same_family {
                    return bad(
                        &format!("{key}.gateway"),
                        format!(
                            "{g} is an {} gateway, but no address is {}",
                            if g.is_ipv4() { "IPv4" } else { "IPv6" },
                            if g.is_ipv4() { "IPv4" } else { "IPv6" }
                        ),
                    );
                }
            }
        }
        if let Some(p) = &self.network.proxy
            && let Err(m) = check_url(p, &["http", "https", "socks5"])
        {
            return bad("network.proxy", m);
        }
        for (i, h) in self.network.no_proxy.iter().enumerate() {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == ',') {
                return bad(
                    &format!("network.no_proxy[{i}]"),
                    format!("`{h}` is not a host name, domain or address"),
                );
            }
        }
        for (i, s) in self.time.ntp.iter().enumerate() {
            if !is_host(s) {
                return bad(
                    &format!("time.ntp[{i}]"),
                    format!("`{s}` is not a host name or address like pool.ntp.org"),
                );
            }
        }
        if let Some(l) = &self.logging
            && let Some(m) = l.max_size
            && m.0 < 1024 * 1024
        {
            return bad(
                "logging.max_size",
                format!("{} bytes is too small; use at least 1M", m.0),
            );
        }
        for (i, r) in self.udev_rules.iter().enumerate() {
            if r.trim().is_empty() {
                return bad(&format!("udev_rules[{i}]"), "is empty".into());
            }
            if r.contains('\0') {
                return bad(&format!("udev_rules[{i}]"), "contains a NUL byte".into());
            }
        }
        for (i, c) in self.ca_certificates.iter().enumerate() {
            let begins = c.matches("-----BEGIN CERTIFICATE-----").count();
            let ends = c.matches("-----END CERTIFICATE-----").count();
            if begins == 0 || begins != ends {
                return bad(
                    &format!("ca_certificates[{i}]"),
                    "is not a PEM certificate (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)".into(),
                );
            }
        }
        let mut hosts = std::collections::BTreeSet::new();
        for (i, r) in self.registries.iter().enumerate() {
            if let Err(m) = check_registry_host(&r.host) {
                return bad(&format!("registries[{i}].host"), m);
            }
            if !hosts.insert(r.host.to_ascii_lowercase()) {
                return bad(
                    &format!("registries[{i}].host"),
                    format!("`{}` is listed twice", r.host),
                );
            }
            if r.username.is_empty()
                || r.username.contains(':')
                || r.username.chars().any(char::is_control)
            {
                return bad(
                    &format!("registries[{i}].username"),
                    "must be non-empty, without `:` or control characters".into(),
                );
            }
            if r.password.is_empty() || r.password.chars().any(char::is_control) {
                return bad(
                    &format!("registries[{i}].password"),
                    "must be non-empty, without control characters".into(),
                );
            }
        }
        if let Some(s) = &self.server {
            if let Err(m) = check_url(&s.url, &["http", "https"]) {
                return bad("server.url", m);
            }
            if let Some(k) = &s.enrollment_key
                && (k.is_empty() || k.len() > 256 || k.chars().any(|c| !c.is_ascii_graphic()))
            {
                return bad(
                    "server.enrollment_key",
                    "must be 1 to 256 printable characters without spaces".into(),
                );
            }
            if let Some(w) = &s.reboot_window
                && let Err(m) = parse_time_window(w)
            {
                return bad("server.reboot_window", m);
            }
        }
        if let Some(h) = &self.health {
            if let Some(d) = h.deadline_secs
                && !(10..=86400).contains(&d)
            {
                return bad(
                    "health.deadline_secs",
                    format!("{d} must be between 10 and 86400 seconds"),
                );
            }
            for (i, u) in h.units.iter().enumerate() {
                let ok = u.contains('.')
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
                if !ok {
                    return bad(
                        &format!("health.units[{i}]"),
                        format!("`{u}` is not a systemd unit name like ssh.service"),
                    );
                }
            }
            for (i, c) in h.checks.iter().enumerate() {
                if c.trim().is_empty() {
                    return bad(&format!("health.checks[{i}]"), "is empty".into());
                }
            }
        }
        Ok(())
    }
}

/// Accounts and groups of the Debian base system a device user must not take over: each user
/// gets a group of its own name, so a user named like a system group (`sudo`, `adm`) would
/// replace that group. (The renderer also refuses any other account or group of the image
/// below uid/gid 1000.)
const RESERVED_USERS: &[&str] = &[
    // base-passwd users
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    // base-passwd groups
    "adm",
    "tty",
    "disk",
    "kmem",
    "dialout",
    "fax",
    "voice",
    "cdrom",
    "floppy",
    "tape",
    "sudo",
    "audio",
    "dip",
    "operator",
    "src",
    "shadow",
    "utmp",
    "video",
    "sasl",
    "plugdev",
    "staff",
    "users",
    "nogroup",
    // accounts and groups of the packages every Otter image has
    "systemd-journal",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "systemd-coredump",
    "input",
    "kvm",
    "render",
    "sgx",
    "netdev",
    "crontab",
    "messagebus",
    "polkitd",
    "tss",
    "sshd",
    "_ssh",
    "_apt",
];

pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `^[a-z][-a-z0-9]*$`, at most 32 characters (useradd's limit).
pub fn is_user_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A crypt(3) hash as /etc/shadow stores it: `$id$…` with no `:` or whitespace.
pub fn is_crypt_hash(s: &str) -> bool {
    let parts: Vec<&str> = s.split('$').collect();
    s.starts_with('$')
        && parts.len() >= 4
        && ["1", "5", "6", "y", "gy", "7", "2a", "2b", "2y"].contains(&parts[1])
        && !s.contains(':')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && parts.last().is_some_and(|p| !p.is_empty())
}

/// An OpenSSH public key line: `type base64 [comment]`.
pub fn check_ssh_key(k: &str) -> std::result::Result<(), String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if k.contains('\n') || k.contains('\r') {
        return Err("must be one line (one key per list entry)".into());
    }
    let mut fields = k.split_whitespace();
    let (Some(t), Some(b)) = (fields.next(), fields.next()) else {
        return Err(format!(
            "`{k}` is not an SSH public key line like `ssh-ed25519 AAAA… user@host`"
        ));
    };
    if !TYPES.contains(&t) {
        return Err(format!(
            "unknown key type `{t}` (expected one of {})",
            TYPES.join(", ")
        ));
    }
    let b64ok = b.len() >= 16
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    if !b64ok {
        return Err(format!("the key data of this {t} key is not base64"));
    }
    Ok(())
}

/// Parse `address/prefix`.
pub fn parse_cidr(s: &str) -> std::result::Result<(IpAddr, u8), String> {
    let msg = || format!("`{s}` is not an address with prefix length like 192.168.1.20/24");
    let (a, p) = s.split_once('/').ok_or_else(msg)?;
    let addr: IpAddr = a.parse().map_err(|_| msg())?;
    let prefix: u8 = p.parse().map_err(|_| msg())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!("`{s}`: prefix length must be 1 to {max}"));
    }
    Ok((addr, prefix))
}

/// A host name or IP address.
pub fn is_host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
        || (!s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-')
            })
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

fn check_url(u: &str, schemes: &[&str]) -> std::result::Result<(), String> {
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err(format!(
            "`{u}` is not a URL like {}://host:port",
            schemes[0]
        ));
    };
    if !schemes.contains(&scheme) {
        return Err(format!(
            "`{u}`: scheme must be one of {}",
            schemes.join(", ")
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(h) = host_port.strip_prefix('[') {
        match h.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("`{u}` has no valid host")),
            },
            None => return Err(format!("`{u}` has no valid host")),
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() || !(is_host(host) || host.parse::<IpAddr>().is_ok()) {
        return Err(format!("`{u}` has no valid host"));
    }
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!(
            "`{u}`: the port `{p}` is not a number from 1 to 65535"
        ));
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{u}` contains spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<DeviceConfig> {
        DeviceConfig::parse(Path::new("device.toml"), t)
    }

    const FULL: &str = r#"
hostname = "gateway-17"
timezone = "Europe/Berlin"
country = "DE"
udev_rules = ['SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", SYMLINK+="modem"']

[[users]]
name = "ops"
password_hash = "$6$salt$abcdefghijklmnop"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx ops@laptop"]
sudo = true

[ssh]
development_mode = false

[[network.wifi]]
ssid = "Factory"
psk = "correct horse"

[[network.ethernet]]
interface = "enp0s2"
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.2"

[network]
dns = ["10.0.2.3", "2001:4860:4860::8888"]

[time]
ntp = ["10.0.2.2", "pool.ntp.org"]

[logging]
storage = "persistent"
max_size = "64M"

[server]
url = "https://fleet.example.com:8443"
enrollment_key = "abc123"

[health]
deadline_secs = 120
checks = ["test -e /run/app.ok"]
"#;

    #[test]
    fn full_config_round_trips() {
        // [network] after [[network.wifi]] is not valid TOML; build the text the valid way.
        let text = FULL.replace(
            "\n[network]\ndns = [\"10.0.2.3\", \"2001:4860:4860::8888\"]\n",
            "\n",
        );
        let text = text.replace(
            "[[network.wifi]]",
            "[network]\ndns = [\"10.0.2.3\", \"2001:4860:4860::8888\"]\n\n[[network.wifi]]",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("gateway-17"));
        assert_eq!(c.users[0].name, "ops");
        assert_eq!(c.network.dns.len(), 2);
        assert_eq!(c.logging.as_ref().unwrap().storage, LogStorage::Persistent);
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert_eq!(parse("").unwrap(), DeviceConfig::default());
    }

    #[test]
    fn registries_parse_and_never_show_the_password() {
        let c = parse(
            "[[registries]]\nhost = \"10.0.0.5:5000\"\nusername = \"fleet\"\npassword = \"s3cret\"\n",
        )
        .unwrap();
        assert_eq!(c.registries[0].host, "10.0.0.5:5000");
        let dbg = format!("{c:?}");
        assert!(dbg.contains("fleet") && !dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("hostname = \"-bad\"", "hostname"),
            ("hostname = \"has space\"", "hostname"),
            ("timezone = \"../etc\"", "timezone"),
            ("country = \"de\"", "country"),
            ("[[users]]\nname = \"Ops\"", "users[0].name"),
            ("[[users]]\nname = \"root\"", "users[0].name"),
            (
                "[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"",
                "users[1].name",
            ),
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"hunter2\"",
                "users[0].password_hash",
            ),
            (
                "[[users]]\nname = \"a\"\nssh_authorized_keys = [\"ssh-foo AAAA\"]",
                "users[0].ssh_authorized_keys[0]",
            ),
            (
                "[ssh]\nroot_authorized_keys = [\"garbage\"]",
                "ssh.root_authorized_keys[0]",
            ),
            (
                "[[network.wifi]]\nssid = \"x\"\npsk = \"short\"",
                "network.wifi[0].psk",
            ),
            ("[[network.wifi]]\nssid = \"\"", "network.wifi[0].ssid"),
            (
                "[[network.ethernet]]\naddresses = [\"10.0.0.1\"]",
                "network.ethernet[0].addresses[0]",
            ),
            (
                "[[network.ethernet]]\ngateway = \"10.0.0.1\"",
                "network.ethernet[0].gateway",
            ),
            ("[network]\nproxy = \"proxy:3128\"", "network.proxy"),
            ("[time]\nntp = [\"bad host\"]", "time.ntp[0]"),
            (
                "[logging]\nstorage = \"volatile\"\nmax_size = \"1K\"",
                "logging.max_size",
            ),
            ("ca_certificates = [\"nope\"]", "ca_certificates[0]"),
            ("[server]\nurl = \"ftp://x\"", "server.url"),
            ("[health]\ndeadline_secs = 1", "health.deadline_secs"),
            (
                "[[registries]]\nhost = \"https://r.example.com\"\nusername = \"u\"\npassword = \"p\"",
                "registries[0].host",
            ),
            (
                "[[registries]]\nhost = \"r.example.com:99999\"\nusername = \"u\"\npassword = \"p\"",
                "registries[0].host",
            ),
            (
                "[[registries]]\nhost = \"r.example.com\"\nusername = \"a:b\"\npassword = \"p\"",
                "registries[0].username",
            ),
            (
                "[[registries]]\nhost = \"r.example.com\"\nusername = \"u\"\npassword = \"\"",
                "registries[0].password",
            ),
            (
                "[[registries]]\nhost = \"r.example.com\"\nusername = \"u\"\npassword = \"p\"\n[[registries]]\nhost = \"R.example.com\"\nusername = \"u\"\npassword = \"p\"",
                "registries[1].host",
            ),
            (
                "[[registries]]\nhost = \"r.example.com\"\nusername = \"u\"",
                "password",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("device.toml"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        let e = parse("hostnme = \"x\"").unwrap_err().to_string();
        assert!(e.contains("hostnme") && e.contains("device.toml"), "{e}");
        let e = parse("[logging]\nstorage = \"disk\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk"), "{e}");
        let e = parse("[network]\ndns = [\"not-an-ip\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns"), "{e}");
    }
    #[test]
    fn every_other_bad_value_names_its_key() {
        let long_name = "a".repeat(33);
        let long_ssid = "s".repeat(33);
        let long_key = "k".repeat(257);
        let cases: Vec<(String, &str)> = vec![
            ("hostname = \"\"".into(), "hostname"),
            (format!("hostname = \"{}\"", "h".repeat(64)), "hostname"),
            ("hostname = \"gw-\"".into(), "hostname"),
            ("timezone = \"/etc/localtime\"".into(), "timezone"),
            ("timezone = \"\"".into(), "timezone"),
            ("timezone = \"Europe/Ber lin\"".into(), "timezone"),
            ("country = \"DEU\"".into(), "country"),
            ("country = \"D1\"".into(), "country"),
            (format!("[[users]]\nname = \"{long_name}\""), "users[0].name"),
            ("[[users]]\nname = \"1ops\"".into(), "users[0].name"),
            ("[[users]]\nname = \"sshd\"".into(), "users[0].name"),
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"$6$salt$hash:x\"".into(),
                "users[0].password_hash",
            ),
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"$9$salt$hash\"".into(),
                "users[0].password_hash",
            ),
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"$6$salt$\"".into(),
                "users[0].password_hash",
            ),
            (
                "[[users]]\nname = \"a\"\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3Nza\\nssh-rsa AAAAB3\"]".into(),
                "users[0].ssh_authorized_keys[0]",
            ),
            (
                "[[users]]\nname = \"a\"\nssh_authorized_keys = [\"ssh-ed25519 not*base64*at*all\"]".into(),
                "users[0].ssh_authorized_keys[0]",
            ),
            (
                "[[users]]\nname = \"a\"\nssh_authorized_keys = [\"ssh-ed25519\"]".into(),
                "users[0].ssh_authorized_keys[0]",
            ),
            (format!("[[network.wifi]]\nssid = \"{long_ssid}\""), "network.wifi[0].ssid"),
            ("[[network.wifi]]\nssid = \"a\\u0007b\"".into(), "network.wifi[0].ssid"),
            (
                "[[network.wifi]]\nssid = \"a\"\n[[network.wifi]]\nssid = \"a\"".into(),
                "network.wifi[1].ssid",
            ),
            (
                format!("[[network.wifi]]\nssid = \"x\"\npsk = \"{}\"", "g".repeat(64)),
                "network.wifi[0].psk",
            ),
            (
                format!("[[network.wifi]]\nssid = \"x\"\npsk = \"{}\"", "p".repeat(64)),
                "network.wifi[0].psk",
            ),
            (
                "[[network.wifi]]\nssid = \"x\"\npsk = \"pässwörter\"".into(),
                "network.wifi[0].psk",
            ),
            (
                "[[network.ethernet]]\ninterface = \"eth 0\"".into(),
                "network.ethernet[0].interface",
            ),
            (
                "[[network.ethernet]]\ninterface = \"averyveryverylongname\"".into(),
                "network.ethernet[0].interface",
            ),
            (
                "[[network.ethernet]]\ninterface = \"eth0\"\n[[network.ethernet]]\ninterface = \"eth0\"".into(),
                "network.ethernet[1].interface",
            ),
            (
                "[[network.ethernet]]\n[[network.ethernet]]".into(),
                "network.ethernet[1].interface",
            ),
            (
                "[[network.ethernet]]\naddresses = [\"10.0.0.1/33\"]".into(),
                "network.ethernet[0].addresses[0]",
            ),
            (
                "[[network.ethernet]]\naddresses = [\"10.0.0.1/0\"]".into(),
                "network.ethernet[0].addresses[0]",
            ),
            (
                "[[network.ethernet]]\naddresses = [\"10.0.0/24\"]".into(),
                "network.ethernet[0].addresses[0]",
            ),
            ("[network]\nproxy = \"ftp://proxy:21\"".into(), "network.proxy"),
            ("[network]\nproxy = \"http://\"".into(), "network.proxy"),
            ("[network]\nno_proxy = [\"a,b\"]".into(), "network.no_proxy[0]"),
            ("[network]\nno_proxy = [\"\"]".into(), "network.no_proxy[0]"),
            ("[time]\nntp = [\"\"]".into(), "time.ntp[0]"),
            ("[time]\nntp = [\"-pool.ntp.org\"]".into(), "time.ntp[0]"),
            ("udev_rules = [\"  \"]".into(), "udev_rules[0]"),
            ("udev_rules = [\"a\\u0000b\"]".into(), "udev_rules[0]"),
            (
                "ca_certificates = [\"-----BEGIN CERTIFICATE-----\\nMIIB\"]".into(),
                "ca_certificates[0]",
            ),
            ("[server]\nurl = \"https://fleet example.com\"".into(), "server.url"),
            (
                "[server]\nurl = \"https://x\"\nreboot_window = \"25:00-04:00\"".into(),
                "server.reboot_window",
            ),
            (
                "[server]\nurl = \"https://x\"\nreboot_window = \"02:00\"".into(),
                "server.reboot_window",
            ),
            (
                "[server]\nurl = \"https://x\"\nreboot_window = \"02:00-02:00\"".into(),
                "server.reboot_window",
            ),
            ("[server]\nurl = \"https://\"".into(), "server.url"),
            (
                "[server]\nurl = \"https://x\"\nenrollment_key = \"has space\"".into(),
                "server.enrollment_key",
            ),
            (
                "[server]\nurl = \"https://x\"\nenrollment_key = \"\"".into(),
                "server.enrollment_key",
            ),
            (
                format!("[server]\nurl = \"https://x\"\nenrollment_key = \"{long_key}\""),
                "server.enrollment_key",
            ),
            ("[health]\ndeadline_secs = 86401".into(), "health.deadline_secs"),
            ("[health]\nunits = [\"ssh\"]".into(), "health.units[0]"),
            ("[health]\nunits = [\"a b.service\"]".into(), "health.units[0]"),
            ("[health]\nchecks = [\" \"]".into(), "health.checks[0]"),
        ];
        for (text, key) in &cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("device.toml"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn system_group_names_ports_and_gateway_families() {
        let cases: &[(&str, &str)] = &[
            // A user gets a group of its own name: these would replace a system group.
            ("[[users]]\nname = \"sudo\"", "users[0].name"),
            ("[[users]]\nname = \"adm\"", "users[0].name"),
            ("[[users]]\nname = \"users\"", "users[0].name"),
            ("[[users]]\nname = \"systemd-journal\"", "users[0].name"),
            ("[[users]]\nname = \"netdev\"", "users[0].name"),
            ("[network]\nproxy = \"http://proxy:abc\"", "network.proxy"),
            ("[network]\nproxy = \"http://proxy:0\"", "network.proxy"),
            ("[network]\nproxy = \"http://proxy:65536\"", "network.proxy"),
            ("[network]\nproxy = \"http://proxy:\"", "network.proxy"),
            ("[network]\nproxy = \"http://[fd00::1]x\"", "network.proxy"),
            ("[network]\nproxy = \"http://[fd00::1\"", "network.proxy"),
            (
                "[[network.ethernet]]\naddresses = [\"10.0.0.2/24\"]\ngateway = \"fd00::1\"",
                "network.ethernet[0].gateway",
            ),
            (
                "[[network.ethernet]]\naddresses = [\"fd00::2/64\"]\ngateway = \"10.0.0.1\"",
                "network.ethernet[0].gateway",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("device.toml"),
                "{text:?}: {e}"
            );
        }
        for ok in [
            "[[users]]\nname = \"ops\"",
            "[network]\nproxy = \"http://[fd00::1]\"",
            "[network]\nproxy = \"http://proxy.local:3128/\"",
            "[[network.ethernet]]\naddresses = [\"10.0.0.2/24\", \"fd00::2/64\"]\ngateway = \"fd00::1\"",
        ] {
            parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn edge_values_that_are_fine() {
        let ok = [
            "country = \"00\"",
            "timezone = \"UTC\"",
            "timezone = \"America/Argentina/Buenos_Aires\"",
            "hostname = \"a\"",
            "[[users]]\nname = \"a-1\"\npassword_hash = \"$y$j9T$salt$hash\"",
            "[[network.wifi]]\nssid = \"Café Wi-Fi\"\npsk = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
            "[[network.wifi]]\nssid = \"open\"\nhidden = true\npriority = -5",
            "[[network.ethernet]]\naddresses = [\"fd00::2/64\", \"10.0.0.2/8\"]\ngateway = \"fd00::1\"",
            "[network]\nproxy = \"socks5://user:pw@[fd00::1]:1080\"",
            "[time]\nntp = [\"10.0.2.2\", \"fd00::1\"]",
            "[logging]\nstorage = \"persistent\"\nmax_size = \"1M\"",
            "[server]\nurl = \"http://10.0.2.2:8080/otter\"",
            "[health]\ndeadline_secs = 10\nunits = [\"getty@tty1.service\"]",
        ];
        for text in ok {
            parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
    }
}
