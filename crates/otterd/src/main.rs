//! `otterd`: the device agent binary. Argument handling only; the logic is in the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use otterd::{Paths, agent, install, status};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "otterd", version, about = "Otter device agent")]
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
}

fn main() -> ExitCode {
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
                    "installed {} into slot {} ({} MiB in {:.1}s, downloaded {:.1} MiB of {:.1} MiB, {:.1} MiB reused from slot {}); {}",
                    outcome.version,
                    outcome.slot,
                    outcome.bytes_written >> 20,
                    outcome.seconds,
                    outcome.delta.fetched_bytes as f64 / 1048576.0,
                    outcome.delta.full_bytes as f64 / 1048576.0,
                    outcome.delta.reused_bytes as f64 / 1048576.0,
                    outcome.slot.other(),
                    if reboot {
                        "rebooting to try it"
                    } else {
                        "reboot (otterd reboot) to try it"
                    }
                );
            }
            if reboot {
                agent::reboot(&paths)?;
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
