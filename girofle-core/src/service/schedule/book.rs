//! The book of scheduled runs: what ran when, claimed by whom and how it ended, in the
//! inventory database (`<root>/inventory.db`, tables `schedules` and `schedule_runs`).
//! Safe for concurrent processes: claiming a slot is one `BEGIN IMMEDIATE` transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::Cron;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::instance::InstanceRecord;
use crate::model::policy::{RunKind, ScheduleOverrides};

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

/// A whole book: every instance's own schedule and every run, newest first (what
/// `inventory migrate` moves between the backends, and compares once moved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookDump {
    pub overrides: BTreeMap<String, ScheduleOverrides>,
    pub runs: Vec<RunRecord>,
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

pub(crate) fn ts(t: DateTime<Utc>) -> String {
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
    pub(crate) fn connect(&self) -> Result<Connection> {
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

impl ScheduleBook {
    /// The whole book.
    ///
    /// # Errors
    /// `Backend` when the database fails, `Corrupt` when a row does not parse.
    pub fn dump(&self) -> Result<BookDump> {
        Ok(BookDump {
            overrides: self.all_overrides()?,
            runs: self.runs(None, usize::MAX)?,
        })
    }

    /// Makes the book hold `dump` and nothing else, in one transaction. Runs keep their
    /// ids; a running one would lose its process (the caller refuses to move those).
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn replace(&self, dump: &BookDump) -> Result<()> {
        let list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            let e = |e| db_err(&self.path, e);
            tx.execute_batch("DELETE FROM schedules; DELETE FROM schedule_runs;")
                .map_err(e)?;
            let now = ts(Utc::now());
            for (name, o) in &dump.overrides {
                let text =
                    serde_json::to_string(o).map_err(|e| Error::backend(BOOK, e.to_string()))?;
                tx.execute(
                    "INSERT INTO schedules (instance, schedule, updated_at) VALUES (?1, ?2, ?3)",
                    params![name, text, now],
                )
                .map_err(e)?;
            }
            for r in &dump.runs {
                tx.execute(
                    &format!(
                        "INSERT INTO schedule_runs ({RUN_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                    ),
                    params![
                        r.id,
                        r.instance,
                        r.kind.as_str(),
                        ts(r.slot),
                        ts(r.started_at),
                        r.ended_at.map(ts),
                        r.outcome.as_str(),
                        r.store,
                        r.backup_id,
                        list(&r.copied),
                        list(&r.pruned),
                        r.error,
                        r.pid,
                        r.host
                    ],
                )
                .map_err(e)?;
            }
            Ok(())
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
pub(crate) fn anchor(last_slot: Option<DateTime<Utc>>, record: &InstanceRecord) -> DateTime<Utc> {
    last_slot.map_or(record.created_at, |l| l.max(record.created_at))
}

/// The first slot of `cron` (read in `tz`) after `after`.
pub fn next_slot(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
