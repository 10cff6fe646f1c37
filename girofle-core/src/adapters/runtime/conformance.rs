//! The behaviours every [`ContainerRuntime`] must have, one function per behaviour, in
//! the manner of the store battery: run against the Docker engine (tests/) and against
//! [`MemoryRuntime`](super::MemoryRuntime), so the double the fast tests trust behaves
//! as Docker does. A new engine proves itself by passing [`run_all`].
//!
//! The battery needs an image that is present and whose default command keeps running,
//! and a POSIX `sh` in it for the few commands of [`COMMANDS`] (a double scripts those).
//! Every container it makes carries the label [`LABEL`] with the run's id and is removed
//! afterwards, even when a check fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ContainerRuntime, ContainerSpec, ExecSpec, PublishedPort};
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
