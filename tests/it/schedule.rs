//! Scheduled backups on the real Docker engine, the stand-in GitLab image and a real
//! S3-compatible server: a daemon that backs up, copies and prunes by itself; a daemon
//! killed mid-backup leaves nothing invalid listed and its run is recorded interrupted; a
//! SIGTERM lets the running backup finish; missed slots are caught up once; the systemd
//! and cron files `schedule install` writes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use girofle_core::schedule::{RunKind, RunOutcome, RunRecord, ScheduleBook, ScheduleOverrides};
use girofle_core::Girofle;
use girofle_tests::*;

fn book(t: &TestRoot) -> ScheduleBook {
    ScheduleBook::open(&t.root.join("inventory.db")).unwrap()
}

fn runs(t: &TestRoot, name: &str, kind: RunKind) -> Vec<RunRecord> {
    book(t)
        .runs(Some(name), 1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect()
}

/// The backup run `daemon` has under way, once it is recorded (within 20 s).
fn running_backup(t: &TestRoot, name: &str, daemon: &Daemon) -> RunRecord {
    poll(Duration::from_secs(20), Duration::from_millis(20), || {
        runs(t, name, RunKind::Backup)
            .into_iter()
            .find(|r| r.outcome == RunOutcome::Running)
    })
    .unwrap_or_else(|| panic!("no backup started; log:\n{}", daemon.log()))
}

/// Every backup listed in `store` verifies end to end; returns their ids.
async fn all_listed_verify(g: &Girofle, name: &str, store: Option<&str>) -> Vec<String> {
    let listed = g.list_backups(Some(name), store).await.unwrap();
    for b in &listed {
        g.verify(&b.id, store)
            .await
            .unwrap_or_else(|e| panic!("listed backup {} in {store:?} does not verify: {e}", b.id));
    }
    listed.into_iter().map(|b| b.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_backs_up_copies_and_applies_retention() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let prefix = unique("sched");
    t.edit_config(|c| {
        c.stores.insert("offsite".into(), s3_store(&prefix));
    });
    let g = t.open().await;
    let name = commission(&g, "sd").await.name;
    let schedule = g
        .set_schedule(
            &name,
            ScheduleOverrides {
                backup: Some("*/3 * * * * *".into()),
                copy: Some("1-59/3 * * * * *".into()),
                keep_last: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        schedule.store.as_deref(),
        Some("offsite"),
        "the only store is the default copy target"
    );

    let started = Instant::now();
    let mut daemon = Daemon::start(&t, "a");
    let done = poll(Duration::from_secs(35), Duration::from_millis(250), || {
        let backups = runs(&t, &name, RunKind::Backup)
            .into_iter()
            .filter(|r| r.outcome == RunOutcome::Ok)
            .count();
        let copied = runs(&t, &name, RunKind::Copy)
            .iter()
            .filter(|r| r.outcome == RunOutcome::Ok && !r.copied.is_empty())
            .count();
        (backups >= 3 && copied >= 2).then_some(())
    });
    assert!(
        done.is_some(),
        "no 3 backups and 2 copies within 35 s; runs: {:#?}\ndaemon log:\n{}",
        book(&t).runs(Some(&name), 100).unwrap(),
        daemon.log()
    );
    eprintln!("3 backups and 2 copies after {:?}", started.elapsed());
    let status = daemon.terminate(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());

    let backup_runs = runs(&t, &name, RunKind::Backup);
    assert!(
        backup_runs.iter().all(|r| r.outcome == RunOutcome::Ok),
        "a backup run did not succeed: {backup_runs:#?}"
    );
    let taken: Vec<String> = backup_runs
        .iter()
        .filter_map(|r| r.backup_id.clone())
        .collect();
    assert!(taken.len() >= 3, "{taken:?}");
    // Retention after every run: at most 2 kept here and there; the newest kept locally.
    let local = all_listed_verify(&g, &name, None).await;
    let remote = all_listed_verify(&g, &name, Some("offsite")).await;
    assert!(
        !local.is_empty() && local.len() <= 2,
        "local keeps {local:?}"
    );
    assert!(
        !remote.is_empty() && remote.len() <= 2,
        "offsite keeps {remote:?}"
    );
    assert!(local.contains(taken.iter().max().unwrap()));
    assert!(
        remote.iter().all(|id| taken.contains(id)),
        "{remote:?} not all taken by the schedule ({taken:?})"
    );
    let pruned: usize = backup_runs.iter().map(|r| r.pruned.len()).sum();
    assert!(pruned >= 1, "retention never pruned: {backup_runs:#?}");
    // Every run is in the journal.
    let journal = g.journal().read_all().unwrap();
    let scheduled = journal
        .iter()
        .filter(|r| r.operation == "scheduled-backup" && r.outcome == "ok")
        .count();
    assert_eq!(scheduled, backup_runs.len());
    assert!(journal.iter().any(|r| r.operation == "daemon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_daemon_lists_nothing_invalid_and_sigterm_lets_a_backup_finish() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let name = commission(&g, "sk").await.name;
    // Some weight in the logs, so a backup takes long enough to be caught mid-way.
    let logs = girofle_core::instance::InstanceDirs::new(&t.root, &name).logs;
    let mut noise = vec![0u8; 48 << 20];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut noise).unwrap();
    std::fs::write(logs.join("noise.log"), &noise).unwrap();
    drop(noise);
    g.set_schedule(
        &name,
        ScheduleOverrides {
            backup: Some("*/2 * * * * *".into()),
            keep_last: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // 1. SIGKILL mid-backup: 100 ms after its run is recorded as running. A backup of
    // ~0.3 s can still end before the kill lands (a CI run once killed 300 ms in, after
    // it had ended): then a new daemon is started and killed again, up to 5 times.
    let mut killed = None;
    for attempt in 1..=5 {
        let mut first = Daemon::start(&t, &format!("killed-{attempt}"));
        let running = running_backup(&t, &name, &first);
        std::thread::sleep(Duration::from_millis(100));
        first.kill();
        let after = runs(&t, &name, RunKind::Backup);
        let state = after.iter().find(|r| r.id == running.id).unwrap();
        if state.outcome == RunOutcome::Running {
            killed = Some(running.id);
            break;
        }
        eprintln!(
            "schedule: attempt {attempt}: run {} ended {:?} before the kill; again",
            running.id, state.outcome
        );
    }
    let killed = killed.expect("in 5 attempts, every backup ended before the daemon was killed");
    all_listed_verify(&g, &name, None).await;

    // 2. A new daemon records the killed run interrupted, once, and backs up again.
    let mut second = Daemon::start(&t, "second");
    let next_ok = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let all = runs(&t, &name, RunKind::Backup);
        let k = all.iter().find(|r| r.id == killed)?;
        if k.outcome != RunOutcome::Interrupted {
            return None;
        }
        all.into_iter()
            .find(|r| r.id > killed && r.outcome == RunOutcome::Ok)
    })
    .unwrap_or_else(|| {
        panic!(
            "no interrupted record and successful backup after the restart: {:#?}\nlog:\n{}",
            book(&t).runs(Some(&name), 100).unwrap(),
            second.log()
        )
    });
    g.verify(next_ok.backup_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    all_listed_verify(&g, &name, None).await;

    // 3. SIGTERM mid-backup: that backup finishes, verifies, and the daemon exits 0.
    let in_flight = running_backup(&t, &name, &second);
    let status = second.terminate(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}; log:\n{}", second.log());
    let finished = runs(&t, &name, RunKind::Backup)
        .into_iter()
        .find(|r| r.id == in_flight.id)
        .unwrap();
    assert_eq!(
        finished.outcome,
        RunOutcome::Ok,
        "{finished:#?}\nlog:\n{}",
        second.log()
    );
    g.verify(finished.backup_id.as_deref().unwrap(), None)
        .await
        .unwrap();

    // 4. SIGTERM with no grace: the running backup is cancelled and recorded interrupted,
    // the daemon still exits 0, and nothing half-written lists.
    let mut third = Daemon::with_grace(&t, "no-grace", 0);
    let cut = running_backup(&t, &name, &third);
    std::thread::sleep(Duration::from_millis(300));
    let status = third.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}; log:\n{}", third.log());
    let cut = runs(&t, &name, RunKind::Backup)
        .into_iter()
        .find(|r| r.id == cut.id)
        .unwrap();
    assert!(
        cut.outcome == RunOutcome::Interrupted || cut.outcome == RunOutcome::Ok,
        "{cut:#?}"
    );

    let all = runs(&t, &name, RunKind::Backup);
    let interrupted: Vec<i64> = all
        .iter()
        .filter(|r| r.outcome == RunOutcome::Interrupted)
        .map(|r| r.id)
        .collect();
    let mut expected = vec![killed];
    if cut.outcome == RunOutcome::Interrupted {
        expected.insert(0, cut.id);
    }
    assert_eq!(interrupted, expected, "{all:#?}");
    // Interrupted runs are journaled as failed scheduled backups (and so notified).
    let journaled = g
        .journal()
        .read_all()
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.operation == "scheduled-backup"
                && r.error.as_deref().unwrap_or("").contains("interrupted")
        })
        .count();
    assert_eq!(journaled, expected.len());
    eprintln!(
        "backups took {:?} ms; killed run {killed} after {} ms; run {} {} at a stop without grace",
        all.iter()
            .filter(|r| r.outcome == RunOutcome::Ok)
            .map(|r| r.duration().as_millis())
            .collect::<Vec<_>>(),
        all.iter()
            .find(|r| r.id == killed)
            .map(|r| r.duration().as_millis())
            .unwrap_or_default(),
        cut.id,
        cut.outcome
    );
    assert!(all.iter().all(|r| r.outcome != RunOutcome::Running));
    all_listed_verify(&g, &name, None).await;
}

/// Sleeps until the wall clock is at least at `t`.
fn sleep_until(t: chrono::DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        std::thread::sleep(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_slots_are_caught_up_once() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let name = commission(&g, "sc").await.name;

    // Bad input is refused, naming the option; nothing changes.
    let out = t.cli(&["schedule", "set", &name, "--backup", "* * *"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backup"));

    // Slots every 2 s for 7 s, in one minute of the wall clock, and none after: no daemon
    // runs while four slots pass.
    if Utc::now().second() > 48 {
        sleep_until(
            Utc::now()
                .with_second(0)
                .unwrap()
                .with_nanosecond(0)
                .unwrap()
                + chrono::Duration::seconds(61),
        );
    }
    let now = Utc::now().with_nanosecond(0).unwrap();
    let (s0, last) = (now.second() + 1, now.second() + 7);
    let cron = format!("{s0}-{last}/2 {} {} * * *", now.minute(), now.hour());
    let out = t.cli(&[
        "schedule", "set", &name, "--backup", &cron, "--copy", "off", "--tz", "UTC",
    ]);
    assert!(out.status.success(), "{out:?}");
    let last_slot = now + chrono::Duration::seconds(7);
    sleep_until(last_slot + chrono::Duration::milliseconds(1500));

    // Two run-due at once: the missed slots make exactly one backup, for the newest slot.
    let spawn = || {
        t.girofle()
            .args(["schedule", "run-due"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let made = runs(&t, &name, RunKind::Backup);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0].outcome, RunOutcome::Ok, "{made:#?}");
    assert_eq!(made[0].slot, last_slot, "the newest missed slot");
    assert_eq!(g.list_backups(Some(&name), None).await.unwrap().len(), 1);

    // A second run-due right after has nothing to do.
    let out = t.cli(&["schedule", "run-due"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing due"),
        "{out:?}"
    );
    assert_eq!(runs(&t, &name, RunKind::Backup).len(), 1);

    // `schedule list` shows the run and the schedule; `schedule set` was journaled.
    let out = t.cli(&["--json", "schedule", "list"]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance"] == name.as_str())
        .unwrap();
    assert_eq!(me["schedule"]["backup"], cron.as_str());
    assert_eq!(me["last_backup"]["outcome"], "ok");
    assert!(me["schedule"]["copy"].is_null());
    let journal = g.journal().read_all().unwrap();
    assert!(journal
        .iter()
        .any(|r| r.operation == "schedule-set" && r.outcome == "ok"));
    assert_eq!(
        journal
            .iter()
            .filter(|r| r.operation == "scheduled-backup")
            .count(),
        1
    );
}

#[test]
fn install_writes_units_that_run_this_binary_on_this_root() {
    let t = TestRoot::new(&format!("{}/gitlab-ce:17.5.1-ce.0", image_prefix()));
    let dir = t.dir.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    let out = t.cli(&["schedule", "install", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("systemctl enable --now girofle-run-due.timer"));
    let service = std::fs::read_to_string(dir.join("girofle-run-due.service")).unwrap();
    let timer = std::fs::read_to_string(dir.join("girofle-run-due.timer")).unwrap();
    let bin = std::fs::canonicalize(girofle_bin()).unwrap();
    let exec = format!(
        "ExecStart={} --root {} schedule run-due",
        bin.display(),
        t.root.display()
    );
    assert!(service.contains(&exec), "{service}\nwanted: {exec}");
    assert!(service.contains("Type=oneshot"), "{service}");
    assert!(timer.contains("OnUnitActiveSec=5min"), "{timer}");
    assert!(timer.contains("Unit=girofle-run-due.service"), "{timer}");
    assert!(timer.contains("WantedBy=timers.target"), "{timer}");

    let out = t.cli(&[
        "schedule",
        "install",
        "--cron",
        "--every",
        "10m",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let cron = std::fs::read_to_string(dir.join("girofle")).unwrap();
    let line = format!(
        "*/10 * * * * root {} --root {} schedule run-due",
        bin.display(),
        t.root.display()
    );
    assert!(cron.contains(&line), "{cron}\nwanted: {line}");
    let out = t.cli(&[
        "schedule",
        "install",
        "--cron",
        "--every",
        "30s",
        "--dir",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
