//! [`ContainerRuntime`] on the Docker engine, through `bollard`: how Docker's answers
//! (status codes and messages) are lifted into Girofle's errors, which the in-memory
//! double (`memory.rs`) mirrors and the conformance battery checks.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ExecConfig, HealthConfig, HealthStatusEnum, HostConfig,
    HostConfigLogConfig, PortBinding as DockerPortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ExecOutput, ExecSpec, Health, HealthProbe,
    HostEntry, HostListing, HostRoot, ImportSummary, PublishedPort, TarStream,
};

// The host-file primitives (make_host_dirs ... remove_helpers): a child module, so that
// it shares this file's lifting of Docker's errors.
#[path = "docker_files.rs"]
mod files;
use crate::error::{Error, Result};

/// Checks a Docker engine address: `unix:///path`, `tcp://HOST:PORT`, `http(s)://...`.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_docker_host(field: &str, host: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(
            field,
            format!("`{host}` {why}; use unix:///var/run/docker.sock or tcp://HOST:2375"),
        )
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("is not an absolute socket path"));
        }
        return Ok(());
    }
    let url = url::Url::parse(host).map_err(|e| bad(&format!("is not an address ({e})")))?;
    match url.scheme() {
        "tcp" | "http" | "https" => {}
        other => return Err(bad(&format!("has the unsupported scheme `{other}`"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    Ok(())
}

/// [`ContainerRuntime`] on the Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
}

const DOCKER: &str = "Docker engine";
/// How long `remove` waits for a removal the engine is already carrying out.
const REMOVAL_WAIT: Duration = Duration::from_secs(120);

impl DockerRuntime {
    /// Connects to the engine at `host` (`unix:///path`, `tcp://host:port`), else
    /// `$DOCKER_HOST`, else the local socket, and negotiates the API version (Debian's
    /// engine speaks an older API than bollard's default).
    ///
    /// # Errors
    /// `Backend` saying how to start the engine when it cannot be reached.
    pub async fn connect(host: Option<&str>) -> Result<Self> {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::backend(
                DOCKER,
                format!(
                    "cannot reach the Docker engine at {host}: {e}; start it (`systemctl start docker` or `dockerd &`) or point DOCKER_HOST / [docker] host in girofle.toml at a running one"
                ),
            )
        };
        validate_docker_host(
            "docker host (--docker-host, DOCKER_HOST or [docker] host)",
            &host,
        )?;
        let docker = Docker::connect_with_host(&host).map_err(|e| unreachable(&e))?;
        let docker = tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version())
            .await
            .map_err(|_| unreachable(&"no answer within 15 s"))?
            .map_err(|e| unreachable(&e))?;
        Ok(DockerRuntime { docker, host })
    }

    /// Whether the API version negotiated with the engine is at least `major.minor`.
    fn speaks(&self, major: usize, minor: usize) -> bool {
        let v = self.docker.client_version();
        (v.major_version, v.minor_version) >= (major, minor)
    }

    /// Waits (bounded) until the engine no longer has container `name`.
    async fn wait_removed(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
        while self.inspect(name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Conflict(format!(
                    "remove container `{name}`: the engine has been removing it for over {} s; check `docker ps -a` and the engine's log, then try again",
                    REMOVAL_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The engine address this runtime talks to.
    pub fn host(&self) -> &str {
        &self.host
    }
}

fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn docker_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn lift(e: bollard::errors::Error, what: &str) -> Error {
    let message = docker_message(&e);
    match status_code(&e) {
        Some(404) => Error::not_found(what.to_string(), message),
        Some(409) => Error::Conflict(format!("{what}: {message}")),
        _ if message.contains("port is already allocated")
            || message.contains("address already in use") =>
        {
            Error::Conflict(format!(
                "{what}: {message}; free the port or choose another one"
            ))
        }
        _ => Error::backend(DOCKER, format!("{what}: {message}")),
    }
}

fn secs_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn to_info(r: bollard::models::ContainerInspectResponse) -> ContainerInfo {
    let state = r.state.unwrap_or_default();
    let (health, health_log) = match state.health {
        Some(h) => {
            let status = match h.status {
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                _ => Health::None,
            };
            let log = h
                .log
                .unwrap_or_default()
                .into_iter()
                .map(|p| HealthProbe {
                    exit_code: p.exit_code.unwrap_or(-1),
                    output: p.output.unwrap_or_default(),
                })
                .collect();
            (status, log)
        }
        None => (Health::None, Vec::new()),
    };
    let mut ports = Vec::new();
    if let Some(bindings) = r
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
    {
        for (key, list) in bindings {
            let container_port = key
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for b in list.iter().flatten() {
                if let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) {
                    ports.push(PublishedPort {
                        host_ip: b.host_ip.clone().unwrap_or_default(),
                        host_port,
                        container_port,
                    });
                }
            }
        }
    }
    ports.sort_by_key(|p| p.container_port);
    let config = r.config.unwrap_or_default();
    ContainerInfo {
        id: r.id.unwrap_or_default(),
        name: r
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        status: state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        running: state.running.unwrap_or(false),
        health,
        health_log,
        ports,
        env: config.env.unwrap_or_default(),
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut port_bindings: HashMap<String, Option<Vec<DockerPortBinding>>> = HashMap::new();
        let mut exposed: Vec<String> = Vec::new();
        for p in &spec.ports {
            let key = format!("{}/tcp", p.container_port);
            exposed.push(key.clone());
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(DockerPortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let healthcheck = spec.health_check.as_ref().map(|h| HealthConfig {
            test: Some(
                std::iter::once("CMD".to_string())
                    .chain(h.test.iter().cloned())
                    .collect(),
            ),
            interval: Some(secs_ns(h.interval)),
            timeout: Some(secs_ns(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(secs_ns(h.start_period)),
            start_interval: self.speaks(1, 44).then(|| secs_ns(h.start_interval)),
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: spec.hostname.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(exposed),
            healthcheck,
            stop_timeout: Some(i64::try_from(spec.stop_timeout.as_secs()).unwrap_or(i64::MAX)),
            host_config: Some(HostConfig {
                shm_size: Some(i64::try_from(spec.shm_size).unwrap_or(i64::MAX)),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), spec.log_max_size.clone()),
                        ("max-file".to_string(), spec.log_max_files.to_string()),
                    ])),
                }),
                binds: Some(
                    spec.binds
                        .iter()
                        .map(|b| format!("{}:{}", b.host, b.container))
                        .collect(),
                ),
                port_bindings: Some(port_bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(if spec.restart_unless_stopped {
                        RestartPolicyNameEnum::UNLESS_STOPPED
                    } else {
                        RestartPolicyNameEnum::NO
                    }),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        match self.docker.create_container(Some(options), body).await {
            Ok(r) => Ok(r.id),
            Err(e) => {
                let message = docker_message(&e);
                match status_code(&e) {
                    Some(404) => Err(Error::not_found(
                        format!("image `{}`", spec.image),
                        format!(
                            "pull it first (`docker pull {}`), or pass another --image",
                            spec.image
                        ),
                    )),
                    Some(409) => Err(Error::already_exists(
                        format!("container `{}`", spec.name),
                        format!(
                            "{message}; remove it (`docker rm -f {}`) or choose another name",
                            spec.name
                        ),
                    )),
                    _ => Err(lift(e, &format!("create container `{}`", spec.name))),
                }
            }
        }
    }

    async fn start(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .or_else(|e| match status_code(&e) {
                Some(304) => Ok(()),
                _ => Err(lift(e, &format!("container `{name}`"))),
            })
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        self.docker
            .stop_container(name, Some(options))
            .await
            .or_else(|e| match status_code(&e) {
                Some(304) => Ok(()),
                _ => Err(lift(e, &format!("container `{name}`"))),
            })
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(force)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            // Another client's removal (e.g. of a process killed mid-way) is still being
            // carried out by the engine: the container is going, wait until it is gone.
            Err(e)
                if status_code(&e) == Some(409) && docker_message(&e).contains("in progress") =>
            {
                self.wait_removed(name).await
            }
            Err(e) => Err(lift(e, &format!("remove container `{name}`"))),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(r) => Ok(Some(to_info(r))),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(lift(e, &format!("inspect container `{name}`"))),
        }
    }

    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<ContainerInfo>> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        );
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| lift(e, "list containers"))?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            // A container can vanish between the listing and the inspection.
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn published_ports(&self) -> Result<Vec<(String, PublishedPort)>> {
        let options = ListContainersOptionsBuilder::default().all(true).build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| lift(e, "list containers"))?;
        let mut out = Vec::new();
        for s in summaries {
            let name = s
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            // Stopped containers do not show their ports in the summary: inspect them.
            if let Some(id) = &s.id {
                if let Some(info) = self.inspect(id).await? {
                    for p in info.ports {
                        out.push((name.clone(), p));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn exec(&self, name: &str, spec: &ExecSpec) -> Result<ExecOutput> {
        let exec = self
            .docker
            .create_exec(
                name,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(spec.cmd.clone()),
                    env: Some(spec.env.clone()),
                    user: spec.user.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| lift(e, &format!("exec in container `{name}`")))?;
        let mut output = String::new();
        match self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| lift(e, &format!("exec in container `{name}`")))?
        {
            bollard::exec::StartExecResults::Attached {
                output: mut stream, ..
            } => {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| lift(e, &format!("exec in `{name}`")))?;
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| lift(e, &format!("exec in container `{name}`")))?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code.unwrap_or(-1),
            output,
        })
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| lift(e, &format!("logs of container `{name}`")))?;
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }

    async fn read_file(&self, name: &str, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self.docker.download_from_container(name, Some(options));
        let mut tar_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => tar_bytes.extend_from_slice(&c),
                // 404 names the container or the path: a missing container is NotFound,
                // a missing file is None.
                Err(e) if status_code(&e) == Some(404) => {
                    return match self.inspect(name).await? {
                        Some(_) => Ok(None),
                        None => Err(Error::not_found(
                            format!("container `{name}`"),
                            "it disappeared while Girofle read a file of it",
                        )),
                    };
                }
                Err(e) => return Err(lift(e, &format!("read `{path}` of container `{name}`"))),
            }
            if tar_bytes.len() > max_bytes + 64 * 1024 {
                return Err(Error::backend(
                    "docker",
                    format!("`{path}` of container `{name}` is larger than {max_bytes} bytes"),
                ));
            }
        }
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let entries = archive
            .entries()
            .map_err(|e| Error::backend("docker", format!("archive of `{path}`: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::backend("docker", format!("archive of `{path}`: {e}")))?;
            if entry.header().entry_type().is_file() {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut out)
                    .map_err(|e| Error::backend("docker", format!("archive of `{path}`: {e}")))?;
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(lift(e, &format!("inspect image `{image}`"))),
        }
    }

    /// A unix socket is an engine on this host; so is a TCP address on loopback. Any
    /// other TCP address may be another machine, whose interfaces this one cannot see.
    fn is_on_this_host(&self) -> bool {
        if self.host.starts_with("unix://") {
            return true;
        }
        url::Url::parse(&self.host).is_ok_and(|u| match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        })
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(step) = stream.next().await {
            step.map_err(|e| {
                Error::not_found(
                    format!("image `{image}`"),
                    format!(
                        "the engine could not pull it ({}); load it by hand (`docker load`) or pass another --image",
                        docker_message(&e)
                    ),
                )
            })?;
        }
        Ok(())
    }
    // The host-file primitives: see docker_files.rs.

    async fn make_host_dirs(&self, root: &HostRoot, dirs: &[HostEntry]) -> Result<()> {
        self.files_make_dirs(root, dirs).await
    }

    async fn write_host_file(
        &self,
        root: &HostRoot,
        file: &HostEntry,
        content: &[u8],
    ) -> Result<()> {
        self.files_write(root, file, content).await
    }

    async fn make_host_files_private(&self, root: &HostRoot, paths: &[String]) -> Result<()> {
        self.files_make_private(root, paths).await
    }

    async fn read_host_file(
        &self,
        root: &HostRoot,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>> {
        self.files_read(root, path, max_bytes).await
    }

    async fn list_host_dir(&self, root: &HostRoot, path: &str) -> Result<Vec<HostListing>> {
        self.files_list(root, path).await
    }

    async fn export_host_dir(&self, root: &HostRoot, path: &str) -> Result<TarStream> {
        self.files_export(root, path).await
    }

    async fn import_host_dir(
        &self,
        root: &HostRoot,
        path: &str,
        tar: TarStream,
    ) -> Result<ImportSummary> {
        self.files_import(root, path, tar).await
    }

    async fn move_host_dir(&self, root: &HostRoot, from: &str, to: &str) -> Result<()> {
        self.files_move(root, from, to).await
    }

    async fn remove_host_dir(&self, root: &HostRoot, path: &str) -> Result<()> {
        self.files_remove(root, path).await
    }

    async fn host_free_space(&self, root: &HostRoot) -> Result<u64> {
        self.files_free_space(root).await
    }

    async fn remove_helpers(&self, root: &HostRoot) -> Result<usize> {
        self.files_remove_helpers(root).await
    }
}
