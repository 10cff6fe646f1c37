//! Restore validation on the doubles: a backup whose manifest disagrees with its id, or
//! names what Girofle would never write, is refused before anything is written; so is
//! `--as` an existing instance.

use std::time::Duration;

use bytes::Bytes;

use super::Bench;
use crate::adapters::inventory::{Fleet, Inventory};
use crate::error::Error;
use crate::ops::backup::{manifest_key, signature_key, BackupOptions, Manifest, Strategy};
use crate::ops::restore::RestoreRequest;

/// A cold backup of a fresh instance `web`; its id.
async fn backed_up(b: &Bench) -> String {
    b.commissioned("web").await;
    b.ctx
        .backup(
            "web",
            BackupOptions {
                strategy: Strategy::Cold,
                ..Default::default()
            },
        )
        .await
        .expect("a cold backup on the doubles")
        .id
}

/// Rewrites the manifest of `id` through `change` and signs it again with the fleet's
/// own key: only what it says is wrong, not its checksum nor its signature.
async fn forge(b: &Bench, id: &str, change: impl FnOnce(&mut Manifest)) {
    let store = b.ctx.store(None).unwrap();
    let bytes = store.get_bytes(&manifest_key(id)).await.unwrap();
    let mut manifest = Manifest::from_bytes("test", &bytes).unwrap();
    change(&mut manifest);
    let bytes = manifest.to_bytes().unwrap();
    let signature = crate::model::signing::sign_manifest(&b.root, id, &bytes).unwrap();
    store
        .put_bytes(&manifest_key(id), Bytes::from(bytes))
        .await
        .unwrap();
    store
        .put_bytes(&signature_key(id), Bytes::from(signature))
        .await
        .unwrap();
}

/// What a restore could write: containers, inventory, instance directories, staging
/// and intent records.
#[derive(Debug, PartialEq)]
struct Written {
    containers: Vec<String>,
    fleet: Fleet,
    instances: Vec<std::path::PathBuf>,
    staging: Vec<std::path::PathBuf>,
    intents: Vec<std::path::PathBuf>,
}

async fn written(b: &Bench) -> Written {
    Written {
        containers: b.runtime.container_names(),
        fleet: b.inventory.load().await.unwrap(),
        instances: super::entries(&b.root.join("instances")),
        staging: b.staging(),
        intents: super::entries(&b.root.join(crate::model::intent::RUN_DIR)),
    }
}

fn request(id: &str, as_name: Option<&str>) -> RestoreRequest {
    RestoreRequest {
        id: id.into(),
        as_name: as_name.map(str::to_string),
        timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    }
}

/// Restores `id` (as `as_name`) and checks it was refused with nothing written.
async fn refused(b: &Bench, id: &str, as_name: Option<&str>) -> Error {
    let before = written(b).await;
    let e = b
        .ctx
        .restore(request(id, as_name))
        .await
        .expect_err("the restore must be refused");
    assert_eq!(
        written(b).await,
        before,
        "nothing written by a refused restore"
    );
    e
}

#[tokio::test]
async fn a_re_signed_manifest_that_says_the_truth_restores() {
    // The control of the forgeries below: re-signing alone is not what they are
    // refused for.
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |_| {}).await;
    let report = b.ctx.restore(request(&id, Some("copy"))).await.unwrap();
    assert_eq!(report.name, "copy");
    assert!(b.running("copy").await);
    assert!(b.running("web").await);
}

#[tokio::test]
async fn a_manifest_of_another_backup_is_refused() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |m| m.header.id = "web/20200101T000000Z".into()).await;
    let e = refused(&b, &id, Some("copy")).await;
    assert!(
        matches!(&e, Error::Corrupt { message, .. } if message.contains("another backup")),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_naming_another_instance_than_its_id_is_refused() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |m| m.header.instance.name = "other".into()).await;
    let e = refused(&b, &id, Some("copy")).await;
    assert!(
        matches!(&e, Error::Corrupt { message, .. } if message.contains("names instance `other`")),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_with_a_label_in_girofles_namespace_is_refused() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |m| {
        m.header
            .instance
            .labels
            .insert("io.girofle.root".into(), "/elsewhere".into());
    })
    .await;
    let e = refused(&b, &id, Some("copy")).await;
    assert!(
        matches!(&e, Error::Corrupt { message, .. } if message.contains("label `io.girofle.root`")),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_of_another_gitlab_version_than_the_image_is_refused() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |m| m.header.gitlab_version = "17.6.0".into()).await;
    let e = refused(&b, &id, Some("copy")).await;
    assert!(
        matches!(&e, Error::VersionMismatch(m) if m.contains("17.6.0") && m.contains("--image")),
        "{e}"
    );
}

#[tokio::test]
async fn a_manifest_whose_version_is_not_a_version_is_refused() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    forge(&b, &id, |m| {
        m.header.gitlab_version = "17.5.1; rm -rf /".into()
    })
    .await;
    let e = refused(&b, &id, Some("copy")).await;
    assert!(matches!(&e, Error::Corrupt { .. }), "{e}");
}

#[tokio::test]
async fn restore_as_an_existing_instance_is_refused_without_replace() {
    let b = Bench::new();
    let id = backed_up(&b).await;
    let two = b.commissioned("two").await;
    let e = refused(&b, &id, Some("two")).await;
    assert!(
        matches!(&e, Error::AlreadyExists { hint, .. } if hint.contains("--replace")),
        "{e}"
    );
    assert_eq!(b.record("two").await, Some(two));
    assert!(b.running("two").await);
}
