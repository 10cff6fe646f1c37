//! The in-memory inventory: the double the fast tests open a root on. Clones share one
//! book, as handles of one SQLite file do; a transaction holds the book's lock while its
//! change runs, so concurrent transactions serialise and a failed change writes nothing,
//! as SQLite's `IMMEDIATE` transactions do. Nothing outlives the process.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Change, Fleet, Inventory};
use crate::error::Result;

/// [`Inventory`] in memory (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct MemoryInventory {
    fleet: Arc<Mutex<Fleet>>,
}

impl MemoryInventory {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    fn book(&self) -> MutexGuard<'_, Fleet> {
        // A change that panicked wrote nothing (it works on a copy): the book is whole.
        self.fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Inventory for MemoryInventory {
    async fn load(&self) -> Result<Fleet> {
        Ok(self.book().clone())
    }

    async fn transact(&self, change: &mut Change<'_>) -> Result<Fleet> {
        let mut book = self.book();
        let mut after = book.clone();
        change(&mut after)?;
        *book = after.clone();
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_double_passes_the_inventory_battery() {
        let shared = MemoryInventory::new();
        super::super::conformance::run_all(&|| Arc::new(shared.clone()) as Arc<dyn Inventory>)
            .await;
    }
}
