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
