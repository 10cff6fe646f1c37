//! Small file-system helpers with the durability rules Girofle relies on: a file is
//! either whole under its final name or absent (temporary name, fsync, rename, fsync of
//! the directory). Not responsible for anything GitLab- or backup-specific.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `data` to `path` atomically with the given mode.
///
/// # Errors
/// `Io` naming the path.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(data).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
    }
    std::fs::rename(&tmp, path).ctx("rename into place", path)?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename in it survives a crash.
///
/// # Errors
/// `Io` naming the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// Makes everything written under `dir` durable: `syncfs` of its file system (one call
/// instead of an fsync per file, for trees of tens of thousands of files).
///
/// # Errors
/// `Io` naming the directory, e.g. when the disk reported a write error.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).ctx("open directory", dir)?;
    #[cfg(target_os = "linux")]
    {
        rustix::fs::syncfs(&d)
            .map_err(std::io::Error::from)
            .ctx("sync the file system of", dir)
    }
    #[cfg(not(target_os = "linux"))]
    {
        d.sync_all().ctx("sync directory", dir)
    }
}

/// Why a file system takes no writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwritable {
    /// Mounted read-only.
    ReadOnly,
    /// No byte left for Girofle.
    Full,
}

impl Unwritable {
    /// What to do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Unwritable::ReadOnly => "remount it read-write",
            Unwritable::Full => "free space (`girofle backup prune` deletes old backups)",
        }
    }
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unwritable::ReadOnly => "is on a read-only file system",
            Unwritable::Full => "is on a full file system (0 bytes free)",
        })
    }
}

/// Why nothing can be written under `dir`, when its file system says so. `None` when
/// it takes writes (or cannot be asked).
pub fn unwritable_because(dir: &Path) -> Option<Unwritable> {
    let s = rustix::fs::statvfs(dir).ok()?;
    if s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        Some(Unwritable::ReadOnly)
    } else if s.f_bavail == 0 {
        Some(Unwritable::Full)
    } else {
        None
    }
}

/// Whether an I/O error means the file system takes no writes: read-only, full, or over
/// quota.
pub fn is_unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS) | Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}
