//! The operations: commission and the rest of an instance's life ([`fleet`]), backups
//! ([`backup`], with GitLab's own tool in `gitlab_backup`), restores ([`restore`]) and
//! the recovery of interrupted ones ([`recovery`]). Each works on the model and adapters.
//! `tests` runs them on the in-memory doubles: the fast tier, no Docker needed.

pub mod backup;
pub mod checks;
pub mod fleet;
pub(crate) mod gitlab_backup;
pub mod hosts;
pub mod moving;
pub mod recovery;
pub mod restore;
#[cfg(test)]
pub(crate) mod tests;
