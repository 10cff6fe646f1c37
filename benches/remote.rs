//! The two remote Docker engines of `scripts/remote-docker` ("host-a", "host-b"), for the
//! benches that place instances on hosts: each a dockerd inside a container of the main
//! engine, reached only over TCP with TLS client certificates (`benches/run` starts them
//! and exports `GIROFLE_TEST_REMOTE_*`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use girofle_core::hosts::{HostConfig, HostTls};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const HOW: &str = "run `scripts/remote-docker start` and `eval \"$(scripts/remote-docker env)\"` (benches/run does)";

/// The stand-in image loaded into the remote engines (the only one they hold).
pub const REMOTE_IMAGE: &str = "girofle-test/gitlab-ce:17.5.1-ce.0";

/// One remote engine.
#[derive(Clone, Debug)]
pub struct RemoteEngine {
    /// `host-a` or `host-b`: its name in `[hosts]`.
    pub name: &'static str,
    /// `tcp://127.0.0.1:PORT`.
    pub engine: String,
    /// The client certificates: ca.pem, cert.pem, key.pem.
    pub certs: PathBuf,
    /// The address on which its containers publish, reachable from this machine.
    pub ip: IpAddr,
    /// The directory inside its machine under which instance directories go.
    pub data_dir: String,
}

impl RemoteEngine {
    /// `[hosts.NAME]` for this engine with the inclusive port range `ports`.
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

    /// Removes the instance directories `names` left on this engine's machine (under
    /// `instances/`, `decommissioned/` and `staging/` of its data directory), through the
    /// main engine's container that runs it.
    pub fn remove_dirs(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut script = String::new();
        for n in names {
            script.push_str(&format!(
                "rm -rf {d}/instances/{n} {d}/decommissioned/{n}-* {d}/staging/{n}*; ",
                d = self.data_dir
            ));
        }
        let _ = Command::new("docker")
            .args(["exec", &format!("girofle-remote-{}", self.name)])
            .args(["sh", "-c", &script])
            .output();
    }

    /// Removes the containers of the Girofle root `root` on this engine.
    pub fn remove_containers(&self, root: &std::path::Path) {
        let Ok(out) = self
            .docker()
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.girofle.root={}", root.display()))
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout).to_string();
        if !ids.trim().is_empty() {
            let _ = self
                .docker()
                .args(["rm", "-f"])
                .args(ids.split_whitespace())
                .output();
        }
    }
}

/// Both remote engines, each checked to answer; `None` when `GIROFLE_TEST_REMOTE_A` is
/// not set (the remote parts are then skipped, and the report says so).
pub fn remote_engines() -> BenchResult<Option<[RemoteEngine; 2]>> {
    if std::env::var_os("GIROFLE_TEST_REMOTE_A").is_none() {
        return Ok(None);
    }
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set; {HOW}"));
    let certs = PathBuf::from(var("GIROFLE_TEST_REMOTE_CERTS")?);
    let data_dir = std::env::var("GIROFLE_TEST_REMOTE_DATA_DIR").unwrap_or("/srv/girofle".into());
    let one = |name: &'static str, engine: &str, ip: &str| -> BenchResult<RemoteEngine> {
        let e = RemoteEngine {
            name,
            engine: var(engine)?,
            certs: certs.clone(),
            ip: var(ip)?
                .parse()
                .map_err(|err| format!("{ip} is not an address ({err}); {HOW}"))?,
            data_dir: data_dir.clone(),
        };
        let answers = e
            .docker()
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !answers {
            return Err(format!(
                "the remote Docker engine {name} does not answer at {} with the certificates in {}; {HOW}",
                e.engine,
                e.certs.display()
            )
            .into());
        }
        Ok(e)
    };
    Ok(Some([
        one(
            "host-a",
            "GIROFLE_TEST_REMOTE_A",
            "GIROFLE_TEST_REMOTE_A_IP",
        )?,
        one(
            "host-b",
            "GIROFLE_TEST_REMOTE_B",
            "GIROFLE_TEST_REMOTE_B_IP",
        )?,
    ]))
}
