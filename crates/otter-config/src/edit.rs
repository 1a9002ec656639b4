//! Edits of a device config as `otter configure` makes them: `--set key=value` with dotted
//! keys, merging another config in (`--from`, the importers), and the list of what changed.
//!
//! Edits work on the TOML tree of the config and convert back through the typed schema, so an
//! unknown key or a wrong type is refused with the schema's own message.

use crate::DeviceConfig;
use crate::device_config::{Ethernet, User, Wifi, check_ssh_key, parse_cidr};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use toml::{Table, Value};

/// Arrays of tables merged entry by entry, matched on this key (others are replaced whole).
const MERGE_BY: &[(&str, &str)] = &[
    ("users", "name"),
    ("network.wifi", "ssid"),
    ("network.ethernet", "interface"),
];

/// Leaf keys whose values are never printed.
const SECRET_KEYS: &[&str] = &["password_hash", "psk", "enrollment_key"];

/// The config as a TOML table (only the keys that are set).
pub fn to_table(c: &DeviceConfig) -> Table {
    match Value::try_from(c) {
        Ok(Value::Table(t)) => t,
        // A DeviceConfig always serialises to a table; nothing else can come out.
        _ => Table::new(),
    }
}

/// The config a TOML table describes (types and known keys checked; values are checked by
/// [`DeviceConfig::validate`]).
pub fn from_table(t: Table) -> Result<DeviceConfig, String> {
    Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim_end().to_string())
}

/// A device config file to merge in (`--from`): checked like any device config, returned as
/// the table of the keys it sets.
pub fn load_overlay(path: &std::path::Path) -> crate::Result<Table> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    DeviceConfig::parse(path, &text)?;
    crate::parse_toml(path, &text)
}

/// The table of a device config's text (TOML syntax only; see [`from_table`]).
pub fn parse_table(text: &str) -> Result<Table, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
}

/// One step of a dotted key: `network`, `wifi[0]`.
struct Segment<'a> {
    name: &'a str,
    index: Option<usize>,
}

fn parse_key(key: &str) -> Result<Vec<Segment<'_>>, String> {
    let bad = || format!("`{key}` is not a key like hostname, network.dns or network.wifi[0].psk");
    if key.is_empty() {
        return Err(bad());
    }
    key.split('.')
        .map(|part| {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => {
                    let i = rest
                        .strip_suffix(']')
                        .and_then(|i| i.parse::<usize>().ok())
                        .ok_or_else(bad)?;
                    (n, Some(i))
                }
                None => (part, None),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(bad());
            }
            Ok(Segment { name, index })
        })
        .collect()
}

/// A value as written after `=`: TOML (`true`, `42`, `["1.1.1.1"]`, `"text"`), else the text
/// itself as a string.
pub fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Walk to the table holding the last segment, creating tables (and appending one array
/// entry, at index == length) on the way.
fn walk<'t>(root: &'t mut Table, path: &[Segment<'_>], key: &str) -> Result<&'t mut Table, String> {
    let mut cur = root;
    for seg in path {
        let entry = cur
            .entry(seg.name.to_string())
            .or_insert_with(|| match seg.index {
                Some(_) => Value::Array(Vec::new()),
                None => Value::Table(Table::new()),
            });
        cur = match (seg.index, entry) {
            (None, Value::Table(t)) => t,
            (Some(i), Value::Array(a)) => {
                if i == a.len() {
                    a.push(Value::Table(Table::new()));
                }
                let len = a.len();
                match a.get_mut(i) {
                    Some(Value::Table(t)) => t,
                    Some(_) => return Err(format!("{key}: `{}[{i}]` is not a table", seg.name)),
                    None => {
                        return Err(format!(
                            "{key}: `{}` has {len} entries; use an index up to {len} (== {len} adds one)",
                            seg.name
                        ));
                    }
                }
            }
            (None, _) => return Err(format!("{key}: `{}` is not a table", seg.name)),
            (Some(_), _) => return Err(format!("{key}: `{}` is not a list", seg.name)),
        };
    }
    Ok(cur)
}

fn put(root: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let segs = parse_key(key)?;
    let (last, path) = segs
        .split_last()
        .ok_or_else(|| format!("empty key `{key}`"))?;
    let table = walk(root, path, key)?;
    match last.index {
        None => {
            table.insert(last.name.to_string(), value);
        }
        Some(i) => {
            let arr = table
                .entry(last.name.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(a) = arr else {
                return Err(format!("{key}: `{}` is not a list", last.name));
            };
            if i < a.len() {
                a[i] = value;
            } else if i == a.len() {
                a.push(value);
            } else {
                return Err(format!(
                    "{key}: `{}` has {} entries; use an index up to {}",
                    last.name,
                    a.len(),
                    a.len()
                ));
            }
        }
    }
    Ok(())
}

/// `config` with `key` (dotted, e.g. `logging.storage`, `network.wifi[0].hidden`) set to
/// `raw` (parsed as TOML, else taken as a string). Types and key names are checked.
pub fn set_key(config: &DeviceConfig, key: &str, raw: &str) -> Result<DeviceConfig, String> {
    let value = parse_value(raw);
    let try_with = |v: Value| -> Result<DeviceConfig, String> {
        let mut t = to_table(config);
        put(&mut t, key, v)?;
        from_table(t)
    };
    match try_with(value.clone()) {
        Ok(c) => Ok(c),
        // `--set hostname=1234` means the string "1234".
        Err(first) if !value.is_str() => {
            try_with(Value::String(raw.to_string())).map_err(|_| format!("{key}: {first}"))
        }
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// `config` without `key` (back to its default).
pub fn unset_key(config: &DeviceConfig, key: &str) -> Result<DeviceConfig, String> {
    let segs = parse_key(key)?;
    let (last, path) = segs
        .split_last()
        .ok_or_else(|| format!("empty key `{key}`"))?;
    let mut t = to_table(config);
    let missing = || format!("{key} is not set");
    // Walk without creating anything.
    let mut cur = &mut t;
    for seg in path {
        let v = cur.get_mut(seg.name).ok_or_else(missing)?;
        cur = match (seg.index, v) {
            (None, Value::Table(t)) => t,
            (Some(i), Value::Array(a)) => match a.get_mut(i) {
                Some(Value::Table(t)) => t,
                _ => return Err(missing()),
            },
            _ => return Err(missing()),
        };
    }
    match last.index {
        None => {
            cur.remove(last.name).ok_or_else(missing)?;
        }
        Some(i) => match cur.get_mut(last.name) {
            Some(Value::Array(a)) if i < a.len() => {
                a.remove(i);
            }
            _ => return Err(missing()),
        },
    }
    from_table(t).map_err(|e| format!("{key}: {e}"))
}

/// `base` with `overlay` merged in: tables merge key by key, `users`, `network.wifi` and
/// `network.ethernet` entries merge by name/SSID/interface, other values are replaced.
pub fn merge(base: &DeviceConfig, overlay: Table) -> Result<DeviceConfig, String> {
    let mut t = to_table(base);
    merge_tables(&mut t, overlay, "");
    from_table(t)
}

fn merge_tables(base: &mut Table, overlay: Table, prefix: &str) {
    for (k, v) in overlay {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let id = MERGE_BY.iter().find(|(p, _)| *p == path).map(|(_, id)| *id);
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge_tables(b, o, &path),
            (Some(Value::Array(b)), Value::Array(o)) if id.is_some() => {
                let id = id.unwrap_or_default();
                for item in o {
                    let pos = b.iter().position(|x| {
                        x.get(id).is_some() && x.get(id) == item.get(id)
                            || x.get(id).is_none() && item.get(id).is_none()
                    });
                    match (pos, item) {
                        (Some(i), Value::Table(o)) => {
                            if let Value::Table(bt) = &mut b[i] {
                                merge_tables(bt, o, &path);
                            } else {
                                b[i] = Value::Table(o);
                            }
                        }
                        (_, item) => b.push(item),
                    }
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Add or replace a Wi-Fi network from `SSID:PSK` (the first `:` separates them; `SSID`
/// alone is an open network).
pub fn upsert_wifi(c: &mut DeviceConfig, spec: &str) -> Result<(), String> {
    let (ssid, psk) = match spec.split_once(':') {
        Some((s, p)) => (s, Some(p.to_string())),
        None => (spec, None),
    };
    if ssid.is_empty() {
        return Err(format!(
            "--wifi `{spec}`: give SSID:PSK, or SSID for an open network"
        ));
    }
    match c.network.wifi.iter_mut().find(|w| w.ssid == ssid) {
        Some(w) => w.psk = psk,
        None => c.network.wifi.push(Wifi {
            ssid: ssid.to_string(),
            psk,
            ..Wifi::default()
        }),
    }
    Ok(())
}

fn ethernet_mut<'c>(c: &'c mut DeviceConfig, iface: Option<&str>) -> &'c mut Ethernet {
    let pos = c
        .network
        .ethernet
        .iter()
        .position(|e| e.interface.as_deref() == iface);
    let i = match pos {
        Some(i) => i,
        None => {
            c.network.ethernet.push(Ethernet {
                interface: iface.map(String::from),
                ..Ethernet::default()
            });
            c.network.ethernet.len() - 1
        }
    };
    &mut c.network.ethernet[i]
}

/// Static Ethernet from `IFACE=ADDR/PREFIX[,GATEWAY]` (`*` as IFACE: every interface).
pub fn upsert_static(c: &mut DeviceConfig, spec: &str) -> Result<(), String> {
    let bad = |why: String| {
        format!("--static `{spec}`: {why} (write it like eth0=192.168.1.20/24,192.168.1.1)")
    };
    let (iface, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad("no `=` after the interface".into()))?;
    let mut fields = rest.split(',');
    let addr = fields.next().unwrap_or("").trim().to_string();
    parse_cidr(&addr).map_err(bad)?;
    let gateway = match fields.next().map(str::trim) {
        Some(g) if !g.is_empty() => Some(
            g.parse::<IpAddr>()
                .map_err(|_| bad(format!("`{g}` is not a gateway address")))?,
        ),
        _ => None,
    };
    if fields.next().is_some() {
        return Err(bad("too many fields".into()));
    }
    let iface = (iface != "*").then_some(iface);
    let e = ethernet_mut(c, iface);
    e.addresses = vec![addr];
    e.gateway = gateway;
    Ok(())
}

/// DHCP on `iface` (`*`: every interface): its static settings go.
pub fn set_dhcp(c: &mut DeviceConfig, iface: &str) {
    let iface = (iface != "*").then_some(iface);
    let e = ethernet_mut(c, iface);
    e.addresses.clear();
    e.gateway = None;
}

/// The user `name`, added when missing.
pub fn user_mut<'c>(c: &'c mut DeviceConfig, name: &str) -> &'c mut User {
    let i = match c.users.iter().position(|u| u.name == name) {
        Some(i) => i,
        None => {
            c.users.push(User {
                name: name.to_string(),
                ..User::default()
            });
            c.users.len() - 1
        }
    };
    &mut c.users[i]
}

/// The keys of an `authorized_keys`/`.pub` file's text (blank lines and `#` comments skipped),
/// each checked; the error names the line.
pub fn parse_authorized_keys(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_ssh_key(line).map_err(|m| format!("line {}: {m}", i + 1))?;
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err(
            "no SSH public key in it (expected lines like `ssh-ed25519 AAAA… user@host`)".into(),
        );
    }
    Ok(keys)
}

/// Append `keys` to `list`, skipping those already there.
pub fn add_keys(list: &mut Vec<String>, keys: Vec<String>) {
    for k in keys {
        if !list.contains(&k) {
            list.push(k);
        }
    }
}

/// One difference between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added {
        key: String,
        value: String,
    },
    Removed {
        key: String,
    },
    Changed {
        key: String,
        old: String,
        new: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { key, value } => write!(f, "+ {key} = {value}"),
            Change::Removed { key } => write!(f, "- {key}"),
            Change::Changed { key, old, new } => write!(f, "~ {key}: {old} -> {new}"),
        }
    }
}

/// What changed from `old` to `new`, key by key (secrets shown as `(secret)`).
pub fn diff(old: &DeviceConfig, new: &DeviceConfig) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(&Value::Table(to_table(old)), "", &mut a);
    flatten(&Value::Table(to_table(new)), "", &mut b);
    // `false` and `0` are the defaults of every boolean and number in the schema: a new
    // Wi-Fi entry's `hidden = false` is no news.
    let is_default = |v: &String| v == "false" || v == "0";
    let mut out = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None if is_default(v) => {}
            None => out.push(Change::Removed { key: k.clone() }),
            Some(n) if n != v => out.push(Change::Changed {
                key: k.clone(),
                old: shown(k, v),
                new: shown(k, n),
            }),
            _ => {}
        }
    }
    for (k, v) in &b {
        if !a.contains_key(k) && !is_default(v) {
            out.push(Change::Added {
                key: k.clone(),
                value: shown(k, v),
            });
        }
    }
    out.sort_by(|x, y| change_key(x).cmp(change_key(y)));
    out
}

fn change_key(c: &Change) -> &str {
    match c {
        Change::Added { key, .. } | Change::Removed { key } | Change::Changed { key, .. } => key,
    }
}

fn shown(key: &str, value: &str) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if SECRET_KEYS.contains(&leaf) {
        "(secret)".into()
    } else if value.chars().count() > 72 {
        // Certificates and udev rules: the start says which.
        let head: String = value.chars().take(60).collect();
        format!("{head}… ({} characters)", value.chars().count())
    } else {
        value.to_string()
    }
}

fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &p, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, &format!("{prefix}[{i}]"), out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_config::LogStorage;
    use std::path::Path;

    fn cfg(text: &str) -> DeviceConfig {
        DeviceConfig::parse(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn set_scalars_tables_and_lists() {
        let c = DeviceConfig::default();
        let c = set_key(&c, "hostname", "gw-1").unwrap();
        assert_eq!(c.hostname.as_deref(), Some("gw-1"));
        let c = set_key(&c, "logging.storage", "volatile").unwrap();
        assert_eq!(c.logging.as_ref().unwrap().storage, LogStorage::Volatile);
        let c = set_key(&c, "network.dns", r#"["1.1.1.1", "9.9.9.9"]"#).unwrap();
        assert_eq!(c.network.dns.len(), 2);
        let c = set_key(&c, "network.wifi[0].ssid", "Lab").unwrap();
        let c = set_key(&c, "network.wifi[0].hidden", "true").unwrap();
        assert!(c.network.wifi[0].hidden);
        let c = set_key(&c, "time.ntp[0]", "pool.ntp.org").unwrap();
        assert_eq!(c.time.ntp, ["pool.ntp.org"]);
        // A number where a string is wanted is taken as the string.
        let c = set_key(&c, "hostname", "1234").unwrap();
        assert_eq!(c.hostname.as_deref(), Some("1234"));
        let c = set_key(&c, "health.deadline_secs", "120").unwrap();
        assert_eq!(c.health.unwrap().deadline_secs, Some(120));
    }

    #[test]
    fn set_refuses_unknown_keys_and_types() {
        let c = DeviceConfig::default();
        let e = set_key(&c, "hostnme", "x").unwrap_err();
        assert!(e.contains("hostnme"), "{e}");
        let e = set_key(&c, "health.deadline_secs", "soon").unwrap_err();
        assert!(e.contains("health.deadline_secs"), "{e}");
        let e = set_key(&c, "logging.storage", "disk").unwrap_err();
        assert!(e.contains("disk"), "{e}");
        assert!(set_key(&c, "network.wifi[3].ssid", "x").is_err());
        assert!(set_key(&c, "Network", "x").is_err());
        assert!(set_key(&c, "a..b", "x").is_err());
        assert!(set_key(&c, "hostname.x", "y").is_err());
    }

    #[test]
    fn unset_removes() {
        let c = cfg("hostname = \"a\"\n[network]\ndns = [\"1.1.1.1\"]");
        let c = unset_key(&c, "hostname").unwrap();
        assert_eq!(c.hostname, None);
        let c = unset_key(&c, "network.dns[0]").unwrap();
        assert!(c.network.dns.is_empty());
        assert!(unset_key(&c, "timezone").is_err());
    }

    #[test]
    fn merge_by_identity() {
        let base = cfg(
            "hostname = \"a\"\n[[users]]\nname = \"ops\"\nsudo = true\n[[network.wifi]]\nssid = \"A\"\npsk = \"aaaaaaaa\"",
        );
        let overlay: Table = toml::from_str(
            "timezone = \"UTC\"\n[[users]]\nname = \"ops\"\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx\"]\n[[users]]\nname = \"dev\"\n[[network.wifi]]\nssid = \"A\"\npsk = \"bbbbbbbb\"\n[[network.wifi]]\nssid = \"B\"",
        )
        .unwrap();
        let m = merge(&base, overlay).unwrap();
        assert_eq!(m.hostname.as_deref(), Some("a"));
        assert_eq!(m.timezone.as_deref(), Some("UTC"));
        assert_eq!(m.users.len(), 2);
        assert!(m.users[0].sudo, "kept from base");
        assert_eq!(m.users[0].ssh_authorized_keys.len(), 1);
        assert_eq!(m.network.wifi.len(), 2);
        assert_eq!(m.network.wifi[0].psk.as_deref(), Some("bbbbbbbb"));
    }

    #[test]
    fn diff_lists_changes_and_hides_secrets() {
        let a = cfg(
            "hostname = \"a\"\ntimezone = \"UTC\"\n[[network.wifi]]\nssid = \"A\"\npsk = \"aaaaaaaa\"",
        );
        let b = cfg(
            "hostname = \"b\"\ncountry = \"DE\"\n[[network.wifi]]\nssid = \"A\"\npsk = \"bbbbbbbb\"",
        );
        let d: Vec<String> = diff(&a, &b).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            d,
            [
                "+ country = \"DE\"",
                "~ hostname: \"a\" -> \"b\"",
                "~ network.wifi[0].psk: (secret) -> (secret)",
                "- timezone",
            ]
        );
        assert!(diff(&a, &a).is_empty());
        let long = set_key(&a, "udev_rules[0]", &"x".repeat(500)).unwrap();
        let d = diff(&a, &long)[0].to_string();
        assert!(d.len() < 100 && d.contains("characters"), "{d}");
    }
    #[test]
    fn flag_helpers() {
        let mut c = DeviceConfig::default();
        upsert_wifi(&mut c, "Lab:secret123").unwrap();
        upsert_wifi(&mut c, "Cafe").unwrap();
        upsert_wifi(&mut c, "Lab:other:pass").unwrap();
        assert_eq!(c.network.wifi.len(), 2);
        assert_eq!(c.network.wifi[0].psk.as_deref(), Some("other:pass"));
        assert_eq!(c.network.wifi[1].psk, None);
        assert!(upsert_wifi(&mut c, ":x").is_err());

        upsert_static(&mut c, "eth0=10.0.0.2/24,10.0.0.1").unwrap();
        upsert_static(&mut c, "eth0=10.0.0.3/24").unwrap();
        assert_eq!(c.network.ethernet.len(), 1);
        assert_eq!(c.network.ethernet[0].addresses, ["10.0.0.3/24"]);
        assert_eq!(c.network.ethernet[0].gateway, None);
        for bad in [
            "eth0",
            "eth0=10.0.0.2",
            "eth0=10.0.0.2/24,gw",
            "eth0=1.2.3.4/8,1.1.1.1,x",
        ] {
            assert!(upsert_static(&mut c, bad).is_err(), "{bad}");
        }
        set_dhcp(&mut c, "eth0");
        assert!(c.network.ethernet[0].addresses.is_empty());
        set_dhcp(&mut c, "*");
        assert_eq!(c.network.ethernet[1].interface, None);

        user_mut(&mut c, "ops").sudo = true;
        user_mut(&mut c, "ops").password_hash = Some("$6$a$b".into());
        assert_eq!(c.users.len(), 1);
        assert!(c.users[0].sudo);

        let keys = parse_authorized_keys(
            "# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx a@b\n\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB c@d\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        let e =
            parse_authorized_keys("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx\nnope\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_authorized_keys("# nothing\n").is_err());
        let mut list = vec![keys[0].clone()];
        add_keys(&mut list, keys);
        assert_eq!(list.len(), 2);
    }
}
