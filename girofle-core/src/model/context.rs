//! The context every operation works in: a Girofle root opened with its configuration,
//! container runtime, inventory and journal, and the few things every operation asks of
//! them (timeouts, the secrets an error must not show, a backup store by name, and
//! `journaled`, which records an operation however it ends and then notifies).
//!
//! The public face of it is the front door, [`crate::Girofle`]; operations take a
//! `&Context` so they never depend on the front door that calls them.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::adapters::inventory::{EtcdInventory, Inventory, SqliteInventory};
use crate::adapters::runtime::ContainerRuntime;
use crate::adapters::store::{local_store, open_store, BackupStore, LOCAL_STORE_NAME};
use crate::error::{Error, IoContext, Result};
use crate::model::config::Config;
use crate::model::files::{Files, Site};
use crate::model::fingerprint::FingerprintKey;
use crate::model::instance::{self, HealthSettings};
use crate::model::journal::{self, Journal, Record};
use crate::model::signing::{key_info, load_trusted_keys, KeyInfo, TrustedKeys};

/// A Girofle root opened: what every operation works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) root: PathBuf,
    pub(crate) config: Config,
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) inventory: Arc<dyn Inventory>,
    pub(crate) journal: Journal,
    /// Where the directories of the instances this context acts on are: the root's own
    /// (the root as opened), or a host's reached through its engine (`on_host`).
    pub(crate) site: Site,
    /// The engines of `[hosts]` connected so far, shared by every clone.
    engines: Arc<Mutex<HashMap<String, Arc<dyn ContainerRuntime>>>>,
}

/// Makes the root 0700: instance data, the configuration and the inventory are
/// reachable through it by its owner only (dockerd, running as root, needs no more for
/// the bind mounts). A read-only root is left as it is: its writes fail with their own
/// message.
fn make_root_private(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(root).ctx("read", root)?;
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    match std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)) {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
        other => other.ctx("make private (chmod 0700)", root),
    }
}

impl Context {
    /// Prepares a root: directories, default `girofle.toml` (unless present), the
    /// inventory and the fleet's signing key (`keys/`). Idempotent. Returns whether a configuration was written.
    ///
    /// # Errors
    /// `Io` when the root cannot be written, `InvalidInput` when the root is a file or an
    /// existing configuration is malformed.
    pub fn init(root: &Path) -> Result<bool> {
        if let Some(e) = crate::model::config::root_not_a_directory(root) {
            return Err(e);
        }
        for d in ["instances", "backups", "decommissioned", "locks", "staging"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).ctx("create directory", &p)?;
        }
        make_root_private(root)?;
        let wrote = Config::write_default(root)?;
        Config::load(root)?;
        SqliteInventory::open(&root.join("inventory.db"))?;
        // The fleet's signing key: every backup's manifest is signed with it.
        crate::model::signing::ensure_key(root)?;
        FingerprintKey::of_root(root)?;
        Ok(wrote)
    }

    /// Opens a root with a given runtime (another engine, or a test double), on the
    /// inventory its configuration names: etcd when `[inventory] etcd` lists members,
    /// otherwise the root's own SQLite file.
    ///
    /// # Errors
    /// `Backend` when the inventory cannot be opened, `InvalidInput` when the etcd
    /// password cannot be read.
    pub fn with_parts(
        root: &Path,
        config: Config,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<Self> {
        let root = std::path::absolute(root).ctx("resolve", root)?;
        make_root_private(&root)?;
        let inventory: Arc<dyn Inventory> = match config.inventory.etcd_settings()? {
            Some(settings) => Arc::new(EtcdInventory::new(settings)),
            None => Arc::new(SqliteInventory::open(&root.join("inventory.db"))?),
        };
        Self::with_backends(&root, config, runtime, inventory)
    }

    /// Opens a root with a given runtime and inventory (other backends, or the doubles
    /// of the tests). The root is still a directory: the journal, intent records, locks
    /// and instance data live there.
    ///
    /// # Errors
    /// `Io` when the root cannot be resolved or made private, or its signing key made.
    pub fn with_backends(
        root: &Path,
        config: Config,
        runtime: Arc<dyn ContainerRuntime>,
        inventory: Arc<dyn Inventory>,
    ) -> Result<Self> {
        let root = std::path::absolute(root).ctx("resolve", root)?;
        make_root_private(&root)?;
        // A root made before backups were signed gets its key on first open.
        crate::model::signing::ensure_key(&root)?;
        Ok(Context {
            journal: Journal::new(&root),
            site: Site::Local { base: root.clone() },
            root,
            config,
            runtime,
            inventory,
            engines: Arc::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// The inventory.
    pub fn inventory(&self) -> &Arc<dyn Inventory> {
        &self.inventory
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Uses `runtime` as the engine of host `name` (instead of connecting to its
    /// `[hosts.NAME] engine`): another client of the same engine, or a test double.
    pub fn set_host_engine(&self, name: &str, runtime: Arc<dyn ContainerRuntime>) {
        self.engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), runtime);
    }

    /// The engine of host `name` (`local`: the root's own), connected on first use.
    ///
    /// # Errors
    /// `NotFound` naming the hosts when there is no `[hosts.NAME]`, `Backend` when its
    /// engine does not answer, `InvalidInput` for incomplete certificates.
    pub async fn host_engine(&self, name: &str) -> Result<Arc<dyn ContainerRuntime>> {
        if name == crate::record::LOCAL_HOST_NAME {
            return Ok(self.runtime.clone());
        }
        let known = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(engine) = known {
            return Ok(engine);
        }
        let config = self.config.host(name)?;
        let engine: Arc<dyn ContainerRuntime> =
            Arc::new(crate::model::hosts::connect(name, config).await?);
        self.set_host_engine(name, engine.clone());
        Ok(engine)
    }

    /// This context moved to host `host` (`None`: the root's own): the host's engine, and
    /// its directories reached through local paths here or through the engine there, by
    /// helper containers of `image` (an image already on that engine).
    ///
    /// # Errors
    /// As [`Context::host_engine`].
    pub(crate) async fn on_host(&self, host: Option<&str>, image: &str) -> Result<Context> {
        let mut here = self.clone();
        match host.filter(|h| *h != crate::record::LOCAL_HOST_NAME) {
            None => {
                here.runtime = self.host_engine(crate::record::LOCAL_HOST_NAME).await?;
                here.site = Site::Local {
                    base: self.root.clone(),
                };
            }
            Some(name) => {
                here.runtime = self.host_engine(name).await?;
                let config = self.config.host(name)?;
                here.site = Site::Engine {
                    host: name.to_string(),
                    root: crate::adapters::runtime::HostRoot::new(
                        config.data_dir.trim_end_matches('/'),
                        image,
                    ),
                };
            }
        }
        Ok(here)
    }

    /// This context moved to the host of an instance (see [`Context::on_host`]).
    ///
    /// # Errors
    /// As [`Context::host_engine`].
    pub(crate) async fn at(&self, record: &crate::record::InstanceRecord) -> Result<Context> {
        self.on_host(record.host.as_deref(), &record.image).await
    }

    /// The address pool of this context's host: `[network]` here, `[hosts.NAME]` there.
    ///
    /// # Errors
    /// `NotFound` when the host's table is gone from girofle.toml.
    pub(crate) fn pool(&self) -> Result<crate::model::config::NetworkConfig> {
        match &self.site {
            Site::Local { .. } => Ok(self.config.network.clone()),
            Site::Engine { host, .. } => {
                let h = self.config.host(host)?;
                Ok(crate::model::config::NetworkConfig {
                    ips: h.ips.clone(),
                    ports: h.ports.clone(),
                })
            }
        }
    }

    /// The instances of `fleet` on this context's host: the ones whose addresses a new
    /// instance here must not take (another host's addresses are that machine's).
    pub(crate) fn fleet_here(
        &self,
        fleet: &crate::adapters::inventory::Fleet,
    ) -> crate::adapters::inventory::Fleet {
        let host = self.site.host();
        crate::adapters::inventory::Fleet {
            instances: fleet
                .instances
                .iter()
                .filter(|(_, r)| r.host_name() == host)
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
        }
    }

    /// The files of this context's site.
    pub(crate) fn files(&self) -> Files<'_> {
        Files {
            site: &self.site,
            runtime: self.runtime.as_ref(),
        }
    }

    /// This context's site as a directory its engine's helper containers (of `image`)
    /// reach: the host's data directory, or the root here.
    pub(crate) fn host_root(&self, image: &str) -> crate::adapters::runtime::HostRoot {
        self.site.host_root(image)
    }

    /// `path` (on this context's site) relative to [`Context::host_root`].
    ///
    /// # Errors
    /// `InvalidInput` when it is not below it.
    pub(crate) fn relative(&self, path: &Path) -> Result<String> {
        Files::relative(&self.host_root(""), path)
    }

    /// The directories of instance `name` on this context's site.
    pub(crate) fn instance_dirs(&self, name: &str) -> instance::InstanceDirs {
        instance::InstanceDirs::new(&self.site.base(), name)
    }

    /// Refuses an operation that reaches an instance's files through local paths only
    /// (not yet through its host's engine) when this context is on another host.
    ///
    /// # Errors
    /// `InvalidInput` naming the operation and the host.
    pub(crate) fn local_only(&self, operation: &str) -> Result<()> {
        match &self.site {
            Site::Local { .. } => Ok(()),
            Site::Engine { host, .. } => Err(Error::invalid(
                "host",
                format!(
                    "this instance runs on host `{host}`, whose files Girofle reaches only through its engine, and Girofle cannot yet {operation} an instance there (it does so through this machine's paths); move it to this machine first (`girofle instance move NAME --to local`)"
                ),
            )),
        }
    }

    /// Takes the lock of instance `name` for `operation` where this fleet keeps its locks
    /// (etcd or the root), or fails at once naming the holder. Operations go through
    /// `lock_instance`, which also finishes what a dead operation left.
    pub(crate) async fn take_lock(
        &self,
        name: &str,
        operation: &str,
    ) -> Result<crate::model::lock::InstanceLock> {
        crate::model::lock::InstanceLock::acquire_for(
            self.inventory.as_ref(),
            &self.root,
            name,
            operation,
        )
        .await
    }

    pub(crate) fn health(&self, timeout: Option<Duration>) -> HealthSettings {
        HealthSettings {
            interval: Duration::from_secs(self.config.instances.health_interval_secs),
            boot_timeout: timeout.unwrap_or(self.boot_timeout()),
            stop_grace: self.stop_grace(),
        }
    }

    pub(crate) fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.config.instances.health_timeout_secs)
    }

    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.config.instances.stop_grace_secs)
    }

    /// Values that must never be written anywhere (store credentials).
    pub(crate) fn known_secrets(&self) -> Vec<String> {
        self.config
            .stores
            .values()
            .filter_map(|s| s.secret_access_key.clone())
            .collect()
    }

    /// The values of every instance's settings (and the strings inside them), which an
    /// error message must not show.
    pub(crate) async fn setting_secrets(&self) -> Vec<String> {
        match self.inventory.load().await {
            Ok(fleet) => {
                instance::setting_values(fleet.instances.values().flat_map(|r| r.settings.values()))
            }
            Err(_) => Vec::new(),
        }
    }

    /// Runs `op` and appends its journal record, whatever the outcome. The error, as
    /// journaled and as returned, holds no store credential and no setting's value.
    pub(crate) async fn journaled<T, F>(
        &self,
        operation: &str,
        arguments: Value,
        versions: Value,
        op: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let started_at = Utc::now();
        let (result, nested) = crate::model::notify::scoped(op).await;
        let result = match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut secrets = self.known_secrets();
                secrets.extend(self.setting_secrets().await);
                Err(e.scrubbed(&secrets))
            }
        };
        let (outcome, error_kind, error) = match &result {
            Ok(_) => ("ok", None, None),
            Err(e) => ("error", Some(e.kind().to_string()), Some(e.to_string())),
        };
        let record = Record {
            operation: operation.to_string(),
            arguments,
            user: journal::current_user(),
            host: journal::host_name(),
            pid: std::process::id(),
            girofle_version: crate::VERSION.to_string(),
            versions,
            started_at,
            ended_at: Utc::now(),
            outcome: outcome.to_string(),
            error_kind,
            error,
        };
        // A journal that cannot be written must not hide the operation's own result.
        let journaled = self.journal.append(&record, &self.known_secrets());
        self.journal_to_fleet(&record).await;
        // A webhook that is down must not fail the operation: `notify` logs it.
        crate::model::notify::after_operation(
            &self.config.notify,
            &self.known_secrets(),
            &record,
            nested,
        )
        .await;
        match journaled {
            // A full or read-only file system: the operation happened (a prune freeing
            // space, a verify), and failing it now would misstate its outcome.
            Err(Error::Io { source, .. }) if crate::fsutil::is_unwritable(&source) => {
                eprintln!(
                    "girofle: warning: `{operation}` is not journaled: {}: {source}",
                    self.journal.path().display()
                );
            }
            Err(e) if result.is_ok() => return Err(e),
            _ => {}
        }
        result
    }

    /// With the inventory on etcd, the record goes to the fleet's journal there too, where
    /// `girofle journal` on any machine reads it. The root's file keeps it in any case: a
    /// failure here is a warning.
    async fn journal_to_fleet(&self, record: &Record) {
        let Some(etcd) = self.inventory.as_etcd() else {
            return;
        };
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = format!(
            "{}/{}/{}/{}",
            record.started_at.format(journal::KEY_TIME),
            record.host,
            record.pid,
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let written = match Journal::line(record, &self.known_secrets()) {
            Ok(line) => etcd.append_journal(&key, &line).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            eprintln!(
                "girofle: warning: `{}` is journaled in {} only, not in the fleet's journal on etcd: {e}",
                record.operation,
                self.journal.path().display()
            );
        }
    }

    /// The fleet's journal, oldest first: every machine's records when the inventory is on
    /// etcd, this root's otherwise; those `query` asks for.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Io`/`Corrupt` when the file cannot be read,
    /// `InvalidInput` for a bad instance name.
    pub async fn journal_records(&self, query: &journal::JournalQuery) -> Result<Vec<Record>> {
        if let Some(name) = &query.instance {
            crate::record::validate_name(name)?;
        }
        let since = query.since;
        let mut records = match self.inventory.as_etcd() {
            Some(etcd) => {
                let from = since.map(|t| t.format(journal::KEY_TIME).to_string());
                etcd.journal_lines(from.as_deref())
                    .await?
                    .iter()
                    .map(|l| {
                        serde_json::from_str::<Record>(l).map_err(|e| {
                            Error::corrupt(
                                "a record of the fleet's journal on etcd",
                                format!("{e}: {}", crate::text::scrub_text(l)),
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            }
            None => self.journal.read_all()?,
        };
        records.retain(|r| query.matches(r));
        Ok(records)
    }

    /// Opens a store by name: `local` (built in, `<root>/backups`) or one of `[stores]`.
    ///
    /// # Errors
    /// `NotFound` naming the configured stores.
    pub fn store(&self, name: Option<&str>) -> Result<Arc<dyn BackupStore>> {
        match name.unwrap_or(LOCAL_STORE_NAME) {
            LOCAL_STORE_NAME => local_store(&self.root.join("backups")),
            other => match self.config.stores.get(other) {
                Some(config) => open_store(other, config),
                None => Err(Error::not_found(
                    format!("store `{other}`"),
                    format!(
                        "the stores are: local{}; add [stores.{other}] to girofle.toml",
                        self.config
                            .stores
                            .keys()
                            .map(|k| format!(", {k}"))
                            .collect::<String>()
                    ),
                )),
            },
        }
    }
}

impl Context {
    /// The keys this fleet trusts (its own, `[trust] keys`, `keys/trusted`).
    pub(crate) fn trusted_keys(&self) -> Result<TrustedKeys> {
        load_trusted_keys(&self.root, &self.config)
    }

    /// The fleet's public key and the keys it trusts.
    pub(crate) fn public_key(&self) -> Result<KeyInfo> {
        key_info(&self.root)
    }
}
