//! The S3 store: `s3://` URLs, on AWS or any S3-compatible server.
//!
//! [`S3Store`] goes through `object_store`'s `AmazonS3`: writes are one PUT when the data
//! fits in a part and a multipart upload of equal parts otherwise, aborted when the
//! upload fails or its future is dropped (so no billed, invisible parts linger); reads of
//! objects larger than one range are ranged GETs in parallel, pinned to one version by
//! its ETag and delivered in order. Heads, lists and deletes go through `object_store`
//! (see `common::Objects`). It is not responsible for validating keys or lifting errors
//! (`common`) nor for encryption (`encrypt`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, PutPayload, RetryConfig,
};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::common::{error_chain, key_path, validate_key, ErrorContext, Objects, Redactor};
use super::{BackupStore, ObjectInfo, StoreConfig, GET_RANGE_SIZE};
use crate::error::{Error, Result};

/// Size of the parts of a remote multipart upload. Every part but the last has exactly
/// this size, as some S3-compatible services (R2) require equal parts, and it stays well
/// above S3's 5 MiB minimum.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one remote upload in flight at once; with [`PART_SIZE`] this bounds an
/// upload's memory to about `(MAX_PARTS_IN_FLIGHT + 1) * PART_SIZE`.
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// Ranged GETs of one remote read in flight at most; with [`GET_RANGE_SIZE`] this bounds
/// a read's memory to about `(MAX_RANGES_IN_FLIGHT + 1) * GET_RANGE_SIZE` (the ranges
/// fetched ahead, and the one being delivered). A read starts with one and adds one each
/// time its reader has to wait for a range, so a reader slower than the store (an index
/// read in lockstep with its archive) keeps fewer ranges in memory.
const MAX_RANGES_IN_FLIGHT: usize = 4;
/// Size of the chunks a ranged read yields (slices of its ranges, not copies).
const GET_CHUNK: usize = 1024 * 1024;

/// A store in an S3 bucket (under an optional prefix).
pub(super) struct S3Store {
    objects: Objects,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.objects.fmt(f)
    }
}

/// Opens the `s3://` store `name` at `url`.
pub(super) fn open_s3_store(
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
    Ok(Arc::new(S3Store {
        objects: Objects {
            name: name.to_string(),
            location,
            inner,
            redactor,
        },
    }))
}

impl S3Store {
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
                    self.objects
                        .inner
                        .put(path, pending.take_all())
                        .await
                        .map_err(|e| self.objects.lift(key, e))?;
                    return Ok(total);
                }
                Some(Err(e)) => return Err(self.objects.source_failed(key, e)),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    pending.push(chunk);
                }
            }
        }

        let upload = self
            .objects
            .inner
            .put_multipart(path)
            .await
            .map_err(|e| self.objects.lift(key, e))?;
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
                    Some(Err(e)) => return Err(self.objects.source_failed(key, e)),
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
                .map_err(|e| self.objects.lift(key, e))?;
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
            .objects
            .inner
            .head(&path)
            .await
            .map_err(|e| self.objects.lift(key, e))?;
        if meta.size <= GET_RANGE_SIZE {
            let result = self
                .objects
                .inner
                .get(&path)
                .await
                .map_err(|e| self.objects.lift(key, e))?;
            return Ok(self.objects.errors().whole_stream(key, result));
        }
        let read = RangedRead {
            inner: self.objects.inner.clone(),
            path,
            key: key.to_string(),
            size: meta.size,
            e_tag: meta.e_tag,
            errors: self.objects.errors(),
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
            Some(Ok(Err(e))) => Err(self.objects.lift(key, e)),
            Some(Err(join)) => Err(Error::backend(
                self.objects.backend_name(),
                format!("`{key}`: uploading a part failed: {join}"),
            )),
        }
    }
}

#[async_trait::async_trait]
impl BackupStore for S3Store {
    fn name(&self) -> &str {
        &self.objects.name
    }

    fn location(&self) -> String {
        self.objects.location.clone()
    }

    async fn put_stream(
        &self,
        key: &str,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        let path = key_path(&self.objects.name, key)?;
        self.put_remote(key, &path, rx).await
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        let path = key_path(&self.objects.name, key)?;
        self.objects
            .inner
            .put(&path, PutPayload::from(data))
            .await
            .map(drop)
            .map_err(|e| self.objects.lift(key, e))
    }

    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = key_path(&self.objects.name, key)?;
        self.get_remote(key, path).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        self.objects.get_bytes(key).await
    }

    async fn get_prefix(&self, key: &str, len: u64) -> Result<Bytes> {
        self.objects.get_prefix(key, len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        self.objects.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.objects.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.objects.delete(key).await
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
