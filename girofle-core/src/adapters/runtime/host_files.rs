//! Files on an engine's host, reached only through that engine: the types of the
//! host-file primitives of [`ContainerRuntime`](super::ContainerRuntime), the checks of
//! the relative paths they take, and the filter every imported tar goes through before
//! any engine writes it.
//!
//! Shared by Docker (`docker_files.rs`) and the in-memory double, so both refuse the same
//! paths and the same hostile entries with the same errors. It knows nothing about
//! instances or GitLab: which directories an instance has is the operations' business.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};

/// A stream of tar bytes: what [`export_host_dir`] gives and [`import_host_dir`] takes.
///
/// Entries are named relative to the exported directory, with a leading `./`; the
/// directory itself comes first as `./` (Docker's archive API names them so).
///
/// [`export_host_dir`]: super::ContainerRuntime::export_host_dir
/// [`import_host_dir`]: super::ContainerRuntime::import_host_dir
pub type TarStream = BoxStream<'static, Result<Bytes>>;

/// The label every helper container carries, so a leftover of a killed process can be
/// found (`docker ps -a --filter label=girofle.helper=1`) and removed.
pub const HELPER_LABEL: &str = "girofle.helper";
/// The label naming the host directory a helper container was started for.
pub const HELPER_ROOT_LABEL: &str = "girofle.helper.root";
/// Where a helper container sees the host directory.
pub const HELPER_MOUNT: &str = "/girofle-host";

/// A directory on an engine's host under which the host-file primitives act, and the
/// image of the short-lived helper containers that reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot {
    /// An absolute path on the engine's host (created `root:root 0755` when absent, as
    /// Docker's bind mount does).
    pub path: String,
    /// An image already on that engine; Girofle never pulls it.
    pub image: String,
}

impl HostRoot {
    pub fn new(path: impl Into<String>, image: impl Into<String>) -> Self {
        HostRoot {
            path: path.into(),
            image: image.into(),
        }
    }

    /// Checks the path: absolute, normalised, not `/`, no NUL and no `:` (the engine's
    /// bind syntax).
    ///
    /// # Errors
    /// `InvalidInput` saying what is wrong.
    pub fn check(&self) -> Result<()> {
        let bad = |why: &str| {
            Error::invalid(
                "host directory",
                format!("`{}` {why}", self.path.escape_debug()),
            )
        };
        if !self.path.starts_with('/') {
            return Err(bad("is not an absolute path"));
        }
        if self.path == "/" {
            return Err(bad("is the host's root; give a directory below it"));
        }
        if self.path.contains('\0') || self.path.contains(':') {
            return Err(bad("holds a NUL or a `:`, which the engine cannot bind"));
        }
        if self.path[1..]
            .trim_end_matches('/')
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("is not normalised (empty, `.` or `..` component)"));
        }
        if self.image.trim().is_empty() {
            return Err(Error::invalid(
                "helper image",
                "empty; name an image already on the engine (the instance's own)",
            ));
        }
        Ok(())
    }

    /// The path without a trailing `/`.
    pub fn trimmed(&self) -> &str {
        self.path.trim_end_matches('/')
    }
}

/// A directory or file to make on a host, relative to a [`HostRoot`], with its owner
/// and permission bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o750`); anything above `0o7777` is refused.
    pub mode: u32,
}

impl HostEntry {
    pub fn new(path: impl Into<String>, uid: u32, gid: u32, mode: u32) -> Self {
        HostEntry {
            path: path.into(),
            uid,
            gid,
            mode,
        }
    }
}

/// What kind of thing a [`HostListing`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    File,
    Dir,
    Symlink,
    /// A fifo, socket or device.
    Other,
}

/// One entry of a host directory, as [`list_host_dir`] gives it (not following links).
///
/// [`list_host_dir`]: super::ContainerRuntime::list_host_dir
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostListing {
    pub name: String,
    pub kind: HostKind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Bytes of a file (a directory's own size otherwise, not what it holds).
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// Checks a path relative to a [`HostRoot`]: not empty, not absolute, `/`-separated
/// normal components (no `.`, `..` or empty one), no NUL. `field` names it in the error.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is refused.
pub fn check_relative(field: &str, path: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(
            field,
            format!(
                "`{}` {why}; give a path relative to the host directory, without `..`",
                path.escape_debug()
            ),
        )
    };
    if path.is_empty() {
        return Err(bad("is empty"));
    }
    if path.starts_with('/') {
        return Err(bad("is absolute"));
    }
    if path.contains('\0') {
        return Err(bad("holds a NUL"));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(bad("has an empty component")),
            "." => return Err(bad("has a `.` component")),
            ".." => return Err(bad("has a `..` component")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks the owner and mode of an entry as well as its path.
///
/// # Errors
/// `InvalidInput` as [`check_relative`], or for a mode above `0o7777`.
pub fn check_entry(field: &str, e: &HostEntry) -> Result<()> {
    check_relative(field, &e.path)?;
    if e.mode > 0o7777 {
        return Err(Error::invalid(
            field,
            format!("mode {:o} of `{}` is not permission bits", e.mode, e.path),
        ));
    }
    Ok(())
}

/// `(parent, name)` of a checked relative path; the parent is `""` at the top.
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

/// The refusal of a helper image absent from the engine.
pub fn image_absent(image: &str, engine: &str) -> Error {
    Error::not_found(
        format!("image `{image}` on the engine at {engine}"),
        format!(
            "Girofle reaches a host's files through a helper container of an image already there and never pulls one; load it on that engine (`docker save {image} | docker -H {engine} load`) or name another"
        ),
    )
}

/// What an import wrote, as the filter counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub entries: u64,
    pub bytes: u64,
}

fn corrupt(path: &str, why: impl Into<String>) -> Error {
    Error::corrupt(format!("imported tar entry `{}`", path.escape_debug()), why)
}

/// The name of a tar entry relative to the imported directory: `./a/b/` -> `a/b`, the
/// directory itself -> `""`.
fn normalise(raw: &str) -> &str {
    let mut name = raw;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    let name = name.trim_end_matches('/');
    if name == "." {
        ""
    } else {
        name
    }
}

/// Copies a tar from `input` to `output`, every entry renamed under `prefix/` (the
/// temporary directory the engine extracts into), refusing what could write or point
/// outside the imported directory: absolute paths, `..`, NUL (girofle-archive's own
/// checks), entries below a symlink, symlinks leaving the directory (alone or through
/// other symlinks), hard links to anything but an earlier file, devices and fifos,
/// duplicates. The directory's own entry (`./`), if first, gives `prefix` its owner,
/// mode and mtime; otherwise `prefix` is made `root:root 0755`.
///
/// Streams: memory holds one entry header and the names seen, never the data.
///
/// # Errors
/// `Corrupt` naming the refused entry; `Backend` when the input cannot be read or the
/// output written.
pub fn filter_import<R: Read, W: Write>(
    input: R,
    output: W,
    prefix: &str,
) -> Result<(ImportSummary, W)> {
    let io = |e: std::io::Error| Error::backend("tar import", format!("reading the tar: {e}"));
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    builder.follow_symlinks(false);
    let mut summary = ImportSummary::default();
    let mut seen_files: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut first = true;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| corrupt("?", "name is not UTF-8"))?;
        let name = normalise(&raw).to_string();
        let kind = entry.header().entry_type();
        let mut header = entry.header().clone();
        if name.is_empty() {
            if !first || !kind.is_dir() {
                return Err(corrupt(
                    &raw,
                    "a second or non-directory root entry refused",
                ));
            }
            first = false;
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, prefix, std::io::empty())
                .map_err(write_err)?;
            summary.entries += 1;
            continue;
        }
        if first {
            first = false;
            let mut root = tar::Header::new_gnu();
            root.set_entry_type(tar::EntryType::Directory);
            root.set_mode(0o755);
            root.set_uid(0);
            root.set_gid(0);
            root.set_mtime(now());
            root.set_size(0);
            builder
                .append_data(&mut root, prefix, std::io::empty())
                .map_err(write_err)?;
        }
        girofle_archive::read::check_path(&name).map_err(Error::from)?;
        let mut ancestor = name.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            if links.contains_key(parent) || seen_files.contains(parent) {
                return Err(corrupt(
                    &name,
                    format!("entry below the non-directory `{parent}` refused"),
                ));
            }
            ancestor = parent;
        }
        if !seen.insert(name.clone()) {
            return Err(corrupt(&name, "duplicate entry refused"));
        }
        let target = format!("{prefix}/{name}");
        summary.entries += 1;
        match kind {
            tar::EntryType::Directory => {
                header.set_size(0);
                builder
                    .append_data(&mut header, &target, std::io::empty())
                    .map_err(write_err)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                summary.bytes += entry.size();
                builder
                    .append_data(&mut header, &target, &mut entry)
                    .map_err(write_err)?;
                seen_files.insert(name);
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                girofle_archive::read::check_link(&name, &link).map_err(Error::from)?;
                builder
                    .append_link(&mut header, &target, &link)
                    .map_err(write_err)?;
                links.insert(name, link);
            }
            tar::EntryType::Link => {
                let raw_link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let link = normalise(&raw_link);
                if !seen_files.contains(link) {
                    return Err(corrupt(
                        &name,
                        format!("hard link to `{raw_link}`, which is not an earlier file of the tar, refused"),
                    ));
                }
                header.set_size(0);
                builder
                    .append_link(&mut header, &target, format!("{prefix}/{link}"))
                    .map_err(write_err)?;
                seen_files.insert(name);
            }
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(corrupt(
                    &name,
                    format!("{other:?} entries (devices, fifos) refused"),
                ))
            }
        }
    }
    if first {
        // An empty tar still makes an empty directory.
        let mut root = tar::Header::new_gnu();
        root.set_entry_type(tar::EntryType::Directory);
        root.set_mode(0o755);
        root.set_mtime(now());
        root.set_size(0);
        builder
            .append_data(&mut root, prefix, std::io::empty())
            .map_err(write_err)?;
    }
    // In name order: the refusal names the same entry every time.
    let mut paths: Vec<&String> = links.keys().collect();
    paths.sort();
    for path in paths {
        girofle_archive::read::check_link_chain(&links, path).map_err(Error::from)?;
    }
    let output = builder.into_inner().map_err(write_err)?;
    Ok((summary, output))
}

fn write_err(e: std::io::Error) -> Error {
    Error::backend("tar import", format!("handing the tar to the engine: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        for ok in ["a", "a/b", "instances/web/config"] {
            check_relative("path", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc", "absolute"),
            ("a/../b", "`..`"),
            ("..", "`..`"),
            ("a//b", "empty component"),
            ("./a", "`.`"),
            ("a\0b", "NUL"),
        ] {
            let e = check_relative("path", bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        assert!(HostRoot::new("/", "i").check().is_err());
        assert!(HostRoot::new("srv", "i").check().is_err());
        assert!(HostRoot::new("/srv/../etc", "i").check().is_err());
        assert!(HostRoot::new("/srv/a:b", "i").check().is_err());
        HostRoot::new("/srv/girofle/", "i").check().unwrap();
    }
}
