//! Scheduled backups and copies (R-BAK-4): each instance's schedule, the book of runs,
//! which work is due, and running it once (`girofle schedule run-due`).
//!
//! A schedule is a backup cron and a copy cron (5 fields, or 6 with seconds first) in an
//! IANA time zone, the backup strategy, the remote store copies go to, and a retention
//! policy applied after every run. Instances without a schedule of their own follow the
//! `[schedule]` section of girofle.toml, counted from their creation. Schedules and runs
//! live in the inventory database (`ScheduleBook`), so several Girofle processes (a daemon,
//! a systemd timer, an operator) agree on what ran: claiming a slot is one `BEGIN
//! IMMEDIATE` transaction, and only the newest missed slot is ever claimed, so a downtime
//! is caught up once. The long-lived loop is `daemon`'s job; this module does one pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use futures::StreamExt;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapters::store::StoreConfig;
use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::{InstanceRecord, Stage};
use crate::model::lock::InstanceLock;
use crate::ops::backup::{retained, BackupOptions, Retention, Strategy};

/// The default backup cron: every 4 hours, on the hour.
pub const DEFAULT_BACKUP_CRON: &str = "0 */4 * * *";
/// The default copy cron: every 4 hours, half an hour after the backups.
pub const DEFAULT_COPY_CRON: &str = "30 */4 * * *";
/// A copy cron (or `--copy`) of this value means: no copies.
pub const OFF: &str = "off";

/// The `[schedule]` section of girofle.toml: the schedule every instance follows unless it
/// has one of its own, and the daemon's limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Backup cron, 5 fields (or 6, seconds first).
    pub backup: String,
    /// Copy cron, or `"off"`.
    pub copy: String,
    /// IANA time zone the crons are read in (`Europe/Paris`).
    pub timezone: String,
    /// The remote store copies go to; default: the only `[stores.*]` when there is
    /// exactly one, else no copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub strategy: Strategy,
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    /// Jobs at once across the fleet (one per instance at a time in any case).
    pub max_concurrent: usize,
    /// How long a stopping daemon lets running jobs finish before marking them
    /// interrupted.
    pub stop_grace_secs: u64,
    /// How often the daemon looks for due work, in milliseconds.
    pub tick_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            backup: DEFAULT_BACKUP_CRON.to_string(),
            copy: DEFAULT_COPY_CRON.to_string(),
            timezone: "UTC".to_string(),
            store: None,
            strategy: Strategy::Online,
            keep_last: 12,
            keep_daily: 0,
            keep_weekly: 0,
            max_concurrent: 2,
            stop_grace_secs: 300,
            tick_ms: 1000,
        }
    }
}

impl ScheduleConfig {
    /// Checks the section; errors name the key (`schedule.backup`).
    ///
    /// # Errors
    /// `InvalidInput` naming the key and saying what is wrong.
    pub fn validate(&self, stores: &BTreeMap<String, StoreConfig>) -> Result<()> {
        parse_cron("schedule.backup", &self.backup)?;
        if self.copy != OFF {
            parse_cron("schedule.copy", &self.copy)?;
        }
        parse_timezone("schedule.timezone", &self.timezone)?;
        if let Some(s) = &self.store {
            if !stores.contains_key(s) {
                return Err(Error::invalid(
                    "schedule.store",
                    format!(
                        "`{s}` is not a configured store; add [stores.{s}] or name one of: {}",
                        store_names(stores)
                    ),
                ));
            }
        }
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
        }
        .validate("schedule.keep_last")?;
        if self.max_concurrent == 0 {
            return Err(Error::invalid("schedule.max_concurrent", "use at least 1"));
        }
        if self.tick_ms < 10 {
            return Err(Error::invalid(
                "schedule.tick_ms",
                "use at least 10 milliseconds",
            ));
        }
        Ok(())
    }

    /// The schedule instances follow unless they have their own.
    pub fn default_schedule(&self, stores: &BTreeMap<String, StoreConfig>) -> Schedule {
        let store = self.store.clone().or_else(|| {
            if stores.len() == 1 {
                stores.keys().next().cloned()
            } else {
                None
            }
        });
        Schedule {
            backup: self.backup.clone(),
            copy: (self.copy != OFF).then(|| self.copy.clone()),
            timezone: self.timezone.clone(),
            store,
            strategy: self.strategy,
            retention: RetentionPolicy {
                keep_last: self.keep_last,
                keep_daily: self.keep_daily,
                keep_weekly: self.keep_weekly,
            },
            enabled: true,
        }
    }
}

fn store_names(stores: &BTreeMap<String, StoreConfig>) -> String {
    if stores.is_empty() {
        "(none configured)".to_string()
    } else {
        stores.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Parses a cron expression of 5 fields (minute hour day month weekday) or 6 (seconds
/// first); `field` names it in errors.
///
/// # Errors
/// `InvalidInput` naming the field, when the expression does not parse or never fires.
pub fn parse_cron(field: &str, text: &str) -> Result<Cron> {
    let fields = text.split_whitespace().count();
    if !text.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(Error::invalid(
            field,
            format!(
                "`{text}` has {fields} fields; use 5 (minute hour day-of-month month day-of-week, e.g. \"0 */4 * * *\") or 6 with seconds first (\"*/30 * * * * *\")"
            ),
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| {
            Error::invalid(
                field,
                format!(
                    "`{text}` is not a valid cron expression ({e}); expected minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or JAN-DEC) day-of-week (0-7 or SUN-SAT), each `*`, a number, a range `a-b`, a list `a,b` or a step `*/n`, e.g. \"0 */4 * * *\""
                ),
            )
        })?;
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(Error::invalid(
            field,
            format!("`{text}` never fires (an impossible date?)"),
        ));
    }
    Ok(cron)
}

/// Parses an IANA time zone name (`UTC`, `Europe/Paris`).
///
/// # Errors
/// `InvalidInput` naming the field.
pub fn parse_timezone(field: &str, text: &str) -> Result<Tz> {
    text.parse::<Tz>().map_err(|_| {
        Error::invalid(
            field,
            format!("`{text}` is not an IANA time zone; use e.g. UTC or Europe/Paris"),
        )
    })
}

/// A retention policy as schedules store it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
}

impl RetentionPolicy {
    fn validate(&self, field: &str) -> Result<()> {
        if self.keep_last + self.keep_daily + self.keep_weekly == 0 {
            return Err(Error::invalid(
                field,
                "the retention would keep nothing; keep at least one backup (keep_last >= 1)",
            ));
        }
        Ok(())
    }
}

impl From<RetentionPolicy> for Retention {
    fn from(p: RetentionPolicy) -> Retention {
        Retention {
            keep_last: p.keep_last,
            keep_daily: p.keep_daily,
            keep_weekly: p.keep_weekly,
        }
    }
}

/// An instance's effective schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Backup cron (5 or 6 fields).
    pub backup: String,
    /// Copy cron; `None`: no copies.
    pub copy: Option<String>,
    /// IANA time zone of the crons.
    pub timezone: String,
    /// The remote store copies go to; `None`: no copies.
    pub store: Option<String>,
    pub strategy: Strategy,
    /// Applied to the local store after each backup, and to the remote store after each
    /// copy.
    pub retention: RetentionPolicy,
    pub enabled: bool,
}

impl Schedule {
    /// Whether copies are scheduled (a copy cron and a store).
    pub fn copies(&self) -> bool {
        self.copy.is_some() && self.store.is_some()
    }

    /// The cron of a kind of run (`None` when that kind is not scheduled).
    ///
    /// # Errors
    /// `InvalidInput` when the cron does not parse.
    pub fn cron(&self, kind: RunKind) -> Result<Option<Cron>> {
        match kind {
            RunKind::Backup => parse_cron("backup cron", &self.backup).map(Some),
            RunKind::Copy if self.copies() => {
                parse_cron("copy cron", self.copy.as_deref().unwrap_or_default()).map(Some)
            }
            RunKind::Copy => Ok(None),
        }
    }

    /// The time zone.
    ///
    /// # Errors
    /// `InvalidInput` when it is not an IANA name.
    pub fn tz(&self) -> Result<Tz> {
        parse_timezone("timezone", &self.timezone)
    }

    fn validate(&self, stores: &BTreeMap<String, StoreConfig>) -> Result<()> {
        parse_cron("--backup", &self.backup)?;
        if let Some(c) = &self.copy {
            parse_cron("--copy", c)?;
        }
        parse_timezone("--tz", &self.timezone)?;
        if let Some(s) = &self.store {
            if !stores.contains_key(s) {
                return Err(Error::invalid(
                    "--store",
                    format!(
                        "`{s}` is not a configured remote store (the stores are: {}); add [stores.{s}] to girofle.toml",
                        store_names(stores)
                    ),
                ));
            }
        }
        self.retention.validate("--keep-last")
    }
}

/// What an instance's own schedule changes from the default (unset fields follow
/// girofle.toml's `[schedule]`). Also the change `schedule set` applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// A cron, or `"off"` for no copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A store name, or `"off"` for no copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl ScheduleOverrides {
    /// These overrides with `change`'s set fields on top.
    pub fn merged(&self, change: &ScheduleOverrides) -> ScheduleOverrides {
        fn pick<T: Clone>(new: &Option<T>, old: &Option<T>) -> Option<T> {
            new.clone().or_else(|| old.clone())
        }
        ScheduleOverrides {
            backup: pick(&change.backup, &self.backup),
            copy: pick(&change.copy, &self.copy),
            timezone: pick(&change.timezone, &self.timezone),
            store: pick(&change.store, &self.store),
            strategy: pick(&change.strategy, &self.strategy),
            keep_last: pick(&change.keep_last, &self.keep_last),
            keep_daily: pick(&change.keep_daily, &self.keep_daily),
            keep_weekly: pick(&change.keep_weekly, &self.keep_weekly),
            enabled: pick(&change.enabled, &self.enabled),
        }
    }

    /// The effective schedule: these overrides on top of `default`.
    pub fn apply(&self, default: &Schedule) -> Schedule {
        let mut s = default.clone();
        if let Some(b) = &self.backup {
            s.backup = b.clone();
        }
        match self.copy.as_deref() {
            Some(OFF) => s.copy = None,
            Some(c) => s.copy = Some(c.to_string()),
            None => {}
        }
        if let Some(t) = &self.timezone {
            s.timezone = t.clone();
        }
        match self.store.as_deref() {
            Some(OFF) => s.store = None,
            Some(st) => s.store = Some(st.to_string()),
            None => {}
        }
        if let Some(st) = self.strategy {
            s.strategy = st;
        }
        if let Some(k) = self.keep_last {
            s.retention.keep_last = k;
        }
        if let Some(k) = self.keep_daily {
            s.retention.keep_daily = k;
        }
        if let Some(k) = self.keep_weekly {
            s.retention.keep_weekly = k;
        }
        if let Some(e) = self.enabled {
            s.enabled = e;
        }
        s
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A backup into the local store, then retention on the local store.
    Backup,
    /// Copies of the local backups the remote store lacks, then retention there.
    Copy,
}

impl RunKind {
    /// `backup` or `copy`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Copy => "copy",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "backup" => Some(RunKind::Backup),
            "copy" => Some(RunKind::Copy),
            _ => None,
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended (or that it has not yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Running,
    Ok,
    Failed,
    /// Its process died, or a stopping daemon gave up waiting for it.
    Interrupted,
}

impl RunOutcome {
    /// `running`, `ok`, `failed` or `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(RunOutcome::Running),
            "ok" => Some(RunOutcome::Ok),
            "failed" => Some(RunOutcome::Failed),
            "interrupted" => Some(RunOutcome::Interrupted),
            _ => None,
        }
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scheduled run, as the book keeps it (and the failure webhook sends it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub instance: String,
    pub kind: RunKind,
    /// The schedule slot it stands for (the newest one missed, after a downtime).
    pub slot: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: RunOutcome,
    /// The store written: `local` for backups, the remote store for copies.
    pub store: String,
    /// The backup taken (backup runs) or the newest one copied (copy runs).
    pub backup_id: Option<String>,
    /// The backups copied (copy runs).
    #[serde(default)]
    pub copied: Vec<String>,
    /// The backups retention deleted.
    #[serde(default)]
    pub pruned: Vec<String>,
    /// What went wrong (secrets removed).
    pub error: Option<String>,
    pub pid: u32,
    pub host: String,
}

impl RunRecord {
    /// How long it ran (so far).
    pub fn duration(&self) -> Duration {
        let end = self.ended_at.unwrap_or_else(Utc::now);
        (end - self.started_at).to_std().unwrap_or_default()
    }
}

/// Who runs a job: enough to tell later whether that process is still alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcessId {
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): tells a reused pid.
    start: Option<i64>,
    boot: Option<String>,
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// (state, start time) of a process from `/proc/PID/stat`.
fn proc_stat(pid: &str) -> Option<(char, i64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `PID (COMM) STATE ...`: COMM may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcessId {
    fn current() -> Self {
        ProcessId {
            pid: std::process::id(),
            start: proc_stat("self").map(|(_, s)| s),
            boot: boot_id(),
        }
    }

    fn is_alive(&self) -> bool {
        if self.boot.is_some() && self.boot != boot_id() {
            return false;
        }
        match proc_stat(&self.pid.to_string()) {
            // A zombie is dead: killed, not yet reaped by its parent.
            Some((state, _)) if state == 'Z' || state == 'X' => false,
            Some((_, start)) => self.start.is_none_or(|s| s == start),
            None => false,
        }
    }
}

/// The result of trying to claim a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A `running` record now stands for the slot: run it.
    Claimed(RunRecord),
    /// Nothing is due.
    NotDue,
    /// A live process is running something for this instance.
    Busy(RunRecord),
}

/// The schedules and the runs, in the inventory database (`<root>/inventory.db`, tables
/// `schedules` and `schedule_runs`). Safe for concurrent processes: every change is one
/// `BEGIN IMMEDIATE` transaction, waiting on a busy database rather than failing.
#[derive(Debug, Clone)]
pub struct ScheduleBook {
    path: PathBuf,
}

const BOOK: &str = "schedule book";

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    if let Some(unwritable) = crate::adapters::inventory::unwritable_db_err(BOOK, path, &e) {
        return unwritable;
    }
    Error::backend(
        BOOK,
        format!(
            "{}: {e}; check the file is readable and not on a network file system",
            path.display()
        ),
    )
}

fn ts(t: DateTime<Utc>) -> String {
    // Fixed width, so text order is time order (MAX(slot) in SQL).
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

const RUN_COLUMNS: &str = "id, instance, kind, slot, started_at, ended_at, outcome, store, backup_id, copied, pruned, error, pid, host";

fn bad_column(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} `{value}`").into(),
    )
}

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let kind: String = r.get(2)?;
    let outcome: String = r.get(6)?;
    let ended: Option<String> = r.get(5)?;
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let text: Option<String> = r.get(i)?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    };
    Ok(RunRecord {
        id: r.get(0)?,
        instance: r.get(1)?,
        kind: RunKind::parse(&kind).ok_or_else(|| bad_column("run kind", &kind))?,
        slot: parse_ts(&r.get::<_, String>(3)?)?,
        started_at: parse_ts(&r.get::<_, String>(4)?)?,
        ended_at: ended.as_deref().map(parse_ts).transpose()?,
        outcome: RunOutcome::parse(&outcome).ok_or_else(|| bad_column("outcome", &outcome))?,
        store: r.get(7)?,
        backup_id: r.get(8)?,
        copied: list(9)?,
        pruned: list(10)?,
        error: r.get(11)?,
        pid: r.get(12)?,
        host: r.get(13)?,
    })
}

/// The book's tables, in the root's `inventory.db`.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS schedules (
                 instance TEXT PRIMARY KEY,
                 schedule TEXT NOT NULL,
                 updated_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS schedule_runs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 instance TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 slot TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 ended_at TEXT,
                 outcome TEXT NOT NULL,
                 store TEXT NOT NULL,
                 backup_id TEXT,
                 copied TEXT,
                 pruned TEXT,
                 error TEXT,
                 pid INTEGER NOT NULL,
                 proc_start INTEGER,
                 boot_id TEXT,
                 host TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS schedule_runs_by_slot
                 ON schedule_runs (instance, kind, slot);
             CREATE INDEX IF NOT EXISTS schedule_runs_by_outcome
                 ON schedule_runs (outcome);";

impl ScheduleBook {
    /// Opens the book in the database at `path` (the root's `inventory.db`), creating its
    /// tables when needed.
    ///
    /// # Errors
    /// `Backend` when the database cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self> {
        let book = ScheduleBook {
            path: path.to_path_buf(),
        };
        let conn = book.connect()?;
        // Read-only (the file system takes no writes): `connect` saw to the tables.
        if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            conn.execute_batch(SCHEMA).map_err(|e| db_err(path, e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        Ok(book)
    }

    /// A connection for reading: read-only when the file system takes no writes. A
    /// read-only database that never had a schedule gets the book's tables as empty
    /// temporary ones (in this connection only), so that it reads as "no schedule".
    fn connect(&self) -> Result<Connection> {
        let conn = crate::adapters::inventory::connect_db_to_read(&self.path)?;
        let read_only = conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| db_err(&self.path, e))?;
        if read_only {
            let has_book: bool = conn
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'schedule_runs'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| db_err(&self.path, e))?;
            if !has_book {
                conn.execute_batch(&SCHEMA.replace("CREATE TABLE", "CREATE TEMP TABLE"))
                    .map_err(|e| db_err(&self.path, e))?;
            }
        }
        Ok(conn)
    }

    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = crate::adapters::inventory::connect_db(&self.path)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&self.path, e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(out)
    }

    /// The instance's own schedule (what it changes from the default), if it has one.
    ///
    /// # Errors
    /// `Backend` when the database fails, `Corrupt` when the row does not parse.
    pub fn overrides(&self, instance: &str) -> Result<Option<ScheduleOverrides>> {
        let conn = self.connect()?;
        let text: Option<String> = conn
            .query_row(
                "SELECT schedule FROM schedules WHERE instance = ?1",
                [instance],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_err(&self.path, e))?;
        text.map(|t| self.parse_overrides(instance, &t)).transpose()
    }

    fn parse_overrides(&self, instance: &str, text: &str) -> Result<ScheduleOverrides> {
        serde_json::from_str(text).map_err(|e| {
            Error::corrupt(
                format!("schedule of `{instance}` in {}", self.path.display()),
                format!("{e}; set it again with `girofle schedule set {instance} ...`"),
            )
        })
    }

    /// Every instance's own schedule.
    ///
    /// # Errors
    /// `Backend` when the database fails, `Corrupt` when a row does not parse.
    pub fn all_overrides(&self) -> Result<BTreeMap<String, ScheduleOverrides>> {
        let conn = self.connect()?;
        let mut stmt = conn
            .prepare("SELECT instance, schedule FROM schedules ORDER BY instance")
            .map_err(|e| db_err(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| db_err(&self.path, e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, text) = row.map_err(|e| db_err(&self.path, e))?;
            let o = self.parse_overrides(&name, &text)?;
            out.insert(name, o);
        }
        Ok(out)
    }

    /// Applies `change` to the instance's own schedule (read, merge, write in one
    /// transaction) and returns the result.
    ///
    /// # Errors
    /// Whatever `check` returns (nothing is written then), `Backend` when the database
    /// fails.
    pub fn update_overrides(
        &self,
        instance: &str,
        change: &ScheduleOverrides,
        check: impl FnOnce(&ScheduleOverrides) -> Result<()>,
    ) -> Result<ScheduleOverrides> {
        self.write(|tx| {
            let old: Option<String> = tx
                .query_row(
                    "SELECT schedule FROM schedules WHERE instance = ?1",
                    [instance],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| db_err(&self.path, e))?;
            let old = match old {
                Some(t) => self.parse_overrides(instance, &t)?,
                None => ScheduleOverrides::default(),
            };
            let new = old.merged(change);
            check(&new)?;
            let text =
                serde_json::to_string(&new).map_err(|e| Error::backend(BOOK, e.to_string()))?;
            tx.execute(
                "INSERT INTO schedules (instance, schedule, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(instance) DO UPDATE SET schedule = excluded.schedule,
                                                     updated_at = excluded.updated_at",
                params![instance, text, ts(Utc::now())],
            )
            .map_err(|e| db_err(&self.path, e))?;
            Ok(new)
        })
    }

    /// Runs, newest first (of one instance, or all), at most `limit`.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let conn = self.connect()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE (?1 IS NULL OR instance = ?1)
             ORDER BY id DESC LIMIT ?2"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| db_err(&self.path, e))?;
        let rows = stmt
            .query_map(params![instance, limit], run_from_row)
            .map_err(|e| db_err(&self.path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_err(&self.path, e))
    }

    /// The newest run of an instance and kind.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn last_run(&self, instance: &str, kind: RunKind) -> Result<Option<RunRecord>> {
        let conn = self.connect()?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE instance = ?1 AND kind = ?2
             ORDER BY id DESC LIMIT 1"
        );
        conn.query_row(&sql, params![instance, kind.as_str()], run_from_row)
            .optional()
            .map_err(|e| db_err(&self.path, e))
    }

    /// The newest slot recorded for an instance and kind.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn last_slot(&self, instance: &str, kind: RunKind) -> Result<Option<DateTime<Utc>>> {
        let conn = self.connect()?;
        Self::last_slot_in(&conn, &self.path, instance, kind)
    }

    fn last_slot_in(
        conn: &Connection,
        path: &Path,
        instance: &str,
        kind: RunKind,
    ) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = conn
            .query_row(
                "SELECT MAX(slot) FROM schedule_runs WHERE instance = ?1 AND kind = ?2",
                params![instance, kind.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| db_err(path, e))?;
        text.as_deref()
            .map(parse_ts)
            .transpose()
            .map_err(|e| db_err(path, e))
    }

    fn running_in(
        tx: &Connection,
        path: &Path,
        instance: Option<&str>,
    ) -> Result<Vec<(RunRecord, ProcessId)>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS}, proc_start, boot_id FROM schedule_runs
             WHERE outcome = 'running' AND (?1 IS NULL OR instance = ?1)"
        );
        let mut stmt = tx.prepare(&sql).map_err(|e| db_err(path, e))?;
        let rows = stmt
            .query_map(params![instance], |r| {
                let run = run_from_row(r)?;
                let who = ProcessId {
                    pid: run.pid,
                    start: r.get(14)?,
                    boot: r.get(15)?,
                };
                Ok((run, who))
            })
            .map_err(|e| db_err(path, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| db_err(path, e))
    }

    fn interrupt_in(tx: &Connection, path: &Path, run: &mut RunRecord, why: &str) -> Result<()> {
        let now = Utc::now();
        tx.execute(
            "UPDATE schedule_runs SET outcome = 'interrupted', ended_at = ?2, error = ?3
             WHERE id = ?1 AND outcome = 'running'",
            params![run.id, ts(now), why],
        )
        .map_err(|e| db_err(path, e))?;
        run.outcome = RunOutcome::Interrupted;
        run.ended_at = Some(now);
        run.error = Some(why.to_string());
        Ok(())
    }

    /// Marks `running` records whose process is gone (dead, or of an earlier boot)
    /// `interrupted`, and returns them.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn recover(&self) -> Result<Vec<RunRecord>> {
        // Read first: the daemon calls this every tick, and nearly always nothing is stale.
        let stale = Self::running_in(&self.connect()?, &self.path, None)?
            .iter()
            .any(|(_, who)| !who.is_alive());
        if !stale {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut out = Vec::new();
            for (mut run, who) in Self::running_in(tx, &self.path, None)? {
                if !who.is_alive() {
                    let why = format!(
                        "the process that ran it (pid {} on {}) stopped before it finished",
                        run.pid, run.host
                    );
                    Self::interrupt_in(tx, &self.path, &mut run, &why)?;
                    out.push(run);
                }
            }
            Ok(out)
        })
    }

    /// Claims the due slot of an instance and kind, in one transaction: when no live
    /// process runs anything for the instance and `due` (given the newest slot recorded,
    /// if any) names a slot, a `running` record for it is written and returned. Records of
    /// dead processes found on the way are marked `interrupted`.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn claim(
        &self,
        instance: &str,
        kind: RunKind,
        store: &str,
        due: impl FnOnce(Option<DateTime<Utc>>) -> Option<DateTime<Utc>>,
    ) -> Result<Claim> {
        self.write(|tx| {
            for (mut run, who) in Self::running_in(tx, &self.path, Some(instance))? {
                if who.is_alive() {
                    return Ok(Claim::Busy(run));
                }
                let why = format!(
                    "the process that ran it (pid {} on {}) stopped before it finished",
                    run.pid, run.host
                );
                Self::interrupt_in(tx, &self.path, &mut run, &why)?;
            }
            let last = Self::last_slot_in(tx, &self.path, instance, kind)?;
            let Some(slot) = due(last) else {
                return Ok(Claim::NotDue);
            };
            let me = ProcessId::current();
            let host = crate::model::journal::host_name();
            let started = Utc::now();
            tx.execute(
                "INSERT INTO schedule_runs
                     (instance, kind, slot, started_at, outcome, store, pid, proc_start, boot_id, host)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9)",
                params![
                    instance,
                    kind.as_str(),
                    ts(slot),
                    ts(started),
                    store,
                    me.pid,
                    me.start,
                    me.boot,
                    host
                ],
            )
            .map_err(|e| db_err(&self.path, e))?;
            Ok(Claim::Claimed(RunRecord {
                id: tx.last_insert_rowid(),
                instance: instance.to_string(),
                kind,
                slot,
                started_at: started,
                ended_at: None,
                outcome: RunOutcome::Running,
                store: store.to_string(),
                backup_id: None,
                copied: Vec::new(),
                pruned: Vec::new(),
                error: None,
                pid: me.pid,
                host,
            }))
        })
    }

    /// Records how a claimed run ended (`outcome`, `ended_at`, ids and error of `run`).
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn finish(&self, run: &RunRecord) -> Result<()> {
        let list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            tx.execute(
                "UPDATE schedule_runs SET outcome = ?2, ended_at = ?3, backup_id = ?4,
                     copied = ?5, pruned = ?6, error = ?7
                 WHERE id = ?1",
                params![
                    run.id,
                    run.outcome.as_str(),
                    run.ended_at.map(ts),
                    run.backup_id,
                    list(&run.copied),
                    list(&run.pruned),
                    run.error
                ],
            )
            .map_err(|e| db_err(&self.path, e))?;
            Ok(())
        })
    }

    /// Forgets a claim that was not run (the instance was busy): its slot is due again.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn release(&self, run: &RunRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM schedule_runs WHERE id = ?1 AND outcome = 'running'",
                [run.id],
            )
            .map_err(|e| db_err(&self.path, e))?;
            Ok(())
        })
    }

    /// Marks this process's `running` records `interrupted` (a daemon that stops without
    /// waiting for them) and returns them.
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn interrupt_own(&self, why: &str) -> Result<Vec<RunRecord>> {
        let me = std::process::id();
        self.write(|tx| {
            let mut out = Vec::new();
            for (mut run, _) in Self::running_in(tx, &self.path, None)? {
                if run.pid == me {
                    Self::interrupt_in(tx, &self.path, &mut run, why)?;
                    out.push(run);
                }
            }
            Ok(out)
        })
    }
}

/// The newest slot of `cron` (read in `tz`) that is after `after` and not after `now`.
pub fn due_slot(
    cron: &Cron,
    tz: Tz,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let prev = cron
        .find_previous_occurrence(&now.with_timezone(&tz), true)
        .ok()?
        .with_timezone(&Utc);
    (prev > after && prev <= now).then_some(prev)
}

/// What due slots are counted from: the newest slot recorded, or the instance's creation
/// (also when the records are of an earlier instance of that name).
fn anchor(last_slot: Option<DateTime<Utc>>, record: &InstanceRecord) -> DateTime<Utc> {
    last_slot.map_or(record.created_at, |l| l.max(record.created_at))
}

/// The first slot of `cron` (read in `tz`) after `after`.
pub fn next_slot(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One line of `schedule list`.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleStatus {
    pub instance: String,
    /// Whether the instance has a schedule of its own (else girofle.toml's `[schedule]`).
    pub own: bool,
    pub schedule: Schedule,
    pub last_backup: Option<RunRecord>,
    pub last_copy: Option<RunRecord>,
    /// When the next backup runs (in the past: it is due now).
    pub next_backup: Option<DateTime<Utc>>,
    pub next_copy: Option<DateTime<Utc>>,
}

/// What `run-due` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunDueReport {
    /// Runs of dead processes marked `interrupted` first.
    pub recovered: Vec<RunRecord>,
    /// The runs made, in the order they ended.
    pub runs: Vec<RunRecord>,
    /// Instances skipped because another process is working on them.
    pub busy: Vec<String>,
    /// Instances whose runs could not be claimed or recorded (the database failed).
    pub errors: Vec<String>,
}

impl RunDueReport {
    /// How many runs did not succeed.
    pub fn failed(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.outcome != RunOutcome::Ok)
            .count()
    }
}

/// A callback told of each run as it ends.
pub type RunHook = Arc<dyn Fn(&RunRecord) + Send + Sync>;

/// How a claimed run ended.
#[derive(Clone, Debug)]
pub(crate) enum Ended {
    /// Recorded with its outcome.
    Done(Box<RunRecord>),
    /// The instance was busy with another operation: the claim was released.
    Skipped,
}

fn is_busy(e: &Error) -> bool {
    matches!(e, Error::Conflict(m) if m.contains(" is busy: "))
}

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

impl Context {
    /// The schedule book of this root.
    pub(crate) fn schedule_book(&self) -> Result<ScheduleBook> {
        ScheduleBook::open(&self.root.join("inventory.db"))
    }

    /// The schedule instances follow unless they have their own (girofle.toml's
    /// `[schedule]`).
    pub(crate) fn default_schedule(&self) -> Schedule {
        self.config.schedule.default_schedule(&self.config.stores)
    }

    /// The effective schedule of an instance.
    pub(crate) async fn schedule_of(&self, name: &str) -> Result<Schedule> {
        use crate::adapters::inventory::InventoryExt;
        self.inventory.get(name).await?;
        let own = self.schedule_book()?.overrides(name)?;
        Ok(own.unwrap_or_default().apply(&self.default_schedule()))
    }

    /// Changes an instance's schedule (the set fields of `change`), after checking the
    /// result; returns the effective schedule. Journaled.
    pub(crate) async fn set_schedule(
        &self,
        name: &str,
        change: ScheduleOverrides,
    ) -> Result<Schedule> {
        let arguments = json!({ "name": name, "change": change });
        self.journaled("schedule-set", arguments, json!({}), async {
            use crate::adapters::inventory::InventoryExt;
            // The arguments' own syntax first: a typo is named whatever the instance.
            if let Some(c) = &change.backup {
                parse_cron("--backup", c)?;
            }
            if let Some(c) = change.copy.as_deref().filter(|c| *c != OFF) {
                parse_cron("--copy", c)?;
            }
            if let Some(tz) = &change.timezone {
                parse_timezone("--tz", tz)?;
            }
            self.inventory.get(name).await?;
            if let Some(st) = change.store.as_deref() {
                if st != OFF && !self.config.stores.contains_key(st) {
                    return Err(Error::invalid(
                        "--store",
                        format!(
                            "`{st}` is not a configured remote store (the stores are: {}); add [stores.{st}] to girofle.toml, or use --store off",
                            store_names(&self.config.stores)
                        ),
                    ));
                }
            }
            let default = self.default_schedule();
            let own = self
                .schedule_book()?
                .update_overrides(name, &change, |o| {
                    o.apply(&default).validate(&self.config.stores)
                })?;
            Ok(own.apply(&default))
        })
        .await
    }

    /// Every instance's schedule, last runs and next runs.
    pub(crate) async fn schedules(&self) -> Result<Vec<ScheduleStatus>> {
        let fleet = self.inventory.load().await?;
        let book = self.schedule_book()?;
        let own = book.all_overrides()?;
        let default = self.default_schedule();
        let now = Utc::now();
        let mut out = Vec::new();
        for record in fleet.instances.values() {
            let schedule = own
                .get(&record.name)
                .cloned()
                .unwrap_or_default()
                .apply(&default);
            let mut next = BTreeMap::new();
            for kind in [RunKind::Backup, RunKind::Copy] {
                let when = if schedule.enabled {
                    self.next_run(&book, record, &schedule, kind, now)?
                } else {
                    None
                };
                next.insert(kind, when);
            }
            out.push(ScheduleStatus {
                instance: record.name.clone(),
                own: own.contains_key(&record.name),
                last_backup: book.last_run(&record.name, RunKind::Backup)?,
                last_copy: book.last_run(&record.name, RunKind::Copy)?,
                next_backup: next[&RunKind::Backup],
                next_copy: next[&RunKind::Copy],
                schedule,
            });
        }
        Ok(out)
    }

    fn next_run(
        &self,
        book: &ScheduleBook,
        record: &InstanceRecord,
        schedule: &Schedule,
        kind: RunKind,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let Some(cron) = schedule.cron(kind)? else {
            return Ok(None);
        };
        let tz = schedule.tz()?;
        let anchor = anchor(book.last_slot(&record.name, kind)?, record);
        Ok(due_slot(&cron, tz, anchor, now).or_else(|| next_slot(&cron, tz, now.max(anchor))))
    }

    /// Claims the due slot of one instance and kind (see [`ScheduleBook::claim`]).
    pub(crate) fn claim_due(
        &self,
        book: &ScheduleBook,
        record: &InstanceRecord,
        schedule: &Schedule,
        kind: RunKind,
        now: DateTime<Utc>,
    ) -> Result<Claim> {
        if !schedule.enabled || record.stage != Stage::Active {
            return Ok(Claim::NotDue);
        }
        let Some(cron) = schedule.cron(kind)? else {
            return Ok(Claim::NotDue);
        };
        let tz = schedule.tz()?;
        let store = match kind {
            RunKind::Backup => crate::adapters::store::LOCAL_STORE_NAME.to_string(),
            RunKind::Copy => schedule.store.clone().unwrap_or_default(),
        };
        let due = |last: Option<DateTime<Utc>>| due_slot(&cron, tz, anchor(last, record), now);
        // Read first: most ticks find nothing due, and need no write transaction.
        if due(book.last_slot(&record.name, kind)?).is_none() {
            return Ok(Claim::NotDue);
        }
        book.claim(&record.name, kind, &store, due)
    }

    /// Runs a claimed run to its end and records how it ended (journaled as
    /// `scheduled-backup` / `scheduled-copy`). A run the instance lock refuses (another
    /// operation holds the instance) is released, not failed: its slot is due again.
    pub(crate) async fn run_claimed(
        &self,
        book: &ScheduleBook,
        mut run: RunRecord,
        schedule: &Schedule,
    ) -> Result<Ended> {
        // An instance busy with another operation (a manual backup, a restore) is not a
        // failure: look before starting, so nothing is journaled or notified for it.
        if let Err(e) = InstanceLock::acquire(&self.root, &run.instance, "scheduled run") {
            if is_busy(&e) {
                book.release(&run)?;
                return Ok(Ended::Skipped);
            }
        }
        let operation = format!("scheduled-{}", run.kind);
        let arguments = json!({
            "name": run.instance,
            "run": run.id,
            "slot": run.slot,
            "strategy": schedule.strategy,
            "store": run.store,
            "keep_last": schedule.retention.keep_last,
            "keep_daily": schedule.retention.keep_daily,
            "keep_weekly": schedule.retention.keep_weekly,
        });
        let result = self
            .journaled(&operation, arguments, json!({}), async {
                match run.kind {
                    RunKind::Backup => self.scheduled_backup(&mut run, schedule).await,
                    RunKind::Copy => self.scheduled_copy(&mut run, schedule).await,
                }
            })
            .await;
        match result {
            Err(e) if is_busy(&e) => {
                book.release(&run)?;
                Ok(Ended::Skipped)
            }
            other => {
                run.ended_at = Some(Utc::now());
                match other {
                    Ok(()) => run.outcome = RunOutcome::Ok,
                    Err(e) => {
                        run.outcome = RunOutcome::Failed;
                        run.error = Some(crate::model::journal::scrub_known(
                            &e.to_string(),
                            &self.known_secrets(),
                        ));
                    }
                }
                book.finish(&run)?;
                Ok(Ended::Done(Box::new(run)))
            }
        }
    }

    /// Journals runs found interrupted (their process died, or a stopping daemon gave up
    /// on them) as failed scheduled operations, so they are seen (and notified) like any
    /// other failure.
    pub(crate) async fn journal_interrupted(&self, runs: &[RunRecord]) {
        for run in runs {
            let arguments = json!({
                "name": run.instance,
                "run": run.id,
                "slot": run.slot,
                "store": run.store,
            });
            let why = run.error.clone().unwrap_or_default();
            let _ = self
                .journaled(
                    &format!("scheduled-{}", run.kind),
                    arguments,
                    json!({}),
                    async { Err::<(), _>(Error::backend("scheduled run interrupted", why)) },
                )
                .await;
        }
    }

    async fn scheduled_backup(&self, run: &mut RunRecord, schedule: &Schedule) -> Result<()> {
        let report = self
            .backup(
                &run.instance,
                BackupOptions {
                    strategy: schedule.strategy,
                    store: None,
                    no_logs: false,
                    progress: None,
                },
            )
            .await?;
        run.backup_id = Some(report.id);
        // Retention under the instance lock, so it never deletes a backup a copy is
        // reading. The backup just released the lock; another process may hold it for a
        // moment.
        let mut lock = None;
        for _ in 0..40 {
            match InstanceLock::acquire(&self.root, &run.instance, "scheduled retention") {
                Ok(l) => {
                    lock = Some(l);
                    break;
                }
                Err(e) if is_busy(&e) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => return Err(e),
            }
        }
        if lock.is_some() {
            run.pruned = self
                .prune(Some(&run.instance), None, schedule.retention.into())
                .await?;
        }
        Ok(())
    }

    async fn scheduled_copy(&self, run: &mut RunRecord, schedule: &Schedule) -> Result<()> {
        let store = run.store.clone();
        let _lock = InstanceLock::acquire(&self.root, &run.instance, "scheduled copy")?;
        let local = self.list_backups(Some(&run.instance), None).await?;
        let remote = self.list_backups(Some(&run.instance), Some(&store)).await?;
        // Copy only what the remote retention keeps: the newest of both stores together,
        // so backups pruned there are not copied again.
        let mut all: Vec<(DateTime<Utc>, String, bool)> = remote
            .iter()
            .map(|b| (b.created_at, b.id.clone(), true))
            .collect();
        for b in &local {
            if !remote.iter().any(|r| r.id == b.id) {
                all.push((b.created_at, b.id.clone(), false));
            }
        }
        all.sort_by_key(|a| std::cmp::Reverse(a.0));
        let times: Vec<DateTime<Utc>> = all.iter().map(|a| a.0).collect();
        let keep = retained(&times, schedule.retention.into());
        let mut wanted: Vec<&(DateTime<Utc>, String, bool)> = all
            .iter()
            .enumerate()
            .filter(|(i, a)| keep.contains(i) && !a.2)
            .map(|(_, a)| a)
            .collect();
        wanted.reverse();
        for (_, id, _) in wanted {
            self.copy_backup(id, None, &store).await?;
            run.copied.push(id.clone());
            run.backup_id = Some(id.clone());
        }
        run.pruned = self
            .prune(Some(&run.instance), Some(&store), schedule.retention.into())
            .await?;
        Ok(())
    }

    /// The due work once: runs of dead processes are marked `interrupted`, then for each
    /// instance the due backup (then the due copy) runs, at most `[schedule]
    /// max_concurrent` instances at once. `on_run_end` is told of each run as it ends.
    pub(crate) async fn run_due(&self, on_run_end: Option<RunHook>) -> Result<RunDueReport> {
        let book = self.schedule_book()?;
        let recovered = book.recover()?;
        self.journal_interrupted(&recovered).await;
        let fleet = self.inventory.load().await?;
        let own = book.all_overrides()?;
        let default = self.default_schedule();
        let jobs = fleet.instances.into_values().map(|record| {
            let schedule = own
                .get(&record.name)
                .cloned()
                .unwrap_or_default()
                .apply(&default);
            let book = book.clone();
            let hook = on_run_end.clone();
            async move {
                let mut runs = Vec::new();
                let mut busy = false;
                let mut error = None;
                for kind in [RunKind::Backup, RunKind::Copy] {
                    // One instance's trouble with the book must not cancel the others' runs.
                    let claim = match self.claim_due(&book, &record, &schedule, kind, Utc::now()) {
                        Ok(c) => c,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    };
                    match claim {
                        Claim::Claimed(run) => {
                            match self.run_claimed(&book, run, &schedule).await {
                                Ok(Ended::Done(r)) => {
                                    if let Some(h) = &hook {
                                        h(&r);
                                    }
                                    runs.push(*r);
                                }
                                Ok(Ended::Skipped) => busy = true,
                                Err(e) => {
                                    error = Some(e);
                                    break;
                                }
                            }
                        }
                        Claim::Busy(_) => busy = true,
                        Claim::NotDue => {}
                    }
                }
                (record.name, runs, busy, error)
            }
        });
        let mut results =
            futures::stream::iter(jobs).buffer_unordered(self.config.schedule.max_concurrent);
        let mut report = RunDueReport {
            recovered,
            ..Default::default()
        };
        while let Some((name, runs, busy, error)) = results.next().await {
            report.runs.extend(runs);
            if busy {
                report.busy.push(name.clone());
            }
            if let Some(e) = error {
                report.errors.push(format!(
                    "{name}: {}",
                    crate::model::journal::scrub_known(&e.to_string(), &self.known_secrets())
                ));
            }
        }
        Ok(report)
    }

    /// Writes the systemd units (or the cron entry) that call `girofle schedule run-due`
    /// regularly; it does not enable them (the result says how). Journaled.
    pub(crate) async fn install_schedule(&self, options: InstallOptions) -> Result<Installed> {
        let arguments = json!({
            "binary": options.binary,
            "cron": options.cron,
            "dir": options.dir,
            "every_secs": options.every.as_secs(),
        });
        self.journaled("schedule-install", arguments, json!({}), async {
            let mut files = Vec::new();
            let next_steps = if options.cron {
                let dir = options
                    .dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/etc/cron.d"));
                let text = cron_entry(&options.binary, &self.root, options.every)?;
                let path = dir.join("girofle");
                crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
                files.push(path);
                if options.dir.is_some() {
                    vec![format!(
                        "install -m 0644 {} /etc/cron.d/girofle",
                        dir.join("girofle").display()
                    )]
                } else {
                    vec!["nothing: cron reads /etc/cron.d by itself".to_string()]
                }
            } else {
                let dir = options
                    .dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
                let (service, timer) = systemd_units(&options.binary, &self.root, options.every);
                for (name, text) in [(SERVICE_UNIT, service), (TIMER_UNIT, timer)] {
                    let path = dir.join(name);
                    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
                    files.push(path);
                }
                let mut steps = Vec::new();
                if options.dir.is_some() {
                    steps.push(format!(
                        "install -m 0644 {} {} /etc/systemd/system/",
                        dir.join(SERVICE_UNIT).display(),
                        dir.join(TIMER_UNIT).display()
                    ));
                }
                steps.push("systemctl daemon-reload".to_string());
                steps.push(format!("systemctl enable --now {TIMER_UNIT}"));
                steps
            };
            Ok(Installed { files, next_steps })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn crons_of_five_and_six_fields_parse_others_are_named() {
        parse_cron("k", "0 */4 * * *").unwrap();
        parse_cron("k", "*/3 * * * * *").unwrap();
        let e = parse_cron("schedule.backup", "* * *")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("schedule.backup") && e.contains("3 fields"),
            "{e}"
        );
        let e = parse_cron("schedule.copy", "61 * * * *")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedule.copy"), "{e}");
        parse_timezone("t", "Europe/Paris").unwrap();
        assert!(parse_timezone("schedule.timezone", "Mars/Base")
            .unwrap_err()
            .to_string()
            .contains("schedule.timezone"));
    }

    #[test]
    fn due_slot_is_the_newest_missed_one_only() {
        let cron = parse_cron("k", "0 */4 * * *").unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap();
        // Created at 01:10: nothing due before 04:00.
        assert_eq!(due_slot(&cron, Tz::UTC, at(1, 10), at(3, 59)), None);
        assert_eq!(
            due_slot(&cron, Tz::UTC, at(1, 10), at(4, 0)),
            Some(at(4, 0))
        );
        // Down from 05:00 to 17:30: 08:00, 12:00, 16:00 were missed; one run, for 16:00.
        assert_eq!(
            due_slot(&cron, Tz::UTC, at(4, 0), at(17, 30)),
            Some(at(16, 0))
        );
        assert_eq!(due_slot(&cron, Tz::UTC, at(16, 0), at(17, 30)), None);
        assert_eq!(next_slot(&cron, Tz::UTC, at(17, 30)), Some(at(20, 0)));
        // Read in Paris (UTC+1 in March): local midnight is 23:00 UTC.
        let daily = parse_cron("k", "0 0 * * *").unwrap();
        let paris: Tz = "Europe/Paris".parse().unwrap();
        assert_eq!(
            next_slot(&daily, paris, at(12, 0)),
            Some(at(23, 0)),
            "midnight in Paris"
        );
    }

    #[test]
    fn overrides_apply_on_top_of_the_default() {
        let mut stores = BTreeMap::new();
        let d = ScheduleConfig::default().default_schedule(&stores);
        assert_eq!(d.store, None, "no store configured: no copies");
        assert!(!d.copies());
        stores.insert(
            "offsite".to_string(),
            StoreConfig {
                url: "file:///tmp/x".into(),
                endpoint: None,
                region: None,
                access_key_id: None,
                secret_access_key: None,
                allow_http: None,
                ..Default::default()
            },
        );
        let d = ScheduleConfig::default().default_schedule(&stores);
        assert_eq!(d.store.as_deref(), Some("offsite"), "the only store");
        assert_eq!(d.retention.keep_last, 12);
        let own = ScheduleOverrides {
            backup: Some("*/3 * * * * *".into()),
            keep_last: Some(2),
            ..Default::default()
        };
        let own = own.merged(&ScheduleOverrides {
            copy: Some(OFF.into()),
            ..Default::default()
        });
        let s = own.apply(&d);
        assert_eq!(s.backup, "*/3 * * * * *");
        assert_eq!(s.retention.keep_last, 2);
        assert!(!s.copies());
        assert!(s.validate(&stores).is_ok());
        let bad = ScheduleOverrides {
            keep_last: Some(0),
            ..Default::default()
        }
        .apply(&d);
        assert!(bad.validate(&stores).is_err());
    }

    #[test]
    fn a_slot_is_claimed_once_and_dead_runs_are_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let book = ScheduleBook::open(&dir.path().join("inventory.db")).unwrap();
        let slot = Utc.with_ymd_and_hms(2026, 3, 1, 4, 0, 0).unwrap();
        let due = |last: Option<DateTime<Utc>>| (last < Some(slot)).then_some(slot);
        let Claim::Claimed(run) = book.claim("web", RunKind::Backup, "local", due).unwrap() else {
            panic!("not claimed")
        };
        // This process is alive: the instance is busy.
        assert!(matches!(
            book.claim("web", RunKind::Copy, "s3", |_| Some(slot))
                .unwrap(),
            Claim::Busy(_)
        ));
        let mut done = run.clone();
        done.outcome = RunOutcome::Ok;
        done.ended_at = Some(Utc::now());
        book.finish(&done).unwrap();
        assert_eq!(
            book.claim("web", RunKind::Backup, "local", due).unwrap(),
            Claim::NotDue
        );
        // A record of a dead process is interrupted, once.
        let conn = book.connect().unwrap();
        conn.execute(
            "INSERT INTO schedule_runs (instance, kind, slot, started_at, outcome, store, pid, host)
             VALUES ('db', 'backup', ?1, ?1, 'running', 'local', 999999999, 'h')",
            [ts(slot)],
        )
        .unwrap();
        let rec = book.recover().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].outcome, RunOutcome::Interrupted);
        assert!(book.recover().unwrap().is_empty());
        let runs = book.runs(None, 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].outcome, RunOutcome::Interrupted);
        assert_eq!(runs[1].outcome, RunOutcome::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_processes_claim_a_missed_slot_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.db");
        ScheduleBook::open(&path).unwrap();
        let cron = parse_cron("k", "0 */4 * * *").unwrap();
        let created = Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let path = path.clone();
            let cron = cron.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let book = ScheduleBook::open(&path).unwrap();
                let r = book
                    .claim(&format!("i{}", i % 2), RunKind::Backup, "local", |last| {
                        due_slot(&cron, Tz::UTC, last.unwrap_or(created), now)
                    })
                    .unwrap();
                if let Claim::Claimed(mut run) = r {
                    run.outcome = RunOutcome::Ok;
                    book.finish(&run).unwrap();
                    1
                } else {
                    0
                }
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            claimed += t.await.unwrap();
        }
        assert_eq!(claimed, 2, "one claim per instance for six missed slots");
        let runs = ScheduleBook::open(&path).unwrap().runs(None, 10).unwrap();
        assert!(runs
            .iter()
            .all(|r| r.slot == Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()));
    }

    #[test]
    fn units_run_this_binary_on_this_root() {
        let (service, timer) = systemd_units(
            Path::new("/usr/local/bin/girofle"),
            Path::new("/var/lib/girofle"),
            Duration::from_secs(300),
        );
        assert!(service
            .contains("ExecStart=/usr/local/bin/girofle --root /var/lib/girofle schedule run-due"));
        assert!(
            timer.contains("OnUnitActiveSec=5min")
                && timer.contains("Unit=girofle-run-due.service")
        );
        let cron = cron_entry(
            Path::new("/usr/bin/girofle"),
            Path::new("/srv/g root"),
            parse_every("5m").unwrap(),
        )
        .unwrap();
        assert!(
            cron.contains(
                "*/5 * * * * root /usr/bin/girofle --root \"/srv/g root\" schedule run-due"
            ),
            "{cron}"
        );
        assert!(cron_entry(
            Path::new("/g"),
            Path::new("/r"),
            parse_every("30s").unwrap()
        )
        .is_err());
        assert!(parse_every("5x").is_err());
        // The README shows exactly what is written.
        let readme = include_str!("../../../README.md");
        let (service, timer) = systemd_units(
            Path::new("/usr/local/bin/girofle"),
            Path::new("/var/lib/girofle"),
            Duration::from_secs(300),
        );
        let cron = cron_entry(
            Path::new("/usr/local/bin/girofle"),
            Path::new("/var/lib/girofle"),
            Duration::from_secs(300),
        )
        .unwrap();
        for text in [service, timer, cron] {
            assert!(readme.contains(&text), "the README lacks:\n{text}");
        }
        assert_eq!(parse_every("1h").unwrap(), Duration::from_secs(3600));
    }
}
