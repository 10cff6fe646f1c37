//! The words every floor shares about an instance: its record in the inventory
//! ([`InstanceRecord`]: addresses, settings, labels, stage), its names and how they are
//! checked, and how a `KEY=VALUE` setting is read. Pure data and validation, no I/O;
//! the ground floor, so the inventory adapters store records without knowing the model.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name of the implicit host: this machine's engine and the root's own directories.
pub const LOCAL_HOST_NAME: &str = "local";

/// Label on every container Girofle creates.
pub const LABEL_MANAGED: &str = "io.girofle.managed";
/// Label carrying the instance name.
pub const LABEL_INSTANCE: &str = "io.girofle.instance";
/// Label carrying the Girofle root the container belongs to (two roots on one engine
/// never see each other's containers).
pub const LABEL_ROOT: &str = "io.girofle.root";

/// Where an instance listens on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    pub ip: IpAddr,
    pub http_port: u16,
    pub https_port: u16,
    pub ssh_port: u16,
}

impl Bindings {
    /// The (ip, port) pairs this instance holds.
    pub fn addresses(&self) -> [(IpAddr, u16); 3] {
        [
            (self.ip, self.http_port),
            (self.ip, self.https_port),
            (self.ip, self.ssh_port),
        ]
    }
}

/// The life stage of an inventory record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Addresses reserved, container being created or booting for the first time.
    Commissioning,
    /// In service.
    Active,
}

/// What the inventory records about an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    pub image: String,
    pub bindings: Bindings,
    pub hostname: Option<String>,
    pub external_url: String,
    /// Settings Girofle manages in `gitlab.rb`, key (`gitlab_rails['time_zone']`) to Ruby
    /// literal (`'UTC'`).
    pub settings: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub stage: Stage,
    /// The `[hosts.NAME]` whose engine runs it; `None` is the implicit local host (the
    /// engine of `[docker]`, the root's own `instances/`), as every record written before
    /// hosts existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl InstanceRecord {
    /// The container name of the instance.
    pub fn container_name(&self) -> String {
        container_name(&self.name)
    }

    /// The name of the host it runs on (`local` for the implicit one).
    pub fn host_name(&self) -> &str {
        self.host.as_deref().unwrap_or(LOCAL_HOST_NAME)
    }

    /// A copy safe to print: every setting's value is replaced by `[REDACTED]`, whatever
    /// its key (a secret hides as well under `otp_key_base` or inside a hash as under
    /// `password`). [`crate::Girofle::show_revealed`] shows them.
    pub fn redacted(&self) -> InstanceRecord {
        let mut r = self.clone();
        for v in r.settings.values_mut() {
            *v = crate::text::REDACTED.to_string();
        }
        r
    }

    /// The GitLab version from the image tag (`gitlab/gitlab-ce:17.5.1-ce.0` -> `17.5.1`).
    pub fn gitlab_version(&self) -> Option<String> {
        image_version(&self.image).map(|(v, _)| v)
    }
}

/// The container name of instance `name`.
pub fn container_name(name: &str) -> String {
    format!("girofle-{name}")
}

/// Version and edition from an image reference's tag: `...:17.5.1-ce.0` -> (`17.5.1`, `ce`).
pub fn image_version(image: &str) -> Option<(String, String)> {
    let tag = image.rsplit_once(':')?.1;
    if tag.contains('/') {
        return None;
    }
    let (version, rest) = tag.split_once('-')?;
    let edition = rest.split('.').next()?.to_string();
    Some((version.to_string(), edition))
}

/// Checks a DNS-label-like name: 1-40 chars, lowercase letters, digits and `-`, starting
/// with a letter and not ending with `-`.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_label(field: &str, name: &str) -> Result<()> {
    // The rule is the backup format's too (ids start with an instance name).
    Ok(girofle_archive::manifest::validate_label(field, name)?)
}

/// Checks an instance name.
///
/// # Errors
/// `InvalidInput` saying what a name looks like.
pub fn validate_name(name: &str) -> Result<()> {
    validate_label("instance name", name)
}

/// Checks a host name for the external URL.
///
/// # Errors
/// `InvalidInput` naming the field.
pub fn validate_hostname(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "hostname",
            format!("`{host}` is not a DNS host name (e.g. gitlab.example.com)"),
        ))
    }
}

/// Parses `KEY=VALUE` into a managed `gitlab.rb` setting. The key is a Ruby setting path
/// (`external_url`, `gitlab_rails['time_zone']`, `nginx['ssl']['x']`); the value is one
/// Ruby literal ([`crate::ruby`]: GitLab evaluates gitlab.rb, so nothing else may pass),
/// or a bare word (`UTC`, `Europe/Paris`) that is then quoted as a string.
///
/// # Errors
/// `InvalidInput` saying what a setting looks like and, for a value, why and at which
/// character it is refused; the value itself is never quoted (it may be a secret).
pub fn parse_setting(text: &str) -> Result<(String, String)> {
    const EXAMPLE: &str = "write KEY=VALUE, e.g. --set \"gitlab_rails['time_zone']=UTC\"";
    // The key may itself hold `=` only inside brackets, which a setting key never does.
    let Some((key, value)) = text.split_once('=') else {
        return Err(Error::invalid(
            "--set",
            format!("a setting has no `=`; {EXAMPLE}"),
        ));
    };
    let key = key.trim();
    if !valid_key(key) {
        return Err(Error::invalid(
            "--set",
            format!("`{key}` is not a gitlab.rb setting name; {EXAMPLE}"),
        ));
    }
    let value = value.trim_matches([' ', '\t']);
    Ok((
        key.to_string(),
        setting_literal(value).map_err(|e| Error::invalid("--set", format!("`{key}`: {e}")))?,
    ))
}

/// A setting's value as stored: the literal as given, or a bare word quoted.
///
/// # Errors
/// `InvalidInput`'s message: why, and at which character, without the value.
fn setting_literal(value: &str) -> std::result::Result<String, String> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if crate::ruby::is_bare_word(value) {
        return Ok(crate::ruby::quote(value));
    }
    match crate::ruby::parse(value) {
        Ok(_) => Ok(value.to_string()),
        Err(e) => Err(format!(
            "the value is not one Ruby literal ({e}); a value is a 'string', a \"string\" without #{{…}}, a number, true/false/nil, a :symbol, an [array] or a {{'key' => value}} hash of those, or a bare word of letters, digits and _-./:@+,=%~ (quoted for you)"
        )),
    }
}

/// The texts an error message must not show for these settings: each whole value and
/// the strings and symbols inside it (4 characters or more; a plain number, `true`,
/// `false` or `nil` is left out).
pub fn setting_values<'a>(settings: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    use crate::ruby::Literal;
    let mut out = Vec::new();
    for v in settings {
        match crate::ruby::parse(v) {
            Ok(Literal::Number(_) | Literal::Bool(_) | Literal::Nil) => {}
            Ok(lit) => {
                out.push(v.clone());
                out.extend(lit.leaves());
            }
            Err(_) => out.push(v.clone()),
        }
    }
    out.retain(|s| s.len() >= 4);
    // Longest first: a value is scrubbed whole before its parts.
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

pub(crate) fn valid_key(key: &str) -> bool {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let head_ok = !head.is_empty()
        && head.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && head
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !head_ok {
        return false;
    }
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix("['") else {
            return false;
        };
        let Some(end) = inner.find("']") else {
            return false;
        };
        let word = &inner[..end];
        if word.is_empty()
            || !word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return false;
        }
        rest = &inner[end + 2..];
    }
    true
}
