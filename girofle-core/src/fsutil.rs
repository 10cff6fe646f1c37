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
