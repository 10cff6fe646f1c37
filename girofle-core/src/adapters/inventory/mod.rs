//! The inventory: Girofle's book of the fleet (which instances exist, their image, their
//! addresses, their managed settings).
//!
//! Responsible for storing that book and changing it atomically, so two `girofle`
//! processes (an operator and cron) never lose each other's updates or hand out one address
//! twice. The embedded default is one SQLite file under the root ([`SqliteInventory`]);
//! a fleet that several machines run keeps it on etcd ([`EtcdInventory`], which also
//! holds the operation locks there); `MemoryInventory` is the in-memory double of the tests, and `conformance` the
//! battery every backend passes. It does not talk to Docker: reconciling the book with
//! the engine is `fleet`'s job.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::record::InstanceRecord;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod etcd;
#[cfg(any(test, feature = "conformance"))]
mod memory;
mod sqlite;

pub use etcd::{EtcdInventory, EtcdLock, EtcdSettings};

pub(crate) use etcd::{gone_here, process_owner};
#[cfg(any(test, feature = "conformance"))]
pub use memory::MemoryInventory;
pub use sqlite::SqliteInventory;
pub(crate) use sqlite::{connect_db, connect_db_to_read, unwritable_db_err};

/// The whole fleet as the inventory knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    pub instances: BTreeMap<String, InstanceRecord>,
}

/// A change to apply to the fleet inside one transaction. It may be called more than once
/// (a backend that retries on a conflict), so it must not have side effects outside the
/// fleet it is given; returning an error aborts the transaction with nothing written.
pub type Change<'a> = dyn FnMut(&mut Fleet) -> Result<()> + Send + 'a;

/// A store for the fleet's book, safe under concurrent use.
#[async_trait]
pub trait Inventory: Debug + Send + Sync + 'static {
    /// The fleet as it is now.
    ///
    /// # Errors
    /// `Backend` when the store cannot be read, `Corrupt` when a record does not parse.
    async fn load(&self) -> Result<Fleet>;

    /// Applies `change` atomically (read, change, write, with no other writer in between)
    /// and returns the fleet as written.
    ///
    /// # Errors
    /// Whatever `change` returns (nothing is written then), `Backend` when the store fails.
    async fn transact(&self, change: &mut Change<'_>) -> Result<Fleet>;

    /// The etcd inventory behind this handle, when it is one: operations then take their
    /// locks on etcd leases, where every machine sees them, instead of in files.
    fn as_etcd(&self) -> Option<&EtcdInventory> {
        None
    }
}

/// Conveniences on top of [`Inventory`].
#[async_trait]
pub trait InventoryExt: Inventory {
    /// One record, or `NotFound` with a hint.
    ///
    /// # Errors
    /// `NotFound` when no instance has that name.
    async fn get(&self, name: &str) -> Result<InstanceRecord> {
        // Every command that acts on an instance looks it up here first: a name that is
        // not one (`../x`) never reaches a path, a lock or the engine.
        crate::record::validate_name(name)?;
        self.load()
            .await?
            .instances
            .remove(name)
            .ok_or_else(|| unknown_instance(name))
    }
}

impl<T: Inventory + ?Sized> InventoryExt for T {}

/// The `NotFound` error for an instance name.
pub fn unknown_instance(name: &str) -> Error {
    Error::not_found(
        format!("instance `{name}`"),
        "`girofle instance list` shows the instances of this root",
    )
}
