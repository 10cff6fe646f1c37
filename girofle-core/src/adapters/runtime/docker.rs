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

/// What an engine address may be, for errors about one.
const ENGINE_FORMS: &str = "use unix:///var/run/docker.sock, tcp://HOST:2376 with TLS client certificates, or tcp://HOST:2375 (plain, for a trusted network only)";

/// Checks a Docker engine address: `unix:///path`, `tcp://HOST:PORT`, `http(s)://...`.
/// `ssh://` is refused: bollard's ssh transport drives OpenSSH's client binary (the
/// `openssh` crate), a system dependency Girofle does not take.
///
/// # Errors
/// `InvalidInput` naming `field` and saying what is expected.
pub fn validate_docker_host(field: &str, host: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid(field, format!("`{host}` {why}; {ENGINE_FORMS}"));
    if let Some(path) = host.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("is not an absolute socket path"));
        }
        return Ok(());
    }
    let url = url::Url::parse(host).map_err(|e| bad(&format!("is not an address ({e})")))?;
    match url.scheme() {
        "tcp" | "http" | "https" => {}
        "ssh" => {
            return Err(bad(
                "has the scheme `ssh`, which this build of Girofle does not speak (it would need OpenSSH's client and its control sockets); expose the engine with TLS (dockerd --tlsverify -H tcp://0.0.0.0:2376) and give its client certificates, or forward its socket (ssh -NL 127.0.0.1:2375:/var/run/docker.sock HOST) and use tcp://127.0.0.1:2375",
            ))
        }
        other => return Err(bad(&format!("has the unsupported scheme `{other}`"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    Ok(())
}

/// The client certificates of an engine that checks them (`dockerd --tlsverify`), as
/// PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the engine's certificate.
    pub ca: std::path::PathBuf,
    /// This client's certificate and key.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir` (the layout of `$DOCKER_CERT_PATH`).
    pub fn in_dir(dir: &std::path::Path) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// How to reach an engine.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// `unix:///path` or `tcp://host:port`; default `$DOCKER_HOST`, then the local socket.
    pub host: Option<String>,
    /// Client certificates for a `tcp://` engine with TLS; default, when `host` comes
    /// from `$DOCKER_HOST`: `$DOCKER_CERT_PATH` if `$DOCKER_TLS_VERIFY` is set.
    pub tls: Option<TlsFiles>,
    /// How long to wait for the engine's first answer (default 15 s).
    pub connect_timeout: Option<Duration>,
    /// Whether the engine runs on this machine (its published addresses are this
    /// machine's); default: a unix socket or a loopback address is.
    pub on_this_host: Option<bool>,
    /// The `[hosts.NAME]` this engine is, for errors that say what to fix.
    pub host_name: Option<String>,
}

/// [`ContainerRuntime`] on the Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    on_this_host: Option<bool>,
    server_version: String,
}

const DOCKER: &str = "Docker engine";
/// How long `connect` waits for the engine's first answer unless told otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// bollard's own bound on one request (its default): long execs stream, so this is
/// about an engine that stopped answering.
const REQUEST_TIMEOUT_SECS: u64 = 120;
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
        Self::connect_with(&EngineOptions {
            host: host.map(str::to_string),
            ..EngineOptions::default()
        })
        .await
    }

    /// Connects to an engine as `options` say (TLS client certificates, a bounded wait),
    /// negotiates the API version and reads the engine's version.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed address or unreadable certificates, `Backend`
    /// saying how to start the engine when it cannot be reached in time.
    pub async fn connect_with(options: &EngineOptions) -> Result<Self> {
        let from_env = options.host.is_none();
        let host = options
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::backend(
                DOCKER,
                match &options.host_name {
                    Some(name) => format!(
                        "cannot reach the Docker engine of host `{name}` at {host}: {e}; start it on that machine, or fix [hosts.{name}] engine and tls in girofle.toml"
                    ),
                    None => format!(
                        "cannot reach the Docker engine at {host}: {e}; start it (`systemctl start docker` or `dockerd &`) or point DOCKER_HOST / [docker] host in girofle.toml at a running one"
                    ),
                },
            )
        };
        let field = match &options.host_name {
            Some(name) => format!("hosts.{name}.engine"),
            None => "docker host (--docker-host, DOCKER_HOST or [docker] host)".to_string(),
        };
        validate_docker_host(&field, &host)?;
        let tls = options.tls.clone().or_else(|| {
            let verify =
                std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
            let dir = std::env::var_os("DOCKER_CERT_PATH")?;
            (from_env && verify).then(|| TlsFiles::in_dir(std::path::Path::new(&dir)))
        });
        let docker = Self::client(&host, tls.as_ref()).map_err(|e| unreachable(&e))?;
        let wait = options.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let answer = async {
            let docker = docker.negotiate_version().await?;
            let version = docker.version().await?;
            Ok::<_, bollard::errors::Error>((docker, version))
        };
        let (docker, version) = tokio::time::timeout(wait, answer)
            .await
            .map_err(|_| unreachable(&format!("no answer within {} s", wait.as_secs_f32())))?
            .map_err(|e| unreachable(&with_causes(&e)))?;
        Ok(DockerRuntime {
            docker,
            host,
            on_this_host: options.on_this_host,
            server_version: version.version.unwrap_or_default(),
        })
    }

    /// The bollard client for `host`: a unix socket, plain HTTP, or HTTPS with client
    /// certificates (checked here, so a missing file is named before any connection).
    fn client(host: &str, tls: Option<&TlsFiles>) -> Result<Docker> {
        let version = bollard::API_DEFAULT_VERSION;
        let lifted = |e: bollard::errors::Error| Error::backend(DOCKER, e.to_string());
        if let Some(path) = host.strip_prefix("unix://") {
            return Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version).map_err(lifted);
        }
        match tls {
            None => Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version).map_err(lifted),
            Some(files) => {
                for (what, path) in [
                    ("CA certificate", &files.ca),
                    ("client certificate", &files.cert),
                    ("client key", &files.key),
                ] {
                    if let Err(e) = std::fs::File::open(path) {
                        return Err(Error::invalid(
                            format!("TLS {what} of {host}"),
                            format!(
                                "cannot read `{}` ({e}); give a directory with ca.pem, cert.pem and key.pem (tls = {{ dir = \"...\" }}) or each file (tls = {{ ca = \"...\", cert = \"...\", key = \"...\" }})",
                                path.display()
                            ),
                        ));
                    }
                }
                // bollard wants https:// for TLS (a tcp:// address would be spoken to
                // in plain HTTP).
                let rest = host
                    .strip_prefix("tcp://")
                    .or_else(|| host.strip_prefix("http://"))
                    .or_else(|| host.strip_prefix("https://"))
                    .unwrap_or(host);
                let addr = format!("https://{rest}");
                Docker::connect_with_ssl(
                    &addr,
                    &files.key,
                    &files.cert,
                    &files.ca,
                    REQUEST_TIMEOUT_SECS,
                    version,
                )
                .map_err(lifted)
            }
        }
    }

    /// The engine's own version (`docker version`'s server version), read at connect.
    pub fn server_version(&self) -> &str {
        &self.server_version
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

/// An error and its causes on one line: bollard's own text for a refused connection is
/// "client error (Connect)", the cause ("Connection refused") is what a person needs.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        cause = c.source();
    }
    text
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

    /// What the caller said ([`EngineOptions::on_this_host`]: a `[hosts.NAME]` engine is
    /// another machine, even behind a loopback tunnel); else a unix socket is an engine on
    /// this host, and so is a TCP address on loopback. Any other TCP address may be another
    /// machine, whose interfaces this one cannot see.
    fn is_on_this_host(&self) -> bool {
        if let Some(known) = self.on_this_host {
            return known;
        }
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
