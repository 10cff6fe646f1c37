//! The fleet operations: commission, list, show, start, stop, restart, reconfigure and
//! decommission instances, each recorded in the journal.
//!
//! [`Girofle`] is the entry point of the library: opened on a root, it holds the
//! configuration, the container runtime and the inventory. Backups and restores add their
//! operations to it in `backup` and `restore`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::adapters::inventory::{unknown_instance, Fleet, InventoryExt};
use crate::adapters::runtime::{ContainerRuntimeExt, ExecSpec, Health, PublishedPort};
use crate::error::{Error, Result};
use crate::model::address::{allocate, AddressRequest};
use crate::model::context::Context;
use crate::model::files::MAX_CONFIG_FILE;
use crate::model::fingerprint::FingerprintKey;
use crate::model::health;
use crate::model::instance::{
    self, container_spec, render_gitlab_rb, InstanceDirs, InstanceRecord, Stage, LABEL_MANAGED,
    LABEL_ROOT, LOCAL_HOST_NAME,
};
use crate::model::intent::{
    CommissionPhase, DecommissionPhase, IntentFile, Operation, ReconfigurePhase,
};

mod undo;

/// What to commission.
#[derive(Clone, Debug, Default)]
pub struct CommissionRequest {
    pub name: String,
    /// Image reference; default `[instances] image` of girofle.toml.
    pub image: Option<String>,
    pub addresses: AddressRequest,
    pub hostname: Option<String>,
    /// `KEY=VALUE` settings for the managed block of `gitlab.rb`.
    pub settings: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// How long to wait for health; default `[instances] health_timeout_secs`.
    pub timeout: Option<Duration>,
    /// The host to run it on (`[hosts.NAME]` or `local`); chosen when absent (`place`).
    pub host: Option<String>,
    /// Labels the chosen host must carry (`--host-label zone=b`), when `host` is absent.
    pub host_labels: BTreeMap<String, String>,
}

/// What an instance is doing, reconciled between the inventory and the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Running and healthy.
    Running,
    /// Running, health not known yet (booting).
    Starting,
    /// Running but failing its health check.
    Unhealthy,
    /// The container exists but is not running.
    Stopped,
    /// In the inventory, but its container is gone.
    Missing,
    /// Its host's engine does not answer: its state is not known.
    Unreachable,
    /// A container with Girofle's labels for this root that the inventory does not know.
    Unknown,
    /// Being commissioned right now.
    Commissioning,
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(Value::as_str).unwrap_or("?"))
    }
}

/// One line of `instance list`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    /// The host it runs on (`local`: this machine's engine).
    pub host: String,
    pub state: InstanceState,
    pub container: String,
    pub image: String,
    pub url: Option<String>,
    /// The inventory record (absent for `unknown` containers).
    pub record: Option<InstanceRecord>,
    /// Lines of the instance's gitlab.rb that override the settings Girofle owns
    /// (`instance::pin_overrides`): GitLab may not answer on its published addresses.
    pub pin_overrides: Vec<String>,
}

/// Options of a decommission.
#[derive(Clone, Debug, Default)]
pub struct DecommissionOptions {
    /// Delete the data instead of archiving it under `decommissioned/`.
    pub purge: bool,
    /// Skip the final backup.
    pub no_backup: bool,
}

/// What a decommission did.
#[derive(Clone, Debug, Serialize)]
pub struct Decommissioned {
    pub name: String,
    /// The host whose directory holds the data moved aside.
    pub host: String,
    /// Where the data was moved, on that host (absent when purged).
    pub archived_to: Option<PathBuf>,
    /// The id of the final backup, when one was taken.
    pub final_backup: Option<String>,
}

/// How long `instance list` waits for another host's engine: one that is down refuses
/// the connection at once; this bounds one that hangs.
const REMOTE_LIST_WAIT: Duration = Duration::from_secs(8);

/// What `listing` learnt from one host's engine.
struct SeenOnHost {
    containers: Vec<crate::adapters::runtime::ContainerInfo>,
    serving: std::collections::HashSet<String>,
    gitlab_rb: BTreeMap<String, String>,
}

/// The line of `instance list` of a record in a given state.
fn status_of(
    record: &InstanceRecord,
    state: InstanceState,
    pin_overrides: Vec<String>,
) -> InstanceStatus {
    InstanceStatus {
        name: record.name.clone(),
        host: record.host_name().to_string(),
        state,
        container: record.container_name(),
        image: record.image.clone(),
        url: Some(record.external_url.clone()),
        record: Some(record.redacted()),
        pin_overrides,
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// How many times a commission takes other ports when the engine refuses the ones it
/// chose (see `bring_up_on_free_ports`).
const PORT_RETRIES: usize = 5;

/// Whether the engine refused to publish a port because something else holds it.
fn is_port_refused(e: &Error) -> bool {
    matches!(e, Error::Conflict(m)
        if m.contains("port is already allocated") || m.contains("address already in use"))
}

/// The values given as `KEY=VALUE` texts, as an error message must not show them.
fn given_values(texts: &[String]) -> Vec<String> {
    let mut raw: Vec<String> = texts
        .iter()
        .filter_map(|t| t.split_once('=').map(|(_, v)| v.trim().to_string()))
        .collect();
    let parsed: Vec<String> = texts
        .iter()
        .filter_map(|t| instance::parse_setting(t).ok().map(|(_, v)| v))
        .collect();
    raw.extend(parsed);
    instance::setting_values(raw.iter())
}

/// The files of an instance's configuration that hold its settings and secrets.
fn secret_files(dirs: &InstanceDirs) -> Vec<PathBuf> {
    ["gitlab.rb", "gitlab-secrets.json"]
        .iter()
        .map(|n| dirs.config.join(n))
        .collect()
}

impl Context {
    fn versions_of(image: &str) -> Value {
        let (gitlab, edition) = instance::image_version(image).unzip();
        json!({ "image": image, "gitlab": gitlab, "edition": edition })
    }

    /// Commissions a new instance and waits until it is healthy; returns its record (the
    /// URL is `external_url`). On any failure nothing is left behind: no container, no
    /// directories, no inventory record, no address held.
    pub(crate) async fn commission(&self, request: CommissionRequest) -> Result<InstanceRecord> {
        let image = request
            .image
            .clone()
            .unwrap_or_else(|| self.config.instances.image.clone());
        let arguments = json!({
            "name": request.name,
            "image": image,
            "ip": request.addresses.ip,
            "http_port": request.addresses.http_port,
            "https_port": request.addresses.https_port,
            "ssh_port": request.addresses.ssh_port,
            "hostname": request.hostname,
            "set": self.fingerprint_key()?.settings_texts(&request.settings),
            "labels": request.labels,
            "timeout_secs": request.timeout.map(|t| t.as_secs()),
            "host": request.host,
            "host_labels": request.host_labels,
        });
        self.journaled(
            "commission",
            arguments,
            Self::versions_of(&image),
            Box::pin(async {
                let values = given_values(&request.settings);
                let r = self.commission_inner(request, image).await;
                r.map_err(|e| e.scrubbed(&values))
            }),
        )
        .await
    }

    async fn commission_inner(
        &self,
        request: CommissionRequest,
        image: String,
    ) -> Result<InstanceRecord> {
        instance::validate_name(&request.name)?;
        if let Some(h) = &request.hostname {
            instance::validate_hostname(h)?;
        }
        let mut settings = BTreeMap::new();
        for s in &request.settings {
            let (k, v) = instance::parse_setting(s)?;
            instance::check_setting(&k, &v)?;
            settings.insert(k, v);
        }
        if instance::image_version(&image).is_none() {
            return Err(Error::invalid(
                "--image",
                format!("`{image}` has no version tag; use e.g. gitlab/gitlab-ce:17.5.1-ce.0"),
            ));
        }
        let host = self
            .place(request.host.as_deref(), &request.host_labels)
            .await?;
        let here = self.on_host(host.as_deref(), &image).await?;
        here.ensure_image(&image).await?;
        // Boxed: a commission's future is large, and callers join several.
        Box::pin(here.commission_on(request, image, settings, host)).await
    }

    /// Commissions on this context's host (`host`: its name in the record).
    async fn commission_on(
        &self,
        request: CommissionRequest,
        image: String,
        settings: BTreeMap<String, String>,
        host: Option<String>,
    ) -> Result<InstanceRecord> {
        let name = request.name.clone();
        let container = instance::container_name(&name);
        // First: a commission of this name that died half-way is cleaned up.
        let lock = self.lock_instance(&name, "commission").await?;
        if self.runtime.inspect(&container).await?.is_some() {
            return Err(Error::already_exists(
                format!("container `{container}`"),
                "another instance (maybe of another Girofle root) uses this name; choose another name",
            ));
        }
        let dirs = self.instance_dirs(&name);
        if self.files().exists(&dirs.base).await? {
            return Err(Error::already_exists(
                format!(
                    "directory `{}` on host `{}`",
                    dirs.base.display(),
                    self.site.host()
                ),
                "it holds data of an earlier instance: move it away, or restore that instance",
            ));
        }
        let engine_ports = self.runtime.published_ports().await?;
        let pool = self.pool()?;
        let mut record: Option<InstanceRecord> = None;
        self.inventory
            .transact(&mut |fleet: &mut Fleet| {
                if fleet.instances.contains_key(&name) {
                    return Err(Error::already_exists(
                        format!("instance `{name}`"),
                        "choose another name, or decommission it first",
                    ));
                }
                let bindings = allocate(
                    &pool,
                    &self.fleet_here(fleet),
                    &engine_ports,
                    &request.addresses,
                    None,
                    None,
                    self.runtime.is_on_this_host(),
                )?;
                let r = InstanceRecord {
                    name: name.clone(),
                    image: image.clone(),
                    external_url: instance::external_url(request.hostname.as_deref(), &bindings),
                    bindings,
                    hostname: request.hostname.clone(),
                    settings: settings.clone(),
                    labels: request.labels.clone(),
                    created_at: now(),
                    stage: Stage::Commissioning,
                    host: host.clone(),
                };
                fleet.instances.insert(name.clone(), r.clone());
                record = Some(r);
                Ok(())
            })
            .await?;
        let record = record.expect("set by the transaction");
        // Until this record goes, a crash leaves a half-made instance: recovery removes it.
        let intent = match IntentFile::begin(
            self,
            &name,
            Operation::Commission {
                phase: CommissionPhase::Creating,
            },
        )
        .await
        {
            Ok(i) => i,
            Err(e) => {
                let _ = self.forget(&name).await;
                return Err(e);
            }
        };
        // The settings asked for are in gitlab.rb before the first boot (`bring_up`), so
        // `initial_*` settings act at GitLab's first seeding, and no reconfigure follows.
        let (record, brought_up) = self.bring_up_on_free_ports(record, &dirs, &request).await;
        match brought_up {
            Ok(()) => {
                let mut active = record.clone();
                active.stage = Stage::Active;
                if let Err(e) = self.put_record(&active).await {
                    self.settle(intent).await;
                    return Err(e);
                }
                intent.finish().await?;
                drop(lock);
                Ok(active.redacted())
            }
            Err(e) => {
                // Leave nothing half-done: container, directories (all created by us just
                // now) and the reservation go; if the engine cannot be reached for that
                // now, recovery does it later.
                self.settle(intent).await;
                Err(e)
            }
        }
    }

    /// Brings a commissioned record up; when the engine refuses a port it chose (another
    /// Girofle root on this engine, or any Docker client, took it since the engine's ports
    /// were read: two roots with one pool), removes the container and takes the next free
    /// addresses, up to [`PORT_RETRIES`] times. Ports asked for by the operator are not
    /// changed. Returns the record as it stands (its addresses may be new).
    async fn bring_up_on_free_ports(
        &self,
        mut record: InstanceRecord,
        dirs: &InstanceDirs,
        request: &CommissionRequest,
    ) -> (InstanceRecord, Result<()>) {
        let asked = &request.addresses;
        let chosen_by_us =
            asked.http_port.is_none() && asked.https_port.is_none() && asked.ssh_port.is_none();
        // What the engine refused so far: kept out of the next choices.
        let mut refused: Vec<(String, PublishedPort)> = Vec::new();
        let mut attempt = 0;
        loop {
            let e = match self
                .bring_up_with(&record, dirs, request.timeout, true)
                .await
            {
                Err(e) if chosen_by_us && attempt < PORT_RETRIES && is_port_refused(&e) => e,
                other => return (record, other),
            };
            attempt += 1;
            let b = &record.bindings;
            for port in [b.http_port, b.https_port, b.ssh_port] {
                refused.push((
                    "another client of the engine".to_string(),
                    PublishedPort {
                        host_ip: b.ip.to_string(),
                        host_port: port,
                        container_port: 0,
                    },
                ));
            }
            let container = record.container_name();
            if let Err(remove) = self.runtime.remove(&container, true).await {
                let both = format!(
                    "{e}; removing container `{container}` to take other ports failed too: {remove}"
                );
                return (record, Err(Error::Conflict(both)));
            }
            let mut engine_ports = match self.runtime.published_ports().await {
                Ok(p) => p,
                Err(other) => return (record, Err(other)),
            };
            engine_ports.extend(refused.iter().cloned());
            let mut next: Option<InstanceRecord> = None;
            let pool = match self.pool() {
                Ok(p) => p,
                Err(other) => return (record, Err(other)),
            };
            let moved = self
                .inventory
                .transact(&mut |fleet: &mut Fleet| {
                    // Our own reservation holds the refused ports: it is replaced here.
                    let bindings = allocate(
                        &pool,
                        &self.fleet_here(fleet),
                        &engine_ports,
                        asked,
                        None,
                        None,
                        self.runtime.is_on_this_host(),
                    )?;
                    let mut r = record.clone();
                    r.external_url = instance::external_url(r.hostname.as_deref(), &bindings);
                    r.bindings = bindings;
                    fleet.instances.insert(r.name.clone(), r.clone());
                    next = Some(r);
                    Ok(())
                })
                .await;
            match (moved, next) {
                (Ok(_), Some(r)) => record = r,
                (Err(other), _) => return (record, Err(other)),
                (Ok(_), None) => return (record, Err(e)),
            }
        }
    }

    /// Writes one record into the inventory (replacing the one of that name).
    pub(crate) async fn put_record(&self, record: &InstanceRecord) -> Result<()> {
        self.inventory
            .transact(&mut |fleet: &mut Fleet| {
                fleet.instances.insert(record.name.clone(), record.clone());
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Removes an instance from the inventory (its addresses are free again).
    pub(crate) async fn forget(&self, name: &str) -> Result<()> {
        self.inventory
            .transact(&mut |fleet: &mut Fleet| {
                fleet.instances.remove(name);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Makes sure the engine has an image, pulling it when absent.
    pub(crate) async fn ensure_image(&self, image: &str) -> Result<()> {
        if self.runtime.image_present(image).await? {
            return Ok(());
        }
        self.runtime.pull(image).await
    }

    /// Creates the directories and the container of a record, starts it, waits healthy.
    pub(crate) async fn bring_up(
        &self,
        record: &InstanceRecord,
        dirs: &InstanceDirs,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.bring_up_with(record, dirs, timeout, false).await
    }

    /// [`Context::bring_up`]; `empty`: the directories were just made and hold nothing
    /// yet (a commission), so nothing is there to make private or read: on another host
    /// each of those is a helper container less.
    async fn bring_up_with(
        &self,
        record: &InstanceRecord,
        dirs: &InstanceDirs,
        timeout: Option<Duration>,
        empty: bool,
    ) -> Result<()> {
        let volumes: Vec<&Path> = dirs.volumes().iter().map(|(_, dir, _)| *dir).collect();
        self.files().make_dirs(&volumes).await?;
        if !empty {
            // Restored files keep the archive's modes; GitLab writes its own at first boot.
            self.files().make_private(&secret_files(dirs)).await?;
        }
        let health = self.health(timeout);
        let spec = container_spec(&self.root, record, dirs, health);
        self.runtime.create(&spec).await?;
        self.prepare_gitlab_rb(record, dirs, &spec.name, empty)
            .await?;
        self.runtime.start(&spec.name).await?;
        health::wait_booted(&*self.runtime, &spec.name, health.boot_timeout).await?;
        self.files().make_private(&secret_files(dirs)).await
    }

    /// Puts gitlab.rb in place before the container starts: GitLab's own template (read
    /// from the image) when there is none yet, then Girofle's managed block with the
    /// record's settings and pins. GitLab's first boot then seeds with them (the
    /// `initial_*` settings act only then), and a restored gitlab.rb gets this instance's
    /// addresses, not the ones of the instance it came from.
    async fn prepare_gitlab_rb(
        &self,
        record: &InstanceRecord,
        dirs: &InstanceDirs,
        container: &str,
        empty: bool,
    ) -> Result<()> {
        let rb = dirs.config.join("gitlab.rb");
        let existing = if empty {
            None
        } else {
            self.files().read_text(&rb).await?
        };
        let current = match existing {
            Some(text) => text,
            None => {
                match self
                    .runtime
                    .read_file(container, instance::GITLAB_RB_TEMPLATE, 4 << 20)
                    .await?
                {
                    Some(t) => String::from_utf8_lossy(&t).into_owned(),
                    None => format!(
                        "## GitLab configuration (written by Girofle: the image `{}` has no {})\n",
                        record.image,
                        instance::GITLAB_RB_TEMPLATE
                    ),
                }
            }
        };
        let next = render_gitlab_rb(
            &current,
            &record.settings,
            &instance::pinned_settings(record),
        );
        if next != current {
            self.files().write_private(&rb, next.as_bytes()).await?;
        }
        Ok(())
    }

    /// The instances of this root as the inventory and the engines have them now (no
    /// recovery first: that is `list`). Every host in use is asked at once, another
    /// machine's within [`REMOTE_LIST_WAIT`]: the instances of a host whose engine does
    /// not answer are `unreachable`, and the others are not held up by it.
    pub(crate) async fn listing(&self) -> Result<Vec<InstanceStatus>> {
        self.listing_for(None).await
    }

    /// [`Context::listing`]; the gitlab.rb of an instance on another host (read through
    /// its engine, one request each) is read for `detail` only: a list of a hundred
    /// instances asks each engine a few questions, not a hundred.
    pub(crate) async fn listing_for(&self, detail: Option<&str>) -> Result<Vec<InstanceStatus>> {
        let fleet = self.inventory.load().await?;
        let mut hosts: Vec<Option<String>> = vec![None];
        for r in fleet.instances.values() {
            let h = r.host.clone().filter(|h| h != LOCAL_HOST_NAME);
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let asked = futures::future::join_all(hosts.iter().map(|h| async {
            let seen = Box::pin(self.seen_on(h.as_deref(), &fleet, detail));
            let seen = match h {
                // This machine's engine is waited for, as before hosts existed: a slow
                // answer (a busy machine) is not an unreachable engine.
                None => Some(seen.await),
                Some(_) => tokio::time::timeout(REMOTE_LIST_WAIT, seen).await.ok(),
            };
            (h.clone(), seen.and_then(Result::ok))
        }))
        .await;
        let mut out = Vec::new();
        for (host, seen) in &asked {
            let host_name = host.as_deref().unwrap_or(LOCAL_HOST_NAME);
            let records = fleet
                .instances
                .values()
                .filter(|r| r.host_name() == host_name);
            let Some(seen) = seen else {
                // The local engine's failure is the command's: nothing could be listed.
                if host.is_none() {
                    Box::pin(self.seen_on(None, &fleet, detail)).await?;
                }
                out.extend(records.map(|r| status_of(r, InstanceState::Unreachable, Vec::new())));
                continue;
            };
            for record in records {
                let container = record.container_name();
                let info = seen.containers.iter().find(|c| c.name == container);
                let state = match (record.stage, info) {
                    (Stage::Commissioning, _) => InstanceState::Commissioning,
                    (_, None) => InstanceState::Missing,
                    (_, Some(c)) if !c.running => InstanceState::Stopped,
                    (_, Some(c)) if seen.serving.contains(&c.name) => InstanceState::Running,
                    (_, Some(c)) => match c.health {
                        Health::Unhealthy => InstanceState::Unhealthy,
                        _ => InstanceState::Starting,
                    },
                };
                let overrides = seen
                    .gitlab_rb
                    .get(&record.name)
                    .map(|t| instance::pin_overrides(t))
                    .unwrap_or_default();
                out.push(status_of(record, state, overrides));
            }
            for c in &seen.containers {
                let name = c
                    .labels
                    .get(instance::LABEL_INSTANCE)
                    .cloned()
                    .unwrap_or_else(|| c.name.clone());
                if !fleet.instances.contains_key(&name) {
                    out.push(InstanceStatus {
                        name,
                        host: host_name.to_string(),
                        state: InstanceState::Unknown,
                        container: c.name.clone(),
                        image: c.image.clone(),
                        url: None,
                        record: None,
                        pin_overrides: Vec::new(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.host.cmp(&b.host)));
        Ok(out)
    }

    /// What one host's engine says of the fleet's instances on it: their containers
    /// (and this root's own there), which of them GitLab serves from, and their gitlab.rb.
    async fn seen_on(
        &self,
        host: Option<&str>,
        fleet: &Fleet,
        detail: Option<&str>,
    ) -> Result<SeenOnHost> {
        let here = self.on_host(host, &self.config.instances.image).await?;
        let host_name = here.site.host().to_string();
        // On one machine the root's containers are this root's; a fleet on etcd is shared
        // by roots on several machines, whose containers carry their own root: the
        // fleet's are Girofle's containers named as its records (names are the engine's
        // to keep unique), and this root's own (a container the book lacks is shown).
        let root = self.root.display().to_string();
        let mut labels = vec![(LABEL_MANAGED.to_string(), "true".to_string())];
        let shared = self.inventory.as_etcd().is_some() || !here.site.is_local();
        if !shared {
            labels.push((LABEL_ROOT.to_string(), root.clone()));
        }
        let mut containers = here.runtime.list(&labels).await?;
        let mine: std::collections::HashSet<String> = fleet
            .instances
            .values()
            .filter(|r| r.host_name() == host_name)
            .map(InstanceRecord::container_name)
            .collect();
        if shared {
            containers
                .retain(|c| mine.contains(&c.name) || c.labels.get(LABEL_ROOT) == Some(&root));
        }
        // GitLab is asked, all at once, where the engine's word may be out of date.
        let runtime = &*here.runtime;
        let serving = futures::future::join_all(
            containers
                .iter()
                .map(|c| async { health::serves_now(runtime, c).await.then(|| c.name.clone()) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let mut gitlab_rb = BTreeMap::new();
        for r in fleet
            .instances
            .values()
            .filter(|r| r.host_name() == host_name)
        {
            let rb = here.instance_dirs(&r.name).config.join("gitlab.rb");
            let text = if here.site.is_local() {
                std::fs::read_to_string(&rb).ok()
            } else if Some(r.name.as_str()) == detail
                && containers.iter().any(|c| c.name == r.container_name())
            {
                // Through the instance's own container (no helper container per
                // instance: a list of a hundred stays fast).
                runtime
                    .read_file(
                        &r.container_name(),
                        "/etc/gitlab/gitlab.rb",
                        MAX_CONFIG_FILE,
                    )
                    .await
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            } else {
                None
            };
            if let Some(t) = text {
                gitlab_rb.insert(r.name.clone(), t);
            }
        }
        Ok(SeenOnHost {
            containers,
            serving,
            gitlab_rb,
        })
    }

    /// One instance, reconciled with the engine.
    pub(crate) async fn show(&self, name: &str) -> Result<InstanceStatus> {
        instance::validate_name(name)?;
        Box::pin(self.recover_pending()).await;
        Box::pin(self.listing_for(Some(name)))
            .await?
            .into_iter()
            .find(|s| s.name == name && s.record.is_some())
            .ok_or_else(|| unknown_instance(name))
    }

    /// [`Girofle::show`] with the settings' values in clear (everywhere else they are
    /// `[REDACTED]`). Journaled as `reveal`, with the name only.
    pub(crate) async fn show_revealed(&self, name: &str) -> Result<InstanceStatus> {
        self.journaled("reveal", json!({ "name": name }), json!({}), async {
            let mut status = self.show(name).await?;
            let record = self.inventory.get(name).await?;
            if let Some(r) = status.record.as_mut() {
                r.settings = record.settings;
            }
            Ok(status)
        })
        .await
    }

    /// The fleet's key for fingerprints of setting values (created on first use).
    pub(crate) fn fingerprint_key(&self) -> Result<FingerprintKey> {
        FingerprintKey::of_root(&self.root)
    }

    /// Starts an instance and waits healthy. A container removed behind Girofle's back is
    /// created again from the inventory (the data directories are untouched).
    pub(crate) async fn start(&self, name: &str) -> Result<InstanceRecord> {
        let record = self.inventory.get(name).await?;
        self.journaled(
            "start",
            json!({ "name": name }),
            Self::versions_of(&record.image),
            async {
                let here = self.at(&record).await?;
                let container = record.container_name();
                if here.runtime.inspect(&container).await?.is_none() {
                    let dirs = here.instance_dirs(name);
                    if !here.files().exists(&dirs.data).await? {
                        return Err(Error::not_found(
                            format!("data directory `{}` on host `{}`", dirs.data.display(), here.site.host()),
                            "the instance's data is gone; restore it from a backup (`girofle restore`)",
                        ));
                    }
                    return Box::pin(here.bring_up(&record, &dirs, None))
                    .await
                    .map(|_| record.redacted());
                }
                here.runtime.start(&container).await?;
                here.wait_started(&container, here.boot_timeout()).await?;
                Ok(record.redacted())
            },
        )
        .await
    }

    /// Waits until a container Girofle just started (or found running) serves: probes by
    /// exec, as the engine's own state lags by up to a probe interval (and is stale when
    /// the container was running already and Puma is restarting after a reconfigure).
    pub(crate) async fn wait_started(&self, container: &str, timeout: Duration) -> Result<()> {
        health::wait_booted(&*self.runtime, container, timeout).await
    }

    /// Stops an instance (GitLab gets the configured grace period to shut down).
    pub(crate) async fn stop(&self, name: &str) -> Result<InstanceRecord> {
        let record = self.inventory.get(name).await?;
        self.journaled(
            "stop",
            json!({ "name": name }),
            Self::versions_of(&record.image),
            async {
                self.at(&record)
                    .await?
                    .runtime
                    .stop(&record.container_name(), self.stop_grace())
                    .await?;
                Ok(record.redacted())
            },
        )
        .await
    }

    /// Stops then starts an instance and waits healthy.
    pub(crate) async fn restart(&self, name: &str) -> Result<InstanceRecord> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Sets (and unsets) managed `gitlab.rb` settings, runs `gitlab-ctl reconfigure`, waits
    /// healthy. When GitLab refuses the new file, the previous one is put back and
    /// reconfigured, and the error says why.
    pub(crate) async fn reconfigure(
        &self,
        name: &str,
        set: &[String],
        unset: &[String],
    ) -> Result<InstanceRecord> {
        let record = self.inventory.get(name).await?;
        self.journaled(
            "reconfigure",
            json!({ "name": name, "set": self.fingerprint_key()?.settings_texts(set), "unset": unset }),
            Self::versions_of(&record.image),
            async {
                let here = self.at(&record).await?;
                let r = Box::pin(here.reconfigure_inner(record.clone(), set, unset)).await;
                r.map_err(|e| e.scrubbed(&given_values(set)))
            },
        )
        .await
    }

    async fn reconfigure_inner(
        &self,
        record: InstanceRecord,
        set: &[String],
        unset: &[String],
    ) -> Result<InstanceRecord> {
        if set.is_empty() && unset.is_empty() {
            return Err(Error::invalid(
                "--set",
                "give at least one --set KEY=VALUE (or --unset KEY)",
            ));
        }
        let parsed = set
            .iter()
            .map(|s| instance::parse_setting(s))
            .collect::<Result<Vec<_>>>()?;
        for (k, v) in &parsed {
            instance::check_setting(k, v)?;
        }
        let _lock = self.lock_instance(&record.name, "reconfigure").await?;
        // Read again under the lock: another process may have changed the settings since,
        // and taking the lock may have just recovered an interrupted operation.
        let record = self.inventory.get(&record.name).await?;
        let mut settings = record.settings.clone();
        for (k, v) in parsed {
            settings.insert(k, v);
        }
        for k in unset {
            if settings.remove(k.trim()).is_none() {
                return Err(Error::invalid(
                    "--unset",
                    format!(
                        "`{k}` is not a Girofle-managed setting of `{}`",
                        record.name
                    ),
                ));
            }
        }
        let (rb, previous) = self.read_gitlab_rb(&record).await?;
        let mut updated = record.clone();
        updated.settings = settings;
        // Until this record goes, a crash is rolled back by recovery (the previous
        // gitlab.rb back and applied), unless the inventory already has the new settings.
        let mut intent = IntentFile::begin(
            self,
            &record.name,
            Operation::Reconfigure {
                phase: ReconfigurePhase::Applying,
                previous_rb: previous.clone(),
                settings: updated.settings.clone(),
            },
        )
        .await?;
        let next = render_gitlab_rb(
            &previous,
            &updated.settings,
            &instance::pinned_settings(&updated),
        );
        let applied = match self
            .write_gitlab_rb(&record, &rb, &previous, &next, Some(&mut intent))
            .await
        {
            Ok(()) => self.put_record(&updated).await,
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => intent.finish().await?,
            Err(e) => {
                // GitLab refused (the previous file is back and applied), did not turn
                // healthy with the new settings, or the inventory could not be written:
                // back to the previous settings, in the file and in GitLab.
                self.settle(intent).await;
                return Err(e);
            }
        }
        Ok(updated.redacted())
    }

    /// Waits until GitLab has booted (it writes gitlab.rb then), and reads gitlab.rb:
    /// its path and its text.
    async fn read_gitlab_rb(&self, record: &InstanceRecord) -> Result<(PathBuf, String)> {
        let container = record.container_name();
        self.wait_started(&container, self.boot_timeout()).await?;
        let rb = self.instance_dirs(&record.name).config.join("gitlab.rb");
        let previous = self.files().read_text(&rb).await?.ok_or_else(|| {
            Error::Conflict(format!(
                "`{}` does not exist yet: GitLab writes it at its first boot; wait until `girofle instance show {}` says running",
                rb.display(),
                record.name
            ))
        })?;
        Ok((rb, previous))
    }

    /// Replaces gitlab.rb (`previous`) by `next`, runs `gitlab-ctl reconfigure` and
    /// waits until GitLab answers probes that started after it (see [`health`]); when
    /// GitLab refuses the file, or does not answer with it within the health timeout,
    /// puts `previous` back and reconfigures again (then marks `intent`, if any,
    /// `restored`).
    async fn write_gitlab_rb(
        &self,
        record: &InstanceRecord,
        rb: &Path,
        previous: &str,
        next: &str,
        intent: Option<&mut IntentFile>,
    ) -> Result<()> {
        let container = record.container_name();
        let puma_before = health::puma_pid(&*self.runtime, &container).await;
        self.files().write_private(rb, next.as_bytes()).await?;
        let reconfigure = ExecSpec {
            cmd: vec!["gitlab-ctl".into(), "reconfigure".into()],
            ..Default::default()
        };
        if let Err(e) = self.runtime.exec_ok(&container, &reconfigure).await {
            self.files().write_private(rb, previous.as_bytes()).await?;
            let restored = self.runtime.exec_ok(&container, &reconfigure).await;
            if let (Ok(_), Some(intent)) = (restored, intent) {
                intent.phase(ReconfigurePhase::Restored).await?;
            }
            return Err(match e {
                Error::Command { output, exit_code, .. } => Error::invalid(
                    "--set",
                    format!(
                        "GitLab refused the new settings (gitlab-ctl reconfigure exited {exit_code}); the previous gitlab.rb is back in place. GitLab said:\n{output}"
                    ),
                ),
                other => other,
            });
        }
        // Reconfigure exited 0, but a change to Rails settings restarts Puma after that:
        // only a probe that started once the restart was under way proves GitLab serves
        // with the new settings. One that fails meanwhile is the restart, not a failure.
        let waited = health::wait_fresh(
            &*self.runtime,
            &container,
            "`gitlab-ctl reconfigure` with the new settings",
            puma_before,
            health::SETTLE,
            self.boot_timeout(),
        )
        .await;
        let Err(e) = waited else {
            return Ok(());
        };
        // GitLab accepted the file but does not come back with it (e.g. Puma cannot
        // boot): put the previous settings back, in the file and in GitLab.
        self.files().write_private(rb, previous.as_bytes()).await?;
        let puma_before = health::puma_pid(&*self.runtime, &container).await;
        let back = match self.runtime.exec_ok(&container, &reconfigure).await {
            Ok(_) => {
                health::wait_fresh(
                    &*self.runtime,
                    &container,
                    "`gitlab-ctl reconfigure` with the previous settings",
                    puma_before,
                    health::SETTLE,
                    self.boot_timeout(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let (message, health_log, logs) = match e {
            Error::Unhealthy {
                message,
                health_log,
                logs,
            } => (message, health_log, logs),
            other => return Err(other),
        };
        let outcome = match back {
            Ok(()) => {
                if let Some(intent) = intent {
                    intent.phase(ReconfigurePhase::Restored).await?;
                }
                "the new settings were rolled back: the previous gitlab.rb is back in place and GitLab answers again".to_string()
            }
            Err(b) => format!(
                "the previous gitlab.rb is back in place, but GitLab does not answer with it either ({}); `girofle recover` tries again",
                b.to_string().lines().next().unwrap_or_default()
            ),
        };
        Err(Error::Unhealthy {
            message: format!("{message}; {outcome}"),
            health_log,
            logs,
        })
    }

    /// The steps of a decommission after the final backup: stop, move the data (or delete
    /// it when `archive_to` is `None`), remove the container, forget the record.
    async fn take_down(
        &self,
        record: &InstanceRecord,
        archive_to: Option<&Path>,
        intent: &mut IntentFile,
    ) -> Result<()> {
        let name = &record.name;
        let container = record.container_name();
        self.runtime
            .stop(&container, self.stop_grace())
            .await
            .or_else(|e| match e {
                Error::NotFound { .. } => Ok(()),
                e => Err(e),
            })?;
        let dirs = self.instance_dirs(name);
        match archive_to {
            Some(dest) => {
                intent.phase(DecommissionPhase::Moving).await?;
                if self.files().exists(&dirs.base).await? {
                    // A rename keeps every numeric owner and mode as GitLab left them.
                    self.files().move_dir(&dirs.base, dest).await?;
                }
                intent.phase(DecommissionPhase::Removing).await?;
                self.runtime
                    .remove(&container, true)
                    .await
                    .or_else(|e| match e {
                        Error::NotFound { .. } => Ok(()),
                        e => Err(e),
                    })?;
            }
            None => {
                self.runtime
                    .remove(&container, true)
                    .await
                    .or_else(|e| match e {
                        Error::NotFound { .. } => Ok(()),
                        e => Err(e),
                    })?;
                intent.phase(DecommissionPhase::Purging).await?;
                self.files().remove_dir(&dirs.base).await?;
            }
        }
        self.forget(name).await
    }

    /// Decommissions an instance: a final backup (unless asked not to), stop and remove the
    /// container, move the data to `<root>/decommissioned/<name>-<timestamp>/` (or delete
    /// it with `purge`), free its addresses.
    pub(crate) async fn decommission(
        &self,
        name: &str,
        options: DecommissionOptions,
    ) -> Result<Decommissioned> {
        let record = self.inventory.get(name).await?;
        self.journaled(
            "decommission",
            json!({ "name": name, "purge": options.purge, "no_backup": options.no_backup }),
            Self::versions_of(&record.image),
            Box::pin(async {
                let here = self.at(&record).await?;
                Box::pin(here.decommission_inner(record.clone(), options)).await
            }),
        )
        .await
    }

    async fn decommission_inner(
        &self,
        record: InstanceRecord,
        options: DecommissionOptions,
    ) -> Result<Decommissioned> {
        let name = record.name.clone();
        let final_backup = if options.no_backup {
            None
        } else {
            // On another host too: cold, its directories streamed out of that engine.
            Some(self.final_backup(&record).await?)
        };
        let _lock = self.lock_instance(&name, "decommission").await?;
        let archived_to = (!options.purge).then(|| {
            self.site
                .base()
                .join("decommissioned")
                .join(format!("{name}-{}", now().format("%Y%m%dT%H%M%SZ")))
        });
        // Until this record goes, a crash is finished (the data moved) or rolled back
        // (the data still in place) by recovery.
        let mut intent = IntentFile::begin(
            self,
            &name,
            Operation::Decommission {
                phase: DecommissionPhase::Stopping,
                record: record.clone(),
                purge: options.purge,
                archive_to: archived_to.clone(),
            },
        )
        .await?;
        let done = self
            .take_down(&record, archived_to.as_deref(), &mut intent)
            .await;
        match done {
            Ok(()) => intent.finish().await?,
            Err(e) => {
                self.settle(intent).await;
                return Err(e);
            }
        }
        Ok(Decommissioned {
            name,
            host: self.site.host().to_string(),
            archived_to,
            final_backup,
        })
    }
}
