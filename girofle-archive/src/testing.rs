//! Hand-made tar archives for tests (feature `test-support`): entries whose names, link
//! targets, sizes and PAX records are written raw, bypassing the tar crate's own checks,
//! so that the readers' safety rules can be tried on what a hostile archive may hold. Used
//! by this crate's unit tests, by the integration tests that plant such archives in a
//! store, and through them by the fuzz seeds. Not a writer of valid archives: that is
//! [`crate::write_archive`].

use std::io::Write;

use crate::index::{ArchiveIndex, EntryKind, FileEntry};
use crate::{HEADER_PATH, INDEX_PATH, WINDOW_LOG};

/// The mtime of every hand-made entry.
pub const T0: i64 = 1_600_000_000;

/// How an entry's path is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// In the header's 100-byte name field.
    Plain,
    /// In a GNU long name (`././@LongLink`) entry before it, as Girofle's writer does.
    GnuLong,
    /// In a PAX `path` record before it.
    Pax,
}

/// One hand-made tar entry: names and link targets are written raw.
#[derive(Clone, Debug)]
pub struct Raw {
    pub path: String,
    pub kind: tar::EntryType,
    pub link: Option<String>,
    pub data: Vec<u8>,
    /// Size written in the header, if not the data's length (the data is padded or cut
    /// to it, so the tar stream stays sound).
    pub header_size: Option<u64>,
    pub name: Name,
    /// Extra PAX records written before the entry (and not listed anywhere).
    pub pax_extra: Vec<(String, Vec<u8>)>,
}

/// An entry of `kind` at `path`, empty, its name in the header.
pub fn raw(path: &str, kind: tar::EntryType) -> Raw {
    Raw {
        path: path.to_string(),
        kind,
        link: None,
        data: Vec::new(),
        header_size: None,
        name: Name::Plain,
        pax_extra: Vec::new(),
    }
}

/// A directory.
pub fn dir(path: &str) -> Raw {
    raw(path, tar::EntryType::Directory)
}

/// A regular file holding `data`.
pub fn file(path: &str, data: &[u8]) -> Raw {
    Raw {
        data: data.to_vec(),
        ..raw(path, tar::EntryType::Regular)
    }
}

/// A symlink to `target`.
pub fn symlink(path: &str, target: &str) -> Raw {
    Raw {
        link: Some(target.to_string()),
        ..raw(path, tar::EntryType::Symlink)
    }
}

/// The mode every hand-made entry gets.
pub fn mode_of(kind: tar::EntryType) -> u32 {
    if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    }
}

/// The index line of a raw entry, so that only the safety rules can refuse it.
pub fn listed(r: &Raw) -> FileEntry {
    let kind = match r.kind {
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        _ => EntryKind::File,
    };
    let is_file = kind == EntryKind::File;
    FileEntry {
        path: r.path.clone(),
        kind,
        size: if is_file { r.data.len() as u64 } else { 0 },
        mode: mode_of(r.kind),
        uid: 0,
        gid: 0,
        mtime: T0,
        hash: is_file.then(|| blake3::hash(&r.data).to_hex().to_string()),
        link: r.link.clone(),
    }
}

/// An index of exactly `entries`, no skips.
pub fn index_of(entries: Vec<FileEntry>) -> ArchiveIndex {
    ArchiveIndex {
        entries,
        ..Default::default()
    }
}

/// Writes `value` into a header field, cut to fit, the rest zeros.
pub fn set_raw(slot: &mut [u8], value: &[u8]) {
    slot.fill(0);
    let n = value.len().min(slot.len());
    slot[..n].copy_from_slice(&value[..n]);
}

/// One PAX record, `<len> <key>=<value>\n`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len = format!("{len}").len() + body;
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Appends a PAX extension entry of `records` (see [`pax_record`]).
///
/// # Panics
/// If writing into memory fails.
pub fn append_pax(b: &mut tar::Builder<Vec<u8>>, records: &[u8]) {
    let mut x = tar::Header::new_ustar();
    set_raw(&mut x.as_ustar_mut().unwrap().name, b"PaxHeader");
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(records.len() as u64);
    x.set_cksum();
    b.append(&x, records).unwrap();
}

/// The plain tar stream of `entries` between the header document `header` and an index
/// (`archive_index`: what the archive's own last entry says, which may differ from what
/// it holds).
///
/// # Panics
/// If writing into memory fails.
pub fn tar_of(
    header: &serde_json::Value,
    entries: &[Raw],
    archive_index: &ArchiveIndex,
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let hj = serde_json::to_vec(header).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(hj.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, HEADER_PATH, &hj[..]).unwrap();
    for r in entries {
        append_raw(&mut b, r);
    }
    let ij = archive_index.to_jsonl();
    let mut h = tar::Header::new_gnu();
    h.set_size(ij.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, INDEX_PATH, &ij[..]).unwrap();
    b.into_inner().unwrap()
}

/// Appends one hand-made entry (and the long name or PAX entries before it) to `b`.
///
/// # Panics
/// If writing into memory fails.
pub fn append_raw(b: &mut tar::Builder<Vec<u8>>, r: &Raw) {
    let mut pax = Vec::new();
    for (k, v) in &r.pax_extra {
        pax.extend(pax_record(k, v));
    }
    if r.name == Name::Pax {
        pax.extend(pax_record("path", r.path.as_bytes()));
    }
    if !pax.is_empty() {
        append_pax(b, &pax);
    }
    if r.name == Name::GnuLong {
        let mut l = tar::Header::new_gnu();
        set_raw(&mut l.as_gnu_mut().unwrap().name, b"././@LongLink");
        l.set_entry_type(tar::EntryType::GNULongName);
        let mut name = r.path.clone().into_bytes();
        name.push(0);
        l.set_size(name.len() as u64);
        l.set_cksum();
        b.append(&l, &name[..]).unwrap();
    }
    let mut h = if r.name == Name::Pax {
        tar::Header::new_ustar()
    } else {
        tar::Header::new_gnu()
    };
    let short = if r.name == Name::Plain {
        r.path.as_bytes()
    } else {
        b"placeholder"
    };
    set_raw(&mut h.as_old_mut().name, short);
    if let Some(l) = &r.link {
        set_raw(&mut h.as_old_mut().linkname, l.as_bytes());
    }
    let size = r.header_size.unwrap_or(r.data.len() as u64);
    h.set_entry_type(r.kind);
    h.set_size(size);
    h.set_mode(mode_of(r.kind));
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(T0 as u64);
    h.set_cksum();
    let mut data = r.data.clone();
    data.resize(size as usize, b'z');
    b.append(&h, &data[..]).unwrap();
}

/// A plain tar of `entries` alone, as an engine's export of a directory would be (see
/// `tar_stream`), for hostile streams.
///
/// # Panics
/// If writing into memory fails.
pub fn plain_tar(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for r in entries {
        append_raw(&mut b, r);
    }
    b.into_inner().unwrap()
}

/// The tar streams an extraction wrote (`extract_archive_to_tars`) as the sources of a new
/// archive, as an engine would export them again once imported (no hard links in them,
/// so no `reopen`).
pub fn sources_of(
    targets: Vec<crate::TarTarget<Vec<u8>>>,
) -> Vec<crate::TarSource<std::io::Cursor<Vec<u8>>>> {
    targets
        .into_iter()
        .map(|t| crate::TarSource {
            prefix: t.prefix,
            tar: std::io::Cursor::new(t.out),
            reopen: None,
        })
        .collect()
}

/// zstd with the frame parameters Girofle writes (checksum, the pinned window).
///
/// # Panics
/// If compressing into memory fails.
pub fn compress(tar: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.window_log(WINDOW_LOG).unwrap();
    enc.write_all(tar).unwrap();
    enc.finish().unwrap()
}

/// A compressed archive made of `entries` between `header` and an index listing exactly
/// them; also returns that index, to expect beside it.
pub fn hostile(header: &serde_json::Value, entries: &[Raw]) -> (Vec<u8>, ArchiveIndex) {
    let index = index_of(entries.iter().map(listed).collect());
    (compress(&tar_of(header, entries, &index)), index)
}
