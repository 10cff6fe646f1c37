//! What sits beside an archive in a store, as data: the manifest (the header, the archive's
//! and the index's sizes and hashes, the totals) with its checksum trailer and format
//! check, backup ids and the keys of a backup's objects. It does not know where the
//! objects are stored, nor what the header holds: core's `BackupHeader` is the `H` of
//! [`Manifest`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::IndexSummary;
use crate::signature::SIGNATURE_SUFFIX;

/// The archive format this Girofle writes (and the only one it reads): 2 has the index as
/// JSON lines, in the archive and beside it as its own object.
pub const FORMAT_VERSION: u32 = 2;

const ARCHIVE_SUFFIX: &str = ".tar.zst";
const INDEX_SUFFIX: &str = ".index";
/// What a manifest's key adds to its backup id.
pub const MANIFEST_SUFFIX: &str = ".manifest";
const CHECKSUM_TRAILER: &str = "\nblake3:";

/// Where the archive is and what it must hash to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveRef {
    pub key: String,
    pub size: u64,
    pub blake3: String,
}

/// Where the index is, what it must hash to, and its totals.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexRef {
    pub key: String,
    /// Size of the JSON lines in bytes.
    pub size: u64,
    pub blake3: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the regular files.
    pub bytes: u64,
    /// Entries not archived (sockets, names that are not UTF-8...), listed in the index.
    pub skipped: u64,
    /// Files whose size changed while read, listed in the index.
    pub changed_while_read: u64,
}

impl IndexRef {
    /// The reference to index object `key` of summary `s`.
    pub fn new(key: String, s: &IndexSummary) -> Self {
        IndexRef {
            key,
            size: s.size,
            blake3: s.blake3.clone(),
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            bytes: s.bytes,
            skipped: s.skipped,
            changed_while_read: s.changed_while_read,
        }
    }
}

/// Everything known about a backup but its per-file index; kept beside the archive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest<H> {
    /// The archive's header document (core's `BackupHeader`), its fields at the top level.
    #[serde(flatten)]
    pub header: H,
    pub archive: ArchiveRef,
    pub index: IndexRef,
    pub duration_ms: u64,
    /// How long GitLab was down (cold backups).
    pub downtime_ms: Option<u64>,
}

impl<H: Serialize + DeserializeOwned> Manifest<H> {
    /// The bytes stored: the JSON, then a trailer line with the BLAKE3 of those bytes, so
    /// any flipped byte is detected.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut body = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::backend("manifest", e.to_string()))?;
        let hash = blake3::hash(&body).to_hex().to_string();
        body.extend_from_slice(format!("{CHECKSUM_TRAILER}{hash}\n").as_bytes());
        Ok(body)
    }

    /// Parses and checks stored manifest bytes.
    ///
    /// # Errors
    /// `Corrupt` when the checksum does not match or the JSON is malformed,
    /// `VersionMismatch` when a newer Girofle wrote it.
    pub fn from_bytes(what: &str, bytes: &[u8]) -> Result<Manifest<H>> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::corrupt(what, "the manifest is not UTF-8"))?;
        let (body, trailer) = text
            .rsplit_once(CHECKSUM_TRAILER)
            .ok_or_else(|| Error::corrupt(what, "the manifest has no checksum line"))?;
        // Exactly the hash and the newline `to_bytes` writes: trimming would let a flipped
        // last byte (a newline turned into a space) pass unnoticed.
        let expected = trailer.strip_suffix('\n').unwrap_or(trailer);
        let actual = blake3::hash(body.as_bytes()).to_hex().to_string();
        if expected != actual {
            return Err(Error::corrupt(
                what,
                "the manifest's checksum does not match its content: it was damaged; use another backup",
            ));
        }
        let probe: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| Error::corrupt(what, format!("manifest JSON: {e}")))?;
        let version = probe["format_version"].as_u64().unwrap_or(0);
        if version > u64::from(FORMAT_VERSION) {
            return Err(Error::VersionMismatch(format!(
                "{what} has format {version}, this Girofle reads up to {FORMAT_VERSION}: upgrade Girofle"
            )));
        }
        if version < u64::from(FORMAT_VERSION) {
            return Err(Error::VersionMismatch(format!(
                "{what} has format {version} (a pre-release Girofle wrote it), this Girofle reads format {FORMAT_VERSION}: restore it with the Girofle that made it"
            )));
        }
        serde_json::from_str(body).map_err(|e| Error::corrupt(what, format!("manifest: {e}")))
    }
}

/// Splits an id `<instance>/<ts>` and checks its shape.
///
/// # Errors
/// `InvalidInput` saying what an id looks like.
pub fn parse_id(id: &str) -> Result<(String, String)> {
    let bad = || {
        Error::invalid(
            "backup id",
            format!("`{id}` is not a backup id like `web/20261125T220000Z` (`girofle backup list` shows them)"),
        )
    };
    let (name, ts) = id.split_once('/').ok_or_else(bad)?;
    validate_label("instance name", name).map_err(|_| bad())?;
    if chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H%M%SZ").is_err() {
        return Err(bad());
    }
    Ok((name.to_string(), ts.to_string()))
}

/// The key of backup `id`'s archive.
pub fn archive_key(id: &str) -> String {
    format!("{id}{ARCHIVE_SUFFIX}")
}

/// The key of backup `id`'s manifest.
pub fn manifest_key(id: &str) -> String {
    format!("{id}{MANIFEST_SUFFIX}")
}

/// The key of backup `id`'s index.
pub fn index_key(id: &str) -> String {
    format!("{id}{INDEX_SUFFIX}")
}

/// The key of the signature of backup `id`'s manifest.
pub fn signature_key(id: &str) -> String {
    format!("{id}{MANIFEST_SUFFIX}{SIGNATURE_SUFFIX}")
}

/// Checks a DNS-label-like name: 1-40 chars, lowercase letters, digits and `-`, starting
/// with a letter and not ending with `-`.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_label(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "`{name}` is not valid: use 1-40 lowercase letters, digits and '-', starting with a letter and not ending with '-' (e.g. `ci-2`)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(parse_id("web/20261125T220000Z").is_ok());
        for bad in [
            "web",
            "web/x",
            "Web/20261125T220000Z",
            "/20261125T220000Z",
            "a/b/c",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }
}
