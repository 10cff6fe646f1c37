//! Restore (R-BAK-3,7,9): bring an instance back from a backup in any store, in place or
//! as a new instance, on this engine or another; and the restore drill that proves a
//! backup valid for its GitLab version.
//!
//! Responsible for validating everything before touching anything (manifest, archive,
//! image version, names, addresses), extracting into a staging directory with every hash
//! checked, swapping directories so an instance is never half-restored, and running
//! GitLab's own checks afterwards. Taking backups is `backup`'s job.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::adapters::inventory::Fleet;
use crate::adapters::runtime::{ContainerRuntimeExt, ExecSpec};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::sync_filesystem;
use crate::model::address::{allocate, AddressRequest};
use crate::model::context::Context;
use crate::model::instance::{self, InstanceDirs, InstanceRecord, Stage};
use crate::model::intent::{IntentFile, Operation, RestorePhase};
use crate::ops::backup::{
    extract_from_store, parse_id, read_manifest, Manifest, ProgressFn, Strategy,
};
use crate::ops::checks::GitLabChecks;
use girofle_archive::IndexSummary;

mod undo;

/// What to restore, and where.
#[derive(Clone, Default)]
pub struct RestoreRequest {
    pub id: String,
    /// Store name (default `local`).
    pub store: Option<String>,
    /// Restore as a new instance of this name (default: the instance named in the backup
    /// id, in place when it exists). An existing instance is refused unless `replace`.
    pub as_name: Option<String>,
    /// With `as_name` naming an existing instance: restore over it, in place (its data is
    /// kept aside until the restored instance is healthy).
    pub replace: bool,
    /// Image to run; default the target's own image, else `[instances] image`. Never the
    /// backup's: a store could name any image. Must be exactly the backup's GitLab
    /// version and edition.
    pub image: Option<String>,
    pub addresses: AddressRequest,
    pub timeout: Option<Duration>,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreRequest")
            .field("id", &self.id)
            .field("store", &self.store)
            .field("as_name", &self.as_name)
            .field("replace", &self.replace)
            .field("image", &self.image)
            .finish()
    }
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub name: String,
    pub url: String,
    pub in_place: bool,
    pub image: String,
    pub gitlab_version: String,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// Files restored without the setuid, setgid or sticky bit the backup gave them (the
    /// first ones; `modes_stripped_count` counts them all).
    pub modes_stripped: Vec<String>,
    pub modes_stripped_count: u64,
    /// What `gitlab:check` and `gitlab:doctor:secrets` found (both passed).
    pub checks: GitLabChecks,
}

/// The outcome of a restore drill: whether the backup is valid for its GitLab version.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub id: String,
    pub valid_for_version: Option<String>,
    pub repositories: usize,
    pub fsck_clean: bool,
    /// `gitlab:doctor:secrets` decrypted every row with the backup's secrets.
    pub secrets_ok: bool,
    /// `gitlab:check` reported no failing check.
    pub gitlab_check_ok: bool,
    /// What GitLab's checks printed that failed.
    pub check_failures: Vec<String>,
    pub checked_at: chrono::DateTime<Utc>,
    pub detail: String,
}

fn exec(cmd: &[&str]) -> ExecSpec {
    ExecSpec {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn move_dir(from: &Path, to: &Path) -> Result<()> {
    // Same file system under the root: a rename keeps numeric owners and modes.
    std::fs::rename(from, to).ctx("move", to)
}

impl Context {
    /// Restores a backup. Everything is validated before anything is touched; in place,
    /// the current directories are kept aside until the restored instance is healthy and
    /// passes GitLab's checks, and put back on any failure.
    pub(crate) async fn restore(&self, request: RestoreRequest) -> Result<RestoreReport> {
        self.restore_observed(request, &Mutex::new(None)).await
    }

    /// `restore`, leaving what GitLab's checks found in `checks` when they ran, whether
    /// they passed or not (the drill records it).
    async fn restore_observed(
        &self,
        request: RestoreRequest,
        checks: &Mutex<Option<GitLabChecks>>,
    ) -> Result<RestoreReport> {
        self.journaled(
            "restore",
            json!({
                "id": request.id, "store": request.store, "as": request.as_name,
                "replace": request.replace, "image": request.image,
                "ip": request.addresses.ip, "http_port": request.addresses.http_port,
                "https_port": request.addresses.https_port, "ssh_port": request.addresses.ssh_port,
            }),
            json!({ "image": request.image }),
            Box::pin(self.restore_inner(request.clone(), checks)),
        )
        .await
    }

    async fn restore_inner(
        &self,
        request: RestoreRequest,
        checks: &Mutex<Option<GitLabChecks>>,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        // 1. Arguments and the backup itself. The target is named by the operator (the id
        // or --as), never by the store: a manifest is only data to check.
        let (id_name, _) = parse_id(&request.id)?;
        if let Some(n) = &request.as_name {
            instance::validate_name(n)?;
        }
        let store = self.store(request.store.as_deref())?;
        let manifest = read_manifest(&store, &request.id, &self.trusted_keys()?).await?;
        check_manifest_fields(&manifest, &request.id, store.name())?;
        let target = request.as_name.clone().unwrap_or(id_name);
        let known = self.inventory.load().await?.instances.get(&target).cloned();
        if let Some(r) = &known {
            self.at(r).await?.local_only("restore over")?;
        }
        if let (Some(as_name), Some(_), false) = (&request.as_name, &known, request.replace) {
            return Err(Error::already_exists(
                format!("instance `{as_name}`"),
                format!(
                    "--as restores as a new instance; pick a name no instance has, or add --replace to restore `{}` over `{as_name}` (its data is kept aside until the restored one is healthy)",
                    request.id
                ),
            ));
        }
        let image = request
            .image
            .clone()
            .or_else(|| known.as_ref().map(|r| r.image.clone()))
            .unwrap_or_else(|| self.config.instances.image.clone());
        check_version(&manifest, &image)?;
        let head = store.head(&manifest.archive.key).await.map_err(|_| {
            Error::corrupt(
                format!("backup `{}` in store `{}`", request.id, store.name()),
                "its archive is missing: the backup is incomplete; use another one",
            )
        })?;
        if head.size != manifest.archive.size {
            return Err(Error::corrupt(
                format!("backup `{}` in store `{}`", request.id, store.name()),
                format!(
                    "its archive has {} bytes, the manifest says {}: the backup is incomplete; use another one",
                    head.size, manifest.archive.size
                ),
            ));
        }
        self.ensure_image(&image).await?;

        // 2. The target: in place (it exists) or new (name, container and directory free).
        let fleet = self.inventory.load().await?;
        let existing = fleet.instances.get(&target).cloned();
        let in_place = existing.is_some();
        let container = instance::container_name(&target);
        let dirs = InstanceDirs::new(&self.root, &target);
        if !in_place {
            if self.runtime.inspect(&container).await?.is_some() {
                return Err(Error::already_exists(
                    format!("container `{container}`"),
                    "remove it, or restore with --as NEW_NAME",
                ));
            }
            if dirs.base.exists() {
                return Err(Error::already_exists(
                    format!("directory `{}`", dirs.base.display()),
                    "it holds data Girofle does not know: move it away, or restore with --as NEW_NAME",
                ));
            }
        }
        let _lock = self.lock_instance(&target, "restore").await?;
        // Taking the lock may have recovered an interrupted operation on the target.
        if self.inventory.load().await?.instances.get(&target) != existing.as_ref() {
            return Err(Error::Conflict(format!(
                "instance `{target}` changed while the restore was being prepared (an interrupted operation on it was recovered); run the restore again"
            )));
        }

        // 3. Extract into staging, every hash checked. Nothing of the instance touched yet.
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let staging = self
            .root
            .join("staging")
            .join(format!("restore-{target}-{stamp}"));
        let aside = self
            .root
            .join("staging")
            .join(format!("aside-{target}-{stamp}"));
        // From here until the record goes, a crash is rolled back by recovery: the
        // previous directories come back from `aside` and the previous container again.
        let mut intent = IntentFile::begin(
            self,
            &target,
            Operation::Restore {
                phase: RestorePhase::Extracting,
                previous: existing.clone(),
                staging: staging.clone(),
                aside: aside.clone(),
            },
        )
        .await?;
        let extracted = self
            .extract_to(&store, &manifest, &staging, request.progress.clone())
            .await
            .and_then(|summary| {
                check_gitlab_record(&manifest, &staging)?;
                Ok(summary)
            });
        let extracted = match extracted {
            Ok(summary) => summary,
            Err(e) => {
                self.settle(intent).await;
                return Err(e);
            }
        };

        // 4. Addresses and the record, in one transaction.
        let engine_ports = self.runtime.published_ports().await?;
        let staged_rb =
            std::fs::read_to_string(staging.join("config/gitlab.rb")).unwrap_or_default();
        let mut new_record: Option<InstanceRecord> = None;
        let reservation = self
            .inventory
            .transact(&mut |fleet: &mut Fleet| {
                let bindings = match fleet.instances.get(&target) {
                    Some(current) => current.bindings.clone(),
                    None => {
                        let explicit = request.addresses.ip.is_some()
                            || request.addresses.http_port.is_some()
                            || request.addresses.https_port.is_some()
                            || request.addresses.ssh_port.is_some();
                        let old = &manifest.header.instance.bindings;
                        let same = AddressRequest {
                            ip: Some(old.ip),
                            http_port: Some(old.http_port),
                            https_port: Some(old.https_port),
                            ssh_port: Some(old.ssh_port),
                        };
                        // The same name gets its old addresses back (the same URL) when
                        // they are free here; otherwise fresh ones from the pool.
                        let reuse = if request.as_name.is_none() && !explicit {
                            allocate(
                                &self.config.network,
                                fleet,
                                &engine_ports,
                                &same,
                                None,
                                None,
                                self.runtime.is_on_this_host(),
                            )
                            .ok()
                        } else {
                            None
                        };
                        match reuse {
                            Some(b) => b,
                            None => allocate(
                                &self.config.network,
                                fleet,
                                &engine_ports,
                                &request.addresses,
                                None,
                                None,
                                self.runtime.is_on_this_host(),
                            )?,
                        }
                    }
                };
                let old = &manifest.header.instance;
                // In place, the instance keeps what the inventory says of it; the same
                // name back gets the backup's host name and labels (both checked by
                // `check_manifest_fields`); a new name starts without them.
                let current = fleet.instances.get(&target);
                let hostname = match (current, &request.as_name) {
                    (Some(r), _) => r.hostname.clone(),
                    (None, None) => old.hostname.clone(),
                    (None, Some(_)) => None,
                };
                let labels = match current {
                    Some(r) => r.labels.clone(),
                    None => old.labels.clone(),
                };
                let record = InstanceRecord {
                    name: target.clone(),
                    image: image.clone(),
                    external_url: instance::external_url(hostname.as_deref(), &bindings),
                    bindings,
                    hostname,
                    settings: instance::managed_settings(&staged_rb),
                    labels,
                    created_at: fleet
                        .instances
                        .get(&target)
                        .map(|r| r.created_at)
                        .unwrap_or_else(Utc::now),
                    stage: fleet
                        .instances
                        .get(&target)
                        .map(|r| r.stage)
                        .unwrap_or(Stage::Commissioning),
                    // Restores land on this machine's host (one on another host's
                    // instance is refused above).
                    host: None,
                };
                if !fleet.instances.contains_key(&target) {
                    fleet.instances.insert(target.clone(), record.clone());
                }
                new_record = Some(record);
                Ok(())
            })
            .await;
        let reserved = match reservation {
            Ok(_) => intent.phase(RestorePhase::Reserved).await,
            Err(e) => Err(e),
        };
        if let Err(e) = reserved {
            self.settle(intent).await;
            return Err(e);
        }
        let record = new_record.expect("set by the transaction");

        // 5. Swap the directories, bring the restored instance up, check it.
        if let Err(e) = intent.phase(RestorePhase::Swapping).await {
            self.settle(intent).await;
            return Err(e);
        }
        let outcome = self
            .swap_and_check(
                &record,
                existing.as_ref(),
                &manifest,
                &dirs,
                &staging,
                &aside,
                request.timeout,
                checks,
            )
            .await;
        // Extracted files sit in the page cache until the kernel writes them out: the
        // previous data must not be deleted before the restored data is on the disk.
        let outcome = match outcome {
            Ok(()) => sync_filesystem(&dirs.base),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                let mut done = record.clone();
                done.stage = Stage::Active;
                if let Err(e) = self.put_record(&done).await {
                    self.settle(intent).await;
                    return Err(e);
                }
                // The point of no return: the restored instance is the instance now.
                intent.phase(RestorePhase::Committed).await?;
                let _ = std::fs::remove_dir_all(&aside);
                let _ = std::fs::remove_dir_all(&staging);
                intent.finish().await?;
                Ok(RestoreReport {
                    id: request.id.clone(),
                    name: target,
                    url: done.external_url.clone(),
                    in_place,
                    image,
                    gitlab_version: manifest.header.gitlab_version.clone(),
                    files: manifest.index.files,
                    bytes: manifest.index.bytes,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    modes_stripped: extracted.modes_stripped,
                    modes_stripped_count: extracted.modes_stripped_count,
                    checks: lock(checks).clone().unwrap_or_default(),
                })
            }
            Err(e) => {
                // The previous directories (in place) come back only from `aside`: the
                // instance directory is deleted only when they are there to replace it.
                self.settle(intent).await;
                Err(e)
            }
        }
    }

    /// Streams the archive into `staging`, checking every hash.
    pub(crate) async fn extract_to(
        &self,
        store: &std::sync::Arc<dyn crate::adapters::store::BackupStore>,
        manifest: &Manifest,
        staging: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<IndexSummary> {
        if let Some(parent) = staging.parent() {
            std::fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        extract_from_store(store, &manifest.archive, &manifest.index, staging, progress).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn swap_and_check(
        &self,
        record: &InstanceRecord,
        existing: Option<&InstanceRecord>,
        manifest: &Manifest,
        dirs: &InstanceDirs,
        staging: &Path,
        aside: &Path,
        timeout: Option<Duration>,
        checks: &Mutex<Option<GitLabChecks>>,
    ) -> Result<()> {
        let container = record.container_name();
        if existing.is_some() {
            self.runtime
                .stop(&container, self.stop_grace())
                .await
                .or_else(ignore_missing)?;
            self.runtime.remove(&container, true).await?;
            if dirs.base.exists() {
                move_dir(&dirs.base, aside)?;
            }
        }
        std::fs::create_dir_all(&dirs.base).ctx("create directory", &dirs.base)?;
        move_dir(&staging.join("config"), &dirs.config)?;
        match manifest.header.strategy {
            Strategy::Cold => move_dir(&staging.join("data"), &dirs.data)?,
            Strategy::Online => {
                std::fs::create_dir_all(&dirs.data).ctx("create directory", &dirs.data)?
            }
        }
        if staging.join("logs").exists() {
            move_dir(&staging.join("logs"), &dirs.logs)?;
        } else {
            std::fs::create_dir_all(&dirs.logs).ctx("create directory", &dirs.logs)?;
        }
        self.bring_up(record, dirs, timeout).await?;
        if manifest.header.strategy == Strategy::Online {
            self.gitlab_restore(record, manifest, dirs, staging, timeout)
                .await?;
        }
        // GitLab's own verdict: the configuration is sane and the secrets decrypt the data.
        let found = self.gitlab_checks(&container).await?;
        *lock(checks) = Some(found.clone());
        found.into_result(&manifest.header.id)
    }

    /// Runs `gitlab:check` and `gitlab:doctor:secrets` and reads what they print: both
    /// exit 0 whatever they find.
    pub(crate) async fn gitlab_checks(&self, container: &str) -> Result<GitLabChecks> {
        let check = self
            .runtime
            .exec(
                container,
                &exec(&["gitlab-rake", "gitlab:check", "SANITIZE=true"]),
            )
            .await?;
        let secrets = self
            .runtime
            .exec(container, &exec(&["gitlab-rake", "gitlab:doctor:secrets"]))
            .await?;
        Ok(GitLabChecks::read(
            (&check.output, check.exit_code),
            (&secrets.output, secrets.exit_code),
        ))
    }

    /// GitLab's documented restore sequence for Docker, on a freshly booted instance that
    /// already has the backup's `/etc/gitlab`.
    async fn gitlab_restore(
        &self,
        record: &InstanceRecord,
        manifest: &Manifest,
        dirs: &InstanceDirs,
        staging: &Path,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let container = record.container_name();
        let gid = manifest.header.gitlab_backup_id.clone().ok_or_else(|| {
            Error::corrupt(
                format!("backup `{}`", manifest.header.id),
                "an online backup without GitLab's backup id",
            )
        })?;
        let tar_name = format!("{gid}_gitlab_backup.tar");
        // The restored gitlab.rb says where GitLab looks for its tar.
        let backups = crate::ops::gitlab_backup::backup_path(&record.name, dirs)?.host;
        if !backups.exists() {
            return Err(Error::Conflict(format!(
                "GitLab did not create `{}` at boot; check the image",
                backups.display()
            )));
        }
        let placed = backups.join(&tar_name);
        move_dir(&staging.join("gitlab-backup").join(&tar_name), &placed)?;
        // Puma and Sidekiq must not run during a restore. The health check fails
        // meanwhile; nothing here lets an orchestrator kill the container for that.
        self.runtime
            .exec_ok(&container, &exec(&["gitlab-ctl", "stop", "puma"]))
            .await?;
        self.runtime
            .exec_ok(&container, &exec(&["gitlab-ctl", "stop", "sidekiq"]))
            .await?;
        let restore = ExecSpec {
            cmd: vec!["gitlab-backup".into(), "restore".into()],
            env: vec![format!("BACKUP={gid}"), "GITLAB_ASSUME_YES=1".into()],
            user: None,
        };
        let result = self.runtime.exec_ok(&container, &restore).await;
        let _ = std::fs::remove_file(&placed);
        result.map_err(|e| gitlab_refusal(e, manifest))?;
        self.runtime.stop(&container, self.stop_grace()).await?;
        self.runtime.start(&container).await?;
        self.wait_started(&container, timeout.unwrap_or(self.boot_timeout()))
            .await
    }

    /// Proves a backup valid for its GitLab version (R-BAK-7): restores it into a
    /// throw-away instance, waits healthy, runs `git fsck` on every repository and GitLab's
    /// secrets check, removes the instance, and stores the result beside the backup as
    /// `<id>.drill.json`.
    pub(crate) async fn drill(&self, id: &str, store: Option<&str>) -> Result<DrillReport> {
        let (source, _) = parse_id(id)?;
        let store_handle = self.store(store)?;
        let suffix = format!("{:x}", Utc::now().timestamp_subsec_nanos() % 0xffffff);
        let name = format!("drill-{suffix}");
        // The image the instance runs now, if it is still in the fleet (else the
        // configured one): never the one the backup names.
        let image = self
            .inventory
            .load()
            .await?
            .instances
            .get(&source)
            .map(|r| r.image.clone());
        let checks = Mutex::new(None);
        let restored = self
            .restore_observed(
                RestoreRequest {
                    id: id.to_string(),
                    store: store.map(str::to_string),
                    as_name: Some(name.clone()),
                    image,
                    ..Default::default()
                },
                &checks,
            )
            .await;
        let found = lock(&checks).take();
        let restored = match (restored, found) {
            (Ok(r), _) => r,
            // GitLab's checks ran and failed: the restore was rolled back, and the drill
            // records what they found.
            (Err(e), Some(found)) => {
                let report = DrillReport {
                    id: id.to_string(),
                    valid_for_version: None,
                    repositories: 0,
                    fsck_clean: false,
                    secrets_ok: found.secrets_ok,
                    gitlab_check_ok: found.check_ok,
                    check_failures: found.failures,
                    checked_at: Utc::now(),
                    detail: e.to_string(),
                };
                store_handle
                    .put_bytes(&format!("{id}.drill.json"), drill_json(&report)?.into())
                    .await?;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        let checked = self.fsck_all(&instance::container_name(&name)).await;
        let _ = self
            .decommission(
                &name,
                crate::ops::fleet::DecommissionOptions {
                    purge: true,
                    no_backup: true,
                },
            )
            .await;
        let (repositories, fsck_clean, detail) = checked?;
        let report = DrillReport {
            id: id.to_string(),
            valid_for_version: fsck_clean.then(|| restored.gitlab_version.clone()),
            repositories,
            fsck_clean,
            secrets_ok: restored.checks.secrets_ok,
            gitlab_check_ok: restored.checks.check_ok,
            check_failures: restored.checks.failures.clone(),
            checked_at: Utc::now(),
            detail,
        };
        store_handle
            .put_bytes(&format!("{id}.drill.json"), drill_json(&report)?.into())
            .await?;
        if !fsck_clean {
            return Err(Error::corrupt(
                format!("backup `{id}`"),
                format!(
                    "the restore drill found damaged repositories:\n{}",
                    report.detail
                ),
            ));
        }
        Ok(report)
    }

    /// `git fsck` of every repository of a running instance, as GitLab's `git` user, with
    /// the cosmetic checks Gitaly itself ignores turned off ([`GITALY_IGNORED_FSCK`]):
    /// old imported histories often fail a plain `git fsck --full` while GitLab serves
    /// them fine. A repository that passes only that way is said so in the detail.
    async fn fsck_all(&self, container: &str) -> Result<(usize, bool, String)> {
        let listing = self
            .runtime
            .exec_ok(
                container,
                &exec(&[
                    "sh",
                    "-c",
                    "find /var/opt/gitlab/git-data/repositories -type d -name '*.git' -prune",
                ]),
            )
            .await?;
        let repos: Vec<&str> = listing
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let fsck = |repo: &str, like_gitaly: bool| {
            let mut cmd = vec!["git".to_string()];
            if like_gitaly {
                for check in GITALY_IGNORED_FSCK {
                    cmd.extend(["-c".into(), format!("fsck.{check}=ignore")]);
                }
            }
            cmd.extend([
                "-C".into(),
                repo.to_string(),
                "fsck".into(),
                "--full".into(),
            ]);
            ExecSpec {
                cmd,
                env: vec![],
                user: Some("git".into()),
            }
        };
        let mut clean = true;
        let mut damaged = String::new();
        let mut tolerated = String::new();
        for repo in &repos {
            let plain = self.runtime.exec(container, &fsck(repo, false)).await?;
            if plain.exit_code == 0 {
                continue;
            }
            let gitaly = self.runtime.exec(container, &fsck(repo, true)).await?;
            if gitaly.exit_code == 0 {
                tolerated.push_str(&format!(
                    "{repo}: passes fsck as Gitaly runs it; plain `git fsck` reports: {}\n",
                    plain.output.trim().lines().next().unwrap_or("")
                ));
            } else {
                clean = false;
                damaged.push_str(&format!("{repo}: {}\n", gitaly.output.trim()));
            }
        }
        let detail = if clean {
            format!(
                "{} repositories fsck-clean (ignoring what Gitaly ignores: {})\n{tolerated}",
                repos.len(),
                GITALY_IGNORED_FSCK.join(", ")
            )
        } else {
            damaged
        };
        Ok((repos.len(), clean, detail.trim_end().to_string()))
    }
}

/// The fsck messages Gitaly ignores when it receives objects: cosmetic defects of old
/// histories that Git reads fine (gitlab-contract.md, "Git over HTTP").
pub const GITALY_IGNORED_FSCK: [&str; 3] = [
    "badTimezone",
    "zeroPaddedFilemode",
    "missingSpaceBeforeDate",
];

fn drill_json(report: &DrillReport) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(report).map_err(|e| Error::backend("drill", e.to_string()))
}

fn lock(m: &Mutex<Option<GitLabChecks>>) -> MutexGuard<'_, Option<GitLabChecks>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ignore_missing(e: Error) -> Result<()> {
    match e {
        Error::NotFound { .. } => Ok(()),
        e => Err(e),
    }
}

/// Refuses an image whose GitLab version or edition differs from the backup's.
fn check_version(manifest: &Manifest, image: &str) -> Result<()> {
    let want = (&manifest.header.gitlab_version, &manifest.header.edition);
    let repo = image.rsplit_once(':').map(|(r, _)| r).unwrap_or(image);
    let suggestion = format!("{repo}:{}-{}.0", want.0, want.1);
    match instance::image_version(image) {
        Some((v, e)) if (&v, &e) == want => Ok(()),
        Some((v, e)) => Err(Error::VersionMismatch(format!(
            "backup `{}` was made with GitLab {} ({}), the image `{image}` is GitLab {v} ({e}); GitLab restores only into exactly the same version: use --image {suggestion}",
            manifest.header.id, want.0, want.1
        ))),
        None => Err(Error::invalid(
            "--image",
            format!("`{image}` has no version tag; use --image {suggestion}"),
        )),
    }
}

/// Checks what a manifest says against what the operator asked for, and every field that
/// reaches the engine or GitLab (names, host name, labels, GitLab's backup id, versions).
/// A store can hand back anything: a field that is not what Girofle itself writes makes
/// the backup `Corrupt`, even when its checksum holds.
fn check_manifest_fields(manifest: &Manifest, id: &str, store: &str) -> Result<()> {
    let what = || format!("backup `{id}` in store `{store}`");
    let forged = |why: String| {
        Error::corrupt(
            what(),
            format!("{why}: it was not written by Girofle as it is; use another backup"),
        )
    };
    let h = &manifest.header;
    if h.id != id {
        return Err(forged(format!("its manifest is that of backup `{}`", h.id)));
    }
    let (id_name, _) = parse_id(id)?;
    if h.instance.name != id_name {
        return Err(forged(format!(
            "its manifest names instance `{}`, its id `{id_name}`",
            h.instance.name.escape_debug()
        )));
    }
    if let Some(host) = &h.instance.hostname {
        instance::validate_hostname(host).map_err(|_| {
            forged(format!(
                "its host name `{}` is not a DNS name",
                host.escape_debug()
            ))
        })?;
    }
    for (k, v) in &h.instance.labels {
        if !valid_label_key(k) || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(forged(format!(
                "its label `{}` is not a label Girofle accepts",
                k.escape_debug()
            )));
        }
    }
    if !valid_version(&h.gitlab_version) || !matches!(h.edition.as_str(), "ce" | "ee") {
        return Err(forged(format!(
            "its GitLab version `{}` ({}) is not a version like 17.5.1 (ce or ee)",
            h.gitlab_version.escape_debug(),
            h.edition.escape_debug()
        )));
    }
    match (&h.gitlab_backup_id, h.strategy) {
        (Some(gid), Strategy::Online) if valid_gitlab_backup_id(gid) => Ok(()),
        (Some(gid), Strategy::Online) => Err(forged(format!(
            "its GitLab backup id `{}` is not one `gitlab-backup create` makes",
            gid.escape_debug()
        ))),
        (None, Strategy::Online) => {
            Err(forged("an online backup without GitLab's backup id".into()))
        }
        (_, Strategy::Cold) => Ok(()),
    }
}

/// A container label key: lowercase DNS-like words, not in Girofle's own namespace.
fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.starts_with("io.girofle")
        && k.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '/')
        })
}

/// `17.5.1`: three numbers.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.chars().all(|c| c.is_ascii_digit()))
}

/// `<unix ts>_<YYYY_MM_DD>_<version>` (GitLab's own shape, e.g.
/// `1732572000_2024_11_25_17.5.1`, an edition suffix allowed): it becomes a file name
/// and an environment value inside the container.
fn valid_gitlab_backup_id(gid: &str) -> bool {
    let mut parts = gid.splitn(5, '_');
    let numeric = |p: Option<&str>, len: Option<usize>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && len.is_none_or(|l| p.len() == l)
                && p.chars().all(|c| c.is_ascii_digit())
        })
    };
    numeric(parts.next(), None)
        && numeric(parts.next(), Some(4))
        && numeric(parts.next(), Some(2))
        && numeric(parts.next(), Some(2))
        && parts.next().is_some_and(|v| {
            v.len() <= 40
                && v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        })
}

/// An online backup holds GitLab's own record of the version that made it
/// (`backup_information.yml` in GitLab's tar): it must agree with the manifest, so a
/// manifest that lies about the version is caught before anything is touched.
fn check_gitlab_record(manifest: &Manifest, staging: &Path) -> Result<()> {
    let h = &manifest.header;
    let Some(gid) = (h.strategy == Strategy::Online)
        .then_some(h.gitlab_backup_id.as_ref())
        .flatten()
    else {
        return Ok(());
    };
    let what = format!("backup `{}`", h.id);
    let tar_path = staging
        .join("gitlab-backup")
        .join(format!("{gid}_gitlab_backup.tar"));
    let file = std::fs::File::open(&tar_path).map_err(|_| {
        Error::corrupt(
            what.clone(),
            format!("it has no `gitlab-backup/{gid}_gitlab_backup.tar`: GitLab's part of the backup is missing; use another backup"),
        )
    })?;
    let version = gitlab_version_in_tar(file).map_err(|why| {
        Error::corrupt(
            what.clone(),
            format!("GitLab's backup inside it {why}; use another backup"),
        )
    })?;
    if version != h.gitlab_version {
        return Err(Error::VersionMismatch(format!(
            "{what}: its manifest says GitLab {}, GitLab's own `backup_information.yml` inside it says {version}; GitLab restores only into exactly the version that made a backup: restore it with --image of GitLab {version} after checking where it came from",
            h.gitlab_version
        )));
    }
    Ok(())
}

/// The `:gitlab_version:` of `backup_information.yml` in a `gitlab-backup` tar.
fn gitlab_version_in_tar(file: std::fs::File) -> std::result::Result<String, String> {
    use std::io::Read as _;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let entries = tar.entries().map_err(|e| format!("cannot be read ({e})"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot be read ({e})"))?;
        let path = entry.path_bytes().into_owned();
        if path != b"backup_information.yml" && path != b"./backup_information.yml" {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|_| "has a `backup_information.yml` that is not text".to_string())?;
        return text
            .lines()
            .find_map(|l| l.trim().strip_prefix(":gitlab_version:"))
            .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .filter(|v| valid_version(v.split('-').next().unwrap_or(v)))
            .map(|v| v.split('-').next().unwrap_or(&v).to_string())
            .ok_or_else(|| "has a `backup_information.yml` without `:gitlab_version:`".into());
    }
    Err("has no `backup_information.yml`".into())
}

/// `gitlab-backup restore` refusing another version says so in its output; that is a
/// version mismatch (exit 5), not a failed command.
fn gitlab_refusal(e: Error, manifest: &Manifest) -> Error {
    match e {
        Error::Command { ref output, .. } if output.contains("GitLab version mismatch") => {
            Error::VersionMismatch(format!(
                "GitLab refused to restore backup `{}`: {}",
                manifest.header.id,
                output
                    .lines()
                    .find(|l| l.contains("GitLab version mismatch"))
                    .unwrap_or("GitLab version mismatch")
                    .trim()
            ))
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_backup_ids_are_gitlabs_shape_only() {
        for good in ["1732572000_2024_11_25_17.5.1", "1_2026_01_02_17.6.0-ee"] {
            assert!(valid_gitlab_backup_id(good), "{good}");
        }
        for bad in [
            "",
            "../../tmp/x",
            "1732572000_2024_11_25_17.5.1/../x",
            "1732572000_2024_11_25_",
            "x_2024_11_25_17.5.1",
            "1_2024_1_25_17.5.1",
            "1_2024_11_25_17.5.1 x",
            "1_2024_11_25_$(id)",
        ] {
            assert!(!valid_gitlab_backup_id(bad), "{bad}");
        }
    }

    #[test]
    fn versions_are_three_numbers() {
        assert!(valid_version("17.5.1"));
        for bad in ["17.5", "17.5.1.2", "17.5.x", "17.5.1'", "", "1..2"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn gitlab_record_version_is_read_from_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, body) in [
            ("db/database.sql.gz", &b"x"[..]),
            (
                "backup_information.yml",
                &b"---\n:db_version: 1\n:gitlab_version: 17.6.0\n"[..],
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let v = gitlab_version_in_tar(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(v, "17.6.0");
    }
}
