//! Unit tests of archives from and to tar streams: the same tree gives the same archive
//! whether read from its directory or from an engine's tar of it (made here as Docker
//! makes it, and by GNU tar); an extraction into tar streams unpacks to the tree; hostile
//! streams and forged archives are refused as the directory writer and extractor refuse
//! them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::tar_stream::*;
use crate::testing::{append_pax, dir, file, pax_record, plain_tar, raw, set_raw, sources_of, Raw};
use crate::tests::*;
use crate::*;

/// The tar stream Docker's archive API gives of `root`: `./` first, then depth first with
/// names in byte order (Go's `filepath.WalkDir`), `./`-prefixed names (PAX `path` when
/// long), numeric owners, a hard link for every later name of a file, no sockets.
fn engine_tar(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    engine_walk(&mut b, root, "", &mut HashMap::new());
    b.into_inner().unwrap()
}

fn engine_walk(
    b: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    rel: &str,
    inodes: &mut HashMap<(u64, u64), String>,
) {
    let path = root.join(rel);
    let m = fs::symlink_metadata(&path).unwrap();
    let t = m.file_type();
    if t.is_socket() {
        return;
    }
    let name = match rel {
        "" => "./".to_string(),
        _ if t.is_dir() => format!("./{rel}/"),
        _ => format!("./{rel}"),
    };
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    h.set_mtime(m.mtime() as u64);
    let mut data: Vec<u8> = Vec::new();
    if t.is_symlink() {
        let target = fs::read_link(&path).unwrap();
        set_raw(
            &mut h.as_old_mut().linkname,
            target.to_str().unwrap().as_bytes(),
        );
    } else if t.is_file() && m.nlink() > 1 && inodes.contains_key(&(m.dev(), m.ino())) {
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        let first = &inodes[&(m.dev(), m.ino())];
        set_raw(
            &mut h.as_old_mut().linkname,
            format!("./{first}").as_bytes(),
        );
    } else if t.is_file() {
        inodes.insert((m.dev(), m.ino()), rel.to_string());
        data = fs::read(&path).unwrap();
    }
    if name.len() > 100 {
        append_pax(b, &pax_record("path", name.as_bytes()));
        set_raw(&mut h.as_old_mut().name, b"./placeholder");
    } else {
        set_raw(&mut h.as_old_mut().name, name.as_bytes());
    }
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    if t.is_dir() {
        let mut names: Vec<String> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            engine_walk(b, root, &child, inodes);
        }
    }
}

/// Reads a file of `root` again, for the hard links of its stream.
fn reopen_in(root: &Path) -> Option<Reopen> {
    let root = root.to_path_buf();
    Some(Box::new(move |rel: &str| {
        let f: Box<dyn Read> = Box::new(File::open(root.join(rel))?);
        Ok(f)
    }))
}

fn from_tars(sources: Vec<TarSource<Cursor<Vec<u8>>>>) -> Result<(Vec<u8>, ArchiveSummary)> {
    let mut out = Vec::new();
    let opts = CompressionOptions {
        level: 3,
        threads: 0,
    };
    let summary = write_archive_from_tars(&header(), sources, opts, &mut out, &mut |_| {})?;
    Ok((out, summary))
}

fn tar_sources(
    sources: &[Source],
    make: impl Fn(&Path) -> Vec<u8>,
) -> Vec<TarSource<Cursor<Vec<u8>>>> {
    sources
        .iter()
        .map(|s| TarSource {
            prefix: s.prefix.clone(),
            tar: Cursor::new(make(&s.dir)),
            reopen: reopen_in(&s.dir),
        })
        .collect()
}

/// The decompressed archive between its header and index entries (whose mtimes are the
/// time of writing): the entries of the trees.
fn trees_of(archive: &[u8]) -> Vec<u8> {
    let tar = zstd::decode_all(archive).unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let at: Vec<(Vec<u8>, usize)> = a
        .entries()
        .unwrap()
        .raw(true)
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.raw_header_position() as usize,
            )
        })
        .collect();
    assert_eq!(at[0].0, HEADER_PATH.as_bytes());
    let (last, end) = at.last().unwrap();
    assert_eq!(last, INDEX_PATH.as_bytes());
    tar[at[1].1..*end].to_vec()
}

/// A tree with what only some trees hold: a name too long for a tar header, a fifo.
fn build_wider_tree(root: &Path) -> Vec<Source> {
    let sources = build_tree(root);
    let data = root.join("data");
    let long = "n".repeat(120);
    fs::create_dir(data.join(&long)).unwrap();
    write_file(&data.join(&long).join(&long), b"deep and long", 0o640);
    let made = std::process::Command::new("mkfifo")
        .arg(data.join("fifo"))
        .status()
        .expect("mkfifo (coreutils) is needed by this test");
    assert!(made.success());
    set_mtime(&data.join(&long), 1_600_000_000);
    set_mtime(&data, 1_600_000_005);
    sources
}

#[test]
fn tar_streams_give_the_archive_of_their_directories() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_wider_tree(src.path());
    let (from_dirs, dir_summary) = write(&sources);
    let (from_streams, tar_summary) = from_tars(tar_sources(&sources, engine_tar)).unwrap();

    // The same entries, with the same owners, modes, mtimes, sizes, hashes and targets;
    // the same skips but the socket, which an engine's tar cannot hold.
    let by_dir = ArchiveIndex::from_jsonl(&index_bytes(&dir_summary)).unwrap();
    let by_tar = ArchiveIndex::from_jsonl(&index_bytes(&tar_summary)).unwrap();
    assert_eq!(by_tar.entries, by_dir.entries);
    let no_socket: Vec<_> = by_dir
        .skipped
        .iter()
        .filter(|s| s.reason != "unix socket")
        .cloned()
        .collect();
    assert_eq!(no_socket.len(), by_dir.skipped.len() - 1);
    assert!(no_socket
        .iter()
        .any(|s| s.path == "data/fifo" && s.reason == "fifo"));
    assert_eq!(by_tar.skipped, no_socket);
    assert!(by_tar.changed_while_read.is_empty());
    // The hard link is a whole file, as from the directory.
    let hardlink = by_tar
        .entries
        .iter()
        .find(|e| e.path == "data/secret-hardlink")
        .unwrap();
    assert_eq!(
        hardlink.hash,
        Some(blake3::hash(b"key material").to_hex().to_string())
    );
    // Byte for byte the same archive but for the times of writing and the index.
    assert_eq!(trees_of(&from_streams), trees_of(&from_dirs));

    assert_extracts_to(&from_streams, &tar_summary, &sources);
    make_removable(&[src.path()]);
}

/// Extracts `archive` into a new directory, which must then hold `sources`.
fn assert_extracts_to(archive: &[u8], summary: &ArchiveSummary, sources: &[Source]) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("restored");
    let check = Some((summary.archive_size, summary.archive_hash.as_str()));
    extract_archive(archive, &target, expected(summary), check, &mut |_| {}).unwrap();
    assert_restored(sources, &target);
    make_removable(&[&target]);
}

/// Gives back write access to the read-only directory of `build_tree`, so the temporary
/// directories can be removed.
fn make_removable(roots: &[&Path]) {
    use std::os::unix::fs::PermissionsExt;
    for r in roots {
        let ro = r.join("data/ro");
        if ro.exists() {
            fs::set_permissions(ro, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// GNU tar's streams (GNU long names, hard links, sparse files) give the same entries.
#[test]
fn gnu_tar_streams_give_the_same_entries() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_wider_tree(src.path());
    // A sparse file: 1 MiB with two written blocks, holes elsewhere.
    let sparse = src.path().join("data/sparse");
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(&sparse).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 600_000).unwrap();
    }
    set_mtime(&sparse, 1_600_000_017);
    set_mtime(&src.path().join("data"), 1_600_000_005);
    let gnu_tar = |dir: &Path| {
        let out = std::process::Command::new("tar")
            .args([
                "--format=gnu",
                "--sort=name",
                "--sparse",
                "--numeric-owner",
                "-C",
            ])
            .arg(dir)
            .args(["-cf", "-", "."])
            .output()
            .expect("GNU tar is needed by this test: install it (apt-get install tar)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let streams = tar_sources(&sources, gnu_tar);
    assert!(
        streams.iter().any(|s| {
            let mut a = tar::Archive::new(&s.tar.get_ref()[..]);
            a.entries()
                .unwrap()
                .any(|e| e.unwrap().header().entry_type() == tar::EntryType::GNUSparse)
        }),
        "GNU tar wrote no sparse entry: the test does not test them"
    );
    let (from_streams, tar_summary) = from_tars(streams).unwrap();
    let (_, dir_summary) = write(&sources);
    let by_dir = ArchiveIndex::from_jsonl(&index_bytes(&dir_summary)).unwrap();
    let by_tar = ArchiveIndex::from_jsonl(&index_bytes(&tar_summary)).unwrap();
    assert_eq!(by_tar.entries, by_dir.entries);

    assert_extracts_to(&from_streams, &tar_summary, &sources);
    make_removable(&[src.path()]);
}

/// Unpacks each target's tar with the `tar` crate, as an engine would import it. The
/// crate neither applies the directory's own entry `./` (Girofle's import filter gives its
/// owner, mode and mtime to the directory) nor directories' mtimes (Docker's unpacker sets
/// them last): both are done here from the headers.
fn unpack(targets: &[TarTarget<Vec<u8>>], into: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for t in targets {
        assert_eq!(&t.out[t.out.len() - 1024..], &[0u8; 1024][..]);
        let dir = into.join(&t.prefix);
        let mut a = tar::Archive::new(&t.out[..]);
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.set_preserve_ownerships(is_root());
        a.unpack(&dir).unwrap();
        let mut a = tar::Archive::new(&t.out[..]);
        for (i, e) in a.entries().unwrap().enumerate() {
            let e = e.unwrap();
            let h = e.header();
            if h.entry_type() != tar::EntryType::Directory {
                continue;
            }
            let name = e.path_bytes();
            let name = std::str::from_utf8(&name).unwrap();
            let path = dir.join(name.trim_start_matches("./"));
            if i == 0 {
                assert_eq!(name, "./");
                if is_root() {
                    let (uid, gid) = (h.uid().unwrap() as u32, h.gid().unwrap() as u32);
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(h.mode().unwrap())).unwrap();
            }
            set_mtime(&path, h.mtime().unwrap() as i64);
        }
    }
}

fn targets(prefixes: &[&str]) -> Vec<TarTarget<Vec<u8>>> {
    prefixes
        .iter()
        .map(|p| TarTarget {
            prefix: p.to_string(),
            out: Vec::new(),
        })
        .collect()
}

#[test]
fn extraction_into_tar_streams_unpacks_to_the_tree() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_wider_tree(src.path());
    let (bytes, summary) = write(&sources);
    let mut outs = targets(&["config", "data"]);
    let (h, totals) = extract_archive_to_tars(
        &bytes[..],
        &mut outs,
        expected(&summary),
        Some((summary.archive_size, &summary.archive_hash)),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(h, header());
    assert_eq!(totals, summary.index);
    let out = tempfile::tempdir().unwrap();
    unpack(&outs, out.path());
    assert_restored(&sources, out.path());

    // And the streams give back the very archive they came from, but its index entry.
    let (again, again_summary) = from_tars(sources_of(outs)).unwrap();
    assert_eq!(trees_of(&again), trees_of(&bytes));
    let first = ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
    let again_index = ArchiveIndex::from_jsonl(&index_bytes(&again_summary)).unwrap();
    assert_eq!(again_index.entries, first.entries);
    make_removable(&[src.path(), out.path()]);
}

#[test]
fn extraction_into_tar_streams_strips_privilege_bits_as_into_a_directory() {
    let src = tempfile::tempdir().unwrap();
    let data = src.path().join("data");
    fs::create_dir(&data).unwrap();
    write_file(&data.join("suid"), b"#!/bin/sh\n", 0o4755);
    let sources = vec![Source {
        prefix: "data".into(),
        dir: data,
    }];
    let (bytes, summary) = write(&sources);
    let mut outs = targets(&["data"]);
    let (_, totals) =
        extract_archive_to_tars(&bytes[..], &mut outs, expected(&summary), None, &mut |_| {})
            .unwrap();
    assert_eq!(totals.modes_stripped, vec!["data/suid".to_string()]);
    let mut a = tar::Archive::new(&outs[0].out[..]);
    let modes: Vec<(Vec<u8>, u32)> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path_bytes().into_owned(), e.header().mode().unwrap())
        })
        .collect();
    assert_eq!(modes[1], (b"./suid".to_vec(), 0o755));
}

#[test]
fn targets_must_match_the_archive_sources() {
    let src = tempfile::tempdir().unwrap();
    let sources = build_tree(src.path());
    let (bytes, summary) = write(&sources);
    for (prefixes, why) in [
        (&["data"][..], "no target was given for it"),
        (&["config", "data", "logs"][..], "holds no source `logs`"),
        (&["data", "data"][..], "given twice"),
    ] {
        let mut outs = targets(prefixes);
        let err =
            extract_archive_to_tars(&bytes[..], &mut outs, expected(&summary), None, &mut |_| {})
                .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }) && err.to_string().contains(why),
            "{prefixes:?}: {err}"
        );
    }
    make_removable(&[src.path()]);
}

/// A forged archive whose content differs from its manifest is refused by the extraction
/// into tar streams with the directory extractor's very error.
#[test]
fn a_forged_content_is_refused_as_by_the_directory_extractor() {
    let entries = [dir("data"), file("data/a", b"forged content")];
    let (bytes, mut manifest) = crate::testing::hostile(&header(), &entries);
    manifest.entries[1].hash = Some(blake3::hash(b"the real content").to_hex().to_string());
    let base = tempfile::tempdir().unwrap();
    let into_dir = extract_archive(
        &bytes[..],
        &base.path().join("t"),
        ExpectedIndex::from_index(&manifest),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    let mut outs = targets(&["data"]);
    let into_tar = extract_archive_to_tars(
        &bytes[..],
        &mut outs,
        ExpectedIndex::from_index(&manifest),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(into_tar.to_string().contains("content hash"), "{into_tar}");
    assert_eq!(into_tar.kind(), into_dir.kind());
    assert_eq!(into_tar.to_string(), into_dir.to_string());
    // No end blocks: the stream is unfinished, as it must be discarded.
    assert_ne!(
        outs[0].out.get(outs[0].out.len().saturating_sub(1024)..),
        Some(&[0u8; 1024][..])
    );
}

fn refused_stream(entries: &[Raw], reopen: Option<Reopen>) -> Error {
    let source = TarSource {
        prefix: "data".into(),
        tar: Cursor::new(plain_tar(entries)),
        reopen,
    };
    from_tars(vec![source]).unwrap_err()
}

/// What a hostile or broken engine could send is refused, naming the source's stream.
#[test]
fn hostile_tar_streams_are_refused() {
    let link_to = |path: &str, target: &str, kind| Raw {
        link: Some(target.into()),
        ..raw(path, kind)
    };
    let mut cases: Vec<(Vec<Raw>, &str)> = misplaced_entries(".");
    cases.extend([
        (
            vec![file("./a", b"x")],
            "does not start with the directory's own entry",
        ),
        (vec![], "it is empty"),
        (
            vec![dir("./"), file("a/../../evil", b"x")],
            "`..` component refused",
        ),
        (vec![dir("./"), file("/etc/passwd", b"x")], "refused"),
        (vec![dir("./"), dir(".")], "a second or non-directory entry"),
        (vec![file("./", b"x")], "a second or non-directory entry"),
        (
            vec![
                dir("./"),
                link_to("./l", "/etc", tar::EntryType::Symlink),
                file("./l/passwd", b"x"),
            ],
            "is a symlink",
        ),
        (
            vec![
                dir("./"),
                raw("./null", tar::EntryType::Char),
                file("./null/x", b"x"),
            ],
            "is a file",
        ),
        (
            vec![
                dir("./"),
                file("./x", b"x"),
                link_to("./y", "../../etc/shadow", tar::EntryType::Link),
            ],
            "outside the directory",
        ),
    ]);
    let src = tempfile::tempdir().unwrap();
    for (entries, why) in cases {
        let err = refused_stream(&entries, reopen_in(src.path()));
        assert!(
            matches!(err, Error::Corrupt { .. })
                && err.to_string().contains(why)
                && err.to_string().contains("tar stream"),
            "{entries:?}: expected `{why}`, got: {err}"
        );
    }

    // A hard link without a way to read its file again.
    let entries = [
        dir("./"),
        file("./a", b"x"),
        link_to("./b", "./a", tar::EntryType::Link),
    ];
    let err = refused_stream(&entries, None);
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("reopen"),
        "{err}"
    );

    // A stream cut inside a file: the engine failed, nothing is damaged.
    let mut cut = plain_tar(&[dir("./"), file("./big", &noise(10_000, 3))]);
    cut.truncate(512 * 3);
    let source = TarSource {
        prefix: "data".into(),
        tar: Cursor::new(cut),
        reopen: None,
    };
    let err = from_tars(vec![source]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// Devices and fifos in a stream are listed as skipped, as the directory writer lists
/// them; a file that vanished before its hard link was read again too.
#[test]
fn special_entries_are_skipped_as_from_a_directory() {
    let entries = [
        dir("./"),
        raw("./blk", tar::EntryType::Block),
        raw("./chr", tar::EntryType::Char),
        raw("./fifo", tar::EntryType::Fifo),
        Raw {
            link: Some("./gone".into()),
            ..raw("./link", tar::EntryType::Link)
        },
    ];
    let source = TarSource {
        prefix: "data".into(),
        tar: Cursor::new(plain_tar(&entries)),
        reopen: Some(Box::new(|_: &str| {
            Err(io::Error::new(io::ErrorKind::NotFound, "gone"))
        })),
    };
    let (_, summary) = from_tars(vec![source]).unwrap();
    let index = ArchiveIndex::from_jsonl(&index_bytes(&summary)).unwrap();
    let skipped: Vec<(&str, &str)> = index
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("data/blk", "block device"),
            ("data/chr", "character device"),
            ("data/fifo", "fifo"),
            ("data/link", "vanished while archiving"),
        ]
    );
    assert_eq!(index.entries.len(), 1);
}
