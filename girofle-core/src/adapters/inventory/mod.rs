//! The inventory: Girofle's book of the fleet (which instances exist, their image, their
//! addresses, their managed settings).
//!
//! Responsible for storing that book and changing it atomically, so two `girofle`
//! processes (an operator and cron) never lose each other's updates or hand out one address
//! twice. The embedded default is one SQLite file under the root. It does not talk to
//! Docker: reconciling the book with the engine is `fleet`'s job.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::{Error, Result};
use crate::record::InstanceRecord;

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

/// The embedded inventory: one SQLite database (`<root>/inventory.db`).
#[derive(Debug, Clone)]
pub struct SqliteInventory {
    path: PathBuf,
}

const SQLITE: &str = "inventory database";

/// Whether an SQLite error may come from a file system that takes no writes.
fn maybe_unwritable(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(
        f.code,
        rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::DiskFull
            | rusqlite::ErrorCode::SystemIoFailure
            | rusqlite::ErrorCode::CannotOpen
    ))
}

/// Why the file system of `path` takes no writes, if that is the case.
fn unwritable_because(path: &Path) -> Option<crate::fsutil::Unwritable> {
    crate::fsutil::unwritable_because(path.parent().unwrap_or(Path::new(".")))
}

/// The error for a write the file system of the database refused, naming why (read-only,
/// full) and what to do; `None` when that is not what happened.
pub(crate) fn unwritable_db_err(backend: &str, path: &Path, e: &rusqlite::Error) -> Option<Error> {
    let why = maybe_unwritable(e)
        .then(|| unwritable_because(path))
        .flatten()?;
    Some(Error::backend(
        backend,
        format!(
            "{}: {e}: it {why}; commands that change anything need it writable: {}",
            path.display(),
            why.remedy()
        ),
    ))
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    if let Some(unwritable) = unwritable_db_err(SQLITE, path, &e) {
        return unwritable;
    }
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(
            f.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        ) {
            return Error::corrupt(
                format!("{SQLITE} `{}`", path.display()),
                format!(
                    "{e}: expected the SQLite database Girofle writes; move the file aside and bring the inventory back with `girofle state import FILE` (from a `girofle state export`)"
                ),
            );
        }
    }
    Error::backend(
        SQLITE,
        format!(
            "{}: {e}; check the file is readable and not on a network file system",
            path.display()
        ),
    )
}

/// Opens a connection to Girofle's database file (the inventory, and the tables other
/// modules keep beside it) with the settings every writer relies on.
pub(crate) fn connect_db(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
    // Concurrent girofle processes (an operator, a daemon, a timer) serialise on the
    // database lock instead of failing.
    conn.busy_timeout(Duration::from_secs(60))
        .map_err(|e| db_err(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| db_err(path, e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| db_err(path, e))?;
    Ok(conn)
}

/// Opens a connection to Girofle's database file for reading. Like [`connect_db`]; but
/// when the file system takes no writes (read-only, or full: SQLite cannot even set up
/// its shared-memory file then) the database is opened read-only instead, with a warning
/// on stderr, so that listings, `status` and `backup prune` (the remedy for a full disk)
/// still work. Writes through such a connection fail, naming the cause.
pub(crate) fn connect_db_to_read(path: &Path) -> Result<Connection> {
    // Asked before opening: on such a file system a read-write open that fails still
    // leaves files behind.
    if let Some(why) = unwritable_because(path) {
        if let Some(conn) = open_read_only(path) {
            warn_read_only(path, why);
            return Ok(conn);
        }
    }
    connect_db(path)
}

/// The database opened read-only, creating no file.
fn open_read_only(path: &Path) -> Option<Connection> {
    let uri = url::Url::from_file_path(std::path::absolute(path).ok()?).ok()?;
    let open = |query: &str| {
        let mut u = uri.clone();
        u.set_query(Some(query));
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        Connection::open_with_flags(u.as_str(), flags)
    };
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p).exists()
    };
    // A live writer's WAL and its -shm are read through `mode=ro`. Without them there is
    // nothing in a WAL to read, and `immutable=1` reads the database file alone, where
    // `mode=ro` would create both files (and fail on a full disk). A WAL left without
    // its -shm by a crash is not read: the next read-write open recovers it.
    if beside("-wal") && beside("-shm") {
        let live = open("mode=ro").and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map(|()| c)
        });
        if let Ok(conn) = live {
            return Some(conn);
        }
    }
    open("mode=ro&immutable=1").ok()
}

/// Says once per process that the root is being read without writing.
fn warn_read_only(path: &Path, why: crate::fsutil::Unwritable) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let dir = path.parent().unwrap_or(Path::new("."));
        let journal = match why {
            crate::fsutil::Unwritable::ReadOnly => "nothing is journaled",
            crate::fsutil::Unwritable::Full => "an operation that cannot be journaled says so",
        };
        eprintln!(
            "girofle: warning: `{}` {why}: Girofle reads its inventory without writing; {journal}, and commands that change the fleet fail until you {}",
            dir.display(),
            why.remedy()
        );
    });
}

impl SqliteInventory {
    /// Opens (creating if needed) the database at `path`, mode 0600. On a file system
    /// that takes no writes, an existing database is opened read-only (see
    /// [`connect_db_to_read`]).
    ///
    /// # Errors
    /// `Backend` when the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let inv = SqliteInventory {
            path: path.to_path_buf(),
        };
        // Created 0600 before SQLite opens it (when it can be written at all): SQLite gives
        // its -wal and -shm files the database's mode, and the book holds every setting in
        // clear.
        if !path.exists() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path);
        }
        let conn = connect_db_to_read(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS instances (name TEXT PRIMARY KEY, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(|e| db_err(path, e))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
        }
        Ok(inv)
    }

    fn connect(&self) -> Result<Connection> {
        connect_db(&self.path)
    }

    fn read(&self, conn: &Connection) -> Result<Fleet> {
        let mut stmt = conn
            .prepare("SELECT name, record FROM instances ORDER BY name")
            .map_err(|e| db_err(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| db_err(&self.path, e))?;
        let mut fleet = Fleet::default();
        for row in rows {
            let (name, text) = row.map_err(|e| db_err(&self.path, e))?;
            let record: InstanceRecord = serde_json::from_str(&text).map_err(|e| {
                Error::corrupt(
                    format!("inventory record `{name}` in {}", self.path.display()),
                    format!("{e}; restore the inventory from a state export or fix the row"),
                )
            })?;
            fleet.instances.insert(name, record);
        }
        Ok(fleet)
    }

    /// A free-form value kept beside the fleet (for other modules' book-keeping).
    ///
    /// # Errors
    /// `Backend` when the database fails.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let conn = connect_db_to_read(&self.path)?;
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| db_err(&self.path, e))
    }
}

#[async_trait]
impl Inventory for SqliteInventory {
    async fn load(&self) -> Result<Fleet> {
        let conn = connect_db_to_read(&self.path)?;
        self.read(&conn)
    }

    async fn transact(&self, change: &mut Change<'_>) -> Result<Fleet> {
        // The transaction is short (milliseconds): it runs on the calling task rather than
        // the blocking pool, so `change` need not be 'static.
        let mut conn = self.connect()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&self.path, e))?;
        let before = self.read(&tx)?;
        let mut after = before.clone();
        change(&mut after)?;
        for name in before.instances.keys() {
            if !after.instances.contains_key(name) {
                tx.execute("DELETE FROM instances WHERE name = ?1", [name])
                    .map_err(|e| db_err(&self.path, e))?;
            }
        }
        for (name, record) in &after.instances {
            if before.instances.get(name) != Some(record) {
                let text = serde_json::to_string(record)
                    .map_err(|e| Error::backend(SQLITE, e.to_string()))?;
                tx.execute(
                    "INSERT INTO instances (name, record) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET record = excluded.record",
                    [name, &text],
                )
                .map_err(|e| db_err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instance::{Bindings, Stage};
    use std::sync::Arc;

    fn record(name: &str, port: u16) -> InstanceRecord {
        InstanceRecord {
            name: name.into(),
            image: "img:1-ce.0".into(),
            bindings: Bindings {
                ip: "127.0.0.1".parse().unwrap(),
                http_port: port,
                https_port: port + 1,
                ssh_port: port + 2,
            },
            hostname: None,
            external_url: format!("http://127.0.0.1:{port}"),
            settings: BTreeMap::new(),
            labels: BTreeMap::new(),
            created_at: chrono::Utc::now(),
            stage: Stage::Active,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transactions_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.db");
        SqliteInventory::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..16u16 {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                // A separate handle per task, as separate processes would have.
                let inv = Arc::new(SqliteInventory::open(&path).unwrap());
                inv.transact(&mut |fleet: &mut Fleet| {
                    // Take the next free port: races would hand one out twice.
                    let next = fleet
                        .instances
                        .values()
                        .map(|r| r.bindings.ssh_port + 1)
                        .max()
                        .unwrap_or(20000);
                    fleet
                        .instances
                        .insert(format!("i{i}"), record(&format!("i{i}"), next));
                    Ok(())
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fleet = SqliteInventory::open(&path).unwrap().load().await.unwrap();
        assert_eq!(fleet.instances.len(), 16);
        let mut ports: Vec<u16> = fleet
            .instances
            .values()
            .map(|r| r.bindings.http_port)
            .collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 16, "a port was handed out twice");
    }

    #[tokio::test]
    async fn failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inv = SqliteInventory::open(&dir.path().join("i.db")).unwrap();
        let r = inv
            .transact(&mut |f: &mut Fleet| {
                f.instances.insert("a".into(), record("a", 1000));
                Err(Error::Conflict("no".into()))
            })
            .await;
        assert!(r.is_err());
        assert!(inv.load().await.unwrap().instances.is_empty());
    }
}
