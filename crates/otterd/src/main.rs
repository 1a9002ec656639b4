//! `otterd`: the device agent binary. Argument handling only; the logic is in the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use otterd::{Paths, agent, install, provision, status};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// `otterd --version`; a build with fault injection says so (the e2e harness checks it).
#[cfg(not(feature = "fault-injection"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "fault-injection")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " +fault-injection");

#[derive(Parser)]
#[command(name = "otterd", version = VERSION, about = "Otter device agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (started by systemd: otterd.service).
    Daemon,
    /// Install a signed update bundle (path or http(s) URL) into the other slot.
    Install {
        source: String,
        /// Allow a version lower than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Reboot into the new slot when the install is verified.
        #[arg(long)]
        reboot: bool,
        /// Print progress as JSON lines instead of a progress line.
        #[arg(long)]
        json: bool,
        /// Download everything; do not reuse blocks of the running slot.
        #[arg(long)]
        no_delta: bool,
    },
    /// Show boot slots, versions and the update state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Commit the running slot now (normally done by the agent after health checks).
    Commit,
    /// Go back to the other slot and reboot.
    Rollback {
        /// Change the boot state but do not reboot.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Reboot the device.
    Reboot,
    /// Run the health checks now and print the result.
    Health {
        #[arg(long)]
        json: bool,
    },
    /// The device config (otter/device.toml on the boot partition).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Container apps: ls, logs, restart, apply.
    #[command(subcommand)]
    Apps(otterd::apps::AppsCmd),
    /// Early-boot provisioning (run by /usr/lib/otter/init before systemd).
    #[command(hide = true)]
    Preinit,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Re-read otter/device.toml and apply it now, restarting only what changed.
    Apply {
        #[arg(long)]
        json: bool,
    },
    /// Show the config in effect and how the last apply went.
    Show {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Started by the kernel as init (/usr/lib/otter/init -> otterd): provision, then systemd.
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    if argv0 == "init" || std::process::id() == 1 {
        otterd::provision::preinit::run_as_init(&args[1..]);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otterd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let paths = Paths::from_env();
    match cli.cmd {
        Cmd::Daemon => agent::daemon(&paths),
        Cmd::Install {
            source,
            allow_downgrade,
            reboot,
            json,
            no_delta,
        } => {
            let tty = std::io::stderr().is_terminal();
            let mut last_shown = (String::new(), u64::MAX, u64::MAX);
            let mut on_progress = |p: &otterd::state::Progress| {
                let line = install::progress_line(p);
                let pct = (p.done_bytes * 100).checked_div(p.total_bytes).unwrap_or(0);
                let fetched_mib = p.fetched_bytes >> 20;
                let shown = (p.stage.clone(), pct, fetched_mib);
                if shown == last_shown {
                    return;
                }
                let stage_changed = shown.0 != last_shown.0;
                last_shown = shown;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "progress": pct,
                            "stage": p.stage,
                            "done_bytes": p.done_bytes,
                            "total_bytes": p.total_bytes,
                            "fetched_bytes": p.fetched_bytes,
                            "fetch_total": p.fetch_total,
                            "reused_bytes": p.reused_bytes,
                        })
                    );
                } else if tty {
                    eprint!("\r\x1b[K{line}");
                    let _ = std::io::stderr().flush();
                } else if stage_changed || pct.is_multiple_of(10) {
                    eprintln!("{line}");
                }
            };
            let outcome = install::install(
                &paths,
                &install::InstallOptions {
                    source,
                    allow_downgrade,
                    no_delta,
                    ..Default::default()
                },
                &mut on_progress,
            );
            if tty && !json {
                eprintln!();
            }
            let outcome = outcome?;
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                println!(
                    "installed {} into slot {} ({} MiB in {:.1}s, downloaded {:.1} MiB of {:.1} MiB, {:.1} MiB reused from slot {}, peak memory {} MiB); {}",
                    outcome.version,
                    outcome.slot,
                    outcome.bytes_written >> 20,
                    outcome.seconds,
                    outcome.delta.fetched_bytes as f64 / 1048576.0,
                    outcome.delta.full_bytes as f64 / 1048576.0,
                    outcome.delta.reused_bytes as f64 / 1048576.0,
                    outcome.slot.other(),
                    outcome.peak_rss_kib >> 10,
                    if reboot {
                        "rebooting to try it"
                    } else {
                        "reboot (otterd reboot) to try it"
                    }
                );
            }
            if reboot {
                // An app holding the update lock delays the reboot.
                otterd::apps::reboot_when_unlocked(&paths, otterd::apps::REBOOT_LOCK_WAIT)?;
            }
            Ok(())
        }
        Cmd::Status { json } => {
            let s = status::status(&paths)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Cmd::Commit => {
            agent::commit(&paths, "committed by hand (otterd commit)")?;
            println!("committed");
            Ok(())
        }
        Cmd::Rollback { no_reboot } => {
            let msg = agent::rollback(&paths, !no_reboot)?;
            println!("{msg}");
            Ok(())
        }
        Cmd::Reboot => agent::reboot(&paths),
        Cmd::Apps(c) => otterd::apps::run_cli(&paths, c),
        Cmd::Preinit => provision::preinit::preinit(&paths),
        Cmd::Config(ConfigCmd::Apply { json }) => {
            let st = provision::apply_from_boot_partition(&paths)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", provision::render_status(&st));
            }
            match &st.error {
                Some(e) => anyhow::bail!("{e}"),
                None => Ok(()),
            }
        }
        Cmd::Config(ConfigCmd::Show { json }) => {
            let st = provision::last_status(&paths);
            let cfg = std::fs::read_to_string(paths.persist_dir.join("device.toml.good")).ok();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"status": st, "config": cfg})
                    )?
                );
            } else {
                match &st {
                    Some(st) => print!("{}", provision::render_status(st)),
                    None => println!("no device config applied since boot"),
                }
                if let Some(c) = cfg {
                    println!("--- last good otter/device.toml ---\n{c}");
                }
            }
            Ok(())
        }
        Cmd::Health { json } => {
            let cfg = agent::load_agent_config(&paths)?.health;
            let r = otterd::health::check(&paths, &cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.healthy {
                println!("healthy");
            } else {
                for f in &r.failures {
                    println!("unhealthy: {f}");
                }
            }
            if r.healthy {
                Ok(())
            } else {
                anyhow::bail!("not healthy")
            }
        }
    }
}
