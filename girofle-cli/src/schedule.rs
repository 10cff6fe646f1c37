//! `girofle schedule ...`

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use girofle_core::backup::Strategy;
use girofle_core::schedule::{
    parse_every, InstallOptions, RunRecord, ScheduleOverrides, ScheduleStatus,
};
use girofle_core::{Error, Result};

use crate::output::print;
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Run the due scheduled backups and copies once, then exit (for cron and systemd
    /// timers; `girofle daemon` does the same continuously). Exits 1 when a run failed.
    RunDue,
    /// Each instance's schedule, last runs and next runs.
    List,
    /// Change an instance's schedule; options not given keep their value. Crons have 5
    /// fields, or 6 with seconds first.
    Set {
        name: String,
        /// Backup cron, e.g. "0 */4 * * *".
        #[arg(long)]
        backup: Option<String>,
        /// Copy cron, or "off" for no copies.
        #[arg(long)]
        copy: Option<String>,
        /// Remote store copies go to, or "off".
        #[arg(long)]
        store: Option<String>,
        /// IANA time zone the crons are read in, e.g. Europe/Paris.
        #[arg(long)]
        tz: Option<String>,
        #[arg(long)]
        keep_last: Option<usize>,
        #[arg(long)]
        keep_daily: Option<usize>,
        #[arg(long)]
        keep_weekly: Option<usize>,
        /// online or cold.
        #[arg(long)]
        strategy: Option<Strategy>,
        /// Stop scheduling this instance.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Schedule it again.
        #[arg(long)]
        enable: bool,
    },
    /// Write a systemd service and timer (or a cron entry) that run `schedule run-due`
    /// with this binary and root; prints how to enable them.
    Install {
        /// Write /etc/cron.d/girofle instead of systemd units.
        #[arg(long)]
        cron: bool,
        /// Write the files into this directory instead (nothing else is done).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How often run-due runs: 30s, 5m, 1h.
        #[arg(long, default_value = "5m")]
        every: String,
    },
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

fn last(r: &Option<RunRecord>) -> String {
    match r {
        Some(r) => format!("{} {}", when(Some(r.started_at)), r.outcome),
        None => "never".to_string(),
    }
}

/// One line about a run that ended.
pub fn run_line(r: &RunRecord) -> String {
    let mut line = format!(
        "{} {} {} (slot {}): {} in {:.1} s",
        r.instance,
        r.kind,
        r.store,
        r.slot.format("%Y-%m-%dT%H:%M:%SZ"),
        r.outcome,
        r.duration().as_secs_f64()
    );
    if let Some(id) = &r.backup_id {
        line.push_str(&format!(", {id}"));
    }
    if !r.copied.is_empty() {
        line.push_str(&format!(", copied {}", r.copied.len()));
    }
    if !r.pruned.is_empty() {
        line.push_str(&format!(", pruned {}", r.pruned.join(" ")));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!(": {e}"));
    }
    line
}

fn table(list: &[ScheduleStatus]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<16} {:<14} {:<10} {:<8} {:<26} {:<26} {:<19} {:<19}",
        "INSTANCE",
        "BACKUP",
        "COPY",
        "TZ",
        "STORE",
        "KEEP",
        "LAST BACKUP",
        "LAST COPY",
        "NEXT BACKUP",
        "NEXT COPY"
    );
    for s in list {
        let sc = &s.schedule;
        let keep = format!(
            "{}/{}/{}",
            sc.retention.keep_last, sc.retention.keep_daily, sc.retention.keep_weekly
        );
        let (next_b, next_c) = if sc.enabled {
            (when(s.next_backup), when(s.next_copy))
        } else {
            ("disabled".to_string(), "disabled".to_string())
        };
        out.push_str(&format!(
            "\n{:<16} {:<16} {:<16} {:<14} {:<10} {:<8} {:<26} {:<26} {:<19} {:<19}",
            s.instance,
            sc.backup,
            if sc.copies() {
                sc.copy.clone().unwrap_or_default()
            } else {
                "off".to_string()
            },
            sc.timezone,
            sc.store.as_deref().unwrap_or("-"),
            keep,
            last(&s.last_backup),
            last(&s.last_copy),
            next_b,
            next_c
        ));
    }
    out.push_str("\n(KEEP: last/daily/weekly; times in UTC)");
    out
}

pub async fn run(ctx: &Ctx, command: ScheduleCommand) -> Result<()> {
    let g = ctx.open().await?;
    match command {
        ScheduleCommand::RunDue => {
            let report = g.run_due(None).await?;
            print(ctx, &report, || {
                let mut lines: Vec<String> = report
                    .recovered
                    .iter()
                    .map(|r| format!("{} (found interrupted)", run_line(r)))
                    .collect();
                lines.extend(report.runs.iter().map(run_line));
                for e in &report.errors {
                    lines.push(format!("error: {e}"));
                }
                for b in &report.busy {
                    lines.push(format!(
                        "{b}: busy with another operation; retried next time"
                    ));
                }
                if lines.is_empty() {
                    "nothing due".to_string()
                } else {
                    lines.join("\n")
                }
            });
            let failed = report.failed() + report.errors.len();
            if failed > 0 {
                return Err(Error::backend(
                    "scheduled runs",
                    format!(
                        "{failed} runs did not succeed (see above, `girofle schedule list` and the journal)"
                    ),
                ));
            }
        }
        ScheduleCommand::List => {
            let list = g.schedules().await?;
            print(ctx, &list, || table(&list));
        }
        ScheduleCommand::Set {
            name,
            backup,
            copy,
            store,
            tz,
            keep_last,
            keep_daily,
            keep_weekly,
            strategy,
            disable,
            enable,
        } => {
            let change = ScheduleOverrides {
                backup,
                copy,
                timezone: tz,
                store,
                strategy,
                keep_last,
                keep_daily,
                keep_weekly,
                enabled: if disable {
                    Some(false)
                } else if enable {
                    Some(true)
                } else {
                    None
                },
            };
            let s = g.set_schedule(&name, change).await?;
            print(ctx, &s, || {
                format!(
                    "{name}: backup \"{}\", copy {} ({}), strategy {}, keep last {} / daily {} / weekly {}{}",
                    s.backup,
                    if s.copies() {
                        format!("\"{}\"", s.copy.as_deref().unwrap_or_default())
                    } else {
                        "off".to_string()
                    },
                    s.timezone,
                    format!("{:?}", s.strategy).to_lowercase(),
                    s.retention.keep_last,
                    s.retention.keep_daily,
                    s.retention.keep_weekly,
                    match (&s.store, s.enabled) {
                        (_, false) => ", disabled".to_string(),
                        (Some(st), true) if s.copies() => format!(", copies to `{st}`"),
                        _ => String::new(),
                    }
                )
            });
        }
        ScheduleCommand::Install { cron, dir, every } => {
            let every = parse_every(&every)?;
            let binary = std::env::current_exe()
                .map_err(|e| Error::io("find the girofle binary", "/proc/self/exe", e))?;
            let installed = g
                .install_schedule(InstallOptions {
                    binary,
                    cron,
                    dir,
                    every,
                })
                .await?;
            print(ctx, &installed, || {
                let mut out = installed
                    .files
                    .iter()
                    .map(|f| format!("wrote {}", f.display()))
                    .collect::<Vec<_>>();
                out.push("to enable it:".to_string());
                out.extend(installed.next_steps.iter().map(|s| format!("    {s}")));
                out.join("\n")
            });
        }
    }
    Ok(())
}
