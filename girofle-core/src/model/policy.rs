//! The backup policy: how backups are taken (strategy), which are kept (retention) and
//! when they run (each instance's schedule: a backup cron and a copy cron in a time zone,
//! the store copies go to). The `[schedule]` section of girofle.toml and the overrides
//! `girofle schedule set` records; pure data and validation, no I/O. The book of runs and
//! the runner are in `service::schedule`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::adapters::store::StoreConfig;
use crate::error::{Error, Result};

/// How a backup is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// `gitlab-backup create` inside the running container, plus `/etc/gitlab`: no
    /// downtime.
    #[default]
    Online,
    /// Stop the container, archive the three directories, start it again: consistent by
    /// construction, with downtime.
    Cold,
}

impl std::str::FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "online" => Ok(Strategy::Online),
            "cold" => Ok(Strategy::Cold),
            other => Err(Error::invalid(
                "--strategy",
                format!("`{other}`: use `online` or `cold`"),
            )),
        }
    }
}

/// A retention policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
}

/// Which of `times` (newest first) a policy keeps, as indexes. Index 0 (the newest) is
/// always kept.
pub fn retained(times: &[DateTime<Utc>], policy: Retention) -> BTreeSet<usize> {
    let mut keep = BTreeSet::new();
    if times.is_empty() {
        return keep;
    }
    keep.insert(0);
    for i in 0..policy.keep_last.min(times.len()) {
        keep.insert(i);
    }
    let mut days = BTreeSet::new();
    for (i, t) in times.iter().enumerate() {
        if days.len() >= policy.keep_daily {
            break;
        }
        if days.insert(t.date_naive()) {
            keep.insert(i);
        }
    }
    let mut weeks = BTreeSet::new();
    for (i, t) in times.iter().enumerate() {
        if weeks.len() >= policy.keep_weekly {
            break;
        }
        let w = t.iso_week();
        if weeks.insert((w.year(), w.week())) {
            keep.insert(i);
        }
    }
    keep
}

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

pub(crate) fn store_names(stores: &BTreeMap<String, StoreConfig>) -> String {
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
    pub(crate) fn validate(&self, field: &str) -> Result<()> {
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

    pub(crate) fn validate(&self, stores: &BTreeMap<String, StoreConfig>) -> Result<()> {
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

    pub(crate) fn parse(s: &str) -> Option<Self> {
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
