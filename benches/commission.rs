//! Benchmarks commissioning: how much longer `Girofle::commission` takes, from its call
//! to its return (the instance healthy), than the container itself needs to turn healthy.
//!
//! Runs against the real Docker engine and the GitLab stand-in image
//! (`tests/gitlab-stand-in/build`). Each round commissions a fresh instance in a fresh
//! Girofle root, reads the container's `State.StartedAt` and `State.Health.Log` with
//! `docker inspect`, then decommissions it (purged, no final backup; not timed).
//!
//! What the container needs is taken as Docker sees it: from `State.StartedAt` to the
//! end of the first health probe that passed. That span holds the image's own boot and
//! the wait for the engine's probe schedule (the first probe runs one health interval
//! after the start, then every interval); the bench sets that interval to 1 s
//! (`[instances] health_interval_secs`; 30 s by default, where the engine only watches a
//! running GitLab) so that the engine's probes time the boot to a second; that wait is
//! counted on the container's side, and the report shows it separately. Girofle itself
//! probes by exec every 0.5 s, so it may return before the engine's probe (the
//! overhead's "after the passing probe" part is then negative). Girofle's overhead is
//! the rest: the checks, the inventory, creating and starting the container before
//! `StartedAt`, and noticing that GitLab answers and recording the instance.
//!
//! With the remote engines of `scripts/remote-docker` (`GIROFLE_TEST_REMOTE_*` set), it
//! then runs the same rounds with `host: host-a`: the instance on a remote engine reached
//! over TCP with TLS, its times read with `docker -H ... inspect` through the same TLS
//! (the image is the stand-in those engines hold, `GIROFLE_BENCH_REMOTE_IMAGE` overrides
//! it). Issue 15's target there is an overhead of at most 1.5 s; 1 s on the local engine.
//!
//! Run with `benches/run` (after the backup benchmark) or
//! `cargo bench -p girofle-benches --bench commission`; see benches/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use chrono::{DateTime, Utc};
use girofle_core::config::Config;
use girofle_core::{CommissionRequest, DecommissionOptions, Girofle, OpenOptions};

#[allow(dead_code, reason = "each bench uses a part of the module")]
mod remote;
use remote::{BenchResult, RemoteEngine, REMOTE_IMAGE};

/// The stand-in image commissioned by default (`GIROFLE_BENCH_IMAGE` overrides it).
const DEFAULT_IMAGE: &str = "girofle-test/gitlab-ce:17.6.0-ce.0";
/// Ports of the bench's root, away from the integration tests' (30000-58799).
const PORTS: &str = "59100-59131";
/// The same on the remote host.
const REMOTE_PORTS: (u16, u16) = (59100, 59131);

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One round's times, in seconds.
struct Round {
    /// From the call of `commission` to its return.
    total: f64,
    /// From `State.StartedAt` to the end of the first passing probe.
    container: f64,
    /// From `State.StartedAt` to the start of the first probe.
    first_probe: f64,
    /// Probes that failed before the first that passed.
    failed_probes: usize,
    /// From the call to `State.StartedAt` (Girofle's work before the container runs).
    before_start: f64,
    /// Of which from the container's `Created` to `State.StartedAt` (the engine's start).
    engine_start: f64,
    /// From the end of the first passing probe to the return.
    after_healthy: f64,
}

impl Round {
    fn overhead(&self) -> f64 {
        self.total - self.container
    }
}

async fn run() -> BenchResult<()> {
    let rounds: usize = match std::env::var("GIROFLE_BENCH_COMMISSION_ROUNDS") {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("GIROFLE_BENCH_COMMISSION_ROUNDS=`{v}`: {e}"))?,
        Err(_) => 5,
    };
    let image = std::env::var("GIROFLE_BENCH_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into());
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        return Err(format!(
            "the image {image} is missing (or `docker` is not running): build the stand-in with `tests/gitlab-stand-in/build`"
        )
        .into());
    }

    let dir = tempfile::Builder::new()
        .prefix("girofle-bench-commission-")
        .tempdir()?;
    let root = dir.path().join("root");
    Girofle::init(&root)?;
    let mut config = Config::load(&root)?;
    config.network.ports = vec![PORTS.to_string()];
    config.instances.image = image.clone();
    config.instances.health_timeout_secs = 120;
    config.instances.stop_grace_secs = 5;
    // The engine's probes time the container's boot (see the module's comment).
    config.instances.health_interval_secs = 1;
    let remotes = remote::remote_engines()?;
    let remote = remotes.map(|[a, _]| a);
    if let Some(e) = &remote {
        config
            .hosts
            .insert(e.name.to_string(), e.host_config(REMOTE_PORTS));
    }
    config.save(&root)?;
    let interval = config.instances.health_interval_secs;
    let girofle = Girofle::open(&root, OpenOptions::default()).await?;

    let mut report = format!(
        "Girofle commission benchmark, {}\nmachine: {} cores, load average at start {}; Docker {}; image {image}; health interval {interval} s\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        docker_version(),
    );
    print!("{report}");
    rounds_on(&girofle, None, None, rounds, 1.0, &mut report).await?;
    if let Some(e) = &remote {
        let image =
            std::env::var("GIROFLE_BENCH_REMOTE_IMAGE").unwrap_or_else(|_| REMOTE_IMAGE.into());
        let line = format!(
            "on the remote engine {} ({}, over TLS), image {image}:\n",
            e.name, e.engine
        );
        print!("{line}");
        report.push_str(&line);
        rounds_on(&girofle, Some(e), Some(&image), rounds, 1.5, &mut report).await?;
    } else {
        let line = "no remote engine (GIROFLE_TEST_REMOTE_A unset): the remote case is skipped\n";
        print!("{line}");
        report.push_str(line);
    }
    let out = target_dir()?.join("bench-commission.txt");
    std::fs::write(&out, &report)?;
    println!("written to {}", out.display());
    Ok(())
}

async fn commission_round(
    girofle: &Girofle,
    name: &str,
    remote: Option<&RemoteEngine>,
    image: Option<&str>,
) -> BenchResult<Round> {
    let called_at = Utc::now();
    let started = Instant::now();
    let record = girofle
        .commission(CommissionRequest {
            name: name.to_string(),
            image: image.map(str::to_string),
            host: Some(remote.map_or("local", |e| e.name).to_string()),
            ..Default::default()
        })
        .await?;
    let total = started.elapsed().as_secs_f64();
    // Girofle returns once its own probe passed, which may be before the engine's (every
    // second here): wait for the engine's to time the container.
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    let (inspected, passed) = loop {
        let docker = remote.map_or_else(|| Command::new("docker"), RemoteEngine::docker);
        let inspected = inspect(docker, &record.container_name())?;
        let passed = inspected["State"]["Health"]["Log"]
            .as_array()
            .ok_or("docker inspect shows no State.Health.Log: the container has no health check")?
            .iter()
            .position(|p| p["ExitCode"].as_i64() == Some(0));
        match passed {
            Some(i) => break (inspected, i),
            None if Instant::now() >= deadline => {
                return Err(
                    "no passing probe of the engine's within 15 s of commission's return".into(),
                )
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    let created_at = timestamp(&inspected["Created"])?;
    let state = &inspected["State"];
    let started_at = timestamp(&state["StartedAt"])?;
    let log = state["Health"]["Log"].as_array().expect("checked above");
    // Docker keeps the last 5 probes only: when they all passed, the first pass may be
    // gone (it is not otherwise: a pass drops out only after 5 newer probes).
    if log.len() >= 5 && passed == 0 {
        return Err(
            "State.Health.Log holds 5 passing probes: the first pass is gone, the time to healthy unknown"
                .into(),
        );
    }
    let first_start = timestamp(&log[0]["Start"])?;
    let healthy_at = timestamp(&log[passed]["End"])?;
    let secs =
        |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let container = secs(started_at, healthy_at);
    Ok(Round {
        total,
        container,
        first_probe: secs(started_at, first_start),
        failed_probes: passed,
        before_start: secs(called_at, started_at),
        engine_start: secs(created_at, started_at),
        after_healthy: total - secs(called_at, healthy_at),
    })
}

/// `rounds` commissions on the local engine (`remote` None) or on `remote`, each line and
/// the medians printed and added to `report`; `target` is the overhead aimed at, seconds.
async fn rounds_on(
    girofle: &Girofle,
    remote: Option<&RemoteEngine>,
    image: Option<&str>,
    rounds: usize,
    target: f64,
    report: &mut String,
) -> BenchResult<()> {
    let mut results = Vec::new();
    for round in 0..rounds {
        let name = format!("bench-{}-{round}", std::process::id() % 10_000);
        let outcome = commission_round(girofle, &name, remote, image).await;
        // Whatever happened, leave nothing behind.
        let _ = girofle
            .decommission(
                &name,
                DecommissionOptions {
                    purge: true,
                    no_backup: true,
                },
            )
            .await;
        if let Some(e) = remote {
            e.remove_dirs(std::slice::from_ref(&name));
        }
        let r = outcome?;
        let line = format!(
            "round {}: commission {:.3} s, container healthy after {:.3} s (first probe at {:.3} s, {} failed before), overhead {:.3} s (before start {:.3} s, of which the engine's create-to-start {:.3} s; after the passing probe {:.3} s)\n",
            round + 1,
            r.total,
            r.container,
            r.first_probe,
            r.failed_probes,
            r.overhead(),
            r.before_start,
            r.engine_start,
            r.after_healthy
        );
        print!("{line}");
        report.push_str(&line);
        results.push(r);
    }
    let med = |f: &dyn Fn(&Round) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
    let summary = format!(
        "median of {rounds}: commission {:.3} s, container {:.3} s, overhead {:.3} s (before start {:.3} s, of which the engine's create-to-start {:.3} s; after the passing probe {:.3} s); target: overhead <= {target} s: {}\n",
        med(&|r| r.total),
        med(&|r| r.container),
        med(&|r| r.overhead()),
        med(&|r| r.before_start),
        med(&|r| r.engine_start),
        med(&|r| r.after_healthy),
        if med(&|r| r.overhead()) <= target {
            "met"
        } else {
            "MISSED"
        }
    );
    print!("{summary}");
    report.push_str(&summary);
    Ok(())
}

/// `docker inspect CONTAINER` with `docker` (the local engine's or a remote one's).
fn inspect(mut docker: Command, container: &str) -> BenchResult<serde_json::Value> {
    let out = docker
        .args(["inspect", "--type", "container", container])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "docker inspect {container}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(all[0].take())
}

fn timestamp(v: &serde_json::Value) -> BenchResult<DateTime<Utc>> {
    let text = v.as_str().ok_or("a timestamp missing in docker inspect")?;
    Ok(DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("timestamp `{text}`: {e}"))?
        .with_timezone(&Utc))
}

fn docker_version() -> String {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn target_dir() -> BenchResult<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target)?;
    Ok(target.canonicalize()?)
}
