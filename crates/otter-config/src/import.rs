//! Importers for the device configs of other systems: balenaOS `config.json` and ReswarmOS
//! `device-config.ini`. Each translates the keys that have an Otter equivalent and lists every
//! key it drops, by name, with the reason (docs/device-config.md has the mapping tables).

use crate::device_config::{LogStorage, Logging, Server, User, Wifi};
use crate::{ConfigError, DeviceConfig, Result, password};
use serde_json::{Map, Value};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// A key of the source file that has no Otter equivalent (or whose value is not carried over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub key: String,
    pub reason: String,
    /// The key was carried over, but the user should check it (a note, not a drop).
    pub kept: bool,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn drop_key(out: &mut Vec<Dropped>, key: impl Into<String>, reason: impl Into<String>) {
    out.push(Dropped {
        key: key.into(),
        reason: reason.into(),
        kept: false,
    });
}

fn note_key(out: &mut Vec<Dropped>, key: impl Into<String>, reason: impl Into<String>) {
    out.push(Dropped {
        key: key.into(),
        reason: reason.into(),
        kept: true,
    });
}

/// Whether `url` is one of balenaCloud's own endpoints (`*.balena-cloud.com`): an Otter device
/// must never speak Otter's protocol to it.
fn is_balena_cloud(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':', '?', '#']).next().unwrap_or("");
    let host = host
        .rsplit('@')
        .next()
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    host == "balena-cloud.com" || host.ends_with(".balena-cloud.com")
}

/// balenaCloud identity and service keys: meaningful only to balenaCloud.
const BALENA_CLOUD_KEYS: &[&str] = &[
    "uuid",
    "deviceApiKey",
    "deviceApiKeys",
    "apiKey",
    "applicationId",
    "applicationName",
    "appUpdatePollInterval",
    "deviceType",
    "deviceId",
    "userId",
    "username",
    "registered_at",
    "vpnEndpoint",
    "vpnPort",
    "registryEndpoint",
    "deltaEndpoint",
    "listenPort",
    "mixpanelToken",
    "pubnubSubscribeKey",
    "pubnubPublishKey",
    "localMode",
    "supervisorOfflineMode",
    "dashboardUrl",
    "balenaRootCA",
];

/// The CPU architecture of a balena `deviceType` ("x86_64", "arm64", "armhf"), when it is a
/// known one: so that `otter configure` can warn when a config comes from another kind of board.
pub fn balena_device_arch(device_type: &str) -> Option<&'static str> {
    let t = device_type.to_ascii_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| t.starts_with(p));
    if t.contains("x86-64")
        || t.contains("x86_64")
        || t == "generic-amd64"
        || starts(&["intel-nuc", "surface"])
    {
        Some("x86_64")
    } else if t.ends_with("-64")
        || t.contains("aarch64")
        || starts(&["jetson", "raspberrypi5", "imx8"])
    {
        Some("arm64")
    } else if starts(&["raspberry", "beaglebone", "fincm3"]) {
        Some("armhf")
    } else {
        None
    }
}

/// The `deviceType` of a balena `config.json`, if it has one.
pub fn balena_device_type(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("deviceType")?.as_str().map(str::to_string)
}

/// Translate a balenaOS `config.json` (`path` names it in errors).
pub fn from_balena(path: &Path, json: &str) -> Result<(DeviceConfig, Vec<Dropped>)> {
    let root: Value = serde_json::from_str(json).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("not JSON: {e}"),
    })?;
    let Value::Object(root) = root else {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: "a balena config.json is a JSON object ({ ... })".into(),
        });
    };
    let mut c = DeviceConfig::default();
    let mut dropped = Vec::new();
    let mut wifi_ssid = None;
    let mut wifi_key = None;
    for (k, v) in &root {
        match k.as_str() {
            "hostname" => c.hostname = Some(json_str(path, k, v)?.to_string()),
            "country" => c.country = Some(json_str(path, k, v)?.to_ascii_uppercase()),
            "persistentLogging" => {
                c.logging = Some(Logging {
                    storage: if json_bool(path, k, v)? {
                        LogStorage::Persistent
                    } else {
                        LogStorage::Volatile
                    },
                    max_size: None,
                })
            }
            "developmentMode" => c.ssh.development_mode = json_bool(path, k, v)?,
            "ntpServers" => c.time.ntp = json_words(path, k, v)?,
            "dnsServers" => {
                let words = json_words(path, k, v)?;
                if words == ["null"] {
                    drop_key(
                        &mut dropped,
                        k,
                        "\"null\" (keep the DHCP servers) is what Otter does without network.dns",
                    );
                    continue;
                }
                for w in words {
                    let ip: IpAddr = w.parse().map_err(|_| {
                        ConfigError::invalid(path, k, format!("`{w}` is not an IP address"))
                    })?;
                    c.network.dns.push(ip);
                }
            }
            "apiEndpoint" => {
                let url = json_str(path, k, v)?;
                if is_balena_cloud(url) {
                    drop_key(
                        &mut dropped,
                        k,
                        format!(
                            "{url} is balenaCloud's API; an Otter device talks to an Otter server (set server.url, or --server)"
                        ),
                    );
                    continue;
                }
                note_key(
                    &mut dropped,
                    k,
                    format!(
                        "kept as server.url = {url}: check that it is an Otter server (otter server), not a balena one"
                    ),
                );
                c.server = Some(Server {
                    url: url.to_string(),
                    enrollment_key: None,
                    ..Default::default()
                })
            }
            "wifiSsid" => wifi_ssid = Some(json_str(path, k, v)?.to_string()),
            "wifiKey" => wifi_key = Some(json_str(path, k, v)?.to_string()),
            "network" => drop_key(
                &mut dropped,
                k,
                "Otter brings up every configured connection (network.wifi, network.ethernet); no primary network is chosen",
            ),
            "files" => drop_key(
                &mut dropped,
                k,
                "legacy connman files; write network.wifi / network.ethernet (or --wifi, --static) instead",
            ),
            "os" => {
                let Value::Object(os) = v else {
                    return Err(ConfigError::invalid(path, k, "expected an object"));
                };
                balena_os(path, os, &mut c, &mut dropped)?;
            }
            _ if BALENA_CLOUD_KEYS.contains(&k.as_str()) => drop_key(
                &mut dropped,
                k,
                "balenaCloud identity or service setting; an Otter device enrolls with its Otter server (server.enrollment_key)",
            ),
            _ => drop_key(&mut dropped, k, "no Otter equivalent"),
        }
    }
    match (wifi_ssid, wifi_key) {
        (Some(ssid), key) if !ssid.is_empty() => c.network.wifi.push(Wifi {
            ssid,
            psk: key.filter(|k| !k.is_empty()),
            hidden: false,
            priority: 0,
        }),
        (_, Some(_)) => drop_key(&mut dropped, "wifiKey", "no wifiSsid to go with it"),
        _ => {}
    }
    c.validate(path)?;
    Ok((c, dropped))
}

fn balena_os(
    path: &Path,
    os: &Map<String, Value>,
    c: &mut DeviceConfig,
    dropped: &mut Vec<Dropped>,
) -> Result<()> {
    for (k, v) in os {
        let key = format!("os.{k}");
        match k.as_str() {
            "sshKeys" => {
                let Value::Array(keys) = v else {
                    return Err(ConfigError::invalid(path, &key, "expected a list of keys"));
                };
                for (i, sk) in keys.iter().enumerate() {
                    let s = json_str(path, &format!("{key}[{i}]"), sk)?;
                    c.ssh.root_authorized_keys.push(s.trim().to_string());
                }
            }
            "udevRules" => {
                let Value::Object(rules) = v else {
                    return Err(ConfigError::invalid(
                        path,
                        &key,
                        "expected an object of rule name: rules text",
                    ));
                };
                for (name, rule) in rules {
                    c.udev_rules
                        .push(json_str(path, &format!("{key}.{name}"), rule)?.to_string());
                }
            }
            "network" => {
                let Value::Object(net) = v else {
                    return Err(ConfigError::invalid(path, &key, "expected an object"));
                };
                for (nk, _) in net {
                    let reason = match nk.as_str() {
                        "wifi" => {
                            "Wi-Fi scan settings (randomMacAddressScan) are left to NetworkManager's defaults"
                        }
                        "connectivity" => {
                            "connectivity checks are not configurable; update health is judged by [health]"
                        }
                        _ => "no Otter equivalent",
                    };
                    drop_key(dropped, format!("{key}.{nk}"), reason);
                }
            }
            _ => drop_key(dropped, key, "no Otter equivalent"),
        }
    }
    Ok(())
}

fn json_str<'v>(path: &Path, key: &str, v: &'v Value) -> Result<&'v str> {
    v.as_str()
        .ok_or_else(|| ConfigError::invalid(path, key, format!("expected a string, found {v}")))
}

fn json_bool(path: &Path, key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        // balena tools write some booleans as strings.
        Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        _ => Err(ConfigError::invalid(
            path,
            key,
            format!("expected true or false, found {v}"),
        )),
    }
}

/// balena writes server lists as one space-separated string; accept a list too.
fn json_words(path: &Path, key: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(s.split_whitespace().map(String::from).collect()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| json_str(path, &format!("{key}[{i}]"), x).map(String::from))
            .collect(),
        _ => Err(ConfigError::invalid(
            path,
            key,
            format!("expected a space-separated string, found {v}"),
        )),
    }
}

/// Translate a ReswarmOS `device-config.ini` (`path` names it in errors). Its plain-text
/// user password is hashed here (SHA-512 crypt); the plain text is not kept.
pub fn from_reswarm(path: &Path, ini: &str) -> Result<(DeviceConfig, Vec<Dropped>)> {
    // No escapes: passwords may contain backslashes.
    let doc = ini::Ini::load_from_str_noescape(ini).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("not an INI file: {e}"),
    })?;
    let mut c = DeviceConfig::default();
    let mut dropped = Vec::new();
    let mut user = User::default();
    let mut password = None;
    let mut wifi = Wifi::default();
    for (section, props) in doc.iter() {
        let sec = section.unwrap_or("").to_ascii_lowercase();
        for (k, v) in props.iter() {
            let name = format!(
                "{}{k}",
                section.map(|s| format!("[{s}] ")).unwrap_or_default()
            );
            let v = v.trim();
            match (sec.as_str(), k.to_ascii_uppercase().as_str()) {
                ("device", "HOSTNAME") if !v.is_empty() => c.hostname = Some(v.to_string()),
                ("user", "USERNAME") if !v.is_empty() => user.name = v.to_string(),
                ("user", "PASSWD") if !v.is_empty() => password = Some(v.to_string()),
                ("user", "HOME") => drop_key(
                    &mut dropped,
                    name,
                    "home directories are /home/NAME on the data partition",
                ),
                ("user", "GROUP") => drop_key(
                    &mut dropped,
                    name,
                    "each user gets a primary group of its own name",
                ),
                ("user", "SHELL") => {
                    drop_key(&mut dropped, name, "users get the image's login shell")
                }
                ("user", "GROUPS") => {
                    let groups: Vec<&str> = v
                        .split([',', ' '])
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .collect();
                    user.sudo = groups.iter().any(|g| *g == "sudo" || *g == "wheel");
                    let other: Vec<&str> = groups
                        .into_iter()
                        .filter(|g| *g != "sudo" && *g != "wheel")
                        .collect();
                    if !other.is_empty() {
                        drop_key(
                            &mut dropped,
                            name,
                            format!(
                                "only sudo membership is configurable (users[].sudo); not added to {}",
                                other.join(", ")
                            ),
                        );
                    }
                }
                ("wifi", "SSID") if !v.is_empty() => wifi.ssid = v.to_string(),
                ("wifi", "PASSWD") if !v.is_empty() => wifi.psk = Some(v.to_string()),
                ("device", "HOSTNAME")
                | ("user", "USERNAME")
                | ("user", "PASSWD")
                | ("wifi", "SSID")
                | ("wifi", "PASSWD") => {} // empty: not set
                _ => drop_key(&mut dropped, name, "no Otter equivalent"),
            }
        }
    }
    if !user.name.is_empty() {
        if let Some(p) = password {
            user.password_hash = Some(
                password::hash_password(&p)
                    .map_err(|m| ConfigError::invalid(path, "[user] PASSWD", m))?,
            );
        }
        c.users.push(user);
    } else if password.is_some() {
        drop_key(&mut dropped, "[user] PASSWD", "no USERNAME to go with it");
    }
    if !wifi.ssid.is_empty() {
        c.network.wifi.push(wifi);
    } else if wifi.psk.is_some() {
        drop_key(&mut dropped, "[wifi] PASSWD", "no SSID to go with it");
    }
    c.validate(path)?;
    Ok((c, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::verify_password;

    const BALENA: &str = r#"{
        "applicationName": "fleet",
        "applicationId": 1234,
        "deviceType": "raspberrypi4-64",
        "userId": 42,
        "appUpdatePollInterval": 900000,
        "listenPort": 48484,
        "vpnPort": 443,
        "apiEndpoint": "https://api.balena-cloud.com",
        "vpnEndpoint": "vpn.balena-cloud.com",
        "registryEndpoint": "registry2.balena-cloud.com",
        "deltaEndpoint": "https://delta.balena-cloud.com",
        "apiKey": "secretprovisioningkey",
        "hostname": "kiosk-3",
        "persistentLogging": true,
        "country": "gb",
        "developmentMode": false,
        "ntpServers": "0.pool.ntp.org 1.pool.ntp.org",
        "dnsServers": "1.1.1.1 8.8.8.8",
        "network": "wifi",
        "wifiSsid": "Shop Floor",
        "wifiKey": "supersecret",
        "os": {
            "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx admin@laptop"],
            "udevRules": {"64": "KERNEL==\"ttyACM*\", SYMLINK+=\"modem\""},
            "network": {"wifi": {"randomMacAddressScan": false},
                        "connectivity": {"uri": "https://x/check", "interval": "300"}},
            "fan": {"profile": "quiet"}
        }
    }"#;

    #[test]
    fn balena_maps_what_it_can_and_lists_the_rest() {
        let (c, dropped) = from_balena(Path::new("config.json"), BALENA).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("kiosk-3"));
        assert_eq!(c.country.as_deref(), Some("GB"));
        assert_eq!(c.logging.unwrap().storage, LogStorage::Persistent);
        assert!(!c.ssh.development_mode);
        assert_eq!(c.time.ntp, ["0.pool.ntp.org", "1.pool.ntp.org"]);
        assert_eq!(c.network.dns.len(), 2);
        assert_eq!(c.network.wifi[0].ssid, "Shop Floor");
        assert_eq!(c.network.wifi[0].psk.as_deref(), Some("supersecret"));
        assert_eq!(c.ssh.root_authorized_keys.len(), 1);
        assert_eq!(c.udev_rules.len(), 1);
        // balenaCloud's API is not an Otter server: dropped, never made server.url.
        assert!(c.server.is_none());
        let keys: Vec<&str> = dropped.iter().map(|d| d.key.as_str()).collect();
        for k in [
            "applicationName",
            "applicationId",
            "deviceType",
            "userId",
            "appUpdatePollInterval",
            "listenPort",
            "vpnPort",
            "vpnEndpoint",
            "registryEndpoint",
            "deltaEndpoint",
            "apiEndpoint",
            "apiKey",
            "network",
            "os.network.wifi",
            "os.network.connectivity",
            "os.fan",
        ] {
            assert!(keys.contains(&k), "{k} not listed in {keys:?}");
        }
        assert_eq!(keys.len(), 16, "{keys:?}");
        assert!(dropped.iter().all(|d| !d.kept));
        assert!(dropped.iter().all(|d| !d.reason.is_empty()));
    }

    #[test]
    fn balena_device_types_map_to_arches() {
        for (t, arch) in [
            ("raspberrypi4-64", Some("arm64")),
            ("raspberrypi3-64", Some("arm64")),
            ("raspberrypi5", Some("arm64")),
            ("jetson-orin-nano-devkit-nvme", Some("arm64")),
            ("generic-aarch64", Some("arm64")),
            ("genericx86-64-ext", Some("x86_64")),
            ("intel-nuc", Some("x86_64")),
            ("qemux86-64", Some("x86_64")),
            ("generic-amd64", Some("x86_64")),
            ("raspberrypi3", Some("armhf")),
            ("raspberry-pi", Some("armhf")),
            ("beaglebone-black", Some("armhf")),
            ("some-new-board", None),
        ] {
            assert_eq!(balena_device_arch(t), arch, "{t}");
        }
        assert_eq!(
            balena_device_type(r#"{"deviceType": "raspberrypi4-64"}"#).as_deref(),
            Some("raspberrypi4-64")
        );
        assert_eq!(balena_device_type(r#"{"deviceType": 4}"#), None);
    }

    #[test]
    fn balena_api_endpoint_kept_only_when_not_balena_cloud() {
        for cloud in [
            "https://api.balena-cloud.com",
            "https://API.balena-cloud.com./",
            "api.balena-cloud.com:443",
            "https://user@balena-cloud.com/v6",
        ] {
            let json = format!(r#"{{"apiEndpoint": "{cloud}"}}"#);
            let (c, dropped) = from_balena(Path::new("config.json"), &json).unwrap();
            assert!(c.server.is_none(), "{cloud}");
            assert_eq!(dropped.len(), 1);
            assert!(
                !dropped[0].kept && dropped[0].reason.contains("balenaCloud"),
                "{cloud}"
            );
        }
        let (c, dropped) = from_balena(
            Path::new("config.json"),
            r#"{"apiEndpoint": "https://fleet.example.com/balena-cloud.com"}"#,
        )
        .unwrap();
        assert_eq!(
            c.server.unwrap().url,
            "https://fleet.example.com/balena-cloud.com"
        );
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].kept && dropped[0].key == "apiEndpoint");
    }

    #[test]
    fn balena_open_wifi_null_dns_and_errors() {
        let (c, dropped) = from_balena(
            Path::new("config.json"),
            r#"{"wifiSsid": "Cafe", "wifiKey": "", "dnsServers": "null", "persistentLogging": "false"}"#,
        )
        .unwrap();
        assert_eq!(c.network.wifi[0].psk, None);
        assert!(c.network.dns.is_empty());
        assert_eq!(c.logging.unwrap().storage, LogStorage::Volatile);
        assert_eq!(dropped[0].key, "dnsServers");

        let p = Path::new("config.json");
        for (bad, key) in [
            (r#"{"hostname": 7}"#, "hostname"),
            (r#"{"hostname": "bad_name"}"#, "hostname"),
            (r#"{"dnsServers": "dns.google"}"#, "dnsServers"),
            (r#"{"persistentLogging": "yes"}"#, "persistentLogging"),
            (r#"{"os": {"sshKeys": "ssh-ed25519 AAAA"}}"#, "os.sshKeys"),
            (
                r#"{"os": {"sshKeys": ["nope"]}}"#,
                "ssh.root_authorized_keys[0]",
            ),
            (r#"{"apiEndpoint": "api.example.com"}"#, "server.url"),
        ] {
            let e = from_balena(p, bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("config.json"),
                "{bad}: {e}"
            );
        }
        assert!(from_balena(p, "[1, 2]").is_err());
        assert!(
            from_balena(p, "{not json")
                .unwrap_err()
                .to_string()
                .contains("config.json")
        );
    }

    const RESWARM: &str = r#"
[device]
HOSTNAME = "reckless-reindeer"

[user]
USERNAME = "revenent"
PASSWD   = "reverb"
GROUP    = "revenent"
HOME     = "/home/revenent"
SHELL    = "/bin/bash"
GROUPS   = "sudo,docker"

[WIFI]
SSID     = "meinefritzbox"
PASSWD   = "strenggeheim"

[reswarm]
ENDPOINT = "https://studio.example.com"
"#;

    #[test]
    fn reswarm_maps_and_hashes_the_password() {
        let (c, dropped) = from_reswarm(Path::new("device-config.ini"), RESWARM).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("reckless-reindeer"));
        let u = &c.users[0];
        assert_eq!(u.name, "revenent");
        assert!(u.sudo);
        let h = u.password_hash.as_deref().unwrap();
        assert!(h.starts_with("$6$") && verify_password("reverb", h), "{h}");
        assert_eq!(c.network.wifi[0].ssid, "meinefritzbox");
        assert_eq!(c.network.wifi[0].psk.as_deref(), Some("strenggeheim"));
        let keys: Vec<&str> = dropped.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[user] GROUP",
                "[user] HOME",
                "[user] SHELL",
                "[user] GROUPS",
                "[reswarm] ENDPOINT"
            ]
        );
        assert!(dropped[3].reason.contains("docker"));
        assert!(!c.to_toml().contains("reverb"));
    }

    #[test]
    fn reswarm_empty_values_and_errors() {
        let (c, dropped) = from_reswarm(
            Path::new("device-config.ini"),
            "[device]\nHOSTNAME = \"\"\n[wifi]\nSSID = \"\"\nPASSWD = \"\"\n",
        )
        .unwrap();
        assert_eq!(c, DeviceConfig::default());
        assert!(dropped.is_empty());
        let e = from_reswarm(
            Path::new("device-config.ini"),
            "[wifi]\nSSID = \"x\"\nPASSWD = \"short\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("device-config.ini") && e.contains("psk"), "{e}");
        let e = from_reswarm(Path::new("d.ini"), "[user]\nUSERNAME = \"Bad User\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("users[0].name"), "{e}");
    }
}
