//! The recovery steps of the instance lifecycle: what `girofle recover` does with an
//! interrupted commission, reconfigure or decommission (rolled back, or forward past the
//! point of no return), and the helpers other undos use to bring an instance back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::adapters::runtime::{ContainerRuntimeExt, ExecSpec};
use crate::error::Result;
use crate::model::context::Context;
use crate::model::instance::{self, InstanceRecord, Stage};
use crate::model::intent::{ignore_missing, remove_tree, RecoveryOutcome};
use crate::model::intent::{DecommissionPhase, ReconfigurePhase};

/// How long recovery waits for a `gitlab-ctl reconfigure` left running in a container to
/// end (a `gitlab-backup` takes far longer: `[backup] gitlab_backup_timeout_secs`).
const GITLAB_PROCESS_WAIT: Duration = Duration::from_secs(300);

/// Command lines of a running `gitlab-ctl reconfigure` and of the Chef (Cinc) run it
/// starts.
const RECONFIGURE_PROCESSES: &str =
    "[c]tl reconfigure|[o]mnibus-ctl .* reconfigure|[c]inc-client|[c]hef-client";

impl Context {
    /// An interrupted commission: finished when its record went active, else rolled
    /// back (container, directories, reserved name and addresses).
    pub(crate) async fn undo_commission(
        &self,
        name: &str,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let dirs = self.instance_dirs(name);
        let record = self.inventory.load().await?.instances.get(name).cloned();
        if let Some(r) = record.filter(|r| r.stage == Stage::Active) {
            // It was done but for removing the record.
            self.ensure_running(&r, false, actions).await?;
            return Ok(RecoveryOutcome::Finished);
        }
        self.remove_container(name, actions).await?;
        self.remove_instance_dirs(&dirs.base, actions).await?;
        self.forget(name).await?;
        actions.push("freed the reserved name and addresses".into());
        Ok(RecoveryOutcome::RolledBack)
    }

    pub(crate) async fn undo_reconfigure(
        &self,
        name: &str,
        previous_rb: &str,
        settings: &BTreeMap<String, String>,
        phase: ReconfigurePhase,
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
        if phase != ReconfigurePhase::Restored {
            let rb = self.instance_dirs(name).config.join("gitlab.rb");
            if self.files().read_text(&rb).await.ok().flatten().as_deref() != Some(previous_rb) {
                self.files()
                    .write_private(&rb, previous_rb.as_bytes())
                    .await?;
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
    pub(crate) async fn ensure_serving(
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

    pub(crate) async fn undo_decommission(
        &self,
        record: &InstanceRecord,
        purge: bool,
        archive_to: Option<&Path>,
        phase: DecommissionPhase,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = record.name.as_str();
        let dirs = self.instance_dirs(name);
        let past_return = !self.files().exists(&dirs.base).await?
            || (purge && phase == DecommissionPhase::Purging);
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
            self.remove_instance_dirs(&dirs.base, actions).await?;
        } else if let Some(dest) = archive_to {
            if self.files().exists(dest).await? {
                actions.push(format!(
                    "the data is kept in `{}` on host `{}`",
                    dest.display(),
                    self.site.host()
                ));
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
    pub(crate) async fn ensure_running(
        &self,
        record: &InstanceRecord,
        stop_in_flight: bool,
        actions: &mut Vec<String>,
    ) -> Result<()> {
        let container = record.container_name();
        let dirs = self.instance_dirs(&record.name);
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

    /// Deletes an instance's directories on its host (the root's own through
    /// `remove_tree`, whose action names the path).
    pub(crate) async fn remove_instance_dirs(
        &self,
        base: &Path,
        actions: &mut Vec<String>,
    ) -> Result<()> {
        if self.site.is_local() {
            return remove_tree(base, actions);
        }
        if self.files().exists(base).await? {
            self.files().remove_dir(base).await?;
            actions.push(format!(
                "deleted `{}` on host `{}`",
                base.display(),
                self.site.host()
            ));
        }
        Ok(())
    }

    pub(crate) async fn remove_container(
        &self,
        name: &str,
        actions: &mut Vec<String>,
    ) -> Result<()> {
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
    pub(crate) async fn wait_gitlab_process(
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
}
