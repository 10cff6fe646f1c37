//! Storing backup objects by key, on the local disk or in remote object storage.
//!
//! A [`BackupStore`] holds opaque objects addressed by `/`-separated keys such as
//! `web/20261125T220000Z.tar.zst`; it streams them in and out with bounded memory and
//! makes each one visible only once it is complete. It is not responsible for knowing
//! what a backup is: naming, archive formats, manifests and retention belong to the
//! modules that call it.
//!
//! Every store is built on `object_store`: `LocalFileSystem` for the built-in `local`
//! store and `file://` URLs, `AmazonS3` for `s3://` URLs (AWS or any S3-compatible
//! server). Local writes do not use `LocalFileSystem`'s multipart upload, because it
//! renames the staged file into place without syncing it: after a crash the final name
//! could point at a half-written file. We stage, fsync, rename, then fsync the
//! directories ourselves, with `object_store`'s `<name>#<digits>` staging names so that
//! listings skip unfinished files.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, GetResultPayload,
    MultipartUpload, ObjectMeta, ObjectStore, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, IoContext, Result};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod encrypt;

/// Size of the parts of a remote multipart upload. Every part but the last has exactly
/// this size, as some S3-compatible services (R2) require equal parts, and it stays well
/// above S3's 5 MiB minimum.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one remote upload in flight at once; with [`PART_SIZE`] this bounds an
/// upload's memory to about `(MAX_PARTS_IN_FLIGHT + 1) * PART_SIZE`.
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// Size of the ranges a remote object larger than one range is read in: one GET stream
/// is bound by a single connection (and, on a loopback server, by one of its threads),
/// so reads fetch ranges in parallel and deliver them in order. 4 MiB: restoring 1 GiB
/// from the loopback server took 8-10 s with 4 MiB ranges and 8.6-11 s with 8 MiB (15-16 s
/// with one stream), and 4 MiB keeps the restore's peak RSS at ~90 MiB (~128 with 8 MiB).
/// Public so that the conformance battery can cut its objects around range boundaries.
pub const GET_RANGE_SIZE: u64 = 4 * 1024 * 1024;
/// Ranged GETs of one remote read in flight at most; with [`GET_RANGE_SIZE`] this bounds
/// a read's memory to about `(MAX_RANGES_IN_FLIGHT + 1) * GET_RANGE_SIZE` (the ranges
/// fetched ahead, and the one being delivered). A read starts with one and adds one each
/// time its reader has to wait for a range, so a reader slower than the store (an index
/// read in lockstep with its archive) keeps fewer ranges in memory.
const MAX_RANGES_IN_FLIGHT: usize = 4;
/// Size of the chunks a ranged read yields (slices of its ranges, not copies).
const GET_CHUNK: usize = 1024 * 1024;
/// Chunk size of local reads (object_store's own file stream reads 8 KiB at a time,
/// one blocking task per chunk, which is slow for multi-gigabyte backups).
const LOCAL_READ_CHUNK: usize = 1024 * 1024;
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
    let store = ObjectBackupStore::local(LOCAL_STORE_NAME, dir, dir.display().to_string())?;
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
        "file" => open_file_store(name, config, &url),
        "s3" => open_s3_store(name, config, &url, retry),
        other => Err(invalid(
            "url",
            format!(
                "scheme `{other}` is not supported; use s3://bucket/prefix or file:///absolute/path"
            ),
        )),
    }
}

fn open_file_store(
    name: &str,
    config: &StoreConfig,
    url: &url::Url,
) -> Result<Arc<dyn BackupStore>> {
    for (field, set) in [
        ("endpoint", config.endpoint.is_some()),
        ("region", config.region.is_some()),
        ("access_key_id", config.access_key_id.is_some()),
        ("secret_access_key", config.secret_access_key.is_some()),
        ("allow_http", config.allow_http.is_some()),
    ] {
        if set {
            return Err(Error::invalid(
                field,
                format!("store `{name}`: only s3:// stores take `{field}`; remove it"),
            ));
        }
    }
    match url.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(Error::invalid(
                "url",
                format!("store `{name}`: file URL names host `{host}`; use file:///absolute/path"),
            ))
        }
    }
    let dir = url.to_file_path().map_err(|()| {
        Error::invalid(
            "url",
            format!("store `{name}`: not a local path; use file:///absolute/path"),
        )
    })?;
    if !dir.is_dir() {
        return Err(Error::not_found(
            format!("directory `{}` of store `{name}`", dir.display()),
            "create it, or mount the volume it lives on",
        ));
    }
    let location = url.as_str().trim_end_matches('/').to_string();
    Ok(Arc::new(ObjectBackupStore::local(name, &dir, location)?))
}

fn open_s3_store(
    name: &str,
    config: &StoreConfig,
    url: &url::Url,
    retry: RetryConfig,
) -> Result<Arc<dyn BackupStore>> {
    let invalid =
        |field: &str, message: String| Error::invalid(field, format!("store `{name}`: {message}"));
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(invalid(
            "url",
            "has no bucket; use s3://bucket/prefix".into(),
        ));
    }
    if url.port().is_some() {
        return Err(invalid(
            "url",
            "must not have a port; put the server in `endpoint`".into(),
        ));
    }
    let prefix = url.path().trim_matches('/').to_string();
    if !prefix.is_empty() {
        validate_key(&prefix).map_err(|m| invalid("url", format!("prefix `{prefix}` {m}")))?;
    }

    let mut builder = AmazonS3Builder::from_env()
        // No SHA-256 of every part for the request signature: it cost ~0.4 s of CPU per
        // GB uploaded, and what Girofle stores is checked end to end anyway (the archive's
        // and the index's BLAKE3 in the checksummed manifest).
        .with_unsigned_payload(true)
        .with_bucket_name(&bucket)
        .with_retry(retry)
        .with_client_options(ClientOptions::new().with_connect_timeout(Duration::from_secs(10)));

    let mut location = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    if let Some(endpoint) = &config.endpoint {
        let parsed = url::Url::parse(endpoint)
            .map_err(|e| invalid("endpoint", format!("is not a valid URL ({e})")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "endpoint",
                "must not carry credentials; set access_key_id and secret_access_key instead"
                    .into(),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "endpoint",
                "must not have a query or a fragment".into(),
            ));
        }
        match parsed.scheme() {
            "https" => {}
            "http" if config.allow_http == Some(true) => {}
            "http" => {
                return Err(invalid(
                    "allow_http",
                    format!(
                        "endpoint `{parsed}` is plain http; set allow_http = true to accept it \
                         (test servers only: the traffic is not encrypted)"
                    ),
                ))
            }
            other => {
                return Err(invalid(
                    "endpoint",
                    format!("scheme `{other}` is not supported; use https:// (or http://)"),
                ))
            }
        }
        let endpoint = parsed.as_str().trim_end_matches('/').to_string();
        location = format!("{location} at {endpoint}");
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.region {
        if region.trim().is_empty() {
            return Err(invalid(
                "region",
                "is empty; remove it or name a region".into(),
            ));
        }
        builder = builder.with_region(region.trim());
    }
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => {
            if id.is_empty() {
                return Err(invalid("access_key_id", "is empty".into()));
            }
            if secret.is_empty() {
                return Err(invalid("secret_access_key", "is empty".into()));
            }
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        (Some(_), None) => {
            return Err(invalid(
                "secret_access_key",
                "is missing while access_key_id is set; set both or neither (to use AWS_* variables)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "access_key_id",
                "is missing while secret_access_key is set; set both or neither (to use AWS_* variables)"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(allow) = config.allow_http {
        builder = builder.with_allow_http(allow);
    }

    let redactor = Redactor::new(config);
    let s3 = builder.build().map_err(|e| {
        Error::backend(
            format!("store `{name}` ({location})"),
            redactor.clean(&error_chain(&e)),
        )
    })?;
    let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.as_str()))
    };
    Ok(Arc::new(ObjectBackupStore {
        name: name.to_string(),
        location,
        inner,
        local: None,
        redactor,
    }))
}

/// Checks a key (or a non-empty prefix); the message completes "key `...` ".
fn validate_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err("must not start or end with `/`".into());
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err("has an empty segment (`//`)".into());
        }
        if segment == "." || segment == ".." {
            return Err(format!("has a `{segment}` segment"));
        }
    }
    if let Some(c) = key
        .chars()
        .find(|c| *c == '#' || *c == '\\' || c.is_control())
    {
        return Err(format!(
            "contains {c:?}, which is not portable across stores"
        ));
    }
    Ok(())
}

fn key_path(name: &str, key: &str) -> Result<ObjectPath> {
    validate_key(key)
        .map_err(|m| Error::invalid("key", format!("key `{key}` for store `{name}` {m}")))?;
    ObjectPath::parse(key)
        .map_err(|e| Error::invalid("key", format!("key `{key}` for store `{name}`: {e}")))
}

fn prefix_path(name: &str, prefix: &str) -> Result<Option<ObjectPath>> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Ok(None);
    }
    validate_key(trimmed).map_err(|m| {
        Error::invalid(
            "prefix",
            format!("prefix `{prefix}` for store `{name}` {m}"),
        )
    })?;
    ObjectPath::parse(trimmed).map(Some).map_err(|e| {
        Error::invalid(
            "prefix",
            format!("prefix `{prefix}` for store `{name}`: {e}"),
        )
    })
}

/// `object_store` names its staging files `<name>#<digits>`; so do we.
fn is_staging_name(key: &str) -> bool {
    let file = key.rsplit('/').next().unwrap_or(key);
    match file.rsplit_once('#') {
        Some((_, digits)) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Removes known secrets from messages, whatever produced them.
#[derive(Clone, Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    fn new(config: &StoreConfig) -> Self {
        let mut secrets: Vec<String> = config.secret_access_key.iter().cloned().collect();
        for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
            if let Ok(value) = std::env::var(var) {
                secrets.push(value);
            }
        }
        secrets.retain(|s| !s.is_empty());
        Redactor { secrets }
    }

    fn clean(&self, message: &str) -> String {
        self.secrets.iter().fold(message.to_string(), |m, s| {
            m.replace(s.as_str(), "<redacted>")
        })
    }
}

/// An error's message followed by its causes, which object_store's `Display` often
/// leaves out (the "connection refused" under "error sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Names and secrets that turn an `object_store` error into the crate's error.
#[derive(Clone)]
struct ErrorContext {
    /// The store's name.
    name: String,
    /// `store `name` (location)`, for `Backend` errors.
    backend: String,
    redactor: Redactor,
}

impl ErrorContext {
    /// Lifts an `object_store` error about `key` into the crate's error.
    fn lift(&self, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::not_found(
                format!("object `{key}` in store `{}`", self.name),
                NOT_FOUND_HINT,
            ),
            object_store::Error::Precondition { .. } => self.changed_while_read(key),
            other => self.backend_error(&format!("`{key}`"), &other),
        }
    }

    /// A `Backend` error about `what`, with the causes, without secrets, and with a hint
    /// when the server refused the credentials (object_store reports most 403s as
    /// `Generic`, so the status and S3 codes are looked for in the text too).
    fn backend_error(&self, what: &str, e: &object_store::Error) -> Error {
        let text = self.redactor.clean(&error_chain(e));
        let refused = matches!(
            e,
            object_store::Error::Unauthenticated { .. }
                | object_store::Error::PermissionDenied { .. }
        ) || [
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
        ]
        .iter()
        .any(|needle| text.contains(needle));
        let hint = if refused {
            "; the server refused the credentials: check access_key_id and secret_access_key \
             (or the AWS_* variables) and the bucket's permissions"
        } else {
            ""
        };
        Error::backend(self.backend.clone(), format!("{what}: {text}{hint}"))
    }

    /// The object was replaced between two ranges of one read: what was read is a mix.
    fn changed_while_read(&self, key: &str) -> Error {
        Error::Conflict(format!(
            "object `{key}` in store `{}` was replaced while it was being read; read it again",
            self.name
        ))
    }
}

/// Where a local store keeps its files.
#[derive(Debug)]
struct LocalRoot {
    /// Canonical root directory.
    dir: PathBuf,
    fs: Arc<LocalFileSystem>,
}

/// The one implementation of [`BackupStore`], over any `object_store`.
struct ObjectBackupStore {
    name: String,
    location: String,
    inner: Arc<dyn ObjectStore>,
    /// Set for local and file:// stores, whose writes we do ourselves (see module doc).
    local: Option<LocalRoot>,
    redactor: Redactor,
}

impl fmt::Debug for ObjectBackupStore {
    // By hand: the inner object store's Debug would show its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupStore")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl ObjectBackupStore {
    fn local(name: &str, dir: &FsPath, location: String) -> Result<Self> {
        let canonical = std::fs::canonicalize(dir).ctx("resolving store directory", dir)?;
        let fs = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| Error::backend(format!("store `{name}` ({location})"), error_chain(&e)))?
            .with_automatic_cleanup(true);
        let fs = Arc::new(fs);
        Ok(ObjectBackupStore {
            name: name.to_string(),
            location,
            inner: fs.clone(),
            local: Some(LocalRoot { dir: canonical, fs }),
            redactor: Redactor::default(),
        })
    }

    fn backend_name(&self) -> String {
        format!("store `{}` ({})", self.name, self.location)
    }

    /// What the errors of this store need, for tasks that outlive `&self`.
    fn errors(&self) -> ErrorContext {
        ErrorContext {
            name: self.name.clone(),
            backend: self.backend_name(),
            redactor: self.redactor.clone(),
        }
    }

    /// Lifts an `object_store` error about `key` into the crate's error.
    fn lift(&self, key: &str, e: object_store::Error) -> Error {
        self.errors().lift(key, e)
    }

    fn backend_error(&self, what: &str, e: &object_store::Error) -> Error {
        self.errors().backend_error(what, e)
    }

    fn source_failed(&self, key: &str, e: std::io::Error) -> Error {
        Error::io(
            format!(
                "upload to store `{}` aborted: reading the data for",
                self.name
            ),
            key,
            e,
        )
    }

    fn info(&self, meta: ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        }
    }

    /// Local write: stage, fsync, rename, fsync the directories.
    async fn put_local(
        &self,
        local: &LocalRoot,
        key: &str,
        path: &ObjectPath,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let dest = local
            .fs
            .path_to_filesystem(path)
            .map_err(|e| self.lift(key, e))?;
        let root = local.dir.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        let on_drop = CancelOnDrop(Some(cancelled.clone()));
        let outcome =
            tokio::task::spawn_blocking(move || write_local(&root, &dest, rx, &cancelled)).await;
        on_drop.disarm();
        match outcome {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(LocalWriteError::Source(e))) => Err(self.source_failed(key, e)),
            Ok(Err(LocalWriteError::Io(action, path, e))) => Err(Error::io(
                format!("store `{}`: {action}", self.name),
                path,
                e,
            )),
            Ok(Err(LocalWriteError::Cancelled)) => Err(Error::backend(
                self.backend_name(),
                format!("upload of `{key}` was cancelled"),
            )),
            Err(join) => Err(Error::backend(
                self.backend_name(),
                format!("upload of `{key}` failed: {join}"),
            )),
        }
    }

    /// Remote write: one PUT when the data fits in a part, a multipart upload otherwise.
    async fn put_remote(
        &self,
        key: &str,
        path: &ObjectPath,
        mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let mut pending = PartBuffer::default();
        let mut total: u64 = 0;
        while pending.len < PART_SIZE {
            match rx.recv().await {
                None => {
                    self.inner
                        .put(path, pending.take_all())
                        .await
                        .map_err(|e| self.lift(key, e))?;
                    return Ok(total);
                }
                Some(Err(e)) => return Err(self.source_failed(key, e)),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    pending.push(chunk);
                }
            }
        }

        let upload = self
            .inner
            .put_multipart(path)
            .await
            .map_err(|e| self.lift(key, e))?;
        let mut upload = AbortOnDrop(Some(upload));
        let mut parts: JoinSet<object_store::Result<()>> = JoinSet::new();
        let outcome: Result<u64> = async {
            loop {
                while pending.len >= PART_SIZE {
                    while parts.len() >= MAX_PARTS_IN_FLIGHT {
                        self.join_part(key, &mut parts).await?;
                    }
                    let part = pending.take_part(PART_SIZE);
                    parts.spawn(upload.get().put_part(part));
                }
                match rx.recv().await {
                    None => break,
                    Some(Err(e)) => return Err(self.source_failed(key, e)),
                    Some(Ok(chunk)) => {
                        total += chunk.len() as u64;
                        pending.push(chunk);
                    }
                }
            }
            if pending.len > 0 {
                parts.spawn(upload.get().put_part(pending.take_all()));
            }
            while !parts.is_empty() {
                self.join_part(key, &mut parts).await?;
            }
            upload
                .get()
                .complete()
                .await
                .map_err(|e| self.lift(key, e))?;
            Ok(total)
        }
        .await;
        match outcome {
            Ok(n) => {
                upload.disarm();
                Ok(n)
            }
            Err(e) => {
                parts.shutdown().await;
                // Best effort: the error to report is the one that made us abort.
                let _ = upload.get().abort().await;
                upload.disarm();
                Err(e)
            }
        }
    }

    /// Remote read: one GET when the object fits in a range; otherwise ranges of
    /// [`GET_RANGE_SIZE`], [`MAX_RANGES_IN_FLIGHT`] at once, each pinned to the version
    /// the first request saw (its ETag), delivered in order.
    async fn get_remote(
        &self,
        key: &str,
        path: ObjectPath,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let meta = self
            .inner
            .head(&path)
            .await
            .map_err(|e| self.lift(key, e))?;
        if meta.size <= GET_RANGE_SIZE {
            let result = self.inner.get(&path).await.map_err(|e| self.lift(key, e))?;
            return Ok(self.errors().whole_stream(key, result));
        }
        let read = RangedRead {
            inner: self.inner.clone(),
            path,
            key: key.to_string(),
            size: meta.size,
            e_tag: meta.e_tag,
            errors: self.errors(),
            next: 0,
            depth: 1,
            in_flight: std::collections::VecDeque::new(),
            current: std::collections::VecDeque::new(),
            done: false,
        };
        Ok(futures::stream::unfold(read, |mut read| async move {
            let item = read.next_chunk().await?;
            Some((item, read))
        })
        .boxed())
    }

    async fn join_part(
        &self,
        key: &str,
        parts: &mut JoinSet<object_store::Result<()>>,
    ) -> Result<()> {
        match parts.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(self.lift(key, e)),
            Some(Err(join)) => Err(Error::backend(
                self.backend_name(),
                format!("`{key}`: uploading a part failed: {join}"),
            )),
        }
    }
}

#[async_trait::async_trait]
impl BackupStore for ObjectBackupStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put_stream(
        &self,
        key: &str,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let path = key_path(&self.name, key)?;
        match &self.local {
            Some(local) => self.put_local(local, key, &path, rx).await,
            None => self.put_remote(key, &path, rx).await,
        }
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        let path = key_path(&self.name, key)?;
        match &self.local {
            Some(local) => {
                let (tx, rx) = mpsc::channel(1);
                // Cannot fail: the receiver is alive and the channel has room.
                let _ = tx.try_send(Ok(data));
                drop(tx);
                self.put_local(local, key, &path, rx).await.map(drop)
            }
            None => self
                .inner
                .put(&path, PutPayload::from(data))
                .await
                .map(drop)
                .map_err(|e| self.lift(key, e)),
        }
    }

    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = key_path(&self.name, key)?;
        if self.local.is_none() {
            return self.get_remote(key, path).await;
        }
        let result = self.inner.get(&path).await.map_err(|e| self.lift(key, e))?;
        match result.payload {
            GetResultPayload::File(file, file_path) => {
                let (tx, mut rx) = mpsc::channel(2);
                let range = result.range;
                let backend = self.backend_name();
                tokio::task::spawn_blocking(move || {
                    read_local(file, &file_path, range, &tx, &backend)
                });
                Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
            }
            GetResultPayload::Stream(_) => Ok(self.errors().whole_stream(key, result)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let path = key_path(&self.name, key)?;
        let result = self.inner.get(&path).await.map_err(|e| self.lift(key, e))?;
        result.bytes().await.map_err(|e| self.lift(key, e))
    }

    async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
        let path = key_path(&self.name, key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        // One ranged GET: listing an encrypted store reads every object's header.
        self.inner
            .get_range(&path, 0..len)
            .await
            .map_err(|e| self.lift(key, e))
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = key_path(&self.name, key)?;
        let meta = self
            .inner
            .head(&path)
            .await
            .map_err(|e| self.lift(key, e))?;
        Ok(self.info(meta))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = prefix_path(&self.name, prefix)?;
        let metas: Vec<ObjectMeta> = self
            .inner
            .list(path.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.backend_error(&format!("listing `{prefix}`"), &e))?;
        let mut objects: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| self.info(m))
            .filter(|o| !(self.local.is_some() && is_staging_name(&o.key)))
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = key_path(&self.name, key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.lift(key, e)),
        }
    }
}

/// Chunks waiting to become a part; splits them into parts of exact size.
#[derive(Default)]
struct PartBuffer {
    chunks: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl PartBuffer {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    fn take_part(&mut self, size: usize) -> PutPayload {
        let mut part = Vec::new();
        let mut wanted = size.min(self.len);
        self.len -= wanted;
        while wanted > 0 {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            if chunk.len() > wanted {
                let rest = chunk.split_off(wanted);
                self.chunks.push_front(rest);
            }
            wanted -= chunk.len();
            part.push(chunk);
        }
        part.into_iter().collect()
    }

    fn take_all(&mut self) -> PutPayload {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().collect()
    }
}

/// Aborts a multipart upload whose future was dropped midway, so no parts linger on
/// S3 (where they are billed and invisible).
struct AbortOnDrop(Option<Box<dyn MultipartUpload>>);

impl AbortOnDrop {
    fn get(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.0.as_mut().expect("upload used after disarm")
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = upload.abort().await;
                });
            }
        }
    }
}

impl ErrorContext {
    /// The body of one GET as a stream of the crate's results.
    fn whole_stream(&self, key: &str, result: GetResult) -> BoxStream<'static, Result<Bytes>> {
        let errors = self.clone();
        let key = key.to_string();
        result
            .into_stream()
            .map_err(move |e| errors.lift(&key, e))
            .boxed()
    }
}

/// One remote read in ranges: up to `depth` ranged GETs run as tasks
/// (each retried by `object_store`, also when the body breaks off midway); the stream
/// yields their bytes in order, in slices of at most [`GET_CHUNK`]. Dropping it cancels
/// them.
struct RangedRead {
    inner: Arc<dyn ObjectStore>,
    path: ObjectPath,
    key: String,
    size: u64,
    /// The version every range must come from (none if the server gives no ETag).
    e_tag: Option<String>,
    errors: ErrorContext,
    /// Start of the next range to request.
    next: u64,
    /// Ranged GETs to keep in flight: from 1, one more (up to [`MAX_RANGES_IN_FLIGHT`])
    /// each time the reader waits for one.
    depth: usize,
    in_flight: std::collections::VecDeque<JoinHandle<Result<Vec<Bytes>>>>,
    /// What is left to yield of the range being delivered, as the body's chunks arrived.
    current: std::collections::VecDeque<Bytes>,
    /// Set after the last chunk or an error: the stream ends.
    done: bool,
}

impl RangedRead {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        if self.current.is_empty() {
            self.request_ranges();
            let Some(task) = self.in_flight.pop_front() else {
                self.done = true;
                return None;
            };
            if !task.is_finished() {
                self.depth = (self.depth + 1).min(MAX_RANGES_IN_FLIGHT);
            }
            let fetched = task.await.unwrap_or_else(|join| {
                Err(Error::backend(
                    self.errors.backend.clone(),
                    format!("reading `{}`: a ranged GET failed: {join}", self.key),
                ))
            });
            match fetched {
                Ok(chunks) => self.current = chunks.into(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            self.request_ranges();
        }
        let front = self.current.front_mut()?;
        let n = front.len().min(GET_CHUNK);
        let chunk = front.split_to(n);
        if front.is_empty() {
            self.current.pop_front();
        }
        Some(Ok(chunk))
    }

    /// Starts ranged GETs until `depth` run or the object is covered.
    fn request_ranges(&mut self) {
        while self.in_flight.len() < self.depth && self.next < self.size {
            let range = self.next..(self.next + GET_RANGE_SIZE).min(self.size);
            self.next = range.end;
            let (inner, path, key) = (self.inner.clone(), self.path.clone(), self.key.clone());
            let (e_tag, errors) = (self.e_tag.clone(), self.errors.clone());
            self.in_flight.push_back(tokio::spawn(async move {
                fetch_range(&*inner, &path, &key, range, e_tag, &errors).await
            }));
        }
    }
}

impl Drop for RangedRead {
    fn drop(&mut self) {
        for task in &self.in_flight {
            task.abort();
        }
    }
}

/// One ranged GET, checked: exactly the bytes asked for, of the version `e_tag`.
async fn fetch_range(
    inner: &dyn ObjectStore,
    path: &ObjectPath,
    key: &str,
    range: std::ops::Range<u64>,
    e_tag: Option<String>,
    errors: &ErrorContext,
) -> Result<Vec<Bytes>> {
    let options = GetOptions {
        range: Some(GetRange::Bounded(range.clone())),
        if_match: e_tag.clone(),
        ..Default::default()
    };
    let result = inner
        .get_opts(path, options)
        .await
        .map_err(|e| errors.lift(key, e))?;
    if e_tag.is_some() && result.meta.e_tag != e_tag {
        return Err(errors.changed_while_read(key));
    }
    // The body's chunks as they come, not one buffer of the range's size: glibc keeps
    // freed 4 MiB buffers in each worker thread's arena, which cost ~17 MiB of peak
    // memory on a 1 GiB restore.
    let mut body = result.into_stream();
    let mut chunks = Vec::new();
    let mut got: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| errors.lift(key, e))?;
        got += chunk.len() as u64;
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
    }
    if got != range.end - range.start {
        return Err(Error::backend(
            errors.backend.clone(),
            format!(
                "reading `{key}`: asked for bytes {}..{}, got {got} bytes",
                range.start, range.end,
            ),
        ));
    }
    Ok(chunks)
}

/// Tells a local writer that its caller went away, so it must not publish the object.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

enum LocalWriteError {
    Source(std::io::Error),
    Io(&'static str, PathBuf, std::io::Error),
    Cancelled,
}

/// Removes a staging file unless the write went through.
struct StagingGuard(Option<PathBuf>);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs on the blocking pool: receives chunks, writes them to a staging file next to
/// `dest`, and publishes it only once synced.
fn write_local(
    root: &FsPath,
    dest: &FsPath,
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cancelled: &AtomicBool,
) -> std::result::Result<u64, LocalWriteError> {
    use LocalWriteError::Io;
    let parent = dest.parent().unwrap_or(root);
    std::fs::create_dir_all(parent)
        .map_err(|e| Io("creating directory", parent.to_path_buf(), e))?;
    let (file, staging) = create_staging(dest)?;
    let mut guard = StagingGuard(Some(staging.clone()));
    let mut writer = std::io::BufWriter::with_capacity(LOCAL_READ_CHUNK, file);
    let mut total: u64 = 0;
    let mut written_back: u64 = 0;
    while let Some(chunk) = rx.blocking_recv() {
        if cancelled.load(Ordering::SeqCst) {
            return Err(LocalWriteError::Cancelled);
        }
        let chunk = chunk.map_err(LocalWriteError::Source)?;
        writer
            .write_all(&chunk)
            .map_err(|e| Io("writing", staging.clone(), e))?;
        total += chunk.len() as u64;
        if total - written_back >= WRITEBACK_STEP {
            // Start writing what is in the page cache now, without waiting for it: the
            // disk works while the archive is still being made, so the final fsync only
            // waits for the last few MiB instead of the whole archive (~0.3 s per GiB
            // here, with every core idle). Only a hint: an error shows at the fsync.
            writer
                .flush()
                .map_err(|e| Io("writing", staging.clone(), e))?;
            start_writeback(writer.get_ref(), written_back, total - written_back);
            written_back = total;
        }
    }
    let file = writer
        .into_inner()
        .map_err(|e| Io("writing", staging.clone(), e.into_error()))?;
    file.sync_all()
        .map_err(|e| Io("syncing", staging.clone(), e))?;
    drop(file);
    if cancelled.load(Ordering::SeqCst) {
        return Err(LocalWriteError::Cancelled);
    }
    std::fs::rename(&staging, dest).map_err(|e| Io("renaming into place", staging.clone(), e))?;
    guard.0 = None;
    // Make the new name durable, and the directories create_dir_all may have made.
    let mut dir = Some(parent);
    while let Some(d) = dir {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| Io("syncing directory", d.to_path_buf(), e))?;
        if d == root {
            break;
        }
        dir = d.parent().filter(|p| p.starts_with(root));
    }
    Ok(total)
}

/// How much a local write lets pile up in the page cache before it asks the kernel to
/// start writing it out.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts the writeback of a range of `file` and returns without waiting for it.
///
/// `sync_file_range` has no safe binding (and this crate has no `unsafe`), so this uses
/// `posix_fadvise(POSIX_FADV_DONTNEED)`, which on Linux starts the writeback of the
/// range's dirty pages (`WB_SYNC_NONE`) before dropping those that are clean; pages just
/// written are still dirty or under writeback, so nothing is dropped that the writer
/// needs. PostgreSQL's `pg_flush_data` uses the same call for the same purpose.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use rustix::fs::{fadvise, Advice};
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = fadvise(file, offset, Some(len), Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

fn create_staging(dest: &FsPath) -> std::result::Result<(std::fs::File, PathBuf), LocalWriteError> {
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        // 0600: a backup holds gitlab-secrets.json and the instance's passwords.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LocalWriteError::Io("creating", path, e)),
        }
    }
    unreachable!("u32 staging names exhausted")
}

/// Runs on the blocking pool: sends `range` of `file` in chunks of [`LOCAL_READ_CHUNK`].
fn read_local(
    mut file: std::fs::File,
    path: &FsPath,
    range: std::ops::Range<u64>,
    tx: &mpsc::Sender<Result<Bytes>>,
    backend: &str,
) {
    let fail = |e: std::io::Error| {
        let _ = tx.blocking_send(Err(Error::io(format!("{backend}: reading"), path, e)));
    };
    if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
        return fail(e);
    }
    let mut remaining = range.end - range.start;
    while remaining > 0 {
        let want = remaining.min(LOCAL_READ_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        if let Err(e) = file.read_exact(&mut buf) {
            return fail(e);
        }
        remaining -= want as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return; // the reader went away
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(is_staging_name("web/x.tar#1"));
        assert!(is_staging_name("x#123"));
        assert!(!is_staging_name("x#"));
        assert!(!is_staging_name("x#1a"));
        assert!(!is_staging_name("web/x.tar"));
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
    fn part_buffer_makes_exact_parts() {
        let mut buf = PartBuffer::default();
        for i in 0..10u8 {
            buf.push(Bytes::from(vec![i; 7]));
        }
        buf.push(Bytes::new());
        assert_eq!(buf.len, 70);
        let part = buf.take_part(16);
        assert_eq!(part.content_length(), 16);
        let flat: Vec<u8> = part.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(flat, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2]);
        assert_eq!(buf.len, 54);
        assert_eq!(buf.take_part(16).content_length(), 16);
        assert_eq!(buf.take_all().content_length(), 38);
        assert_eq!(buf.len, 0);
        assert_eq!(buf.take_all().content_length(), 0);
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
