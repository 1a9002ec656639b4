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
pub(super) struct KeyError {
    pub(super) key: String,
    pub(super) message: String,
}

pub(super) type R<T> = std::result::Result<T, KeyError>;

pub(super) fn kerr<T>(key: &str, message: impl Into<String>) -> R<T> {
    Err(KeyError {
        key: key.to_string(),
        message: message.into(),
    })
}

mod checks;
mod keys;
mod model;
mod service;
mod walk;

use checks::*;
use keys::*;
pub use model::*;
use service::*;
use walk::*;
pub use walk::{is_valid_name, parse_bytes, parse_duration};

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

#[cfg(test)]
mod tests;
