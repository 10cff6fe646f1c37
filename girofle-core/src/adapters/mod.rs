//! The adapters: how Girofle talks to what it does not own. The container engine
//! ([`runtime`]), the inventory database ([`inventory`]) and the backup stores ([`store`]),
//! each a trait with one type per backend. Nothing here knows what an operation is.

pub mod inventory;
pub mod runtime;
pub mod store;
