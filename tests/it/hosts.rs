//! Docker hosts reached only through their engine's API: the runtime battery on a remote
//! engine over TCP with TLS, and `girofle host list|show|add|rm` through the binary with
//! the two engines of scripts/remote-docker (one of them stopped and started again).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use girofle_core::runtime::{
    conformance, ContainerRuntime, ContainerSpec, DockerRuntime, HostRoot, PublishedPort,
};
use girofle_tests::remote::{self, RemoteEngine};
use girofle_tests::{json, json_ok, ok, poll, stand_in, text, unique, wait_for, TestRoot};

async fn connect(engine: &RemoteEngine) -> DockerRuntime {
    let options = engine
        .host_config((20080, 20999))
        .engine_options(engine.name, Duration::from_secs(10))
        .unwrap();
    DockerRuntime::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", engine.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_engine_over_tls_passes_the_runtime_battery() {
    let _up = remote::using();
    let [a, _] = remote::remote_engines();
    let image = stand_in("17.5.1");
    let docker = connect(&a).await;
    // Its published addresses are that machine's, though it is reached on loopback.
    assert!(!docker.is_on_this_host());
    assert!(!docker.server_version().is_empty());
    conformance::run_all(Arc::new(docker) as Arc<dyn ContainerRuntime>, &image).await;
}

/// A host's files reached only through its engine: the host-file battery on host-a, and
/// a tree moved from host-a to host-b, whose directories do not exist on this machine
/// (so nothing can have gone through a local path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hosts_files_are_reached_through_their_engines_alone() {
    let _up = remote::using();
    let [a, b] = remote::remote_engines();
    let image = stand_in("17.5.1");
    let (da, db) = (connect(&a).await, connect(&b).await);
    let base_a = format!("{}/conformance", a.data_dir);
    let base_b = format!("{}/conformance", b.data_dir);
    conformance::run_host_files(
        Arc::new(da.clone()) as Arc<dyn ContainerRuntime>,
        &image,
        &base_a,
    )
    .await;
    let run = conformance::unique_run();
    let (root_a, root_b) = (
        HostRoot::new(format!("{base_a}/{run}"), &image),
        HostRoot::new(format!("{base_b}/{run}"), &image),
    );
    let moved = tokio::spawn({
        let (da, db, root_a, root_b) = (da.clone(), db.clone(), root_a.clone(), root_b.clone());
        async move {
            conformance::tree_moves_between_engines(&da, &db, &root_a, &root_b).await;
        }
    })
    .await;
    for root in [&root_a, &root_b] {
        assert!(
            !std::path::Path::new(&root.path).exists(),
            "{} exists on this machine: the test would not prove the engine path",
            root.path
        );
    }
    conformance::cleanup_host(&da, &image, &base_a, &run).await;
    conformance::cleanup_host(&db, &image, &base_b, &run).await;
    if let Err(e) = moved {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A TLS engine refuses a client without certificates: the remote engines are reachable
/// only as Girofle's configuration says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_engine_refuses_a_client_without_certificates() {
    let _up = remote::using();
    let [a, _] = remote::remote_engines();
    let plain = DockerRuntime::connect_with(&girofle_core::runtime::EngineOptions {
        host: Some(a.engine.clone()),
        connect_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    })
    .await;
    assert!(plain.is_err(), "a plain HTTP client was let in");
}

fn add_host(root: &TestRoot, e: &RemoteEngine) {
    ok(root.cli(&[
        "host",
        "add",
        e.name,
        "--engine",
        &e.engine,
        "--tls-dir",
        &e.certs.display().to_string(),
        "--ip",
        &e.ip.to_string(),
        "--ports",
        &format!("{}-{}", root.ports.0, root.ports.1),
        "--data-dir",
        &e.data_dir,
        "--label",
        &format!("zone={}", e.name),
    ]));
}

fn host_list(root: &TestRoot) -> HashMap<String, serde_json::Value> {
    let list = json_ok(&root.cli(&["host", "list", "--json"]), "host list");
    list.as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h.clone()))
        .collect()
}

/// A container on `engine` that Girofle counts as an instance of `root` (its labels),
/// publishing the first port of the root's range on the engine's address.
async fn fake_instance(docker: &DockerRuntime, root: &TestRoot, e: &RemoteEngine) -> String {
    let name = unique("remote");
    let spec = ContainerSpec {
        name: name.clone(),
        image: stand_in("17.5.1"),
        labels: [
            ("io.girofle.managed".to_string(), "true".to_string()),
            (
                "io.girofle.root".to_string(),
                root.root.display().to_string(),
            ),
            ("io.girofle.instance".to_string(), name.clone()),
        ]
        .into(),
        ports: vec![PublishedPort {
            host_ip: e.ip.to_string(),
            host_port: root.ports.0,
            container_port: 80,
        }],
        log_max_size: "1m".into(),
        log_max_files: 1,
        stop_timeout: Duration::from_secs(1),
        ..ContainerSpec::default()
    };
    docker.create(&spec).await.unwrap();
    docker.start(&name).await.unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_list_shows_remote_engines_their_instances_and_free_addresses() {
    let _up = remote::using();
    let [a, b] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    let before = std::fs::read_to_string(root.root.join("girofle.toml")).unwrap();
    add_host(&root, &a);
    add_host(&root, &b);
    // The user's file is kept as it was; the hosts are appended.
    let after = std::fs::read_to_string(root.root.join("girofle.toml")).unwrap();
    assert!(after.starts_with(&before), "{after}");

    let pool = u64::from(root.ports.1 - root.ports.0 + 1);
    let hosts = host_list(&root);
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for e in [&a, &b] {
        let h = &hosts[e.name];
        assert_eq!(h["state"], "up", "{h}");
        assert!(!h["version"].as_str().unwrap().is_empty(), "{h}");
        assert_eq!(h["instances"], serde_json::json!([]), "{h}");
        assert_eq!(h["pool_size"], pool, "{h}");
        assert_eq!(h["free_addresses"], pool, "{h}");
        assert_eq!(h["labels"]["zone"], e.name, "{h}");
        // Measured by the engine inside its own machine (a helper container).
        assert!(h["disk_free_bytes"].as_u64().unwrap() > 0, "{h}");
    }
    assert_eq!(hosts["local"]["state"], "up");

    // A container of this root on host-a: counted there, its address taken from the
    // pool, and reachable from this machine on host-a's address.
    let docker = connect(&a).await;
    let name = fake_instance(&docker, &root, &a).await;
    let cleanup = scopeguard(docker.clone(), name.clone());
    let shown = json_ok(
        &root.cli(&["host", "show", "host-a", "--json"]),
        "host show",
    );
    assert_eq!(shown["instances"], serde_json::json!([name]), "{shown}");
    assert_eq!(shown["free_addresses"], pool - 1, "{shown}");
    let addr = SocketAddr::new(a.ip, root.ports.0);
    wait_for(
        "the container on host-a to answer on its published address",
        Duration::from_secs(60),
        || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok(),
    );
    assert_eq!(
        host_list(&root)["host-b"]["instances"],
        serde_json::json!([])
    );

    // `rm` is refused while the host has instances, naming them.
    let out = root.cli(&["host", "rm", "host-a"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains(&name) && text(&out).contains("still has instances"),
        "{}",
        text(&out)
    );
    drop(cleanup);
    ok(root.cli(&["host", "rm", "host-a"]));
    let hosts = host_list(&root);
    assert!(!hosts.contains_key("host-a") && hosts.contains_key("host-b"));
    let left = std::fs::read_to_string(root.root.join("girofle.toml")).unwrap();
    assert!(
        left.starts_with(&before) && !left.contains("[hosts.host-a]"),
        "{left}"
    );
}

/// Removes a container when dropped (even when the test fails).
struct Removed(Option<(DockerRuntime, String)>);

fn scopeguard(docker: DockerRuntime, name: String) -> Removed {
    Removed(Some((docker, name)))
}

impl Drop for Removed {
    fn drop(&mut self) {
        if let Some((docker, name)) = self.0.take() {
            // Dropped inside the async test: remove from another thread's runtime.
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(docker.remove(&name, true))
            })
            .join()
            .ok();
        }
    }
}

/// Starts the outer container of a remote engine again when dropped, and waits until
/// the engine answers, so a failed test does not leave it down.
struct Restarted<'a>(&'a RemoteEngine);

impl Drop for Restarted<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["start", &self.0.container()])
            .output();
        poll(Duration::from_secs(90), Duration::from_millis(500), || {
            self.0.answers().then_some(())
        });
    }
}

#[test]
fn host_list_shows_a_stopped_engine_unreachable_within_seconds() {
    let _down = remote::stopping();
    let [a, b] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    add_host(&root, &b);
    assert_eq!(host_list(&root)["host-b"]["state"], "up");

    let restart = Restarted(&b);
    ok(std::process::Command::new("docker")
        .args(["stop", "-t", "5", &b.container()])
        .output()
        .unwrap());
    let t0 = Instant::now();
    let hosts = host_list(&root);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "host list took {took:?}");
    let hb = &hosts["host-b"];
    assert_eq!(hb["state"], "unreachable", "{hb}");
    assert!(hb["version"].is_null() && hb["instances"].is_null(), "{hb}");
    assert!(hb["error"].as_str().unwrap().contains(&b.engine), "{hb}");
    assert_eq!(hosts["host-a"]["state"], "up", "{hosts:?}");
    assert_eq!(hosts["local"]["state"], "up", "{hosts:?}");

    // `rm` cannot check an unreachable engine: refused unless --force.
    let out = root.cli(&["host", "rm", "host-b"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));

    drop(restart);
    assert!(b.answers(), "host-b did not come back");
    let shown = json(&root.cli(&["host", "show", "host-b", "--json"]));
    assert_eq!(shown["state"], "up", "{shown}");
    let removed = json_ok(&root.cli(&["host", "rm", "host-b", "--json"]), "host rm");
    assert_eq!(removed["unchecked"], false, "{removed}");
}

#[test]
fn host_rm_force_removes_a_host_whose_engine_never_answers() {
    let root = TestRoot::new(&stand_in("17.5.1"));
    let certs = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(certs.path().join(f), "").unwrap();
    }
    ok(root.cli(&[
        "host",
        "add",
        "ghost",
        "--engine",
        "tcp://127.0.0.1:1",
        "--tls-dir",
        &certs.path().display().to_string(),
        "--ip",
        "127.0.0.1",
    ]));
    let shown = json(&root.cli(&["host", "show", "ghost", "--json"]));
    assert_eq!(shown["state"], "unreachable", "{shown}");
    assert_eq!(shown["disk_free_bytes"], serde_json::Value::Null);
    let out = root.cli(&["host", "rm", "ghost"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let removed = json_ok(
        &root.cli(&["host", "rm", "ghost", "--force", "--json"]),
        "host rm --force",
    );
    assert_eq!(removed["unchecked"], true, "{removed}");
    let out = root.cli(&["host", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn host_add_refuses_bad_input_saying_what_works() {
    let root = TestRoot::new(&stand_in("17.5.1"));
    let before = std::fs::read_to_string(root.root.join("girofle.toml")).unwrap();
    for (args, says) in [
        (
            vec!["--engine", "ssh://admin@10.0.0.5", "--ip", "10.0.0.5"],
            "scheme `ssh`, which this build",
        ),
        (
            vec!["--engine", "tcp://10.0.0.5:2376", "--ip", "10.0.0.5"],
            "without client certificates",
        ),
        (
            vec![
                "--engine",
                "unix:///var/run/docker.sock",
                "--ip",
                "10.0.0.5",
                "--data-dir",
                "rel",
            ],
            "absolute",
        ),
        (
            vec![
                "--engine",
                "unix:///var/run/docker.sock",
                "--ip",
                "10.0.0.5",
                "--ports",
                "9-3",
            ],
            "`9-3`",
        ),
    ] {
        let out = root
            .girofle()
            .args(["host", "add", "h1"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let out = root.cli(&[
        "host",
        "add",
        "local",
        "--engine",
        "unix:///x.sock",
        "--ip",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let after = std::fs::read_to_string(root.root.join("girofle.toml")).unwrap();
    assert_eq!(before, after, "a refused add changed the file");
}

#[test]
fn free_disk_is_unknown_when_the_instance_image_is_not_on_the_host() {
    let _up = remote::using();
    let [a, _] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    // Never pulled: the helper needs the image already on that host.
    root.edit_config(|c| c.instances.image = format!("{}/absent:0", girofle_tests::image_prefix()));
    let shown = json_ok(
        &root.cli(&["host", "show", "host-a", "--json"]),
        "host show",
    );
    assert_eq!(shown["state"], "up", "{shown}");
    assert!(shown["disk_free_bytes"].is_null(), "{shown}");
    assert!(
        shown["disk_note"]
            .as_str()
            .unwrap()
            .contains("not on that host"),
        "{shown}"
    );
    let out = ok(root.cli(&["host", "show", "host-a"]));
    assert!(out.contains("unknown"), "{out}");
}
