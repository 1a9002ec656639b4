//! Journal upload: the journal is the bounded queue, its cursor is kept in `fleet.json`.

use super::*;

impl Client {
    /// Upload journal lines since the last uploaded one (one batch).
    pub fn upload_logs(&mut self) -> Result<usize> {
        if !self.paths.host.is_device() {
            return Ok(0);
        }
        let (entries, cursor) = read_journal(self.state.journal_cursor.as_deref(), LOG_BATCH)?;
        if entries.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        match self.call(&device_api::logs(&LogBatch { entries })) {
            Answer::Ok(..) => {
                self.contact();
                self.state.journal_cursor = cursor;
                self.state.save(&self.paths)?;
                Ok(n)
            }
            Answer::Error(code, msg) => self.fail("log upload", code, msg),
        }
    }
}

/// Up to `max` journal entries after `cursor` (this boot's first ones when there is none), and
/// the cursor of the last one.
fn read_journal(cursor: Option<&str>, max: usize) -> Result<(Vec<LogEntry>, Option<String>)> {
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["-o", "json", "--no-pager", "-q"]);
    match cursor {
        Some(c) => cmd.arg(format!("--after-cursor={c}")),
        None => cmd.arg("-b"),
    };
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running journalctl")?;
    let Some(out) = child.stdout.take() else {
        bail!("journalctl: no output pipe");
    };
    let mut entries = Vec::new();
    let mut last = None;
    let mut bytes = 0usize;
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(c) = v["__CURSOR"].as_str() else {
            continue;
        };
        let mut message = match &v["MESSAGE"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => {
                let b: Vec<u8> = a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|n| n as u8))
                    .collect();
                String::from_utf8_lossy(&b).into_owned()
            }
            _ => String::new(),
        };
        if message.len() > LOG_MESSAGE_MAX {
            let mut cut = LOG_MESSAGE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let level = match v["PRIORITY"].as_str().and_then(|p| p.parse::<u8>().ok()) {
            Some(0) => "emerg",
            Some(1) => "alert",
            Some(2) => "crit",
            Some(3) => "err",
            Some(4) => "warning",
            Some(5) => "notice",
            Some(7) => "debug",
            _ => "info",
        };
        let source = v["_SYSTEMD_UNIT"]
            .as_str()
            .or_else(|| v["SYSLOG_IDENTIFIER"].as_str())
            .map(|s| s.chars().take(64).collect());
        let ts_ms = v["__REALTIME_TIMESTAMP"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .map(|us| us / 1000)
            .unwrap_or(0);
        bytes += message.len() + 128;
        entries.push(LogEntry {
            ts_ms,
            level: level.into(),
            source,
            message,
        });
        last = Some(c.to_string());
        // Stay well inside the server's body limit.
        if entries.len() >= max || bytes > otter_proto::MAX_JSON_BODY / 2 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok((entries, last))
}
