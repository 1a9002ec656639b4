//! The device config applied by the `otterd` binary on files standing for the device
//! (OTTERD_ROOT layout): rendering into /etc, runtime changes restarting only what changed,
//! a broken file keeping the last good config, and removed keys restoring the image's files.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

struct Dev {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn dev() -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let image = root.join("run/otter/etc-image");
    let files = [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("group", "root:x:0:\nsudo:x:27:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\nsudo:*::\n"),
        ("hosts", "127.0.0.1\tlocalhost\n"),
        ("hostname", "otter\n"),
    ];
    for (name, text) in files {
        for base in [&image, &root.join("etc")] {
            std::fs::create_dir_all(base).unwrap();
            std::fs::write(base.join(name), text).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("usr/share/zoneinfo/Europe")).unwrap();
    std::fs::write(root.join("usr/share/zoneinfo/Europe/Berlin"), "TZif").unwrap();
    std::fs::create_dir_all(root.join("boot/efi/otter")).unwrap();
    Dev { _dir: dir, root }
}

impl Dev {
    fn write_config(&self, text: &str) {
        std::fs::write(self.root.join("boot/efi/otter/device.toml"), text).unwrap();
    }
    fn apply(&self) -> (bool, serde_json::Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_otterd"))
            .args(["config", "apply", "--json"])
            .env("OTTERD_ROOT", &self.root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.success(),
            v,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
    fn etc(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.join("etc").join(rel))
            .unwrap_or_else(|e| panic!("etc/{rel}: {e}"))
    }
    fn has(&self, rel: &str) -> bool {
        self.root.join("etc").join(rel).exists()
    }
}

fn strs(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

const CONFIG: &str = r#"
hostname = "gw-17"
timezone = "Europe/Berlin"

[[users]]
name = "ops"
sudo = true
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA ops@laptop"]

[[network.ethernet]]
addresses = ["10.0.2.15/24"]
gateway = "10.0.2.2"

[time]
ntp = ["10.0.2.2"]

[logging]
storage = "persistent"
"#;

#[test]
fn apply_change_break_and_remove() {
    let d = dev();
    d.write_config(CONFIG);
    let (ok, v, err) = d.apply();
    assert!(ok, "{err}");
    assert_eq!(v["source"], "device-toml");
    assert_eq!(d.etc("hostname"), "gw-17\n");
    assert!(
        d.etc("passwd")
            .contains("ops:x:1000:1000::/home/ops:/bin/bash")
    );
    assert!(d.etc("otter/authorized_keys/ops").contains("ops@laptop"));
    assert!(
        d.etc("systemd/timesyncd.conf.d/50-otter.conf")
            .contains("NTP=10.0.2.2")
    );
    assert!(
        d.etc("systemd/journald.conf.d/50-otter.conf")
            .contains("Storage=persistent")
    );
    assert!(
        d.etc("NetworkManager/system-connections/otter-ethernet.nmconnection")
            .contains("address1=10.0.2.15/24,10.0.2.2")
    );
    assert_eq!(
        std::fs::read_link(d.root.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    assert!(d.root.join("data/home/ops").is_dir());

    // Same file again: nothing changes, nothing restarts.
    let (ok, v, _) = d.apply();
    assert!(ok);
    assert!(strs(&v, "changed").is_empty(), "{v}");
    assert!(strs(&v, "restarted").is_empty(), "{v}");

    // Only the host name changes: only the host name is re-applied.
    d.write_config(&CONFIG.replace("gw-17", "gw-18"));
    let (ok, v, _) = d.apply();
    assert!(ok);
    assert_eq!(strs(&v, "changed"), ["hostname", "hosts"]);
    assert_eq!(strs(&v, "restarted"), ["hostname"]);
    assert_eq!(d.etc("hostname"), "gw-18\n");

    // A broken file: not applied, the last good config stays, the error names file and key.
    d.write_config(&CONFIG.replace("gw-17", "bad_host!"));
    let (ok, v, _) = d.apply();
    assert!(!ok);
    assert_eq!(v["source"], "last-good");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("device.toml") && e.contains("`hostname`"), "{e}");
    assert_eq!(d.etc("hostname"), "gw-18\n");
    let status = Command::new(env!("CARGO_BIN_EXE_otterd"))
        .arg("status")
        .env("OTTERD_ROOT", &d.root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("last good config") && text.contains("`hostname`"),
        "{text}"
    );

    // Keys removed: the image's files come back, rendered extras disappear.
    d.write_config("");
    let (ok, v, _) = d.apply();
    assert!(ok);
    assert_eq!(v["source"], "device-toml");
    assert_eq!(d.etc("hostname"), "otter\n");
    assert_eq!(d.etc("passwd"), "root:x:0:0:root:/root:/bin/bash\n");
    assert!(!d.has("systemd/timesyncd.conf.d/50-otter.conf"));
    assert!(!d.has("otter/authorized_keys/ops"));
    assert!(!d.has("localtime"));
    let restarted = strs(&v, "restarted");
    for unit in [
        "hostname",
        "systemd-timesyncd.service",
        "systemd-journald.service",
        "NetworkManager.service",
    ] {
        assert!(restarted.contains(&unit.to_string()), "{unit}: {v}");
    }

    // The user comes back with the same uid.
    d.write_config("[[users]]\nname = \"other\"\n[[users]]\nname = \"ops\"\n");
    assert!(d.apply().0);
    assert!(d.etc("passwd").contains("ops:x:1000:1000"));
    assert!(d.etc("passwd").contains("other:x:1001:1001"));
}

#[test]
fn no_file_means_image_defaults() {
    let d = dev();
    let (ok, v, _) = d.apply();
    assert!(ok);
    assert_eq!(v["source"], "defaults");
    assert_eq!(d.etc("hostname"), "otter\n");

    // `otter configure` was cut off between its renames: only device.toml.old is there.
    std::fs::write(
        d.root.join("boot/efi/otter/device.toml.old"),
        "hostname = \"from-old\"\n",
    )
    .unwrap();
    let (ok, v, _) = d.apply();
    assert!(ok);
    assert_eq!(v["source"], "device-toml");
    assert_eq!(d.etc("hostname"), "from-old\n");
}
