//! Archives from and to tar streams, for hosts whose directories Girofle reaches only
//! through their container engine: a source read from the tar stream the engine exports
//! (Docker's archive API), and an extraction handed back as one tar stream per source for
//! the engine to import.
//!
//! This module only translates between tar streams and the walk: the archive layout, the
//! index, what is skipped and why are the directory writer's (`write`), and every check of
//! what may be extracted is the read pass's (`read`), so a tree gives the same archive
//! whether it was read from a directory or from a tar stream, and an archive is refused
//! for the same reasons whether it is extracted into a directory or into tar streams.

use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::extract::*;
use crate::index::*;
use crate::read::*;
use crate::write::*;
use crate::*;

/// Re-reads a file of a source, named by its path relative to the source directory
/// (`git/a.pack`), for a hard link in the source's tar stream (see [`TarSource::reopen`]).
/// An `io::ErrorKind::NotFound` error means the file is gone: the link is then skipped as
/// "vanished while archiving", as the directory writer skips a vanished file.
pub type Reopen = Box<dyn FnMut(&str) -> io::Result<Box<dyn Read>> + Send>;

/// One tree to archive, given as a tar stream: everything in it is stored as
/// `<prefix>/<relative path>`.
///
/// The stream is what a container engine exports of a directory (Docker's
/// `GET /containers/{id}/archive`): entries named relative to the directory, with or
/// without a leading `./`, the directory itself first (`./`, whose owner, mode and mtime go
/// on the prefix entry), then the walk's order: depth first, the children of a directory
/// in byte order of their names (Go's `filepath.WalkDir`, which the engine uses, walks in
/// that order). A stream in another order is refused: the archive's order is its format,
/// and re-sorting would mean holding the data.
pub struct TarSource<R> {
    /// A single path component (`config`, `data`, `logs`...), unique within an archive.
    pub prefix: String,
    /// The tar stream.
    pub tar: R,
    /// How to read again a file that the stream gives as a hard link to an earlier entry:
    /// the archive has no hard links (the directory writer stores each name of a file
    /// with its content), so that content must be read once more. Without it, a stream
    /// holding a hard link is refused.
    pub reopen: Option<Reopen>,
}

impl<R> std::fmt::Debug for TarSource<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarSource")
            .field("prefix", &self.prefix)
            .field("reopen", &self.reopen.is_some())
            .finish_non_exhaustive()
    }
}

/// Writes a whole archive of `sources` into `out`, exactly as [`write_archive`] does for
/// the same trees read from directories: the same entries in the same order with the same
/// owners, modes, mtimes, symlink targets, sizes and hashes, the same index. Blocking: run
/// it on the blocking pool.
///
/// What a tar stream cannot show differs: a unix socket is not in an engine's tar, so it
/// is absent from the index rather than listed as skipped. Fifos and devices in the stream
/// are skipped, and listed, as the directory writer skips them; hard links are stored as
/// files (through [`TarSource::reopen`]); GNU and PAX long names and GNU sparse files are
/// read as the files they stand for. Files are never "changed while read": the engine
/// sends each file with its size.
///
/// The streams come from another machine and are not trusted: an entry with an absolute
/// path or a `..`, below a file or a symlink, out of the walk's order or given twice is
/// refused, and so is a tar that does not start with its directory's own entry. GNU long
/// names and PAX headers are read whole into memory by the `tar` crate, so one entry's
/// name costs as much memory as the engine sends for it.
///
/// # Errors
/// `InvalidInput` for a bad prefix (as [`write_archive`]) or a hard link without
/// `reopen`; `Corrupt` naming the source and the entry a stream gets wrong; `Io` if a
/// stream cannot be read (it ended early or failed) or the output cannot be written (the
/// archive is then unusable and should be discarded).
pub fn write_archive_from_tars<R: Read + Send, W: Write>(
    header: &serde_json::Value,
    sources: Vec<TarSource<R>>,
    opts: CompressionOptions,
    out: W,
    progress: &mut dyn FnMut(Progress),
) -> Result<ArchiveSummary> {
    validate_prefixes(sources.iter().map(|s| s.prefix.as_str()))?;
    let mut sources = sources;
    // Sorted, so that readers can rely on byte order at the top level too.
    sources.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    write_walked(header, opts, out, progress, move |w| {
        for s in sources {
            let prefix = s.prefix.clone();
            add_tar(w, s).map_err(|e| in_stream(&prefix, e))?;
        }
        Ok(())
    })
}

fn stream_name(prefix: &str) -> String {
    format!("tar stream of source `{prefix}`")
}

/// Names the source's stream in a `Corrupt` error from the checks of archive entries.
fn in_stream(prefix: &str, e: Error) -> Error {
    let stream = stream_name(prefix);
    match e {
        Error::Corrupt { what, message } if !what.starts_with(&stream) => {
            Error::corrupt(format!("{stream}, {what}"), message)
        }
        e => e,
    }
}

/// The name of a tar entry relative to the exported directory: `./a/b/` -> `a/b`, the
/// directory itself -> empty.
fn normalise(raw: &[u8]) -> &[u8] {
    let mut name = raw;
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest;
    }
    while let Some(rest) = name.strip_suffix(b"/") {
        name = rest;
    }
    if name == b"." {
        b""
    } else {
        name
    }
}

/// Walks one source's tar stream, in its order, feeding the tar thread as the directory
/// walk does.
fn add_tar<R: Read>(w: &mut Walker, source: TarSource<R>) -> Result<()> {
    let TarSource {
        prefix,
        tar,
        mut reopen,
    } = source;
    let stream = PathBuf::from(format!("<the tar stream of source `{prefix}`>"));
    let io_err = |e: io::Error| Error::io("read", &stream, e);
    let mut archive = tar::Archive::new(tar);
    let mut dirs = DirStack::new();
    let mut root_seen = false;
    // A directory skipped for its name: what is below it is not walked either.
    let mut skipped_dir: Option<String> = None;
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let name = normalise(&raw);
        if name.is_empty() {
            if root_seen || !etype.is_dir() {
                return Err(entry_err(
                    &String::from_utf8_lossy(&raw),
                    "a second or non-directory entry for the directory itself refused",
                ));
            }
            root_seen = true;
            let meta = Meta::from_header(entry.header(), &prefix)?;
            dirs.admit(&prefix, EntryKind::Dir, None)?;
            dirs.enter(&meta.entry(prefix.clone(), EntryKind::Dir, 0));
            w.push(
                Item::Dir {
                    path: prefix.clone(),
                    meta,
                },
                0,
            )?;
            continue;
        }
        if !root_seen {
            return Err(Error::corrupt(
                stream_name(&prefix),
                "it does not start with the directory's own entry `./`",
            ));
        }
        let Ok(name) = std::str::from_utf8(name) else {
            let shown = format!("{prefix}/{}", String::from_utf8_lossy(name));
            if skipped_dir
                .as_deref()
                .is_some_and(|d| shown.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
            {
                continue;
            }
            if etype.is_dir() {
                skipped_dir = Some(shown.clone());
            }
            w.skip(shown, SKIP_NOT_UTF8)?;
            continue;
        };
        let path = format!("{prefix}/{name}");
        check_path(&path)?;
        let kind = match etype {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            // Whatever else comes is a leaf: nothing may be below it.
            _ => EntryKind::File,
        };
        // Its parent is a directory of this stream, and it comes in the walk's order.
        dirs.admit(&path, kind, None)?;
        let meta = Meta::from_header(entry.header(), &path)?;
        dirs.enter(&meta.entry(path.clone(), kind, 0));
        match etype {
            tar::EntryType::Directory => w.push(Item::Dir { path, meta }, 0)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // A sparse file's size is that of the file it stands for, holes included.
                let size = entry.size();
                add_content(w, path, meta, &mut entry, size, &stream)?;
            }
            tar::EntryType::Symlink => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "symlink without a target"))?;
                match std::str::from_utf8(&raw) {
                    Ok(target) => {
                        let target = target.to_owned();
                        w.push(Item::Symlink { path, meta, target }, 0)?;
                    }
                    Err(_) => w.skip(path, SKIP_LINK_NOT_UTF8)?,
                }
            }
            tar::EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "hard link without a target"))?;
                let target = std::str::from_utf8(normalise(&raw))
                    .map_err(|_| entry_err(&path, "hard link target is not valid UTF-8"))?
                    .to_owned();
                add_hard_link(w, &mut reopen, &prefix, path, meta, &target)?;
            }
            tar::EntryType::Fifo => w.skip(path, SKIP_FIFO)?,
            tar::EntryType::Char => w.skip(path, SKIP_CHAR_DEVICE)?,
            tar::EntryType::Block => w.skip(path, SKIP_BLOCK_DEVICE)?,
            _ => w.skip(path, SKIP_UNSUPPORTED)?,
        }
    }
    if !root_seen {
        return Err(Error::corrupt(
            stream_name(&prefix),
            "it is empty: not even the directory's own entry `./`",
        ));
    }
    Ok(())
}

/// A file of `size` bytes read from `content`, which must hold that many.
fn add_content(
    w: &mut Walker,
    path: String,
    meta: Meta,
    content: impl Read,
    size: u64,
    source: &std::path::Path,
) -> Result<()> {
    let mut reader = SizedFileReader::new(content, size);
    let short = format!("the stream ended inside `{path}`");
    w.push_content(path, meta, &mut reader, source)?;
    if reader.shrunk {
        return Err(Error::io(
            "read",
            source,
            io::Error::new(io::ErrorKind::UnexpectedEof, short),
        ));
    }
    let hash = reader.hasher.finalize();
    w.push(
        Item::FileEnd {
            hash,
            changed: false,
        },
        0,
    )
}

/// A hard link of the stream, stored as the file it names, read again through `reopen`.
fn add_hard_link(
    w: &mut Walker,
    reopen: &mut Option<Reopen>,
    prefix: &str,
    path: String,
    meta: Meta,
    target: &str,
) -> Result<()> {
    let full = format!("{prefix}/{target}");
    check_path(&full).map_err(|_| {
        entry_err(
            &path,
            format!("hard link to `{target}`, outside the directory, refused"),
        )
    })?;
    let Some(reopen) = reopen.as_mut() else {
        return Err(Error::invalid(
            "tar source",
            format!(
                "`{path}` is a hard link to `{full}` in the tar stream, and the source gives no way to read that file again (`TarSource::reopen`)"
            ),
        ));
    };
    let mut content = match reopen(target) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return w.skip(path, "vanished while archiving")
        }
        Err(e) => return Err(Error::io("read again the hard-linked file", &full, e)),
    };
    // The size goes in the header, before the content: spool it (hard links are few).
    let spool_err = |e: io::Error| Error::io("spool the hard-linked file", &full, e);
    let mut spool = tempfile::tempfile().map_err(spool_err)?;
    let size = io::copy(&mut content, &mut spool).map_err(spool_err)?;
    spool.rewind().map_err(spool_err)?;
    add_content(w, path, meta, spool, size, std::path::Path::new(&full))
}

/// One source's tar stream out of an extraction (see [`extract_archive_to_tars`]).
#[derive(Debug)]
pub struct TarTarget<W> {
    /// The source's prefix in the archive (`config`, `data`, `logs`...).
    pub prefix: String,
    /// Where its tar stream goes. Entries are written in small pieces: give a buffered
    /// writer ([`ChannelWriter`] is).
    pub out: W,
}

/// Extracts an archive into one tar stream per source, for an engine to import, with the
/// same checks as [`extract_archive`]: only the entries of `expected`, in its order, each
/// path, symlink and symlink chain checked, sizes and BLAKE3 hashes checked, duplicates,
/// hard links, devices and fifos refused, and files given without their setuid, setgid or
/// sticky bits (directories without setuid), as the summary lists. Blocking.
///
/// Each stream holds the source directory as an engine exports one (see [`TarSource`]):
/// `./` first with the prefix entry's owner, mode and mtime, then `./<relative path>` in
/// the archive's order, with numeric owners, modes and mtimes in the headers, GNU long
/// names where needed, and no hard links.
///
/// **The streams are written as the archive is read, before the archive is fully
/// checked**: a file's content is in its stream before its hash is compared, and the
/// checks of the whole (the index's totals, symlink chains) come at the end. Only an `Ok`
/// makes the streams valid; on an error, everything written to every target so far must
/// be discarded: import each stream into a staging directory and swap it in only after
/// this returned `Ok` and the import succeeded (abort a [`ChannelWriter`] with
/// [`ChannelWriter::abort`], so the consumer sees a failure rather than a short tar).
/// The end-of-archive blocks are written to the streams only on success, so a consumer
/// that checks for them sees a failed stream as cut.
///
/// # Errors
/// `InvalidInput` for a bad or repeated prefix among `targets`, an archive source with no
/// target, or a target with no source in the archive; `Corrupt` naming the entry and what
/// is wrong; `Io` if the input fails or a target cannot be written.
pub fn extract_archive_to_tars<R: Read + Send, W: Write>(
    input: R,
    targets: &mut [TarTarget<W>],
    expected: ExpectedIndex<'_>,
    expected_archive: Option<(u64, &str)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, IndexSummary)> {
    validate_prefixes(targets.iter().map(|t| t.prefix.as_str()))?;
    let mut sink = TarSink {
        outs: targets
            .iter_mut()
            .map(|t| {
                let dest = format!("<the tar stream of source `{}`>", t.prefix);
                (t.prefix.as_str(), TarOut::new(&mut t.out, "write", dest))
            })
            .collect(),
        started: Vec::new(),
        current: 0,
        file_size: 0,
        stripped: Stripped::default(),
    };
    let (header, summary) = extract_into(input, &mut sink, expected, expected_archive, progress)?;
    for (i, (prefix, out)) in sink.outs.iter_mut().enumerate() {
        if !sink.started.contains(&i) {
            return Err(Error::invalid(
                "tar targets",
                format!("the archive holds no source `{prefix}`; give targets only for the sources it holds"),
            ));
        }
        out.write(&[0; 1024])?;
        out.out.flush().map_err(|e| out.err(e))?;
    }
    Ok((header, summary))
}

/// The read pass's sink that writes each source into its own tar stream.
struct TarSink<'a, W: Write> {
    outs: Vec<(&'a str, TarOut<&'a mut W>)>,
    /// The targets begun so far, in order.
    started: Vec<usize>,
    /// The target of the source being extracted.
    current: usize,
    /// The size of the file being written, for its padding.
    file_size: u64,
    stripped: Stripped,
}

impl<W: Write> TarSink<'_, W> {
    /// Writes the header of archive entry `path` (with `link`) into its source's stream,
    /// named as an engine names it. A top-level entry begins a source's stream.
    fn append(&mut self, path: &str, link: Option<&str>, mut h: tar::Header) -> Result<()> {
        let name = match path.split_once('/') {
            Some((_, rel)) => format!("./{rel}"),
            None => {
                let Some(at) = self.outs.iter().position(|(p, _)| *p == path) else {
                    return Err(Error::invalid(
                        "tar targets",
                        format!("the archive holds source `{path}`, and no target was given for it; give one per source of the backup"),
                    ));
                };
                self.current = at;
                self.started.push(at);
                "./".to_string()
            }
        };
        self.outs[self.current].1.append(&name, link, &mut h)
    }
}

impl<W: Write> Sink for TarSink<'_, W> {
    fn dir(&mut self, e: &FileEntry) -> Result<()> {
        // The stripped bits are recorded when the directory is closed, as the directory
        // extractor does.
        let meta = Meta {
            mode: e.mode & !DIR_PRIVILEGE_BITS,
            ..meta_of(e)
        };
        self.append(&e.path, None, meta.header(tar::EntryType::Directory, 0))
    }

    fn symlink(&mut self, e: &FileEntry, link: &str) -> Result<()> {
        let h = meta_of(e).header(tar::EntryType::Symlink, 0);
        self.append(&e.path, Some(link), h)
    }

    fn begin_file(&mut self, e: &FileEntry) -> Result<()> {
        let meta = Meta {
            mode: self.stripped.strip(&e.path, e.mode, FILE_PRIVILEGE_BITS),
            ..meta_of(e)
        };
        self.file_size = e.size;
        self.append(&e.path, None, meta.header(tar::EntryType::Regular, e.size))
    }

    fn file_data(&mut self, data: &[u8]) -> Result<()> {
        self.outs[self.current].1.write(data)
    }

    fn end_file(&mut self, _: &FileEntry) -> Result<()> {
        self.outs[self.current].1.pad(self.file_size)
    }

    fn close_dir(&mut self, d: &OpenDir) -> Result<()> {
        self.stripped.strip(&d.path, d.mode, DIR_PRIVILEGE_BITS);
        Ok(())
    }

    fn take_stripped(&mut self) -> Stripped {
        std::mem::take(&mut self.stripped)
    }
}

fn meta_of(e: &FileEntry) -> Meta {
    Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
    }
}
