//! Moving the inventory between its backends (`girofle inventory migrate --to etcd|sqlite`):
//! the fleet is copied whole, checked, and only then does girofle.toml name the new place,
//! so an interruption at any point leaves the fleet where the configuration says it is.
//!
//! The schedule book (each instance's own schedule, and the scheduled runs' history) moves
//! with it, read back and compared the same way.
//!
//! Refused while an operation runs (its lock is held, or it left an intent record) or a
//! scheduled run is running: every instance's lock is held for the whole move, so no
//! operation starts meanwhile, and the book is compared again at the end, so a scheduled
//! run that began meanwhile fails the move rather than being lost.

use std::path::Path;

use serde::Serialize;

use crate::adapters::inventory::{EtcdInventory, Fleet, Inventory, SqliteInventory};
use crate::error::{Error, IoContext, Result};
use crate::model::config::{Config, InventoryConfig, CONFIG_FILE};
use crate::model::context::Context;
use crate::service::schedule::{Book, BookDump, EtcdBook, RunOutcome, ScheduleBook};

/// Where to move the inventory.
#[derive(Clone, Debug)]
pub enum MigrateTo {
    /// To an etcd cluster: the `[inventory]` settings to write (endpoints, namespace, TLS,
    /// user).
    Etcd(InventoryConfig),
    /// Back to `<root>/inventory.db`.
    Sqlite,
}

/// What a migration did.
#[derive(Clone, Debug, Serialize)]
pub struct Migrated {
    pub from: String,
    pub to: String,
    /// The instances moved, by name.
    pub instances: Vec<String>,
}

fn describe(config: &InventoryConfig) -> String {
    if config.etcd.is_empty() {
        "sqlite".into()
    } else {
        format!(
            "etcd ({}; namespace `{}`)",
            config.etcd.join(", "),
            config.namespace
        )
    }
}

impl Context {
    /// Moves the fleet's book to `to` and points girofle.toml at it.
    ///
    /// # Errors
    /// `InvalidInput` when the inventory is already there, `Conflict` when an operation
    /// runs or left something to recover, or the target already holds another fleet;
    /// `Backend` when either backend fails (nothing changed then).
    pub async fn migrate_inventory(&self, to: MigrateTo) -> Result<Migrated> {
        let from = self.config.inventory.clone();
        let target_config = match &to {
            MigrateTo::Etcd(c) => {
                if c.etcd.is_empty() {
                    return Err(Error::invalid(
                        "--endpoint",
                        "name at least one etcd member, e.g. --endpoint http://10.0.0.1:2379",
                    ));
                }
                c.validate()?;
                c.clone()
            }
            MigrateTo::Sqlite => InventoryConfig {
                etcd: Vec::new(),
                ..from.clone()
            },
        };
        if describe(&from) == describe(&target_config) {
            return Err(Error::invalid(
                "--to",
                format!("the inventory is already on {}", describe(&from)),
            ));
        }
        if let MigrateTo::Etcd(_) = to {
            if !from.etcd.is_empty() {
                return Err(Error::invalid(
                    "--to",
                    "the inventory is on etcd already; migrate it back with `--to sqlite` first to move it to another cluster",
                ));
            }
        }
        let target: std::sync::Arc<dyn Inventory> = match target_config.etcd_settings()? {
            Some(settings) => std::sync::Arc::new(EtcdInventory::new(settings)),
            None => std::sync::Arc::new(SqliteInventory::open(&self.root.join("inventory.db"))?),
        };
        let fleet = self.inventory.load().await?;
        // Every instance's lock for the whole move: no operation starts meanwhile, and one
        // that runs now refuses the move, naming itself.
        let mut locks = Vec::new();
        for name in fleet.instances.keys() {
            locks.push(self.take_lock(name, "inventory migrate").await?);
        }
        self.refuse_leftover_intents().await?;
        let book = self.schedule_book()?;
        let recovered = book.recover().await?;
        self.journal_interrupted(&recovered).await;
        let runs = book.dump().await?;
        refuse_running(&runs)?;
        self.copy_fleet(&fleet, target.as_ref(), matches!(to, MigrateTo::Etcd(_)))
            .await?;
        let target_book = match target.as_etcd() {
            Some(etcd) => Book::Etcd(EtcdBook::new(etcd.clone())),
            None => Book::Sqlite(ScheduleBook::open(&self.root.join("inventory.db"))?),
        };
        target_book.replace(&runs).await?;
        let copied = target.load().await?;
        if copied != fleet || target_book.dump().await? != runs {
            return Err(Error::backend(
                "inventory migrate",
                "the copy read back differs from the fleet or its schedule book; girofle.toml was not changed: try again",
            ));
        }
        if book.dump().await? != runs {
            return Err(Error::Conflict(
                "a scheduled run began while the inventory moved; girofle.toml was not changed: migrate again once it is over (or stop the daemon for the move)".into(),
            ));
        }
        write_inventory_section(&self.root, &target_config)?;
        drop(locks);
        Ok(Migrated {
            from: describe(&from),
            to: describe(&target_config),
            instances: fleet.instances.keys().cloned().collect(),
        })
    }

    async fn refuse_leftover_intents(&self) -> Result<()> {
        let left = self.intent_names().await?;
        if left.is_empty() {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "an interrupted operation left work to finish on {}; run `girofle recover`, then migrate",
            left.join(", ")
        )))
    }

    /// Writes `fleet` into `target`. An etcd target must hold no fleet yet (or this very
    /// one: a migration interrupted after the copy); a SQLite target is overwritten, as the
    /// configuration pointed away from it.
    async fn copy_fleet(&self, fleet: &Fleet, target: &dyn Inventory, fresh: bool) -> Result<()> {
        let existing = target.load().await?;
        if fresh && !existing.instances.is_empty() && existing != *fleet {
            let names: Vec<&String> = existing.instances.keys().take(5).collect();
            return Err(Error::Conflict(format!(
                "that etcd namespace already holds a fleet of {} instances ({}…); choose another `--namespace`, or have that fleet's girofle.toml use it",
                existing.instances.len(),
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let wanted = fleet.clone();
        target
            .transact(&mut |f: &mut Fleet| {
                *f = wanted.clone();
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// Refuses a move while a scheduled run runs: its process would finish it in the book
/// it left.
fn refuse_running(book: &BookDump) -> Result<()> {
    let running: Vec<String> = book
        .runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Running)
        .map(|r| {
            format!(
                "the scheduled {} of `{}` (pid {} on {})",
                r.kind, r.instance, r.pid, r.host
            )
        })
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "{} running; wait for it to finish (`girofle schedule list`), then migrate",
        running.join(", ")
    )))
}

/// Replaces the `[inventory]` table of girofle.toml with `config`, keeping every other
/// line and comment, atomically (a crash leaves the old file or the new one).
fn write_inventory_section(root: &Path, config: &InventoryConfig) -> Result<()> {
    let path = root.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).ctx("read", &path)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
        Error::invalid(
            CONFIG_FILE,
            format!("{e}; fix the file, then migrate again"),
        )
    })?;
    let section: toml_edit::DocumentMut = toml::to_string(config)
        .map_err(|e| Error::backend("inventory migrate", e.to_string()))?
        .parse()
        .map_err(|e: toml_edit::TomlError| Error::backend("inventory migrate", e.to_string()))?;
    // Edited in place: the comments above the section and beside its keys stay.
    let inventory = doc
        .entry("inventory")
        .or_insert(toml_edit::table())
        .as_table_mut()
        .ok_or_else(|| {
            Error::invalid(
                "inventory",
                "must be a table (`[inventory]`); fix girofle.toml, then migrate again",
            )
        })?;
    let stale: Vec<String> = inventory
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !section.contains_key(k))
        .collect();
    for key in stale {
        inventory.remove(&key);
    }
    for (key, value) in section.iter() {
        inventory.insert(key, value.clone());
    }
    inventory.set_implicit(false);
    let new_text = doc.to_string();
    // What is written must load: the next command reads it.
    Config::parse(&new_text, &path)?;
    crate::fsutil::write_atomic(&path, new_text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_scheduled_run_refuses_the_move_naming_it() {
        use crate::service::schedule::{RunKind, RunRecord};
        let now = chrono::Utc::now();
        let run = |outcome| RunRecord {
            id: 1,
            instance: "web".into(),
            kind: RunKind::Copy,
            slot: now,
            started_at: now,
            ended_at: None,
            outcome,
            store: "offsite".into(),
            backup_id: None,
            copied: Vec::new(),
            pruned: Vec::new(),
            error: None,
            pid: 42,
            host: "box".into(),
        };
        let mut book = BookDump {
            runs: vec![run(RunOutcome::Ok), run(RunOutcome::Interrupted)],
            ..Default::default()
        };
        refuse_running(&book).unwrap();
        book.runs.push(run(RunOutcome::Running));
        let e = refuse_running(&book).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("the scheduled copy of `web` (pid 42 on box)"),
            "{e}"
        );
    }

    #[test]
    fn the_inventory_section_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        Config::write_default(dir.path()).unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n# mine, keep me\n[inventory]\nlease_ttl_secs = 20\n");
        std::fs::write(&path, &text).unwrap();
        let mut to = InventoryConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            ..InventoryConfig::default()
        };
        write_inventory_section(dir.path(), &to).unwrap();
        let loaded = Config::load(dir.path()).unwrap();
        assert_eq!(loaded.inventory, to);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("# mine, keep me"));
        to.etcd.clear();
        write_inventory_section(dir.path(), &to).unwrap();
        assert!(Config::load(dir.path()).unwrap().inventory.etcd.is_empty());
    }
}
