//! The backup archive format: one tar stream compressed with zstd, written, verified and
//! extracted in a streaming way with memory flat in the size of the data and in the number
//! of files.
//!
//! An archive holds `girofle/header.json` (an opaque JSON document chosen by the caller),
//! then the trees of the [`Source`]s in the order of their prefixes, each under its prefix
//! with numeric owners, modes and mtimes, depth first with the children of a directory in
//! byte order of their names, then `girofle/index.jsonl`: the index, as JSON lines (see
//! [`IndexRecord`]): every entry with its BLAKE3 hash, what was skipped and why, the files
//! that changed while read, and a last line with the totals. The writer spools the index to
//! a temporary file and hands it back, so the caller can store it beside the archive too.
//!
//! Readers check an archive in lockstep with an index streamed beside it, relying on the
//! deterministic order: no reader holds a list of all paths, only the stack of open
//! directories (and the symlinks, to resolve their chains).
//!
//! This module owns the walk of the source trees, the archive layout, integrity checks and
//! the safe extraction of a possibly hostile archive into an empty directory. It does not
//! know where the archive is stored (the store does, through [`ChannelWriter`] and
//! [`ChannelReader`]), what the header means (the backup module does), nor how GitLab is
//! stopped or restarted around a backup.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, IoContext, Result};

/// Path of the first entry: the caller's header document.
pub const HEADER_PATH: &str = "girofle/header.json";
/// Path of the last entry: the index, as JSON lines of [`IndexRecord`].
pub const INDEX_PATH: &str = "girofle/index.jsonl";
/// Top-level directory reserved for Girofle's own entries; no source may use it.
const RESERVED_PREFIX: &str = "girofle";

/// Size of the read and write buffers: zstd and BLAKE3 both go faster on large blocks.
const BUF_SIZE: usize = 1 << 20;
/// Buffer in front of the zstd encoder: small tar headers and small files are gathered
/// here; content chunks of [`CHUNK_SIZE`] go straight through.
const TAR_BUF_SIZE: usize = 256 << 10;
/// File content travels from the reading thread to the tar thread in chunks of this size.
const CHUNK_SIZE: usize = 1 << 20;
/// The reading thread sends its work in batches of about this many bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...or this many items...
const BATCH_ITEMS: usize = 512;
/// ...with at most this many batches waiting: it reads ahead by a few MiB, no more.
const BATCHES_IN_FLIGHT: usize = 4;
/// Decompressed data travels to the tar reader in chunks of this size...
const DECODED_CHUNK: usize = 256 << 10;
/// ...with at most this many waiting.
const DECODED_IN_FLIGHT: usize = 8;
/// Progress is reported at least every this many bytes...
const PROGRESS_BYTES: u64 = 64 << 20;
/// ...or every this many entries.
const PROGRESS_FILES: u64 = 1000;
/// zstd window, pinned so that readers can check the frame header byte that holds it: a
/// damaged window descriptor that happens to give a larger window would otherwise decode
/// to the very same data and go unnoticed. 2 MiB is zstd's own choice for level 3 (the
/// default) and what `zstd -3` uses; each worker job re-reads an eighth of the window
/// before it starts, so a larger one costs compression time (8 MiB did: ~5%) and memory
/// for little gain in ratio.
const WINDOW_LOG: u32 = 21;
/// Bytes per zstd worker job.
const JOB_SIZE: u32 = 4 << 20;
/// The header is small; anything bigger is a damaged or hostile archive.
const MAX_HEADER_SIZE: u64 = 64 << 20;
/// No index line is longer (paths and link targets are at most 4 KiB on Linux); a longer
/// one is damage, and is not read into memory.
const MAX_INDEX_LINE: usize = 64 << 10;
/// Bound on a GNU long name / long link or PAX entry, for the same reason: the tar crate
/// would read one of any size (a few KiB of zstd can claim gigabytes) into memory.
const MAX_LONG_NAME: u64 = 64 << 10;

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

/// The kind of an archived entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
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

/// The totals of an index: its last line.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexTotals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the regular files.
    pub bytes: u64,
    /// Lines of [`IndexRecord::Skipped`].
    pub skipped: u64,
    /// Lines of [`IndexRecord::ChangedWhileRead`].
    pub changed_while_read: u64,
}

impl IndexTotals {
    fn count(&mut self, record: RecordRef<'_>) {
        match record {
            RecordRef::Entry(e) => match e.kind {
                EntryKind::File => {
                    self.files += 1;
                    self.bytes += e.size;
                }
                EntryKind::Dir => self.dirs += 1,
                EntryKind::Symlink => self.symlinks += 1,
            },
            RecordRef::Skipped(_) => self.skipped += 1,
            RecordRef::ChangedWhileRead(_) => self.changed_while_read += 1,
            RecordRef::Totals(_) => {}
        }
    }
}

/// One line of an index (`{"entry":{...}}`, `{"skipped":{...}}`,
/// `{"changed_while_read":"path"}`, and last `{"totals":{...}}`). Entries are in archive
/// order; the other lines come where the walk met them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IndexRecord {
    Entry(FileEntry),
    Skipped(Skipped),
    /// A file whose size changed while it was read: its content in the archive is cut or
    /// zero-padded to the size seen when its header was written.
    ChangedWhileRead(String),
    Totals(IndexTotals),
}

/// [`IndexRecord`] by reference, for writing: serialized the same way.
#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RecordRef<'a> {
    Entry(&'a FileEntry),
    Skipped(&'a Skipped),
    ChangedWhileRead(&'a str),
    Totals(&'a IndexTotals),
}

/// An index without its lines: the totals, and the size and BLAKE3 of its JSON lines.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct IndexSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub changed_while_read: u64,
    /// Size of the JSON lines in bytes.
    pub size: u64,
    /// BLAKE3 of the JSON lines, lowercase hex.
    pub blake3: String,
    /// Files extracted without the setuid, setgid or sticky bit the archive gave them
    /// (extraction only; at most [`MAX_LISTED_STRIPPED`] paths, then only counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes_stripped: Vec<String>,
    /// How many files had those bits stripped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modes_stripped_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How many stripped paths an extraction lists by name.
pub const MAX_LISTED_STRIPPED: usize = 100;

/// The bits an extraction never gives a file: setuid, setgid and sticky. A forged archive
/// could otherwise plant a setuid-root program for any local user to run. Directories
/// keep setgid (group inheritance, which GitLab's repositories use: `git:git 2770`) and
/// sticky (a restriction): neither grants anything; a directory's setuid means nothing on
/// Linux and is dropped too.
const FILE_PRIVILEGE_BITS: u32 = 0o7000;
const DIR_PRIVILEGE_BITS: u32 = 0o4000;

impl IndexSummary {
    fn new(t: IndexTotals, size: u64, blake3: String) -> Self {
        IndexSummary {
            files: t.files,
            dirs: t.dirs,
            symlinks: t.symlinks,
            bytes: t.bytes,
            skipped: t.skipped,
            changed_while_read: t.changed_while_read,
            size,
            blake3,
            modes_stripped: Vec::new(),
            modes_stripped_count: 0,
        }
    }
}

/// A whole index in memory, for small archives and tests; archives of any size are read
/// and written as streams ([`IndexWriter`], [`ExpectedIndex`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ArchiveIndex {
    /// Every data entry, in archive order.
    pub entries: Vec<FileEntry>,
    pub skipped: Vec<Skipped>,
    pub changed_while_read: Vec<String>,
}

impl ArchiveIndex {
    /// The JSON lines: entries, skipped, changed, then the totals they add up to.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut w = IndexWriter::new(Vec::new());
        let records = self
            .entries
            .iter()
            .map(RecordRef::Entry)
            .chain(self.skipped.iter().map(RecordRef::Skipped))
            .chain(
                self.changed_while_read
                    .iter()
                    .map(|p| RecordRef::ChangedWhileRead(p)),
            );
        for r in records {
            w.push_ref(r).expect("writing to a Vec does not fail");
        }
        w.finish().expect("writing to a Vec does not fail").0
    }

    /// Reads JSON lines back.
    ///
    /// # Errors
    /// `Corrupt` when a line is malformed, the totals are missing or do not add up.
    pub fn from_jsonl(bytes: &[u8]) -> Result<ArchiveIndex> {
        let mut r = IndexReader::new(bytes, "index");
        let mut index = ArchiveIndex::default();
        let io = |e: io::Error| Error::io("read", "<index>", e);
        while let Some(record) = r.next_record(&io)? {
            match record {
                IndexRecord::Entry(e) => index.entries.push(e),
                IndexRecord::Skipped(s) => index.skipped.push(s),
                IndexRecord::ChangedWhileRead(p) => index.changed_while_read.push(p),
                IndexRecord::Totals(_) => {}
            }
        }
        Ok(index)
    }
}

/// Writes an index as JSON lines, counting and hashing as it goes.
#[derive(Debug)]
pub struct IndexWriter<W: Write> {
    out: HashingWriter<W>,
    totals: IndexTotals,
    line: Vec<u8>,
}

impl<W: Write> IndexWriter<W> {
    pub fn new(out: W) -> Self {
        IndexWriter {
            out: HashingWriter::new(out),
            totals: IndexTotals::default(),
            line: Vec::with_capacity(512),
        }
    }

    /// Appends one line; a [`IndexRecord::Totals`] is ignored (`finish` writes it).
    ///
    /// # Errors
    /// What the output returns.
    pub fn push(&mut self, record: &IndexRecord) -> io::Result<()> {
        self.push_ref(match record {
            IndexRecord::Entry(e) => RecordRef::Entry(e),
            IndexRecord::Skipped(s) => RecordRef::Skipped(s),
            IndexRecord::ChangedWhileRead(p) => RecordRef::ChangedWhileRead(p),
            IndexRecord::Totals(_) => return Ok(()),
        })
    }

    fn push_ref(&mut self, record: RecordRef<'_>) -> io::Result<()> {
        self.totals.count(record);
        self.write_line(record)
    }

    fn write_line(&mut self, record: RecordRef<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &record).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    /// Writes the totals line; returns the output and the summary.
    ///
    /// # Errors
    /// What the output returns.
    pub fn finish(mut self) -> io::Result<(W, IndexSummary)> {
        let totals = self.totals;
        self.write_line(RecordRef::Totals(&totals))?;
        let (out, size, hash) = self.out.finish();
        Ok((out, IndexSummary::new(totals, size, hash)))
    }
}

/// Reads an index line by line with bounded memory, checking its structure: every line
/// parses, the totals line comes last and matches the lines before it.
struct IndexReader<R> {
    inner: R,
    what: &'static str,
    line: Vec<u8>,
    hasher: blake3::Hasher,
    size: u64,
    lines: u64,
    counted: IndexTotals,
    done: bool,
}

impl<R: BufRead> IndexReader<R> {
    fn new(inner: R, what: &'static str) -> Self {
        IndexReader {
            inner,
            what,
            line: Vec::with_capacity(512),
            hasher: blake3::Hasher::new(),
            size: 0,
            lines: 0,
            counted: IndexTotals::default(),
            done: false,
        }
    }

    fn bad(&self, message: impl Into<String>) -> Error {
        Error::corrupt(self.what, message)
    }

    /// The next record, the totals included; `None` once the totals were read and the
    /// input is at its end.
    fn next_record(&mut self, io_err: &dyn Fn(io::Error) -> Error) -> Result<Option<IndexRecord>> {
        self.line.clear();
        let n = (&mut self.inner)
            .take(MAX_INDEX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(io_err)?;
        if self.done {
            if n > 0 {
                return Err(self.bad("data after its totals line"));
            }
            return Ok(None);
        }
        if n == 0 {
            return Err(self.bad("it has no totals line: truncated"));
        }
        if self.line.last() != Some(&b'\n') {
            return Err(if n > MAX_INDEX_LINE {
                self.bad(format!("line {} is too long", self.lines + 1))
            } else {
                self.bad("its last line is cut: truncated")
            });
        }
        self.hasher.update(&self.line);
        self.size += n as u64;
        self.lines += 1;
        let record: IndexRecord = serde_json::from_slice(&self.line[..n - 1])
            .map_err(|e| self.bad(format!("line {}: {e}", self.lines)))?;
        let as_ref = match &record {
            IndexRecord::Entry(e) => RecordRef::Entry(e),
            IndexRecord::Skipped(s) => RecordRef::Skipped(s),
            IndexRecord::ChangedWhileRead(p) => RecordRef::ChangedWhileRead(p),
            IndexRecord::Totals(t) => {
                if *t != self.counted {
                    return Err(self.bad(format!(
                        "its totals {t:?} do not match its lines {:?}",
                        self.counted
                    )));
                }
                self.done = true;
                return Ok(Some(record));
            }
        };
        self.counted.count(as_ref);
        Ok(Some(record))
    }

    fn summary(&self) -> IndexSummary {
        IndexSummary::new(
            self.counted,
            self.size,
            self.hasher.clone().finalize().to_hex().to_string(),
        )
    }
}

/// The index an archive must match, streamed beside it in lockstep: the JSON lines kept
/// beside the archive (the manifest's index), and their size and BLAKE3 when known.
pub struct ExpectedIndex<'a> {
    reader: IndexReader<BufReader<Box<dyn Read + 'a>>>,
    check: Option<(u64, String)>,
    at_totals: bool,
}

impl std::fmt::Debug for ExpectedIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpectedIndex")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl<'a> ExpectedIndex<'a> {
    /// `index` yields the JSON lines; `check` is their size and BLAKE3 as recorded in the
    /// manifest, verified once they are read.
    pub fn new(index: impl Read + 'a, check: Option<(u64, &str)>) -> Self {
        let boxed: Box<dyn Read + 'a> = Box::new(index);
        ExpectedIndex {
            reader: IndexReader::new(
                BufReader::with_capacity(256 << 10, boxed),
                "the manifest's index",
            ),
            check: check.map(|(s, h)| (s, h.to_string())),
            at_totals: false,
        }
    }

    /// An index held in memory.
    pub fn from_index(index: &ArchiveIndex) -> ExpectedIndex<'static> {
        ExpectedIndex::new(io::Cursor::new(index.to_jsonl()), None)
    }

    fn io_err(e: io::Error) -> Error {
        Error::io("read the backup index from", "<index input>", e)
    }

    /// The next entry, skipping the other lines; `None` once at the totals.
    fn next_entry(&mut self) -> Result<Option<FileEntry>> {
        while !self.at_totals {
            match self.reader.next_record(&Self::io_err)? {
                Some(IndexRecord::Entry(e)) => return Ok(Some(e)),
                Some(IndexRecord::Totals(_)) | None => self.at_totals = true,
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Reads to the end: no entry may be left, and the size and hash must match.
    fn finish(mut self) -> Result<IndexSummary> {
        if let Some(missing) = self.next_entry()? {
            return Err(entry_err(
                &missing.path,
                "listed in the manifest but missing from the archive",
            ));
        }
        if self.reader.next_record(&Self::io_err)?.is_some() {
            return Err(self.reader.bad("data after its totals line"));
        }
        let summary = self.reader.summary();
        if let Some((size, hash)) = &self.check {
            if *size != summary.size || !hash.eq_ignore_ascii_case(&summary.blake3) {
                return Err(Error::corrupt(
                    "the manifest's index",
                    format!(
                        "{} bytes with BLAKE3 {}, the manifest says {size} bytes with BLAKE3 {hash}: it was damaged; use another backup",
                        summary.size, summary.blake3
                    ),
                ));
            }
        }
        Ok(summary)
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

/// Running totals reported while an archive is written or extracted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub files: u64,
    pub bytes: u64,
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
    validate_sources(sources)?;
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
    let mut tar = TarOut {
        out: BufWriter::with_capacity(TAR_BUF_SIZE, encoder),
    };
    tar.append_bytes(HEADER_PATH, &header_json)?;

    let spool = tempfile::tempfile()
        .map_err(|e| Error::io("create a temporary file for", "<the archive index>", e))?;
    let mut index = IndexWriter::new(BufWriter::with_capacity(256 << 10, spool));
    let mut ticker = ProgressTicker::new(progress);

    let (tx, rx) = sync_mpsc::sync_channel::<Vec<Item>>(BATCHES_IN_FLIGHT);
    let (walked, built) = std::thread::scope(|scope| {
        let sources = &sources;
        let walker = scope.spawn(move || {
            let mut w = Walker {
                tx,
                batch: Vec::with_capacity(BATCH_ITEMS),
                batch_bytes: 0,
            };
            for s in sources {
                let meta = fs::metadata(&s.dir).ctx("read the source directory", &s.dir)?;
                w.add_dir(&s.dir, s.prefix.clone(), &meta)?;
            }
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
/// into zstd's input in large chunks without intermediate copies.
struct TarOut<W: Write> {
    out: BufWriter<zstd::stream::write::Encoder<'static, HashingWriter<W>>>,
}

impl<W: Write> TarOut<W> {
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
        self.out.write_all(h.as_bytes()).map_err(out_err)?;
        self.out.write_all(value).map_err(out_err)?;
        self.out.write_all(&[0]).map_err(out_err)?;
        self.pad(value.len() as u64 + 1)
    }

    /// Writes the header of `path` (and `link`), with GNU long entries when needed.
    fn append(&mut self, path: &str, link: Option<&str>, h: &mut tar::Header) -> Result<()> {
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
        self.out.write_all(h.as_bytes()).map_err(out_err)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0; 512][rem..]).map_err(out_err)?;
        }
        Ok(())
    }

    fn append_bytes(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let mut h = plain_header(data.len() as u64);
        self.append(path, None, &mut h)?;
        self.out.write_all(data).map_err(out_err)?;
        self.pad(data.len() as u64)
    }
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

/// What the reading thread hands to the tar thread, in walk order.
enum Item {
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
fn build<W: Write>(
    rx: sync_mpsc::Receiver<Vec<Item>>,
    tar: &mut TarOut<W>,
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
                    tar.out.write_all(&data).map_err(out_err)?;
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
struct Walker {
    tx: sync_mpsc::SyncSender<Vec<Item>>,
    batch: Vec<Item>,
    batch_bytes: usize,
}

/// Metadata as stored in a tar header and the index.
#[derive(Clone, Copy)]
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

impl Walker {
    fn push(&mut self, item: Item, bytes: usize) -> Result<()> {
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

    fn skip(&mut self, path: String, reason: impl Into<String>) -> Result<()> {
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
                self.skip(shown, "name is not valid UTF-8")?;
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
                    "fifo"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_block_device() {
                    "block device"
                } else {
                    "unsupported file type"
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
            return self.skip(path, "symlink target is not valid UTF-8");
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
        let size = meta.len();
        self.push(
            Item::FileStart {
                path,
                meta: Meta::of(&meta),
                size,
            },
            0,
        )?;
        let mut reader = SizedFileReader::new(file, size);
        while reader.remaining > 0 {
            let want = usize::try_from(reader.remaining)
                .unwrap_or(usize::MAX)
                .min(CHUNK_SIZE);
            let chunk = reader.next_chunk(want).ctx("read", fs_path)?;
            self.push(Item::Data(chunk), want)?;
        }
        let changed = reader.shrunk || reader.grew().ctx("read", fs_path)?;
        let hash = reader.hasher.finalize();
        self.push(Item::FileEnd { hash, changed }, 0)
    }
}

/// Reads exactly `remaining` bytes of a file, hashing them as they pass: zero padding if
/// the file shrank, cut if it grew, so the tar header stays true.
struct SizedFileReader {
    file: File,
    remaining: u64,
    hasher: blake3::Hasher,
    shrunk: bool,
}

impl SizedFileReader {
    fn new(file: File, size: u64) -> Self {
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

// ---------------------------------------------------------------------------------------
// Reading: verify and extract share one pass; zstd decompresses on its own thread
// ---------------------------------------------------------------------------------------

/// Reads a whole archive without writing anything and checks everything that can be
/// checked: the zstd frame checksum, the tar structure and order, the safety of every path,
/// each file's size and BLAKE3 against the index stored in the archive, and, when given,
/// every entry against `expected` (the index kept beside the archive, in lockstep) and the
/// compressed size and hash against `expected_archive`. Blocking. Returns the header and
/// the summary of the index.
///
/// # Errors
/// `Corrupt` naming the entry and what differs; `Io` if `input` itself fails.
pub fn verify_archive<R: Read + Send>(
    input: R,
    expected: Option<ExpectedIndex<'_>>,
    expected_archive: Option<(u64, &str)>,
) -> Result<(serde_json::Value, IndexSummary)> {
    read_archive(input, expected, expected_archive, None, &mut |_| {})
}

/// Extracts an archive into `target`, which must not exist or be empty (it is created).
/// Blocking.
///
/// The archive is treated as hostile: only entries listed in `expected`, in its order, are
/// accepted and every one of them must be present; entries must come in the writer's
/// order (depth first, names in byte order), so duplicates are refused; absolute paths,
/// `..`, hard links, devices, fifos, symlinks pointing outside `target` and entries below a
/// symlink are refused; files are created with `O_EXCL|O_NOFOLLOW`, so nothing is ever
/// written outside `target`. Sizes and BLAKE3 hashes are checked while writing. Numeric
/// owners are restored when the process may change them (root); modes and mtimes always
/// (a directory's once its last child is written, so read-only directories do not block
/// extraction; symlink mtimes are not restored). Returns the header and the index summary.
///
/// # Errors
/// `InvalidInput` if `target` is not an empty directory; `Corrupt` naming the entry and
/// what is wrong; `Io` if writing fails. On error the caller deletes `target`.
pub fn extract_archive<R: Read + Send>(
    input: R,
    target: &Path,
    expected: ExpectedIndex<'_>,
    expected_archive: Option<(u64, &str)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, IndexSummary)> {
    prepare_target(target)?;
    let mut sink = Extractor {
        root: target.to_path_buf(),
        chown: true,
        stripped: Vec::new(),
        stripped_count: 0,
    };
    let (header, mut summary) = read_archive(
        input,
        Some(expected),
        expected_archive,
        Some(&mut sink),
        progress,
    )?;
    summary.modes_stripped = sink.stripped;
    summary.modes_stripped_count = sink.stripped_count;
    Ok((header, summary))
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
    // Raw: the header is the very first tar entry, never behind a long name.
    let mut entries = archive
        .entries()
        .map_err(|e| read_err(e, &failed))?
        .raw(true);
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
fn check_link_chain(links: &HashMap<String, String>, path: &str) -> Result<()> {
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

/// Where extracted entries go.
struct Extractor {
    root: PathBuf,
    /// Cleared after the first `EPERM`: owners cannot be restored unless root.
    chown: bool,
    /// Paths given without their setuid/setgid/sticky bits (the first ones), and a count.
    stripped: Vec<String>,
    stripped_count: u64,
}

impl Extractor {
    fn strip(&mut self, path: &str, mode: u32, bits: u32) -> u32 {
        if mode & bits != 0 {
            self.stripped_count += 1;
            if self.stripped.len() < MAX_LISTED_STRIPPED {
                self.stripped.push(path.to_string());
            }
        }
        mode & !bits & 0o7777
    }
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
        let mode = self.strip(&e.path, e.mode, FILE_PRIVILEGE_BITS);
        file.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("set the mode of", &path)?;
        let t = mtime_of(e.mtime);
        file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .ctx("set the mtime of", &path)?;
        Ok(())
    }

    /// A directory's mode and mtime, once nothing more is written into it.
    fn close_dir(&mut self, d: &OpenDir) -> Result<()> {
        let path = self.root.join(&d.path);
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(&path)
            .ctx("open the directory", &path)?;
        let mode = self.strip(&d.path, d.mode, DIR_PRIVILEGE_BITS);
        dir.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("set the mode of", &path)?;
        let t = mtime_of(d.mtime);
        dir.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .ctx("set the mtime of", &path)?;
        Ok(())
    }
}

/// A directory of the archive that may still receive entries (an ancestor of the last
/// entry read): the walk is depth first, so these form a stack.
struct OpenDir {
    /// `""` for the extraction root.
    path: String,
    /// Name and kind of its last child so far: the next must sort after it.
    last: Option<(String, EntryKind)>,
    mode: u32,
    mtime: i64,
}

/// The open directories, and the order and parent rules that use them.
struct DirStack {
    open: Vec<OpenDir>,
}

impl DirStack {
    fn new() -> Self {
        DirStack {
            open: vec![OpenDir {
                path: String::new(),
                last: None,
                mode: 0,
                mtime: 0,
            }],
        }
    }

    /// Checks that `path` may come now: its parent is an open directory (a prefix
    /// directory for a top-level path), not a file or a symlink, and its name sorts after
    /// its previous sibling's (no duplicates). Closes the directories it leaves, through
    /// `sink`. Does not record the entry: see [`DirStack::enter`].
    fn admit(
        &mut self,
        path: &str,
        kind: EntryKind,
        mut sink: Option<&mut Extractor>,
    ) -> Result<()> {
        let (parent, name) = match path.rsplit_once('/') {
            None if kind != EntryKind::Dir => {
                return Err(entry_err(
                    path,
                    "not under a known prefix: top-level entries must be source directories",
                ))
            }
            None => ("", path),
            Some(split) => split,
        };
        let Some(at) = self.open.iter().rposition(|d| d.path == parent) else {
            // Name why: its parent is the last entry of an open directory but not a
            // directory, or it is not (or no longer) open.
            for d in self.open.iter().rev() {
                if let Some((last, kind)) = &d.last {
                    let full = if d.path.is_empty() {
                        last.clone()
                    } else {
                        format!("{}/{last}", d.path)
                    };
                    if full == parent {
                        return Err(match kind {
                            EntryKind::Symlink => entry_err(
                                path,
                                format!("its parent `{parent}` is a symlink; refused"),
                            ),
                            _ => entry_err(path, format!("its parent `{parent}` is a file")),
                        });
                    }
                }
            }
            return Err(entry_err(
                path,
                format!("its parent directory `{parent}` is not in the archive before it (not under a known prefix?), or not in the walk's order"),
            ));
        };
        while self.open.len() > at + 1 {
            let d = self.open.pop().expect("more than `at` open");
            if let Some(s) = sink.as_deref_mut() {
                s.close_dir(&d)?;
            }
        }
        if let Some((last, _)) = &self.open[at].last {
            match name.cmp(last.as_str()) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(entry_err(path, "duplicate entry refused"))
                }
                std::cmp::Ordering::Less => {
                    return Err(entry_err(
                        path,
                        format!("out of order: it comes after `{last}` in its directory; refused"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Records an admitted entry (opening it if a directory).
    fn enter(&mut self, e: &FileEntry) {
        let name = e.path.rsplit_once('/').map_or(e.path.as_str(), |(_, n)| n);
        let top = self.open.last_mut().expect("the root is never closed");
        top.last = Some((name.to_string(), e.kind));
        if e.kind == EntryKind::Dir {
            self.open.push(OpenDir {
                path: e.path.clone(),
                last: None,
                mode: e.mode,
                mtime: e.mtime,
            });
        }
    }

    /// Closes every directory left, deepest first.
    fn close_all(&mut self, mut sink: Option<&mut Extractor>) -> Result<()> {
        while self.open.len() > 1 {
            let d = self.open.pop().expect("more than the root");
            if let Some(s) = sink.as_deref_mut() {
                s.close_dir(&d)?;
            }
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

/// The decompressing thread: decodes the whole stream into chunks for the tar reader,
/// then drains what zstd left unread. Returns the compressed size and BLAKE3, or `None`
/// when it stopped (the error went down the channel, or the reader hung up).
fn decompress<R: Read>(
    mut decoder: ArchiveDecoder<'static, HashingReader<R>>,
    tx: sync_mpsc::SyncSender<io::Result<Vec<u8>>>,
    used: sync_mpsc::Receiver<Vec<u8>>,
) -> Option<(u64, String)> {
    loop {
        // Chunks come back once read: no new (zeroed) memory for each.
        let mut chunk = used.try_recv().unwrap_or_default();
        chunk.resize(DECODED_CHUNK, 0);
        let mut len = 0;
        // Fill the chunk: zstd returns at most a block (128 KiB) per call.
        let end = loop {
            match decoder.read(&mut chunk[len..]) {
                Ok(0) => break true,
                Ok(n) => {
                    len += n;
                    if len == chunk.len() {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            }
        };
        if len > 0 {
            chunk.truncate(len);
            if tx.send(Ok(chunk)).is_err() {
                return None;
            }
        }
        if end {
            break;
        }
    }
    let mut rest = decoder.finish();
    // The decoder stops at the end of the input already; this only catches bytes that
    // zstd left unread.
    if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
        let _ = tx.send(Err(e));
        return None;
    }
    let (_, size, hash) = rest.into_inner().into_inner().1.inner.finish();
    Some((size, hash))
}

/// The tar reader's side of the decompressing thread's channel.
struct ChunkReader {
    rx: sync_mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Read chunks go back to the decompressing thread.
    used: sync_mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    // Full or gone: the decompressing thread allocates another.
                    let _ = self.used.try_send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = (self.current.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The one pass behind [`verify_archive`] and [`extract_archive`]: zstd decompresses on
/// its own thread; this one parses, checks and writes.
fn read_archive<R: Read + Send>(
    input: R,
    expected: Option<ExpectedIndex<'_>>,
    expected_archive: Option<(u64, &str)>,
    sink: Option<&mut Extractor>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, IndexSummary)> {
    let failed = Arc::new(AtomicBool::new(false));
    let reader = FlagOnError {
        inner: HashingReader::new(input),
        failed: failed.clone(),
    };
    let decoder = open_decoder(reader, &failed, BUF_SIZE)?;
    let (tx, rx) = sync_mpsc::sync_channel(DECODED_IN_FLIGHT);
    let (used_tx, used_rx) = sync_mpsc::sync_channel(DECODED_IN_FLIGHT);
    let (read, hashed) = std::thread::scope(|scope| {
        let decoding = scope.spawn(move || decompress(decoder, tx, used_rx));
        let chunks = ChunkReader {
            rx,
            used: used_tx,
            current: Vec::new(),
            pos: 0,
        };
        // `chunks` is dropped when this returns, which stops the decoder on an error.
        let read = read_entries(chunks, &failed, expected, sink, progress);
        (read, decoding.join())
    });
    let (header, summary) = read?;
    let Ok(Some((archive_size, archive_hash))) = hashed else {
        return Err(Error::corrupt("archive", "the decompression stopped early"));
    };
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
    Ok((header, summary))
}

/// Counts and hashes the entries of one side (found in the archive, or listed in its
/// index), serialized as index lines, so that the two sides compare in constant memory.
struct EntryDigest {
    hasher: blake3::Hasher,
    totals: IndexTotals,
    line: Vec<u8>,
}

impl EntryDigest {
    fn new() -> Self {
        EntryDigest {
            hasher: blake3::Hasher::new(),
            totals: IndexTotals::default(),
            line: Vec::with_capacity(512),
        }
    }

    fn add(&mut self, e: &FileEntry) {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &RecordRef::Entry(e)).expect("an entry serializes");
        self.line.push(b'\n');
        self.hasher.update(&self.line);
        self.totals.count(RecordRef::Entry(e));
    }
}

fn read_entries(
    chunks: ChunkReader,
    failed: &AtomicBool,
    mut expected: Option<ExpectedIndex<'_>>,
    mut sink: Option<&mut Extractor>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, IndexSummary)> {
    let mut archive = tar::Archive::new(chunks);
    let rerr = |e: io::Error| read_err(e, failed);
    let mut dirs = DirStack::new();
    // The symlinks, to resolve their chains at the end: few in a GitLab instance.
    let mut links: HashMap<String, String> = HashMap::new();
    let mut found = EntryDigest::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut ticker = ProgressTicker::new(progress);

    let (header, index) = {
        // Raw: long names are read here, bounded (see `LongNames`).
        let mut entries = archive.entries().map_err(rerr)?.raw(true);
        let first = entries
            .next()
            .ok_or_else(|| Error::corrupt("archive", "it is empty"))?
            .map_err(rerr)?;
        let header = read_header_entry(first, failed)?;

        let mut index: Option<(IndexSummary, EntryDigest)> = None;
        let mut long = LongNames::default();
        for entry in entries.by_ref() {
            let mut entry = entry.map_err(rerr)?;
            if index.is_some() {
                let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(entry_err(&p, format!("found after `{INDEX_PATH}`")));
            }
            if long.read(&mut entry, failed)? {
                continue;
            }
            let (long_path, long_link) = (long.path.take(), long.link.take());
            let raw = long_path.unwrap_or_else(|| entry.path_bytes().into_owned());
            let path = std::str::from_utf8(&raw)
                .map_err(|_| entry_err(&String::from_utf8_lossy(&raw), "path is not valid UTF-8"))?
                .trim_end_matches('/')
                .to_owned();
            drop(raw);
            let etype = entry.header().entry_type();
            if long_link.is_some() && etype != tar::EntryType::Symlink {
                return Err(entry_err(
                    &path,
                    "a long link name for an entry that is not a link",
                ));
            }
            if path == INDEX_PATH && is_regular(etype) {
                index = Some(read_index_entry(&mut entry, failed)?);
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
            // The parent must be a directory extracted earlier from this archive (the
            // extraction root for a prefix), so no entry can be placed through a symlink;
            // and the writer's order, so no entry comes twice.
            dirs.admit(&path, kind, sink.as_deref_mut())?;
            let link = if kind == EntryKind::Symlink {
                let raw = long_link
                    .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()))
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
            let listed = match expected.as_mut() {
                Some(x) => {
                    let Some(want) = x.next_entry()? else {
                        return Err(entry_err(
                            &observed.path,
                            "not listed in the manifest; refused",
                        ));
                    };
                    if want.path != observed.path {
                        return Err(entry_err(
                            &observed.path,
                            format!(
                                "not listed in the manifest here (it lists `{}`); refused",
                                want.path
                            ),
                        ));
                    }
                    let mut cmp = observed.clone();
                    cmp.hash.clone_from(&want.hash);
                    if cmp != want {
                        return Err(entry_err(
                            &observed.path,
                            format!(
                                "archive and manifest differ: {}",
                                describe_diff(&cmp, &want)
                            ),
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
                    let link = observed.link.clone().unwrap_or_default();
                    if let Some(s) = sink.as_deref_mut() {
                        s.symlink(&observed, &link)?;
                    }
                    links.insert(observed.path.clone(), link);
                    ticker.add(1, 0);
                }
                EntryKind::File => {
                    let mut file = match sink.as_deref_mut() {
                        Some(s) => Some(s.create_file(&observed)?),
                        None => None,
                    };
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
                        if let Some(f) = file.as_mut() {
                            if let Err(e) = f.write_all(&buf[..n]) {
                                let root = sink.as_deref().map(|s| s.root.clone());
                                let p = root.unwrap_or_default().join(&observed.path);
                                return Err(Error::io("write", p, e));
                            }
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
                    if let Some(want) = &listed {
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
            dirs.enter(&observed);
            found.add(&observed);
        }
        if long.path.is_some() || long.link.is_some() {
            return Err(Error::corrupt(
                "archive",
                "a long name entry with no entry after it",
            ));
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

    // Read to the very end so the zstd frame checksum is checked; only the tar
    // end-of-archive zeros may remain.
    let mut rest = archive.into_inner();
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e, failed)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Error::corrupt(
                "archive",
                "data found after the end of the tar stream",
            ));
        }
    }

    let (summary, listed) = index;
    if found.totals != listed.totals || found.hasher.finalize() != listed.hasher.finalize() {
        return Err(Error::corrupt(
            "archive index",
            format!(
                "the archive's content and its index differ (entries found {:?}, listed {:?})",
                found.totals, listed.totals
            ),
        ));
    }
    if let Some(x) = expected {
        let theirs = x.finish()?;
        if theirs != summary {
            return Err(Error::corrupt(
                "archive index",
                "skipped files, changed files or totals differ from the manifest",
            ));
        }
    }
    for path in links.keys() {
        check_link_chain(&links, path)?;
    }
    dirs.close_all(sink)?;
    Ok((header, summary))
}

/// The long path and link names read ahead of the entry they belong to: GNU long name and
/// long link entries (what the writer uses), and PAX `path` and `linkpath` records. Read
/// here rather than by the tar crate so that their size is bounded, and so that no other
/// PAX record (`size`, `uid`...) can make the entry read differently from its header.
#[derive(Default)]
struct LongNames {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl LongNames {
    /// Takes in `entry` if it is one of those; returns whether it was.
    fn read<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        failed: &AtomicBool,
    ) -> Result<bool> {
        let t = entry.header().entry_type();
        let what = if t.is_gnu_longname() {
            "GNU long name"
        } else if t.is_gnu_longlink() {
            "GNU long link"
        } else if t.is_pax_local_extensions() {
            "PAX header"
        } else if t.is_pax_global_extensions() {
            return Err(Error::corrupt("archive", "a global PAX header refused"));
        } else {
            return Ok(false);
        };
        let bad = |message: String| Error::corrupt("archive", message);
        let size = entry.size();
        if size > MAX_LONG_NAME {
            return Err(bad(format!(
                "a {what} entry of {size} bytes refused (at most {MAX_LONG_NAME})"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| read_err(e, failed))?;
        let set = |slot: &mut Option<Vec<u8>>, value: &[u8]| {
            if slot.replace(value.to_vec()).is_some() {
                return Err(bad(format!("a second {what} for one entry refused")));
            }
            Ok(())
        };
        if t.is_pax_local_extensions() {
            for record in tar::PaxExtensions::new(&data) {
                let record = record.map_err(|e| bad(format!("malformed PAX header: {e}")))?;
                match record.key_bytes() {
                    b"path" => set(&mut self.path, record.value_bytes())?,
                    b"linkpath" => set(&mut self.link, record.value_bytes())?,
                    key => {
                        return Err(bad(format!(
                            "PAX record `{}` refused: Girofle archives do not use it",
                            String::from_utf8_lossy(key)
                        )))
                    }
                }
            }
        } else {
            // GNU tar ends the name with a NUL.
            let value = data.strip_suffix(&[0]).unwrap_or(&data);
            if t.is_gnu_longname() {
                set(&mut self.path, value)?;
            } else {
                set(&mut self.link, value)?;
            }
        }
        Ok(true)
    }
}

/// Reads the archive's own index, streamed: its structure checked, its entries digested
/// for comparison with what the archive holds.
fn read_index_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    failed: &AtomicBool,
) -> Result<(IndexSummary, EntryDigest)> {
    let mut reader = IndexReader::new(
        BufReader::with_capacity(64 << 10, entry),
        "the archive's index",
    );
    let mut listed = EntryDigest::new();
    let io = |e: io::Error| read_err(e, failed);
    while let Some(record) = reader.next_record(&io)? {
        if let IndexRecord::Entry(e) = record {
            listed.add(&e);
        }
    }
    Ok((reader.summary(), listed))
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

    /// The index JSON lines the writer handed back.
    fn index_bytes(summary: &ArchiveSummary) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut out = vec![0u8; summary.index.size as usize];
        summary.index_file.read_exact_at(&mut out, 0).unwrap();
        assert_eq!(
            blake3::hash(&out).to_hex().to_string(),
            summary.index.blake3
        );
        out
    }

    fn expected(summary: &ArchiveSummary) -> ExpectedIndex<'static> {
        ExpectedIndex::new(
            io::Cursor::new(index_bytes(summary)),
            Some((summary.index.size, &summary.index.blake3)),
        )
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
        let index = &ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
        let totals = &summary.index;

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
        assert_eq!((totals.files, totals.dirs, totals.symlinks), (8, 7, 1));
        assert_eq!(&index.to_jsonl(), &index_bytes(&summary));
        // Deterministic order: the prefix first, then children sorted by name.
        let paths: Vec<&str> = index.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(&paths[..3], &["config", "config/gitlab.rb", "data"]);
        assert_eq!(read_header(&bytes[..]).unwrap(), header());

        let (h, idx) = verify_archive(
            &bytes[..],
            Some(expected(&summary)),
            Some((summary.archive_size, &summary.archive_hash)),
        )
        .unwrap();
        assert_eq!(h, header());
        assert_eq!(&idx, totals);

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("restored");
        let mut last = Progress::default();
        let (h, idx) = extract_archive(
            &bytes[..],
            &target,
            expected(&summary),
            Some((summary.archive_size, &summary.archive_hash)),
            &mut |p| last = p,
        )
        .unwrap();
        assert_eq!(h, header());
        assert_eq!(&idx, totals);
        assert_eq!(last.bytes, totals.bytes);

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
    fn extraction_never_gives_setuid_setgid_or_sticky_to_files() {
        let src = tempfile::tempdir().unwrap();
        let data = src.path().join("data");
        fs::create_dir_all(data.join("shared")).unwrap();
        for (name, mode) in [
            ("suid", 0o4755),
            ("sgid", 0o2755),
            ("sticky", 0o1644),
            ("plain", 0o755),
        ] {
            fs::write(data.join(name), b"#!/bin/sh\nid\n").unwrap();
            fs::set_permissions(data.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        // GitLab's repositories directory: setgid on a directory is kept.
        fs::set_permissions(data.join("shared"), fs::Permissions::from_mode(0o2770)).unwrap();
        let sources = vec![Source {
            prefix: "data".into(),
            dir: data.clone(),
        }];
        let (bytes, summary) = write(&sources);
        // The archive records the modes as they were: only extraction strips them.
        let index = ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
        let suid = index
            .entries
            .iter()
            .find(|e| e.path == "data/suid")
            .unwrap();
        assert_eq!(suid.mode, 0o4755);

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("t");
        let (_, got) =
            extract_archive(&bytes[..], &target, expected(&summary), None, &mut |_| {}).unwrap();
        let mode = |p: &str| fs::metadata(target.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("data/suid"), 0o755);
        assert_eq!(mode("data/sgid"), 0o755);
        assert_eq!(mode("data/sticky"), 0o644);
        assert_eq!(mode("data/plain"), 0o755);
        assert_eq!(mode("data/shared"), 0o2770);
        assert_eq!(
            got.modes_stripped,
            vec![
                "data/sgid".to_string(),
                "data/sticky".into(),
                "data/suid".into()
            ]
        );
        assert_eq!(got.modes_stripped_count, 3);
    }

    #[test]
    fn same_tree_gives_same_index() {
        let src = tempfile::tempdir().unwrap();
        let sources = build_tree(src.path());
        let (_, a) = write(&sources);
        let (_, b) = write(&sources);
        assert_eq!(a.index, b.index);
        assert_eq!(index_bytes(&a), index_bytes(&b));
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
        let err = extract_archive(
            &bytes[..],
            out.path(),
            expected(&summary),
            None,
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), "invalid_input", "{err}");
        // An existing empty directory is fine.
        let empty = out.path().join("empty");
        fs::create_dir(&empty).unwrap();
        extract_archive(&bytes[..], &empty, expected(&summary), None, &mut |_| {}).unwrap();
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
                    Some(expected(&summary)),
                    Some((summary.archive_size, &summary.archive_hash)),
                );
                assert!(matches!(err, Err(Error::Corrupt { .. })), "{pos}");
            }
        }
    }

    #[test]
    fn a_damaged_index_beside_the_archive_is_refused() {
        let (bytes, summary) = corruption_sample();
        let index = index_bytes(&summary);
        let check = Some((summary.index.size, summary.index.blake3.as_str()));
        verify_archive(
            &bytes[..],
            Some(ExpectedIndex::new(&index[..], check)),
            None,
        )
        .unwrap();
        let n = index.len();
        for pos in [0, n / 3, n / 2, n - 2, n - 1] {
            let mut bad = index.clone();
            bad[pos] ^= 0x01;
            let err = verify_archive(&bytes[..], Some(ExpectedIndex::new(&bad[..], check)), None);
            assert!(matches!(err, Err(Error::Corrupt { .. })), "{pos}: {err:?}");
        }
        // Cut, or with a line more.
        let err = verify_archive(
            &bytes[..],
            Some(ExpectedIndex::new(&index[..n - 10], check)),
            None,
        );
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
        let mut longer = index.clone();
        longer.extend_from_slice(b"{\"changed_while_read\":\"data/x\"}\n");
        let err = verify_archive(
            &bytes[..],
            Some(ExpectedIndex::new(&longer[..], None)),
            None,
        );
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
    }

    /// GNU tar reads what Girofle writes, long names and long link targets included.
    #[test]
    fn gnu_tar_reads_the_archive() {
        let src = tempfile::tempdir().unwrap();
        let long = "n".repeat(120);
        fs::create_dir(src.path().join(&long)).unwrap();
        fs::write(src.path().join(&long).join(&long), b"deep").unwrap();
        symlink(format!("{long}/{long}"), src.path().join("l")).unwrap();
        let (bytes, summary) = write(&[Source {
            prefix: "data".into(),
            dir: src.path().to_path_buf(),
        }]);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("t");
        extract_archive(&bytes[..], &target, expected(&summary), None, &mut |_| {}).unwrap();
        assert_eq!(
            fs::read_link(target.join("data/l")).unwrap(),
            Path::new(&format!("{long}/{long}"))
        );
        let tarball = out.path().join("a.tar.zst");
        fs::write(&tarball, &bytes).unwrap();
        let listed = std::process::Command::new("tar")
            .arg("--zstd")
            .arg("-tvf")
            .arg(&tarball)
            .output();
        let Ok(listed) = listed else { return };
        if !listed.status.success() {
            // No zstd support in this tar: nothing to compare with.
            return;
        }
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(text.contains(&format!("data/{long}/{long}")), "{text}");
        assert!(text.contains(&format!("data/l -> {long}/{long}")), "{text}");
        assert!(text.contains(INDEX_PATH), "{text}");
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
        ArchiveIndex {
            entries,
            ..Default::default()
        }
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
        let ij = index.to_jsonl();
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
        let err = extract_archive(
            bytes,
            &target,
            ExpectedIndex::from_index(manifest),
            None,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. }) && err.to_string().contains(why),
            "expected a refusal with `{why}`, got: {err}"
        );
        assert_eq!(list(base.path()).first(), Some(&PathBuf::from("target")));
        for p in list(base.path()) {
            assert!(p.starts_with("target"), "{} written outside", p.display());
        }
        // The same archive does not pass verification either.
        assert!(verify_archive(bytes, Some(ExpectedIndex::from_index(manifest)), None).is_err());
    }

    #[test]
    fn hostile_paths_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let abs = base.path().join("abs-evil");
        let abs = abs.to_str().unwrap();
        let long = format!("data/{}", "x".repeat(150));
        let long_evil = format!("data/{}/../../../evil", "x".repeat(120));
        let huge = format!("data/{}", "x".repeat(MAX_LONG_NAME as usize));
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
            (
                vec![dir("data"), file("data/b", b"x"), file("data/a", b"x")],
                "out of order",
            ),
            // A directory once left is closed: nothing can be put in it later (which
            // would also be a way to write a second `data/a/x`).
            (
                vec![
                    dir("data"),
                    dir("data/a"),
                    file("data/b", b"x"),
                    file("data/a/x", b"x"),
                ],
                "not in the archive before it",
            ),
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
                    dir("data/d"),
                    link("data/l", "d"),
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
            // Long names are read into memory: their size is bounded.
            (
                vec![
                    dir("data"),
                    Raw {
                        gnu_long: true,
                        ..file(&huge, b"x")
                    },
                ],
                "GNU long name entry of",
            ),
            (
                vec![
                    dir("data"),
                    Raw {
                        pax: true,
                        ..file(&huge, b"x")
                    },
                ],
                "PAX header entry of",
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
            link("data/zz-ok", "x/../x"),
        ];
        let (bytes, manifest) = hostile(&entries);
        let out = tempfile::tempdir().unwrap();
        extract_archive(
            &bytes[..],
            out.path(),
            ExpectedIndex::from_index(&manifest),
            None,
            &mut |_| {},
        )
        .unwrap();
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
        extract_archive(
            &bytes[..],
            out.path(),
            ExpectedIndex::from_index(&manifest),
            None,
            &mut |_| {},
        )
        .unwrap();
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
            Some(expected(&summary)),
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
