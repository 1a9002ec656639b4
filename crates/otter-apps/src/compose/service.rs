//! A service and a top-level volume, key by key: which keys exist and which reader each goes to.

use super::*;

pub(super) fn volume_decl(key: &str, v: Value) -> R<VolumeDecl> {
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

pub(super) fn service(key: &str, v: Value) -> R<Service> {
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
