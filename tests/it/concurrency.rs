//! Concurrent use (R-OPS-2), with real `girofle` processes on the real Docker engine and
//! the stand-in GitLab image: ten commissions at once get distinct names and addresses
//! and a consistent inventory; a second backup of a busy instance is refused naming the
//! holder; a daemon running backups while a person at the CLI creates, reconfigures,
//! removes instances and sets schedules loses no update on either side.

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use girofle_core::schedule::{RunKind, RunOutcome, ScheduleBook};
use girofle_tests::*;
use serde_json::Value;

/// `instance list --json`, by name: (state, record).
fn listed(t: &TestRoot) -> Vec<Value> {
    json_ok(&t.cli(&["--json", "instance", "list"]), "instance list")
        .as_array()
        .unwrap()
        .clone()
}

/// Names of the containers Docker runs for this root.
fn docker_containers(t: &TestRoot) -> BTreeSet<String> {
    let out = run(Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=io.girofle.root={}", t.root.display())));
    out.split_whitespace().map(str::to_string).collect()
}

#[test]
fn ten_commissions_at_once_get_distinct_names_and_addresses() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let names: Vec<String> = (0..10).map(|i| unique(&format!("c{i}"))).collect();
    let started = Instant::now();
    let children: Vec<(String, Child)> = names
        .iter()
        .map(|n| {
            let child = t
                .girofle()
                .args(["--json", "instance", "create", n])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (n.clone(), child)
        })
        .collect();
    let mut addresses = BTreeSet::new();
    let mut ports = Vec::new();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        let record = json_ok(&out, &format!("instance create {name}"));
        assert_eq!(record["name"], name.as_str(), "{record}");
        let b = &record["bindings"];
        for key in ["http_port", "https_port", "ssh_port"] {
            let port = b[key].as_u64().unwrap();
            assert!(
                addresses.insert((b["ip"].as_str().unwrap().to_string(), port)),
                "address {}:{port} handed out twice",
                b["ip"]
            );
            ports.push(port);
        }
    }
    eprintln!("10 concurrent commissions in {:?}", started.elapsed());
    assert_eq!(addresses.len(), 30);
    assert!(ports
        .iter()
        .all(|p| (t.ports.0 as u64..=t.ports.1 as u64).contains(p)));

    // The inventory and Docker agree: the ten, running, each with its own container.
    let list = listed(&t);
    let in_inventory: BTreeSet<String> = list
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_inventory, names.iter().cloned().collect::<BTreeSet<_>>());
    for i in &list {
        assert_eq!(i["state"], "running", "{i}");
        assert!(i["record"].is_object(), "not in the inventory: {i}");
    }
    let containers = docker_containers(&t);
    let expected: BTreeSet<String> = list
        .iter()
        .map(|i| i["container"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(containers, expected, "Docker and the inventory disagree");
    // Docker publishes each instance's recorded HTTP port: the addresses are real.
    for i in &list {
        let port = i["record"]["bindings"]["http_port"].as_u64().unwrap();
        let published =
            run(Command::new("docker").args(["port", i["container"].as_str().unwrap()]));
        assert!(
            published.contains(&format!(":{port}")),
            "{} does not publish {port}: {published}",
            i["name"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_process_is_refused_naming_the_holder() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let name = commission(&g, "busy").await.name;
    // A cold backup holds the lock for seconds (stop, archive, start).
    let first = t
        .girofle()
        .args(["--json", "backup", "create", &name, "--strategy", "cold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let holder_pid = first.id();
    let lock = t.root.join("locks").join(format!("{name}.lock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the first backup never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = t.cli(&["backup", "create", &name]);
    let first = first.wait_with_output().unwrap();
    json_ok(&first, "the first backup");
    assert_eq!(
        second.status.code(),
        Some(4),
        "the second backup was not refused as a conflict: {second:?}"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("`backup`") && stderr.contains(&format!("pid {holder_pid}")),
        "the refusal does not name the holder (backup, pid {holder_pid}): {stderr}"
    );
    let backups = g.list_backups(Some(&name), None).await.unwrap();
    assert_eq!(backups.len(), 1, "{backups:?}");
    // The instance is up again and a backup now goes through.
    assert_eq!(
        g.show(&name).await.unwrap().state,
        girofle_core::InstanceState::Running
    );
    json_ok(
        &t.cli(&["--json", "backup", "create", &name]),
        "a later backup",
    );
}

/// Runs a CLI command that may meet the daemon's lock: retried while refused as busy
/// (exit 4), each refusal naming the daemon's operation.
fn cli_retrying_busy(t: &TestRoot, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = t.cli(args);
        if out.status.code() != Some(4) {
            return out;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("holds its lock"), "{stderr}");
        assert!(Instant::now() < deadline, "{args:?} stayed busy: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_a_person_at_the_cli_lose_no_update() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let busy = commission(&g, "dmn").await.name;
    let set = |name: &str, extra: &[&str]| {
        let mut args = vec!["schedule", "set", name];
        args.extend_from_slice(extra);
        let out = t.cli(&args);
        assert!(
            out.status.success(),
            "schedule set {name} {extra:?}: {out:?}"
        );
    };
    // Backups every 2 s, no copies (no remote store), keep 3.
    set(
        &busy,
        &[
            "--backup",
            "*/2 * * * * *",
            "--copy",
            "off",
            "--keep-last",
            "3",
        ],
    );
    let mut daemon = Daemon::start(&t, "cli");

    // Meanwhile, a person: two new instances, schedules set over and over, a
    // reconfigure of the instance the daemon backs up, a removal.
    let kept = unique("cli");
    let gone = unique("cligone");
    let created = t
        .girofle()
        .args(["instance", "create", &kept])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    json_ok(&t.cli(&["--json", "instance", "create", &gone]), "create");
    let created = created.wait_with_output().unwrap();
    assert!(created.status.success(), "{created:?}");
    for keep in 1..=8 {
        set(
            &kept,
            &["--backup", "0 3 * * *", "--keep-last", &keep.to_string()],
        );
        set(&busy, &["--keep-last", &(keep % 3 + 3).to_string()]);
    }
    let reconf = cli_retrying_busy(
        &t,
        &[
            "instance",
            "reconfigure",
            &busy,
            "--set",
            "gitlab_rails['time_zone']=Europe/Paris",
        ],
    );
    assert!(reconf.status.success(), "{reconf:?}");
    let rm = cli_retrying_busy(&t, &["instance", "rm", &gone, "--purge", "--no-backup"]);
    assert!(rm.status.success(), "{rm:?}");

    // Let the daemon take a few more backups, then stop it.
    let book = ScheduleBook::open(&t.root.join("inventory.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ok = book
            .runs(Some(&busy), 1000)
            .unwrap()
            .iter()
            .filter(|r| r.kind == RunKind::Backup && r.outcome == RunOutcome::Ok)
            .count();
        if ok >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon took {ok} backups in 40 s; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = daemon.terminate(Duration::from_secs(90));
    assert!(status.success(), "daemon exit {status:?}: {}", daemon.log());

    // Every change the person made is there.
    let g = t.open().await;
    let names: BTreeSet<String> = listed(&t)
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [busy.clone(), kept.clone()].into_iter().collect());
    let record = g.show_revealed(&busy).await.unwrap().record.unwrap();
    assert_eq!(
        record
            .settings
            .get("gitlab_rails['time_zone']")
            .map(String::as_str),
        Some("'Europe/Paris'"),
        "the reconfigure was lost: {:?}",
        record.settings
    );
    let schedules = json_ok(&t.cli(&["--json", "schedule", "list"]), "schedule list");
    let schedule_of = |name: &str| {
        schedules
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instance"] == name)
            .unwrap_or_else(|| panic!("no schedule for {name}: {schedules}"))
            .clone()
    };
    let k = schedule_of(&kept);
    assert_eq!(k["schedule"]["backup"], "0 3 * * *", "{k}");
    assert_eq!(k["schedule"]["retention"]["keep_last"], 8, "{k}");
    let b = schedule_of(&busy);
    assert_eq!(b["schedule"]["backup"], "*/2 * * * * *", "{b}");
    assert_eq!(b["schedule"]["retention"]["keep_last"], 8 % 3 + 3, "{b}");
    assert!(
        !schedules
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["instance"] == gone.as_str()),
        "the removed instance still has a schedule: {schedules}"
    );

    // Every run the daemon did is recorded, finished, and in the journal; the backups
    // it kept list and are its own.
    let runs: Vec<_> = book
        .runs(Some(&busy), 1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == RunKind::Backup)
        .collect();
    assert!(
        runs.iter().all(|r| r.outcome == RunOutcome::Ok),
        "a run failed or was left running: {runs:#?}\n{}",
        daemon.log()
    );
    let journal = g.journal().read_all().unwrap();
    let journaled = journal
        .iter()
        .filter(|r| r.operation == "scheduled-backup" && r.outcome == "ok")
        .count();
    assert_eq!(journaled, runs.len(), "runs and journal disagree");
    let taken: BTreeSet<String> = runs.iter().filter_map(|r| r.backup_id.clone()).collect();
    assert_eq!(
        taken.len(),
        runs.len(),
        "a run recorded no backup: {runs:#?}"
    );
    let listed_ids: Vec<String> = g
        .list_backups(Some(&busy), None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert!(!listed_ids.is_empty());
    assert!(
        listed_ids.iter().all(|id| taken.contains(id)),
        "{listed_ids:?} vs {taken:?}"
    );
    for op in ["commission", "reconfigure", "schedule-set", "decommission"] {
        assert!(
            journal.iter().any(|r| r.operation == op),
            "no `{op}` in the journal"
        );
    }
}
