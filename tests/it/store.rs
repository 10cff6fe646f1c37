//! The store conformance battery against every backend: the built-in local store,
//! a file:// store, and a real S3-compatible server (`scripts/s3-server`).

use std::path::Path;
use std::sync::Arc;

use girofle_core::store::{conformance, local_store, open_store, BackupStore, StoreConfig};
use girofle_tests::{file_store, s3_env, S3Env};

fn open_file_store(name: &str, dir: &Path) -> Arc<dyn BackupStore> {
    open_store(name, &file_store(dir)).unwrap()
}

/// No staging file (`name#digits`) may survive a run, whatever failed.
fn assert_no_staging_files(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                assert!(
                    !path.to_string_lossy().contains('#'),
                    "staging file left behind: {}",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let store = local_store(&dir.path().join("created/on/open")).unwrap();
    assert_eq!(store.name(), "local");
    conformance::run_all(store, open_file_store("other", other.path())).await;
    assert_no_staging_files(dir.path());
    assert_no_staging_files(other.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_url_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let store = open_file_store("nas", dir.path());
    assert_eq!(store.name(), "nas");
    assert!(
        store.location().starts_with("file:///"),
        "{}",
        store.location()
    );
    conformance::run_all(store, local_store(other.path()).unwrap()).await;
    assert_no_staging_files(dir.path());
    assert_no_staging_files(other.path());
}

fn s3_config(env: &S3Env, url: String) -> StoreConfig {
    StoreConfig {
        url,
        endpoint: Some(env.endpoint.clone()),
        region: None,
        access_key_id: Some(env.access_key.clone()),
        secret_access_key: Some(env.secret_key.clone()),
        allow_http: Some(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let env = s3_env();
    let prefixed = open_store(
        "offsite",
        &s3_config(&env, format!("s3://{}/girofle-conformance", env.bucket)),
    )
    .unwrap();
    let whole = open_store("bucket", &s3_config(&env, format!("s3://{}", env.bucket))).unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    let local = local_store(local_dir.path()).unwrap();

    // Against a local store, then against the same bucket seen without the prefix.
    conformance::run_all(prefixed.clone(), local).await;
    conformance::run_all(whole.clone(), prefixed.clone()).await;

    // The URL's prefix really is where the objects go.
    let base = conformance::unique_base();
    let key = format!("{base}/where");
    prefixed.put_bytes(&key, "here".into()).await.unwrap();
    let seen = whole.head(&format!("girofle-conformance/{key}")).await;
    prefixed.delete(&key).await.unwrap();
    assert_eq!(seen.unwrap().size, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_a_clear_error_without_the_secret() {
    let env = s3_env();
    let planted = "PLANTED-wrong-secret-0a1b2c3d4e5f";
    let mut config = s3_config(&env, format!("s3://{}/girofle-conformance", env.bucket));
    config.secret_access_key = Some(planted.into());
    let store = open_store("offsite", &config).unwrap();
    let mut seen = vec![
        format!("{config:?}"),
        format!("{store:?}"),
        store.location(),
    ];
    let err = store.list("").await.unwrap_err();
    assert_eq!(err.kind(), "backend", "{err}");
    seen.push(err.to_string());
    seen.push(format!("{err:?}"));
    let err = store.put_bytes("k", "x".into()).await.unwrap_err();
    seen.push(err.to_string());
    seen.push(format!("{err:?}"));
    for text in &seen {
        assert!(!text.contains(planted), "secret leaked: {text}");
        assert!(
            !text.contains(&env.secret_key),
            "real secret leaked: {text}"
        );
    }
    assert!(seen[3].contains("offsite"), "{}", seen[3]);
    assert!(seen[3].contains("check access_key_id"), "{}", seen[3]);
    eprintln!("wrong-secret error reads: {}", seen[3]);
}
