//! Benchmarks moving an instance between hosts: the downtime of `girofle instance move
//! NAME --to host-b` of an instance on `host-a` holding `GIROFLE_BENCH_MOVE_MIB` MiB of
//! data (1024 by default), against a cold backup and a restore of the same data on the
//! local engine (issue 15's target: the move's downtime at most 1.5 times the two).
//!
//! Both remote engines of `scripts/remote-docker` are needed (`benches/run` starts them).
//! The data is written into the instance's own directories through `docker exec` in its
//! container, by a Python script (the stand-in carries Python 3), shaped like the
//! backup bench's tree: ~30% loose objects of 1-8 KiB of random bytes, ~60% packs of up
//! to 32 MiB of alternating 64 KiB blocks of random bytes and a repeated 4 KiB pattern
//! (half compressible), ~10% text logs (compress ~10x); the same script with the same
//! seed on the local instance. Remote instances have no backups yet, so the comparison
//! is a local instance's: `girofle backup create NAME --strategy cold` then `girofle
//! restore ID --as NEW`, each timed as a process from start to exit.
//!
//! Run with `benches/run` or `cargo bench -p girofle-benches --bench moving` (after
//! `cargo build --release -p girofle-cli`); see benches/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::Instant;

use chrono::Utc;
use girofle_core::config::Config;
use girofle_core::Girofle;

#[allow(dead_code, reason = "each bench uses a part of the module")]
mod remote;
use remote::{BenchResult, RemoteEngine, REMOTE_IMAGE};

/// Ports of the bench's root and of its instances on the remote hosts, away from the
/// integration tests' (30000-58799) and the other benches'.
const PORTS: (u16, u16) = (59500, 59599);

/// Writes `MIB` MiB into the instance's directories, seeded; prints the file count.
const FILL: &str = r#"
import os, random, sys
total = int(sys.argv[1]) << 20
rng = random.Random(15)
rand = lambda n: rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""
repo = "/var/opt/gitlab/git-data/repositories/@hashed/be/nc/bench.git"
objects, packs = repo + "/objects", repo + "/objects/pack"
os.makedirs(packs, exist_ok=True)
files, left = 0, total * 3 // 10
while left > 0:
    size = min(left, rng.randint(1024, 8192))
    d = "%s/%02x" % (objects, files % 256)
    os.makedirs(d, exist_ok=True)
    with open("%s/%038x" % (d, files), "wb") as f:
        f.write(rand(size))
    left -= size
    files += 1
pattern = rand(4096) * 16
left, p = total * 6 // 10, 0
while left > 0:
    size = min(left, 32 << 20)
    with open("%s/pack-%040x.pack" % (packs, p), "wb") as f:
        written, i = 0, 0
        while written < size:
            chunk = (rand(65536) if i % 2 == 0 else pattern)[: size - written]
            f.write(chunk)
            written += len(chunk)
            i += 1
    left -= size
    p += 1
    files += 1
logs, left, n = "/var/log/gitlab/gitlab-rails", total - total * 9 // 10, 0
os.makedirs(logs, exist_ok=True)
while left > 0:
    size = min(left, 16 << 20)
    lines, written = [], 0
    while written < size:
        line = '{"method":"GET","path":"/team/app/-/merge_requests/%d","status":200,"duration_s":%.3f,"user_id":%d}\n' % (rng.randint(1, 9999), rng.random(), rng.randint(1, 500))
        lines.append(line)
        written += len(line)
    with open("%s/bench_%d.log" % (logs, n), "w") as f:
        f.write("".join(lines)[:size])
    left -= size
    n += 1
    files += 1
os.system("chown -R 998:998 /var/opt/gitlab/git-data/repositories/@hashed")
os.system("sync")
print(files)
"#;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench error: {e}");
            ExitCode::FAILURE
        }
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

/// `girofle --root ROOT --json ARGS`: its JSON output and how long it took, seconds.
fn girofle(bin: &Path, root: &Path, args: &[&str]) -> BenchResult<(serde_json::Value, f64)> {
    let started = Instant::now();
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .arg("--json")
        .args(args)
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let out = succeeded(out, &format!("girofle {}", args.join(" ")))?;
    Ok((serde_json::from_slice(&out.stdout)?, secs))
}

fn succeeded(out: Output, what: &str) -> BenchResult<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
        .into())
    }
}

/// Fills instance `name` with `mib` MiB through `docker` (its engine's); the file count.
fn fill(mut docker: Command, name: &str, mib: usize) -> BenchResult<u64> {
    let out = docker
        .args(["exec", &girofle_core::record::container_name(name)])
        .args(["python3", "-c", FILL, &mib.to_string()])
        .output()?;
    let out = succeeded(out, &format!("filling {name}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn run() -> BenchResult<()> {
    let mib: usize = match std::env::var("GIROFLE_BENCH_MOVE_MIB") {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("GIROFLE_BENCH_MOVE_MIB=`{v}`: {e}"))?,
        Err(_) => 1024,
    };
    let [a, b] = remote::remote_engines()?.ok_or(
        "GIROFLE_TEST_REMOTE_A is not set: the move bench needs the remote engines; run `scripts/remote-docker start` and `eval \"$(scripts/remote-docker env)\"` (benches/run does)",
    )?;
    let bin = girofle_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("girofle-bench-move-")
        .tempdir()?;
    let root = dir.path().join("root");
    Girofle::init(&root)?;
    let mut config = Config::load(&root)?;
    config.network.ports = vec![format!("{}-{}", PORTS.0, PORTS.1)];
    config.instances.image = std::env::var("GIROFLE_BENCH_IMAGE").unwrap_or(REMOTE_IMAGE.into());
    config.instances.health_timeout_secs = 300;
    for e in [&a, &b] {
        config
            .hosts
            .insert(e.name.to_string(), e.host_config(PORTS));
    }
    config.save(&root)?;
    let id = std::process::id() % 10_000;
    let names = [
        format!("move{id}"),
        format!("cold{id}"),
        format!("cold{id}-restored"),
    ];
    let result = measure(&bin, &root, &names, &a, mib);
    for name in &names {
        let _ = Command::new(&bin)
            .arg("--root")
            .arg(&root)
            .args(["instance", "rm", name, "--no-backup", "--purge"])
            .output();
    }
    for e in [&a, &b] {
        e.remove_containers(&root);
        e.remove_dirs(&names);
    }
    let report = result?;
    let target = bin.parent().and_then(Path::parent).ok_or("no target")?;
    std::fs::write(target.join("bench-move.txt"), &report)?;
    Ok(())
}

fn measure(
    bin: &Path,
    root: &Path,
    names: &[String; 3],
    a: &RemoteEngine,
    mib: usize,
) -> BenchResult<String> {
    let [moved, cold, restored] = names;
    let mut report = format!(
        "Girofle move benchmark, {}\nmachine: {} cores, load average at start {}; {mib} MiB of data\n",
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    print!("{report}");

    girofle(bin, root, &["instance", "create", moved, "--host", a.name])?;
    let started = Instant::now();
    let files = fill(a.docker(), moved, mib)?;
    eprintln!(
        "move bench: {moved} on {} filled with {mib} MiB in {files} files in {:.0} s",
        a.name,
        started.elapsed().as_secs_f64()
    );
    let (result, move_secs) = girofle(bin, root, &["instance", "move", moved, "--to", "host-b"])?;
    let downtime = result["downtime_secs"]
        .as_f64()
        .ok_or("instance move --json has no downtime_secs")?;
    let took = result["took_secs"].as_f64().unwrap_or(move_secs);
    let copied = result["bytes_copied"].as_u64().unwrap_or(0);
    if let Some(kept) = result["kept_aside"].as_str() {
        let _ = Command::new("docker")
            .args(["exec", &format!("girofle-remote-{}", a.name)])
            .args(["rm", "-rf", kept])
            .output();
    }
    let line = format!(
        "move {moved} host-a -> host-b: downtime {downtime:.2} s, took {took:.2} s (process {move_secs:.2} s), {:.1} MB copied, {files} files\n",
        copied as f64 / 1e6
    );
    print!("{line}");
    report.push_str(&line);

    girofle(bin, root, &["instance", "create", cold, "--host", "local"])?;
    fill(Command::new("docker"), cold, mib)?;
    let (backup, backup_secs) =
        girofle(bin, root, &["backup", "create", cold, "--strategy", "cold"])?;
    let id = backup["id"]
        .as_str()
        .ok_or("backup create --json has no id")?
        .to_string();
    let (_, restore_secs) = girofle(bin, root, &["restore", &id, "--as", restored])?;
    let line = format!(
        "cold backup of {cold} (local): {backup_secs:.2} s ({:.1} MB of files, archive {:.1} MB, GitLab down {:.2} s); restore --as {restored}: {restore_secs:.2} s\n",
        backup["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
        backup["archive_size"].as_u64().unwrap_or(0) as f64 / 1e6,
        backup["downtime_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    print!("{line}");
    report.push_str(&line);
    let both = backup_secs + restore_secs;
    let line = format!(
        "move downtime / (cold backup + restore) = {downtime:.2} / {both:.2} = {:.2}x; target (issue 15) <= 1.5x: {}\n",
        downtime / both,
        if downtime <= 1.5 * both { "met" } else { "MISSED" }
    );
    print!("{line}");
    report.push_str(&line);
    Ok(report)
}
