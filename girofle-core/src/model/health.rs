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
//! rolls it back).
//!
//! Boot waits probe by exec too ([`wait_booted`]): the engine probes only every
//! `[instances] health_interval_secs` (30 s by default, as each probe is a full Rails
//! request that GitLab logs), so its "healthy" may come that long after GitLab serves.
//! For the same reason a state read for `instance list` or before an online backup asks
//! GitLab itself when the engine still says "starting" or "unhealthy" ([`serves_now`]).

use std::time::Duration;

use crate::adapters::runtime::{last_lines, ContainerInfo, ContainerRuntime, ExecSpec, Health};
use crate::error::{Error, Result};

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

/// How many times Puma may exit and be started again by GitLab's supervisor after a
/// change, without a passing probe, before the change is taken to keep GitLab down (a
/// Puma that cannot boot, e.g. on a `puma['listen']` it cannot bind, crash-loops; each
/// round takes its boot time, tens of seconds on real GitLab). Waiting out the whole
/// health timeout instead would keep GitLab down for up to 15 minutes before a rollback.
const PUMA_CRASHES: usize = 3;

/// Time between two rounds of probes.
const POLL: Duration = Duration::from_millis(250);

/// Time between two probes while GitLab boots (a boot takes seconds to minutes).
const BOOT_POLL: Duration = Duration::from_millis(500);

fn probe_spec() -> ExecSpec {
    ExecSpec {
        cmd: PROBE.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Whether GitLab in a container answers its health probe now. The engine's "healthy"
/// is taken as it is (its own probe passed less than an interval ago); "starting" and
/// "unhealthy" may be that long out of date, so GitLab is asked. A container without a
/// health check serves when it runs.
pub(crate) async fn serves_now(runtime: &dyn ContainerRuntime, info: &ContainerInfo) -> bool {
    if !info.running {
        return false;
    }
    match info.health {
        Health::Healthy | Health::None => true,
        Health::Starting | Health::Unhealthy => runtime
            .exec(&info.name, &probe_spec())
            .await
            .is_ok_and(|out| out.exit_code == 0),
    }
}

/// Waits until a container that was just started (or re-created) answers its health
/// probe, probing by exec every [`BOOT_POLL`] rather than waiting for the engine's next
/// probe.
///
/// # Errors
/// `Unhealthy` (with the last failed probe and log lines) when the container stops, or
/// does not answer within `timeout`; `NotFound` when it vanishes.
pub(crate) async fn wait_booted(
    runtime: &dyn ContainerRuntime,
    container: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_failure = String::new();
    loop {
        let info = runtime.inspect(container).await?.ok_or_else(|| {
            Error::not_found(
                format!("container `{container}`"),
                "it disappeared while Girofle waited for GitLab to boot",
            )
        })?;
        let problem = if info.running {
            match runtime.exec(container, &probe_spec()).await {
                Ok(out) if out.exit_code == 0 => return Ok(()),
                Ok(out) => {
                    last_failure =
                        format!("[exit {}] {}", out.exit_code, last_lines(&out.output, 5));
                    None
                }
                // The container stopped between the inspect and the exec: the next
                // round tells a restart from a stop.
                Err(_) => None,
            }
        } else if info.status != "created" && info.status != "restarting" {
            Some(format!(
                "container `{container}` stopped (status {})",
                info.status
            ))
        } else {
            None
        };
        let problem = problem.or_else(|| {
            (tokio::time::Instant::now() >= deadline).then(|| {
                format!(
                    "container `{container}`: GitLab did not answer its health check within {} s of its start; raise --timeout (or [instances] health_timeout_secs) if GitLab needs longer to boot on this machine",
                    timeout.as_secs()
                )
            })
        });
        if let Some(message) = problem {
            let logs = runtime.logs_tail(container, 30).await.unwrap_or_default();
            return Err(Error::Unhealthy {
                message,
                health_log: last_failure,
                logs,
            });
        }
        tokio::time::sleep(BOOT_POLL).await;
    }
}

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
    let probe = probe_spec();
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let mut restart_seen = false;
    let mut last_failure = String::new();
    // Puma processes started since the change: the restart's, then one per crash.
    let mut new_pumas = std::collections::BTreeSet::new();
    loop {
        match (puma_before, puma_pid(runtime, container).await) {
            (_, None) => restart_seen = true,
            (Some(before), Some(now)) if before != now => {
                restart_seen = true;
                new_pumas.insert(now);
            }
            _ => {}
        }
        if new_pumas.len() > PUMA_CRASHES {
            let logs = runtime.logs_tail(container, 30).await.unwrap_or_default();
            return Err(Error::Unhealthy {
                message: format!(
                    "container `{container}`: Puma exited and was started again {} times after {change} without GitLab answering: it cannot run with these settings (see the log lines below)",
                    new_pumas.len() - 1
                ),
                health_log: last_failure,
                logs,
            });
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
