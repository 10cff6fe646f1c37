//! Signatures of manifests as data: minisign public keys, the set of keys a fleet trusts,
//! and the check of a `.minisig` object against a manifest's bytes and a backup id. It does
//! not know where keys are kept (core's `signing` loads them from a root and its
//! configuration, and signs with the fleet's secret key), nor what to tell a user about
//! an untrusted backup.

use std::io::Cursor;

use serde::Serialize;

/// What a manifest's signature object adds to the manifest's key.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// minisign's key id: the key number as a little-endian u64, in 16 hex digits.
fn key_id(keynum: &[u8]) -> String {
    let mut n = [0u8; 8];
    for (d, s) in n.iter_mut().zip(keynum) {
        *d = *s;
    }
    format!("{:016X}", u64::from_le_bytes(n))
}

/// A minisign public key.
#[derive(Clone)]
pub struct PublicKey(minisign::PublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bytes() == other.0.to_bytes()
    }
}

impl PublicKey {
    /// Parses a minisign public key: its base64 line (`RWQ...`, 56 characters), or a
    /// whole `.pub` file (an untrusted comment line, then that line).
    ///
    /// # Errors
    /// What is wrong, for the caller to name where the text came from.
    pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .collect();
        let [line] = lines[..] else {
            return Err(
                "it is not one minisign public key (a line like `RWQ...` of 56 characters)".into(),
            );
        };
        let key = minisign::PublicKey::from_base64(line)
            .map_err(|e| format!("`{line}` is not a minisign public key ({e})"))?;
        if key.to_bytes().get(..2) != Some(b"Ed".as_slice()) {
            return Err(format!("`{line}` is not an Ed25519 minisign public key"));
        }
        Ok(PublicKey(key))
    }

    /// Wraps a key of the minisign crate (Girofle's own, made from its secret key).
    pub fn from_minisign(key: minisign::PublicKey) -> PublicKey {
        PublicKey(key)
    }

    /// The key of the minisign crate, to sign or verify with.
    pub fn minisign(&self) -> &minisign::PublicKey {
        &self.0
    }

    /// The key id minisign prints (16 hex digits).
    pub fn id(&self) -> String {
        key_id(self.0.keynum())
    }

    /// The base64 line (`RWQ...`): what `[trust] keys` takes.
    pub fn base64(&self) -> String {
        self.0.to_base64()
    }

    /// minisign's `.pub` file: `minisign -V -p FILE` reads it.
    pub fn pub_file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id(),
            self.base64()
        )
    }
}

/// A key a backup may be signed by, and why it is trusted.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub key: PublicKey,
    /// `own key`, `girofle.toml [trust] keys`, or the file it was read from.
    pub source: String,
}

/// The keys this fleet trusts: its own, `[trust] keys`, and `keys/trusted/*.pub`.
#[derive(Clone, Debug)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

/// How a backup is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signed {
    /// By a trusted key, and the signature matches the manifest.
    Trusted,
    /// No signature object (a backup made before backups were signed).
    Unsigned,
    /// A valid-looking signature by a key this fleet does not trust.
    Untrusted,
    /// A signature that does not match the manifest, or is not a signature.
    Bad,
}

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signed::Trusted => "trusted",
            Signed::Unsigned => "unsigned",
            Signed::Untrusted => "untrusted",
            Signed::Bad => "bad",
        })
    }
}

/// What checking a backup's signature found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    pub signed: Signed,
    /// The key id the signature names, when there is one.
    pub key_id: Option<String>,
    /// Why it is not trusted (empty when it is).
    pub reason: String,
}

impl TrustedKeys {
    /// Trusts exactly these keys, each with why it is trusted.
    pub fn new(keys: Vec<TrustedKey>) -> TrustedKeys {
        TrustedKeys { keys }
    }

    /// Trusts exactly `keys` (for tools and fuzzing; a fleet's are loaded by core's
    /// `signing::load_trusted_keys`).
    pub fn from_keys(keys: Vec<PublicKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys
                .into_iter()
                .map(|key| TrustedKey {
                    key,
                    source: "given".into(),
                })
                .collect(),
        }
    }

    /// The keys, the fleet's own first.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The ids of the trusted keys, for messages.
    pub fn ids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.key.id())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks `signature` (the `.minisig` object, absent when there is none) of backup
    /// `id` over its manifest's bytes.
    pub fn check(&self, id: &str, manifest: &[u8], signature: Option<&[u8]>) -> SignatureCheck {
        let outcome = |signed, key_id: Option<String>, reason: String| SignatureCheck {
            signed,
            key_id,
            reason,
        };
        let Some(signature) = signature else {
            return outcome(Signed::Unsigned, None, "it has no signature".into());
        };
        let parsed = std::str::from_utf8(signature)
            .map_err(|e| e.to_string())
            .and_then(|s| minisign::SignatureBox::from_string(s).map_err(|e| e.to_string()));
        let signature = match parsed {
            Ok(s) => s,
            Err(e) => {
                return outcome(
                    Signed::Bad,
                    None,
                    format!("its signature object is not a minisign signature ({e})"),
                )
            }
        };
        let kid = key_id(signature.keynum());
        let Some(trusted) = self
            .keys
            .iter()
            .find(|k| k.key.0.keynum() == signature.keynum())
        else {
            return outcome(
                Signed::Untrusted,
                Some(kid.clone()),
                format!(
                    "it is signed by key {kid}, which this fleet does not trust (trusted keys: {})",
                    self.ids()
                ),
            );
        };
        if let Err(e) = minisign::verify(
            &trusted.key.0,
            &signature,
            Cursor::new(manifest),
            true,
            false,
            false,
        ) {
            return outcome(
                Signed::Bad,
                Some(kid.clone()),
                format!("its signature by key {kid} does not match its manifest ({e}): it was altered after it was signed"),
            );
        }
        let names_it = signature
            .trusted_comment()
            .map(|c| c.split('\t').any(|f| f == format!("backup:{id}")))
            .unwrap_or(false);
        if !names_it {
            return outcome(
                Signed::Bad,
                Some(kid.clone()),
                format!("its signature by key {kid} was made for another backup"),
            );
        }
        outcome(Signed::Trusted, Some(kid), String::new())
    }
}
