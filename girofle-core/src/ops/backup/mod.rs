//! Backups of instances (R-BAK-1,2,6): take one (cold or online), list, verify, copy to
//! another store, prune by a retention policy.
//!
//! A backup is three objects in a store: `<instance>/<ts>.tar.zst` (the archive, see
//! `archive`), `<instance>/<ts>.index` (its index as JSON lines: every entry with its hash,
//! the same bytes as the archive's last entry, read as a stream beside the archive) and
//! `<instance>/<ts>.manifest` (a small document: the header, the archive's and the index's
//! sizes and hashes, the totals; written last, so a listing never shows a backup whose
//! archive is incomplete, and cheap to read whatever the number of files). The manifest
//! is signed with the fleet's key into `<instance>/<ts>.manifest.minisig`, written just
//! before it (see `signing`); everything that reads a backup to act on it (verify, copy,
//! restore, drill) goes through [`read_manifest`], which returns only manifests signed by
//! a trusted key. This module orchestrates the instance, the archive and the store;
//! restoring is `restore`'s job.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::adapters::inventory::InventoryExt;
use crate::adapters::runtime::{ContainerRuntimeExt, ExecSpec};
use crate::adapters::store::BackupStore;
use crate::error::{Error, IoContext, Result};
use crate::model::context::Context;
use crate::model::instance::{self, InstanceDirs, InstanceRecord};
use crate::model::intent::{ColdBackupPhase, IntentFile, OnlineBackupPhase, Operation};
pub use crate::model::policy::{retained, Retention, Strategy};
use crate::model::signing::{SignatureCheck, Signed, TrustedKeys};
use crate::model::warning::{NextStep, Warning};
use girofle_archive::{
    self as archive, ArchiveSummary, ChannelReader, ChannelWriter, CompressionOptions,
    ExpectedIndex, IndexSummary, Progress, Source,
};

mod engine;
mod undo;

// The format's parts as data live in `girofle_archive` (the fuzz targets build on it
// alone); they keep their paths here.
pub(crate) use girofle_archive::manifest::{
    archive_key, index_key, manifest_key, signature_key, MANIFEST_SUFFIX,
};
pub use girofle_archive::manifest::{parse_id, ArchiveRef, IndexRef, FORMAT_VERSION};

/// Everything known about a backup but its per-file index; kept beside the archive.
pub type Manifest = girofle_archive::manifest::Manifest<BackupHeader>;

/// Chunks of the index object when it is uploaded.
const INDEX_CHUNK: usize = 1 << 20;
/// What the archive writer says when the store stopped reading its stream (`archive`'s
/// `ChannelWriter`).
const CONSUMER_GONE: &str = "the archive consumer is gone";

/// The first entry of every archive, and the head of its manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupHeader {
    pub format_version: u32,
    /// `<instance>/<UTC timestamp>`.
    pub id: String,
    /// The instance as the inventory had it, each setting's value replaced by its keyed
    /// fingerprint (`gitlab.rb` in the archive holds the values; restore reads them there).
    pub instance: InstanceRecord,
    pub image: String,
    /// GitLab version read from the container (`/opt/gitlab/version-manifest.txt`).
    pub gitlab_version: String,
    /// `ce` or `ee`.
    pub edition: String,
    pub strategy: Strategy,
    pub created_at: DateTime<Utc>,
    pub host: String,
    pub girofle_version: String,
    pub include_logs: bool,
    /// The id `gitlab-backup create` was given (online backups).
    pub gitlab_backup_id: Option<String>,
}

/// A progress callback (files and bytes so far).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Options of a backup.
#[derive(Clone, Default)]
pub struct BackupOptions {
    pub strategy: Strategy,
    /// Store name (default `local`).
    pub store: Option<String>,
    /// Leave `/var/log/gitlab` out.
    pub no_logs: bool,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("strategy", &self.strategy)
            .field("store", &self.store)
            .field("no_logs", &self.no_logs)
            .finish()
    }
}

/// What a backup produced.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub store: String,
    pub strategy: Strategy,
    pub gitlab_version: String,
    pub files: u64,
    pub bytes: u64,
    pub archive_size: u64,
    pub duration_ms: u64,
    pub downtime_ms: Option<u64>,
}

/// One line of a backup listing.
#[derive(Clone, Debug, Serialize)]
pub struct BackupEntry {
    pub id: String,
    pub store: String,
    pub instance: String,
    pub created_at: DateTime<Utc>,
    pub strategy: Strategy,
    pub gitlab_version: String,
    pub image: String,
    pub files: u64,
    pub bytes: u64,
    pub archive_size: u64,
    /// Whether its manifest is signed by a key this fleet trusts (`trusted`), by another
    /// key (`untrusted`), not at all (`unsigned`: made before backups were signed), or
    /// with a signature that does not match it (`bad`). Only `trusted` ones restore.
    pub signed: Signed,
    /// The key id of its signature, when it has one.
    pub key_id: Option<String>,
}

/// What `backup sign` did.
#[derive(Clone, Debug, Serialize)]
pub struct SignReport {
    pub id: String,
    pub store: String,
    /// The key id it is signed with now.
    pub key_id: String,
    /// Whether it wrote a signature (false: a trusted key had signed it already).
    pub signed_now: bool,
    /// How it was signed before.
    pub was: Signed,
}

/// A backup a listing leaves out because it cannot be restored as it is: its manifest is
/// damaged, or its archive or index is missing or of another size than the manifest says.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedBackup {
    pub id: String,
    pub store: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for DamagedBackup {
    /// What a front end warns (it adds how to check the backup again).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup `{}` in store `{}` is damaged and not listed: {}; it cannot be restored, restore another one",
            self.id, self.store, self.reason
        )
    }
}

impl DamagedBackup {
    /// The warning a front shows for it (with how to check it again).
    #[must_use]
    pub fn warning(&self) -> Warning {
        Warning {
            message: self.to_string(),
            next: NextStep::VerifyBackup {
                id: self.id.clone(),
                store: self.store.clone(),
            },
        }
    }
}

/// A listing of the complete backups in a store, and the damaged ones it leaves out.
#[derive(Clone, Debug, Serialize)]
pub struct BackupScan {
    /// The complete backups, oldest first.
    pub backups: Vec<BackupEntry>,
    /// What was left out because it cannot be restored as it is.
    pub damaged: Vec<DamagedBackup>,
}

impl BackupScan {
    /// One warning per damaged backup left out.
    #[must_use]
    pub fn warnings(&self) -> Vec<Warning> {
        self.damaged.iter().map(DamagedBackup::warning).collect()
    }
}

/// A backup checked end to end (`verify`): every hash matches.
///
/// The fields are in name order, as the CLI's `--json` printed them before this type
/// existed (a `serde_json` map sorts its keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Bytes of the files it holds (uncompressed).
    pub bytes: u64,
    /// Files it holds.
    pub files: u64,
    pub id: String,
    /// Always `true`: a backup that does not verify is an error.
    pub ok: bool,
}

impl Verified {
    /// What verifying backup `id` (of `manifest`) found, once every hash matched.
    #[must_use]
    pub fn of(id: &str, manifest: &Manifest) -> Self {
        Verified {
            bytes: manifest.index.bytes,
            files: manifest.index.files,
            id: id.to_string(),
            ok: true,
        }
    }
}

/// A backup copied to another store (`backup copy`), hash checked on the way.
///
/// Fields in name order, as [`Verified`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub id: String,
    /// Size of the archive copied, in bytes.
    pub size: u64,
    /// The store it was copied to.
    pub to: String,
}

/// Forwards a store's stream into a bounded channel, for a blocking reader. Returns the
/// store's error, if its stream failed: the reader only sees it as I/O text, and the
/// kind (a damaged encrypted object is `Corrupt`, an unreachable server `Backend`)
/// must reach the user.
async fn forward(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes>>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> Option<Error> {
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if tx.send(Ok(bytes)).await.is_err() {
                    return None;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return Some(e);
            }
        }
    }
    None
}

/// Streams an archive and its index out of a store into a blocking reader on the
/// blocking pool, both at once (the reader checks them in lockstep).
pub(crate) async fn read_archive_with<T, F>(
    store: &Arc<dyn BackupStore>,
    archive: &ArchiveRef,
    index: &IndexRef,
    f: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(ChannelReader, ChannelReader) -> Result<T> + Send + 'static,
{
    let archive_stream = store.get_stream(&archive.key).await?;
    let index_stream = store.get_stream(&index.key).await.map_err(|e| match e {
        Error::NotFound { .. } => Error::corrupt(
            format!("backup index `{}` in store `{}`", index.key, store.name()),
            "it is missing: the backup is incomplete; use another one",
        ),
        e => e,
    })?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let (itx, irx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let consumer =
        tokio::task::spawn_blocking(move || f(ChannelReader::new(rx), ChannelReader::new(irx)));
    let (archive_failed, index_failed, result) = tokio::join!(
        forward(archive_stream, tx),
        forward(index_stream, itx),
        consumer
    );
    let result = result.map_err(|e| Error::backend("archive reader", e.to_string()))?;
    match (result, archive_failed.or(index_failed)) {
        // The reader failed because the store did: the store's error says why.
        (Err(_), Some(store_error)) => Err(store_error),
        (result, _) => result,
    }
}

/// Streams an archive of `sources` into `store` as `<id>.tar.zst` (memory flat whatever
/// the size and the number of files), then its index as `<id>.index`; returns where they
/// are. Writing the manifest that makes the backup visible is the caller's last step.
///
/// # Errors
/// As [`archive::write_archive`]; and `Io`/`Backend` when the store fails (nothing is
/// left under the archive's key then).
pub async fn archive_to_store(
    store: &Arc<dyn BackupStore>,
    id: &str,
    header: &serde_json::Value,
    sources: &[Source],
    compression: CompressionOptions,
    progress: Option<ProgressFn>,
) -> Result<(ArchiveRef, IndexRef)> {
    let sources = sources.to_vec();
    let header = header.clone();
    stream_to_store(store, id, progress, move |out, report| {
        archive::write_archive(&header, &sources, compression, out, report)
    })
    .await
}

/// Streams the archive that `write` produces (on the blocking pool, into a bounded
/// channel) into `store` as `<id>.tar.zst`, then the index it made as `<id>.index`;
/// returns where they are. Whatever fails, nothing is left under the archive's key.
pub(crate) async fn stream_to_store<F>(
    store: &Arc<dyn BackupStore>,
    id: &str,
    progress: Option<ProgressFn>,
    write: F,
) -> Result<(ArchiveRef, IndexRef)>
where
    F: FnOnce(&mut ChannelWriter, &mut dyn FnMut(Progress)) -> archive::Result<ArchiveSummary>
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let producer = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(tx);
        let mut report = |p: Progress| {
            if let Some(f) = &progress {
                f(p);
            }
        };
        match write(&mut writer, &mut report) {
            Ok(summary) => match writer.finish() {
                Ok(()) => Ok(summary),
                Err(e) => Err(Error::io("stream the archive", PathBuf::from("(store)"), e)),
            },
            Err(e) => {
                writer.abort(std::io::Error::other(e.to_string()));
                Err(Error::from(e))
            }
        }
    });
    let key = archive_key(id);
    let (uploaded, produced) = tokio::join!(store.put_stream(&key, rx), producer);
    let produced = produced.map_err(|e| Error::backend("archive writer", e.to_string()))?;
    // The archive writer's error says what really went wrong (a source unreadable,
    // the disk full); the upload error only that the stream stopped.
    let summary = match (produced, uploaded) {
        // ...unless the writer only saw the store stop reading: then the store's error
        // (a full disk, a dead server) is the one that says what happened.
        (Err(e), Err(upload)) if e.to_string().contains(CONSUMER_GONE) => {
            let _ = store.delete(&key).await;
            return Err(disk_full_said(upload));
        }
        (Err(e), _) => {
            let _ = store.delete(&key).await;
            return Err(disk_full_said(e));
        }
        (Ok(_), Err(e)) => return Err(disk_full_said(e)),
        (Ok(s), Ok(_)) => s,
    };
    let index = IndexRef::new(index_key(id), &summary.index);
    if let Err(e) = upload_file(store, &index.key, summary.index_file).await {
        // An archive without its index is of no use: it must not linger in the store.
        let _ = store.delete(&key).await;
        return Err(disk_full_said(e));
    }
    Ok((
        ArchiveRef {
            key,
            size: summary.archive_size,
            blake3: summary.archive_hash,
        },
        index,
    ))
}

/// Says so plainly when a write failed because the disk is full (`ENOSPC`, `EDQUOT`):
/// the raw "os error 28" does not tell an operator what to do.
fn disk_full_said(e: Error) -> Error {
    match e {
        Error::Io {
            action,
            path,
            source,
        } if matches!(source.raw_os_error(), Some(28) | Some(122)) => Error::Io {
            action: format!(
                "the disk is full (free space there or prune old backups with `girofle backup prune`): {action}"
            ),
            path,
            source,
        },
        e => e,
    }
}

/// Streams a local file into `key` in chunks.
async fn upload_file(store: &Arc<dyn BackupStore>, key: &str, file: std::fs::File) -> Result<u64> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut chunk = vec![0u8; INDEX_CHUNK];
            let n = match file.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            chunk.truncate(n);
            if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                return;
            }
        }
    });
    let (uploaded, read) = tokio::join!(store.put_stream(key, rx), reader);
    read.map_err(|e| Error::backend("index reader", e.to_string()))?;
    uploaded
}

/// Extracts a backup's archive from `store` into `target` (new or empty), checking every
/// entry against the index beside it, every file's BLAKE3, and the archive's and the
/// index's sizes and hashes. Returns the index summary.
///
/// # Errors
/// As [`archive::extract_archive`]; `Corrupt` when the index is missing.
pub async fn extract_from_store(
    store: &Arc<dyn BackupStore>,
    archive: &ArchiveRef,
    index: &IndexRef,
    target: &Path,
    progress: Option<ProgressFn>,
) -> Result<IndexSummary> {
    let archive_ref = archive.clone();
    let index_ref = index.clone();
    let target = target.to_path_buf();
    read_archive_with(store, archive, index, move |reader, index_reader| {
        let mut report = |p: Progress| {
            if let Some(f) = &progress {
                f(p);
            }
        };
        archive::extract_archive(
            reader,
            &target,
            ExpectedIndex::new(index_reader, Some((index_ref.size, &index_ref.blake3))),
            Some((archive_ref.size, &archive_ref.blake3)),
            &mut report,
        )
        .map(|(_, s)| s)
        .map_err(Error::from)
    })
    .await
}

/// Checks a backup's archive in `store` against the index beside it, without writing
/// anything. Returns the index summary.
///
/// # Errors
/// As [`archive::verify_archive`]; `Corrupt` when the index is missing.
pub async fn verify_in_store(
    store: &Arc<dyn BackupStore>,
    archive: &ArchiveRef,
    index: &IndexRef,
) -> Result<IndexSummary> {
    let archive_ref = archive.clone();
    let index_ref = index.clone();
    read_archive_with(store, archive, index, move |reader, index_reader| {
        archive::verify_archive(
            reader,
            Some(ExpectedIndex::new(
                index_reader,
                Some((index_ref.size, &index_ref.blake3)),
            )),
            Some((archive_ref.size, &archive_ref.blake3)),
        )
        .map(|(_, s)| s)
        .map_err(Error::from)
    })
    .await
}

impl Context {
    fn compression(&self) -> CompressionOptions {
        let default = CompressionOptions::default();
        CompressionOptions {
            level: self.config.backup.level,
            threads: match self.config.backup.threads {
                0 => default.threads,
                n => n,
            },
        }
    }

    /// Takes a backup of an instance into a store.
    pub(crate) async fn backup(&self, name: &str, options: BackupOptions) -> Result<BackupReport> {
        let record = self.inventory.get(name).await?;
        self.journaled(
            "backup",
            json!({ "name": name, "strategy": options.strategy, "store": options.store, "no_logs": options.no_logs }),
            json!({ "image": record.image }),
            Box::pin(async {
                let here = self.at(&record).await?;
                if options.strategy == Strategy::Online && !here.site.is_local() {
                    return Err(Error::invalid(
                        "--strategy",
                        format!(
                            "an online backup reads GitLab's own backup file through this machine's paths, and instance `{name}` runs on host `{}`, reached only through its engine; take a cold backup with --strategy cold (GitLab stops while its directories stream out of that engine)",
                            here.site.host()
                        ),
                    ));
                }
                here.backup_inner(record.clone(), options).await
            }),
        )
        .await
    }

    /// The final backup of a decommission, into the local store: online when the
    /// instance is healthy and its directories are local, cold otherwise (an instance on
    /// another host is backed up cold, its directories streamed out of its engine).
    /// `self` is on the instance's host.
    pub(crate) async fn final_backup(&self, record: &InstanceRecord) -> Result<String> {
        let info = self.runtime.inspect(&record.container_name()).await?;
        let healthy = match &info {
            Some(i) => crate::model::health::serves_now(&*self.runtime, i).await,
            None => false,
        };
        let dirs = self.instance_dirs(&record.name);
        if !self.files().exists(&dirs.data).await? {
            return Err(Error::not_found(
                format!("data of `{}`", record.name),
                "nothing to back up; pass --no-backup to decommission anyway",
            ));
        }
        let strategy = if healthy && self.site.is_local() {
            Strategy::Online
        } else {
            Strategy::Cold
        };
        let report = self
            .backup(
                &record.name,
                BackupOptions {
                    strategy,
                    ..Default::default()
                },
            )
            .await?;
        Ok(report.id)
    }

    async fn gitlab_version(&self, record: &InstanceRecord, running: bool) -> (String, String) {
        let from_tag = instance::image_version(&record.image).unwrap_or_default();
        if !running {
            return from_tag;
        }
        let read = ExecSpec {
            cmd: vec![
                "head".into(),
                "-n1".into(),
                "/opt/gitlab/version-manifest.txt".into(),
            ],
            ..Default::default()
        };
        match self.runtime.exec_ok(&record.container_name(), &read).await {
            Ok(line) => {
                // `gitlab-ce 17.5.1`
                let mut parts = line.split_whitespace();
                let edition = parts
                    .next()
                    .and_then(|p| p.strip_prefix("gitlab-"))
                    .map(str::to_string);
                let version = parts.next().map(str::to_string);
                match (version, edition) {
                    (Some(v), Some(e)) => (v, e),
                    _ => from_tag,
                }
            }
            Err(_) => from_tag,
        }
    }

    async fn new_backup_id(&self, name: &str, store: &Arc<dyn BackupStore>) -> Result<String> {
        loop {
            let id = format!("{name}/{}", Utc::now().format("%Y%m%dT%H%M%SZ"));
            if store.head(&manifest_key(&id)).await.is_err() {
                return Ok(id);
            }
            // Two backups within one second: the id is the timestamp, so wait for the next.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn backup_inner(
        &self,
        record: InstanceRecord,
        options: BackupOptions,
    ) -> Result<BackupReport> {
        let store = self.store(options.store.as_deref())?;
        // Before GitLab is touched: a backup that could not be signed is of no use.
        let signer = crate::model::signing::SigningKey::load(&self.root)?;
        let _lock = self.lock_instance(&record.name, "backup").await?;
        let container = record.container_name();
        let info = self.runtime.inspect(&container).await?;
        let running = info.as_ref().map(|i| i.running).unwrap_or(false);
        if options.strategy == Strategy::Online {
            let healthy = match &info {
                Some(i) => crate::model::health::serves_now(&*self.runtime, i).await,
                None => false,
            };
            if !healthy {
                return Err(Error::Conflict(format!(
                    "instance `{}` is not running and healthy, so GitLab cannot back itself up online; start it, or use --strategy cold",
                    record.name
                )));
            }
        }
        let (gitlab_version, edition) = self.gitlab_version(&record, running).await;
        let id = self.new_backup_id(&record.name, &store).await?;
        let started = Instant::now();
        let dirs = self.instance_dirs(&record.name);
        let mut header = BackupHeader {
            format_version: FORMAT_VERSION,
            id: id.clone(),
            instance: record.fingerprinted(&self.fingerprint_key()?),
            image: record.image.clone(),
            gitlab_version: gitlab_version.clone(),
            edition,
            strategy: options.strategy,
            created_at: Utc::now(),
            host: crate::model::journal::host_name(),
            girofle_version: crate::VERSION.to_string(),
            include_logs: !options.no_logs,
            gitlab_backup_id: None,
        };
        let mut sources = vec![Source {
            prefix: "config".into(),
            dir: dirs.config.clone(),
        }];
        let (manifest, downtime, intent) = match options.strategy {
            Strategy::Cold => {
                if !options.no_logs {
                    sources.push(Source {
                        prefix: "logs".into(),
                        dir: dirs.logs.clone(),
                    });
                }
                sources.insert(
                    1,
                    Source {
                        prefix: "data".into(),
                        dir: dirs.data.clone(),
                    },
                );
                // Until this record goes, a crash leaves GitLab stopped: recovery starts it.
                let intent = IntentFile::begin(
                    self,
                    &record.name,
                    Operation::ColdBackup {
                        phase: ColdBackupPhase::Archiving,
                        was_running: running,
                        store: store.name().to_string(),
                        id: id.clone(),
                    },
                )
                .await?;
                let down = Instant::now();
                let stopped = if running {
                    self.runtime.stop(&container, self.stop_grace()).await
                } else {
                    Ok(())
                };
                if let Err(e) = stopped {
                    self.settle(intent).await;
                    return Err(e);
                }
                let progress = options.progress.clone();
                let result = if self.site.is_local() {
                    self.archive_to_store(&header, &sources, &store, &id, progress)
                        .await
                } else {
                    self.archive_from_engine(&header, &sources, &store, &id, progress)
                        .await
                };
                // GitLab comes back whatever happened to the archive.
                let restarted = if running {
                    match self.runtime.start(&container).await {
                        Ok(()) => {
                            crate::model::health::wait_booted(
                                &*self.runtime,
                                &container,
                                self.boot_timeout(),
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                };
                let downtime = down.elapsed();
                match (result, restarted) {
                    (Ok(manifest), Ok(())) => (manifest, Some(downtime), intent),
                    (Err(e), _) | (_, Err(e)) => {
                        self.settle(intent).await;
                        return Err(e);
                    }
                }
            }
            Strategy::Online => {
                let gid = format!(
                    "{}_{}_{}",
                    header.created_at.timestamp(),
                    header.created_at.format("%Y_%m_%d"),
                    gitlab_version
                );
                header.gitlab_backup_id = Some(gid.clone());
                let create = ExecSpec {
                    cmd: vec!["gitlab-backup".into(), "create".into()],
                    env: vec![
                        format!("BACKUP={gid}"),
                        // Copy first, so busy repositories do not fail with "file changed
                        // as we read it".
                        "STRATEGY=copy".into(),
                        "CRON=1".into(),
                    ],
                    user: None,
                };
                // Where GitLab stages its parts and writes its tar: its backup path, in
                // the data volume (refused before anything runs when it is elsewhere).
                let gitlab_dir = crate::ops::gitlab_backup::backup_path(&record.name, &dirs)?;
                let tar_name = format!("{gid}_gitlab_backup.tar");
                let produced = gitlab_dir.host.join(&tar_name);
                // Move GitLab's tar out of the data volume into a directory of its own
                // (same file system: a rename), so it can be archived alone and never
                // lingers on the instance's disk.
                let holder = self.root.join("staging").join(format!(
                    "backup-{}-{}",
                    record.name,
                    header.created_at.timestamp()
                ));
                // Until this record goes, a crash may leave GitLab's tar and staging parts
                // in the data volume: recovery removes them.
                let mut intent = IntentFile::begin(
                    self,
                    &record.name,
                    Operation::OnlineBackup {
                        phase: OnlineBackupPhase::GitlabBackup,
                        store: store.name().to_string(),
                        id: id.clone(),
                        gitlab_tar: produced.clone(),
                        holder: holder.clone(),
                    },
                )
                .await?;
                // Under CRON=1 GitLab prints nothing, errors included: its reasons are
                // only what it appends to backup_json.log from now on.
                let log_mark = crate::ops::gitlab_backup::LogMark::now(&dirs);
                let ran = match self.runtime.exec(&container, &create).await {
                    Ok(out) if out.exit_code == 0 => Ok(()),
                    Ok(out) => Err(self.gitlab_backup_failed(
                        &container,
                        &create,
                        out,
                        &log_mark,
                        &dirs,
                        &gitlab_dir,
                        &tar_name,
                    )),
                    Err(e) => Err(e),
                };
                match ran {
                    Ok(()) => {}
                    // GitLab refused to start: nothing of this backup was written, and the
                    // files in its backup path belong to the run that holds it.
                    Err(e @ Error::Conflict(_)) => {
                        intent.finish().await?;
                        return Err(e);
                    }
                    Err(e) => {
                        self.settle(intent).await;
                        return Err(e);
                    }
                }
                intent.phase(OnlineBackupPhase::Archiving).await?;
                let moved = holder.join(&tar_name);
                let result = match std::fs::create_dir_all(&holder)
                    .ctx("create directory", &holder)
                    .and_then(|()| {
                        std::fs::rename(&produced, &moved)
                            .ctx("take GitLab's backup file", &produced)
                    }) {
                    Ok(()) => {
                        sources.push(Source {
                            prefix: "gitlab-backup".into(),
                            dir: holder.clone(),
                        });
                        if !options.no_logs {
                            sources.push(Source {
                                prefix: "logs".into(),
                                dir: dirs.logs.clone(),
                            });
                        }
                        self.archive_to_store(
                            &header,
                            &sources,
                            &store,
                            &id,
                            options.progress.clone(),
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                let _ = std::fs::remove_dir_all(&holder);
                // GitLab deletes its staging parts after packing them; whatever it left
                // (its `tmp/`, a part of a run it did not finish) must not linger either.
                let _ = crate::ops::gitlab_backup::remove_parts(
                    &dirs.data,
                    &gitlab_dir.host,
                    &tar_name,
                );
                match result {
                    Ok(manifest) => (manifest, None, intent),
                    Err(e) => {
                        self.settle(intent).await;
                        return Err(e);
                    }
                }
            }
        };
        let mut manifest = manifest;
        manifest.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        manifest.downtime_ms = downtime.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // The signature, then the manifest last: only now does the backup list.
        let written = match manifest
            .to_bytes()
            .map_err(Error::from)
            .and_then(|bytes| Ok((signer.sign(&id, &bytes)?, bytes)))
        {
            Ok((signature, bytes)) => {
                match store
                    .put_bytes(&signature_key(&id), Bytes::from(signature))
                    .await
                {
                    Ok(()) => {
                        store
                            .put_bytes(&manifest_key(&id), Bytes::from(bytes))
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.settle(intent).await;
            return Err(e);
        }
        crate::model::notify::made_backup(&id);
        intent.finish().await?;
        Ok(BackupReport {
            id,
            store: store.name().to_string(),
            strategy: options.strategy,
            gitlab_version,
            files: manifest.index.files,
            bytes: manifest.index.bytes,
            archive_size: manifest.archive.size,
            duration_ms: manifest.duration_ms,
            downtime_ms: manifest.downtime_ms,
        })
    }

    /// The error of a `gitlab-backup create` that exited non-zero: GitLab's own reasons
    /// (its errors in backup_json.log since `mark`: under CRON=1 it prints nothing), after
    /// removing the tar and staging parts it left in its backup path — unless it refused
    /// because another backup or restore runs in the container (those files are that
    /// one's).
    #[allow(clippy::too_many_arguments)]
    fn gitlab_backup_failed(
        &self,
        container: &str,
        create: &ExecSpec,
        out: crate::adapters::runtime::ExecOutput,
        mark: &crate::ops::gitlab_backup::LogMark,
        dirs: &InstanceDirs,
        gitlab_dir: &crate::ops::gitlab_backup::BackupPath,
        tar_name: &str,
    ) -> Error {
        let printed = out.output.trim();
        if crate::ops::gitlab_backup::refused_as_busy(printed) {
            return Error::Conflict(format!(
                "GitLab in container `{container}` refused to back up: another backup or restore runs inside it (GitLab: {}); wait for it to end, then back up again",
                crate::adapters::runtime::last_lines(printed, 5).trim()
            ));
        }
        let mut output = mark.said().to_string();
        if !printed.is_empty() {
            output.push_str(&format!(
                "\nGitLab printed:\n{}",
                crate::adapters::runtime::last_lines(printed, 20)
            ));
        }
        match crate::ops::gitlab_backup::remove_parts(&dirs.data, &gitlab_dir.host, tar_name) {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => output.push_str(&format!(
                "\nGirofle removed what GitLab left in its backup path {} ({})",
                gitlab_dir.container,
                removed.join(", ")
            )),
            Err(e) => output.push_str(&format!(
                "\nGirofle could not remove what GitLab left in its backup path {}: {e}",
                gitlab_dir.container
            )),
        }
        output.push_str("\nFix what GitLab says, then back up again (or use --strategy cold).");
        Error::Command {
            container: container.to_string(),
            command: create.cmd.join(" "),
            exit_code: out.exit_code,
            output,
        }
    }

    /// Writes the archive of `sources` and its index into `store` (streamed: flat memory)
    /// and returns the manifest to write once the caller is done.
    async fn archive_to_store(
        &self,
        header: &BackupHeader,
        sources: &[Source],
        store: &Arc<dyn BackupStore>,
        id: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Manifest> {
        let header_json =
            serde_json::to_value(header).map_err(|e| Error::backend("manifest", e.to_string()))?;
        let (archive, index) = archive_to_store(
            store,
            id,
            &header_json,
            sources,
            self.compression(),
            progress,
        )
        .await?;
        Ok(Manifest {
            header: header.clone(),
            archive,
            index,
            duration_ms: 0,
            downtime_ms: None,
        })
    }

    /// Reads and checks a backup's manifest and its signature.
    pub(crate) async fn manifest(&self, id: &str, store: Option<&str>) -> Result<Manifest> {
        parse_id(id)?;
        let store = self.store(store)?;
        read_manifest(&store, id, &self.trusted_keys()?).await
    }

    /// The backups in a store (of one instance, or all), oldest first. A backup whose
    /// manifest is damaged, or whose archive is missing or of the wrong size, is not
    /// listed. Unsigned and untrusted ones are, saying so (`signed`); only trusted ones
    /// restore. Needs no secret key.
    pub(crate) async fn list_backups(
        &self,
        name: Option<&str>,
        store: Option<&str>,
    ) -> Result<Vec<BackupEntry>> {
        Ok(self.scan_backups(name, store).await?.0)
    }

    /// As [`list_backups`](Self::list_backups), and the backups it leaves out because
    /// they are damaged (for the operator to be told: such a backup cannot be restored).
    pub(crate) async fn scan_backups(
        &self,
        name: Option<&str>,
        store: Option<&str>,
    ) -> Result<(Vec<BackupEntry>, Vec<DamagedBackup>)> {
        if let Some(n) = name {
            instance::validate_name(n)?;
        }
        let store = self.store(store)?;
        let trust = self.trusted_keys()?;
        let scan = scan_manifests(&store, name, Some(&trust)).await?;
        let entries = scan
            .manifests
            .into_iter()
            .map(|(m, signature)| BackupEntry {
                id: m.header.id.clone(),
                store: store.name().to_string(),
                instance: m.header.instance.name.clone(),
                created_at: m.header.created_at,
                strategy: m.header.strategy,
                gitlab_version: m.header.gitlab_version.clone(),
                image: m.header.image.clone(),
                files: m.index.files,
                bytes: m.index.bytes,
                archive_size: m.archive.size,
                signed: signature.as_ref().map_or(Signed::Unsigned, |s| s.signed),
                key_id: signature.and_then(|s| s.key_id),
            })
            .collect();
        Ok((entries, scan.damaged))
    }

    /// Checks a backup end to end without restoring it: manifest checksum, archive size
    /// and hash, zstd checksum, every file's hash. Returns the manifest.
    pub(crate) async fn verify(&self, id: &str, store: Option<&str>) -> Result<Manifest> {
        let store_name = store.map(str::to_string);
        self.journaled(
            "verify",
            json!({ "id": id, "store": store_name }),
            json!({}),
            async {
                parse_id(id)?;
                let store = self.store(store)?;
                let manifest = read_manifest(&store, id, &self.trusted_keys()?).await?;
                verify_in_store(&store, &manifest.archive, &manifest.index).await?;
                Ok(manifest)
            },
        )
        .await
    }

    /// Copies a backup to another store, archive first (its hash checked on the way),
    /// then its signature, manifest last (the same bytes: the signature still matches).
    pub(crate) async fn copy_backup(
        &self,
        id: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<Manifest> {
        let from_name = from.map(str::to_string);
        self.journaled(
            "backup-copy",
            json!({ "id": id, "from": from_name, "to": to }),
            json!({}),
            async {
                parse_id(id)?;
                let source = self.store(from)?;
                let dest = self.store(Some(to))?;
                if source.name() == dest.name() {
                    return Err(Error::invalid(
                        "--to",
                        "the destination is the source store",
                    ));
                }
                let stored = read_trusted(&source, id, &self.trusted_keys()?).await?;
                let manifest = stored.manifest;
                let what = format!("backup `{id}` in store `{}`", source.name());
                copy_checked(&source, &dest, &manifest.archive, &what, "archive").await?;
                let index = ArchiveRef {
                    key: manifest.index.key.clone(),
                    size: manifest.index.size,
                    blake3: manifest.index.blake3.clone(),
                };
                copy_checked(&source, &dest, &index, &what, "index").await?;
                if let Some(signature) = stored.signature {
                    dest.put_bytes(&signature_key(id), signature).await?;
                }
                dest.put_bytes(&manifest_key(id), stored.bytes).await?;
                Ok(manifest)
            },
        )
        .await
    }

    /// Signs a backup with the fleet's key: one made before backups were signed, or one
    /// signed by a key this fleet does not trust, once the operator has checked where it
    /// came from. Checks it end to end first (every hash, as `verify`) and refuses a
    /// damaged one; a backup a trusted key signed already is left as it is.
    pub(crate) async fn sign_backup(&self, id: &str, store: Option<&str>) -> Result<SignReport> {
        let store_name = store.map(str::to_string);
        self.journaled(
            "backup-sign",
            json!({ "id": id, "store": store_name }),
            json!({}),
            async {
                parse_id(id)?;
                let store = self.store(store)?;
                let trust = self.trusted_keys()?;
                let (manifest, bytes) = fetch_manifest(&store, id).await?;
                let signature = fetch_signature(&store, id).await?;
                let was = trust.check(id, &bytes, signature.as_deref());
                let report = |key_id: String, signed_now| SignReport {
                    id: id.to_string(),
                    store: store.name().to_string(),
                    key_id,
                    signed_now,
                    was: was.signed,
                };
                if was.signed == Signed::Trusted {
                    return Ok(report(was.key_id.clone().unwrap_or_default(), false));
                }
                let signer = crate::model::signing::SigningKey::load(&self.root)?;
                verify_in_store(&store, &manifest.archive, &manifest.index)
                    .await
                    .map_err(|e| match e {
                        Error::Corrupt { what, message } => {
                            Error::corrupt(what, format!("{message}; it was not signed"))
                        }
                        e => e,
                    })?;
                let signature = signer.sign(id, &bytes)?;
                store
                    .put_bytes(&signature_key(id), Bytes::from(signature))
                    .await?;
                Ok(report(signer.public_key().id(), true))
            },
        )
        .await
    }

    /// Deletes the backups a retention policy does not keep, per instance, in one store.
    /// The newest backup of an instance is always kept. Returns the deleted ids.
    pub(crate) async fn prune(
        &self,
        name: Option<&str>,
        store: Option<&str>,
        policy: Retention,
    ) -> Result<Vec<String>> {
        let store_name = store.map(str::to_string);
        self.journaled(
            "backup-prune",
            json!({ "name": name, "store": store_name, "keep_last": policy.keep_last, "keep_daily": policy.keep_daily, "keep_weekly": policy.keep_weekly }),
            json!({}),
            async {
                if policy.keep_last + policy.keep_daily + policy.keep_weekly == 0 {
                    return Err(Error::invalid(
                        "--keep-last",
                        "the policy would keep nothing; give --keep-last N (N >= 1) or --keep-daily/--keep-weekly",
                    ));
                }
                if let Some(n) = name {
                    instance::validate_name(n)?;
                }
                let store = self.store(store)?;
                let manifests = list_manifests(&store, name).await?;
                let mut instances: BTreeSet<String> = BTreeSet::new();
                for m in &manifests {
                    instances.insert(m.header.instance.name.clone());
                }
                let mut deleted = Vec::new();
                for inst in instances {
                    let mut of: Vec<&Manifest> = manifests
                        .iter()
                        .filter(|m| m.header.instance.name == inst)
                        .collect();
                    of.sort_by_key(|m| std::cmp::Reverse(m.header.created_at));
                    let times: Vec<DateTime<Utc>> = of.iter().map(|m| m.header.created_at).collect();
                    let keep = retained(&times, policy);
                    for (i, m) in of.iter().enumerate() {
                        if keep.contains(&i) {
                            continue;
                        }
                        // Manifest first: the backup stops listing before its data goes.
                        store.delete(&manifest_key(&m.header.id)).await?;
                        store.delete(&m.archive.key).await?;
                        store.delete(&m.index.key).await?;
                        store.delete(&signature_key(&m.header.id)).await?;
                        deleted.push(m.header.id.clone());
                    }
                }
                // Ids are timestamps: sorted, oldest first.
                deleted.sort();
                Ok(deleted)
            },
        )
        .await
    }
}

/// Copies one object of a backup, checking its size and hash on the way: a damaged copy
/// never lands.
async fn copy_checked(
    source: &Arc<dyn BackupStore>,
    dest: &Arc<dyn BackupStore>,
    object: &ArchiveRef,
    what: &str,
    part: &str,
) -> Result<()> {
    let mut stream = source.get_stream(&object.key).await?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let expected = object.clone();
    let forward = async move {
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    size += bytes.len() as u64;
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
        let hash = hasher.finalize().to_hex().to_string();
        if size != expected.size || hash != expected.blake3 {
            // Abort the upload: a damaged copy must never land.
            let _ = tx
                .send(Err(std::io::Error::other(
                    "the source object does not match its manifest",
                )))
                .await;
        }
    };
    let (uploaded, ()) = tokio::join!(dest.put_stream(&object.key, rx), forward);
    uploaded.map_err(|e| match e {
        Error::Io { source, .. } if source.to_string().contains("does not match") => {
            Error::corrupt(
                what,
                format!("its {part} does not match its manifest; nothing was copied"),
            )
        }
        other => other,
    })?;
    Ok(())
}

/// A manifest as a store holds it: parsed, its bytes (what the signature covers) and its
/// signature object.
struct StoredManifest {
    manifest: Manifest,
    bytes: Bytes,
    signature: Option<Bytes>,
}

/// Reads a backup's manifest and checks that a trusted key signed it: what everything
/// that acts on a backup (verify, copy, restore, drill) reads it with.
///
/// # Errors
/// `NotFound` when there is no such backup; `Corrupt` when the manifest is damaged, or
/// unsigned, or signed by a key that is not trusted, or its signature does not match it
/// (naming the backup, the store and the key id, and what to do).
pub(crate) async fn read_manifest(
    store: &Arc<dyn BackupStore>,
    id: &str,
    trust: &TrustedKeys,
) -> Result<Manifest> {
    Ok(read_trusted(store, id, trust).await?.manifest)
}

async fn read_trusted(
    store: &Arc<dyn BackupStore>,
    id: &str,
    trust: &TrustedKeys,
) -> Result<StoredManifest> {
    let (manifest, bytes) = fetch_manifest(store, id).await?;
    let signature = fetch_signature(store, id).await?;
    let check = trust.check(id, &bytes, signature.as_deref());
    if let Some(refused) = crate::signing::refusal(&check, id, store.name(), trust) {
        return Err(refused);
    }
    Ok(StoredManifest {
        manifest,
        bytes,
        signature,
    })
}

/// A backup's signature object, `None` when it has none.
async fn fetch_signature(store: &Arc<dyn BackupStore>, id: &str) -> Result<Option<Bytes>> {
    match store.get_bytes(&signature_key(id)).await {
        Ok(b) => Ok(Some(b)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads and parses a backup's manifest (checksum and id checked), without looking at
/// its signature: for listings and pruning only.
async fn fetch_manifest(store: &Arc<dyn BackupStore>, id: &str) -> Result<(Manifest, Bytes)> {
    let what = format!("backup `{id}` in store `{}`", store.name());
    let bytes = match store.get_bytes(&manifest_key(id)).await {
        Ok(b) => b,
        Err(Error::NotFound { .. }) => {
            return Err(Error::not_found(
                what,
                format!(
                    "`girofle backup list --store {}` shows the backups there",
                    store.name()
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let manifest = Manifest::from_bytes(&what, &bytes)?;
    if manifest.header.id != id {
        return Err(Error::corrupt(what, "the manifest names another backup"));
    }
    Ok((manifest, bytes))
}

/// The manifests of a store with what their signatures are (when asked), and the backups
/// left out as damaged.
struct ManifestScan {
    manifests: Vec<(Manifest, Option<SignatureCheck>)>,
    damaged: Vec<DamagedBackup>,
}

async fn list_manifests(store: &Arc<dyn BackupStore>, name: Option<&str>) -> Result<Vec<Manifest>> {
    Ok(scan_manifests(store, name, None)
        .await?
        .manifests
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

async fn scan_manifests(
    store: &Arc<dyn BackupStore>,
    name: Option<&str>,
    trust: Option<&TrustedKeys>,
) -> Result<ManifestScan> {
    let objects = store.list(name.unwrap_or("")).await?;
    let sizes: std::collections::HashMap<&str, u64> =
        objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut scan = ManifestScan {
        manifests: Vec::new(),
        damaged: Vec::new(),
    };
    let mut damaged = |id: &str, reason: String| {
        scan.damaged.push(DamagedBackup {
            id: id.to_string(),
            store: store.name().to_string(),
            reason,
        });
    };
    let mut manifests = Vec::new();
    for o in &objects {
        let Some(id) = o.key.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if parse_id(id).is_err() {
            continue;
        }
        let (m, bytes) = match fetch_manifest(store, id).await {
            Ok(m) => m,
            // Deleted since the listing (a prune deletes the manifest first).
            Err(Error::NotFound { .. }) => continue,
            Err(e) => {
                damaged(id, e.to_string());
                continue;
            }
        };
        let mut wrong = Vec::new();
        let parts = [
            ("archive", &m.archive.key, m.archive.size),
            ("index", &m.index.key, m.index.size),
        ];
        for (part, key, expected) in parts {
            match sizes.get(key.as_str()) {
                None => wrong.push(format!("its {part} `{key}` is missing")),
                Some(&size) if size != expected => wrong.push(format!(
                    "its {part} `{key}` has {size} bytes, the manifest says {expected}"
                )),
                Some(_) => {}
            }
        }
        if !wrong.is_empty() {
            damaged(id, wrong.join("; "));
            continue;
        }
        let signature = match trust {
            Some(trust) => {
                // One request fewer per unsigned backup: the listing says it has none.
                let signature = if sizes.contains_key(signature_key(id).as_str()) {
                    fetch_signature(store, id).await?
                } else {
                    None
                };
                Some(trust.check(id, &bytes, signature.as_deref()))
            }
            None => None,
        };
        manifests.push((m, signature));
    }
    manifests.sort_by_key(|(m, _)| m.header.created_at);
    scan.manifests = manifests;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retention_keeps_what_the_policy_says() {
        // Newest first: two a day for five days.
        let times: Vec<DateTime<Utc>> = (0..10)
            .map(|i| {
                Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
                    - chrono::Duration::hours(12 * i)
            })
            .collect();
        let keep = |p| retained(&times, p).into_iter().collect::<Vec<_>>();
        assert_eq!(
            keep(Retention {
                keep_last: 2,
                ..Default::default()
            }),
            vec![0, 1]
        );
        assert_eq!(
            keep(Retention {
                keep_last: 0,
                ..Default::default()
            }),
            vec![0]
        );
        assert_eq!(
            keep(Retention {
                keep_daily: 3,
                ..Default::default()
            }),
            vec![0, 2, 4]
        );
        assert_eq!(
            keep(Retention {
                keep_last: 1,
                keep_daily: 2,
                ..Default::default()
            }),
            vec![0, 2]
        );
    }
}
