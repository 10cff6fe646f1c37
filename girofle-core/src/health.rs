//! Whether GitLab serves again after a change Girofle made to it (a reconfigure, a start,
//! a restore): judged by probes that started after the change, run by Girofle itself.
//!
//! The engine's health state cannot say it. `gitlab-ctl reconfigure` applies a change to
//! Rails settings by sending Puma a restart in the background and exiting 0; requests
//! fail for tens of seconds afterwards, a little after it returned, while the engine
//! keeps saying "healthy" until five probes in a row have failed. So a state read right
//! after the change is stale both ways: "healthy" before the restart has even begun, and,
//! had Girofle waited for it, "unhealthy" for a restart still in progress.
//!
//! This module runs the image's own probe (`gitlab-healthcheck`, the command of the
//! image's HEALTHCHECK) by exec, and watches Puma in `gitlab-ctl status puma`. A probe
//! that fails after the change is a restart in progress, not a failure; success is a
//! passing probe that started after a restart was seen (Puma's pid changed, Puma down, or
//! a failed probe), or probes passing throughout [`SETTLE`] when no restart shows. Only a
//! GitLab that does not answer within the health timeout fails the change (the caller
//! rolls it back). Boot waits, where the engine's state is fresh (it resets to "starting"
//! at every start), stay with [`crate::runtime::ContainerRuntimeExt::wait_healthy`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::runtime::{last_lines, ContainerRuntime, ExecSpec};

/// The official image's own health probe (its HEALTHCHECK command).
pub const PROBE: [&str; 4] = [
    "/opt/gitlab/bin/gitlab-healthcheck",
    "--fail",
    "--max-time",
    "10",
];

/// How long probes must keep passing after a reconfigure before Girofle concludes that
/// no Puma restart follows it. GitLab sends the restart before reconfigure exits, and
/// Puma stops answering within a second or so; a restart that replaces Puma's process
/// (a new pid in `gitlab-ctl status puma`) ends the wait as soon as the new one answers.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Time between two rounds of probes.
const POLL: Duration = Duration::from_millis(250);

/// Puma's pid as `gitlab-ctl status puma` prints it (`run: puma: (pid 123) 45s; ...`);
/// `None` when Puma is down or the status cannot be read.
pub(crate) async fn puma_pid(runtime: &dyn ContainerRuntime, container: &str) -> Option<u32> {
    let spec = ExecSpec {
        cmd: vec!["gitlab-ctl".into(), "status".into(), "puma".into()],
        ..Default::default()
    };
    // `status` exits 3 when a service is down: the text says which, not the code.
    let out = runtime.exec(container, &spec).await.ok()?;
    parse_puma_pid(&out.output)
}

fn parse_puma_pid(status: &str) -> Option<u32> {
    status.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("run: puma: (pid ")?;
        rest.split(')').next()?.trim().parse().ok()
    })
}

/// Waits until GitLab answers a probe that started after `change` took effect.
///
/// `puma_before` is Puma's pid read before the change (`None`: unknown). `settle` is how
/// long passing probes must go on when no restart shows (zero after a start, where the
/// engine has just started a fresh GitLab). Fails after `timeout` without a passing
/// fresh probe.
///
/// # Errors
/// `Unhealthy` naming `change`, with the last failed probe and the container's last log
/// lines; what [`ContainerRuntime::exec`] returns when the container cannot run a probe.
pub(crate) async fn wait_fresh(
    runtime: &dyn ContainerRuntime,
    container: &str,
    change: &str,
    puma_before: Option<u32>,
    settle: Duration,
    timeout: Duration,
) -> Result<()> {
    let probe = ExecSpec {
        cmd: PROBE.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let mut restart_seen = false;
    let mut last_failure = String::new();
    loop {
        match (puma_before, puma_pid(runtime, container).await) {
            (_, None) => restart_seen = true,
            (Some(before), Some(now)) if before != now => restart_seen = true,
            _ => {}
        }
        // Whatever this probe says, it started after what was seen so far.
        let fresh = restart_seen;
        let out = runtime.exec(container, &probe).await?;
        if out.exit_code == 0 {
            if fresh || start.elapsed() >= settle {
                return Ok(());
            }
        } else {
            // A restart in progress (or a GitLab that will not come back: the deadline
            // tells them apart).
            restart_seen = true;
            last_failure = format!("[exit {}] {}", out.exit_code, last_lines(&out.output, 5));
        }
        if tokio::time::Instant::now() >= deadline {
            let logs = runtime.logs_tail(container, 30).await.unwrap_or_default();
            return Err(Error::Unhealthy {
                message: format!(
                    "container `{container}`: GitLab did not answer its health check within {} s after {change}",
                    timeout.as_secs()
                ),
                health_log: last_failure,
                logs,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puma_pid_is_read_from_gitlab_ctl_status() {
        assert_eq!(
            parse_puma_pid("run: puma: (pid 4711) 12s; run: log: (pid 42) 300s\n"),
            Some(4711)
        );
        assert_eq!(
            parse_puma_pid("down: puma: 3s, normally up; run: log: (pid 42) 300s\n"),
            None
        );
        assert_eq!(
            parse_puma_pid(
                "fail: runsv not running (the container's /assets/wrapper is not up yet)"
            ),
            None
        );
    }
}
