//! The etcd clusters of the tests: the shared 3-member cluster `scripts/etcd-cluster
//! start` runs on loopback (`GIROFLE_TEST_ETCD`), each test in a namespace of its own;
//! and private clusters, for the tests that kill members, so the shared one stays up.

use std::path::PathBuf;
use std::process::Command;

use girofle_core::config::InventoryConfig;

fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/etcd-cluster"
    ))
}

/// The client URLs of the shared cluster, or a failure saying how to start it.
pub fn endpoints() -> Vec<String> {
    let list = std::env::var("GIROFLE_TEST_ETCD").unwrap_or_else(|_| {
        panic!(
            "GIROFLE_TEST_ETCD is not set: this test needs the 3-member etcd cluster. Run `scripts/etcd-cluster start` and `eval \"$(scripts/etcd-cluster env)\"` (scripts/test does)"
        )
    });
    list.split(',').map(str::to_string).collect()
}

/// An `[inventory]` section on `endpoints` in `namespace`, with a short lease.
pub fn inventory_on(
    endpoints: Vec<String>,
    namespace: &str,
    lease_ttl_secs: u64,
) -> InventoryConfig {
    InventoryConfig {
        etcd: endpoints,
        namespace: namespace.to_string(),
        lease_ttl_secs,
        ..InventoryConfig::default()
    }
}

/// A 3-member cluster of this test alone, in a temporary directory, on ports of its own;
/// stopped and deleted when dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    dir: tempfile::TempDir,
    port_base: u16,
}

impl PrivateCluster {
    /// Starts one (members on `port_base + 1..=3`, peers on `port_base + 11..=13`).
    pub fn start(port_base: u16) -> PrivateCluster {
        let dir = tempfile::Builder::new()
            .prefix("girofle-etcd-")
            .tempdir()
            .unwrap();
        let c = PrivateCluster { dir, port_base };
        c.script(&["start"]);
        c
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(script());
        cmd.args(args)
            .env("GIROFLE_ETCD_DIR", self.dir.path())
            .env("GIROFLE_ETCD_PORT_BASE", self.port_base.to_string());
        cmd
    }

    /// Runs `scripts/etcd-cluster ARGS` on this cluster; fails the test when it fails.
    pub fn script(&self, args: &[&str]) {
        crate::run(&mut self.command(args));
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        (1..=3)
            .map(|n| format!("http://127.0.0.1:{}", self.port_base + n))
            .collect()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.command(&["stop"]).output();
    }
}
