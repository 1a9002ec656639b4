//! A fleet of simulated devices for load tests and rollout tests of `otter server`.
//!
//! Each device has a deterministic Ed25519 key (from a seed and its index), enrolls through the
//! real protocol (challenge, signature, enrollment key), then polls its target with
//! `If-None-Match`, reports, and "installs" a targeted release: it fetches the first bytes of the
//! artifact with a range request, reports `downloading` → `installing` → `committed`, or fails
//! (install error or rollback) with a chosen probability. Only loopback servers are meant.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use otter_client::{Answer, Body, Call, Method, device};
use otter_proto::{
    EnrollRequest, EnrollStatus, Health, StateReport, TargetState, UpdatePhase, UpdateReport,
};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

#[derive(Debug, Clone)]
pub struct Sim {
    pub base: String,
    pub client: reqwest::Client,
    pub compatible: String,
    /// Different seeds make different fleets against the same server.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct SimDevice {
    pub index: usize,
    pub id: String,
    pub token: String,
    pub etag: Option<String>,
    pub os_version: String,
}

/// Latencies of one kind of request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Figures {
    fn from(mut lat_us: Vec<u32>, errors: usize, secs: f64) -> Figures {
        lat_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat_us.is_empty() {
                return 0.0;
            }
            let i = ((lat_us.len() as f64 - 1.0) * p).round() as usize;
            lat_us[i] as f64 / 1000.0
        };
        Figures {
            requests: lat_us.len(),
            errors,
            seconds: secs,
            per_second: lat_us.len() as f64 / secs.max(1e-9),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat_us.last().map_or(0.0, |&v| v as f64 / 1000.0),
        }
    }
}

impl Sim {
    pub fn new(base: &str, compatible: &str, seed: u64, concurrency: usize) -> Result<Sim> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency.max(1))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Sim {
            base: base.trim_end_matches('/').to_owned(),
            client,
            compatible: compatible.to_owned(),
            seed,
        })
    }

    pub fn key(&self, index: usize) -> SigningKey {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
        seed[8..16].copy_from_slice(&self.seed.to_le_bytes());
        seed[16] = 0xa5;
        SigningKey::from_bytes(&seed)
    }

    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    /// Carries an API call (paths and types from otter-client) over async reqwest.
    pub async fn send<T: DeserializeOwned>(
        &self,
        call: &Call<T>,
        token: Option<&str>,
    ) -> Result<(T, Answer)> {
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut req = self.client.request(method, self.url(&call.path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(e) = &call.if_none_match {
            req = req.header("If-None-Match", e);
        }
        if let Body::Json(b) = &call.body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.clone());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{}: cannot reach {}", call.what(), self.base))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let poll_interval = header(otter_proto::HEADER_POLL_INTERVAL).and_then(|v| v.parse().ok());
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .with_context(|| format!("{}: reading the answer", call.what()))?;
        let a = Answer {
            status,
            body,
            etag,
            poll_interval,
        };
        Ok((call.decode(&a, &self.base)?, a))
    }

    /// Enrolls device `index`; `None` when it is pending.
    pub async fn enroll(&self, index: usize, key: Option<&str>) -> Result<Option<SimDevice>> {
        let (ch, _) = self.send(&device::challenge(), None).await?;
        let req = EnrollRequest::signed(
            &self.key(index),
            &ch.challenge,
            &self.compatible,
            Some(format!("sim-{index}")),
            key.map(str::to_owned),
            Some("1.0.0".into()),
        );
        let (e, _) = self
            .send(&device::enroll(&req), None)
            .await
            .with_context(|| format!("enrolling sim-{index}"))?;
        Ok(match (e.status, e.token) {
            (EnrollStatus::Accepted, Some(token)) => Some(SimDevice {
                index,
                id: e.device_id,
                token,
                etag: None,
                os_version: "1.0.0".into(),
            }),
            _ => None,
        })
    }

    /// Enrolls `n` devices with `concurrency` requests in flight.
    pub async fn enroll_all(
        &self,
        n: usize,
        key: &str,
        concurrency: usize,
    ) -> Result<(Vec<SimDevice>, Figures)> {
        let next = Arc::new(AtomicUsize::new(0));
        let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (sim, next, out, key) = (self.clone(), next.clone(), out.clone(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(lat);
                    }
                    let t = Instant::now();
                    let d = sim
                        .enroll(i, Some(&key))
                        .await?
                        .with_context(|| format!("sim-{i} stayed pending despite the key"))?;
                    lat.push(t.elapsed().as_micros() as u32);
                    out.lock().await.push(d);
                }
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let secs = start.elapsed().as_secs_f64();
        let mut devs = std::mem::take(&mut *out.lock().await);
        devs.sort_by_key(|d| d.index);
        Ok((devs, Figures::from(lat, 0, secs)))
    }

    /// One poll; updates the device's ETag. Gives the target when it changed (200).
    pub async fn poll(&self, d: &mut SimDevice) -> Result<Option<TargetState>> {
        let call = device::target(d.etag.as_deref());
        let (target, a) = self
            .send(&call, Some(&d.token))
            .await
            .with_context(|| format!("poll of {}", d.id))?;
        if target.is_some() {
            d.etag = a.etag;
        }
        Ok(target)
    }

    pub async fn report(&self, d: &SimDevice, r: &StateReport) -> Result<()> {
        self.send(&device::report(r), Some(&d.token))
            .await
            .with_context(|| format!("report of {}", d.id))?;
        Ok(())
    }

    /// Runs `op` over the devices round-robin from `concurrency` tasks for `duration`.
    async fn hammer<F, Fut>(
        &self,
        devices: Vec<SimDevice>,
        concurrency: usize,
        duration: Duration,
        op: F,
    ) -> Result<Figures>
    where
        F: Fn(Sim, SimDevice) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = Result<SimDevice>> + Send,
    {
        let per = devices.len().div_ceil(concurrency.max(1)).max(1);
        let deadline = Instant::now() + duration;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for chunk in devices.chunks(per) {
            let mut chunk = chunk.to_vec();
            let (sim, op) = (self.clone(), op.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut i = 0;
                while Instant::now() < deadline {
                    let d = chunk[i].clone();
                    let t = Instant::now();
                    match op(sim.clone(), d).await {
                        Ok(d) => {
                            lat.push(t.elapsed().as_micros() as u32);
                            chunk[i] = d;
                        }
                        Err(_) => errors += 1,
                    }
                    i = (i + 1) % chunk.len();
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            lat.extend(l);
            errors += e;
        }
        Ok(Figures::from(lat, errors, start.elapsed().as_secs_f64()))
    }

    /// Polls that the server answers with 304 (each device polls once first to learn its ETag).
    pub async fn bench_polls(
        &self,
        devices: Vec<SimDevice>,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Figures> {
        use futures::{StreamExt, TryStreamExt};
        let devices: Vec<SimDevice> = futures::stream::iter(devices.into_iter().map(|mut d| {
            let sim = self.clone();
            async move {
                if d.etag.is_none() {
                    sim.poll(&mut d).await?;
                }
                Ok::<_, anyhow::Error>(d)
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
        self.hammer(devices, concurrency, duration, |sim, mut d| async move {
            match sim.poll(&mut d).await? {
                None => Ok(d),
                Some(_) => bail!("expected 304"),
            }
        })
        .await
    }

    /// State reports (each a database write).
    pub async fn bench_reports(
        &self,
        devices: Vec<SimDevice>,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Figures> {
        self.hammer(devices, concurrency, duration, |sim, d| async move {
            let r = StateReport {
                os_version: Some(d.os_version.clone()),
                booted_slot: Some("a".into()),
                health: Some(Health::Healthy),
                uptime_secs: Some(rand::thread_rng().gen_range(1..100_000)),
                free_bytes: Some(1 << 30),
                ..Default::default()
            };
            sim.report(&d, &r).await?;
            Ok(d)
        })
        .await
    }

    /// Fake install of a targeted release: fetch the artifact's first bytes (range request),
    /// report progress, then `committed`, or fail (half install errors, half rollbacks).
    pub async fn install(&self, d: &mut SimDevice, t: &TargetState, fail: bool) -> Result<bool> {
        let Some(rel) = &t.release else {
            return Ok(false);
        };
        if rel.version == d.os_version {
            return Ok(false);
        }
        let running = d.os_version.clone();
        let upd = |phase, progress, error: Option<&str>| StateReport {
            os_version: Some(running.clone()),
            update: Some(UpdateReport {
                version: rel.version.clone(),
                phase,
                progress,
                error: error.map(str::to_owned),
            }),
            ..Default::default()
        };
        self.report(d, &upd(UpdatePhase::Downloading, Some(0), None))
            .await?;
        let url = if rel.url.starts_with('/') {
            self.url(&rel.url)
        } else {
            rel.url.clone()
        };
        let resp = self
            .client
            .get(url)
            .bearer_auth(&d.token)
            .header("Range", "bytes=0-7")
            .send()
            .await?;
        if resp.status().as_u16() != 206 {
            bail!(
                "artifact of {} for {}: {}",
                rel.release_id,
                d.id,
                resp.status()
            );
        }
        let magic = resp.bytes().await?;
        if &magic[..] != b"OTTERBND" {
            bail!("artifact {} is not a bundle", rel.release_id);
        }
        self.report(d, &upd(UpdatePhase::Installing, Some(50), None))
            .await?;
        if fail {
            if d.index.is_multiple_of(2) {
                self.report(
                    d,
                    &upd(UpdatePhase::Failed, None, Some("simulated install error")),
                )
                .await?;
            } else {
                let r = StateReport {
                    os_version: Some(d.os_version.clone()),
                    rollbacks: vec![otter_proto::RollbackEvent {
                        version: rel.version.clone(),
                        reason: "simulated failed health check".into(),
                        at_ms: None,
                    }],
                    update: Some(UpdateReport {
                        version: rel.version.clone(),
                        phase: UpdatePhase::RolledBack,
                        progress: None,
                        error: Some("simulated failed health check".into()),
                    }),
                    ..Default::default()
                };
                self.report(d, &r).await?;
            }
            // The device stays on its version; the server stops counting it.
            return Ok(true);
        }
        d.os_version = rel.version.clone();
        let mut done = upd(UpdatePhase::Committed, Some(100), None);
        done.os_version = Some(rel.version.clone());
        self.report(d, &done).await?;
        Ok(true)
    }

    /// Every device polls every `every` and installs what it is targeted at; a share
    /// `fail_rate` of installs fail. Runs until `duration` passed. Gives the installs done and
    /// failed.
    pub async fn lifecycle(
        &self,
        devices: Vec<SimDevice>,
        every: Duration,
        duration: Duration,
        fail_rate: f64,
    ) -> Result<(usize, usize)> {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        let per = devices.len().div_ceil(32).max(1);
        for chunk in devices.chunks(per) {
            let (sim, mut chunk) = (self.clone(), chunk.to_vec());
            tasks.push(tokio::spawn(async move {
                let (mut done, mut failed) = (0, 0);
                let mut tried = std::collections::HashSet::new();
                while Instant::now() < deadline {
                    for d in chunk.iter_mut() {
                        if let Some(t) = sim.poll(d).await?
                            && let Some(rel) = &t.release
                            && tried.insert((d.index, rel.release_id.clone()))
                        {
                            let fail = rand::thread_rng().gen_bool(fail_rate.clamp(0.0, 1.0));
                            if sim.install(d, &t, fail).await? {
                                done += 1;
                                failed += usize::from(fail);
                            }
                        }
                    }
                    tokio::time::sleep(every).await;
                }
                Ok::<_, anyhow::Error>((done, failed))
            }));
        }
        let (mut done, mut failed) = (0, 0);
        for t in tasks {
            let (a, b) = t.await??;
            done += a;
            failed += b;
        }
        Ok((done, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let f = Figures::from((1..=100).map(|v| v * 1000).collect(), 2, 2.0);
        assert_eq!(f.requests, 100);
        assert_eq!(f.per_second, 50.0);
        assert!((f.p50_ms - 50.0).abs() <= 1.0, "{}", f.p50_ms);
        assert_eq!(f.p99_ms, 99.0);
        assert_eq!(f.max_ms, 100.0);
    }

    #[test]
    fn keys_differ_by_index_and_seed() {
        let a = Sim::new("http://127.0.0.1:1", "x", 1, 1).unwrap();
        let b = Sim::new("http://127.0.0.1:1", "x", 2, 1).unwrap();
        assert_ne!(a.key(0).to_bytes(), a.key(1).to_bytes());
        assert_ne!(a.key(0).to_bytes(), b.key(0).to_bytes());
        assert_eq!(a.key(5).to_bytes(), a.key(5).to_bytes());
    }
}
