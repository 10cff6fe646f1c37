//! Girofle's configuration: `<root>/girofle.toml`.
//!
//! Responsible for reading, validating and writing the file (the address pool, the Docker
//! engine, instance defaults, backup settings and the remote stores). It does not open
//! stores or engines; `Girofle::open` does that with what is read here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::runtime::validate_docker_host;
use crate::adapters::store::StoreConfig;
use crate::error::{Error, Result};

/// The file name of the configuration under the root.
pub const CONFIG_FILE: &str = "girofle.toml";

/// The GitLab image instances get unless told otherwise.
pub const DEFAULT_IMAGE: &str = "gitlab/gitlab-ce:17.5.1-ce.0";

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    /// Where the inventory and the operation locks live: the root's SQLite file unless
    /// `[inventory] etcd` names a cluster.
    #[serde(default)]
    pub inventory: InventoryConfig,
    #[serde(default)]
    pub instances: InstanceDefaults,
    #[serde(default)]
    pub backup: BackupConfig,
    /// Remote backup stores by name (`local` is built in and cannot be redefined).
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// The default schedule of backups and copies, and the daemon's limits.
    #[serde(default)]
    pub schedule: crate::model::policy::ScheduleConfig,
    /// Where the metrics endpoint listens (`girofle daemon`, `girofle metrics serve`).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where failure (and optionally success) notifications go.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Keys whose signed backups this fleet trusts besides its own.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Docker hosts besides this machine's (`[hosts.NAME]`, see `model::hosts`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, crate::model::hosts::HostConfig>,
}

/// `[trust]`: the public keys of other fleets whose backups this one restores.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// minisign public keys (`RWQ...`: the second line of `girofle key show` on the fleet
    /// that signed).
    #[serde(default)]
    pub keys: Vec<String>,
}

/// The addresses Girofle may hand out: nothing outside them is ever used.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub ips: Vec<IpAddr>,
    /// Inclusive ranges `"FIRST-LAST"` or single ports `"PORT"`.
    pub ports: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            ports: vec!["20080-20999".to_string()],
        }
    }
}

impl NetworkConfig {
    /// The port ranges, parsed.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad entry.
    pub fn port_ranges(&self) -> Result<Vec<(u16, u16)>> {
        crate::model::hosts::port_ranges("network.ports", &self.ports)
    }

    /// Whether a port is in the pool.
    pub fn contains_port(&self, port: u16) -> bool {
        self.port_ranges()
            .unwrap_or_default()
            .iter()
            .any(|(a, b)| (*a..=*b).contains(&port))
    }
}

/// Where the Docker engine is.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`; default `$DOCKER_HOST`, then the
    /// local socket.
    pub host: Option<String>,
}

/// Defaults for new instances.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceDefaults {
    pub image: String,
    /// How long to wait for an instance to turn healthy (GitLab's first boot takes minutes).
    pub health_timeout_secs: u64,
    /// How often the engine probes a running GitLab (each probe is a full Rails request
    /// that GitLab logs; the image's own default is 60 s). It sets how soon the engine
    /// marks a GitLab that stopped answering "unhealthy" (after 5 failed probes); Girofle's
    /// own waits and `instance list` ask GitLab directly.
    pub health_interval_secs: u64,
    /// How long `stop` lets GitLab shut down before the engine kills it.
    pub stop_grace_secs: u64,
}

impl Default for InstanceDefaults {
    fn default() -> Self {
        InstanceDefaults {
            image: DEFAULT_IMAGE.to_string(),
            health_timeout_secs: 900,
            health_interval_secs: 30,
            // `gitlab-ctl stop` takes tens of seconds; killing PostgreSQL mid-shutdown
            // forces a recovery at the next boot.
            stop_grace_secs: 120,
        }
    }
}

/// Backup settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// zstd level (1-22).
    pub level: i32,
    /// zstd worker threads; 0 = automatic: one per core, none on a machine of one or two
    /// cores (see `CompressionOptions::default`).
    pub threads: u32,
    /// How long a `gitlab-backup create` that an interrupted online backup left running in
    /// the container may run, from the backup's start, before recovery stops it: GitLab's
    /// backups take minutes to hours, and its tar and staging parts are removed only once
    /// it ended.
    pub gitlab_backup_timeout_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            level: 3,
            threads: 0,
            // GitLab: a little over 2 h per 100 GB of repositories.
            gitlab_backup_timeout_secs: 6 * 3600,
        }
    }
}

const DEFAULT_TEXT: &str = r#"# Girofle configuration. See the README for every setting.

[network]
# The only addresses Girofle hands out to instances. Loopback by default: safe out of the box.
ips = ["127.0.0.1"]
ports = ["20080-20999"]

[docker]
# host = "unix:///var/run/docker.sock"

[instances]
image = "gitlab/gitlab-ce:17.5.1-ce.0"
health_timeout_secs = 900
health_interval_secs = 30    # the engine's probe of a running GitLab: a Rails request each time
stop_grace_secs = 120      # gitlab-ctl stop takes tens of seconds; a kill mid-shutdown forces PostgreSQL recovery

[backup]
level = 3
threads = 0
gitlab_backup_timeout_secs = 21600   # a gitlab-backup an interrupted online backup left running may run this long (from its start), then recovery stops it

[schedule]
# Every instance's schedule unless it has its own (`girofle schedule set`), counted from
# its creation. Crons have 5 fields, or 6 with seconds first; read in `timezone`.
# backup = "0 */4 * * *"       # a local backup every 4 hours
# copy = "30 */4 * * *"        # new local backups copied to `store` ("off": no copies)
# timezone = "UTC"
# store = "offsite"            # default: the only [stores.*] when there is exactly one
# strategy = "online"
# keep_last = 12               # retention after each run (also keep_daily, keep_weekly)
# max_concurrent = 2           # jobs at once across the fleet (`girofle daemon`, `run-due`)
# stop_grace_secs = 300        # how long a stopping daemon lets running jobs finish

[metrics]
# listen = "127.0.0.1:9531"   # `girofle daemon` serves GET /metrics here (Prometheus)

[notify]
# webhook_url = "http://127.0.0.1:8080/hooks/girofle"   # a JSON document per failed run
# on_success = false

[trust]
# Backups are signed with this fleet's key (<root>/keys/signing.key; `girofle key show`).
# Public keys of other fleets whose signed backups this one restores too (the second line
# of `girofle key show` run there):
# keys = ["RWQ..."]

# Remote stores for backups, by name:
# [stores.offsite]
# url = "s3://my-bucket/girofle"
# endpoint = "https://s3.example.com"
# region = "us-east-1"
# access_key_id = "..."
# secret_access_key = "..."
#
# [stores.nas]
# url = "file:///mnt/nas/girofle"
"#;

impl Config {
    /// The `[hosts.NAME]` table of host `name`.
    ///
    /// # Errors
    /// `NotFound` naming the hosts there are.
    pub fn host(&self, name: &str) -> Result<&crate::model::hosts::HostConfig> {
        self.hosts.get(name).ok_or_else(|| {
            let mut names = vec![crate::model::hosts::LOCAL_HOST.to_string()];
            names.extend(self.hosts.keys().cloned());
            Error::not_found(
                format!("host `{name}`"),
                format!(
                    "the hosts are {}; add one with `girofle host add {name} --engine URL ...`",
                    names.join(", ")
                ),
            )
        })
    }

    /// The path of the configuration file under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(CONFIG_FILE)
    }

    /// Reads and validates `<root>/girofle.toml`.
    ///
    /// # Errors
    /// `NotFound` when the root was never initialised, `InvalidInput` naming the line and
    /// key of a malformed setting, or the line and byte where the file is not UTF-8.
    pub fn load(root: &Path) -> Result<Config> {
        let path = Self::path(root);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(
                    format!("Girofle configuration `{}`", path.display()),
                    format!(
                        "run `girofle --root {} init` first (or set GIROFLE_ROOT to an initialised root)",
                        root.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(root_not_a_directory(root).unwrap_or_else(|| Error::io("read", &path, e)))
            }
        };
        let text =
            String::from_utf8(bytes).map_err(|e| not_utf8(&path, e.as_bytes(), e.utf8_error()))?;
        Self::parse(&text, &path)
    }

    /// Parses and validates configuration text.
    ///
    /// # Errors
    /// `InvalidInput` naming the key, the file and line, and what is expected.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start.min(text.len()));
            let (line, key) = at.map_or((0, None), |at| locate(text, at));
            let mut message = e.message().trim_end().replace('\n', "; ");
            // A syntax error is about the text, not the value of the key it is in.
            let key = if text.parse::<toml::Table>().is_err() {
                message = format!("TOML syntax: {message}");
                None
            } else {
                key
            };
            if let Some(hint) = key.as_deref().and_then(expected_value) {
                message = format!("{message}; expected {hint}");
            }
            let field = match key {
                Some(key) => format!("`{key}` ({} line {line})", path.display()),
                None => format!("{} line {line}", path.display()),
            };
            Error::invalid(field, message)
        })?;
        config.validate().map_err(|e| match e {
            // Point at the line of the key a value check refused.
            Error::InvalidInput { field, message } => match line_of(text, &field) {
                Some(line) => Error::InvalidInput {
                    field: format!("`{field}` ({} line {line})", path.display()),
                    message,
                },
                None => Error::InvalidInput {
                    field: format!("`{field}` ({})", path.display()),
                    message,
                },
            },
            e => e,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.network.ips.is_empty() {
            return Err(Error::invalid("network.ips", "list at least one address"));
        }
        if self.network.port_ranges()?.is_empty() {
            return Err(Error::invalid(
                "network.ports",
                "list at least one port range",
            ));
        }
        if !(1..=22).contains(&self.backup.level) {
            return Err(Error::invalid(
                "backup.level",
                "use a zstd level from 1 to 22",
            ));
        }
        if self.instances.health_interval_secs == 0 {
            return Err(Error::invalid(
                "instances.health_interval_secs",
                "use at least 1 second",
            ));
        }
        if self.stores.contains_key("local") {
            return Err(Error::invalid(
                "stores.local",
                "`local` is the built-in store under <root>/backups; give yours another name",
            ));
        }
        if let Some(host) = &self.docker.host {
            validate_docker_host("docker.host", host)?;
        }
        for (name, store) in &self.stores {
            crate::record::validate_label(&format!("stores.{name}"), name)?;
            validate_store_url(&format!("stores.{name}.url"), &store.url)?;
        }
        crate::model::hosts::validate_all(&self.hosts)?;
        self.schedule.validate(&self.stores)?;
        self.inventory.validate()?;
        self.notify.validate()?;
        if let Some(u) = &self.notify.webhook_url {
            validate_http_url("notify.webhook_url", u)?;
        }
        for (i, key) in self.trust.keys.iter().enumerate() {
            girofle_archive::signature::PublicKey::parse(key).map_err(|m| {
                Error::invalid(
                    "trust.keys",
                    format!(
                        "entry {}: {m}; paste the second line of `girofle key show` run on the fleet to trust",
                        i + 1
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Writes the default configuration under `root` unless one exists. Returns whether
    /// it wrote one.
    ///
    /// # Errors
    /// `Io` when the file cannot be written.
    pub fn write_default(root: &Path) -> Result<bool> {
        let path = Self::path(root);
        if path.exists() {
            return Ok(false);
        }
        crate::fsutil::write_atomic(&path, DEFAULT_TEXT.as_bytes(), 0o600)?;
        Ok(true)
    }

    /// Writes this configuration under `root` (replacing the file atomically).
    ///
    /// # Errors
    /// `Io` when the file cannot be written.
    pub fn save(&self, root: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::invalid("configuration", e.to_string()))?;
        let path = Self::path(root);
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
    }
}

/// The error for a root that is (or lies under) something other than a directory, e.g.
/// `--root /etc/hosts`; `None` when every existing part of the path is a directory.
pub fn root_not_a_directory(root: &Path) -> Option<Error> {
    let not_dir = root
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))?;
    let what = if not_dir == root {
        format!("`{}` is a file, not a directory", root.display())
    } else {
        format!(
            "`{}` lies under `{}`, which is a file, not a directory",
            root.display(),
            not_dir.display()
        )
    };
    Some(Error::invalid(
        "root (--root or GIROFLE_ROOT)",
        format!(
            "{what}; point --root (or GIROFLE_ROOT) at a directory (default /var/lib/girofle, created by `girofle init`), or move the file away"
        ),
    ))
}

/// The error for a configuration file that is not UTF-8 (`e` says where the bad bytes
/// start): TOML is UTF-8 only, and an editor saving in Latin-1 is the usual cause.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Error {
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = bytes[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = at - line_start + 1;
    Error::invalid(
        format!("{} line {line}", path.display()),
        format!(
            "the byte at offset {at} (0x{:02x}, byte {column} of the line) is not UTF-8; TOML must be UTF-8: save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or retype that character",
            bytes[at]
        ),
    )
}

/// What a key of girofle.toml takes, for errors about its value.
fn expected_value(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next().unwrap_or(key);
    Some(match key {
        "network.ips" => "a list of IP addresses, e.g. ips = [\"127.0.0.1\"]",
        "network.ports" => "a list of ports or ranges as strings, e.g. ports = [\"20080-20999\"]",
        "docker.host" => "a string like \"unix:///var/run/docker.sock\" or \"tcp://HOST:2375\"",
        "instances.image" => "an image reference string, e.g. \"gitlab/gitlab-ce:17.5.1-ce.0\"",
        "backup.level" => "a zstd level, a whole number from 1 to 22",
        "backup.threads" => "a whole number of threads (0: automatic)",
        "schedule.backup" | "schedule.copy" => {
            "a cron string of 5 fields, e.g. \"0 */4 * * *\" (or \"off\" for copy)"
        }
        "schedule.timezone" => "an IANA time zone string, e.g. \"UTC\" or \"Europe/Paris\"",
        "schedule.strategy" => "\"online\" or \"cold\"",
        "metrics.listen" => "an address string \"IP:PORT\", e.g. \"127.0.0.1:9531\"",
        "notify.webhook_url" => "a string \"http://HOST:PORT/PATH\"",
        "notify.on_success" => "true or false",
        "trust.keys" => "a list of minisign public keys as strings, e.g. keys = [\"RWQ...\"]",
        _ if key.starts_with("stores.") && last == "url" => {
            "a string \"s3://BUCKET/PREFIX\" or \"file:///ABSOLUTE/PATH\""
        }
        _ if key.starts_with("stores.") && last == "allow_http" => "true or false",
        _ if last.ends_with("_secs") || last.ends_with("_ms") => "a whole number",
        _ if last.starts_with("keep_") || last == "max_concurrent" => "a whole number",
        _ => return None,
    })
}

/// The line (1-based) of byte `at` in `text`, and the dotted key whose value holds it:
/// the last `[table]` header above it and the `key =` it sits in.
fn locate(text: &str, at: usize) -> (usize, Option<String>) {
    let line = text[..at].matches('\n').count() + 1;
    let mut table = String::new();
    let mut key = None;
    for (n, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if let Some(h) = table_header(l) {
            table = h;
            key = None;
            if n + 1 == line {
                return (line, Some(table));
            }
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty() && !k.starts_with('#') && !k.contains(char::is_whitespace) {
                key = Some(k.to_string());
            }
        }
    }
    let full = match (key, table.is_empty()) {
        (Some(k), true) => Some(k),
        (Some(k), false) => Some(format!("{table}.{k}")),
        (None, false) => Some(table),
        (None, true) => None,
    };
    (line, full)
}

fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    let name = inner.trim_start_matches('[').trim();
    (!name.is_empty()).then(|| name.replace([' ', '"'], ""))
}

/// The line (1-based) where dotted key `key` (`network.ports`, `stores.nas.url`) is
/// set, or its table starts.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut table_line = None;
    for (n, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(h) = table_header(l) {
            table = h;
            if table == key {
                table_line = Some(n + 1);
            }
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            let full = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            if full == key {
                return Some(n + 1);
            }
        }
    }
    table_line
}

/// Checks the syntax of a store URL (`s3://BUCKET/PREFIX`, `file:///PATH`) without
/// opening the store. Never echoes the URL: it may carry a password.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_store_url(field: &str, text: &str) -> Result<()> {
    const EXPECTED: &str = "use s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH";
    let url = url::Url::parse(text.trim())
        .map_err(|e| Error::invalid(field, format!("not a URL ({e}); {EXPECTED}")))?;
    match url.scheme() {
        "s3" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "s3" => Err(Error::invalid(
            field,
            format!("an s3:// URL names its bucket as host; {EXPECTED}"),
        )),
        "file" => Ok(()),
        other => Err(Error::invalid(
            field,
            format!("scheme `{other}` is not supported; {EXPECTED}"),
        )),
    }
}

/// Checks an `http://` or `https://` URL with a host.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_http_url(field: &str, text: &str) -> Result<()> {
    let bad = |why: String| {
        Error::invalid(
            field,
            // Not echoed: webhook URLs often carry a token.
            format!("the URL {why}; use e.g. \"http://127.0.0.1:8080/hooks/girofle\""),
        )
    };
    let url = url::Url::parse(text).map_err(|e| bad(format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "has the scheme `{}`, not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host".into()));
    }
    Ok(())
}

/// The `[inventory]` section of girofle.toml: SQLite under the root (the default), or an
/// etcd cluster that every machine running this fleet reaches.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Client URLs of the etcd members (`http://10.0.0.1:2379`, `https://…`); empty: the
    /// inventory is `<root>/inventory.db`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// The fleet's keys live under `/girofle/<namespace>/`: several fleets may share a
    /// cluster.
    pub namespace: String,
    /// etcd user, when the cluster has authentication on; its password is read from
    /// `password_file` (or `$GIROFLE_ETCD_PASSWORD`), never written here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA certificate of the members (PEM), for `https://` endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the members ask for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// How long an operation's lock outlives a Girofle that died or was cut off.
    pub lease_ttl_secs: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            etcd: Vec::new(),
            namespace: "default".into(),
            user: None,
            password_file: None,
            ca: None,
            cert: None,
            key: None,
            lease_ttl_secs: 15,
        }
    }
}

impl InventoryConfig {
    /// Checks the section (URLs, namespace, the pairs that go together).
    ///
    /// # Errors
    /// `InvalidInput` naming the key.
    pub fn validate(&self) -> Result<()> {
        for (i, e) in self.etcd.iter().enumerate() {
            let ok = url::Url::parse(e).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/"
            });
            if !ok {
                return Err(Error::invalid(
                    "inventory.etcd",
                    format!(
                        "entry {}: `{e}` is not an etcd client URL; use e.g. \"http://10.0.0.1:2379\" (https:// with `ca`)",
                        i + 1
                    ),
                ));
            }
        }
        crate::record::validate_label("inventory.namespace", &self.namespace)?;
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::invalid(
                "inventory.cert",
                "give both `cert` and `key` (the client certificate and its key), or neither",
            ));
        }
        if self.password_file.is_some() && self.user.is_none() {
            return Err(Error::invalid(
                "inventory.password_file",
                "give the etcd `user` it is the password of",
            ));
        }
        if !(2..=3600).contains(&self.lease_ttl_secs) {
            return Err(Error::invalid(
                "inventory.lease_ttl_secs",
                "use 2 to 3600 seconds (15 is the default)",
            ));
        }
        Ok(())
    }

    /// The etcd settings, when the inventory is on etcd (reads the password).
    ///
    /// # Errors
    /// `InvalidInput` when the password cannot be read.
    pub fn etcd_settings(&self) -> Result<Option<crate::adapters::inventory::EtcdSettings>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let mut s = crate::adapters::inventory::EtcdSettings::new(self.etcd.clone());
        s.namespace.clone_from(&self.namespace);
        s.lease_ttl = std::time::Duration::from_secs(self.lease_ttl_secs);
        s.ca.clone_from(&self.ca);
        s.cert = self.cert.clone().zip(self.key.clone());
        if let Some(user) = &self.user {
            let password = match (&self.password_file, std::env::var("GIROFLE_ETCD_PASSWORD")) {
                (Some(file), _) => std::fs::read_to_string(file)
                    .map_err(|e| {
                        Error::invalid(
                            "inventory.password_file",
                            format!("cannot read `{}` ({e})", file.display()),
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                (None, Ok(p)) => p,
                (None, Err(_)) => {
                    return Err(Error::invalid(
                        "inventory.user",
                        "give its password in `password_file` or $GIROFLE_ETCD_PASSWORD",
                    ))
                }
            };
            s.user = Some((user.clone(), password));
        }
        Ok(Some(s))
    }
}

/// The `[metrics]` section of girofle.toml.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `girofle daemon` serves `GET /metrics` (none: it does not serve them).
    /// Keep it on loopback unless a firewall guards it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// The `[notify]` section of girofle.toml.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `http(s)://host[:port]/path`: receives one JSON document per notified operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Notify successes too (failures always are).
    pub on_success: bool,
    /// How long one delivery may take, connection included.
    pub timeout_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_url: None,
            on_success: false,
            timeout_secs: 10,
        }
    }
}

impl NotifyConfig {
    /// Checks the section (the URL parses, the timeout is positive).
    ///
    /// # Errors
    /// `InvalidInput` naming `notify.webhook_url` or `notify.timeout_secs`.
    pub fn validate(&self) -> Result<()> {
        if let Some(u) = &self.webhook_url {
            url::Url::parse(u).map_err(|e| {
                Error::invalid(
                    "notify.webhook_url",
                    format!("not a URL ({e}); use e.g. \"http://127.0.0.1:8080/hooks/girofle\""),
                )
            })?;
        }
        if self.timeout_secs == 0 {
            return Err(Error::invalid("notify.timeout_secs", "use at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_section_is_checked_with_what_to_write() {
        let with = |section: &str| {
            Config::parse(
                &format!("{DEFAULT_TEXT}\n[inventory]\n{section}\n"),
                Path::new("g.toml"),
            )
        };
        let c = with("etcd = [\"http://127.0.0.1:2379\", \"https://10.0.0.2:2379\"]").unwrap();
        assert_eq!(c.inventory.etcd.len(), 2);
        assert_eq!(c.inventory.lease_ttl_secs, 15);
        assert!(Config::parse(DEFAULT_TEXT, Path::new("g.toml"))
            .unwrap()
            .inventory
            .etcd
            .is_empty());
        for (section, field, says) in [
            (
                "etcd = [\"127.0.0.1:2379\"]",
                "inventory.etcd",
                "http://10.0.0.1:2379",
            ),
            ("etcd = [\"http://h:2379/v3\"]", "inventory.etcd", "entry 1"),
            ("cert = \"/c.pem\"", "inventory.cert", "`key`"),
            (
                "user = \"u\"\npassword_file = \"/p\"\nlease_ttl_secs = 1",
                "inventory.lease_ttl_secs",
                "15",
            ),
            (
                "password_file = \"/p\"",
                "inventory.password_file",
                "`user`",
            ),
            ("namespace = \"a/b\"", "inventory.namespace", ""),
            ("password = \"x\"", "password", ""),
        ] {
            let e = with(section).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(says), "{section}: {e}");
        }
    }

    #[test]
    fn default_text_parses_to_the_defaults() {
        let c = Config::parse(DEFAULT_TEXT, Path::new("girofle.toml")).unwrap();
        assert_eq!(c.network.port_ranges().unwrap(), vec![(20080, 20999)]);
        assert_eq!(c.instances.image, DEFAULT_IMAGE);
        assert!(c.network.contains_port(20080) && !c.network.contains_port(21000));
        assert_eq!(
            c.backup.gitlab_backup_timeout_secs,
            BackupConfig::default().gitlab_backup_timeout_secs
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let text = "[network]\nips = [\"127.0.0.1\"]\nports = [\"80-70\"]\n";
        let e = Config::parse(text, Path::new("g.toml")).unwrap_err();
        assert!(e.to_string().contains("network.ports"), "{e}");
        let text = "[network]\nips = [\"not-an-ip\"]\nports = [\"1-2\"]\n";
        let e = Config::parse(text, Path::new("g.toml")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Config::parse("[instances]\nimagee = \"x\"\n", Path::new("g.toml")).unwrap_err();
        assert!(e.to_string().contains("imagee"), "{e}");
    }

    #[test]
    fn value_errors_name_the_dotted_key_and_its_line() {
        let text = "# c\n[network]\nips = [\"127.0.0.1\"]\nports = [\"1-2\"]\n\n[stores.nas]\nurl = \"ftp://x/y\"\n";
        let e = Config::parse(text, Path::new("g.toml")).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`stores.nas.url` (g.toml line 7)") && m.contains("scheme `ftp`"),
            "{m}"
        );
        assert_eq!(
            locate(text, text.find("1-2").unwrap()),
            (4, Some("network.ports".into()))
        );
        assert_eq!(line_of(text, "stores.nas"), Some(6));
        assert_eq!(line_of(text, "network.ips"), Some(3));
        assert_eq!(line_of(text, "backup.level"), None);
        // A syntax error names the line, not a key.
        let e = Config::parse("[network\n", Path::new("g.toml")).unwrap_err();
        assert!(
            e.to_string().contains("g.toml line 1): TOML syntax")
                || e.to_string().contains("g.toml line 1: TOML syntax"),
            "{e}"
        );
    }

    #[test]
    fn trusted_keys_are_checked_and_named() {
        let e = Config::parse("[trust]\nkeys = [\"RWQnope\"]\n", Path::new("g.toml")).unwrap_err();
        assert_eq!(e.kind(), "invalid_input");
        let m = e.to_string();
        assert!(
            m.contains("`trust.keys` (g.toml line 2)") && m.contains("girofle key show"),
            "{m}"
        );
        let c = Config::parse(
            "[trust]\nkeys = [\"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"]\n",
            Path::new("g.toml"),
        )
        .unwrap();
        assert_eq!(c.trust.keys.len(), 1);
    }

    #[test]
    fn addresses_say_what_they_expect() {
        for ok in [
            "unix:///var/run/docker.sock",
            "tcp://10.0.0.2:2375",
            "https://h:2376",
        ] {
            validate_docker_host("docker.host", ok).unwrap();
        }
        for bad in [
            "unix://relative.sock",
            "host:2375",
            "ssh://h",
            "tcp://:2375",
        ] {
            let e = validate_docker_host("docker.host", bad).unwrap_err();
            assert!(e.to_string().contains("tcp://HOST:2375"), "{bad}: {e}");
        }
        validate_store_url("u", "s3://bucket/prefix").unwrap();
        validate_store_url("u", "file:///mnt/nas").unwrap();
        for bad in ["/mnt/nas", "s3:///prefix", "http://x/y"] {
            assert!(validate_store_url("u", bad).is_err(), "{bad}");
        }
        validate_http_url("w", "https://hooks.example/x").unwrap();
        let e = validate_http_url("w", "https://user:token@/x").unwrap_err();
        assert!(!e.to_string().contains("token"), "the URL is echoed: {e}");
        assert!(validate_http_url("w", "ftp://x/y").is_err());
    }
}
