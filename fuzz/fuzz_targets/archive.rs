//! Fuzzes the reading side of the archive format: `verify_archive` and `extract_archive`,
//! checked in lockstep against an index, as a restore does with a backup from a store.
//!
//! Input layout: one flag byte, a little-endian `u32` length, that many bytes of index (the
//! JSON lines kept beside an archive), then the archive.
//! - flag bit 0 set: the archive part is a plain tar stream, compressed here with the
//!   frame parameters Girofle writes, so that the fuzzer reaches the tar and index checks
//!   instead of stopping at zstd's checksum; clear: the bytes are read as they are.
//! - flag bit 1 set: the index's size and BLAKE3 are checked too (computed here, so they
//!   match: a manifest that agrees with a damaged index).
//! - flag bit 2 set: verify only; clear: extract.
//!
//! Whatever the input, nothing may panic, and nothing may be written outside the target
//! directory: a sentinel directory beside it must be unchanged, the temporary directory
//! must hold nothing but the two, and every symlink an accepted archive made must resolve
//! inside the target.

#![no_main]

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use girofle_archive::{extract_archive, verify_archive, ExpectedIndex};
use libfuzzer_sys::fuzz_target;

/// The zstd window Girofle's writer pins (`girofle_archive`'s `WINDOW_LOG`).
const WINDOW_LOG: u32 = 21;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
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
