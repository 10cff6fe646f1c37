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
