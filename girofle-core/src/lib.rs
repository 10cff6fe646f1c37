//! Girofle core: all the behaviour of Girofle lives here; the CLI and the Python module
//! only parse, call this library and print.
//!
//! Start with [`Girofle::open`] on a root initialised by [`Girofle::init`].
//! ARCHITECTURE.md at the root of the repository maps the floors: `adapters` (engine,
//! inventory, stores), `model` (instances, journal, intents, locks, config), `ops`
//! (lifecycle, backup, restore, recovery), `service` (schedules, daemon, metrics, status,
//! state) and the front door, [`Girofle`].

pub mod adapters;
pub mod error;
pub mod fsutil;
mod girofle;
pub mod model;
pub mod ops;
pub mod record;
pub mod ruby;
pub mod service;
pub mod text;

// The public paths of the first wave, kept for the fronts and for users' code.
pub use adapters::{inventory, runtime, store};
pub use model::{
    address, config, fingerprint, health, hosts, instance, journal, lock, notify, signing, warning,
};
pub use ops::{backup, checks, fleet, moving, recovery, restore};
pub use service::{daemon, metrics, migrate, schedule, state, status};

pub use error::{Error, ErrorKind, Result};
pub use fleet::{CommissionRequest, DecommissionOptions, InstanceState, InstanceStatus};
pub use girofle::{Girofle, Initialised, OpenOptions};
/// The archive format (its own crate, `girofle-archive`), at the path it always had.
pub use girofle_archive as archive;

/// The version of Girofle recorded in journals and backup manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
