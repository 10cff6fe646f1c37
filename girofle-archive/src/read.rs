//! Reading an archive: zstd decompression on its own thread, the tar stream checked entry
//! by entry (order, path and link safety, sizes, BLAKE3) against the index inside the
//! archive and the one kept beside it. `verify_archive` is this pass alone; extraction
//! (`extract`) is this pass with a sink that writes the entries out.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};

use crate::error::{Error, Result};
use crate::extract::*;
use crate::index::*;
use crate::write::*;
use crate::*;

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

pub(crate) fn entry_err(path: &str, message: impl Into<String>) -> Error {
    Error::corrupt(format!("archive entry `{path}`"), message)
}

/// Checks an archive path: relative, `/`-separated normal components only. Public so
/// that other readers of untrusted tars (girofle-core's host-directory import) refuse
/// exactly what the archive reader refuses.
///
/// # Errors
/// `Corrupt` naming the entry and what is refused.
pub fn check_path(path: &str) -> Result<()> {
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
///
/// # Errors
/// `Corrupt` naming the entry when the target is empty, absolute, or leaves the directory.
pub fn check_link(path: &str, link: &str) -> Result<()> {
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
/// `a -> b/..` and `b -> ..`, together point outside. `links` maps every symlink's path
/// to its target; `path` must be one of them.
///
/// # Errors
/// `Corrupt` naming the entry when it points outside or loops.
pub fn check_link_chain(links: &HashMap<String, String>, path: &str) -> Result<()> {
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
pub(crate) fn read_archive<R: Read + Send>(
    input: R,
    expected: Option<ExpectedIndex<'_>>,
    expected_archive: Option<(u64, &str)>,
    sink: Option<&mut (dyn Sink + '_)>,
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
    mut sink: Option<&mut (dyn Sink + '_)>,
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
            let meta = Meta::from_header(entry.header(), &path)?;
            let size = entry.size();
            if kind != EntryKind::File && size != 0 {
                return Err(entry_err(
                    &path,
                    format!("a {kind:?} with {size} bytes of data"),
                ));
            }
            let mut observed = meta.entry(path, kind, size);
            observed.link = link;

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
                    if let Some(s) = sink.as_deref_mut() {
                        s.begin_file(&observed)?;
                    }
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
                        if let Some(s) = sink.as_deref_mut() {
                            s.file_data(&buf[..n])?;
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
                    if let Some(s) = sink.as_deref_mut() {
                        s.end_file(&observed)?;
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
    // In name order: the refusal names the same entry every time.
    let mut paths: Vec<&String> = links.keys().collect();
    paths.sort();
    for path in paths {
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
