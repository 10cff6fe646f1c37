//! The container runtime: what Girofle needs from a container engine, and the Docker
//! implementation of it ([`DockerRuntime`], in `docker.rs`).
//!
//! This module knows about containers, images, health states and exec; it knows nothing
//! about GitLab, instances or the inventory. `MemoryRuntime` is the in-memory double
//! of the fast tests, and `conformance` the battery both engines pass (both with the
//! `conformance` feature, or in core's own tests). Operations on instances live in
//! `instance`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, Result};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod docker;
mod host_files;
#[cfg(any(test, feature = "conformance"))]
mod memory;
#[cfg(any(test, feature = "conformance"))]
pub use memory::{ExecCall, ExecScript, MemoryRuntime};

pub use docker::{validate_docker_host, DockerRuntime, EngineOptions, TlsFiles};
pub use host_files::{
    check_relative, filter_import, HostEntry, HostKind, HostListing, HostRoot, ImportSummary,
    TarStream, HELPER_LABEL, HELPER_MOUNT, HELPER_ROOT_LABEL,
};

/// A host directory bind-mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bind {
    pub host: String,
    pub container: String,
}

/// A container port published on a host address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// How the engine probes the container's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    /// Time between probes while the container starts (until its first passing probe
    /// within `start_period`); engines older than API 1.44 probe at `interval` anyway.
    pub start_interval: Duration,
}

/// Everything needed to create a container.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub binds: Vec<Bind>,
    pub ports: Vec<PublishedPort>,
    /// Restart unless stopped by hand (the engine's `unless-stopped`).
    pub restart_unless_stopped: bool,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: u64,
    /// The engine's log rotation: size of one file (`50m`) and files kept.
    pub log_max_size: String,
    pub log_max_files: u32,
    /// Grace the engine gives on any stop (`docker stop` by hand, engine shutdown).
    pub stop_timeout: Duration,
    pub health_check: Option<HealthCheck>,
}

/// The engine's view of a container's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check configured.
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// One health probe result, as the engine recorded it.
#[derive(Clone, Debug, Serialize)]
pub struct HealthProbe {
    pub exit_code: i64,
    pub output: String,
}

/// What Girofle needs to know about an existing container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// The engine's status word: created, running, exited, restarting, ...
    pub status: String,
    pub running: bool,
    pub health: Health,
    /// The last probes, oldest first.
    pub health_log: Vec<HealthProbe>,
    pub ports: Vec<PublishedPort>,
    pub env: Vec<String>,
}

/// A command to run inside a running container.
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
}

/// The result of an exec: exit code and stdout+stderr interleaved.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
}

/// A container engine. Implemented for Docker by [`DockerRuntime`].
#[async_trait]
pub trait ContainerRuntime: Debug + Send + Sync + 'static {
    /// Creates (does not start) a container; returns its id.
    ///
    /// # Errors
    /// `AlreadyExists` when the name is taken, `NotFound` when the image is absent,
    /// `Backend` otherwise. A published port that is taken is refused at [`start`], as
    /// Docker does (the conformance battery checks it).
    ///
    /// [`start`]: ContainerRuntime::start
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;

    /// Starts a created or stopped container.
    ///
    /// # Errors
    /// `NotFound` when there is no such container, `Conflict` when a port is taken.
    async fn start(&self, name: &str) -> Result<()>;

    /// Stops a container, killing it after `grace`. Stopping a stopped container is Ok.
    ///
    /// # Errors
    /// `NotFound` when there is no such container.
    async fn stop(&self, name: &str, grace: Duration) -> Result<()>;

    /// Removes a container (forcefully when `force`). Removing a missing one is Ok; when
    /// a removal is already under way (one a killed process asked for), waits for it:
    /// once this returns Ok the container is gone.
    ///
    /// # Errors
    /// `Conflict` when the container runs and `force` is not set, or when a removal under
    /// way does not end in time; `Backend` when the engine fails otherwise.
    async fn remove(&self, name: &str, force: bool) -> Result<()>;

    /// Inspects a container; `None` when it does not exist.
    ///
    /// # Errors
    /// `Backend` when the engine cannot be reached.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>>;

    /// All containers (running or not) carrying every one of `labels`.
    ///
    /// # Errors
    /// `Backend` when the engine cannot be reached.
    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<ContainerInfo>>;

    /// Every published port of every container on the engine, with the container name.
    ///
    /// # Errors
    /// `Backend` when the engine cannot be reached.
    async fn published_ports(&self) -> Result<Vec<(String, PublishedPort)>>;

    /// Runs a command inside a running container and waits for it.
    ///
    /// # Errors
    /// `NotFound` when the container does not exist, `Backend` when the exec fails to run.
    /// A non-zero exit code is not an error here: see [`ContainerRuntimeExt::exec_ok`].
    async fn exec(&self, name: &str, spec: &ExecSpec) -> Result<ExecOutput>;

    /// The last `lines` lines of the container's output.
    ///
    /// # Errors
    /// `NotFound` when the container does not exist.
    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String>;

    /// The content of one regular file of a container (created or running), at most
    /// `max_bytes`; `None` when the container has no such file.
    ///
    /// # Errors
    /// `NotFound` when the container does not exist, `Backend` when the engine fails or
    /// the file is larger than `max_bytes`.
    async fn read_file(&self, name: &str, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>>;

    /// Whether the image is present locally.
    ///
    /// # Errors
    /// `Backend` when the engine cannot be reached.
    async fn image_present(&self, image: &str) -> Result<bool>;

    /// Pulls an image from its registry.
    ///
    /// # Errors
    /// `NotFound` when the registry cannot give it.
    async fn pull(&self, image: &str) -> Result<()>;

    /// Whether the engine runs on this host, so that the addresses it publishes on are
    /// this host's (checked by binding a socket). True unless the runtime knows better.
    fn is_on_this_host(&self) -> bool {
        true
    }

    // Files on the engine's host, reached only through the engine (issue 15: nothing
    // through local paths). Each call runs a short-lived helper container of
    // `root.image` (never pulled), labelled [`HELPER_LABEL`], without network, with
    // `root.path` bind-mounted at [`HELPER_MOUNT`]; it is removed afterwards, even on
    // error. Paths are relative to `root.path` and checked by [`check_relative`].

    /// Creates directories (and their missing parents, `root:root 0755`) and gives each
    /// the owner and mode asked, also when it already exists.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path or mode (nothing is created), `NotFound` when
    /// `root.image` is not on the engine (nothing is created), `Conflict` when a path is
    /// a file, `Backend` when the engine fails.
    async fn make_host_dirs(&self, root: &HostRoot, dirs: &[HostEntry]) -> Result<()>;

    /// Writes a file atomically (a temporary file beside it, then a rename) with the
    /// owner and mode of `file`, replacing an existing file.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path or mode, `NotFound` when the image or the file's
    /// directory is absent, `Conflict` when the path is a directory, `Backend` otherwise.
    async fn write_host_file(
        &self,
        root: &HostRoot,
        file: &HostEntry,
        content: &[u8],
    ) -> Result<()>;

    /// Takes away the group's and others' permissions from those of `paths` that are
    /// regular files (gitlab.rb, gitlab-secrets.json restored with the archive's modes);
    /// a missing path, a directory or a symlink is left alone.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image is absent, `Backend`
    /// otherwise.
    async fn make_host_files_private(&self, root: &HostRoot, paths: &[String]) -> Result<()>;

    /// The content of a regular file, at most `max_bytes`; `None` when there is none.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path or when it is not a regular file, `NotFound` when
    /// the image is absent, `Backend` when the engine fails or the file is larger than
    /// `max_bytes`.
    async fn read_host_file(
        &self,
        root: &HostRoot,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>>;

    /// The entries of a directory (`path` `""` is `root.path`), links not followed,
    /// sorted by name. Names that are not UTF-8 are given lossily.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image is absent or `path` is
    /// not a directory, `Backend` otherwise.
    async fn list_host_dir(&self, root: &HostRoot, path: &str) -> Result<Vec<HostListing>>;

    /// Streams a directory out as a tar (see [`TarStream`]: owners, modes, mtimes,
    /// symlinks and hard links kept); `path` `""` is `root.path` itself. The stream is
    /// produced as it is read, never held whole in memory; the helper is removed when the
    /// stream ends or is dropped.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image or the directory is
    /// absent; the stream yields `Backend` when the engine fails midway.
    async fn export_host_dir(&self, root: &HostRoot, path: &str) -> Result<TarStream>;

    /// Creates directory `path` from a tar stream (as [`export_host_dir`] gives),
    /// keeping owners, modes, mtimes, symlinks and hard links. The tar goes through
    /// [`filter_import`], which refuses any entry that could write or point outside
    /// `path`; it is extracted into a temporary sibling that is renamed to `path` only
    /// when all of it was accepted, so a refused or failed import leaves nothing.
    /// Streams: memory stays flat whatever the size.
    ///
    /// [`export_host_dir`]: ContainerRuntime::export_host_dir
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image or the parent directory
    /// is absent, `AlreadyExists` when `path` exists, `Corrupt` naming a refused entry,
    /// `Backend` when the engine or the stream fails.
    async fn import_host_dir(
        &self,
        root: &HostRoot,
        path: &str,
        tar: TarStream,
    ) -> Result<ImportSummary>;

    /// Renames `from` to `to` on the host (the decommissioned copy set aside), making
    /// the missing parents of `to` (`root:root 0755`).
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image or `from` is absent,
    /// `AlreadyExists` when `to` exists, `Backend` otherwise.
    async fn move_host_dir(&self, root: &HostRoot, from: &str, to: &str) -> Result<()>;

    /// Removes a directory or file and everything below it; a missing one is Ok.
    ///
    /// # Errors
    /// `InvalidInput` for a bad path, `NotFound` when the image is absent, `Backend`
    /// otherwise.
    async fn remove_host_dir(&self, root: &HostRoot, path: &str) -> Result<()>;

    /// Bytes free for an unprivileged user on the file system holding `root.path`.
    ///
    /// # Errors
    /// `NotFound` when the image is absent, `Backend` otherwise.
    async fn host_free_space(&self, root: &HostRoot) -> Result<u64>;

    /// Removes every helper container of `root` (labels [`HELPER_LABEL`] and
    /// [`HELPER_ROOT_LABEL`]) with its anonymous volumes: the leftovers of a killed
    /// process. Returns how many there were. It also removes the helpers of another
    /// process working on `root` at the same moment: call it only when none does.
    ///
    /// # Errors
    /// `Backend` when the engine fails.
    async fn remove_helpers(&self, root: &HostRoot) -> Result<usize>;
}

/// Conveniences on top of [`ContainerRuntime`].
#[async_trait]
pub trait ContainerRuntimeExt: ContainerRuntime {
    /// Runs a command and fails with `Error::Command` on a non-zero exit code.
    ///
    /// # Errors
    /// `Command` on a non-zero exit, and whatever [`ContainerRuntime::exec`] returns.
    async fn exec_ok(&self, name: &str, spec: &ExecSpec) -> Result<String> {
        let out = self.exec(name, spec).await?;
        if out.exit_code != 0 {
            return Err(Error::Command {
                container: name.to_string(),
                command: spec.cmd.join(" "),
                exit_code: out.exit_code,
                output: last_lines(&out.output, 30),
            });
        }
        Ok(out.output)
    }
}

impl<T: ContainerRuntime + ?Sized> ContainerRuntimeExt for T {}

/// The last `n` lines of a text.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
