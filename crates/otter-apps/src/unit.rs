//! Each service becomes one systemd unit running `podman run`: systemd owns the restart policy
//! and start order, podman's conmon reports readiness (`--sdnotify=conmon`) and sends the
//! container's output to the journal of that unit.

use crate::app::App;
use crate::compose::{Condition, HealthTest, Mount, NetworkMode, Port, Restart, Service};
use std::path::Path;
use std::time::Duration;

/// Where podman is on a device (Debian's package).
pub const PODMAN: &str = "/usr/bin/podman";

/// Podman's writable storage: directly on the data partition, not under `/var`, because
/// `/var` is an overlayfs and overlayfs cannot be the upper layer of podman's overlay driver.
pub const GRAPHROOT: &str = "/data/containers/storage";

/// The read-only image store in the root image (`additionalimagestores`): the built-in apps'
/// images, there from the first boot.
pub const IMAGE_STORE: &str = "/usr/lib/containers/storage";

/// A rendered unit and what it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// `otter-app-APP.SERVICE.service`
    pub name: String,
    pub app: String,
    pub service: String,
    /// `APP.SERVICE`
    pub container: String,
    pub image: String,
    /// The service has a health check test of its own.
    pub has_health: bool,
    /// Runs to completion (`restart: no`); exiting 0 is success.
    pub runs_once: bool,
    pub text: String,
}

pub fn unit_name(app: &str, service: &str) -> String {
    format!("otter-app-{app}.{service}.service")
}

/// Dots are not allowed in app or service names, so `APP.SERVICE` is unambiguous.
pub fn container_name(app: &str, service: &str) -> String {
    format!("{app}.{service}")
}

/// The per-app network, where services find each other by service name.
pub fn network_name(app: &str) -> String {
    format!("otter-{app}")
}

/// Named volume `vol` of app `app`: per app, so two apps never share one by accident.
pub fn volume_name(app: &str, vol: &str) -> String {
    format!("{app}_{vol}")
}

/// Quote one argument for an `Exec*=` line: systemd expands `%` specifiers and `$` variables
/// and splits on whitespace, so anything beyond a safe set goes in double quotes, escaped.
pub fn sd_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%$[]".contains(c));
    if safe {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn exec_line(key: &str, args: &[String]) -> String {
    let mut line = format!("{key}=");
    line.push_str(
        &args
            .iter()
            .map(|a| sd_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    line.push('\n');
    line
}

/// Go-style duration podman takes (`90s`, `1500ms`).
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

fn port_arg(p: &Port) -> String {
    let target = p.target.to_string();
    let published = p.published.map(|r| r.to_string()).unwrap_or_default();
    let mut s = match (&p.host_ip, p.published) {
        (Some(ip), _) if ip.contains(':') => format!("[{ip}]:{published}:{target}"),
        (Some(ip), _) => format!("{ip}:{published}:{target}"),
        (None, Some(_)) => format!("{published}:{target}"),
        (None, None) => target,
    };
    if p.protocol == crate::compose::Protocol::Udp {
        s.push_str("/udp");
    }
    s
}

fn resolve(dir: &Path, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        let joined = dir.join(p);
        // Lexically drop `.` components so units read cleanly; `..` stays for the kernel.
        joined
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect::<std::path::PathBuf>()
            .display()
            .to_string()
    }
}

/// The `podman run` arguments of a service (without `podman run` itself).
pub fn run_args(app: &App, name: &str, s: &Service, detach: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        format!("--name={}", container_name(&app.name, name)),
        // A container left behind by a crash or power cut must not block the start.
        "--replace".into(),
        "--rm".into(),
        // conmon stays in the unit's cgroup: systemd tracks it, and its journal lines carry
        // the unit's name (`journalctl -u`).
        "--cgroups=no-conmon".into(),
        "--log-driver=journald".into(),
        format!("--label=otter.app={}", app.name),
        format!("--label=otter.service={name}"),
        format!("--label=otter.revision={}", app.revision),
    ];
    if detach {
        a.push("--sdnotify=conmon".into());
        a.push("-d".into());
    }
    for (k, v) in &s.labels {
        a.push(format!("--label={k}={v}"));
    }
    match &s.network_mode {
        NetworkMode::App => {
            a.push(format!("--network={}", network_name(&app.name)));
            a.push(format!("--network-alias={name}"));
        }
        NetworkMode::Host => a.push("--network=host".into()),
        NetworkMode::None => a.push("--network=none".into()),
        NetworkMode::Bridge => a.push("--network=bridge".into()),
        NetworkMode::Service(other) => a.push(format!(
            "--network=container:{}",
            container_name(&app.name, other)
        )),
    }
    for p in &s.ports {
        a.push(format!("--publish={}", port_arg(p)));
    }
    for (k, v) in &s.environment {
        a.push(format!("--env={k}={v}"));
    }
    for f in &s.env_file {
        let path = resolve(&app.dir, &f.path);
        // An optional env file that is not there is left out (podman would refuse it).
        if f.required || Path::new(&path).exists() {
            a.push(format!("--env-file={path}"));
        }
    }
    for m in &s.volumes {
        match m {
            Mount::Volume {
                source,
                target,
                read_only,
            } => {
                let ro = if *read_only { ":ro" } else { "" };
                match source {
                    Some(v) => a.push(format!(
                        "--volume={}:{target}{ro}",
                        volume_name(&app.name, v)
                    )),
                    None => a.push(format!("--volume={target}{ro}")),
                }
            }
            Mount::Bind {
                source,
                target,
                read_only,
                ..
            } => {
                let ro = if *read_only { ":ro" } else { "" };
                a.push(format!(
                    "--volume={}:{target}{ro}",
                    resolve(&app.dir, source)
                ));
            }
            Mount::Tmpfs { target, size } => match size {
                Some(sz) => a.push(format!("--tmpfs={target}:size={sz}")),
                None => a.push(format!("--tmpfs={target}")),
            },
        }
    }
    if s.privileged {
        a.push("--privileged".into());
    }
    for d in &s.devices {
        let mut arg = format!("--device={}:{}", d.host, d.container);
        if let Some(p) = &d.permissions {
            arg.push(':');
            arg.push_str(p);
        }
        a.push(arg);
    }
    for c in &s.cap_add {
        a.push(format!("--cap-add={c}"));
    }
    if let Some(m) = s.mem_limit {
        a.push(format!("--memory={m}"));
    }
    if let Some(c) = s.cpus {
        a.push(format!("--cpus={c}"));
    }
    if let Some(h) = &s.healthcheck {
        match &h.test {
            Some(HealthTest::Disabled) => a.push("--no-healthcheck".into()),
            Some(HealthTest::Cmd(argv)) => {
                // podman takes a JSON array as exec form, anything else as `/bin/sh -c`.
                let json = serde_json::to_string(argv).unwrap_or_default();
                a.push(format!("--health-cmd={json}"));
            }
            Some(HealthTest::Shell(cmd)) => a.push(format!("--health-cmd={cmd}")),
            None => {}
        }
        if !h.is_disabled() {
            if let Some(d) = h.interval {
                a.push(format!("--health-interval={}", go_duration(d)));
            }
            if let Some(d) = h.timeout {
                a.push(format!("--health-timeout={}", go_duration(d)));
            }
            if let Some(r) = h.retries {
                a.push(format!("--health-retries={r}"));
            }
            if let Some(d) = h.start_period {
                a.push(format!("--health-start-period={}", go_duration(d)));
            }
        }
    }
    if let Some(ep) = &s.entrypoint {
        if ep.is_empty() {
            a.push("--entrypoint=".into());
        } else {
            a.push(format!(
                "--entrypoint={}",
                serde_json::to_string(ep).unwrap_or_default()
            ));
        }
    }
    a.push(s.image.clone());
    if let Some(cmd) = &s.command {
        a.extend(cmd.iter().cloned());
    }
    a
}

/// Seconds a dependant waits for a `service_healthy` dependency before its start fails.
const HEALTHY_WAIT_SECS: u64 = 600;

/// All units of `app`, in start order.
pub fn render(app: &App) -> Vec<Unit> {
    let f = &app.compose;
    app.start_order()
        .into_iter()
        .filter_map(|name| f.services.get(&name).map(|s| (name, s)))
        .map(|(name, s)| {
            // A service others wait to *finish* is a oneshot: systemd orders them after its exit.
            let awaited = f
                .services
                .values()
                .any(|o| o.depends_on.get(&name) == Some(&Condition::CompletedSuccessfully));
            let runs_once = s.restart == Restart::No;
            render_one(app, &name, s, awaited).with_runs_once(runs_once)
        })
        .collect()
}

impl Unit {
    fn with_runs_once(mut self, v: bool) -> Unit {
        self.runs_once = v;
        self
    }
}

fn render_one(app: &App, name: &str, s: &Service, oneshot: bool) -> Unit {
    let unit = unit_name(&app.name, name);
    let container = container_name(&app.name, name);
    let mut t = String::new();
    t.push_str(&format!(
        "# Written by otterd for app `{}` (revision {}); rewritten at every boot and app update.\n",
        app.name, app.revision
    ));
    t.push_str("[Unit]\n");
    t.push_str(&format!(
        "Description=Otter app {} service {name} ({})\n",
        app.name, s.image
    ));
    // Not network-online: apps must start on a device that is offline.
    t.push_str("After=network.target\n");
    t.push_str(&format!("RequiresMountsFor={GRAPHROOT}\n"));
    let mut deps: Vec<&String> = s.depends_on.keys().collect();
    if let NetworkMode::Service(n) = &s.network_mode
        && !s.depends_on.contains_key(n)
    {
        deps.push(n);
    }
    for d in deps {
        let du = unit_name(&app.name, d);
        t.push_str(&format!("Requires={du}\nAfter={du}\n"));
    }
    match s.restart {
        Restart::OnFailure(Some(n)) => {
            // Compose's on-failure:N is N restarts in all; systemd counts starts per interval.
            t.push_str(&format!(
                "StartLimitIntervalSec=1d\nStartLimitBurst={}\n",
                n + 1
            ));
        }
        Restart::Always | Restart::UnlessStopped => {
            t.push_str("StartLimitIntervalSec=0\n");
        }
        _ => {}
    }
    t.push_str("\n[Service]\n");
    t.push_str("Environment=PODMAN_SYSTEMD_UNIT=%n\n");
    if oneshot {
        t.push_str("Type=oneshot\nRemainAfterExit=yes\n");
    } else {
        t.push_str("Type=notify\nNotifyAccess=all\n");
    }
    // The first start of an image on a slow device takes a while (layers are mounted, the
    // network set up); a pull never happens here (otterd pulls before it starts units).
    t.push_str("TimeoutStartSec=900\nTimeoutStopSec=40\n");
    if s.network_mode == NetworkMode::App {
        // podman 4.3 has no `network create --ignore`; the second `exists` covers a
        // sibling service creating it at the same moment.
        let net = network_name(&app.name);
        let script = format!(
            "{PODMAN} network exists {net} || {PODMAN} network create --label=otter.app={} {net} >/dev/null || {PODMAN} network exists {net}",
            app.name
        );
        t.push_str(&exec_line(
            "ExecStartPre",
            &["/bin/sh".into(), "-c".into(), script],
        ));
    }
    for m in &s.volumes {
        if let Mount::Bind {
            source,
            create_host_path: true,
            ..
        } = m
        {
            // As Compose does; `-` because a path on the read-only root cannot be made (and
            // then must already exist).
            t.push_str(&exec_line(
                "ExecStartPre",
                &["-/bin/mkdir".into(), "-p".into(), resolve(&app.dir, source)],
            ));
        }
    }
    for (d, cond) in &s.depends_on {
        if *cond == Condition::Healthy {
            let dc = container_name(&app.name, d);
            let script = format!(
                // By the clock, not a count: each check itself takes seconds on a slow device.
                "end=$(($(date +%s)+{HEALTHY_WAIT_SECS})); until {PODMAN} healthcheck run {dc} >/dev/null 2>&1; do if [ $(date +%s) -ge $end ]; then echo '{dc} not healthy after {HEALTHY_WAIT_SECS}s' >&2; exit 1; fi; sleep 2; done"
            );
            t.push_str(&exec_line(
                "ExecStartPre",
                &["/bin/sh".into(), "-c".into(), script],
            ));
        }
    }
    let mut start = vec![PODMAN.to_string(), "run".into()];
    start.extend(run_args(app, name, s, !oneshot));
    t.push_str(&exec_line("ExecStart", &start));
    if !oneshot {
        t.push_str(&exec_line(
            "ExecStop",
            &[
                PODMAN.into(),
                "stop".into(),
                "--ignore".into(),
                "--time=10".into(),
                container.clone(),
            ],
        ));
    }
    t.push_str(&exec_line(
        "ExecStopPost",
        &[
            PODMAN.into(),
            "rm".into(),
            "--force".into(),
            "--ignore".into(),
            container.clone(),
        ],
    ));
    let restart = match s.restart {
        Restart::No => "no",
        Restart::Always | Restart::UnlessStopped => "always",
        Restart::OnFailure(_) => "on-failure",
    };
    t.push_str(&format!("Restart={restart}\nRestartSec=5\n"));
    if oneshot {
        // A oneshot with Restart= is refused by systemd unless it is on-failure/no.
        t = t.replace("Restart=always\n", "Restart=no\n");
    }
    Unit {
        name: unit,
        app: app.name.clone(),
        service: name.to_string(),
        container,
        image: s.image.clone(),
        has_health: s
            .healthcheck
            .as_ref()
            .is_some_and(|h| matches!(h.test, Some(HealthTest::Cmd(_) | HealthTest::Shell(_)))),
        runs_once: false,
        text: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppSpec;

    fn app(compose: &str) -> App {
        App::from_spec(
            &AppSpec {
                name: "shop".into(),
                compose: compose.into(),
                images: Default::default(),
            },
            Path::new("/usr/lib/otter/apps/shop"),
        )
        .unwrap()
    }

    fn unit<'a>(units: &'a [Unit], svc: &str) -> &'a Unit {
        units.iter().find(|u| u.service == svc).unwrap()
    }

    fn exec_start(u: &Unit) -> &str {
        u.text
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap()
    }

    const FULL: &str = r#"
services:
  db:
    image: reg/db:1
    restart: always
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "shop"]
      interval: 10s
      timeout: 1500ms
      retries: 5
      start_period: 1m
    volumes:
      - pgdata:/var/lib/postgresql/data
  migrate:
    image: reg/web:2
    command: ["migrate", "--yes"]
    depends_on:
      db: {condition: service_healthy}
  web:
    image: reg/web:2
    entrypoint: ["/bin/app"]
    command: serve --greeting "hello world" --price $$5 --pct 100%
    environment:
      MODE: prod
    env_file:
      - ./web.env
      - path: ./missing.env
        required: false
    ports: ["8080:80", "127.0.0.1::9090/udp", "[::1]:53:53"]
    volumes:
      - ./conf:/etc/web:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 16m}
      - /scratch
    restart: on-failure:3
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
    devices: ["/dev/ttyUSB0:/dev/ttyS0:rw"]
    cap_add: [NET_ADMIN]
    labels: {tier: front}
    mem_limit: 128m
    cpus: 0.5
    healthcheck:
      test: curl -fs http://localhost/ || exit 1
  agent:
    image: reg/agent:1
    privileged: true
    network_mode: host
    healthcheck: {disable: true}
  sidecar:
    image: reg/side:1
    network_mode: service:web
volumes:
  pgdata: {}
"#;

    #[test]
    fn names() {
        assert_eq!(unit_name("shop", "web"), "otter-app-shop.web.service");
        assert_eq!(container_name("shop", "web"), "shop.web");
    }

    #[test]
    fn units_in_start_order() {
        let units = render(&app(FULL));
        let order: Vec<&str> = units.iter().map(|u| u.service.as_str()).collect();
        assert_eq!(order, ["agent", "db", "migrate", "web", "sidecar"]);
    }

    #[test]
    fn web_unit_carries_every_key() {
        let units = render(&app(FULL));
        let web = unit(&units, "web");
        let t = &web.text;
        let es = exec_start(web);
        assert!(
            t.contains("Requires=otter-app-shop.db.service\nAfter=otter-app-shop.db.service\n"),
            "{t}"
        );
        assert!(t.contains("After=otter-app-shop.migrate.service"), "{t}");
        assert!(t.contains("StartLimitBurst=4"), "{t}");
        assert!(t.contains("Restart=on-failure\n"), "{t}");
        assert!(t.contains("Type=notify\n"), "{t}");
        assert!(t.contains("podman healthcheck run shop.db"), "{t}");
        assert!(
            t.contains("ExecStartPre=-/bin/mkdir -p /usr/lib/otter/apps/shop/conf"),
            "{t}"
        );
        assert!(
            t.contains("ExecStop=/usr/bin/podman stop --ignore --time=10 shop.web"),
            "{t}"
        );
        assert!(
            t.contains("ExecStopPost=/usr/bin/podman rm --force --ignore shop.web"),
            "{t}"
        );
        for want in [
            "ExecStart=/usr/bin/podman run --name=shop.web --replace --rm --cgroups=no-conmon --log-driver=journald",
            "--sdnotify=conmon -d",
            "--label=otter.app=shop",
            "--label=tier=front",
            "--network=otter-shop --network-alias=web",
            "--publish=8080:80",
            "--publish=127.0.0.1::9090/udp",
            "--publish=[::1]:53:53",
            "--env=MODE=prod",
            "--env-file=/usr/lib/otter/apps/shop/web.env",
            "--volume=/usr/lib/otter/apps/shop/conf:/etc/web:ro",
            "--tmpfs=/cache:size=16777216",
            "--volume=/scratch",
            "--device=/dev/ttyUSB0:/dev/ttyS0:rw",
            "--cap-add=NET_ADMIN",
            "--memory=134217728",
            "--cpus=0.5",
            "\"--health-cmd=curl -fs http://localhost/ || exit 1\"",
            "\"--entrypoint=[\\\"/bin/app\\\"]\"",
            "reg/web:2 serve --greeting \"hello world\" --price $$5 --pct 100%%",
        ] {
            assert!(es.contains(want), "missing {want}\n{es}");
        }
        assert!(!es.contains("missing.env"), "{es}");
        assert!(web.has_health);
        assert!(!web.runs_once);
    }

    #[test]
    fn db_unit_healthcheck_volume_restart() {
        let units = render(&app(FULL));
        let db = unit(&units, "db");
        let es = exec_start(db);
        for want in [
            "\"--health-cmd=[\\\"pg_isready\\\",\\\"-U\\\",\\\"shop\\\"]\"",
            "--health-interval=10s",
            "--health-timeout=1500ms",
            "--health-retries=5",
            "--health-start-period=60s",
            "--volume=shop_pgdata:/var/lib/postgresql/data",
        ] {
            assert!(es.contains(want), "missing {want}\n{es}");
        }
        assert!(
            db.text.contains("Restart=always\n") && db.text.contains("StartLimitIntervalSec=0")
        );
        assert!(db.has_health);
    }

    #[test]
    fn awaited_service_is_oneshot() {
        let units = render(&app(FULL));
        let m = unit(&units, "migrate");
        assert!(
            m.text.contains("Type=oneshot\nRemainAfterExit=yes\n"),
            "{}",
            m.text
        );
        assert!(!m.text.contains("--sdnotify"), "{}", m.text);
        assert!(!m.text.contains("ExecStop="), "{}", m.text);
        assert!(exec_start(m).ends_with("reg/web:2 migrate --yes"));
        assert!(m.runs_once);
    }

    #[test]
    fn host_network_privileged_no_healthcheck() {
        let units = render(&app(FULL));
        let a = unit(&units, "agent");
        let es = exec_start(a);
        assert!(
            es.contains("--network=host")
                && es.contains("--privileged")
                && es.contains("--no-healthcheck"),
            "{es}"
        );
        assert!(!a.text.contains("network create"), "{}", a.text);
        assert!(!a.has_health);
        let s = unit(&units, "sidecar");
        assert!(exec_start(s).contains("--network=container:shop.web"));
        assert!(s.text.contains("Requires=otter-app-shop.web.service"));
    }

    #[test]
    fn app_network_is_created() {
        let units = render(&app(FULL));
        let db = unit(&units, "db");
        assert!(
            db.text.contains("ExecStartPre=/bin/sh -c \"/usr/bin/podman network exists otter-shop || /usr/bin/podman network create --label=otter.app=shop otter-shop >/dev/null || /usr/bin/podman network exists otter-shop\"\n"),
            "{}",
            db.text
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(sd_quote("plain-arg=1"), "plain-arg=1");
        assert_eq!(sd_quote("a b"), "\"a b\"");
        assert_eq!(sd_quote(""), "\"\"");
        assert_eq!(sd_quote("50%"), "50%%");
        assert_eq!(sd_quote("$HOME"), "$$HOME");
        assert_eq!(sd_quote("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(sd_quote("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn empty_entrypoint_and_durations() {
        let u = render(&app(
            "services:\n  a:\n    image: x\n    entrypoint: []\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 250ms\n",
        ));
        let es = exec_start(&u[0]);
        assert!(es.contains("--entrypoint= "), "{es}");
        assert!(es.contains("--health-interval=250ms"), "{es}");
        assert!(u[0].text.contains("Restart=no\n"));
        assert!(u[0].runs_once);
    }
}
