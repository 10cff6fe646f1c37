//! The fast tier: the operations' logic run on the in-memory doubles (no Docker), on a
//! real temporary root. [`Bench`] opens one, with a [`MemoryRuntime`] scripted to answer
//! as GitLab does ([`Gitlab`]: its health probe, `gitlab-ctl reconfigure` and `status`,
//! the process probes of recovery), which each test bends to make GitLab fail.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::adapters::inventory::{Inventory, MemoryInventory};
use crate::adapters::runtime::{ContainerRuntime, ExecCall, ExecOutput, MemoryRuntime};
use crate::model::config::Config;
use crate::model::context::Context;
use crate::model::health::PROBE;
use crate::model::instance::{self, InstanceDirs, InstanceRecord, GITLAB_RB_TEMPLATE};
use crate::ops::fleet::CommissionRequest;

mod fleet;
mod recovery;
mod restore;

/// The image every bench instance runs.
pub(crate) const IMAGE: &str = "gitlab/gitlab-ce:17.5.1-ce.0";

/// How the scripted GitLab answers; tests change it while operations run.
#[derive(Debug, Default)]
pub(crate) struct Gitlab {
    /// Its health probe fails while this is set.
    pub down: AtomicBool,
    /// The next this many `gitlab-ctl reconfigure` fail (exit 1).
    pub refuse_reconfigures: AtomicUsize,
    /// A `gitlab-ctl reconfigure` of a gitlab.rb holding this text brings GitLab down
    /// (its probe fails until a reconfigure of another file); one of another file brings
    /// it back.
    pub breaks_on: Mutex<Option<String>>,
    /// Puma's pid. A reconfigure that passes restarts Puma: the next `status` finds it
    /// down, the one after with a new pid. While GitLab is down, Puma crash-loops: each
    /// `status` shows a new pid.
    pub puma: AtomicU32,
    pub restarting: AtomicBool,
    pub root: PathBuf,
}

fn out(exit_code: i64, output: &str) -> Option<ExecOutput> {
    Some(ExecOutput {
        exit_code,
        output: output.to_string(),
    })
}

impl Gitlab {
    fn answer(&self, call: &ExecCall) -> Option<ExecOutput> {
        if call.starts_with(&PROBE[..1]) {
            return if self.down.load(Ordering::SeqCst) {
                out(22, "curl: (22) The requested URL returned error: 502")
            } else {
                out(0, "GitLab OK")
            };
        }
        if call.starts_with(&["gitlab-ctl", "reconfigure"]) {
            if self
                .refuse_reconfigures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return out(
                    1,
                    "FATAL: Mixlib::ShellOut::ShellCommandFailed: bad setting",
                );
            }
            if let Some(marker) = self.breaks_on.lock().unwrap().as_ref() {
                let name = call.container.trim_start_matches("girofle-");
                let rb = InstanceDirs::new(&self.root, name).config.join("gitlab.rb");
                let text = std::fs::read_to_string(rb).unwrap_or_default();
                self.down.store(text.contains(marker), Ordering::SeqCst);
            }
            self.puma.fetch_add(1, Ordering::SeqCst);
            self.restarting.store(true, Ordering::SeqCst);
            return out(0, "gitlab Reconfigured!");
        }
        if call.starts_with(&["gitlab-ctl", "status", "puma"]) {
            if self.down.load(Ordering::SeqCst) {
                self.puma.fetch_add(1, Ordering::SeqCst);
            } else if self.restarting.swap(false, Ordering::SeqCst) {
                return out(3, "down: puma: 0s, normally up; run: log: (pid 42) 60s");
            }
            let pid = self.puma.load(Ordering::SeqCst) + 100;
            return out(
                0,
                &format!("run: puma: (pid {pid}) 5s; run: log: (pid 42) 60s"),
            );
        }
        if call.starts_with(&["gitlab-rake", "gitlab:check"]) {
            return out(
                0,
                "Checking GitLab subtasks ...\nChecking GitLab subtasks ... Finished\n",
            );
        }
        if call.starts_with(&["gitlab-rake", "gitlab:doctor:secrets"]) {
            return out(0, "I, -- : Checking encrypted values in the database\nI, -- : Total: 0 row(s) affected\nI, -- : Done!\n");
        }
        if call.starts_with(&["head", "-n1", "/opt/gitlab/version-manifest.txt"]) {
            return out(0, "gitlab-ce 17.5.1\n");
        }
        // The process probes of recovery (`grep` over /proc): nothing left running.
        if call.starts_with(&["sh", "-c"]) {
            return out(1, "");
        }
        None
    }
}

/// A temporary root opened on the doubles.
pub(crate) struct Bench {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ctx: Context,
    pub runtime: MemoryRuntime,
    pub inventory: MemoryInventory,
    pub gitlab: Arc<Gitlab>,
}

impl Bench {
    /// A root whose pool is `ports`. The health timeout is 6 s, just above the 5 s a
    /// running GitLab must keep answering when no Puma restart shows (`health::SETTLE`):
    /// below it, no wait for a fresh probe could succeed. Commissions meant to fail
    /// ask a shorter boot timeout of their own.
    pub(crate) fn with_ports(ports: &str) -> Bench {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("the root");
        Context::init(&root).expect("init");
        let root = std::path::absolute(&root).expect("absolute root");
        let mut config = Config::load(&root).expect("the default configuration");
        config.network.ports = vec![ports.to_string()];
        config.instances.health_timeout_secs = 6;
        config.instances.health_interval_secs = 1;
        config.instances.stop_grace_secs = 1;
        let runtime = MemoryRuntime::new();
        runtime.add_image_file(IMAGE, GITLAB_RB_TEMPLATE, b"## GitLab's template\n");
        let gitlab = Arc::new(Gitlab {
            root: root.clone(),
            ..Default::default()
        });
        let answers = gitlab.clone();
        runtime.script(move |call| answers.answer(call));
        let inventory = MemoryInventory::new();
        let ctx = Context::with_backends(
            &root,
            config,
            Arc::new(runtime.clone()) as Arc<dyn ContainerRuntime>,
            Arc::new(inventory.clone()) as Arc<dyn Inventory>,
        )
        .expect("open on the doubles");
        Bench {
            _dir: dir,
            root,
            ctx,
            runtime,
            inventory,
            gitlab,
        }
    }

    pub(crate) fn new() -> Bench {
        Self::with_ports("20000-20099")
    }

    /// A commission request for `name` that waits at most `boot` for health.
    pub(crate) fn request(name: &str, boot: Duration) -> CommissionRequest {
        CommissionRequest {
            name: name.into(),
            image: Some(IMAGE.into()),
            timeout: Some(boot),
            ..Default::default()
        }
    }

    /// Commissions `name`, healthy.
    pub(crate) async fn commissioned(&self, name: &str) -> InstanceRecord {
        self.ctx
            .commission(Self::request(name, Duration::from_secs(1)))
            .await
            .unwrap_or_else(|e| panic!("commission `{name}`: {e}"));
        self.record(name).await.expect("commissioned")
    }

    /// The inventory's record of `name` (settings in clear).
    pub(crate) async fn record(&self, name: &str) -> Option<InstanceRecord> {
        self.inventory
            .load()
            .await
            .expect("load")
            .instances
            .get(name)
            .cloned()
    }

    pub(crate) fn dirs(&self, name: &str) -> InstanceDirs {
        InstanceDirs::new(&self.root, name)
    }

    pub(crate) fn gitlab_rb(&self, name: &str) -> PathBuf {
        self.dirs(name).config.join("gitlab.rb")
    }

    /// Whether the container of `name` exists and runs.
    pub(crate) async fn running(&self, name: &str) -> bool {
        self.runtime
            .inspect(&instance::container_name(name))
            .await
            .expect("inspect")
            .is_some_and(|i| i.running)
    }

    /// Whether the container of `name` exists.
    pub(crate) async fn has_container(&self, name: &str) -> bool {
        self.runtime
            .inspect(&instance::container_name(name))
            .await
            .expect("inspect")
            .is_some()
    }

    /// How many `gitlab-ctl reconfigure` ran so far.
    pub(crate) fn reconfigures(&self) -> usize {
        self.runtime
            .execs()
            .iter()
            .filter(|c| c.starts_with(&["gitlab-ctl", "reconfigure"]))
            .count()
    }

    pub(crate) fn intent_exists(&self, name: &str) -> bool {
        crate::model::intent::intent_path(&self.root, name).exists()
    }

    /// The entries of `<root>/staging`.
    pub(crate) fn staging(&self) -> Vec<PathBuf> {
        entries(&self.root.join("staging"))
    }
}

pub(crate) fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}
