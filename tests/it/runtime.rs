//! The container runtime battery against the real Docker engine, with the stand-in
//! GitLab image: what the in-memory double of the fast tier promises, Docker does.

use std::sync::Arc;

use girofle_core::runtime::{conformance, ContainerRuntime, DockerRuntime, HostRoot};
use girofle_tests::{engine, second_engine, stand_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_passes_the_runtime_battery() {
    // No test root here: its own share of the engines.
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let docker = connect(None).await;
    conformance::run_all(Arc::new(docker) as Arc<dyn ContainerRuntime>, &image).await;
}

/// Where the host-file battery works on each engine's host (distinct: both engines of
/// the test machine share its disk).
const MAIN_BASE: &str = "/var/tmp/girofle-conformance/main";
const SECOND_BASE: &str = "/var/tmp/girofle-conformance/second";

async fn connect(host: Option<&str>) -> DockerRuntime {
    DockerRuntime::connect(host).await.unwrap_or_else(|e| {
        panic!("the Docker engine {host:?} is needed (start it with `systemctl start docker` or `dockerd &`, the second with `scripts/second-docker start`): {e}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_passes_the_host_file_battery() {
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let docker = connect(None).await;
    conformance::run_host_files(
        Arc::new(docker) as Arc<dyn ContainerRuntime>,
        &image,
        MAIN_BASE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_engine_passes_the_host_file_battery() {
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let docker = connect(Some(&second_engine())).await;
    conformance::run_host_files(
        Arc::new(docker) as Arc<dyn ContainerRuntime>,
        &image,
        SECOND_BASE,
    )
    .await;
}

/// The peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A tree moves from one engine to the other through the engines alone, as identical as
/// it was; 200 MiB of it streams through with the process's peak memory growing by far
/// less than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_moves_between_the_two_engines_through_their_apis() {
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let (main, second) = (connect(None).await, connect(Some(&second_engine())).await);
    let run = conformance::unique_run();
    let (root_a, root_b) = (
        HostRoot::new(format!("{MAIN_BASE}/{run}"), &image),
        HostRoot::new(format!("{SECOND_BASE}/{run}"), &image),
    );
    let moved = tokio::spawn({
        let (main, second, root_a, root_b) =
            (main.clone(), second.clone(), root_a.clone(), root_b.clone());
        async move {
            conformance::tree_moves_between_engines(&main, &second, &root_a, &root_b).await;
            let before = peak_rss();
            let started = std::time::Instant::now();
            conformance::big_tree_streams_between_engines(
                &main, &second, &root_a, &root_b, 25, 8 << 20,
            )
            .await;
            let grown = peak_rss().saturating_sub(before);
            eprintln!(
                "200 MiB imported, moved between engines and checked in {:.1} s; peak memory grew {} MiB",
                started.elapsed().as_secs_f64(),
                grown >> 20
            );
            assert!(grown < 64 << 20, "peak memory grew {} MiB", grown >> 20);
        }
    })
    .await;
    conformance::cleanup_host(&main, &image, MAIN_BASE, &run).await;
    conformance::cleanup_host(&second, &image, SECOND_BASE, &run).await;
    if let Err(e) = moved {
        std::panic::resume_unwind(e.into_panic());
    }
}
