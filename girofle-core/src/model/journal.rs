//! The operations journal (R-OPS-1): one JSON line per operation in
//! `<root>/journal.jsonl` with its arguments, who ran it where, the versions involved and
//! its outcome.
//!
//! Responsible for writing records that never hold a secret: values under secret-looking
//! keys, credentials in URLs and known secret values are redacted before anything is
//! written. It does not decide what an operation is; callers record them, and record
//! `--set` settings as their keys and fingerprints ([`crate::model::fingerprint`]), never values.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use fs2::FileExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoContext, Result};
pub use crate::text::{is_secret_key, scrub_known, scrub_text, REDACTED};

/// How a record's start time begins its key in the fleet's journal on etcd: fixed width,
/// so keys sort by time.
pub const KEY_TIME: &str = "%Y%m%dT%H%M%S%.9fZ";

/// One journal record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub operation: String,
    pub arguments: Value,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub girofle_version: String,
    /// Image and GitLab version the operation worked with, when there is one.
    #[serde(default)]
    pub versions: Value,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `ok` or `error`.
    pub outcome: String,
    #[serde(default)]
    pub error_kind: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Record {
    /// Whether the record is about instance `name`: it is the operation's `name`,
    /// `instance` or `as`, or the instance of its backup `id`.
    pub fn concerns(&self, name: &str) -> bool {
        let arg = |k: &str| self.arguments.get(k).and_then(Value::as_str);
        ["name", "instance", "as"]
            .iter()
            .any(|k| arg(k) == Some(name))
            || arg("id").is_some_and(|id| id.split('/').next() == Some(name))
    }
}

/// Which journal records to read: all when every field is empty.
#[derive(Clone, Debug, Default)]
pub struct JournalQuery {
    /// Those started then or later.
    pub since: Option<DateTime<Utc>>,
    /// Those run on this machine (its host name).
    pub host: Option<String>,
    /// Those about this instance ([`Record::concerns`]).
    pub instance: Option<String>,
}

impl JournalQuery {
    /// Whether `record` is one the query asks for.
    pub fn matches(&self, record: &Record) -> bool {
        self.since.is_none_or(|t| record.started_at >= t)
            && self.host.as_ref().is_none_or(|h| &record.host == h)
            && self.instance.as_ref().is_none_or(|n| record.concerns(n))
    }
}

/// The journal file of a root.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

/// Redacts secrets in a JSON value: values under secret-looking keys, `KEY=VALUE` strings
/// whose key looks secret, and URL credentials.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if is_secret_key(k) && !v.is_null() {
                        (k.clone(), Value::String(REDACTED.into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => {
            if let Some((k, v)) = s.split_once('=') {
                // A fingerprint (`--set` arguments) tells nothing without the fleet's key.
                if is_secret_key(k) && !v.starts_with(crate::model::fingerprint::PREFIX) {
                    return Value::String(format!("{k}={REDACTED}"));
                }
            }
            Value::String(scrub_text(s))
        }
        other => other.clone(),
    }
}

/// A journal's text with the values of `--set` settings that Girofle versions before the
/// fingerprints wrote in clear (`"set": ["KEY=VALUE"]`) replaced by their fingerprints;
/// every other line is kept byte for byte. Used where a journal leaves the root (the
/// state export) and to compare lines on import.
pub fn fingerprint_old_settings(
    text: &[u8],
    key: &crate::model::fingerprint::FingerprintKey,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|b| *b == b'\n') {
        match fingerprint_line(line, key) {
            Some(new) => out.extend_from_slice(&new),
            None => out.extend_from_slice(line),
        }
    }
    out
}

fn fingerprint_line(
    line: &[u8],
    key: &crate::model::fingerprint::FingerprintKey,
) -> Option<Vec<u8>> {
    let mut record: Record = serde_json::from_slice(line.trim_ascii_end()).ok()?;
    let set = record.arguments.get_mut("set")?.as_array_mut()?;
    let mut changed = false;
    for item in set.iter_mut() {
        let Some(text) = item.as_str() else { continue };
        let value = text.split_once('=').map_or(text, |(_, v)| v).trim();
        if value.starts_with(crate::model::fingerprint::PREFIX) || value == REDACTED {
            continue;
        }
        let fingerprinted = key.settings_texts(&[text.to_string()]);
        *item = Value::String(fingerprinted.into_iter().next()?);
        changed = true;
    }
    if !changed {
        return None;
    }
    let mut bytes = serde_json::to_vec(&record).ok()?;
    if line.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    Some(bytes)
}

/// The user running Girofle.
pub fn current_user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", fs_uid()))
}

fn fs_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Journal {
    /// The journal of `root`.
    pub fn new(root: &Path) -> Self {
        Journal {
            path: root.join("journal.jsonl"),
        }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One record as the journal writes it: redacted JSON on one line (without its
    /// newline).
    ///
    /// # Errors
    /// `Backend` when the record cannot be serialised.
    pub fn line(record: &Record, secrets: &[String]) -> Result<String> {
        let mut record = record.clone();
        record.arguments = redact(&record.arguments);
        record.error = record.error.map(|e| scrub_known(&e, secrets));
        let mut line =
            serde_json::to_string(&record).map_err(|e| Error::backend("journal", e.to_string()))?;
        for s in secrets {
            if s.len() >= 4 {
                line = line.replace(s.as_str(), REDACTED);
            }
        }
        Ok(line)
    }

    /// Appends one record, redacted, as one line (mode 0600; a lock keeps concurrent
    /// writers' lines whole).
    ///
    /// # Errors
    /// `Io` when the file cannot be written.
    pub fn append(&self, record: &Record, secrets: &[String]) -> Result<()> {
        let mut line = Self::line(record, secrets)?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .ctx("open journal", &self.path)?;
        // A journal written by an older Girofle may be readable by others.
        if f.metadata()
            .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
        {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        f.lock_exclusive().ctx("lock journal", &self.path)?;
        let end = f.metadata().map(|m| m.len());
        let r = f.write_all(line.as_bytes()).and_then(|_| f.sync_data());
        if let (Err(_), Ok(end)) = (&r, end) {
            // A disk that fills mid-line must not leave half a record: cut it off.
            let _ = f.set_len(end);
        }
        let _ = FileExt::unlock(&f);
        r.ctx("append to journal", &self.path)
    }

    /// Every record, oldest first.
    ///
    /// # Errors
    /// `Io` when the file cannot be read, `Corrupt` naming a bad line.
    pub fn read_all(&self) -> Result<Vec<Record>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read journal", &self.path, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::corrupt(
                        format!("journal {} line {}", self.path.display(), i + 1),
                        e.to_string(),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_query_picks_records_by_time_host_and_instance() {
        let at = |h: i64| chrono::DateTime::from_timestamp(h * 3600, 0).unwrap();
        let rec = |host: &str, args: Value, hour: i64| Record {
            operation: "op".into(),
            arguments: args,
            user: "u".into(),
            host: host.into(),
            pid: 1,
            girofle_version: "0".into(),
            versions: Value::Null,
            started_at: at(hour),
            ended_at: at(hour),
            outcome: "ok".into(),
            error_kind: None,
            error: None,
        };
        let by_name = rec("a", json!({"name": "web"}), 1);
        let by_id = rec("b", json!({"id": "web/20261204T000000Z", "store": "s3"}), 2);
        let by_as = rec("a", json!({"id": "old/x", "as": "web"}), 3);
        let other = rec("a", json!({"name": "webby"}), 4);
        let q = |since: Option<i64>, host: Option<&str>, instance: Option<&str>| JournalQuery {
            since: since.map(at),
            host: host.map(str::to_string),
            instance: instance.map(str::to_string),
        };
        let picked = |q: JournalQuery| {
            [&by_name, &by_id, &by_as, &other]
                .iter()
                .filter(|r| q.matches(r))
                .count()
        };
        assert_eq!(picked(q(None, None, None)), 4);
        assert_eq!(picked(q(None, None, Some("web"))), 3);
        assert_eq!(picked(q(None, Some("a"), Some("web"))), 2);
        assert_eq!(picked(q(Some(2), None, Some("web"))), 2);
        assert_eq!(picked(q(Some(5), None, None)), 0);
    }

    #[test]
    fn secrets_never_reach_the_record() {
        let args = json!({
            "name": "web",
            "set": ["gitlab_rails['initial_root_password']='hunter2secret'", "gitlab_rails['time_zone']='UTC'"],
            "secret_access_key": "AKIAxyz",
            "store": "s3://key:pass1234@bucket/x",
        });
        let r = redact(&args);
        let text = r.to_string();
        assert!(
            !text.contains("hunter2secret")
                && !text.contains("AKIAxyz")
                && !text.contains("pass1234"),
            "{text}"
        );
        assert!(text.contains("time_zone") && text.contains("UTC") && text.contains("web"));
    }

    #[test]
    fn old_settings_values_become_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::model::fingerprint::FingerprintKey::of_root(dir.path()).unwrap();
        let now = Utc::now();
        let rec = |set: Value| Record {
            operation: "reconfigure".into(),
            arguments: json!({ "name": "a", "set": set }),
            user: "u".into(),
            host: "h".into(),
            pid: 1,
            girofle_version: "0".into(),
            versions: json!({}),
            started_at: now,
            ended_at: now,
            outcome: "ok".into(),
            error_kind: None,
            error: None,
        };
        let old = rec(json!([
            "x['otp_key_base']='PLANTED-old'",
            "x['password']=[REDACTED]"
        ]));
        let other = rec(json!([]));
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&old).unwrap(),
            serde_json::to_string(&other).unwrap()
        );
        let new = fingerprint_old_settings(text.as_bytes(), &key);
        let new = String::from_utf8(new).unwrap();
        assert!(!new.contains("PLANTED"), "{new}");
        assert!(new.contains("x['otp_key_base']=blake3-keyed:"), "{new}");
        assert!(new.contains("x['password']=[REDACTED]"), "{new}");
        assert!(new.ends_with(&format!("{}\n", serde_json::to_string(&other).unwrap())));
        // Once done, nothing changes.
        assert_eq!(
            fingerprint_old_settings(new.as_bytes(), &key),
            new.as_bytes()
        );
    }

    #[test]
    fn append_and_read_back_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let now = Utc::now();
        let rec = Record {
            operation: "commission".into(),
            arguments: json!({"name": "a"}),
            user: current_user(),
            host: host_name(),
            pid: std::process::id(),
            girofle_version: crate::VERSION.into(),
            versions: json!({}),
            started_at: now,
            ended_at: now,
            outcome: "error".into(),
            error_kind: Some("conflict".into()),
            error: Some("bad token tok-123456".into()),
        };
        j.append(&rec, &["tok-123456".to_string()]).unwrap();
        j.append(&rec, &[]).unwrap();
        let all = j.read_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].error.as_deref(), Some("bad token [REDACTED]"));
        let mode = std::fs::metadata(j.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
