//! What a move leaves behind and how it is put right: before the switch, the new host's
//! copy goes and the old instance starts again; after it, the old container goes and its
//! data is set aside (or deleted). Used by the move itself on failure and by recovery.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::InstanceRecord;
use crate::model::intent::{MovePhase, RecoveryOutcome};

/// The staging directory of a move of `name`, relative to the target host's directory.
pub(crate) fn staging_of(name: &str) -> String {
    format!("staging/move-{name}")
}

impl Context {
    /// After the switch, on the old host: removes the old container and sets its data
    /// aside to `aside` (deletes it when `None`).
    pub(crate) async fn retire(&self, record: &InstanceRecord, aside: Option<&Path>) -> Result<()> {
        let container = record.container_name();
        match self.runtime.remove(&container, true).await {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let base = self.instance_dirs(&record.name).base;
        if self.files().exists(&base).await? {
            match aside {
                Some(dest) => self.files().move_dir(&base, dest).await?,
                None => self.files().remove_dir(&base).await?,
            }
        }
        Ok(())
    }

    /// Recovers a move of `record` to `target` interrupted in `phase`.
    pub(crate) async fn undo_move(
        &self,
        record: &InstanceRecord,
        target: &InstanceRecord,
        aside: Option<&Path>,
        phase: MovePhase,
        actions: &mut Vec<String>,
    ) -> Result<RecoveryOutcome> {
        let name = record.name.as_str();
        let src = self.at(record).await?;
        let current = self.inventory.load().await?.instances.get(name).cloned();
        let switched = phase == MovePhase::Switched
            || current
                .as_ref()
                .is_some_and(|c| c.host == target.host && c.bindings == target.bindings);
        if switched {
            src.retire(record, aside).await?;
            actions.push(format!(
                "removed the old container on host `{}`; {}",
                src.site.host(),
                match aside {
                    Some(dest) => format!("its data is kept in `{}` there", dest.display()),
                    None => "its data is deleted (--purge)".to_string(),
                }
            ));
            return Ok(RecoveryOutcome::Finished);
        }
        // Before the switch: what the move made on the new host goes (the directory was
        // checked absent, and the container too, before the move began).
        let dst = self.at(target).await?;
        dst.remove_container(name, actions).await?;
        dst.remove_instance_dirs(&dst.instance_dirs(name).base, actions)
            .await?;
        dst.remove_instance_dirs(&dst.site.base().join(staging_of(name)), actions)
            .await?;
        src.ensure_running(record, false, actions).await?;
        Ok(RecoveryOutcome::RolledBack)
    }
}
