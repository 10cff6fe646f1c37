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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapters::runtime::{ContainerRuntimeExt, ExecSpec};
use crate::error::{Error, IoContext, Result};
use crate::model::context::Context;
use crate::model::instance::{self, InstanceDirs, InstanceRecord, Stage};
use crate::model::lock::InstanceLock;

/// Directory of the intent records, under the root.
pub const RUN_DIR: &str = "run";
const INTENT_SUFFIX: &str = ".intent.json";
/// Staging files of local stores younger than this may belong to a live writer (a
/// `backup copy` does not hold the instance lock).
const STORE_STAGING_MIN_AGE: Duration = Duration::from_secs(60);
/// How long recovery waits for a `gitlab-ctl reconfigure` left running in a container to
/// end (a `gitlab-backup` takes far longer: `[backup] gitlab_backup_timeout_secs`).
const GITLAB_PROCESS_WAIT: Duration = Duration::from_secs(300);
/// How often recovery says on stderr that it still waits for a `gitlab-backup`.
const GITLAB_BACKUP_PROGRESS: Duration = Duration::from_secs(60);
/// How long a `gitlab-backup` recovery stopped may take to exit.
const GITLAB_BACKUP_STOP_WAIT: Duration = Duration::from_secs(30);
/// How long the passing recovery of `list`, `show` and each daemon tick waits for a
/// `gitlab-backup` that still runs before leaving it for later: they must not hang for
/// the hours a backup takes (`girofle recover` and operations on the instance wait).
const GITLAB_BACKUP_PASSING_WAIT: Duration = Duration::from_secs(15);

/// Whether recovery may wait as long as a GitLab process left running needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Patience {
    /// `girofle recover`, an operation on the instance: wait (bounded by the settings).
    Full,
    /// `list`, `show`, a daemon tick: wait briefly, else leave it for the next time.
    Passing,
}
/// Command lines of a running `gitlab-backup create` (GitLab's and the stand-in's).
const GITLAB_BACKUP_PROCESSES: &str =
    "[g]itlab-backup create|[g]itlab:backup:create|[s]tandin.py backup create";
/// Command lines of a running `gitlab-ctl reconfigure` and of the Chef (Cinc) run it
/// starts.
const RECONFIGURE_PROCESSES: &str =
    "[c]tl reconfigure|[o]mnibus-ctl .* reconfigure|[c]inc-client|[c]hef-client";
/// How long recovery tries to delete the unlisted objects of an interrupted backup (a
/// remote store may be unreachable: that must not hold the instance back).
const STORE_CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The interrupted operation, and what is needed to roll it back or forward.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub(crate) enum Operation {
    /// Commissioning: the record is reserved (`commissioning`), the directories and the
    /// container are ours.
    Commission,
    /// A cold backup: the container may be stopped.
    ColdBackup {
        was_running: bool,
        store: String,
        id: String,
    },
    /// An online backup: GitLab's tar and staging parts may sit in its backup path (the
    /// tar's directory, in the data volume), its tar in `holder`.
    OnlineBackup {
        store: String,
        id: String,
        gitlab_tar: PathBuf,
        holder: PathBuf,
    },
    /// A restore; in place when `previous` is set (the previous directories go to
    /// `aside` during the swap).
    Restore {
        previous: Option<InstanceRecord>,
        staging: PathBuf,
        aside: PathBuf,
    },
    /// A decommission of `record`: its data goes to `archive_to` (or is deleted).
    Decommission {
        record: InstanceRecord,
        purge: bool,
        archive_to: Option<PathBuf>,
    },
    /// A reconfigure to `settings`: gitlab.rb may hold them, and GitLab may run with
    /// them, while the inventory still has the previous ones. Rolled back to
    /// `previous_rb` unless the inventory already has `settings`. Phase `restored`: the
    /// operation put `previous_rb` back and GitLab applied it.
    Reconfigure {
        previous_rb: String,
        settings: BTreeMap<String, String>,
    },
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Commission => "commission",
            Operation::ColdBackup { .. } => "cold-backup",
            Operation::OnlineBackup { .. } => "online-backup",
            Operation::Restore { .. } => "restore",
            Operation::Decommission { .. } => "decommission",
            Operation::Reconfigure { .. } => "reconfigure",
        }
    }
}

/// An intent record as stored in `<root>/run/<instance>.intent.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub instance: String,
    #[serde(flatten)]
    pub op: Operation,
    pub phase: String,
    pub pid: u32,
    pub host: String,
    pub started_at: DateTime<Utc>,
}

/// A written intent record, held by the running operation. Dropping it leaves the
/// record in place (the operation was cancelled: recovery will see it); [`finish`]
/// removes it.
///
/// [`finish`]: IntentFile::finish
#[derive(Debug)]
pub(crate) struct IntentFile {
    path: PathBuf,
    intent: Intent,
}

fn intent_path(root: &Path, name: &str) -> PathBuf {
    root.join(RUN_DIR).join(format!("{name}{INTENT_SUFFIX}"))
}

impl IntentFile {
    /// Writes the record of `op` on `instance`, in `phase`. The caller holds the lock.
    pub(crate) fn begin(root: &Path, instance: &str, op: Operation, phase: &str) -> Result<Self> {
        let file = IntentFile {
            path: intent_path(root, instance),
            intent: Intent {
                instance: instance.to_string(),
                op,
                phase: phase.to_string(),
                pid: std::process::id(),
                host: crate::model::journal::host_name(),
                started_at: Utc::now(),
            },
        };
        file.write()?;
        Ok(file)
    }

    fn write(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.intent)
            .map_err(|e| Error::backend("intent record", e))?;
        crate::fsutil::write_atomic(&self.path, &bytes, 0o600)
    }

    /// Records that the operation moved on to `phase`.
    pub(crate) fn phase(&mut self, phase: &str) -> Result<()> {
        self.intent.phase = phase.to_string();
        self.write()
    }

    /// The operation ended and the instance is as it should be: the record goes.
    pub(crate) fn finish(self) -> Result<()> {
        remove_intent(&self.path)
    }
}

fn remove_intent(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove intent record", path, e)),
    }
}

/// How a recovery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryOutcome {
    /// The interrupted operation was undone: the instance is as before it.
    RolledBack,
    /// The interrupted operation was completed.
    Finished,
    /// Only leftovers (staging files, temporary objects) were removed.
    Cleaned,
    /// Recovery could not put things right; its intent record stays for the next try.
    Failed,
}

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

impl Recovery {
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

fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}

fn remove_tree(path: &Path, actions: &mut Vec<String>) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            if m.is_dir() {
                std::fs::remove_dir_all(path).ctx("delete", path)?;
            } else {
                std::fs::remove_file(path).ctx("delete", path)?;
            }
            actions.push(format!("removed `{}`", path.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

impl Context {
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
        match self.intent_names() {
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
        let lock = InstanceLock::acquire(&self.root, name, operation)?;
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
        if Box::pin(self.undo(&file.intent, Patience::Full, &mut actions))
            .await
            .is_ok()
        {
            let _ = file.finish();
        }
    }

    /// Names of the instances that have an intent record.
    fn intent_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join(RUN_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.ctx("read directory", &dir)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(INTENT_SUFFIX) {
                if instance::validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn recover_intents(&self, patience: Patience) -> Result<Vec<Recovery>> {
        let mut out = Vec::new();
        for name in self.intent_names()? {
            // A live operation holds the lock: its record is not ours to touch.
            let Ok(lock) = InstanceLock::acquire(&self.root, &name, "recover") else {
                continue;
            };
            out.extend(self.recover_instance(&name, patience).await);
            drop(lock);
        }
        Ok(out)
    }

    /// Recovers the intent record of `name`, if any. The caller holds the lock.
    async fn recover_instance(&self, name: &str, patience: Patience) -> Vec<Recovery> {
        let path = intent_path(&self.root, name);
        // Read after taking the lock: the operation may have ended meanwhile.
        let intent: Intent = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(i) => i,
                Err(e) => {
                    return vec![Recovery {
                        instance: name.to_string(),
                        operation: "unknown".into(),
                        phase: None,
                        pid: None,
                        host: None,
                        started_at: None,
                        actions: Vec::new(),
                        outcome: RecoveryOutcome::Failed,
                        error: Some(format!(
                            "intent record `{}` is unreadable ({e}); inspect the instance and delete the record",
                            path.display()
                        )),
                    }]
                }
            },
            Err(_) => return Vec::new(),
        };
        let mut actions = Vec::new();
        let arguments = json!({
            "instance": name,
            "operation": intent.op.name(),
            "phase": intent.phase,
            "pid": intent.pid,
            "host": intent.host,
            "started_at": intent.started_at,
        });
        // Settings the inventory may no longer (or not yet) hold: GitLab's output about
        // them must not reach the journal or the caller.
        let values = match &intent.op {
            Operation::Reconfigure { settings, .. } => instance::setting_values(settings.values()),
            Operation::Decommission { record, .. } => {
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
            Ok(outcome) => match remove_intent(&path) {
                Ok(()) => (outcome, None),
                Err(e) => (RecoveryOutcome::Failed, Some(e.to_string())),
            },
            Err(e) => (RecoveryOutcome::Failed, Some(e.to_string())),
        };
        vec![Recovery {
            instance: name.to_string(),
            operation: intent.op.name().to_string(),
            phase: Some(intent.phase.clone()),
            pid: Some(intent.pid),
            host: Some(intent.host.clone()),
            started_at: Some(intent.started_at),
            actions,
            outcome,
            error,
        }]
    }

    /// Rolls the interrupted operation back, or forward when it went past the point of
    /// no return.
    async fn undo(
        &self,
        intent: &Intent,
        patience: Patience,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = intent.instance.as_str();
        let dirs = InstanceDirs::new(&self.root, name);
        match &intent.op {
            Operation::Commission => {
                let record = self.inventory.load().await?.instances.get(name).cloned();
                if let Some(r) = record.filter(|r| r.stage == Stage::Active) {
                    // It was done but for removing the record.
                    self.ensure_running(&r, false, actions).await?;
                    return Ok(RecoveryOutcome::Finished);
                }
                self.remove_container(name, actions).await?;
                remove_tree(&dirs.base, actions)?;
                self.forget(name).await?;
                actions.push("freed the reserved name and addresses".into());
                Ok(RecoveryOutcome::RolledBack)
            }
            Operation::ColdBackup {
                was_running,
                store,
                id,
            } => {
                if *was_running {
                    let record = self.inventory.load().await?.instances.get(name).cloned();
                    if let Some(record) = record {
                        self.ensure_running(&record, true, actions).await?;
                    }
                }
                self.drop_unlisted_backup(store, id, actions).await;
                Ok(RecoveryOutcome::RolledBack)
            }
            Operation::OnlineBackup {
                store,
                id,
                gitlab_tar,
                holder,
            } => {
                // `docker exec` outlives its client: GitLab may still be writing its tar
                // and staging parts into its backup path (the tar's directory).
                let gitlab_dir = gitlab_tar.parent().unwrap_or(&dirs.data);
                let tar_name = gitlab_tar
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.wait_gitlab_backup(intent, gitlab_dir, &tar_name, patience, actions)
                    .await?;
                let removed =
                    crate::ops::gitlab_backup::remove_parts(&dirs.data, gitlab_dir, &tar_name)?;
                if !removed.is_empty() {
                    actions.push(format!(
                        "removed GitLab's tar and staging parts from `{}`: {}",
                        gitlab_dir.display(),
                        removed.join(", ")
                    ));
                }
                remove_tree(holder, actions)?;
                self.drop_unlisted_backup(store, id, actions).await;
                Ok(RecoveryOutcome::RolledBack)
            }
            Operation::Restore {
                previous,
                staging,
                aside,
            } => {
                let outcome = self
                    .undo_restore(
                        name,
                        previous.as_ref(),
                        staging,
                        aside,
                        &intent.phase,
                        actions,
                    )
                    .await?;
                Ok(outcome)
            }
            Operation::Decommission {
                record,
                purge,
                archive_to,
            } => {
                self.undo_decommission(
                    record,
                    *purge,
                    archive_to.as_deref(),
                    &intent.phase,
                    actions,
                )
                .await
            }
            Operation::Reconfigure {
                previous_rb,
                settings,
            } => {
                self.undo_reconfigure(name, previous_rb, settings, &intent.phase, actions)
                    .await
            }
        }
    }

    async fn undo_reconfigure(
        &self,
        name: &str,
        previous_rb: &str,
        settings: &BTreeMap<String, String>,
        phase: &str,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let Some(record) = self.inventory.load().await?.instances.get(name).cloned() else {
            // Decommissioned since: nothing of it is left to put right.
            return Ok(RecoveryOutcome::Cleaned);
        };
        // A `gitlab-ctl reconfigure` the dead process started goes on: let it end first,
        // or it could apply the new file after the previous one is back.
        self.wait_gitlab_process(name, RECONFIGURE_PROCESSES, "GitLab's reconfigure", actions)
            .await;
        if record.settings == *settings {
            // It was done but for removing this record.
            self.ensure_serving(&record, actions).await?;
            return Ok(RecoveryOutcome::Finished);
        }
        if phase != "restored" {
            let rb = InstanceDirs::new(&self.root, name).config.join("gitlab.rb");
            if std::fs::read_to_string(&rb).ok().as_deref() != Some(previous_rb) {
                crate::fsutil::write_atomic(&rb, previous_rb.as_bytes(), 0o600)?;
                actions.push(format!("put the previous `{}` back", rb.display()));
            }
            // GitLab may run with the new settings already: apply the previous ones.
            let container = record.container_name();
            if self
                .runtime
                .inspect(&container)
                .await?
                .is_some_and(|i| i.running)
            {
                let reconfigure = ExecSpec {
                    cmd: vec!["gitlab-ctl".into(), "reconfigure".into()],
                    ..Default::default()
                };
                self.runtime.exec_ok(&container, &reconfigure).await?;
                actions.push("ran `gitlab-ctl reconfigure` with the previous settings".into());
            }
        }
        self.ensure_serving(&record, actions).await?;
        Ok(RecoveryOutcome::RolledBack)
    }

    /// After a reconfigure: a running container must answer probes that started after
    /// it (Puma restarts in the background once reconfigure has exited, so the engine's
    /// health state is stale); a stopped or missing one is brought up.
    async fn ensure_serving(
        &self,
        record: &InstanceRecord,
        actions: &mut Vec<String>,
    ) -> Result<()> {
        let container = record.container_name();
        if !self
            .runtime
            .inspect(&container)
            .await?
            .is_some_and(|i| i.running)
        {
            return self.ensure_running(record, false, actions).await;
        }
        crate::model::health::wait_fresh(
            &*self.runtime,
            &container,
            "a reconfigure",
            None,
            crate::model::health::SETTLE,
            self.boot_timeout(),
        )
        .await?;
        actions.push(format!("container `{container}` answers its health check"));
        Ok(())
    }

    async fn undo_restore(
        &self,
        name: &str,
        previous: Option<&InstanceRecord>,
        staging: &Path,
        aside: &Path,
        phase: &str,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let dirs = InstanceDirs::new(&self.root, name);
        if phase == "committed" {
            // The restored instance passed its checks and is recorded: only the previous
            // directories and the staging are left to remove.
            remove_tree(aside, actions)?;
            remove_tree(staging, actions)?;
            return Ok(RecoveryOutcome::Finished);
        }
        match previous {
            Some(previous) if phase == "extracting" || phase == "reserved" => {
                // Nothing of the instance was touched yet.
                remove_tree(staging, actions)?;
                self.ensure_running(previous, false, actions).await?;
            }
            Some(previous) => {
                self.remove_container(name, actions).await?;
                // While `aside` exists, the instance directory holds (part of) the
                // restored data, never the previous one.
                if aside.exists() {
                    remove_tree(&dirs.base, actions)?;
                    std::fs::rename(aside, &dirs.base).ctx("move back", &dirs.base)?;
                    crate::fsutil::sync_dir(dirs.base.parent().unwrap_or(&self.root))?;
                    actions.push(format!(
                        "moved the previous directories back from `{}`",
                        aside.display()
                    ));
                }
                remove_tree(staging, actions)?;
                self.put_record(previous).await?;
                self.bring_up(previous, &dirs, None).await?;
                actions.push("re-created the previous container; it is healthy".into());
            }
            None => {
                self.remove_container(name, actions).await?;
                // Before the swap the directory, if any, is not the restore's.
                if phase != "extracting" && phase != "reserved" {
                    remove_tree(&dirs.base, actions)?;
                }
                remove_tree(staging, actions)?;
                let reserved = self
                    .inventory
                    .load()
                    .await?
                    .instances
                    .get(name)
                    .is_some_and(|r| r.stage == Stage::Commissioning);
                if reserved {
                    self.forget(name).await?;
                    actions.push("freed the reserved name and addresses".into());
                }
            }
        }
        Ok(RecoveryOutcome::RolledBack)
    }

    async fn undo_decommission(
        &self,
        record: &InstanceRecord,
        purge: bool,
        archive_to: Option<&Path>,
        phase: &str,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = record.name.as_str();
        let dirs = InstanceDirs::new(&self.root, name);
        let past_return = !dirs.base.exists() || (purge && phase == "purging");
        if !past_return {
            // The data is still in place: the decommission is undone.
            let known = self.inventory.load().await?.instances.contains_key(name);
            if !known {
                self.put_record(record).await?;
                actions.push("put the inventory record back".into());
            }
            self.ensure_running(record, true, actions).await?;
            return Ok(RecoveryOutcome::RolledBack);
        }
        self.remove_container(name, actions).await?;
        if purge {
            remove_tree(&dirs.base, actions)?;
        } else if let Some(dest) = archive_to {
            if dest.exists() {
                actions.push(format!("the data is kept in `{}`", dest.display()));
            }
        }
        let known = self.inventory.load().await?.instances.contains_key(name);
        if known {
            self.forget(name).await?;
            actions.push("removed the inventory record".into());
        }
        Ok(RecoveryOutcome::Finished)
    }

    /// Makes sure the instance's container exists, runs and is healthy (re-created from
    /// the record when it is gone). `stop_in_flight`: the interrupted operation may have
    /// sent a `docker stop`, which the engine carries out after its client died (the
    /// container still looks running and healthy during the grace period, then exits):
    /// stop it ourselves first, which waits for that stop too, then start it.
    async fn ensure_running(
        &self,
        record: &InstanceRecord,
        stop_in_flight: bool,
        actions: &mut Vec<String>,
    ) -> Result<()> {
        let container = record.container_name();
        let dirs = InstanceDirs::new(&self.root, &record.name);
        if stop_in_flight
            && self
                .runtime
                .inspect(&container)
                .await?
                .is_some_and(|i| i.running)
        {
            self.runtime.stop(&container, self.stop_grace()).await?;
            actions.push(format!(
                "stopped container `{container}` first: a stop the interrupted operation sent may still be under way"
            ));
        }
        // A `docker stop` sent by the dead process may still be running in the engine:
        // the container then looks running, and exits while we wait. Start it again.
        let mut attempts = 3;
        loop {
            attempts -= 1;
            let waited = match self.runtime.inspect(&container).await? {
                None => {
                    let up = self.bring_up(record, &dirs, None).await;
                    if up.is_ok() {
                        actions.push(format!("re-created container `{container}`"));
                    }
                    up
                }
                Some(info) => {
                    if !info.running {
                        self.runtime.start(&container).await?;
                        actions.push(format!("started container `{container}`"));
                    }
                    crate::model::health::wait_booted(
                        &*self.runtime,
                        &container,
                        self.boot_timeout(),
                    )
                    .await
                }
            };
            match waited {
                Ok(()) => {
                    actions.push(format!("container `{container}` is healthy"));
                    return Ok(());
                }
                Err(e) => {
                    let running = self
                        .runtime
                        .inspect(&container)
                        .await?
                        .is_some_and(|i| i.running);
                    if attempts == 0 || running {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn remove_container(&self, name: &str, actions: &mut Vec<String>) -> Result<()> {
        let container = instance::container_name(name);
        if self.runtime.inspect(&container).await?.is_some() {
            ignore_missing(self.runtime.remove(&container, true).await)?;
            actions.push(format!("removed container `{container}`"));
        }
        Ok(())
    }

    /// Waits (bounded) for a GitLab process a dead operation started in the instance's
    /// container (`docker exec` outlives its client) to end: `pattern` is an extended
    /// regular expression of command lines, each with its first letter in brackets so
    /// the probe does not match itself. GitLab's pid files are written only once a
    /// process has started, so command lines are what is looked at, and the container
    /// must look quiet twice in a row: `docker exec` may still be starting one.
    async fn wait_gitlab_process(
        &self,
        name: &str,
        pattern: &str,
        what: &str,
        actions: &mut Vec<String>,
    ) {
        let container = instance::container_name(name);
        let probe = ExecSpec {
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < \"$f\" 2>/dev/null; echo; done | grep -Eq '{pattern}'"),
            ],
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + GITLAB_PROCESS_WAIT;
        let mut waited = false;
        let mut quiet = 0;
        while quiet < 2 && tokio::time::Instant::now() < deadline {
            match self.runtime.exec(&container, &probe).await {
                Ok(out) if out.exit_code == 0 => {
                    waited = true;
                    quiet = 0;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) => {
                    quiet += 1;
                    if quiet < 2 {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                }
                // No container, or not running: nothing can be writing.
                Err(_) => break,
            }
        }
        if waited {
            actions.push(format!("waited for {what} to end"));
        }
    }

    /// Waits for a `gitlab-backup create` that the interrupted online backup `intent`
    /// left running in the container (`docker exec` outlives its client) to end: its
    /// files can only be removed once it no longer writes them. GitLab's backups take
    /// minutes to hours, so it may run up to `[backup] gitlab_backup_timeout_secs`
    /// counted from the online backup's start; past that it is stopped (the whole process
    /// tree, inside the container), saying so. With full patience this says on stderr at
    /// once and every minute how long it waits and how big GitLab's files are so far;
    /// passing recoveries (`list`, `show`, daemon ticks) wait only briefly.
    ///
    /// # Errors
    /// `Conflict` when a passing recovery leaves it running for later (the intent record
    /// stays), or when it still runs after being stopped.
    async fn wait_gitlab_backup(
        &self,
        intent: &Intent,
        gitlab_dir: &Path,
        tar_name: &str,
        patience: Patience,
        actions: &mut Vec<String>,
    ) -> Result<()> {
        let name = intent.instance.as_str();
        let container = instance::container_name(name);
        let bound = Duration::from_secs(self.config.backup.gitlab_backup_timeout_secs);
        let bound_text = crate::service::status::human_age(bound.as_secs() as i64);
        let age = |d: Duration| crate::service::status::human_age(d.as_secs() as i64);
        // How long GitLab's backup has run: since the online backup started it.
        let has_run = || {
            (Utc::now() - intent.started_at)
                .to_std()
                .unwrap_or(Duration::ZERO)
        };
        let started = tokio::time::Instant::now();
        let mut next_report = started;
        let mut seen = false;
        let mut stopped_at = None;
        let mut quiet = 0;
        loop {
            let pids = match self.gitlab_backup_pids(&container).await {
                Some(p) => p,
                // No container, or not running: nothing can be writing.
                None => break,
            };
            if pids.is_empty() {
                // `docker exec` may still be starting it: quiet twice in a row.
                quiet += 1;
                if quiet >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
                continue;
            }
            quiet = 0;
            let now = tokio::time::Instant::now();
            let waited = now - started;
            let ran = has_run();
            if let Some(at) = stopped_at {
                if now - at > GITLAB_BACKUP_STOP_WAIT {
                    return Err(Error::Conflict(format!(
                        "GitLab's backup in container `{container}` (pids {}) still runs after being stopped; stop it (`docker restart {container}`), then run `girofle recover`",
                        pids.join(" ")
                    )));
                }
            } else if ran >= bound {
                let message = format!(
                    "GitLab's backup, left running by the interrupted online backup, had run {} (`[backup] gitlab_backup_timeout_secs` = {bound_text}): stopped it (pids {} in container `{container}`)",
                    age(ran),
                    pids.join(" ")
                );
                eprintln!("girofle: instance `{name}`: {message}");
                self.stop_gitlab_backup(&container, &pids).await;
                actions.push(message);
                stopped_at = Some(now);
                continue;
            } else if patience == Patience::Passing {
                if waited >= GITLAB_BACKUP_PASSING_WAIT {
                    return Err(Error::Conflict(format!(
                        "GitLab's backup, left running in container `{container}` by the interrupted online backup, still runs ({} so far, {} of tar and staging parts in its backup path); its files are removed once it ends, or once it has run {bound_text} (`[backup] gitlab_backup_timeout_secs`) and is stopped; `girofle recover` waits for that",
                        age(ran),
                        human_bytes(crate::ops::gitlab_backup::parts_size(gitlab_dir, tar_name)),
                    )));
                }
            } else if now >= next_report {
                let so_far =
                    human_bytes(crate::ops::gitlab_backup::parts_size(gitlab_dir, tar_name));
                if seen {
                    eprintln!(
                        "girofle: instance `{name}`: still waiting for GitLab's backup after {} (it has run {}, {so_far} of tar and staging parts in its backup path so far; stopped once it has run {bound_text})",
                        age(waited),
                        age(ran),
                    );
                } else {
                    eprintln!(
                        "girofle: instance `{name}`: GitLab's backup, started by an interrupted online backup (pid {} on {} at {}), is still running in the container; waiting for it to end before removing its files (it has run {}, {so_far} in its backup path so far; stopped once it has run {bound_text}, `[backup] gitlab_backup_timeout_secs`)",
                        intent.pid,
                        intent.host,
                        intent.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        age(ran),
                    );
                }
                next_report = now + GITLAB_BACKUP_PROGRESS;
            }
            seen = true;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if seen && stopped_at.is_none() {
            actions.push(format!(
                "waited {} for GitLab's backup to end",
                age(started.elapsed())
            ));
        }
        Ok(())
    }

    /// The pids of the `gitlab-backup create` processes in a container (empty: none),
    /// `None` when the container cannot be looked into (gone, or not running). Command
    /// lines are what is looked at: GitLab's pid file is written only once it started.
    async fn gitlab_backup_pids(&self, container: &str) -> Option<Vec<String>> {
        let probe = ExecSpec {
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("for d in /proc/[0-9]*; do printf '%s ' \"${{d#/proc/}}\"; tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null; echo; done | grep -E '{GITLAB_BACKUP_PROCESSES}' | cut -d' ' -f1"),
            ],
            ..Default::default()
        };
        match self.runtime.exec(container, &probe).await {
            Ok(out) if out.exit_code == 0 => Some(
                out.output
                    .split_whitespace()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                    .map(str::to_string)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Stops `gitlab-backup` processes and everything they started (tar, gzip, pg_dump):
    /// TERM (GitLab's own clean-up may run), then KILL what is left.
    async fn stop_gitlab_backup(&self, container: &str, pids: &[String]) {
        let script = "all=\"$*\"; more=1
while [ -n \"$more\" ]; do more=
  for s in /proc/[0-9]*/stat; do
    read -r pid comm state ppid rest < \"$s\" 2>/dev/null || continue
    case \" $all \" in *\" $pid \"*) continue;; esac
    case \" $all \" in *\" $ppid \"*) all=\"$all $pid\"; more=1;; esac
  done
done
kill -TERM $all 2>/dev/null; sleep 3; kill -KILL $all 2>/dev/null; true";
        let mut cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
            "stop-gitlab-backup".to_string(),
        ];
        cmd.extend(pids.iter().cloned());
        let _ = self
            .runtime
            .exec(
                container,
                &ExecSpec {
                    cmd,
                    ..Default::default()
                },
            )
            .await;
    }

    /// Deletes the objects of a backup that never got its manifest (best effort, bounded).
    async fn drop_unlisted_backup(&self, store: &str, id: &str, actions: &mut Vec<String>) {
        let Ok(store) = self.store(Some(store)) else {
            return;
        };
        let cleanup = async {
            if store
                .head(&crate::ops::backup::manifest_key(id))
                .await
                .is_ok()
            {
                return None;
            }
            let mut removed = Vec::new();
            for key in [
                crate::ops::backup::archive_key(id),
                crate::ops::backup::index_key(id),
                crate::ops::backup::signature_key(id),
            ] {
                if store.head(&key).await.is_ok() && store.delete(&key).await.is_ok() {
                    removed.push(key);
                }
            }
            Some(removed)
        };
        match tokio::time::timeout(STORE_CLEANUP_TIMEOUT, cleanup).await {
            Ok(Some(removed)) if !removed.is_empty() => actions.push(format!(
                "deleted the unfinished backup objects {} from store `{}`",
                removed.join(", "),
                store.name()
            )),
            Ok(_) => {}
            Err(_) => actions.push(format!(
                "could not reach store `{}` to delete the unfinished objects of `{id}` (they are not listed)",
                store.name()
            )),
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
                None => match InstanceLock::acquire(&self.root, &name, "recover") {
                    Ok(l) => Some(l),
                    Err(_) => continue,
                },
            };
            if intent_path(&self.root, &name).exists() {
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

/// A size as people read it: `512 B`, `3.4 MiB`, `1.2 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
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

/// Local stores stage objects as `<name>#<digits>` (see `store`).
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

    #[test]
    fn intent_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = IntentFile::begin(
            dir.path(),
            "web",
            Operation::ColdBackup {
                was_running: true,
                store: "local".into(),
                id: "web/20261125T220000Z".into(),
            },
            "stopping",
        )
        .unwrap();
        f.phase("archiving").unwrap();
        let path = intent_path(dir.path(), "web");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let read: Intent = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read.phase, "archiving");
        assert!(matches!(
            read.op,
            Operation::ColdBackup {
                was_running: true,
                ..
            }
        ));
        f.finish().unwrap();
        assert!(!path.exists());
    }
}
