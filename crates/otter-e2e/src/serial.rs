//! Following a serial console log file.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How many lines of the log an error shows.
pub(crate) const TAIL_LINES: usize = 60;

const POLL: Duration = Duration::from_millis(100);

/// A serial console log file that QEMU (or anything) appends to, with a cursor.
///
/// [`SerialLog::wait_for`] matches only output after the end of the previous match (or after
/// [`SerialLog::mark`]), so waiting for `login:` twice waits for two logins.
#[derive(Debug)]
pub struct SerialLog {
    path: PathBuf,
    state: Mutex<Cursor>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// Matching starts here.
    from: u64,
    /// Bytes from `from` already read.
    buf: Vec<u8>,
    /// How much of `buf` was searched for the current wait's strings.
    scanned: usize,
}

impl SerialLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SerialLog {
            path: path.into(),
            state: Mutex::new(Cursor::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The whole log so far (lossy UTF-8, raw escape sequences kept); empty if the file does
    /// not exist yet.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.path).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines, with terminal escape sequences and carriage returns removed.
    pub fn tail(&self, n: usize) -> String {
        let text = clean(&self.contents());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Only output written after now will match.
    pub fn mark(&self) {
        let len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut st = self.lock();
        st.from = len;
        st.buf.clear();
        st.scanned = 0;
    }

    /// Match from the start of the log again.
    pub fn rewind(&self) {
        let mut st = self.lock();
        st.from = 0;
        st.buf.clear();
        st.scanned = 0;
    }

    /// Wait until `needle` appears after the cursor; the cursor then moves past it. On timeout
    /// the error shows the last 60 lines of the log.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_any_with(&[needle], timeout, &mut || Ok(()))
            .map(|_| ())
    }

    /// Wait until one of `needles` appears after the cursor; returns the index of the one that
    /// appears first in the log (e.g. `["login:", "Kernel panic"]`).
    pub fn wait_for_any(&self, needles: &[&str], timeout: Duration) -> Result<usize> {
        self.wait_for_any_with(needles, timeout, &mut || Ok(()))
    }

    /// [`SerialLog::wait_for_any`], calling `alive` between polls: its error (e.g. "QEMU
    /// exited") ends the wait early, with the log tail added.
    pub fn wait_for_any_with(
        &self,
        needles: &[&str],
        timeout: Duration,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<usize> {
        if needles.is_empty() || needles.iter().any(|n| n.is_empty()) {
            bail!("wait_for_serial needs non-empty strings to look for");
        }
        let start = Instant::now();
        // What was read for an earlier wait was not searched for these strings.
        self.lock().scanned = 0;
        loop {
            if let Some(i) = self.poll(needles)? {
                return Ok(i);
            }
            if let Err(e) = alive() {
                // The last output may have arrived just before the end.
                if let Some(i) = self.poll(needles)? {
                    return Ok(i);
                }
                bail!(
                    "{e:#}\nwhile waiting for {} in {}; last {TAIL_LINES} lines:\n{}",
                    describe(needles),
                    self.path.display(),
                    self.tail(TAIL_LINES)
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "timed out after {:.0?} waiting for {} in serial log {}; last {TAIL_LINES} lines:\n{}",
                    timeout,
                    describe(needles),
                    self.path.display(),
                    self.tail(TAIL_LINES)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Read what is new and search; on a match move the cursor past it.
    fn poll(&self, needles: &[&str]) -> Result<Option<usize>> {
        let mut st = self.lock();
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("reading serial log {}: {e}", self.path.display()),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < st.from + st.buf.len() as u64 {
            // Truncated (a new QEMU run on the same file): start over.
            st.from = 0;
            st.buf.clear();
            st.scanned = 0;
        }
        let pos = st.from + st.buf.len() as u64;
        let Cursor { buf, scanned, .. } = &mut *st;
        f.seek(SeekFrom::Start(pos))
            .and_then(|_| f.read_to_end(buf))
            .map_err(|e| anyhow::anyhow!("reading serial log {}: {e}", self.path.display()))?;
        let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
        let begin = (*scanned).saturating_sub(longest.saturating_sub(1));
        *scanned = buf.len();
        let hay = &st.buf[begin..];
        let found = needles
            .iter()
            .enumerate()
            .filter_map(|(i, n)| find(hay, n.as_bytes()).map(|at| (at, i, n.len())))
            .min();
        match found {
            Some((at, i, n)) => {
                let end = begin + at + n;
                st.from += end as u64;
                st.buf.drain(..end);
                st.scanned = 0;
                Ok(Some(i))
            }
            None => Ok(None),
        }
    }
}

fn describe(needles: &[&str]) -> String {
    needles
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Remove ANSI escape sequences and carriage returns (firmware and GRUB paint the screen).
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates, then a final byte 0x40..=0x7e.
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn waits_for_text_written_later() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("serial.log");
        let log = SerialLog::new(&path);
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut f = std::fs::File::create(&p).unwrap();
            f.write_all(b"BdsDxe: loading Boot0001\r\nWelc").unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            // The needle is split across two writes.
            f.write_all(b"ome to Otter\r\nlogin: ").unwrap();
        });
        log.wait_for("Welcome to Otter", Duration::from_secs(10))
            .unwrap();
        log.wait_for("login:", Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        // Already consumed: a second wait needs new output.
        let err = log
            .wait_for("login:", Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(err.contains("Welcome to Otter"), "{err}");
        log.rewind();
        log.wait_for("login:", Duration::from_millis(300)).unwrap();
    }

    #[test]
    fn timeout_shows_last_60_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("serial.log");
        let text: String = (0..100)
            .map(|i| format!("\x1b[1mline {i}\x1b[0m\r\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        let log = SerialLog::new(&path);
        let err = log
            .wait_for("never", Duration::from_millis(150))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"never\""), "{err}");
        assert!(err.contains("\nline 40\n"), "{err}");
        assert!(err.ends_with("line 99"), "{err}");
        assert!(!err.contains("line 39\n"), "{err}");
        assert!(!err.contains('\x1b'), "{err}");
    }

    #[test]
    fn any_returns_the_earliest_match_and_mark_skips_old_output() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("serial.log");
        std::fs::write(&path, "boot\nKernel panic - not syncing\nlogin: \n").unwrap();
        let log = SerialLog::new(&path);
        let t = Duration::from_millis(200);
        assert_eq!(log.wait_for_any(&["login:", "Kernel panic"], t).unwrap(), 1);
        assert_eq!(log.wait_for_any(&["login:", "Kernel panic"], t).unwrap(), 0);
        log.rewind();
        log.mark();
        assert!(log.wait_for("boot", t).is_err());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"boot again\n").unwrap();
        log.wait_for("boot", t).unwrap();
    }

    #[test]
    fn alive_check_ends_wait_early() {
        let d = tempfile::tempdir().unwrap();
        let log = SerialLog::new(d.path().join("missing.log"));
        let start = Instant::now();
        let err = log
            .wait_for_any_with(&["x"], Duration::from_secs(30), &mut || {
                anyhow::bail!("QEMU exited with status 1")
            })
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.starts_with("QEMU exited with status 1"), "{err}");
    }

    #[test]
    fn truncated_log_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("serial.log");
        std::fs::write(&path, "a long first boot log\n").unwrap();
        let log = SerialLog::new(&path);
        log.wait_for("first", Duration::from_millis(200)).unwrap();
        std::fs::write(&path, "2nd\n").unwrap();
        log.wait_for("2nd", Duration::from_millis(500)).unwrap();
    }

    #[test]
    fn clean_strips_escapes() {
        assert_eq!(
            clean("\x1b[2J\x1b[01;01HShell> \x1b[0m\x1b[37m\x1b[40mok\r\n"),
            "Shell> ok\n"
        );
    }
}
