//! The fleet's Docker hosts as their engines see them now, and adding or removing one.
//!
//! Responsible for asking each engine (in parallel, each within [`PROBE_WAIT`], so an
//! engine that is down is reported `unreachable` instead of holding up the listing):
//! its version, the instances of this root on it, the free addresses of its pool and the
//! free disk under its data directory, measured by the engine itself through a
//! short-lived helper container (another machine's directory is never read through a
//! path here). Not responsible for parsing `[hosts]` (`model::hosts`) nor for placing
//! instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::adapters::runtime::{ContainerRuntime, DockerRuntime, EngineOptions, HostRoot};
use crate::error::{Error, Result};
use crate::model::config::{Config, NetworkConfig};
use crate::model::context::Context;
use crate::model::hosts::{HostConfig, LOCAL_HOST};
use crate::record::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROOT};

/// How long one host's engine may take to answer before it is called unreachable.
pub use crate::model::hosts::PROBE_WAIT;
/// How long measuring the free disk may take (a helper container is created, started,
/// asked and removed); past it the disk is `unknown`.
const DISK_WAIT: Duration = Duration::from_secs(20);

/// Whether a host's engine answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    Up,
    Unreachable,
}

impl std::fmt::Display for EngineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineState::Up => "up",
            EngineState::Unreachable => "unreachable",
        })
    }
}

/// One host as its engine sees it now.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    pub name: String,
    /// The engine's address (`unix://...`, `tcp://...`).
    pub engine: String,
    /// Whether this is the implicit host of `[docker]` and `[network]`.
    pub local: bool,
    pub state: EngineState,
    /// Why the engine is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The engine's version (`None` when unreachable).
    pub version: Option<String>,
    /// Names of this root's instances on that engine (`None` when unreachable).
    pub instances: Option<Vec<String>>,
    /// Addresses (ip:port pairs) in the pool.
    pub pool_size: u64,
    /// Addresses of the pool no container on that engine publishes (`None` when
    /// unreachable).
    pub free_addresses: Option<u64>,
    /// The directory on that host under which instance directories live.
    pub data_dir: String,
    /// Free bytes on the file system of `data_dir` (`None`: unknown, see `disk_note`).
    pub disk_free_bytes: Option<u64>,
    /// Why the free disk is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_note: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Being drained: no new instance is placed there.
    pub drain: bool,
}

/// The result of `host add`.
#[derive(Clone, Debug, Serialize)]
pub struct HostAdded {
    pub name: String,
    pub host: HostConfig,
    /// The configuration file changed.
    pub config: std::path::PathBuf,
}

/// The result of `host drain`.
#[derive(Clone, Debug, Serialize)]
pub struct Drained {
    pub name: String,
    /// The instances moved off it.
    pub moved: Vec<crate::ops::moving::Moved>,
    /// The instances that could not be moved (they still run there), with why.
    pub failed: Vec<(String, String)>,
    /// The instances left there without trying (`--no-move`).
    pub left: Vec<String>,
}

/// The result of `host rm`.
#[derive(Clone, Debug, Serialize)]
pub struct HostRemoved {
    pub name: String,
    /// Whether the engine could not be asked for instances (removed with `--force`).
    pub unchecked: bool,
    pub config: std::path::PathBuf,
}

/// How many addresses the pool holds, and how many of them a published port takes.
fn pool_counts(pool: &NetworkConfig, published: &[(String, u16)]) -> Result<(u64, u64)> {
    let ranges = pool.port_ranges()?;
    let ips: BTreeSet<IpAddr> = pool.ips.iter().copied().collect();
    let ports: u64 = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
    let size = ports * ips.len() as u64;
    let mut used = BTreeSet::new();
    for (host_ip, port) in published {
        if !ranges.iter().any(|(a, b)| (*a..=*b).contains(port)) {
            continue;
        }
        // A port published on every address (0.0.0.0, ::, or none given) takes it on
        // each address of the pool.
        match host_ip.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => {
                if ips.contains(&ip) {
                    used.insert((ip, *port));
                }
            }
            _ => used.extend(ips.iter().map(|ip| (*ip, *port))),
        }
    }
    Ok((size, used.len() as u64))
}

/// Free bytes under `data_dir` on the engine's machine, measured by the engine (a
/// helper container from `image`, already there: never pulled).
async fn disk_free(
    engine: &DockerRuntime,
    image: &str,
    data_dir: &str,
) -> std::result::Result<u64, String> {
    if !engine
        .image_present(image)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(format!(
            "image `{image}` ([instances] image) is not on that host: load it there to measure"
        ));
    }
    tokio::time::timeout(
        DISK_WAIT,
        engine.host_free_space(&HostRoot::new(data_dir, image)),
    )
    .await
    .map_err(|_| format!("no answer within {} s", DISK_WAIT.as_secs()))?
    .map_err(|e| e.to_string())
}

pub use crate::model::hosts::connect;

impl Context {
    /// The host of a new instance: `host` when given (it must carry `labels`), else the
    /// host with the fewest of the fleet's instances among those that carry `labels`,
    /// whose engine answers and whose pool has an instance's three addresses free (ties:
    /// `local` first, then by name). `None` is the local host. A root without `[hosts]`
    /// asks nothing: its instances are local, as before hosts existed. A fleet on etcd with
    /// `[hosts]` places on those only: every machine of the fleet reaches them, while
    /// `local` is a different engine on each machine (`--host local` still may).
    ///
    /// # Errors
    /// `NotFound` for an unknown host, `InvalidInput` when it lacks a label asked for,
    /// `Conflict` when no host fits, saying why each one did not.
    pub(crate) async fn place(
        &self,
        host: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<String>> {
        let carries = |h: &Host| labels.iter().all(|(k, v)| h.labels.get(k) == Some(v));
        let drained = |h: &Host| h.config.as_ref().is_some_and(|c| c.drain);
        let wanted = |labels: &BTreeMap<String, String>| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(name) = host {
            let h = self::host(self.config(), self.root(), name)?;
            if drained(&h) {
                return Err(Error::Conflict(format!(
                    "host `{name}` is being drained: no new instance goes there; `girofle host undrain {name}` takes it back"
                )));
            }
            if !carries(&h) {
                return Err(Error::invalid(
                    "--host-label",
                    format!(
                        "host `{name}` does not carry {} (its labels: {}); drop --host or --host-label",
                        wanted(labels),
                        if h.labels.is_empty() { "none".to_string() } else { wanted(&h.labels) }
                    ),
                ));
            }
            return Ok((!h.is_local()).then(|| name.to_string()));
        }
        if self.config().hosts.is_empty() && labels.is_empty() {
            return Ok(None);
        }
        let fleet = self.inventory().load().await?;
        let shared = self.inventory().as_etcd().is_some() && !self.config().hosts.is_empty();
        let mut candidates: Vec<(usize, usize, Host)> = hosts(self.config(), self.root())
            .into_iter()
            .enumerate()
            .filter(|(_, h)| carries(h) && !drained(h) && !(shared && h.is_local()))
            .map(|(i, h)| {
                let n = fleet
                    .instances
                    .values()
                    .filter(|r| r.host_name() == h.name)
                    .count();
                (n, i, h)
            })
            .collect();
        if candidates.is_empty() {
            return Err(Error::Conflict(format!(
                "no host carries {}; see `girofle host list` for each host's labels",
                wanted(labels)
            )));
        }
        candidates.sort_by_key(|(n, i, _)| (*n, *i));
        let mut why = Vec::new();
        for (_, _, h) in candidates {
            let asked = tokio::time::timeout(PROBE_WAIT, async {
                let engine = self.host_engine(&h.name).await?;
                let published: Vec<(String, u16)> = engine
                    .published_ports()
                    .await?
                    .into_iter()
                    .map(|(_, p)| (p.host_ip, p.host_port))
                    .collect();
                pool_counts(&h.pool, &published)
            })
            .await;
            match asked {
                Ok(Ok((size, used))) if size - used >= 3 => {
                    return Ok((!h.is_local()).then_some(h.name));
                }
                Ok(Ok(_)) => why.push(format!("`{}`: its address pool is full", h.name)),
                Ok(Err(e)) => why.push(format!("`{}`: {e}", h.name)),
                Err(_) => why.push(format!(
                    "`{}`: its engine did not answer within {} s",
                    h.name,
                    PROBE_WAIT.as_secs()
                )),
            }
        }
        Err(Error::Conflict(format!(
            "no host can take a new instance: {}; free addresses, bring an engine back or add a host (`girofle host add`)",
            why.join("; ")
        )))
    }

    /// Drains host `name`: marks it `drain = true` in girofle.toml (no new instance is
    /// placed there), then, with `move_all`, moves each of its instances to the host
    /// placement picks, one after the other; one that cannot be moved stays where it is,
    /// running, and the others are still tried.
    ///
    /// # Errors
    /// `NotFound` for an unknown host, `InvalidInput` for `local`, `Io` when girofle.toml
    /// cannot be written.
    pub async fn host_drain(&self, name: &str, move_all: bool) -> Result<Drained> {
        self.set_drain(name, true)?;
        // The moves place with the configuration as it is now (this host drained).
        let config = Config::load(self.root())?;
        let here = Context::with_backends(
            self.root(),
            config,
            self.runtime().clone(),
            self.inventory().clone(),
        )?;
        let on_it: Vec<String> = self
            .inventory()
            .load()
            .await?
            .instances
            .values()
            .filter(|r| r.host_name() == name)
            .map(|r| r.name.clone())
            .collect();
        let mut drained = Drained {
            name: name.to_string(),
            moved: Vec::new(),
            failed: Vec::new(),
            left: Vec::new(),
        };
        if !move_all {
            drained.left = on_it;
            return Ok(drained);
        }
        for instance in on_it {
            let moved = match here.place(None, &BTreeMap::new()).await {
                Ok(to) => {
                    let to = to.unwrap_or_else(|| LOCAL_HOST.to_string());
                    Box::pin(here.move_instance(crate::ops::moving::MoveRequest {
                        name: instance.clone(),
                        to,
                        ..Default::default()
                    }))
                    .await
                }
                Err(e) => Err(e),
            };
            match moved {
                Ok(m) => drained.moved.push(m),
                Err(e) => drained.failed.push((instance, e.to_string())),
            }
        }
        Ok(drained)
    }

    /// Sets or clears `drain` of `[hosts.NAME]` in girofle.toml (the rest kept as it is).
    ///
    /// # Errors
    /// `NotFound` for an unknown host, `InvalidInput` for `local` or a file that is not
    /// TOML, `Io` when it cannot be written.
    pub fn set_drain(&self, name: &str, drain: bool) -> Result<()> {
        let host = host(self.config(), self.root(), name)?;
        if host.is_local() {
            return Err(Error::invalid(
                "host",
                "`local` is this machine's engine; move its instances with `girofle instance move NAME --to HOST`",
            ));
        }
        let path = Config::path(self.root());
        let text = read_config(&path)?;
        let mut doc = parse_doc(&text, &path)?;
        let table = doc
            .get_mut("hosts")
            .and_then(|h| h.as_table_like_mut())
            .and_then(|h| h.get_mut(name))
            .and_then(|t| t.as_table_like_mut())
            .ok_or_else(|| {
                Error::invalid(
                    path.display().to_string(),
                    format!(
                        "cannot find [hosts.{name}] to edit; set drain = {drain} in it by hand"
                    ),
                )
            })?;
        if drain {
            table.insert("drain", toml_edit::value(true));
        } else {
            table.remove("drain");
        }
        let out = doc.to_string();
        Config::parse(&out, &path)?;
        crate::fsutil::write_atomic(&path, out.as_bytes(), 0o600)
    }

    /// The runtime of a host and its engine's version: the root's own runtime for
    /// `local` (whose version is read on a second connection to `local_engine`, the
    /// address the root was opened with), else a new connection.
    async fn host_runtime(
        &self,
        host: &Host,
        local_engine: &str,
    ) -> Result<(
        Arc<dyn ContainerRuntime>,
        Option<String>,
        Option<DockerRuntime>,
    )> {
        match &host.config {
            None => {
                let options = EngineOptions {
                    host: Some(local_engine.to_string()),
                    connect_timeout: Some(PROBE_WAIT),
                    ..EngineOptions::default()
                };
                let version = DockerRuntime::connect_with(&options)
                    .await
                    .ok()
                    .map(|d| d.server_version().to_string());
                Ok((self.runtime().clone(), version, None))
            }
            Some(c) => {
                let rt = connect(&host.name, c).await?;
                let version = Some(rt.server_version().to_string());
                Ok((Arc::new(rt.clone()), version, Some(rt)))
            }
        }
    }

    /// The names of this root's instances on an engine.
    async fn instances_on(&self, runtime: &Arc<dyn ContainerRuntime>) -> Result<Vec<String>> {
        let containers = runtime
            .list(&[
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_ROOT.to_string(), self.root().display().to_string()),
            ])
            .await?;
        let mut names: Vec<String> = containers
            .into_iter()
            .map(|c| c.labels.get(LABEL_INSTANCE).cloned().unwrap_or(c.name))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn host_status(&self, host: Host, local_engine: &str) -> HostStatus {
        let engine = match &host.config {
            Some(c) => c.engine.clone(),
            None => local_engine.to_string(),
        };
        let pool_size = pool_counts(&host.pool, &[]).map_or(0, |(size, _)| size);
        let mut status = HostStatus {
            name: host.name.clone(),
            engine,
            local: host.is_local(),
            state: EngineState::Unreachable,
            error: None,
            version: None,
            instances: None,
            pool_size,
            free_addresses: None,
            data_dir: host.data_dir.clone(),
            disk_free_bytes: None,
            disk_note: None,
            labels: host.labels.clone(),
            drain: host.config.as_ref().is_some_and(|c| c.drain),
        };
        let asked = tokio::time::timeout(PROBE_WAIT, async {
            let (runtime, version, remote) = self.host_runtime(&host, local_engine).await?;
            let instances = self.instances_on(&runtime).await?;
            let published: Vec<(String, u16)> = runtime
                .published_ports()
                .await?
                .into_iter()
                .map(|(_, p)| (p.host_ip, p.host_port))
                .collect();
            Ok::<_, Error>((remote, version, instances, published))
        })
        .await;
        let (remote, version, instances, published) = match asked {
            Err(_) => {
                status.error = Some(format!("no answer within {} s", PROBE_WAIT.as_secs()));
                return status;
            }
            Ok(Err(e)) => {
                status.error = Some(e.to_string());
                return status;
            }
            Ok(Ok(v)) => v,
        };
        status.state = EngineState::Up;
        status.version = version;
        status.instances = Some(instances);
        status.free_addresses = pool_counts(&host.pool, &published)
            .ok()
            .map(|(size, used)| size - used);
        let measured = match &remote {
            Some(engine) => disk_free(engine, &self.config().instances.image, &host.data_dir).await,
            // This machine's own directory: no helper container needed.
            None => {
                let dir = self.root();
                fs2::available_space(dir).map_err(|e| format!("{}: {e}", dir.display()))
            }
        };
        match measured {
            Ok(bytes) => status.disk_free_bytes = Some(bytes),
            Err(note) => status.disk_note = Some(note),
        }
        status
    }

    /// The local engine's address: `docker_host` (what the root was opened with), else
    /// `[docker] host`, `$DOCKER_HOST`, the local socket.
    fn local_engine(&self, docker_host: Option<&str>) -> String {
        docker_host
            .map(str::to_string)
            .or_else(|| self.config().docker.host.clone())
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
    }

    /// Every host (`local` first), each asked in parallel. `docker_host` is the engine
    /// address the root was opened with, when given (`--docker-host`).
    ///
    /// # Errors
    /// None today: an engine that does not answer is reported `unreachable`.
    pub async fn host_list(&self, docker_host: Option<&str>) -> Result<Vec<HostStatus>> {
        let local = self.local_engine(docker_host);
        let all = hosts(self.config(), self.root());
        Ok(futures::future::join_all(all.into_iter().map(|h| self.host_status(h, &local))).await)
    }

    /// One host.
    ///
    /// # Errors
    /// `NotFound` when there is no such host.
    pub async fn host_show(&self, name: &str, docker_host: Option<&str>) -> Result<HostStatus> {
        let host = host(self.config(), self.root(), name)?;
        Ok(self
            .host_status(host, &self.local_engine(docker_host))
            .await)
    }

    /// Adds `[hosts.NAME]` to girofle.toml (comments and layout kept). The engine is not
    /// asked: a host may be declared before its engine runs (`host show` says).
    ///
    /// # Errors
    /// `InvalidInput` for a bad table, `AlreadyExists` when the host is there, `Io` when
    /// the file cannot be written.
    pub fn host_add(&self, name: &str, host: HostConfig) -> Result<HostAdded> {
        let path = Config::path(self.root());
        let text = read_config(&path)?;
        let out = add_to_text(&text, &path, name, &host)?;
        crate::fsutil::write_atomic(&path, out.as_bytes(), 0o600)?;
        Ok(HostAdded {
            name: name.to_string(),
            host,
            config: path,
        })
    }

    /// Removes `[hosts.NAME]` from girofle.toml, refused while this root has instances on
    /// that engine; an engine that does not answer is removed only with `force`.
    ///
    /// # Errors
    /// `NotFound` when there is no such host, `InvalidInput` for `local`, `Conflict`
    /// naming the instances still there or saying the engine could not be asked.
    pub async fn host_remove(&self, name: &str, force: bool) -> Result<HostRemoved> {
        let host = host(self.config(), self.root(), name)?;
        let Some(config) = &host.config else {
            return Err(Error::invalid(
                "host",
                "`local` is this machine's engine ([docker] and [network] in girofle.toml) and cannot be removed",
            ));
        };
        let asked = match connect(name, config).await {
            Ok(rt) => tokio::time::timeout(PROBE_WAIT, self.instances_on(&(Arc::new(rt) as _)))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::backend(
                        "Docker engine",
                        format!("no answer within {} s", PROBE_WAIT.as_secs()),
                    ))
                }),
            Err(e) => Err(e),
        };
        let unchecked = match asked {
            Ok(instances) if instances.is_empty() => false,
            Ok(instances) => {
                return Err(Error::Conflict(format!(
                    "host `{name}` still has instances: {}; decommission or move them first (`girofle instance rm NAME`)",
                    instances.join(", ")
                )))
            }
            Err(e) if force => {
                let _ = e;
                true
            }
            Err(e) => {
                return Err(Error::Conflict(format!(
                    "host `{name}`: cannot check it has no instances left ({e}); start its engine and try again, or pass --force to remove it unchecked"
                )))
            }
        };
        let path = Config::path(self.root());
        let text = read_config(&path)?;
        let out = remove_from_text(&text, &path, name)?;
        crate::fsutil::write_atomic(&path, out.as_bytes(), 0o600)?;
        Ok(HostRemoved {
            name: name.to_string(),
            unchecked,
            config: path,
        })
    }
}

/// A host as the operations see it: the implicit local one or a `[hosts.NAME]`.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// `None` for [`LOCAL_HOST`], whose engine is the root's own.
    pub config: Option<HostConfig>,
    pub pool: NetworkConfig,
    pub data_dir: String,
    pub labels: BTreeMap<String, String>,
}

impl Host {
    /// Whether this is the implicit host of `[docker]` and `[network]`.
    pub fn is_local(&self) -> bool {
        self.config.is_none()
    }
}

/// Every host of the configuration: [`LOCAL_HOST`] first, then `[hosts.*]` in name order.
pub fn hosts(config: &Config, root: &Path) -> Vec<Host> {
    let mut out = vec![Host {
        name: LOCAL_HOST.to_string(),
        config: None,
        pool: config.network.clone(),
        data_dir: root.join("instances").display().to_string(),
        labels: BTreeMap::new(),
    }];
    out.extend(config.hosts.iter().map(|(name, h)| Host {
        name: name.clone(),
        config: Some(h.clone()),
        pool: NetworkConfig {
            ips: h.ips.clone(),
            ports: h.ports.clone(),
        },
        data_dir: h.data_dir.clone(),
        labels: h.labels.clone(),
    }));
    out
}

/// The host called `name`.
///
/// # Errors
/// `NotFound` listing the hosts there are.
pub fn host(config: &Config, root: &Path, name: &str) -> Result<Host> {
    let all = hosts(config, root);
    let names: Vec<String> = all.iter().map(|h| h.name.clone()).collect();
    all.into_iter().find(|h| h.name == name).ok_or_else(|| {
        Error::not_found(
            format!("host `{name}`"),
            format!(
                "the hosts are {}; add one with `girofle host add {name} --engine URL ...`",
                names.join(", ")
            ),
        )
    })
}

/// `text` (a girofle.toml) with a `[hosts.NAME]` table appended: the user's text is kept
/// byte for byte (toml_edit would insert the table before the comments that end the
/// file, tearing them from the table they describe). The result is checked as a whole
/// configuration before it is returned.
///
/// # Errors
/// `AlreadyExists` when the host is there, `InvalidInput` when the table is wrong or the
/// text is not TOML.
pub fn add_to_text(text: &str, path: &Path, name: &str, host: &HostConfig) -> Result<String> {
    host.validate(name)?;
    let doc = parse_doc(text, path)?;
    match doc.get("hosts") {
        Some(h) if !h.is_table_like() => {
            return Err(Error::invalid(
                format!("`hosts` ({})", path.display()),
                "is not a table; write hosts as [hosts.NAME] tables",
            ))
        }
        Some(h) if h.get(name).is_some() => {
            return Err(Error::already_exists(
                format!("host `{name}`"),
                format!(
                    "it is in {}; remove it first (`girofle host rm {name}`) or pick another name",
                    path.display()
                ),
            ))
        }
        _ => {}
    }
    let value = toml_edit::ser::to_document(host)
        .map_err(|e| Error::invalid(format!("hosts.{name}"), e.to_string()))?;
    let mut table = value.as_table().clone();
    // `tls` and `labels` read best inline, on one line each.
    for key in ["tls", "labels"] {
        if let Some(item) = table.get_mut(key) {
            if let Some(t) = item.as_table() {
                *item = toml_edit::value(t.clone().into_inline_table());
            }
        }
    }
    let mut hosts = toml_edit::Table::new();
    hosts.set_implicit(true);
    hosts.insert(name, toml_edit::Item::Table(table));
    let mut new = toml_edit::DocumentMut::new();
    new.insert("hosts", toml_edit::Item::Table(hosts));
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&new.to_string());
    Config::parse(&out, path)?;
    Ok(out)
}

/// `text` without the `[hosts.NAME]` table: its lines, from its header to the next
/// table's, are cut out and everything else is kept byte for byte (comments just above
/// the next header stay: they describe that table; toml_edit would take the comments
/// above `[hosts.NAME]` away with it, though they may end the table before it).
///
/// # Errors
/// `NotFound` when there is no such host, `InvalidInput` when the text is not TOML.
pub fn remove_from_text(text: &str, path: &Path, name: &str) -> Result<String> {
    let mut doc = parse_doc(text, path)?;
    let present = doc
        .get("hosts")
        .and_then(|h| h.as_table_like())
        .is_some_and(|h| h.contains_key(name));
    if !present {
        return Err(Error::not_found(
            format!("host `{name}`"),
            format!(
                "{} has no [hosts.{name}]; `girofle host list` shows the hosts",
                path.display()
            ),
        ));
    }
    let ours = format!("hosts.{name}");
    let mut kept: Vec<&str> = Vec::new();
    let mut cut: Vec<&str> = Vec::new();
    let mut cutting = false;
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if let Some(header) = header_of(line) {
            if header == ours || header.starts_with(&format!("{ours}.")) {
                cutting = true;
                found = true;
                cut.clear();
                continue;
            }
            if cutting {
                // Comments right above the next header are that table's.
                let keep_from = cut
                    .iter()
                    .rposition(|l| !l.trim_start().starts_with('#'))
                    .map_or(0, |i| i + 1);
                kept.extend(&cut[keep_from..]);
                cut.clear();
            }
            cutting = false;
        }
        if cutting {
            cut.push(line);
        } else {
            kept.push(line);
        }
    }
    let out = if found {
        let mut out: String = kept.concat();
        if cutting {
            // It was the last table: drop the blank lines that led to it.
            let trimmed = out.trim_end().len();
            out.truncate(trimmed);
            out.push('\n');
        }
        out
    } else {
        // Written inline (`[hosts]` then `NAME = { ... }`): toml_edit removes the entry.
        if let Some(h) = doc.get_mut("hosts").and_then(|h| h.as_table_like_mut()) {
            h.remove(name);
        }
        doc.to_string()
    };
    let config = Config::parse(&out, path)?;
    if config.hosts.contains_key(name) {
        return Err(Error::invalid(
            path.display().to_string(),
            format!("could not cut [hosts.{name}] out of the file; remove it by hand"),
        ));
    }
    Ok(out)
}

/// The dotted name of the table a `[header]` line opens, without spaces and quotes.
fn header_of(line: &str) -> Option<String> {
    let l = line.trim();
    let inner = l.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let inner = inner.split(']').next()?;
    (!inner.trim().is_empty()).then(|| inner.replace([' ', '"', '\''], ""))
}

fn parse_doc(text: &str, path: &Path) -> Result<toml_edit::DocumentMut> {
    text.parse::<toml_edit::DocumentMut>().map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("TOML syntax: {}", e.message()),
        )
    })
}

fn read_config(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ips: &[&str], ports: &[&str]) -> NetworkConfig {
        NetworkConfig {
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ports: ports.iter().map(|p| (*p).to_string()).collect(),
        }
    }

    #[test]
    fn free_addresses_count_what_the_engine_publishes_in_the_pool() {
        let p = pool(&["10.0.0.1", "10.0.0.2"], &["100-109", "200"]);
        let published = [
            ("10.0.0.1".to_string(), 100),
            ("10.0.0.1".to_string(), 100), // IPv4 and IPv6 listings of one port
            ("10.0.0.9".to_string(), 101), // another address: not the pool's
            ("0.0.0.0".to_string(), 200),  // every address
            ("10.0.0.2".to_string(), 300), // outside the ports
        ];
        assert_eq!(pool_counts(&p, &published).unwrap(), (22, 3));
    }

    const GOOD: &str = r#"
[hosts.a]
engine = "tcp://10.0.0.5:2376"
tls = { dir = "/etc/girofle/hosts/a" }
ips = ["10.0.0.5"]
ports = ["20080-20999"]
data_dir = "/var/lib/girofle"
labels = { zone = "b" }
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("g.toml"))
    }

    #[test]
    fn a_root_without_hosts_has_the_local_one_only() {
        let c = parse("").unwrap();
        let all = hosts(&c, Path::new("/r"));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, LOCAL_HOST);
        assert!(all[0].is_local());
        assert_eq!(all[0].data_dir, "/r/instances");
        assert_eq!(all[0].pool.ips, c.network.ips);
        let c = parse(GOOD).unwrap();
        assert_eq!(hosts(&c, Path::new("/r"))[1].name, "a");
        assert!(host(&c, Path::new("/r"), "zz")
            .unwrap_err()
            .to_string()
            .contains("local, a"));
    }

    #[test]
    fn add_and_remove_keep_comments() {
        let text = "# my fleet\n[network]\n# only loopback\nips = [\"127.0.0.1\"]\nports = [\"20080-20999\"]\n";
        let h: HostConfig = toml::from_str(&GOOD.replace("[hosts.a]\n", "")).unwrap();
        let p = Path::new("g.toml");
        let added = add_to_text(text, p, "a", &h).unwrap();
        assert!(added.starts_with(text), "{added}");
        assert!(added.ends_with("\n\n[hosts.a]\nengine = \"tcp://10.0.0.5:2376\"\ntls = { dir = \"/etc/girofle/hosts/a\" }\nips = [\"10.0.0.5\"]\nports = [\"20080-20999\"]\ndata_dir = \"/var/lib/girofle\"\nlabels = { zone = \"b\" }\n"), "{added}");
        assert!(!added.contains("[hosts]\n"), "{added}");
        assert_eq!(parse(&added).unwrap().hosts["a"], h);
        let again = add_to_text(&added, p, "a", &h).unwrap_err().to_string();
        assert!(
            again.contains("already exists") && again.contains("host rm"),
            "{again}"
        );
        let removed = remove_from_text(&added, p, "a").unwrap();
        assert_eq!(removed.trim_end(), text.trim_end());
        // The comments that end a file stay where they are (after [trust] here).
        let dir = tempfile::tempdir().unwrap();
        Config::write_default(dir.path()).unwrap();
        let default = &std::fs::read_to_string(Config::path(dir.path())).unwrap();
        let added = add_to_text(default, p, "a", &h).unwrap();
        assert!(added.starts_with(default.as_str()));
        let both = add_to_text(&added, p, "b", &h).unwrap();
        assert!(both.contains("[hosts.a]") && both.contains("[hosts.b]"));
        let one = remove_from_text(&both, p, "a").unwrap();
        assert!(
            one.starts_with(default) && !one.contains("[hosts.a]"),
            "{one}"
        );
        let m = remove_from_text(text, p, "a").unwrap_err().to_string();
        assert!(m.contains("host `a` not found"), "{m}");
    }
}
