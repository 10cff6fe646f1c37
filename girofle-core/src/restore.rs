//! Restore (R-BAK-3,7,9): bring an instance back from a backup in any store, in place or
//! as a new instance, on this engine or another; and the restore drill that proves a
//! backup valid for its GitLab version.
//!
//! Responsible for validating everything before touching anything (manifest, archive,
//! image version, names, addresses), extracting into a staging directory with every hash
//! checked, swapping directories so an instance is never half-restored, and running
//! GitLab's own checks afterwards. Taking backups is `backup`'s job.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::address::{allocate, AddressRequest};
use crate::backup::{extract_from_store, parse_id, read_manifest, Manifest, ProgressFn, Strategy};
use crate::error::{Error, IoContext, Result};
use crate::fleet::Girofle;
use crate::fsutil::sync_filesystem;
use crate::instance::{self, InstanceDirs, InstanceRecord, Stage};
use crate::inventory::Fleet;
use crate::recovery::{IntentFile, Operation};
use crate::runtime::{ContainerRuntimeExt, ExecSpec};

/// What to restore, and where.
#[derive(Clone, Default)]
pub struct RestoreRequest {
    pub id: String,
    /// Store name (default `local`).
    pub store: Option<String>,
    /// Restore as a new instance of this name (default: the backup's instance, in place
    /// when it exists).
    pub as_name: Option<String>,
    /// Image to run; default the backup's. Must be exactly the backup's GitLab version
    /// and edition.
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
}

/// The outcome of a restore drill: whether the backup is valid for its GitLab version.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub id: String,
    pub valid_for_version: Option<String>,
    pub repositories: usize,
    pub fsck_clean: bool,
    pub secrets_ok: bool,
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

impl Girofle {
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
        self.journaled(
            "restore",
            json!({
                "id": request.id, "store": request.store, "as": request.as_name, "image": request.image,
                "ip": request.addresses.ip, "http_port": request.addresses.http_port,
                "https_port": request.addresses.https_port, "ssh_port": request.addresses.ssh_port,
            }),
            json!({ "image": request.image }),
            Box::pin(self.restore_inner(request.clone())),
        )
        .await
    }

    async fn restore_inner(&self, request: RestoreRequest) -> Result<RestoreReport> {
        let started = Instant::now();
        // 1. Arguments and the backup itself.
        parse_id(&request.id)?;
        if let Some(n) = &request.as_name {
            instance::validate_name(n)?;
        }
        let store = self.store(request.store.as_deref())?;
        let manifest = read_manifest(&store, &request.id, &self.trusted_keys()?).await?;
        let target = request
            .as_name
            .clone()
            .unwrap_or_else(|| manifest.header.instance.name.clone());
        let image = request
            .image
            .clone()
            .unwrap_or_else(|| manifest.header.image.clone());
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
            &self.root,
            &target,
            Operation::Restore {
                previous: existing.clone(),
                staging: staging.clone(),
                aside: aside.clone(),
            },
            "extracting",
        )?;
        let extracted = self
            .extract_to(&store, &manifest, &staging, request.progress.clone())
            .await;
        if let Err(e) = extracted {
            self.settle(intent).await;
            return Err(e);
        }

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
                            )?,
                        }
                    }
                };
                let old = &manifest.header.instance;
                let hostname = if request.as_name.is_none() {
                    old.hostname.clone()
                } else {
                    None
                };
                let record = InstanceRecord {
                    name: target.clone(),
                    image: image.clone(),
                    external_url: instance::external_url(hostname.as_deref(), &bindings),
                    bindings,
                    hostname,
                    settings: instance::managed_settings(&staged_rb),
                    labels: old.labels.clone(),
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
                };
                if !fleet.instances.contains_key(&target) {
                    fleet.instances.insert(target.clone(), record.clone());
                }
                new_record = Some(record);
                Ok(())
            })
            .await;
        if let Err(e) = reservation.and_then(|_| intent.phase("reserved")) {
            self.settle(intent).await;
            return Err(e);
        }
        let record = new_record.expect("set by the transaction");

        // 5. Swap the directories, bring the restored instance up, check it.
        if let Err(e) = intent.phase("swapping") {
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
                intent.phase("committed")?;
                let _ = std::fs::remove_dir_all(&aside);
                let _ = std::fs::remove_dir_all(&staging);
                intent.finish()?;
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
        store: &std::sync::Arc<dyn crate::store::BackupStore>,
        manifest: &Manifest,
        staging: &Path,
        progress: Option<ProgressFn>,
    ) -> Result<()> {
        if let Some(parent) = staging.parent() {
            std::fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        extract_from_store(store, &manifest.archive, &manifest.index, staging, progress)
            .await
            .map(|_| ())
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
        self.runtime
            .exec_ok(
                &container,
                &exec(&["gitlab-rake", "gitlab:check", "SANITIZE=true"]),
            )
            .await?;
        self.runtime
            .exec_ok(&container, &exec(&["gitlab-rake", "gitlab:doctor:secrets"]))
            .await?;
        Ok(())
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
        let backups = dirs.data.join("backups");
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
        result?;
        self.runtime.stop(&container, self.stop_grace()).await?;
        self.runtime.start(&container).await?;
        self.runtime
            .wait_healthy(&container, timeout.unwrap_or(self.boot_timeout()))
            .await
    }

    /// Proves a backup valid for its GitLab version (R-BAK-7): restores it into a
    /// throw-away instance, waits healthy, runs `git fsck` on every repository and GitLab's
    /// secrets check, removes the instance, and stores the result beside the backup as
    /// `<id>.drill.json`.
    ///
    /// # Errors
    /// As `restore`; a drill that ran but found damage is `Corrupt`.
    pub async fn drill(&self, id: &str, store: Option<&str>) -> Result<DrillReport> {
        parse_id(id)?;
        let store_handle = self.store(store)?;
        let suffix = format!("{:x}", Utc::now().timestamp_subsec_nanos() % 0xffffff);
        let name = format!("drill-{suffix}");
        let restored = self
            .restore(RestoreRequest {
                id: id.to_string(),
                store: store.map(str::to_string),
                as_name: Some(name.clone()),
                ..Default::default()
            })
            .await?;
        let checked = self.fsck_all(&instance::container_name(&name)).await;
        let _ = self
            .decommission(
                &name,
                crate::fleet::DecommissionOptions {
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
            secrets_ok: true,
            checked_at: Utc::now(),
            detail,
        };
        let doc = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::backend("drill", e.to_string()))?;
        store_handle
            .put_bytes(&format!("{id}.drill.json"), doc.into())
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

    /// `git fsck` of every repository of a running instance, as GitLab's `git` user.
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
        let mut clean = true;
        let mut detail = String::new();
        for repo in &repos {
            let out = self
                .runtime
                .exec(
                    container,
                    &ExecSpec {
                        cmd: vec![
                            "git".into(),
                            "-C".into(),
                            repo.to_string(),
                            "fsck".into(),
                            "--full".into(),
                        ],
                        env: vec![],
                        user: Some("git".into()),
                    },
                )
                .await?;
            if out.exit_code != 0 {
                clean = false;
                detail.push_str(&format!("{repo}: {}\n", out.output.trim()));
            }
        }
        if clean {
            detail = format!("{} repositories fsck-clean", repos.len());
        }
        Ok((repos.len(), clean, detail))
    }
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
