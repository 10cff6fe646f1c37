//! Girofle core: all the behaviour of Girofle lives here; the CLI and the Python module
//! only parse, call this library and print.
//!
//! Start with [`Girofle::open`] on a root initialised by [`Girofle::init`].

pub mod address;
pub mod backup;
pub mod checks;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fingerprint;
pub mod fleet;
pub mod fsutil;
mod gitlab_backup;
pub mod health;
pub mod instance;
pub mod inventory;
pub mod journal;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod recovery;
pub mod restore;
pub mod ruby;
pub mod runtime;
pub mod schedule;
pub mod signing;
pub mod state;
pub mod status;
pub mod store;

pub use error::{Error, Result};
pub use fleet::{
    CommissionRequest, DecommissionOptions, Girofle, InstanceState, InstanceStatus, OpenOptions,
};
/// The archive format (its own crate, `girofle-archive`), at the path it always had.
pub use girofle_archive as archive;

/// The version of Girofle recorded in journals and backup manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
