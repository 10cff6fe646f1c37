//! Intent records (R-OPS-3): before any step that leaves an instance not as it should be,
//! an operation writes `<root>/run/<instance>.intent.json` (0600, whole or not at all)
//! saying what it does, how far it got and what is needed to roll it back or forward;
//! it moves the phase on as it goes and removes the record when it ends. With the
//! inventory on etcd the record is a key beside the fleet instead (`intents/<instance>`),
//! so `girofle recover` on another machine finishes or rolls back the operation of a
//! machine that died; its writes are fenced by the instance's lock like the fleet's.
//!
//! The operations write these records (`ops::fleet`, `ops::backup`, `ops::restore`) and
//! `ops::recovery` reads the ones a dead process left. Each operation's phases are an enum
//! here, so what one file writes and another reads is checked by the compiler. The JSON
//! is the first wave's: `operation` and `phase` as kebab-case strings at the top level.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::adapters::inventory::Inventory;
use crate::error::{Error, IoContext, Result};
use crate::model::context::Context;
use crate::record::InstanceRecord;

/// Directory of the intent records, under the root.
pub const RUN_DIR: &str = "run";
pub(crate) const INTENT_SUFFIX: &str = ".intent.json";

/// A phase of one kind of operation.
pub(crate) trait Phase: Copy {
    /// The phase as the record writes it.
    fn as_str(self) -> &'static str;
    /// Sets the phase of `op` when `op` is of this phase's kind; says whether it was.
    fn set_in(self, op: &mut Operation) -> bool;
}

macro_rules! phases {
    ($(#[$doc:meta])* $name:ident for $variant:ident { $($(#[$vdoc:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub(crate) enum $name {
            $($(#[$vdoc])* #[serde(rename = $s)] $v,)+
        }

        impl Phase for $name {
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }

            fn set_in(self, op: &mut Operation) -> bool {
                match op {
                    Operation::$variant { phase, .. } => {
                        *phase = self;
                        true
                    }
                    _ => false,
                }
            }
        }
    };
}

phases! {
    /// A commission's phases.
    CommissionPhase for Commission {
        /// The record is reserved; directories and container are being made.
        Creating = "creating",
    }
}

phases! {
    /// A cold backup's phases.
    ColdBackupPhase for ColdBackup {
        /// The container may be stopped while its directories are archived.
        Archiving = "archiving",
    }
}

phases! {
    /// An online backup's phases.
    OnlineBackupPhase for OnlineBackup {
        /// `gitlab-backup create` runs in the container.
        GitlabBackup = "gitlab-backup",
        /// GitLab's tar and /etc/gitlab are being archived into the store.
        Archiving = "archiving",
    }
}

phases! {
    /// A restore's phases.
    RestorePhase for Restore {
        /// The archive is being extracted into staging.
        Extracting = "extracting",
        /// The name and addresses are reserved in the inventory.
        Reserved = "reserved",
        /// The previous directories are being swapped with the restored ones.
        Swapping = "swapping",
        /// The restored instance is in the inventory: past the point of no return.
        Committed = "committed",
    }
}

phases! {
    /// A decommission's phases.
    DecommissionPhase for Decommission {
        /// The container is being stopped.
        Stopping = "stopping",
        /// The data is being moved under `decommissioned/`.
        Moving = "moving",
        /// The container and the record are being removed.
        Removing = "removing",
        /// The data is being deleted (`--purge`): past the point of no return.
        Purging = "purging",
    }
}

phases! {
    /// A reconfigure's phases.
    ReconfigurePhase for Reconfigure {
        /// gitlab.rb holds the new settings and GitLab is applying them.
        Applying = "applying",
        /// The operation put the previous gitlab.rb back and GitLab applied it.
        Restored = "restored",
    }
}

phases! {
    /// A move's phases.
    MovePhase for Move {
        /// The old container is stopped and its directories stream to the new host.
        Copying = "copying",
        /// The new container boots on the new host; GitLab's checks run.
        Starting = "starting",
        /// The inventory names the new host: past the point of no return.
        Switched = "switched",
    }
}

/// The interrupted operation, and what is needed to roll it back or forward.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub(crate) enum Operation {
    /// Commissioning: the record is reserved (`commissioning`), the directories and the
    /// container are ours.
    Commission { phase: CommissionPhase },
    /// A cold backup: the container may be stopped.
    ColdBackup {
        phase: ColdBackupPhase,
        was_running: bool,
        store: String,
        id: String,
    },
    /// An online backup: GitLab's tar and staging parts may sit in its backup path (the
    /// tar's directory, in the data volume), its tar in `holder`.
    OnlineBackup {
        phase: OnlineBackupPhase,
        store: String,
        id: String,
        gitlab_tar: PathBuf,
        holder: PathBuf,
    },
    /// A restore; in place when `previous` is set (the previous directories go to
    /// `aside` during the swap).
    Restore {
        phase: RestorePhase,
        previous: Option<InstanceRecord>,
        staging: PathBuf,
        aside: PathBuf,
    },
    /// A decommission of `record`: its data goes to `archive_to` (or is deleted).
    Decommission {
        phase: DecommissionPhase,
        record: InstanceRecord,
        purge: bool,
        archive_to: Option<PathBuf>,
    },
    /// A reconfigure to `settings`: gitlab.rb may hold them, and GitLab may run with
    /// them, while the inventory still has the previous ones. Rolled back to
    /// `previous_rb` unless the inventory already has `settings`. Phase `restored`: the
    /// operation put `previous_rb` back and GitLab applied it.
    Reconfigure {
        phase: ReconfigurePhase,
        previous_rb: String,
        settings: BTreeMap<String, String>,
    },
    /// A move of `record` to `target` (its new host and addresses): rolled back (the
    /// new host's copy removed, the old instance started) until the inventory names the
    /// new host; finished after (the old container removed, its data to `aside` on the
    /// old host, or deleted when `aside` is absent).
    Move {
        phase: MovePhase,
        record: InstanceRecord,
        target: InstanceRecord,
        aside: Option<PathBuf>,
    },
}

impl Operation {
    /// The phase the operation had reached.
    pub(crate) fn phase_name(&self) -> &'static str {
        match self {
            Operation::Commission { phase } => phase.as_str(),
            Operation::ColdBackup { phase, .. } => phase.as_str(),
            Operation::OnlineBackup { phase, .. } => phase.as_str(),
            Operation::Restore { phase, .. } => phase.as_str(),
            Operation::Decommission { phase, .. } => phase.as_str(),
            Operation::Reconfigure { phase, .. } => phase.as_str(),
            Operation::Move { phase, .. } => phase.as_str(),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Operation::Commission { .. } => "commission",
            Operation::ColdBackup { .. } => "cold-backup",
            Operation::OnlineBackup { .. } => "online-backup",
            Operation::Restore { .. } => "restore",
            Operation::Decommission { .. } => "decommission",
            Operation::Reconfigure { .. } => "reconfigure",
            Operation::Move { .. } => "move",
        }
    }
}

/// An intent record as stored in `<root>/run/<instance>.intent.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub instance: String,
    #[serde(flatten)]
    pub op: Operation,
    pub pid: u32,
    pub host: String,
    pub started_at: DateTime<Utc>,
}

/// A written intent record, held by the running operation. Dropping it leaves the
/// record in place (the operation was cancelled: recovery will see it); [`finish`]
/// removes it. With the inventory on etcd the record lives there (beside the fleet, where
/// `girofle recover` on any machine finds it), otherwise in `<root>/run/`.
///
/// [`finish`]: IntentFile::finish
#[derive(Debug)]
pub(crate) struct IntentFile {
    path: PathBuf,
    intent: Intent,
    /// The inventory, when it keeps the intent records (etcd).
    fleet: Option<Arc<dyn Inventory>>,
}

pub(crate) fn intent_path(root: &Path, name: &str) -> PathBuf {
    root.join(RUN_DIR).join(format!("{name}{INTENT_SUFFIX}"))
}

impl IntentFile {
    /// Writes the record of `op` on `instance`, in `phase`. The caller holds the lock.
    pub(crate) async fn begin(ctx: &Context, instance: &str, op: Operation) -> Result<Self> {
        let file = IntentFile {
            path: intent_path(ctx.root(), instance),
            intent: Intent {
                instance: instance.to_string(),
                op,
                pid: std::process::id(),
                host: crate::model::journal::host_name(),
                started_at: Utc::now(),
            },
            fleet: ctx
                .inventory()
                .as_etcd()
                .is_some()
                .then(|| ctx.inventory().clone()),
        };
        file.write().await?;
        Ok(file)
    }

    async fn write(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.intent)
            .map_err(|e| Error::backend("intent record", e))?;
        match self.fleet.as_ref().and_then(|f| f.as_etcd()) {
            Some(etcd) => etcd.write_intent(&self.intent.instance, Some(&bytes)).await,
            None => crate::fsutil::write_atomic(&self.path, &bytes, 0o600),
        }
    }

    /// Records that the operation moved on to `phase` (of its own kind: a phase of
    /// another operation is refused).
    pub(crate) async fn phase<P: Phase>(&mut self, phase: P) -> Result<()> {
        if !phase.set_in(&mut self.intent.op) {
            return Err(Error::backend(
                "intent record",
                format!(
                    "phase `{}` is not one of {}",
                    phase.as_str(),
                    self.intent.op.name()
                ),
            ));
        }
        self.write().await
    }

    /// What the record says.
    pub(crate) fn intent(&self) -> &Intent {
        &self.intent
    }

    /// The operation ended and the instance is as it should be: the record goes.
    pub(crate) async fn finish(self) -> Result<()> {
        match self.fleet.as_ref().and_then(|f| f.as_etcd()) {
            Some(etcd) => etcd.write_intent(&self.intent.instance, None).await,
            None => remove_intent(&self.path),
        }
    }
}

impl Context {
    /// The names of the instances with an intent record, where this fleet keeps them.
    ///
    /// # Errors
    /// `Io` when the root's directory cannot be read, `Backend` when etcd does not answer.
    pub(crate) async fn intent_names(&self) -> Result<Vec<String>> {
        if let Some(etcd) = self.inventory().as_etcd() {
            return etcd.intent_names().await;
        }
        let dir = self.root().join(RUN_DIR);
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
                if crate::record::validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// The bytes of the intent record of `name` (`None`: there is none), and where it is
    /// (for messages).
    ///
    /// # Errors
    /// `Backend` when etcd does not answer.
    pub(crate) async fn read_intent(&self, name: &str) -> Result<(Option<Vec<u8>>, String)> {
        match self.inventory().as_etcd() {
            Some(etcd) => Ok((
                etcd.intent(name).await?,
                format!("the fleet's intent record of `{name}` on etcd"),
            )),
            None => {
                let path = intent_path(self.root(), name);
                Ok((std::fs::read(&path).ok(), format!("`{}`", path.display())))
            }
        }
    }

    /// Removes the intent record of `name` (recovered).
    ///
    /// # Errors
    /// `Io` or `Backend` when it cannot be removed.
    pub(crate) async fn remove_intent(&self, name: &str) -> Result<()> {
        match self.inventory().as_etcd() {
            Some(etcd) => etcd.write_intent(name, None).await,
            None => remove_intent(&intent_path(self.root(), name)),
        }
    }
}

pub(crate) fn remove_intent(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove intent record", path, e)),
    }
}

/// Whether recovery may wait as long as a GitLab process left running needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Patience {
    /// `girofle recover`, an operation on the instance: wait (bounded by the settings).
    Full,
    /// `list`, `show`, a daemon tick: wait briefly, else leave it for the next time.
    Passing,
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

pub(crate) fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}

pub(crate) fn remove_tree(path: &Path, actions: &mut Vec<String>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A root opened on the in-memory doubles, whose intent records are files.
    fn context(dir: &Path) -> Context {
        Context::with_backends(
            dir,
            crate::model::config::Config::default(),
            Arc::new(crate::adapters::runtime::MemoryRuntime::new()),
            Arc::new(crate::adapters::inventory::MemoryInventory::default()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn intent_records_round_trip_with_their_phases() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = IntentFile::begin(
            &context(dir.path()),
            "web",
            Operation::Restore {
                phase: RestorePhase::Extracting,
                previous: None,
                staging: "/r/staging/x".into(),
                aside: "/r/staging/y".into(),
            },
        )
        .await
        .unwrap();
        f.phase(RestorePhase::Swapping).await.unwrap();
        let path = intent_path(dir.path(), "web");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The first wave's shape: operation and phase as strings at the top level.
        assert_eq!(json["operation"], "restore");
        assert_eq!(json["phase"], "swapping");
        let read: Intent = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            read.op,
            Operation::Restore {
                phase: RestorePhase::Swapping,
                ..
            }
        ));
        assert_eq!(read.op.phase_name(), "swapping");
        f.finish().await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_phase_of_another_operation_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = IntentFile::begin(
            &context(dir.path()),
            "web",
            Operation::ColdBackup {
                phase: ColdBackupPhase::Archiving,
                was_running: true,
                store: "local".into(),
                id: "web/20261125T220000Z".into(),
            },
        )
        .await
        .unwrap();
        let e = f.phase(RestorePhase::Committed).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("`committed` is not one of cold-backup"),
            "{e}"
        );
        let read: Intent =
            serde_json::from_slice(&std::fs::read(intent_path(dir.path(), "web")).unwrap())
                .unwrap();
        assert_eq!(read.op.phase_name(), "archiving");
    }

    #[test]
    fn records_of_the_first_wave_are_read() {
        // As Girofle 0.1 before typed phases wrote it.
        let old = r#"{"instance":"web","operation":"decommission","record":{"name":"web","image":"i:1.0.0-ce.0","bindings":{"ip":"127.0.0.1","http_port":1,"https_port":2,"ssh_port":3},"hostname":null,"external_url":"http://127.0.0.1:1","settings":{},"labels":{},"created_at":"2026-11-25T22:00:00Z","stage":"active"},"purge":true,"archive_to":null,"phase":"purging","pid":1,"host":"h","started_at":"2026-11-25T22:00:00Z"}"#;
        let read: Intent = serde_json::from_str(old).unwrap();
        assert!(matches!(
            read.op,
            Operation::Decommission {
                phase: DecommissionPhase::Purging,
                purge: true,
                ..
            }
        ));
        let unknown = old.replace("\"purging\"", "\"vanishing\"");
        assert!(serde_json::from_str::<Intent>(&unknown).is_err());
    }
}
