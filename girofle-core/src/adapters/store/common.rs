//! What every store backend shares: key validation and the keys' `object_store` paths,
//! the Redactor that keeps secrets out of messages, the context that lifts an
//! `object_store` error into the crate's error, and [`Objects`], the `object_store`
//! handle through which the local and S3 stores do the operations they both leave to
//! `object_store` (whole reads, prefix reads, heads, lists, deletes).
//!
//! It is not responsible for writing or streaming objects (each backend's own file
//! does that) nor for opening stores (`mod.rs`).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetResult, ObjectMeta, ObjectStore};

use super::{ObjectInfo, StoreConfig, NOT_FOUND_HINT};
use crate::error::{Error, Result};

/// Checks a key (or a non-empty prefix); the message completes "key `...` ".
pub(super) fn validate_key(key: &str) -> std::result::Result<(), String> {
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

pub(super) fn key_path(name: &str, key: &str) -> Result<ObjectPath> {
    validate_key(key)
        .map_err(|m| Error::invalid("key", format!("key `{key}` for store `{name}` {m}")))?;
    ObjectPath::parse(key)
        .map_err(|e| Error::invalid("key", format!("key `{key}` for store `{name}`: {e}")))
}

pub(super) fn prefix_path(name: &str, prefix: &str) -> Result<Option<ObjectPath>> {
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

/// Removes known secrets from messages, whatever produced them.
#[derive(Clone, Default)]
pub(super) struct Redactor {
    pub(super) secrets: Vec<String>,
}

impl Redactor {
    pub(super) fn new(config: &StoreConfig) -> Self {
        let mut secrets: Vec<String> = config.secret_access_key.iter().cloned().collect();
        for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
            if let Ok(value) = std::env::var(var) {
                secrets.push(value);
            }
        }
        secrets.retain(|s| !s.is_empty());
        Redactor { secrets }
    }

    pub(super) fn clean(&self, message: &str) -> String {
        self.secrets.iter().fold(message.to_string(), |m, s| {
            m.replace(s.as_str(), "<redacted>")
        })
    }
}

/// An error's message followed by its causes, which object_store's `Display` often
/// leaves out (the "connection refused" under "error sending request").
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
pub(super) struct ErrorContext {
    /// The store's name.
    name: String,
    /// `store `name` (location)`, for `Backend` errors.
    pub(super) backend: String,
    redactor: Redactor,
}

impl ErrorContext {
    /// Lifts an `object_store` error about `key` into the crate's error.
    pub(super) fn lift(&self, key: &str, e: object_store::Error) -> Error {
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
    pub(super) fn backend_error(&self, what: &str, e: &object_store::Error) -> Error {
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
    pub(super) fn changed_while_read(&self, key: &str) -> Error {
        Error::Conflict(format!(
            "object `{key}` in store `{}` was replaced while it was being read; read it again",
            self.name
        ))
    }

    /// The body of one GET as a stream of the crate's results.
    pub(super) fn whole_stream(
        &self,
        key: &str,
        result: GetResult,
    ) -> BoxStream<'static, Result<Bytes>> {
        let errors = self.clone();
        let key = key.to_string();
        result
            .into_stream()
            .map_err(move |e| errors.lift(&key, e))
            .boxed()
    }
}

/// An `object_store` with the names its errors need; each backend holds one.
pub(super) struct Objects {
    pub(super) name: String,
    pub(super) location: String,
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) redactor: Redactor,
}

impl fmt::Debug for Objects {
    // By hand: the inner object store's Debug would show its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupStore")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Objects {
    pub(super) fn backend_name(&self) -> String {
        format!("store `{}` ({})", self.name, self.location)
    }

    /// What the errors of this store need, for tasks that outlive `&self`.
    pub(super) fn errors(&self) -> ErrorContext {
        ErrorContext {
            name: self.name.clone(),
            backend: self.backend_name(),
            redactor: self.redactor.clone(),
        }
    }

    /// Lifts an `object_store` error about `key` into the crate's error.
    pub(super) fn lift(&self, key: &str, e: object_store::Error) -> Error {
        self.errors().lift(key, e)
    }

    pub(super) fn backend_error(&self, what: &str, e: &object_store::Error) -> Error {
        self.errors().backend_error(what, e)
    }

    pub(super) fn source_failed(&self, key: &str, e: std::io::Error) -> Error {
        Error::io(
            format!(
                "upload to store `{}` aborted: reading the data for",
                self.name
            ),
            key,
            e,
        )
    }

    pub(super) fn info(&self, meta: ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified: meta.last_modified,
        }
    }

    pub(super) async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let path = key_path(&self.name, key)?;
        let result = self.inner.get(&path).await.map_err(|e| self.lift(key, e))?;
        result.bytes().await.map_err(|e| self.lift(key, e))
    }

    pub(super) async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
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

    pub(super) async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = key_path(&self.name, key)?;
        let meta = self
            .inner
            .head(&path)
            .await
            .map_err(|e| self.lift(key, e))?;
        Ok(self.info(meta))
    }

    /// Every object under `prefix`, sorted by key.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = prefix_path(&self.name, prefix)?;
        let metas: Vec<ObjectMeta> = self
            .inner
            .list(path.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.backend_error(&format!("listing `{prefix}`"), &e))?;
        let mut objects: Vec<ObjectInfo> = metas.into_iter().map(|m| self.info(m)).collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        let path = key_path(&self.name, key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.lift(key, e)),
        }
    }
}
