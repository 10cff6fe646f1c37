//! The backup archive format: one tar stream compressed with zstd, written, verified and
//! extracted in a streaming way with flat memory whatever the size of the data.
//!
//! An archive holds `girofle/header.json` (an opaque JSON document chosen by the caller),
//! then the trees of the [`Source`]s, each under its own prefix with numeric owners, modes
//! and mtimes, then `girofle/index.json` (the [`ArchiveIndex`]: every entry with its
//! BLAKE3 hash, what was skipped and why, and the files that changed while read). This
//! module owns the walk of the source trees, the archive layout, integrity checks and the
//! safe extraction of a possibly hostile archive into an empty directory. It does not know
//! where the archive is stored (the store does, through [`ChannelWriter`] and
//! [`ChannelReader`]), what the header means (the backup module does), nor how GitLab is
//! stopped or restarted around a backup.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, IoContext, Result};

/// Path of the first entry: the caller's header document.
pub const HEADER_PATH: &str = "girofle/header.json";
/// Path of the last entry: the [`ArchiveIndex`].
pub const INDEX_PATH: &str = "girofle/index.json";
/// Top-level directory reserved for Girofle's own entries; no source may use it.
const RESERVED_PREFIX: &str = "girofle";

/// Size of the read and write buffers: zstd and BLAKE3 both go faster on large blocks.
const BUF_SIZE: usize = 1 << 20;
/// Progress is reported at least every this many bytes...
const PROGRESS_BYTES: u64 = 64 << 20;
/// ...or every this many entries.
const PROGRESS_FILES: u64 = 1000;
/// zstd window, pinned so that readers can check the frame header byte that holds it: a
/// damaged window descriptor that happens to give a larger window would otherwise decode
/// to the very same data and go unnoticed. 8 MiB is zstd's own choice for levels 16..=19.
const WINDOW_LOG: u32 = 23;
/// Bytes per zstd worker job.
const JOB_SIZE: u32 = 4 << 20;
/// The header is small; anything bigger is a damaged or hostile archive.
const MAX_HEADER_SIZE: u64 = 64 << 20;

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
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        CompressionOptions { level: 3, threads }
    }
}

/// The kind of an archived entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One archived entry, as listed in the index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// `<prefix>/<relative path>`, `/`-separated, no trailing slash.
    pub path: String,
    pub kind: EntryKind,
    /// Content size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Permission bits, including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch (times before 1970 are stored as 0).
    pub mtime: i64,
    /// BLAKE3 of the content, lowercase hex; files only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<String>,
    /// Symlink target, as read by `readlink`; symlinks only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link: Option<String>,
}

/// Something under a source that was deliberately not archived.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What an archive holds; stored as its last entry and kept beside it as the manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchiveIndex {
    /// Every data entry, in archive order.
    pub entries: Vec<FileEntry>,
    pub skipped: Vec<Skipped>,
    /// Files whose size changed while they were read: their content in the archive is
    /// cut or zero-padded to the size seen when their header was written.
    pub changed_while_read: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the regular files.
    pub bytes: u64,
}

/// What [`write_archive`] produced.
#[derive(Clone, Debug)]
pub struct ArchiveSummary {
    pub index: ArchiveIndex,
    /// Size of the compressed archive in bytes.
    pub archive_size: u64,
    /// BLAKE3 of the compressed bytes, lowercase hex.
    pub archive_hash: String,
}

/// Running totals reported while an archive is written or extracted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub files: u64,
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------
// Writing
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
    validate_sources(sources)?;
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
    let mut builder = tar::Builder::new(BufWriter::with_capacity(BUF_SIZE, encoder));

    append_bytes(&mut builder, HEADER_PATH, &header_json)?;

    let mut walker = Walker {
        builder: &mut builder,
        index: ArchiveIndex::default(),
        buf: vec![0; BUF_SIZE],
        progress: ProgressTicker::new(progress),
    };
    for source in sources {
        walker.archive_source(source)?;
    }
    let Walker {
        index,
        mut progress,
        ..
    } = walker;
    progress.finish();

    let index_json =
        serde_json::to_vec(&index).map_err(|e| Error::invalid("index", e.to_string()))?;
    append_bytes(&mut builder, INDEX_PATH, &index_json)?;

    let buffered = builder.into_inner().map_err(out_err)?;
    let encoder = buffered.into_inner().map_err(|e| out_err(e.into_error()))?;
    let hashing = encoder.finish().map_err(out_err)?;
    let (mut out, archive_size, archive_hash) = hashing.finish();
    out.flush().map_err(out_err)?;
    Ok(ArchiveSummary {
        index,
        archive_size,
        archive_hash,
    })
}

fn out_err(e: io::Error) -> Error {
    Error::io("write the archive to", "<archive output>", e)
}

fn validate_sources(sources: &[Source]) -> Result<()> {
    let mut seen = HashSet::new();
    for s in sources {
        let p = s.prefix.as_str();
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

type TarBuilder<W> =
    tar::Builder<BufWriter<zstd::stream::write::Encoder<'static, HashingWriter<W>>>>;

fn append_bytes<W: Write>(builder: &mut TarBuilder<W>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    builder.append_data(&mut h, path, data).map_err(out_err)
}

/// Calls the progress callback now and then, not on every file.
struct ProgressTicker<'a> {
    callback: &'a mut dyn FnMut(Progress),
    now: Progress,
    last: Progress,
}

impl<'a> ProgressTicker<'a> {
    fn new(callback: &'a mut dyn FnMut(Progress)) -> Self {
        ProgressTicker {
            callback,
            now: Progress::default(),
            last: Progress::default(),
        }
    }

    fn add(&mut self, files: u64, bytes: u64) {
        self.now.files += files;
        self.now.bytes += bytes;
        if self.now.files - self.last.files >= PROGRESS_FILES
            || self.now.bytes - self.last.bytes >= PROGRESS_BYTES
        {
            self.last = self.now;
            (self.callback)(self.now);
        }
    }

    fn finish(&mut self) {
        self.last = self.now;
        (self.callback)(self.now);
    }
}

struct Walker<'b, 'p, W: Write> {
    builder: &'b mut TarBuilder<W>,
    index: ArchiveIndex,
    buf: Vec<u8>,
    progress: ProgressTicker<'p>,
}

/// Metadata as stored in a tar header and the index.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
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

    fn header(&self, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(self.mode);
        h.set_uid(u64::from(self.uid));
        h.set_gid(u64::from(self.gid));
        h.set_mtime(u64::try_from(self.mtime).unwrap_or(0));
        h
    }

    fn entry(&self, path: String, kind: EntryKind, size: u64) -> FileEntry {
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

fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl<W: Write> Walker<'_, '_, W> {
    fn archive_source(&mut self, source: &Source) -> Result<()> {
        let meta = fs::metadata(&source.dir).ctx("read the source directory", &source.dir)?;
        if !meta.is_dir() {
            return Err(Error::invalid(
                "source",
                format!(
                    "`{}` (prefix `{}`) is not a directory",
                    source.dir.display(),
                    source.prefix
                ),
            ));
        }
        self.add_dir(&source.dir, source.prefix.clone(), &meta)
    }

    fn skip(&mut self, path: String, reason: impl Into<String>) {
        self.index.skipped.push(Skipped {
            path,
            reason: reason.into(),
        });
    }

    /// Archives the directory entry, then its children in byte order of their names, so
    /// that the same tree always gives the same archive.
    fn add_dir(&mut self, fs_path: &Path, path: String, meta: &Metadata) -> Result<()> {
        let m = Meta::of(meta);
        let mut h = m.header(tar::EntryType::Directory, 0);
        self.builder
            .append_data(&mut h, &path, io::empty())
            .map_err(out_err)?;
        self.index
            .entries
            .push(m.entry(path.clone(), EntryKind::Dir, 0));
        self.index.dirs += 1;
        self.progress.add(1, 0);

        let mut names: Vec<std::ffi::OsString> = match fs::read_dir(fs_path) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .ctx("list the directory", fs_path)?,
            // Removed since it was listed (a live instance rotates logs): it is archived
            // empty, which is what it is now.
            Err(e) if is_vanished(&e) => Vec::new(),
            Err(e) => return Err(Error::io("list the directory", fs_path, e)),
        };
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));

        for name in names {
            let child = fs_path.join(&name);
            let Some(name) = name.to_str() else {
                let shown = format!("{path}/{}", name.to_string_lossy());
                self.skip(shown, "name is not valid UTF-8");
                continue;
            };
            let child_path = format!("{path}/{name}");
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) if is_vanished(&e) => {
                    self.skip(child_path, "vanished while archiving");
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
                    "fifo"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_block_device() {
                    "block device"
                } else {
                    "unsupported file type"
                };
                self.skip(child_path, reason);
            }
        }
        Ok(())
    }

    fn add_symlink(&mut self, fs_path: &Path, path: String, meta: &Metadata) -> Result<()> {
        let target = match fs::read_link(fs_path) {
            Ok(t) => t,
            Err(e) if is_vanished(&e) => {
                self.skip(path, "vanished while archiving");
                return Ok(());
            }
            Err(e) => return Err(Error::io("read the symlink", fs_path, e)),
        };
        let Some(target) = target.to_str().map(str::to_owned) else {
            self.skip(path, "symlink target is not valid UTF-8");
            return Ok(());
        };
        let m = Meta::of(meta);
        let mut h = m.header(tar::EntryType::Symlink, 0);
        self.builder
            .append_link(&mut h, &path, &target)
            .map_err(out_err)?;
        let mut entry = m.entry(path, EntryKind::Symlink, 0);
        entry.link = Some(target);
        self.index.entries.push(entry);
        self.index.symlinks += 1;
        self.progress.add(1, 0);
        Ok(())
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
            Err(e) if is_vanished(&e) => {
                self.skip(path, "vanished while archiving");
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.skip(path, "replaced by a symlink while archiving");
                return Ok(());
            }
            Err(e) => return Err(Error::io("open", fs_path, e)),
        };
        let meta = file.metadata().ctx("read the metadata of", fs_path)?;
        if !meta.is_file() {
            self.skip(path, "changed type while archiving");
            return Ok(());
        }
        let m = Meta::of(&meta);
        let size = meta.len();
        let mut h = m.header(tar::EntryType::Regular, size);
        let mut reader = SizedFileReader {
            file,
            remaining: size,
            buf: &mut self.buf,
            pos: 0,
            len: 0,
            hasher: blake3::Hasher::new(),
            shrunk: false,
            error: None,
        };
        if let Err(e) = self.builder.append_data(&mut h, &path, &mut reader) {
            return Err(match reader.error.take() {
                Some(read_err) => Error::io("read", fs_path, read_err),
                None => out_err(e),
            });
        }
        let grew = reader.grew().ctx("read", fs_path)?;
        if reader.shrunk || grew {
            self.index.changed_while_read.push(path.clone());
        }
        let mut entry = m.entry(path, EntryKind::File, size);
        entry.hash = Some(reader.hasher.finalize().to_hex().to_string());
        self.index.entries.push(entry);
        self.index.files += 1;
        self.index.bytes += size;
        self.progress.add(1, size);
        Ok(())
    }
}

/// Reads exactly `remaining` bytes of a file in large blocks, hashing them as they pass:
/// zero padding if the file shrank, cut if it grew, so the tar header stays true.
struct SizedFileReader<'a> {
    file: File,
    remaining: u64,
    buf: &'a mut [u8],
    pos: usize,
    len: usize,
    hasher: blake3::Hasher,
    shrunk: bool,
    /// A read error on the file, kept so that it is not blamed on the output.
    error: Option<io::Error>,
}

impl SizedFileReader<'_> {
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

impl Read for SizedFileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            if self.remaining == 0 {
                return Ok(0);
            }
            let want = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = if self.shrunk {
                0
            } else {
                loop {
                    match self.file.read(&mut self.buf[..want]) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let copy = io::Error::new(e.kind(), e.to_string());
                            self.error = Some(e);
                            return Err(copy);
                        }
                    }
                }
            };
            let n = if n == 0 {
                self.shrunk = true;
                self.buf[..want].fill(0);
                want
            } else {
                n
            };
            self.hasher.update(&self.buf[..n]);
            self.remaining -= n as u64;
            self.pos = 0;
            self.len = n;
        }
        let n = (self.len - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Reading: verify and extract share one pass
// ---------------------------------------------------------------------------------------

/// Reads a whole archive without writing anything and checks everything that can be
/// checked: the zstd frame checksum, the tar structure, the safety of every path, each
/// file's size and BLAKE3 against the index stored in the archive, and, when given, the
/// index against `expected` (the manifest kept beside the archive) and the compressed
/// size and hash against `expected_archive`. Blocking. Returns the header and the index.
///
/// # Errors
/// `Corrupt` naming the entry and what differs; `Io` if `input` itself fails.
pub fn verify_archive<R: Read>(
    input: R,
    expected: Option<&ArchiveIndex>,
    expected_archive: Option<(u64, &str)>,
) -> Result<(serde_json::Value, ArchiveIndex)> {
    read_archive(input, expected, expected_archive, None, &mut |_| {})
}

/// Extracts an archive into `target`, which must not exist or be empty (it is created).
/// Blocking.
///
/// The archive is treated as hostile: only entries listed in `expected` are accepted and
/// every one of them must be present; absolute paths, `..`, duplicates, hard links,
/// devices, fifos, symlinks pointing outside `target` and entries below a symlink are
/// refused; files are created with `O_EXCL|O_NOFOLLOW`, so nothing is ever written outside
/// `target`. Sizes and BLAKE3 hashes are checked while writing. Numeric owners are
/// restored when the process may change them (root); modes and mtimes always (directory
/// ones at the end, deepest first, so read-only directories do not block extraction;
/// symlink mtimes are not restored). Returns the header and the index.
///
/// # Errors
/// `InvalidInput` if `target` is not an empty directory; `Corrupt` naming the entry and
/// what is wrong; `Io` if writing fails. On error the caller deletes `target`.
pub fn extract_archive<R: Read>(
    input: R,
    target: &Path,
    expected: &ArchiveIndex,
    expected_archive: Option<(u64, &str)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, ArchiveIndex)> {
    prepare_target(target)?;
    let mut sink = Extractor {
        root: target.to_path_buf(),
        dirs: Vec::new(),
        chown: true,
    };
    let out = read_archive(
        input,
        Some(expected),
        expected_archive,
        Some(&mut sink),
        progress,
    )?;
    sink.finish_dirs()?;
    Ok(out)
}

/// Reads only the first entry, the caller's header document. Cheap: the rest of the
/// archive is not read.
///
/// # Errors
/// `Corrupt` if the archive does not start with a readable `girofle/header.json`; `Io` if
/// `input` fails.
pub fn read_header<R: Read>(input: R) -> Result<serde_json::Value> {
    let failed = Arc::new(AtomicBool::new(false));
    let reader = FlagOnError {
        inner: input,
        failed: failed.clone(),
    };
    let decoder = open_decoder(reader, &failed, BUF_SIZE / 4)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(|e| read_err(e, &failed))?;
    let entry = entries
        .next()
        .ok_or_else(|| Error::corrupt("archive", "it is empty"))?
        .map_err(|e| read_err(e, &failed))?;
    read_header_entry(entry, &failed)
}

fn read_header_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    failed: &AtomicBool,
) -> Result<serde_json::Value> {
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if path != HEADER_PATH || !is_regular(entry.header().entry_type()) {
        return Err(Error::corrupt(
            "archive",
            format!("the first entry is `{path}`, not `{HEADER_PATH}`"),
        ));
    }
    if entry.size() > MAX_HEADER_SIZE {
        return Err(Error::corrupt(
            format!("archive entry `{HEADER_PATH}`"),
            format!("{} bytes is too big for a header", entry.size()),
        ));
    }
    let mut data = Vec::new();
    entry
        .read_to_end(&mut data)
        .map_err(|e| read_err(e, failed))?;
    serde_json::from_slice(&data).map_err(|e| {
        Error::corrupt(
            format!("archive entry `{HEADER_PATH}`"),
            format!("not valid JSON: {e}"),
        )
    })
}

type Input<R> = io::Chain<io::Cursor<Vec<u8>>, FlagOnError<R>>;
type ArchiveDecoder<'a, R> = zstd::stream::read::Decoder<'a, BufReader<Input<R>>>;

/// Checks the zstd frame header, then opens the decoder on the whole stream.
///
/// The zstd decoder ignores some frame header bits (the "unused" bit, a window larger than
/// needed) and accepts frames without a checksum; Girofle writes exactly one kind of frame
/// header, so anything else is damage.
fn open_decoder<R: Read>(
    input: FlagOnError<R>,
    failed: &AtomicBool,
    buffer: usize,
) -> Result<ArchiveDecoder<'static, R>> {
    let mut input = input;
    let mut head = Vec::with_capacity(6);
    (&mut input)
        .take(6)
        .read_to_end(&mut head)
        .map_err(|e| read_err(e, failed))?;
    let bad = |what: &str| Error::corrupt("archive", format!("zstd frame header: {what}"));
    if head.len() < 6 || head[..4] != [0x28, 0xB5, 0x2F, 0xFD] {
        return Err(bad("not a zstd frame (truncated or not an archive)"));
    }
    let fhd = head[4];
    if fhd & 0x04 == 0 {
        return Err(bad("the frame has no checksum"));
    }
    if fhd & 0x1B != 0 {
        return Err(bad("reserved, unused or dictionary bits are set"));
    }
    let single_segment = fhd & 0x20 != 0;
    if !single_segment && u32::from(head[5]) != (WINDOW_LOG - 10) << 3 {
        return Err(bad("unexpected window size"));
    }
    let input = io::Cursor::new(head).chain(input);
    zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(buffer, input))
        .map_err(|e| read_err(e, failed))
}

/// Lifts a read error: the input's own failure is an I/O problem (network, disk), anything
/// else (zstd, tar) means the bytes are damaged.
fn read_err(e: io::Error, input_failed: &AtomicBool) -> Error {
    if input_failed.load(Ordering::Relaxed) {
        Error::io("read the archive from", "<archive input>", e)
    } else {
        Error::corrupt("archive", format!("{e}"))
    }
}

fn is_regular(t: tar::EntryType) -> bool {
    matches!(t, tar::EntryType::Regular | tar::EntryType::Continuous)
}

fn entry_err(path: &str, message: impl Into<String>) -> Error {
    Error::corrupt(format!("archive entry `{path}`"), message)
}

/// Checks an archive path: relative, `/`-separated normal components only.
fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(entry_err(path, "empty path"));
    }
    if path.starts_with('/') {
        return Err(entry_err(path, "absolute path refused"));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(entry_err(path, "empty path component refused")),
            "." => return Err(entry_err(path, "`.` component refused")),
            ".." => return Err(entry_err(path, "`..` component refused")),
            _ if c.contains('\0') => return Err(entry_err(path, "NUL in path refused")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that a symlink target, resolved from the link's directory, stays inside the
/// extraction directory.
fn check_link(path: &str, link: &str) -> Result<()> {
    if link.is_empty() {
        return Err(entry_err(path, "symlink with an empty target refused"));
    }
    if link.starts_with('/') {
        return Err(entry_err(
            path,
            format!("symlink to the absolute path `{link}` refused"),
        ));
    }
    if link.contains('\0') {
        return Err(entry_err(path, "NUL in symlink target refused"));
    }
    // Depth of the link's directory below the extraction root.
    let mut depth = path.split('/').count() - 1;
    for c in link.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    return Err(entry_err(
                        path,
                        format!("symlink to `{link}` points outside the extraction directory"),
                    ));
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Resolves a symlink through the other symlinks of the archive (the kernel would) and
/// checks that it never leaves the extraction directory: two links that each stay inside,
/// `a -> b/..` and `b -> ..`, together point outside.
fn check_link_chain(links: &HashMap<&str, &str>, path: &str) -> Result<()> {
    let mut stack: Vec<&str> = path.split('/').collect();
    stack.pop();
    let mut pending: Vec<&str> = links[path].split('/').rev().collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(entry_err(
                        path,
                        "symlink points outside the extraction directory through other symlinks",
                    ));
                }
            }
            _ => {
                stack.push(c);
                if let Some(next) = links.get(stack.join("/").as_str()) {
                    hops += 1;
                    if hops > 40 {
                        return Err(entry_err(path, "symlink loop refused"));
                    }
                    stack.pop();
                    pending.extend(next.split('/').rev());
                }
            }
        }
    }
    Ok(())
}

fn describe_diff(a: &FileEntry, b: &FileEntry) -> String {
    let mut diffs = Vec::new();
    if a.path != b.path {
        diffs.push(format!("path `{}` vs `{}`", a.path, b.path));
    }
    if a.kind != b.kind {
        diffs.push(format!("kind {:?} vs {:?}", a.kind, b.kind));
    }
    if a.size != b.size {
        diffs.push(format!("size {} vs {}", a.size, b.size));
    }
    if a.mode != b.mode {
        diffs.push(format!("mode {:o} vs {:o}", a.mode, b.mode));
    }
    if a.uid != b.uid || a.gid != b.gid {
        diffs.push(format!("owner {}:{} vs {}:{}", a.uid, a.gid, b.uid, b.gid));
    }
    if a.mtime != b.mtime {
        diffs.push(format!("mtime {} vs {}", a.mtime, b.mtime));
    }
    if a.hash != b.hash {
        diffs.push(format!("hash {:?} vs {:?}", a.hash, b.hash));
    }
    if a.link != b.link {
        diffs.push(format!("link {:?} vs {:?}", a.link, b.link));
    }
    diffs.join(", ")
}

/// Compares two entry lists, naming the first entry that differs.
fn compare_entries(
    found: &[FileEntry],
    reference: &[FileEntry],
    ours: &str,
    theirs: &str,
) -> Result<()> {
    for (a, b) in found.iter().zip(reference) {
        if a != b {
            return Err(entry_err(
                &a.path,
                format!("{ours} and {theirs} differ: {}", describe_diff(a, b)),
            ));
        }
    }
    if found.len() > reference.len() {
        let extra = &found[reference.len()];
        return Err(entry_err(
            &extra.path,
            format!("in {ours} but not in {theirs}"),
        ));
    }
    if reference.len() > found.len() {
        let missing = &reference[found.len()];
        return Err(entry_err(
            &missing.path,
            format!("listed in {theirs} but missing from {ours}"),
        ));
    }
    Ok(())
}

fn compare_index(index: &ArchiveIndex, expected: &ArchiveIndex) -> Result<()> {
    compare_entries(
        &index.entries,
        &expected.entries,
        "the archive's index",
        "the manifest",
    )?;
    if index != expected {
        return Err(Error::corrupt(
            "archive index",
            "skipped files, changed files or totals differ from the manifest",
        ));
    }
    Ok(())
}

/// Where extracted entries go.
struct Extractor {
    root: PathBuf,
    /// Directory modes and mtimes, applied at the end.
    dirs: Vec<(PathBuf, u32, i64)>,
    /// Cleared after the first `EPERM`: owners cannot be restored unless root.
    chown: bool,
}

fn prepare_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let mut rd = fs::read_dir(target).ctx("list the directory", target)?;
            if rd.next().is_some() {
                return Err(Error::invalid(
                    "restore target",
                    format!(
                        "`{}` is not empty; give a new or empty directory",
                        target.display()
                    ),
                ));
            }
            Ok(())
        }
        Ok(_) => Err(Error::invalid(
            "restore target",
            format!("`{}` exists and is not a directory", target.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(target).ctx("create the directory", target)
        }
        Err(e) => Err(Error::io("read the metadata of", target, e)),
    }
}

fn mtime_of(secs: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Extractor {
    fn set_owner(&mut self, res: io::Result<()>, path: &Path) -> Result<()> {
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // Not root: owners cannot be given away; keep ours.
                self.chown = false;
                Ok(())
            }
            Err(e) => Err(Error::io("set the owner of", path, e)),
        }
    }

    fn dir(&mut self, e: &FileEntry) -> Result<()> {
        let path = self.root.join(&e.path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .ctx("create the directory", &path)?;
        if self.chown {
            let r = std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid));
            self.set_owner(r, &path)?;
        }
        self.dirs.push((path, e.mode, e.mtime));
        Ok(())
    }

    fn symlink(&mut self, e: &FileEntry, link: &str) -> Result<()> {
        let path = self.root.join(&e.path);
        std::os::unix::fs::symlink(link, &path).ctx("create the symlink", &path)?;
        if self.chown {
            let r = std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid));
            self.set_owner(r, &path)?;
        }
        Ok(())
    }

    fn create_file(&self, e: &FileEntry) -> Result<File> {
        let path = self.root.join(&e.path);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ctx("create", &path)
    }

    /// Owner, then mode (a chown clears setuid bits), then mtime, all through the open fd.
    fn finish_file(&mut self, file: File, e: &FileEntry) -> Result<()> {
        let path = self.root.join(&e.path);
        if self.chown {
            let r = std::os::unix::fs::fchown(&file, Some(e.uid), Some(e.gid));
            self.set_owner(r, &path)?;
        }
        file.set_permissions(fs::Permissions::from_mode(e.mode))
            .ctx("set the mode of", &path)?;
        let t = mtime_of(e.mtime);
        file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .ctx("set the mtime of", &path)?;
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode, mtime) in dirs {
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&path)
                .ctx("open the directory", &path)?;
            dir.set_permissions(fs::Permissions::from_mode(mode))
                .ctx("set the mode of", &path)?;
            let t = mtime_of(mtime);
            dir.set_times(FileTimes::new().set_modified(t).set_accessed(t))
                .ctx("set the mtime of", &path)?;
        }
        Ok(())
    }
}

/// Records that the wrapped reader itself failed, so its errors are not taken for damage.
struct FlagOnError<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for FlagOnError<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed.store(true, Ordering::Relaxed);
            }
        })
    }
}

/// The one pass behind [`verify_archive`] and [`extract_archive`].
fn read_archive<R: Read>(
    input: R,
    expected: Option<&ArchiveIndex>,
    expected_archive: Option<(u64, &str)>,
    mut sink: Option<&mut Extractor>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, ArchiveIndex)> {
    let failed = Arc::new(AtomicBool::new(false));
    let reader = FlagOnError {
        inner: HashingReader::new(input),
        failed: failed.clone(),
    };
    let decoder = open_decoder(reader, &failed, BUF_SIZE)?;
    let mut archive = tar::Archive::new(decoder);
    let rerr = |e: io::Error| read_err(e, &failed);

    // Position of each manifest entry by path, and whether it was seen.
    let by_path: HashMap<&str, usize> = expected
        .map(|x| {
            x.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_str(), i))
                .collect()
        })
        .unwrap_or_default();
    let mut seen: HashMap<String, EntryKind> = HashMap::new();
    let mut found: Vec<FileEntry> = Vec::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut ticker = ProgressTicker::new(progress);

    let (header, index) = {
        let mut entries = archive.entries().map_err(rerr)?;
        let first = entries
            .next()
            .ok_or_else(|| Error::corrupt("archive", "it is empty"))?
            .map_err(rerr)?;
        let header = read_header_entry(first, &failed)?;

        let mut index: Option<ArchiveIndex> = None;
        for entry in entries.by_ref() {
            let mut entry = entry.map_err(rerr)?;
            if index.is_some() {
                let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(entry_err(&p, format!("found after `{INDEX_PATH}`")));
            }
            let raw = entry.path_bytes();
            let path = std::str::from_utf8(&raw)
                .map_err(|_| entry_err(&String::from_utf8_lossy(&raw), "path is not valid UTF-8"))?
                .trim_end_matches('/')
                .to_owned();
            drop(raw);
            let etype = entry.header().entry_type();
            if path == INDEX_PATH && is_regular(etype) {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(rerr)?;
                index = Some(
                    serde_json::from_slice(&data)
                        .map_err(|e| entry_err(INDEX_PATH, format!("not a valid index: {e}")))?,
                );
                continue;
            }
            check_path(&path)?;
            if path == RESERVED_PREFIX || path.starts_with("girofle/") {
                return Err(entry_err(
                    &path,
                    "unexpected entry in the reserved `girofle/` directory",
                ));
            }
            let kind = match etype {
                t if is_regular(t) => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => return Err(entry_err(&path, "hard link refused")),
                tar::EntryType::Char | tar::EntryType::Block => {
                    return Err(entry_err(&path, "device entry refused"))
                }
                tar::EntryType::Fifo => return Err(entry_err(&path, "fifo entry refused")),
                t => {
                    return Err(entry_err(
                        &path,
                        format!("unsupported entry type {:?} refused", t),
                    ))
                }
            };
            if seen.contains_key(&path) {
                return Err(entry_err(&path, "duplicate entry refused"));
            }
            // The parent must be a directory extracted earlier from this archive (the
            // extraction root for a prefix), so no entry can be placed through a symlink.
            match path.rsplit_once('/') {
                None if kind != EntryKind::Dir => {
                    return Err(entry_err(
                        &path,
                        "not under a known prefix: top-level entries must be source directories",
                    ))
                }
                None => {}
                Some((parent, _)) => match seen.get(parent) {
                    Some(EntryKind::Dir) => {}
                    Some(EntryKind::Symlink) => {
                        return Err(entry_err(
                            &path,
                            format!("its parent `{parent}` is a symlink; refused"),
                        ))
                    }
                    Some(EntryKind::File) => {
                        return Err(entry_err(&path, format!("its parent `{parent}` is a file")))
                    }
                    None => {
                        return Err(entry_err(
                            &path,
                            format!("its parent directory `{parent}` is not in the archive before it (not under a known prefix?)"),
                        ))
                    }
                },
            }
            let link = if kind == EntryKind::Symlink {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "symlink without a target"))?;
                let link = std::str::from_utf8(&raw)
                    .map_err(|_| entry_err(&path, "symlink target is not valid UTF-8"))?
                    .to_owned();
                check_link(&path, &link)?;
                Some(link)
            } else {
                None
            };
            let h = entry.header();
            let num = |r: io::Result<u64>| -> Result<u64> {
                r.map_err(|e| entry_err(&path, format!("bad header field: {e}")))
            };
            let uid =
                u32::try_from(num(h.uid())?).map_err(|_| entry_err(&path, "uid out of range"))?;
            let gid =
                u32::try_from(num(h.gid())?).map_err(|_| entry_err(&path, "gid out of range"))?;
            let mode = num(h.mode().map(u64::from))? as u32 & 0o7777;
            let mtime = i64::try_from(num(h.mtime())?)
                .map_err(|_| entry_err(&path, "mtime out of range"))?;
            let size = entry.size();
            if kind != EntryKind::File && size != 0 {
                return Err(entry_err(
                    &path,
                    format!("a {kind:?} with {size} bytes of data"),
                ));
            }
            let mut observed = FileEntry {
                path,
                kind,
                size,
                mode,
                uid,
                gid,
                mtime,
                hash: None,
                link,
            };

            // Everything but the hash is checked against the manifest before anything is
            // written; the hash as soon as the content has passed.
            let listed = match expected {
                Some(x) => {
                    let Some(&i) = by_path.get(observed.path.as_str()) else {
                        return Err(entry_err(
                            &observed.path,
                            "not listed in the manifest; refused",
                        ));
                    };
                    let want = &x.entries[i];
                    let mut cmp = observed.clone();
                    cmp.hash.clone_from(&want.hash);
                    if &cmp != want {
                        return Err(entry_err(
                            &observed.path,
                            format!("archive and manifest differ: {}", describe_diff(&cmp, want)),
                        ));
                    }
                    Some(want)
                }
                None => None,
            };

            match observed.kind {
                EntryKind::Dir => {
                    if let Some(s) = sink.as_deref_mut() {
                        s.dir(&observed)?;
                    }
                    ticker.add(1, 0);
                }
                EntryKind::Symlink => {
                    if let Some(s) = sink.as_deref_mut() {
                        let link = observed.link.clone().unwrap_or_default();
                        s.symlink(&observed, &link)?;
                    }
                    ticker.add(1, 0);
                }
                EntryKind::File => {
                    let mut file = match sink.as_deref_mut() {
                        Some(s) => Some(s.create_file(&observed)?),
                        None => None,
                    };
                    let out_path = sink.as_deref().map(|s| s.root.join(&observed.path));
                    let mut hasher = blake3::Hasher::new();
                    let mut total = 0u64;
                    loop {
                        let n = match entry.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(rerr(e)),
                        };
                        hasher.update(&buf[..n]);
                        total += n as u64;
                        if let (Some(f), Some(p)) = (file.as_mut(), out_path.as_deref()) {
                            f.write_all(&buf[..n]).ctx("write", p)?;
                        }
                        ticker.add(0, n as u64);
                    }
                    if total != observed.size {
                        return Err(entry_err(
                            &observed.path,
                            format!("{total} bytes of content, {} in its header", observed.size),
                        ));
                    }
                    let hash = hasher.finalize().to_hex().to_string();
                    if let Some(want) = listed {
                        if want.hash.as_deref() != Some(hash.as_str()) {
                            return Err(entry_err(
                                &observed.path,
                                format!(
                                    "content hash {hash} differs from the manifest's {}",
                                    want.hash.as_deref().unwrap_or("(none)")
                                ),
                            ));
                        }
                    }
                    observed.hash = Some(hash);
                    if let (Some(f), Some(s)) = (file, sink.as_deref_mut()) {
                        s.finish_file(f, &observed)?;
                    }
                    ticker.add(1, 0);
                }
            }
            seen.insert(observed.path.clone(), observed.kind.clone());
            found.push(observed);
        }
        let index = index.ok_or_else(|| {
            Error::corrupt(
                "archive",
                format!("`{INDEX_PATH}` is missing: the archive is truncated or incomplete"),
            )
        })?;
        (header, index)
    };
    ticker.finish();

    // Read to the very end so the zstd frame checksum is checked and every compressed
    // byte is counted; only the tar end-of-archive zeros may remain.
    let mut decoder = archive.into_inner();
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e, &failed)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Error::corrupt(
                "archive",
                "data found after the end of the tar stream",
            ));
        }
    }
    let mut rest = decoder.finish();
    // The decoder stops at the end of the input already; this only catches bytes that
    // zstd left unread.
    io::copy(&mut rest, &mut io::sink()).map_err(|e| read_err(e, &failed))?;
    let (_, archive_size, archive_hash) = rest.into_inner().into_inner().1.inner.finish();

    compare_entries(&found, &index.entries, "the archive's content", "its index")?;
    let counts = (
        found.iter().filter(|e| e.kind == EntryKind::File).count() as u64,
        found.iter().filter(|e| e.kind == EntryKind::Dir).count() as u64,
        found
            .iter()
            .filter(|e| e.kind == EntryKind::Symlink)
            .count() as u64,
        found.iter().map(|e| e.size).sum::<u64>(),
    );
    if counts != (index.files, index.dirs, index.symlinks, index.bytes) {
        return Err(Error::corrupt(
            "archive index",
            format!(
                "totals (files, dirs, symlinks, bytes) {:?} do not match its entries {:?}",
                (index.files, index.dirs, index.symlinks, index.bytes),
                counts
            ),
        ));
    }
    if let Some(x) = expected {
        compare_index(&index, x)?;
    }
    let links: HashMap<&str, &str> = found
        .iter()
        .filter_map(|e| Some((e.path.as_str(), e.link.as_deref()?)))
        .collect();
    for path in links.keys() {
        check_link_chain(&links, path)?;
    }
    if let Some((size, hash)) = expected_archive {
        if size != archive_size || !hash.eq_ignore_ascii_case(&archive_hash) {
            return Err(Error::corrupt(
                "archive",
                format!(
                    "{archive_size} bytes with BLAKE3 {archive_hash}, expected {size} bytes with BLAKE3 {hash}"
                ),
            ));
        }
    }
    Ok((header, index))
}

// ---------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------

/// A [`Write`] that hands the bytes to an async consumer in ~1 MiB [`Bytes`] chunks over a
/// bounded channel, so the blocking archive writer and an async store stay in step with
/// flat memory.
///
/// Must be used from a blocking thread (`spawn_blocking`), never from async code: it uses
/// `blocking_send`. Call [`ChannelWriter::finish`] to send the last chunk; a writer dropped
/// without it loses that chunk, which the consumer must treat as a failed upload.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    /// A writer sending chunks of ~1 MiB.
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self::with_chunk_size(tx, BUF_SIZE)
    }

    /// A writer sending chunks of `chunk` bytes (at least 1).
    pub fn with_chunk_size(tx: mpsc::Sender<io::Result<Bytes>>, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(Ok(Bytes::from(data)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive consumer is gone"))
    }

    /// Sends the last chunk; the consumer then sees the end of the stream when the writer
    /// is dropped.
    ///
    /// # Errors
    /// `BrokenPipe` if the receiver is gone.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()
    }

    /// Tells the consumer that the stream failed, so it does not store a partial archive.
    pub fn abort(self, error: io::Error) {
        // If the receiver is gone it does not need to be told.
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// A [`Read`] over chunks received from an async producer on a bounded channel; an `Err`
/// item becomes a read error, the end of the channel the end of the stream.
///
/// Must be used from a blocking thread: it uses `blocking_recv`.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(out.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A [`Write`] that counts and BLAKE3-hashes what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer, the byte count and the BLAKE3 hex of everything written.
    pub fn finish(self) -> (W, u64, String) {
        (
            self.inner,
            self.count,
            self.hasher.finalize().to_hex().to_string(),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] that counts and BLAKE3-hashes what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner reader, the byte count and the BLAKE3 hex of everything read.
    pub fn finish(self) -> (R, u64, String) {
        (
            self.inner,
            self.count,
            self.hasher.finalize().to_hex().to_string(),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink};
    use std::os::unix::net::UnixListener;

    const T0: i64 = 1_600_000_000;

    fn is_root() -> bool {
        let dir = tempfile::tempdir().unwrap();
        fs::metadata(dir.path()).unwrap().uid() == 0
    }

    fn set_mtime(path: &Path, secs: i64) {
        let f = File::open(path).unwrap();
        let t = mtime_of(secs);
        f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }

    fn write_file(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Pseudo-random, incompressible bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A tree with everything the archive must keep (and a socket it must skip).
    fn build_tree(root: &Path) -> Vec<Source> {
        let data = root.join("data");
        let config = root.join("config");
        fs::create_dir_all(data.join("a/b/c")).unwrap();
        fs::create_dir_all(data.join("empty")).unwrap();
        fs::create_dir_all(data.join("ro")).unwrap();
        fs::create_dir_all(&config).unwrap();
        write_file(&data.join("a/b/c/deep.txt"), b"deep content\n", 0o644);
        write_file(&data.join("secret"), b"key material", 0o600);
        write_file(&data.join("script.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write_file(
            &data.join("big.bin"),
            &noise(3 * BUF_SIZE + 12345, 7),
            0o640,
        );
        write_file(&data.join("ro/inside"), b"read-only dir content", 0o444);
        write_file(&data.join("owned"), b"owned by git", 0o640);
        fs::hard_link(data.join("secret"), data.join("secret-hardlink")).unwrap();
        write_file(
            &config.join("gitlab.rb"),
            b"external_url 'http://x'\n",
            0o600,
        );
        symlink("b/c/deep.txt", data.join("a/link")).unwrap();
        let _listener = UnixListener::bind(data.join("sock")).unwrap();
        if is_root() {
            chown(data.join("owned"), Some(998), Some(997)).unwrap();
            chown(data.join("a/b"), Some(998), Some(998)).unwrap();
        }
        for p in [
            "a/b/c/deep.txt",
            "secret",
            "script.sh",
            "big.bin",
            "ro/inside",
            "owned",
        ] {
            set_mtime(&data.join(p), T0 + 17);
        }
        for p in ["a/b/c", "a/b", "a", "empty", ""] {
            set_mtime(&data.join(p), T0 + 5);
        }
        fs::set_permissions(data.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        set_mtime(&data.join("ro"), T0 + 9);
        vec![
            Source {
                prefix: "config".into(),
                dir: config,
            },
            Source {
                prefix: "data".into(),
                dir: data,
            },
        ]
    }

    fn header() -> serde_json::Value {
        serde_json::json!({"backup_id": "b-1", "instance": {"name": "ci-2"}, "gitlab": "17.0.1-ce.0"})
    }

    fn write(sources: &[Source]) -> (Vec<u8>, ArchiveSummary) {
        let mut out = Vec::new();
        let mut calls = 0;
        let summary = write_archive(
            &header(),
            sources,
            CompressionOptions {
                level: 3,
                threads: 2,
            },
            &mut out,
            &mut |_| calls += 1,
        )
        .unwrap();
        assert!(calls >= 1);
        (out, summary)
    }

    /// Every path under `root`, relative, sorted.
    fn list(root: &Path) -> Vec<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn round_trip_keeps_content_owners_modes_mtimes_and_links() {
        let src = tempfile::tempdir().unwrap();
        let sources = build_tree(src.path());
        let (bytes, summary) = write(&sources);
        let index = &summary.index;

        assert_eq!(summary.archive_size, bytes.len() as u64);
        assert_eq!(
            summary.archive_hash,
            blake3::hash(&bytes).to_hex().to_string()
        );
        assert_eq!(
            index.skipped,
            vec![Skipped {
                path: "data/sock".into(),
                reason: "unix socket".into()
            }]
        );
        assert!(index.changed_while_read.is_empty());
        assert_eq!((index.files, index.dirs, index.symlinks), (8, 7, 1));
        // Deterministic order: the prefix first, then children sorted by name.
        let paths: Vec<&str> = index.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(&paths[..3], &["config", "config/gitlab.rb", "data"]);
        assert_eq!(read_header(&bytes[..]).unwrap(), header());

        let (h, idx) = verify_archive(
            &bytes[..],
            Some(index),
            Some((summary.archive_size, &summary.archive_hash)),
        )
        .unwrap();
        assert_eq!(h, header());
        assert_eq!(&idx, index);

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("restored");
        let mut last = Progress::default();
        let (h, idx) = extract_archive(
            &bytes[..],
            &target,
            index,
            Some((summary.archive_size, &summary.archive_hash)),
            &mut |p| last = p,
        )
        .unwrap();
        assert_eq!(h, header());
        assert_eq!(&idx, index);
        assert_eq!(last.bytes, index.bytes);

        let root = is_root();
        let mut expected_paths = Vec::new();
        for s in &sources {
            expected_paths.push(PathBuf::from(&s.prefix));
            for p in list(&s.dir) {
                if p != Path::new("sock") {
                    expected_paths.push(Path::new(&s.prefix).join(p));
                }
            }
        }
        expected_paths.sort();
        assert_eq!(list(&target), expected_paths);

        for s in &sources {
            for rel in std::iter::once(PathBuf::new()).chain(list(&s.dir)) {
                if rel == Path::new("sock") {
                    continue;
                }
                let a = s.dir.join(&rel);
                let b = target.join(&s.prefix).join(&rel);
                let (ma, mb) = (
                    fs::symlink_metadata(&a).unwrap(),
                    fs::symlink_metadata(&b).unwrap(),
                );
                assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
                assert_eq!(ma.mode(), mb.mode(), "{}", rel.display());
                if root {
                    assert_eq!(
                        (ma.uid(), ma.gid()),
                        (mb.uid(), mb.gid()),
                        "{}",
                        rel.display()
                    );
                }
                if ma.file_type().is_symlink() {
                    assert_eq!(fs::read_link(&a).unwrap(), fs::read_link(&b).unwrap());
                    continue;
                }
                assert_eq!(ma.mtime(), mb.mtime(), "{}", rel.display());
                if ma.is_file() {
                    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
                }
            }
        }
        let owned = fs::metadata(target.join("data/owned")).unwrap();
        if root {
            assert_eq!((owned.uid(), owned.gid()), (998, 997));
        }
        assert_eq!(
            fs::metadata(target.join("data/ro")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::metadata(target.join("data/secret")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            fs::metadata(target.join("data/script.sh")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::read_link(target.join("data/a/link")).unwrap(),
            Path::new("b/c/deep.txt")
        );
        assert!(fs::metadata(target.join("data/empty")).unwrap().is_dir());
        // Hard links come back as separate files.
        assert_eq!(
            fs::metadata(target.join("data/secret-hardlink"))
                .unwrap()
                .nlink(),
            1
        );
        // Let the temp dirs be removed.
        for d in [src.path().join("data/ro"), target.join("data/ro")] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn same_tree_gives_same_index() {
        let src = tempfile::tempdir().unwrap();
        let sources = build_tree(src.path());
        let (_, a) = write(&sources);
        let (_, b) = write(&sources);
        assert_eq!(a.index, b.index);
        fs::set_permissions(
            src.path().join("data/ro"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    #[test]
    fn extract_refuses_a_non_empty_target() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"x").unwrap();
        let sources = [Source {
            prefix: "data".into(),
            dir: src.path().to_path_buf(),
        }];
        let (bytes, summary) = write(&sources);
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("already"), b"x").unwrap();
        let err =
            extract_archive(&bytes[..], out.path(), &summary.index, None, &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), "invalid_input", "{err}");
        // An existing empty directory is fine.
        let empty = out.path().join("empty");
        fs::create_dir(&empty).unwrap();
        extract_archive(&bytes[..], &empty, &summary.index, None, &mut |_| {}).unwrap();
        assert_eq!(fs::read(empty.join("data/f")).unwrap(), b"x");
    }

    #[test]
    fn bad_sources_are_refused() {
        let src = tempfile::tempdir().unwrap();
        let dir = src.path().to_path_buf();
        for prefixes in [&["a", "a"][..], &["girofle"], &["a/b"], &[""], &[".."]] {
            let sources: Vec<Source> = prefixes
                .iter()
                .map(|p| Source {
                    prefix: (*p).into(),
                    dir: dir.clone(),
                })
                .collect();
            let err = write_archive(
                &header(),
                &sources,
                CompressionOptions::default(),
                io::sink(),
                &mut |_| {},
            )
            .unwrap_err();
            assert_eq!(err.kind(), "invalid_input", "{prefixes:?}: {err}");
        }
    }

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
            let mut buf = vec![0u8; 64];
            let mut r = SizedFileReader {
                file,
                remaining: 1000,
                buf: &mut buf,
                pos: 0,
                len: 0,
                hasher: blake3::Hasher::new(),
                shrunk: false,
                error: None,
            };
            let mut got = Vec::new();
            // Change the file after the header was written, before its content is read.
            fs::write(&path, vec![1u8; new_len]).unwrap();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(got, stored);
            assert_eq!(r.hasher.finalize(), blake3::hash(&stored));
            assert_eq!(r.shrunk, new_len < 1000);
            assert_eq!(r.grew().unwrap(), new_len > 1000);
            fs::write(&path, vec![1u8; 1000]).unwrap();
        }
    }

    fn corruption_sample() -> (Vec<u8>, ArchiveSummary) {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        for i in 0..40 {
            let text = format!("line {i} of a compressible text file\n").repeat(200);
            fs::write(src.path().join(format!("d/t{i:02}.txt")), text).unwrap();
        }
        fs::write(src.path().join("noise.bin"), noise(200_000, 3)).unwrap();
        symlink("d/t00.txt", src.path().join("l")).unwrap();
        write(&[Source {
            prefix: "data".into(),
            dir: src.path().to_path_buf(),
        }])
    }

    #[test]
    fn verify_detects_flipped_bytes_anywhere() {
        let (bytes, summary) = corruption_sample();
        verify_archive(&bytes[..], None, None).unwrap();
        let n = bytes.len();
        let mut positions: Vec<usize> = (0..100).map(|i| i * n / 100).collect();
        positions.extend([1, 2, 3, 4, 5, 6, n - 4, n - 3, n - 2, n - 1]);
        for pos in positions {
            for flip in [0xFFu8, 0x01, 0x10] {
                let mut bad = bytes.clone();
                bad[pos] ^= flip;
                // Structure, zstd checksum and per-file hashes alone...
                let err = verify_archive(&bad[..], None, None);
                assert!(
                    matches!(err, Err(Error::Corrupt { .. })),
                    "byte {pos}/{n} ^ {flip:#x} not detected: {err:?}"
                );
                // ...and with the manifest and the archive hash.
                let err = verify_archive(
                    &bad[..],
                    Some(&summary.index),
                    Some((summary.archive_size, &summary.archive_hash)),
                );
                assert!(matches!(err, Err(Error::Corrupt { .. })), "{pos}");
            }
        }
    }

    #[test]
    fn verify_detects_truncation_and_trailing_bytes() {
        let (bytes, summary) = corruption_sample();
        let n = bytes.len();
        for len in [0, 3, 10, 100, n / 3, n / 2, n - 100, n - 5, n - 1] {
            let err = verify_archive(&bytes[..len], None, None);
            assert!(
                matches!(err, Err(Error::Corrupt { .. })),
                "{len}/{n}: {err:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"garbage");
        assert!(verify_archive(&longer[..], None, None).is_err());
        // A different archive of the right shape is caught by the archive hash.
        let err = verify_archive(&bytes[..], None, Some((summary.archive_size, "00")));
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
    }

    #[test]
    fn input_errors_are_io_errors() {
        let (bytes, _) = corruption_sample();
        let failing = bytes[..bytes.len() / 2].chain(FailingReader);
        let err = verify_archive(failing, None, None).unwrap_err();
        assert_eq!(err.kind(), "io", "{err}");
    }

    #[derive(Debug)]
    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "network down",
            ))
        }
    }

    // --- hostile archives -------------------------------------------------------------

    /// One hand-made tar entry; names are written raw, bypassing the tar crate's checks.
    struct Raw {
        path: Vec<u8>,
        kind: tar::EntryType,
        link: Option<Vec<u8>>,
        data: Vec<u8>,
        /// Size written in the header, if not the data's length.
        header_size: Option<u64>,
        /// Emit the path as a GNU long name (`././@LongLink`) entry.
        gnu_long: bool,
        /// Emit the path as a PAX `path` record.
        pax: bool,
    }

    fn raw(path: &str, kind: tar::EntryType) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind,
            link: None,
            data: Vec::new(),
            header_size: None,
            gnu_long: false,
            pax: false,
        }
    }

    fn dir(path: &str) -> Raw {
        raw(path, tar::EntryType::Directory)
    }

    fn file(path: &str, data: &[u8]) -> Raw {
        Raw {
            data: data.to_vec(),
            ..raw(path, tar::EntryType::Regular)
        }
    }

    fn link(path: &str, target: &str) -> Raw {
        Raw {
            link: Some(target.as_bytes().to_vec()),
            ..raw(path, tar::EntryType::Symlink)
        }
    }

    fn mode_of(kind: tar::EntryType) -> u32 {
        if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        }
    }

    /// The manifest entry matching a raw entry, so that only the safety rules refuse it.
    fn listed(r: &Raw) -> FileEntry {
        let kind = match r.kind {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            _ => EntryKind::File,
        };
        FileEntry {
            path: String::from_utf8(r.path.clone()).unwrap(),
            size: if kind == EntryKind::File {
                r.data.len() as u64
            } else {
                0
            },
            hash: (kind == EntryKind::File).then(|| blake3::hash(&r.data).to_hex().to_string()),
            link: r.link.clone().map(|l| String::from_utf8(l).unwrap()),
            kind,
            mode: mode_of(r.kind),
            uid: 0,
            gid: 0,
            mtime: T0,
        }
    }

    fn index_of(entries: Vec<FileEntry>) -> ArchiveIndex {
        let mut index = ArchiveIndex::default();
        for e in &entries {
            match e.kind {
                EntryKind::File => {
                    index.files += 1;
                    index.bytes += e.size;
                }
                EntryKind::Dir => index.dirs += 1,
                EntryKind::Symlink => index.symlinks += 1,
            }
        }
        index.entries = entries;
        index
    }

    fn set_raw(slot: &mut [u8], value: &[u8]) {
        slot.fill(0);
        slot[..value.len()].copy_from_slice(value);
    }

    /// A compressed archive made of `entries` between a valid header and an index
    /// listing exactly them; also returns that index as the manifest.
    fn hostile(entries: &[Raw]) -> (Vec<u8>, ArchiveIndex) {
        let index = index_of(entries.iter().map(listed).collect());
        let mut b = tar::Builder::new(Vec::new());
        let hj = serde_json::to_vec(&header()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(hj.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, HEADER_PATH, &hj[..]).unwrap();
        for r in entries {
            if r.gnu_long {
                let mut l = tar::Header::new_gnu();
                set_raw(&mut l.as_gnu_mut().unwrap().name, b"././@LongLink");
                l.set_entry_type(tar::EntryType::GNULongName);
                let mut name = r.path.clone();
                name.push(0);
                l.set_size(name.len() as u64);
                l.set_cksum();
                b.append(&l, &name[..]).unwrap();
            }
            if r.pax {
                let rec = |len: usize| format!("{len} path=").into_bytes();
                let body_len = r.path.len() + 1;
                let mut len = body_len + rec(0).len();
                while rec(len).len() + body_len != len {
                    len = rec(len).len() + body_len;
                }
                let mut data = rec(len);
                data.extend_from_slice(&r.path);
                data.push(b'\n');
                let mut x = tar::Header::new_ustar();
                set_raw(&mut x.as_ustar_mut().unwrap().name, b"PaxHeader");
                x.set_entry_type(tar::EntryType::XHeader);
                x.set_size(data.len() as u64);
                x.set_cksum();
                b.append(&x, &data[..]).unwrap();
            }
            let mut h = if r.pax {
                tar::Header::new_ustar()
            } else {
                tar::Header::new_gnu()
            };
            let short: &[u8] = if r.gnu_long || r.pax {
                b"placeholder"
            } else {
                &r.path
            };
            set_raw(&mut h.as_old_mut().name, short);
            if let Some(l) = &r.link {
                set_raw(&mut h.as_old_mut().linkname, l);
            }
            h.set_entry_type(r.kind);
            h.set_size(r.header_size.unwrap_or(r.data.len() as u64));
            h.set_mode(mode_of(r.kind));
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(T0 as u64);
            h.set_cksum();
            // The data written matches the header size, so the tar stream stays sound.
            let mut data = r.data.clone();
            data.resize(r.header_size.unwrap_or(r.data.len() as u64) as usize, b'z');
            b.append(&h, &data[..]).unwrap();
        }
        let ij = serde_json::to_vec(&index).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(ij.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, INDEX_PATH, &ij[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.window_log(WINDOW_LOG).unwrap();
        enc.write_all(&tar).unwrap();
        (enc.finish().unwrap(), index)
    }

    /// Extracts into `<tmp>/target` and checks that the archive was refused with a
    /// message containing `why`, and that nothing appeared beside the target.
    fn assert_refused(bytes: &[u8], manifest: &ArchiveIndex, why: &str) {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        let err = extract_archive(bytes, &target, manifest, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. }) && err.to_string().contains(why),
            "expected a refusal with `{why}`, got: {err}"
        );
        assert_eq!(list(base.path()).first(), Some(&PathBuf::from("target")));
        for p in list(base.path()) {
            assert!(p.starts_with("target"), "{} written outside", p.display());
        }
        // The same archive does not pass verification either.
        assert!(verify_archive(bytes, Some(manifest), None).is_err());
    }

    #[test]
    fn hostile_paths_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let abs = base.path().join("abs-evil");
        let abs = abs.to_str().unwrap();
        let long = format!("data/{}", "x".repeat(150));
        let long_evil = format!("data/{}/../../../evil", "x".repeat(120));
        let cases: Vec<(Vec<Raw>, &str)> = vec![
            (vec![dir("data"), file(abs, b"x")], "absolute path"),
            (vec![dir("data"), file("data/../evil", b"x")], "`..`"),
            (vec![dir("data"), file("data/./x", b"x")], "`.`"),
            (vec![file("evil", b"x")], "known prefix"),
            (
                vec![dir("data"), file("other/x", b"x")],
                "not in the archive before it",
            ),
            (
                vec![dir("data"), file("data/a", b"x"), file("data/a", b"x")],
                "duplicate",
            ),
            (vec![dir("data"), dir("data")], "duplicate"),
            (vec![dir("data"), file("girofle/extra", b"x")], "reserved"),
            (vec![dir("data"), link("data/l", "/etc")], "absolute path"),
            (vec![dir("data"), link("data/l", "../../evil")], "outside"),
            (
                vec![dir("data"), link("data/a", "b/../.."), link("data/b", "..")],
                "through other symlinks",
            ),
            (
                vec![dir("data"), link("data/a", "b"), link("data/b", "a")],
                "loop",
            ),
            (
                vec![dir("data"), dir("data/d"), link("data/d/l", "../../../x")],
                "outside",
            ),
            (
                vec![
                    dir("data"),
                    dir("data/sub"),
                    link("data/l", "sub"),
                    file("data/l/x", b"x"),
                ],
                "symlink",
            ),
            (
                vec![
                    dir("data"),
                    link("data/up", ".."),
                    file("data/up/evil", b"x"),
                ],
                "symlink",
            ),
            (
                vec![dir("data"), file("data/f", b"x"), file("data/f/x", b"x")],
                "is a file",
            ),
            (
                vec![
                    dir("data"),
                    file("data/a", b"x"),
                    Raw {
                        link: Some(b"data/a".to_vec()),
                        ..raw("data/h", tar::EntryType::Link)
                    },
                ],
                "hard link",
            ),
            (
                vec![dir("data"), raw("data/fifo", tar::EntryType::Fifo)],
                "fifo",
            ),
            (
                vec![dir("data"), raw("data/null", tar::EntryType::Char)],
                "device",
            ),
            (
                vec![dir("data"), raw("data/sda", tar::EntryType::Block)],
                "device",
            ),
            (
                vec![
                    dir("data"),
                    Raw {
                        gnu_long: true,
                        ..file(&long_evil, b"x")
                    },
                ],
                "`..`",
            ),
            (
                vec![
                    dir("data"),
                    Raw {
                        pax: true,
                        ..file("data/../pax-evil", b"x")
                    },
                ],
                "`..`",
            ),
            (
                vec![
                    dir("data"),
                    Raw {
                        pax: true,
                        ..file(abs, b"x")
                    },
                ],
                "absolute path",
            ),
        ];
        for (entries, why) in cases {
            let (bytes, manifest) = hostile(&entries);
            assert_refused(&bytes, &manifest, why);
        }
        assert!(!abs.is_empty() && !Path::new(abs).exists());

        // Long names that pass the rules are fine, GNU or PAX.
        let entries = vec![
            dir("data"),
            Raw {
                gnu_long: true,
                ..file(&long, b"gnu")
            },
            Raw {
                pax: true,
                ..file(&format!("{long}-pax"), b"pax")
            },
            link("data/ok", "x/../x"),
        ];
        let (bytes, manifest) = hostile(&entries);
        let out = tempfile::tempdir().unwrap();
        extract_archive(&bytes[..], out.path(), &manifest, None, &mut |_| {}).unwrap();
        assert_eq!(fs::read(out.path().join(&long)).unwrap(), b"gnu");
        assert_eq!(
            fs::read(out.path().join(format!("{long}-pax"))).unwrap(),
            b"pax"
        );
    }

    #[test]
    fn entries_must_match_the_manifest() {
        let entries = vec![
            dir("data"),
            file("data/a", b"hello"),
            file("data/b", b"world"),
        ];
        let (bytes, manifest) = hostile(&entries);

        // An entry absent from the manifest.
        let mut without_b = manifest.clone();
        without_b.entries.retain(|e| e.path != "data/b");
        assert_refused(&bytes, &without_b, "not listed in the manifest");

        // A manifest entry absent from the archive.
        let mut with_c = manifest.clone();
        with_c.entries.push(listed(&file("data/c", b"!")));
        assert_refused(&bytes, &with_c, "missing");

        // Content that does not match the manifest's hash.
        let mut other_hash = manifest.clone();
        other_hash.entries[1].hash = Some(blake3::hash(b"HELLO").to_hex().to_string());
        assert_refused(&bytes, &other_hash, "hash");

        // A header that lies about the size (the index inside agrees with the lie).
        let lying = vec![
            dir("data"),
            Raw {
                header_size: Some(9),
                ..file("data/a", b"hello")
            },
        ];
        let (bytes, manifest) = hostile(&lying);
        assert_refused(&bytes, &manifest, "size 9 vs 5");

        // A size that differs from the manifest's, everything else equal.
        let (bytes, mut manifest) = hostile(&[dir("data"), file("data/a", b"hello")]);
        manifest.entries[1].size = 4;
        assert_refused(&bytes, &manifest, "size 5 vs 4");

        // The valid archive extracts.
        let (bytes, manifest) = hostile(&entries);
        let out = tempfile::tempdir().unwrap();
        extract_archive(&bytes[..], out.path(), &manifest, None, &mut |_| {}).unwrap();
        assert_eq!(fs::read(out.path().join("data/b")).unwrap(), b"world");
    }

    #[test]
    fn channel_adapters_stream_in_chunks() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let data = noise(3 * BUF_SIZE + 10, 9);
        let d = data.clone();
        let producer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            for part in d.chunks(100_000) {
                w.write_all(part).unwrap();
            }
            w.finish().unwrap();
        });
        let (tx2, rx2) = mpsc::channel::<io::Result<Bytes>>(8);
        let sizes = rt.block_on(async move {
            let mut sizes = Vec::new();
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk.unwrap();
                sizes.push(chunk.len());
                tx2.send(Ok(chunk)).await.unwrap();
            }
            tx2.send(Err(io::Error::other("boom"))).await.unwrap();
            sizes
        });
        producer.join().unwrap();
        assert_eq!(sizes, vec![BUF_SIZE, BUF_SIZE, BUF_SIZE, 10]);
        let mut reader = ChannelReader::new(rx2);
        let mut got = vec![0u8; data.len()];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(reader.read(&mut [0u8; 8]).unwrap_err().to_string(), "boom");

        // A writer whose receiver is gone fails with BrokenPipe.
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
        drop(rx);
        let mut w = ChannelWriter::with_chunk_size(tx, 4);
        let err = w.write_all(b"12345678").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn archive_streams_through_channels() {
        let src = tempfile::tempdir().unwrap();
        let sources = build_tree(src.path());
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(2);
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            let s = write_archive(
                &header(),
                &sources,
                CompressionOptions::default(),
                &mut w,
                &mut |_| {},
            );
            w.finish().unwrap();
            (s.unwrap(), sources)
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stored = rt.block_on(async move {
            let mut all = Vec::new();
            while let Some(c) = rx.recv().await {
                all.extend_from_slice(&c.unwrap());
            }
            all
        });
        let (summary, _) = writer.join().unwrap();
        assert_eq!(summary.archive_size, stored.len() as u64);
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
        let feeder = std::thread::spawn(move || {
            for c in stored.chunks(70_000) {
                tx.blocking_send(Ok(Bytes::copy_from_slice(c))).unwrap();
            }
        });
        verify_archive(
            ChannelReader::new(rx),
            Some(&summary.index),
            Some((summary.archive_size, &summary.archive_hash)),
        )
        .unwrap();
        feeder.join().unwrap();
        fs::set_permissions(
            src.path().join("data/ro"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}
