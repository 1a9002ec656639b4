//! `otter flash IMAGE [DEVICE]`: list removable drives, or write an image to one (or to a file),
//! mapped blocks only, then read it back. The rules and the writing are in `otter-flash`.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use otter_flash::{FlashPlan, HostView, Progress, Target, human_size};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct FlashArgs {
    /// The disk image from `otter build` (.img or .img.zst).
    image: PathBuf,
    /// The drive (/dev/sdX, /dev/mmcblkN) or a file to write; without it, list the removable
    /// drives.
    device: Option<PathBuf>,
    /// The image's block map (default: found next to the image, like bmaptool does).
    #[arg(long)]
    bmap: Option<PathBuf>,
    /// Allow a drive that is not removable (never a mounted drive or the host's own).
    #[arg(long)]
    force: bool,
    /// Do not ask before overwriting a drive.
    #[arg(long, short)]
    yes: bool,
    /// Do not read the written blocks back.
    #[arg(long)]
    no_verify: bool,
    /// Print the drive list or the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FlashArgs) -> Result<()> {
    let plan = FlashPlan::new(&a.image, a.bmap.as_deref())?;
    let view = HostView::host();
    let Some(device) = &a.device else {
        return list(&view, &plan, a.json);
    };
    let target = otter_flash::resolve_target(&view, device)?;
    if let Target::Device(drive) = &target {
        otter_flash::check_device(&view, drive, a.force)?;
        if !a.yes {
            confirm(&drive.summary())?;
        }
    }
    let started = Instant::now();
    let quiet = a.json;
    let bar = progress_bar(quiet, "writing", plan.mapped_bytes());
    let written = plan.write(&target, &mut |p| show(&bar, p));
    bar.finish_and_clear();
    let written = written?;
    let write_secs = started.elapsed().as_secs_f64();
    let verified = if a.no_verify {
        false
    } else {
        let bar = progress_bar(quiet, "verifying", Some(written.bytes));
        let r = otter_flash::verify(target.path(), &written, &mut |p| show(&bar, p));
        bar.finish_and_clear();
        r?;
        true
    };
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "image": plan.image,
            "target": written.target,
            "bmap": plan.bmap,
            "image_size": written.image_size,
            "written_bytes": written.bytes,
            "ranges": written.ranges.len(),
            "verified": verified,
            "write_seconds": write_secs,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "wrote {} of the {} image to {} ({}) in {:.1}s{}",
            human_size(written.bytes),
            human_size(written.image_size),
            written.target.display(),
            plan.describe(),
            write_secs,
            if verified {
                format!(", verified in {:.1}s", secs - write_secs)
            } else {
                ", not verified (--no-verify)".to_string()
            }
        );
        if let Target::Device(_) = target {
            println!("you can remove the drive now");
        }
    }
    Ok(())
}

fn list(view: &HostView, plan: &FlashPlan, json: bool) -> Result<()> {
    let all = otter_flash::list_drives(view)?;
    let fixed = all.iter().filter(|d| !d.removable).count();
    let drives: Vec<_> = all.into_iter().filter(|d| d.removable).collect();
    if json {
        let v = serde_json::json!({
            "image": plan.image,
            "image_size": plan.image_size,
            "drives": drives,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if drives.is_empty() {
        println!("no removable drives found; plug in an SD card or USB drive");
    } else {
        println!("{:<16} {:>10}  {:<6} MODEL", "DEVICE", "SIZE", "BUS");
        for d in &drives {
            let fits = match plan.image_size {
                Some(s) if s > d.size => "  (too small for this image)",
                _ => "",
            };
            println!(
                "{:<16} {:>10}  {:<6} {}{}{fits}",
                d.path.display(),
                human_size(d.size),
                d.transport.as_deref().unwrap_or("-"),
                d.description(),
                if d.read_only { " (read-only)" } else { "" },
            );
        }
        println!(
            "\nflash one with: otter flash {} DEVICE",
            plan.image.display()
        );
    }
    if fixed > 0 {
        println!("({fixed} fixed disk(s) not listed; flashing one needs --force)");
    }
    Ok(())
}

/// Ask for `yes` on the terminal; refuse when there is none to ask.
fn confirm(what: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "this erases everything on {what}; standard input is not a terminal to confirm on: pass --yes"
        );
    }
    eprint!("This erases everything on {what}.\nType yes to continue: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}

fn progress_bar(quiet: bool, label: &'static str, total: Option<u64>) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{msg:9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg:9} {spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label);
    bar
}

fn show(bar: &ProgressBar, p: Progress) {
    if let Some(t) = p.total
        && bar.length() != Some(t)
    {
        bar.set_length(t);
    }
    bar.set_position(p.done);
}
