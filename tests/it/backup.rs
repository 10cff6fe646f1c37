//! Backups you can trust, on the real Docker engine, the stand-in GitLab image and a real
//! S3-compatible server on loopback: round trips that keep every commit, secret, owner and
//! mode; damage detected and refused; retention; one backup at a time.

use std::process::Command;

use girofle_core::backup::Retention;
use girofle_core::instance::InstanceDirs;
use girofle_core::restore::RestoreRequest;
use girofle_core::{CommissionRequest, DecommissionOptions, Error, InstanceState};
use girofle_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trips_keep_commits_secrets_owners_and_modes() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let prefix = unique("rt");
    t.edit_config(|c| {
        c.stores.insert("offsite".into(), s3_store(&prefix));
    });
    let g = t.open().await;
    let WithProject {
        name,
        record: r,
        password,
        url,
        refs,
    } = commission_with_project(&g, &t, "web", 4).await;
    let wiki = project_url(&r.external_url, &password, "team/app.wiki.git");
    let wiki_refs = push_project(&t.dir.path().join("w2"), &wiki, 1);
    let dirs = InstanceDirs::new(&t.root, &name);
    let secrets = std::fs::read(dirs.config.join("gitlab-secrets.json")).unwrap();
    let config_owners = ownership_snapshot(&dirs.config);

    // Online to S3 (no downtime), cold to the local store (downtime reported).
    let on = g.backup(&name, online(Some("offsite"))).await.unwrap();
    assert!(on.downtime_ms.is_none());
    let data_owners = ownership_snapshot(&dirs.data.join("git-data"));
    let co = g.backup(&name, cold(None)).await.unwrap();
    assert!(co.downtime_ms.is_some());
    assert_eq!(
        g.show(&name).await.unwrap().state,
        InstanceState::Running,
        "cold backup left GitLab down"
    );
    g.verify(&on.id, Some("offsite")).await.unwrap();
    g.verify(&co.id, None).await.unwrap();
    let listed = g.list_backups(Some(&name), Some("offsite")).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![on.id.clone()]
    );

    // The instance is destroyed entirely; restore from S3 as the same name.
    g.decommission(
        &name,
        DecommissionOptions {
            purge: true,
            no_backup: true,
        },
    )
    .await
    .unwrap();
    assert!(!dirs.base.exists());
    let restored = g
        .restore(RestoreRequest {
            id: on.id.clone(),
            store: Some("offsite".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        restored.url, r.external_url,
        "same name, same address, same URL"
    );
    assert_eq!(ls_remote(&url), refs, "a branch or tag moved");
    assert_eq!(ls_remote(&wiki), wiki_refs, "the wiki changed");
    clone_and_fsck(&url, &t.dir.path().join("c1"));
    assert_eq!(
        std::fs::read(dirs.config.join("gitlab-secrets.json")).unwrap(),
        secrets
    );
    assert_eq!(
        ownership_snapshot(&dirs.config),
        config_owners,
        "config owners or modes changed"
    );
    // GitLab's own checks, once more by hand.
    let out = Command::new("docker")
        .args([
            "exec",
            &format!("girofle-{name}"),
            "gitlab-rake",
            "gitlab:doctor:secrets",
        ])
        .output()
        .unwrap();
    // It exits 0 whatever it finds: the total says.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("Total: 0 row(s) affected"),
        "{said}"
    );

    // The cold backup, restored in place over the running instance: owners and modes of
    // the repositories exactly as they were, nothing left in staging.
    push_project(
        &t.dir.path().join("w3"),
        &project_url(&r.external_url, &password, "team/later.git"),
        1,
    );
    let in_place = g
        .restore(RestoreRequest {
            id: co.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(in_place.in_place);
    assert_eq!(ls_remote(&url), refs);
    assert_eq!(ownership_snapshot(&dirs.data.join("git-data")), data_owners);
    assert!(
        !dirs
            .data
            .join("git-data/repositories/team/later.git")
            .exists(),
        "the restore kept a repository the backup did not have"
    );
    assert_eq!(
        std::fs::read_dir(t.root.join("staging")).unwrap().count(),
        0,
        "staging not cleaned"
    );

    // As a new name, through the CLI.
    let new_name = unique("copy");
    let out = t.cli(&["--json", "restore", &co.id, "--as", &new_name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_url = report["url"].as_str().unwrap().to_string();
    assert_ne!(new_url, r.external_url);
    // The restored database has the source's root, with the source's password.
    assert_eq!(
        ls_remote(&project_url(&new_url, &password, "team/app.git")),
        refs
    );

    // The drill proves the backup valid for its version and leaves nothing behind.
    let drill = g.drill(&co.id, None).await.unwrap();
    assert_eq!(drill.valid_for_version.as_deref(), Some("17.5.1"));
    assert!(drill.repositories >= 2 && drill.fsck_clean, "{drill:?}");
    assert_eq!(
        g.list().await.unwrap().len(),
        2,
        "the drill instance was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_and_mismatch_are_refused_and_nothing_is_touched() {
    let image = stand_in("17.5.1");
    let other = stand_in("17.6.0");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let WithProject {
        name, url, refs, ..
    } = commission_with_project(&g, &t, "dmg", 2).await;
    let b = g.backup(&name, cold(None)).await.unwrap();
    let archive = t.root.join("backups").join(format!("{}.tar.zst", b.id));
    let manifest = t.root.join("backups").join(format!("{}.manifest", b.id));
    let pristine = std::fs::read(&archive).unwrap();

    // One flipped byte at three places: verify says corrupt, restore refuses (exit 5)
    // and the running instance is untouched.
    for frac in [0.1, 0.5, 0.95] {
        let mut bytes = pristine.clone();
        let at = (bytes.len() as f64 * frac) as usize;
        bytes[at] ^= 0x01;
        std::fs::write(&archive, &bytes).unwrap();
        match g.verify(&b.id, None).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("flip at {at} not detected by verify: {other:?}"),
        }
        let out = t.cli(&["restore", &b.id]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ls_remote(&url), refs);
        assert_eq!(g.show(&name).await.unwrap().state, InstanceState::Running);
    }
    // Truncated: it does not list, and restore refuses it.
    std::fs::write(&archive, &pristine[..pristine.len() / 2]).unwrap();
    assert!(g.list_backups(Some(&name), None).await.unwrap().is_empty());
    // ...but the listing says it left it out, and why.
    let out = t.cli(&["backup", "list", &name]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("backup `{}`", b.id))
            && said.contains("damaged")
            && said.contains(&format!("has {} bytes", pristine.len() / 2)),
        "{said}"
    );
    let out = t.cli(&["restore", &b.id]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&archive, &pristine).unwrap();
    // An edited manifest: detected.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("\"files\"", "\"filez\"", 1)).unwrap();
    assert!(g.list_backups(Some(&name), None).await.unwrap().is_empty());
    let out = t.cli(&["backup", "verify", &b.id]);
    assert_eq!(out.status.code(), Some(5));
    std::fs::write(&manifest, &text).unwrap();
    g.verify(&b.id, None).await.unwrap();

    // Another GitLab version: refused before anything, naming the image to use.
    let out = t.cli(&["restore", &b.id, "--as", &unique("v"), "--image", &other]);
    assert_eq!(out.status.code(), Some(5));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("17.5.1-ce.0") && e.contains("--image"), "{e}");

    // Wrong arguments: the usage, or the id shape.
    let out = t.cli(&["restore"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    let out = t.cli(&["restore", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2));
    let out = t.cli(&["restore", &b.id, "--store", "nowhere"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        g.list().await.unwrap().len(),
        1,
        "a refused restore created an instance"
    );
    assert_eq!(ls_remote(&url), refs);
}

/// GitLab's checks exit 0 whatever they find: a backup whose gitlab-secrets.json does not
/// decrypt its database must still be refused, rolled back, and recorded by the drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_with_the_wrong_secrets_is_refused_and_the_drill_records_it() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let WithProject {
        name, url, refs, ..
    } = commission_with_project(&g, &t, "wrongkey", 1).await;
    // Another key in /etc/gitlab than the one the database was sealed with, as when an
    // operator backs up /etc/gitlab of the wrong host.
    let secrets = InstanceDirs::new(&t.root, &name)
        .config
        .join("gitlab-secrets.json");
    let right = std::fs::read(&secrets).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&right).unwrap();
    doc["gitlab_rails"]["db_key_base"] = serde_json::Value::String("f".repeat(128));
    std::fs::write(&secrets, serde_json::to_vec(&doc).unwrap()).unwrap();
    let b = g.backup(&name, online(None)).await.expect("online backup");
    std::fs::write(&secrets, &right).unwrap();

    // In place: refused (exit 5), quoting GitLab, and the instance is back as it was.
    let out = t.cli(&["restore", &b.id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{said}");
    assert!(
        said.contains("row(s) affected") && said.contains("InvalidMessage"),
        "{said}"
    );
    assert_eq!(g.show(&name).await.unwrap().state, InstanceState::Running);
    assert_eq!(ls_remote(&url), refs);
    assert_eq!(
        std::fs::read(&secrets).unwrap(),
        right,
        "the previous secrets are not back"
    );
    // As a new instance: refused, nothing left.
    // (A name of this run: container names are the engine's, shared with other roots.)
    let copy = unique("wrongkey-copy");
    let out = t.cli(&["restore", &b.id, "--as", &copy]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        g.list().await.unwrap().len(),
        1,
        "a refused restore left an instance"
    );

    // The drill fails and records what GitLab found beside the backup.
    let e = g.drill(&b.id, None).await.expect_err("the drill must fail");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    let recorded: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.root.join("backups").join(format!("{}.drill.json", b.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(recorded["secrets_ok"], false, "{recorded}");
    assert!(recorded["valid_for_version"].is_null(), "{recorded}");
    assert!(
        recorded["check_failures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|l| l.as_str().unwrap().contains("failures: "))),
        "{recorded}"
    );
    assert_eq!(
        g.list().await.unwrap().len(),
        1,
        "the drill left an instance"
    );
}

/// Old imported histories carry defects Gitaly accepts (a time zone of +51800): the drill
/// must not call such a backup damaged, and must say what it let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_gitaly_accepts_passes_the_drill() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let name = unique("oldtz");
    let record = g
        .commission(CommissionRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .expect("commission");
    let work = t.dir.path().join("oldtz");
    std::fs::create_dir_all(&work).unwrap();
    run(git(&work).args(["init", "-q", "-b", "main"]));
    std::fs::write(work.join("a.txt"), "a\n").unwrap();
    run(git(&work).args(["add", "."]));
    run(git(&work).args(["commit", "-q", "-m", "first"]));
    let tree = run(git(&work).args(["rev-parse", "HEAD^{tree}"]));
    let parent = run(git(&work).args(["rev-parse", "HEAD"]));
    let object = format!(
        "tree {}\nparent {}\nauthor Old <old@example.com> 1000000000 +51800\ncommitter Old <old@example.com> 1000000000 +51800\n\nimported with a bad time zone\n",
        tree.trim(),
        parent.trim()
    );
    let path = work.join("commit.txt");
    std::fs::write(&path, object).unwrap();
    let bad = run(git(&work)
        .args(["hash-object", "-t", "commit", "-w", "--literally"])
        .arg(&path));
    run(git(&work).args(["update-ref", "refs/heads/main", bad.trim()]));
    // Plain git calls it broken: the test has teeth.
    let plain = git(&work).args(["fsck", "--full"]).output().unwrap();
    assert!(
        !plain.status.success() && String::from_utf8_lossy(&plain.stderr).contains("badTimezone"),
        "{plain:?}"
    );
    let url = project_url(
        &record.external_url,
        &root_password(&t.root, &name),
        "team/old.git",
    );
    run(git(&work).args(["push", "-q", &url, "main"]));
    let b = g.backup(&name, cold(None)).await.expect("cold backup");
    let drill = g.drill(&b.id, None).await.expect("the drill passes");
    assert!(drill.fsck_clean && drill.secrets_ok, "{drill:?}");
    assert!(
        drill.detail.contains("badTimezone") && drill.detail.contains("old.git"),
        "{}",
        drill.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_and_one_backup_at_a_time() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let prefix = unique("ret");
    t.edit_config(|c| {
        c.stores.insert("offsite".into(), s3_store(&prefix));
    });
    let g = t.open().await;
    let name = commission(&g, "ret").await.name;

    // Two backups at once: one runs, the other is refused naming the holder.
    let (a, b) = tokio::join!(g.backup(&name, online(None)), g.backup(&name, online(None)));
    let refused = match (&a, &b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e.to_string(),
        other => panic!("expected exactly one refusal: {other:?}"),
    };
    assert!(
        refused.contains("busy") && refused.contains("`backup`") && refused.contains("pid"),
        "{refused}"
    );

    let mut ids = vec![a.or(b).unwrap().id];
    for _ in 0..3 {
        ids.push(g.backup(&name, online(None)).await.unwrap().id);
    }
    for id in &ids {
        g.copy_backup(id, None, "offsite").await.unwrap();
    }
    for store in [None, Some("offsite")] {
        assert_eq!(g.list_backups(Some(&name), store).await.unwrap().len(), 4);
        let deleted = g
            .prune(
                Some(&name),
                store,
                Retention {
                    keep_last: 2,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            deleted,
            ids[..2].to_vec(),
            "pruned the wrong backups on {store:?}"
        );
        let left: Vec<String> = g
            .list_backups(Some(&name), store)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(left, ids[2..].to_vec());
        // keep-last 0 still keeps the newest: never the only valid backup.
        let e = g.prune(Some(&name), store, Retention::default()).await;
        assert!(e.is_err(), "a policy keeping nothing was accepted");
        g.prune(
            Some(&name),
            store,
            Retention {
                keep_daily: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let left: Vec<String> = g
            .list_backups(Some(&name), store)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(left, vec![ids[3].clone()]);
    }
    // Only the newest backup's four objects (archive, index, signature, manifest) are
    // left on S3.
    let s3 = g.store(Some("offsite")).unwrap();
    let objects = s3.list(&name).await.unwrap();
    assert_eq!(objects.len(), 4, "{objects:?}");
    assert!(
        objects
            .iter()
            .any(|o| o.key == format!("{}.manifest.minisig", ids[3])),
        "{objects:?}"
    );

    // Decommission takes a final backup first.
    let d = g
        .decommission(&name, DecommissionOptions::default())
        .await
        .unwrap();
    let final_id = d.final_backup.expect("a final backup");
    g.verify(&final_id, None).await.unwrap();
}

/// Under CRON=1 GitLab prints nothing when a part of its backup fails, and still leaves
/// the other parts and its tar in its backup path: the error must carry GitLab's reason
/// from backup_json.log, and nothing of GitLab's may stay in the data volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_gitlab_backup_says_why_and_leaves_nothing_behind() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let WithProject { name, .. } = commission_with_project(&g, &t, "gbfail", 1).await;
    let dirs = InstanceDirs::new(&t.root, &name);
    // A file GitLab (which backs up as `git`) cannot read, as root leaves behind.
    let locked = dirs.data.join("gitlab-rails/uploads/locked.bin");
    std::fs::write(&locked, "not for git\n").unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let out = t.cli(&["backup", "create", &name, "--strategy", "online"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the backup succeeded: {said}");
    assert!(
        said.contains("exited with 1")
            && said.contains("backup_json.log")
            && said.contains("Dumping uploads failed")
            && said.contains("locked.bin"),
        "GitLab's reason is not in the error: {said}"
    );
    assert_eq!(
        listing(&dirs.data.join("backups")),
        Vec::<String>::new(),
        "GitLab's tar or staging parts were left in the data volume"
    );
    assert_eq!(listing(&t.root.join("staging")), Vec::<String>::new());
    assert!(!t
        .root
        .join("run")
        .join(format!("{name}.intent.json"))
        .exists());
    assert!(g.list_backups(Some(&name), None).await.unwrap().is_empty());

    // Once the cause is gone, online backups work again and leave nothing either.
    std::fs::remove_file(&locked).unwrap();
    let b = g.backup(&name, online(None)).await.expect("online backup");
    g.verify(&b.id, None).await.unwrap();
    assert_eq!(listing(&dirs.data.join("backups")), Vec::<String>::new());
}

/// `gitlab_rails['backup_path']` moves GitLab's tar and staging parts: a directory of its
/// own in the data volume works end to end; one outside it is refused before GitLab runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_path_of_its_own_works_end_to_end() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let g = t.open().await;
    let name = unique("bpath");
    let record = g
        .commission(CommissionRequest {
            name: name.clone(),
            settings: vec!["gitlab_rails['backup_path']='/var/opt/gitlab/my-backups'".into()],
            ..Default::default()
        })
        .await
        .expect("commission");
    let password = root_password(&t.root, &name);
    let url = project_url(&record.external_url, &password, "team/app.git");
    let refs = push_project(&t.dir.path().join("w"), &url, 2);
    let dirs = InstanceDirs::new(&t.root, &name);
    assert!(
        dirs.data.join("my-backups").is_dir(),
        "GitLab did not create its backup path"
    );
    let b = g.backup(&name, online(None)).await.expect("online backup");
    assert_eq!(listing(&dirs.data.join("my-backups")), Vec::<String>::new());
    assert_eq!(listing(&dirs.data.join("backups")), Vec::<String>::new());

    // Restored as a new instance: GitLab finds its tar in that path, the commits are there.
    let copy = unique("bpath-copy");
    let out = t.cli(&["--json", "restore", &b.id, "--as", &copy]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The restored database has the source's root, with the source's password.
    let new_url = project_url(report["url"].as_str().unwrap(), &password, "team/app.git");
    assert_eq!(ls_remote(&new_url), refs, "the restored commits differ");
    clone_and_fsck(&new_url, &t.dir.path().join("c"));
    assert_eq!(
        listing(&InstanceDirs::new(&t.root, &copy).data.join("my-backups")),
        Vec::<String>::new(),
        "the restore left GitLab's tar in the data volume"
    );

    // Outside the data volume: refused, saying why, before GitLab is asked anything.
    let out = t.cli(&[
        "instance",
        "reconfigure",
        &name,
        "--set",
        "gitlab_rails['backup_path']='/srv/gitlab-backups'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match g.backup(&name, online(None)).await {
        Err(Error::Conflict(m)) => assert!(
            m.contains("outside /var/opt/gitlab") && m.contains("--strategy cold"),
            "{m}"
        ),
        other => panic!("a backup path outside the data volume was accepted: {other:?}"),
    }
    assert!(!t
        .root
        .join("run")
        .join(format!("{name}.intent.json"))
        .exists());
    assert_eq!(ls_remote(&url), refs);
}
