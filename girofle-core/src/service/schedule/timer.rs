//! `girofle schedule install`: the systemd timer or the cron entry that runs `run-due`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// What `schedule install` writes.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The `girofle` binary the timer runs.
    pub binary: PathBuf,
    /// A crontab line in `DIR/girofle` (default `/etc/cron.d`) instead of systemd units.
    pub cron: bool,
    /// Where to write (default `/etc/systemd/system`, or `/etc/cron.d` with `cron`).
    pub dir: Option<PathBuf>,
    /// How often `run-due` runs.
    pub every: Duration,
}

/// What `schedule install` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Installed {
    pub files: Vec<PathBuf>,
    /// What to run next to activate it.
    pub next_steps: Vec<String>,
}

/// The systemd service unit name.
pub const SERVICE_UNIT: &str = "girofle-run-due.service";
/// The systemd timer unit name.
pub const TIMER_UNIT: &str = "girofle-run-due.timer";

/// Parses `30s`, `5m`, `1h` (or plain seconds).
///
/// # Errors
/// `InvalidInput` naming `--every`.
pub fn parse_every(text: &str) -> Result<Duration> {
    let bad = || {
        Error::invalid(
            "--every",
            format!("`{text}`: use a duration like 30s, 5m or 1h"),
        )
    };
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" | "sec" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c))
    {
        s
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn systemd_span(d: Duration) -> String {
    let s = d.as_secs();
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}min", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The systemd service and timer `schedule install` writes (service, timer).
pub fn systemd_units(binary: &Path, root: &Path, every: Duration) -> (String, String) {
    let service = format!(
        "# Written by `girofle schedule install`: runs the due scheduled backups and copies once.
[Unit]
Description=Girofle: run due scheduled backups and copies
Wants=docker.service
After=docker.service network-online.target

[Service]
Type=oneshot
ExecStart={} --root {} schedule run-due
",
        shell_word(binary),
        shell_word(root)
    );
    let timer = format!(
        "# Written by `girofle schedule install`: starts {SERVICE_UNIT} every {span}.
[Unit]
Description=Girofle: look for due scheduled backups every {span}

[Timer]
OnBootSec=1min
OnUnitActiveSec={span}
AccuracySec=1s
Unit={SERVICE_UNIT}

[Install]
WantedBy=timers.target
",
        span = systemd_span(every)
    );
    (service, timer)
}

/// The `/etc/cron.d/girofle` text `schedule install --cron` writes.
///
/// # Errors
/// `InvalidInput` when `every` is not whole minutes cron can express.
pub fn cron_entry(binary: &Path, root: &Path, every: Duration) -> Result<String> {
    let s = every.as_secs();
    let spec = match s {
        s if s % 60 != 0 => {
            return Err(Error::invalid(
                "--every",
                "cron runs at most once a minute: use whole minutes (5m) or hours (1h)",
            ))
        }
        60 => "* * * * *".to_string(),
        s if s < 3600 => format!("*/{} * * * *", s / 60),
        3600 => "0 * * * *".to_string(),
        s if s % 3600 == 0 && s < 86400 => format!("0 */{} * * *", s / 3600),
        _ => {
            return Err(Error::invalid(
                "--every",
                "with --cron use minutes below an hour (5m), or whole hours below a day (2h)",
            ))
        }
    };
    Ok(format!(
        "# Written by `girofle schedule install --cron`: runs the due scheduled backups and copies.
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{spec} root {} --root {} schedule run-due >/dev/null 2>&1
",
        shell_word(binary),
        shell_word(root)
    ))
}
