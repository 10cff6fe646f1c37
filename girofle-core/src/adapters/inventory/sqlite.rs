//! The embedded inventory: one SQLite file under the root (`inventory.db`), written in
//! `IMMEDIATE` transactions so concurrent processes serialise on the database lock; and
//! the connection helpers the other tables kept in that file (the schedule book) share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{Change, Fleet, Inventory};
use crate::error::{Error, Result};
use crate::record::InstanceRecord;

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
    use std::sync::Arc;

    /// SQLite passes the inventory battery, each handle a separate connection as
    /// separate processes would have.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_passes_the_inventory_battery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.db");
        SqliteInventory::open(&path).unwrap();
        super::super::conformance::run_all(&|| {
            Arc::new(SqliteInventory::open(&path).unwrap()) as Arc<dyn Inventory>
        })
        .await;
    }
}
