//! Scheduled backups and copies (R-BAK-4): each instance's schedule, the book of runs,
//! which work is due, and running it once (`girofle schedule run-due`).
//!
//! A schedule is a backup cron and a copy cron (5 fields, or 6 with seconds first) in an
//! IANA time zone, the backup strategy, the remote store copies go to, and a retention
//! policy applied after every run. Instances without a schedule of their own follow the
//! `[schedule]` section of girofle.toml, counted from their creation. Schedules and runs
//! live where the inventory does (`Book`): in the root's database (`ScheduleBook`), or on
//! etcd beside the fleet (`EtcdBook`), so several Girofle processes (a daemon, a systemd
//! timer, an operator; on etcd, on several machines) agree on what ran: claiming a slot is
//! one transaction, and only the newest missed slot is ever claimed, so a downtime is
//! caught up once. The long-lived loop is `daemon`'s job; this module does one pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::{InstanceRecord, Stage};
use crate::ops::backup::BackupOptions;

mod book;
mod etcd_book;
mod timer;

pub use crate::model::policy::*;
pub use book::*;
pub use etcd_book::EtcdBook;
pub use timer::*;

/// The schedule book where the fleet is: the root's SQLite file, or etcd beside the fleet
/// (see `etcd_book`). Cloning shares the connection (and, on etcd, the leases of this
/// process's claims).
#[derive(Clone, Debug)]
pub enum Book {
    Sqlite(ScheduleBook),
    Etcd(EtcdBook),
}

impl Book {
    /// The instance's own schedule, if it has one.
    ///
    /// # Errors
    /// `Backend` when the backend fails, `Corrupt` when the schedule does not parse.
    pub async fn overrides(&self, instance: &str) -> Result<Option<ScheduleOverrides>> {
        match self {
            Book::Sqlite(b) => b.overrides(instance),
            Book::Etcd(b) => b.overrides(instance).await,
        }
    }

    /// Every instance's own schedule.
    ///
    /// # Errors
    /// `Backend` when the backend fails, `Corrupt` when a schedule does not parse.
    pub async fn all_overrides(&self) -> Result<BTreeMap<String, ScheduleOverrides>> {
        match self {
            Book::Sqlite(b) => b.all_overrides(),
            Book::Etcd(b) => b.all_overrides().await,
        }
    }

    /// Applies `change` to the instance's own schedule after `check`ing the result, and
    /// returns it.
    ///
    /// # Errors
    /// Whatever `check` returns (nothing is written then), `Backend` when the backend
    /// fails.
    pub async fn update_overrides(
        &self,
        instance: &str,
        change: &ScheduleOverrides,
        check: impl Fn(&ScheduleOverrides) -> Result<()>,
    ) -> Result<ScheduleOverrides> {
        match self {
            Book::Sqlite(b) => b.update_overrides(instance, change, check),
            Book::Etcd(b) => b.update_overrides(instance, change, check).await,
        }
    }

    /// Runs, newest first (of one instance, or all), at most `limit`.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn runs(&self, instance: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        match self {
            Book::Sqlite(b) => b.runs(instance, limit),
            Book::Etcd(b) => b.runs(instance, limit).await,
        }
    }

    /// The newest run of an instance and kind.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn last_run(&self, instance: &str, kind: RunKind) -> Result<Option<RunRecord>> {
        match self {
            Book::Sqlite(b) => b.last_run(instance, kind),
            Book::Etcd(b) => b.last_run(instance, kind).await,
        }
    }

    /// The newest slot recorded for an instance and kind.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn last_slot(&self, instance: &str, kind: RunKind) -> Result<Option<DateTime<Utc>>> {
        match self {
            Book::Sqlite(b) => b.last_slot(instance, kind),
            Book::Etcd(b) => b.last_slot(instance, kind).await,
        }
    }

    /// Marks runs whose process is gone `interrupted`, and returns them.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn recover(&self) -> Result<Vec<RunRecord>> {
        match self {
            Book::Sqlite(b) => b.recover(),
            Book::Etcd(b) => b.recover().await,
        }
    }

    /// Claims the due slot of an instance and kind, once across processes (and, on etcd,
    /// machines); see [`ScheduleBook::claim`].
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn claim(
        &self,
        instance: &str,
        kind: RunKind,
        store: &str,
        due: impl Fn(Option<DateTime<Utc>>) -> Option<DateTime<Utc>>,
    ) -> Result<Claim> {
        match self {
            Book::Sqlite(b) => b.claim(instance, kind, store, due),
            Book::Etcd(b) => b.claim(instance, kind, store, due).await,
        }
    }

    /// Records how a claimed run ended.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn finish(&self, run: &RunRecord) -> Result<()> {
        match self {
            Book::Sqlite(b) => b.finish(run),
            Book::Etcd(b) => b.finish(run).await,
        }
    }

    /// Forgets a claim that was not run: its slot is due again.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn release(&self, run: &RunRecord) -> Result<()> {
        match self {
            Book::Sqlite(b) => b.release(run),
            Book::Etcd(b) => b.release(run).await,
        }
    }

    /// Marks this process's `running` runs `interrupted`, and returns them.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn interrupt_own(&self, why: &str) -> Result<Vec<RunRecord>> {
        match self {
            Book::Sqlite(b) => b.interrupt_own(why),
            Book::Etcd(b) => b.interrupt_own(why).await,
        }
    }

    /// The whole book: every own schedule and every run.
    ///
    /// # Errors
    /// `Backend` when the backend fails, `Corrupt` when something does not parse.
    pub async fn dump(&self) -> Result<BookDump> {
        match self {
            Book::Sqlite(b) => b.dump(),
            Book::Etcd(b) => b.dump().await,
        }
    }

    /// Makes the book hold `dump` and nothing else.
    ///
    /// # Errors
    /// `Backend` when the backend fails.
    pub async fn replace(&self, dump: &BookDump) -> Result<()> {
        match self {
            Book::Sqlite(b) => b.replace(dump),
            Book::Etcd(b) => b.replace(dump).await,
        }
    }
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

impl Context {
    /// The schedule book of this fleet: beside the inventory, on etcd or in the root's
    /// SQLite file.
    pub(crate) fn schedule_book(&self) -> Result<Book> {
        match self.inventory.as_etcd() {
            Some(etcd) => Ok(Book::Etcd(EtcdBook::new(etcd.clone()))),
            None => Ok(Book::Sqlite(ScheduleBook::open(
                &self.root.join("inventory.db"),
            )?)),
        }
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
        let own = self.schedule_book()?.overrides(name).await?;
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
                })
                .await?;
            Ok(own.apply(&default))
        })
        .await
    }

    /// Every instance's schedule, last runs and next runs.
    pub(crate) async fn schedules(&self) -> Result<Vec<ScheduleStatus>> {
        let fleet = self.inventory.load().await?;
        let book = self.schedule_book()?;
        let own = book.all_overrides().await?;
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
                    self.next_run(&book, record, &schedule, kind, now).await?
                } else {
                    None
                };
                next.insert(kind, when);
            }
            out.push(ScheduleStatus {
                instance: record.name.clone(),
                own: own.contains_key(&record.name),
                last_backup: book.last_run(&record.name, RunKind::Backup).await?,
                last_copy: book.last_run(&record.name, RunKind::Copy).await?,
                next_backup: next[&RunKind::Backup],
                next_copy: next[&RunKind::Copy],
                schedule,
            });
        }
        Ok(out)
    }

    async fn next_run(
        &self,
        book: &Book,
        record: &InstanceRecord,
        schedule: &Schedule,
        kind: RunKind,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let Some(cron) = schedule.cron(kind)? else {
            return Ok(None);
        };
        let tz = schedule.tz()?;
        let anchor = anchor(book.last_slot(&record.name, kind).await?, record);
        Ok(due_slot(&cron, tz, anchor, now).or_else(|| next_slot(&cron, tz, now.max(anchor))))
    }

    /// Claims the due slot of one instance and kind (see [`ScheduleBook::claim`]).
    pub(crate) async fn claim_due(
        &self,
        book: &Book,
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
        if due(book.last_slot(&record.name, kind).await?).is_none() {
            return Ok(Claim::NotDue);
        }
        book.claim(&record.name, kind, &store, due).await
    }

    /// Runs a claimed run to its end and records how it ended (journaled as
    /// `scheduled-backup` / `scheduled-copy`). A run the instance lock refuses (another
    /// operation holds the instance) is released, not failed: its slot is due again.
    pub(crate) async fn run_claimed(
        &self,
        book: &Book,
        mut run: RunRecord,
        schedule: &Schedule,
    ) -> Result<Ended> {
        // An instance busy with another operation (a manual backup, a restore) is not a
        // failure: look before starting, so nothing is journaled or notified for it.
        if let Err(e) = self.take_lock(&run.instance, "scheduled run").await {
            if is_busy(&e) {
                book.release(&run).await?;
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
                book.release(&run).await?;
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
                book.finish(&run).await?;
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
            match self.take_lock(&run.instance, "scheduled retention").await {
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
        let _lock = self.take_lock(&run.instance, "scheduled copy").await?;
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
        let recovered = book.recover().await?;
        self.journal_interrupted(&recovered).await;
        let fleet = self.inventory.load().await?;
        let own = book.all_overrides().await?;
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
                    let claim = match self
                        .claim_due(&book, &record, &schedule, kind, Utc::now())
                        .await
                    {
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
    use crate::adapters::store::StoreConfig;
    use chrono::{TimeZone, Timelike};
    use chrono_tz::Tz;
    use std::path::Path;

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

    /// What `inventory migrate` relies on: a book written whole into another reads the
    /// same (schedules, ids, times, outcomes, lists), replaces what was there, and ids
    /// go on after the copied ones.
    #[test]
    fn a_book_replaced_by_another_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let from = ScheduleBook::open(&dir.path().join("from.db")).unwrap();
        let hourly = ScheduleOverrides {
            backup: Some("0 * * * *".into()),
            keep_last: Some(3),
            ..Default::default()
        };
        from.update_overrides("web", &hourly, |_| Ok(())).unwrap();
        let at = |h| Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap();
        for (h, outcome) in [(4, RunOutcome::Ok), (5, RunOutcome::Failed)] {
            let Claim::Claimed(mut run) = from
                .claim("web", RunKind::Backup, "local", |_| Some(at(h)))
                .unwrap()
            else {
                panic!("not claimed")
            };
            run.outcome = outcome;
            run.ended_at = Some(at(h) + chrono::Duration::milliseconds(1500));
            run.pruned = vec!["web-1".into()];
            run.error = (outcome == RunOutcome::Failed).then(|| "boom".into());
            from.finish(&run).unwrap();
        }
        let to = ScheduleBook::open(&dir.path().join("to.db")).unwrap();
        to.update_overrides("gone", &hourly, |_| Ok(())).unwrap();
        let dump = from.dump().unwrap();
        assert_eq!(dump.runs.len(), 2);
        to.replace(&dump).unwrap();
        assert_eq!(to.dump().unwrap(), dump);
        assert_eq!(to.overrides("gone").unwrap(), None, "replaced, not merged");
        let Claim::Claimed(next) = to
            .claim("web", RunKind::Backup, "local", |_| Some(at(6)))
            .unwrap()
        else {
            panic!("not claimed")
        };
        assert!(
            next.id > dump.runs[0].id,
            "{} after {}",
            next.id,
            dump.runs[0].id
        );
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

    /// The daemon's claim of due work (`claim_due`) on a root opened on the doubles: an
    /// hourly backup of an instance created two hours ago is due for the newest hour
    /// only, once, whoever claims; while it runs, the instance's copy waits (busy); a
    /// disabled schedule or an instance not active is never due.
    #[tokio::test]
    async fn due_work_is_claimed_once_for_active_instances_only() {
        let b = crate::ops::tests::Bench::new();
        let mut record = b.commissioned("web").await;
        let now = Utc::now();
        record.created_at = now - chrono::Duration::hours(2);
        b.ctx.put_record(&record).await.unwrap();
        let mut schedule = b.ctx.default_schedule();
        schedule.backup = "0 * * * *".into();
        schedule.copy = Some("0 * * * *".into());
        schedule.store = Some("offsite".into());
        schedule.enabled = true;
        let book = b.ctx.schedule_book().unwrap();
        let other = Book::Sqlite(ScheduleBook::open(&b.root.join("inventory.db")).unwrap());
        let claim = |book: &Book, record: &InstanceRecord, schedule: &Schedule| {
            let (book, record, schedule) = (book.clone(), record.clone(), schedule.clone());
            let ctx = b.ctx.clone();
            async move {
                ctx.claim_due(&book, &record, &schedule, RunKind::Backup, now)
                    .await
                    .unwrap()
            }
        };

        let mut disabled = schedule.clone();
        disabled.enabled = false;
        assert_eq!(claim(&book, &record, &disabled).await, Claim::NotDue);
        let mut reserved = record.clone();
        reserved.stage = Stage::Commissioning;
        assert_eq!(claim(&book, &reserved, &schedule).await, Claim::NotDue);

        let Claim::Claimed(mut run) = claim(&book, &record, &schedule).await else {
            panic!("an hourly backup two hours after creation is due")
        };
        let newest_hour = now
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap();
        assert_eq!(run.slot, newest_hour, "only the newest missed slot");
        assert_eq!(
            claim(&other, &record, &schedule).await,
            Claim::NotDue,
            "another claimer finds the slot taken"
        );
        assert!(
            matches!(
                b.ctx
                    .claim_due(&other, &record, &schedule, RunKind::Copy, now)
                    .await
                    .unwrap(),
                Claim::Busy(_)
            ),
            "one run per instance at a time: its due copy waits"
        );
        run.outcome = RunOutcome::Ok;
        run.ended_at = Some(Utc::now());
        book.finish(&run).await.unwrap();
        assert_eq!(
            claim(&other, &record, &schedule).await,
            Claim::NotDue,
            "the slot ran"
        );
    }

    /// Two claimers (each with its own connection, as two processes) racing for one due
    /// slot: exactly one wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_racing_claimers_one_wins() {
        let b = crate::ops::tests::Bench::new();
        let mut record = b.commissioned("web").await;
        let now = Utc::now();
        record.created_at = now - chrono::Duration::hours(2);
        let mut schedule = b.ctx.default_schedule();
        schedule.backup = "0 * * * *".into();
        schedule.enabled = true;
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (ctx, record, schedule) = (b.ctx.clone(), record.clone(), schedule.clone());
            let db = b.root.join("inventory.db");
            tasks.push(tokio::spawn(async move {
                let book = Book::Sqlite(ScheduleBook::open(&db).unwrap());
                ctx.claim_due(&book, &record, &schedule, RunKind::Backup, now)
                    .await
                    .unwrap()
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Claimed(_) => claimed += 1,
                Claim::Busy(_) | Claim::NotDue => {}
            }
        }
        assert_eq!(claimed, 1, "the due slot is claimed exactly once");
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
        let readme = include_str!("../../../../README.md");
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
