//! Early boot, before systemd: the kernel runs `/usr/lib/otter/init` (a link to `otterd`) as
//! PID 1. It runs `otterd preinit` as a child, then hands PID 1 to systemd. Because the work
//! happens in a child with a time limit, a crash or hang in provisioning cannot stop the device
//! from booting: systemd starts with whatever `/etc` there is.
//!
//! `otterd preinit`:
//! 1. mounts `otter-data` at `/data`, grows it to the end of the disk (first boot), and keeps
//!    the machine-id there (made once);
//! 2. makes `/etc` an overlay: the image's `/etc` below, RAM above;
//! 3. sets the clock no earlier than the image's build time or the last saved clock;
//! 4. reads `otter/device.toml` straight from the boot partition (FAT, read in Rust: no vfat
//!    module or mount needed this early) and renders it into `/etc`.

use super::{apply, grow};
use crate::{Paths, log};
use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest the provisioning child may run before systemd is started anyway (growing and
/// resizing the data partition is the slow part).
const PREINIT_LIMIT: Duration = Duration::from_secs(180);

/// Run as PID 1: provision in a child, then exec systemd. Never returns.
pub fn run_as_init(args: &[String]) -> ! {
    let started = Instant::now();
    match std::process::Command::new("/usr/bin/otterd")
        .arg("preinit")
        .spawn()
    {
        Ok(mut child) => loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        log(&format!("preinit failed ({st}); starting systemd anyway"));
                    }
                    break;
                }
                Ok(None) if started.elapsed() > PREINIT_LIMIT => {
                    log("preinit took too long; stopping it and starting systemd");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    log(&format!("waiting for preinit: {e}; starting systemd"));
                    break;
                }
            }
        },
        Err(e) => log(&format!("cannot start preinit: {e}; starting systemd")),
    }
    exec_init(args)
}

fn exec_init(args: &[String]) -> ! {
    for init in ["/sbin/init", "/lib/systemd/systemd"] {
        let Ok(path) = CString::new(init) else {
            continue;
        };
        let mut argv: Vec<CString> = vec![path.clone()];
        argv.extend(args.iter().filter_map(|a| CString::new(a.as_str()).ok()));
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: path and argv are NUL-terminated C strings kept alive across the call; the
        // argv array is NULL-terminated.
        unsafe { libc::execv(path.as_ptr(), ptrs.as_ptr()) };
        log(&format!(
            "cannot start {init}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Nothing to run: let the kernel panic and reboot (panic=), so the boot loader's try
    // counter can take the device back to the other slot.
    std::process::exit(1)
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        bail!(
            "mounting {src} on {target} ({fstype}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn is_mountpoint(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}

/// Read `inner` from the FAT filesystem on `dev` (`Ok(None)` if the file does not exist).
pub fn read_fat_file(dev: &Path, inner: &str) -> Result<Option<String>> {
    let file = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(file), fatfs::FsOptions::new())
        .with_context(|| format!("reading the FAT filesystem on {}", dev.display()))?;
    let mut f = match fs.root_dir().open_file(inner) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {inner} on {}", dev.display())),
    };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .with_context(|| format!("reading {inner} on {}", dev.display()))?;
    if buf.len() > 1 << 20 {
        bail!("{inner} on {} is larger than 1 MiB", dev.display());
    }
    Ok(Some(String::from_utf8(buf).with_context(|| {
        format!("{inner} on {} is not UTF-8 text", dev.display())
    })?))
}

/// Set the clock forward to `floor` (Unix seconds) if it is behind it.
pub fn clock_floor(floor: u64) {
    let now = crate::now();
    if now + 60 < floor {
        let ts = libc::timespec {
            tv_sec: floor as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec pointer.
        let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        if rc == 0 {
            log(&format!(
                "clock was {now}, set forward to {floor} (build time or last saved clock)"
            ));
        }
    }
}

/// The clock chain's step after "last saved clock" and before NTP: once the network is up, the
/// `Date` header of a request to the fleet server (Unix seconds). Through the device config's
/// `network.proxy`, which reaches every service as systemd's default environment: behind a
/// proxy NTP is often blocked, and this is then the only source of time.
pub fn server_date(url: &str) -> Result<u64> {
    let env = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok())
            .filter(|v| !v.trim().is_empty())
    };
    let proxy = if url.starts_with("https:") {
        env(["https_proxy", "HTTPS_PROXY"])
    } else {
        env(["http_proxy", "HTTP_PROXY"])
    };
    let no_proxy = env(["no_proxy", "NO_PROXY"]).unwrap_or_default();
    let proxy = proxy.filter(|_| !bypasses_proxy(url, &no_proxy));
    server_date_via(url, proxy.as_deref())
}

/// Whether `url`'s host is in `no_proxy` (comma-separated host names, `.domain` or `domain`
/// suffixes, `*`).
fn bypasses_proxy(url: &str, no_proxy: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(h) => h.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    }
    .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| e == "*" || host == e || host.ends_with(&format!(".{e}")))
}

/// [`server_date`] through `proxy` (none: directly).
pub fn server_date_via(url: &str, proxy: Option<&str>) -> Result<u64> {
    let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(15));
    if let Some(p) = proxy {
        agent = agent
            .proxy(ureq::Proxy::new(p).with_context(|| format!("the proxy `{p}` is not usable"))?);
    }
    let resp = match agent.build().head(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => bail!("asking {url} for the time: {e}"),
    };
    let Some(date) = resp.header("date") else {
        bail!("{url} sent no Date header");
    };
    let t = httpdate::parse_http_date(date)
        .with_context(|| format!("{url} sent a Date header that is not a date: {date}"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// Record the current time on the data partition (the clock chain's "last saved clock").
pub fn save_clock(paths: &Paths) {
    let p = paths.persist_dir.join("clock");
    let _ = std::fs::write(&p, crate::now().to_string());
}

fn saved_clock(paths: &Paths) -> u64 {
    std::fs::read_to_string(paths.persist_dir.join("clock"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `otterd preinit` (device only).
pub fn preinit(paths: &Paths) -> Result<()> {
    for (what, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if !is_mountpoint(target) {
            mount(what, target, fstype, libc::MS_NOSUID, "")
                .with_context(|| format!("mounting {target}"))?;
        }
    }
    std::fs::create_dir_all(&paths.run_dir)?;

    // The data partition: machine-id, users, last good config, saved clock.
    match grow::find_partition(Path::new("/sys/class/block"), "otter-data") {
        Some(p) => {
            if !is_mountpoint("/data") {
                let dev = p.dev.to_string_lossy().to_string();
                if let Err(e) = mount(&dev, "/data", "ext4", libc::MS_NOATIME, "") {
                    log(&format!("{e:#}; continuing without the data partition"));
                }
            }
            if is_mountpoint("/data") {
                match grow::grow_data_partition() {
                    Ok(Some(g)) => log(&format!(
                        "otter-data grown from {} MiB to {} MiB (the end of the disk)",
                        g.old_len >> 20,
                        g.new_len >> 20
                    )),
                    Ok(None) => {}
                    Err(e) => log(&format!("growing otter-data: {e:#}")),
                }
            }
        }
        None => log("no otter-data partition found; device state will not persist"),
    }
    std::fs::create_dir_all(&paths.persist_dir)
        .with_context(|| format!("creating {}", paths.persist_dir.display()))?;
    let machine_id = machine_id(paths)?;

    // /etc: the image's below (also kept visible read-only for re-rendering), RAM above.
    let image = paths.etc_image_dir.to_string_lossy().to_string();
    std::fs::create_dir_all(&paths.etc_image_dir)?;
    mount("/etc", &image, "", libc::MS_BIND, "")?;
    mount(
        "",
        &image,
        "",
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
        "",
    )?;
    let upper = paths.run_dir.join("etc-upper");
    let work = paths.run_dir.join("etc-work");
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    mount(
        "overlay",
        "/etc",
        "overlay",
        0,
        &format!(
            "lowerdir={image},upperdir={},workdir={}",
            upper.display(),
            work.display()
        ),
    )
    .context("making /etc writable (overlay)")?;
    super::write_atomic(
        &paths.etc_dir.join("machine-id"),
        format!("{machine_id}\n").as_bytes(),
        0o444,
    )?;

    let build_time = otter_config::ReleaseInfo::load(&paths.release)
        .map(|r| r.build_time)
        .unwrap_or(0);
    clock_floor(build_time.max(saved_clock(paths)));

    let text = match grow::find_partition(Path::new("/sys/class/block"), "otter-boot") {
        Some(p) => {
            let fat_path = otter_config::device_config::DEVICE_CONFIG_FAT_PATH;
            // `otter configure` replaces the file by renames; a power cut between them leaves
            // only the complete previous copy, `device.toml.old`.
            let read = match read_fat_file(&p.dev, fat_path) {
                Ok(None) => read_fat_file(&p.dev, &format!("{fat_path}.old")),
                other => other,
            };
            match read {
                Ok(Some(t)) => Some(Ok(t)),
                Ok(None) => None,
                Err(e) => Some(Err(std::io::Error::other(format!("{e:#}")))),
            }
        }
        None => {
            log("no otter-boot partition found; no device config");
            None
        }
    };
    let st = apply(paths, text, false)?;
    log(&format!(
        "device config: {} ({} files rendered into /etc)",
        match st.source {
            super::ConfigSource::DeviceToml => "otter/device.toml applied",
            super::ConfigSource::LastGood => "last good config applied",
            super::ConfigSource::Defaults => "image defaults",
        },
        st.changed.len()
    ));
    Ok(())
}

/// The device's machine-id, made once and kept on the data partition.
fn machine_id(paths: &Paths) -> Result<String> {
    let p = paths.persist_dir.join("machine-id");
    if let Ok(t) = std::fs::read_to_string(&p) {
        let t = t.trim();
        if t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(t.to_string());
        }
    }
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading a random id from /proc/sys/kernel/random/uuid")?;
    let id: String = uuid.trim().chars().filter(|c| *c != '-').collect();
    super::write_atomic(&p, format!("{id}\n").as_bytes(), 0o444)?;
    log(&format!("machine-id {id} created"));
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn reads_the_servers_date_header() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 404 Not Found\r\nDate: Tue, 01 Jun 2027 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ] {
                let (mut c, _) = l.accept().unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(server_date_via(&url, None).unwrap(), 1811844000);
        let e = server_date_via(&url, None).unwrap_err().to_string();
        assert!(e.contains("no Date header"), "{e}");
    }

    #[test]
    fn asks_for_the_date_through_the_proxy() {
        // The "proxy" answers itself; the request line names the server in absolute form.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = format!("http://{}", l.local_addr().unwrap());
        let seen = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            c.write_all(
                b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jun 2027 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            )
            .unwrap();
            first
        });
        let t = server_date_via("http://fleet.example.invalid/", Some(&proxy)).unwrap();
        assert_eq!(t, 1811844000);
        let first = seen.join().unwrap();
        assert!(
            first.starts_with("HEAD http://fleet.example.invalid/ "),
            "{first}"
        );
    }

    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        let np = "localhost, .lan,example.com,10.0.2.2";
        for url in [
            "https://localhost:8443/",
            "https://fleet.lan",
            "https://lan/",
            "https://otter.example.com/x",
            "https://EXAMPLE.com",
            "http://10.0.2.2:8080",
            "https://user@example.com",
        ] {
            assert!(bypasses_proxy(url, np), "{url}");
        }
        for url in [
            "https://example.org",
            "https://notexample.com",
            "https://10.0.2.20",
            "https://[fd00::1]:8443",
        ] {
            assert!(!bypasses_proxy(url, np), "{url}");
        }
        assert!(bypasses_proxy("https://anything", "*"));
        assert!(!bypasses_proxy("https://anything", ""));
        assert!(bypasses_proxy("https://[fd00::1]:8443/", "fd00::1"));
    }
}
