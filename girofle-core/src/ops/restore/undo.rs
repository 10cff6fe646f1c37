//! The recovery step of a restore: an interrupted restore is rolled back (the previous
//! instance put back as it was, or the new name freed) until it committed, and finished
//! after.

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::model::context::Context;
use crate::model::instance::{InstanceDirs, InstanceRecord, Stage};
use crate::model::intent::RestorePhase;
use crate::model::intent::{remove_tree, RecoveryOutcome};

impl Context {
    pub(crate) async fn undo_restore(
        &self,
        name: &str,
        previous: Option<&InstanceRecord>,
        staging: &Path,
        aside: &Path,
        phase: RestorePhase,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let dirs = InstanceDirs::new(&self.root, name);
        if phase == RestorePhase::Committed {
            // The restored instance passed its checks and is recorded: only the previous
            // directories and the staging are left to remove.
            remove_tree(aside, actions)?;
            remove_tree(staging, actions)?;
            return Ok(RecoveryOutcome::Finished);
        }
        match previous {
            Some(previous)
                if matches!(phase, RestorePhase::Extracting | RestorePhase::Reserved) =>
            {
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
                if !matches!(phase, RestorePhase::Extracting | RestorePhase::Reserved) {
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
}
