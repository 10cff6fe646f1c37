//! The front door: [`Girofle`], opened on a root, is the whole library as the CLI, the
//! Python module and users' programs see it.
//!
//! Each operation here is a short method handing over to the module that does the work:
//! the instance lifecycle to `ops::fleet`, backups to `ops::backup`, restores to
//! `ops::restore`, recovery to `ops::recovery`, schedules to `service::schedule`, the
//! fleet's status to `service::status`, state export and import to `service::state`. They
//! all work on a [`Context`] (the opened root), which never depends on this file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use std::sync::Arc;

use crate::adapters::inventory::Inventory;
use crate::adapters::runtime::{ContainerRuntime, DockerRuntime};
use crate::adapters::store::BackupStore;
use crate::error::Result;
use crate::model::config::Config;
use crate::model::context::Context;
use crate::model::fingerprint::FingerprintKey;
use crate::model::hosts::HostConfig;
use crate::model::instance::InstanceRecord;
use crate::model::journal::Journal;
use crate::model::signing::{KeyInfo, TrustedKeys};
use crate::ops::backup::{
    BackupEntry, BackupOptions, BackupReport, BackupScan, Copied, Manifest, Retention, SignReport,
    Verified,
};
use crate::ops::fleet::{CommissionRequest, DecommissionOptions, Decommissioned, InstanceStatus};
use crate::ops::hosts::{Drained, HostAdded, HostRemoved, HostStatus};
use crate::ops::moving::{MoveRequest, Moved};
use crate::ops::recovery::{InstanceListing, Recovery};
use crate::ops::restore::{DrillReport, RestoreReport, RestoreRequest};
use crate::service::daemon::{DaemonOptions, DaemonReport};
use crate::service::migrate::{MigrateTo, Migrated};
use crate::service::schedule::{
    Book, InstallOptions, Installed, RunDueReport, RunHook, Schedule, ScheduleOverrides,
    ScheduleStatus,
};
use crate::service::state::StateReport;
use crate::service::status::FleetStatus;

/// How to open a root.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Docker engine address; overrides `[docker] host` and `$DOCKER_HOST`.
    pub docker_host: Option<String>,
}

/// A root prepared by [`Girofle::init`].
///
/// The fields are in name order, as the CLI's `--json` printed them before this type
/// existed (a `serde_json` map sorts its keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Initialised {
    /// Whether a default `girofle.toml` was written (`false`: one was there, kept).
    pub config_written: bool,
    /// The root, as given.
    pub root: PathBuf,
}

/// Girofle opened on a root directory.
#[derive(Debug, Clone)]
pub struct Girofle {
    ctx: Context,
    /// The engine address `open` was told (`--docker-host`), for `host list`'s `local`.
    docker_host: Option<String>,
}

impl Girofle {
    /// Prepares a root: directories, default `girofle.toml` (unless present), the
    /// inventory and the fleet's signing key (`keys/`). Idempotent. Says whether a
    /// configuration was written.
    ///
    /// # Errors
    /// `Io` when the root cannot be written, `InvalidInput` when the root is a file or an
    /// existing configuration is malformed.
    pub fn init(root: &Path) -> Result<Initialised> {
        let config_written = Context::init(root)?;
        Ok(Initialised {
            config_written,
            root: root.to_path_buf(),
        })
    }

    /// Opens an initialised root, connecting to the Docker engine.
    ///
    /// # Errors
    /// `NotFound` when the root is not initialised, `InvalidInput` for a bad configuration,
    /// `Backend` when the engine cannot be reached.
    pub async fn open(root: &Path, options: OpenOptions) -> Result<Self> {
        let config = Config::load(root)?;
        let host = options.docker_host.or_else(|| config.docker.host.clone());
        let runtime = Arc::new(DockerRuntime::connect(host.as_deref()).await?);
        let mut g = Self::with_parts(root, config, runtime)?;
        g.docker_host = host;
        Ok(g)
    }

    /// Opens a root with a given runtime (another engine, or a test double).
    ///
    /// # Errors
    /// `Backend` when the inventory cannot be opened.
    pub fn with_parts(
        root: &Path,
        config: Config,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> Result<Self> {
        Ok(Girofle {
            ctx: Context::with_parts(root, config, runtime)?,
            docker_host: None,
        })
    }

    /// Opens a root with a given runtime and inventory (other backends, or the doubles of
    /// the tests: `MemoryRuntime` and `MemoryInventory` with the `conformance` feature).
    ///
    /// # Errors
    /// `Io` when the root cannot be resolved or made private, or its signing key made.
    pub fn with_backends(
        root: &Path,
        config: Config,
        runtime: Arc<dyn ContainerRuntime>,
        inventory: Arc<dyn Inventory>,
    ) -> Result<Self> {
        Ok(Girofle {
            ctx: Context::with_backends(root, config, runtime, inventory)?,
            docker_host: None,
        })
    }

    /// The opened root every operation works on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    // The root: model/context.rs

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.ctx.root()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.ctx.config()
    }

    /// The container runtime.
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        self.ctx.runtime()
    }

    /// The inventory.
    pub fn inventory(&self) -> &Arc<dyn Inventory> {
        self.ctx.inventory()
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        self.ctx.journal()
    }

    /// Opens a store by name: `local` (built in, `<root>/backups`) or one of `[stores]`.
    ///
    /// # Errors
    /// `NotFound` naming the configured stores.
    pub fn store(&self, name: Option<&str>) -> Result<Arc<dyn BackupStore>> {
        self.ctx.store(name)
    }

    // Instances: ops/fleet/ (list and show recover first: ops/recovery.rs)

    /// Commissions a new instance and waits until it is healthy; returns its record (the
    /// URL is `external_url`). On any failure nothing is left behind: no container, no
    /// directories, no inventory record, no address held.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name/setting/address, `AlreadyExists` for a taken name,
    /// `Conflict` for a taken address, `NotFound` for a missing image, `Unhealthy` when it
    /// does not turn healthy in time.
    pub async fn commission(&self, request: CommissionRequest) -> Result<InstanceRecord> {
        self.ctx.commission(request).await
    }

    /// The instances of this root, reconciled with what the engine really has.
    ///
    /// # Errors
    /// `Backend` when the inventory or the engine cannot be read.
    pub async fn list(&self) -> Result<Vec<InstanceStatus>> {
        self.ctx.list().await
    }

    /// [`Girofle::list`], with what recovery did first: operations that died half-way
    /// are put right before the listing (one directory read when there are none), so it
    /// shows what will stay. A recovery that failed leaves its instance as it found it
    /// (often listed `missing`) and is reported here with its error, for the caller to
    /// say so; `girofle recover` tries again.
    ///
    /// # Errors
    /// As [`Girofle::list`].
    pub async fn list_with_recoveries(&self) -> Result<InstanceListing> {
        let (instances, recoveries) = self.ctx.list_with_recoveries().await?;
        Ok(InstanceListing {
            instances,
            recoveries,
        })
    }

    /// One instance, reconciled with the engine.
    ///
    /// # Errors
    /// `NotFound` when the inventory has no such instance.
    pub async fn show(&self, name: &str) -> Result<InstanceStatus> {
        self.ctx.show(name).await
    }

    /// [`Girofle::show`] with the settings' values in clear (everywhere else they are
    /// `[REDACTED]`). Journaled as `reveal`, with the name only.
    ///
    /// # Errors
    /// As [`Girofle::show`].
    pub async fn show_revealed(&self, name: &str) -> Result<InstanceStatus> {
        self.ctx.show_revealed(name).await
    }

    /// The fleet's key for fingerprints of setting values (created on first use).
    ///
    /// # Errors
    /// `Io` when it cannot be read or created.
    pub fn fingerprint_key(&self) -> Result<FingerprintKey> {
        self.ctx.fingerprint_key()
    }

    /// Starts an instance and waits healthy. A container removed behind Girofle's back is
    /// created again from the inventory (the data directories are untouched).
    ///
    /// # Errors
    /// `NotFound` for an unknown instance, `Unhealthy` when it does not turn healthy.
    pub async fn start(&self, name: &str) -> Result<InstanceRecord> {
        self.ctx.start(name).await
    }

    /// Stops an instance (GitLab gets the configured grace period to shut down).
    ///
    /// # Errors
    /// `NotFound` for an unknown instance or a missing container.
    pub async fn stop(&self, name: &str) -> Result<InstanceRecord> {
        self.ctx.stop(name).await
    }

    /// Stops then starts an instance and waits healthy.
    ///
    /// # Errors
    /// As `stop` and `start`.
    pub async fn restart(&self, name: &str) -> Result<InstanceRecord> {
        self.ctx.restart(name).await
    }

    /// Sets (and unsets) managed `gitlab.rb` settings, runs `gitlab-ctl reconfigure`, waits
    /// healthy. When GitLab refuses the new file, the previous one is put back and
    /// reconfigured, and the error says why.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed setting, `Conflict` when the instance is busy or has
    /// not booted yet, `Command` when GitLab refuses the settings.
    pub async fn reconfigure(
        &self,
        name: &str,
        set: &[String],
        unset: &[String],
    ) -> Result<InstanceRecord> {
        self.ctx.reconfigure(name, set, unset).await
    }

    /// Decommissions an instance: a final backup (unless asked not to), stop and remove the
    /// container, move the data to `<root>/decommissioned/<name>-<timestamp>/` (or delete
    /// it with `purge`), free its addresses.
    ///
    /// # Errors
    /// `NotFound` for an unknown instance, `Conflict` when busy; a failed final backup
    /// aborts the decommission with nothing changed.
    pub async fn decommission(
        &self,
        name: &str,
        options: DecommissionOptions,
    ) -> Result<Decommissioned> {
        self.ctx.decommission(name, options).await
    }

    /// Moves an instance to another host: its data streamed from engine to engine, the
    /// same name, its addresses when the target's pool allows; the old data kept aside on
    /// the old host (unless `purge`). Any failure before the switch leaves the old instance
    /// running with its data untouched.
    ///
    /// # Errors
    /// `NotFound` for an unknown instance or host, or the image absent on the target;
    /// `InvalidInput` when it is already there; `Conflict` when busy; `Unhealthy` when
    /// the moved instance does not serve or fails GitLab's checks (rolled back).
    pub async fn move_instance(&self, request: MoveRequest) -> Result<Moved> {
        self.ctx.move_instance(request).await
    }

    // Backups: ops/backup/

    /// Takes a backup of an instance into a store.
    ///
    /// # Errors
    /// `NotFound` for an unknown instance or store, `Conflict` when another operation
    /// holds the instance or an online backup finds it unhealthy, `Command` when
    /// `gitlab-backup` fails, `Io`/`Backend` when writing fails (nothing is listed then).
    pub async fn backup(&self, name: &str, options: BackupOptions) -> Result<BackupReport> {
        self.ctx.backup(name, options).await
    }

    /// Reads and checks a backup's manifest and its signature.
    ///
    /// # Errors
    /// `NotFound` when there is no such backup, `Corrupt` when the manifest is damaged or
    /// not signed by a trusted key.
    pub async fn manifest(&self, id: &str, store: Option<&str>) -> Result<Manifest> {
        self.ctx.manifest(id, store).await
    }

    /// The backups in a store (of one instance, or all), oldest first. A backup whose
    /// manifest is damaged, or whose archive is missing or of the wrong size, is not
    /// listed. Unsigned and untrusted ones are, saying so (`signed`); only trusted ones
    /// restore. Needs no secret key.
    ///
    /// # Errors
    /// `NotFound` for an unknown store, `Backend` when it cannot be listed.
    pub async fn list_backups(
        &self,
        name: Option<&str>,
        store: Option<&str>,
    ) -> Result<Vec<BackupEntry>> {
        self.ctx.list_backups(name, store).await
    }

    /// As [`list_backups`](Self::list_backups), and the backups it leaves out because
    /// they are damaged (for the operator to be told: such a backup cannot be restored).
    ///
    /// # Errors
    /// As [`list_backups`](Self::list_backups).
    pub async fn scan_backups(
        &self,
        name: Option<&str>,
        store: Option<&str>,
    ) -> Result<BackupScan> {
        let (backups, damaged) = self.ctx.scan_backups(name, store).await?;
        Ok(BackupScan { backups, damaged })
    }

    /// Checks a backup end to end without restoring it: manifest checksum, archive size
    /// and hash, zstd checksum, every file's hash.
    ///
    /// # Errors
    /// `Corrupt` naming what is damaged, `NotFound` when absent.
    pub async fn verify(&self, id: &str, store: Option<&str>) -> Result<Verified> {
        let manifest = self.ctx.verify(id, store).await?;
        Ok(Verified::of(id, &manifest))
    }

    /// Copies a backup to another store, archive first (its hash checked on the way),
    /// then its signature, manifest last (the same bytes: the signature still matches).
    ///
    /// # Errors
    /// `Corrupt` when the source archive does not match its manifest (nothing is left at
    /// the destination) or the backup is not signed by a trusted key, `NotFound` for an
    /// unknown backup or store.
    pub async fn copy_backup(&self, id: &str, from: Option<&str>, to: &str) -> Result<Copied> {
        let manifest = self.ctx.copy_backup(id, from, to).await?;
        Ok(Copied {
            id: id.to_string(),
            size: manifest.archive.size,
            to: to.to_string(),
        })
    }

    /// Signs a backup with the fleet's key: one made before backups were signed, or one
    /// signed by a key this fleet does not trust, once the operator has checked where it
    /// came from. Checks it end to end first (every hash, as `verify`) and refuses a
    /// damaged one; a backup a trusted key signed already is left as it is.
    ///
    /// # Errors
    /// `Corrupt` when the backup is damaged (no signature is written), `NotFound` for an
    /// unknown backup or store, or when this root has no secret key.
    pub async fn sign_backup(&self, id: &str, store: Option<&str>) -> Result<SignReport> {
        self.ctx.sign_backup(id, store).await
    }

    /// Deletes the backups a retention policy does not keep, per instance, in one store.
    /// The newest backup of an instance is always kept. Returns the deleted ids.
    ///
    /// # Errors
    /// `InvalidInput` when the policy keeps nothing, `NotFound` for an unknown store.
    pub async fn prune(
        &self,
        name: Option<&str>,
        store: Option<&str>,
        policy: Retention,
    ) -> Result<Vec<String>> {
        self.ctx.prune(name, store, policy).await
    }

    // Keys and signatures: model/signing.rs, model/context.rs

    /// The keys this fleet trusts (its own, `[trust] keys`, `keys/trusted`).
    ///
    /// # Errors
    /// As [`TrustedKeys::load`].
    pub fn trusted_keys(&self) -> Result<TrustedKeys> {
        self.ctx.trusted_keys()
    }

    /// The fleet's public key and the keys it trusts.
    ///
    /// # Errors
    /// As [`key_info`].
    pub fn public_key(&self) -> Result<KeyInfo> {
        self.ctx.public_key()
    }

    // Restores and drills: ops/restore/

    /// Restores a backup. Everything is validated before anything is touched; in place,
    /// the current directories are kept aside until the restored instance is healthy and
    /// passes GitLab's checks, and put back on any failure.
    ///
    /// # Errors
    /// `InvalidInput` for a bad id or name, `NotFound` for an unknown backup, store or
    /// image, `VersionMismatch` naming the image to use, `Corrupt` for a damaged backup,
    /// `AlreadyExists`/`Conflict` when the name or addresses are taken, `Unhealthy` or
    /// `Command` when the restored GitLab fails (the previous state is back then).
    pub async fn restore(&self, request: RestoreRequest) -> Result<RestoreReport> {
        self.ctx.restore(request).await
    }

    /// Proves a backup valid for its GitLab version (R-BAK-7): restores it into a
    /// throw-away instance, waits healthy, runs `git fsck` on every repository and GitLab's
    /// secrets check, removes the instance, and stores the result beside the backup as
    /// `<id>.drill.json`.
    ///
    /// # Errors
    /// As `restore`; a drill that ran but found damage is `Corrupt`.
    pub async fn drill(&self, id: &str, store: Option<&str>) -> Result<DrillReport> {
        self.ctx.drill(id, store).await
    }

    // Recovery: ops/recovery.rs

    /// Finishes or rolls back every interrupted operation whose instance is not held by a
    /// live one, and removes the leftovers of dead operations (staging entries, local
    /// stores' staging files). Idempotent; safe while other operations run. Each
    /// recovery is journaled.
    ///
    /// # Errors
    /// `Io` when `<root>/run` or `<root>/staging` cannot be read. A recovery that fails
    /// is reported with [`RecoveryOutcome::Failed`], not as an error.
    pub async fn recover(&self) -> Result<Vec<Recovery>> {
        self.ctx.recover().await
    }

    /// The journal, oldest first: every machine's records when the inventory is on etcd,
    /// this root's otherwise; those `query` asks for.
    ///
    /// # Errors
    /// `Backend` when etcd does not answer, `Io`/`Corrupt` when the file cannot be read,
    /// `InvalidInput` for a bad instance name.
    pub async fn journal_records(
        &self,
        query: &crate::model::journal::JournalQuery,
    ) -> Result<Vec<crate::model::journal::Record>> {
        self.ctx.journal_records(query).await
    }

    // The inventory's place: service/migrate.rs

    /// Moves the fleet's book to etcd or back to `<root>/inventory.db`, then points
    /// girofle.toml at it. Refused while an operation runs.
    ///
    /// # Errors
    /// `InvalidInput` when it is there already, `Conflict` when an operation runs or left
    /// work to recover or the target holds another fleet, `Backend` when a backend fails
    /// (nothing changed then).
    pub async fn migrate_inventory(&self, to: MigrateTo) -> Result<Migrated> {
        self.ctx.migrate_inventory(to).await
    }

    // Schedules: service/schedule/

    /// The schedule book of this fleet: its schedules and runs, where its inventory is
    /// (etcd, or the root's SQLite file).
    ///
    /// # Errors
    /// `Backend` when the inventory database cannot be opened.
    pub fn schedule_book(&self) -> Result<Book> {
        self.ctx.schedule_book()
    }

    /// The schedule instances follow unless they have their own (girofle.toml's
    /// `[schedule]`).
    pub fn default_schedule(&self) -> Schedule {
        self.ctx.default_schedule()
    }

    /// The effective schedule of an instance.
    ///
    /// # Errors
    /// `NotFound` for an unknown instance, `Backend` when the database fails.
    pub async fn schedule_of(&self, name: &str) -> Result<Schedule> {
        self.ctx.schedule_of(name).await
    }

    /// Changes an instance's schedule (the set fields of `change`), after checking the
    /// result; returns the effective schedule. Journaled.
    ///
    /// # Errors
    /// `NotFound` for an unknown instance, `InvalidInput` for a bad cron, time zone,
    /// store or retention (nothing is changed then).
    pub async fn set_schedule(&self, name: &str, change: ScheduleOverrides) -> Result<Schedule> {
        self.ctx.set_schedule(name, change).await
    }

    /// Every instance's schedule, last runs and next runs.
    ///
    /// # Errors
    /// `Backend` when the inventory or the database fails.
    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>> {
        self.ctx.schedules().await
    }

    /// The due work once: runs of dead processes are marked `interrupted`, then for each
    /// instance the due backup (then the due copy) runs, at most `[schedule]
    /// max_concurrent` instances at once. `on_run_end` is told of each run as it ends.
    ///
    /// # Errors
    /// `Backend` when the inventory or the database cannot be read at all (a failed run,
    /// or an instance the book failed for, is in the report).
    pub async fn run_due(&self, on_run_end: Option<RunHook>) -> Result<RunDueReport> {
        self.ctx.run_due(on_run_end).await
    }

    /// Writes the systemd units (or the cron entry) that call `girofle schedule run-due`
    /// regularly; it does not enable them (the result says how). Journaled.
    ///
    /// # Errors
    /// `InvalidInput` for an interval the format cannot express, `Io` when a file cannot
    /// be written.
    pub async fn install_schedule(&self, options: InstallOptions) -> Result<Installed> {
        self.ctx.install_schedule(options).await
    }

    // Status: service/status.rs

    // The hosts: ops/hosts.rs, model/hosts.rs

    /// Every Docker host of the fleet (`local` first, then `[hosts.*]`), each engine
    /// asked in parallel within a few seconds: up or unreachable, version, this root's
    /// instances on it, free addresses of its pool, free disk on its data directory.
    ///
    /// # Errors
    /// None today: an engine that does not answer is reported `unreachable`.
    pub async fn hosts(&self) -> Result<Vec<HostStatus>> {
        self.ctx.host_list(self.docker_host.as_deref()).await
    }

    /// One host, as [`Girofle::hosts`] shows it.
    ///
    /// # Errors
    /// `NotFound` when there is no such host.
    pub async fn host(&self, name: &str) -> Result<HostStatus> {
        self.ctx.host_show(name, self.docker_host.as_deref()).await
    }

    /// Adds `[hosts.NAME]` to girofle.toml, keeping its comments and layout. Takes effect
    /// for the next opening of the root.
    ///
    /// # Errors
    /// `InvalidInput` for a bad table, `AlreadyExists` when the host is there.
    pub fn add_host(&self, name: &str, host: HostConfig) -> Result<HostAdded> {
        self.ctx.host_add(name, host)
    }

    /// Drains a host: no new instance goes there; with `move_all`, each of its
    /// instances is moved to another host (one that cannot be stays, running).
    ///
    /// # Errors
    /// `NotFound` for an unknown host, `InvalidInput` for `local`, `Io` when girofle.toml
    /// cannot be written.
    pub async fn drain_host(&self, name: &str, move_all: bool) -> Result<Drained> {
        self.ctx.host_drain(name, move_all).await
    }

    /// Takes a drained host back: new instances may be placed there again.
    ///
    /// # Errors
    /// As [`Girofle::drain_host`].
    pub fn undrain_host(&self, name: &str) -> Result<()> {
        self.ctx.set_drain(name, false)
    }

    /// Removes `[hosts.NAME]` from girofle.toml; refused while this root has instances
    /// on that engine, or when the engine cannot be asked unless `force`.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` naming the instances or the unreachable engine.
    pub async fn remove_host(&self, name: &str, force: bool) -> Result<HostRemoved> {
        self.ctx.host_remove(name, force).await
    }

    /// The fleet at a glance: every instance's state and the age of its newest valid
    /// backup in each store (`local` and every configured one), overdue when older than
    /// its schedule's interval (8 hours without one).
    ///
    /// # Errors
    /// `Backend` when the inventory cannot be read (an unreachable engine or store is
    /// reported in the result instead).
    pub async fn status(&self) -> Result<FleetStatus> {
        self.ctx.status().await
    }

    // State export and import: service/state.rs

    /// Exports the state of the root at `root` (configuration, inventory with schedules,
    /// journal) into `file`, a zstd tar of mode 0600; see [`crate::state`]. Needs no
    /// engine, so it takes a root rather than an opened `Girofle`. Journaled as
    /// `state-export`.
    ///
    /// # Errors
    /// `NotFound` when the root is not initialised, `Backend` when the inventory cannot be
    /// snapshotted, `Io` when the file cannot be written.
    pub async fn export_state(root: &Path, file: &Path) -> Result<StateReport> {
        crate::service::state::export(root, file).await
    }

    /// Imports a state file into `root` (which may be uninitialised); see
    /// [`crate::state`]. Journaled as `state-import`.
    ///
    /// # Errors
    /// `Conflict` when the root's inventory has other instances and `force` is not set,
    /// `Corrupt` for a damaged file, `VersionMismatch` for a newer state format,
    /// `InvalidInput` when its configuration does not parse here, `NotFound` for no file.
    pub async fn import_state(root: &Path, file: &Path, force: bool) -> Result<StateReport> {
        crate::service::state::import(root, file, force).await
    }
    // What runs over time: service/daemon.rs, service/metrics.rs

    /// Runs the scheduler daemon until SIGTERM or SIGINT (see [`crate::daemon`]).
    ///
    /// # Errors
    /// As [`crate::daemon::run`].
    pub async fn run_daemon(&self, options: DaemonOptions) -> Result<DaemonReport> {
        crate::service::daemon::run(self.ctx.clone(), options).await
    }

    /// The fleet's metrics in Prometheus' text format.
    ///
    /// # Errors
    /// `Backend` when the inventory, the engine or a store cannot be read.
    pub async fn render_metrics(&self) -> Result<String> {
        crate::service::metrics::render(&self.ctx).await
    }

    /// Writes the metrics to a node_exporter textfile, atomically.
    ///
    /// # Errors
    /// As [`Girofle::render_metrics`], and `Io` when the file cannot be written.
    pub async fn write_metrics_textfile(&self, path: &Path) -> Result<()> {
        crate::service::metrics::write_textfile(&self.ctx, path).await
    }

    /// Serves the metrics over HTTP on a bound listener until the future is dropped.
    ///
    /// # Errors
    /// `Io` when the listener fails.
    pub async fn serve_metrics_on(&self, listener: tokio::net::TcpListener) -> Result<()> {
        crate::service::metrics::serve_on(self.ctx.clone(), listener).await
    }
}
