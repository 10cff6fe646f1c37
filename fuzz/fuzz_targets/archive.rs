//! Fuzzes the reading side of the archive format: `verify_archive` and `extract_archive`,
//! checked in lockstep against an index, as a restore does with a backup from a store;
//! `extract_archive_to_tars` beside each extraction; and `write_archive_from_tars` on a
//! tar stream as a hostile engine could send it.
//!
//! Input layout: one flag byte, a little-endian `u32` length, that many bytes of index (the
//! JSON lines kept beside an archive), then the archive.
//! - flag bit 0 set: the archive part is a plain tar stream, compressed here with the
//!   frame parameters Girofle writes, so that the fuzzer reaches the tar and index checks
//!   instead of stopping at zstd's checksum; clear: the bytes are read as they are.
//! - flag bit 1 set: the index's size and BLAKE3 are checked too (computed here, so they
//!   match: a manifest that agrees with a damaged index).
//! - flag bit 2 set: verify only; clear: extract.
//! - flag bit 3 set: the archive part is instead the tar stream of a source `data` from
//!   an engine (the index part is unused), archived by `write_archive_from_tars`; what it
//!   accepts must then read back with `verify_archive` against its own index without a
//!   panic.
//!
//! Every extraction into a directory is done into tar streams too, with the same checks:
//! if the directory extraction is accepted, so must be the tar one, and the tar streams
//! must archive again to the same entries (less the privilege bits extraction strips); if
//! it is refused as corrupt, the tar one must be refused too.
//!
//! Whatever the input, nothing may panic, and nothing may be written outside the target
//! directory: a sentinel directory beside it must be unchanged, the temporary directory
//! must hold nothing but the two, and every symlink an accepted archive made must resolve
//! inside the target.

#![no_main]

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use girofle_archive::{
    extract_archive, extract_archive_to_tars, verify_archive, write_archive_from_tars,
    ArchiveIndex, CompressionOptions, EntryKind, Error, ExpectedIndex, TarSource, TarTarget,
};
use libfuzzer_sys::fuzz_target;

/// The zstd window Girofle's writer pins (`girofle_archive`'s `WINDOW_LOG`).
const WINDOW_LOG: u32 = 21;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    if flags & 8 != 0 {
        archive_engine_stream(&data[1..]);
        return;
    }
    let len = u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let rest = &data[5..];
    let (index, archive) = rest.split_at(len.min(rest.len()));
    let archive = if flags & 1 != 0 {
        compress(archive)
    } else {
        archive.to_vec()
    };
    let hash = blake3::hash(index).to_hex().to_string();
    let check = (flags & 2 != 0).then_some((index.len() as u64, hash.as_str()));
    let expected = ExpectedIndex::new(Cursor::new(index), check);

    if flags & 4 != 0 {
        let _ = verify_archive(&archive[..], Some(expected), None);
        return;
    }

    let base = tempfile::tempdir().expect("a temporary directory");
    let sentinel = base.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("keep"), b"untouched").unwrap();
    let before = snapshot(&sentinel);
    let target = base.path().join("target");

    let result = extract_archive(&archive[..], &target, expected, None, &mut |_| {});
    extract_to_tars_agrees(&archive, index, check, &target, &result);

    assert_eq!(
        snapshot(&sentinel),
        before,
        "the sentinel beside the target changed"
    );
    let mut top: Vec<_> = fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert!(
        top == ["sentinel"] || top == ["sentinel", "target"],
        "written beside the target: {top:?}"
    );
    if result.is_ok() {
        check_links_stay_inside(&target);
    }
    make_removable(base.path());
});

fn no_progress(_: girofle_archive::Progress) {}

/// The same extraction into tar streams, one per top-level directory the directory
/// extraction made, must agree with it (see the module's doc).
fn extract_to_tars_agrees(
    archive: &[u8],
    index: &[u8],
    check: Option<(u64, &str)>,
    target: &Path,
    by_dir: &Result<(serde_json::Value, girofle_archive::IndexSummary), Error>,
) {
    let mut prefixes: Vec<String> = fs::read_dir(target)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    prefixes.sort();
    let mut targets: Vec<TarTarget<Vec<u8>>> = prefixes
        .iter()
        .map(|p| TarTarget {
            prefix: p.clone(),
            out: Vec::new(),
        })
        .collect();
    let expected = ExpectedIndex::new(Cursor::new(index), check);
    let by_tar = extract_archive_to_tars(archive, &mut targets, expected, None, &mut no_progress);
    match by_dir {
        Ok(_) => {
            if let Err(e) = &by_tar {
                panic!("extracted into a directory, refused into tar streams: {e}");
            }
        }
        Err(Error::Corrupt { .. }) => {
            assert!(
                by_tar.is_err(),
                "refused into a directory, accepted into tar streams"
            );
            return;
        }
        Err(_) => return,
    }
    let sources = girofle_archive::testing::sources_of(targets);
    let opts = CompressionOptions {
        level: 1,
        threads: 0,
    };
    let again = write_archive_from_tars(
        &serde_json::json!({}),
        sources,
        opts,
        Vec::new(),
        &mut no_progress,
    )
    .expect("the tar streams of an accepted extraction archive again");
    let mut lines = Vec::new();
    let mut file = again.index_file;
    file.read_to_end(&mut lines).unwrap();
    let stripped = |mut e: girofle_archive::FileEntry| {
        e.mode &= match e.kind {
            EntryKind::File => !0o7000,
            EntryKind::Dir => !0o4000,
            EntryKind::Symlink => !0,
        };
        e
    };
    let want: Vec<_> = ArchiveIndex::from_jsonl(index)
        .unwrap()
        .entries
        .into_iter()
        .map(stripped)
        .collect();
    let got = ArchiveIndex::from_jsonl(&lines).unwrap().entries;
    assert_eq!(got, want, "the tar streams archive again to other entries");
}

/// A tar stream from a hostile engine: archived or refused, never a panic; what is
/// archived reads back.
fn archive_engine_stream(tar: &[u8]) {
    let source = TarSource {
        prefix: "data".to_string(),
        tar: Cursor::new(tar),
        reopen: Some(Box::new(|_: &str| {
            let content: Box<dyn Read> = Box::new(Cursor::new(b"linked".to_vec()));
            Ok(content)
        })),
    };
    let opts = CompressionOptions {
        level: 1,
        threads: 0,
    };
    let mut out = Vec::new();
    let Ok(summary) = write_archive_from_tars(
        &serde_json::json!({}),
        vec![source],
        opts,
        &mut out,
        &mut no_progress,
    ) else {
        return;
    };
    let mut lines = Vec::new();
    let mut file = summary.index_file;
    file.read_to_end(&mut lines).unwrap();
    let expected = ExpectedIndex::new(Cursor::new(&lines[..]), None);
    let _ = verify_archive(
        &out[..],
        Some(expected),
        Some((summary.archive_size, &summary.archive_hash)),
    );
}

fn compress(tar: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_checksum(true).unwrap();
    enc.window_log(WINDOW_LOG).unwrap();
    enc.write_all(tar).unwrap();
    enc.finish().unwrap()
}

/// Every path under `dir` with its content (files) or target (symlinks).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    walk(dir, &mut |p, m| {
        let content = if m.file_type().is_symlink() {
            fs::read_link(p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            fs::read(p).unwrap()
        } else {
            Vec::new()
        };
        out.push((p.to_path_buf(), content));
    });
    out.sort();
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f);
        }
    }
}

/// A symlink that resolves must land inside `root`; one that does not resolve must not
/// climb above it on paper either.
fn check_links_stay_inside(root: &Path) {
    let root = fs::canonicalize(root).unwrap();
    walk(&root.clone(), &mut |p, m| {
        if !m.file_type().is_symlink() {
            return;
        }
        match fs::canonicalize(p) {
            Ok(real) => assert!(
                real.starts_with(&root),
                "{} resolves outside the target, to {}",
                p.display(),
                real.display()
            ),
            Err(_) => {
                let link = fs::read_link(p).unwrap();
                let mut depth = p.strip_prefix(&root).unwrap().components().count() - 1;
                for c in link.components() {
                    match c {
                        Component::Normal(_) => depth += 1,
                        Component::ParentDir => {
                            assert!(depth > 0, "{} points above the target", p.display());
                            depth -= 1;
                        }
                        Component::CurDir => {}
                        Component::RootDir | Component::Prefix(_) => {
                            panic!("{} is an absolute symlink", p.display())
                        }
                    }
                }
            }
        }
    });
}

/// Extracted directories may be read-only; the temporary directory must still go.
fn make_removable(dir: &Path) {
    walk(dir, &mut |p, m| {
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        }
    });
}
