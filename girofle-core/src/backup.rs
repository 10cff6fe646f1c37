//! TEMPORARY: replaced by the backup module under construction.
use crate::error::{Error, Result};
use crate::fleet::Girofle;
use crate::instance::InstanceRecord;
impl Girofle {
    pub(crate) async fn final_backup(&self, record: &InstanceRecord) -> Result<String> {
        Err(Error::Conflict(format!("backups of `{}` are not built yet", record.name)))
    }
}
