//! Storing backup objects by key, on the local disk or in remote object storage.
//!
//! A [`BackupStore`] holds opaque objects addressed by `/`-separated keys such as
//! `web/20261125T220000Z.tar.zst`; it streams them in and out with bounded memory and
//! makes each one visible only once it is complete. It is not responsible for knowing
//! what a backup is: naming, archive formats, manifests and retention belong to the
//! modules that call it.
//!
//! This file holds the trait, its conveniences, the configuration and the opening of a
//! store; each backend lives in its own file: `local` (the built-in `local` store and
//! `file://` URLs), `s3` (`s3://` URLs, AWS or any S3-compatible server), and `encrypt`
//! (the age wrapper around either). What they share (key checks, error lifting, the
//! Redactor) is in `common`; `conformance` is the battery every backend runs.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use object_store::{BackoffConfig, RetryConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, IoContext, Result};
use common::Redactor;

mod common;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod encrypt;
mod local;
mod s3;

/// Size of the ranges a remote object larger than one range is read in: one GET stream
/// is bound by a single connection (and, on a loopback server, by one of its threads),
/// so reads fetch ranges in parallel and deliver them in order. 4 MiB: restoring 1 GiB
/// from the loopback server took 8-10 s with 4 MiB ranges and 8.6-11 s with 8 MiB (15-16 s
/// with one stream), and 4 MiB keeps the restore's peak RSS at ~90 MiB (~128 with 8 MiB).
/// Public so that the conformance battery can cut its objects around range boundaries.
pub const GET_RANGE_SIZE: u64 = 4 * 1024 * 1024;
/// Total time one remote request may spend retrying transient errors.
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Name of the built-in store.
pub const LOCAL_STORE_NAME: &str = "local";

const NOT_FOUND_HINT: &str = "list the store to see which objects it holds";

/// What a store knows about one object.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectInfo {
    /// The object's key, relative to the store (without the URL's prefix).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written, as the store reports it.
    pub last_modified: DateTime<Utc>,
}

/// A place that holds backup objects, addressed by '/'-separated keys like
/// "web/20261125T220000Z.tar.zst".
///
/// A key is one or more non-empty segments separated by single `/`; no segment may be
/// `.` or `..`, and keys may not contain `#`, `\` or control characters (so that the same
/// key works on every backend).
#[async_trait::async_trait]
pub trait BackupStore: fmt::Debug + Send + Sync + 'static {
    /// Name from girofle.toml ("local" for the built-in one).
    fn name(&self) -> &str;

    /// Where it is, for messages; never contains credentials.
    fn location(&self) -> String;

    /// Streams chunks from `rx` into `key` (remotely as a multipart upload with parts of
    /// 8 MiB, a few in flight, each request retried on transient errors). The object
    /// becomes visible only when complete: if `rx` yields an `Err`, or the upload fails,
    /// the upload is aborted and nothing appears under `key` (an older object under
    /// `key` stays as it was). Returns the byte count.
    ///
    /// The stream ends when every sender of `rx` is dropped, so a producer that fails
    /// must send an `Err` before it goes: otherwise what it sent so far is stored as a
    /// complete object. If the returned future is dropped before it completes, the
    /// upload is abandoned and nothing appears under `key`.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; `Io` (with the producer's error as its source) when
    /// `rx` yields an `Err`; `Io` for a local file system failure; `Backend` when the
    /// remote store fails after its retries.
    async fn put_stream(
        &self,
        key: &str,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64>;

    /// Stores `data` under `key` atomically, replacing any object there.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; `Io` or `Backend` when the store fails.
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()>;

    /// Streams the object under `key`, in chunks of at most a few MiB.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; `NotFound` when there is no object under `key`;
    /// `Io` or `Backend` when the store fails (also as items of the stream).
    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Reads the whole object under `key` into memory (for small objects: manifests).
    ///
    /// # Errors
    /// As [`BackupStore::get_stream`].
    async fn get_bytes(&self, key: &str) -> Result<Bytes>;

    /// The first `len` bytes of the object under `key`, without reading the rest (an
    /// encrypted object's header); `len` must not exceed the object's size (`head`).
    ///
    /// # Errors
    /// As [`BackupStore::get_stream`].
    async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
        let mut stream = self.get_stream(key).await?;
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            match stream.next().await {
                Some(chunk) => out.extend_from_slice(&chunk?),
                None => break,
            }
        }
        out.truncate(len.min(out.len() as u64) as usize);
        Ok(Bytes::from(out))
    }

    /// Size and date of the object under `key`.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; `NotFound` when there is no object under `key`;
    /// `Backend` when the store fails.
    async fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// Every object whose key starts with the segments of `prefix` (so `web` and `web/`
    /// both list `web/a` but not `website/a`; `""` lists everything), recursively,
    /// sorted by key.
    ///
    /// # Errors
    /// `InvalidInput` for a bad prefix; `Backend` when the store fails.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Deletes the object under `key`; deleting an absent object succeeds.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; `Backend` when the store fails.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Conveniences built on [`BackupStore`], for every store.
#[async_trait::async_trait]
pub trait BackupStoreExt: BackupStore {
    /// Whether an object exists under `key`.
    ///
    /// # Errors
    /// As [`BackupStore::head`], except that `NotFound` becomes `Ok(false)`.
    async fn exists(&self, key: &str) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies the object under `key` to `dest_key` in `dest` (which may be this same
    /// store), streaming through a small bounded channel so memory stays flat whatever
    /// the size. Like [`BackupStore::put_stream`], the copy appears only when complete.
    /// Returns the byte count.
    ///
    /// # Errors
    /// The errors of [`BackupStore::get_stream`] on this store (a read failure midway is
    /// reported as such, and aborts the write) and of [`BackupStore::put_stream`] on
    /// `dest`.
    async fn copy_to(&self, key: &str, dest: &dyn BackupStore, dest_key: &str) -> Result<u64> {
        let mut source = self.get_stream(key).await?;
        let (tx, rx) = mpsc::channel(4);
        let read = async move {
            while let Some(chunk) = source.next().await {
                match chunk {
                    Ok(bytes) => {
                        if tx.send(Ok(bytes)).await.is_err() {
                            // The writer stopped; its error tells why.
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!(
                                "reading the source object failed: {e}"
                            ))))
                            .await;
                        return Err(e);
                    }
                }
            }
            Ok(())
        };
        let (read, written) = tokio::join!(read, dest.put_stream(dest_key, rx));
        read?;
        written
    }
}

impl<T: BackupStore + ?Sized> BackupStoreExt for T {}

/// How to reach one store, as written in girofle.toml.
#[derive(Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `s3://bucket/optional/prefix` or `file:///absolute/path`.
    pub url: String,
    /// S3 endpoint for S3-compatible services (MinIO, Garage...), e.g.
    /// `https://s3.example.net`; AWS when absent.
    pub endpoint: Option<String>,
    /// S3 region; `us-east-1` (or `AWS_REGION`) when absent.
    pub region: Option<String>,
    /// S3 access key id; `AWS_ACCESS_KEY_ID` when absent.
    pub access_key_id: Option<String>,
    /// S3 secret access key; `AWS_SECRET_ACCESS_KEY` when absent. Never printed.
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (test servers); false when absent.
    pub allow_http: Option<bool>,
    /// age public keys (`age1...`) to encrypt the backups to (any store): every object
    /// but the manifests is then stored as an age file.
    pub age_recipients: Option<Vec<String>>,
    /// A file of age public keys, one per line (`#` comments), added to `age_recipients`.
    pub age_recipients_file: Option<PathBuf>,
    /// The age private key file (`age-keygen` output) that restore, verify and copy use
    /// to decrypt; its public key is the recipient when no recipient is given. Its
    /// content is never printed.
    pub age_identity_file: Option<PathBuf>,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("age_recipients", &self.age_recipients)
            .field("age_recipients_file", &self.age_recipients_file)
            .field("age_identity_file", &self.age_identity_file)
            .finish()
    }
}

/// Opens the store `name` described by `config`. Nothing is contacted yet: a wrong
/// credential or an unreachable endpoint shows on the first operation.
///
/// A `file://` directory must exist already (it is often a mount point, and writing
/// into an unmounted one would fill the wrong disk).
///
/// With `age_recipients` (or `age_recipients_file`, or only `age_identity_file`) the
/// store encrypts what it writes with age and decrypts what it reads (see `encrypt`).
///
/// # Errors
/// `InvalidInput` naming the field (`url`, `endpoint`, `region`, `access_key_id`,
/// `secret_access_key`, `allow_http`, `age_recipients`, `age_recipients_file`,
/// `age_identity_file`) when the configuration is wrong; `NotFound` when a `file://`
/// directory or the identity file does not exist; `Backend` when `object_store` refuses
/// the configuration.
pub fn open_store(name: &str, config: &StoreConfig) -> Result<Arc<dyn BackupStore>> {
    open_store_with(name, config, default_retry())
}

/// Removes the secrets of `config` from an error about it (a secret pasted into the
/// wrong field would otherwise be echoed back).
fn redact_error(e: Error, redactor: &Redactor) -> Error {
    match e {
        Error::InvalidInput { field, message } => Error::InvalidInput {
            field,
            message: redactor.clean(&message),
        },
        Error::NotFound { what, hint } => Error::NotFound {
            what: redactor.clean(&what),
            hint,
        },
        Error::Backend { backend, message } => Error::Backend {
            backend: redactor.clean(&backend),
            message: redactor.clean(&message),
        },
        other => other,
    }
}

/// Opens the built-in store `local` in `dir`, creating the directory if needed.
///
/// # Errors
/// `Io` when the directory cannot be created or resolved.
pub fn local_store(dir: &FsPath) -> Result<Arc<dyn BackupStore>> {
    std::fs::create_dir_all(dir).ctx("creating store directory", dir)?;
    let store = local::LocalStore::new(LOCAL_STORE_NAME, dir, dir.display().to_string())?;
    Ok(Arc::new(store))
}

fn default_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 10,
        retry_timeout: RETRY_TIMEOUT,
    }
}

pub(crate) fn open_store_with(
    name: &str,
    config: &StoreConfig,
    retry: RetryConfig,
) -> Result<Arc<dyn BackupStore>> {
    let open = || {
        let age = encrypt::AgeSettings::from_config(name, config)?;
        let store = open_unredacted(name, config, retry)?;
        Ok(match age {
            Some(age) => Arc::new(encrypt::EncryptedStore::new(store, age)) as Arc<dyn BackupStore>,
            None => store,
        })
    };
    open().map_err(|e| redact_error(e, &Redactor::new(config)))
}

fn open_unredacted(
    name: &str,
    config: &StoreConfig,
    retry: RetryConfig,
) -> Result<Arc<dyn BackupStore>> {
    let invalid =
        |field: &str, message: String| Error::invalid(field, format!("store `{name}`: {message}"));
    if config.url.trim().is_empty() {
        return Err(invalid(
            "url",
            "is empty; use s3://bucket/prefix or file:///absolute/path".into(),
        ));
    }
    // Never echo the raw URL: it may carry a password.
    let url = url::Url::parse(config.url.trim())
        .map_err(|e| invalid("url", format!("is not a valid URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "url",
            "must not carry credentials; set access_key_id and secret_access_key instead".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("url", "must not have a query or a fragment".into()));
    }
    match url.scheme() {
        "file" => local::open_file_store(name, config, &url),
        "s3" => s3::open_s3_store(name, config, &url, retry),
        other => Err(invalid(
            "url",
            format!(
                "scheme `{other}` is not supported; use s3://bucket/prefix or file:///absolute/path"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::common::{prefix_path, validate_key};
    use super::*;

    const PLANTED: &str = "PLANTED-secret-9f8e7d6c5b4a";

    fn s3_config(endpoint: &str) -> StoreConfig {
        StoreConfig {
            url: "s3://bucket/some/prefix".into(),
            endpoint: Some(endpoint.into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(PLANTED.into()),
            allow_http: Some(true),
            ..Default::default()
        }
    }

    fn invalid_field(result: Result<Arc<dyn BackupStore>>) -> String {
        match result {
            Err(Error::InvalidInput { field, message }) => {
                assert!(!message.contains(PLANTED), "{message}");
                field
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_validated() {
        for good in ["a", "web/20261125T220000Z.tar.zst", "a/b/c", "a b/ü-1.0"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../x", "a/./b", "a/..", "a#1", "a\\b", "a\nb",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(prefix_path("s", "").unwrap(), None);
        assert_eq!(prefix_path("s", "web/").unwrap().unwrap().as_ref(), "web");
        assert_eq!(prefix_path("s", "web").unwrap().unwrap().as_ref(), "web");
        assert!(prefix_path("s", "/web").is_err());
        assert!(prefix_path("s", "web//").is_err());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let ok = s3_config("http://127.0.0.1:1");
        let open = |c: &StoreConfig| open_store("offsite", c);
        assert!(open(&ok).is_ok());

        let cases: Vec<(StoreConfig, &str)> = vec![
            (
                StoreConfig {
                    url: String::new(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "not a url".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "ftp://bucket/x".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "s3:///prefix".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "s3://bucket:9000/x".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "s3://bucket/a//b".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: "s3://bucket/x?y=1".into(),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    url: format!("s3://AKID:{PLANTED}@bucket/x"),
                    ..ok.clone()
                },
                "url",
            ),
            (
                StoreConfig {
                    endpoint: Some("nope".into()),
                    ..ok.clone()
                },
                "endpoint",
            ),
            (
                StoreConfig {
                    endpoint: Some(format!("http://u:{PLANTED}@127.0.0.1:1")),
                    ..ok.clone()
                },
                "endpoint",
            ),
            (
                StoreConfig {
                    endpoint: Some("ftp://127.0.0.1".into()),
                    ..ok.clone()
                },
                "endpoint",
            ),
            (
                StoreConfig {
                    allow_http: None,
                    ..ok.clone()
                },
                "allow_http",
            ),
            (
                StoreConfig {
                    allow_http: Some(false),
                    ..ok.clone()
                },
                "allow_http",
            ),
            (
                StoreConfig {
                    region: Some(" ".into()),
                    ..ok.clone()
                },
                "region",
            ),
            (
                StoreConfig {
                    secret_access_key: None,
                    ..ok.clone()
                },
                "secret_access_key",
            ),
            (
                StoreConfig {
                    access_key_id: None,
                    ..ok.clone()
                },
                "access_key_id",
            ),
            (
                StoreConfig {
                    url: "file:///tmp".into(),
                    ..ok.clone()
                },
                "endpoint",
            ),
            (
                StoreConfig {
                    url: "file://otherhost/tmp".into(),
                    ..Default::default()
                },
                "url",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(invalid_field(open(&config)), field, "{config:?}");
        }
    }

    #[test]
    fn missing_file_directory_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-mounted");
        let config = StoreConfig {
            url: url::Url::from_directory_path(&missing).unwrap().to_string(),
            ..Default::default()
        };
        let err = open_store("nas", &config).unwrap_err();
        assert_eq!(err.kind(), "not_found", "{err}");
        assert!(!missing.exists());
    }

    /// Everything a user or a log may see, with a planted secret: none shows it.
    #[tokio::test]
    async fn secrets_never_show() {
        // A closed port on loopback: every request fails fast, with a short retry budget.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = s3_config(&format!("http://127.0.0.1:{port}"));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
        };
        let store = open_store_with("offsite", &config, retry).unwrap();
        let mut seen = vec![
            format!("{config:?}"),
            format!("{:?}", config.clone()),
            format!("{store:?}"),
            store.location(),
        ];
        seen.push(format!("{:?}", store.head("a/b").await.unwrap_err()));
        seen.push(store.head("a/b").await.unwrap_err().to_string());
        seen.push(store.list("").await.unwrap_err().to_string());
        seen.push(store.get_bytes("k").await.unwrap_err().to_string());
        seen.push(
            store
                .put_bytes("k", Bytes::from_static(b"x"))
                .await
                .unwrap_err()
                .to_string(),
        );
        seen.push(store.delete("k").await.unwrap_err().to_string());
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Bytes::from(vec![1u8; 100]))).await.unwrap();
        drop(tx);
        seen.push(store.put_stream("k", rx).await.unwrap_err().to_string());
        // Builder failures and parse failures too.
        for bad in [
            StoreConfig {
                url: format!("s3://AKID:{PLANTED}@bucket/x"),
                ..config.clone()
            },
            StoreConfig {
                url: format!("s3://b/{PLANTED}/a//b"),
                ..config.clone()
            },
            StoreConfig {
                url: format!("file:///{PLANTED}"),
                secret_access_key: Some(PLANTED.into()),
                ..Default::default()
            },
            StoreConfig {
                endpoint: Some(format!("http://{PLANTED}@[::1")),
                ..config.clone()
            },
        ] {
            seen.push(format!("{:?}", open_store("offsite", &bad).unwrap_err()));
        }
        for text in &seen {
            assert!(!text.contains(PLANTED), "secret leaked in: {text}");
        }
        // And the errors are useful: they name the store and where it is.
        assert!(seen[5].contains("store `offsite` (s3://bucket/some/prefix at http://127.0.0.1:"));
        assert!(seen[0].contains("<redacted>"));
    }

    #[test]
    fn redactor_removes_every_occurrence() {
        let r = Redactor {
            secrets: vec![PLANTED.into()],
        };
        let cleaned = r.clean(&format!("a {PLANTED} b {PLANTED}"));
        assert_eq!(cleaned, "a <redacted> b <redacted>");
    }
}
