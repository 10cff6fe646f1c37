//! What runs over time, on top of the operations: schedules and their run book
//! ([`schedule`]), the daemon ([`daemon`]) and its metrics endpoint ([`metrics`]), the
//! fleet's status ([`status`]) and the export and import of a root's state ([`state`]).

pub mod daemon;
pub mod metrics;
pub mod migrate;
pub mod schedule;
pub mod state;
pub mod status;
