//! Signed backups (issue 13): the fleet's signing key, the signature written beside every
//! manifest, and the keys a backup may be signed by.
//!
//! A root holds one Ed25519 key pair in minisign's formats, made by `Girofle::init` (or
//! when an older root is first opened): `keys/signing.key` (the secret key, without a
//! password) and `keys/signing.pub` (minisign's `.pub`), 0600 in a 0700 directory. Every
//! manifest is signed into `<id>.manifest.minisig` with minisign's prehashed `ED`
//! algorithm (what `minisign -V` checks by default; the trusted comment names the
//! backup), written before the manifest, which stays a backup's commit point. A backup is
//! trusted when its signature verifies with the fleet's own key, a key of `[trust] keys`
//! in girofle.toml, or one of `keys/trusted/*.pub` (fleets whose state was imported into
//! this root). Reading backups is `backup`'s job: it asks [`TrustedKeys`] wherever it
//! reads a manifest to act on it.

use std::io::{Cursor, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::model::config::Config;

// Keys and signatures as data live in `girofle_archive` (the fuzz targets build on it
// alone); they keep their paths here.
pub use girofle_archive::signature::{
    PublicKey, SignatureCheck, Signed, TrustedKey, TrustedKeys, SIGNATURE_SUFFIX,
};

/// The directory of the keys under the root.
pub const KEYS_DIR: &str = "keys";
const SECRET_FILE: &str = "signing.key";
const PUBLIC_FILE: &str = "signing.pub";
const TRUSTED_DIR: &str = "trusted";
const SECRET_COMMENT: &str = "minisign secret key of a Girofle fleet (no password)";

/// Where the root's secret signing key is.
pub fn secret_key_path(root: &Path) -> PathBuf {
    root.join(KEYS_DIR).join(SECRET_FILE)
}

/// Where the root's public key is (minisign's `.pub`).
pub fn public_key_path(root: &Path) -> PathBuf {
    root.join(KEYS_DIR).join(PUBLIC_FILE)
}

/// Where the public keys of imported fleets are (`<KEYID>.pub`).
pub fn trusted_keys_dir(root: &Path) -> PathBuf {
    root.join(KEYS_DIR).join(TRUSTED_DIR)
}

/// A fleet's key pair.
pub struct SigningKey {
    secret: minisign::SecretKey,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public.id())
    }
}

impl SigningKey {
    /// Parses a secret key file's text (minisign's format, no password).
    fn parse(text: &str) -> std::result::Result<SigningKey, String> {
        let secret = minisign::SecretKeyBox::from_string(text)
            .and_then(minisign::SecretKey::from_unencrypted_box)
            .map_err(|e| format!("it is not a minisign secret key without a password ({e})"))?;
        let public = minisign::PublicKey::from_secret_key(&secret).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            secret,
            public: PublicKey::from_minisign(public),
        })
    }

    /// Reads the root's secret key.
    ///
    /// # Errors
    /// `NotFound` when the root has none (a root kept to verify only), `Corrupt` when the
    /// file is not a key.
    pub fn load(root: &Path) -> Result<SigningKey> {
        let path = secret_key_path(root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(
                    format!("the fleet's signing key `{}`", path.display()),
                    "backups cannot be signed without it: put it back from where it was kept (`girofle state export` holds it)",
                ))
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        SigningKey::parse(&text)
            .map_err(|m| Error::corrupt(format!("signing key `{}`", path.display()), m))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs the bytes of backup `id`'s manifest: the text of its `.minisig` object.
    ///
    /// # Errors
    /// `Backend` when the system's random source fails.
    pub fn sign(&self, id: &str, manifest: &[u8]) -> Result<Vec<u8>> {
        let trusted = format!("timestamp:{}\tbackup:{id}", chrono::Utc::now().timestamp());
        let untrusted = format!(
            "signature of Girofle backup {id} by key {}",
            self.public.id()
        );
        let signature = minisign::sign(
            Some(self.public.minisign()),
            &self.secret,
            Cursor::new(manifest),
            Some(&trusted),
            Some(&untrusted),
        )
        .map_err(|e| Error::backend("signing", e))?;
        Ok(signature.to_bytes())
    }
}

/// Signs the manifest bytes of backup `id` with the key of the root at `root`: the text
/// of its `<id>.manifest.minisig`. For tools and tests that build backups by hand.
///
/// # Errors
/// As [`SigningKey::load`].
pub fn sign_manifest(root: &Path, id: &str, manifest: &[u8]) -> Result<Vec<u8>> {
    SigningKey::load(root)?.sign(id, manifest)
}

/// Writes `data` under `path` unless a file is there (then keeps that one): a temporary
/// file, fsynced, hard-linked into place. Returns whether it wrote.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.new-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(data).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            // Another process made it first: its file is the one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("put into place", path, e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let wrote = written?;
    crate::fsutil::sync_dir(dir)?;
    Ok(wrote)
}

fn create_keys_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", dir, e)),
    }
}

/// Makes the root's key pair when it has none; idempotent, and safe while another process
/// does the same (one key wins, both use it). A root that has the public key but not the
/// secret one is left so: it was made to verify, not to sign.
///
/// # Errors
/// `Io` when the keys cannot be written, `Corrupt` when the secret key file is not one.
pub fn ensure_key(root: &Path) -> Result<()> {
    let dir = root.join(KEYS_DIR);
    create_keys_dir(&dir)?;
    let secret = secret_key_path(root);
    let public = public_key_path(root);
    if !secret.exists() {
        if public.exists() {
            return Ok(());
        }
        let pair = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| Error::backend("signing key", e))?;
        let text = pair
            .sk
            .to_box(Some(SECRET_COMMENT))
            .map_err(|e| Error::backend("signing key", e))?
            .into_string();
        write_new(&secret, text.as_bytes(), 0o600)?;
    }
    if !public.exists() {
        // From the key on disk: the one that won if another process made one too.
        let key = SigningKey::load(root)?;
        // 0600 like everything of the root's own: nothing there is for other users.
        write_new(&public, key.public.pub_file().as_bytes(), 0o600)?;
    }
    Ok(())
}

/// The root's own public key.
///
/// # Errors
/// `NotFound` when the root has no key (`girofle init` makes it), `Corrupt` when the
/// file is not a key.
pub fn own_public_key(root: &Path) -> Result<PublicKey> {
    let path = public_key_path(root);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(
                format!("the fleet's public key `{}`", path.display()),
                format!(
                    "run `girofle --root {} init` to make the fleet's key",
                    root.display()
                ),
            ))
        }
        Err(e) => return Err(Error::io("read", path, e)),
    };
    PublicKey::parse(&text)
        .map_err(|m| Error::corrupt(format!("public key `{}`", path.display()), m))
}

/// The keys the root at `root` trusts with configuration `config`.
///
/// # Errors
/// As [`own_public_key`]; `InvalidInput` naming a bad key in `[trust] keys` or in
/// `keys/trusted`.
pub fn load_trusted_keys(root: &Path, config: &Config) -> Result<TrustedKeys> {
    let mut keys = vec![TrustedKey {
        key: own_public_key(root)?,
        source: "own key".into(),
    }];
    for text in &config.trust.keys {
        let key = PublicKey::parse(text).map_err(|m| Error::invalid("trust.keys", m))?;
        keys.push(TrustedKey {
            key,
            source: "girofle.toml [trust] keys".into(),
        });
    }
    let dir = trusted_keys_dir(root);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).ctx("read", &path)?;
        let key =
            PublicKey::parse(&text).map_err(|m| Error::invalid(path.display().to_string(), m))?;
        keys.push(TrustedKey {
            key,
            source: path.display().to_string(),
        });
    }
    Ok(TrustedKeys::new(keys))
}

/// The refusal of backup `id` in store `store` when its signature is not trusted, with
/// what to do; `None` when it is.
pub fn refusal(
    check: &SignatureCheck,
    id: &str,
    store: &str,
    trusted: &TrustedKeys,
) -> Option<Error> {
    let what = format!("backup `{id}` in store `{store}`");
    let store_arg = if store == crate::store::LOCAL_STORE_NAME {
        String::new()
    } else {
        format!(" --store {store}")
    };
    let sign = format!("girofle backup sign {id}{store_arg}");
    let message = match check.signed {
        Signed::Trusted => return None,
        Signed::Unsigned => format!(
            "it has no signature (`{id}.manifest{SIGNATURE_SUFFIX}`), so nothing shows that a trusted fleet made it (trusted keys: {}); to restore it, run {sign} after checking where it came from",
            trusted.ids()
        ),
        Signed::Untrusted => format!(
            "{}; add that fleet's public key to `[trust] keys` in girofle.toml, or run {sign} after checking where it came from",
            check.reason
        ),
        Signed::Bad => format!("{}; use another backup", check.reason),
    };
    Some(Error::corrupt(what, message))
}

/// The fleet's public key and the keys it trusts (`girofle key show`).
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// minisign's key id (16 hex digits).
    pub key_id: String,
    /// The base64 line, what another fleet's `[trust] keys` takes.
    pub public_key: String,
    /// minisign's `.pub` text: `minisign -V -p FILE` reads it.
    pub pub_file: String,
    pub path: PathBuf,
    /// Every key a backup may be signed by, this fleet's first.
    pub trusted: Vec<TrustedKeyInfo>,
}

/// One trusted key.
#[derive(Clone, Debug, Serialize)]
pub struct TrustedKeyInfo {
    pub key_id: String,
    pub public_key: String,
    pub source: String,
}

/// The public key of the root at `root` and the keys it trusts; makes the key of an
/// older root that has none. Needs neither the engine nor the secret key.
///
/// # Errors
/// `NotFound` when the root is not initialised, `InvalidInput` for a bad configuration or
/// trusted key.
pub fn key_info(root: &Path) -> Result<KeyInfo> {
    let config = Config::load(root)?;
    ensure_key(root)?;
    let trusted = load_trusted_keys(root, &config)?;
    let own = &trusted.keys()[0].key;
    Ok(KeyInfo {
        key_id: own.id(),
        public_key: own.base64(),
        pub_file: own.pub_file(),
        path: public_key_path(root),
        trusted: trusted
            .keys()
            .iter()
            .map(|k| TrustedKeyInfo {
                key_id: k.key.id(),
                public_key: k.key.base64(),
                source: k.source.clone(),
            })
            .collect(),
    })
}

/// What importing a state's keys did to a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyImport {
    /// The root's own key id after the import.
    pub key_id: String,
    /// The imported fleet's key id when the root kept a key of its own and now trusts the
    /// imported one (`keys/trusted/<id>.pub`).
    pub trusted_imported_key: Option<String>,
}

/// Checks a state's keys before anything of the root is touched.
///
/// # Errors
/// `Corrupt` naming what is not a key.
pub(crate) fn check_state_keys(secret: Option<&[u8]>, trusted: &[&[u8]]) -> Result<()> {
    let bad = |m: String| Error::corrupt("signing key in the state file", m);
    if let Some(secret) = secret {
        let text = std::str::from_utf8(secret).map_err(|e| bad(e.to_string()))?;
        SigningKey::parse(text).map_err(bad)?;
    }
    for text in trusted {
        let text = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
        PublicKey::parse(text).map_err(bad)?;
    }
    Ok(())
}

/// Brings a state's keys into the root: its secret key becomes the root's when the root
/// has none; a root with a key of its own keeps it and trusts the imported public key.
/// `trusted` are the state's `keys/trusted/*.pub`, trusted here too. Idempotent.
///
/// # Errors
/// `Corrupt` when a key of the state is not one, `Io` when the keys cannot be written.
pub(crate) fn import_keys(
    root: &Path,
    secret: Option<&[u8]>,
    trusted: &[&[u8]],
) -> Result<KeyImport> {
    let bad = |m: String| Error::corrupt("signing key in the state file", m);
    create_keys_dir(&root.join(KEYS_DIR))?;
    let mut extra = Vec::new();
    for text in trusted {
        let text = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
        extra.push(PublicKey::parse(text).map_err(bad)?);
    }
    let mut trusted_imported_key = None;
    if let Some(secret) = secret {
        let text = std::str::from_utf8(secret).map_err(|e| bad(e.to_string()))?;
        let imported = SigningKey::parse(text).map_err(bad)?;
        let own_path = secret_key_path(root);
        if !own_path.exists() && !public_key_path(root).exists() {
            write_new(&own_path, text.as_bytes(), 0o600)?;
        }
        ensure_key(root)?;
        if own_public_key(root)? != imported.public {
            trusted_imported_key = Some(imported.public.id());
            extra.push(imported.public.clone());
        }
    }
    ensure_key(root)?;
    let own = own_public_key(root)?;
    if !extra.is_empty() {
        create_keys_dir(&trusted_keys_dir(root))?;
    }
    for key in extra.iter().filter(|k| **k != own) {
        let path = trusted_keys_dir(root).join(format!("{}.pub", key.id()));
        write_new(&path, key.pub_file().as_bytes(), 0o600)?;
    }
    Ok(KeyImport {
        key_id: own.id(),
        trusted_imported_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        ensure_key(dir.path()).unwrap();
        dir
    }

    #[test]
    fn keys_are_made_once_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = root();
        let first = own_public_key(dir.path()).unwrap();
        ensure_key(dir.path()).unwrap();
        assert_eq!(
            own_public_key(dir.path()).unwrap(),
            first,
            "the key changed"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secret_key_path(dir.path())), 0o600);
        assert_eq!(mode(&dir.path().join(KEYS_DIR)), 0o700);
        assert_eq!(SigningKey::load(dir.path()).unwrap().public, first);
        // The .pub file is minisign's: a comment naming the key id, then the key.
        let text = std::fs::read_to_string(public_key_path(dir.path())).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!("untrusted comment: minisign public key {}", first.id())
        );
        assert!(lines.next().unwrap().starts_with("RW"));
        assert_eq!(first.id().len(), 16);
    }

    #[test]
    fn signatures_verify_only_for_their_manifest_and_trusted_keys() {
        let dir = root();
        let other = root();
        let trust = load_trusted_keys(dir.path(), &Config::default()).unwrap();
        let id = "web/20261125T220000Z";
        let manifest = b"{\"id\": \"web/20261125T220000Z\"}\nblake3:00\n";
        let sig = sign_manifest(dir.path(), id, manifest).unwrap();
        let text = String::from_utf8(sig.clone()).unwrap();
        assert!(text.contains("trusted comment: timestamp:"), "{text}");
        assert!(text.contains(&format!("\tbackup:{id}\n")), "{text}");
        let ok = trust.check(id, manifest, Some(&sig));
        assert_eq!(ok.signed, Signed::Trusted, "{}", ok.reason);
        assert_eq!(
            ok.key_id.as_deref(),
            Some(trust.keys()[0].key.id().as_str())
        );
        assert!(refusal(&ok, id, "local", &trust).is_none());

        // A changed manifest, another backup's id, another fleet's key, nothing, garbage.
        let mut forged = manifest.to_vec();
        forged[3] ^= 1;
        assert_eq!(trust.check(id, &forged, Some(&sig)).signed, Signed::Bad);
        let elsewhere = trust.check("web/20261125T220001Z", manifest, Some(&sig));
        assert_eq!(elsewhere.signed, Signed::Bad);
        assert!(
            elsewhere.reason.contains("another backup"),
            "{}",
            elsewhere.reason
        );
        let foreign = sign_manifest(other.path(), id, manifest).unwrap();
        let untrusted = trust.check(id, manifest, Some(&foreign));
        assert_eq!(untrusted.signed, Signed::Untrusted);
        let e = refusal(&untrusted, id, "offsite", &trust).unwrap();
        assert_eq!(e.kind(), "corrupt");
        let other_id = own_public_key(other.path()).unwrap().id();
        assert!(
            e.to_string().contains(&other_id) && e.to_string().contains("store `offsite`"),
            "{e}"
        );
        let unsigned = trust.check(id, manifest, None);
        assert_eq!(unsigned.signed, Signed::Unsigned);
        let e = refusal(&unsigned, id, "offsite", &trust)
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!(
                "girofle backup sign {id} --store offsite after checking where it came from"
            )),
            "{e}"
        );
        for garbage in [&b""[..], b"untrusted comment: x\n", b"\xff\xfe", &sig[..40]] {
            assert_eq!(trust.check(id, manifest, Some(garbage)).signed, Signed::Bad);
        }

        // Trusted once the other fleet's key is in [trust] keys.
        let mut config = Config::default();
        config.trust.keys = vec![own_public_key(other.path()).unwrap().base64()];
        let trust = load_trusted_keys(dir.path(), &config).unwrap();
        assert_eq!(
            trust.check(id, manifest, Some(&foreign)).signed,
            Signed::Trusted
        );
    }

    #[test]
    fn public_keys_parse_from_the_line_or_the_pub_file() {
        let dir = root();
        let key = own_public_key(dir.path()).unwrap();
        assert_eq!(PublicKey::parse(&key.base64()).unwrap(), key);
        assert_eq!(PublicKey::parse(&key.pub_file()).unwrap(), key);
        for bad in [
            "",
            "RWQ",
            "not a key at all",
            &format!("{}\n{}", key.base64(), key.base64()),
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn importing_keeps_the_roots_own_key_and_trusts_the_imported_one() {
        let old = root();
        let secret = std::fs::read(secret_key_path(old.path())).unwrap();
        let old_key = own_public_key(old.path()).unwrap();
        // Into a root without a key: it becomes the root's key.
        let fresh = tempfile::tempdir().unwrap();
        let r = import_keys(fresh.path(), Some(&secret), &[]).unwrap();
        assert_eq!(r.key_id, old_key.id());
        assert_eq!(r.trusted_imported_key, None);
        assert_eq!(own_public_key(fresh.path()).unwrap(), old_key);
        // Into a root with its own key: kept, the imported one trusted; twice the same.
        let busy = root();
        let own = own_public_key(busy.path()).unwrap();
        for _ in 0..2 {
            let r = import_keys(busy.path(), Some(&secret), &[]).unwrap();
            assert_eq!(r.key_id, own.id());
            assert_eq!(r.trusted_imported_key, Some(old_key.id()));
        }
        let trust = load_trusted_keys(busy.path(), &Config::default()).unwrap();
        let ids: Vec<String> = trust.keys().iter().map(|k| k.key.id()).collect();
        assert_eq!(ids, vec![own.id(), old_key.id()]);
        assert!(import_keys(busy.path(), Some(b"garbage"), &[]).is_err());
    }
}
