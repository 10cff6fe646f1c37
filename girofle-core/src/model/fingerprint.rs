//! Keyed fingerprints of setting values: what the journal and the backup manifests keep
//! instead of a value, so an operator can tell whether two values are the same without
//! seeing either.
//!
//! A fingerprint is `blake3-keyed:` and 16 hex digits of BLAKE3 keyed with the fleet's
//! own 32-byte random key, `<root>/keys/fingerprint.key` (0600, in a 0700 directory),
//! created by `init` or on first use in an older root. Keyed, because a plain hash of a
//! short value (a port, a theme number, a guessable password) is reversed by trying
//! values; without the key nobody can. It does not decide what is fingerprinted: the
//! journal's and the backups' writers do.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Where the key lives under a root.
pub const KEY_FILE: &str = "keys/fingerprint.key";

/// What every fingerprint starts with.
pub const PREFIX: &str = "blake3-keyed:";

/// The fleet's fingerprint key.
#[derive(Clone)]
pub struct FingerprintKey([u8; 32]);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey([REDACTED])")
    }
}

fn key_path(root: &Path) -> PathBuf {
    root.join(KEY_FILE)
}

fn bad_key(path: &Path) -> Error {
    Error::corrupt(
        format!("fingerprint key `{}`", path.display()),
        "it is not 64 hex digits; move it aside and a new key is made (fingerprints already written then no longer compare with new ones)",
    )
}

impl FingerprintKey {
    /// The key of `root`, created (with `keys/`) when absent. Two processes creating it
    /// at once agree on one key: it is written under a temporary name and linked into
    /// place, and the loser reads the winner's.
    ///
    /// # Errors
    /// `Io` when the key cannot be read or written, `Corrupt` when it is not a key.
    pub fn of_root(root: &Path) -> Result<Self> {
        let path = key_path(root);
        match Self::read(&path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let dir = path.parent().expect("KEY_FILE has a directory");
        std::fs::create_dir_all(dir).ctx("create directory", dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .ctx("make private", dir)?;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .ctx("read random bytes from", Path::new("/dev/urandom"))?;
        let tmp = dir.join(format!(".fingerprint.key.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .ctx("create", &tmp)?;
            f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
                .and_then(|_| f.sync_all())
                .ctx("write", &tmp)?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                crate::fsutil::sync_dir(dir)?;
                Ok(FingerprintKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(&path),
            Err(e) => Err(Error::io("write", &path, e)),
        }
    }

    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).ctx("read", path)?;
        let bytes = hex::decode(text.trim()).map_err(|_| bad_key(path))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad_key(path))?;
        Ok(FingerprintKey(bytes))
    }

    /// The fingerprint of `value`: `blake3-keyed:` and 16 hex digits.
    pub fn fingerprint(&self, value: &str) -> String {
        let hash = blake3::keyed_hash(&self.0, value.as_bytes());
        format!("{PREFIX}{}", &hash.to_hex()[..16])
    }

    /// `KEY=VALUE` texts (as `--set` takes them) with each value replaced by its
    /// fingerprint: the value as Girofle stores it (a bare word quoted) when it parses,
    /// as given otherwise.
    pub fn settings_texts(&self, texts: &[String]) -> Vec<String> {
        texts
            .iter()
            .map(|t| match crate::record::parse_setting(t) {
                Ok((k, v)) => format!("{k}={}", self.fingerprint(&v)),
                Err(_) => match t.split_once('=') {
                    Some((k, v)) => format!("{}={}", k.trim(), self.fingerprint(v.trim())),
                    None => self.fingerprint(t),
                },
            })
            .collect()
    }
}

impl crate::record::InstanceRecord {
    /// A copy for plain metadata (the backup manifests): every setting's value is
    /// replaced by its keyed fingerprint, so two manifests tell whether a value changed.
    pub fn fingerprinted(&self, key: &FingerprintKey) -> crate::record::InstanceRecord {
        let mut r = self.clone();
        for v in r.settings.values_mut() {
            *v = key.fingerprint(v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_root_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = FingerprintKey::of_root(dir.path()).unwrap();
        let b = FingerprintKey::of_root(dir.path()).unwrap();
        let fp = a.fingerprint("'PLANTED'");
        assert_eq!(fp, b.fingerprint("'PLANTED'"));
        assert!(
            fp.starts_with(PREFIX) && fp.len() == PREFIX.len() + 16,
            "{fp}"
        );
        assert_ne!(fp, a.fingerprint("'PLANTEd'"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.path().join("keys")), 0o700);
        assert!(!format!("{a:?}").contains(&hex::encode(a.0)));
        // Another root, another key: a fingerprint says nothing outside its fleet.
        let other = tempfile::tempdir().unwrap();
        let c = FingerprintKey::of_root(other.path()).unwrap();
        assert_ne!(fp, c.fingerprint("'PLANTED'"));
        // The same value spelled as a bare word or quoted has one fingerprint.
        let texts = a.settings_texts(&["x['y']=UTC".into(), "x['y']='UTC'".into()]);
        assert_eq!(texts[0], texts[1]);
        assert!(texts[0].starts_with("x['y']=blake3-keyed:"));
        std::fs::write(dir.path().join(KEY_FILE), "nope").unwrap();
        assert!(matches!(
            FingerprintKey::of_root(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
