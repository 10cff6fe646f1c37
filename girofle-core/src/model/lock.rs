//! Per-instance operation locks: only one backup, restore, reconfigure or decommission
//! of an instance runs at a time, across processes.
//!
//! On one machine: an exclusive `flock` on `<root>/locks/<name>.lock`, released by the
//! kernel if Girofle dies, so a crash never leaves an instance locked for good. With the
//! inventory on etcd: a key on a lease the holder keeps alive, released when it dies or
//! is cut off for longer than the lease (`EtcdInventory::lock`), and fencing its writes.
//! Either way the lock holds who took it, so a refused operation can name the holder.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use fs2::FileExt;

use crate::adapters::inventory::{EtcdLock, Inventory};
use crate::error::{Error, IoContext, Result};

/// A held instance lock; released when dropped.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Held,
}

/// What is held: only its `Drop` (the release) matters.
#[derive(Debug)]
#[allow(dead_code)]
enum Held {
    File(FileLock),
    Etcd(EtcdLock),
}

#[derive(Debug)]
struct FileLock(std::fs::File);

/// Who takes a lock for `operation`, as a refused operation names them.
fn holder(operation: &str) -> String {
    format!(
        "`{operation}` by {} on {} (pid {}, since {})",
        crate::model::journal::current_user(),
        crate::model::journal::host_name(),
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

impl InstanceLock {
    /// Takes the lock of instance `name` where this fleet keeps its locks: on etcd when
    /// `inventory` is there, otherwise in a file under `root`.
    ///
    /// # Errors
    /// `Conflict` naming the holder when another operation holds it; `Backend` when etcd
    /// does not answer, `Io` when the file cannot be written.
    pub async fn acquire_for(
        inventory: &dyn Inventory,
        root: &Path,
        name: &str,
        operation: &str,
    ) -> Result<Self> {
        crate::record::validate_name(name)?;
        match inventory.as_etcd() {
            Some(etcd) => Ok(InstanceLock {
                _held: Held::Etcd(etcd.lock(name, &holder(operation)).await?),
            }),
            None => Self::acquire(root, name, operation),
        }
    }

    /// Takes the lock of instance `name` for `operation`, or fails at once naming the
    /// holder.
    ///
    /// # Errors
    /// `Conflict` naming the holder when another operation holds it, `Io` otherwise.
    pub fn acquire(root: &Path, name: &str, operation: &str) -> Result<Self> {
        // The name becomes a file name under the root.
        crate::record::validate_name(name)?;
        let dir = root.join("locks");
        std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let path = dir.join(format!("{name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .ctx("open lock", &path)?;
        if file.try_lock_exclusive().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Conflict(format!(
                "instance `{name}` is busy: {} holds its lock; wait for it to finish and try again",
                if holder.is_empty() {
                    "another operation"
                } else {
                    holder
                }
            )));
        }
        file.set_len(0).ctx("write lock", &path)?;
        file.rewind().ctx("write lock", &path)?;
        file.write_all(holder(operation).as_bytes())
            .ctx("write lock", &path)?;
        Ok(InstanceLock {
            _held: Held::File(FileLock(file)),
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.set_len(0);
        let _ = FileExt::unlock(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path(), "web", "backup").unwrap();
        let e = InstanceLock::acquire(dir.path(), "web", "restore").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("`backup`") && text.contains(&std::process::id().to_string()),
            "{text}"
        );
        InstanceLock::acquire(dir.path(), "other", "backup").unwrap();
        drop(first);
        InstanceLock::acquire(dir.path(), "web", "restore").unwrap();
    }
}
