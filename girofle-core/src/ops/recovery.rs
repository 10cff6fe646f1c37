//! Crash recovery: putting an instance back as it should be after an operation on it was
//! interrupted (the process killed, the machine lost power, the task cancelled).
//!
//! Before any step that leaves an instance not as it should be (a cold backup stopping
//! the container, an online backup's tar in the data volume, an in-place restore moving
//! the previous directories aside, a decommission, a commission creating a container, a
//! reconfigure rewriting gitlab.rb), the operation writes an *intent record*
//! `<root>/run/<instance>.intent.json` (0600, written whole or not at all) saying what it
//! does, its phase and what is needed to roll back or forward; it updates the phase as it
//! moves on, and removes the record when it ends, successfully or with a failure it
//! handled. A record whose instance lock
//! (`lock`) can be taken belongs to an operation that is gone: [`Girofle::recover`]
//! finishes or rolls it back, journals what it did and removes the record. It also
//! removes leftovers of dead operations: `<root>/staging/*` entries and the staging
//! files of local stores.
//!
//! Recovery only ever touches instances whose lock it holds, so it is safe to run while
//! other operations run, and it is idempotent. It runs by itself: every mutating
//! operation on an instance recovers that instance first (right after taking its lock),
//! `list` does when intent records exist, and so does each tick of the daemon.
//! Not responsible for the schedule's book of runs (`schedule` marks dead runs
//! `interrupted` itself).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::{self};
pub use crate::model::intent::RecoveryOutcome;
use crate::model::intent::{remove_tree, Intent, IntentFile, Operation, Patience};
use crate::model::lock::InstanceLock;
use crate::model::warning::{NextStep, Warning};
use crate::ops::fleet::InstanceStatus;

pub use crate::model::intent::RUN_DIR;
/// Staging files of local stores younger than this may belong to a live writer (a
/// `backup copy` does not hold the instance lock).
const STORE_STAGING_MIN_AGE: Duration = Duration::from_secs(60);

/// What recovery did about one interrupted operation or leftover.
#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub instance: String,
    /// The operation that was interrupted (`cold-backup`, `online-backup`, `restore`,
    /// `decommission`, `commission`), or `leftovers` for files of dead operations.
    pub operation: String,
    /// The phase it was in.
    pub phase: Option<String>,
    /// The process that ran it, and where and when it started.
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// What recovery did, in order.
    pub actions: Vec<String>,
    pub outcome: RecoveryOutcome,
    pub error: Option<String>,
}

/// The instances of a root, with what recovery did first (see
/// [`crate::Girofle::list_with_recoveries`]).
#[derive(Clone, Debug, Serialize)]
pub struct InstanceListing {
    pub instances: Vec<InstanceStatus>,
    pub recoveries: Vec<Recovery>,
}

impl Recovery {
    /// A recovery of `instance` that could not start: `error` says why.
    fn failed(instance: &str, error: String) -> Recovery {
        Recovery {
            instance: instance.to_string(),
            operation: "unknown".into(),
            phase: None,
            pid: None,
            host: None,
            started_at: None,
            actions: Vec::new(),
            outcome: RecoveryOutcome::Failed,
            error: Some(error),
        }
    }
}

impl InstanceListing {
    /// One warning per interrupted operation recovery could not put right.
    #[must_use]
    pub fn warnings(&self) -> Vec<Warning> {
        self.recoveries
            .iter()
            .filter_map(Recovery::warning)
            .collect()
    }
}

impl Recovery {
    /// When this recovery failed, the warning a front shows (fix it, recover again).
    #[must_use]
    pub fn warning(&self) -> Option<Warning> {
        self.failure().map(|message| Warning {
            message,
            next: NextStep::Recover,
        })
    }

    /// When this recovery failed: what could not be recovered and why, naming the
    /// instance, for a front end to say (the caller adds what to do).
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        (self.outcome == RecoveryOutcome::Failed).then(|| {
            format!(
                "instance `{}`: the interrupted `{}` could not be recovered: {}",
                self.instance,
                self.operation,
                self.error.as_deref().unwrap_or("unknown error")
            )
        })
    }
}

impl Context {
    /// The instances of this root, reconciled with what the engine really has.
    pub(crate) async fn list(&self) -> Result<Vec<InstanceStatus>> {
        Ok(self.list_with_recoveries().await?.0)
    }

    /// [`Girofle::list`], with what recovery did first: operations that died half-way
    /// are put right before the listing (one directory read when there are none), so it
    /// shows what will stay. A recovery that failed leaves its instance as it found it
    /// (often listed `missing`) and is reported here with its error, for the caller to
    /// say so; `girofle recover` tries again.
    pub(crate) async fn list_with_recoveries(
        &self,
    ) -> Result<(Vec<InstanceStatus>, Vec<Recovery>)> {
        // Boxed, both: their futures are large, and a caller's whole chain of futures sits
        // on one thread's stack.
        let recoveries = Box::pin(self.recover_pending()).await;
        Ok((Box::pin(self.listing()).await?, recoveries))
    }

    /// Finishes or rolls back every interrupted operation whose instance is not held by a
    /// live one, and removes the leftovers of dead operations (staging entries, local
    /// stores' staging files). Idempotent; safe while other operations run. Each
    /// recovery is journaled.
    pub(crate) async fn recover(&self) -> Result<Vec<Recovery>> {
        let mut out = self.recover_intents(Patience::Full).await?;
        out.extend(self.recover_leftovers(None).await?);
        Ok(out)
    }

    /// The cheap form run by `list` and the daemon: only when intent records exist (one
    /// directory read otherwise), and only them.
    pub(crate) async fn recover_pending(&self) -> Vec<Recovery> {
        match self.intent_names().await {
            Ok(names) if names.is_empty() => Vec::new(),
            _ => self
                .recover_intents(Patience::Passing)
                .await
                .unwrap_or_default(),
        }
    }

    /// Takes the lock of instance `name` for `operation`, then recovers whatever an
    /// interrupted operation left on it. Every mutating operation on an instance starts
    /// here.
    ///
    /// # Errors
    /// `Conflict` when another operation holds the instance, or when an interrupted
    /// operation on it could not be recovered (saying what failed).
    pub(crate) async fn lock_instance(&self, name: &str, operation: &str) -> Result<InstanceLock> {
        let lock = self.take_lock(name, operation).await?;
        // Boxed: recovery is rarely needed and would otherwise grow every operation's
        // future (deep `join!`s of operations overflowed test stacks).
        let mut recoveries = Box::pin(self.recover_instance(name, Patience::Full)).await;
        recoveries.extend(
            Box::pin(self.recover_leftovers(Some(name)))
                .await
                .unwrap_or_default(),
        );
        if let Some(failure) = recoveries.iter().find_map(Recovery::failure) {
            return Err(Error::Conflict(format!(
                "{failure}; fix that and run `girofle recover`"
            )));
        }
        Ok(lock)
    }

    /// After a failed operation: rolls back what its intent record describes, at once,
    /// and removes the record when that worked (otherwise recovery tries again later).
    pub(crate) async fn settle(&self, file: IntentFile) {
        let mut actions = Vec::new();
        if Box::pin(self.undo(file.intent(), Patience::Full, &mut actions))
            .await
            .is_ok()
        {
            let _ = file.finish().await;
        }
    }

    async fn recover_intents(&self, patience: Patience) -> Result<Vec<Recovery>> {
        let mut out = Vec::new();
        for name in self.intent_names().await? {
            // A live operation holds the lock: its record is not ours to touch.
            let Ok(lock) = self.take_lock(&name, "recover").await else {
                continue;
            };
            out.extend(self.recover_instance(&name, patience).await);
            drop(lock);
        }
        Ok(out)
    }

    /// Recovers the intent record of `name`, if any. The caller holds the lock.
    async fn recover_instance(&self, name: &str, patience: Patience) -> Vec<Recovery> {
        // Read after taking the lock: the operation may have ended meanwhile.
        let (bytes, what) = match self.read_intent(name).await {
            Ok(read) => read,
            Err(e) => {
                return vec![Recovery::failed(
                    name,
                    format!("{e}; run `girofle recover` again when the inventory answers"),
                )]
            }
        };
        let intent: Intent = match bytes.map(|b| serde_json::from_slice(&b)) {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                return vec![Recovery::failed(
                    name,
                    format!("intent record {what} is unreadable ({e}); inspect the instance and delete the record"),
                )]
            }
            None => return Vec::new(),
        };
        if !self.reaches(&intent).await {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let arguments = json!({
            "instance": name,
            "operation": intent.op.name(),
            "phase": intent.op.phase_name(),
            "pid": intent.pid,
            "host": intent.host,
            "started_at": intent.started_at,
        });
        // Settings the inventory may no longer (or not yet) hold: GitLab's output about
        // them must not reach the journal or the caller.
        let values = match &intent.op {
            Operation::Reconfigure { settings, .. } => instance::setting_values(settings.values()),
            Operation::Decommission { record, .. } | Operation::Move { record, .. } => {
                instance::setting_values(record.settings.values())
            }
            Operation::Restore {
                previous: Some(record),
                ..
            } => instance::setting_values(record.settings.values()),
            _ => Vec::new(),
        };
        let result = self
            .journaled("recover", arguments, json!({}), async {
                let undone = self.undo(&intent, patience, &mut actions).await;
                undone.map_err(|e| e.scrubbed(&values))
            })
            .await;
        let (outcome, error) = match result {
            Ok(outcome) => match self.remove_intent(name).await {
                Ok(()) => (outcome, None),
                Err(e) => (RecoveryOutcome::Failed, Some(e.to_string())),
            },
            Err(e) => (RecoveryOutcome::Failed, Some(e.to_string())),
        };
        vec![Recovery {
            instance: name.to_string(),
            operation: intent.op.name().to_string(),
            phase: Some(intent.op.phase_name().to_string()),
            pid: Some(intent.pid),
            host: Some(intent.host.clone()),
            started_at: Some(intent.started_at),
            actions,
            outcome,
            error,
        }]
    }

    /// Whether this machine can put `intent` right: an instance on a named host, every
    /// machine of the fleet reaches; one on the local host of the machine that wrote the
    /// record (on etcd, another may read it), only that machine does: the record waits
    /// for it.
    async fn reaches(&self, intent: &Intent) -> bool {
        if intent.host == crate::model::journal::host_name() {
            return true;
        }
        let record = match &intent.op {
            Operation::Decommission { record, .. } | Operation::Move { record, .. } => {
                Some(record.clone())
            }
            _ => self
                .inventory
                .load()
                .await
                .ok()
                .and_then(|f| f.instances.get(&intent.instance).cloned()),
        };
        record.is_some_and(|r| r.host.is_some())
    }

    /// Rolls the interrupted operation back, or forward when it went past the point of
    /// no return: each operation's own recovery step, chosen by its intent record.
    async fn undo(
        &self,
        intent: &Intent,
        patience: Patience,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = intent.instance.as_str();
        // The instance's host: the inventory's record says, or the decommission's own copy
        // of it (a record already forgotten).
        let record = match &intent.op {
            Operation::Decommission { record, .. } => Some(record.clone()),
            _ => self.inventory.load().await?.instances.get(name).cloned(),
        };
        let here = match &record {
            Some(r) => self.at(r).await?,
            None => self.clone(),
        };
        Box::pin(here.undo_on_host(intent, patience, actions)).await
    }

    /// [`Context::undo`] on the instance's host.
    async fn undo_on_host(
        &self,
        intent: &Intent,
        patience: Patience,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = intent.instance.as_str();
        match &intent.op {
            Operation::Commission { .. } => self.undo_commission(name, actions).await,
            Operation::ColdBackup {
                was_running,
                store,
                id,
                ..
            } => {
                self.undo_cold_backup(name, *was_running, store, id, actions)
                    .await
            }
            Operation::OnlineBackup { .. } => {
                self.undo_online_backup(intent, patience, actions).await
            }
            Operation::Restore {
                phase,
                previous,
                staging,
                aside,
            } => {
                self.undo_restore(name, previous.as_ref(), staging, aside, *phase, actions)
                    .await
            }
            Operation::Decommission {
                phase,
                record,
                purge,
                archive_to,
            } => {
                self.undo_decommission(record, *purge, archive_to.as_deref(), *phase, actions)
                    .await
            }
            Operation::Reconfigure {
                phase,
                previous_rb,
                settings,
            } => {
                self.undo_reconfigure(name, previous_rb, settings, *phase, actions)
                    .await
            }
            Operation::Move {
                phase,
                record,
                target,
                aside,
            } => {
                self.undo_move(record, target, aside.as_deref(), *phase, actions)
                    .await
            }
        }
    }

    /// Removes `<root>/staging` entries and local stores' staging files left by dead
    /// operations, of one instance or of all whose lock is free. The previous directories
    /// of a restore (`aside-*`) are never deleted here: only their intent record says
    /// whether they are still needed.
    async fn recover_leftovers(&self, only: Option<&str>) -> Result<Vec<Recovery>> {
        let mut by_instance: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
        let staging = self.root.join("staging");
        if let Ok(entries) = std::fs::read_dir(&staging) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = staging_owner(&file) else {
                    continue;
                };
                if only.is_some_and(|o| o != name) {
                    continue;
                }
                by_instance.entry(name).or_default().push(entry.path());
            }
        }
        for dir in self.local_store_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if instance::validate_name(&name).is_err() || only.is_some_and(|o| o != name) {
                    continue;
                }
                for file in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let f = file.file_name().to_string_lossy().into_owned();
                    let stale = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age >= STORE_STAGING_MIN_AGE);
                    if is_store_staging(&f) && stale {
                        by_instance
                            .entry(name.clone())
                            .or_default()
                            .push(file.path());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (name, paths) in by_instance {
            // The caller of `lock_instance` holds the lock already.
            let lock = match only {
                Some(_) => None,
                None => match self.take_lock(&name, "recover").await {
                    Ok(l) => Some(l),
                    Err(_) => continue,
                },
            };
            if self
                .read_intent(&name)
                .await
                .map_or(true, |(b, _)| b.is_some())
            {
                continue;
            }
            let mut actions = Vec::new();
            let mut error = None;
            for p in paths {
                let file = p.file_name().unwrap_or_default().to_string_lossy();
                if file.starts_with("aside-") {
                    actions.push(format!(
                        "kept `{}`: it holds the previous directories of an interrupted restore of an older Girofle; move it back to instances/{name} or delete it",
                        p.display()
                    ));
                    continue;
                }
                if let Err(e) = remove_tree(&p, &mut actions) {
                    error = Some(e.to_string());
                }
            }
            drop(lock);
            if actions.is_empty() && error.is_none() {
                continue;
            }
            let recovery = Recovery {
                instance: name.clone(),
                operation: "leftovers".into(),
                phase: None,
                pid: None,
                host: None,
                started_at: None,
                actions,
                outcome: if error.is_some() {
                    RecoveryOutcome::Failed
                } else {
                    RecoveryOutcome::Cleaned
                },
                error,
            };
            let _ = self.journal.append(
                &crate::model::journal::Record {
                    operation: "recover".into(),
                    arguments: json!({ "instance": name, "operation": "leftovers", "actions": recovery.actions }),
                    user: crate::model::journal::current_user(),
                    host: crate::model::journal::host_name(),
                    pid: std::process::id(),
                    girofle_version: crate::VERSION.to_string(),
                    versions: json!({}),
                    started_at: Utc::now(),
                    ended_at: Utc::now(),
                    outcome: if recovery.error.is_some() { "error" } else { "ok" }.into(),
                    error_kind: recovery.error.as_ref().map(|_| "io".to_string()),
                    error: recovery.error.clone(),
                },
                &self.known_secrets(),
            );
            out.push(recovery);
        }
        Ok(out)
    }

    /// Directories of the stores on local disks (`local` and `file://` ones).
    fn local_store_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.join("backups")];
        for store in self.config.stores.values() {
            if let Some(path) = store.url.strip_prefix("file://") {
                if path.starts_with('/') {
                    dirs.push(PathBuf::from(path));
                }
            }
        }
        dirs
    }
}

/// The instance a `<root>/staging` entry belongs to: `restore-NAME-STAMP`,
/// `aside-NAME-STAMP`, `backup-NAME-TS`.
fn staging_owner(file: &str) -> Option<String> {
    let rest = ["restore-", "aside-", "backup-"]
        .iter()
        .find_map(|p| file.strip_prefix(p))?;
    let (name, _stamp) = rest.rsplit_once('-')?;
    instance::validate_name(name).ok()?;
    Some(name.to_string())
}

/// Local stores stage objects as `<name>#<digits>` (see `store::local`).
fn is_store_staging(file: &str) -> bool {
    file.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_entries_name_their_instance() {
        assert_eq!(
            staging_owner("restore-web-2-20261125T220000.123Z").as_deref(),
            Some("web-2")
        );
        assert_eq!(
            staging_owner("backup-web-1764000000").as_deref(),
            Some("web")
        );
        assert_eq!(staging_owner("state-export.tmp"), None);
        assert!(is_store_staging("20261125T220000Z.tar.zst#12"));
        assert!(!is_store_staging("20261125T220000Z.tar.zst"));
    }
}
