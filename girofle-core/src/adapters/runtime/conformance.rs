//! The behaviours every [`ContainerRuntime`] must have, one function per behaviour, in
//! the manner of the store battery: run against the Docker engine (tests/) and against
//! [`MemoryRuntime`](super::MemoryRuntime), so the double the fast tests trust behaves
//! as Docker does. A new engine proves itself by passing [`run_all`].
//!
//! The battery needs an image that is present and whose default command keeps running,
//! and a POSIX `sh` in it for the few commands of [`COMMANDS`] (a double scripts those).
//! Every container it makes carries the label [`LABEL`] with the run's id and is removed
//! afterwards, even when a check fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;

use super::{ContainerRuntime, ContainerSpec, ExecSpec, PublishedPort};
use super::{HostEntry, HostKind, HostRoot, TarStream, HELPER_LABEL, HELPER_ROOT_LABEL};
use crate::error::Error;

/// The label every container of a run carries, with the run's id.
pub const LABEL: &str = "io.girofle.conformance";

/// A command that prints `out` and `err` and exits 3.
pub const FAILING: &str = "echo out; echo err >&2; exit 3";
/// A command that writes `hello` to [`SMALL_FILE`].
pub const WRITE_SMALL: &str = "printf hello > /tmp/girofle-conformance-small";
/// A command that writes 200 KiB of zeros to [`BIG_FILE`].
pub const WRITE_BIG: &str = "head -c 204800 /dev/zero > /tmp/girofle-conformance-big";
/// Where [`WRITE_SMALL`] writes.
pub const SMALL_FILE: &str = "/tmp/girofle-conformance-small";
/// Where [`WRITE_BIG`] writes.
pub const BIG_FILE: &str = "/tmp/girofle-conformance-big";
/// The `sh -c` scripts the battery runs, for a double to answer.
pub const COMMANDS: [&str; 3] = [FAILING, WRITE_SMALL, WRITE_BIG];

const GRACE: Duration = Duration::from_secs(2);

/// Runs the whole battery on `runtime` with containers of `image`.
pub async fn run_all(runtime: Arc<dyn ContainerRuntime>, image: &str) {
    let run = unique_run();
    let battery = {
        let (rt, image, run) = (runtime.clone(), image.to_string(), run.clone());
        tokio::spawn(async move {
            let (rt, image, run) = (&*rt, image.as_str(), run.as_str());
            created_container_shows_its_spec(rt, image, run).await;
            taken_name_is_refused(rt, image, run).await;
            absent_image_is_not_found(rt, run).await;
            start_and_stop_are_idempotent(rt, image, run).await;
            missing_container_is_not_found(rt, run).await;
            running_container_is_removed_only_by_force(rt, image, run).await;
            list_filters_on_every_label(rt, image, run).await;
            published_ports_include_stopped_containers(rt, image, run).await;
            taken_host_port_is_refused_at_start(rt, image, run).await;
            exec_reports_exit_code_and_output(rt, image, run).await;
            read_file_reads_what_the_container_wrote(rt, image, run).await;
            logs_tail_keeps_to_the_lines_asked(rt, image, run).await;
            image_presence_is_known(rt, image).await;
        })
    };
    let outcome = battery.await;
    cleanup(&*runtime, &run).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("conformance battery did not finish: {e}");
    }
}

/// An id no other run uses.
pub fn unique_run() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{:x}", (nanos ^ std::process::id()) % 0xffffff)
}

/// Removes every container of run `run`.
pub async fn cleanup(rt: &dyn ContainerRuntime, run: &str) {
    if let Ok(all) = rt.list(&[(LABEL.to_string(), run.to_string())]).await {
        for c in all {
            let _ = rt.remove(&c.name, true).await;
        }
    }
}

/// A free TCP port on 127.0.0.1 (asked of the kernel; a double takes any).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A spec of run `run`: name `girofle-conf-<run>-<what>`, the run's label.
pub fn spec(image: &str, run: &str, what: &str) -> ContainerSpec {
    ContainerSpec {
        name: format!("girofle-conf-{run}-{what}"),
        image: image.to_string(),
        env: vec!["GIROFLE_CONFORMANCE=1".into()],
        labels: HashMap::from([(LABEL.to_string(), run.to_string())]),
        log_max_size: "1m".into(),
        log_max_files: 1,
        stop_timeout: GRACE,
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

async fn created(rt: &dyn ContainerRuntime, spec: &ContainerSpec) {
    rt.create(spec)
        .await
        .unwrap_or_else(|e| panic!("create `{}` on {rt:?}: {e}", spec.name));
}

async fn running(rt: &dyn ContainerRuntime, spec: &ContainerSpec) {
    created(rt, spec).await;
    rt.start(&spec.name)
        .await
        .unwrap_or_else(|e| panic!("start `{}`: {e}", spec.name));
}

async fn is_running(rt: &dyn ContainerRuntime, name: &str) -> bool {
    rt.inspect(name)
        .await
        .expect("inspect")
        .is_some_and(|i| i.running)
}

/// A created container is inspected with its name, image, labels, environment and
/// ports, status `created`, not running.
pub async fn created_container_shows_its_spec(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let mut s = spec(image, run, "spec");
    s.labels.insert("team".into(), "ops".into());
    let port = free_port();
    s.ports = vec![PublishedPort {
        host_ip: "127.0.0.1".into(),
        host_port: port,
        container_port: 80,
    }];
    let id = rt.create(&s).await.expect("create");
    let info = rt.inspect(&s.name).await.expect("inspect").expect("exists");
    assert_eq!(info.id, id);
    assert_eq!(info.name, s.name);
    assert_eq!(info.image, image);
    assert_eq!(info.labels.get("team").map(String::as_str), Some("ops"));
    assert_eq!(info.labels.get(LABEL).map(String::as_str), Some(run));
    assert!(
        info.env.iter().any(|e| e == "GIROFLE_CONFORMANCE=1"),
        "{:?}",
        info.env
    );
    assert_eq!(info.status, "created");
    assert!(!info.running);
    assert_eq!(info.ports, s.ports);
    rt.remove(&s.name, true).await.expect("remove");
    assert!(rt.inspect(&s.name).await.expect("inspect").is_none());
}

/// A second container of a taken name is refused with `AlreadyExists`; the first stays.
pub async fn taken_name_is_refused(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let s = spec(image, run, "twice");
    let id = rt.create(&s).await.expect("create");
    match rt.create(&s).await {
        Err(e @ Error::AlreadyExists { .. }) => {
            assert!(e.to_string().contains(&s.name), "{e}");
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        rt.inspect(&s.name)
            .await
            .expect("inspect")
            .expect("kept")
            .id,
        id
    );
    rt.remove(&s.name, true).await.expect("remove");
}

/// A container of an absent image is refused with `NotFound` naming the image, and
/// nothing is created.
pub async fn absent_image_is_not_found(rt: &dyn ContainerRuntime, run: &str) {
    let s = spec("girofle-conformance/absent:0.0.0", run, "noimage");
    match rt.create(&s).await {
        Err(e @ Error::NotFound { .. }) => {
            assert!(e.to_string().contains("girofle-conformance/absent"), "{e}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(rt.inspect(&s.name).await.expect("inspect").is_none());
}

/// Start runs a container, a second start is Ok; stop stops it, a second stop is Ok;
/// it starts again after a stop.
pub async fn start_and_stop_are_idempotent(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let s = spec(image, run, "cycle");
    running(rt, &s).await;
    assert!(is_running(rt, &s.name).await);
    rt.start(&s.name).await.expect("a second start");
    rt.stop(&s.name, GRACE).await.expect("stop");
    let info = rt.inspect(&s.name).await.expect("inspect").expect("exists");
    assert!(!info.running);
    assert_eq!(info.status, "exited");
    rt.stop(&s.name, GRACE).await.expect("a second stop");
    rt.start(&s.name).await.expect("start again");
    assert!(is_running(rt, &s.name).await);
    rt.remove(&s.name, true).await.expect("remove");
}

/// A container that does not exist: `inspect` says `None`, `remove` is Ok, and start,
/// stop, exec, logs and read_file say `NotFound`.
pub async fn missing_container_is_not_found(rt: &dyn ContainerRuntime, run: &str) {
    let name = format!("girofle-conf-{run}-ghost");
    assert!(rt.inspect(&name).await.expect("inspect").is_none());
    rt.remove(&name, true).await.expect("removing nothing");
    let not_found = |what: &str, r: Result<(), Error>| match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{what} of a missing container: expected NotFound, got {other:?}"),
    };
    not_found("start", rt.start(&name).await);
    not_found("stop", rt.stop(&name, GRACE).await);
    not_found("exec", rt.exec(&name, &sh("true")).await.map(|_| ()));
    not_found("logs", rt.logs_tail(&name, 5).await.map(|_| ()));
    not_found(
        "read_file",
        rt.read_file(&name, "/etc/hostname", 1024).await.map(|_| ()),
    );
}

/// A running container is not removed without force (`Conflict`, it keeps running);
/// with force it is gone.
pub async fn running_container_is_removed_only_by_force(
    rt: &dyn ContainerRuntime,
    image: &str,
    run: &str,
) {
    let s = spec(image, run, "force");
    running(rt, &s).await;
    match rt.remove(&s.name, false).await {
        Err(Error::Conflict(m)) => assert!(m.contains(&s.name), "{m}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(is_running(rt, &s.name).await);
    rt.remove(&s.name, true).await.expect("forced remove");
    assert!(rt.inspect(&s.name).await.expect("inspect").is_none());
}

/// `list` returns the containers carrying every label asked, running or not, by name.
pub async fn list_filters_on_every_label(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let mut names = Vec::new();
    for (what, team) in [("list-a", "ops"), ("list-b", "dev"), ("list-c", "ops")] {
        let mut s = spec(image, run, what);
        s.labels.insert("team".into(), team.into());
        created(rt, &s).await;
        names.push(s.name);
    }
    rt.start(&names[2]).await.expect("start");
    assert_eq!(listed(rt, &[(LABEL, run)]).await, names);
    assert_eq!(
        listed(rt, &[(LABEL, run), ("team", "ops")]).await,
        vec![names[0].clone(), names[2].clone()]
    );
    assert!(listed(rt, &[(LABEL, run), ("team", "nobody")])
        .await
        .is_empty());
    for n in &names {
        rt.remove(n, true).await.expect("remove");
    }
}

/// Names of the battery's `list-*` containers carrying every one of `labels`.
async fn listed(rt: &dyn ContainerRuntime, labels: &[(&str, &str)]) -> Vec<String> {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    rt.list(&labels)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.contains("-list-"))
        .collect()
}

/// `published_ports` names the container of every published port, stopped ones too.
pub async fn published_ports_include_stopped_containers(
    rt: &dyn ContainerRuntime,
    image: &str,
    run: &str,
) {
    let mut s = spec(image, run, "ports");
    let port = free_port();
    s.ports = vec![PublishedPort {
        host_ip: "127.0.0.1".into(),
        host_port: port,
        container_port: 22,
    }];
    created(rt, &s).await;
    let held = |all: Vec<(String, PublishedPort)>| {
        all.into_iter()
            .any(|(n, p)| n == s.name && p.host_port == port && p.container_port == 22)
    };
    assert!(held(rt.published_ports().await.expect("ports")), "created");
    rt.start(&s.name).await.expect("start");
    rt.stop(&s.name, GRACE).await.expect("stop");
    assert!(held(rt.published_ports().await.expect("ports")), "stopped");
    rt.remove(&s.name, true).await.expect("remove");
    assert!(!held(rt.published_ports().await.expect("ports")), "removed");
}

/// Two containers publishing one host port: the second is created, but its start is
/// refused with a `Conflict` saying the port is taken (what a commission retries on),
/// and it does not run; the first keeps running.
pub async fn taken_host_port_is_refused_at_start(
    rt: &dyn ContainerRuntime,
    image: &str,
    run: &str,
) {
    let port = free_port();
    let with_port = |what: &str| {
        let mut s = spec(image, run, what);
        s.ports = vec![PublishedPort {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            container_port: 80,
        }];
        s
    };
    let (first, second) = (with_port("port-a"), with_port("port-b"));
    running(rt, &first).await;
    created(rt, &second).await;
    match rt.start(&second.name).await {
        Err(Error::Conflict(m)) => assert!(
            m.contains("port is already allocated") || m.contains("address already in use"),
            "{m}"
        ),
        other => panic!("expected Conflict on a taken port, got {other:?}"),
    }
    assert!(!is_running(rt, &second.name).await);
    assert!(is_running(rt, &first.name).await);
    rt.remove(&second.name, true).await.expect("remove");
    rt.remove(&first.name, true).await.expect("remove");
}

/// An exec returns its exit code (non-zero is not an error) and its stdout and stderr;
/// into a stopped container it is refused.
pub async fn exec_reports_exit_code_and_output(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let s = spec(image, run, "exec");
    running(rt, &s).await;
    let out = rt.exec(&s.name, &sh(FAILING)).await.expect("exec");
    assert_eq!(out.exit_code, 3);
    assert!(
        out.output.contains("out") && out.output.contains("err"),
        "{:?}",
        out.output
    );
    rt.stop(&s.name, GRACE).await.expect("stop");
    assert!(
        rt.exec(&s.name, &sh(FAILING)).await.is_err(),
        "exec into a stopped container"
    );
    rt.remove(&s.name, true).await.expect("remove");
}

/// `read_file` returns a file the container wrote, `None` for a path it has not, and
/// refuses a file far larger than allowed.
pub async fn read_file_reads_what_the_container_wrote(
    rt: &dyn ContainerRuntime,
    image: &str,
    run: &str,
) {
    let s = spec(image, run, "files");
    running(rt, &s).await;
    for script in [WRITE_SMALL, WRITE_BIG] {
        let out = rt.exec(&s.name, &sh(script)).await.expect("exec");
        assert_eq!(out.exit_code, 0, "{script}: {}", out.output);
    }
    assert_eq!(
        rt.read_file(&s.name, SMALL_FILE, 1024).await.expect("read"),
        Some(b"hello".to_vec())
    );
    assert_eq!(
        rt.read_file(&s.name, "/tmp/girofle-conformance-none", 1024)
            .await
            .expect("read"),
        None
    );
    let big = rt.read_file(&s.name, BIG_FILE, 1024).await;
    assert!(matches!(big, Err(Error::Backend { .. })), "{big:?}");
    assert_eq!(
        rt.read_file(&s.name, BIG_FILE, 1 << 20)
            .await
            .expect("read")
            .map(|b| b.len()),
        Some(204_800)
    );
    rt.remove(&s.name, true).await.expect("remove");
}

/// `logs_tail` of a container gives at most the lines asked.
pub async fn logs_tail_keeps_to_the_lines_asked(rt: &dyn ContainerRuntime, image: &str, run: &str) {
    let s = spec(image, run, "logs");
    running(rt, &s).await;
    let logs = rt.logs_tail(&s.name, 2).await.expect("logs");
    assert!(logs.lines().count() <= 2, "{logs:?}");
    rt.remove(&s.name, true).await.expect("remove");
}

/// The image of the battery is present; an image never made is not.
pub async fn image_presence_is_known(rt: &dyn ContainerRuntime, image: &str) {
    assert!(rt.image_present(image).await.expect("image_present"));
    assert!(!rt
        .image_present("girofle-conformance/absent:0.0.0")
        .await
        .expect("image_present"));
}

// ---------------------------------------------------------------------------------------
// Files on the engine's host, reached only through the engine.

/// The owner GitLab's files have in the official image (`git`).
pub const GIT: u32 = 998;

/// Runs every host-file case on `runtime` with helpers of `image`, under `base`, an
/// absolute directory on the engine's host (the run works in `base/<run>`, removed
/// afterwards through the engine). Ends by checking no helper container is left.
pub async fn run_host_files(runtime: Arc<dyn ContainerRuntime>, image: &str, base: &str) {
    let run = unique_run();
    let root = HostRoot::new(format!("{base}/{run}"), image);
    let battery = {
        let (rt, root) = (runtime.clone(), root.clone());
        tokio::spawn(async move {
            let (rt, root) = (&*rt, &root);
            dirs_are_made_with_their_owners(rt, root).await;
            bad_paths_are_refused_and_nothing_made(rt, root).await;
            absent_helper_image_is_refused_and_nothing_made(rt, root).await;
            files_are_written_atomically_and_read_back(rt, root).await;
            tree_round_trips_with_owners_modes_mtimes_and_links(rt, root).await;
            directories_are_listed_without_following_links(rt, root).await;
            hostile_imports_write_nothing_outside(rt, root).await;
            dirs_are_moved_and_removed(rt, root).await;
            free_space_is_reported(rt, root).await;
            dropped_export_leaves_no_helper(rt, root).await;
            failed_import_stream_leaves_nothing(rt, root).await;
            no_helper_is_left(rt, root).await;
            leftover_helper_is_found_and_removed(rt, root).await;
        })
    };
    let outcome = battery.await;
    cleanup_host(&*runtime, image, base, &run).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("host-file battery did not finish: {e}");
    }
}

/// Removes `base/run` through the engine, and any helper left for it.
pub async fn cleanup_host(rt: &dyn ContainerRuntime, image: &str, base: &str, run: &str) {
    let base_root = HostRoot::new(base, image);
    let _ = rt.remove_host_dir(&base_root, run).await;
    let _ = rt
        .remove_helpers(&HostRoot::new(format!("{base}/{run}"), image))
        .await;
}

/// What a listing knows of one entry: kind, owner, mode, mtime, content or link target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub kind: char,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub mtime: u64,
    pub data: Vec<u8>,
}

/// Parses a tar into `name -> entry`, names relative (`./a/` -> `a`, the top `""`), a
/// hard link listed as the file it links to.
pub fn listing(tar_bytes: &[u8]) -> BTreeMap<String, Listed> {
    let mut out: BTreeMap<String, Listed> = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let name = norm(&String::from_utf8_lossy(&entry.path_bytes()));
        let h = entry.header().clone();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let (kind, data) = match h.entry_type() {
            tar::EntryType::Directory => ('d', Vec::new()),
            tar::EntryType::Symlink => ('l', link.into_bytes()),
            tar::EntryType::Link => (
                'f',
                out.get(&norm(&link))
                    .map(|l| l.data.clone())
                    .unwrap_or_else(|| panic!("hard link {name} to unknown {link}")),
            ),
            _ => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("entry data");
                ('f', data)
            }
        };
        let l = Listed {
            kind,
            uid: h.uid().expect("uid"),
            gid: h.gid().expect("gid"),
            mode: h.mode().expect("mode") & 0o7777,
            mtime: h.mtime().expect("mtime"),
            data,
        };
        out.insert(name, l);
    }
    out
}

fn norm(name: &str) -> String {
    let mut n = name;
    while let Some(r) = n.strip_prefix("./") {
        n = r;
    }
    let n = n.trim_end_matches('/');
    if n == "." { "" } else { n }.to_string()
}

/// Reads a whole export (small trees only: the battery's own).
pub async fn export_bytes(rt: &dyn ContainerRuntime, root: &HostRoot, path: &str) -> Vec<u8> {
    let mut s = rt
        .export_host_dir(root, path)
        .await
        .unwrap_or_else(|e| panic!("export `{path}`: {e}"));
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("export chunk"));
    }
    out
}

async fn listed_at(
    rt: &dyn ContainerRuntime,
    root: &HostRoot,
    path: &str,
) -> BTreeMap<String, Listed> {
    listing(&export_bytes(rt, root, path).await)
}

/// A tar stream of `bytes`.
pub fn tar_stream(bytes: Vec<u8>) -> TarStream {
    futures::stream::iter(
        bytes
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    )
    .boxed()
}

struct Raw {
    name: String,
    kind: tar::EntryType,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: u64,
    data: Vec<u8>,
    link: String,
}

fn raw(name: &str, kind: tar::EntryType, uid: u64, mode: u32, mtime: u64) -> Raw {
    Raw {
        name: name.into(),
        kind,
        uid,
        gid: uid,
        mode,
        mtime,
        data: Vec::new(),
        link: String::new(),
    }
}

fn build_tar(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mode(e.mode);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if e.kind == tar::EntryType::Symlink || e.kind == tar::EntryType::Link {
            // Raw names: hostile ones must reach the filter as they are.
            h.set_link_name_literal(&e.link).expect("link name");
        }
        {
            let name = e.name.as_bytes();
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
        }
        h.set_cksum();
        b.append(&h, &e.data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

/// The tree a GitLab instance's directory looks like, small: owners `git` and root,
/// modes from 0600 to 0775, old mtimes, a symlink, a hard link, an empty directory.
pub fn sample_tree() -> Vec<u8> {
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};
    let g = u64::from(GIT);
    let mut entries = vec![
        raw("./", D, g, 0o750, 1_600_000_000),
        raw("./config/", D, 0, 0o775, 1_600_000_001),
        raw("./config/gitlab.rb", F, 0, 0o600, 1_600_000_002),
        raw("./data/", D, g, 0o700, 1_600_000_003),
        raw("./data/repo.git/", D, g, 0o2770, 1_600_000_004),
        raw("./data/repo.git/HEAD", F, g, 0o644, 1_600_000_005),
        raw("./data/head-link", L, g, 0o777, 1_600_000_006),
        raw("./data/hard", H, g, 0o644, 1_600_000_005),
        raw("./data/empty/", D, 0, 0o755, 1_600_000_007),
        raw("./data/run.sh", F, g, 0o755, 1_600_000_008),
        raw("./logs/", D, g, 0o755, 1_600_000_009),
        raw("./logs/big.log", F, g, 0o640, 1_600_000_010),
    ];
    entries[2].data = b"external_url 'https://gitlab.example.com'\n".to_vec();
    entries[2].gid = 998;
    entries[5].data = b"ref: refs/heads/main\n".to_vec();
    entries[6].link = "repo.git/HEAD".into();
    entries[7].link = "./data/repo.git/HEAD".into();
    entries[9].data = b"#!/bin/sh\nexit 0\n".to_vec();
    entries[10].gid = 997;
    entries[11].data = (0..204_800u32).map(|i| (i % 251) as u8).collect();
    build_tar(&entries)
}

async fn dirs(rt: &dyn ContainerRuntime, root: &HostRoot, dirs: &[HostEntry]) {
    rt.make_host_dirs(root, dirs)
        .await
        .unwrap_or_else(|e| panic!("make_host_dirs {dirs:?} on {rt:?}: {e}"));
}

/// Directories are made with the owner and mode asked, missing parents `root:root
/// 0755`; asking again with another owner changes it; a file in the way is a
/// `Conflict`.
pub async fn dirs_are_made_with_their_owners(rt: &dyn ContainerRuntime, root: &HostRoot) {
    dirs(
        rt,
        root,
        &[
            HostEntry::new("mk/inst/data", GIT, GIT, 0o750),
            HostEntry::new("mk/inst/config", 0, 0, 0o775),
        ],
    )
    .await;
    let l = listed_at(rt, root, "mk").await;
    let at = |n: &str| l.get(n).unwrap_or_else(|| panic!("{n} in {l:?}"));
    assert_eq!((at("inst").uid, at("inst").mode), (0, 0o755), "parent");
    let data = at("inst/data");
    assert_eq!(
        (data.kind, data.uid, data.gid, data.mode),
        ('d', 998, 998, 0o750)
    );
    assert_eq!(at("inst/config").mode, 0o775);
    dirs(rt, root, &[HostEntry::new("mk/inst/data", 0, GIT, 0o700)]).await;
    let data = listed_at(rt, root, "mk").await["inst/data"].clone();
    assert_eq!(
        (data.uid, data.gid, data.mode),
        (0, 998, 0o700),
        "made again"
    );
    rt.write_host_file(root, &HostEntry::new("mk/file", 0, 0, 0o644), b"x")
        .await
        .expect("write");
    match rt
        .make_host_dirs(root, &[HostEntry::new("mk/file", 0, 0, 0o755)])
        .await
    {
        Err(Error::Conflict(m)) => assert!(m.contains("mk/file"), "{m}"),
        other => panic!("a file in the way: expected Conflict, got {other:?}"),
    }
}

/// Paths that are empty, absolute, with `..` or `.` or NUL are refused with
/// `InvalidInput` by every primitive, and nothing is made.
pub async fn bad_paths_are_refused_and_nothing_made(rt: &dyn ContainerRuntime, root: &HostRoot) {
    dirs(rt, root, &[HostEntry::new("bad", 0, 0, 0o755)]).await;
    let before = listed_at(rt, root, "").await;
    for bad in [
        "",
        "/etc/evil",
        "bad/../../evil",
        "..",
        "bad/./x",
        "bad//x",
        "bad/\0x",
    ] {
        let invalid = |what: &str, r: Result<(), Error>| match r {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("{what} `{bad:?}`: expected InvalidInput, got {other:?}"),
        };
        let e = HostEntry::new(bad, 0, 0, 0o755);
        invalid(
            "make",
            rt.make_host_dirs(root, std::slice::from_ref(&e)).await,
        );
        invalid("write", rt.write_host_file(root, &e, b"x").await);
        invalid("read", rt.read_host_file(root, bad, 10).await.map(|_| ()));
        invalid(
            "private",
            rt.make_host_files_private(root, &[bad.to_string()]).await,
        );
        if !bad.is_empty() {
            invalid("list", rt.list_host_dir(root, bad).await.map(|_| ()));
        }
        invalid("move from", rt.move_host_dir(root, bad, "bad/y").await);
        invalid("move to", rt.move_host_dir(root, "bad", bad).await);
        invalid("remove", rt.remove_host_dir(root, bad).await);
        invalid(
            "import",
            rt.import_host_dir(root, bad, tar_stream(sample_tree()))
                .await
                .map(|_| ()),
        );
        if !bad.is_empty() {
            invalid("export", rt.export_host_dir(root, bad).await.map(|_| ()));
        }
    }
    let bad_mode = rt
        .make_host_dirs(root, &[HostEntry::new("bad/m", 0, 0, 0o17777)])
        .await;
    assert!(
        matches!(bad_mode, Err(Error::InvalidInput { .. })),
        "{bad_mode:?}"
    );
    let escaping = HostRoot::new(format!("{}/../x", root.path), &root.image);
    let r = rt
        .make_host_dirs(&escaping, &[HostEntry::new("y", 0, 0, 0o755)])
        .await;
    assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
    assert_eq!(
        listed_at(rt, root, "").await.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}

/// A helper image absent from the engine is refused with `NotFound` naming it and saying
/// Girofle never pulls; nothing is created, no helper is left.
pub async fn absent_helper_image_is_refused_and_nothing_made(
    rt: &dyn ContainerRuntime,
    root: &HostRoot,
) {
    let absent = HostRoot::new(
        format!("{}/noimage", root.path),
        "girofle-conformance/absent:0.0.0",
    );
    let not_found = |what: &str, r: Result<(), Error>| match r {
        Err(e @ Error::NotFound { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("girofle-conformance/absent:0.0.0") && m.contains("never pulls"),
                "{what}: {m}"
            );
        }
        other => panic!("{what} with an absent image: expected NotFound, got {other:?}"),
    };
    not_found(
        "make",
        rt.make_host_dirs(&absent, &[HostEntry::new("a", 0, 0, 0o755)])
            .await,
    );
    not_found(
        "write",
        rt.write_host_file(&absent, &HostEntry::new("a", 0, 0, 0o644), b"x")
            .await,
    );
    not_found("export", rt.export_host_dir(&absent, "").await.map(|_| ()));
    not_found(
        "import",
        rt.import_host_dir(&absent, "a", tar_stream(sample_tree()))
            .await
            .map(|_| ()),
    );
    not_found("free space", rt.host_free_space(&absent).await.map(|_| ()));
    assert!(
        !listed_at(rt, root, "").await.contains_key("noimage"),
        "an absent image made its host directory"
    );
    assert!(
        !rt.image_present("girofle-conformance/absent:0.0.0")
            .await
            .expect("image_present"),
        "pulled"
    );
}

/// A file is written with its owner and mode, read back, replaced atomically (no
/// temporary file left beside it); a missing file reads `None`; a larger one than
/// allowed is refused; a directory is neither read nor overwritten; a file in a missing
/// directory is `NotFound`.
pub async fn files_are_written_atomically_and_read_back(
    rt: &dyn ContainerRuntime,
    root: &HostRoot,
) {
    dirs(rt, root, &[HostEntry::new("w/config", 0, 0, 0o775)]).await;
    let rb = HostEntry::new("w/config/gitlab.rb", 0, GIT, 0o640);
    rt.write_host_file(root, &rb, b"one\n")
        .await
        .expect("write");
    assert_eq!(
        rt.read_host_file(root, &rb.path, 100).await.expect("read"),
        Some(b"one\n".to_vec())
    );
    let rb2 = HostEntry::new("w/config/gitlab.rb", GIT, GIT, 0o600);
    rt.write_host_file(root, &rb2, b"two, longer\n")
        .await
        .expect("rewrite");
    assert_eq!(
        rt.read_host_file(root, &rb.path, 100).await.expect("read"),
        Some(b"two, longer\n".to_vec())
    );
    let l = listed_at(rt, root, "w/config").await;
    assert_eq!(
        l.keys().cloned().collect::<Vec<_>>(),
        vec!["".to_string(), "gitlab.rb".into()],
        "no temporary file left"
    );
    let f = &l["gitlab.rb"];
    assert_eq!((f.kind, f.uid, f.gid, f.mode), ('f', 998, 998, 0o600));
    assert_eq!(
        rt.read_host_file(root, "w/config/none", 100)
            .await
            .expect("read"),
        None
    );
    let big = rt.read_host_file(root, &rb.path, 4).await;
    assert!(matches!(big, Err(Error::Backend { .. })), "{big:?}");
    rt.write_host_file(
        root,
        &HostEntry::new("w/config/secrets.json", 0, 0, 0o664),
        b"{}",
    )
    .await
    .expect("write");
    rt.make_host_files_private(
        root,
        &[
            "w/config/gitlab.rb".into(),
            "w/config/secrets.json".into(),
            "w/config/none".into(),
            "w".into(),
        ],
    )
    .await
    .expect("make private");
    let l = listed_at(rt, root, "w").await;
    assert_eq!(
        (
            l["config/gitlab.rb"].mode,
            l["config/secrets.json"].mode,
            l["config"].mode
        ),
        (0o600, 0o600, 0o775),
        "only files made private"
    );
    let dir = rt.read_host_file(root, "w/config", 100).await;
    assert!(matches!(dir, Err(Error::InvalidInput { .. })), "{dir:?}");
    let onto_dir = rt
        .write_host_file(root, &HostEntry::new("w/config", 0, 0, 0o644), b"x")
        .await;
    assert!(matches!(onto_dir, Err(Error::Conflict(_))), "{onto_dir:?}");
    let orphan = rt
        .write_host_file(root, &HostEntry::new("w/none/x", 0, 0, 0o644), b"x")
        .await;
    assert!(matches!(orphan, Err(Error::NotFound { .. })), "{orphan:?}");
}

/// A tree imported then exported has the same entries, contents, owners, modes, mtimes,
/// symlinks and hard links as the tar it came from, its top directory too; a second
/// import onto it is `AlreadyExists`; an import into a missing parent is `NotFound`.
pub async fn tree_round_trips_with_owners_modes_mtimes_and_links(
    rt: &dyn ContainerRuntime,
    root: &HostRoot,
) {
    dirs(rt, root, &[HostEntry::new("trip", 0, 0, 0o755)]).await;
    let summary = rt
        .import_host_dir(root, "trip/web", tar_stream(sample_tree()))
        .await
        .expect("import");
    assert_eq!(summary.entries, 12, "{summary:?}");
    assert_eq!(
        listed_at(rt, root, "trip/web").await,
        listing(&sample_tree())
    );
    let again = rt
        .import_host_dir(root, "trip/web", tar_stream(sample_tree()))
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let orphan = rt
        .import_host_dir(root, "trip/none/web", tar_stream(sample_tree()))
        .await;
    assert!(matches!(orphan, Err(Error::NotFound { .. })), "{orphan:?}");
    // Larger than the pipes between the source, the filter and the engine.
    let orphan = rt
        .import_host_dir(root, "trip/none/web", big_tree(3, 4 << 20))
        .await;
    assert!(matches!(orphan, Err(Error::NotFound { .. })), "{orphan:?}");
    assert_eq!(
        listed_at(rt, root, "trip")
            .await
            .keys()
            .filter(|k| !k.contains('/'))
            .cloned()
            .collect::<Vec<_>>(),
        vec!["".to_string(), "web".into()],
        "nothing beside the import"
    );
}

/// A directory is listed by name with each entry's kind, owner, mode, size and mtime,
/// links as links; a missing directory or a file is `NotFound`. Runs after the round
/// trip, on the tree it imported.
pub async fn directories_are_listed_without_following_links(
    rt: &dyn ContainerRuntime,
    root: &HostRoot,
) {
    let l = rt.list_host_dir(root, "trip/web/data").await.expect("list");
    let names: Vec<&str> = l.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["empty", "hard", "head-link", "repo.git", "run.sh"]);
    let at = |n: &str| l.iter().find(|e| e.name == n).expect("listed");
    let run = at("run.sh");
    assert_eq!(
        (run.kind, run.uid, run.gid, run.mode, run.size, run.mtime),
        (HostKind::File, GIT, GIT, 0o755, 17, 1_600_000_008)
    );
    assert_eq!(at("head-link").kind, HostKind::Symlink);
    let repo = at("repo.git");
    assert_eq!(
        (repo.kind, repo.mode, repo.mtime),
        (HostKind::Dir, 0o2770, 1_600_000_004)
    );
    let top: Vec<String> = rt
        .list_host_dir(root, "")
        .await
        .expect("list the top")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(top.contains(&"trip".to_string()), "{top:?}");
    for missing in [
        "trip/none",
        "trip/web/data/run.sh",
        "trip/web/data/head-link",
    ] {
        let r = rt.list_host_dir(root, missing).await;
        assert!(matches!(r, Err(Error::NotFound { .. })), "{missing}: {r:?}");
    }
}

/// Imports with an absolute or `..` entry, a symlink leaving the directory (alone or
/// through another symlink), an entry below a symlink, a hard link to a file outside it,
/// or a fifo are refused with `Corrupt`: nothing is written, not even the directory.
pub async fn hostile_imports_write_nothing_outside(rt: &dyn ContainerRuntime, root: &HostRoot) {
    use tar::EntryType::{Directory as D, Fifo, Link as H, Regular as F, Symlink as L};
    dirs(rt, root, &[HostEntry::new("hostile/in", 0, 0, 0o755)]).await;
    let file = |n: &str| Raw {
        data: b"evil".to_vec(),
        ..raw(n, F, 0, 0o644, 1)
    };
    let link = |n: &str, to: &str, kind| Raw {
        link: to.into(),
        ..raw(n, kind, 0, 0o777, 1)
    };
    let cases: Vec<(&str, Vec<Raw>)> = vec![
        (
            "dotdot",
            vec![raw("./", D, 0, 0o755, 1), file("./ok"), file("../evil")],
        ),
        ("deep dotdot", vec![file("a/../../../evil")]),
        ("absolute", vec![file("/evil")]),
        ("escaping symlink", vec![link("out", "../../evil", L)]),
        ("absolute symlink", vec![link("out", "/etc", L)]),
        ("below a symlink", vec![link("up", "x", L), file("up/evil")]),
        (
            "symlink chain",
            vec![
                raw("d/", D, 0, 0o755, 1),
                link("d/a", "b/../..", L),
                link("d/b", "..", L),
            ],
        ),
        (
            "hard link outside",
            vec![link("h", "../../../etc/passwd", H)],
        ),
        ("fifo", vec![raw("p", Fifo, 0, 0o644, 1)]),
    ];
    let before = listed_at(rt, root, "").await;
    for (what, entries) in cases {
        match rt
            .import_host_dir(root, "hostile/in/t", tar_stream(build_tar(&entries)))
            .await
        {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("hostile import ({what}): expected Corrupt, got {other:?}"),
        }
        let after = listed_at(rt, root, "").await;
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "hostile import ({what}) wrote something"
        );
    }
}

/// A directory is moved (missing parents of the target made), not onto an existing one
/// (`AlreadyExists`), not from a missing one (`NotFound`); removed with all it holds; a
/// missing one's removal is Ok.
pub async fn dirs_are_moved_and_removed(rt: &dyn ContainerRuntime, root: &HostRoot) {
    dirs(
        rt,
        root,
        &[
            HostEntry::new("mv/web/data", GIT, GIT, 0o700),
            HostEntry::new("mv/other", 0, 0, 0o755),
        ],
    )
    .await;
    rt.write_host_file(
        root,
        &HostEntry::new("mv/web/data/f", GIT, GIT, 0o600),
        b"kept",
    )
    .await
    .expect("write");
    rt.move_host_dir(root, "mv/web", "mv/aside/2026/web")
        .await
        .expect("move");
    assert!(matches!(
        rt.export_host_dir(root, "mv/web").await.map(|_| ()),
        Err(Error::NotFound { .. })
    ));
    let moved = listed_at(rt, root, "mv/aside/2026/web").await;
    let f = &moved["data/f"];
    assert_eq!(
        (f.uid, f.mode, f.data.as_slice()),
        (998, 0o600, &b"kept"[..])
    );
    assert_eq!(moved["data"].mode, 0o700);
    let onto = rt
        .move_host_dir(root, "mv/other", "mv/aside/2026/web")
        .await;
    assert!(matches!(onto, Err(Error::AlreadyExists { .. })), "{onto:?}");
    let missing = rt.move_host_dir(root, "mv/none", "mv/x").await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    rt.remove_host_dir(root, "mv/aside").await.expect("remove");
    assert!(matches!(
        rt.export_host_dir(root, "mv/aside").await.map(|_| ()),
        Err(Error::NotFound { .. })
    ));
    rt.remove_host_dir(root, "mv/aside")
        .await
        .expect("remove again");
    assert!(listed_at(rt, root, "mv").await.contains_key("other"));
}

/// The free space of the host directory's file system is known and not zero.
pub async fn free_space_is_reported(rt: &dyn ContainerRuntime, root: &HostRoot) {
    let free = rt.host_free_space(root).await.expect("free space");
    assert!(free > 1 << 20, "{free} bytes free");
}

/// An export stream dropped after its first chunk removes its helper all the same.
pub async fn dropped_export_leaves_no_helper(rt: &dyn ContainerRuntime, root: &HostRoot) {
    dirs(rt, root, &[HostEntry::new("drop", 0, 0, 0o755)]).await;
    let mut s = rt.export_host_dir(root, "drop").await.expect("export");
    let _ = s.next().await;
    drop(s);
    for _ in 0..50 {
        if helpers_of(rt, root).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "helpers left after a dropped export: {:?}",
        helpers_of(rt, root).await
    );
}

async fn helpers_of(rt: &dyn ContainerRuntime, root: &HostRoot) -> Vec<String> {
    rt.list(&[
        (HELPER_LABEL.to_string(), "1".to_string()),
        (HELPER_ROOT_LABEL.to_string(), root.trimmed().to_string()),
    ])
    .await
    .expect("list")
    .into_iter()
    .map(|c| c.name)
    .collect()
}

/// An import whose stream fails midway is refused and leaves nothing, not even the
/// part of the tree that came before the failure.
pub async fn failed_import_stream_leaves_nothing(rt: &dyn ContainerRuntime, root: &HostRoot) {
    dirs(rt, root, &[HostEntry::new("cut", 0, 0, 0o755)]).await;
    let tree = sample_tree();
    let half = Bytes::copy_from_slice(&tree[..tree.len() / 2]);
    let cut: TarStream = futures::stream::iter(vec![
        Ok(half),
        Err(Error::backend("test", "the source went away")),
    ])
    .boxed();
    let r = rt.import_host_dir(root, "cut/web", cut).await;
    assert!(r.is_err(), "a cut import succeeded: {r:?}");
    let left = listed_at(rt, root, "cut").await;
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        vec![""],
        "a cut import left {left:?}"
    );
}

/// A helper left by a killed process (a container with the helper labels) is found and
/// removed by `remove_helpers`.
pub async fn leftover_helper_is_found_and_removed(rt: &dyn ContainerRuntime, root: &HostRoot) {
    let run = root
        .trimmed()
        .rsplit('/')
        .next()
        .unwrap_or("run")
        .to_string();
    let mut s = spec(&root.image, &run, "helper-leftover");
    s.labels.insert(HELPER_LABEL.into(), "1".into());
    s.labels
        .insert(HELPER_ROOT_LABEL.into(), root.trimmed().into());
    created(rt, &s).await;
    assert_eq!(helpers_of(rt, root).await, vec![s.name.clone()]);
    assert_eq!(rt.remove_helpers(root).await.expect("remove_helpers"), 1);
    assert!(helpers_of(rt, root).await.is_empty());
    assert!(rt.inspect(&s.name).await.expect("inspect").is_none());
}

/// After everything above, failures included, no helper container of the run is left.
pub async fn no_helper_is_left(rt: &dyn ContainerRuntime, root: &HostRoot) {
    assert_eq!(helpers_of(rt, root).await, Vec::<String>::new());
    assert_eq!(rt.remove_helpers(root).await.expect("remove_helpers"), 0);
}

/// A tree imported on engine `a`, exported from it straight into engine `b` and exported
/// again is the tar it came from: contents, owners, modes, mtimes, symlinks, hard links.
pub async fn tree_moves_between_engines(
    a: &dyn ContainerRuntime,
    b: &dyn ContainerRuntime,
    root_a: &HostRoot,
    root_b: &HostRoot,
) {
    dirs(a, root_a, &[HostEntry::new("x", 0, 0, 0o755)]).await;
    dirs(b, root_b, &[HostEntry::new("x", 0, 0, 0o755)]).await;
    a.import_host_dir(root_a, "x/src", tar_stream(sample_tree()))
        .await
        .expect("import on a");
    let out = a
        .export_host_dir(root_a, "x/src")
        .await
        .expect("export from a");
    b.import_host_dir(root_b, "x/dst", out)
        .await
        .expect("import on b");
    assert_eq!(listed_at(b, root_b, "x/dst").await, listing(&sample_tree()));
}

/// Bytes of pseudo-random content for file `seed`, made as they are read; byte `k` is
/// the same whatever the sizes of the reads.
struct Noise {
    seed: u64,
    pos: u64,
    len: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl std::io::Read for Noise {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out
            .len()
            .min(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX));
        let mut block = (u64::MAX, [0u8; 8]);
        for byte in &mut out[..n] {
            let b = self.pos / 8;
            if block.0 != b {
                block = (b, splitmix(self.seed.rotate_left(32) ^ b).to_le_bytes());
            }
            *byte = block.1[(self.pos % 8) as usize];
            self.pos += 1;
        }
        Ok(n)
    }
}

fn noise(seed: u64, len: u64) -> Noise {
    Noise { seed, pos: 0, len }
}

/// A tar of `files` files of `size` bytes each, made as it is read (never in memory).
pub fn big_tree(files: u64, size: u64) -> TarStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(girofle_archive::ChannelWriter::new(tx));
        let mut dir = |name: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o750);
            h.set_uid(u64::from(GIT));
            h.set_gid(u64::from(GIT));
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            b.append_data(&mut h, name, std::io::empty())
        };
        let mut made = dir("./").and_then(|()| dir("./repositories/"));
        for i in 0..files {
            if made.is_err() {
                break;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o640);
            h.set_uid(u64::from(GIT));
            h.set_gid(u64::from(GIT));
            h.set_mtime(1_600_000_000 + i);
            h.set_size(size);
            made = b.append_data(&mut h, format!("./repositories/pack-{i}"), noise(i, size));
        }
        if made.is_ok() {
            if let Ok(w) = b.into_inner() {
                let _ = w.finish();
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (item.map_err(|e| Error::backend("big tree", e)), rx))
    })
    .boxed()
}

/// Checks, as it is read, that a tar stream holds [`big_tree`]'s files, byte for byte,
/// with their owners, modes and mtimes; returns the bytes of file content checked.
pub async fn check_big_tree(mut tar: TarStream, files: u64, size: u64) -> u64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let checker = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(girofle_archive::ChannelReader::new(rx));
        let (mut seen, mut bytes) = (0u64, 0u64);
        for entry in archive.entries().expect("a tar") {
            let mut entry = entry.expect("an entry");
            let name = norm(&String::from_utf8_lossy(&entry.path_bytes()));
            let Some(i) = name.strip_prefix("repositories/pack-") else {
                continue;
            };
            let i: u64 = i.parse().expect("a file number");
            let h = entry.header();
            assert_eq!(
                (
                    h.uid().unwrap(),
                    h.mode().unwrap() & 0o7777,
                    h.mtime().unwrap()
                ),
                (u64::from(GIT), 0o640, 1_600_000_000 + i),
                "{name}"
            );
            let mut got = blake3::Hasher::new();
            let n = std::io::copy(&mut entry, &mut got).expect("read");
            let mut want = blake3::Hasher::new();
            std::io::copy(&mut noise(i, size), &mut want).expect("noise");
            assert_eq!((n, got.finalize()), (size, want.finalize()), "{name}");
            seen += 1;
            bytes += n;
        }
        assert_eq!(seen, files);
        bytes
    });
    while let Some(chunk) = tar.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        if tx.send(item).await.is_err() {
            break;
        }
    }
    drop(tx);
    match checker.await {
        Ok(bytes) => bytes,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A tree of `files` files of `size` bytes is imported on `a`, streamed from `a` into
/// `b`, and streamed out of `b` again, checked byte for byte; nothing collects it in
/// memory (the caller measures the process's peak).
pub async fn big_tree_streams_between_engines(
    a: &dyn ContainerRuntime,
    b: &dyn ContainerRuntime,
    root_a: &HostRoot,
    root_b: &HostRoot,
    files: u64,
    size: u64,
) {
    dirs(a, root_a, &[HostEntry::new("big", 0, 0, 0o755)]).await;
    dirs(b, root_b, &[HostEntry::new("big", 0, 0, 0o755)]).await;
    let s = a
        .import_host_dir(root_a, "big/src", big_tree(files, size))
        .await
        .expect("import on a");
    assert_eq!(s.bytes, files * size);
    let out = a
        .export_host_dir(root_a, "big/src")
        .await
        .expect("export from a");
    b.import_host_dir(root_b, "big/dst", out)
        .await
        .expect("import on b");
    let back = b
        .export_host_dir(root_b, "big/dst")
        .await
        .expect("export from b");
    assert_eq!(check_big_tree(back, files, size).await, files * size);
}
