//! Girofle's own state moves to a new root (R-BAK-5, R-STAND-3), on the real Docker engine
//! with the stand-in GitLab image: export on one root, import on an empty one, and the
//! instances and schedules are the same; importing again changes nothing; a root with
//! other instances, a damaged file are refused; the file is private.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use girofle_core::CommissionRequest;
use girofle_tests::*;
use serde_json::Value;

/// `instance list --json` without what depends on the engine's view of this root.
fn instances(root: &Path) -> Vec<Value> {
    let list = json_ok(
        &cli_on(root, &["--json", "instance", "list"]),
        "instance list --json",
    );
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            serde_json::json!({
                "name": i["name"],
                "image": i["image"],
                "url": i["url"],
                "container": i["container"],
                "record": i["record"],
            })
        })
        .collect()
}

fn schedules(root: &Path) -> Value {
    json_ok(
        &cli_on(root, &["--json", "schedule", "list"]),
        "schedule list --json",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_moves_to_a_new_root_and_back_again_idempotently() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let a = unique("sta");
    let b = unique("stb");
    for name in [&a, &b] {
        g.commission(CommissionRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .expect("commission");
    }
    g.backup(&a, online(None)).await.expect("backup");
    // A schedule of its own, so the schedule tables have something to carry.
    let set = cli_on(&t.root, &["schedule", "set", &b, "--backup", "0 */2 * * *"]);
    assert!(
        set.status.success(),
        "schedule set: {}",
        String::from_utf8_lossy(&set.stderr)
    );

    let file = t.dir.path().join("fleet.girofle-state");
    ok(t.cli(&["state", "export", file.to_str().unwrap()]));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the state file holds credentials: it must be private"
    );

    // A root that was never initialised.
    let new_root = t.dir.path().join("new-host-root");
    let out = ok(cli_on(
        &new_root,
        &["--json", "state", "import", file.to_str().unwrap()],
    ));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["instances"].as_array().unwrap().len(), 2, "{out}");
    let before = instances(&t.root);
    assert_eq!(before.len(), 2);
    assert_eq!(
        instances(&new_root),
        before,
        "instance list differs after import"
    );
    assert_eq!(
        schedules(&new_root),
        schedules(&t.root),
        "schedule list differs after import"
    );
    assert_eq!(
        std::fs::read(new_root.join("girofle.toml")).unwrap(),
        std::fs::read(t.root.join("girofle.toml")).unwrap()
    );

    // Again: nothing changes, no journal line doubles.
    let journal_before = std::fs::read_to_string(new_root.join("journal.jsonl")).unwrap();
    let again: Value = serde_json::from_str(&ok(cli_on(
        &new_root,
        &["--json", "state", "import", file.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(again["journal_lines_added"], 0);
    assert_eq!(instances(&new_root), before);
    assert_eq!(schedules(&new_root), schedules(&t.root));
    let journal_after = std::fs::read_to_string(new_root.join("journal.jsonl")).unwrap();
    assert_eq!(
        journal_after.lines().count(),
        journal_before.lines().count() + 1,
        "a second import must add only its own journal record"
    );
    assert!(journal_after.starts_with(&journal_before));

    // A root whose inventory has other instances is refused, unless forced.
    let other_state = t.dir.path().join("other.girofle-state");
    let lone = t.dir.path().join("lone-root");
    ok(cli_on(&lone, &["init"]));
    ok(cli_on(
        &lone,
        &["state", "export", other_state.to_str().unwrap()],
    ));
    let refused = cli_on(
        &new_root,
        &["state", "import", other_state.to_str().unwrap()],
    );
    assert_eq!(
        refused.status.code(),
        Some(4),
        "import over other instances must be refused: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(
        instances(&new_root),
        before,
        "a refused import changed the inventory"
    );

    // A flipped byte is refused before anything is touched.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let damaged = t.dir.path().join("damaged.girofle-state");
    std::fs::write(&damaged, &bytes).unwrap();
    let fresh = t.dir.path().join("fresh-root");
    let out = cli_on(&fresh, &["state", "import", damaged.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a damaged state must be refused as corrupt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fresh.join("inventory.db").exists());

    // Forced over the lone root's empty book, then over the two instances: replaced.
    let forced = ok(cli_on(
        &new_root,
        &[
            "--json",
            "state",
            "import",
            "--force",
            other_state.to_str().unwrap(),
        ],
    ));
    let forced: Value = serde_json::from_str(&forced).unwrap();
    assert_eq!(forced["replaced"], true);
    assert!(instances(&new_root).is_empty());
}
