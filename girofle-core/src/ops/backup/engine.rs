//! The cold archive of an instance on another host, whose directories Girofle reaches
//! only through that host's engine: each directory streams out of the engine as a tar
//! (`export_host_dir`) into girofle-archive's tar-stream writer, which makes the same
//! archive and index as the directory writer makes from local paths. Such a backup is
//! signed, listed, verified and restored as any other.
//!
//! Memory stays flat: one export at a time, in the order the writer reads its sources,
//! each through a bounded channel to the writer on the blocking pool. Stopping and
//! starting GitLab around it, the intent record and the manifest are `backup`'s.
//!
//! A hard link in an export is stored as the file it names (the archive has no hard
//! links), so that file is read once more through the engine (`read_host_file`): whole,
//! in memory, up to [`MAX_HARD_LINKED`] bytes. GitLab's directories hold few if any; a
//! larger hard-linked file fails the backup, saying how to get past it.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{forward, stream_to_store, BackupHeader, Manifest, ProgressFn};
use crate::adapters::runtime::{ContainerRuntime, HostRoot};
use crate::adapters::store::BackupStore;
use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::text::human_bytes;
use girofle_archive::tar_stream::{write_archive_from_tars, Reopen, TarSource};
use girofle_archive::{ChannelReader, Source};

/// The largest hard-linked file a backup reads again through the engine (held whole in
/// memory while the writer spools it).
pub(crate) const MAX_HARD_LINKED: usize = 64 << 20;

/// Chunks of an export waiting for the writer, per directory.
const EXPORT_CHUNKS: usize = 8;

/// A directory being exported: its path relative to the host's root and the channel to
/// the writer's reader of it.
struct Feed {
    dir: String,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Context {
    /// Writes the archive of `sources` (directories on this context's host, which is
    /// reached through its engine) and its index into `store`, and returns the manifest
    /// to write once the caller is done.
    ///
    /// # Errors
    /// The engine's error when an export fails (a directory missing is `NotFound`), the
    /// archive writer's (`Corrupt` naming an entry an export got wrong), the store's.
    pub(super) async fn archive_from_engine(
        &self,
        header: &BackupHeader,
        sources: &[Source],
        store: &Arc<dyn BackupStore>,
        id: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Manifest> {
        let root = self.host_root(&header.image);
        let mut volumes = sources
            .iter()
            .map(|s| Ok((s.prefix.clone(), self.relative(&s.dir)?)))
            .collect::<Result<Vec<_>>>()?;
        // The writer reads its sources in byte order of their prefixes: the exports are
        // opened in that order, each once the previous one is read.
        volumes.sort();
        let handle = tokio::runtime::Handle::current();
        let mut feeds = Vec::new();
        let mut tars = Vec::new();
        for (prefix, dir) in volumes {
            let (tx, rx) = mpsc::channel(EXPORT_CHUNKS);
            tars.push(TarSource {
                prefix,
                tar: ChannelReader::new(rx),
                reopen: Some(self.reopen(handle.clone(), root.clone(), dir.clone())),
            });
            feeds.push(Feed { dir, tx });
        }
        let header_json =
            serde_json::to_value(header).map_err(|e| Error::backend("manifest", e.to_string()))?;
        let compression = self.compression();
        let written = stream_to_store(store, id, progress, move |out, report| {
            write_archive_from_tars(&header_json, tars, compression, out, report)
        });
        let (written, export_failed) = tokio::join!(written, self.export_in_turn(&root, feeds));
        let (archive, index) = match (written, export_failed) {
            // The writer failed because an export did: the engine's error says why.
            (Err(_), Some(engine_error)) => return Err(engine_error),
            (written, _) => written?,
        };
        Ok(Manifest {
            header: header.clone(),
            archive,
            index,
            duration_ms: 0,
            downtime_ms: None,
        })
    }

    /// Streams each directory out of the engine into its feed, one after the other.
    /// Returns the engine's error, when an export failed (the writer sees it as an I/O
    /// error and stops).
    async fn export_in_turn(&self, root: &HostRoot, feeds: Vec<Feed>) -> Option<Error> {
        for Feed { dir, tx } in feeds {
            // The writer is gone (it failed): nothing more is read.
            if tx.is_closed() {
                return None;
            }
            let tar = match self.runtime.export_host_dir(root, &dir).await {
                Ok(tar) => tar,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return Some(e);
                }
            };
            // A closed feed here means the writer read the whole tar (up to its end
            // marker) and dropped its reader: on to the next directory.
            if let Some(e) = forward(tar, tx).await {
                return Some(e);
            }
        }
        None
    }

    /// Reads again, through the engine, a file of directory `dir` that an export gave as
    /// a hard link (see the module documentation).
    fn reopen(&self, handle: tokio::runtime::Handle, root: HostRoot, dir: String) -> Reopen {
        let runtime: Arc<dyn ContainerRuntime> = self.runtime.clone();
        let host = self.site.host().to_string();
        Box::new(move |path: &str| {
            let file = format!("{dir}/{path}");
            // On the blocking pool, where the writer runs: it may wait on the runtime.
            match handle.block_on(runtime.read_host_file(&root, &file, MAX_HARD_LINKED)) {
                Ok(Some(bytes)) => Ok(Box::new(io::Cursor::new(bytes)) as Box<dyn io::Read>),
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("`{file}` is gone"),
                )),
                Err(e) => Err(io::Error::other(format!(
                    "{e}; a file with several names (a hard link) is read again through the engine, {} at most: if it is larger, replace its extra names on host `{host}` with copies, then back up again",
                    human_bytes(MAX_HARD_LINKED as u64)
                ))),
            }
        })
    }
}
