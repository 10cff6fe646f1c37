//! Extracting a possibly hostile archive into an empty directory: the sink of the read
//! pass that creates directories, files and symlinks without ever following a link or
//! writing outside the target, and restores owners, modes and mtimes. The checks of what
//! may be extracted are the read pass's (`read`).

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::error::{Error, IoContext, Result};
use crate::index::*;
use crate::read::*;
use crate::*;

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
        stripped: Stripped::default(),
        open: None,
    };
    extract_into(input, &mut sink, expected, expected_archive, progress)
}

/// The read pass into `sink`, checked against `expected`; the summary lists the modes the
/// sink stripped.
pub(crate) fn extract_into<R: Read + Send>(
    input: R,
    sink: &mut dyn Sink,
    expected: ExpectedIndex<'_>,
    expected_archive: Option<(u64, &str)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(serde_json::Value, IndexSummary)> {
    let (header, mut summary) = read_archive(
        input,
        Some(expected),
        expected_archive,
        Some(&mut *sink),
        progress,
    )?;
    sink.take_stripped().report(&mut summary);
    Ok((header, summary))
}

/// Where the read pass puts the entries it accepted, in archive order: a directory
/// ([`Extractor`]) or tar streams (`tar_stream`). Each call comes once the entry passed
/// every check that can be made before its content; a file's content is hashed as it
/// passes, and `end_file` comes only once its hash matched.
pub(crate) trait Sink {
    fn dir(&mut self, e: &FileEntry) -> Result<()>;
    fn symlink(&mut self, e: &FileEntry, link: &str) -> Result<()>;
    fn begin_file(&mut self, e: &FileEntry) -> Result<()>;
    fn file_data(&mut self, data: &[u8]) -> Result<()>;
    fn end_file(&mut self, e: &FileEntry) -> Result<()>;
    /// Nothing more goes into the directory.
    fn close_dir(&mut self, d: &OpenDir) -> Result<()>;
    /// The modes stripped so far.
    fn take_stripped(&mut self) -> Stripped;
}

/// The paths given without their setuid, setgid or sticky bits (the first ones), and how
/// many: the same rule for every sink.
#[derive(Default)]
pub(crate) struct Stripped {
    paths: Vec<String>,
    count: u64,
}

impl Stripped {
    /// `mode` without `bits` (and without anything above the permission bits), recorded
    /// for `path` if any was set.
    pub(crate) fn strip(&mut self, path: &str, mode: u32, bits: u32) -> u32 {
        if mode & bits != 0 {
            self.count += 1;
            if self.paths.len() < MAX_LISTED_STRIPPED {
                self.paths.push(path.to_string());
            }
        }
        mode & !bits & 0o7777
    }

    pub(crate) fn report(self, summary: &mut IndexSummary) {
        summary.modes_stripped = self.paths;
        summary.modes_stripped_count = self.count;
    }
}

/// Where extracted entries go.
pub(crate) struct Extractor {
    pub(crate) root: PathBuf,
    /// Cleared after the first `EPERM`: owners cannot be restored unless root.
    chown: bool,
    stripped: Stripped,
    /// The file being written, and its path.
    open: Option<(File, PathBuf)>,
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

pub(crate) fn mtime_of(secs: i64) -> std::time::SystemTime {
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
}

impl Sink for Extractor {
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

    fn begin_file(&mut self, e: &FileEntry) -> Result<()> {
        let path = self.root.join(&e.path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ctx("create", &path)?;
        self.open = Some((file, path));
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> Result<()> {
        let (file, path) = self.open.as_mut().expect("begin_file came first");
        file.write_all(data).ctx("write", path)
    }

    /// Owner, then mode (a chown clears setuid bits), then mtime, all through the open fd.
    fn end_file(&mut self, e: &FileEntry) -> Result<()> {
        let (file, path) = self.open.take().expect("begin_file came first");
        if self.chown {
            let r = std::os::unix::fs::fchown(&file, Some(e.uid), Some(e.gid));
            self.set_owner(r, &path)?;
        }
        let mode = self.stripped.strip(&e.path, e.mode, FILE_PRIVILEGE_BITS);
        file.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("set the mode of", &path)?;
        let t = mtime_of(e.mtime);
        file.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .ctx("set the mtime of", &path)?;
        Ok(())
    }

    fn take_stripped(&mut self) -> Stripped {
        std::mem::take(&mut self.stripped)
    }

    /// A directory's mode and mtime, once nothing more is written into it.
    fn close_dir(&mut self, d: &OpenDir) -> Result<()> {
        let path = self.root.join(&d.path);
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(&path)
            .ctx("open the directory", &path)?;
        let mode = self.stripped.strip(&d.path, d.mode, DIR_PRIVILEGE_BITS);
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
pub(crate) struct OpenDir {
    /// `""` for the extraction root.
    pub(crate) path: String,
    /// Name and kind of its last child so far: the next must sort after it.
    last: Option<(String, EntryKind)>,
    pub(crate) mode: u32,
    pub(crate) mtime: i64,
}

/// The open directories, and the order and parent rules that use them.
pub(crate) struct DirStack {
    open: Vec<OpenDir>,
}

impl DirStack {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn admit(
        &mut self,
        path: &str,
        kind: EntryKind,
        mut sink: Option<&mut (dyn Sink + '_)>,
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
    pub(crate) fn enter(&mut self, e: &FileEntry) {
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
    pub(crate) fn close_all(&mut self, mut sink: Option<&mut (dyn Sink + '_)>) -> Result<()> {
        while self.open.len() > 1 {
            let d = self.open.pop().expect("more than the root");
            if let Some(s) = sink.as_deref_mut() {
                s.close_dir(&d)?;
            }
        }
        Ok(())
    }
}
