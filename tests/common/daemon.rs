//! A `girofle daemon` child process of a test root.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::TestRoot;

/// A `girofle daemon` child process, killed when dropped (even after a failed assertion).
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// A daemon ticking every 200 ms, with a 60 s stop grace; its output goes to
    /// `daemon-TAG.log` in the root's directory.
    pub fn start(t: &TestRoot, tag: &str) -> Daemon {
        Self::with_grace(t, tag, 60)
    }

    pub fn with_grace(t: &TestRoot, tag: &str, grace_secs: u64) -> Daemon {
        let log = t.dir.path().join(format!("daemon-{tag}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = t
            .girofle()
            .args(["daemon", "--tick-ms", "200", "--stop-grace-secs"])
            .arg(grace_secs.to_string())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then its exit status (bounded wait).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {within:?} of SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
