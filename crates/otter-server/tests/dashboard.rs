//! The dashboard in headless Chromium (Debian's `chromium`): every page renders, and the
//! screenshots show the key elements (checked by their colours: the header, the phase progress
//! bar's succeeded and failed parts, the version bars). Skipped with a message when chromium is
//! not installed (CI installs it: apt-get install chromium).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|c| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {c}"))
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

struct Browser {
    bin: PathBuf,
    profile: PathBuf,
}

impl Browser {
    fn run(&self, args: &[&str], url: &str) -> Vec<u8> {
        let out = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .args(args)
            .arg(url)
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
    fn dom(&self, url: &str) -> String {
        String::from_utf8(self.run(&["--dump-dom"], url)).unwrap()
    }
    fn screenshot(&self, url: &str, out: &Path) -> Image {
        let arg = format!("--screenshot={}", out.display());
        self.run(&[&arg, "--window-size=1400,1000"], url);
        Image::load(out)
    }
}

struct Image {
    w: usize,
    px: Vec<[u8; 3]>,
}

impl Image {
    fn load(p: &Path) -> Image {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        let step = info.color_type.samples();
        let px = buf[..info.buffer_size()]
            .chunks(step)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        Image {
            w: info.width as usize,
            px,
        }
    }
    /// Pixels within a small distance of `rgb`.
    fn count(&self, rgb: [u8; 3]) -> usize {
        self.px
            .iter()
            .filter(|p| {
                p.iter()
                    .zip(rgb)
                    .all(|(a, b)| (*a as i32 - b as i32).abs() <= 6)
            })
            .count()
    }
}

const HEADER: [u8; 3] = [0x17, 0x32, 0x4d];
const SUCCEEDED: [u8; 3] = [0x2e, 0x9e, 0x4f];
const FAILED: [u8; 3] = [0xd6, 0x45, 0x41];
const VERSION_BAR: [u8; 3] = [0x3b, 0x7d, 0xd8];

#[test]
fn dashboard_pages_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let s = start(|_| {});
    let key = s.enrollment_key("k");
    let mut devs: Vec<TestDevice> = (0..10).map(|i| device(i, "qemu-x86_64")).collect();
    for d in &mut devs {
        s.enrolled(d, &key);
        s.report(
            d,
            &json!({"os_version": "1.0.0", "booted_slot": "a", "health": "healthy"}),
        );
    }
    let pending = device(50, "qemu-x86_64");
    s.enroll(&pending, None);
    s.post_json(
        otter_proto::paths::LOGS,
        Some(&devs[0].token),
        &json!({"entries": [{"ts_ms": 1, "source": "otterd", "message": "booted slot a <ok>"}]}),
    );
    assert_eq!(s.upload(&s.bundle("1.1.0", "qemu-x86_64")).status, 201);
    let ro = s
        .admin_post(
            "/api/v1/admin/rollouts",
            &json!({"release": "1.1.0", "phases": [{"percent": 100}], "failure_threshold": 0.3}),
        )
        .json();
    let rid = ro["id"].as_str().unwrap().to_owned();
    for (i, d) in devs.iter().enumerate() {
        if i < 6 {
            s.report(d, &json!({"os_version": "1.1.0", "update": {"version": "1.1.0", "phase": "committed"}}));
        } else {
            s.report(
                d,
                &json!({"update": {"version": "1.1.0", "phase": "failed", "error": "disk full"}}),
            );
        }
    }
    wait_for("auto pause", || {
        s.admin_get(&format!("/api/v1/admin/rollouts/{rid}")).json()["state"] == "paused"
    });

    let dir = s.dir.path().join("shots");
    std::fs::create_dir_all(&dir).unwrap();
    let b = Browser {
        bin,
        profile: s.dir.path().join("profile"),
    };

    // Not signed in: the sign-in form.
    let dom = b.dom(&s.url("/devices"));
    assert!(
        dom.contains("Sign in") && dom.contains("name=\"token\""),
        "{dom}"
    );
    // The link otter server prints signs in (cookie kept in the profile).
    let dom = b.dom(&s.url(&format!("/login?token={}", s.admin_token)));
    assert!(dom.contains("Fleet overview"), "{dom}");

    let img = b.screenshot(&s.url("/"), &dir.join("overview.png"));
    let dom = b.dom(&s.url("/"));
    assert!(dom.contains("id=\"card-online\""));
    assert!(
        dom.contains("Devices per version") && dom.contains("1.0.0") && dom.contains("1.1.0"),
        "{dom}"
    );
    assert!(dom.contains(&rid), "the paused rollout is listed");
    assert!(img.count(HEADER) > 1400 * 20, "header bar visible");
    assert!(img.count(VERSION_BAR) > 100, "version bars visible");
    assert!(img.w == 1400);

    let dom = b.dom(&s.url("/devices?status=pending"));
    assert!(
        dom.contains(&pending_id(&s)) && dom.contains("1 device(s) shown"),
        "{dom}"
    );
    let dom = b.dom(&s.url("/devices?version=1.1.0"));
    assert!(dom.contains("6 device(s) shown"), "{dom}");

    let img = b.screenshot(
        &s.url(&format!("/devices/{}", devs[0].id)),
        &dir.join("device.png"),
    );
    let dom = b.dom(&s.url(&format!("/devices/{}", devs[0].id)));
    assert!(
        dom.contains("booted slot a &lt;ok&gt;"),
        "log lines are shown, escaped: {dom}"
    );
    assert!(
        dom.contains("1.1.0 committed") && dom.contains("device_accepted"),
        "{dom}"
    );
    assert!(img.count(HEADER) > 1400 * 20);

    let dom = b.dom(&s.url("/releases"));
    assert!(dom.contains("1.1.0") && dom.contains(&s.signing_key.public().fingerprint()));

    let img = b.screenshot(
        &s.url(&format!("/rollouts/{rid}")),
        &dir.join("rollout.png"),
    );
    let dom = b.dom(&s.url(&format!("/rollouts/{rid}")));
    assert!(
        dom.contains("paused itself") && dom.contains("4 of 10"),
        "{dom}"
    );
    assert!(dom.contains("install failed: disk full"), "{dom}");
    // The phase bar: 6 of 10 succeeded (green), 4 failed (red), 360 px wide, 18 px high.
    let green = img.count(SUCCEEDED);
    let red = img.count(FAILED);
    assert!(
        green >= 200 * 16,
        "succeeded part of the phase bar: {green} px"
    );
    assert!(red >= 130 * 16, "failed part of the phase bar: {red} px");
    assert!(green > red, "more succeeded than failed");
    eprintln!("screenshots in {}", dir.display());
    if let Ok(keep) = std::env::var("OTTER_KEEP_SCREENSHOTS") {
        for f in ["overview.png", "device.png", "rollout.png"] {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(dir.join(f), Path::new(&keep).join(f)).unwrap();
        }
    }
}

fn pending_id(s: &TestServer) -> String {
    s.admin_get("/api/v1/admin/devices?status=pending").json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}
