//! `otter`: the host CLI. Argument handling and output only; the work is in the libraries.

mod configure;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

mod bundle_diff;
mod flash;
mod fleet;
#[cfg(feature = "server")]
mod server;

#[derive(Parser)]
#[command(
    name = "otter",
    version,
    about = "Build, sign and boot Otter OS images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Signing keys for update bundles.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Build the disk image and the signed update bundle described by an otter.toml.
    Build {
        /// The project file.
        #[arg(long, short, default_value = "otter.toml")]
        config: PathBuf,
        /// Output directory.
        #[arg(long, short, default_value = "out")]
        out: PathBuf,
        /// The otterd binary to put into the image (default: next to this otter binary).
        #[arg(long)]
        otterd: Option<PathBuf>,
        /// Cache for base root filesystems (default: $OTTER_CACHE_DIR or ~/.cache/otter).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Do not write the .img.zst.
        #[arg(long)]
        no_compress: bool,
        /// An older release's bundle (path or URL): the new bundle also carries a patch set
        /// for devices running exactly that release (much smaller download for them; every
        /// other device installs from the same bundle by block reuse). Repeat for several.
        #[arg(long, value_name = "OLD.otb")]
        delta_from: Vec<String>,
        /// Build only the update bundle (no disk image): for a release that devices only
        /// ever install as an update.
        #[arg(long)]
        bundle_only: bool,
        /// Keep the root filesystem image (OUT/.work-NAME/rootfs.ext4), e.g. for benchmarks;
        /// by default the work directory is removed after the build.
        #[arg(long)]
        keep_rootfs: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or edit the device config (otter/device.toml) inside an image, without mounting.
    Configure(Box<configure::ConfigureArgs>),
    /// Update bundles: create, inspect, verify.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
    },
    /// Write a disk image to a removable drive or a file (mapped blocks only, read back);
    /// without DEVICE, list the removable drives.
    Flash(flash::FlashArgs),
    /// Boot a disk image in QEMU (UEFI), serial console on this terminal.
    Vm {
        image: PathBuf,
        /// Forward this host port (127.0.0.1) to the guest's SSH port.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
        /// Write the serial console to this file instead of the terminal.
        #[arg(long)]
        serial_log: Option<PathBuf>,
        /// Boot the image file itself, keeping changes (default: a throwaway overlay).
        #[arg(long)]
        persist: bool,
        /// Keep changes in this qcow2 overlay (created if missing) instead of the image.
        #[arg(long, conflicts_with = "persist")]
        overlay: Option<PathBuf>,
        #[arg(long, default_value_t = 768)]
        memory: u32,
        /// auto (KVM if usable, else TCG), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Virtual disk size for the overlay, e.g. 8G (like flashing onto a bigger card; the
        /// device grows its data partition into it). Default: the image's size.
        #[arg(long, value_parser = parse_disk_size)]
        disk_size: Option<u64>,
    },
    /// Run the fleet server (zero configuration: 127.0.0.1:8080, SQLite and artifacts in ./otter-data).
    #[cfg(feature = "server")]
    Server(server::ServerArgs),
    #[command(flatten)]
    Fleet(fleet::FleetCmd),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make an Ed25519 key pair: NAME.key (secret, keep it safe) and NAME.pub.
    Generate {
        #[arg(long, short, default_value = "keys")]
        out: PathBuf,
        #[arg(long, default_value = "otter-signing")]
        name: String,
    },
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Make a signed bundle from a root filesystem image.
    Create {
        /// The root filesystem image (the slot's content).
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        compatible: String,
        /// Signing key(s); repeat to sign with several.
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        #[arg(long, default_value_t = otter_bundle::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// An older release's bundle (path or URL) to carry a patch set against; repeat for
        /// several (see `otter build --delta-from`).
        #[arg(long, value_name = "OLD.otb")]
        delta_from: Vec<String>,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print a bundle's manifest (no key needed; nothing is trusted yet).
    Inspect {
        bundle: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle's signature against trusted public keys, then every chunk and image hash
    /// of its payload (nothing is written).
    Verify {
        bundle: String,
        /// Trusted public key files or directories of *.pub.
        #[arg(long, required = true)]
        trusted: Vec<PathBuf>,
    },
    /// What a device on OLD downloads to install NEW (bundles or raw images).
    Diff(bundle_diff::DiffArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otter: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("OTTER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("otter");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/otter"),
        None => PathBuf::from(".otter-cache"),
    }
}

fn default_otterd() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the otter executable")?;
    let beside = me.with_file_name("otterd");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no otterd next to {} : build it (cargo build --release -p otterd) or pass --otterd PATH",
        me.display()
    )
}

fn load_trusted(paths: &[PathBuf]) -> Result<Vec<otter_bundle::PublicKey>> {
    let mut keys = Vec::new();
    for p in paths {
        if p.is_dir() {
            keys.extend(otter_bundle::load_trusted_keys(p)?);
        } else {
            keys.push(otter_bundle::PublicKey::load(p)?);
        }
    }
    Ok(keys)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keys {
            cmd: KeysCmd::Generate { out, name },
        } => {
            let (secret, public) = otter_bundle::generate_keypair(&out, &name)?;
            let fp = otter_bundle::PublicKey::load(&public)?.fingerprint();
            println!("secret key  {} (keep it private)", secret.display());
            println!("public key  {} (fingerprint {fp})", public.display());
            Ok(())
        }
        Cmd::Build {
            config,
            out,
            otterd,
            cache,
            no_compress,
            delta_from,
            bundle_only,
            keep_rootfs,
            json,
        } => {
            let project = otter_config::Project::load(&config)?;
            let otterd = match otterd {
                Some(p) => p,
                None => default_otterd()?,
            };
            let opts = otter_image::BuildOptions {
                out_dir: out,
                otterd,
                cache_dir: cache.unwrap_or_else(default_cache),
                work_dir: None,
                compress: !no_compress && !bundle_only,
                delta_from,
                disk_image: !bundle_only,
                keep_rootfs,
            };
            let quiet = json;
            let result = otter_image::build(&project, &opts, &mut |line| {
                if !quiet {
                    eprintln!("otter build: {line}");
                }
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                if let (Some(image), Some(size)) = (&result.image, result.image_size) {
                    println!("image   {} ({} MiB)", image.display(), size >> 20);
                }
                if let (Some(z), Some(s)) = (&result.image_zst, result.image_zst_size) {
                    println!("        {} ({:.1} MiB)", z.display(), s as f64 / 1048576.0);
                }
                println!(
                    "bundle  {} ({:.1} MiB, version {}, compatible {})",
                    result.bundle.display(),
                    result.bundle_size as f64 / 1048576.0,
                    result.version,
                    result.compatible
                );
                let t: Vec<String> = result
                    .timings
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1}s"))
                    .collect();
                println!("time    {}", t.join(", "));
            }
            Ok(())
        }
        Cmd::Configure(args) => configure::run(*args),
        Cmd::Bundle { cmd } => bundle(cmd),
        Cmd::Flash(args) => flash::run(args),
        #[cfg(feature = "server")]
        Cmd::Server(a) => server::run(a),
        Cmd::Fleet(c) => fleet::run(c),
        Cmd::Vm {
            image,
            ssh_port,
            serial_log,
            persist,
            overlay,
            memory,
            accel,
            disk_size,
        } => {
            if !image.is_file() {
                bail!(
                    "{}: no such image (build one with `otter build`)",
                    image.display()
                );
            }
            let mut o = otter_vm::VmOptions::new(&image);
            o.ssh_port = Some(ssh_port);
            o.persist = persist;
            o.overlay = overlay;
            o.memory_mib = memory;
            o.accel = accel.parse()?;
            o.disk_size = disk_size;
            if disk_size.is_some() && persist {
                bail!("--disk-size sizes the overlay; it cannot be used with --persist");
            }
            if let Some(log) = serial_log {
                o.serial = otter_vm::Serial::File(log);
            }
            eprintln!(
                "otter vm: booting {} (ssh: ssh -p {ssh_port} root@127.0.0.1; quit: Ctrl-A X){}",
                image.display(),
                if o.persist || o.overlay.is_some() {
                    ""
                } else {
                    "; changes are thrown away"
                }
            );
            let status = otter_vm::RunningVm::run(&o)?;
            if !status.success() {
                bail!("QEMU exited with {status}");
            }
            Ok(())
        }
    }
}

fn bundle(cmd: BundleCmd) -> Result<()> {
    match cmd {
        BundleCmd::Diff(a) => bundle_diff::run(a),
        BundleCmd::Create {
            rootfs,
            version,
            compatible,
            key,
            chunk_size,
            delta_from,
            out,
        } => {
            let keys = key
                .iter()
                .map(|k| otter_bundle::SigningKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&otter_bundle::SigningKey> = keys.iter().collect();
            let from: Vec<&str> = delta_from.iter().map(String::as_str).collect();
            let m = otter_bundle::create_bundle_with_patches(
                &out,
                &[("rootfs", rootfs.as_path())],
                &otter_bundle::CreateOptions {
                    compatible,
                    version,
                    chunk_size,
                    zstd_level: 3,
                },
                &refs,
                &from,
            )?;
            for p in &m.patches {
                println!(
                    "patch set for {} {} ({} units, data image {})",
                    p.image, p.from.version, p.units, p.data
                );
            }
            println!(
                "{}: version {}, compatible {}, {} signature(s)",
                out.display(),
                m.version,
                m.compatible,
                refs.len()
            );
            Ok(())
        }
        BundleCmd::Inspect { bundle, json } => {
            let r = otter_bundle::BundleReader::open(&bundle)?;
            let m = r.manifest();
            if json {
                println!("{}", serde_json::to_string_pretty(m)?);
                return Ok(());
            }
            println!("bundle      {bundle}");
            println!("format      {}", m.format);
            println!("version     {}", m.version);
            println!("compatible  {}", m.compatible);
            println!("signed by   {}", r.signer_fingerprints().join(", "));
            for img in &m.images {
                let zero = img.zero_chunks();
                let stored = img.stored_bytes();
                println!(
                    "image       {}: {} bytes, sha256 {}, {} chunks of {} KiB ({} zero), {:.1} MiB stored",
                    img.name,
                    img.size,
                    img.sha256,
                    img.chunks.len(),
                    img.chunk_size / 1024,
                    zero,
                    stored as f64 / 1048576.0
                );
            }
            for p in &m.patches {
                println!(
                    "patch set   {} from {} ({} bytes, sha256 {}): {} units in image {}",
                    p.image, p.from.version, p.from.size, p.from.sha256, p.units, p.data
                );
            }
            Ok(())
        }
        BundleCmd::Verify { bundle, trusted } => {
            let keys = load_trusted(&trusted)?;
            let r = otter_bundle::BundleReader::open(&bundle)?;
            let v = r.verify(&keys)?;
            let checked = v.check_payload(&mut percent_on_terminal("verifying payload"));
            clear_progress_line();
            let report = checked.with_context(|| format!("checking the payload of {bundle}"))?;
            println!(
                "{bundle}: signature OK (signed by {}), {} chunks of {} image(s) verified ({:.1} MiB, version {} for {})",
                v.signer(),
                report.chunks,
                report.images,
                report.bytes as f64 / 1048576.0,
                v.manifest().version,
                v.manifest().compatible
            );
            Ok(())
        }
    }
}

/// A progress callback that shows "LABEL: N%" on stderr when it is a terminal. Call
/// [`clear_progress_line`] when done.
fn percent_on_terminal(label: &'static str) -> impl FnMut(u64, u64) {
    let tty = std::io::stderr().is_terminal();
    let mut shown = None;
    move |done, total| {
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
        if tty && shown != Some(pct) {
            shown = Some(pct);
            eprint!("\r{label}: {pct}%");
        }
    }
}

fn clear_progress_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}

fn parse_disk_size(s: &str) -> Result<u64, String> {
    otter_config::parse_size(s)
}
