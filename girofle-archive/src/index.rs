//! The index of an archive: its entry, skip and totals records, the JSON lines they are
//! written as, the writer and the streaming reader of those lines, and [`ExpectedIndex`],
//! the index kept beside an archive that readers check it against in lockstep. It does not
//! read or write tar or zstd.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::read::*;
use crate::*;

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
    pub(crate) fn count(&mut self, record: RecordRef<'_>) {
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
pub(crate) enum RecordRef<'a> {
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
pub(crate) const FILE_PRIVILEGE_BITS: u32 = 0o7000;
pub(crate) const DIR_PRIVILEGE_BITS: u32 = 0o4000;

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

    pub(crate) fn push_ref(&mut self, record: RecordRef<'_>) -> io::Result<()> {
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
pub(crate) struct IndexReader<R> {
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
    pub(crate) fn new(inner: R, what: &'static str) -> Self {
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
    pub(crate) fn next_record(
        &mut self,
        io_err: &dyn Fn(io::Error) -> Error,
    ) -> Result<Option<IndexRecord>> {
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

    pub(crate) fn summary(&self) -> IndexSummary {
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
    pub(crate) fn next_entry(&mut self) -> Result<Option<FileEntry>> {
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
    pub(crate) fn finish(mut self) -> Result<IndexSummary> {
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
