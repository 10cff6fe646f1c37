//! Benchmarks listing a fleet whose inventory is on etcd: how long `girofle instance
//! list` takes with `GIROFLE_BENCH_FLEET` instances (100 by default) spread over three
//! hosts (the local engine and the two remote engines of `scripts/remote-docker`,
//! `host-a` and `host-b`, in turn), against the same fleet on SQLite, side by side in one
//! run. Without the remote engines (`GIROFLE_TEST_REMOTE_A` unset) all the instances are
//! on the local engine, and the report says so.
//!
//! It commissions the instances (the GitLab stand-in image, 8 at a time; not timed) in a
//! fresh root whose `[inventory]` is a namespace of its own on the 3-member etcd cluster
//! `scripts/etcd-cluster` runs (`GIROFLE_TEST_ETCD`, set by `benches/run`), then times,
//! `GIROFLE_BENCH_FLEET_ROUNDS` times (10 by default), once the engine's own health
//! probe has passed on every container (before that a listing asks each GitLab itself): the `girofle --json instance list`
//! command (a process: start, connect to etcd and Docker, list, print) and
//! `Girofle::list` in this process (the listing alone). Then it moves the inventory to
//! SQLite (`girofle inventory migrate --to sqlite`) and times the same again. The
//! containers are removed at the end.
//!
//! Run with `benches/run` or `cargo bench -p girofle-benches --bench fleet` (after
//! `cargo build --release -p girofle-cli`); see benches/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use futures::StreamExt;
use girofle_core::config::Config;
use girofle_core::{CommissionRequest, Girofle, OpenOptions};

#[allow(dead_code, reason = "each bench uses a part of the module")]
mod remote;
use remote::{BenchResult, RemoteEngine, REMOTE_IMAGE};

/// Ports of the bench's root, away from the integration tests' (30000-58799) and the
/// commission bench's; on each remote host too.
const FIRST_PORT: u16 = 59200;

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

fn env_usize(name: &str, default: usize) -> BenchResult<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// The release `girofle` next to this bench's target directory.
fn girofle_bin() -> BenchResult<PathBuf> {
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let bin = release.join("girofle");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p girofle-cli` first (benches/run does)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// The host of instance `i`: the local engine and each remote host in turn.
fn host_of(i: usize, remotes: &[RemoteEngine]) -> String {
    match i % (remotes.len() + 1) {
        0 => "local".to_string(),
        k => remotes[k - 1].name.to_string(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// A listing's timings: command and library times in milliseconds, and, over the
/// command's rounds, how many instances it showed in each state on each host (every one
/// should be `running`: a host that does not answer within Girofle's per-host wait has
/// its instances shown `unreachable`, quickly, which is not a listing of them).
#[derive(Debug, Default)]
struct Listing {
    cli: Vec<f64>,
    lib: Vec<f64>,
    states: std::collections::BTreeMap<(String, String), usize>,
}

impl Listing {
    /// `host state count` summed over the rounds, e.g. `local running 340`.
    fn states(&self) -> String {
        self.states
            .iter()
            .map(|((host, state), n)| format!("{host} {state} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn all_running(&self) -> bool {
        self.states.keys().all(|(_, state)| state == "running")
    }
}

async fn time_listing(
    root: &Path,
    bin: &Path,
    rounds: usize,
    expected: usize,
) -> BenchResult<Listing> {
    let mut listing = Listing::default();
    for _ in 0..rounds {
        let started = Instant::now();
        let out = Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(["--json", "instance", "list"])
            .output()?;
        listing.cli.push(started.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            return Err(format!(
                "instance list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let listed = listed
            .as_array()
            .ok_or("instance list --json is not an array")?;
        if listed.len() != expected {
            return Err(format!(
                "instance list showed {} instances, not {expected}",
                listed.len()
            )
            .into());
        }
        for s in listed {
            let key = (
                s["host"].as_str().unwrap_or("?").to_string(),
                s["state"].as_str().unwrap_or("?").to_string(),
            );
            *listing.states.entry(key).or_default() += 1;
        }
        let g = Girofle::open(root, OpenOptions::default()).await?;
        let started = Instant::now();
        let listed = g.list().await?;
        listing.lib.push(started.elapsed().as_secs_f64() * 1000.0);
        if listed.len() != expected {
            return Err(format!("Girofle::list gave {} instances", listed.len()).into());
        }
    }
    Ok(listing)
}

async fn run() -> BenchResult<()> {
    let size = env_usize("GIROFLE_BENCH_FLEET", 100)?;
    let rounds = env_usize("GIROFLE_BENCH_FLEET_ROUNDS", 10)?.max(1);
    // The remote engines hold only this stand-in; the local one holds it too.
    let image = std::env::var("GIROFLE_BENCH_IMAGE").unwrap_or_else(|_| REMOTE_IMAGE.into());
    let remotes: Vec<RemoteEngine> = remote::remote_engines()?.map(Vec::from).unwrap_or_default();
    let endpoints: Vec<String> = std::env::var("GIROFLE_TEST_ETCD")
        .map_err(|_| "GIROFLE_TEST_ETCD is not set: run `scripts/etcd-cluster start` and `eval \"$(scripts/etcd-cluster env)\"` (benches/run does)")?
        .split(',')
        .map(str::to_string)
        .collect();
    let bin = girofle_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("girofle-bench-fleet-")
        .tempdir()?;
    let root = dir.path().join("root");
    Girofle::init(&root)?;
    let mut config = Config::load(&root)?;
    let last_port = FIRST_PORT + u16::try_from(size * 3 + 10)?;
    config.network.ports = vec![format!("{FIRST_PORT}-{last_port}")];
    config.instances.image.clone_from(&image);
    config.instances.health_timeout_secs = 300;
    // Girofle's default engine probe (every 30 s): the listing is timed once it has
    // passed everywhere; more often, 100 probes load a 2-core machine.
    config.instances.health_interval_secs = 30;
    config.inventory.etcd.clone_from(&endpoints);
    config.inventory.namespace = format!("bench-fleet-{}", std::process::id());
    for e in &remotes {
        config
            .hosts
            .insert(e.name.to_string(), e.host_config((FIRST_PORT, last_port)));
    }
    config.save(&root)?;
    let names: Vec<String> = (0..size)
        .map(|i| format!("fleet{}-{i:03}", std::process::id() % 10_000))
        .collect();
    let result = measure(&root, &bin, &names, &remotes, rounds).await;
    // The containers go whatever happened, and the directories on the remote machines.
    for e in &remotes {
        e.remove_containers(&root);
        e.remove_dirs(&names);
    }
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.girofle.root={}", root.display()))
        .output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()?;
    }
    result
}

async fn measure(
    root: &Path,
    bin: &Path,
    names: &[String],
    remotes: &[RemoteEngine],
    rounds: usize,
) -> BenchResult<()> {
    let size = names.len();
    let g = Girofle::open(root, OpenOptions::default()).await?;
    let started = Instant::now();
    let mut done = futures::stream::iter(names.iter().enumerate().map(|(i, name)| {
        let g = g.clone();
        let host = host_of(i, remotes);
        async move {
            g.commission(CommissionRequest {
                name: name.clone(),
                host: Some(host),
                ..Default::default()
            })
            .await
        }
    }))
    .buffer_unordered(8);
    let mut made = 0;
    while let Some(r) = done.next().await {
        r?;
        made += 1;
    }
    eprintln!(
        "fleet bench: {made} instances commissioned in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Settle until the engine's own probe has passed on every container: before that
    // a listing asks GitLab itself (an exec per instance), which is not what is measured.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut healthy = 0;
        let engines =
            std::iter::once(Command::new("docker")).chain(remotes.iter().map(RemoteEngine::docker));
        for mut docker in engines {
            let out = docker
                .args(["ps", "-q", "--filter", "health=healthy", "--filter"])
                .arg(format!("label=io.girofle.root={}", root.display()))
                .output()?;
            healthy += String::from_utf8_lossy(&out.stdout).lines().count();
        }
        if healthy >= size {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {healthy} of {size} containers healthy after 180 s").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let etcd = time_listing(root, bin, rounds, size).await?;
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["inventory", "migrate", "--to", "sqlite"])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "migrate --to sqlite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let sqlite = time_listing(root, bin, rounds, size).await?;
    let hosts = if remotes.is_empty() {
        "on one Docker engine (no remote engines: GIROFLE_TEST_REMOTE_A unset)".to_string()
    } else {
        format!(
            "spread over {} hosts (local, {}) in turn",
            remotes.len() + 1,
            remotes
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let report = format!(
        "instance list of {size} instances {hosts}, {rounds} rounds (ms):\n\
         {:<34} {:>8} {:>8}\n\
         {:<34} {:>8.0} {:>8.0}\n\
         {:<34} {:>8.0} {:>8.0}\n\
         {:<34} {:>8.0} {:>8.0}\n\
         {:<34} {:>8.0} {:>8.0}\n",
        "",
        "median",
        "worst",
        "etcd: `girofle instance list`",
        median(etcd.cli.clone()),
        worst(&etcd.cli),
        "etcd: Girofle::list",
        median(etcd.lib.clone()),
        worst(&etcd.lib),
        "sqlite: `girofle instance list`",
        median(sqlite.cli.clone()),
        worst(&sqlite.cli),
        "sqlite: Girofle::list",
        median(sqlite.lib.clone()),
        worst(&sqlite.lib),
    );
    let report = format!(
        "{report}states shown by the command, summed over the rounds (host state count):\n\
         etcd: {}\nsqlite: {}\n\
         target (issue 15): `girofle instance list` on etcd <= 300 ms, every instance listed running: {}\n",
        etcd.states(),
        sqlite.states(),
        if median(etcd.cli.clone()) <= 300.0 && etcd.all_running() {
            "met"
        } else {
            "MISSED"
        }
    );
    print!("{report}");
    let target = bin.parent().and_then(Path::parent).ok_or("no target")?;
    std::fs::write(target.join("bench-fleet.txt"), &report)?;
    Ok(())
}
