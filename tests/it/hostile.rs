//! Hostile and damaged backups, at the level a user sees them: archives made by hand to
//! escape the restore target, and copies of a real backup with one random byte flipped.
//! `backup verify` must call each one damaged (a `Corrupt` error, exit code 5), and
//! `restore --as` must refuse each one without creating anything: no container, no
//! instance directory, no inventory record, and not a byte outside its staging directory.
//!
//! girofle-archive's unit tests cover each rule on `extract_archive` itself; these put
//! the same attacks in a store behind a manifest that vouches for them.
//!
//! With `GIROFLE_FUZZ_SEEDS=<dir>` the archives made here are also written there as seeds
//! for the fuzz targets (`fuzz/`, `scripts/fuzz`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use girofle_archive::testing::{compress, dir, file, listed, raw, symlink, tar_of, Name, Raw};
use girofle_core::archive::{ArchiveIndex, EntryKind, FileEntry};
use girofle_core::backup::{
    ArchiveRef, BackupHeader, BackupOptions, IndexRef, Manifest, Strategy, FORMAT_VERSION,
};
use girofle_core::instance::{Bindings, InstanceRecord, Stage};
use girofle_core::restore::RestoreRequest;
use girofle_core::{CommissionRequest, Error, Girofle};
use girofle_tests::*;

// --- hand-made archives -----------------------------------------------------------------

// The builder of hand-made archives is `girofle_archive::testing`, shared with the
// archive crate's unit tests.

/// The manifest of a hand-made backup of a fictitious instance, vouching for exactly
/// these archive and index bytes.
fn manifest_of(
    id: &str,
    image: &str,
    archive: &[u8],
    index_bytes: &[u8],
    index: &ArchiveIndex,
) -> Manifest {
    let header = header_of(id, image);
    let count = |k: EntryKind| index.entries.iter().filter(|e| e.kind == k).count() as u64;
    Manifest {
        header,
        archive: ArchiveRef {
            key: format!("{id}.tar.zst"),
            size: archive.len() as u64,
            blake3: blake3::hash(archive).to_hex().to_string(),
        },
        index: IndexRef {
            key: format!("{id}.index"),
            size: index_bytes.len() as u64,
            blake3: blake3::hash(index_bytes).to_hex().to_string(),
            files: count(EntryKind::File),
            dirs: count(EntryKind::Dir),
            symlinks: count(EntryKind::Symlink),
            bytes: index.entries.iter().map(|e| e.size).sum(),
            skipped: 0,
            changed_while_read: 0,
        },
        duration_ms: 1,
        downtime_ms: None,
    }
}

fn header_of(id: &str, image: &str) -> BackupHeader {
    let name = id.split_once('/').unwrap().0.to_string();
    let bindings = Bindings {
        ip: IpAddr::from([127, 0, 0, 1]),
        http_port: 20080,
        https_port: 20081,
        ssh_port: 20082,
    };
    BackupHeader {
        format_version: FORMAT_VERSION,
        id: id.to_string(),
        instance: InstanceRecord {
            name,
            image: image.to_string(),
            bindings,
            hostname: None,
            external_url: "http://127.0.0.1:20080".into(),
            settings: BTreeMap::new(),
            labels: BTreeMap::new(),
            created_at: chrono::Utc::now(),
            stage: Stage::Active,
            host: None,
        },
        image: image.to_string(),
        gitlab_version: "17.5.1".into(),
        edition: "ce".into(),
        strategy: Strategy::Cold,
        created_at: chrono::Utc::now(),
        host: "hostile-test".into(),
        girofle_version: girofle_core::VERSION.into(),
        include_logs: false,
        gitlab_backup_id: None,
    }
}

/// Writes a backup's objects into the local store of the root, its manifest signed with
/// the root's key as Girofle signs it (`m` as written: a `manifest` damaged since fails the
/// signature as well as the checksum).
fn plant(root: &Path, m: &Manifest, archive: &[u8], index: &[u8], manifest: &[u8]) {
    let backups = root.join("backups");
    let signature =
        girofle_core::signing::sign_manifest(root, &m.header.id, &m.to_bytes().unwrap()).unwrap();
    for (key, bytes) in [
        (m.archive.key.clone(), archive),
        (m.index.key.clone(), index),
        (
            format!("{}.manifest.minisig", m.header.id),
            signature.as_slice(),
        ),
        (format!("{}.manifest", m.header.id), manifest),
    ] {
        let path = backups.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// A backup id of `name`, the `i`-th second of 2000.
fn id_at(name: &str, i: usize) -> String {
    let ts = chrono::DateTime::from_timestamp(946_684_800 + i as i64, 0).unwrap();
    format!("{name}/{}", ts.format("%Y%m%dT%H%M%SZ"))
}

/// Writes a seed for fuzz target `target` when `GIROFLE_FUZZ_SEEDS` is set.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("GIROFLE_FUZZ_SEEDS") {
        let dir = PathBuf::from(dir).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A seed of the `archive` fuzz target: flags, index length, index, archive.
fn archive_seed(flags: u8, index: &[u8], archive: &[u8]) -> Vec<u8> {
    let mut s = vec![flags];
    s.extend_from_slice(&(index.len() as u32).to_le_bytes());
    s.extend_from_slice(index);
    s.extend_from_slice(archive);
    s
}

// --- what must not change ---------------------------------------------------------------

/// Every path under `dir` with its content, leaving out what every command legitimately
/// touches (the journal, the database and its WAL, lock files under `run/`), the staging directory
/// (checked empty on its own) and the instances' directories (checked on their own).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let name = rel.to_string_lossy();
            if name.ends_with("journal.jsonl")
                || name.contains("inventory.db")
                || name.ends_with("/locks")
                || name.ends_with("/run")
                || name.ends_with("/staging")
                || name.ends_with("/instances")
            {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push((rel, content));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn paths(s: &[(PathBuf, Vec<u8>)]) -> Vec<&Path> {
    s.iter().map(|(p, _)| p.as_path()).collect()
}

/// Nothing of `as_name` exists: no container, no directory, no record, nothing staged.
async fn assert_nothing_created(g: &Girofle, root: &Path, as_name: &str, case: &str) {
    assert!(
        !root.join("instances").join(as_name).exists(),
        "{case}: an instance directory was created"
    );
    let fleet = g.inventory().load().await.unwrap();
    assert!(
        !fleet.instances.contains_key(as_name),
        "{case}: an inventory record was created"
    );
    let container = girofle_core::instance::container_name(as_name);
    assert!(
        g.runtime().inspect(&container).await.unwrap().is_none(),
        "{case}: a container was created"
    );
    let staging = root.join("staging");
    if staging.exists() {
        let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
        assert!(left.is_empty(), "{case}: staging left behind: {left:?}");
    }
}

fn is_corrupt(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
}

// --- the tests --------------------------------------------------------------------------

/// A hand-made backup: the archive's entries, what the manifest's index lists (by default
/// the same), and a last touch on the compressed bytes.
struct Case {
    what: &'static str,
    entries: Vec<Raw>,
    /// The index beside the archive, when it lies.
    outside: Option<Vec<FileEntry>>,
    /// The archive's own index, when it lies.
    inside: Option<Vec<FileEntry>>,
    /// Cut the compressed stream to this fraction of its length.
    truncate: Option<f64>,
    /// The manifest's archive size, when it lies.
    archive_size: Option<u64>,
    /// Words the refusal must contain.
    why: &'static str,
}

fn case(what: &'static str, entries: Vec<Raw>, why: &'static str) -> Case {
    Case {
        what,
        entries,
        outside: None,
        inside: None,
        truncate: None,
        archive_size: None,
        why,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_hostile_backups_are_refused() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    // Where escapes would land: the test's temporary directory (`..` from
    // <root>/staging/restore-*/data climbs to it in four steps) and an absolute path in it.
    let outside = t.dir.path().to_path_buf();
    std::fs::create_dir_all(outside.join("sentinel")).unwrap();
    std::fs::write(outside.join("sentinel/keep"), b"untouched").unwrap();
    let abs = outside.join("abs-evil");
    let abs = abs.to_str().unwrap();
    let up = "../../../..";
    let huge_name = format!("data/{}", "n".repeat(8 << 20));
    let ok = [dir("data"), file("data/a", b"hello")];

    let mut cases = vec![
        case(
            "dot-dot",
            vec![
                dir("data"),
                file(&format!("data/{up}/escaped-dotdot"), b"x"),
            ],
            "`..` component refused",
        ),
        case(
            "dot-dot in a GNU long name",
            vec![
                dir("data"),
                Raw {
                    name: Name::GnuLong,
                    ..file(
                        &format!("data/{}/{up}/{up}/escaped-long", "x".repeat(120)),
                        b"x",
                    )
                },
            ],
            "`..` component refused",
        ),
        case(
            "absolute path",
            vec![dir("data"), file(abs, b"x")],
            "absolute path refused",
        ),
        case(
            "absolute path in a PAX header",
            vec![
                dir("data"),
                Raw {
                    name: Name::Pax,
                    ..file(abs, b"x")
                },
            ],
            "absolute path refused",
        ),
        case(
            "symlink escape",
            vec![
                dir("data"),
                symlink("data/l", &format!("{up}/escaped-link")),
            ],
            "points outside the extraction directory",
        ),
        case(
            "absolute symlink",
            vec![dir("data"), symlink("data/l", "/etc")],
            "absolute path",
        ),
        case(
            "symlink chain",
            vec![
                dir("data"),
                symlink("data/a", "b/../.."),
                symlink("data/b", ".."),
            ],
            "through other symlinks",
        ),
        case(
            "path through a symlink",
            vec![
                dir("data"),
                symlink("data/up", ".."),
                file("data/up/escaped-through", b"x"),
            ],
            "is a symlink",
        ),
        case(
            "hard link escape",
            vec![
                dir("data"),
                Raw {
                    link: Some("/etc/passwd".into()),
                    ..raw("data/h", tar::EntryType::Link)
                },
            ],
            "hard link refused",
        ),
        case(
            "character device",
            vec![dir("data"), raw("data/null", tar::EntryType::Char)],
            "device entry refused",
        ),
        case(
            "block device",
            vec![dir("data"), raw("data/sda", tar::EntryType::Block)],
            "device entry refused",
        ),
        case(
            "fifo",
            vec![dir("data"), raw("data/fifo", tar::EntryType::Fifo)],
            "fifo entry refused",
        ),
        case(
            "a GNU long name of 8 MiB",
            vec![
                dir("data"),
                Raw {
                    name: Name::GnuLong,
                    ..file(&huge_name, b"x")
                },
            ],
            "GNU long name entry of",
        ),
        case(
            "a PAX header of 8 MiB",
            vec![
                dir("data"),
                Raw {
                    name: Name::Pax,
                    ..file(&huge_name, b"x")
                },
            ],
            "PAX header entry of",
        ),
        case(
            "a PAX size record",
            vec![
                dir("data"),
                Raw {
                    pax_extra: vec![("size".into(), b"0".to_vec())],
                    ..file("data/a", b"hello")
                },
            ],
            "PAX record `size` refused",
        ),
        case(
            "duplicate entries",
            vec![dir("data"), file("data/a", b"x"), file("data/a", b"x")],
            "duplicate entry refused",
        ),
        Case {
            outside: Some(vec![listed(&ok[0]), {
                let mut e = listed(&ok[1]);
                e.size = 4;
                e
            }]),
            ..case(
                "an index that lies about a size",
                ok.to_vec(),
                "size 5 vs 4",
            )
        },
        Case {
            inside: Some(vec![listed(&ok[0]), {
                let mut e = listed(&ok[1]);
                e.size = 9;
                e.hash = Some(blake3::hash(b"hello\0\0\0\0").to_hex().to_string());
                e
            }]),
            ..case(
                "the archive's own index lies about a size",
                ok.to_vec(),
                "its index differ",
            )
        },
        Case {
            outside: Some(vec![listed(&ok[0])]),
            ..case(
                "an entry the index does not list",
                ok.to_vec(),
                "not listed in the manifest",
            )
        },
        Case {
            archive_size: Some(1 << 30),
            ..case(
                "a manifest that lies about the archive size",
                ok.to_vec(),
                "1073741824",
            )
        },
        Case {
            truncate: Some(0.6),
            ..case("a truncated stream", ok.to_vec(), "")
        },
    ];
    // A many-file archive cut short, so that it stops in the middle of the entries.
    let mut many = vec![dir("data")];
    for i in 0..200 {
        many.push(file(&format!("data/f{i:03}"), &vec![i as u8; 1000 + i]));
    }
    cases.push(Case {
        truncate: Some(0.5),
        ..case("a truncated stream of many files", many, "")
    });

    // The same construction unspoilt restores: the refusals are the rules', not the test's.
    let good_id = "good/20010101T000000Z";
    let index = ArchiveIndex {
        entries: ok.iter().map(listed).collect(),
        ..Default::default()
    };
    let header = serde_json::to_value(header_of(good_id, &image)).unwrap();
    let tar = tar_of(&header, &ok, &index);
    let archive = compress(&tar);
    let ij = index.to_jsonl();
    let m = manifest_of(good_id, &image, &archive, &ij, &index);
    plant(&t.root, &m, &archive, &ij, &m.to_bytes().unwrap());
    g.verify(good_id, None)
        .await
        .expect("the well-made backup verifies");
    seed("archive", "good-tar", &archive_seed(1 | 2, &ij, &tar));
    seed("archive", "good-zst", &archive_seed(2, &ij, &archive));
    seed("manifest", "good-manifest", &m.to_bytes().unwrap());
    seed("manifest", "good-index", &ij);

    let mut refused = 0;
    for (i, c) in cases.iter().enumerate() {
        let id = id_at("evil", i);
        let inside = ArchiveIndex {
            entries: c
                .inside
                .clone()
                .unwrap_or_else(|| c.entries.iter().map(listed).collect()),
            ..Default::default()
        };
        let listed_outside = ArchiveIndex {
            entries: c
                .outside
                .clone()
                .unwrap_or_else(|| c.entries.iter().map(listed).collect()),
            ..Default::default()
        };
        let header = serde_json::to_value(header_of(&id, &image)).unwrap();
        let tar = tar_of(&header, &c.entries, &inside);
        let mut archive = compress(&tar);
        if let Some(f) = c.truncate {
            archive.truncate((archive.len() as f64 * f) as usize);
        }
        let ij = listed_outside.to_jsonl();
        let mut m = manifest_of(&id, &image, &archive, &ij, &listed_outside);
        if let Some(size) = c.archive_size {
            m.archive.size = size;
        }
        plant(&t.root, &m, &archive, &ij, &m.to_bytes().unwrap());
        if tar.len() < (1 << 20) {
            let name = format!("case-{i:02}");
            seed(
                "archive",
                &format!("{name}-tar"),
                &archive_seed(1, &ij, &tar),
            );
            seed(
                "archive",
                &format!("{name}-zst"),
                &archive_seed(4, &ij, &archive),
            );
        }

        let before = snapshot(&outside);
        let err = g.verify(&id, None).await.expect_err(c.what);
        assert!(
            is_corrupt(&err) && err.to_string().contains(c.why),
            "{}: verify should refuse with `{}`, got: {err}",
            c.what,
            c.why
        );
        let as_name = format!("copy-{i}");
        let err = g
            .restore(RestoreRequest {
                id: id.clone(),
                as_name: Some(as_name.clone()),
                ..Default::default()
            })
            .await
            .expect_err(c.what);
        assert!(
            is_corrupt(&err) && err.to_string().contains(c.why),
            "{}: restore should refuse with `{}`, got: {err}",
            c.what,
            c.why
        );
        let after = snapshot(&outside);
        assert_eq!(
            paths(&after),
            paths(&before),
            "{}: files appeared or vanished outside the target",
            c.what
        );
        assert!(
            after == before,
            "{}: a file outside the target changed",
            c.what
        );
        assert_nothing_created(&g, &t.root, &as_name, c.what).await;
        println!("refused: {:<50} {err}", c.what);
        refused += 1;
    }
    for p in [
        "escaped-dotdot",
        "escaped-long",
        "escaped-link",
        "escaped-through",
    ] {
        assert!(!outside.join(p).exists(), "{p} was written outside");
    }
    assert!(!Path::new(abs).exists());

    // The command line says so with exit code 5.
    let out = t.cli(&["backup", "verify", &id_at("evil", 0)]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let out = t.cli(&["restore", &id_at("evil", 1), "--as", "cli-copy"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_nothing_created(&g, &t.root, "cli-copy", "CLI restore").await;
    println!("{refused} of {} hostile backups refused", cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_flips_are_always_detected_and_refused() {
    const ARCHIVES: usize = 100;
    const MANIFESTS: usize = 100;
    const INDEXES: usize = 20;
    let mut rng = Rng::seeded("GIROFLE_FLIP_SEED", "byte flips");

    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let name = unique("flip");
    g.commission(CommissionRequest {
        name: name.clone(),
        ..Default::default()
    })
    .await
    .expect("commission");
    let report = g
        .backup(
            &name,
            BackupOptions {
                strategy: Strategy::Cold,
                ..Default::default()
            },
        )
        .await
        .expect("a cold backup");
    // Stopped: nothing moves in the root while the copies are refused.
    g.stop(&name).await.expect("stop");
    let base = g.manifest(&report.id, None).await.unwrap();
    let backups = t.root.join("backups");
    let archive = std::fs::read(backups.join(&base.archive.key)).unwrap();
    let index = std::fs::read(backups.join(&base.index.key)).unwrap();
    println!(
        "backup {}: archive {} bytes, index {} bytes, manifest {} bytes",
        report.id,
        archive.len(),
        index.len(),
        base.to_bytes().unwrap().len()
    );
    seed("manifest", "real-manifest", &base.to_bytes().unwrap());
    seed("manifest", "real-index", &index);
    if archive.len() < (2 << 20) {
        seed("archive", "real-zst", &archive_seed(2, &index, &archive));
    }

    // Copies under ids of their own: the manifest re-keyed and re-signed, then one byte of
    // the archive, the manifest or the index flipped.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Part {
        Archive,
        Manifest,
        Index,
    }
    let parts = std::iter::repeat_n(Part::Archive, ARCHIVES)
        .chain(std::iter::repeat_n(Part::Manifest, MANIFESTS))
        .chain(std::iter::repeat_n(Part::Index, INDEXES));
    let mut copies = Vec::new();
    for (i, part) in parts.enumerate() {
        let id = id_at(&name, i);
        let mut m = base.clone();
        m.header.id = id.clone();
        m.archive.key = format!("{id}.tar.zst");
        m.index.key = format!("{id}.index");
        let (mut a, mut x, mut mb) = (archive.clone(), index.clone(), m.to_bytes().unwrap());
        let target = match part {
            Part::Archive => &mut a,
            Part::Manifest => &mut mb,
            Part::Index => &mut x,
        };
        // The first and last bytes of each kind, then random ones; a last newline turned
        // into a space (whitespace a lenient parser would trim) among them.
        let nth = copies
            .iter()
            .filter(|c: &&(String, Part, usize)| c.1 == part)
            .count();
        let at = match nth {
            0 => 0,
            1 => target.len() - 1,
            _ => rng.below(target.len()),
        };
        target[at] ^= if target[at] == b'\n' && nth == 1 {
            b'\n' ^ b' '
        } else {
            rng.flip()
        };
        plant(&t.root, &m, &a, &x, &mb);
        copies.push((id, part, at));
    }

    let before = snapshot(t.dir.path());
    let (mut verify_detected, mut restore_refused) = (0, 0);
    for (n, (id, part, at)) in copies.iter().enumerate() {
        let case = format!("{part:?} byte {at} of {id}");
        match g.verify(id, None).await {
            Err(e) if is_corrupt(&e) => verify_detected += 1,
            other => panic!("{case}: verify did not report damage: {other:?}"),
        }
        let as_name = format!("flip-copy-{n}");
        let restored = g
            .restore(RestoreRequest {
                id: id.clone(),
                as_name: Some(as_name.clone()),
                ..Default::default()
            })
            .await;
        match restored {
            Err(e) if is_corrupt(&e) => restore_refused += 1,
            other => panic!("{case}: restore did not refuse: {other:?}"),
        }
        assert_nothing_created(&g, &t.root, &as_name, &case).await;
    }
    assert!(
        snapshot(t.dir.path()) == before,
        "files changed around the refused restores"
    );

    // At the command line: exit code 5, for one of each kind.
    for part in [Part::Archive, Part::Manifest, Part::Index] {
        let (id, _, _) = copies.iter().find(|c| c.1 == part).unwrap();
        let out = t.cli(&["backup", "verify", id]);
        assert_eq!(out.status.code(), Some(5), "{part:?}: {out:?}");
        let out = t.cli(&["restore", id, "--as", "cli-flip"]);
        assert_eq!(out.status.code(), Some(5), "{part:?}: {out:?}");
        assert_nothing_created(&g, &t.root, "cli-flip", "CLI restore").await;
    }

    let total = copies.len();
    println!(
        "byte flips: {ARCHIVES} archives, {MANIFESTS} manifests, {INDEXES} indexes: verify detected {verify_detected}/{total}, restore --as refused {restore_refused}/{total}"
    );
    assert_eq!((verify_detected, restore_refused), (total, total));
    // The unflipped backup is still good: the detections are the flips'.
    g.verify(&report.id, None)
        .await
        .expect("the original verifies");
}

// --- forged but consistent manifests -----------------------------------------------------

/// Writes `m` as the manifest of backup `id` in the local store of `root`, with a valid
/// checksum and signed by the fleet's own key: the worst case, a forger who holds the key
/// (tests/it/signing.rs covers forgers who do not). Every field is still checked.
fn forge(root: &Path, id: &str, m: &Manifest) {
    let bytes = m.to_bytes().unwrap();
    let signature = girofle_core::signing::sign_manifest(root, id, &bytes).unwrap();
    let backups = root.join("backups");
    std::fs::write(backups.join(format!("{id}.manifest.minisig")), signature).unwrap();
    std::fs::write(backups.join(format!("{id}.manifest")), bytes).unwrap();
}

/// A copy of a real backup under the id `id`, its manifest changed by `change`.
fn forged_copy(root: &Path, base: &Manifest, id: &str, change: impl FnOnce(&mut Manifest)) {
    let backups = root.join("backups");
    let mut m = base.clone();
    m.header.id = id.to_string();
    m.archive.key = format!("{id}.tar.zst");
    m.index.key = format!("{id}.index");
    std::fs::create_dir_all(backups.join(id).parent().unwrap()).unwrap();
    std::fs::copy(
        backups.join(&base.archive.key),
        backups.join(&m.archive.key),
    )
    .unwrap();
    std::fs::copy(backups.join(&base.index.key), backups.join(&m.index.key)).unwrap();
    change(&mut m);
    forge(root, id, &m);
}

/// Every field of a manifest that reaches a path, the engine or GitLab is checked, and
/// the target of a restore is the operator's (the id or --as), never the store's; a
/// restore never replaces another instance unless asked; setuid bits never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_manifest_fields_and_names_are_refused() {
    let image = stand_in("17.5.1");
    let newer = stand_in("17.6.0");
    let t = TestRoot::new(&image);
    // A sentinel beside the root: nothing may appear or change there.
    let sentinel = t.dir.path().join("sentinel");
    std::fs::create_dir_all(sentinel.join("x")).unwrap();
    std::fs::write(sentinel.join("x/keep"), b"keep").unwrap();
    let g = t.open().await;
    let src = commission_with_project(&g, &t, "src", 2).await;
    let other = commission_with_project(&g, &t, "other", 1).await;
    // A setuid-root program in the data: a forged backup could carry one as well.
    let planted = t
        .root
        .join("instances")
        .join(&src.name)
        .join("data/suid-probe");
    std::fs::write(&planted, b"#!/bin/sh\nid -u\n").unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let cold = g
        .backup(
            &src.name,
            BackupOptions {
                strategy: Strategy::Cold,
                ..Default::default()
            },
        )
        .await
        .expect("cold backup");
    let online = g
        .backup(&src.name, BackupOptions::default())
        .await
        .expect("online backup");
    let base = g.manifest(&cold.id, None).await.unwrap();
    let base_online = g.manifest(&online.id, None).await.unwrap();

    // Each forged copy lives under an id of the source instance.
    type Change = Box<dyn FnOnce(&mut Manifest)>;
    let cases: Vec<(&str, bool, Change, &str)> = vec![
        (
            "a name that climbs out of the root",
            false,
            Box::new(|m: &mut Manifest| m.header.instance.name = "../../x".into()),
            "names instance",
        ),
        (
            "another instance's name",
            false,
            Box::new({
                let n = other.name.clone();
                move |m: &mut Manifest| m.header.instance.name = n
            }),
            "names instance",
        ),
        (
            "another backup's id",
            false,
            Box::new({
                let id = cold.id.clone();
                move |m: &mut Manifest| m.header.id = id
            }),
            "another backup",
        ),
        (
            "Ruby in the host name",
            false,
            Box::new(|m: &mut Manifest| {
                m.header.instance.hostname = Some("x'; system('touch /tmp/pwned'); '".into())
            }),
            "host name",
        ),
        (
            "a label in Girofle's namespace",
            false,
            Box::new(|m: &mut Manifest| {
                m.header
                    .instance
                    .labels
                    .insert("io.girofle.root".into(), "/".into());
            }),
            "label",
        ),
        (
            "a version that is not one",
            false,
            Box::new(|m: &mut Manifest| m.header.gitlab_version = "17.5.1'; id; '".into()),
            "GitLab version",
        ),
        (
            "a cold backup called online",
            false,
            Box::new(|m: &mut Manifest| m.header.strategy = Strategy::Online),
            "online backup without",
        ),
        (
            "GitLab's backup id as a path",
            true,
            Box::new(|m: &mut Manifest| {
                m.header.gitlab_backup_id = Some("../../../../tmp/evil".into())
            }),
            "GitLab backup id",
        ),
        (
            "an archive size that lies",
            false,
            Box::new(|m: &mut Manifest| m.archive.size += 1),
            "bytes",
        ),
    ];
    let before = snapshot(t.dir.path());
    let other_before = ls_remote(&other.url);
    for (i, (what, is_online, change, why)) in cases.into_iter().enumerate() {
        let id = id_at(&src.name, i);
        forged_copy(
            &t.root,
            if is_online { &base_online } else { &base },
            &id,
            change,
        );
        // In place (the id's instance exists), as a new name and at the command line.
        for as_name in [None, Some(format!("forged-{i}"))] {
            let e = g
                .restore(RestoreRequest {
                    id: id.clone(),
                    as_name: as_name.clone(),
                    ..Default::default()
                })
                .await
                .expect_err(what);
            assert!(is_corrupt(&e), "{what}: {e:?}");
            assert!(e.to_string().contains(why), "{what}: {e}");
            if let Some(n) = &as_name {
                assert_nothing_created(&g, &t.root, n, what).await;
            }
        }
        let out = t.cli(&["restore", &id]);
        assert_eq!(out.status.code(), Some(5), "{what}: {out:?}");
        for suffix in ["manifest", "manifest.minisig"] {
            std::fs::remove_file(t.root.join("backups").join(format!("{id}.{suffix}"))).unwrap();
        }
    }
    assert!(
        !std::path::Path::new("/tmp/pwned").exists(),
        "a forged host name ran"
    );
    // Nothing outside the root, nothing in it but the forged objects themselves.
    let after: Vec<_> = snapshot(t.dir.path())
        .into_iter()
        .filter(|(p, _)| {
            let p = p.to_string_lossy();
            !(p.contains("backups/") && p.contains("/2000"))
        })
        .collect();
    assert!(after == before, "files changed: {:?}", paths(&after));
    assert_eq!(ls_remote(&src.url), src.refs, "the source instance changed");
    assert_eq!(
        ls_remote(&other.url),
        other_before,
        "another instance changed"
    );

    // A version lie GitLab's own record inside the backup gives away: exit 5 before the
    // instance is touched, even with the image the manifest asks for.
    let id = id_at(&src.name, 100);
    forged_copy(&t.root, &base_online, &id, |m| {
        m.header.gitlab_version = "17.6.0".into()
    });
    let out = t.cli(&["restore", &id, "--as", "liar", "--image", &newer]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{said}");
    assert!(
        said.contains("backup_information.yml") && said.contains("17.5.1"),
        "{said}"
    );
    assert_nothing_created(&g, &t.root, "liar", "version lie").await;

    // The image and the settings of a manifest are not used: a forged image is never
    // pulled or run, and settings come from the backup's gitlab.rb.
    let id = id_at(&src.name, 101);
    forged_copy(&t.root, &base, &id, |m| {
        m.header.image = "registry.invalid/pwn:17.5.1-ce.0".into();
        m.header.instance.image = "registry.invalid/pwn:17.5.1-ce.0".into();
        m.header
            .instance
            .settings
            .insert("gitlab_rails['x']".into(), "`id`".into());
    });
    let copy = unique("copy");
    let restored = g
        .restore(RestoreRequest {
            id: id.clone(),
            as_name: Some(copy.clone()),
            ..Default::default()
        })
        .await
        .expect("the manifest's image and settings are ignored");
    assert_eq!(restored.image, image);
    let record = girofle_core::inventory::InventoryExt::get(g.inventory().as_ref(), &copy)
        .await
        .unwrap();
    assert_eq!(record.image, image);
    assert!(
        !record.settings.contains_key("gitlab_rails['x']"),
        "{record:?}"
    );
    // The restored database has the source's root, with the source's password.
    assert_eq!(
        ls_remote(&project_url(&restored.url, &src.password, "team/app.git")),
        src.refs
    );
    // The setuid program came back without its bit, and the report says so.
    let back = t.root.join("instances").join(&copy).join("data/suid-probe");
    let mode = std::fs::metadata(&back).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o755
    );
    assert!(
        restored
            .modes_stripped
            .contains(&"data/suid-probe".to_string()),
        "{restored:?}"
    );

    // --as an existing instance: refused (exit 4), the instance untouched...
    let out = t.cli(&["restore", &cold.id, "--as", &other.name]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("--replace"), "{said}");
    assert_eq!(ls_remote(&other.url), other_before);
    // ...unless --replace: then it is an in-place restore of that instance.
    let out = t.cli(&[
        "--json",
        "restore",
        &cold.id,
        "--as",
        &other.name,
        "--replace",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["in_place"], true);
    // `other` now runs the source's database: the source's root password opens it.
    assert_eq!(
        ls_remote(&project_url(
            report["url"].as_str().unwrap(),
            &src.password,
            "team/app.git"
        )),
        src.refs
    );

    // Every command that takes a name refuses one that is not (exit 2), and touches
    // nothing: `instance rm ../../x --purge` once deleted a directory outside the root.
    let before = snapshot(t.dir.path());
    for args in [
        vec!["instance", "rm", "../../sentinel", "--purge", "--no-backup"],
        vec!["instance", "show", "../x"],
        vec!["instance", "stop", "../x"],
        vec!["instance", "start", "../x"],
        vec!["instance", "reconfigure", "../x", "--set", "a=1"],
        vec!["backup", "create", "../x"],
        vec!["backup", "list", "../x"],
        vec!["schedule", "set", "../x", "--keep-last", "2"],
        vec!["restore", &cold.id, "--as", "../x"],
    ] {
        let out = t.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    assert!(
        snapshot(t.dir.path()) == before,
        "a refused name changed files"
    );
    assert_eq!(std::fs::read(sentinel.join("x/keep")).unwrap(), b"keep");
}
