//! Encryption at rest with age, per store (`age_recipients`, `age_identity_file` in
//! `[stores.NAME]`).
//!
//! [`EncryptedStore`] wraps any [`BackupStore`]: what it writes is encrypted to the
//! store's x25519 recipients as a standard binary age file (the `age` command line tool
//! decrypts it), what it reads is decrypted when it is an age file and passed through
//! when it is not (backups written before encryption was turned on stay readable). The
//! work streams through bounded channels on the blocking pool, so memory stays flat
//! whatever the size.
//!
//! Manifests and their signatures (`.manifest.minisig`) stay in clear: they hold no
//! secret (the instance's settings are keyed fingerprints in them, see
//! [`crate::model::instance::InstanceRecord::fingerprinted`]), and listing,
//! pruning, copying and watching a store must work on a host that holds only the public
//! keys. Their checksum covers the hashes of the plaintext archive and index, so a
//! restore still proves that what it decrypted is what was backed up.
//!
//! Sizes are reported as the plaintext's: an age file's size follows from its header's
//! length and the plaintext's (64 KiB chunks, each with a 16-byte tag), so `head` and
//! `list` read the header of each encrypted object (its first bytes) and callers keep
//! comparing sizes with the manifest's as for a clear store. It is not responsible for
//! key management: the keys are files the operator keeps (`age-keygen`).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::x25519;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{BackupStore, ObjectInfo, StoreConfig};
use crate::error::{Error, Result};
use girofle_archive::{ChannelReader, ChannelWriter};

/// The first bytes of every binary age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// Payload nonce after the header.
const NONCE_LEN: u64 = 16;
/// Plaintext bytes per payload chunk, and the tag each chunk carries.
const CHUNK: u64 = 64 * 1024;
const TAG: u64 = 16;
/// Longest header we look for (x25519 stanzas are ~100 bytes; this leaves room for
/// hundreds of recipients).
const MAX_HEADER: usize = 64 * 1024;
/// First read of an object's header when sizing it.
const HEADER_GUESS: u64 = 4096;
/// Size of the plaintext chunks handed out by reads.
const READ_CHUNK: usize = 1024 * 1024;
/// Keys that stay in clear (see the module doc).
const CLEAR_SUFFIXES: &[&str] = &[".manifest", ".manifest.minisig", ".drill.json"];

/// The age settings of one store, checked.
#[derive(Clone)]
pub(crate) struct AgeSettings {
    store: String,
    recipients: Vec<x25519::Recipient>,
    identity_file: Option<PathBuf>,
}

impl fmt::Debug for AgeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgeSettings")
            .field("store", &self.store)
            .field("recipients", &self.recipients.len())
            .field("identity_file", &self.identity_file)
            .finish()
    }
}

impl AgeSettings {
    /// The age settings of store `name`, or `None` when it has none (a clear store).
    /// Recipients come from `age_recipients`, then `age_recipients_file`; with neither,
    /// from the public keys of `age_identity_file`, so one key file is enough.
    ///
    /// # Errors
    /// `InvalidInput` naming the field for a malformed recipient or an empty list;
    /// `NotFound`/`InvalidInput` for a recipients or identity file that cannot be read.
    pub(crate) fn from_config(name: &str, config: &StoreConfig) -> Result<Option<Self>> {
        if config.age_recipients.is_none()
            && config.age_recipients_file.is_none()
            && config.age_identity_file.is_none()
        {
            return Ok(None);
        }
        let mut recipients = Vec::new();
        for (i, text) in config.age_recipients.iter().flatten().enumerate() {
            recipients.push(parse_recipient(text).map_err(|why| {
                Error::invalid(
                    "age_recipients",
                    // Not quoted: a secret pasted here must not be echoed.
                    format!("store `{name}`: entry {} {why}", i + 1),
                )
            })?);
        }
        if let Some(path) = &config.age_recipients_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid(
                    "age_recipients_file",
                    format!(
                        "store `{name}`: cannot read `{}` ({e}); it holds one age1... public key per line",
                        path.display()
                    ),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                recipients.push(parse_recipient(line).map_err(|why| {
                    Error::invalid(
                        "age_recipients_file",
                        format!(
                            "store `{name}`: line {} of `{}` {why}",
                            n + 1,
                            path.display()
                        ),
                    )
                })?);
            }
        }
        if config.age_recipients.is_some() || config.age_recipients_file.is_some() {
            if recipients.is_empty() {
                return Err(Error::invalid(
                    "age_recipients",
                    format!(
                        "store `{name}`: no recipient given; list at least one age1... public key \
                         (`age-keygen -y KEYFILE` prints it)"
                    ),
                ));
            }
        } else if let Some(path) = &config.age_identity_file {
            recipients = load_identities(name, path)?
                .iter()
                .map(x25519::Identity::to_public)
                .collect();
        }
        Ok(Some(AgeSettings {
            store: name.to_string(),
            recipients,
            identity_file: config.age_identity_file.clone(),
        }))
    }
}

fn parse_recipient(text: &str) -> std::result::Result<x25519::Recipient, String> {
    let text = text.trim();
    if text.starts_with("AGE-SECRET-KEY-") {
        // Do not echo it: it is a private key in the wrong place.
        return Err(
            "is a private key, not a recipient: put the public key (age1..., `age-keygen -y`) \
             here and the private key in age_identity_file"
                .into(),
        );
    }
    x25519::Recipient::from_str(text)
        .map_err(|why| format!("is not an age x25519 recipient ({why}); expected age1..."))
}

/// Reads the x25519 identities of an identity file (`age-keygen` output: comments and
/// `AGE-SECRET-KEY-1...` lines). Messages never quote the file's content.
fn load_identities(store: &str, path: &Path) -> Result<Vec<x25519::Identity>> {
    let where_to = format!("`age_identity_file` under [stores.{store}] in girofle.toml");
    let file = std::fs::File::open(path).map_err(|e| {
        let what = format!("age identity file `{}` of store `{store}`", path.display());
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found(
                what,
                format!("create it with `age-keygen -o FILE` or fix {where_to}"),
            )
        } else {
            Error::invalid(
                "age_identity_file",
                format!("{what} cannot be read ({e}); fix its permissions or {where_to}"),
            )
        }
    })?;
    let mut identities = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| {
            Error::invalid(
                "age_identity_file",
                format!("store `{store}`: `{}` cannot be read ({e})", path.display()),
            )
        })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = x25519::Identity::from_str(line).map_err(|_| {
            Error::invalid(
                "age_identity_file",
                format!(
                    "store `{store}`: line {} of `{}` is not an age x25519 identity \
                     (AGE-SECRET-KEY-1..., as `age-keygen` writes)",
                    n + 1,
                    path.display()
                ),
            )
        })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(Error::invalid(
            "age_identity_file",
            format!(
                "store `{store}`: `{}` holds no AGE-SECRET-KEY-1... line",
                path.display()
            ),
        ));
    }
    Ok(identities)
}

/// A store whose objects (but manifests) are age-encrypted; see the module doc.
pub(crate) struct EncryptedStore {
    inner: Arc<dyn BackupStore>,
    age: AgeSettings,
}

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("age", &self.age)
            .finish()
    }
}

impl EncryptedStore {
    pub(crate) fn new(inner: Arc<dyn BackupStore>, age: AgeSettings) -> Self {
        EncryptedStore { inner, age }
    }

    fn encrypts(key: &str) -> bool {
        !CLEAR_SUFFIXES.iter().any(|s| key.ends_with(s))
    }

    fn what(&self, key: &str) -> String {
        format!("object `{key}` in store `{}`", self.age.store)
    }

    /// The identities to decrypt `key` with, or an error saying what is missing and
    /// where to set it.
    fn identities(&self, key: &str) -> Result<Vec<x25519::Identity>> {
        let store = &self.age.store;
        match &self.age.identity_file {
            Some(path) => load_identities(store, path),
            None => Err(Error::invalid(
                "age_identity_file",
                format!(
                    "{} is encrypted with age and store `{store}` has no identity to decrypt it: \
                     set age_identity_file = \"/path/to/key.txt\" (the private key, from \
                     `age-keygen`) under [stores.{store}] in girofle.toml; nothing was changed",
                    self.what(key)
                ),
            )),
        }
    }

    /// Starts reading `key`: the first bytes (at least the magic's length, when the
    /// object has as many) and the rest of the stream.
    async fn peek(&self, key: &str) -> Result<(BytesMut, BoxStream<'static, Result<Bytes>>)> {
        let mut stream = self.inner.get_stream(key).await?;
        let mut head = BytesMut::new();
        loop {
            if head.len() >= AGE_MAGIC.len() {
                break;
            }
            match stream.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok((head, stream))
    }

    /// The plaintext size of an object of `stored` bytes: itself when it is clear.
    async fn plain_size(&self, key: &str, stored: u64) -> Result<u64> {
        if !Self::encrypts(key) || stored < AGE_MAGIC.len() as u64 {
            return Ok(stored);
        }
        // A few recipients make a header of a few hundred bytes: one small read, a
        // larger one only for unusual headers.
        let mut head = self.inner.get_prefix(key, HEADER_GUESS.min(stored)).await?;
        if !head.starts_with(AGE_MAGIC) {
            return Ok(stored);
        }
        if header_len(&head).is_none() && stored > HEADER_GUESS {
            head = self
                .inner
                .get_prefix(key, (MAX_HEADER as u64).min(stored))
                .await?;
        }
        let Some(header) = header_len(&head) else {
            return Err(Error::corrupt(
                self.what(key),
                "it starts like an age file but has no complete header",
            ));
        };
        plaintext_size(stored, header).ok_or_else(|| {
            Error::corrupt(
                self.what(key),
                "it is an age file too short for its header: it is truncated",
            )
        })
    }
}

/// Length of an age header (up to and including the newline of its `--- MAC` line).
fn header_len(head: &[u8]) -> Option<u64> {
    let mut at = AGE_MAGIC.len();
    // Lines after the version line: stanzas (`-> ...` and their body lines), then `--- `.
    while at < head.len() {
        let end = head[at..].iter().position(|b| *b == b'\n')? + at;
        if head[at..end].starts_with(b"--- ") {
            return Some(end as u64 + 1);
        }
        at = end + 1;
    }
    None
}

/// Plaintext size of a binary age file of `stored` bytes whose header has `header` bytes.
fn plaintext_size(stored: u64, header: u64) -> Option<u64> {
    let payload = stored.checked_sub(header + NONCE_LEN)?;
    if payload < TAG {
        return None;
    }
    let chunks = payload.div_ceil(CHUNK + TAG);
    payload.checked_sub(chunks * TAG)
}

/// What a failed decryption means for the user.
fn decrypt_error(store: &str, what: &str, identity: &Path, e: &age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::invalid(
            "age_identity_file",
            format!(
                "{what} was encrypted for other age recipients: no identity in `{}` (set as \
                 age_identity_file under [stores.{store}]) can decrypt it; use the private key \
                 matching the store's age_recipients",
                identity.display()
            ),
        ),
        other => Error::corrupt(
            what,
            format!("age cannot decrypt it ({other}): it is damaged or not an age file"),
        ),
    }
}

#[async_trait::async_trait]
impl BackupStore for EncryptedStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put_stream(
        &self,
        key: &str,
        mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<u64> {
        if !Self::encrypts(key) {
            return self.inner.put_stream(key, rx).await;
        }
        // Before anything is encrypted: a bad key must not leave the producer waiting.
        super::common::key_path(self.inner.name(), key)?;
        let (tx, encrypted) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let recipients = self.age.recipients.clone();
        let encrypt = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let out = ChannelWriter::new(tx.clone());
            let encryptor = age::Encryptor::with_recipients(
                recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(std::io::Error::other)?;
            let written: std::io::Result<(ChannelWriter, u64)> = (|| {
                let mut writer = encryptor.wrap_output(out)?;
                let mut total = 0u64;
                while let Some(item) = rx.blocking_recv() {
                    let chunk = item?;
                    total += chunk.len() as u64;
                    writer.write_all(&chunk)?;
                }
                Ok((writer.finish()?, total))
            })();
            match written {
                Ok((out, total)) => {
                    out.finish()?;
                    Ok(total)
                }
                Err(e) => {
                    // The upload must not store what was encrypted so far.
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    Err(e)
                }
            }
        });
        let (stored, encrypted) = tokio::join!(self.inner.put_stream(key, encrypted), encrypt);
        let plain = encrypted.map_err(|e| Error::backend("age encryptor", e.to_string()))?;
        // A failing producer's error (the reason the stream stopped) is reported by the
        // inner store as the upload's cause.
        stored?;
        plain.map_err(|e| {
            Error::io(
                format!("store `{}`: encrypting", self.age.store),
                PathBuf::from(key),
                e,
            )
        })
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        if !Self::encrypts(key) {
            return self.inner.put_bytes(key, data).await;
        }
        let (tx, rx) = mpsc::channel(1);
        // Cannot fail: the receiver is alive and the channel has room.
        let _ = tx.try_send(Ok(data));
        drop(tx);
        self.put_stream(key, rx).await.map(drop)
    }

    async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let (head, rest) = self.peek(key).await?;
        if !head.starts_with(AGE_MAGIC) {
            let first = futures::stream::iter((!head.is_empty()).then(|| Ok(head.freeze())));
            return Ok(first.chain(rest).boxed());
        }
        let identities = self.identities(key)?;
        let identity_file = self.age.identity_file.clone().unwrap_or_default();
        let what = self.what(key);
        let store = self.age.store.clone();

        // Ciphertext in, on one channel; plaintext out, on another; the header's verdict
        // (right key or not) comes first, so a wrong key fails this call, not the stream.
        let (ctx, crx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let (ptx, prx) = mpsc::channel::<Result<Bytes>>(4);
        let (verdict_tx, verdict_rx) = oneshot::channel::<Result<()>>();
        tokio::spawn(async move {
            if ctx.send(Ok(head.freeze())).await.is_err() {
                return;
            }
            let mut rest = rest;
            while let Some(chunk) = rest.next().await {
                let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
                let failed = item.is_err();
                if ctx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        tokio::task::spawn_blocking(move || {
            let reader = match age::Decryptor::new(ChannelReader::new(crx))
                .and_then(|d| d.decrypt(identities.iter().map(|i| i as &dyn age::Identity)))
            {
                Ok(reader) => {
                    let _ = verdict_tx.send(Ok(()));
                    reader
                }
                Err(e) => {
                    let _ = verdict_tx.send(Err(decrypt_error(&store, &what, &identity_file, &e)));
                    return;
                }
            };
            let mut reader = reader;
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let mut filled = 0;
                let outcome = loop {
                    match reader.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                match outcome {
                    Ok(done) => {
                        if filled > 0 {
                            buf.truncate(filled);
                            if ptx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                                return;
                            }
                        }
                        if done {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = ptx.blocking_send(Err(Error::corrupt(
                            what.clone(),
                            format!("decrypting it failed ({e}): it is damaged or truncated"),
                        )));
                        return;
                    }
                }
            }
        });
        match verdict_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::backend(
                    "age decryptor",
                    format!("stopped before reading the header of {}", self.what(key)),
                ))
            }
        }
        let mut prx = prx;
        Ok(futures::stream::poll_fn(move |cx| prx.poll_recv(cx)).boxed())
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        if !Self::encrypts(key) {
            return self.inner.get_bytes(key).await;
        }
        let mut stream = self.get_stream(key).await?;
        let mut out = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let mut info = self.inner.head(key).await?;
        info.size = self.plain_size(key, info.size).await?;
        Ok(info)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut objects = self.inner.list(prefix).await?;
        for object in &mut objects {
            // An object that vanished or is damaged keeps its stored size: the size checks
            // against the manifest then leave its backup out.
            if let Ok(size) = self.plain_size(&object.key, object.size).await {
                object.size = size;
            }
        }
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(plain: &[u8], recipients: &[x25519::Recipient]) -> Vec<u8> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .unwrap();
        let mut out = Vec::new();
        let mut w = encryptor.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn plaintext_sizes_follow_from_the_header() {
        let recipients: Vec<x25519::Recipient> = (0..3)
            .map(|_| x25519::Identity::generate().to_public())
            .collect();
        for n in [0usize, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
            for k in 1..=3 {
                let plain = vec![7u8; n];
                let file = encrypt(&plain, &recipients[..k]);
                let header = header_len(&file).expect("a header");
                assert_eq!(
                    plaintext_size(file.len() as u64, header),
                    Some(n as u64),
                    "{n} bytes, {k} recipients"
                );
            }
        }
        assert_eq!(plaintext_size(10, 100), None);
        assert_eq!(header_len(b"age-encryption.org/v1\n-> X25519 abc\n"), None);
    }

    #[test]
    fn recipients_and_identities_are_checked_without_echoing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let identity = x25519::Identity::generate();
        let secret = {
            use age::secrecy::ExposeSecret;
            identity.to_string().expose_secret().to_string()
        };
        let key_file = dir.path().join("key.txt");
        std::fs::write(&key_file, format!("# created: now\n{secret}\n")).unwrap();

        // The identity alone gives the recipients.
        let config = StoreConfig {
            url: "file:///tmp".into(),
            age_identity_file: Some(key_file.clone()),
            ..Default::default()
        };
        let age = AgeSettings::from_config("nas", &config).unwrap().unwrap();
        assert_eq!(age.recipients, vec![identity.to_public()]);

        // A private key pasted as a recipient is refused without being quoted back.
        let config = StoreConfig {
            url: "file:///tmp".into(),
            age_recipients: Some(vec![secret.clone()]),
            ..Default::default()
        };
        let err = AgeSettings::from_config("nas", &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("age_recipients"), "{err}");
        assert!(!err.contains(&secret[20..]), "{err}");

        // A damaged identity file names the line, not its content.
        std::fs::write(&key_file, format!("{}x\n", &secret[..30])).unwrap();
        let config = StoreConfig {
            url: "file:///tmp".into(),
            age_identity_file: Some(key_file),
            ..Default::default()
        };
        let err = AgeSettings::from_config("nas", &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains(&secret[16..30]), "{err}");

        let config = StoreConfig {
            url: "file:///tmp".into(),
            age_recipients: Some(vec![]),
            ..Default::default()
        };
        assert!(AgeSettings::from_config("nas", &config).is_err());
    }
}
