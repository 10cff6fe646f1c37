//! Where an instance's directories are, and the few things operations do to them: make
//! them, read and write gitlab.rb, make the secret files private, move a copy aside,
//! delete. A [`Site`] is either this machine (the root's own `instances/`, reached through
//! local paths: the fast path) or another host's `data_dir`, reached only through that
//! host's engine by short-lived helper containers (issue 15: nothing through local paths).
//!
//! Operations name directories by their absolute path on the instance's machine (what the
//! container's binds say); the engine path turns them into paths relative to the host's
//! data directory, and refuses any path outside it. Which directories an instance has is
//! `model::instance`'s business; how a helper container reaches them is the runtime's.

use std::path::{Path, PathBuf};

use crate::adapters::runtime::{ContainerRuntime, HostEntry, HostRoot};
use crate::error::{Error, IoContext, Result};

/// The largest gitlab.rb Girofle reads.
pub const MAX_CONFIG_FILE: usize = 4 << 20;

/// Where the directories of the instances of one host live.
#[derive(Clone, Debug)]
pub enum Site {
    /// This machine: under the Girofle root, through local paths.
    Local { base: PathBuf },
    /// Another host: under its `data_dir`, only through its engine. `root.image` is the
    /// image the helper containers run (the instance's own, already on that engine).
    Engine { host: String, root: HostRoot },
}

impl Site {
    /// The directory under which `instances/`, `decommissioned/` and `staging/` are, on
    /// the site's own machine.
    pub fn base(&self) -> PathBuf {
        match self {
            Site::Local { base } => base.clone(),
            Site::Engine { root, .. } => PathBuf::from(root.trimmed()),
        }
    }

    /// Whether the directories are reached through local paths.
    pub fn is_local(&self) -> bool {
        matches!(self, Site::Local { .. })
    }

    /// The host's name (`local` for this machine).
    pub fn host(&self) -> &str {
        match self {
            Site::Local { .. } => crate::record::LOCAL_HOST_NAME,
            Site::Engine { host, .. } => host,
        }
    }
}

/// The files of one site, acted on through `runtime` (the site's engine) when remote.
#[allow(missing_debug_implementations)] // a borrow of the runtime, printed nowhere
pub struct Files<'a> {
    pub(crate) site: &'a Site,
    pub(crate) runtime: &'a dyn ContainerRuntime,
}

/// Makes those of `paths` that are regular files private (group and others lose every
/// permission), through a descriptor opened without following symlinks: the container may
/// swap a file for a link to a host file between a check and a chmod by path.
fn make_private_here(paths: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for path in paths {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        else {
            continue;
        };
        let meta = file.metadata().ctx("read", path)?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            let mode = meta.permissions().mode() & 0o7700;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .ctx("make private", path)?;
        }
    }
    Ok(())
}

impl Site {
    /// The directory of this site as a [`HostRoot`] whose helper containers run `image`.
    pub fn host_root(&self, image: &str) -> HostRoot {
        match self {
            Site::Local { base } => HostRoot::new(base.display().to_string(), image),
            Site::Engine { root, .. } => HostRoot::new(root.trimmed(), image),
        }
    }
}

impl Files<'_> {
    /// `path` relative to the host's data directory, for the engine's primitives.
    pub(crate) fn relative(root: &HostRoot, path: &Path) -> Result<String> {
        let rel = path
            .strip_prefix(root.trimmed())
            .ok()
            .and_then(|p| p.to_str())
            .filter(|p| !p.is_empty());
        rel.map(str::to_string).ok_or_else(|| {
            Error::invalid(
                "host directory",
                format!(
                    "`{}` is not below the host's data directory `{}`",
                    path.display(),
                    root.path
                ),
            )
        })
    }

    /// Creates directories (and their parents); existing ones are left as they are.
    ///
    /// # Errors
    /// `Io` here, the engine's errors there.
    pub async fn make_dirs(&self, dirs: &[&Path]) -> Result<()> {
        match self.site {
            Site::Local { .. } => {
                for dir in dirs {
                    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
                }
                Ok(())
            }
            Site::Engine { root, .. } => {
                let entries = dirs
                    .iter()
                    .map(|d| Ok(HostEntry::new(Self::relative(root, d)?, 0, 0, 0o755)))
                    .collect::<Result<Vec<_>>>()?;
                self.runtime.make_host_dirs(root, &entries).await
            }
        }
    }

    /// Whether something exists at `path` (a symlink counts, followed or not).
    ///
    /// # Errors
    /// The engine's errors.
    pub async fn exists(&self, path: &Path) -> Result<bool> {
        match self.site {
            Site::Local { .. } => Ok(path.symlink_metadata().is_ok()),
            Site::Engine { root, .. } => {
                let rel = Self::relative(root, path)?;
                let (parent, name) = match rel.rsplit_once('/') {
                    Some((p, n)) => (p.to_string(), n.to_string()),
                    None => (String::new(), rel.clone()),
                };
                match self.runtime.list_host_dir(root, &parent).await {
                    Ok(entries) => Ok(entries.iter().any(|e| e.name == name)),
                    // The parent itself is absent (but the image is there: `exists` is
                    // asked after the image was made sure of).
                    Err(Error::NotFound { .. }) if !parent.is_empty() => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A text file's content, `None` when there is none.
    ///
    /// # Errors
    /// `Io` here, the engine's errors there (a file past [`MAX_CONFIG_FILE`] included).
    pub async fn read_text(&self, path: &Path) -> Result<Option<String>> {
        match self.site {
            Site::Local { .. } => match std::fs::read(path) {
                Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("read", path, e)),
            },
            Site::Engine { root, .. } => Ok(self
                .runtime
                .read_host_file(root, &Self::relative(root, path)?, MAX_CONFIG_FILE)
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned())),
        }
    }

    /// Writes a file atomically, `root:root 0600` (gitlab.rb holds settings).
    ///
    /// # Errors
    /// `Io` here, the engine's errors there.
    pub async fn write_private(&self, path: &Path, content: &[u8]) -> Result<()> {
        match self.site {
            Site::Local { .. } => crate::fsutil::write_atomic(path, content, 0o600),
            Site::Engine { root, .. } => {
                let file = HostEntry::new(Self::relative(root, path)?, 0, 0, 0o600);
                self.runtime.write_host_file(root, &file, content).await
            }
        }
    }

    /// Makes those of `paths` that are regular files private; missing ones, directories
    /// and symlinks are left alone.
    ///
    /// # Errors
    /// `Io` here, the engine's errors there.
    pub async fn make_private(&self, paths: &[PathBuf]) -> Result<()> {
        match self.site {
            Site::Local { .. } => make_private_here(paths),
            Site::Engine { root, .. } => {
                let rel = paths
                    .iter()
                    .map(|p| Self::relative(root, p))
                    .collect::<Result<Vec<_>>>()?;
                self.runtime.make_host_files_private(root, &rel).await
            }
        }
    }

    /// Renames a directory (its destination's parents made), durably.
    ///
    /// # Errors
    /// `Io` here, the engine's errors there; `to` must not exist.
    pub async fn move_dir(&self, from: &Path, to: &Path) -> Result<()> {
        match self.site {
            Site::Local { .. } => {
                let parent = to.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(parent).ctx("create directory", parent)?;
                std::fs::rename(from, to).ctx("move to", to)?;
                crate::fsutil::sync_dir(parent)
            }
            Site::Engine { root, .. } => {
                let (from, to) = (Self::relative(root, from)?, Self::relative(root, to)?);
                self.runtime.move_host_dir(root, &from, &to).await
            }
        }
    }

    /// Deletes a directory and everything below it; a missing one is fine.
    ///
    /// # Errors
    /// `Io` here, the engine's errors there.
    pub async fn remove_dir(&self, path: &Path) -> Result<()> {
        match self.site {
            Site::Local { .. } => match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io("delete", path, e))
                }
                _ => Ok(()),
            },
            Site::Engine { root, .. } => {
                self.runtime
                    .remove_host_dir(root, &Self::relative(root, path)?)
                    .await
            }
        }
    }
}
