//! The Compose subset Otter runs on devices (see `docs/apps.md`).
//!
//! The YAML is read into a generic value first and then walked key by key: every key is
//! either understood or rejected with its full path (`services.web.build`), so nothing in a
//! compose file is silently ignored, and each short/long syntax Compose allows gets an error
//! that names the offending value.

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A compose file that could not be accepted. `key` is the full key path (empty for a YAML
/// syntax error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
pub struct ComposeError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// An error inside the walk, before the file name is attached.
#[derive(Debug)]
struct KeyError {
    key: String,
    message: String,
}

type R<T> = std::result::Result<T, KeyError>;

fn kerr<T>(key: &str, message: impl Into<String>) -> R<T> {
    Err(KeyError {
        key: key.to_string(),
        message: message.into(),
    })
}

/// A parsed, cross-checked compose file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeFile {
    /// Top-level `name` (informational; the app's name comes from `otter.toml` or the app set).
    pub name: Option<String>,
    pub services: BTreeMap<String, Service>,
    /// Top-level `volumes`: the named volumes services may use.
    pub volumes: BTreeMap<String, VolumeDecl>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeDecl {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub env_file: Vec<EnvFile>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    pub restart: Restart,
    pub depends_on: BTreeMap<String, Condition>,
    pub healthcheck: Option<Healthcheck>,
    pub privileged: bool,
    pub devices: Vec<Device>,
    pub cap_add: Vec<String>,
    pub network_mode: NetworkMode,
    pub labels: BTreeMap<String, String>,
    /// Bytes.
    pub mem_limit: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvFile {
    pub path: String,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    No,
    Always,
    /// `on-failure[:N]`: at most N restarts.
    OnFailure(Option<u32>),
    UnlessStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: Option<String>,
    /// `None`: podman picks a free host port.
    pub published: Option<PortRange>,
    pub target: PortRange,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mount {
    /// A named volume (`source` declared under top-level `volumes`), or an anonymous one
    /// (`source: None`). Lives in podman's storage on the data partition.
    Volume {
        source: Option<String>,
        target: String,
        read_only: bool,
    },
    /// A host path; relative paths are relative to the compose file's directory.
    Bind {
        source: String,
        target: String,
        read_only: bool,
        create_host_path: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthTest {
    /// `["NONE"]` or `disable: true`: no health check, not even the image's.
    Disabled,
    /// `["CMD", prog, args…]`: run without a shell.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "…"]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `None`: keep the image's own test, with these timings.
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

impl Healthcheck {
    pub fn is_disabled(&self) -> bool {
        matches!(self.test, Some(HealthTest::Disabled))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub host: String,
    pub container: String,
    /// Some of `rwm`.
    pub permissions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Not set: the app's own network, where services find each other by name.
    App,
    Host,
    None,
    /// Podman's default bridge network.
    Bridge,
    /// `service:NAME`: share that service's network namespace.
    Service(String),
}

/// Top-level and service keys Compose has but Otter does not run, with what to do instead.
fn unsupported_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "build" => {
            "images are not built on devices: build and push the image, then name it in `image`"
        }
        "networks" => {
            "apps get one network per app where services reach each other by name; use `network_mode` for `host`, `none` or `bridge`"
        }
        "secrets" | "configs" => "mount the file with a bind mount in `volumes` instead",
        "container_name" => {
            "container names are set by Otter (`APP.SERVICE`) so updates can replace them"
        }
        "deploy" => "use `mem_limit` and `cpus` for limits and `restart` for the restart policy",
        "extends" | "include" => "put the whole app in one compose file",
        "profiles" => "every service of an app runs; split optional services into another app",
        "links" | "external_links" => "services of an app reach each other by service name",
        "scale" => "each service runs once",
        "version" => return None,
        _ => return None,
    })
}

fn unknown_key(path: &str, key: &str, accepted: &[&str]) -> KeyError {
    let full = join(path, key);
    let message = match unsupported_hint(key) {
        Some(h) => format!("not supported on Otter devices: {h} (docs/apps.md)"),
        None => format!(
            "unknown or unsupported key (accepted here: {}; see docs/apps.md)",
            accepted.join(", ")
        ),
    };
    KeyError { key: full, message }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A YAML mapping being taken apart: every key taken is understood, whatever is left at
/// `finish` is rejected.
struct Obj {
    path: String,
    entries: Vec<(String, Value)>,
}

impl Obj {
    fn new(path: &str, v: Value) -> R<Obj> {
        let Value::Mapping(m) = v else {
            return kerr(path, format!("must be a mapping, not {}", kind(&v)));
        };
        let mut entries = Vec::new();
        for (k, v) in m {
            let k = match k {
                Value::String(s) => s,
                other => {
                    return kerr(
                        path,
                        format!("keys must be strings, found {}", kind(&other)),
                    );
                }
            };
            entries.push((k, v));
        }
        Ok(Obj {
            path: path.to_string(),
            entries,
        })
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Present and not `null`.
    fn take_some(&mut self, key: &str) -> Option<Value> {
        self.take(key).filter(|v| !v.is_null())
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn finish(self, accepted: &[&str]) -> R<()> {
        match self.entries.into_iter().next() {
            None => Ok(()),
            Some((k, _)) => Err(unknown_key(&self.path, &k, accepted)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Compose interpolates `${VAR}` and `$VAR` from the environment of the `docker compose`
/// command. A device has no such environment, so interpolation is refused rather than
/// left to mean something else; `$$` is a literal `$`, as in Compose.
fn uninterpolate(key: &str, s: &str) -> R<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some(n) if *n == '{' || *n == '_' || n.is_ascii_alphabetic() => {
                return kerr(
                    key,
                    format!(
                        "`{s}` uses variable interpolation, which devices do not do: write the value itself, or `$$` for a literal `$`"
                    ),
                );
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

/// A string; numbers and booleans are accepted where Compose takes them as strings.
fn scalar(key: &str, v: &Value) -> R<String> {
    match v {
        Value::String(s) => uninterpolate(key, s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => kerr(key, format!("must be a string, not {}", kind(other))),
    }
}

fn string(key: &str, v: &Value) -> R<String> {
    match v {
        Value::String(s) => uninterpolate(key, s),
        other => kerr(key, format!("must be a string, not {}", kind(other))),
    }
}

fn boolean(key: &str, v: &Value) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => kerr(key, format!("must be true or false, not {}", kind(other))),
    }
}

fn seq(key: &str, v: Value) -> R<Vec<Value>> {
    match v {
        Value::Sequence(s) => Ok(s),
        other => kerr(key, format!("must be a list, not {}", kind(&other))),
    }
}

fn string_list(key: &str, v: Value) -> R<Vec<String>> {
    seq(key, v)?
        .iter()
        .enumerate()
        .map(|(i, x)| string(&format!("{key}[{i}]"), x))
        .collect()
}

/// `command` / `entrypoint`: a list, or a string split like a shell would.
fn command_words(key: &str, v: Value) -> R<Vec<String>> {
    match v {
        Value::String(s) => {
            let s = uninterpolate(key, &s)?;
            shlex::split(&s).ok_or_else(|| KeyError {
                key: key.to_string(),
                message: format!("`{s}` has an unterminated quote or escape"),
            })
        }
        Value::Sequence(_) => string_list(key, v),
        other => kerr(
            key,
            format!(
                "must be a string or a list of strings, not {}",
                kind(&other)
            ),
        ),
    }
}

/// `environment` / `labels`: a mapping, or a list of `KEY=VALUE`.
fn key_values(key: &str, v: Value, what: &str) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(_) => {
            let o = Obj::new(key, v)?;
            for (k, val) in o.entries {
                let kk = join(key, &k);
                check_var_name(&kk, &k, what)?;
                if val.is_null() {
                    return kerr(
                        &kk,
                        "has no value; Compose would take it from the shell running `docker compose`, which a device does not have: give the value",
                    );
                }
                out.insert(k, scalar(&kk, &val)?);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let ik = format!("{key}[{i}]");
                let s = string(&ik, item)?;
                let Some((k, val)) = s.split_once('=') else {
                    return kerr(
                        &ik,
                        format!(
                            "`{s}` must be KEY=VALUE (a bare KEY would come from the shell running `docker compose`, which a device does not have)"
                        ),
                    );
                };
                check_var_name(&ik, k, what)?;
                out.insert(k.to_string(), val.to_string());
            }
        }
        other => {
            return kerr(
                key,
                format!(
                    "must be a mapping or a list of KEY=VALUE, not {}",
                    kind(&other)
                ),
            );
        }
    }
    Ok(out)
}

fn check_var_name(key: &str, name: &str, what: &str) -> R<()> {
    if name.is_empty() || name.contains(['=', '\n', '\0']) || name.contains(char::is_whitespace) {
        return kerr(
            key,
            format!("`{name}` is not a valid {what} name (no spaces, `=` or newlines)"),
        );
    }
    Ok(())
}

/// Compose durations: `1h30m`, `10s`, `1m30s`, `500ms`, `100us`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1e3,
            "us" | "µs" => n / 1e6,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
    }
    Some(total)
}

fn duration(key: &str, v: &Value) -> R<Duration> {
    let s = string(key, v)?;
    parse_duration(&s).ok_or_else(|| KeyError {
        key: key.to_string(),
        message: format!(
            "`{s}` is not a duration like 30s, 1m30s, 500ms or 1h (units h, m, s, ms, us)"
        ),
    })
}

/// Compose byte values: an integer (bytes) or `{amount}{b,k,m,g}` (also `kb`, `mb`, `gb`).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..num_len].parse().ok()?;
    let mult: u64 = match &s[num_len..] {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    let bytes = n * mult as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn bytes(key: &str, v: &Value) -> R<u64> {
    let s = match v {
        Value::Number(n) if n.is_u64() => {
            return n.as_u64().filter(|b| *b > 0).ok_or_else(|| KeyError {
                key: key.into(),
                message: "must be more than 0".into(),
            });
        }
        Value::String(s) => s.clone(),
        other => {
            return kerr(
                key,
                format!("must be a size like 512m or 1g, not {}", kind(other)),
            );
        }
    };
    parse_bytes(&s).ok_or_else(|| KeyError {
        key: key.to_string(),
        message: format!("`{s}` is not a size like 512m, 1.5g or 65536 (units b, k, m, g)"),
    })
}

/// `[a-z0-9]` with inner `-` and `_`: service, app and volume names become unit and
/// container names (`otter-app-APP.SERVICE.service`), so they must be safe in both.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

fn check_name(key: &str, name: &str, what: &str) -> R<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        kerr(
            key,
            format!(
                "{what} name `{name}` must be 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit (it names systemd units and containers)"
            ),
        )
    }
}

const TOP_KEYS: &[&str] = &["services", "volumes", "name", "version", "x-*"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "restart",
    "depends_on",
    "healthcheck",
    "privileged",
    "devices",
    "cap_add",
    "network_mode",
    "labels",
    "mem_limit",
    "cpus",
    "x-*",
];

/// Parse a compose file's text. `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<ComposeFile, ComposeError> {
    let wrap = |e: KeyError| ComposeError {
        file: file.to_string(),
        key: e.key,
        message: e.message,
    };
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| ComposeError {
        file: file.to_string(),
        key: String::new(),
        message: format!("not valid YAML: {e}"),
    })?;
    // `<<: *anchor` merge keys, which compose files use with `x-` blocks.
    value.apply_merge().map_err(|e| ComposeError {
        file: file.to_string(),
        key: String::new(),
        message: format!("bad YAML merge key (`<<`): {e}"),
    })?;
    parse_value(value).map_err(wrap)
}

fn parse_value(value: Value) -> R<ComposeFile> {
    if value.is_null() {
        return kerr(
            "services",
            "the file is empty; an app needs at least one service",
        );
    }
    let mut top = Obj::new("", value)?;
    // `x-` keys are Compose's place for YAML anchors; `version` is obsolete in Compose too.
    top.entries.retain(|(k, _)| !k.starts_with("x-"));
    let _ = top.take("version");
    let name = match top.take_some("name") {
        Some(v) => {
            let n = string("name", &v)?;
            check_name("name", &n, "project")?;
            Some(n)
        }
        None => None,
    };
    let mut volumes = BTreeMap::new();
    if let Some(v) = top.take_some("volumes") {
        let o = Obj::new("volumes", v)?;
        for (vname, decl) in o.entries {
            let key = join("volumes", &vname);
            check_name(&key, &vname, "volume")?;
            volumes.insert(vname, volume_decl(&key, decl)?);
        }
    }
    let Some(services_v) = top.take_some("services") else {
        return kerr("services", "missing: an app needs at least one service");
    };
    top.finish(TOP_KEYS)?;
    let so = Obj::new("services", services_v)?;
    if so.entries.is_empty() {
        return kerr("services", "is empty: an app needs at least one service");
    }
    let mut services = BTreeMap::new();
    for (sname, sv) in so.entries {
        let key = join("services", &sname);
        check_name(&key, &sname, "service")?;
        services.insert(sname, service(&key, sv)?);
    }
    let file = ComposeFile {
        name,
        services,
        volumes,
    };
    cross_check(&file)?;
    Ok(file)
}

fn volume_decl(key: &str, v: Value) -> R<VolumeDecl> {
    if v.is_null() {
        return Ok(VolumeDecl::default());
    }
    let mut o = Obj::new(key, v)?;
    let labels = match o.take_some("labels") {
        Some(l) => key_values(&o.key("labels"), l, "label")?,
        None => BTreeMap::new(),
    };
    if let Some((k, _)) = o.entries.first() {
        let hint = match k.as_str() {
            "driver" | "driver_opts" => {
                "named volumes are directories in podman's storage on the data partition; use a bind mount for anything else"
            }
            "external" | "name" => {
                "volume names are set by Otter (`APP_VOLUME`) so two apps never share one by accident"
            }
            _ => "accepted here: labels",
        };
        return kerr(
            &o.key(k),
            format!("not supported on Otter devices: {hint} (docs/apps.md)"),
        );
    }
    Ok(VolumeDecl { labels })
}

fn service(key: &str, v: Value) -> R<Service> {
    if v.is_null() {
        return kerr(key, "is empty: a service needs at least `image`");
    }
    let mut o = Obj::new(key, v)?;
    o.entries.retain(|(k, _)| !k.starts_with("x-"));
    let image = match o.take_some("image") {
        Some(v) => image_ref(&o.key("image"), &string(&o.key("image"), &v)?)?,
        None => {
            if o.entries.iter().any(|(k, _)| k == "build") {
                return Err(unknown_key(key, "build", SERVICE_KEYS));
            }
            return kerr(&o.key("image"), "missing: every service needs an image");
        }
    };
    let command = o
        .take("command")
        .map(|v| command_words(&o.key("command"), v))
        .transpose()?;
    let entrypoint = o
        .take("entrypoint")
        .map(|v| command_words(&o.key("entrypoint"), v))
        .transpose()?;
    let environment = o
        .take_some("environment")
        .map(|v| key_values(&o.key("environment"), v, "variable"))
        .transpose()?
        .unwrap_or_default();
    let env_file = o
        .take_some("env_file")
        .map(|v| env_files(&o.key("env_file"), v))
        .transpose()?
        .unwrap_or_default();
    let ports = match o.take_some("ports") {
        Some(v) => {
            let k = o.key("ports");
            seq(&k, v)?
                .into_iter()
                .enumerate()
                .map(|(i, p)| port(&format!("{k}[{i}]"), p))
                .collect::<R<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let volumes = match o.take_some("volumes") {
        Some(v) => {
            let k = o.key("volumes");
            seq(&k, v)?
                .into_iter()
                .enumerate()
                .map(|(i, m)| mount(&format!("{k}[{i}]"), m))
                .collect::<R<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let restart = match o.take_some("restart") {
        Some(v) => restart(&o.key("restart"), &v)?,
        None => Restart::No,
    };
    let depends_on = o
        .take_some("depends_on")
        .map(|v| depends_on(&o.key("depends_on"), v))
        .transpose()?
        .unwrap_or_default();
    let healthcheck = o
        .take_some("healthcheck")
        .map(|v| healthcheck(&o.key("healthcheck"), v))
        .transpose()?;
    let privileged = o
        .take_some("privileged")
        .map(|v| boolean(&o.key("privileged"), &v))
        .transpose()?
        .unwrap_or(false);
    let devices = match o.take_some("devices") {
        Some(v) => {
            let k = o.key("devices");
            seq(&k, v)?
                .iter()
                .enumerate()
                .map(|(i, d)| device(&format!("{k}[{i}]"), d))
                .collect::<R<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let cap_add = match o.take_some("cap_add") {
        Some(v) => {
            let k = o.key("cap_add");
            let caps = string_list(&k, v)?;
            for (i, c) in caps.iter().enumerate() {
                let bare = c.strip_prefix("CAP_").unwrap_or(c);
                if bare.is_empty() || !bare.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_') {
                    return kerr(
                        &format!("{k}[{i}]"),
                        format!("`{c}` is not a capability name like NET_ADMIN or SYS_TIME"),
                    );
                }
            }
            caps
        }
        None => Vec::new(),
    };
    let network_mode = match o.take_some("network_mode") {
        Some(v) => network_mode(&o.key("network_mode"), &v)?,
        None => NetworkMode::App,
    };
    let labels = o
        .take_some("labels")
        .map(|v| key_values(&o.key("labels"), v, "label"))
        .transpose()?
        .unwrap_or_default();
    let mem_limit = o
        .take_some("mem_limit")
        .map(|v| bytes(&o.key("mem_limit"), &v))
        .transpose()?;
    let cpus = match o.take_some("cpus") {
        Some(v) => {
            let k = o.key("cpus");
            let n = match &v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n > 0.0 && n.is_finite() => Some(n),
                _ => {
                    return kerr(
                        &k,
                        format!(
                            "must be a number of CPUs above 0 like 0.5 or 2, not {}",
                            scalar(&k, &v).unwrap_or_else(|_| kind(&v).into())
                        ),
                    );
                }
            }
        }
        None => None,
    };
    if !ports.is_empty() && network_mode == NetworkMode::Host {
        return kerr(
            &o.key("ports"),
            "cannot be used with `network_mode: host` (the container already uses the host's ports): remove `ports`",
        );
    }
    if !ports.is_empty() && matches!(network_mode, NetworkMode::None | NetworkMode::Service(_)) {
        return kerr(
            &o.key("ports"),
            "cannot be used with this `network_mode` (the container has no network of its own to publish from)",
        );
    }
    o.finish(SERVICE_KEYS)?;
    Ok(Service {
        image,
        command,
        entrypoint,
        environment,
        env_file,
        ports,
        volumes,
        restart,
        depends_on,
        healthcheck,
        privileged,
        devices,
        cap_add,
        network_mode,
        labels,
        mem_limit,
        cpus,
    })
}

/// An image reference as podman takes it: `[registry/]repo[:tag][@sha256:…]`.
fn image_ref(key: &str, s: &str) -> R<String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let digest_ok = match digest {
        None => true,
        Some(d) => d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())),
    };
    if s.is_empty() || !ok_chars || name.is_empty() || name.starts_with(['/', ':']) || !digest_ok {
        return kerr(
            key,
            format!(
                "`{s}` is not an image reference like registry.example.com/team/web:1.2 or …@sha256:<64 hex digits>"
            ),
        );
    }
    Ok(s.to_string())
}

fn env_files(key: &str, v: Value) -> R<Vec<EnvFile>> {
    let one = |k: &str, v: Value| -> R<EnvFile> {
        match v {
            Value::String(_) => Ok(EnvFile {
                path: string(k, &v)?,
                required: true,
            }),
            Value::Mapping(_) => {
                let mut o = Obj::new(k, v)?;
                let path = match o.take_some("path") {
                    Some(p) => string(&o.key("path"), &p)?,
                    None => return kerr(&o.key("path"), "missing"),
                };
                let required = o
                    .take_some("required")
                    .map(|r| boolean(&o.key("required"), &r))
                    .transpose()?
                    .unwrap_or(true);
                o.finish(&["path", "required"])?;
                Ok(EnvFile { path, required })
            }
            other => kerr(
                k,
                format!("must be a path or {{path, required}}, not {}", kind(&other)),
            ),
        }
    };
    match v {
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, x)| one(&format!("{key}[{i}]"), x))
            .collect(),
        other => Ok(vec![one(key, other)?]),
    }
}

fn port_range(key: &str, s: &str) -> R<PortRange> {
    let bad = || KeyError {
        key: key.to_string(),
        message: format!("`{s}` is not a port (1-65535) or a range like 8000-8010"),
    };
    let p = |x: &str| x.parse::<u16>().ok().filter(|n| *n > 0);
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (p(a).ok_or_else(bad)?, p(b).ok_or_else(bad)?),
        None => {
            let n = p(s).ok_or_else(bad)?;
            (n, n)
        }
    };
    if end < start {
        return Err(bad());
    }
    Ok(PortRange { start, end })
}

fn protocol(key: &str, s: &str) -> R<Protocol> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => kerr(key, format!("protocol `{s}` must be tcp or udp")),
    }
}

fn port(key: &str, v: Value) -> R<Port> {
    let p = match v {
        // Short syntax: [[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]
        Value::String(_) | Value::Number(_) => {
            let s = scalar(key, &v)?;
            let (addr, proto) = match s.rsplit_once('/') {
                Some((a, p)) => (a, protocol(key, p)?),
                None => (s.as_str(), Protocol::Tcp),
            };
            // An IPv6 host address is written in brackets: [::1]:8080:80
            let (host_ip, rest) = if let Some(r) = addr.strip_prefix('[') {
                let Some((ip, rest)) = r.split_once("]:") else {
                    return kerr(
                        key,
                        format!("`{s}`: IPv6 address must be `[ADDR]:PUBLISHED:TARGET`"),
                    );
                };
                (Some(ip.to_string()), rest)
            } else {
                let parts: Vec<&str> = addr.split(':').collect();
                match parts.len() {
                    1 | 2 => (None, addr),
                    3 => (Some(parts[0].to_string()), &addr[parts[0].len() + 1..]),
                    _ => {
                        return kerr(
                            key,
                            format!(
                                "`{s}` must be TARGET, PUBLISHED:TARGET or HOST_IP:PUBLISHED:TARGET (with /tcp or /udp)"
                            ),
                        );
                    }
                }
            };
            let (published, target) = match rest.split_once(':') {
                Some(("", t)) => (None, port_range(key, t)?),
                Some((p, t)) => (Some(port_range(key, p)?), port_range(key, t)?),
                None => (None, port_range(key, rest)?),
            };
            Port {
                host_ip,
                published,
                target,
                protocol: proto,
            }
        }
        Value::Mapping(_) => {
            let mut o = Obj::new(key, v)?;
            let target = match o.take_some("target") {
                Some(t) => port_range(&o.key("target"), &scalar(&o.key("target"), &t)?)?,
                None => return kerr(&o.key("target"), "missing: the container port"),
            };
            let published = o
                .take_some("published")
                .map(|p| port_range(&o.key("published"), &scalar(&o.key("published"), &p)?))
                .transpose()?;
            let host_ip = o
                .take_some("host_ip")
                .map(|h| string(&o.key("host_ip"), &h))
                .transpose()?;
            let proto = match o.take_some("protocol") {
                Some(p) => protocol(&o.key("protocol"), &string(&o.key("protocol"), &p)?)?,
                None => Protocol::Tcp,
            };
            if let Some(m) = o.take_some("mode") {
                let m = string(&o.key("mode"), &m)?;
                if m != "host" && m != "ingress" {
                    return kerr(&o.key("mode"), format!("`{m}` must be host or ingress"));
                }
            }
            let _ = o.take("name");
            o.finish(&["target", "published", "host_ip", "protocol", "mode", "name"])?;
            Port {
                host_ip,
                published,
                target,
                protocol: proto,
            }
        }
        other => {
            return kerr(
                key,
                format!(
                    "must be a string like \"8080:80\" or a mapping with `target`, not {}",
                    kind(&other)
                ),
            );
        }
    };
    if let Some(ip) = &p.host_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return kerr(key, format!("host address `{ip}` is not an IP address"));
    }
    if let Some(pub_) = p.published
        && pub_.end - pub_.start != p.target.end - p.target.start
    {
        return kerr(
            key,
            format!(
                "published range {pub_} and target range {} have different lengths",
                p.target
            ),
        );
    }
    Ok(p)
}

fn container_path(key: &str, s: &str) -> R<String> {
    if !s.starts_with('/') || s.contains(['\n', '\0', ',']) {
        return kerr(
            key,
            format!("`{s}` must be an absolute path in the container (without commas)"),
        );
    }
    Ok(s.to_string())
}

/// A bind source: an absolute host path, or `./`/`../` relative to the compose file.
fn is_host_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s == "." || s == ".."
}

fn mount(key: &str, v: Value) -> R<Mount> {
    match v {
        // Short syntax: [SOURCE:]TARGET[:MODE]
        Value::String(_) => {
            let s = string(key, &v)?;
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, *t, None),
                [s, t] => (Some(*s), *t, None),
                [s, t, m] => (Some(*s), *t, Some(*m)),
                _ => {
                    return kerr(key, format!("`{s}` must be [SOURCE:]TARGET[:MODE]"));
                }
            };
            let target = container_path(key, target)?;
            let mut read_only = false;
            if let Some(mode) = mode {
                for m in mode.split(',') {
                    match m {
                        "ro" => read_only = true,
                        "rw" => read_only = false,
                        // SELinux relabelling: not used on Otter's Debian images.
                        "z" | "Z" => {}
                        _ => {
                            return kerr(
                                key,
                                format!("mode `{m}` in `{s}` must be ro, rw, z or Z"),
                            );
                        }
                    }
                }
            }
            Ok(match source {
                None => Mount::Volume {
                    source: None,
                    target,
                    read_only,
                },
                Some(src) if is_host_path(src) => Mount::Bind {
                    source: src.to_string(),
                    target,
                    read_only,
                    create_host_path: true,
                },
                Some(src) => {
                    if src.starts_with('~') {
                        return kerr(
                            key,
                            format!(
                                "`{src}`: a device has no home directory for `~`; use an absolute path"
                            ),
                        );
                    }
                    check_name(key, src, "volume")?;
                    Mount::Volume {
                        source: Some(src.to_string()),
                        target,
                        read_only,
                    }
                }
            })
        }
        Value::Mapping(_) => {
            let mut o = Obj::new(key, v)?;
            let ty = match o.take_some("type") {
                Some(t) => string(&o.key("type"), &t)?,
                None => return kerr(&o.key("type"), "missing: volume, bind or tmpfs"),
            };
            let target = match o.take_some("target") {
                Some(t) => container_path(&o.key("target"), &string(&o.key("target"), &t)?)?,
                None => return kerr(&o.key("target"), "missing: the path in the container"),
            };
            let read_only = o
                .take_some("read_only")
                .map(|r| boolean(&o.key("read_only"), &r))
                .transpose()?
                .unwrap_or(false);
            let source = o
                .take_some("source")
                .map(|s| string(&o.key("source"), &s))
                .transpose()?;
            let m = match ty.as_str() {
                "volume" => {
                    if let Some(s) = &source {
                        check_name(&o.key("source"), s, "volume")?;
                    }
                    if let Some(vo) = o.take_some("volume") {
                        let mut vo = Obj::new(&o.key("volume"), vo)?;
                        if let Some(n) = vo.take_some("nocopy") {
                            let nocopy = boolean(&vo.key("nocopy"), &n)?;
                            if nocopy {
                                return kerr(
                                    &vo.key("nocopy"),
                                    "true is not supported: podman copies the image's files into a new volume",
                                );
                            }
                        }
                        vo.finish(&["nocopy"])?;
                    }
                    o.finish(&["type", "source", "target", "read_only", "volume"])?;
                    Mount::Volume {
                        source,
                        target,
                        read_only,
                    }
                }
                "bind" => {
                    let Some(source) = source else {
                        return kerr(&o.key("source"), "missing: the host path to mount");
                    };
                    if !is_host_path(&source) {
                        return kerr(
                            &o.key("source"),
                            format!("`{source}` must be an absolute path or start with ./ or ../"),
                        );
                    }
                    let mut create_host_path = true;
                    if let Some(b) = o.take_some("bind") {
                        let mut bo = Obj::new(&o.key("bind"), b)?;
                        if let Some(c) = bo.take_some("create_host_path") {
                            create_host_path = boolean(&bo.key("create_host_path"), &c)?;
                        }
                        if let Some(p) = bo.take_some("propagation") {
                            let p = string(&bo.key("propagation"), &p)?;
                            if p != "rprivate" && p != "private" {
                                return kerr(
                                    &bo.key("propagation"),
                                    format!(
                                        "`{p}` is not supported (only private/rprivate, the default)"
                                    ),
                                );
                            }
                        }
                        bo.finish(&["create_host_path", "propagation"])?;
                    }
                    o.finish(&["type", "source", "target", "read_only", "bind"])?;
                    Mount::Bind {
                        source,
                        target,
                        read_only,
                        create_host_path,
                    }
                }
                "tmpfs" => {
                    if source.is_some() {
                        return kerr(&o.key("source"), "a tmpfs has no source: remove it");
                    }
                    let mut size = None;
                    if let Some(t) = o.take_some("tmpfs") {
                        let mut to = Obj::new(&o.key("tmpfs"), t)?;
                        size = to
                            .take_some("size")
                            .map(|s| bytes(&to.key("size"), &s))
                            .transpose()?;
                        to.finish(&["size"])?;
                    }
                    if read_only {
                        return kerr(
                            &o.key("read_only"),
                            "a read-only tmpfs is of no use: remove it",
                        );
                    }
                    o.finish(&["type", "target", "tmpfs"])?;
                    Mount::Tmpfs { target, size }
                }
                other => {
                    return kerr(
                        &o.key("type"),
                        format!("`{other}` is not supported: use volume, bind or tmpfs"),
                    );
                }
            };
            Ok(m)
        }
        other => kerr(
            key,
            format!(
                "must be a string like \"data:/var/lib/app\" or a mapping with `type`, not {}",
                kind(&other)
            ),
        ),
    }
}

fn restart(key: &str, v: &Value) -> R<Restart> {
    let s = match v {
        // YAML 1.1 reads a bare `no` as false.
        Value::Bool(false) => "no".to_string(),
        _ => string(key, v)?,
    };
    Ok(match s.as_str() {
        "no" => Restart::No,
        "always" => Restart::Always,
        "unless-stopped" => Restart::UnlessStopped,
        "on-failure" => Restart::OnFailure(None),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) if n > 0 => Restart::OnFailure(Some(n)),
            _ => {
                return kerr(
                    key,
                    format!("`{s}` must be no, always, unless-stopped, on-failure or on-failure:N"),
                );
            }
        },
    })
}

fn depends_on(key: &str, v: Value) -> R<BTreeMap<String, Condition>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(_) => {
            for name in string_list(key, v)? {
                out.insert(name, Condition::Started);
            }
        }
        Value::Mapping(_) => {
            let o = Obj::new(key, v)?;
            for (name, dv) in o.entries {
                let dk = join(key, &name);
                let cond = if dv.is_null() {
                    Condition::Started
                } else {
                    let mut d = Obj::new(&dk, dv)?;
                    let cond = match d.take_some("condition") {
                        None => Condition::Started,
                        Some(c) => match string(&d.key("condition"), &c)?.as_str() {
                            "service_started" => Condition::Started,
                            "service_healthy" => Condition::Healthy,
                            "service_completed_successfully" => Condition::CompletedSuccessfully,
                            other => {
                                return kerr(
                                    &d.key("condition"),
                                    format!(
                                        "`{other}` must be service_started, service_healthy or service_completed_successfully"
                                    ),
                                );
                            }
                        },
                    };
                    if let Some(r) = d.take_some("restart") {
                        boolean(&d.key("restart"), &r)?;
                    }
                    if let Some(r) = d.take_some("required")
                        && !boolean(&d.key("required"), &r)?
                    {
                        return kerr(
                            &d.key("required"),
                            "false is not supported: every dependency of a service must exist",
                        );
                    }
                    d.finish(&["condition", "restart", "required"])?;
                    cond
                };
                out.insert(name, cond);
            }
        }
        other => {
            return kerr(
                key,
                format!(
                    "must be a list of services or a mapping of service to {{condition}}, not {}",
                    kind(&other)
                ),
            );
        }
    }
    Ok(out)
}

fn healthcheck(key: &str, v: Value) -> R<Healthcheck> {
    let mut o = Obj::new(key, v)?;
    let disable = o
        .take_some("disable")
        .map(|d| boolean(&o.key("disable"), &d))
        .transpose()?
        .unwrap_or(false);
    let test = match o.take_some("test") {
        None => None,
        Some(t) => {
            let tk = o.key("test");
            Some(match t {
                Value::String(_) => HealthTest::Shell(string(&tk, &t)?),
                Value::Sequence(_) => {
                    let items = string_list(&tk, t)?;
                    match items.split_first() {
                        Some((first, rest)) if first == "NONE" && rest.is_empty() => {
                            HealthTest::Disabled
                        }
                        Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                            HealthTest::Cmd(rest.to_vec())
                        }
                        Some((first, rest)) if first == "CMD-SHELL" && rest.len() == 1 => {
                            HealthTest::Shell(rest[0].clone())
                        }
                        _ => {
                            return kerr(
                                &tk,
                                "must be [\"CMD\", prog, args…], [\"CMD-SHELL\", \"command\"], [\"NONE\"] or a shell command string",
                            );
                        }
                    }
                }
                other => {
                    return kerr(
                        &tk,
                        format!("must be a list or a string, not {}", kind(&other)),
                    );
                }
            })
        }
    };
    let mut d = |name: &str| -> R<Option<Duration>> {
        o.take_some(name)
            .map(|v| duration(&join(key, name), &v))
            .transpose()
    };
    let interval = d("interval")?;
    let timeout = d("timeout")?;
    let start_period = d("start_period")?;
    for (name, v) in [("interval", interval), ("timeout", timeout)] {
        if v == Some(Duration::ZERO) {
            return kerr(&join(key, name), "must be more than 0");
        }
    }
    let retries = match o.take_some("retries") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r > 0 && r <= u32::MAX as u64) => {
            n.as_u64().map(|r| r as u32)
        }
        Some(other) => {
            return kerr(
                &o.key("retries"),
                format!(
                    "must be a whole number above 0, not {}",
                    scalar(&o.key("retries"), &other).unwrap_or_else(|_| kind(&other).into())
                ),
            );
        }
        None => None,
    };
    o.finish(&[
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "disable",
    ])?;
    if disable {
        if test.as_ref().is_some_and(|t| *t != HealthTest::Disabled) {
            return kerr(
                &join(key, "disable"),
                "true together with a `test`: remove one of them",
            );
        }
        return Ok(Healthcheck {
            test: Some(HealthTest::Disabled),
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
        });
    }
    Ok(Healthcheck {
        test,
        interval,
        timeout,
        retries,
        start_period,
    })
}

fn device(key: &str, v: &Value) -> R<Device> {
    let Value::String(_) = v else {
        return kerr(
            key,
            format!(
                "must be a string like /dev/ttyUSB0 or /dev/ttyUSB0:/dev/ttyS1:rw, not {}",
                kind(v)
            ),
        );
    };
    let s = string(key, v)?;
    let parts: Vec<&str> = s.split(':').collect();
    let (host, container, perms) = match parts.as_slice() {
        [h] => (*h, *h, None),
        [h, c] if c.starts_with('/') => (*h, *c, None),
        [h, p] => (*h, *h, Some(*p)),
        [h, c, p] => (*h, *c, Some(*p)),
        _ => return kerr(key, format!("`{s}` must be HOST[:CONTAINER][:PERMISSIONS]")),
    };
    if !host.starts_with("/dev/") || !container.starts_with('/') {
        return kerr(
            key,
            format!(
                "`{s}`: the host side must be under /dev/ and the container side an absolute path"
            ),
        );
    }
    if let Some(p) = perms
        && (p.is_empty() || !p.chars().all(|c| "rwm".contains(c)))
    {
        return kerr(
            key,
            format!("permissions `{p}` in `{s}` must be made of r, w and m"),
        );
    }
    Ok(Device {
        host: host.to_string(),
        container: container.to_string(),
        permissions: perms.map(str::to_string),
    })
}

fn network_mode(key: &str, v: &Value) -> R<NetworkMode> {
    let s = string(key, v)?;
    Ok(match s.as_str() {
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        "bridge" => NetworkMode::Bridge,
        other => match other.strip_prefix("service:") {
            Some(svc) if !svc.is_empty() => NetworkMode::Service(svc.to_string()),
            _ => {
                return kerr(
                    key,
                    format!("`{s}` must be host, none, bridge or service:NAME"),
                );
            }
        },
    })
}

/// Checks across services: dependencies and named volumes exist, health conditions can be met.
fn cross_check(f: &ComposeFile) -> R<()> {
    for (name, s) in &f.services {
        let sk = format!("services.{name}");
        for (dep, cond) in &s.depends_on {
            let dk = format!("{sk}.depends_on.{dep}");
            if dep == name {
                return kerr(&dk, "a service cannot depend on itself");
            }
            let Some(d) = f.services.get(dep) else {
                return kerr(&dk, format!("no service `{dep}` in this file"));
            };
            if *cond == Condition::Healthy
                && !d.healthcheck.as_ref().is_some_and(|h| {
                    matches!(h.test, Some(HealthTest::Cmd(_) | HealthTest::Shell(_)))
                })
            {
                return kerr(
                    &dk,
                    format!(
                        "condition service_healthy, but `{dep}` has no healthcheck test: give `services.{dep}.healthcheck.test`"
                    ),
                );
            }
            if *cond == Condition::CompletedSuccessfully && d.restart != Restart::No {
                return kerr(
                    &dk,
                    format!(
                        "condition service_completed_successfully needs `{dep}` to have `restart: no` (it must be allowed to finish)"
                    ),
                );
            }
        }
        if let NetworkMode::Service(other) = &s.network_mode
            && (other == name || !f.services.contains_key(other))
        {
            return kerr(
                &format!("{sk}.network_mode"),
                format!("service:{other} names no other service in this file"),
            );
        }
        for (i, m) in s.volumes.iter().enumerate() {
            if let Mount::Volume {
                source: Some(v), ..
            } = m
                && !f.volumes.contains_key(v)
            {
                return kerr(
                    &format!("{sk}.volumes[{i}]"),
                    format!(
                        "named volume `{v}` is not declared: add `volumes: {{{v}: {{}}}}` at the top level"
                    ),
                );
            }
        }
    }
    crate::order::start_order(f)
        .map(|_| ())
        .map_err(|e| KeyError {
            key: "services".into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ComposeFile {
        match parse("compose.yaml", text) {
            Ok(f) => f,
            Err(e) => panic!("{e}\n---\n{text}"),
        }
    }

    fn err(text: &str) -> ComposeError {
        match parse("compose.yaml", text) {
            Ok(f) => panic!("accepted: {f:?}\n---\n{text}"),
            Err(e) => e,
        }
    }

    /// A one-service file with `extra` (indented YAML) added to the service.
    fn svc(extra: &str) -> String {
        let mut s = String::from("services:\n  web:\n    image: registry.local/web:1\n");
        for l in extra.lines() {
            s.push_str("    ");
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    fn web(text: &str) -> Service {
        ok(text).services.remove("web").expect("web")
    }

    fn rejected(extra: &str, key: &str, says: &str) {
        let e = err(&svc(extra));
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(says), "{e}");
        assert!(e.to_string().contains("compose.yaml"), "{e}");
    }

    #[test]
    fn minimal_service_defaults() {
        let s = web(&svc(""));
        assert_eq!(s.image, "registry.local/web:1");
        assert_eq!(s.restart, Restart::No);
        assert_eq!(s.network_mode, NetworkMode::App);
        assert!(s.command.is_none() && s.entrypoint.is_none() && s.healthcheck.is_none());
        assert!(!s.privileged);
    }

    #[test]
    fn image_forms() {
        let d = format!("img@sha256:{}", "a".repeat(64));
        assert_eq!(web(&svc("").replace("registry.local/web:1", &d)).image, d);
        for bad in [
            "\"\"",
            "\"a b\"",
            format!("img@sha256:{}", "a".repeat(10)).as_str(),
            "\"@sha256:x\"",
        ] {
            let e = err(&svc("").replace("registry.local/web:1", bad));
            assert_eq!(e.key, "services.web.image", "{e}");
        }
        let e = err("services:\n  web:\n    command: x\n");
        assert_eq!(e.key, "services.web.image");
        let e = err("services:\n  web:\n    build: .\n");
        assert_eq!(e.key, "services.web.build");
        assert!(e.message.contains("not built on devices"), "{e}");
    }

    #[test]
    fn command_and_entrypoint_forms() {
        let s = web(&svc(
            "command: nginx -g 'daemon off;'\nentrypoint: [\"/bin/sh\", \"-c\"]",
        ));
        assert_eq!(s.command.unwrap(), ["nginx", "-g", "daemon off;"]);
        assert_eq!(s.entrypoint.unwrap(), ["/bin/sh", "-c"]);
        let s = web(&svc("command: [\"a\", \"b c\"]\nentrypoint: \"\""));
        assert_eq!(s.command.unwrap(), ["a", "b c"]);
        assert_eq!(s.entrypoint.unwrap(), Vec::<String>::new());
        rejected(
            "command: \"echo 'unterminated\"",
            "services.web.command",
            "unterminated",
        );
        rejected(
            "command: {a: 1}",
            "services.web.command",
            "string or a list",
        );
        rejected(
            "entrypoint: [\"a\", {a: b}]",
            "services.web.entrypoint[1]",
            "must be a string",
        );
    }

    #[test]
    fn environment_forms() {
        let s = web(&svc("environment:\n  A: one\n  N: 5\n  B: true"));
        assert_eq!(s.environment["A"], "one");
        assert_eq!(s.environment["N"], "5");
        assert_eq!(s.environment["B"], "true");
        let s = web(&svc("environment:\n  - A=one=two\n  - EMPTY="));
        assert_eq!(s.environment["A"], "one=two");
        assert_eq!(s.environment["EMPTY"], "");
        let s = web(&svc("environment:\n  PRICE: \"$$5\""));
        assert_eq!(s.environment["PRICE"], "$5");
        rejected(
            "environment:\n  - JUSTKEY",
            "services.web.environment[0]",
            "KEY=VALUE",
        );
        rejected(
            "environment:\n  A:",
            "services.web.environment.A",
            "no value",
        );
        rejected(
            "environment:\n  A: ${HOME}",
            "services.web.environment.A",
            "interpolation",
        );
        rejected(
            "environment:\n  A: $HOME",
            "services.web.environment.A",
            "interpolation",
        );
        rejected(
            "environment:\n  A: [1]",
            "services.web.environment.A",
            "must be a string",
        );
        rejected(
            "environment: 3",
            "services.web.environment",
            "mapping or a list",
        );
        rejected(
            "environment:\n  \"A B\": x",
            "services.web.environment.A B",
            "not a valid",
        );
    }

    #[test]
    fn env_file_forms() {
        let s = web(&svc("env_file: ./web.env"));
        assert_eq!(
            s.env_file,
            [EnvFile {
                path: "./web.env".into(),
                required: true
            }]
        );
        let s = web(&svc(
            "env_file:\n  - a.env\n  - path: b.env\n    required: false",
        ));
        assert_eq!(
            s.env_file[1],
            EnvFile {
                path: "b.env".into(),
                required: false
            }
        );
        rejected(
            "env_file:\n  - path: a\n    format: raw",
            "services.web.env_file[0].format",
            "accepted here: path, required",
        );
        rejected(
            "env_file:\n  - required: true",
            "services.web.env_file[0].path",
            "missing",
        );
        rejected("env_file: 5", "services.web.env_file", "path or");
    }

    #[test]
    fn ports_short_syntax() {
        let s = web(&svc(
            "ports:\n  - \"80\"\n  - \"8080:80\"\n  - 127.0.0.1:9000:9000/udp\n  - \"8000-8002:9000-9002\"\n  - \"[::1]:53:53/udp\"\n  - \":81\"\n  - 443",
        ));
        let p = &s.ports;
        assert_eq!(p[0].published, None);
        assert_eq!(p[0].target, PortRange { start: 80, end: 80 });
        assert_eq!(
            p[1].published,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        assert_eq!(p[2].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[2].protocol, Protocol::Udp);
        assert_eq!(
            p[3].target,
            PortRange {
                start: 9000,
                end: 9002
            }
        );
        assert_eq!(p[4].host_ip.as_deref(), Some("::1"));
        assert_eq!(p[5].published, None);
        assert_eq!(p[6].target.start, 443);
        rejected(
            "ports: [\"80/sctp\"]",
            "services.web.ports[0]",
            "tcp or udp",
        );
        rejected("ports: [\"70000\"]", "services.web.ports[0]", "not a port");
        rejected(
            "ports: [\"8000-8001:80\"]",
            "services.web.ports[0]",
            "different lengths",
        );
        rejected(
            "ports: [\"a:b:c:d\"]",
            "services.web.ports[0]",
            "must be TARGET",
        );
        rejected(
            "ports: [\"1.2.3:80:80\"]",
            "services.web.ports[0]",
            "not an IP",
        );
        rejected("ports: \"80\"", "services.web.ports", "must be a list");
    }

    #[test]
    fn ports_long_syntax() {
        let s = web(&svc(
            "ports:\n  - target: 80\n    published: \"8080\"\n    host_ip: 0.0.0.0\n    protocol: udp\n    mode: host\n    name: http",
        ));
        assert_eq!(s.ports[0].published.unwrap().start, 8080);
        assert_eq!(s.ports[0].protocol, Protocol::Udp);
        rejected(
            "ports:\n  - published: 80",
            "services.web.ports[0].target",
            "missing",
        );
        rejected(
            "ports:\n  - target: 80\n    app_protocol: http",
            "services.web.ports[0].app_protocol",
            "accepted here",
        );
        rejected(
            "ports:\n  - target: 80\n    mode: swarm",
            "services.web.ports[0].mode",
            "host or ingress",
        );
    }

    #[test]
    fn volumes_short_syntax() {
        let f = ok(&format!(
            "{}volumes:\n  data:\n  logs: {{labels: {{a: b}}}}\n",
            svc(
                "volumes:\n  - data:/var/lib/web\n  - ./conf:/etc/web:ro\n  - /srv/x:/x:rw,z\n  - /cache\n  - logs:/logs:ro"
            )
        ));
        let v = &f.services["web"].volumes;
        assert_eq!(
            v[0],
            Mount::Volume {
                source: Some("data".into()),
                target: "/var/lib/web".into(),
                read_only: false
            }
        );
        assert!(matches!(&v[1], Mount::Bind { source, read_only: true, .. } if source == "./conf"));
        assert!(matches!(
            &v[2],
            Mount::Bind {
                read_only: false,
                ..
            }
        ));
        assert_eq!(
            v[3],
            Mount::Volume {
                source: None,
                target: "/cache".into(),
                read_only: false
            }
        );
        assert!(matches!(
            &v[4],
            Mount::Volume {
                read_only: true,
                ..
            }
        ));
        assert_eq!(f.volumes["logs"].labels["a"], "b");
        rejected(
            "volumes: [\"data:/x\"]",
            "services.web.volumes[0]",
            "not declared",
        );
        rejected(
            "volumes: [\"./a:relative\"]",
            "services.web.volumes[0]",
            "absolute path",
        );
        rejected(
            "volumes: [\"./a:/x:rx\"]",
            "services.web.volumes[0]",
            "ro, rw",
        );
        rejected(
            "volumes: [\"~/a:/x\"]",
            "services.web.volumes[0]",
            "home directory",
        );
        rejected(
            "volumes: [\"a:b:c:d\"]",
            "services.web.volumes[0]",
            "[SOURCE:]TARGET",
        );
    }

    #[test]
    fn volumes_long_syntax() {
        let f = ok(&format!(
            "{}volumes:\n  data: {{}}\n",
            svc(
                "volumes:\n  - type: volume\n    source: data\n    target: /d\n    read_only: true\n    volume: {nocopy: false}\n  - type: bind\n    source: /dev/shm\n    target: /s\n    bind: {create_host_path: false, propagation: rprivate}\n  - type: tmpfs\n    target: /t\n    tmpfs: {size: 64m}"
            )
        ));
        let v = &f.services["web"].volumes;
        assert!(matches!(
            &v[0],
            Mount::Volume {
                read_only: true,
                ..
            }
        ));
        assert!(matches!(
            &v[1],
            Mount::Bind {
                create_host_path: false,
                ..
            }
        ));
        assert_eq!(
            v[2],
            Mount::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20)
            }
        );
        rejected(
            "volumes:\n  - type: npipe\n    target: /x",
            "services.web.volumes[0].type",
            "volume, bind or tmpfs",
        );
        rejected(
            "volumes:\n  - type: bind\n    target: /x",
            "services.web.volumes[0].source",
            "missing",
        );
        rejected(
            "volumes:\n  - type: bind\n    source: name\n    target: /x",
            "services.web.volumes[0].source",
            "absolute path",
        );
        rejected(
            "volumes:\n  - type: tmpfs\n    target: /x\n    source: a",
            "services.web.volumes[0].source",
            "no source",
        );
        rejected(
            "volumes:\n  - type: volume\n    target: /x\n    volume: {nocopy: true}",
            "services.web.volumes[0].volume.nocopy",
            "not supported",
        );
        rejected(
            "volumes:\n  - type: volume\n    target: /x\n    consistency: cached",
            "services.web.volumes[0].consistency",
            "accepted here",
        );
        rejected(
            "volumes:\n  - type: bind\n    source: /a\n    target: /x\n    bind: {propagation: shared}",
            "services.web.volumes[0].bind.propagation",
            "not supported",
        );
        rejected(
            "volumes:\n  - source: /a",
            "services.web.volumes[0].type",
            "missing",
        );
        rejected(
            "volumes:\n  - type: tmpfs",
            "services.web.volumes[0].target",
            "missing",
        );
    }

    #[test]
    fn top_level_volume_options_rejected() {
        for (k, says) in [
            ("driver: local", "bind mount"),
            ("external: true", "set by Otter"),
            ("name: x", "set by Otter"),
            ("driver_opts: {}", "bind mount"),
            ("other: 1", "labels"),
        ] {
            let e = err(&format!("{}volumes:\n  data:\n    {k}\n", svc("")));
            assert_eq!(
                e.key,
                format!("volumes.data.{}", k.split(':').next().unwrap()),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn restart_forms() {
        for (v, r) in [
            ("no", Restart::No),
            ("\"no\"", Restart::No),
            ("always", Restart::Always),
            ("unless-stopped", Restart::UnlessStopped),
            ("on-failure", Restart::OnFailure(None)),
            ("on-failure:3", Restart::OnFailure(Some(3))),
        ] {
            assert_eq!(web(&svc(&format!("restart: {v}"))).restart, r, "{v}");
        }
        rejected(
            "restart: sometimes",
            "services.web.restart",
            "must be no, always",
        );
        rejected(
            "restart: on-failure:0",
            "services.web.restart",
            "on-failure:N",
        );
    }

    #[test]
    fn depends_on_forms() {
        let text = "services:\n  db:\n    image: db\n    healthcheck:\n      test: [\"CMD\", \"pg_isready\"]\n  init:\n    image: init\n  cache:\n    image: c\n  web:\n    image: web\n    depends_on:\n      db:\n        condition: service_healthy\n        restart: true\n      init:\n        condition: service_completed_successfully\n      cache:\n";
        let f = ok(text);
        let d = &f.services["web"].depends_on;
        assert_eq!(d["db"], Condition::Healthy);
        assert_eq!(d["init"], Condition::CompletedSuccessfully);
        assert_eq!(d["cache"], Condition::Started);
        let f = ok("services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on: [a]\n");
        assert_eq!(f.services["b"].depends_on["a"], Condition::Started);

        let e = err("services:\n  a:\n    image: a\n    depends_on: [nope]\n");
        assert_eq!(e.key, "services.a.depends_on.nope");
        let e = err("services:\n  a:\n    image: a\n    depends_on: [a]\n");
        assert!(e.message.contains("itself"), "{e}");
        let e = err(
            "services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on:\n      a: {condition: service_healthy}\n",
        );
        assert!(e.message.contains("no healthcheck"), "{e}");
        let e = err(
            "services:\n  a:\n    image: a\n    restart: always\n  b:\n    image: b\n    depends_on:\n      a: {condition: service_completed_successfully}\n",
        );
        assert!(e.message.contains("restart: no"), "{e}");
        let e = err(
            "services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on:\n      a: {condition: service_ready}\n",
        );
        assert_eq!(e.key, "services.b.depends_on.a.condition");
        let e = err(
            "services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on:\n      a: {required: false}\n",
        );
        assert_eq!(e.key, "services.b.depends_on.a.required");
        let e = err(
            "services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on:\n      a: {when: now}\n",
        );
        assert_eq!(e.key, "services.b.depends_on.a.when");
        let e = err(
            "services:\n  a:\n    image: a\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [a]\n",
        );
        assert!(e.message.contains("cycle"), "{e}");
    }

    #[test]
    fn healthcheck_forms() {
        let h = web(&svc("healthcheck:\n  test: [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"]\n  interval: 1m30s\n  timeout: 500ms\n  retries: 3\n  start_period: 1h")).healthcheck.unwrap();
        assert_eq!(
            h.test,
            Some(HealthTest::Cmd(vec![
                "curl".into(),
                "-f".into(),
                "http://localhost/".into()
            ]))
        );
        assert_eq!(h.interval, Some(Duration::from_secs(90)));
        assert_eq!(h.timeout, Some(Duration::from_millis(500)));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.start_period, Some(Duration::from_secs(3600)));
        let h = web(&svc(
            "healthcheck:\n  test: [\"CMD-SHELL\", \"curl -f x || exit 1\"]",
        ))
        .healthcheck
        .unwrap();
        assert_eq!(
            h.test,
            Some(HealthTest::Shell("curl -f x || exit 1".into()))
        );
        let h = web(&svc("healthcheck:\n  test: wget -q -O- x"))
            .healthcheck
            .unwrap();
        assert_eq!(h.test, Some(HealthTest::Shell("wget -q -O- x".into())));
        assert!(
            web(&svc("healthcheck:\n  test: [\"NONE\"]"))
                .healthcheck
                .unwrap()
                .is_disabled()
        );
        assert!(
            web(&svc("healthcheck:\n  disable: true"))
                .healthcheck
                .unwrap()
                .is_disabled()
        );
        assert!(
            web(&svc("healthcheck:\n  interval: 5s"))
                .healthcheck
                .unwrap()
                .test
                .is_none()
        );
        rejected(
            "healthcheck:\n  test: [\"CMD\"]",
            "services.web.healthcheck.test",
            "must be",
        );
        rejected(
            "healthcheck:\n  test: [\"SHELL\", \"x\"]",
            "services.web.healthcheck.test",
            "must be",
        );
        rejected(
            "healthcheck:\n  test: 5",
            "services.web.healthcheck.test",
            "list or a string",
        );
        rejected(
            "healthcheck:\n  interval: 10",
            "services.web.healthcheck.interval",
            "must be a string",
        );
        rejected(
            "healthcheck:\n  interval: 10x",
            "services.web.healthcheck.interval",
            "not a duration",
        );
        rejected(
            "healthcheck:\n  timeout: 0s",
            "services.web.healthcheck.timeout",
            "more than 0",
        );
        rejected(
            "healthcheck:\n  retries: 0",
            "services.web.healthcheck.retries",
            "above 0",
        );
        rejected(
            "healthcheck:\n  retries: many",
            "services.web.healthcheck.retries",
            "above 0",
        );
        rejected(
            "healthcheck:\n  start_interval: 5s",
            "services.web.healthcheck.start_interval",
            "accepted here",
        );
        rejected(
            "healthcheck:\n  disable: true\n  test: [\"CMD\", \"x\"]",
            "services.web.healthcheck.disable",
            "remove one",
        );
    }

    #[test]
    fn privileged_devices_caps() {
        let s = web(&svc(
            "privileged: true\ndevices:\n  - /dev/ttyUSB0\n  - /dev/ttyUSB1:/dev/ttyS1\n  - /dev/i2c-1:r\n  - /dev/video0:/dev/video0:rwm\ncap_add: [NET_ADMIN, CAP_SYS_TIME]",
        ));
        assert!(s.privileged);
        assert_eq!(
            s.devices[0],
            Device {
                host: "/dev/ttyUSB0".into(),
                container: "/dev/ttyUSB0".into(),
                permissions: None
            }
        );
        assert_eq!(s.devices[1].container, "/dev/ttyS1");
        assert_eq!(s.devices[2].permissions.as_deref(), Some("r"));
        assert_eq!(s.devices[3].permissions.as_deref(), Some("rwm"));
        assert_eq!(s.cap_add, ["NET_ADMIN", "CAP_SYS_TIME"]);
        rejected(
            "privileged: yes please",
            "services.web.privileged",
            "true or false",
        );
        rejected(
            "devices: [\"/tmp/x\"]",
            "services.web.devices[0]",
            "under /dev/",
        );
        rejected(
            "devices: [\"/dev/x:/dev/y:rwx\"]",
            "services.web.devices[0]",
            "r, w and m",
        );
        rejected(
            "devices:\n  - source: /dev/x",
            "services.web.devices[0]",
            "must be a string",
        );
        rejected(
            "cap_add: [net_admin]",
            "services.web.cap_add[0]",
            "capability",
        );
    }

    #[test]
    fn network_modes() {
        for (v, m) in [
            ("host", NetworkMode::Host),
            ("none", NetworkMode::None),
            ("bridge", NetworkMode::Bridge),
        ] {
            assert_eq!(web(&svc(&format!("network_mode: {v}"))).network_mode, m);
        }
        let f = ok(
            "services:\n  vpn:\n    image: v\n  web:\n    image: w\n    network_mode: service:vpn\n",
        );
        assert_eq!(
            f.services["web"].network_mode,
            NetworkMode::Service("vpn".into())
        );
        rejected(
            "network_mode: container:abc",
            "services.web.network_mode",
            "host, none",
        );
        rejected(
            "network_mode: service:web",
            "services.web.network_mode",
            "no other service",
        );
        rejected(
            "network_mode: host\nports: [\"80:80\"]",
            "services.web.ports",
            "host",
        );
        rejected(
            "network_mode: none\nports: [\"80:80\"]",
            "services.web.ports",
            "no network",
        );
    }

    #[test]
    fn labels_and_limits() {
        let s = web(&svc(
            "labels:\n  com.example.tier: front\nmem_limit: 256m\ncpus: 0.5",
        ));
        assert_eq!(s.labels["com.example.tier"], "front");
        assert_eq!(s.mem_limit, Some(256 << 20));
        assert_eq!(s.cpus, Some(0.5));
        let s = web(&svc("labels: [\"a=b\"]\nmem_limit: 1048576\ncpus: \"2\""));
        assert_eq!(s.labels["a"], "b");
        assert_eq!(s.mem_limit, Some(1 << 20));
        assert_eq!(s.cpus, Some(2.0));
        assert_eq!(web(&svc("mem_limit: 1.5g")).mem_limit, Some(3 << 29));
        assert_eq!(web(&svc("mem_limit: 64MB")).mem_limit, Some(64 << 20));
        rejected("mem_limit: lots", "services.web.mem_limit", "not a size");
        rejected("mem_limit: 10t", "services.web.mem_limit", "not a size");
        rejected("mem_limit: [1]", "services.web.mem_limit", "must be a size");
        rejected("cpus: 0", "services.web.cpus", "above 0");
        rejected("cpus: half", "services.web.cpus", "above 0");
        rejected(
            "labels: [\"novalue\"]",
            "services.web.labels[0]",
            "KEY=VALUE",
        );
    }

    #[test]
    fn unsupported_service_keys_are_named() {
        for (k, says) in [
            ("build: .", "not built on devices"),
            ("networks: [front]", "network_mode"),
            ("secrets: [a]", "bind mount"),
            ("configs: [a]", "bind mount"),
            ("container_name: x", "set by Otter"),
            ("deploy: {replicas: 2}", "mem_limit"),
            ("extends: {service: a}", "one compose file"),
            ("profiles: [debug]", "another app"),
            ("links: [db]", "service name"),
            ("scale: 2", "runs once"),
            ("hostname: x", "accepted here: image, command"),
            ("user: \"1000\"", "accepted here"),
            ("working_dir: /x", "accepted here"),
            ("tty: true", "accepted here"),
        ] {
            let e = err(&svc(k));
            assert_eq!(
                e.key,
                format!("services.web.{}", k.split(':').next().unwrap()),
                "{e}"
            );
            assert!(e.message.contains(says), "{k}: {e}");
        }
    }

    #[test]
    fn top_level_keys() {
        let f = ok(&format!(
            "version: \"3.8\"\nname: demo\nx-common: &c\n  restart: always\n{}",
            svc("<<: *c\nx-note: hi")
        ));
        assert_eq!(f.name.as_deref(), Some("demo"));
        assert_eq!(f.services["web"].restart, Restart::Always);
        for (k, says) in [
            ("networks: {}", "network_mode"),
            ("secrets: {}", "bind mount"),
            ("configs: {}", "bind mount"),
            ("include: [a.yaml]", "one compose file"),
            ("foo: 1", "accepted here: services"),
        ] {
            let e = err(&format!("{k}\n{}", svc("")));
            assert_eq!(e.key, k.split(':').next().unwrap(), "{e}");
            assert!(e.message.contains(says), "{k}: {e}");
        }
        assert_eq!(err("name: Demo\nservices: {a: {image: a}}").key, "name");
        assert_eq!(err("").key, "services");
        assert_eq!(err("name: x").key, "services");
        assert_eq!(err("services: {}").key, "services");
        assert_eq!(err("services: [a]").key, "services");
        assert_eq!(err("services:\n  Web:\n    image: a").key, "services.Web");
        assert_eq!(err("services:\n  web:").key, "services.web");
        assert_eq!(err("- a\n- b").key, "");
        let e = err("services: [unclosed");
        assert!(e.message.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_bytes("1k"), Some(1024));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("100b"), Some(100));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("1p"), None);
    }
}
