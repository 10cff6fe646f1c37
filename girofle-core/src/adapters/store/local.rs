//! The local stores: the built-in `local` store and `file://` directories.
//!
//! [`LocalStore`] writes its objects itself rather than through `LocalFileSystem`'s
//! multipart upload, which renames the staged file into place without syncing it: after
//! a crash the final name could point at a half-written file. It stages, fsyncs, renames,
//! then fsyncs the directories, with `object_store`'s `<name>#<digits>` staging names so
//! that listings skip unfinished files; it reads its files itself in large chunks. Heads,
//! lists and deletes go through `LocalFileSystem` (see `common::Objects`). It is not
//! responsible for validating keys or lifting errors (`common`) nor for encryption
//! (`encrypt`).

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStore};
use tokio::sync::mpsc;

use super::common::{error_chain, key_path, Objects, Redactor};
use super::{BackupStore, ObjectInfo, StoreConfig};
use crate::error::{Error, IoContext, Result};

/// Chunk size of local reads (object_store's own file stream reads 8 KiB at a time,
/// one blocking task per chunk, which is slow for multi-gigabyte backups).
const LOCAL_READ_CHUNK: usize = 1024 * 1024;

/// A store in a local directory: the built-in `local` store or a `file://` URL.
pub(super) struct LocalStore {
    objects: Objects,
    /// Canonical root directory.
    dir: PathBuf,
    fs: Arc<LocalFileSystem>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.objects.fmt(f)
    }
}

/// Opens the `file://` store `name` at `url`.
pub(super) fn open_file_store(
    name: &str,
    config: &StoreConfig,
    url: &url::Url,
) -> Result<Arc<dyn BackupStore>> {
    for (field, set) in [
        ("endpoint", config.endpoint.is_some()),
        ("region", config.region.is_some()),
        ("access_key_id", config.access_key_id.is_some()),
        ("secret_access_key", config.secret_access_key.is_some()),
        ("allow_http", config.allow_http.is_some()),
    ] {
        if set {
            return Err(Error::invalid(
                field,
                format!("store `{name}`: only s3:// stores take `{field}`; remove it"),
            ));
        }
    }
    match url.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(Error::invalid(
                "url",
                format!("store `{name}`: file URL names host `{host}`; use file:///absolute/path"),
            ))
        }
    }
    let dir = url.to_file_path().map_err(|()| {
        Error::invalid(
            "url",
            format!("store `{name}`: not a local path; use file:///absolute/path"),
        )
    })?;
    if !dir.is_dir() {
        return Err(Error::not_found(
            format!("directory `{}` of store `{name}`", dir.display()),
            "create it, or mount the volume it lives on",
        ));
    }
    let location = url.as_str().trim_end_matches('/').to_string();
    Ok(Arc::new(LocalStore::new(name, &dir, location)?))
}

/// `object_store` names its staging files `<name>#<digits>`; so do we.
fn is_staging_name(key: &str) -> bool {
    let file = key.rsplit('/').next().unwrap_or(key);
    match file.rsplit_once('#') {
        Some((_, digits)) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

impl LocalStore {
    pub(super) fn new(name: &str, dir: &FsPath, location: String) -> Result<Self> {
        let canonical = std::fs::canonicalize(dir).ctx("resolving store directory", dir)?;
        let fs = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| Error::backend(format!("store `{name}` ({location})"), error_chain(&e)))?
            .with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        Ok(LocalStore {
            objects: Objects {
                name: name.to_string(),
                location,
                inner: fs.clone(),
                redactor: Redactor::default(),
            },
            dir: canonical,
            fs,
        })
    }

    /// Local write: stage, fsync, rename, fsync the directories.
    async fn put_local(
        &self,
        key: &str,
        path: &ObjectPath,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let objects = &self.objects;
        let dest = self
            .fs
            .path_to_filesystem(path)
            .map_err(|e| objects.lift(key, e))?;
        let root = self.dir.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        let on_drop = CancelOnDrop(Some(cancelled.clone()));
        let outcome =
            tokio::task::spawn_blocking(move || write_local(&root, &dest, rx, &cancelled)).await;
        on_drop.disarm();
        match outcome {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(LocalWriteError::Source(e))) => Err(objects.source_failed(key, e)),
            Ok(Err(LocalWriteError::Io(action, path, e))) => Err(Error::io(
                format!("store `{}`: {action}", objects.name),
                path,
                e,
            )),
            Ok(Err(LocalWriteError::Cancelled)) => Err(Error::backend(
                objects.backend_name(),
                format!("upload of `{key}` was cancelled"),
            )),
            Err(join) => Err(Error::backend(
                objects.backend_name(),
                format!("upload of `{key}` failed: {join}"),
            )),
        }
    }
}

#[async_trait::async_trait]
impl BackupStore for LocalStore {
    fn name(&self) -> &str {
        &self.objects.name
    }

    fn location(&self) -> String {
        self.objects.location.clone()
    }

    async fn put_stream(
        &self,
        key: &str,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let path = key_path(&self.objects.name, key)?;
        self.put_local(key, &path, rx).await
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        let path = key_path(&self.objects.name, key)?;
        let (tx, rx) = mpsc::channel(1);
        // Cannot fail: the receiver is alive and the channel has room.
        let _ = tx.try_send(Ok(data));
        drop(tx);
        self.put_local(key, &path, rx).await.map(drop)
    }

    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let objects = &self.objects;
        let path = key_path(&objects.name, key)?;
        let result = objects
            .inner
            .get(&path)
            .await
            .map_err(|e| objects.lift(key, e))?;
        match result.payload {
            GetResultPayload::File(file, file_path) => {
                let (tx, mut rx) = mpsc::channel(2);
                let range = result.range;
                let backend = objects.backend_name();
                tokio::task::spawn_blocking(move || {
                    read_local(file, &file_path, range, &tx, &backend)
                });
                Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
            }
            GetResultPayload::Stream(_) => Ok(objects.errors().whole_stream(key, result)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        self.objects.get_bytes(key).await
    }

    async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
        self.objects.get_prefix(key, len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        self.objects.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut objects = self.objects.list(prefix).await?;
        objects.retain(|o| !is_staging_name(&o.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.delete(key).await
    }
}

/// Tells a local writer that its caller went away, so it must not publish the object.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

enum LocalWriteError {
    Source(std::io::Error),
    Io(&'static str, PathBuf, std::io::Error),
    Cancelled,
}

/// Removes a staging file unless the write went through.
struct StagingGuard(Option<PathBuf>);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs on the blocking pool: receives chunks, writes them to a staging file next to
/// `dest`, and publishes it only once synced.
fn write_local(
    root: &FsPath,
    dest: &FsPath,
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cancelled: &AtomicBool,
) -> std::result::Result<u64, LocalWriteError> {
    use LocalWriteError::Io;
    let parent = dest.parent().unwrap_or(root);
    std::fs::create_dir_all(parent)
        .map_err(|e| Io("creating directory", parent.to_path_buf(), e))?;
    let (file, staging) = create_staging(dest)?;
    let mut guard = StagingGuard(Some(staging.clone()));
    let mut writer = std::io::BufWriter::with_capacity(LOCAL_READ_CHUNK, file);
    let mut total: u64 = 0;
    let mut written_back: u64 = 0;
    while let Some(chunk) = rx.blocking_recv() {
        if cancelled.load(Ordering::SeqCst) {
            return Err(LocalWriteError::Cancelled);
        }
        let chunk = chunk.map_err(LocalWriteError::Source)?;
        writer
            .write_all(&chunk)
            .map_err(|e| Io("writing", staging.clone(), e))?;
        total += chunk.len() as u64;
        if total - written_back >= WRITEBACK_STEP {
            // Start writing what is in the page cache now, without waiting for it: the
            // disk works while the archive is still being made, so the final fsync only
            // waits for the last few MiB instead of the whole archive (~0.3 s per GiB
            // here, with every core idle). Only a hint: an error shows at the fsync.
            writer
                .flush()
                .map_err(|e| Io("writing", staging.clone(), e))?;
            start_writeback(writer.get_ref(), written_back, total - written_back);
            written_back = total;
        }
    }
    let file = writer
        .into_inner()
        .map_err(|e| Io("writing", staging.clone(), e.into_error()))?;
    file.sync_all()
        .map_err(|e| Io("syncing", staging.clone(), e))?;
    drop(file);
    if cancelled.load(Ordering::SeqCst) {
        return Err(LocalWriteError::Cancelled);
    }
    std::fs::rename(&staging, dest).map_err(|e| Io("renaming into place", staging.clone(), e))?;
    guard.0 = None;
    // Make the new name durable, and the directories create_dir_all may have made.
    let mut dir = Some(parent);
    while let Some(d) = dir {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| Io("syncing directory", d.to_path_buf(), e))?;
        if d == root {
            break;
        }
        dir = d.parent().filter(|p| p.starts_with(root));
    }
    Ok(total)
}

/// How much a local write lets pile up in the page cache before it asks the kernel to
/// start writing it out.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts the writeback of a range of `file` and returns without waiting for it.
///
/// `sync_file_range` has no safe binding (and this crate has no `unsafe`), so this uses
/// `posix_fadvise(POSIX_FADV_DONTNEED)`, which on Linux starts the writeback of the
/// range's dirty pages (`WB_SYNC_NONE`) before dropping those that are clean; pages just
/// written are still dirty or under writeback, so nothing is dropped that the writer
/// needs. PostgreSQL's `pg_flush_data` uses the same call for the same purpose.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use rustix::fs::{fadvise, Advice};
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = fadvise(file, offset, Some(len), Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

fn create_staging(dest: &FsPath) -> std::result::Result<(std::fs::File, PathBuf), LocalWriteError> {
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        // 0600: a backup holds gitlab-secrets.json and the instance's passwords.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LocalWriteError::Io("creating", path, e)),
        }
    }
    unreachable!("u32 staging names exhausted")
}

/// Runs on the blocking pool: sends `range` of `file` in chunks of [`LOCAL_READ_CHUNK`].
fn read_local(
    mut file: std::fs::File,
    path: &FsPath,
    range: std::ops::Range<u64>,
    tx: &mpsc::Sender<Result<Bytes>>,
    backend: &str,
) {
    let fail = |e: std::io::Error| {
        let _ = tx.blocking_send(Err(Error::io(format!("{backend}: reading"), path, e)));
    };
    if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
        return fail(e);
    }
    let mut remaining = range.end - range.start;
    while remaining > 0 {
        let want = remaining.min(LOCAL_READ_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        if let Err(e) = file.read_exact(&mut buf) {
            return fail(e);
        }
        remaining -= want as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return; // the reader went away
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_recognised() {
        assert!(is_staging_name("web/x.tar#1"));
        assert!(is_staging_name("x#123"));
        assert!(!is_staging_name("x#"));
        assert!(!is_staging_name("x#1a"));
        assert!(!is_staging_name("web/x.tar"));
    }
}
