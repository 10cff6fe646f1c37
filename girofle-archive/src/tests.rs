//! Unit tests of the archive format: round trips, determinism, damage anywhere, and
//! hostile archives refused without writing outside the target.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::extract::*;
use crate::index::*;
use crate::read::*;
use crate::tar_stream::TarTarget;
use crate::write::*;
use crate::*;
use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::{chown, symlink};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::testing::{dir, file, listed, raw, symlink as link, Name, Raw};

const T0: i64 = 1_600_000_000;

pub(crate) fn is_root() -> bool {
    let dir = tempfile::tempdir().unwrap();
    fs::metadata(dir.path()).unwrap().uid() == 0
}

pub(crate) fn set_mtime(path: &Path, secs: i64) {
    let f = File::open(path).unwrap();
    let t = mtime_of(secs);
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Pseudo-random, incompressible bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tree with everything the archive must keep (and a socket it must skip).
pub(crate) fn build_tree(root: &Path) -> Vec<Source> {
    let data = root.join("data");
    let config = root.join("config");
    fs::create_dir_all(data.join("a/b/c")).unwrap();
    fs::create_dir_all(data.join("empty")).unwrap();
    fs::create_dir_all(data.join("ro")).unwrap();
    fs::create_dir_all(&config).unwrap();
    write_file(&data.join("a/b/c/deep.txt"), b"deep content\n", 0o644);
    write_file(&data.join("secret"), b"key material", 0o600);
    write_file(&data.join("script.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(
        &data.join("big.bin"),
        &noise(3 * BUF_SIZE + 12345, 7),
        0o640,
    );
    write_file(&data.join("ro/inside"), b"read-only dir content", 0o444);
    write_file(&data.join("owned"), b"owned by git", 0o640);
    fs::hard_link(data.join("secret"), data.join("secret-hardlink")).unwrap();
    write_file(
        &config.join("gitlab.rb"),
        b"external_url 'http://x'\n",
        0o600,
    );
    symlink("b/c/deep.txt", data.join("a/link")).unwrap();
    let _listener = UnixListener::bind(data.join("sock")).unwrap();
    if is_root() {
        chown(data.join("owned"), Some(998), Some(997)).unwrap();
        chown(data.join("a/b"), Some(998), Some(998)).unwrap();
    }
    for p in [
        "a/b/c/deep.txt",
        "secret",
        "script.sh",
        "big.bin",
        "ro/inside",
        "owned",
    ] {
        set_mtime(&data.join(p), T0 + 17);
    }
    for p in ["a/b/c", "a/b", "a", "empty", ""] {
        set_mtime(&data.join(p), T0 + 5);
    }
    fs::set_permissions(data.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    set_mtime(&data.join("ro"), T0 + 9);
    vec![
        Source {
            prefix: "config".into(),
            dir: config,
        },
        Source {
            prefix: "data".into(),
            dir: data,
        },
    ]
}

pub(crate) fn header() -> serde_json::Value {
    serde_json::json!({"backup_id": "b-1", "instance": {"name": "ci-2"}, "gitlab": "17.0.1-ce.0"})
}

pub(crate) fn write(sources: &[Source]) -> (Vec<u8>, ArchiveSummary) {
    let mut out = Vec::new();
    let mut calls = 0;
    let summary = write_archive(
        &header(),
        sources,
        CompressionOptions {
            level: 3,
            threads: 2,
        },
        &mut out,
        &mut |_| calls += 1,
    )
    .unwrap();
    assert!(calls >= 1);
    (out, summary)
}

/// The index JSON lines the writer handed back.
pub(crate) fn index_bytes(summary: &ArchiveSummary) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = vec![0u8; summary.index.size as usize];
    summary.index_file.read_exact_at(&mut out, 0).unwrap();
    assert_eq!(
        blake3::hash(&out).to_hex().to_string(),
        summary.index.blake3
    );
    out
}

pub(crate) fn expected(summary: &ArchiveSummary) -> ExpectedIndex<'static> {
    ExpectedIndex::new(
        io::Cursor::new(index_bytes(summary)),
        Some((summary.index.size, &summary.index.blake3)),
    )
}

/// Every path under `root`, relative, sorted.
pub(crate) fn list(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Checks that `target` holds the trees of `sources` under their prefixes: the same
/// paths (sockets and fifos left out), types, modes, owners (when root), mtimes (but of
/// symlinks), contents and symlink targets.
pub(crate) fn assert_restored(sources: &[Source], target: &Path) {
    let special = |p: &Path| {
        let t = fs::symlink_metadata(p).unwrap().file_type();
        t.is_socket() || t.is_fifo()
    };
    let root = is_root();
    let mut expected_paths = Vec::new();
    for s in sources {
        expected_paths.push(PathBuf::from(&s.prefix));
        for p in list(&s.dir) {
            if !special(&s.dir.join(&p)) {
                expected_paths.push(Path::new(&s.prefix).join(p));
            }
        }
    }
    expected_paths.sort();
    assert_eq!(list(target), expected_paths);

    for s in sources {
        for rel in std::iter::once(PathBuf::new()).chain(list(&s.dir)) {
            if special(&s.dir.join(&rel)) {
                continue;
            }
            let a = s.dir.join(&rel);
            let b = target.join(&s.prefix).join(&rel);
            let (ma, mb) = (
                fs::symlink_metadata(&a).unwrap(),
                fs::symlink_metadata(&b).unwrap(),
            );
            assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
            assert_eq!(ma.mode(), mb.mode(), "{}", rel.display());
            if root {
                assert_eq!(
                    (ma.uid(), ma.gid()),
                    (mb.uid(), mb.gid()),
                    "{}",
                    rel.display()
                );
            }
            if ma.file_type().is_symlink() {
                assert_eq!(fs::read_link(&a).unwrap(), fs::read_link(&b).unwrap());
                continue;
            }
            assert_eq!(ma.mtime(), mb.mtime(), "{}", rel.display());
            if ma.is_file() {
                assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
            }
        }
    }
}

#[test]
fn round_trip_keeps_content_owners_modes_mtimes_and_links() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_tree(src.path());
    let (bytes, summary) = write(&sources);
    let index = &ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
    let totals = &summary.index;

    assert_eq!(summary.archive_size, bytes.len() as u64);
    assert_eq!(
        summary.archive_hash,
        blake3::hash(&bytes).to_hex().to_string()
    );
    assert_eq!(
        index.skipped,
        vec![Skipped {
            path: "data/sock".into(),
            reason: "unix socket".into()
        }]
    );
    assert!(index.changed_while_read.is_empty());
    assert_eq!((totals.files, totals.dirs, totals.symlinks), (8, 7, 1));
    assert_eq!(&index.to_jsonl(), &index_bytes(&summary));
    // Deterministic order: the prefix first, then children sorted by name.
    let paths: Vec<&str> = index.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(&paths[..3], &["config", "config/gitlab.rb", "data"]);
    assert_eq!(read_header(&bytes[..]).unwrap(), header());

    let (h, idx) = verify_archive(
        &bytes[..],
        Some(expected(&summary)),
        Some((summary.archive_size, &summary.archive_hash)),
    )
    .unwrap();
    assert_eq!(h, header());
    assert_eq!(&idx, totals);

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("restored");
    let mut last = Progress::default();
    let (h, idx) = extract_archive(
        &bytes[..],
        &target,
        expected(&summary),
        Some((summary.archive_size, &summary.archive_hash)),
        &mut |p| last = p,
    )
    .unwrap();
    assert_eq!(h, header());
    assert_eq!(&idx, totals);
    assert_eq!(last.bytes, totals.bytes);

    assert_restored(&sources, &target);
    let root = is_root();
    let owned = fs::metadata(target.join("data/owned")).unwrap();
    if root {
        assert_eq!((owned.uid(), owned.gid()), (998, 997));
    }
    assert_eq!(
        fs::metadata(target.join("data/ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(target.join("data/secret")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(target.join("data/script.sh")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read_link(target.join("data/a/link")).unwrap(),
        Path::new("b/c/deep.txt")
    );
    assert!(fs::metadata(target.join("data/empty")).unwrap().is_dir());
    // Hard links come back as separate files.
    assert_eq!(
        fs::metadata(target.join("data/secret-hardlink"))
            .unwrap()
            .nlink(),
        1
    );
    // Let the temp dirs be removed.
    for d in [src.path().join("data/ro"), target.join("data/ro")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn extraction_never_gives_setuid_setgid_or_sticky_to_files() {
    let src = tempfile::tempdir().unwrap();
    let data = src.path().join("data");
    fs::create_dir_all(data.join("shared")).unwrap();
    for (name, mode) in [
        ("suid", 0o4755),
        ("sgid", 0o2755),
        ("sticky", 0o1644),
        ("plain", 0o755),
    ] {
        fs::write(data.join(name), b"#!/bin/sh\nid\n").unwrap();
        fs::set_permissions(data.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    // GitLab's repositories directory: setgid on a directory is kept.
    fs::set_permissions(data.join("shared"), fs::Permissions::from_mode(0o2770)).unwrap();
    let sources = vec![Source {
        prefix: "data".into(),
        dir: data.clone(),
    }];
    let (bytes, summary) = write(&sources);
    // The archive records the modes as they were: only extraction strips them.
    let index = ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
    let suid = index
        .entries
        .iter()
        .find(|e| e.path == "data/suid")
        .unwrap();
    assert_eq!(suid.mode, 0o4755);

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("t");
    let (_, got) =
        extract_archive(&bytes[..], &target, expected(&summary), None, &mut |_| {}).unwrap();
    let mode = |p: &str| fs::metadata(target.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("data/suid"), 0o755);
    assert_eq!(mode("data/sgid"), 0o755);
    assert_eq!(mode("data/sticky"), 0o644);
    assert_eq!(mode("data/plain"), 0o755);
    assert_eq!(mode("data/shared"), 0o2770);
    assert_eq!(
        got.modes_stripped,
        vec![
            "data/sgid".to_string(),
            "data/sticky".into(),
            "data/suid".into()
        ]
    );
    assert_eq!(got.modes_stripped_count, 3);
}

#[test]
fn same_tree_gives_same_index() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_tree(src.path());
    let (_, a) = write(&sources);
    let (_, b) = write(&sources);
    assert_eq!(a.index, b.index);
    assert_eq!(index_bytes(&a), index_bytes(&b));
    fs::set_permissions(
        src.path().join("data/ro"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn extract_refuses_a_non_empty_target() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"x").unwrap();
    let sources = [Source {
        prefix: "data".into(),
        dir: src.path().to_path_buf(),
    }];
    let (bytes, summary) = write(&sources);
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join("already"), b"x").unwrap();
    let err = extract_archive(
        &bytes[..],
        out.path(),
        expected(&summary),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_input", "{err}");
    // An existing empty directory is fine.
    let empty = out.path().join("empty");
    fs::create_dir(&empty).unwrap();
    extract_archive(&bytes[..], &empty, expected(&summary), None, &mut |_| {}).unwrap();
    assert_eq!(fs::read(empty.join("data/f")).unwrap(), b"x");
}

#[test]
fn bad_sources_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().to_path_buf();
    for prefixes in [&["a", "a"][..], &["girofle"], &["a/b"], &[""], &[".."]] {
        let sources: Vec<Source> = prefixes
            .iter()
            .map(|p| Source {
                prefix: (*p).into(),
                dir: dir.clone(),
            })
            .collect();
        let err = write_archive(
            &header(),
            &sources,
            CompressionOptions::default(),
            io::sink(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), "invalid_input", "{prefixes:?}: {err}");
    }
}

fn corruption_sample() -> (Vec<u8>, ArchiveSummary) {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    for i in 0..40 {
        let text = format!("line {i} of a compressible text file\n").repeat(200);
        fs::write(src.path().join(format!("d/t{i:02}.txt")), text).unwrap();
    }
    fs::write(src.path().join("noise.bin"), noise(200_000, 3)).unwrap();
    symlink("d/t00.txt", src.path().join("l")).unwrap();
    write(&[Source {
        prefix: "data".into(),
        dir: src.path().to_path_buf(),
    }])
}

#[test]
fn verify_detects_flipped_bytes_anywhere() {
    let (bytes, summary) = corruption_sample();
    verify_archive(&bytes[..], None, None).unwrap();
    let n = bytes.len();
    let mut positions: Vec<usize> = (0..100).map(|i| i * n / 100).collect();
    positions.extend([1, 2, 3, 4, 5, 6, n - 4, n - 3, n - 2, n - 1]);
    for pos in positions {
        for flip in [0xFFu8, 0x01, 0x10] {
            let mut bad = bytes.clone();
            bad[pos] ^= flip;
            // Structure, zstd checksum and per-file hashes alone...
            let err = verify_archive(&bad[..], None, None);
            assert!(
                matches!(err, Err(Error::Corrupt { .. })),
                "byte {pos}/{n} ^ {flip:#x} not detected: {err:?}"
            );
            // ...and with the manifest and the archive hash.
            let err = verify_archive(
                &bad[..],
                Some(expected(&summary)),
                Some((summary.archive_size, &summary.archive_hash)),
            );
            assert!(matches!(err, Err(Error::Corrupt { .. })), "{pos}");
        }
    }
}

#[test]
fn a_damaged_index_beside_the_archive_is_refused() {
    let (bytes, summary) = corruption_sample();
    let index = index_bytes(&summary);
    let check = Some((summary.index.size, summary.index.blake3.as_str()));
    verify_archive(
        &bytes[..],
        Some(ExpectedIndex::new(&index[..], check)),
        None,
    )
    .unwrap();
    let n = index.len();
    for pos in [0, n / 3, n / 2, n - 2, n - 1] {
        let mut bad = index.clone();
        bad[pos] ^= 0x01;
        let err = verify_archive(&bytes[..], Some(ExpectedIndex::new(&bad[..], check)), None);
        assert!(matches!(err, Err(Error::Corrupt { .. })), "{pos}: {err:?}");
    }
    // Cut, or with a line more.
    let err = verify_archive(
        &bytes[..],
        Some(ExpectedIndex::new(&index[..n - 10], check)),
        None,
    );
    assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
    let mut longer = index.clone();
    longer.extend_from_slice(b"{\"changed_while_read\":\"data/x\"}\n");
    let err = verify_archive(
        &bytes[..],
        Some(ExpectedIndex::new(&longer[..], None)),
        None,
    );
    assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
}

/// GNU tar reads what Girofle writes, long names and long link targets included.
#[test]
fn gnu_tar_reads_the_archive() {
    let src = tempfile::tempdir().unwrap();
    let long = "n".repeat(120);
    fs::create_dir(src.path().join(&long)).unwrap();
    fs::write(src.path().join(&long).join(&long), b"deep").unwrap();
    symlink(format!("{long}/{long}"), src.path().join("l")).unwrap();
    let (bytes, summary) = write(&[Source {
        prefix: "data".into(),
        dir: src.path().to_path_buf(),
    }]);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("t");
    extract_archive(&bytes[..], &target, expected(&summary), None, &mut |_| {}).unwrap();
    assert_eq!(
        fs::read_link(target.join("data/l")).unwrap(),
        Path::new(&format!("{long}/{long}"))
    );
    let tarball = out.path().join("a.tar.zst");
    fs::write(&tarball, &bytes).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("--zstd")
        .arg("-tvf")
        .arg(&tarball)
        .output();
    let Ok(listed) = listed else { return };
    if !listed.status.success() {
        // No zstd support in this tar: nothing to compare with.
        return;
    }
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(&format!("data/{long}/{long}")), "{text}");
    assert!(text.contains(&format!("data/l -> {long}/{long}")), "{text}");
    assert!(text.contains(INDEX_PATH), "{text}");
}

#[test]
fn verify_detects_truncation_and_trailing_bytes() {
    let (bytes, summary) = corruption_sample();
    let n = bytes.len();
    for len in [0, 3, 10, 100, n / 3, n / 2, n - 100, n - 5, n - 1] {
        let err = verify_archive(&bytes[..len], None, None);
        assert!(
            matches!(err, Err(Error::Corrupt { .. })),
            "{len}/{n}: {err:?}"
        );
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"garbage");
    assert!(verify_archive(&longer[..], None, None).is_err());
    // A different archive of the right shape is caught by the archive hash.
    let err = verify_archive(&bytes[..], None, Some((summary.archive_size, "00")));
    assert!(matches!(err, Err(Error::Corrupt { .. })), "{err:?}");
}

#[test]
fn input_errors_are_io_errors() {
    let (bytes, _) = corruption_sample();
    let failing = bytes[..bytes.len() / 2].chain(FailingReader);
    let err = verify_archive(failing, None, None).unwrap_err();
    assert_eq!(err.kind(), "io", "{err}");
}

#[derive(Debug)]
struct FailingReader;
impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "network down",
        ))
    }
}

// --- hostile archives -------------------------------------------------------------

/// A compressed archive of `entries` (the shared builder of `crate::testing`) with the
/// header of these tests; also returns its index, as the manifest.
fn hostile(entries: &[Raw]) -> (Vec<u8>, ArchiveIndex) {
    crate::testing::hostile(&header(), entries)
}

/// Extracts into `<tmp>/target` and checks that the archive was refused with a
/// message containing `why`, and that nothing appeared beside the target.
fn assert_refused(bytes: &[u8], manifest: &ArchiveIndex, why: &str) {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("target");
    let err = extract_archive(
        bytes,
        &target,
        ExpectedIndex::from_index(manifest),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains(why),
        "expected a refusal with `{why}`, got: {err}"
    );
    assert_eq!(list(base.path()).first(), Some(&PathBuf::from("target")));
    for p in list(base.path()) {
        assert!(p.starts_with("target"), "{} written outside", p.display());
    }
    // The same archive does not pass verification either.
    assert!(verify_archive(bytes, Some(ExpectedIndex::from_index(manifest)), None).is_err());
    // Nor an extraction into tar streams, for the very same reason.
    let mut targets = vec![TarTarget {
        prefix: "data".to_string(),
        out: Vec::new(),
    }];
    let into_tar = crate::extract_archive_to_tars(
        bytes,
        &mut targets,
        ExpectedIndex::from_index(manifest),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(into_tar.to_string(), err.to_string());
}

/// Entries out of their place in the walk, below a directory entry named `root` (`data`
/// in an archive, `.` in an engine's tar stream), and what their refusal says: the archive
/// readers and the tar-stream writer refuse them alike.
pub(crate) fn misplaced_entries(root: &str) -> Vec<(Vec<Raw>, &'static str)> {
    let p = |rel: &str| format!("{root}/{rel}");
    vec![
        (vec![dir(root), file(&p("../evil"), b"x")], "`..`"),
        (
            vec![dir(root), file(&p("a"), b"x"), file(&p("a"), b"x")],
            "duplicate",
        ),
        (
            vec![dir(root), file(&p("b"), b"x"), file(&p("a"), b"x")],
            "out of order",
        ),
        // A directory once left is closed: nothing can be put in it later (which
        // would also be a way to write a second `a/x`).
        (
            vec![
                dir(root),
                dir(&p("a")),
                file(&p("b"), b"x"),
                file(&p("a/x"), b"x"),
            ],
            "not in the archive before it",
        ),
        (
            vec![
                dir(root),
                dir(&p("d")),
                link(&p("l"), "d"),
                file(&p("l/x"), b"x"),
            ],
            "symlink",
        ),
        (
            vec![dir(root), file(&p("f"), b"x"), file(&p("f/x"), b"x")],
            "is a file",
        ),
    ]
}

#[test]
fn hostile_paths_are_refused() {
    let base = tempfile::tempdir().unwrap();
    let abs = base.path().join("abs-evil");
    let abs = abs.to_str().unwrap();
    let long = format!("data/{}", "x".repeat(150));
    let long_evil = format!("data/{}/../../../evil", "x".repeat(120));
    let huge = format!("data/{}", "x".repeat(MAX_LONG_NAME as usize));
    let mut cases: Vec<(Vec<Raw>, &str)> = misplaced_entries("data");
    cases.extend([
        (vec![dir("data"), file(abs, b"x")], "absolute path"),
        (vec![dir("data"), file("data/./x", b"x")], "`.`"),
        (vec![file("evil", b"x")], "known prefix"),
        (
            vec![dir("data"), file("other/x", b"x")],
            "not in the archive before it",
        ),
        (vec![dir("data"), dir("data")], "duplicate"),
        (vec![dir("data"), file("girofle/extra", b"x")], "reserved"),
        (vec![dir("data"), link("data/l", "/etc")], "absolute path"),
        (vec![dir("data"), link("data/l", "../../evil")], "outside"),
        (
            vec![dir("data"), link("data/a", "b/../.."), link("data/b", "..")],
            "through other symlinks",
        ),
        (
            vec![dir("data"), link("data/a", "b"), link("data/b", "a")],
            "loop",
        ),
        (
            vec![dir("data"), dir("data/d"), link("data/d/l", "../../../x")],
            "outside",
        ),
        (
            vec![
                dir("data"),
                link("data/up", ".."),
                file("data/up/evil", b"x"),
            ],
            "symlink",
        ),
        (
            vec![
                dir("data"),
                file("data/a", b"x"),
                Raw {
                    link: Some("data/a".into()),
                    ..raw("data/h", tar::EntryType::Link)
                },
            ],
            "hard link",
        ),
        (
            vec![dir("data"), raw("data/fifo", tar::EntryType::Fifo)],
            "fifo",
        ),
        (
            vec![dir("data"), raw("data/null", tar::EntryType::Char)],
            "device",
        ),
        (
            vec![dir("data"), raw("data/sda", tar::EntryType::Block)],
            "device",
        ),
        (
            vec![
                dir("data"),
                Raw {
                    name: Name::GnuLong,
                    ..file(&long_evil, b"x")
                },
            ],
            "`..`",
        ),
        (
            vec![
                dir("data"),
                Raw {
                    name: Name::Pax,
                    ..file("data/../pax-evil", b"x")
                },
            ],
            "`..`",
        ),
        (
            vec![
                dir("data"),
                Raw {
                    name: Name::Pax,
                    ..file(abs, b"x")
                },
            ],
            "absolute path",
        ),
        // Long names are read into memory: their size is bounded.
        (
            vec![
                dir("data"),
                Raw {
                    name: Name::GnuLong,
                    ..file(&huge, b"x")
                },
            ],
            "GNU long name entry of",
        ),
        (
            vec![
                dir("data"),
                Raw {
                    name: Name::Pax,
                    ..file(&huge, b"x")
                },
            ],
            "PAX header entry of",
        ),
    ]);
    for (entries, why) in cases {
        let (bytes, manifest) = hostile(&entries);
        assert_refused(&bytes, &manifest, why);
    }
    assert!(!abs.is_empty() && !Path::new(abs).exists());

    // Long names that pass the rules are fine, GNU or PAX.
    let entries = vec![
        dir("data"),
        Raw {
            name: Name::GnuLong,
            ..file(&long, b"gnu")
        },
        Raw {
            name: Name::Pax,
            ..file(&format!("{long}-pax"), b"pax")
        },
        link("data/zz-ok", "x/../x"),
    ];
    let (bytes, manifest) = hostile(&entries);
    let out = tempfile::tempdir().unwrap();
    extract_archive(
        &bytes[..],
        out.path(),
        ExpectedIndex::from_index(&manifest),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fs::read(out.path().join(&long)).unwrap(), b"gnu");
    assert_eq!(
        fs::read(out.path().join(format!("{long}-pax"))).unwrap(),
        b"pax"
    );
}

#[test]
fn entries_must_match_the_manifest() {
    let entries = vec![
        dir("data"),
        file("data/a", b"hello"),
        file("data/b", b"world"),
    ];
    let (bytes, manifest) = hostile(&entries);

    // An entry absent from the manifest.
    let mut without_b = manifest.clone();
    without_b.entries.retain(|e| e.path != "data/b");
    assert_refused(&bytes, &without_b, "not listed in the manifest");

    // A manifest entry absent from the archive.
    let mut with_c = manifest.clone();
    with_c.entries.push(listed(&file("data/c", b"!")));
    assert_refused(&bytes, &with_c, "missing");

    // Content that does not match the manifest's hash.
    let mut other_hash = manifest.clone();
    other_hash.entries[1].hash = Some(blake3::hash(b"HELLO").to_hex().to_string());
    assert_refused(&bytes, &other_hash, "hash");

    // A header that lies about the size (the index inside agrees with the lie).
    let lying = vec![
        dir("data"),
        Raw {
            header_size: Some(9),
            ..file("data/a", b"hello")
        },
    ];
    let (bytes, manifest) = hostile(&lying);
    assert_refused(&bytes, &manifest, "size 9 vs 5");

    // A size that differs from the manifest's, everything else equal.
    let (bytes, mut manifest) = hostile(&[dir("data"), file("data/a", b"hello")]);
    manifest.entries[1].size = 4;
    assert_refused(&bytes, &manifest, "size 5 vs 4");

    // The valid archive extracts.
    let (bytes, manifest) = hostile(&entries);
    let out = tempfile::tempdir().unwrap();
    extract_archive(
        &bytes[..],
        out.path(),
        ExpectedIndex::from_index(&manifest),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fs::read(out.path().join("data/b")).unwrap(), b"world");
}

#[test]
fn channel_adapters_stream_in_chunks() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let data = noise(3 * BUF_SIZE + 10, 9);
    let d = data.clone();
    let producer = std::thread::spawn(move || {
        let mut w = ChannelWriter::new(tx);
        for part in d.chunks(100_000) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap();
    });
    let (tx2, rx2) = mpsc::channel::<io::Result<Bytes>>(8);
    let sizes = rt.block_on(async move {
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.unwrap();
            sizes.push(chunk.len());
            tx2.send(Ok(chunk)).await.unwrap();
        }
        tx2.send(Err(io::Error::other("boom"))).await.unwrap();
        sizes
    });
    producer.join().unwrap();
    assert_eq!(sizes, vec![BUF_SIZE, BUF_SIZE, BUF_SIZE, 10]);
    let mut reader = ChannelReader::new(rx2);
    let mut got = vec![0u8; data.len()];
    reader.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(reader.read(&mut [0u8; 8]).unwrap_err().to_string(), "boom");

    // A writer whose receiver is gone fails with BrokenPipe.
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
    drop(rx);
    let mut w = ChannelWriter::with_chunk_size(tx, 4);
    let err = w.write_all(b"12345678").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn archive_streams_through_channels() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_tree(src.path());
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let writer = std::thread::spawn(move || {
        let mut w = ChannelWriter::new(tx);
        let s = write_archive(
            &header(),
            &sources,
            CompressionOptions::default(),
            &mut w,
            &mut |_| {},
        );
        w.finish().unwrap();
        (s.unwrap(), sources)
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt.block_on(async move {
        let mut all = Vec::new();
        while let Some(c) = rx.recv().await {
            all.extend_from_slice(&c.unwrap());
        }
        all
    });
    let (summary, _) = writer.join().unwrap();
    assert_eq!(summary.archive_size, stored.len() as u64);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let feeder = std::thread::spawn(move || {
        for c in stored.chunks(70_000) {
            tx.blocking_send(Ok(Bytes::copy_from_slice(c))).unwrap();
        }
    });
    verify_archive(
        ChannelReader::new(rx),
        Some(expected(&summary)),
        Some((summary.archive_size, &summary.archive_hash)),
    )
    .unwrap();
    feeder.join().unwrap();
    fs::set_permissions(
        src.path().join("data/ro"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}
