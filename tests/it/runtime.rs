//! The container runtime battery against the real Docker engine, with the stand-in
//! GitLab image: what the in-memory double of the fast tier promises, Docker does.

use std::sync::Arc;

use girofle_core::runtime::{conformance, ContainerRuntime, DockerRuntime};
use girofle_tests::{engine, stand_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_passes_the_runtime_battery() {
    // No test root here: its own share of the engines.
    let _engine = engine::shared();
    let image = stand_in("17.5.1");
    let docker = DockerRuntime::connect(None).await.unwrap_or_else(|e| {
        panic!("the Docker engine is needed (start it with `systemctl start docker` or `dockerd &`): {e}")
    });
    conformance::run_all(Arc::new(docker) as Arc<dyn ContainerRuntime>, &image).await;
}
