//! Simulated devices against a real server: a rollout advances while installs succeed and pauses
//! itself when the simulated failure rate crosses the threshold.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use otter_sim::Sim;

struct Server {
    base: String,
    admin: String,
    dir: tempfile::TempDir,
    key: otter_bundle::SigningKey,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    otter_bundle::generate_keypair(&keys, "release").unwrap();
    let cfg = otter_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: None,
        storage: None,
        data_dir: dir.path().join("data"),
        trusted_keys: vec![keys.join("release.pub")],
        poll_interval: Duration::from_secs(1),
        poll_jitter: 0.1,
        enroll_rate_per_minute: 100_000,
        rollout_tick: Duration::from_millis(200),
        max_bundle_size: 1 << 26,
        tls: None,
        ..Default::default()
    };
    let s = otter_server::Server::start(cfg).await.unwrap();
    let base = format!("http://{}", s.local_addr().unwrap());
    let admin = s.new_admin_token.clone().unwrap();
    tokio::spawn(s.serve());
    Server {
        base,
        admin,
        key: otter_bundle::SigningKey::load(&keys.join("release.key")).unwrap(),
        dir,
    }
}

impl Server {
    async fn post(&self, sim: &Sim, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = sim
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }
    async fn get(&self, sim: &Sim, path: &str) -> serde_json::Value {
        sim.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    async fn release(&self, sim: &Sim, version: &str) {
        let rootfs = self.dir.path().join(format!("root-{version}"));
        std::fs::write(&rootfs, vec![7u8; 32768]).unwrap();
        let out = self.dir.path().join(format!("{version}.otb"));
        otter_bundle::create_bundle(
            &out,
            &[("rootfs", rootfs.as_path())],
            &otter_bundle::CreateOptions {
                compatible: "sim-board".into(),
                version: version.into(),
                chunk_size: 4096,
                zstd_level: 3,
            },
            &[&self.key],
        )
        .unwrap();
        let r = sim
            .client
            .post(format!("{}/api/v1/admin/releases", self.base))
            .bearer_auth(&self.admin)
            .body(std::fs::read(&out).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_pauses_itself_when_simulated_failures_cross_the_threshold() {
    let s = server().await;
    let sim = Sim::new(&s.base, "sim-board", 7, 16).unwrap();
    let key = s
        .post(
            &sim,
            "/api/v1/admin/enrollment-keys",
            serde_json::json!({"name": "sim"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (devs, enroll) = sim.enroll_all(100, &key, 8).await.unwrap();
    assert_eq!(devs.len(), 100);
    assert_eq!(enroll.requests, 100);

    // Healthy release: every phase succeeds and the rollout completes.
    s.release(&sim, "1.1.0").await;
    let ro = s
        .post(
            &sim,
            "/api/v1/admin/rollouts",
            serde_json::json!({
            "release": "1.1.0",
            "phases": [{"percent": 5}, {"percent": 25}, {"percent": 100}],
            "success_threshold": 0.9, "failure_threshold": 0.1}),
        )
        .await;
    let id = ro["id"].as_str().unwrap().to_owned();
    let (done, failed) = sim
        .lifecycle(
            devs.clone(),
            Duration::from_millis(200),
            Duration::from_secs(6),
            0.0,
        )
        .await
        .unwrap();
    assert_eq!((done, failed), (100, 0));
    let ro = s.get(&sim, &format!("/api/v1/admin/rollouts/{id}")).await;
    assert_eq!(ro["state"], "completed", "{ro}");

    // A bad release: most installs fail; the first phase's failures pause the rollout.
    s.release(&sim, "1.2.0").await;
    let ro = s
        .post(
            &sim,
            "/api/v1/admin/rollouts",
            serde_json::json!({
            "release": "1.2.0",
            "phases": [{"percent": 10}, {"percent": 100}],
            "success_threshold": 0.9, "failure_threshold": 0.2}),
        )
        .await;
    let id = ro["id"].as_str().unwrap().to_owned();
    let mut devs = devs;
    for d in &mut devs {
        d.os_version = "1.1.0".into();
        d.etag = None;
    }
    let (done, failed) = sim
        .lifecycle(
            devs,
            Duration::from_millis(200),
            Duration::from_secs(4),
            0.8,
        )
        .await
        .unwrap();
    let ro = s.get(&sim, &format!("/api/v1/admin/rollouts/{id}")).await;
    assert_eq!(ro["state"], "paused", "{ro}");
    assert_eq!(ro["phase"], 0, "never got past the first phase: {ro}");
    assert_eq!(done, 10, "only the first phase's 10 devices were targeted");
    assert!(failed >= 3, "{failed} of 10 failed");
    assert!(
        ro["reason"].as_str().unwrap().contains("failure threshold"),
        "{ro}"
    );
    assert_eq!(ro["failures"].as_array().unwrap().len(), failed);
}
