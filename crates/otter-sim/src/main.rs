//! `otter-sim`: simulated devices against an otter server on this machine.
//!
//! ```sh
//! otter-sim --server http://127.0.0.1:8080 --admin-token ota_… --devices 1000 --bench polls,reports
//! otter-sim --server … --admin-token … --devices 200 --lifecycle 120 --every 2 --fail-rate 0.1
//! ```

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "otter-sim",
    version,
    about = "Simulated Otter devices: enroll, poll, report, install"
)]
struct Cli {
    /// The server (loopback only: this is a load generator).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin token, to create an enrollment key (or give --enrollment-key).
    #[arg(long, env = "OTTER_TOKEN")]
    admin_token: Option<String>,
    #[arg(long)]
    enrollment_key: Option<String>,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// The simulated devices' compatible string.
    #[arg(long, default_value = "sim-board")]
    compatible: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each benchmark runs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Benchmarks to run after enrolling: polls (304 path), reports.
    #[arg(long, value_delimiter = ',')]
    bench: Vec<String>,
    /// Run the device life cycle (poll, install targeted releases, report) for this many seconds.
    #[arg(long)]
    lifecycle: Option<u64>,
    /// Seconds between a simulated device's polls in --lifecycle.
    #[arg(long, default_value_t = 2)]
    every: u64,
    /// Share of installs that fail in --lifecycle (half install errors, half rollbacks).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Another seed makes another fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct Out {
    devices: usize,
    enroll: Option<otter_sim::Figures>,
    polls_304: Option<otter_sim::Figures>,
    reports: Option<otter_sim::Figures>,
    lifecycle_installs: Option<usize>,
    lifecycle_failed: Option<usize>,
}

fn print(name: &str, f: &otter_sim::Figures) {
    println!(
        "{name:<10} {:>8} requests in {:>6.1} s = {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  errors {}",
        f.requests, f.seconds, f.per_second, f.p50_ms, f.p99_ms, f.max_ms, f.errors
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let host = cli
        .server
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!(
            "{}: otter-sim only targets a server on this machine (127.0.0.0/8, localhost)",
            cli.server
        );
    }
    let sim = otter_sim::Sim::new(&cli.server, &cli.compatible, cli.seed, cli.concurrency)?;
    let key = match (&cli.enrollment_key, &cli.admin_token) {
        (Some(k), _) => k.clone(),
        (None, Some(t)) => {
            let req = otter_proto::admin::CreateEnrollmentKey {
                name: format!("otter-sim-{}", cli.seed),
            };
            let call = otter_client::admin::create_enrollment_key(&req);
            let (k, _) = sim
                .send(&call, Some(t))
                .await
                .context("creating an enrollment key")?;
            k.key.context("no key in the answer")?
        }
        (None, None) => bail!("give --enrollment-key or --admin-token"),
    };
    let mut out = Out {
        devices: cli.devices,
        ..Default::default()
    };
    let (devs, f) = sim.enroll_all(cli.devices, &key, cli.concurrency).await?;
    if !cli.json {
        print("enroll", &f);
    }
    out.enroll = Some(f);
    let dur = Duration::from_secs(cli.duration);
    for b in &cli.bench {
        match b.as_str() {
            "polls" => {
                let f = sim.bench_polls(devs.clone(), cli.concurrency, dur).await?;
                if !cli.json {
                    print("poll 304", &f);
                }
                out.polls_304 = Some(f);
            }
            "reports" => {
                let f = sim
                    .bench_reports(devs.clone(), cli.concurrency, dur)
                    .await?;
                if !cli.json {
                    print("report", &f);
                }
                out.reports = Some(f);
            }
            other => bail!("--bench {other}: use polls or reports"),
        }
    }
    if let Some(secs) = cli.lifecycle {
        let (done, failed) = sim
            .lifecycle(
                devs,
                Duration::from_secs(cli.every.max(1)),
                Duration::from_secs(secs),
                cli.fail_rate,
            )
            .await?;
        if !cli.json {
            println!("lifecycle  {done} install(s), {failed} failed");
        }
        out.lifecycle_installs = Some(done);
        out.lifecycle_failed = Some(failed);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
