//! Restore on "another host": a second, independent Docker engine (its own socket, data
//! root and bridge, started by `scripts/second-docker`) and a second Girofle root, fed
//! only by the backup in the shared S3 store.

use girofle_core::restore::RestoreRequest;
use girofle_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_on_another_engine_from_s3() {
    let second = second_engine();
    let image = stand_in("17.5.1");
    let prefix = unique("xhost");

    // Host A: an instance with history, backed up online to S3.
    let a = TestRoot::new(&image);
    a.edit_config(|c| {
        c.stores.insert("offsite".into(), s3_store(&prefix));
    });
    let ga = a.open().await;
    let WithProject {
        name,
        password,
        refs,
        ..
    } = commission_with_project(&ga, &a, "prod", 3).await;
    let b = ga.backup(&name, online(Some("offsite"))).await.unwrap();

    // Host B: a fresh root on the second engine, knowing only the store and host A's
    // public key (its backups are signed with A's key).
    let bt = TestRoot::on_engine(&image, Some(second.clone()));
    let a_key = girofle_core::signing::own_public_key(&a.root).unwrap();
    bt.edit_config(|c| {
        c.stores.insert("offsite".into(), s3_store(&prefix));
        c.trust.keys = vec![a_key.base64()];
    });
    let gb = bt.open().await;
    assert!(gb
        .list_backups(None, Some("offsite"))
        .await
        .unwrap()
        .iter()
        .any(|e| e.id == b.id));
    let new_name = unique("standby");
    let restored = gb
        .restore(RestoreRequest {
            id: b.id.clone(),
            store: Some("offsite".into()),
            as_name: Some(new_name.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Host A's root, with host A's password: it is in the restored database.
    let new_url = project_url(&restored.url, &password, "team/app.git");
    assert_eq!(ls_remote(&new_url), refs, "refs differ on the other host");
    clone_and_fsck(&new_url, &bt.dir.path().join("clone"));

    // The container lives on the second engine only.
    let container = format!("girofle-{new_name}");
    assert!(docker(Some(&second))
        .args(["inspect", &container])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!docker(None)
        .args(["inspect", &container])
        .output()
        .unwrap()
        .status
        .success());
}
