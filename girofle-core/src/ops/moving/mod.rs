//! `girofle instance move NAME --to HOST`: an instance taken from its host to another,
//! with its data, its name and (when the target's pool allows) its addresses.
//!
//! The old container is stopped, each of its three directories streams out of the old
//! host's engine straight into the new host's (Docker's archive API on short-lived helper
//! containers: no path of either machine is read here, and nothing is held whole in
//! memory), into a staging directory there that becomes the instance's only when all of
//! it arrived. The new container boots, GitLab's own checks run on it, and only then does
//! the inventory switch to the new host: the point of no return. Before it, any failure
//! removes what was made on the new host and starts the old instance again, its data
//! untouched; after it, the old container goes and its data is kept aside on the old host
//! (deleted with `--purge`). The downtime, from the old container's stop to the new one
//! serving with its checks passed, is measured and reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::adapters::inventory::InventoryExt;
use crate::error::{Error, Result};
use crate::model::address::{allocate, AddressRequest};
use crate::model::context::Context;
use crate::model::instance::{self, InstanceRecord, Stage};
use crate::model::intent::{IntentFile, MovePhase, Operation};
use crate::ops::checks::GitLabChecks;

mod undo;

/// What to move, and where.
#[derive(Clone, Debug, Default)]
pub struct MoveRequest {
    pub name: String,
    /// The target host (`[hosts.NAME]`, or `local`).
    pub to: String,
    /// Delete the old data once the move is through, instead of keeping it aside.
    pub purge: bool,
    /// How long the new container may take to serve; default `[instances] health_timeout_secs`.
    pub timeout: Option<Duration>,
}

/// What a move did.
#[derive(Clone, Debug, Serialize)]
pub struct Moved {
    pub name: String,
    pub from: String,
    pub to: String,
    /// The instance as the inventory now has it.
    pub record: InstanceRecord,
    /// Whether it kept its ip and ports (otherwise the target's pool lacked them).
    pub addresses_kept: bool,
    /// Its URL before the move (the same as now when the addresses were kept, or when
    /// its external URL names a host name).
    pub previous_url: String,
    /// Seconds from the old container's stop to the new one serving, checks passed.
    pub downtime_secs: f64,
    /// Seconds the whole move took.
    pub took_secs: f64,
    /// Bytes streamed from the old host to the new one.
    pub bytes_copied: u64,
    /// Where the old data is kept, on the old host (absent with `--purge`).
    pub kept_aside: Option<PathBuf>,
    /// What GitLab's checks found on the new host (both passed).
    pub checks: GitLabChecks,
}

impl Context {
    /// Moves an instance to another host (see the module documentation).
    pub(crate) async fn move_instance(&self, request: MoveRequest) -> Result<Moved> {
        let record = self.inventory.get(&request.name).await?;
        self.journaled(
            "move",
            json!({ "name": request.name, "to": request.to, "from": record.host_name(), "purge": request.purge }),
            json!({ "image": record.image }),
            Box::pin(self.move_inner(request)),
        )
        .await
    }

    async fn move_inner(&self, request: MoveRequest) -> Result<Moved> {
        let started = Instant::now();
        let name = request.name.clone();
        let _lock = self.lock_instance(&name, "move").await?;
        // Read under the lock: taking it may have just finished an interrupted move.
        let record = self.inventory.get(&name).await?;
        let from = record.host_name().to_string();
        if from == request.to {
            return Err(Error::invalid(
                "--to",
                format!("`{name}` already runs on host `{from}`; name another host (`girofle host list`)"),
            ));
        }
        let src = self.at(&record).await?;
        let dst = self.on_host(Some(&request.to), &record.image).await?;
        if !dst.runtime.image_present(&record.image).await? {
            return Err(Error::not_found(
                format!("image `{}` on host `{}`", record.image, request.to),
                "Girofle never pulls: load the instance's image on that host first (`docker save` here, `docker load` there)",
            ));
        }
        let dirs = dst.instance_dirs(&name);
        if dst.files().exists(&dirs.base).await? {
            return Err(Error::already_exists(
                format!(
                    "directory `{}` on host `{}`",
                    dirs.base.display(),
                    request.to
                ),
                "it holds data of an earlier instance: move it away on that host first",
            ));
        }
        let (target, addresses_kept) = dst.target_record(&record).await?;
        let aside = (!request.purge).then(|| {
            src.site.base().join("decommissioned").join(format!(
                "{name}-moved-{}",
                Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        });
        // Until this record goes, a crash is rolled back (the old instance started again)
        // or, past the switch, finished (the old container removed, its data aside).
        let mut intent = IntentFile::begin(
            self,
            &name,
            Operation::Move {
                phase: MovePhase::Copying,
                record: record.clone(),
                target: target.clone(),
                aside: aside.clone(),
            },
        )
        .await?;
        let stopped = Instant::now();
        let switched = self
            .copy_and_start(&src, &dst, &record, &target, request.timeout, &mut intent)
            .await;
        let (bytes_copied, checks) = match switched {
            Ok(v) => v,
            Err(e) => {
                self.settle(intent).await;
                return Err(e);
            }
        };
        let downtime = stopped.elapsed();
        // Past the point of no return: the old container goes, its data aside (or gone).
        src.retire(&record, aside.as_deref()).await?;
        intent.finish().await?;
        Ok(Moved {
            name,
            from,
            to: request.to,
            previous_url: record.external_url.clone(),
            record: target.redacted(),
            addresses_kept,
            downtime_secs: downtime.as_secs_f64(),
            took_secs: started.elapsed().as_secs_f64(),
            bytes_copied,
            kept_aside: aside,
            checks,
        })
    }

    /// The record of the instance on this context's host: its own addresses when they
    /// are in this host's pool and free here, otherwise the pool's next free ones.
    async fn target_record(&self, record: &InstanceRecord) -> Result<(InstanceRecord, bool)> {
        let fleet = self.inventory.load().await?;
        let here = self.fleet_here(&fleet);
        let engine_ports = self.runtime.published_ports().await?;
        let pool = self.pool()?;
        let on_this_host = self.runtime.is_on_this_host();
        let b = &record.bindings;
        let same = AddressRequest {
            ip: Some(b.ip),
            http_port: Some(b.http_port),
            https_port: Some(b.https_port),
            ssh_port: Some(b.ssh_port),
        };
        let (bindings, kept) =
            match allocate(&pool, &here, &engine_ports, &same, None, None, on_this_host) {
                Ok(bindings) => (bindings, true),
                Err(_) => (
                    allocate(
                        &pool,
                        &here,
                        &engine_ports,
                        &AddressRequest::default(),
                        None,
                        None,
                        on_this_host,
                    )?,
                    false,
                ),
            };
        let mut target = record.clone();
        target.external_url = instance::external_url(target.hostname.as_deref(), &bindings);
        target.bindings = bindings;
        target.host = match &self.site {
            crate::model::files::Site::Local { .. } => None,
            crate::model::files::Site::Engine { host, .. } => Some(host.clone()),
        };
        target.stage = Stage::Active;
        Ok((target, kept))
    }

    /// Stops the old container, streams its directories to the new host, boots the new
    /// container there and runs GitLab's checks; then switches the inventory. Returns the
    /// bytes copied and what the checks found.
    async fn copy_and_start(
        &self,
        src: &Context,
        dst: &Context,
        record: &InstanceRecord,
        target: &InstanceRecord,
        timeout: Option<Duration>,
        intent: &mut IntentFile,
    ) -> Result<(u64, GitLabChecks)> {
        let name = &record.name;
        src.runtime
            .stop(&record.container_name(), src.stop_grace())
            .await
            .or_else(|e| match e {
                Error::NotFound { .. } => Ok(()),
                e => Err(e),
            })?;
        let from_root = src.host_root(&record.image);
        let to_root = dst.host_root(&record.image);
        let old = src.instance_dirs(name);
        let staging = undo::staging_of(name);
        dst.runtime
            .make_host_dirs(
                &to_root,
                &[crate::adapters::runtime::HostEntry::new(
                    &staging, 0, 0, 0o700,
                )],
            )
            .await?;
        let mut bytes = 0;
        for (volume, dir, _) in old.volumes() {
            let rel = src.relative(dir)?;
            let tar = src.runtime.export_host_dir(&from_root, &rel).await?;
            let imported = dst
                .runtime
                .import_host_dir(&to_root, &format!("{staging}/{volume}"), tar)
                .await?;
            bytes += imported.bytes;
        }
        let dirs = dst.instance_dirs(name);
        dst.files()
            .move_dir(&dst.site.base().join(&staging), &dirs.base)
            .await?;
        intent.phase(MovePhase::Starting).await?;
        dst.bring_up(target, &dirs, timeout).await?;
        let checks = dst.gitlab_checks(&target.container_name()).await?;
        if !checks.secrets_ok || !checks.check_ok {
            return Err(Error::Unhealthy {
                message: format!(
                    "GitLab's checks failed on host `{}` after the move; the instance runs on its old host again:\n  {}",
                    dst.site.host(),
                    checks.failures.join("\n  ")
                ),
                health_log: String::new(),
                logs: String::new(),
            });
        }
        self.put_record(target).await?;
        intent.phase(MovePhase::Switched).await?;
        Ok((bytes, checks))
    }
}
