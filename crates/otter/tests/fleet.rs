//! `otter server` and the fleet commands as a user runs them: start the server (zero config in a
//! temporary folder), log in, upload a release, accept/tag/pin a device, run a rollout, read logs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn otter(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otter"))
        .args(args)
        .current_dir(cwd)
        .env("OTTER_LOGIN", cwd.join("login.json"))
        .env_remove("OTTER_SERVER")
        .env_remove("OTTER_TOKEN")
        .output()
        .expect("run otter")
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn json_of(o: Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap()
}

fn start(dir: &Path) -> (ServerProc, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_otter"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--trusted-key",
            "keys/release.pub",
        ])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = ServerProc(child);
    let mut url = None;
    let mut token = None;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(l)) = lines.next() {
        if let Some(u) = l.strip_prefix("otter server: listening on ") {
            url = Some(u.trim().to_owned());
        }
        if let Some(t) = l.trim().strip_prefix("log in with: otter login ") {
            token = t.split("--token ").nth(1).map(str::to_owned);
        }
        if l.contains("dashboard:") && l.contains("/login?token=") {
            break;
        }
    }
    (
        proc,
        url.expect("listening line"),
        token.expect("token line"),
    )
}

#[test]
fn server_and_fleet_commands() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(otter(
        &["keys", "generate", "--out", "keys", "--name", "release"],
        p,
    ));
    let (_server, url, token) = start(p);
    assert!(
        p.join("otter-data/otter.db").is_file(),
        "zero config: ./otter-data"
    );

    // Wrong token: refused, nothing saved.
    let o = otter(&["login", &url, "--token", "ota_wrong"], p);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not known"),
        "{:?}",
        o
    );
    assert!(!p.join("login.json").exists());
    ok(otter(&["login", &url, "--token", &token], p));

    std::fs::write(p.join("root.img"), vec![3u8; 100_000]).unwrap();
    ok(otter(
        &[
            "bundle",
            "create",
            "--rootfs",
            "root.img",
            "--version",
            "1.1.0",
            "--compatible",
            "board-x",
            "--key",
            "keys/release.key",
            "-o",
            "r.otb",
        ],
        p,
    ));
    let rel = json_of(otter(&["release", "upload", "r.otb", "--json"], p));
    assert_eq!(rel["version"], "1.1.0");
    let o = otter(&["release", "upload", "r.otb"], p);
    assert!(!o.status.success(), "the same version twice");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let list = json_of(otter(&["release", "ls", "--json"], p));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(ok(otter(&["release", "ls"], p)).contains("board-x"));

    // A device enrolls without a key: pending until accepted.
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let enroll = || -> Value {
        let ch: Value = ureq::get(&format!("{url}/api/v1/device/challenge"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        let req = otter_proto::EnrollRequest::signed(
            &key,
            ch["challenge"].as_str().unwrap(),
            "board-x",
            Some("gw-1".into()),
            None,
            None,
        );
        ureq::post(&format!("{url}/api/v1/device/enroll"))
            .send_json(&req)
            .unwrap()
            .into_json()
            .unwrap()
    };
    let id = enroll()["device_id"].as_str().unwrap().to_owned();
    let pending = json_of(otter(
        &["devices", "ls", "--status", "pending", "--json"],
        p,
    ));
    assert_eq!(pending[0]["id"], id.as_str());
    ok(otter(&["devices", "accept", &id], p));
    let dev_token = enroll()["token"].as_str().unwrap().to_owned();
    ok(otter(&["devices", "tag", &id, "--add", "lab"], p));
    assert!(ok(otter(&["devices", "pin", &id, "1.1.0"], p)).contains("pinned to 1.1.0"));
    let shown = json_of(otter(&["devices", "show", &id, "--json"], p));
    assert_eq!(shown["tags"], json!(["lab"]));
    assert_eq!(shown["target_version"], "1.1.0");
    ok(otter(&["devices", "pin", &id, "--unpin"], p));
    let text = ok(otter(&["devices", "ls"], p));
    assert!(text.contains(&id) && text.contains("gw-1"), "{text}");

    // A rollout to the lab devices.
    let ro = json_of(otter(
        &[
            "rollout", "create", "1.1.0", "--tag", "lab", "--phases", "50,100", "--soak", "0",
            "--json",
        ],
        p,
    ));
    let rid = ro["id"].as_str().unwrap().to_owned();
    assert_eq!(ro["total_devices"], 1);
    assert!(ok(otter(&["rollout", "pause", &rid], p)).contains("paused"));
    assert!(ok(otter(&["rollout", "resume", &rid], p)).contains("active"));
    let st = ok(otter(&["rollout", "status", &rid], p));
    assert!(
        st.contains("phase 1") && st.contains("rollout_created"),
        "{st}"
    );
    assert!(ok(otter(&["rollout", "abort", &rid], p)).contains("aborted"));
    let o = otter(&["rollout", "resume", &rid], p);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("aborted"));

    // Logs.
    ureq::post(&format!("{url}/api/v1/device/logs"))
        .set("Authorization", &format!("Bearer {dev_token}"))
        .send_json(json!({"entries": [{"ts_ms": 5, "source": "otterd", "message": "hello from the device"}]}))
        .unwrap();
    assert!(ok(otter(&["logs", &id], p)).contains("hello from the device"));
    // A hostile device: escape sequences and newlines reach the admin's terminal escaped.
    ureq::post(&format!("{url}/api/v1/device/logs"))
        .set("Authorization", &format!("Bearer {dev_token}"))
        .send_json(json!({"entries": [{"ts_ms": 6, "source": "otterd",
            "message": "ok\u{1b}[2J\u{1b}[1;1H\n0 info    otterd: forged line\u{9b}31m"}]}))
        .unwrap();
    let text = ok(otter(&["logs", &id], p));
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{9b}'),
        "{text:?}"
    );
    assert!(
        text.contains("ok\\u{1b}[2J\\u{1b}[1;1H\\u{a}0 info    otterd: forged line\\u{9b}31m"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "one line per log entry: {text}");
    let raw = ok(otter(&["logs", &id, "--json"], p));
    assert!(
        raw.contains("\\u001b[2J"),
        "--json keeps the value (JSON-escaped): {raw}"
    );

    // Unknown device: a clear error, non-zero exit.
    let o = otter(&["devices", "show", "nope"], p);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no device nope"));
}

#[test]
fn app_release_commands() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(otter(
        &["keys", "generate", "--out", "keys", "--name", "release"],
        p,
    ));
    let (_server, url, token) = start(p);
    ok(otter(&["login", &url, "--token", &token], p));
    let pinned = "reg.example.com/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    // A compose file by tag: refused, naming the service and saying what to do.
    std::fs::write(
        p.join("compose.yaml"),
        "services:\n  web:\n    image: reg.example.com/web:1\n",
    )
    .unwrap();
    let o = otter(
        &[
            "app-release",
            "upload",
            "compose.yaml",
            "--name",
            "shop",
            "--version",
            "1.0",
        ],
        p,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`web`") && err.contains("not pinned by digest"),
        "{err}"
    );
    // Not an app set: the file is named.
    std::fs::write(p.join("set.json"), "{\"apps\": 1}").unwrap();
    let o = otter(
        &["app-release", "upload", "set.json", "--version", "1.0"],
        p,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("set.json: not an app set"));

    // Pinned: uploaded, listed, shown.
    std::fs::write(
        p.join("set.json"),
        serde_json::to_string(&json!({"apps": [{"name": "shop",
            "compose": "services:\n  web:\n    image: reg.example.com/web:1\n",
            "images": {"web": pinned}}]}))
        .unwrap(),
    )
    .unwrap();
    let ar = json_of(otter(
        &[
            "app-release",
            "upload",
            "set.json",
            "--version",
            "1.0",
            "--json",
        ],
        p,
    ));
    assert_eq!(ar["images"], json!([pinned]));
    let list = json_of(otter(&["app-release", "ls", "--json"], p));
    assert_eq!(list[0]["version"], "1.0");
    assert!(ok(otter(&["app-release", "ls"], p)).contains("shop"));
    let shown = ok(otter(&["app-release", "show", "1.0"], p));
    assert!(
        shown.contains(pinned) && shown.contains("--- app shop ---"),
        "{shown}"
    );
    // No device yet: a rollout of it is refused with the reason.
    let o = otter(
        &[
            "rollout",
            "create",
            "--app-release",
            "1.0",
            "--phases",
            "100",
        ],
        p,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no accepted device"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Neither a release nor an app release: clap says so.
    assert!(!otter(&["rollout", "create"], p).status.success());
}
