//! The instance lifecycle on the real Docker engine with the stand-in GitLab image:
//! commission, push, list, stop/start, reconfigure, drift, decommission, journal.

use std::collections::BTreeSet;
use std::process::Command;

use girofle_core::instance::InstanceDirs;
use girofle_core::{CommissionRequest, DecommissionOptions, InstanceState};
use girofle_tests::*;

const SECRET: &str = "S3cret-root-pw-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_lifecycle_keeps_data_and_books() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let names = [unique("web"), unique("ci"), unique("docs")];

    // Three instances at once: distinct addresses, all healthy.
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let g = g.clone();
        let mut settings = vec![];
        if i == 0 {
            settings.push(format!("gitlab_rails['initial_root_password']={SECRET}"));
        }
        let request = CommissionRequest {
            name: name.clone(),
            settings,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move { g.commission(request).await }));
    }
    let mut records = Vec::new();
    for task in tasks {
        records.push(task.await.unwrap().expect("commission"));
    }
    let mut addresses = BTreeSet::new();
    for r in &records {
        for a in r.bindings.addresses() {
            assert!(addresses.insert(a), "address {a:?} handed out twice");
            assert!(
                (t.ports.0..=t.ports.1).contains(&a.1),
                "port outside the pool"
            );
        }
        assert_eq!(
            r.external_url,
            format!("http://127.0.0.1:{}", r.bindings.http_port)
        );
    }
    let list = g.list().await.unwrap();
    assert_eq!(list.len(), 3);
    assert!(
        list.iter().all(|s| s.state == InstanceState::Running),
        "{list:?}"
    );

    // Data owned as GitLab wants it, pushed over real smart HTTP.
    let web = &records[0];
    // Its root password is the one given at creation.
    let url = project_url(&web.external_url, SECRET, "team/app.git");
    let work = t.dir.path().join("work");
    let refs = push_project(&work, &url, 3);
    assert!(refs.contains("refs/tags/v1.0") && refs.contains("refs/heads/feature"));
    let dirs = InstanceDirs::new(&t.root, &web.name);
    let repo = dirs.data.join("git-data/repositories/team/app.git");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&repo).unwrap().uid(),
        998,
        "repository not owned by git"
    );

    // Stop, start: the commits are still there.
    g.stop(&web.name).await.unwrap();
    assert_eq!(
        g.show(&web.name).await.unwrap().state,
        InstanceState::Stopped
    );
    g.start(&web.name).await.unwrap();
    assert_eq!(ls_remote(&url), refs);

    // The setting given at creation is in the managed block of gitlab.rb.
    let rb = dirs.config.join("gitlab.rb");
    let before = std::fs::read_to_string(&rb).unwrap();
    let managed = girofle_core::instance::managed_settings(&before);
    assert_eq!(
        managed
            .get("gitlab_rails['initial_root_password']")
            .map(String::as_str),
        Some(format!("'{SECRET}'").as_str()),
        "a setting given at creation did not reach gitlab.rb"
    );

    // Reconfigure: the setting lands in the managed block of gitlab.rb, the rest kept.
    g.reconfigure(
        &web.name,
        &["gitlab_rails['time_zone']=Europe/Paris".into()],
        &[],
    )
    .await
    .unwrap();
    let after = std::fs::read_to_string(&rb).unwrap();
    assert!(
        after.contains("gitlab_rails['time_zone'] = 'Europe/Paris'"),
        "{after}"
    );
    let untouched: String = before.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(after.starts_with(&untouched));
    // A top-level setting is a method call: as `name = value` GitLab would accept it and
    // set nothing.
    g.reconfigure(
        &web.name,
        &["registry_external_url=https://registry.example.com".into()],
        &[],
    )
    .await
    .unwrap();
    let after = std::fs::read_to_string(&rb).unwrap();
    assert!(
        after.contains("\nregistry_external_url 'https://registry.example.com'\n"),
        "{after}"
    );
    let applied = std::fs::read_to_string(
        InstanceDirs::new(&t.root, &web.name)
            .data
            .join("etc/effective-settings.json"),
    )
    .unwrap();
    assert!(
        applied.contains("https://registry.example.com"),
        "GitLab did not apply the top-level setting: {applied}"
    );
    assert_eq!(
        g.show(&web.name).await.unwrap().state,
        InstanceState::Running
    );
    // A setting GitLab refuses (a literal Girofle accepts, on a key three levels deep,
    // which GitLab cannot assign): error, the previous file back, still healthy.
    let e = g
        .reconfigure(&web.name, &["gitlab_rails['x']['y']['z']=1".into()], &[])
        .await;
    if let Ok(r) = &e {
        panic!("GitLab accepted a broken setting: {r:?}");
    }
    assert_eq!(std::fs::read_to_string(&rb).unwrap(), after);
    assert_eq!(
        g.show(&web.name).await.unwrap().state,
        InstanceState::Running
    );

    // Drift: a container removed behind Girofle's back shows as missing; start brings it
    // back on the same data.
    let ci = &records[1];
    let out = Command::new("docker")
        .args(["rm", "-f", &ci.container_name()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        g.show(&ci.name).await.unwrap().state,
        InstanceState::Missing
    );
    g.start(&ci.name).await.unwrap();
    assert_eq!(
        g.show(&ci.name).await.unwrap().state,
        InstanceState::Running
    );

    // Decommission: container gone, data kept, addresses free again.
    let docs = &records[2];
    let d = g
        .decommission(
            &docs.name,
            DecommissionOptions {
                no_backup: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let kept = d.archived_to.expect("data archived");
    assert!(kept.join("config/gitlab-secrets.json").exists());
    assert!(!InstanceDirs::new(&t.root, &docs.name).base.exists());
    let out = Command::new("docker")
        .args(["inspect", &docs.container_name()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "container still there");
    let reuse = g
        .commission(CommissionRequest {
            name: unique("again"),
            addresses: girofle_core::address::AddressRequest {
                http_port: Some(docs.bindings.http_port),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("the freed address is usable again");
    assert_eq!(reuse.bindings.http_port, docs.bindings.http_port);
    // What GitLab asks of its container: 256 MB of /dev/shm, a log that cannot fill the
    // disk, and the configured time to stop.
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.ShmSize}} {{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}} {{index .HostConfig.LogConfig.Config \"max-file\"}} {{.Config.StopTimeout}}",
            &reuse.container_name(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "268435456 json-file 50m 3 10",
        "{out:?}"
    );

    // Journal: one record per operation, and no secret anywhere in it.
    let journal = std::fs::read_to_string(g.journal().path()).unwrap();
    assert!(!journal.contains(SECRET), "secret in the journal");
    let ops: Vec<String> = g
        .journal()
        .read_all()
        .unwrap()
        .into_iter()
        .map(|r| r.operation)
        .collect();
    let count = |op: &str| ops.iter().filter(|o| o.as_str() == op).count();
    assert_eq!(count("commission"), 4, "{ops:?}");
    assert_eq!(count("reconfigure"), 3, "{ops:?}");
    assert_eq!(count("decommission"), 1, "{ops:?}");
    assert_eq!(count("stop"), 1, "{ops:?}");
    assert_eq!(count("start"), 2, "{ops:?}");
    // The CLI lists the same fleet.
    let out = t.cli(&["--json", "instance", "list"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
}

/// The settings Girofle owns hold (gitlab.rb is read after GITLAB_OMNIBUS_CONFIG and
/// wins, so they are written at its end), `--set` cannot move them, an edit that does is
/// reported, and settings given at create are in place before GitLab's first boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_hold_and_settings_precede_the_first_boot() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let name = unique("pins");
    let out = t.cli(&[
        "--json",
        "instance",
        "create",
        &name,
        "--set",
        "gitlab_rails['time_zone']=Europe/Paris",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dirs = InstanceDirs::new(&t.root, &name);
    let rb = std::fs::read_to_string(dirs.config.join("gitlab.rb")).unwrap();
    // GitLab's template, then Girofle's block: the setting, then the pins, last.
    assert!(rb.starts_with("## GitLab configuration settings"), "{rb}");
    let tz = rb
        .find("gitlab_rails['time_zone'] = 'Europe/Paris'")
        .expect("setting");
    let pin = rb.find("nginx['listen_port'] = 80").expect("pin");
    assert!(tz < pin, "{rb}");
    // GitLab booted with it: no reconfigure was needed after the first boot.
    let applied = std::fs::read_to_string(dirs.data.join("etc/effective-settings.json")).unwrap();
    assert!(applied.contains("Europe/Paris"), "{applied}");

    // A pinned setting cannot be set.
    for key in ["nginx['listen_port']=8080", "external_url=http://elsewhere"] {
        let out = t.cli(&["instance", "reconfigure", &name, "--set", key]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {said}");
        assert!(said.contains("Girofle's"), "{said}");
    }
    assert_eq!(
        std::fs::read_to_string(dirs.config.join("gitlab.rb")).unwrap(),
        rb,
        "a refused setting changed gitlab.rb"
    );
    let out = t.cli(&[
        "instance",
        "create",
        &unique("pins"),
        "--set",
        "nginx['listen_port']=8080",
    ]);
    assert_eq!(out.status.code(), Some(2));

    // An operator's edit after the block moves nginx: show and list say so.
    std::fs::write(
        dirs.config.join("gitlab.rb"),
        format!("{rb}nginx['listen_port'] = 8080\n"),
    )
    .unwrap();
    for args in [vec!["instance", "show", &name], vec!["instance", "list"]] {
        let out = t.cli(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(
            said.contains("nginx['listen_port'] = 8080") && said.contains(&name),
            "{args:?}: {said}"
        );
    }
    let out = t.cli(&["--json", "instance", "show", &name]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["pin_overrides"][0], "nginx['listen_port'] = 8080");
}

/// A git command that must fail; returns what it said.
fn git_refused(dir: &std::path::Path, args: &[&str], what: &str) -> String {
    let out = git(dir).args(args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} succeeded: {said}");
    said
}

/// The root password given at create (`--set gitlab_rails['initial_root_password']=…`)
/// reaches GitLab's first seeding: git over HTTP takes it right after create, and a wrong
/// password or none is refused without creating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_password_given_at_create_opens_git() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let name = unique("rootpw");
    let password = "Given-at-create/9+z";
    let set = format!("gitlab_rails['initial_root_password']='{password}'");
    let out = t.cli(&["--json", "instance", "create", &name, "--set", &set]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let external_url = created["external_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no external_url in {created}"))
        .to_string();
    let dirs = InstanceDirs::new(&t.root, &name);
    assert!(
        !dirs.config.join("initial_root_password").exists(),
        "GitLab made up a root password although one was given"
    );

    let work = t.dir.path().join("work");
    let refs = push_project(
        &work,
        &project_url(&external_url, password, "team/app.git"),
        2,
    );
    assert!(refs.contains("refs/heads/main"), "{refs}");

    // A wrong password, or none: refused, and no project appears.
    let wrong = project_url(&external_url, "Not-the-password-1", "team/other.git");
    let said = git_refused(&work, &["push", "-q", &wrong, "main"], "a wrong password");
    assert!(said.contains("Authentication failed"), "{said}");
    let anonymous = format!("{external_url}/team/other.git");
    git_refused(
        &work,
        &["push", "-q", &anonymous, "main"],
        "an anonymous push",
    );
    git_refused(
        &work,
        &["ls-remote", &format!("{external_url}/team/app.git")],
        "an anonymous ls-remote of a private project",
    );
    assert!(
        !dirs
            .data
            .join("git-data/repositories/team/other.git")
            .exists(),
        "a refused push created a repository"
    );
    git_refused(
        &work,
        &[
            "ls-remote",
            &project_url(&external_url, password, "team/other.git"),
        ],
        "ls-remote of a project no push created",
    );
}

/// Without a root password GitLab makes one up at the first boot and writes it to
/// /etc/gitlab/initial_root_password; `initial_root_password` set later changes nothing
/// (it acts only at the first seeding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_password_set_after_the_first_boot_changes_nothing() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let g = t.open().await;
    let p = commission_with_project(&g, &t, "laterpw", 1).await;
    let file = InstanceDirs::new(&t.root, &p.name)
        .config
        .join("initial_root_password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "{} readable by others",
        file.display()
    );
    assert!(p.password.len() >= 8, "{}", p.password);

    let later = "Set-after-boot-42";
    let out = t.cli(&[
        "instance",
        "reconfigure",
        &p.name,
        "--set",
        &format!("gitlab_rails['initial_root_password']='{later}'"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ls_remote(&p.url),
        p.refs,
        "the first password stopped working"
    );
    assert_eq!(root_password(&t.root, &p.name), p.password);
    let said = git_refused(
        t.dir.path(),
        &[
            "ls-remote",
            &project_url(&p.record.external_url, later, "team/app.git"),
        ],
        "the password set after the first boot",
    );
    assert!(said.contains("Authentication failed"), "{said}");
}

/// The stand-in image with Puma restarts as slow as `secs` (a derived image: the knob is
/// the container's environment, which Girofle does not let a caller set).
fn stand_in_with_puma_restart(secs: u32) -> String {
    // `docker run` below needs the main engine's bridge: no test root holds a share yet.
    let _engine = engine::shared();
    let base = stand_in("17.5.1");
    let image = format!("{}/gitlab-ce-puma{secs}s:17.5.1-ce.0", image_prefix());
    let mut build = Command::new("docker");
    build
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = build.spawn().unwrap();
    use std::io::Write;
    write!(
        child.stdin.take().unwrap(),
        "FROM {base}\nENV STANDIN_PUMA_RESTART_SECS={secs}\n"
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker build: {out:?}");
    let knows = Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "grep", &image])
        .args([
            "-q",
            "STANDIN_PUMA_RESTART_SECS",
            "/opt/gitlab/standin/standin.py",
        ])
        .status()
        .unwrap();
    assert!(
        knows.success(),
        "{base} does not restart Puma after reconfigure: rebuild it with `tests/gitlab-stand-in/build`"
    );
    image
}

/// The engine probes a running GitLab every 30 s by default (each probe is a full Rails
/// request that GitLab logs), not every second; Girofle does not wait for that schedule:
/// a create returns once GitLab answers, and `instance list` says "running" at once even
/// while the engine has not probed yet.
#[test]
fn the_engine_probes_rarely_and_girofle_asks_gitlab() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    let name = unique("probe");
    ok(t.cli(&["instance", "create", &name]));
    let container = girofle_core::instance::container_name(&name);
    let inspect = |format: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", format, &container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(inspect("{{.Config.Healthcheck.Interval}}"), "30s");
    let engine = inspect("{{.State.Health.Status}}");
    let listed: serde_json::Value =
        serde_json::from_slice(&t.cli(&["--json", "instance", "list"]).stdout).unwrap();
    assert_eq!(listed[0]["state"], "running", "engine: {engine}; {listed}");
}

/// Whether the image's own health probe passes now, run in the container.
fn probe_passes(container: &str) -> bool {
    Command::new("docker")
        .args([
            "exec",
            container,
            "/opt/gitlab/bin/gitlab-healthcheck",
            "--fail",
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// A Rails setting makes GitLab restart Puma after `gitlab-ctl reconfigure` has exited
/// 0: reconfigure returns only once GitLab serves with the new setting, and a restart
/// longer than the engine's five failing probes (so the engine says "unhealthy" for a
/// while) does not roll the valid change back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_returns_once_gitlab_serves_the_change() {
    let restart = 8;
    let t = TestRoot::new(&stand_in_with_puma_restart(restart));
    // The engine probes every second here (30 s by default), so that its five failing
    // probes fit in the restart.
    t.edit_config(|c| c.instances.health_interval_secs = 1);
    let g = t.open().await;
    let r = g
        .commission(CommissionRequest {
            name: unique("rails"),
            ..Default::default()
        })
        .await
        .expect("commission");
    let port = r.bindings.http_port;
    // GitLab's health endpoints answer only localhost by default.
    assert_eq!(http_get(port, "/-/health").unwrap().0, 404);

    // What the engine says meanwhile.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, container) = (done.clone(), r.container_name());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new("docker")
                    .args(["inspect", "-f", "{{.State.Health.Status}}", &container])
                    .output()
                    .unwrap();
                seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            seen
        })
    };
    let started = std::time::Instant::now();
    g.reconfigure(
        &r.name,
        &["gitlab_rails['monitoring_whitelist']=['0.0.0.0/0', '::/0']".into()],
        &[],
    )
    .await
    .expect("a valid setting, through a Puma restart");
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let engine_said = watcher.join().unwrap();
    // The restart outlasted the engine's five failing probes: a wait on its state would
    // have taken the valid change for a broken one.
    assert!(engine_said.contains("unhealthy"), "{engine_said:?}");
    // Right away: requests succeed, with the new setting (it acts only once Puma has
    // restarted). Girofle's old wait (the engine's state, read at once) returned before
    // the restart began: this got 404, and 502 a second later.
    let (status, body) = http_get(port, "/-/health").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "GitLab OK"),
        "reconfigure returned after {took:?}, before GitLab served the change"
    );
    assert!(probe_passes(&r.container_name()));
    assert!(
        took >= std::time::Duration::from_secs(restart.into()),
        "returned after {took:?}, before Puma's {restart} s restart could have ended"
    );
    // Not rolled back.
    let rb = std::fs::read_to_string(InstanceDirs::new(&t.root, &r.name).config.join("gitlab.rb"))
        .unwrap();
    assert!(
        rb.contains("gitlab_rails['monitoring_whitelist'] = ['0.0.0.0/0', '::/0']"),
        "{rb}"
    );
    let shown = g.show_revealed(&r.name).await.unwrap();
    assert!(shown
        .record
        .expect("record")
        .settings
        .contains_key("gitlab_rails['monitoring_whitelist']"));
    // The next change at once: the engine may still say "unhealthy" after the long
    // restart (it needs a passing probe of its own), which must not refuse it.
    g.reconfigure(&r.name, &["gitlab_rails['time_zone']=UTC".into()], &[])
        .await
        .expect("a second change right after the first");
    assert_eq!(http_get(port, "/-/health").unwrap().0, 200);
}

/// A setting GitLab's reconfigure accepts (exit 0) but with which Puma cannot come back
/// (it cannot bind `puma['listen']`, exits, and GitLab's supervisor starts it again and
/// again): the crash loop is recognised long before the 15-minute health timeout, the
/// change is rolled back, the error says so, and GitLab serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_keeps_gitlab_down_is_rolled_back() {
    let t = TestRoot::new(&stand_in("17.5.1"));
    // GitLab's default: a rollback that waited it out would fail the assertion below.
    t.edit_config(|c| c.instances.health_timeout_secs = 900);
    let name = unique("down");
    ok(t.cli(&["instance", "create", &name]));
    let rb_path = InstanceDirs::new(&t.root, &name).config.join("gitlab.rb");
    let before = std::fs::read_to_string(&rb_path).unwrap();

    let started = std::time::Instant::now();
    let out = t.cli(&[
        "instance",
        "reconfigure",
        &name,
        "--set",
        "puma['listen']='203.0.113.7'",
    ]);
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{said}");
    assert!(said.contains("rolled back"), "{said}");
    assert!(said.contains("Puma exited"), "{said}");
    assert!(
        took < std::time::Duration::from_secs(120),
        "the rollback took {took:?}"
    );
    assert_eq!(std::fs::read_to_string(&rb_path).unwrap(), before);
    let container = girofle_core::instance::container_name(&name);
    assert!(
        probe_passes(&container),
        "GitLab does not serve after the rollback"
    );
    let shown: serde_json::Value = serde_json::from_slice(
        &t.cli(&["--json", "instance", "show", &name, "--reveal"])
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(
        shown["record"]["settings"].get("puma['listen']").is_none(),
        "{shown}"
    );
}
