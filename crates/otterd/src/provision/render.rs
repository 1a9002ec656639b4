//! Turn a [`DeviceConfig`] into the files it puts in `/etc`.
//!
//! Pure: reads nothing but what it is given (the image's own `/etc` files it extends, and the
//! persisted user ids), so it is tested on plain strings. [`super::apply`] writes the result.

use otter_config::DeviceConfig;
use otter_config::device_config::{LogStorage, parse_cidr};
use std::collections::BTreeMap;

/// One rendered file, path relative to `/etc`.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    File { content: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// Everything the config adds to or changes in `/etc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub files: BTreeMap<String, Entry>,
    /// Home directories to create: (user, uid, gid).
    pub homes: Vec<(String, u32, u32)>,
    /// Problems that do not stop the rest of the config (e.g. an unknown time zone).
    pub warnings: Vec<String>,
}

/// The image's `/etc` files the renderer extends (`None` when the image lacks one).
pub trait ImageEtc {
    fn read(&self, rel: &str) -> Option<String>;
    /// Whether `/usr/share/zoneinfo/<tz>` exists (checked on the device).
    fn has_timezone(&self, tz: &str) -> bool;
}

/// First uid/gid given to device users.
pub const FIRST_UID: u32 = 1000;

impl Rendered {
    fn file(&mut self, rel: &str, content: impl Into<Vec<u8>>, mode: u32) {
        self.files.insert(
            rel.to_string(),
            Entry::File {
                content: content.into(),
                mode,
            },
        );
    }
}

/// Render `cfg`. `uids` maps user names to the ids they had before (kept so files on the data
/// partition keep their owner); new users get the next free id, and the map is updated.
pub fn render(
    cfg: &DeviceConfig,
    image: &dyn ImageEtc,
    uids: &mut BTreeMap<String, u32>,
) -> Rendered {
    let mut r = Rendered::default();
    hostname(cfg, image, &mut r);
    timezone(cfg, image, &mut r);
    if let Some(cc) = &cfg.country {
        r.file(
            "modprobe.d/otter-regdom.conf",
            format!("# Otter device config: Wi-Fi regulatory domain\noptions cfg80211 ieee80211_regdom={cc}\n"),
            0o644,
        );
    }
    users(cfg, image, uids, &mut r);
    ssh(cfg, &mut r);
    network(cfg, &mut r);
    if !cfg.time.ntp.is_empty() {
        r.file(
            "systemd/timesyncd.conf.d/50-otter.conf",
            format!(
                "# Otter device config\n[Time]\nNTP={}\n",
                cfg.time.ntp.join(" ")
            ),
            0o644,
        );
    }
    if let Some(l) = &cfg.logging {
        let mut text = String::from("# Otter device config\n[Journal]\n");
        match l.storage {
            LogStorage::Persistent => {
                text.push_str("Storage=persistent\n");
                if let Some(m) = l.max_size {
                    text.push_str(&format!("SystemMaxUse={}\n", m.0));
                }
            }
            LogStorage::Volatile => {
                text.push_str("Storage=volatile\n");
                if let Some(m) = l.max_size {
                    text.push_str(&format!("RuntimeMaxUse={}\n", m.0));
                }
            }
        }
        r.file("systemd/journald.conf.d/50-otter.conf", text, 0o644);
    }
    for (i, rule) in cfg.udev_rules.iter().enumerate() {
        let mut text = format!("# Otter device config: udev_rules[{i}]\n{rule}");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        r.file(&format!("udev/rules.d/90-otter-{i}.rules"), text, 0o644);
    }
    if !cfg.ca_certificates.is_empty() {
        let mut bundle = image
            .read("ssl/certs/ca-certificates.crt")
            .unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        for (i, pem) in cfg.ca_certificates.iter().enumerate() {
            let mut pem = pem.trim().to_string();
            pem.push('\n');
            r.file(&format!("ssl/certs/otter-{i}.pem"), pem.clone(), 0o644);
            bundle.push_str(&pem);
        }
        r.file("ssl/certs/ca-certificates.crt", bundle, 0o644);
    }
    if !cfg.registries.is_empty() {
        // podman's and skopeo's auth file (containers-auth.json(5)); the app runtime points
        // REGISTRY_AUTH_FILE at it. Only root may read it.
        use base64::Engine;
        let auths: serde_json::Map<String, serde_json::Value> = cfg
            .registries
            .iter()
            .map(|reg| {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", reg.username, reg.password));
                (reg.host.clone(), serde_json::json!({ "auth": token }))
            })
            .collect();
        let text = serde_json::json!({ "auths": auths }).to_string();
        r.file(otter_apps::runtime::AUTH_FILE_ETC, text, 0o600);
    }
    if let Some(h) = &cfg.health {
        for (i, check) in h.checks.iter().enumerate() {
            r.file(
                &format!("otter/health.d/50-device-config-{i}"),
                format!("#!/bin/sh\n# Otter device config: health.checks[{i}]\n{check}\n"),
                0o755,
            );
        }
    }
    r
}

fn hostname(cfg: &DeviceConfig, image: &dyn ImageEtc, r: &mut Rendered) {
    let Some(h) = &cfg.hostname else { return };
    r.file("hostname", format!("{h}\n"), 0o644);
    // Keep the image's hosts file, with this name on 127.0.1.1 (Debian's convention) so the
    // host name resolves without DNS.
    let base = image
        .read("hosts")
        .unwrap_or_else(|| "127.0.0.1\tlocalhost\n".into());
    let mut text: String = base
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("127.0.1.1\t{h}\n"));
    r.file("hosts", text, 0o644);
}

fn timezone(cfg: &DeviceConfig, image: &dyn ImageEtc, r: &mut Rendered) {
    let Some(tz) = &cfg.timezone else { return };
    if !image.has_timezone(tz) {
        r.warnings.push(format!(
            "timezone: `{tz}` is not in /usr/share/zoneinfo of this image; keeping UTC"
        ));
        return;
    }
    r.files.insert(
        "localtime".into(),
        Entry::Symlink {
            target: format!("/usr/share/zoneinfo/{tz}"),
        },
    );
    r.file("timezone", format!("{tz}\n"), 0o644);
}

/// Parse `name:…` lines of a passwd-style file into (name, fields).
fn entries(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn join(lines: &[Vec<String>]) -> String {
    lines.iter().map(|f| f.join(":") + "\n").collect()
}

fn users(
    cfg: &DeviceConfig,
    image: &dyn ImageEtc,
    uids: &mut BTreeMap<String, u32>,
    r: &mut Rendered,
) {
    // Root's keys from the config go next to the users' (sshd reads /etc/otter/authorized_keys/%u
    // as well as ~/.ssh/authorized_keys; /root is on the read-only image).
    if !cfg.ssh.root_authorized_keys.is_empty() {
        let mut text = String::from("# Otter device config: ssh.root_authorized_keys\n");
        for k in &cfg.ssh.root_authorized_keys {
            text.push_str(k.trim());
            text.push('\n');
        }
        r.file("otter/authorized_keys/root", text, 0o644);
    }
    if cfg.users.is_empty() {
        return;
    }
    let mut passwd = entries(&image.read("passwd").unwrap_or_default());
    let mut group = entries(&image.read("group").unwrap_or_default());
    let mut shadow = entries(&image.read("shadow").unwrap_or_default());
    let mut gshadow = entries(&image.read("gshadow").unwrap_or_default());
    // Each user gets a group of its own name and replaces an image account of that name, but
    // never a system account or group of the image (Debian's system ids: below 1000 and
    // 60000-65535), which the schema's list of reserved names may not know.
    let system_id = |f: &Vec<String>| {
        f.get(2)
            .and_then(|id| id.parse::<u32>().ok())
            .is_none_or(|id| !(FIRST_UID..60000).contains(&id))
    };
    let mut accepted = Vec::new();
    for (i, u) in cfg.users.iter().enumerate() {
        let clash = [("account", &passwd), ("group", &group)]
            .into_iter()
            .find_map(|(what, table)| {
                table
                    .iter()
                    .find(|f| f[0] == u.name && system_id(f))
                    .map(|f| (what, f.get(2).cloned().unwrap_or_default()))
            });
        match clash {
            Some((what, id)) => r.warnings.push(format!(
                "users[{i}].name: `{}` is a system {what} of this image (id {id}); the user is not created, pick another name",
                u.name
            )),
            None => accepted.push(u),
        }
    }
    if accepted.is_empty() {
        return;
    }
    let names: Vec<&str> = accepted.iter().map(|u| u.name.as_str()).collect();
    // A device user replaces an image account of the same name.
    passwd.retain(|f| !names.contains(&f[0].as_str()));
    shadow.retain(|f| !names.contains(&f[0].as_str()));
    group.retain(|f| !names.contains(&f[0].as_str()));
    gshadow.retain(|f| !names.contains(&f[0].as_str()));
    let used = |passwd: &[Vec<String>], group: &[Vec<String>], id: u32| {
        let s = id.to_string();
        passwd.iter().any(|f| f.get(2) == Some(&s)) || group.iter().any(|f| f.get(2) == Some(&s))
    };
    let mut sudoers = String::new();
    for u in accepted {
        let id = match uids.get(&u.name) {
            Some(&id) if !used(&passwd, &group, id) => id,
            _ => {
                let mut id = FIRST_UID;
                while used(&passwd, &group, id) || uids.values().any(|&v| v == id) {
                    id += 1;
                }
                uids.insert(u.name.clone(), id);
                id
            }
        };
        let home = format!("/home/{}", u.name);
        passwd.push(
            [
                &u.name,
                "x",
                &id.to_string(),
                &id.to_string(),
                "",
                &home,
                "/bin/bash",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        group.push(vec![
            u.name.clone(),
            "x".into(),
            id.to_string(),
            String::new(),
        ]);
        // `*` (not `!`): no password, but not "locked", so key logins still work.
        let hash = u.password_hash.clone().unwrap_or_else(|| "*".into());
        shadow.push(
            [&u.name, &hash, "19000", "0", "99999", "7", "", "", ""]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        gshadow.push(vec![
            u.name.clone(),
            "!".into(),
            String::new(),
            String::new(),
        ]);
        if u.sudo {
            for (table, members_at) in [(&mut group, 3usize), (&mut gshadow, 3usize)] {
                if let Some(g) = table.iter_mut().find(|f| f[0] == "sudo") {
                    while g.len() <= members_at {
                        g.push(String::new());
                    }
                    let mut members: Vec<String> = g[members_at]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect();
                    if !members.contains(&u.name) {
                        members.push(u.name.clone());
                    }
                    g[members_at] = members.join(",");
                }
            }
            if u.password_hash.is_none() {
                // No password to type: sudo must not ask for one.
                sudoers.push_str(&format!("{} ALL=(ALL:ALL) NOPASSWD: ALL\n", u.name));
            }
        }
        if !u.ssh_authorized_keys.is_empty() {
            let mut text = format!("# Otter device config: users `{}`\n", u.name);
            for k in &u.ssh_authorized_keys {
                text.push_str(k.trim());
                text.push('\n');
            }
            r.file(&format!("otter/authorized_keys/{}", u.name), text, 0o644);
        }
        r.homes.push((u.name.clone(), id, id));
    }
    r.file("passwd", join(&passwd), 0o644);
    r.file("group", join(&group), 0o644);
    r.file("shadow", join(&shadow), 0o640);
    r.file("gshadow", join(&gshadow), 0o640);
    if !sudoers.is_empty() {
        r.file(
            "sudoers.d/otter-users",
            format!("# Otter device config: sudo users without a password\n{sudoers}"),
            0o440,
        );
    }
}

const DEV_BANNER: &str = "\
*****************************************************************
*  DEVELOPMENT MODE: password and root logins are enabled.      *
*  Turn off ssh.development_mode in otter/device.toml before    *
*  this device leaves the lab.                                  *
*****************************************************************
";

fn ssh(cfg: &DeviceConfig, r: &mut Rendered) {
    if !cfg.ssh.development_mode {
        return;
    }
    // sshd takes the first value it reads; this file sorts before the image's otter.conf.
    r.file(
        "ssh/sshd_config.d/00-otter-development.conf",
        "# Otter device config: ssh.development_mode = true\n\
         PasswordAuthentication yes\n\
         KbdInteractiveAuthentication yes\n\
         PermitRootLogin yes\n\
         Banner /etc/otter/development-banner\n",
        0o644,
    );
    r.file("otter/development-banner", DEV_BANNER, 0o644);
    r.file("motd", DEV_BANNER, 0o644);
}

/// A NetworkManager keyfile value must not contain line breaks; `;` separates list items.
fn nm_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace(';', "\\;")
}

/// Stable short id for a connection file name.
fn slug(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let h = sha2_8(s);
    format!(
        "{}-{h}",
        clean.trim_matches('-').chars().take(24).collect::<String>()
    )
}

fn sha2_8(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

fn network(cfg: &DeviceConfig, r: &mut Rendered) {
    let n = &cfg.network;
    let (dns4, dns6): (Vec<&std::net::IpAddr>, Vec<&std::net::IpAddr>) =
        n.dns.iter().partition(|a| a.is_ipv4());
    let dns_lines = |v6: bool| -> String {
        let list = if v6 { &dns6 } else { &dns4 };
        if list.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = list.iter().map(|a| a.to_string()).collect();
            format!("dns={};\nignore-auto-dns=true\n", l.join(";"))
        }
    };
    // One profile per configured interface; with none, one DHCP profile for any Ethernet
    // device. Device-config profiles replace NetworkManager's automatic ones.
    let mut conf = String::from("# Otter device config\n[main]\nno-auto-default=*\n");
    if n.proxy.is_some() {
        conf.push_str("\n[connectivity]\nenabled=false\n");
    }
    r.file("NetworkManager/conf.d/50-otter.conf", conf, 0o644);
    let ethernet = if n.ethernet.is_empty() {
        vec![otter_config::device_config::Ethernet::default()]
    } else {
        n.ethernet.clone()
    };
    for e in &ethernet {
        let id = match &e.interface {
            Some(i) => format!("otter-ethernet-{i}"),
            None => "otter-ethernet".to_string(),
        };
        let mut t = format!(
            "# Otter device config: network.ethernet\n[connection]\nid={id}\nuuid={}\ntype=ethernet\nautoconnect=true\nautoconnect-priority=10\n",
            uuid_for(&id)
        );
        if let Some(i) = &e.interface {
            t.push_str(&format!("interface-name={i}\n"));
        }
        t.push_str("\n[ethernet]\n\n[ipv4]\n");
        let v4: Vec<&String> = e
            .addresses
            .iter()
            .filter(|a| parse_cidr(a).map(|(ip, _)| ip.is_ipv4()).unwrap_or(false))
            .collect();
        let v6: Vec<&String> = e
            .addresses
            .iter()
            .filter(|a| parse_cidr(a).map(|(ip, _)| ip.is_ipv6()).unwrap_or(false))
            .collect();
        if e.addresses.is_empty() {
            t.push_str("method=auto\n");
        } else if v4.is_empty() {
            t.push_str("method=disabled\n");
        } else {
            t.push_str("method=manual\n");
            for (k, a) in v4.iter().enumerate() {
                match e.gateway.filter(|g| g.is_ipv4()) {
                    Some(g) if k == 0 => t.push_str(&format!("address{}={a},{g}\n", k + 1)),
                    _ => t.push_str(&format!("address{}={a}\n", k + 1)),
                }
            }
        }
        t.push_str(&dns_lines(false));
        t.push_str("\n[ipv6]\n");
        if v6.is_empty() {
            t.push_str("method=auto\n");
        } else {
            t.push_str("method=manual\n");
            for (k, a) in v6.iter().enumerate() {
                match e.gateway.filter(|g| g.is_ipv6()) {
                    Some(g) if k == 0 => t.push_str(&format!("address{}={a},{g}\n", k + 1)),
                    _ => t.push_str(&format!("address{}={a}\n", k + 1)),
                }
            }
        }
        t.push_str(&dns_lines(true));
        r.file(
            &format!("NetworkManager/system-connections/{id}.nmconnection"),
            t,
            0o600,
        );
    }
    for w in &n.wifi {
        let id = format!("otter-wifi-{}", slug(&w.ssid));
        let mut t = format!(
            "# Otter device config: network.wifi\n[connection]\nid={id}\nuuid={}\ntype=wifi\nautoconnect=true\nautoconnect-priority={}\n\n[wifi]\nmode=infrastructure\nssid={}\n",
            uuid_for(&id),
            w.priority,
            nm_escape(&w.ssid)
        );
        if w.hidden {
            t.push_str("hidden=true\n");
        }
        if let Some(psk) = &w.psk {
            t.push_str(&format!(
                "\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n",
                nm_escape(psk)
            ));
        }
        t.push_str("\n[ipv4]\nmethod=auto\n");
        t.push_str(&dns_lines(false));
        t.push_str("\n[ipv6]\nmethod=auto\n");
        t.push_str(&dns_lines(true));
        r.file(
            &format!("NetworkManager/system-connections/{id}.nmconnection"),
            t,
            0o600,
        );
    }
    if !n.dns.is_empty() {
        let l: Vec<String> = n.dns.iter().map(|a| a.to_string()).collect();
        r.file(
            "systemd/resolved.conf.d/50-otter.conf",
            format!("# Otter device config\n[Resolve]\nDNS={}\n", l.join(" ")),
            0o644,
        );
    }
    if let Some(p) = &n.proxy {
        let no_proxy = if n.no_proxy.is_empty() {
            "localhost,127.0.0.1,::1".to_string()
        } else {
            n.no_proxy.join(",")
        };
        let vars = [
            ("http_proxy", p.as_str()),
            ("https_proxy", p.as_str()),
            ("HTTP_PROXY", p.as_str()),
            ("HTTPS_PROXY", p.as_str()),
            ("no_proxy", no_proxy.as_str()),
            ("NO_PROXY", no_proxy.as_str()),
        ];
        let env: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        r.file("otter/proxy.env", env.clone(), 0o644);
        r.file("environment", env, 0o644);
        let quoted: Vec<String> = vars.iter().map(|(k, v)| format!("\"{k}={v}\"")).collect();
        r.file(
            "systemd/system.conf.d/50-otter-proxy.conf",
            format!(
                "# Otter device config: network.proxy\n[Manager]\nDefaultEnvironment={}\n",
                quoted.join(" ")
            ),
            0o644,
        );
    }
}

/// A fixed UUID per connection id, so re-rendering does not make NetworkManager see a new
/// connection.
fn uuid_for(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Img;
    impl ImageEtc for Img {
        fn read(&self, rel: &str) -> Option<String> {
            Some(
                match rel {
                    "passwd" => "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
                    "group" => "root:x:0:\nsudo:x:27:\nusers:x:100:\ndocker:x:998:\n",
                    "shadow" => "root:*:19000:0:99999:7:::\n",
                    "gshadow" => "root:*::\nsudo:*::\n",
                    "hosts" => "127.0.0.1\tlocalhost\n127.0.1.1\timage\n",
                    "ssl/certs/ca-certificates.crt" => "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
                    _ => return None,
                }
                .to_string(),
            )
        }
        fn has_timezone(&self, tz: &str) -> bool {
            tz == "Europe/Berlin"
        }
    }

    fn cfg(t: &str) -> DeviceConfig {
        DeviceConfig::parse(Path::new("device.toml"), t).unwrap()
    }

    fn text(r: &Rendered, rel: &str) -> String {
        match r.files.get(rel) {
            Some(Entry::File { content, .. }) => String::from_utf8(content.clone()).unwrap(),
            other => panic!("{rel}: {other:?}"),
        }
    }

    #[test]
    fn registries_become_podmans_auth_file_readable_by_root_only() {
        let r = render(
            &cfg(
                "[[registries]]\nhost = \"reg.example.com:5000\"\nusername = \"fleet\"\npassword = \"pa:ss\"\n",
            ),
            &Img,
            &mut BTreeMap::new(),
        );
        let Some(Entry::File { content, mode }) = r.files.get("containers/auth.json") else {
            panic!("no auth file: {:?}", r.files.keys());
        };
        assert_eq!(*mode, 0o600);
        let v: serde_json::Value = serde_json::from_slice(content).unwrap();
        // base64("fleet:pa:ss")
        assert_eq!(
            v["auths"]["reg.example.com:5000"]["auth"],
            "ZmxlZXQ6cGE6c3M="
        );
        assert!(
            !render(&cfg(""), &Img, &mut BTreeMap::new())
                .files
                .contains_key("containers/auth.json")
        );
    }

    #[test]
    fn empty_config_renders_default_network_only() {
        let r = render(&cfg(""), &Img, &mut BTreeMap::new());
        let names: Vec<&String> = r.files.keys().collect();
        assert_eq!(
            names,
            [
                "NetworkManager/conf.d/50-otter.conf",
                "NetworkManager/system-connections/otter-ethernet.nmconnection"
            ]
        );
        assert!(
            text(
                &r,
                "NetworkManager/system-connections/otter-ethernet.nmconnection"
            )
            .contains("method=auto")
        );
    }

    #[test]
    fn users_get_stable_ids_and_keys() {
        let c = cfg(
            "[[users]]\nname = \"ops\"\nsudo = true\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops\"]\n[[users]]\nname = \"viewer\"\npassword_hash = \"$6$s$h\"\n",
        );
        let mut uids = BTreeMap::new();
        let r = render(&c, &Img, &mut uids);
        assert_eq!(uids["ops"], 1000);
        assert_eq!(uids["viewer"], 1001);
        let passwd = text(&r, "passwd");
        assert!(
            passwd.contains("ops:x:1000:1000::/home/ops:/bin/bash\n"),
            "{passwd}"
        );
        assert!(passwd.starts_with("root:x:0:0"));
        assert!(text(&r, "group").contains("sudo:x:27:ops\n"));
        assert!(text(&r, "gshadow").contains("sudo:*::ops\n"));
        assert!(text(&r, "shadow").contains("ops:*:"));
        assert!(text(&r, "shadow").contains("viewer:$6$s$h:"));
        assert!(text(&r, "sudoers.d/otter-users").contains("ops ALL=(ALL:ALL) NOPASSWD: ALL"));
        assert!(text(&r, "otter/authorized_keys/ops").contains("ssh-ed25519 AAAA"));
        // Dropping the first user keeps the second one's id.
        let c2 = cfg("[[users]]\nname = \"viewer\"\n");
        let r2 = render(&c2, &Img, &mut uids);
        assert!(text(&r2, "passwd").contains("viewer:x:1001:1001"));
        assert_eq!(r2.homes, vec![("viewer".to_string(), 1001, 1001)]);
    }

    #[test]
    fn network_time_logging_and_more() {
        let c = cfg(r#"
hostname = "gw-1"
timezone = "Europe/Berlin"
country = "DE"
udev_rules = ["KERNEL==\"ttyUSB0\", SYMLINK+=\"modem\""]
[network]
dns = ["10.0.2.3"]
proxy = "http://proxy:3128"
[[network.ethernet]]
interface = "enp0s2"
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.2"
[[network.wifi]]
ssid = "Lab;1"
psk = "password123"
hidden = true
[time]
ntp = ["10.0.2.2"]
[logging]
storage = "volatile"
max_size = "16M"
[ssh]
development_mode = true
[health]
checks = ["true"]
"#);
        let r = render(&c, &Img, &mut BTreeMap::new());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(text(&r, "hostname"), "gw-1\n");
        assert_eq!(text(&r, "hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\tgw-1\n");
        assert_eq!(
            r.files["localtime"],
            Entry::Symlink {
                target: "/usr/share/zoneinfo/Europe/Berlin".into()
            }
        );
        let eth = text(
            &r,
            "NetworkManager/system-connections/otter-ethernet-enp0s2.nmconnection",
        );
        assert!(eth.contains("interface-name=enp0s2\n"), "{eth}");
        assert!(
            eth.contains("method=manual\naddress1=10.0.2.15/24,10.0.2.2\ndns=10.0.2.3;\n"),
            "{eth}"
        );
        let wifi = r
            .files
            .iter()
            .find(|(k, _)| k.contains("otter-wifi-lab-1"))
            .map(|(k, _)| text(&r, k))
            .unwrap();
        assert!(wifi.contains("ssid=Lab\\;1\nhidden=true\n"), "{wifi}");
        assert!(wifi.contains("psk=password123"));
        assert!(text(&r, "systemd/timesyncd.conf.d/50-otter.conf").contains("NTP=10.0.2.2"));
        assert!(
            text(&r, "systemd/journald.conf.d/50-otter.conf")
                .contains("Storage=volatile\nRuntimeMaxUse=16777216")
        );
        assert!(text(&r, "udev/rules.d/90-otter-0.rules").contains("SYMLINK+=\"modem\""));
        assert!(
            text(&r, "ssh/sshd_config.d/00-otter-development.conf")
                .contains("PasswordAuthentication yes")
        );
        assert!(text(&r, "environment").contains("https_proxy=http://proxy:3128"));
        assert!(text(&r, "modprobe.d/otter-regdom.conf").contains("ieee80211_regdom=DE"));
        assert!(text(&r, "otter/health.d/50-device-config-0").starts_with("#!/bin/sh"));
    }

    #[test]
    fn ssh_is_key_only_unless_development_mode() {
        // Key-only is the image's own sshd_config.d/otter.conf; the config adds nothing.
        let r = render(&cfg(""), &Img, &mut BTreeMap::new());
        assert!(
            !r.files
                .keys()
                .any(|k| k.starts_with("ssh/") || k == "motd" || k.contains("development")),
            "{:?}",
            r.files.keys()
        );
        let r = render(
            &cfg("[ssh]\ndevelopment_mode = true"),
            &Img,
            &mut BTreeMap::new(),
        );
        let conf = text(&r, "ssh/sshd_config.d/00-otter-development.conf");
        for line in [
            "PasswordAuthentication yes\n",
            "KbdInteractiveAuthentication yes\n",
            "PermitRootLogin yes\n",
            "Banner /etc/otter/development-banner\n",
        ] {
            assert!(conf.contains(line), "{line}: {conf}");
        }
        // sshd keeps the first value it reads; this file must sort before the image's otter.conf.
        assert!("00-otter-development.conf" < "otter.conf");
        assert!(text(&r, "otter/development-banner").contains("DEVELOPMENT MODE"));
        assert!(text(&r, "motd").contains("DEVELOPMENT MODE"));
    }

    #[test]
    fn a_user_never_replaces_a_system_account_or_group() {
        // `docker` is a system group of this image (gid 998), unknown to the schema.
        let c = cfg("[[users]]\nname = \"docker\"\n[[users]]\nname = \"ops\"\n");
        let mut uids = BTreeMap::new();
        let r = render(&c, &Img, &mut uids);
        assert!(
            r.warnings.len() == 1
                && r.warnings[0].contains("users[0].name")
                && r.warnings[0].contains("docker"),
            "{:?}",
            r.warnings
        );
        assert!(text(&r, "group").contains("docker:x:998:\n"));
        assert!(!text(&r, "passwd").contains("docker"));
        assert!(text(&r, "passwd").contains("ops:x:1000:1000"));
        assert_eq!(r.homes, vec![("ops".to_string(), 1000, 1000)]);
        assert!(!uids.contains_key("docker"));
        // Only that user: nothing of the account files is rendered.
        let r = render(
            &cfg("[[users]]\nname = \"docker\"\n"),
            &Img,
            &mut BTreeMap::new(),
        );
        assert!(!r.files.contains_key("passwd") && !r.files.contains_key("group"));
    }

    #[test]
    fn unknown_timezone_is_a_warning() {
        let r = render(
            &cfg("timezone = \"Mars/Olympus\""),
            &Img,
            &mut BTreeMap::new(),
        );
        assert!(r.warnings[0].contains("Mars/Olympus"));
        assert!(!r.files.contains_key("localtime"));
    }
}
