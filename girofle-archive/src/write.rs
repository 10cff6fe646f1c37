//! Writing an archive: validating the sources, the walk of their trees on a reading
//! thread (metadata, content, BLAKE3) feeding the tar thread (headers, the index, zstd's
//! input), and zstd's workers. The tar-stream writer (`tar_stream`) feeds the same tar
//! thread from its own walk. It does not read archives back.

use std::collections::HashSet;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc as sync_mpsc;
use std::time::UNIX_EPOCH;

use crate::error::{Error, IoContext, Result};
use crate::index::*;
use crate::read::entry_err;
use crate::*;

/// One tree to archive: everything under `dir` is stored as `<prefix>/<relative path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// A single path component (`config`, `data`, `logs`...), unique within an archive.
    pub prefix: String,
    /// The directory to archive; its own owner, mode and mtime are kept on the prefix entry.
    pub dir: PathBuf,
}

/// How hard and with how many threads zstd compresses.
#[derive(Clone, Copy, Debug)]
pub struct CompressionOptions {
    /// zstd level (1..=22; 3 is zstd's default and a good speed/size trade-off).
    pub level: i32,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub threads: u32,
}

impl Default for CompressionOptions {
    /// Level 3 (what operators use with `zstd -3`); one zstd worker per core, except on
    /// machines of one or two cores, where zstd compresses on the archive's own thread.
    ///
    /// Why (`benches/run`, settings sweep, 1 GiB, 2 cores, 2026-12-02): the archive
    /// already keeps two threads busy (reading and hashing, writing the store) beside
    /// the tar thread, so zstd's workers only add job copies and overlap re-hashing on
    /// 2 cores: without them the backup took 0.96x the time (2.94 s against 3.08 s) with
    /// 29 MiB of peak memory instead of 70 (51 against 102 to S3). With other processes
    /// keeping both cores busy the workers win a larger share of the CPU (4.2-4.8 s
    /// against 5.2-6.1 s; `tar | zstd -T0` took 6.2-6.8 s), which a backup running
    /// beside GitLab on a small host should not take; `[backup] threads` sets them.
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let threads = if cores <= 2 { 0 } else { cores };
        CompressionOptions { level: 3, threads }
    }
}

/// What [`write_archive`] produced.
#[derive(Debug)]
pub struct ArchiveSummary {
    pub index: IndexSummary,
    /// The index's JSON lines (also the archive's last entry) in an anonymous temporary
    /// file, rewound: the caller stores them beside the archive.
    pub index_file: File,
    /// Size of the compressed archive in bytes.
    pub archive_size: u64,
    /// BLAKE3 of the compressed bytes, lowercase hex.
    pub archive_hash: String,
}

// ---------------------------------------------------------------------------------------
// Writing: a reading thread (walk, read, hash) feeds the tar thread (headers, index,
// zstd's input), and zstd's workers compress
// ---------------------------------------------------------------------------------------

/// Writes a whole archive of `sources` into `out`. Blocking: run it on the blocking pool.
///
/// Calls `progress` every ~64 MiB or 1000 entries, and once at the end.
///
/// # Errors
/// `InvalidInput` if a prefix is empty, not a single path component, reserved (`girofle`)
/// or repeated, or a source is not a directory; `Io` if a source cannot be read or the
/// output cannot be written (the archive is then unusable and should be discarded).
pub fn write_archive<W: Write>(
    header: &serde_json::Value,
    sources: &[Source],
    opts: CompressionOptions,
    out: W,
    progress: &mut dyn FnMut(Progress),
) -> Result<ArchiveSummary> {
    validate_prefixes(sources.iter().map(|s| s.prefix.as_str()))?;
    // Sorted, so that readers can rely on byte order at the top level too.
    let mut sources: Vec<Source> = sources.to_vec();
    sources.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    for s in &sources {
        let meta = fs::metadata(&s.dir).ctx("read the source directory", &s.dir)?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "source",
                format!(
                    "`{}` (prefix `{}`) is not a directory",
                    s.dir.display(),
                    s.prefix
                ),
            ));
        }
    }
    write_walked(header, opts, out, progress, |w| {
        for s in &sources {
            let meta = fs::metadata(&s.dir).ctx("read the source directory", &s.dir)?;
            w.add_dir(&s.dir, s.prefix.clone(), &meta)?;
        }
        Ok(())
    })
}

/// The archive around what `walk` finds: the header entry, the walk on a reading thread
/// feeding the tar thread, then the index entry and zstd's end. Shared by the writers of
/// directories and of tar streams, so both give the same archive for the same tree.
pub(crate) fn write_walked<W: Write>(
    header: &serde_json::Value,
    opts: CompressionOptions,
    out: W,
    progress: &mut dyn FnMut(Progress),
    walk: impl FnOnce(&mut Walker) -> Result<()> + Send,
) -> Result<ArchiveSummary> {
    let header_json = serde_json::to_vec_pretty(header)
        .map_err(|e| Error::invalid("archive header", e.to_string()))?;

    let mut encoder = zstd::stream::write::Encoder::new(HashingWriter::new(out), opts.level)
        .map_err(|e| Error::invalid("compression level", e.to_string()))?;
    encoder.include_checksum(true).map_err(out_err)?;
    encoder.window_log(WINDOW_LOG).map_err(out_err)?;
    if opts.threads > 0 {
        encoder
            .multithread(opts.threads)
            .map_err(|e| Error::invalid("compression threads", e.to_string()))?;
        // zstd's default job is 4 windows (32 MiB here) and it keeps several per worker:
        // ~250 MB with 2 threads. Smaller jobs keep memory low at a negligible cost in ratio.
        encoder
            .set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))
            .map_err(out_err)?;
    }
    let mut tar = TarOut::new(
        BufWriter::with_capacity(TAR_BUF_SIZE, encoder),
        "write the archive to",
        "<archive output>",
    );
    tar.append_bytes(HEADER_PATH, &header_json)?;

    let spool = tempfile::tempfile()
        .map_err(|e| Error::io("create a temporary file for", "<the archive index>", e))?;
    let mut index = IndexWriter::new(BufWriter::with_capacity(256 << 10, spool));
    let mut ticker = ProgressTicker::new(progress);

    let (tx, rx) = sync_mpsc::sync_channel::<Vec<Item>>(BATCHES_IN_FLIGHT);
    let (walked, built) = std::thread::scope(|scope| {
        let walker = scope.spawn(move || {
            let mut w = Walker {
                tx,
                batch: Vec::with_capacity(BATCH_ITEMS),
                batch_bytes: 0,
            };
            walk(&mut w)?;
            w.flush()
        });
        // `rx` is dropped when `build` returns, which stops the walker if `build` failed.
        let built = build(rx, &mut tar, &mut index, &mut ticker);
        let walked = walker
            .join()
            .unwrap_or_else(|_| Err(Error::backend("archive reader", "the thread panicked")));
        (walked, built)
    });
    let stopped = |e: &Error| matches!(e, Error::Backend { backend, .. } if backend == STOPPED);
    match (walked, built) {
        // The walker's error says why (a source unreadable); the builder only saw the
        // stream stop. A walker stopped by the builder's failure reports `STOPPED`.
        (Err(e), _) if !stopped(&e) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e),
        (Ok(()), Ok(())) => {}
    }
    ticker.finish();

    let (spool, summary) = index.finish().map_err(spool_err)?;
    let mut spool = spool.into_inner().map_err(|e| spool_err(e.into_error()))?;
    spool.rewind().map_err(spool_err)?;
    let mut h = plain_header(summary.size);
    tar.append(INDEX_PATH, None, &mut h)?;
    io::copy(&mut (&spool).take(summary.size), &mut tar.out).map_err(out_err)?;
    tar.pad(summary.size)?;
    spool.rewind().map_err(spool_err)?;

    tar.out.write_all(&[0; 1024]).map_err(out_err)?;
    let encoder = tar.out.into_inner().map_err(|e| out_err(e.into_error()))?;
    let hashing = encoder.finish().map_err(out_err)?;
    let (mut out, archive_size, archive_hash) = hashing.finish();
    out.flush().map_err(out_err)?;
    Ok(ArchiveSummary {
        index: summary,
        index_file: spool,
        archive_size,
        archive_hash,
    })
}

/// The `backend` of the error a walker returns when the tar thread stopped listening.
const STOPPED: &str = "archive reader stopped";

fn out_err(e: io::Error) -> Error {
    Error::io("write the archive to", "<archive output>", e)
}

fn spool_err(e: io::Error) -> Error {
    Error::io("write the temporary file of", "<the archive index>", e)
}

pub(crate) fn validate_prefixes<'a>(prefixes: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for p in prefixes {
        if p.is_empty() || p == "." || p == ".." || p.contains('/') || p.contains('\0') {
            return Err(Error::invalid(
                "source prefix",
                format!("`{p}` must be a single path component such as `data`"),
            ));
        }
        if p == RESERVED_PREFIX {
            return Err(Error::invalid(
                "source prefix",
                format!("`{p}` is reserved for the archive's own entries; pick another"),
            ));
        }
        if !seen.insert(p) {
            return Err(Error::invalid(
                "source prefix",
                format!("`{p}` is given twice; each source needs its own prefix"),
            ));
        }
    }
    Ok(())
}

fn plain_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    h
}

/// The tar layer, written by hand rather than with `tar::Builder` so that content goes
/// into zstd's input (or a tar stream's consumer) in large chunks without intermediate
/// copies. Write errors name `dest`.
pub(crate) struct TarOut<O: Write> {
    pub(crate) out: O,
    action: &'static str,
    dest: String,
}

impl<O: Write> TarOut<O> {
    pub(crate) fn new(out: O, action: &'static str, dest: impl Into<String>) -> Self {
        TarOut {
            out,
            action,
            dest: dest.into(),
        }
    }

    pub(crate) fn err(&self, e: io::Error) -> Error {
        Error::io(self.action, &self.dest, e)
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).map_err(|e| self.err(e))
    }

    /// A GNU long name (`L`) or long link (`K`) entry, as GNU tar and the tar crate write
    /// them, for values that do not fit the 100 bytes of a header field.
    fn long(&mut self, kind: u8, value: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        let name = b"././@LongLink";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(value.len() as u64 + 1);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        self.write(h.as_bytes())?;
        self.write(value)?;
        self.write(&[0])?;
        self.pad(value.len() as u64 + 1)
    }

    /// Writes the header of `path` (and `link`), with GNU long entries when needed.
    pub(crate) fn append(
        &mut self,
        path: &str,
        link: Option<&str>,
        h: &mut tar::Header,
    ) -> Result<()> {
        if path.len() > 100 {
            self.long(b'L', path.as_bytes())?;
            let mut cut = 100;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..cut].copy_from_slice(&path.as_bytes()[..cut]);
        } else {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if let Some(link) = link {
            if link.len() > 100 {
                self.long(b'K', link.as_bytes())?;
            } else {
                let l = &mut h.as_old_mut().linkname;
                l.fill(0);
                l[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_cksum();
        self.write(h.as_bytes())
    }

    pub(crate) fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.write(&[0; 512][rem..])?;
        }
        Ok(())
    }

    fn append_bytes(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let mut h = plain_header(data.len() as u64);
        self.append(path, None, &mut h)?;
        self.write(data)?;
        self.pad(data.len() as u64)
    }
}

/// Calls the progress callback now and then, not on every file.
pub(crate) struct ProgressTicker<'a> {
    callback: &'a mut dyn FnMut(Progress),
    now: Progress,
    last: Progress,
}

impl<'a> ProgressTicker<'a> {
    pub(crate) fn new(callback: &'a mut dyn FnMut(Progress)) -> Self {
        ProgressTicker {
            callback,
            now: Progress::default(),
            last: Progress::default(),
        }
    }

    pub(crate) fn add(&mut self, files: u64, bytes: u64) {
        self.now.files += files;
        self.now.bytes += bytes;
        if self.now.files - self.last.files >= PROGRESS_FILES
            || self.now.bytes - self.last.bytes >= PROGRESS_BYTES
        {
            self.last = self.now;
            (self.callback)(self.now);
        }
    }

    pub(crate) fn finish(&mut self) {
        self.last = self.now;
        (self.callback)(self.now);
    }
}

/// What the reading thread hands to the tar thread, in walk order.
pub(crate) enum Item {
    Dir {
        path: String,
        meta: Meta,
    },
    Symlink {
        path: String,
        meta: Meta,
        target: String,
    },
    /// A regular file of `size` bytes: its content follows in `Data` items, then `FileEnd`.
    FileStart {
        path: String,
        meta: Meta,
        size: u64,
    },
    Data(Vec<u8>),
    FileEnd {
        hash: blake3::Hash,
        changed: bool,
    },
    Skipped(Skipped),
}

/// The tar thread: writes what the walker found, in its order, and the index lines.
fn build<O: Write>(
    rx: sync_mpsc::Receiver<Vec<Item>>,
    tar: &mut TarOut<O>,
    index: &mut IndexWriter<BufWriter<File>>,
    ticker: &mut ProgressTicker<'_>,
) -> Result<()> {
    let mut file: Option<(String, Meta, u64)> = None;
    for batch in rx {
        for item in batch {
            match item {
                Item::Dir { path, meta } => {
                    let mut h = meta.header(tar::EntryType::Directory, 0);
                    tar.append(&path, None, &mut h)?;
                    let entry = meta.entry(path, EntryKind::Dir, 0);
                    index
                        .push_ref(RecordRef::Entry(&entry))
                        .map_err(spool_err)?;
                    ticker.add(1, 0);
                }
                Item::Symlink { path, meta, target } => {
                    let mut h = meta.header(tar::EntryType::Symlink, 0);
                    tar.append(&path, Some(&target), &mut h)?;
                    let mut entry = meta.entry(path, EntryKind::Symlink, 0);
                    entry.link = Some(target);
                    index
                        .push_ref(RecordRef::Entry(&entry))
                        .map_err(spool_err)?;
                    ticker.add(1, 0);
                }
                Item::FileStart { path, meta, size } => {
                    let mut h = meta.header(tar::EntryType::Regular, size);
                    tar.append(&path, None, &mut h)?;
                    file = Some((path, meta, size));
                }
                Item::Data(data) => {
                    tar.write(&data)?;
                    ticker.add(0, data.len() as u64);
                }
                Item::FileEnd { hash, changed } => {
                    let Some((path, meta, size)) = file.take() else {
                        return Err(Error::backend(
                            "archive writer",
                            "file content without a file",
                        ));
                    };
                    tar.pad(size)?;
                    let mut entry = meta.entry(path, EntryKind::File, size);
                    entry.hash = Some(hash.to_hex().to_string());
                    index
                        .push_ref(RecordRef::Entry(&entry))
                        .map_err(spool_err)?;
                    if changed {
                        index
                            .push_ref(RecordRef::ChangedWhileRead(&entry.path))
                            .map_err(spool_err)?;
                    }
                    ticker.add(1, 0);
                }
                Item::Skipped(s) => index.push_ref(RecordRef::Skipped(&s)).map_err(spool_err)?,
            }
        }
    }
    Ok(())
}

/// The reading thread: walks the sources, reads and hashes every file, a few MiB ahead of
/// the tar thread.
pub(crate) struct Walker {
    tx: sync_mpsc::SyncSender<Vec<Item>>,
    batch: Vec<Item>,
    batch_bytes: usize,
}

/// Metadata as stored in a tar header and the index.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
}

impl Meta {
    fn of(m: &Metadata) -> Self {
        Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            // tar's numeric fields are unsigned; pre-1970 times are not worth a PAX header.
            mtime: m.mtime().max(0),
        }
    }

    /// The metadata a tar header gives `path` (an untrusted one: fields out of range are
    /// refused, not cut).
    ///
    /// # Errors
    /// `Corrupt` naming the entry and the field.
    pub(crate) fn from_header(h: &tar::Header, path: &str) -> Result<Self> {
        let num = |r: io::Result<u64>| -> Result<u64> {
            r.map_err(|e| entry_err(path, format!("bad header field: {e}")))
        };
        let uid = u32::try_from(num(h.uid())?).map_err(|_| entry_err(path, "uid out of range"))?;
        let gid = u32::try_from(num(h.gid())?).map_err(|_| entry_err(path, "gid out of range"))?;
        let mode = num(h.mode().map(u64::from))? as u32 & 0o7777;
        let mtime =
            i64::try_from(num(h.mtime())?).map_err(|_| entry_err(path, "mtime out of range"))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
        })
    }

    pub(crate) fn header(&self, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(self.mode);
        h.set_uid(u64::from(self.uid));
        h.set_gid(u64::from(self.gid));
        h.set_mtime(u64::try_from(self.mtime).unwrap_or(0));
        h
    }

    pub(crate) fn entry(&self, path: String, kind: EntryKind, size: u64) -> FileEntry {
        FileEntry {
            path,
            kind,
            size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            hash: None,
            link: None,
        }
    }
}

/// Why an entry was skipped, in the index: the same words whether the walk met it in a
/// directory or in a tar stream.
pub(crate) const SKIP_FIFO: &str = "fifo";
pub(crate) const SKIP_CHAR_DEVICE: &str = "character device";
pub(crate) const SKIP_BLOCK_DEVICE: &str = "block device";
pub(crate) const SKIP_UNSUPPORTED: &str = "unsupported file type";
pub(crate) const SKIP_NOT_UTF8: &str = "name is not valid UTF-8";
pub(crate) const SKIP_LINK_NOT_UTF8: &str = "symlink target is not valid UTF-8";

fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Walker {
    pub(crate) fn push(&mut self, item: Item, bytes: usize) -> Result<()> {
        self.batch.push(item);
        self.batch_bytes += bytes;
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_ITEMS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ITEMS));
        self.batch_bytes = 0;
        self.tx
            .send(batch)
            .map_err(|_| Error::backend(STOPPED, "the archive writer stopped"))
    }

    pub(crate) fn skip(&mut self, path: String, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        self.push(Item::Skipped(Skipped { path, reason }), 0)
    }

    /// Archives the directory entry, then its children in byte order of their names, so
    /// that the same tree always gives the same archive.
    fn add_dir(&mut self, fs_path: &Path, path: String, meta: &Metadata) -> Result<()> {
        // The type from the directory listing (no `lstat`): a regular file is opened and
        // `fstat`ed anyway, which also sees a file replaced since.
        let mut names: Vec<(std::ffi::OsString, Option<fs::FileType>)> = match fs::read_dir(fs_path)
        {
            Ok(rd) => rd
                .map(|e| e.map(|e| (e.file_name(), e.file_type().ok())))
                .collect::<io::Result<_>>()
                .ctx("list the directory", fs_path)?,
            // Removed since it was listed (a live instance rotates logs): it is archived
            // empty, which is what it is now.
            Err(e) if is_vanished(&e) => Vec::new(),
            Err(e) => return Err(Error::io("list the directory", fs_path, e)),
        };
        names.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        self.push(
            Item::Dir {
                path: path.clone(),
                meta: Meta::of(meta),
            },
            0,
        )?;

        for (name, listed) in names {
            let child = fs_path.join(&name);
            let Some(name) = name.to_str() else {
                let shown = format!("{path}/{}", name.to_string_lossy());
                self.skip(shown, SKIP_NOT_UTF8)?;
                continue;
            };
            let child_path = format!("{path}/{name}");
            if listed.is_some_and(|t| t.is_file()) {
                self.add_file(&child, child_path)?;
                continue;
            }
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) if is_vanished(&e) => {
                    self.skip(child_path, "vanished while archiving")?;
                    continue;
                }
                Err(e) => return Err(Error::io("read the metadata of", &child, e)),
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                self.add_dir(&child, child_path, &meta)?;
            } else if ft.is_file() {
                self.add_file(&child, child_path)?;
            } else if ft.is_symlink() {
                self.add_symlink(&child, child_path, &meta)?;
            } else {
                let reason = if ft.is_socket() {
                    "unix socket"
                } else if ft.is_fifo() {
                    SKIP_FIFO
                } else if ft.is_char_device() {
                    SKIP_CHAR_DEVICE
                } else if ft.is_block_device() {
                    SKIP_BLOCK_DEVICE
                } else {
                    SKIP_UNSUPPORTED
                };
                self.skip(child_path, reason)?;
            }
        }
        Ok(())
    }

    fn add_symlink(&mut self, fs_path: &Path, path: String, meta: &Metadata) -> Result<()> {
        let target = match fs::read_link(fs_path) {
            Ok(t) => t,
            Err(e) if is_vanished(&e) => return self.skip(path, "vanished while archiving"),
            Err(e) => return Err(Error::io("read the symlink", fs_path, e)),
        };
        let Some(target) = target.to_str().map(str::to_owned) else {
            return self.skip(path, SKIP_LINK_NOT_UTF8);
        };
        let meta = Meta::of(meta);
        self.push(Item::Symlink { path, meta, target }, 0)
    }

    fn add_file(&mut self, fs_path: &Path, path: String) -> Result<()> {
        // O_NOFOLLOW: the entry was a regular file when listed; if it has been replaced by
        // a symlink since, do not archive whatever it points to. O_NONBLOCK: same for a fifo.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(fs_path)
        {
            Ok(f) => f,
            Err(e) if is_vanished(&e) => return self.skip(path, "vanished while archiving"),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return self.skip(path, "replaced by a symlink while archiving")
            }
            Err(e) => return Err(Error::io("open", fs_path, e)),
        };
        let meta = file.metadata().ctx("read the metadata of", fs_path)?;
        if !meta.is_file() {
            return self.skip(path, "changed type while archiving");
        }
        let mut reader = SizedFileReader::new(file, meta.len());
        self.push_content(path, Meta::of(&meta), &mut reader, fs_path)?;
        let changed = reader.shrunk || reader.grew().ctx("read", fs_path)?;
        let hash = reader.hasher.finalize();
        self.push(Item::FileEnd { hash, changed }, 0)
    }

    /// A file's header and content, read and hashed through `reader`; the caller pushes
    /// its end, once it knows whether the content changed while read. `source` names
    /// where the content comes from, in errors.
    pub(crate) fn push_content<R: Read>(
        &mut self,
        path: String,
        meta: Meta,
        reader: &mut SizedFileReader<R>,
        source: &Path,
    ) -> Result<()> {
        let size = reader.remaining;
        self.push(Item::FileStart { path, meta, size }, 0)?;
        while reader.remaining > 0 {
            let want = usize::try_from(reader.remaining)
                .unwrap_or(usize::MAX)
                .min(CHUNK_SIZE);
            let chunk = reader.next_chunk(want).ctx("read", source)?;
            self.push(Item::Data(chunk), want)?;
        }
        Ok(())
    }
}

/// Reads exactly `remaining` bytes of a file, hashing them as they pass: zero padding if
/// the file shrank, cut if it grew, so the tar header stays true.
pub(crate) struct SizedFileReader<R> {
    file: R,
    remaining: u64,
    pub(crate) hasher: blake3::Hasher,
    /// The content ended before `remaining` bytes: the rest is zeros.
    pub(crate) shrunk: bool,
}

impl<R: Read> SizedFileReader<R> {
    pub(crate) fn new(file: R, size: u64) -> Self {
        SizedFileReader {
            file,
            remaining: size,
            hasher: blake3::Hasher::new(),
            shrunk: false,
        }
    }

    /// The next `want` bytes (at most `remaining`) of the file, or zeros past its end.
    fn next_chunk(&mut self, want: usize) -> io::Result<Vec<u8>> {
        debug_assert!(want as u64 <= self.remaining);
        // Read into fresh capacity: no zeroing of what the read overwrites anyway.
        let mut out = Vec::with_capacity(want);
        if !self.shrunk {
            (&mut self.file).take(want as u64).read_to_end(&mut out)?;
        }
        if out.len() < want {
            self.shrunk = true;
            out.resize(want, 0);
        }
        self.hasher.update(&out);
        self.remaining -= want as u64;
        Ok(out)
    }

    /// After the content is read: whether the file has more bytes than were archived.
    fn grew(&mut self) -> io::Result<bool> {
        if self.shrunk {
            return Ok(false);
        }
        let mut one = [0u8; 1];
        loop {
            match self.file.read(&mut one) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that grows or shrinks while it is read keeps its header size.
    #[test]
    fn size_changes_while_reading_are_recorded() {
        let src = tempfile::tempdir().unwrap();
        let path = src.path().join("f");
        fs::write(&path, vec![1u8; 1000]).unwrap();
        for (new_len, stored) in [
            (400usize, [vec![1u8; 400], vec![0u8; 600]].concat()),
            (3000, vec![1u8; 1000]),
        ] {
            let file = File::open(&path).unwrap();
            let mut r = SizedFileReader::new(file, 1000);
            let mut got = Vec::new();
            // Change the file after the header was written, before its content is read.
            fs::write(&path, vec![1u8; new_len]).unwrap();
            while r.remaining > 0 {
                let chunk = r.next_chunk((r.remaining as usize).min(64)).unwrap();
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, stored);
            assert_eq!(r.hasher.finalize(), blake3::hash(&stored));
            assert_eq!(r.shrunk, new_len < 1000);
            assert_eq!(r.grew().unwrap(), new_len > 1000);
            fs::write(&path, vec![1u8; 1000]).unwrap();
        }
    }
}
