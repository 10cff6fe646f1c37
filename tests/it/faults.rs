//! Faults, on the real Docker engine, the stand-in GitLab image and real S3 servers:
//! the `girofle` process SIGKILLed at random moments of a cold backup, an online backup,
//! an upload, an in-place restore, a decommission and a reconfigure; the S3 server dying mid-upload; a
//! full disk; the Docker daemon restarting mid-operation. After each fault nothing
//! incomplete is listed, the instance is running and healthy again after the next
//! Girofle command, and its data is intact.
//!
//! Kill points are uniform over the measured duration of one uninterrupted run, drawn
//! from a seeded generator (the seed is printed; `GIROFLE_FAULT_SEED` replays a run).
//! `GIROFLE_FAULT_TRIALS` sets the number of trials per fault class (default 20).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use girofle_core::backup::BackupOptions;
use girofle_core::Girofle;
use girofle_tests::*;

fn trials() -> usize {
    std::env::var("GIROFLE_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// The tally of one fault class, printed at the end.
struct Tally {
    class: &'static str,
    started: Instant,
    trials: usize,
    killed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(class: &'static str) -> Tally {
        Tally {
            class,
            started: Instant::now(),
            trials: 0,
            killed: 0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            eprintln!("faults/{}: trial {}: FAILURE: {w}", self.class, self.trials);
            self.failures.push(format!("trial {}: {w}", self.trials));
        }
    }

    fn finish(self) {
        eprintln!(
            "faults/{}: {} trials ({} with the fault mid-run, {} ended before it), {} failures, {:.0} s",
            self.class,
            self.trials,
            self.killed,
            self.trials - self.killed,
            self.failures.len(),
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            self.failures.is_empty(),
            "faults/{}: {} failures:\n{}",
            self.class,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Runs the CLI to the end; fails the test when it fails. Returns how long it took.
fn timed(t: &TestRoot, args: &[&str]) -> (Duration, Output) {
    let started = Instant::now();
    let out = t.girofle().args(args).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "girofle {args:?}: {}", text(&out));
    (took, out)
}

/// Starts the CLI and SIGKILLs it after `after`; false when it ended before.
fn kill_after(t: &TestRoot, args: &[&str], after: Duration) -> bool {
    let mut child: Child = t
        .girofle()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
    // `Child::kill` is SIGKILL: no destructor, no handler runs.
    let _ = child.kill();
    let _ = child.wait();
    true
}

/// The state `girofle instance show` reports (this is also "the next Girofle command",
/// which recovers what the killed one left), or the error.
fn state_of(t: &TestRoot, name: &str) -> Result<String, String> {
    let out = t
        .girofle()
        .args(["--json", "instance", "show", name])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(json(&out)["state"].as_str().unwrap_or("?").to_string())
}

/// Every backup `backup list` shows passes `backup verify` (new ones only: each id once).
fn listed_backups_verify(
    t: &TestRoot,
    name: &str,
    store: Option<&str>,
    verified: &mut HashSet<String>,
    tally: &mut Tally,
) {
    let mut args = vec!["--json", "backup", "list", name];
    if let Some(s) = store {
        args.extend(["--store", s]);
    }
    let out = t.girofle().args(&args).output().unwrap();
    tally.check(out.status.success(), || {
        format!("backup list: {}", text(&out))
    });
    if !out.status.success() {
        return;
    }
    for entry in json(&out).as_array().cloned().unwrap_or_default() {
        let id = entry["id"].as_str().unwrap().to_string();
        if verified.contains(&id) {
            continue;
        }
        let mut args = vec!["backup", "verify", id.as_str()];
        if let Some(s) = store {
            args.extend(["--store", s]);
        }
        let v = t.girofle().args(&args).output().unwrap();
        tally.check(v.status.success(), || {
            format!("listed backup {id} does not verify: {}", text(&v))
        });
        verified.insert(id);
    }
}

/// No intent record and no staging entry of `name` is left once recovered.
fn nothing_left(t: &TestRoot, name: &str, tally: &mut Tally) {
    let intent = t.root.join("run").join(format!("{name}.intent.json"));
    tally.check(!intent.exists(), || {
        format!(
            "intent record left after recovery: {}",
            std::fs::read_to_string(&intent).unwrap_or_default()
        )
    });
    let staging: Vec<String> = std::fs::read_dir(t.root.join("staging"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.contains(name))
                .collect()
        })
        .unwrap_or_default();
    tally.check(staging.is_empty(), || {
        format!("staging entries left: {staging:?}")
    });
}

/// The common end of a trial: the instance is running and healthy, every listed backup
/// verifies, nothing is left over.
fn after_kill(
    t: &TestRoot,
    name: &str,
    store: Option<&str>,
    verified: &mut HashSet<String>,
    tally: &mut Tally,
) {
    let state = state_of(t, name);
    tally.check(state.as_deref() == Ok("running"), || {
        format!("instance `{name}` is {state:?} after the next command, not running")
    });
    listed_backups_verify(t, name, store, verified, tally);
    nothing_left(t, name, tally);
}

async fn setup(tag: &str) -> (TestRoot, Girofle, WithProject) {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let p = commission_with_project(&g, &t, tag, 3).await;
    (t, g, p)
}

/// Runs the trials of one kill class: `args` is the command killed, `after` checks the
/// state (and may repair what a completed run did, e.g. bring a decommissioned
/// instance back).
fn kill_trials(
    class: &'static str,
    t: &TestRoot,
    args: &[&str],
    mut after: impl FnMut(&mut Tally, bool),
) {
    let mut rng = Rng::seeded("GIROFLE_FAULT_SEED", &format!("faults/{class}"));
    let mut tally = Tally::new(class);
    let (duration, _) = timed(t, args);
    eprintln!(
        "faults/{class}: one uninterrupted run takes {:.2} s",
        duration.as_secs_f64()
    );
    after(&mut tally, false);
    for _ in 0..trials() {
        tally.trials += 1;
        let at = rng.duration_below(duration);
        let killed = kill_after(t, args, at);
        if killed {
            tally.killed += 1;
        }
        after(&mut tally, killed);
    }
    tally.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_cold_backup() {
    let (t, _g, p) = setup("fcold").await;
    let mut verified = HashSet::new();
    kill_trials(
        "cold-backup",
        &t,
        &["backup", "create", &p.name, "--strategy", "cold"],
        |tally, _| after_kill(&t, &p.name, None, &mut verified, tally),
    );
    assert_eq!(ls_remote(&p.url), p.refs, "the pushed commits are intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_online_backup() {
    let (t, _g, p) = setup("fonline").await;
    let mut verified = HashSet::new();
    let gitlab_backups = data_dir(&t, &p.name).join("backups");
    kill_trials(
        "online-backup",
        &t,
        &["backup", "create", &p.name, "--strategy", "online"],
        |tally, _| {
            after_kill(&t, &p.name, None, &mut verified, tally);
            // GitLab's own tar never lingers in the data volume.
            let left: Vec<String> = std::fs::read_dir(&gitlab_backups)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            tally.check(left.is_empty(), || {
                format!("left in the data volume's backups/: {left:?}")
            });
        },
    );
    assert_eq!(ls_remote(&p.url), p.refs, "the pushed commits are intact");
}

/// Starts an online backup with the CLI and SIGKILLs it once GitLab's backup is writing
/// its parts into the data volume (`db/` appears in its backup path): the `docker exec`
/// outlives its client, so `gitlab-backup` goes on in the container.
fn kill_once_gitlab_backs_up(t: &TestRoot, name: &str) {
    let mut child = t
        .girofle()
        .args(["backup", "create", name, "--strategy", "online"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = data_dir(t, name).join("backups/db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before GitLab wrote its parts");
        }
        assert!(Instant::now() < deadline, "GitLab's backup never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How many `gitlab-backup create` processes run in the instance's container.
fn gitlab_backups_running(name: &str) -> usize {
    let out = run(docker(None).args([
        "exec",
        &format!("girofle-{name}"),
        "sh",
        "-c",
        "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' < \"$f\" 2>/dev/null; echo; done | grep -c '[s]tandin.py backup create'; true",
    ]));
    out.trim().parse().unwrap()
}

/// `girofle --json recover`: how long it took, its output, and its record of the
/// interrupted online backup.
fn recover_online_backup(t: &TestRoot) -> (Duration, Output, serde_json::Value) {
    let started = Instant::now();
    let out = t.girofle().args(["--json", "recover"]).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "recover: {}", text(&out));
    let record = json(&out)
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["operation"] == "online-backup")
                .cloned()
        })
        .unwrap_or_else(|| panic!("no online-backup recovered: {}", text(&out)));
    (took, out, record)
}

/// A real GitLab backup takes minutes to hours, and a Girofle killed mid-way leaves it
/// running in the container, writing its tar and staging parts into the data volume.
/// Recovery waits for it as long as `[backup] gitlab_backup_timeout_secs` allows (not a
/// fixed few minutes), then stops it and says so; either way nothing of GitLab's is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_backup_left_running_is_waited_for_up_to_its_bound() {
    let (t, _g, p) = setup("fslow").await;
    let backups = data_dir(&t, &p.name).join("backups");
    let container = format!("girofle-{}", p.name);
    let slow = |secs: u32| {
        run(docker(None).args([
            "exec",
            &container,
            "sh",
            "-c",
            &format!("echo {secs} > /run/gitlab-standin/backup-secs"),
        ]))
    };
    let actions = |record: &serde_json::Value| {
        record["actions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    let clean = |what: &str| {
        assert_eq!(
            gitlab_backups_running(&p.name),
            0,
            "{what}: GitLab's backup still runs"
        );
        assert_eq!(
            listing(&backups),
            Vec::<String>::new(),
            "{what}: left in GitLab's backup path"
        );
        assert_eq!(
            listing(&t.root.join("staging")),
            Vec::<String>::new(),
            "{what}: staging"
        );
        assert!(
            !t.root
                .join("run")
                .join(format!("{}.intent.json", p.name))
                .exists(),
            "{what}: intent record left"
        );
        assert_eq!(state_of(&t, &p.name).as_deref(), Ok("running"), "{what}");
    };

    // Within the bound: a listing does not hang on it (it warns, and leaves GitLab's
    // files alone while it writes them); recovery waits for it to end by itself.
    slow(30);
    t.edit_config(|c| c.backup.gitlab_backup_timeout_secs = 600);
    kill_once_gitlab_backs_up(&t, &p.name);
    assert!(
        gitlab_backups_running(&p.name) > 0,
        "the kill stopped GitLab's backup"
    );
    let listed = t.girofle().args(["instance", "list"]).output().unwrap();
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stderr).contains("still runs"),
        "{}",
        text(&listed)
    );
    assert!(
        t.root
            .join("run")
            .join(format!("{}.intent.json", p.name))
            .exists()
            && backups.join("db").exists()
            && gitlab_backups_running(&p.name) > 0,
        "a listing removed the record or GitLab's files while GitLab's backup runs"
    );
    let (took, out, record) = recover_online_backup(&t);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        took >= Duration::from_secs(6),
        "recovery returned after {took:?}, before GitLab's backup could have ended"
    );
    assert!(
        said.contains("is still running in the container; waiting for it to end"),
        "no progress on stderr: {said}"
    );
    let done = actions(&record);
    assert!(
        record["outcome"] == "rolled-back"
            && done.contains("for GitLab's backup to end")
            && done.contains("removed GitLab's tar"),
        "{record}"
    );
    clean("after waiting");

    // Past the bound: recovery stops it (inside the container), says so, and removes its
    // files all the same.
    slow(600);
    t.edit_config(|c| c.backup.gitlab_backup_timeout_secs = 3);
    kill_once_gitlab_backs_up(&t, &p.name);
    let (took, out, record) = recover_online_backup(&t);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(60), "recovery took {took:?}");
    assert!(
        said.contains("gitlab_backup_timeout_secs") && said.contains("stopped it"),
        "{said}"
    );
    let done = actions(&record);
    assert!(
        record["outcome"] == "rolled-back" && done.contains("stopped it"),
        "{record}"
    );
    clean("after stopping it");

    // GitLab backs up again afterwards (the stopped run's lock is stale).
    slow(0);
    timed(&t, &["backup", "create", &p.name, "--strategy", "online"]);
    assert_eq!(listing(&backups), Vec::<String>::new());
    assert_eq!(ls_remote(&p.url), p.refs, "the pushed commits are intact");
}

fn data_dir(t: &TestRoot, name: &str) -> PathBuf {
    girofle_core::instance::InstanceDirs::new(&t.root, name).data
}

fn logs_dir(t: &TestRoot, name: &str) -> PathBuf {
    girofle_core::instance::InstanceDirs::new(&t.root, name).logs
}

/// Writes `size` bytes that do not compress (so uploads take measurable time).
fn incompressible(path: &Path, size: usize) {
    let mut rng = Rng(0x5eed);
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(size);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_upload() {
    let (t, _g, p) = setup("fupload").await;
    t.edit_config(|c| {
        c.stores
            .insert("s3".into(), s3_store(&unique("faults-upload")));
    });
    let g = Girofle::open(&t.root, Default::default()).await.unwrap();
    // Logs go into online backups too: 12 MB that do not compress make the upload last.
    incompressible(&logs_dir(&t, &p.name).join("big.log"), 12 << 20);
    let local = g
        .backup(&p.name, BackupOptions::default())
        .await
        .expect("a local backup to copy");
    let s3 = g.store(Some("s3")).unwrap();
    let mut verified = HashSet::new();
    let mut rng = Rng::seeded("GIROFLE_FAULT_SEED", "faults/upload");
    let create = ["backup", "create", &p.name, "--store", "s3"];
    let copy = ["backup", "copy", &local.id, "--to", "s3"];
    let (d_create, _) = timed(&t, &create);
    let (d_copy, _) = timed(&t, &copy);
    eprintln!(
        "faults/upload: uninterrupted: backup to S3 {:.2} s, copy to S3 {:.2} s",
        d_create.as_secs_f64(),
        d_copy.as_secs_f64()
    );
    let mut tally = Tally::new("upload");
    for i in 0..trials() {
        tally.trials += 1;
        let killed = if i % 2 == 0 {
            kill_after(&t, &create, rng.duration_below(d_create))
        } else {
            // The copy starts from nothing in the destination each time.
            for key in ["manifest", "manifest.minisig", "tar.zst", "index"] {
                let _ = s3.delete(&format!("{}.{key}", local.id)).await;
            }
            verified.remove(&local.id);
            kill_after(&t, &copy, rng.duration_below(d_copy))
        };
        if killed {
            tally.killed += 1;
        }
        after_kill(&t, &p.name, Some("s3"), &mut verified, &mut tally);
    }
    tally.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_in_place_restore() {
    let (t, g, p) = setup("frestore").await;
    let b0 = g
        .backup(&p.name, cold(None))
        .await
        .expect("the backup to restore");
    let mut verified = HashSet::new();
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0;
    kill_trials("in-place-restore", &t, &["restore", &b0.id], |tally, _| {
        after_kill(&t, &p.name, None, &mut verified, tally);
        // Restored or rolled back, the instance has the pushed commits, fsck-clean.
        let refs = std::panic::catch_unwind(|| ls_remote(&p.url));
        tally.check(refs.as_ref().is_ok_and(|r| *r == p.refs), || {
            format!("refs after the kill: {refs:?}, pushed: {}", p.refs)
        });
        n += 1;
        let dest = scratch.path().join(format!("clone-{n}"));
        let fsck = std::panic::catch_unwind(|| clone_and_fsck(&p.url, &dest));
        tally.check(fsck.is_ok(), || "clone + git fsck failed".to_string());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_decommission() {
    let (t, g, p) = setup("fdecom").await;
    let b0 = g
        .backup(&p.name, cold(None))
        .await
        .expect("the backup to bring the instance back with");
    let decommissioned = |t: &TestRoot| -> usize {
        std::fs::read_dir(t.root.join("decommissioned"))
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    let mut verified = HashSet::new();
    let mut archived = decommissioned(&t);
    let container = girofle_core::instance::container_name(&p.name);
    kill_trials(
        "decommission",
        &t,
        &["instance", "rm", &p.name],
        |tally, _| {
            // The next command recovers; then it is all there, or all gone.
            let list = t
                .girofle()
                .args(["--json", "instance", "list"])
                .output()
                .unwrap();
            tally.check(list.status.success(), || text(&list));
            let listed = json(&list)
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .find(|i| i["name"] == p.name.as_str());
            let engine_has = docker(None)
                .args(["inspect", &container])
                .output()
                .unwrap()
                .status
                .success();
            let dir = t.root.join("instances").join(&p.name);
            match listed {
                Some(i) => {
                    tally.check(
                        i["state"] == "running" && engine_has && dir.exists(),
                        || {
                            format!(
                                "half decommissioned: listed {i}, container {engine_has}, dir {}",
                                dir.exists()
                            )
                        },
                    );
                    after_kill(&t, &p.name, None, &mut verified, tally);
                    let refs = std::panic::catch_unwind(|| ls_remote(&p.url));
                    tally.check(refs.as_ref().is_ok_and(|r| *r == p.refs), || {
                        format!("refs after the kill: {refs:?}")
                    });
                }
                None => {
                    let now = decommissioned(&t);
                    tally.check(!engine_has && !dir.exists() && now == archived + 1, || {
                        format!(
                            "half decommissioned: not listed, container {engine_has}, dir {}, archives {archived} -> {now}",
                            dir.exists()
                        )
                    });
                    nothing_left(&t, &p.name, tally);
                    archived = now;
                    // Bring it back for the next trial.
                    let restored = t.girofle().args(["restore", &b0.id]).output().unwrap();
                    tally.check(restored.status.success(), || {
                        format!("restore after decommission: {}", text(&restored))
                    });
                }
            }
        },
    );
}

/// A reconfigure killed at a random moment: after the next command, the setting the
/// inventory records is the one in gitlab.rb and the one GitLab runs with (the new value
/// or the previous one, never a mix), the instance is healthy, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_reconfigure() {
    let (t, _g, p) = setup("freconf").await;
    let key = "gitlab_rails['time_zone']";
    // Real zones (GitLab refuses an unknown one), none a substring of another.
    const ZONES: &[&str] = &[
        "Europe/Paris",
        "Asia/Tokyo",
        "America/Lima",
        "Africa/Cairo",
        "Europe/Oslo",
        "Asia/Seoul",
        "Europe/Rome",
        "Asia/Dubai",
        "America/Bogota",
        "Europe/Madrid",
        "Australia/Perth",
        "Asia/Kabul",
        "Europe/Vienna",
        "Africa/Nairobi",
        "Pacific/Fiji",
        "Europe/Warsaw",
        "Asia/Manila",
        "America/Havana",
        "Europe/Athens",
        "Asia/Baku",
        "Europe/Lisbon",
    ];
    let zone = |i: usize| ZONES[i % ZONES.len()].to_string();
    let reconfigure = |i: usize| -> Vec<String> {
        ["instance", "reconfigure", &p.name, "--set"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(format!("{key}={}", zone(i))))
            .collect()
    };
    let mut rng = Rng::seeded("GIROFLE_FAULT_SEED", "faults/reconfigure");
    let mut tally = Tally::new("reconfigure");
    let first = reconfigure(0);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let (duration, _) = timed(&t, &first);
    eprintln!(
        "faults/reconfigure: one uninterrupted run takes {:.2} s",
        duration.as_secs_f64()
    );
    let dirs = girofle_core::instance::InstanceDirs::new(&t.root, &p.name);
    let mut current = zone(0);
    for i in 1..=trials() {
        tally.trials += 1;
        let owned = reconfigure(i);
        let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
        if kill_after(&t, &argv, rng.duration_below(duration)) {
            tally.killed += 1;
        }
        let state = state_of(&t, &p.name);
        tally.check(state.as_deref() == Ok("running"), || {
            format!(
                "instance `{}` is {state:?} after the next command, not running",
                p.name
            )
        });
        // What the inventory records...
        let show = t
            .girofle()
            .args(["--json", "instance", "show", &p.name, "--reveal"])
            .output()
            .unwrap();
        let recorded = json(&show)["record"]["settings"][key]
            .as_str()
            .map(|v| v.trim_matches('\'').to_string());
        let expected = [current.clone(), zone(i)];
        tally.check(
            recorded.as_ref().is_some_and(|r| expected.contains(r)),
            || format!("recorded {key} is {recorded:?}, not one of {expected:?}"),
        );
        let recorded = recorded.unwrap_or_default();
        // ...is what gitlab.rb says...
        let rb = std::fs::read_to_string(dirs.config.join("gitlab.rb")).unwrap_or_default();
        let line = format!("{key} = '{recorded}'");
        tally.check(rb.lines().any(|l| l.trim() == line), || {
            format!("gitlab.rb lacks `{line}`:\n{rb}")
        });
        tally.check(
            !expected
                .iter()
                .filter(|z| **z != recorded)
                .any(|z| rb.contains(z.as_str())),
            || format!("gitlab.rb holds another zone than the recorded {recorded}:\n{rb}"),
        );
        // ...and what GitLab applied.
        let applied = std::fs::read(dirs.data.join("etc/effective-settings.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["settings"]["gitlab_rails"]["time_zone"]
                    .as_str()
                    .map(String::from)
            });
        tally.check(applied.as_deref() == Some(recorded.as_str()), || {
            format!("GitLab runs with time_zone {applied:?}, Girofle records {recorded}")
        });
        let refs = std::panic::catch_unwind(|| ls_remote(&p.url));
        tally.check(refs.as_ref().is_ok_and(|r| *r == p.refs), || {
            format!("refs after the kill: {refs:?}")
        });
        nothing_left(&t, &p.name, &mut tally);
        current = recorded;
    }
    tally.finish();
}

/// A private s3s-fs server on its own port and directory, killed when dropped.
struct PrivateS3 {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivateS3 {
    const KEY: &'static str = "faults-key";
    const SECRET: &'static str = "faults-secret-must-not-leak-0123";

    fn start() -> PrivateS3 {
        let bin = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| Path::new(d).join("s3s-fs"))
            .chain(
                std::env::var("HOME")
                    .ok()
                    .map(|h| Path::new(&h).join(".cargo/bin/s3s-fs")),
            )
            .find(|p| p.exists())
            .expect("s3s-fs is not installed: run `scripts/s3-server start` once (it installs it)");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("faults")).unwrap();
        let port = free_port();
        let mut s = PrivateS3 {
            child: None,
            port,
            dir,
            bin,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::KEY, "--secret-key", Self::SECRET])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn store(&self) -> girofle_core::store::StoreConfig {
        girofle_core::store::StoreConfig {
            url: "s3://faults/backups".into(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: Some("us-east-1".into()),
            access_key_id: Some(Self::KEY.into()),
            secret_access_key: Some(Self::SECRET.into()),
            allow_http: Some(true),
            ..Default::default()
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_dies_mid_upload() {
    let mut tally = Tally::new("s3-server-killed");
    let (t, _g, p) = setup("fs3").await;
    let mut s3 = PrivateS3::start();
    t.edit_config(|c| {
        c.stores.insert("edge".into(), s3.store());
    });
    incompressible(&logs_dir(&t, &p.name).join("big.log"), 24 << 20);
    let args = ["backup", "create", &p.name, "--store", "edge"];
    let (full, _) = timed(&t, &args);
    let mut verified = HashSet::new();
    listed_backups_verify(&t, &p.name, Some("edge"), &mut verified, &mut tally);
    // Kill the server while the upload is in progress: as soon as a new file of 1 MiB or
    // more is in its directory (a part of the archive's multipart upload being received;
    // the 24 MiB of incompressible log make 3 parts). The moment is the server's, not a
    // guess from the time of the first run (a CI run once killed it 0.7 s in, after that
    // backup had ended). A backup that still completed first is counted as ended before
    // the fault, and tried again.
    for attempt in 1..=5 {
        let before = verified.len();
        let known = files_under(s3.dir.path());
        let mut child = t
            .girofle()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let fallback = started + full * 3 + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none()
            && Instant::now() < fallback
            && !files_under(s3.dir.path())
                .difference(&known)
                .any(|(_, size)| *size >= 1 << 20)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let written: Vec<String> = files_under(s3.dir.path())
            .difference(&known)
            .map(|(f, n)| {
                format!(
                    "{} ({n} B)",
                    f.strip_prefix(s3.dir.path()).unwrap().display()
                )
            })
            .collect();
        s3.kill();
        let killed_at = started.elapsed();
        let out = child.wait_with_output().unwrap();
        let failed_after = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "faults/s3-server-killed: attempt {attempt}: killed at {:.2} s with {written:?} written, Girofle ended after {:.2} s ({}): {stderr}",
            killed_at.as_secs_f64(),
            failed_after.as_secs_f64(),
            out.status
        );
        tally.trials += 1;
        s3.launch();
        if out.status.success() {
            // Honest only if the backup it reported is whole: listed and verified.
            listed_backups_verify(&t, &p.name, Some("edge"), &mut verified, &mut tally);
            tally.check(verified.len() == before + 1, || {
                format!(
                    "the backup succeeded with the server dead, but is not listed: {verified:?}"
                )
            });
            continue;
        }
        tally.killed += 1;
        tally.check(stderr.contains("edge"), || {
            format!("the error does not name the store: {stderr}")
        });
        tally.check(!stderr.contains(PrivateS3::SECRET), || {
            "the error leaks the secret key".into()
        });
        tally.check(!stderr.contains("panicked"), || {
            format!("a panic: {stderr}")
        });
        tally.check(state_of(&t, &p.name).as_deref() == Ok("running"), || {
            "instance not running".into()
        });
        listed_backups_verify(&t, &p.name, Some("edge"), &mut verified, &mut tally);
        tally.check(verified.len() == before, || {
            format!("the interrupted backup is listed: {verified:?}")
        });
        let next = t.girofle().args(args).output().unwrap();
        tally.check(next.status.success(), || {
            format!("the next run failed: {}", text(&next))
        });
        listed_backups_verify(&t, &p.name, Some("edge"), &mut verified, &mut tally);
        tally.check(verified.len() == before + 1, || {
            format!("listed: {verified:?}")
        });
        break;
    }
    tally.check(tally.killed == 1, || {
        "no attempt killed the server while the upload was in progress".into()
    });
    tally.finish();
}

/// Every file under `dir` with its size: it changes as soon as a server writes.
fn files_under(dir: &Path) -> HashSet<(PathBuf, u64)> {
    let mut found = HashSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => todo.push(entry.path()),
                Ok(m) => {
                    found.insert((entry.path(), m.len()));
                }
                Err(_) => {}
            }
        }
    }
    found
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_kib: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("girofle-full-")
            .tempdir()
            .unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path()));
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Files of a directory tree whose name marks them unfinished (`#digits`, `.tmp`).
fn unfinished_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            let f = p.file_name().unwrap_or_default().to_string_lossy();
            f.contains('#') || f.contains(".tmp")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_full_during_backup() {
    let mut tally = Tally::new("disk-full");
    let (t, _g, p) = setup("ffull").await;
    let disk = SmallDisk::mount(8 * 1024);
    t.edit_config(|c| {
        c.stores.insert(
            "nas".into(),
            girofle_core::store::StoreConfig {
                url: format!("file://{}", disk.path().display()),
                ..Default::default()
            },
        );
    });
    let args = ["--json", "backup", "create", &p.name, "--store", "nas"];
    let (_, first) = timed(&t, &args);
    let old = json(&first)["id"].as_str().unwrap().to_string();
    // Now the instance holds more than the disk has left.
    incompressible(&logs_dir(&t, &p.name).join("big.log"), 9 << 20);
    let out = t.girofle().args(&args[1..]).output().unwrap();
    tally.trials += 1;
    tally.killed += 1;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("faults/disk-full: {stderr}");
    tally.check(!out.status.success(), || {
        "the backup succeeded on a full disk".into()
    });
    let lower = stderr.to_lowercase();
    tally.check(lower.contains("full") || lower.contains("no space"), || {
        format!("the error does not say the disk is full: {stderr}")
    });
    tally.check(
        stderr.contains(&disk.path().display().to_string()) || stderr.contains("`nas`"),
        || format!("the error does not say where: {stderr}"),
    );
    let left = unfinished_files(disk.path());
    tally.check(left.is_empty(), || format!("temp files left: {left:?}"));
    tally.check(state_of(&t, &p.name).as_deref() == Ok("running"), || {
        "instance not running".into()
    });
    let mut verified = HashSet::new();
    listed_backups_verify(&t, &p.name, Some("nas"), &mut verified, &mut tally);
    tally.check(verified == HashSet::from([old.clone()]), || {
        format!("listed after the failure: {verified:?}, expected only {old}")
    });
    nothing_left(&t, &p.name, &mut tally);
    tally.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_daemon_restarts_mid_operation() {
    // The restart cuts every container of the main engine off for a while too.
    let alone = engine::alone();
    let host = second_engine();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/second-docker");
    assert!(
        Command::new(&script)
            .arg("status")
            .output()
            .unwrap()
            .status
            .success(),
        "the second Docker engine is not running: run `scripts/second-docker start`"
    );
    let mut tally = Tally::new("docker-restart");
    let t = TestRoot::holding(alone, &stand_in("17.5.1"), Some(host.clone()));
    let g = t.open().await;
    let p = commission_with_project(&g, &t, "fdock", 2).await;
    let restart = || {
        let out = Command::new(&script).arg("restart").output().unwrap();
        assert!(
            out.status.success(),
            "second-docker restart: {}",
            text(&out)
        );
    };
    // Engine and inventory agree: every record's container is there and running, and
    // no container of this root is unknown to the inventory.
    let agree = |tally: &mut Tally, what: &str| {
        let out = t
            .girofle()
            .args(["--json", "instance", "list"])
            .output()
            .unwrap();
        tally.check(out.status.success(), || {
            format!("{what}: instance list: {}", text(&out))
        });
        let listed = json(&out).as_array().cloned().unwrap_or_default();
        let ps = docker(Some(&host))
            .args(["ps", "-a", "--format", "{{.Names}} {{.State}}", "--filter"])
            .arg(format!("label=io.girofle.root={}", t.root.display()))
            .output()
            .unwrap();
        let engine = String::from_utf8_lossy(&ps.stdout).into_owned();
        for i in &listed {
            let state = i["state"].as_str().unwrap_or("?");
            let container = i["container"].as_str().unwrap_or("?");
            let in_engine = engine
                .lines()
                .find(|l| l.starts_with(&format!("{container} ")));
            let ok = match state {
                "running" | "starting" | "unhealthy" => {
                    in_engine.is_some_and(|l| l.ends_with("running"))
                }
                "stopped" => in_engine.is_some_and(|l| !l.ends_with("running")),
                "missing" => in_engine.is_none(),
                _ => false,
            };
            tally.check(ok, || {
                format!("{what}: listed {i}, engine says {in_engine:?}")
            });
        }
        tally.check(listed.len() == engine.lines().count(), || {
            format!("{what}: {} listed, engine has:\n{engine}", listed.len())
        });
    };
    // 1. A cold backup while the engine restarts.
    let started = Instant::now();
    let child = t
        .girofle()
        .args(["backup", "create", &p.name, "--strategy", "cold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    restart();
    let out = child.wait_with_output().unwrap();
    tally.trials += 1;
    tally.killed += usize::from(!out.status.success());
    eprintln!(
        "faults/docker-restart: cold backup ended after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    tally.check(!stderr.contains("panicked"), || {
        format!("a panic: {stderr}")
    });
    agree(&mut tally, "after the cold backup");
    tally.check(state_of(&t, &p.name).as_deref() == Ok("running"), || {
        "instance not running after the restart".into()
    });
    let mut verified = HashSet::new();
    listed_backups_verify(&t, &p.name, None, &mut verified, &mut tally);
    // 2. A commission while the engine restarts.
    let name = unique("fdock2");
    let child = t
        .girofle()
        .args(["instance", "create", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    restart();
    let out = child.wait_with_output().unwrap();
    tally.trials += 1;
    tally.killed += usize::from(!out.status.success());
    eprintln!("faults/docker-restart: commission: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    tally.check(!stderr.contains("panicked"), || {
        format!("a panic: {stderr}")
    });
    if !out.status.success() {
        tally.check(stderr.starts_with("girofle: error:"), || {
            format!("not a clean error: {stderr}")
        });
    }
    agree(&mut tally, "after the commission");
    let s = state_of(&t, &name);
    tally.check(
        (out.status.success() && s.as_deref() == Ok("running"))
            || (!out.status.success() && s.is_err()),
        || format!("commission {}: then `{name}` is {s:?}", out.status),
    );
    // The engine restarted the first instance by its restart policy; `start` waits for it.
    let started = t
        .girofle()
        .args(["instance", "start", &p.name])
        .output()
        .unwrap();
    tally.check(started.status.success(), || {
        format!("instance start: {}", text(&started))
    });
    tally.check(state_of(&t, &p.name).as_deref() == Ok("running"), || {
        "first instance not running".into()
    });
    tally.finish();
}

/// A killed Girofle may leave a `docker rm -f` the engine is still carrying out; the next
/// removal (recovery's) gets "removal ... already in progress" from the engine. It must
/// wait for it and report the container gone, not fail (it left a decommission half
/// recovered: the record listed with no container and no data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_already_under_way_is_waited_for() {
    use girofle_core::runtime::{ContainerRuntime, DockerRuntime};
    // No test root here: its own share of the engines.
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("the Docker engine (scripts/ensure-docker starts it)");
    let name = format!("girofle-removal-race-{}", std::process::id());
    for round in 0..3 {
        let run = docker(None)
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--entrypoint",
                "sleep",
                &image,
                "600",
            ])
            .output()
            .unwrap();
        assert!(run.status.success(), "docker run: {}", text(&run));
        // Two removals at once: one of them finds the other's under way.
        let (a, b) = tokio::join!(runtime.remove(&name, true), runtime.remove(&name, true));
        let gone = runtime.inspect(&name).await.unwrap().is_none();
        let _ = docker(None).args(["rm", "-f", &name]).output();
        assert!(
            a.is_ok() && b.is_ok() && gone,
            "round {round}: concurrent removals gave {a:?} and {b:?}; container gone: {gone}"
        );
    }
}
