//! Taking the YAML apart: the mapping walker ([`Obj`]), key paths, unknown and unsupported keys,
//! and the scalar readers (strings, booleans, lists, durations, byte sizes, names).

use super::*;

/// Top-level and service keys Compose has but Otter does not run, with what to do instead.
pub(super) fn unsupported_hint(key: &str) -> Option<&'static str> {
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

pub(super) fn unknown_key(path: &str, key: &str, accepted: &[&str]) -> KeyError {
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

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A YAML mapping being taken apart: every key taken is understood, whatever is left at
/// `finish` is rejected.
pub(super) struct Obj {
    pub(super) path: String,
    pub(super) entries: Vec<(String, Value)>,
}

impl Obj {
    pub(super) fn new(path: &str, v: Value) -> R<Obj> {
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

    pub(super) fn take(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Present and not `null`.
    pub(super) fn take_some(&mut self, key: &str) -> Option<Value> {
        self.take(key).filter(|v| !v.is_null())
    }

    pub(super) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(super) fn finish(self, accepted: &[&str]) -> R<()> {
        match self.entries.into_iter().next() {
            None => Ok(()),
            Some((k, _)) => Err(unknown_key(&self.path, &k, accepted)),
        }
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
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
pub(super) fn uninterpolate(key: &str, s: &str) -> R<String> {
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
pub(super) fn scalar(key: &str, v: &Value) -> R<String> {
    match v {
        Value::String(s) => uninterpolate(key, s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => kerr(key, format!("must be a string, not {}", kind(other))),
    }
}

pub(super) fn string(key: &str, v: &Value) -> R<String> {
    match v {
        Value::String(s) => uninterpolate(key, s),
        other => kerr(key, format!("must be a string, not {}", kind(other))),
    }
}

pub(super) fn boolean(key: &str, v: &Value) -> R<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => kerr(key, format!("must be true or false, not {}", kind(other))),
    }
}

pub(super) fn seq(key: &str, v: Value) -> R<Vec<Value>> {
    match v {
        Value::Sequence(s) => Ok(s),
        other => kerr(key, format!("must be a list, not {}", kind(&other))),
    }
}

pub(super) fn string_list(key: &str, v: Value) -> R<Vec<String>> {
    seq(key, v)?
        .iter()
        .enumerate()
        .map(|(i, x)| string(&format!("{key}[{i}]"), x))
        .collect()
}

/// `command` / `entrypoint`: a list, or a string split like a shell would.
pub(super) fn command_words(key: &str, v: Value) -> R<Vec<String>> {
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
pub(super) fn key_values(key: &str, v: Value, what: &str) -> R<BTreeMap<String, String>> {
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

pub(super) fn check_var_name(key: &str, name: &str, what: &str) -> R<()> {
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

pub(super) fn duration(key: &str, v: &Value) -> R<Duration> {
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

pub(super) fn bytes(key: &str, v: &Value) -> R<u64> {
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

pub(super) fn check_name(key: &str, name: &str, what: &str) -> R<()> {
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
