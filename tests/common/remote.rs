//! The two remote Docker engines of `scripts/remote-docker` ("host-a", "host-b"): each a
//! dockerd inside a container of the main engine, reached only over TCP with TLS client
//! certificates; what a test needs to reach them, and a failure saying how to start them
//! when they are not there (a test that needs them never passes without them).
//!
//! Tests that stop an engine (to see it unreachable) take [`stopping`]; the others take
//! [`using`], so no test finds an engine gone under it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use girofle_core::hosts::{HostConfig, HostTls};

const HOW: &str = "run `scripts/remote-docker start` and `eval \"$(scripts/remote-docker env)\"` (scripts/test does)";

/// One remote engine.
#[derive(Clone, Debug)]
pub struct RemoteEngine {
    /// `host-a` or `host-b`.
    pub name: &'static str,
    /// `tcp://127.0.0.1:PORT`.
    pub engine: String,
    /// The client certificates: ca.pem, cert.pem, key.pem.
    pub certs: PathBuf,
    /// The address on which its containers publish, reachable from this machine.
    pub ip: IpAddr,
    /// The directory inside it under which instance directories go.
    pub data_dir: String,
}

impl RemoteEngine {
    /// The main engine's container that runs this engine (`docker stop` it to take the
    /// engine down).
    pub fn container(&self) -> String {
        format!("girofle-remote-{}", self.name)
    }

    /// `[hosts.NAME]` for this engine with the port range `ports`.
    pub fn host_config(&self, ports: (u16, u16)) -> HostConfig {
        HostConfig {
            engine: self.engine.clone(),
            tls: Some(HostTls {
                dir: Some(self.certs.clone()),
                ..HostTls::default()
            }),
            ips: vec![self.ip],
            ports: vec![format!("{}-{}", ports.0, ports.1)],
            data_dir: self.data_dir.clone(),
            labels: [("zone".to_string(), self.name.to_string())].into(),
            drain: false,
        }
    }

    /// `docker` talking to this engine over TLS.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.engine, "--tlsverify"])
            .arg("--tlscacert")
            .arg(self.certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(self.certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(self.certs.join("key.pem"));
        c
    }

    /// Whether the engine answers now.
    pub fn answers(&self) -> bool {
        self.docker()
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        panic!("{k} is not set: this test needs the remote Docker engines; {HOW}")
    })
}

/// Both remote engines, each checked to answer; fails the test saying how to start them.
pub fn remote_engines() -> [RemoteEngine; 2] {
    let certs = PathBuf::from(var("GIROFLE_TEST_REMOTE_CERTS"));
    let data_dir = std::env::var("GIROFLE_TEST_REMOTE_DATA_DIR").unwrap_or("/srv/girofle".into());
    let one = |name: &'static str, engine: &str, ip: &str| {
        let e = RemoteEngine {
            name,
            engine: var(engine),
            certs: certs.clone(),
            ip: var(ip)
                .parse()
                .unwrap_or_else(|e| panic!("{ip} is not an address ({e}); {HOW}")),
            data_dir: data_dir.clone(),
        };
        assert!(
            e.answers(),
            "the remote Docker engine {name} does not answer at {} with the certificates in {}; {HOW}",
            e.engine,
            e.certs.display()
        );
        e
    };
    [
        one(
            "host-a",
            "GIROFLE_TEST_REMOTE_A",
            "GIROFLE_TEST_REMOTE_A_IP",
        ),
        one(
            "host-b",
            "GIROFLE_TEST_REMOTE_B",
            "GIROFLE_TEST_REMOTE_B_IP",
        ),
    ]
}

/// Users of the remote engines now, and whether one test may stop them.
#[derive(Debug)]
struct Holders {
    users: usize,
    stopping: bool,
}

static HOLDERS: Mutex<Holders> = Mutex::new(Holders {
    users: 0,
    stopping: false,
});
static CHANGED: Condvar = Condvar::new();

fn holders() -> MutexGuard<'static, Holders> {
    HOLDERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The remote engines held (used, or stoppable) until this is dropped. Not a lock guard,
/// so a test may hold it across `.await`.
#[derive(Debug)]
#[must_use = "the remote engines are held only while the guard lives"]
pub struct RemoteGuard {
    stopping: bool,
}

/// The remote engines stay up while this lives.
pub fn using() -> RemoteGuard {
    let mut h = holders();
    while h.stopping {
        h = CHANGED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.users += 1;
    RemoteGuard { stopping: false }
}

/// This test may stop a remote engine (and must start it again before dropping this).
pub fn stopping() -> RemoteGuard {
    let mut h = holders();
    while h.stopping || h.users > 0 {
        h = CHANGED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.stopping = true;
    RemoteGuard { stopping: true }
}

impl Drop for RemoteGuard {
    fn drop(&mut self) {
        let mut h = holders();
        if self.stopping {
            h.stopping = false;
        } else {
            h.users -= 1;
        }
        CHANGED.notify_all();
    }
}
