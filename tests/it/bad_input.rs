//! Wrong input through the `girofle` CLI: each is a clear error with the right exit code,
//! and nothing is changed (no container, no directory, no inventory record, no address).

use std::net::TcpListener;
use std::process::Output;

use girofle_tests::*;

fn assert_nothing_changed(t: &TestRoot) {
    let out = t.cli(&["--json", "instance", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "something was left: {v}");
    let entries = std::fs::read_dir(t.root.join("instances")).unwrap().count();
    assert_eq!(entries, 0, "an instance directory was left behind");
}

#[test]
fn wrong_input_is_refused_cleanly() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let (lo, hi) = t.ports;

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["Bad_Name".into()], 2, "lowercase"),
        (vec!["a".repeat(41)], 2, "1-40"),
        (
            vec!["ok".into(), "--http-port".into(), (hi + 1000).to_string()],
            2,
            "outside Girofle's pool",
        ),
        (
            vec!["ok".into(), "--ip".into(), "10.9.9.9".into()],
            2,
            "not in Girofle's pool",
        ),
        (
            vec![
                "ok".into(),
                "--image".into(),
                "girofle-test/absent:1.0.0-ce.0".into(),
            ],
            3,
            "image",
        ),
        (
            vec!["ok".into(), "--set".into(), "novalue".into()],
            2,
            "KEY=VALUE",
        ),
        (
            vec![
                "ok".into(),
                "--set".into(),
                "gitlab_rails['time_zone']='UTC'; system('id')".into(),
            ],
            2,
            "not one Ruby literal (at character 6",
        ),
        (
            vec!["ok".into(), "--hostname".into(), "bad host".into()],
            2,
            "host name",
        ),
    ];
    for (args, code, needle) in cases {
        let mut full = vec!["instance", "create"];
        full.extend(args.iter().map(String::as_str));
        let out = t.cli(&full);
        assert_eq!(out.status.code(), Some(code), "{full:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{full:?}: {}", stderr(&out));
        assert_nothing_changed(&t);
    }

    // A port another process holds.
    let _held = TcpListener::bind(("127.0.0.1", lo)).unwrap();
    let out = t.cli(&["instance", "create", "held", "--http-port", &lo.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    assert_nothing_changed(&t);

    // A root password GitLab would refuse at its first boot: refused before anything.
    let out = t.cli(&[
        "instance",
        "create",
        &unique("pw"),
        "--set",
        "gitlab_rails['initial_root_password']='tiny'",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at least 8 characters") && !stderr(&out).contains("tiny"),
        "{}",
        stderr(&out)
    );
    assert_nothing_changed(&t);

    // Unreachable Docker engine: says how to start it.
    let out = t.cli(&[
        "--docker-host",
        "unix:///nonexistent/docker.sock",
        "instance",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("start it"), "{}", stderr(&out));

    // Missing arguments print the usage.
    let out = t.cli(&["instance", "create"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage"), "{}", stderr(&out));

    // Unknown instance.
    let out = t.cli(&["instance", "show", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // Health timeout: the error carries the probe output and the container's log, and
    // nothing is left behind.
    let out = t.cli(&["instance", "create", &unique("slow"), "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("did not answer its health check within 1 s")
            && e.contains("--timeout")
            && e.contains("last container log lines"),
        "{e}"
    );
    assert_nothing_changed(&t);

    // A duplicate name.
    let name = unique("dup");
    let out = t.cli(&["instance", "create", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.cli(&["instance", "create", &name]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn concurrent_processes_never_share_an_address() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let names: Vec<String> = (0..3).map(|i| unique(&format!("par{i}"))).collect();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            t.girofle()
                .args(["--json", "instance", "create", n])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for k in ["http_port", "https_port", "ssh_port"] {
            let p = r["bindings"][k].as_u64().unwrap();
            assert!(ports.insert(p), "port {p} handed out twice");
        }
    }
    let out = t.cli(&["--json", "instance", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
}

/// A fresh root made by `girofle init`, without Docker.
fn fresh_root() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = cli_on(&root, &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, root)
}

/// Every file under `dir` with its content.
/// Runs a listing that must succeed with an empty JSON list on stdout while warning on
/// stderr with every one of `needles`; returns the stderr.
fn lists_nothing_and_warns(
    root: &std::path::Path,
    args: &[&str],
    what: &str,
    needles: &[&str],
) -> String {
    let out = cli_on(root, args);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{what}: {e}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([]),
        "{what}: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "{what}: the message lacks `{n}`:\n{e}");
    }
    e
}

fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A malformed girofle.toml: the command fails with exit code 2 and a message naming the
/// key, the line and what the key takes; the file and the rest of the root are unchanged.
#[test]
fn malformed_configuration_names_the_key_the_line_and_what_is_expected() {
    let base = "[network]\nips = [\"127.0.0.1\"]\nports = [\"20080-20999\"]\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad TOML syntax",
            "[network]\nips = [\"127.0.0.1\"\nports = [\"20080-20999\"]\n".into(),
            vec!["girofle.toml line 3", "TOML syntax", "expected `]`"],
        ),
        (
            "unknown key",
            format!("{base}[instances]\nimagee = \"x\"\n"),
            vec![
                "line 5",
                "instances.imagee",
                "unknown field `imagee`",
                "expected one of `image`",
            ],
        ),
        (
            "unknown section",
            format!("{base}[backups]\nlevel = 3\n"),
            vec!["line 4", "unknown field `backups`", "expected one of"],
        ),
        (
            "wrong type",
            format!("{base}[backup]\nlevel = \"high\"\n"),
            vec![
                "`backup.level`",
                "line 5",
                "a zstd level, a whole number from 1 to 22",
            ],
        ),
        (
            "out of range level",
            format!("{base}[backup]\nlevel = 40\n"),
            vec!["`backup.level`", "line 5", "from 1 to 22"],
        ),
        (
            "reversed port range",
            "[network]\nips = [\"127.0.0.1\"]\nports = [\"20999-20080\"]\n".into(),
            vec![
                "`network.ports`",
                "line 3",
                "`20999-20080`",
                "like \"20080-20999\"",
            ],
        ),
        (
            "port beyond 65535",
            "[network]\nips = [\"127.0.0.1\"]\nports = [\"20080-70000\"]\n".into(),
            vec!["`network.ports`", "line 3", "ports 1-65535"],
        ),
        (
            "port as a number",
            "[network]\nips = [\"127.0.0.1\"]\nports = [20080]\n".into(),
            vec!["`network.ports`", "line 3", "as strings"],
        ),
        (
            "bad IP",
            "[network]\nips = [\"127.0.0.300\"]\nports = [\"20080-20999\"]\n".into(),
            vec![
                "`network.ips`",
                "line 2",
                "invalid IP address",
                "ips = [\"127.0.0.1\"]",
            ],
        ),
        (
            "store URL without a scheme",
            format!("{base}[stores.nas]\nurl = \"/mnt/nas\"\n"),
            vec!["`stores.nas.url`", "line 5", "file:///ABSOLUTE/PATH"],
        ),
        (
            "store URL of another scheme",
            format!("{base}[stores.nas]\nurl = \"ftp://nas/backups\"\n"),
            vec![
                "`stores.nas.url`",
                "line 5",
                "scheme `ftp`",
                "s3://BUCKET/PREFIX",
            ],
        ),
        (
            "bad store name",
            format!("{base}[stores.Off_Site]\nurl = \"s3://b/p\"\n"),
            vec!["stores.Off_Site", "line 4", "lowercase letters"],
        ),
        (
            "cron with four fields",
            format!("{base}[schedule]\nbackup = \"0 */4 * *\"\n"),
            vec![
                "`schedule.backup`",
                "line 5",
                "4 fields",
                "use 5 (minute hour",
            ],
        ),
        (
            "cron with a bad minute",
            format!("{base}[schedule]\ncopy = \"75 * * * *\"\n"),
            vec!["`schedule.copy`", "line 5", "not a valid cron expression"],
        ),
        (
            "unknown time zone",
            format!("{base}[schedule]\ntimezone = \"Mars/Olympus\"\n"),
            vec![
                "`schedule.timezone`",
                "line 5",
                "IANA time zone",
                "Europe/Paris",
            ],
        ),
        (
            "webhook URL of another scheme",
            format!("{base}[notify]\nwebhook_url = \"ftp://hooks.example/x\"\n"),
            vec!["`notify.webhook_url`", "line 5", "not http or https"],
        ),
        (
            "webhook URL that is no URL",
            format!("{base}[notify]\nwebhook_url = \"hooks.example/x\"\n"),
            vec![
                "`notify.webhook_url`",
                "line 5",
                "http://127.0.0.1:8080/hooks/girofle",
            ],
        ),
        (
            "docker host without a scheme",
            format!("{base}[docker]\nhost = \"docker.example:2375\"\n"),
            vec!["`docker.host`", "line 5", "tcp://HOST:2375"],
        ),
        (
            "metrics address without a port",
            format!("{base}[metrics]\nlisten = \"127.0.0.1\"\n"),
            vec!["`metrics.listen`", "line 5", "IP:PORT"],
        ),
    ];
    let (_dir, root) = fresh_root();
    let config = root.join("girofle.toml");
    for (what, text, needles) in cases {
        std::fs::write(&config, &text).unwrap();
        let before = files(&root);
        let out = cli_on(&root, &["instance", "list"]);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: the message lacks `{n}`:\n{e}");
        }
        assert!(files(&root) == before, "{what}: the root changed");
        println!("{what:<32} {}", e.trim());
    }
}

/// Garbage where Girofle keeps its files, and malformed names, ports, ids and URLs on
/// the command line: each refusal names what is wrong and what is expected, and changes
/// nothing.
#[test]
fn garbage_files_and_malformed_arguments_are_refused_clearly() {
    let (_dir, root) = fresh_root();

    // A manifest that is not one.
    let manifest = root.join("backups/web/20260101T000000Z.manifest");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, b"\x00\x01 this is not a manifest").unwrap();
    let cases: Vec<(&str, Vec<&str>, i32, Vec<&str>)> = vec![
        (
            "garbage manifest",
            vec!["backup", "verify", "web/20260101T000000Z"],
            5,
            vec!["backup `web/20260101T000000Z` in store `local`", "manifest"],
        ),
        (
            "malformed backup id",
            vec!["backup", "verify", "web-20260101"],
            2,
            vec!["backup id", "like `web/20261125T220000Z`"],
        ),
        (
            "restore as a bad name",
            vec!["restore", "web/20260101T000000Z", "--as", "Web Copy"],
            2,
            vec!["instance name", "`Web Copy`", "lowercase letters"],
        ),
        (
            "port beyond 65535",
            vec!["instance", "create", "web", "--http-port", "70000"],
            2,
            vec!["--http-port", "70000", "0..=65535"],
        ),
        (
            "IP that is not one",
            vec!["instance", "create", "web", "--ip", "127.0.0.300"],
            2,
            vec!["--ip", "127.0.0.300", "invalid IP address"],
        ),
        (
            "docker host without a scheme",
            vec!["--docker-host", "localhost:2375", "instance", "list"],
            2,
            vec!["docker host", "`localhost:2375`", "tcp://HOST:2375"],
        ),
        (
            "docker host with another scheme",
            vec!["--docker-host", "ssh://root@host", "instance", "list"],
            2,
            vec!["docker host", "scheme `ssh`", "unix:///var/run/docker.sock"],
        ),
        (
            "cron with too many fields",
            vec!["schedule", "set", "web", "--backup", "0 0 * * * * *"],
            2,
            vec!["--backup", "7 fields", "use 5"],
        ),
        (
            "unknown time zone",
            vec!["schedule", "set", "web", "--tz", "Europe/Parris"],
            2,
            vec!["--tz", "`Europe/Parris`", "IANA time zone"],
        ),
    ];
    for (what, args, code, needles) in cases {
        let before = files(&root);
        let out = cli_on(&root, &args);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{what}: {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: the message lacks `{n}`:\n{e}");
        }
        let after: Vec<_> = files(&root)
            .into_iter()
            .filter(|(p, _)| !p.ends_with("journal.jsonl"))
            .collect();
        let before: Vec<_> = before
            .into_iter()
            .filter(|(p, _)| !p.ends_with("journal.jsonl"))
            .collect();
        assert!(after == before, "{what}: the root changed");
        println!("{what:<32} {}", e.trim());
    }

    // `backup list` leaves the garbage manifest out, and says so: that backup cannot be
    // restored, and whoever counts on it must know.
    lists_nothing_and_warns(
        &root,
        &["--json", "backup", "list", "web"],
        "garbage manifest listed",
        &[
            "warning",
            "backup `web/20260101T000000Z` in store `local` is damaged",
            "girofle backup verify web/20260101T000000Z --store local",
        ],
    );

    // An intent record that cannot be read: recovery fails, and `instance list` says so
    // instead of listing as if all was well; the record is left for the operator.
    let intent = root.join("run/web.intent.json");
    std::fs::create_dir_all(intent.parent().unwrap()).unwrap();
    std::fs::write(&intent, b"{ not json").unwrap();
    let e = lists_nothing_and_warns(
        &root,
        &["--json", "instance", "list"],
        "unreadable intent record",
        &[
            "warning: instance `web`",
            "could not be recovered",
            "web.intent.json",
            "girofle recover",
        ],
    );
    assert_eq!(std::fs::read(&intent).unwrap(), b"{ not json");
    println!("{:<32} {}", "unreadable intent record", e.trim());
    std::fs::remove_file(&intent).unwrap();

    // A garbage inventory: named, with how to bring it back; the file is left as it was.
    let db = root.join("inventory.db");
    let garbage = b"garbage garbage garbage garbage garbage garbage garbage garbage".repeat(64);
    std::fs::write(&db, &garbage).unwrap();
    for f in ["inventory.db-wal", "inventory.db-shm"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    let out = cli_on(&root, &["instance", "list"]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{e}");
    for n in [
        "inventory database",
        "inventory.db",
        "expected the SQLite database",
        "girofle state import",
    ] {
        assert!(
            e.contains(n),
            "garbage inventory: the message lacks `{n}`:\n{e}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the inventory file was changed"
    );
    println!("{:<32} {}", "garbage inventory", e.trim());
}

/// A girofle.toml saved in Latin-1: a configuration error (exit 2) naming the file, the
/// line and the byte that is not UTF-8, with how to fix it; nothing is changed.
#[test]
fn configuration_that_is_not_utf8_names_the_line_and_the_byte() {
    let (_dir, root) = fresh_root();
    let config = root.join("girofle.toml");
    let text = b"[network]\nips = [\"127.0.0.1\"]\n# caf\xe9 au lait\nports = [\"20080-20999\"]\n";
    std::fs::write(&config, text).unwrap();
    let before = files(&root);
    for args in [&["instance", "list"][..], &["backup", "list"], &["init"]] {
        let out = cli_on(&root, args);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        for n in [
            "girofle.toml line 3",
            "offset 35 (0xe9",
            "not UTF-8",
            "save the file as UTF-8",
        ] {
            assert!(e.contains(n), "{args:?}: the message lacks `{n}`:\n{e}");
        }
        assert!(files(&root) == before, "{args:?}: the root changed");
        println!("{:<32} {}", "not UTF-8", e.trim());
    }
}

/// `--root` naming a file (or a path under one): exit 2, saying it is a file and what to
/// do, for `init` and for the other commands; the file is left as it was.
#[test]
fn a_root_that_is_a_file_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"precious").unwrap();
    let under = file.join("root");
    let cases: Vec<(&std::path::Path, Vec<&str>, &str)> = vec![
        (&file, vec!["init"], "is a file, not a directory"),
        (
            &file,
            vec!["instance", "list"],
            "is a file, not a directory",
        ),
        (&file, vec!["backup", "list"], "is a file, not a directory"),
        (&file, vec!["status"], "is a file, not a directory"),
        (&under, vec!["init"], "which is a file, not a directory"),
        (
            &under,
            vec!["schedule", "list"],
            "which is a file, not a directory",
        ),
    ];
    for (root, args, needle) in cases {
        let out = cli_on(root, &args);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        for n in [
            needle,
            "--root",
            "point --root (or GIROFLE_ROOT) at a directory",
        ] {
            assert!(e.contains(n), "{args:?}: the message lacks `{n}`:\n{e}");
        }
        assert!(e.contains(&file.display().to_string()), "{args:?}: {e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        println!("{:<32} {}", format!("{args:?}"), e.trim());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// An address pool IP that is not one of this host's (checked by binding a socket on it,
/// which sends nothing): an invalid configuration (exit 2) naming `[network] ips`, not
/// "no free port left"; nothing is left behind. Any 127.x.y.z stays valid.
#[test]
fn a_pool_ip_of_another_host_is_refused_naming_the_setting() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    t.edit_config(|c| c.network.ips = vec!["8.8.8.8".parse().unwrap()]);
    let out = t.cli(&["instance", "create", &unique("far")]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    for n in [
        "[network] ips",
        "8.8.8.8 is not an address of this host",
        "girofle.toml",
    ] {
        assert!(e.contains(n), "the message lacks `{n}`:\n{e}");
    }
    assert!(!e.contains("no free port"), "{e}");
    assert_nothing_changed(&t);
    println!("{:<32} {}", "pool IP of another host", e.trim());

    t.edit_config(|c| c.network.ips = vec!["127.0.0.2".parse().unwrap()]);
    let name = unique("lo2");
    let out = t.cli(&["--json", "instance", "create", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bindings"]["ip"], "127.0.0.2", "{r}");
}

/// Two roots on one engine with the same `[network] ports`, commissioning at once: each
/// root's inventory cannot see the other's reservations, so the engine refuses a port
/// now and then ("port is already allocated"); the commission takes the next free
/// addresses instead of failing with exit 4. Every instance gets ports of its own and
/// nothing is left behind.
#[test]
fn two_roots_sharing_a_port_pool_take_the_next_free_ports() {
    let image = stand_in("17.5.1");
    let a = TestRoot::new(&image);
    let b = TestRoot::new(&image);
    let ports = format!("{}-{}", a.ports.0, a.ports.1);
    b.edit_config(|c| c.network.ports = vec![ports.clone()]);
    let mut children = Vec::new();
    for t in [&a, &b] {
        for i in 0..3 {
            let name = unique(&format!("pool{i}"));
            let child = t
                .girofle()
                .args(["--json", "instance", "create", &name])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            children.push((t, name, child));
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    for (t, name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for k in ["http_port", "https_port", "ssh_port"] {
            let p = r["bindings"][k].as_u64().unwrap();
            assert!(taken.insert(p), "port {p} handed out twice");
        }
        // The URL is the one the engine publishes.
        let shown = t.cli(&["--json", "instance", "show", &name]);
        let s: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["url"], r["external_url"], "{s}");
        let port = docker(None)
            .args(["port", &format!("girofle-{name}"), "80/tcp"])
            .output()
            .unwrap();
        let port = String::from_utf8_lossy(&port.stdout);
        assert!(
            port.trim()
                .ends_with(&format!(":{}", r["bindings"]["http_port"])),
            "{name}: the engine publishes {port}"
        );
    }
    for t in [&a, &b] {
        let out = t.cli(&["--json", "instance", "list"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
        assert_eq!(
            std::fs::read_dir(t.root.join("instances")).unwrap().count(),
            3
        );
    }
}

/// A Girofle root alone on a small tmpfs (tests run as root), with the port range of a
/// `TestRoot` of its own; its containers are removed and the tmpfs unmounted on drop.
struct RootOnTmpfs {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    _ports: TestRoot,
}

impl RootOnTmpfs {
    fn new(size_kib: u64, image: &str) -> RootOnTmpfs {
        let ports = TestRoot::new(image);
        let dir = tempfile::Builder::new()
            .prefix("girofle-tmpfs-")
            .tempdir()
            .unwrap();
        run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path()));
        let root = dir.path().join("root");
        girofle_core::Girofle::init(&root).unwrap();
        let mut c = girofle_core::config::Config::load(&ports.root).unwrap();
        c.docker.host = None;
        c.save(&root).unwrap();
        RootOnTmpfs {
            dir,
            root,
            _ports: ports,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        cli_on(&self.root, args)
    }

    /// A new instance with `n` online backups: its name and the backups' ids.
    fn instance_with_backups(&self, tag: &str, n: usize) -> (String, Vec<String>) {
        let name = unique(tag);
        self.cli_ok(&["instance", "create", &name]);
        let ids = (0..n)
            .map(|_| {
                self.cli_ok(&["backup", "create", &name])["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (name, ids)
    }

    /// Every read-only command answers (exit 0) on this root, warning with `words`;
    /// `after` checks what must hold after each.
    fn reads_answer(&self, name: &str, words: &[&str], after: impl Fn()) {
        let reads: [&[&str]; 6] = [
            &["backup", "list", name],
            &["instance", "list"],
            &["instance", "show", name],
            &["status"],
            &["schedule", "list"],
            &["metrics"],
        ];
        for args in reads {
            let out = self.cli(&[&["--json"][..], args].concat());
            let e = stderr(&out);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {e}");
            for n in words {
                assert!(e.contains(n), "{args:?}: the message lacks `{n}`:\n{e}");
            }
            after();
            println!("{:<32} {}", format!("{args:?}"), e.trim());
        }
    }

    fn cli_ok(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        json_ok(&self.cli(&full), &format!("{args:?}"))
    }

    /// Fills the file system to its last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0]);
        let out = run(std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.dir.path()));
        assert_eq!(out.lines().nth(1).map(str::trim), Some("0"), "{out}");
    }

    fn remount(&self, how: &str) {
        run(std::process::Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(self.dir.path()));
    }

    /// The names at the top of the root and every byte of its database and backups:
    /// what a read must not change.
    fn state(&self) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = files(&self.root.join("backups"));
        for e in std::fs::read_dir(&self.root).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = if name.starts_with("inventory.db") {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push((p, bytes));
        }
        out.sort();
        out
    }
}

impl Drop for RootOnTmpfs {
    fn drop(&mut self) {
        remove_containers_of(&self.root, None);
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// With 0 bytes free on the root's file system, `backup list` (and the other listings)
/// still answer and write nothing, and `backup prune` — the remedy Girofle suggests —
/// still deletes; a warning says why. Before, all failed with "disk I/O error": SQLite
/// could not set up its shared-memory file to open the inventory.
#[test]
fn a_full_disk_still_lists_and_prunes_backups() {
    let image = stand_in("17.5.1");
    let disk = RootOnTmpfs::new(8 * 1024, &image);
    let (name, ids) = disk.instance_with_backups("full", 3);
    disk.fill();
    let before = disk.state();
    disk.reads_answer(
        &name,
        &[
            "warning",
            "full file system (0 bytes free)",
            "girofle backup prune",
        ],
        || assert!(disk.state() == before, "a read wrote on the full disk"),
    );
    let listed = disk.cli_ok(&["backup", "list", &name]);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    // Pruning frees space, and is journaled once it has (or says it is not).
    let out = disk.cli(&["--json", "backup", "prune", &name, "--keep-last", "1"]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let deleted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(deleted, serde_json::json!(ids[..2]), "{e}");
    let journal = std::fs::read_to_string(disk.root.join("journal.jsonl")).unwrap_or_default();
    assert!(
        journal.contains("\"backup-prune\"") || e.contains("`backup-prune` is not journaled"),
        "{e}"
    );
    let listed = disk.cli_ok(&["backup", "list", &name]);
    assert_eq!(listed[0]["id"], ids[2].as_str(), "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        disk.cli_ok(&["instance", "show", &name])["state"],
        "running"
    );
}

/// A root on a read-only file system: the read-only commands work, warning that nothing
/// is journaled; the writing ones fail with exit 1 naming the read-only file system.
/// Before, even `instance list` failed.
#[test]
fn a_read_only_root_answers_reads_and_refuses_writes_clearly() {
    let image = stand_in("17.5.1");
    let disk = RootOnTmpfs::new(16 * 1024, &image);
    let (name, ids) = disk.instance_with_backups("ro", 2);
    disk.remount("ro");
    disk.reads_answer(
        &name,
        &["warning", "read-only file system", "nothing is journaled"],
        || {},
    );
    let shown = disk.cli_ok(&["instance", "show", &name]);
    assert_eq!(shown["state"], "running", "{shown}");
    let listed = disk.cli_ok(&["backup", "list", &name]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    let writes: Vec<Vec<&str>> = vec![
        vec!["backup", "create", &name],
        vec!["backup", "prune", &name, "--keep-last", "1"],
        vec!["instance", "create", "other"],
        vec![
            "instance",
            "reconfigure",
            &name,
            "--set",
            "gitlab_rails['time_zone']=UTC",
        ],
        vec!["schedule", "set", &name, "--backup", "0 * * * *"],
    ];
    for args in &writes {
        let out = disk.cli(args);
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.contains("girofle: error") && e.to_lowercase().contains("read-only file system"),
            "{args:?}: the error does not name the read-only file system:\n{e}"
        );
        println!("{:<32} {}", format!("{args:?}"), e.trim());
    }
    // Nothing was lost or half-done.
    disk.remount("rw");
    let listed = disk.cli_ok(&["backup", "list", &name]);
    let still: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(still, ids, "{listed}");
    let list = disk.cli_ok(&["instance", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "running", "{list}");
}
