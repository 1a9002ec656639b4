//! The device agent's fleet client against a real `otter server`, on files standing for the
//! device (no QEMU): enroll with a fleet key, poll with ETags, install a rollout's release from
//! the server's artifact URL with the device token, report every phase, commit only after the
//! server was reached since boot, and report a rollback that pauses the rollout; a failed
//! release is not retried.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use otter_boot::{BootState, GrubEnvStore, Slot};
use otterd::Paths;
use otterd::agent::{self, Situation};
use otterd::fleet::{Client, CycleOutcome, FleetState};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SLOT_SIZE: u64 = 4 << 20;

struct Fleet {
    base: String,
    admin: String,
    key: otter_bundle::SigningKey,
    work: PathBuf,
}

fn start_server(dir: &Path) -> Fleet {
    let keys = dir.join("keys");
    otter_bundle::generate_keypair(&keys, "release").unwrap();
    let cfg = otter_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: None,
        storage: None,
        data_dir: dir.join("server"),
        trusted_keys: vec![keys.join("release.pub")],
        poll_interval: Duration::from_secs(1),
        poll_jitter: 0.1,
        enroll_rate_per_minute: 1000,
        rollout_tick: Duration::from_millis(200),
        max_bundle_size: 1 << 26,
        tls: None,
        ..Default::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let s = otter_server::Server::start(cfg).await.unwrap();
            tx.send((
                format!("http://{}", s.local_addr().unwrap()),
                s.new_admin_token.clone().unwrap(),
            ))
            .unwrap();
            s.serve().await.unwrap();
        });
    });
    let (base, admin) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    Fleet {
        base,
        admin,
        key: otter_bundle::SigningKey::load(&keys.join("release.key")).unwrap(),
        work,
    }
}

impl Fleet {
    fn post(&self, path: &str, body: Value) -> Value {
        let r = ureq::post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.admin))
            .send_json(body)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        r.into_json().unwrap()
    }
    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.admin))
            .call()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_json()
            .unwrap()
    }
    /// A release whose root image is `fill` repeated, uploaded to the server.
    fn release(&self, version: &str, fill: u8) -> Vec<u8> {
        let image: Vec<u8> = (0..(1u32 << 20) + 4096)
            .map(|i| ((i / 4096) as u8).wrapping_mul(fill) ^ fill)
            .collect();
        let img = self.work.join(format!("root-{version}.img"));
        std::fs::write(&img, &image).unwrap();
        let out = self.work.join(format!("{version}.otb"));
        otter_bundle::create_bundle(
            &out,
            &[("rootfs", img.as_path())],
            &otter_bundle::CreateOptions {
                compatible: "demo-qemu".into(),
                version: version.into(),
                chunk_size: 16 * 1024,
                zstd_level: 3,
            },
            &[&self.key],
        )
        .unwrap();
        let r = ureq::post(&format!("{}/api/v1/admin/releases", self.base))
            .set("Authorization", &format!("Bearer {}", self.admin))
            .send_bytes(&std::fs::read(&out).unwrap())
            .unwrap();
        assert_eq!(r.status(), 201);
        image
    }
    fn rollout(&self, version: &str) -> String {
        let ro = self.post(
            "/api/v1/admin/rollouts",
            json!({"release": version, "phases": [{"percent": 100}],
                   "success_threshold": 1.0, "failure_threshold": 0.5}),
        );
        ro["id"].as_str().unwrap().to_string()
    }
    fn wait_rollout(&self, id: &str, state: &str) -> Value {
        let start = Instant::now();
        loop {
            let ro = self.get(&format!("/api/v1/admin/rollouts/{id}"));
            if ro["state"] == state {
                return ro;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "rollout never became {state}: {ro}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A device on files (the OTTERD_ROOT layout) running 1.0.0 in slot A, configured for `base`.
fn device(dir: &Path, base: &str, enrollment_key: &str) -> Paths {
    let root = dir.join("root");
    let paths = Paths::under(&root);
    for d in [
        &paths.boot_state_dir,
        &paths.state_dir,
        &paths.keys_dir,
        &paths.run_dir,
        &root.join("proc"),
        &root.join("dev"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(
        dir.join("keys/release.pub"),
        paths.keys_dir.join("release.pub"),
    )
    .unwrap();
    std::fs::write(
        &paths.release,
        "name = \"demo\"\nversion = \"1.0.0\"\ncompatible = \"demo-qemu\"\nboard = \"qemu-x86_64\"\nbuild_time = 1\n",
    )
    .unwrap();
    std::fs::write(&paths.cmdline, "ro otter.slot=A otter.try=0\n").unwrap();
    GrubEnvStore::new(&paths.boot_state_dir)
        .init(&BootState::factory())
        .unwrap();
    std::fs::write(&paths.slot_a, vec![0xAAu8; SLOT_SIZE as usize]).unwrap();
    std::fs::write(&paths.slot_b, vec![0xBBu8; SLOT_SIZE as usize]).unwrap();
    // What `otterd` renders from otter/device.toml at boot.
    std::fs::write(
        paths.run_dir.join("device.toml"),
        format!("hostname = \"gw-7\"\n[server]\nurl = \"{base}\"\nenrollment_key = \"{enrollment_key}\"\n"),
    )
    .unwrap();
    paths
}

/// GRUB at power-on, then the new boot's RAM is empty (no "server reached" marker).
fn power_on(paths: &Paths, version: &str) -> Slot {
    let store = GrubEnvStore::new(&paths.boot_state_dir);
    let mut s = store.load().unwrap().0;
    let (slot, tried) = s.grub_boot_step().unwrap();
    store.store(&s).unwrap();
    std::fs::write(
        &paths.cmdline,
        format!("ro otter.slot={slot} otter.try={}\n", tried as u8),
    )
    .unwrap();
    let rel = std::fs::read_to_string(&paths.release).unwrap();
    let rel: Vec<String> = rel
        .lines()
        .map(|l| {
            if l.starts_with("version") {
                format!("version = \"{version}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&paths.release, rel.join("\n")).unwrap();
    let _ = std::fs::remove_file(paths.run_dir.join("server-reached"));
    slot
}

fn server_cfg(paths: &Paths) -> otter_config::device_config::Server {
    otterd::provision::effective_config(paths).server.unwrap()
}

#[test]
fn agent_enrolls_installs_a_rollout_commits_and_reports_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_server(dir.path());
    let fleet_key = fleet.post("/api/v1/admin/enrollment-keys", json!({"name": "test"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let paths = device(dir.path(), &fleet.base, &fleet_key);

    // Enroll with the fleet key: accepted at once, token kept, device key made once.
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    let st = FleetState::load(&paths);
    assert_eq!(st.enrollment, "accepted");
    assert!(st.token.is_some() && st.etag.is_some());
    let dev = fleet.get(&format!("/api/v1/admin/devices/{}", st.device_id));
    assert_eq!(dev["status"], "accepted", "{dev}");
    assert_eq!(dev["name"], "gw-7");
    assert_eq!(dev["os_version"], "1.0.0");
    assert_eq!(dev["booted_slot"], "a");
    // Unchanged target: the next poll is a 304 and keeps the ETag.
    let etag = st.etag.clone();
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    assert_eq!(FleetState::load(&paths).etag, etag);

    // A rollout of 1.1.0: installed from the server's artifact URL with the device token.
    let image = fleet.release("1.1.0", 3);
    let ro = fleet.rollout("1.1.0");
    let outcome = cycle_until_busy(&mut c);
    assert_eq!(
        outcome,
        CycleOutcome::Installed {
            version: "1.1.0".into(),
            reboot_now: true
        }
    );
    assert_eq!(
        &std::fs::read(&paths.slot_b).unwrap()[..image.len()],
        &image[..]
    );
    c.rebooting();
    let dev = fleet.get(&format!("/api/v1/admin/devices/{}", st.device_id));
    assert_eq!(dev["update"]["phase"], "rebooting", "{dev}");
    assert_eq!(dev["update"]["version"], "1.1.0");

    // Trial boot of B: healthy, but no commit before the server was reached in this boot.
    assert_eq!(power_on(&paths, "1.1.0"), Slot::B);
    assert!(matches!(
        agent::reconcile(&paths).unwrap(),
        Situation::Trial { .. }
    ));
    let why = otterd::fleet::commit_allowed(&paths).unwrap_err();
    assert!(why.contains("was not reached since boot"), "{why}");
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    let dev = fleet.get(&format!("/api/v1/admin/devices/{}", st.device_id));
    assert_eq!(dev["update"]["phase"], "trying", "{dev}");
    otterd::fleet::commit_allowed(&paths).unwrap();
    agent::run_trial(&paths, Slot::B).unwrap();
    c.report(true).unwrap();
    let dev = fleet.get(&format!("/api/v1/admin/devices/{}", st.device_id));
    assert_eq!(dev["update"]["phase"], "committed", "{dev}");
    assert_eq!(dev["os_version"], "1.1.0");
    assert_eq!(dev["booted_slot"], "b");
    let done = fleet.wait_rollout(&ro, "completed");
    assert_eq!(done["state"], "completed");

    // A broken 1.2.0: installed into A, tried, never comes up; GRUB falls back to B.
    fleet.release("1.2.0", 5);
    let ro2 = fleet.rollout("1.2.0");
    let outcome = cycle_until_busy(&mut c);
    assert!(
        matches!(outcome, CycleOutcome::Installed { .. }),
        "{outcome:?}"
    );
    c.rebooting();
    assert_eq!(power_on(&paths, "1.2.0"), Slot::A);
    assert_eq!(power_on(&paths, "1.1.0"), Slot::B);
    assert!(matches!(
        agent::reconcile(&paths).unwrap(),
        Situation::RolledBack { .. }
    ));
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    let dev = fleet.get(&format!("/api/v1/admin/devices/{}", st.device_id));
    assert_eq!(dev["update"]["phase"], "rolled_back", "{dev}");
    assert_eq!(dev["os_version"], "1.1.0");
    let paused = fleet.wait_rollout(&ro2, "paused");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failure"),
        "{paused}"
    );
    // The failed release is not installed again while the same rollout targets it.
    fleet.post(&format!("/api/v1/admin/rollouts/{ro2}/resume"), json!({}));
    for _ in 0..3 {
        assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    }
    let a_after = std::fs::read(&paths.slot_a).unwrap();
    assert_eq!(
        otterd::state::read_state(&paths.state_dir.join("state.json"))
            .unwrap()
            .update
            .unwrap()
            .phase,
        otterd::state::Phase::RolledBack
    );
    drop(a_after);
}

#[test]
fn pending_device_waits_then_is_accepted_and_revocation_reenrolls() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_server(dir.path());
    let paths = device(dir.path(), &fleet.base, "no-such-key");
    // Without a valid key the device waits as pending.
    std::fs::write(
        paths.run_dir.join("device.toml"),
        format!("[server]\nurl = \"{}\"\n", fleet.base),
    )
    .unwrap();
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Pending);
    let id = FleetState::load(&paths).device_id;
    let dev = fleet.get(&format!("/api/v1/admin/devices/{id}"));
    assert_eq!(dev["status"], "pending");
    fleet.post(&format!("/api/v1/admin/devices/{id}/accept"), json!({}));
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    assert_eq!(FleetState::load(&paths).enrollment, "accepted");
    // The same key after a restart of the agent: same device id, token kept.
    let c2 = Client::new(&paths, server_cfg(&paths)).unwrap();
    assert_eq!(c2.state.device_id, id);
    assert!(c2.state.token.is_some());

    // A revoked token: the call fails with a clear error and the agent drops the token; its
    // enrollment is refused (naming why) until an admin accepts the device again.
    fleet.post(&format!("/api/v1/admin/devices/{id}/revoke"), json!({}));
    let e = c.cycle().unwrap_err();
    assert!(format!("{e:#}").contains("401"), "{e:#}");
    assert!(c.state.token.is_none());
    let e = format!("{:#}", c.cycle().unwrap_err());
    assert!(e.contains("revoked"), "{e}");
    fleet.post(&format!("/api/v1/admin/devices/{id}/accept"), json!({}));
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    assert!(c.state.token.is_some());

    // With commit_offline the server is not needed to commit; without it, it is.
    assert!(otterd::fleet::commit_allowed(&paths).is_ok()); // reached in this "boot"
    let _ = std::fs::remove_file(paths.run_dir.join("server-reached"));
    assert!(otterd::fleet::commit_allowed(&paths).is_err());
    std::fs::write(
        paths.run_dir.join("device.toml"),
        format!(
            "[server]\nurl = \"{}\"\ncommit_offline = true\n",
            fleet.base
        ),
    )
    .unwrap();
    assert!(otterd::fleet::commit_allowed(&paths).is_ok());
}

#[test]
fn unreachable_server_is_an_error_naming_it_and_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    otter_bundle::generate_keypair(&dir.path().join("keys"), "release").unwrap();
    let paths = device(dir.path(), &base, "k");
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    let e = format!("{:#}", c.cycle().unwrap_err());
    assert!(e.contains(&base) && e.contains("unreachable"), "{e}");
    let st = FleetState::load(&paths);
    assert!(st.last_error.unwrap().contains("unreachable"));
    assert!(otterd::fleet::commit_allowed(&paths).is_err());
}

/// A fake podman/systemd (`otter_apps::update::fake`) the test can look into while the agent
/// uses it.
#[derive(Clone)]
struct SharedFake(std::sync::Arc<std::sync::Mutex<otter_apps::update::fake::Fake>>);

impl SharedFake {
    fn with<T>(&self, f: impl FnOnce(&mut otter_apps::update::fake::Fake) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl otter_apps::runtime::Runtime for SharedFake {
    fn has_image(&mut self, image: &str) -> Result<bool, String> {
        self.with(|f| f.has_image(image))
    }
    fn pull_size(&mut self, image: &str) -> Result<u64, String> {
        self.with(|f| f.pull_size(image))
    }
    fn pull(&mut self, image: &str, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
        self.with(|f| f.pull(image, progress))
    }
    fn free_space(&mut self) -> Result<u64, String> {
        self.with(|f| f.free_space())
    }
    fn removable_images(&mut self) -> Result<Vec<otter_apps::runtime::ImageInfo>, String> {
        self.with(|f| f.removable_images())
    }
    fn remove_image(&mut self, id: &str) -> Result<(), String> {
        self.with(|f| f.remove_image(id))
    }
    fn install_units(
        &mut self,
        units: &[otter_apps::unit::Unit],
        remove: &[String],
    ) -> Result<(), String> {
        self.with(|f| f.install_units(units, remove))
    }
    fn start(&mut self, unit: &otter_apps::unit::Unit) -> Result<(), String> {
        self.with(|f| f.start(unit))
    }
    fn stop(&mut self, unit: &str) -> Result<(), String> {
        self.with(|f| f.stop(unit))
    }
    fn state(
        &mut self,
        unit: &otter_apps::unit::Unit,
    ) -> Result<otter_apps::runtime::ServiceState, String> {
        self.with(|f| f.state(unit))
    }
    fn try_lock(&mut self) -> Result<bool, String> {
        self.with(|f| f.try_lock())
    }
    fn unlock(&mut self) {
        self.with(|f| f.unlock())
    }
    fn elapsed(&mut self) -> Duration {
        self.with(|f| f.elapsed())
    }
    fn sleep(&mut self, d: Duration) {
        self.with(|f| f.sleep(d))
    }
}

const GOOD: &str =
    "reg.example.com/shop@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const BROKEN: &str =
    "reg.example.com/shop@sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn app_set(image: &str) -> Value {
    json!({"apps": [{"name": "shop", "compose": format!(
        "services:\n  web:\n    image: {image}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 2s\n"
    )}]})
}

/// Poll until the client does something other than idle (the server may take a moment to
/// target a new rollout at the device), for at most 20 s; what it did.
fn cycle_until_busy(c: &mut Client) -> CycleOutcome {
    let start = Instant::now();
    loop {
        match c.cycle().unwrap() {
            CycleOutcome::Idle if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(300))
            }
            o => return o,
        }
    }
}

#[test]
fn agent_applies_an_app_rollout_without_reboot_and_reports_a_rollback() {
    use otter_apps::update::fake::{Behaviour, Fake};
    use otter_proto::AppPhase;
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_server(dir.path());
    let fleet_key = fleet.post("/api/v1/admin/enrollment-keys", json!({"name": "test"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let paths = device(dir.path(), &fleet.base, &fleet_key);
    let fake = SharedFake(std::sync::Arc::new(std::sync::Mutex::new(Fake::new())));
    fake.with(|f| {
        f.image(GOOD, Behaviour::Good);
        f.image(BROKEN, Behaviour::Unhealthy);
    });
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    c.set_apps_runtime(Box::new(fake.clone()));
    c.apps_policy.settle = Duration::from_secs(5);
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    let id = FleetState::load(&paths).device_id;
    // No apps on the device: nothing reported about them.
    let dev = fleet.get(&format!("/api/v1/admin/devices/{id}"));
    assert!(dev["apps"].is_null(), "{dev}");

    // App release 1.0 rolled out: pulled and started in the agent, no reboot, reported.
    let up = |version: &str, set: Value| -> (u16, String) {
        match ureq::post(&format!("{}/api/v1/admin/app-releases", fleet.base))
            .set("Authorization", &format!("Bearer {}", fleet.admin))
            .send_json(json!({"version": version, "set": set}))
        {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("uploading app release {version}: {e}"),
        }
    };
    let (status, body) = up("1.0", app_set(GOOD));
    assert_eq!(status, 201, "{body}");
    let a1: Value = serde_json::from_str(&body).unwrap();
    let rollout = |v: &str| {
        fleet.post(
            "/api/v1/admin/rollouts",
            json!({"app_release": v, "phases": [{"percent": 100}],
                   "success_threshold": 1.0, "failure_threshold": 0.5}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ro1 = rollout("1.0");
    assert_eq!(
        cycle_until_busy(&mut c),
        CycleOutcome::Apps {
            version: "1.0".into(),
            phase: AppPhase::Applied
        }
    );
    assert!(fake.with(|f| f.calls.iter().any(|x| x == &format!("pull {GOOD}"))));
    assert!(!paths.state_dir.join("reboot-requested").exists());
    fleet.wait_rollout(&ro1, "completed");
    let dev = fleet.get(&format!("/api/v1/admin/devices/{id}"));
    let apps = &dev["apps"];
    assert_eq!(apps["source"], "release", "{dev}");
    assert_eq!(apps["app_release_id"], a1["id"]);
    assert_eq!(apps["version"], "1.0");
    assert_eq!(apps["last_apply"]["phase"], "applied");
    assert_eq!(apps["last_apply"]["apps"][0]["result"], "installed");
    assert_eq!(apps["services"][0]["service"], "web");
    assert_eq!(apps["services"][0]["state"], "running");
    assert_eq!(apps["services"][0]["health"], "healthy");
    assert_eq!(apps["services"][0]["image"], GOOD);
    // Applied: the next cycles leave it alone.
    let pulls = fake.with(|f| f.calls.len());
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    assert_eq!(fake.with(|f| f.calls.len()), pulls);

    // A broken 2.0 (its health check fails): rolled back to 1.0 by itself, the failure
    // reported, the rollout pauses; the failed target is not tried again.
    assert_eq!(up("2.0", app_set(BROKEN)).0, 201);
    let ro2 = rollout("2.0");
    match cycle_until_busy(&mut c) {
        CycleOutcome::Apps { version, phase } => {
            assert_eq!((version.as_str(), phase), ("2.0", AppPhase::RolledBack))
        }
        o => panic!("{o:?}"),
    }
    let paused = fleet.wait_rollout(&ro2, "paused");
    let why = paused["failures"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("rolled back") && why.contains("unhealthy"),
        "{paused}"
    );
    let dev = fleet.get(&format!("/api/v1/admin/devices/{id}"));
    assert_eq!(dev["apps"]["version"], "1.0", "{dev}");
    assert_eq!(dev["apps"]["last_apply"]["phase"], "rolled_back");
    assert_eq!(dev["apps"]["services"][0]["image"], GOOD);
    fleet.post(&format!("/api/v1/admin/rollouts/{ro2}/resume"), json!({}));
    let calls = fake.with(|f| f.calls.len());
    for _ in 0..3 {
        assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    }
    assert_eq!(
        fake.with(|f| f.calls.len()),
        calls,
        "the failed app release was retried"
    );

    // An unpinned set never reaches a device: the server refuses it.
    let (status, body) = up("3.0", app_set("reg.example.com/shop:3"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not pinned by digest"), "{body}");
}

#[test]
fn an_app_release_waits_for_an_os_update_on_trial() {
    use otter_apps::update::fake::{Behaviour, Fake};
    use otterd::state::{Phase, StateFile, Update};
    let dir = tempfile::tempdir().unwrap();
    let fleet = start_server(dir.path());
    let fleet_key = fleet.post("/api/v1/admin/enrollment-keys", json!({"name": "test"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let paths = device(dir.path(), &fleet.base, &fleet_key);
    // The device is on trial of 1.0.0 (booted from an update, health checks not done yet).
    let set_phase = |phase: Phase| {
        let f = StateFile::lock(&paths.state_dir).unwrap();
        let mut st = f.load().unwrap();
        st.update = Some(Update {
            phase,
            version: "1.0.0".into(),
            slot: Slot::A,
            from_slot: Slot::B,
            from_version: "0.9.0".into(),
            source: "test".into(),
            started_at: 1,
            updated_at: 1,
            progress: None,
            delta: None,
            reason: None,
        });
        f.save(&st).unwrap();
    };
    set_phase(Phase::Trying);
    let fake = SharedFake(std::sync::Arc::new(std::sync::Mutex::new(Fake::new())));
    fake.with(|f| f.image(GOOD, Behaviour::Good));
    let mut c = Client::new(&paths, server_cfg(&paths)).unwrap();
    c.set_apps_runtime(Box::new(fake.clone()));
    c.apps_policy.settle = Duration::from_secs(5);
    assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
    fleet.post(
        "/api/v1/admin/app-releases",
        json!({"version": "1.0", "set": app_set(GOOD)}),
    );
    fleet.post(
        "/api/v1/admin/rollouts",
        json!({"app_release": "1.0", "phases": [{"percent": 100}]}),
    );
    for _ in 0..3 {
        assert_eq!(c.cycle().unwrap(), CycleOutcome::Idle);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        FleetState::load(&paths).apps_target.is_some(),
        "the target names the app release"
    );
    assert!(
        fake.with(|f| f.calls.is_empty()),
        "apps were touched during the OS trial: {:?}",
        fake.with(|f| f.calls.clone())
    );
    // Committed: now the app release goes on.
    set_phase(Phase::Committed);
    assert_eq!(
        c.cycle().unwrap(),
        CycleOutcome::Apps {
            version: "1.0".into(),
            phase: otter_proto::AppPhase::Applied
        }
    );
}
