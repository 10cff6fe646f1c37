//! The model: what Girofle knows and keeps between operations. Instances and their
//! addresses, the settings file, the journal, intents and locks, fingerprints, signing
//! keys, health probes and the notifications an operation leaves. Built on the adapters;
//! knows no operation.

pub mod address;
pub mod config;
pub mod context;
pub mod files;
pub mod fingerprint;
pub mod health;
pub mod hosts;
pub mod instance;
pub(crate) mod intent;
pub mod journal;
pub mod lock;
pub mod notify;
pub mod policy;
pub mod signing;
pub mod warning;
