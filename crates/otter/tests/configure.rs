//! `otter configure` as a user runs it, on a small synthetic Otter image (GPT with the Otter
//! partitions and a FAT boot partition holding the commented default device.toml, as
//! `otter build` makes it): no root, mmdebstrap or QEMU needed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_config::DeviceConfig;
use otter_config::device_config::{DEVICE_CONFIG_FAT_PATH, LogStorage};
use otter_image::bootpart::BootPartition;
use otter_image::disk::{ESP_TYPE, LINUX_DATA_TYPE, MIB, PartitionSpec, assemble};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5dGVzdGtleXRlc3Q ops@laptop";

fn otter_in(args: &[&str], cwd: &Path, stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_otter"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run otter");
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn otter(args: &[&str], cwd: &Path) -> Output {
    otter_in(args, cwd, None)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An image laid out like `otter build`'s, with small partitions.
fn otter_image(dir: &Path) -> PathBuf {
    let boot = dir.join("boot.vfat");
    otter_image::fat::make_fat(
        &boot,
        8 * MIB,
        "otter-boot",
        &[
            ("otter/grubenv".into(), vec![b'#'; 1024]),
            (
                DEVICE_CONFIG_FAT_PATH.into(),
                otter_config::template::DEVICE_CONFIG_TEMPLATE
                    .as_bytes()
                    .to_vec(),
            ),
        ],
    )
    .unwrap();
    let part = |label: &str, ty: &str, content: Option<PathBuf>, size| PartitionSpec {
        label: label.into(),
        type_guid: ty.into(),
        size,
        content,
    };
    let img = dir.join("device.img");
    assemble(
        &img,
        &[
            part("otter-boot", ESP_TYPE, Some(boot), 8 * MIB),
            // The x86-64 root type, as `otter build` writes for qemu-x86_64.
            part(
                "otter-root-a",
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                None,
                MIB,
            ),
            part("otter-root-b", LINUX_DATA_TYPE, None, MIB),
            part("otter-data", LINUX_DATA_TYPE, None, MIB),
        ],
        "test",
    )
    .unwrap();
    img
}

/// The config on the image, read the way the device would.
fn config_on(img: &Path) -> DeviceConfig {
    let b = BootPartition::open(img).unwrap();
    let bytes = b.read_file(DEVICE_CONFIG_FAT_PATH).unwrap().unwrap();
    DeviceConfig::parse(Path::new("device.toml"), &String::from_utf8(bytes).unwrap()).unwrap()
}

fn show_json(img: &str, cwd: &Path) -> serde_json::Value {
    let o = otter(&["configure", img, "--show", "--json"], cwd);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn configure_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    otter_image(p);
    std::fs::write(p.join("ops.pub"), format!("# laptop\n{KEY}\n")).unwrap();

    // A fresh image has the commented default: an empty config.
    let o = otter(&["configure", "device.img", "--show"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("empty"),
        "{}",
        text(&o)
    );

    let o = otter_in(
        &[
            "configure",
            "device.img",
            "--hostname",
            "gw-1",
            "--timezone",
            "Europe/Berlin",
            "--country",
            "DE",
            "--wifi",
            "Lab:secret123",
            "--wifi",
            "Guest",
            "--static",
            "eth0=10.0.0.2/24,10.0.0.1",
            "--dns",
            "1.1.1.1,9.9.9.9",
            "--ntp",
            "pool.ntp.org",
            "--user",
            "ops",
            "--password-stdin",
            "--sudo",
            "--ssh-key",
            "ops.pub",
            "--server",
            "https://fleet.example.com",
            "--enrollment-key",
            "K-123",
            "--persistent-logs",
        ],
        p,
        Some("hunter2 but longer\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("+ hostname = \"gw-1\""), "{out}");
    assert!(out.contains("users[0].password_hash = (secret)"), "{out}");
    assert!(
        !out.contains("secret123") && !out.contains("hunter2"),
        "{out}"
    );

    let c = config_on(&p.join("device.img"));
    assert_eq!(c.hostname.as_deref(), Some("gw-1"));
    assert_eq!(c.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(c.network.wifi.len(), 2);
    assert_eq!(c.network.wifi[1].psk, None);
    assert_eq!(c.network.ethernet[0].addresses, ["10.0.0.2/24"]);
    assert_eq!(c.network.dns.len(), 2);
    assert_eq!(c.time.ntp, ["pool.ntp.org"]);
    let u = &c.users[0];
    assert_eq!(u.name, "ops");
    assert!(u.sudo);
    assert_eq!(u.ssh_authorized_keys, [KEY]);
    let hash = u.password_hash.as_deref().unwrap();
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(otter_config::password::verify_password(
        "hunter2 but longer",
        hash
    ));
    assert_eq!(
        c.server.as_ref().unwrap().enrollment_key.as_deref(),
        Some("K-123")
    );
    assert_eq!(c.logging.as_ref().unwrap().storage, LogStorage::Persistent);

    // --show prints what is stored; the same edits again change nothing.
    let j = show_json("device.img", p);
    assert_eq!(j["hostname"], "gw-1");
    assert_eq!(j["network"]["wifi"][0]["ssid"], "Lab");
    let before = std::fs::read(p.join("device.img")).unwrap();
    let o = otter(&["configure", "device.img", "--hostname", "gw-1"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no changes"), "{}", text(&o));
    assert_eq!(std::fs::read(p.join("device.img")).unwrap(), before);

    // Edits merge into what is there.
    let o = otter(&["configure", "device.img", "--hostname", "gw-2"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("~ hostname: \"gw-1\" -> \"gw-2\""),
        "{}",
        text(&o)
    );
    let c2 = config_on(&p.join("device.img"));
    assert_eq!(c2.hostname.as_deref(), Some("gw-2"));
    assert_eq!(c2.users, c.users);
    assert_eq!(c2.network, c.network);

    // The rest of the boot partition is untouched.
    let b = BootPartition::open(&p.join("device.img")).unwrap();
    assert_eq!(
        b.read_file("otter/grubenv").unwrap().unwrap(),
        vec![b'#'; 1024]
    );
}

#[test]
fn set_unset_and_dry_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    otter_image(p);
    let o = otter(
        &[
            "configure",
            "device.img",
            "--set",
            "logging.storage=volatile",
            "--set",
            "logging.max_size=32M",
            "--set",
            r#"network.dns=["1.1.1.1"]"#,
            "--set",
            "network.wifi[0].ssid=Lab",
            "--set",
            "network.wifi[0].hidden=true",
            "--set",
            "health.deadline_secs=120",
            "--set",
            "hostname=1234",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = show_json("device.img", p);
    assert_eq!(j["logging"]["storage"], "volatile");
    assert_eq!(j["logging"]["max_size"], "32M");
    assert_eq!(j["network"]["dns"][0], "1.1.1.1");
    assert_eq!(j["network"]["wifi"][0]["hidden"], true);
    assert_eq!(j["health"]["deadline_secs"], 120);
    assert_eq!(j["hostname"], "1234");

    let o = otter(
        &[
            "configure",
            "device.img",
            "--unset",
            "health",
            "--unset",
            "network.wifi[0]",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = show_json("device.img", p);
    assert!(j.get("health").is_none(), "{j}");
    assert!(j["network"].get("wifi").is_none(), "{j}");

    let before = std::fs::read(p.join("device.img")).unwrap();
    let o = otter(
        &["configure", "device.img", "--hostname", "dry", "--dry-run"],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("would change"), "{}", text(&o));
    assert_eq!(std::fs::read(p.join("device.img")).unwrap(), before);
}

#[test]
fn bad_values_are_refused_and_nothing_changes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    otter_image(p);
    let o = otter(&["configure", "device.img", "--hostname", "gw-ok"], p);
    assert!(o.status.success(), "{}", text(&o));
    let before = std::fs::read(p.join("device.img")).unwrap();
    std::fs::write(p.join("bad.pub"), "not a key\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--hostname=-bad-"], "`hostname`"),
        (&["--hostname", "bad_name"], "`hostname`"),
        (&["--wifi", "Lab:short"], "`network.wifi[0].psk`"),
        (&["--static", "eth0=10.0.0.2"], "--static"),
        (&["--dns", "dns.google"], "--dns"),
        (&["--timezone", "../../etc/passwd"], "`timezone`"),
        (&["--ssh-key", "bad.pub"], "line 1"),
        (&["--ssh-key", "missing.pub"], "missing.pub"),
        (&["--server", "fleet.example.com"], "`server.url`"),
        (&["--enrollment-key", "k"], "--server"),
        (&["--set", "hostnme=x"], "hostnme"),
        (&["--set", "logging.storage=disk"], "disk"),
        (
            &["--set", "health.deadline_secs=5"],
            "`health.deadline_secs`",
        ),
        (&["--set", "noequals"], "KEY=VALUE"),
        (&["--unset", "timezone"], "not set"),
        (&["--user", "root"], "`users[0].name`"),
        (&["--from", "missing.toml"], "missing.toml"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["configure", "device.img"];
        all.extend_from_slice(args);
        let o = otter(&all, p);
        assert!(!o.status.success(), "{args:?} succeeded: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
        assert_eq!(
            std::fs::read(p.join("device.img")).unwrap(),
            before,
            "{args:?} changed the image"
        );
    }
    // Nothing asked: a hint, not a silent success.
    let o = otter(&["configure", "device.img"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("--show"), "{}", text(&o));
}

#[test]
fn refuses_files_that_are_not_otter_images() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("random.img"), vec![0x5Au8; 3 << 20]).unwrap();
    let o = otter(&["configure", "random.img", "--hostname", "x"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("not an Otter disk image"), "{}", text(&o));
    assert_eq!(
        std::fs::read(p.join("random.img")).unwrap(),
        vec![0x5Au8; 3 << 20]
    );

    // A GPT disk without the Otter partitions.
    let other = p.join("other.img");
    assemble(
        &other,
        &[PartitionSpec {
            label: "EFI".into(),
            type_guid: ESP_TYPE.into(),
            size: MIB,
            content: None,
        }],
        "x",
    )
    .unwrap();
    let o = otter(&["configure", "other.img", "--show"], p);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no otter-boot and otter-root-a"),
        "{}",
        text(&o)
    );

    let img = otter_image(p);
    let zst = p.join("device.img.zst");
    let raw = std::fs::read(&img).unwrap();
    std::fs::write(&zst, zstd_compress(&raw)).unwrap();
    let o = otter(&["configure", "device.img.zst", "--show"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("decompress"), "{}", text(&o));
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

#[test]
fn importers_and_from_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    otter_image(p);
    std::fs::write(
        p.join("config.json"),
        format!(
            r#"{{"applicationId": 7, "deviceType": "raspberrypi4-64", "hostname": "kiosk-3",
               "persistentLogging": false, "developmentMode": true, "country": "GB",
               "ntpServers": "0.pool.ntp.org 1.pool.ntp.org", "dnsServers": "1.1.1.1",
               "wifiSsid": "Shop", "wifiKey": "supersecret",
               "apiEndpoint": "https://fleet.example.com",
               "os": {{"sshKeys": ["{KEY}"], "fan": {{"profile": "quiet"}}}}}}"#
        ),
    )
    .unwrap();
    let o = otter(
        &["configure", "device.img", "--from-balena", "config.json"],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for k in ["applicationId", "deviceType", "os.fan"] {
        assert!(err.contains(&format!("config.json: {k}:")), "{k}: {err}");
    }
    // A Raspberry Pi 4's config into an x86_64 image: imported, with a warning.
    assert!(
        err.contains("warning: config.json is from a raspberrypi4-64 (arm64) device")
            && err.contains("x86_64 image"),
        "{err}"
    );
    assert!(
        err.contains("note on config.json: apiEndpoint: kept as server.url"),
        "{err}"
    );
    let c = config_on(&p.join("device.img"));
    assert_eq!(c.hostname.as_deref(), Some("kiosk-3"));
    assert!(c.ssh.development_mode);
    assert_eq!(c.ssh.root_authorized_keys, [KEY]);
    assert_eq!(c.network.wifi[0].ssid, "Shop");
    assert_eq!(c.logging.unwrap().storage, LogStorage::Volatile);
    assert_eq!(c.server.unwrap().url, "https://fleet.example.com");

    std::fs::write(
        p.join("device-config.ini"),
        "[device]\nHOSTNAME = \"reckless-reindeer\"\n\n[user]\nUSERNAME = \"revenent\"\nPASSWD = \"reverb\"\nHOME = \"/home/revenent\"\nGROUPS = \"sudo\"\n\n[wifi]\nSSID = \"meinefritzbox\"\nPASSWD = \"strenggeheim\"\n",
    )
    .unwrap();
    let o = otter(
        &[
            "configure",
            "device.img",
            "--from-reswarm",
            "device-config.ini",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("[user] HOME:"), "{}", text(&o));
    let c = config_on(&p.join("device.img"));
    assert_eq!(c.hostname.as_deref(), Some("reckless-reindeer"));
    assert_eq!(c.network.wifi.len(), 2, "merged with the balena import");
    let u = &c.users[0];
    assert!(u.sudo);
    assert!(otter_config::password::verify_password(
        "reverb",
        u.password_hash.as_deref().unwrap()
    ));
    let shown = otter(&["configure", "device.img", "--show"], p);
    assert!(!text(&shown).contains("reverb"));

    // --from merges a device.toml; --reset starts from nothing.
    std::fs::write(
        p.join("site.toml"),
        "timezone = \"UTC\"\n[time]\nntp = [\"ntp.site\"]\n",
    )
    .unwrap();
    let o = otter(&["configure", "device.img", "--from", "site.toml"], p);
    assert!(o.status.success(), "{}", text(&o));
    let c = config_on(&p.join("device.img"));
    assert_eq!(c.timezone.as_deref(), Some("UTC"));
    assert_eq!(c.time.ntp, ["ntp.site"]);
    assert_eq!(c.hostname.as_deref(), Some("reckless-reindeer"));
    let o = otter(
        &["configure", "device.img", "--reset", "--from", "site.toml"],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = config_on(&p.join("device.img"));
    assert_eq!(c.hostname, None);
    assert!(c.users.is_empty());

    // A bad import changes nothing.
    std::fs::write(p.join("bad.json"), r#"{"hostname": "bad_name"}"#).unwrap();
    let before = std::fs::read(p.join("device.img")).unwrap();
    let o = otter(&["configure", "device.img", "--from-balena", "bad.json"], p);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("bad.json") && text(&o).contains("hostname"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(p.join("device.img")).unwrap(), before);
}

#[test]
fn edits_a_plain_device_toml() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = otter(
        &[
            "configure",
            "device.toml",
            "--hostname",
            "plain",
            "--development-mode",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = DeviceConfig::load(&p.join("device.toml")).unwrap();
    assert_eq!(c.hostname.as_deref(), Some("plain"));
    assert!(c.ssh.development_mode);
    // A hand-broken value can be repaired in place.
    std::fs::write(p.join("device.toml"), "hostname = \"bad_name\"\n").unwrap();
    let o = otter(&["configure", "device.toml", "--show"], p);
    assert!(!o.status.success());
    assert!(text(&o).contains("`hostname`"), "{}", text(&o));
    let o = otter(&["configure", "device.toml", "--hostname", "fixed"], p);
    assert!(o.status.success(), "{}", text(&o));
}
