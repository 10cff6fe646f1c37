//! Girofle's own state, exported and imported (R-BAK-5, R-STAND-3): the configuration,
//! the inventory database (instances, schedules, runs) and the journal in one file, so a
//! new host can take over the whole fleet's book-keeping.
//!
//! The file is one zstd frame (with its checksum) holding a tar of: `state.json` (kind,
//! format version, Girofle version, host, time, size and BLAKE3 of every other entry),
//! `girofle.toml`, `inventory.db` (a consistent snapshot taken with `VACUUM INTO`, so a
//! concurrent writer cannot tear it; with the inventory on etcd, etcd's fleet, schedules
//! and runs are written into it, and an import puts them back there), `journal.jsonl`, and the fleet's signing key
//! (`keys/signing.key`, with the `keys/trusted/*.pub` it trusts; see `signing`). It is written atomically, mode
//! 0600: it holds the stores' credentials. Import checks everything before touching the
//! root, refuses to replace an inventory that differs from the state's unless forced,
//! copies the database in with SQLite's online backup API (other processes see the old or
//! the new book, never half of each) and merges the journal line by line, so importing
//! twice gives the same root. It does not restore instances' data: that is `restore`'s
//! job, from backups.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fs2::FileExt;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::adapters::inventory::{EtcdInventory, Fleet, Inventory};
use crate::error::{Error, IoContext, Result};
use crate::model::config::{Config, CONFIG_FILE};
use crate::model::context::Context;
use crate::model::fingerprint::FingerprintKey;
use crate::model::instance::InstanceRecord;
use crate::model::journal::{self, Journal, Record};
use crate::service::schedule::{BookDump, EtcdBook, ScheduleBook};

/// The state format this Girofle writes (and the newest it reads).
pub const STATE_FORMAT_VERSION: u32 = 1;

const KIND: &str = "girofle-state";
const HEADER: &str = "state.json";
const INVENTORY: &str = "inventory.db";
const JOURNAL: &str = "journal.jsonl";
const ENTRIES: [&str; 3] = [CONFIG_FILE, INVENTORY, JOURNAL];
/// The entry of the fleet's secret key, and the prefix of its trusted keys' entries.
const SIGNING_KEY: &str = "keys/signing.key";
const TRUSTED_KEYS: &str = "keys/trusted/";

/// Size and hash of one entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryDigest {
    pub size: u64,
    pub blake3: String,
}

/// The first entry of a state file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateHeader {
    pub kind: String,
    pub format_version: u32,
    pub girofle_version: String,
    pub created_at: DateTime<Utc>,
    pub host: String,
    /// The root it was exported from.
    pub root: PathBuf,
    pub instances: Vec<String>,
    pub files: BTreeMap<String, EntryDigest>,
}

/// What an export or an import did.
#[derive(Clone, Debug, Serialize)]
pub struct StateReport {
    pub file: PathBuf,
    pub root: PathBuf,
    pub format_version: u32,
    /// The instances of the state's inventory.
    pub instances: Vec<String>,
    /// Journal lines in the state.
    pub journal_lines: usize,
    /// Journal lines the import added (0 when they were all there already).
    pub journal_lines_added: usize,
    /// Whether the import replaced an inventory that had other instances (`--force`).
    pub replaced: bool,
    /// Size of the state file.
    pub bytes: u64,
    /// The root's signing key id (after an import: its own when it had one, else the
    /// state's).
    pub signing_key: Option<String>,
    /// The state's key id when the root kept a key of its own and now trusts the state's
    /// (`keys/trusted/<id>.pub`).
    pub trusted_imported_key: Option<String>,
}

fn digest(data: &[u8]) -> EntryDigest {
    EntryDigest {
        size: data.len() as u64,
        blake3: blake3::hash(data).to_hex().to_string(),
    }
}

/// Reads the `instances` table of an inventory database file.
fn read_fleet(path: &Path) -> Result<Fleet> {
    let bad = |e: rusqlite::Error| {
        Error::corrupt(
            format!("inventory `{}`", path.display()),
            format!("{e}; it is not a Girofle inventory database"),
        )
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(bad)?;
    conn.busy_timeout(Duration::from_secs(60)).map_err(bad)?;
    let mut stmt = conn
        .prepare("SELECT name, record FROM instances ORDER BY name")
        .map_err(bad)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(bad)?;
    let mut fleet = Fleet::default();
    for row in rows {
        let (name, text) = row.map_err(bad)?;
        let record: InstanceRecord = serde_json::from_str(&text).map_err(|e| {
            Error::corrupt(
                format!("inventory record `{name}` in `{}`", path.display()),
                e.to_string(),
            )
        })?;
        fleet.instances.insert(name, record);
    }
    Ok(fleet)
}

/// A scratch file path under the root's staging directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(root: &Path, what: &str) -> Result<Scratch> {
        let dir = root.join("staging");
        std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        Ok(Scratch(dir.join(format!(
            ".state-{what}-{}-{nanos}.db",
            std::process::id()
        ))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// The journal's complete lines, read under its lock (a writer's line is never half in).
fn read_journal(path: &Path) -> Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open journal", path, e)),
    };
    FileExt::lock_shared(&f).ctx("lock journal", path)?;
    let mut data = Vec::new();
    let r = f.read_to_end(&mut data);
    let _ = FileExt::unlock(&f);
    r.ctx("read journal", path)?;
    let end = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    data.truncate(end);
    Ok(data)
}

/// The fleet on etcd when girofle.toml at `root` puts the inventory there (the SQLite file
/// is not the book then).
async fn etcd_fleet(config: &Config) -> Result<Option<(EtcdInventory, Fleet)>> {
    let Some(settings) = config.inventory.etcd_settings()? else {
        return Ok(None);
    };
    let inv = EtcdInventory::new(settings);
    let fleet = inv.load().await?;
    Ok(Some((inv, fleet)))
}

/// The fleet and its schedule book on etcd, when girofle.toml puts the inventory there.
async fn etcd_book(config: &Config) -> Result<Option<(Fleet, BookDump)>> {
    let Some((inv, fleet)) = etcd_fleet(config).await? else {
        return Ok(None);
    };
    let book = EtcdBook::new(inv).dump().await?;
    Ok(Some((fleet, book)))
}

/// Makes the inventory database at `path` hold `fleet`'s instances.
fn put_fleet(path: &Path, fleet: &Fleet) -> Result<()> {
    let inv = crate::adapters::inventory::SqliteInventory::open(path)?;
    futures::executor::block_on(inv.transact(&mut |f: &mut Fleet| {
        f.clone_from(fleet);
        Ok(())
    }))?;
    Ok(())
}

fn export_blocking(
    root: &Path,
    file: &Path,
    from_etcd: Option<(Fleet, BookDump)>,
) -> Result<StateReport> {
    let config_path = Config::path(root);
    let config = match std::fs::read(&config_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(
                format!("Girofle root `{}`", root.display()),
                "there is no girofle.toml: nothing to export; check --root / GIROFLE_ROOT",
            ))
        }
        Err(e) => return Err(Error::io("read", &config_path, e)),
    };
    let db_path = root.join(INVENTORY);
    let scratch = Scratch::new(root, "export")?;
    {
        let conn = Connection::open(&db_path).map_err(|e| {
            Error::backend("inventory database", format!("{}: {e}", db_path.display()))
        })?;
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(|e| Error::backend("inventory database", e))?;
        // One read transaction: a consistent snapshot whatever writers do meanwhile.
        conn.execute("VACUUM INTO ?1", [scratch.0.to_string_lossy().as_ref()])
            .map_err(|e| {
                Error::backend(
                    "inventory database",
                    format!("snapshot of {}: {e}", db_path.display()),
                )
            })?;
    }
    // With the inventory on etcd, the snapshot carries etcd's book: the fleet, its
    // schedules and its runs.
    if let Some((fleet, book)) = &from_etcd {
        put_fleet(&scratch.0, fleet)?;
        ScheduleBook::open(&scratch.0)?.replace(book)?;
    }
    let inventory = std::fs::read(&scratch.0).ctx("read", &scratch.0)?;
    let fleet = read_fleet(&scratch.0)?;
    drop(scratch);
    // A journal begun by an older Girofle may hold settings' values: they leave as
    // fingerprints.
    let journal_bytes = journal::fingerprint_old_settings(
        &read_journal(&root.join(JOURNAL))?,
        &FingerprintKey::of_root(root)?,
    );
    // The signing key goes along: backups made on the new host are signed by the same
    // fleet, and the old ones stay trusted.
    crate::model::signing::ensure_key(root)?;
    let key_id = crate::model::signing::own_public_key(root)?.id();
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    let secret = crate::model::signing::secret_key_path(root);
    if secret.exists() {
        keys.push((
            SIGNING_KEY.to_string(),
            std::fs::read(&secret).ctx("read", &secret)?,
        ));
    }
    let trusted_dir = crate::model::signing::trusted_keys_dir(root);
    if let Ok(dir) = std::fs::read_dir(&trusted_dir) {
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pub") && !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            let path = trusted_dir.join(&n);
            keys.push((
                format!("{TRUSTED_KEYS}{n}"),
                std::fs::read(&path).ctx("read", &path)?,
            ));
        }
    }
    let entries: Vec<(&str, &[u8])> = [
        (CONFIG_FILE, config.as_slice()),
        (INVENTORY, inventory.as_slice()),
        (JOURNAL, journal_bytes.as_slice()),
    ]
    .into_iter()
    .chain(keys.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
    .collect();
    let header = StateHeader {
        kind: KIND.to_string(),
        format_version: STATE_FORMAT_VERSION,
        girofle_version: crate::VERSION.to_string(),
        created_at: Utc::now(),
        host: journal::host_name(),
        root: root.to_path_buf(),
        instances: fleet.instances.keys().cloned().collect(),
        files: entries
            .iter()
            .map(|(n, d)| (n.to_string(), digest(d)))
            .collect(),
    };
    let header_bytes =
        serde_json::to_vec_pretty(&header).map_err(|e| Error::backend("state header", e))?;
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).map_err(|e| Error::backend("zstd", e))?;
    encoder
        .include_checksum(true)
        .map_err(|e| Error::backend("zstd", e))?;
    let mut tar = tar::Builder::new(encoder);
    let mtime = header.created_at.timestamp().max(0) as u64;
    for (name, data) in std::iter::once((HEADER, header_bytes.as_slice())).chain(entries) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
            .map_err(|e| Error::backend("state archive", e))?;
    }
    let bytes = tar
        .into_inner()
        .and_then(|e| e.finish())
        .map_err(|e| Error::backend("state archive", e))?;
    crate::fsutil::write_atomic(file, &bytes, 0o600)?;
    Ok(StateReport {
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        format_version: STATE_FORMAT_VERSION,
        instances: header.instances,
        journal_lines: journal_bytes.iter().filter(|b| **b == b'\n').count(),
        journal_lines_added: 0,
        replaced: false,
        bytes: bytes.len() as u64,
        signing_key: Some(key_id),
        trusted_imported_key: None,
    })
}

/// A state file, read and checked.
struct Loaded {
    header: StateHeader,
    files: BTreeMap<String, Vec<u8>>,
    bytes: u64,
}

fn load(file: &Path) -> Result<Loaded> {
    let what = format!("state file `{}`", file.display());
    let raw = std::fs::read(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found(
                what.clone(),
                "give the path of a file written by `girofle state export`",
            )
        } else {
            Error::io("read", file, e)
        }
    })?;
    let damaged = |m: String| {
        Error::corrupt(
            what.clone(),
            format!("{m}; the file is damaged or not a Girofle state export: use another copy"),
        )
    };
    let mut decoder =
        zstd::Decoder::new(raw.as_slice()).map_err(|e| damaged(format!("zstd: {e}")))?;
    let mut header: Option<StateHeader> = None;
    let mut files = BTreeMap::new();
    {
        let mut archive = tar::Archive::new(&mut decoder);
        let entries = archive
            .entries()
            .map_err(|e| damaged(format!("archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| damaged(format!("archive: {e}")))?;
            let name = entry
                .path()
                .map_err(|e| damaged(format!("entry name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| damaged(format!("entry `{name}`: {e}")))?;
            if header.is_none() {
                if name != HEADER {
                    return Err(damaged(format!(
                        "its first entry is `{name}`, not `{HEADER}`"
                    )));
                }
                let probe: serde_json::Value =
                    serde_json::from_slice(&data).map_err(|e| damaged(format!("header: {e}")))?;
                if probe["kind"].as_str() != Some(KIND) {
                    return Err(damaged("its header is not a Girofle state header".into()));
                }
                let version = probe["format_version"].as_u64().unwrap_or(0);
                if version > u64::from(STATE_FORMAT_VERSION) {
                    return Err(Error::VersionMismatch(format!(
                        "{what} has state format {version} (Girofle {}), this Girofle reads up to {STATE_FORMAT_VERSION}: upgrade Girofle",
                        probe["girofle_version"].as_str().unwrap_or("?")
                    )));
                }
                header = Some(
                    serde_json::from_value(probe).map_err(|e| damaged(format!("header: {e}")))?,
                );
            } else {
                files.insert(name, data);
            }
        }
    }
    // The tar reader stops at the end-of-archive blocks: read to the frame's end so
    // zstd checks its checksum.
    std::io::copy(&mut decoder, &mut std::io::sink()).map_err(|e| damaged(format!("zstd: {e}")))?;
    let header = header.ok_or_else(|| damaged("it is empty".into()))?;
    for name in ENTRIES {
        let data = files
            .get(name)
            .ok_or_else(|| damaged(format!("`{name}` is missing")))?;
        if header.files.get(name) != Some(&digest(data)) {
            return Err(damaged(format!("`{name}` does not match its hash")));
        }
    }
    // The keys (older states have none): each one the header lists, whole.
    for (name, expected) in &header.files {
        if ENTRIES.contains(&name.as_str()) {
            continue;
        }
        match files.get(name) {
            Some(data) if digest(data) == *expected => {}
            Some(_) => return Err(damaged(format!("`{name}` does not match its hash"))),
            None => return Err(damaged(format!("`{name}` is missing"))),
        }
    }
    Ok(Loaded {
        header,
        files,
        bytes: raw.len() as u64,
    })
}

/// Copies the database at `src` over the one at `dst` with SQLite's online backup API:
/// one step under the destination's write lock, retried while another process holds it.
fn restore_database(src: &Path, dst: &Path) -> Result<()> {
    let db = |e: rusqlite::Error| {
        Error::backend("inventory database", format!("{}: {e}", dst.display()))
    };
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db)?;
    let mut to = Connection::open(dst).map_err(db)?;
    to.busy_timeout(Duration::from_secs(60)).map_err(db)?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(db)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        use rusqlite::backup::StepResult;
        match backup.step(-1).map_err(db)? {
            StepResult::Done => break,
            StepResult::More => continue,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "the inventory `{}` stayed busy for 2 minutes; stop the Girofle processes using this root and import again",
                    dst.display()
                )))
            }
        }
    }
    drop(backup);
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

/// Appends the lines of `imported` that the journal lacks, under its lock. Returns how
/// many it added.
fn merge_journal(path: &Path, imported: &[u8]) -> Result<usize> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ctx("open journal", path)?;
    f.lock_exclusive().ctx("lock journal", path)?;
    let result = (|| {
        let mut existing = Vec::new();
        f.read_to_end(&mut existing).ctx("read journal", path)?;
        // Compared as the export wrote them (old settings' values as fingerprints).
        let root = path.parent().unwrap_or(Path::new("."));
        let compared =
            journal::fingerprint_old_settings(&existing, &FingerprintKey::of_root(root)?);
        let have: HashSet<&[u8]> = compared
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let mut add = Vec::new();
        let mut added = 0;
        let mut seen = HashSet::new();
        for line in imported.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if !have.contains(line) && seen.insert(line) {
                add.extend_from_slice(line);
                add.push(b'\n');
                added += 1;
            }
        }
        if !existing.is_empty() && !existing.ends_with(b"\n") {
            add.insert(0, b'\n');
        }
        if !add.is_empty() {
            f.write_all(&add).ctx("append to journal", path)?;
            f.sync_data().ctx("sync journal", path)?;
        }
        Ok(added)
    })();
    let _ = FileExt::unlock(&f);
    result
}

fn import_blocking(root: &Path, file: &Path, force: bool) -> Result<StateReport> {
    let loaded = load(file)?;
    let text = String::from_utf8(loaded.files[CONFIG_FILE].clone()).map_err(|_| {
        Error::corrupt(
            format!("state file `{}`", file.display()),
            "its girofle.toml is not UTF-8",
        )
    })?;
    Config::parse(&text, Path::new("girofle.toml (in the state file)"))?;
    let listed = |name: &str| loaded.header.files.contains_key(name);
    let trusted_keys: Vec<&[u8]> = loaded
        .files
        .iter()
        .filter(|(n, _)| n.starts_with(TRUSTED_KEYS) && listed(n))
        .map(|(_, d)| d.as_slice())
        .collect();
    let secret_key = loaded
        .files
        .get(SIGNING_KEY)
        .filter(|_| listed(SIGNING_KEY))
        .map(Vec::as_slice);
    crate::model::signing::check_state_keys(secret_key, &trusted_keys)?;
    for d in ["instances", "backups", "decommissioned", "locks", "staging"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).ctx("create directory", &p)?;
    }
    let scratch = Scratch::new(root, "import")?;
    crate::fsutil::write_atomic(&scratch.0, &loaded.files[INVENTORY], 0o600)?;
    let imported = read_fleet(&scratch.0)?;
    let db_path = root.join(INVENTORY);
    let current = if db_path.exists() {
        crate::adapters::inventory::SqliteInventory::open(&db_path)?;
        read_fleet(&db_path)?
    } else {
        Fleet::default()
    };
    let differs = !current.instances.is_empty() && current != imported;
    if differs && !force {
        return Err(Error::Conflict(format!(
            "the inventory of `{}` already has instances ({}) and differs from the state's ({}); import into an empty root, or pass --force to replace it (its book-keeping is lost; instance data is not touched)",
            root.display(),
            current.instances.keys().cloned().collect::<Vec<_>>().join(", "),
            imported.instances.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    crate::fsutil::write_atomic(&Config::path(root), text.as_bytes(), 0o600)?;
    restore_database(&scratch.0, &db_path)?;
    drop(scratch);
    let added = merge_journal(&root.join(JOURNAL), &loaded.files[JOURNAL])?;
    let keys = crate::model::signing::import_keys(root, secret_key, &trusted_keys)?;
    // Tables a newer schema adds on open (and the inventory's own) are there afterwards.
    Context::init(root)?;
    Ok(StateReport {
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        format_version: loaded.header.format_version,
        instances: imported.instances.keys().cloned().collect(),
        journal_lines: loaded.files[JOURNAL]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        journal_lines_added: added,
        replaced: differs,
        bytes: loaded.bytes,
        signing_key: Some(keys.key_id),
        trusted_imported_key: keys.trusted_imported_key,
    })
}

fn record(
    operation: &str,
    arguments: serde_json::Value,
    started_at: DateTime<Utc>,
    result: &Result<StateReport>,
) -> Record {
    let (outcome, error_kind, error) = match result {
        Ok(_) => ("ok", None, None),
        Err(e) => ("error", Some(e.kind().to_string()), Some(e.to_string())),
    };
    Record {
        operation: operation.to_string(),
        arguments,
        user: journal::current_user(),
        host: journal::host_name(),
        pid: std::process::id(),
        girofle_version: crate::VERSION.to_string(),
        versions: json!({ "state_format": STATE_FORMAT_VERSION }),
        started_at,
        ended_at: Utc::now(),
        outcome: outcome.to_string(),
        error_kind,
        error,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend("state", e))?
}

/// Exports the state of the root at `root` into `file` (see the module documentation).
/// Journaled as `state-export`.
///
/// # Errors
/// `NotFound` when the root is not initialised, `Backend` when the inventory cannot be
/// snapshotted, `Io` when the file cannot be written.
pub(crate) async fn export(root: &Path, file: &Path) -> Result<StateReport> {
    let root = std::path::absolute(root).ctx("resolve", root)?;
    let file = std::path::absolute(file).ctx("resolve", file)?;
    let started = Utc::now();
    let (r, f) = (root.clone(), file.clone());
    let result = match Config::load(&root) {
        Ok(config) => match etcd_book(&config).await {
            Ok(from_etcd) => blocking(move || export_blocking(&r, &f, from_etcd)).await,
            Err(e) => Err(e),
        },
        Err(_) => blocking(move || export_blocking(&r, &f, None)).await,
    };
    if Config::path(&root).exists() {
        let secrets = secrets_of(&root);
        let rec = record("state-export", json!({ "file": file }), started, &result);
        if let Err(e) = Journal::new(&root).append(&rec, &secrets) {
            if result.is_ok() {
                return Err(e);
            }
        }
    }
    result
}

/// Imports a state file into the root at `root`, initialising it when needed (see the
/// module documentation). Journaled as `state-import`.
///
/// # Errors
/// `Conflict` when the root's inventory has other instances and `force` is not set,
/// `Corrupt` for a damaged file, `VersionMismatch` for a newer state format,
/// `InvalidInput` when its configuration does not parse here, `NotFound` for no file.
pub(crate) async fn import(root: &Path, file: &Path, force: bool) -> Result<StateReport> {
    if let Some(e) = crate::model::config::root_not_a_directory(root) {
        return Err(e);
    }
    let root = std::path::absolute(root).ctx("resolve", root)?;
    let file = std::path::absolute(file).ctx("resolve", file)?;
    let started = Utc::now();
    let (r, f) = (root.clone(), file.clone());
    let result = match etcd_target(&file, force).await {
        Ok(target) => {
            let imported = blocking(move || import_blocking(&r, &f, force)).await;
            match (imported, target) {
                (Ok(report), Some((inv, fleet, book))) => {
                    let written = inv
                        .transact(&mut |f: &mut Fleet| {
                            f.clone_from(&fleet);
                            Ok(())
                        })
                        .await;
                    match written {
                        Ok(_) => EtcdBook::new(inv).replace(&book).await.map(|()| report),
                        Err(e) => Err(e),
                    }
                }
                (other, _) => other,
            }
        }
        Err(e) => Err(e),
    };
    if root.is_dir() {
        let secrets = secrets_of(&root);
        let rec = record(
            "state-import",
            json!({ "file": file, "force": force }),
            started,
            &result,
        );
        if let Err(e) = Journal::new(&root).append(&rec, &secrets) {
            if result.is_ok() {
                return Err(e);
            }
        }
    }
    result
}

/// When the state's girofle.toml puts the inventory on etcd: that inventory and the
/// state's fleet and schedule book, to write there once the root is imported. Refused,
/// before anything is written, when etcd holds another fleet and `force` is not set.
async fn etcd_target(file: &Path, force: bool) -> Result<Option<(EtcdInventory, Fleet, BookDump)>> {
    let f = file.to_path_buf();
    let (config, fleet, book) = blocking(move || {
        let loaded = load(&f)?;
        let text = String::from_utf8_lossy(&loaded.files[CONFIG_FILE]).into_owned();
        let config = Config::parse(&text, Path::new("girofle.toml (in the state file)"))?;
        let scratch = tempfile::NamedTempFile::new().ctx("create", Path::new("/tmp"))?;
        std::fs::write(scratch.path(), &loaded.files[INVENTORY]).ctx("write", scratch.path())?;
        let book = ScheduleBook::open(scratch.path())?.dump()?;
        Ok((config, read_fleet(scratch.path())?, book))
    })
    .await?;
    let Some((inv, current)) = etcd_fleet(&config).await? else {
        return Ok(None);
    };
    if !current.instances.is_empty() && current != fleet && !force {
        return Err(Error::Conflict(format!(
            "the state puts the inventory on etcd, whose namespace `{}` holds another fleet ({}); pass --force to replace it with the state's ({})",
            config.inventory.namespace,
            current.instances.keys().cloned().collect::<Vec<_>>().join(", "),
            fleet.instances.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(Some((inv, fleet, book)))
}

fn secrets_of(root: &Path) -> Vec<String> {
    Config::load(root)
        .map(|c| {
            c.stores
                .values()
                .filter_map(|s| s.secret_access_key.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn root_with_instances(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        Context::init(&root).unwrap();
        let inv = crate::adapters::inventory::SqliteInventory::open(&root.join(INVENTORY)).unwrap();
        use crate::adapters::inventory::Inventory;
        inv.transact(&mut |f: &mut Fleet| {
            for i in 0..n {
                let rec: InstanceRecord = serde_json::from_value(json!({
                    "name": format!("i{i}"), "image": "img:1-ce.0",
                    "bindings": {"ip": "127.0.0.1", "http_port": 20080 + i * 3, "https_port": 20081 + i * 3, "ssh_port": 20082 + i * 3},
                    "hostname": null, "external_url": "http://127.0.0.1", "settings": {}, "labels": {},
                    "created_at": "2026-01-01T00:00:00Z", "stage": "active"
                }))
                .unwrap();
                f.instances.insert(rec.name.clone(), rec);
            }
            Ok(())
        })
        .await
        .unwrap();
        (dir, root)
    }

    #[tokio::test]
    async fn round_trip_is_idempotent_and_guarded() {
        let (dir, root) = root_with_instances(2).await;
        let file = dir.path().join("state.girofle");
        // Twice: the second export holds the journal record of the first.
        export(&root, &file).await.unwrap();
        let r = export(&root, &file).await.unwrap();
        assert_eq!(r.instances, vec!["i0", "i1"]);
        assert_eq!(r.journal_lines, 1);
        let other = dir.path().join("other");
        let a = import(&other, &file, false).await.unwrap();
        assert!(a.journal_lines_added >= 1);
        let b = import(&other, &file, false).await.unwrap();
        assert_eq!(b.journal_lines_added, 0, "the journal was merged twice");
        assert_eq!(
            read_fleet(&other.join(INVENTORY)).unwrap(),
            read_fleet(&root.join(INVENTORY)).unwrap()
        );
        let (_d2, busy) = root_with_instances(1).await;
        let e = import(&busy, &file, false).await.unwrap_err();
        assert_eq!(e.kind(), "conflict", "{e}");
        import(&busy, &file, true).await.unwrap();
        assert_eq!(
            read_fleet(&busy.join(INVENTORY)).unwrap().instances.len(),
            2
        );
    }

    #[tokio::test]
    async fn newer_formats_and_damage_are_refused() {
        let (dir, root) = root_with_instances(1).await;
        let file = dir.path().join("s");
        export(&root, &file).await.unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        let e = import(&dir.path().join("x"), &bad, false)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "corrupt", "{e}");

        // A state from a newer Girofle.
        let header = json!({"kind": KIND, "format_version": 99, "girofle_version": "9.0.0"});
        let mut tar = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).unwrap());
        let data = serde_json::to_vec(&header).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, HEADER, data.as_slice()).unwrap();
        let newer = dir.path().join("newer");
        std::fs::write(&newer, tar.into_inner().unwrap().finish().unwrap()).unwrap();
        let e = import(&dir.path().join("y"), &newer, false)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "version_mismatch", "{e}");
    }
}
