//! Girofle's configuration: `<root>/girofle.toml`.
//!
//! Responsible for reading, validating and writing the file (the address pool, the Docker
//! engine, instance defaults, backup settings and the remote stores). It does not open
//! stores or engines; `Girofle::open` does that with what is read here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::StoreConfig;

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
    #[serde(default)]
    pub instances: InstanceDefaults,
    #[serde(default)]
    pub backup: BackupConfig,
    /// Remote backup stores by name (`local` is built in and cannot be redefined).
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// The default schedule of backups and copies, and the daemon's limits.
    #[serde(default)]
    pub schedule: crate::schedule::ScheduleConfig,
    /// Where the metrics endpoint listens (`girofle daemon`, `girofle metrics serve`).
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// Where failure (and optionally success) notifications go.
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
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
        self.ports
            .iter()
            .map(|r| {
                let bad = || {
                    Error::invalid(
                        "network.ports",
                        format!(
                            "`{r}` is not a port or a range like \"20080-20999\" (ports 1-65535)"
                        ),
                    )
                };
                let (a, b) = match r.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (r.trim(), r.trim()),
                };
                let a: u16 = a.parse().map_err(|_| bad())?;
                let b: u16 = b.parse().map_err(|_| bad())?;
                if a == 0 || b < a {
                    return Err(bad());
                }
                Ok((a, b))
            })
            .collect()
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
    /// How often the engine probes health (the image's default of 60 s makes every wait slow).
    pub health_interval_secs: u64,
    /// How long `stop` lets GitLab shut down before the engine kills it.
    pub stop_grace_secs: u64,
}

impl Default for InstanceDefaults {
    fn default() -> Self {
        InstanceDefaults {
            image: DEFAULT_IMAGE.to_string(),
            health_timeout_secs: 900,
            health_interval_secs: 1,
            stop_grace_secs: 30,
        }
    }
}

/// Backup settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// zstd level (1-19).
    pub level: i32,
    /// zstd worker threads; 0 = as many as the machine has cores.
    pub threads: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            level: 3,
            threads: 0,
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
health_interval_secs = 1
stop_grace_secs = 30

[backup]
level = 3
threads = 0

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
    /// The path of the configuration file under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(CONFIG_FILE)
    }

    /// Reads and validates `<root>/girofle.toml`.
    ///
    /// # Errors
    /// `NotFound` when the root was never initialised, `InvalidInput` naming the line and
    /// key of a malformed setting.
    pub fn load(root: &Path) -> Result<Config> {
        let path = Self::path(root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(
                    format!("Girofle configuration `{}`", path.display()),
                    format!(
                        "run `girofle --root {} init` first (or set GIROFLE_ROOT to an initialised root)",
                        root.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Self::parse(&text, &path)
    }

    /// Parses and validates configuration text.
    ///
    /// # Errors
    /// `InvalidInput` naming the file, line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            Error::invalid(
                format!("{} line {line}", path.display()),
                e.message().to_string(),
            )
        })?;
        config.validate()?;
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
        for name in self.stores.keys() {
            crate::instance::validate_label("store name", name)?;
        }
        self.schedule.validate(&self.stores)?;
        self.notify.validate()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_parses_to_the_defaults() {
        let c = Config::parse(DEFAULT_TEXT, Path::new("girofle.toml")).unwrap();
        assert_eq!(c.network.port_ranges().unwrap(), vec![(20080, 20999)]);
        assert_eq!(c.instances.image, DEFAULT_IMAGE);
        assert!(c.network.contains_port(20080) && !c.network.contains_port(21000));
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
}
