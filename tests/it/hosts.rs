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
    add_host_with(root, e, root.ports);
}

/// `host add` of `e` with the port range `ports` (two roots of one fleet share one).
fn add_host_with(root: &TestRoot, e: &RemoteEngine, ports: (u16, u16)) {
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
        &format!("{}-{}", ports.0, ports.1),
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

/// Runs `sh -c script` in the container that runs engine `e` (its machine): what is on
/// that machine's disk, seen without Girofle.
fn on_machine(e: &RemoteEngine, script: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", &e.container(), "sh", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes what the instances of a test left on the remote machines, even after a failed
/// assertion: containers of the root, instance and decommissioned directories.
struct RemoteLeftovers<'a> {
    root: &'a TestRoot,
    engines: Vec<RemoteEngine>,
    names: Vec<String>,
}

impl Drop for RemoteLeftovers<'_> {
    fn drop(&mut self) {
        for e in &self.engines {
            if let Ok(out) = e
                .docker()
                .args(["ps", "-aq", "--filter"])
                .arg(format!(
                    "label=io.girofle.root={}",
                    self.root.root.display()
                ))
                .output()
            {
                let ids = String::from_utf8_lossy(&out.stdout).to_string();
                if !ids.trim().is_empty() {
                    let _ = e
                        .docker()
                        .args(["rm", "-f"])
                        .args(ids.split_whitespace())
                        .output();
                }
            }
            for n in &self.names {
                on_machine(
                    e,
                    &format!(
                        "rm -rf {d}/instances/{n} {d}/decommissioned/{n}-*",
                        d = e.data_dir
                    ),
                );
            }
        }
    }
}

/// Whether GitLab's sign-in page answers 200 at `ip:port`, from this machine (the
/// health endpoints answer local clients only, as GitLab's monitoring whitelist says).
fn serves(ip: std::net::IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)).is_ok_and(
        |mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let asked = s
                .write_all(format!("GET /users/sign_in HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes());
            let mut answer = String::new();
            asked.is_ok() && s.read_to_string(&mut answer).is_ok() && answer.contains(" 200 ")
        },
    )
}

#[test]
fn instances_live_on_remote_hosts_reached_through_their_engines_alone() {
    let _down = remote::stopping();
    let [a, b] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    add_host(&root, &b);
    let (web, api) = (unique("web"), unique("api"));
    let _leftovers = RemoteLeftovers {
        root: &root,
        engines: vec![a.clone(), b.clone()],
        names: vec![web.clone(), api.clone()],
    };

    // On the host named, and on the host carrying the label asked for.
    let on_a = json_ok(
        &root.cli(&["instance", "create", &web, "--host", "host-a", "--json"]),
        "create --host",
    );
    assert_eq!(on_a["host"], "host-a", "{on_a}");
    assert_eq!(on_a["bindings"]["ip"], a.ip.to_string(), "{on_a}");
    let on_b = json_ok(
        &root.cli(&[
            "instance",
            "create",
            &api,
            "--host-label",
            "zone=host-b",
            "--json",
        ]),
        "create --host-label",
    );
    assert_eq!(on_b["host"], "host-b", "{on_b}");
    let port = on_a["bindings"]["http_port"].as_u64().unwrap() as u16;
    assert!(
        serves(a.ip, port),
        "GitLab on host-a does not answer at {}:{port}",
        a.ip
    );

    // Its directories are on host-a's machine only: none of them is a path here.
    let base = format!("{}/instances/{web}", a.data_dir);
    assert!(
        !std::path::Path::new(&a.data_dir).exists(),
        "{} exists on this machine",
        a.data_dir
    );
    assert!(on_machine(&a, &format!("ls {base}/config")).contains("gitlab.rb"));
    assert!(on_machine(&b, &format!("ls {base} 2>&1")).contains("No such file"));

    // A label no host carries, and a host that does not carry the one asked: refused.
    let none = root.cli(&[
        "instance",
        "create",
        &unique("x"),
        "--host-label",
        "zone=mars",
    ]);
    assert_eq!(none.status.code(), Some(4), "{}", text(&none));
    assert!(text(&none).contains("zone=mars"), "{}", text(&none));

    // gitlab.rb edited through the engine.
    ok(root.cli(&[
        "instance",
        "reconfigure",
        &web,
        "--set",
        "gitlab_rails['time_zone']=Europe/Paris",
    ]));
    let rb = on_machine(
        &a,
        &format!("cat {base}/config/gitlab.rb; stat -c %a {base}/config/gitlab.rb"),
    );
    assert!(
        rb.contains("gitlab_rails['time_zone'] = 'Europe/Paris'"),
        "{rb}"
    );
    assert!(
        rb.trim_end().ends_with("600"),
        "gitlab.rb is not 0600: {rb}"
    );

    let list = json_ok(&root.cli(&["instance", "list", "--json"]), "instance list");
    let state = |list: &serde_json::Value, name: &str| {
        let s = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned();
        s.unwrap_or_else(|| panic!("{name} not listed: {list}"))
    };
    assert_eq!(state(&list, &web)["host"], "host-a", "{list}");
    assert_eq!(state(&list, &web)["state"], "running", "{list}");
    assert_eq!(state(&list, &api)["host"], "host-b", "{list}");
    let table = ok(root.cli(&["instance", "list"]));
    assert!(table.lines().next().unwrap().contains("HOST"), "{table}");

    // host-b's engine stopped: its instance is unreachable within seconds, host-a's not.
    let restart = Restarted(&b);
    ok(std::process::Command::new("docker")
        .args(["stop", "-t", "5", &b.container()])
        .output()
        .unwrap());
    let t0 = Instant::now();
    let list = json_ok(&root.cli(&["instance", "list", "--json"]), "instance list");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "list took {:?}",
        t0.elapsed()
    );
    assert_eq!(state(&list, &api)["state"], "unreachable", "{list}");
    assert_eq!(state(&list, &web)["state"], "running", "{list}");
    drop(restart);

    // Decommissioned (a remote instance's final backup: see
    // a_remote_instance_is_backed_up_cold_through_its_engine_and_restored_here): the
    // container gone, the data kept aside on host-a's machine.
    let gone = json_ok(
        &root.cli(&["instance", "rm", &web, "--no-backup", "--json"]),
        "instance rm",
    );
    assert_eq!(gone["host"], "host-a", "{gone}");
    let kept = gone["archived_to"].as_str().unwrap().to_string();
    assert!(
        kept.starts_with(&format!("{}/decommissioned/{web}-", a.data_dir)),
        "{gone}"
    );
    assert!(on_machine(&a, &format!("cat {kept}/config/gitlab.rb")).contains("Europe/Paris"));
    assert!(on_machine(&a, &format!("ls {base} 2>&1")).contains("No such file"));
    let containers = a
        .docker()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&containers.stdout).contains(&web));

    // host-b drained: nothing new goes there, and its instance moves to the host with the
    // fewest instances (local, here: this machine's engine).
    let drained = json_ok(
        &root.cli(&["host", "drain", "host-b", "--json"]),
        "host drain",
    );
    assert_eq!(drained["moved"][0]["name"], api.as_str(), "{drained}");
    assert_eq!(drained["moved"][0]["to"], "local", "{drained}");
    assert_eq!(host_list(&root)["host-b"]["drain"], true);
    let refused = root.cli(&["instance", "create", &unique("x"), "--host", "host-b"]);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused));
    assert!(text(&refused).contains("undrain"), "{}", text(&refused));
    let shown = json_ok(&root.cli(&["instance", "show", &api, "--json"]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some("local"), Some("running"))
    );
    let left = on_machine(
        &b,
        &format!("ls {d}/instances {d}/decommissioned 2>&1", d = b.data_dir),
    );
    assert!(left.contains(&format!("{api}-moved-")), "{left}");
    ok(root.cli(&["host", "undrain", "host-b"]));
    assert_eq!(host_list(&root)["host-b"]["drain"], false);
    ok(root.cli(&["instance", "rm", &api, "--no-backup", "--purge"]));
    assert!(!root.root.join("instances").join(&api).exists());
}

#[test]
fn an_instance_moves_between_remote_hosts_with_its_repositories() {
    let _up = remote::using();
    let [a, b] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    add_host(&root, &b);
    let app = unique("app");
    let _leftovers = RemoteLeftovers {
        root: &root,
        engines: vec![a.clone(), b.clone()],
        names: vec![app.clone()],
    };
    let made = json_ok(
        &root.cli(&["instance", "create", &app, "--host", "host-a", "--json"]),
        "create",
    );
    let password = on_machine(
        &a,
        &format!(
            "cat {}/instances/{app}/config/initial_root_password",
            a.data_dir
        ),
    )
    .lines()
    .find_map(|l| l.strip_prefix("Password: "))
    .expect("initial_root_password on host-a")
    .trim()
    .to_string();
    let url = |external: &serde_json::Value| {
        girofle_tests::project_url(external.as_str().unwrap(), &password, "team/app.git")
    };
    let work = root.dir.path().join("work");
    let before = girofle_tests::push_project(&work, &url(&made["external_url"]), 3);

    // Refused before anything is touched: a host it is already on, an unknown one.
    let same = root.cli(&["instance", "move", &app, "--to", "host-a"]);
    assert_eq!(same.status.code(), Some(2), "{}", text(&same));
    let unknown = root.cli(&["instance", "move", &app, "--to", "mars"]);
    assert_eq!(unknown.status.code(), Some(3), "{}", text(&unknown));
    assert!(text(&unknown).contains("host-b"), "{}", text(&unknown));

    // A move that fails before the switch (the new container not serving within 1 s)
    // leaves the old instance running with its data, and nothing on host-b.
    let failed = root.cli(&["instance", "move", &app, "--to", "host-b", "--timeout", "1"]);
    assert_eq!(failed.status.code(), Some(6), "{}", text(&failed));
    let shown = json_ok(&root.cli(&["instance", "show", &app, "--json"]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some("host-a"), Some("running"))
    );
    assert_eq!(
        girofle_tests::ls_remote(&url(&made["external_url"])),
        before
    );
    let names = b
        .docker()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&names.stdout).contains(&app));
    let left = on_machine(
        &b,
        &format!("ls {d}/instances {d}/staging 2>&1", d = b.data_dir),
    );
    assert!(!left.contains(&app), "{left}");

    let moved = json_ok(
        &root.cli(&["instance", "move", &app, "--to", "host-b", "--json"]),
        "instance move",
    );
    assert_eq!(
        (moved["from"].as_str(), moved["to"].as_str()),
        (Some("host-a"), Some("host-b"))
    );
    // host-b's pool has host-b's address only: new addresses, said so.
    assert_eq!(moved["addresses_kept"], false, "{moved}");
    assert_eq!(
        moved["record"]["bindings"]["ip"],
        b.ip.to_string(),
        "{moved}"
    );
    assert_eq!(moved["checks"]["secrets_ok"], true, "{moved}");
    let downtime = moved["downtime_secs"].as_f64().unwrap();
    assert!(
        downtime > 0.0 && downtime <= moved["took_secs"].as_f64().unwrap(),
        "{moved}"
    );
    assert!(moved["bytes_copied"].as_u64().unwrap() > 0, "{moved}");

    // The repositories came along: the same refs, and fsck is clean.
    let new_url = url(&moved["record"]["external_url"]);
    assert_eq!(girofle_tests::ls_remote(&new_url), before);
    let fsck = girofle_tests::clone_and_fsck(&new_url, &root.dir.path().join("mirror"));
    assert!(!fsck.contains("error"), "{fsck}");

    // The old container is gone; its data is kept aside on host-a; the inventory says host-b.
    let names = a
        .docker()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&names.stdout).contains(&app));
    let kept = moved["kept_aside"].as_str().unwrap();
    assert!(on_machine(&a, &format!("ls {kept}/config")).contains("gitlab-secrets.json"));
    let shown = json_ok(&root.cli(&["instance", "show", &app, "--json"]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some("host-b"), Some("running"))
    );
    let journal = ok(root.cli(&["journal", "--instance", &app]));
    assert!(journal.contains("move"), "{journal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_midway_is_put_right_by_recover_on_another_machine() {
    let _up = remote::using();
    let [a, b] = remote::remote_engines();
    let (namespace, ttl) = (unique("move"), 3);
    let one = TestRoot::new(&stand_in("17.5.1"));
    let two = TestRoot::new(&stand_in("17.5.1"));
    for t in [&one, &two] {
        t.edit_config(|c| {
            c.inventory = girofle_tests::etcd::inventory_on(
                girofle_tests::etcd::endpoints(),
                &namespace,
                ttl,
            );
        });
        add_host_with(t, &a, one.ports);
        add_host_with(t, &b, one.ports);
    }
    let app = unique("app");
    let _leftovers = RemoteLeftovers {
        root: &one,
        engines: vec![a.clone(), b.clone()],
        names: vec![app.clone()],
    };
    ok(one.cli(&["instance", "create", &app, "--host", "host-a"]));

    // Machine one starts a move and dies in the middle of it.
    let mut settings = girofle_core::inventory::EtcdSettings::new(girofle_tests::etcd::endpoints());
    settings.namespace.clone_from(&namespace);
    let fleet = girofle_core::inventory::EtcdInventory::new(settings);
    let mut child = one
        .girofle()
        .args(["instance", "move", &app, "--to", "host-b"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while fleet.intent(&app).await.unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the move never wrote its intent record"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the move ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Machine two finishes or rolls it back once the dead one's lease ran out: its intent
    // record is on etcd, where every machine finds it.
    let killed = Instant::now();
    let recovery = loop {
        let out = json_ok(&two.cli(&["--json", "recover"]), "recover");
        if let Some(r) = out
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance"] == app.as_str())
        {
            break r.clone();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(ttl + 30),
            "recover on machine two never took up the move: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(recovery["operation"], "move", "{recovery}");
    assert!(
        fleet.intent(&app).await.unwrap().is_none(),
        "the intent record stayed"
    );
    let (kept, gone) = match recovery["outcome"].as_str() {
        Some("rolled-back") => ("host-a", &b),
        Some("finished") => ("host-b", &a),
        other => panic!("recovery ended {other:?}: {recovery}"),
    };
    // Exactly one instance: on the host the recovery left it, running; nothing of it on
    // the other host (no container, no directory, no staging copy).
    let shown = json_ok(&two.cli(&["--json", "instance", "show", &app]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some(kept), Some("running")),
        "{shown}"
    );
    let names = gone
        .docker()
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&names.stdout).contains(&app),
        "a container is left on {}",
        gone.name
    );
    let left = on_machine(
        gone,
        &format!("ls {d}/instances {d}/staging 2>&1", d = gone.data_dir),
    );
    assert!(!left.contains(&app), "{left}");
}

#[test]
fn a_remote_instance_is_backed_up_cold_through_its_engine_and_restored_here() {
    let _up = remote::using();
    let [a, _] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    let app = unique("cold");
    let _leftovers = RemoteLeftovers {
        root: &root,
        engines: vec![a.clone()],
        names: vec![app.clone()],
    };
    let made = json_ok(
        &root.cli(&["instance", "create", &app, "--host", "host-a", "--json"]),
        "create",
    );
    let password = on_machine(
        &a,
        &format!(
            "cat {}/instances/{app}/config/initial_root_password",
            a.data_dir
        ),
    )
    .lines()
    .find_map(|l| l.strip_prefix("Password: "))
    .expect("initial_root_password on host-a")
    .trim()
    .to_string();
    let url = girofle_tests::project_url(
        made["external_url"].as_str().unwrap(),
        &password,
        "team/app.git",
    );
    let pushed = girofle_tests::push_project(&root.dir.path().join("work"), &url, 3);

    // Online reads GitLab's tar through local paths: refused, saying what works.
    let online = root.cli(&["backup", "create", &app, "--strategy", "online"]);
    assert_eq!(online.status.code(), Some(2), "{}", text(&online));
    assert!(
        text(&online).contains("--strategy cold"),
        "{}",
        text(&online)
    );

    // A file with two names on host-a: the export gives the second as a hard link, which
    // the backup stores as a file (read again through the engine).
    let data = format!("{}/instances/{app}/data", a.data_dir);
    on_machine(
        &a,
        &format!("echo linked > {data}/twice-a && ln {data}/twice-a {data}/twice-b"),
    );
    assert!(on_machine(&a, &format!("stat -c %h {data}/twice-b")).starts_with('2'));

    // Cold: the directories stream out of host-a's engine into the local store.
    let backup = json_ok(
        &root.cli(&["backup", "create", &app, "--strategy", "cold", "--json"]),
        "backup create",
    );
    let id = backup["id"].as_str().unwrap().to_string();
    assert_eq!(backup["strategy"], "cold", "{backup}");
    assert!(backup["downtime_ms"].as_u64().is_some(), "{backup}");
    // GitLab runs again on host-a, with its commits.
    let shown = json_ok(&root.cli(&["instance", "show", &app, "--json"]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some("host-a"), Some("running"))
    );
    assert_eq!(girofle_tests::ls_remote(&url), pushed);

    let verified = json_ok(&root.cli(&["backup", "verify", &id, "--json"]), "verify");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["files"], backup["files"], "{verified}");

    // Restored here, as a new local instance: the same refs, and fsck is clean.
    let copy = unique("cold-copy");
    let restored = json_ok(
        &root.cli(&["--json", "restore", &id, "--as", &copy]),
        "restore --as",
    );
    assert!(
        root.root
            .join("instances")
            .join(&copy)
            .join("config/gitlab.rb")
            .is_file(),
        "{restored}"
    );
    let copy_data = root.root.join("instances").join(&copy).join("data");
    for name in ["twice-a", "twice-b"] {
        let content = std::fs::read_to_string(copy_data.join(name)).unwrap_or_default();
        assert_eq!(content, "linked\n", "{name} restored");
    }
    let copy_url =
        girofle_tests::project_url(restored["url"].as_str().unwrap(), &password, "team/app.git");
    assert_eq!(girofle_tests::ls_remote(&copy_url), pushed);
    let fsck = girofle_tests::clone_and_fsck(&copy_url, &root.dir.path().join("mirror"));
    assert!(!fsck.contains("error"), "{fsck}");

    // A decommission takes its final backup cold (online needs local paths), then sets
    // the data aside on host-a.
    let gone = json_ok(
        &root.cli(&["instance", "rm", &app, "--json"]),
        "instance rm",
    );
    let last = gone["final_backup"].as_str().expect("a final backup");
    let listed = json_ok(
        &root.cli(&["backup", "list", &app, "--json"]),
        "backup list",
    );
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == last)
        .unwrap_or_else(|| panic!("{last} not listed: {listed}"));
    assert_eq!(entry["strategy"], "cold", "{entry}");
    let kept = gone["archived_to"].as_str().unwrap();
    assert!(on_machine(&a, &format!("ls {kept}/config")).contains("gitlab.rb"));
}

#[test]
fn a_remote_cold_backup_killed_while_gitlab_is_down_is_rolled_back_by_recover() {
    let _up = remote::using();
    let [a, _] = remote::remote_engines();
    let root = TestRoot::new(&stand_in("17.5.1"));
    add_host(&root, &a);
    let app = unique("kcold");
    let _leftovers = RemoteLeftovers {
        root: &root,
        engines: vec![a.clone()],
        names: vec![app.clone()],
    };
    ok(root.cli(&["instance", "create", &app, "--host", "host-a"]));
    // Incompressible data, so that the directories take a while to stream out.
    on_machine(
        &a,
        &format!(
            "head -c 100000000 /dev/urandom > {}/instances/{app}/data/noise",
            a.data_dir
        ),
    );

    // Killed once GitLab is stopped on host-a, while its directories stream out.
    let mut child = root
        .girofle()
        .args(["backup", "create", &app, "--strategy", "cold"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || {
        let out = a
            .docker()
            .args([
                "inspect",
                "-f",
                "{{.State.Running}}",
                &format!("girofle-{app}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let t0 = Instant::now();
    while running() != "false" {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before GitLab was seen stopped"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "GitLab never stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(running(), "false", "GitLab runs again without recovery");

    // `recover` starts GitLab again on host-a and deletes the unlisted backup's objects.
    let recovered = json_ok(&root.cli(&["--json", "recover"]), "recover");
    let record = recovered
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == app.as_str())
        .unwrap_or_else(|| panic!("nothing recovered for {app}: {recovered}"))
        .clone();
    assert_eq!(
        (record["operation"].as_str(), record["outcome"].as_str()),
        (Some("cold-backup"), Some("rolled-back")),
        "{record}"
    );
    let shown = json_ok(&root.cli(&["instance", "show", &app, "--json"]), "show");
    assert_eq!(
        (shown["host"].as_str(), shown["state"].as_str()),
        (Some("host-a"), Some("running"))
    );
    let listed = json_ok(&root.cli(&["backup", "list", &app, "--json"]), "list");
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    // (A staging file of the killed upload, `NAME#digits`, goes once it is stale: an
    // upload may still be writing it.)
    let objects: Vec<String> = std::fs::read_dir(root.root.join("backups").join(&app))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| !f.contains('#'))
                .collect()
        })
        .unwrap_or_default();
    assert!(objects.is_empty(), "left in the store: {objects:?}");
}
