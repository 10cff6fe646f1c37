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

use bytes::Bytes;
use futures::StreamExt;

use super::host_files::{check_entry, check_relative, filter_import, image_absent, split_parent};
use super::{ContainerInfo, ContainerRuntime, ContainerSpec, ExecOutput, ExecSpec, Health};
use super::{HostEntry, HostKind, HostListing, HostRoot, ImportSummary, PublishedPort, TarStream};
use super::{HELPER_LABEL, HELPER_ROOT_LABEL};
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
    /// The host's file system as the host-file primitives see it, by absolute path.
    host_fs: BTreeMap<String, Node>,
}

/// One file, directory or symlink of the host's file system (a hard link is a copy).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: NodeKind,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// What the double says it is, where Docker names its engine's address.
const ENGINE: &str = "memory";
/// The free space the double's host reports, less what it holds.
const HOST_SPACE: u64 = 1 << 40;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn join(root: &str, path: &str) -> String {
    if path.is_empty() {
        root.to_string()
    } else {
        format!("{root}/{path}")
    }
}

fn where_(root: &HostRoot, path: &str) -> String {
    format!(
        "`{path}` under `{}` on the engine at {ENGINE}",
        root.trimmed()
    )
}

fn below<'a>(
    fs: &'a BTreeMap<String, Node>,
    dir: &str,
) -> impl Iterator<Item = (&'a String, &'a Node)> {
    let start = format!("{dir}/");
    fs.range(start.clone()..)
        .take_while(move |(k, _)| k.starts_with(&start))
}

impl Engine {
    /// Checks `root` and its image, and makes `root.path` as Docker's bind mount does.
    fn host(&mut self, root: &HostRoot) -> Result<String> {
        root.check()?;
        if !self.images.contains_key(&root.image) {
            return Err(image_absent(&root.image, ENGINE));
        }
        let path = root.trimmed().to_string();
        self.host_fs.entry(path.clone()).or_insert(Node {
            kind: NodeKind::Dir,
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: now_secs(),
        });
        Ok(path)
    }

    fn is_dir(&self, path: &str) -> bool {
        self.host_fs
            .get(path)
            .is_some_and(|n| n.kind == NodeKind::Dir)
    }

    /// Makes the missing directories of `path` (`root:root 0755`) below `root`.
    fn make_parents(&mut self, root: &str, rel: &str) -> Result<()> {
        let mut at = root.to_string();
        for c in rel.split('/') {
            at = format!("{at}/{c}");
            match self.host_fs.get(&at) {
                Some(n) if n.kind == NodeKind::Dir => {}
                Some(_) => {
                    return Err(Error::backend(
                        ENGINE,
                        format!("mkdir: `{at}` is not a directory"),
                    ))
                }
                None => {
                    self.host_fs.insert(
                        at.clone(),
                        Node {
                            kind: NodeKind::Dir,
                            uid: 0,
                            gid: 0,
                            mode: 0o755,
                            mtime: now_secs(),
                        },
                    );
                }
            }
        }
        Ok(())
    }
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
    async fn make_host_dirs(&self, root: &HostRoot, dirs: &[HostEntry]) -> Result<()> {
        root.check()?;
        for d in dirs {
            check_entry("directory", d)?;
        }
        if dirs.is_empty() {
            return Ok(());
        }
        let mut e = self.engine();
        let base = e.host(root)?;
        for d in dirs {
            let path = join(&base, &d.path);
            if e.host_fs
                .get(&path)
                .is_some_and(|n| n.kind != NodeKind::Dir)
            {
                return Err(Error::Conflict(format!(
                    "directories under `{}`: `{}` exists and is not a directory",
                    root.trimmed(),
                    d.path
                )));
            }
            e.make_parents(&base, &d.path)?;
            let node = e.host_fs.get_mut(&path).expect("made above");
            (node.uid, node.gid, node.mode) = (d.uid, d.gid, d.mode);
        }
        Ok(())
    }

    async fn write_host_file(
        &self,
        root: &HostRoot,
        file: &HostEntry,
        content: &[u8],
    ) -> Result<()> {
        root.check()?;
        check_entry("file", file)?;
        let mut e = self.engine();
        let base = e.host(root)?;
        let what = where_(root, &file.path);
        let (parent, _) = split_parent(&file.path);
        if !e.is_dir(&join(&base, parent)) {
            return Err(Error::not_found(
                format!("the directory of {what}"),
                "make it first (make_host_dirs)",
            ));
        }
        let path = join(&base, &file.path);
        if e.is_dir(&path) {
            return Err(Error::Conflict(format!(
                "{what}: `{}` is a directory",
                split_parent(&file.path).1
            )));
        }
        e.host_fs.insert(
            path,
            Node {
                kind: NodeKind::File(content.to_vec()),
                uid: file.uid,
                gid: file.gid,
                mode: file.mode,
                mtime: now_secs(),
            },
        );
        Ok(())
    }

    async fn make_host_files_private(&self, root: &HostRoot, paths: &[String]) -> Result<()> {
        root.check()?;
        for p in paths {
            check_relative("file", p)?;
        }
        if paths.is_empty() {
            return Ok(());
        }
        let mut e = self.engine();
        let base = e.host(root)?;
        for p in paths {
            if let Some(n) = e.host_fs.get_mut(&join(&base, p)) {
                if matches!(n.kind, NodeKind::File(_)) {
                    n.mode &= !0o077;
                }
            }
        }
        Ok(())
    }

    async fn read_host_file(
        &self,
        root: &HostRoot,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>> {
        root.check()?;
        check_relative("file", path)?;
        let mut e = self.engine();
        let base = e.host(root)?;
        let what = where_(root, path);
        match e.host_fs.get(&join(&base, path)).map(|n| &n.kind) {
            None => Ok(None),
            Some(NodeKind::File(c)) if c.len() > max_bytes => Err(Error::backend(
                ENGINE,
                format!("{what} is larger than {max_bytes} bytes"),
            )),
            Some(NodeKind::File(c)) => Ok(Some(c.clone())),
            Some(_) => Err(Error::invalid(
                "file",
                format!("{what} is not a regular file"),
            )),
        }
    }

    async fn list_host_dir(&self, root: &HostRoot, path: &str) -> Result<Vec<HostListing>> {
        root.check()?;
        if !path.is_empty() {
            check_relative("directory", path)?;
        }
        let mut e = self.engine();
        let base = e.host(root)?;
        let dir = join(&base, path);
        if !e.is_dir(&dir) {
            return Err(Error::not_found(
                format!("directory {}", where_(root, path)),
                format!("`{path}` is not a directory"),
            ));
        }
        Ok(below(&e.host_fs, &dir)
            .filter(|(k, _)| !k[dir.len() + 1..].contains('/'))
            .map(|(k, n)| {
                let (kind, size) = match &n.kind {
                    NodeKind::Dir => (HostKind::Dir, 4096),
                    NodeKind::File(c) => (HostKind::File, c.len() as u64),
                    NodeKind::Symlink(t) => (HostKind::Symlink, t.len() as u64),
                };
                HostListing {
                    name: k[dir.len() + 1..].to_string(),
                    kind,
                    uid: n.uid,
                    gid: n.gid,
                    mode: n.mode,
                    size,
                    mtime: n.mtime,
                }
            })
            .collect())
    }

    async fn export_host_dir(&self, root: &HostRoot, path: &str) -> Result<TarStream> {
        root.check()?;
        if !path.is_empty() {
            check_relative("directory", path)?;
        }
        let tar = {
            let mut e = self.engine();
            let base = e.host(root)?;
            let dir = join(&base, path);
            if !e.is_dir(&dir) {
                return Err(Error::not_found(
                    format!("directory {}", where_(root, path)),
                    "check the path, or list the host directory",
                ));
            }
            let bad = |e: std::io::Error| Error::backend(ENGINE, format!("export: {e}"));
            let mut b = tar::Builder::new(Vec::new());
            let top = e.host_fs.get(&dir).expect("checked above").clone();
            let nodes = std::iter::once((String::new(), top)).chain(
                below(&e.host_fs, &dir).map(|(k, n)| (k[dir.len() + 1..].to_string(), n.clone())),
            );
            for (rel, n) in nodes {
                let mut h = tar::Header::new_gnu();
                h.set_uid(u64::from(n.uid));
                h.set_gid(u64::from(n.gid));
                h.set_mode(n.mode);
                h.set_mtime(n.mtime);
                let name = format!("./{rel}");
                match &n.kind {
                    NodeKind::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_size(0);
                        b.append_data(&mut h, format!("{name}/"), std::io::empty())
                    }
                    NodeKind::File(c) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(c.len() as u64);
                        b.append_data(&mut h, &name, &c[..])
                    }
                    NodeKind::Symlink(t) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        b.append_link(&mut h, &name, t)
                    }
                }
                .map_err(bad)?;
            }
            b.into_inner().map_err(bad)?
        };
        let chunks: Vec<Result<Bytes>> = tar
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn import_host_dir(
        &self,
        root: &HostRoot,
        path: &str,
        mut tar: TarStream,
    ) -> Result<ImportSummary> {
        root.check()?;
        check_relative("directory", path)?;
        let what = where_(root, path);
        let (parent, _) = split_parent(path);
        {
            let mut e = self.engine();
            let base = e.host(root)?;
            if e.host_fs.contains_key(&join(&base, path)) {
                return Err(Error::already_exists(
                    what,
                    "an import makes a new directory; remove it first or choose another path",
                ));
            }
            if !e.is_dir(&join(&base, parent)) {
                return Err(Error::not_found(
                    format!("the parent directory of {what}"),
                    "make it first (make_host_dirs)",
                ));
            }
        }
        let mut input = Vec::new();
        while let Some(chunk) = tar.next().await {
            input.extend_from_slice(&chunk?);
        }
        // The same filter as on Docker: what it refuses is never written.
        let (summary, filtered) = filter_import(&input[..], Vec::new(), "t")?;
        let bad = |e: std::io::Error| Error::backend(ENGINE, format!("import {what}: {e}"));
        let mut nodes: Vec<(String, Node)> = Vec::new();
        let mut archive = tar::Archive::new(&filtered[..]);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let rel = name
                .trim_end_matches('/')
                .strip_prefix('t')
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let h = entry.header();
            let meta = |kind| Node {
                kind,
                uid: h.uid().unwrap_or(0) as u32,
                gid: h.gid().unwrap_or(0) as u32,
                mode: h.mode().unwrap_or(0) & 0o7777,
                mtime: h.mtime().unwrap_or(0),
            };
            let link = || {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            };
            let node = match h.entry_type() {
                tar::EntryType::Directory => meta(NodeKind::Dir),
                tar::EntryType::Symlink => meta(NodeKind::Symlink(link())),
                tar::EntryType::Link => {
                    let target = link();
                    let target = target.strip_prefix("t/").unwrap_or_default();
                    let content = nodes
                        .iter()
                        .find(|(p, _)| p == target)
                        .map(|(_, n)| n.kind.clone())
                        .unwrap_or(NodeKind::File(Vec::new()));
                    meta(content)
                }
                _ => {
                    let mut content = Vec::new();
                    let node = meta(NodeKind::File(Vec::new()));
                    std::io::Read::read_to_end(&mut entry, &mut content).map_err(bad)?;
                    Node {
                        kind: NodeKind::File(content),
                        ..node
                    }
                }
            };
            nodes.push((rel, node));
        }
        let mut e = self.engine();
        let base = e.host(root)?;
        let target = join(&base, path);
        for (rel, node) in nodes {
            e.host_fs.insert(join(&target, &rel), node);
        }
        Ok(summary)
    }

    async fn move_host_dir(&self, root: &HostRoot, from: &str, to: &str) -> Result<()> {
        root.check()?;
        check_relative("source directory", from)?;
        check_relative("target directory", to)?;
        let mut e = self.engine();
        let base = e.host(root)?;
        let what = format!("move of {}", where_(root, from));
        let (src, dst) = (join(&base, from), join(&base, to));
        if !e.host_fs.contains_key(&src) {
            return Err(Error::not_found(what, format!("`{from}` does not exist")));
        }
        if e.host_fs.contains_key(&dst) {
            return Err(Error::already_exists(
                what,
                format!("`{to}` exists; remove it first or choose another path"),
            ));
        }
        if dst.starts_with(&format!("{src}/")) {
            return Err(Error::backend(
                ENGINE,
                format!("{what}: cannot move `{from}` to a subdirectory of itself"),
            ));
        }
        let (to_parent, _) = split_parent(to);
        if !to_parent.is_empty() {
            e.make_parents(&base, to_parent)?;
        }
        let moved: Vec<String> = std::iter::once(src.clone())
            .chain(below(&e.host_fs, &src).map(|(k, _)| k.clone()))
            .collect();
        for k in moved {
            let node = e.host_fs.remove(&k).expect("listed above");
            e.host_fs.insert(format!("{dst}{}", &k[src.len()..]), node);
        }
        Ok(())
    }

    async fn remove_host_dir(&self, root: &HostRoot, path: &str) -> Result<()> {
        root.check()?;
        check_relative("directory", path)?;
        let mut e = self.engine();
        let base = e.host(root)?;
        let dir = join(&base, path);
        let gone: Vec<String> = below(&e.host_fs, &dir).map(|(k, _)| k.clone()).collect();
        for k in gone {
            e.host_fs.remove(&k);
        }
        e.host_fs.remove(&dir);
        Ok(())
    }

    async fn host_free_space(&self, root: &HostRoot) -> Result<u64> {
        let mut e = self.engine();
        e.host(root)?;
        let used: u64 = e
            .host_fs
            .values()
            .map(|n| match &n.kind {
                NodeKind::File(c) => c.len() as u64,
                _ => 4096,
            })
            .sum();
        Ok(HOST_SPACE.saturating_sub(used))
    }

    async fn remove_helpers(&self, root: &HostRoot) -> Result<usize> {
        root.check()?;
        // The double's own helpers live only within a call; a container made with the
        // helper labels (a test's stand-in for a killed process's leftover) goes.
        let mut e = self.engine();
        let left: Vec<String> = e
            .containers
            .iter()
            .filter(|(_, c)| {
                c.info.labels.get(HELPER_LABEL).map(String::as_str) == Some("1")
                    && c.info.labels.get(HELPER_ROOT_LABEL).map(String::as_str)
                        == Some(root.trimmed())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &left {
            e.containers.remove(n);
        }
        Ok(left.len())
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
    async fn the_double_passes_the_host_file_battery() {
        let rt = scripted();
        let base = "/srv/girofle-conformance";
        conformance::run_host_files(Arc::new(rt.clone()), "girofle-conformance/image:1", base)
            .await;
        let left: Vec<String> = rt.engine().host_fs.keys().cloned().collect();
        assert_eq!(left, vec![base.to_string()], "the battery cleans up");
    }

    #[tokio::test]
    async fn a_tree_moves_between_two_doubles() {
        let (a, b) = (scripted(), scripted());
        let image = "girofle-conformance/image:1";
        conformance::tree_moves_between_engines(
            &a,
            &b,
            &HostRoot::new("/srv/a", image),
            &HostRoot::new("/srv/b", image),
        )
        .await;
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
