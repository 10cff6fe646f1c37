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
    let url = format!("{}/team/app.git", web.external_url);
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
    assert_eq!(count("reconfigure"), 2, "{ops:?}");
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
