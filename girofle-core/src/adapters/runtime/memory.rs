//! The in-memory container engine: the double the fast tests run operations on. It keeps
//! containers as the Docker engine would (created, running, exited; labels, published
//! ports, files, logs) and refuses what Docker refuses, with the errors
//! [`DockerRuntime`](super::DockerRuntime) lifts Docker's answers into: a taken name
//! (`AlreadyExists`), an absent image or container (`NotFound`), a host port another
//! running container or a host process holds, at start as Docker does (`Conflict`), a
//! running container removed without force or an exec into a stopped one (`Conflict`).
//!
//! It runs no command: a test scripts what an exec answers ([`MemoryRuntime::script`]),
//! so it can make a health probe or `gitlab-ctl reconfigure` fail; an exec nothing
//! answers exits 127, as in a container without that command. Like the rest of the
//! adapters it knows nothing about GitLab.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::PublishedPort;
use super::{ContainerInfo, ContainerRuntime, ContainerSpec, ExecOutput, ExecSpec, Health};
use crate::error::{Error, Result};

/// One exec as the double received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCall {
    pub container: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
}

impl ExecCall {
    /// Whether the command starts with `prefix` (`["gitlab-ctl", "reconfigure"]`).
    pub fn starts_with(&self, prefix: &[&str]) -> bool {
        self.cmd.len() >= prefix.len() && self.cmd.iter().zip(prefix).all(|(a, b)| a == b)
    }
}

/// What a script answers to an exec: `None` leaves it to older scripts.
pub type ExecScript = dyn Fn(&ExecCall) -> Option<ExecOutput> + Send + Sync;

#[derive(Debug)]
struct Container {
    info: ContainerInfo,
    files: BTreeMap<String, Vec<u8>>,
    logs: String,
    has_health_check: bool,
}

#[derive(Default)]
struct Engine {
    containers: BTreeMap<String, Container>,
    /// Images present, with the files a container made from them starts with.
    images: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Images `pull` can fetch.
    pullable: BTreeSet<String>,
    /// Host addresses held by processes outside the engine.
    host_ports: BTreeSet<(String, u16)>,
    scripts: Vec<Arc<ExecScript>>,
    execs: Vec<ExecCall>,
    next_id: u64,
}

/// [`ContainerRuntime`] in memory (see the module documentation). Clones share one
/// engine, so a test keeps a handle to script it while Girofle uses another.
#[derive(Clone, Default)]
pub struct MemoryRuntime {
    engine: Arc<Mutex<Engine>>,
    on_this_host: bool,
}

impl std::fmt::Debug for MemoryRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.engine();
        f.debug_struct("MemoryRuntime")
            .field("containers", &e.containers.keys().collect::<Vec<_>>())
            .field("images", &e.images.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn no_such(name: &str) -> String {
    format!("No such container: {name}")
}

/// Whether two host IPs overlap as Docker sees them (`0.0.0.0` and `::` are every IP).
fn same_ip(a: &str, b: &str) -> bool {
    let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    any(a) || any(b) || a == b
}

impl MemoryRuntime {
    /// An engine with no image and no container, which says it is not on this host (so
    /// address choice does not probe this host's ports: see
    /// [`ContainerRuntime::is_on_this_host`]).
    pub fn new() -> Self {
        Self::default()
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Says it runs on this host (address choice then probes this host's ports too).
    pub fn on_this_host(mut self, yes: bool) -> Self {
        self.on_this_host = yes;
        self
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        self.engine().images.entry(image.to_string()).or_default();
    }

    /// Makes `image` present with a file at `path`, which containers made from it have.
    pub fn add_image_file(&self, image: &str, path: &str, content: &[u8]) {
        self.engine()
            .images
            .entry(image.to_string())
            .or_default()
            .insert(path.to_string(), content.to_vec());
    }

    /// Lets `pull` fetch `image`.
    pub fn add_pullable(&self, image: &str) {
        self.engine().pullable.insert(image.to_string());
    }

    /// A process outside the engine holds `ip:port`: a container publishing it fails
    /// to start, as Docker's proxy fails to bind it.
    pub fn occupy_host_port(&self, ip: &str, port: u16) {
        self.engine().host_ports.insert((ip.to_string(), port));
    }

    /// Adds a script; the newest script that answers an exec decides it.
    pub fn script(&self, script: impl Fn(&ExecCall) -> Option<ExecOutput> + Send + Sync + 'static) {
        self.engine().scripts.push(Arc::new(script));
    }

    /// Every exec received so far, oldest first.
    pub fn execs(&self) -> Vec<ExecCall> {
        self.engine().execs.clone()
    }

    /// Names of every container, sorted.
    pub fn container_names(&self) -> Vec<String> {
        self.engine().containers.keys().cloned().collect()
    }

    /// Puts a file into a container (as a process inside it would write it).
    ///
    /// # Panics
    /// When there is no such container.
    pub fn put_file(&self, container: &str, path: &str, content: &[u8]) {
        self.engine()
            .containers
            .get_mut(container)
            .unwrap_or_else(|| panic!("no container `{container}`"))
            .files
            .insert(path.to_string(), content.to_vec());
    }

    /// Appends lines to a container's output.
    ///
    /// # Panics
    /// When there is no such container.
    pub fn log(&self, container: &str, text: &str) {
        let mut e = self.engine();
        let c = e
            .containers
            .get_mut(container)
            .unwrap_or_else(|| panic!("no container `{container}`"));
        c.logs.push_str(text);
        if !text.ends_with('\n') {
            c.logs.push('\n');
        }
    }

    /// Sets the health state the engine reports for a container.
    ///
    /// # Panics
    /// When there is no such container.
    pub fn set_health(&self, container: &str, health: Health) {
        self.engine()
            .containers
            .get_mut(container)
            .unwrap_or_else(|| panic!("no container `{container}`"))
            .info
            .health = health;
    }

    /// The container's main process exits on its own (a crash).
    ///
    /// # Panics
    /// When there is no such container.
    pub fn exit(&self, container: &str) {
        let mut e = self.engine();
        let c = e
            .containers
            .get_mut(container)
            .unwrap_or_else(|| panic!("no container `{container}`"));
        c.info.running = false;
        c.info.status = "exited".into();
    }

    /// Who holds host address `ip:port` other than container `except`, if anyone.
    fn port_holder(e: &Engine, except: &str, ip: &str, port: u16) -> Option<String> {
        for (name, c) in &e.containers {
            if name != except
                && c.info.running
                && c.info
                    .ports
                    .iter()
                    .any(|p| p.host_port == port && same_ip(&p.host_ip, ip))
            {
                return Some(name.clone());
            }
        }
        e.host_ports
            .iter()
            .any(|(i, p)| *p == port && same_ip(i, ip))
            .then(|| "a host process".to_string())
    }
}

#[async_trait]
impl ContainerRuntime for MemoryRuntime {
    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut e = self.engine();
        if let Some(c) = e.containers.get(&spec.name) {
            return Err(Error::already_exists(
                format!("container `{}`", spec.name),
                format!(
                    "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.; remove it (`docker rm -f {}`) or choose another name",
                    spec.name, c.info.id, spec.name
                ),
            ));
        }
        let Some(files) = e.images.get(&spec.image).cloned() else {
            return Err(Error::not_found(
                format!("image `{}`", spec.image),
                format!(
                    "pull it first (`docker pull {}`), or pass another --image",
                    spec.image
                ),
            ));
        };
        e.next_id += 1;
        let id = format!("{:064x}", e.next_id);
        let mut ports = spec.ports.clone();
        ports.sort_by_key(|p| p.container_port);
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            status: "created".into(),
            running: false,
            health: Health::None,
            health_log: Vec::new(),
            ports,
            env: spec.env.clone(),
        };
        e.containers.insert(
            spec.name.clone(),
            Container {
                info,
                files,
                logs: String::new(),
                has_health_check: spec.health_check.is_some(),
            },
        );
        Ok(id)
    }

    async fn start(&self, name: &str) -> Result<()> {
        let mut e = self.engine();
        let c = e
            .containers
            .get(name)
            .ok_or_else(|| Error::not_found(format!("container `{name}`"), no_such(name)))?;
        if c.info.running {
            return Ok(());
        }
        for p in &c.info.ports {
            match Self::port_holder(&e, name, &p.host_ip, p.host_port) {
                Some(holder) if holder == "a host process" => {
                    return Err(Error::Conflict(format!(
                        "container `{name}`: driver failed programming external connectivity on endpoint {name}: Error starting userland proxy: listen tcp4 {}:{}: bind: address already in use; free the port or choose another one",
                        p.host_ip, p.host_port
                    )))
                }
                Some(_) => {
                    return Err(Error::Conflict(format!(
                        "container `{name}`: driver failed programming external connectivity on endpoint {name}: Bind for {}:{} failed: port is already allocated; free the port or choose another one",
                        p.host_ip, p.host_port
                    )))
                }
                None => {}
            }
        }
        let c = e.containers.get_mut(name).expect("looked up above");
        c.info.running = true;
        c.info.status = "running".into();
        c.info.health = if c.has_health_check {
            Health::Starting
        } else {
            Health::None
        };
        Ok(())
    }

    async fn stop(&self, name: &str, _grace: Duration) -> Result<()> {
        let mut e = self.engine();
        let c = e
            .containers
            .get_mut(name)
            .ok_or_else(|| Error::not_found(format!("container `{name}`"), no_such(name)))?;
        if c.info.running {
            c.info.running = false;
            c.info.status = "exited".into();
        }
        Ok(())
    }

    async fn remove(&self, name: &str, force: bool) -> Result<()> {
        let mut e = self.engine();
        match e.containers.get(name) {
            None => Ok(()),
            Some(c) if c.info.running && !force => Err(Error::Conflict(format!(
                "remove container `{name}`: cannot remove container \"/{name}\": container is running: stop the container before removing or force remove"
            ))),
            Some(_) => {
                e.containers.remove(name);
                Ok(())
            }
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        Ok(self.engine().containers.get(name).map(|c| c.info.clone()))
    }

    async fn list(&self, labels: &[(String, String)]) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .engine()
            .containers
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.info.labels.get(k) == Some(v)))
            .map(|c| c.info.clone())
            .collect())
    }

    async fn published_ports(&self) -> Result<Vec<(String, PublishedPort)>> {
        Ok(self
            .engine()
            .containers
            .values()
            .flat_map(|c| {
                c.info
                    .ports
                    .iter()
                    .map(|p| (c.info.name.clone(), p.clone()))
            })
            .collect())
    }

    async fn exec(&self, name: &str, spec: &ExecSpec) -> Result<ExecOutput> {
        let call = ExecCall {
            container: name.to_string(),
            cmd: spec.cmd.clone(),
            env: spec.env.clone(),
            user: spec.user.clone(),
        };
        let scripts = {
            let mut e = self.engine();
            let c = e.containers.get(name).ok_or_else(|| {
                Error::not_found(format!("exec in container `{name}`"), no_such(name))
            })?;
            if !c.info.running {
                return Err(Error::Conflict(format!(
                    "exec in container `{name}`: container {} is not running",
                    c.info.id
                )));
            }
            e.execs.push(call.clone());
            e.scripts.clone()
        };
        // Scripts run without the engine's lock: they may put files into the container.
        Ok(scripts
            .iter()
            .rev()
            .find_map(|s| s(&call))
            .unwrap_or_else(|| ExecOutput {
                exit_code: 127,
                output: format!(
                    "OCI runtime exec failed: exec: \"{}\": executable file not found in $PATH\n",
                    call.cmd.first().map(String::as_str).unwrap_or_default()
                ),
            }))
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String> {
        let e = self.engine();
        let c = e.containers.get(name).ok_or_else(|| {
            Error::not_found(format!("logs of container `{name}`"), no_such(name))
        })?;
        let all: Vec<&str> = c.logs.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        Ok(tail.iter().map(|l| format!("{l}\n")).collect())
    }

    async fn read_file(&self, name: &str, path: &str, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let e = self.engine();
        let c = e.containers.get(name).ok_or_else(|| {
            Error::not_found(
                format!("container `{name}`"),
                "it disappeared while Girofle read a file of it",
            )
        })?;
        match c.files.get(path) {
            Some(f) if f.len() > max_bytes => Err(Error::backend(
                "docker",
                format!("`{path}` of container `{name}` is larger than {max_bytes} bytes"),
            )),
            Some(f) => Ok(Some(f.clone())),
            None => Ok(None),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        Ok(self.engine().images.contains_key(image))
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let mut e = self.engine();
        if !e.pullable.contains(image) {
            return Err(Error::not_found(
                format!("image `{image}`"),
                format!(
                    "the engine could not pull it (pull access denied for {image}, repository does not exist or may require 'docker login'); load it by hand (`docker load`) or pass another --image"
                ),
            ));
        }
        e.images.entry(image.to_string()).or_default();
        Ok(())
    }

    fn is_on_this_host(&self) -> bool {
        self.on_this_host
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, BIG_FILE, FAILING, SMALL_FILE, WRITE_BIG, WRITE_SMALL};
    use super::*;

    /// The double answering the battery's few `sh -c` commands as a shell would.
    fn scripted() -> MemoryRuntime {
        let rt = MemoryRuntime::new();
        rt.add_image("girofle-conformance/image:1");
        let engine = rt.clone();
        rt.script(move |call| {
            let script = match call.cmd.as_slice() {
                [sh, c, script] if sh == "sh" && c == "-c" => script.as_str(),
                _ => return None,
            };
            let ok = |output: &str| {
                Some(ExecOutput {
                    exit_code: 0,
                    output: output.into(),
                })
            };
            match script {
                FAILING => Some(ExecOutput {
                    exit_code: 3,
                    output: "out\nerr\n".into(),
                }),
                WRITE_SMALL => {
                    engine.put_file(&call.container, SMALL_FILE, b"hello");
                    ok("")
                }
                WRITE_BIG => {
                    engine.put_file(&call.container, BIG_FILE, &[0; 204_800]);
                    ok("")
                }
                _ => None,
            }
        });
        rt
    }

    #[tokio::test]
    async fn the_double_passes_the_runtime_battery() {
        let rt = scripted();
        conformance::run_all(Arc::new(rt.clone()), "girofle-conformance/image:1").await;
        assert!(rt.container_names().is_empty(), "the battery cleans up");
    }

    #[tokio::test]
    async fn a_host_process_holding_a_port_stops_a_start_and_unscripted_commands_exit_127() {
        let rt = scripted();
        rt.occupy_host_port("0.0.0.0", 8080);
        let mut spec = conformance::spec("girofle-conformance/image:1", "unit", "held");
        spec.ports = vec![PublishedPort {
            host_ip: "127.0.0.1".into(),
            host_port: 8080,
            container_port: 80,
        }];
        rt.create(&spec).await.unwrap();
        let e = rt.start(&spec.name).await.unwrap_err();
        assert!(e.to_string().contains("address already in use"), "{e}");
        spec.ports[0].host_port = 8081;
        spec.name.push('2');
        rt.create(&spec).await.unwrap();
        rt.start(&spec.name).await.unwrap();
        let out = rt
            .exec(
                &spec.name,
                &ExecSpec {
                    cmd: vec!["gitlab-ctl".into(), "status".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 127);
        assert!(rt.execs().last().unwrap().starts_with(&["gitlab-ctl"]));
    }
}
