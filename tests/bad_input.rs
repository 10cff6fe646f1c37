//! Wrong input through the `girofle` CLI: each is a clear error with the right exit code,
//! and nothing is changed (no container, no directory, no inventory record, no address).

use std::net::TcpListener;
use std::process::Output;

use girofle_tests::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
        e.contains("not healthy after 1 s") && e.contains("last container log lines"),
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
            std::process::Command::new(girofle_bin())
                .arg("--root")
                .arg(&t.root)
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
    let out = std::process::Command::new(girofle_bin())
        .arg("--root")
        .arg(&root)
        .arg("init")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, root)
}

fn girofle_at(root: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(girofle_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
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
    let out = girofle_at(root, args);
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
        let out = girofle_at(&root, &["instance", "list"]);
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
        let out = girofle_at(&root, &args);
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
    let out = girofle_at(&root, &["instance", "list"]);
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
