//! Per-key parsing: each service key's short and long syntaxes (ports, mounts,
//! `depends_on`, health checks, devices, …).

use super::*;

/// An image reference as podman takes it: `[registry/]repo[:tag][@sha256:…]`.
pub(super) fn image_ref(key: &str, s: &str) -> R<String> {
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

pub(super) fn env_files(key: &str, v: Value) -> R<Vec<EnvFile>> {
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

pub(super) fn port_range(key: &str, s: &str) -> R<PortRange> {
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

pub(super) fn protocol(key: &str, s: &str) -> R<Protocol> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => kerr(key, format!("protocol `{s}` must be tcp or udp")),
    }
}

pub(super) fn port(key: &str, v: Value) -> R<Port> {
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

pub(super) fn container_path(key: &str, s: &str) -> R<String> {
    if !s.starts_with('/') || s.contains(['\n', '\0', ',']) {
        return kerr(
            key,
            format!("`{s}` must be an absolute path in the container (without commas)"),
        );
    }
    Ok(s.to_string())
}

/// A bind source: an absolute host path, or `./`/`../` relative to the compose file.
pub(super) fn is_host_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s == "." || s == ".."
}

pub(super) fn mount(key: &str, v: Value) -> R<Mount> {
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

pub(super) fn restart(key: &str, v: &Value) -> R<Restart> {
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

pub(super) fn depends_on(key: &str, v: Value) -> R<BTreeMap<String, Condition>> {
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

pub(super) fn healthcheck(key: &str, v: Value) -> R<Healthcheck> {
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

pub(super) fn device(key: &str, v: &Value) -> R<Device> {
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

pub(super) fn network_mode(key: &str, v: &Value) -> R<NetworkMode> {
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
