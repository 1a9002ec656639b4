//! systemd notifications (READY, STATUS, WATCHDOG) over `$NOTIFY_SOCKET`.
//! Written by hand: the protocol is one datagram, smaller than a dependency.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let addr = if let Some(abs) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(abs.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) else {
        return;
    };
    let _ = sock.send_to_addr(msg.as_bytes(), &addr);
}

/// Half the watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}

static START: OnceLock<Instant> = OnceLock::new();
static BEAT_MS: AtomicU64 = AtomicU64::new(0);

fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// The agent's main loop is alive: called from every loop that may run for long.
pub fn heartbeat() {
    BEAT_MS.store(since_start().as_millis() as u64, Ordering::Relaxed);
}

/// Ping systemd's watchdog only while the main loop keeps beating: a hung agent stops the
/// pings, systemd kills and restarts it (and a trial boot's deadline still applies).
pub fn start_watchdog() {
    heartbeat();
    let Some(every) = watchdog_interval() else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            let last = Duration::from_millis(BEAT_MS.load(Ordering::Relaxed));
            if since_start().saturating_sub(last) < every * 2 {
                notify("WATCHDOG=1");
            }
            std::thread::sleep(every / 2);
        }
    });
}
