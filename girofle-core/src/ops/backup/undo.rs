//! The recovery steps of backups: an interrupted cold backup starts GitLab again, an
//! interrupted online backup waits for (or stops) the `gitlab-backup` it left running and
//! removes its parts; either way the backup that never got its manifest is deleted.

use std::path::Path;
use std::time::Duration;

use crate::adapters::runtime::ExecSpec;
use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::{self, InstanceDirs};
use crate::model::intent::Operation;
use crate::model::intent::{remove_tree, Intent, Patience, RecoveryOutcome};
use crate::text::human_bytes;
use chrono::Utc;

/// How often recovery says on stderr that it still waits for a `gitlab-backup`.
const GITLAB_BACKUP_PROGRESS: Duration = Duration::from_secs(60);

/// How long a `gitlab-backup` recovery stopped may take to exit.
const GITLAB_BACKUP_STOP_WAIT: Duration = Duration::from_secs(30);

/// How long the passing recovery of `list`, `show` and each daemon tick waits for a
/// `gitlab-backup` that still runs before leaving it for later: they must not hang for
/// the hours a backup takes (`girofle recover` and operations on the instance wait).
const GITLAB_BACKUP_PASSING_WAIT: Duration = Duration::from_secs(15);

/// Command lines of a running `gitlab-backup create` (GitLab's and the stand-in's).
const GITLAB_BACKUP_PROCESSES: &str =
    "[g]itlab-backup create|[g]itlab:backup:create|[s]tandin.py backup create";

/// How long recovery tries to delete the unlisted objects of an interrupted backup (a
/// remote store may be unreachable: that must not hold the instance back).
const STORE_CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

impl Context {
    /// An interrupted cold backup: GitLab started again if it ran, the unlisted backup
    /// deleted.
    pub(crate) async fn undo_cold_backup(
        &self,
        name: &str,
        was_running: bool,
        store: &str,
        id: &str,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        if was_running {
            let record = self.inventory.load().await?.instances.get(name).cloned();
            if let Some(record) = record {
                self.ensure_running(&record, true, actions).await?;
            }
        }
        self.drop_unlisted_backup(store, id, actions).await;
        Ok(RecoveryOutcome::RolledBack)
    }

    /// An interrupted online backup: GitLab's tar and staging parts removed from its
    /// backup path once its `gitlab-backup` is gone, the holder and the unlisted backup
    /// deleted.
    pub(crate) async fn undo_online_backup(
        &self,
        intent: &Intent,
        patience: Patience,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let Operation::OnlineBackup {
            store,
            id,
            gitlab_tar,
            holder,
            ..
        } = &intent.op
        else {
            return Err(Error::backend("intent record", "not an online backup"));
        };
        let dirs = InstanceDirs::new(&self.root, &intent.instance);
        // `docker exec` outlives its client: GitLab may still be writing its tar
        // and staging parts into its backup path (the tar's directory).
        let gitlab_dir = gitlab_tar.parent().unwrap_or(&dirs.data);
        let tar_name = gitlab_tar
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.wait_gitlab_backup(intent, gitlab_dir, &tar_name, patience, actions)
            .await?;
        let removed = crate::ops::gitlab_backup::remove_parts(&dirs.data, gitlab_dir, &tar_name)?;
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
    pub(crate) async fn wait_gitlab_backup(
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
        let bound_text = crate::text::human_age(bound.as_secs() as i64);
        let age = |d: Duration| crate::text::human_age(d.as_secs() as i64);
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
    pub(crate) async fn gitlab_backup_pids(&self, container: &str) -> Option<Vec<String>> {
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
    pub(crate) async fn stop_gitlab_backup(&self, container: &str, pids: &[String]) {
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
    pub(crate) async fn drop_unlisted_backup(
        &self,
        store: &str,
        id: &str,
        actions: &mut Vec<String>,
    ) {
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
}
