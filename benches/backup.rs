//! Benchmarks Girofle's cold-backup pipeline (walk + tar + BLAKE3 + zstd streamed into a
//! store, then the index beside it) and its verified restore against `tar | zstd -3 -T0`,
//! `zstd -d | tar -x` and `restic backup`, on a generated GitLab-like tree, to the local
//! disk, a tmpfs and an S3-compatible server on loopback, and measures Girofle's peak
//! resident memory.
//!
//! Run with `benches/run` (or `cargo bench -p girofle-benches --bench backup`); see
//! benches/README.md for the environment variables. Each Girofle phase runs in a child
//! process (this same binary, re-executed with `--phase ...`) that prints its own `VmHWM`
//! before it exits, so the peak memory of one phase is not mixed with the generator's or
//! another phase's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use girofle_core::archive::{CompressionOptions, Source};
use girofle_core::backup::{archive_to_store, extract_from_store, ArchiveRef, IndexRef};
use girofle_core::store::{local_store, open_store, BackupStore, StoreConfig};
use serde::{Deserialize, Serialize};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seed of the tree generator: the same size always gives the same bytes.
const SEED: u64 = 0x6769_726f_666c_6521;
const MIB: u64 = 1 << 20;
/// The backup id in the bench's stores: objects `bench/backup.tar.zst`, `.index`...
const BACKUP_ID: &str = "bench/backup";
const MANIFEST_KEY: &str = "bench/backup.bench-manifest";
/// The three directories a cold backup archives, as `backup.rs` names them.
const PREFIXES: [&str; 3] = ["config", "data", "logs"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().position(|a| a == "--phase") {
        Some(i) => run_phase(&args[i + 1..]),
        // `cargo bench` passes `--bench` (and any filter); nothing else to parse.
        None => run_bench(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------
// Child phases: the real Girofle pipelines, one per process
// ---------------------------------------------------------------------------------------

fn run_phase(args: &[String]) -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = match args {
        [phase, src, store] if phase == "backup" => {
            rt.block_on(phase_backup(Path::new(src), store))?
        }
        [phase, store, target] if phase == "restore" => {
            rt.block_on(phase_restore(store, Path::new(target)))?
        }
        [phase, store] if phase == "clean" => rt.block_on(phase_clean(store))?,
        _ => {
            return Err(
                "usage: --phase backup SRC STORE | --phase restore STORE TARGET (STORE: a directory or s3:PREFIX)"
                    .into(),
            )
        }
    };
    drop(rt);
    let mut out = io::stdout().lock();
    for (k, v) in report {
        writeln!(out, "{k} {v}")?;
    }
    // Last, after everything else: the high-water mark of this whole process.
    writeln!(out, "vmhwm_kib {}", vm_hwm_kib()?)?;
    Ok(())
}

/// The peak resident set of this process, from `/proc/self/status`.
fn vm_hwm_kib() -> BenchResult<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmHWM line")?
        .parse()?)
}

/// `s3:PREFIX` opens the S3-compatible server named by the `GIROFLE_TEST_S3_*` variables
/// (`eval "$(scripts/s3-server env)"`), as the integration tests do; anything else is a
/// directory for the `local` store.
fn bench_store(spec: &str) -> BenchResult<Arc<dyn BackupStore>> {
    match spec.strip_prefix("s3:") {
        Some(prefix) => {
            let var = |k: &str| {
                std::env::var(k).map_err(|_| {
                    format!("{k} is not set: run `scripts/s3-server start` and `eval \"$(scripts/s3-server env)\"` (benches/run does)")
                })
            };
            let config = StoreConfig {
                url: format!("s3://{}/{prefix}", var("GIROFLE_TEST_S3_BUCKET")?),
                endpoint: Some(var("GIROFLE_TEST_S3_ENDPOINT")?),
                region: Some("us-east-1".into()),
                access_key_id: Some(var("GIROFLE_TEST_S3_ACCESS_KEY")?),
                secret_access_key: Some(var("GIROFLE_TEST_S3_SECRET_KEY")?),
                allow_http: Some(true),
                ..Default::default()
            };
            Ok(open_store("bench-s3", &config)?)
        }
        None => Ok(local_store(Path::new(spec))?),
    }
}

/// What the backup phase keeps beside the archive for the restore phase, like the
/// archive and index parts of `backup::Manifest`.
#[derive(Serialize, Deserialize)]
struct BenchManifest {
    archive: ArchiveRef,
    index: IndexRef,
}

/// Girofle's cold backup (`backup::archive_to_store`, as `Girofle::backup` calls it): the
/// archive streamed into the store, then the index; then a manifest with `put_bytes`.
async fn phase_backup(src: &Path, spec: &str) -> BenchResult<Vec<(&'static str, String)>> {
    let started = Instant::now();
    let store = bench_store(spec)?;
    let sources: Vec<Source> = PREFIXES
        .iter()
        .map(|p| Source {
            prefix: (*p).to_string(),
            dir: src.join(p),
        })
        .collect();
    let header = serde_json::json!({ "format_version": 2, "id": BACKUP_ID });
    // The settings sweep sets these; otherwise Girofle's defaults (`[backup]` unset).
    let mut compression = CompressionOptions::default();
    if let Ok(level) = std::env::var("GIROFLE_BENCH_LEVEL") {
        compression.level = level.parse()?;
    }
    if let Ok(threads) = std::env::var("GIROFLE_BENCH_THREADS") {
        compression.threads = threads.parse()?;
    }
    let (archive, index) =
        archive_to_store(&store, BACKUP_ID, &header, &sources, compression, None).await?;
    let stored = store.head(&archive.key).await?.size;
    if stored != archive.size {
        return Err(format!(
            "the store holds {stored} bytes, the archive writer produced {}",
            archive.size
        )
        .into());
    }
    let report = vec![
        ("seconds", format!("{:.3}", started.elapsed().as_secs_f64())),
        ("files", index.files.to_string()),
        ("dirs", index.dirs.to_string()),
        ("bytes", index.bytes.to_string()),
        ("archive_size", archive.size.to_string()),
        ("index_size", index.size.to_string()),
    ];
    let manifest = BenchManifest { archive, index };
    store
        .put_bytes(MANIFEST_KEY, Bytes::from(serde_json::to_vec(&manifest)?))
        .await?;
    Ok(report)
}

/// Deletes what the backup phase stored (the S3 server keeps it otherwise).
async fn phase_clean(spec: &str) -> BenchResult<Vec<(&'static str, String)>> {
    let store = bench_store(spec)?;
    for suffix in [".tar.zst", ".index", ".bench-manifest"] {
        store.delete(&format!("{BACKUP_ID}{suffix}")).await?;
    }
    Ok(Vec::new())
}

/// Girofle's verified restore (`backup::extract_from_store`, as `restore` calls it): the
/// archive and its index streamed out of the store, every entry checked against the index,
/// every file's hash, the archive's and the index's sizes and hashes.
async fn phase_restore(spec: &str, target: &Path) -> BenchResult<Vec<(&'static str, String)>> {
    let started = Instant::now();
    let store = bench_store(spec)?;
    let BenchManifest { archive, index } =
        serde_json::from_slice(&store.get_bytes(MANIFEST_KEY).await?)?;
    let summary = extract_from_store(&store, &archive, &index, target, None).await?;
    Ok(vec![
        ("seconds", format!("{:.3}", started.elapsed().as_secs_f64())),
        ("files", summary.files.to_string()),
        ("bytes", summary.bytes.to_string()),
    ])
}

// ---------------------------------------------------------------------------------------
// The generated instance tree
// ---------------------------------------------------------------------------------------

/// xorshift64*: tiny, fast and deterministic; good enough for incompressible bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `lo..=hi` for sizes and names.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn hex(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars);
        while s.len() < chars {
            let _ = write!(s, "{:016x}", self.next_u64());
        }
        s.truncate(chars);
        s
    }
}

/// What was generated.
#[derive(Clone, Copy, Debug, Default)]
struct TreeStats {
    files: u64,
    dirs: u64,
    bytes: u64,
    loose: u64,
    packs: u64,
}

struct Generator {
    rng: Rng,
    stats: TreeStats,
    buf: Vec<u8>,
}

impl Generator {
    /// Creates `p` and its missing parents, counting each one.
    fn mkdir(&mut self, p: &Path) -> io::Result<()> {
        let missing = p.ancestors().take_while(|a| !a.exists()).count();
        fs::create_dir_all(p)?;
        self.stats.dirs += missing as u64;
        Ok(())
    }

    fn write(&mut self, p: &Path, data: &[u8]) -> io::Result<()> {
        fs::write(p, data)?;
        self.stats.files += 1;
        self.stats.bytes += data.len() as u64;
        Ok(())
    }

    fn random_file(&mut self, p: &Path, size: usize) -> io::Result<()> {
        let mut data = std::mem::take(&mut self.buf);
        data.resize(size, 0);
        self.rng.fill(&mut data);
        let r = self.write(p, &data);
        self.buf = data;
        r
    }

    /// A pack: alternating 64 KiB blocks of random bytes and of one repeated 4 KiB pattern,
    /// so about half of it compresses (deltas, text blobs) and half does not.
    fn pack_file(&mut self, p: &Path, size: u64) -> io::Result<()> {
        const BLOCK: usize = 64 << 10;
        let mut pattern = vec![0u8; 4 << 10];
        self.rng.fill(&mut pattern);
        let repeated: Vec<u8> = pattern.iter().copied().cycle().take(BLOCK).collect();
        let mut random = vec![0u8; BLOCK];
        let mut w = BufWriter::with_capacity(1 << 20, File::create(p)?);
        w.write_all(b"PACK\0\0\0\x02")?;
        let mut written = 8u64;
        let mut odd = false;
        while written < size {
            let n = usize::try_from((size - written).min(BLOCK as u64)).unwrap_or(BLOCK);
            if odd {
                w.write_all(&repeated[..n])?;
            } else {
                self.rng.fill(&mut random[..n]);
                w.write_all(&random[..n])?;
            }
            odd = !odd;
            written += n as u64;
        }
        w.into_inner().map_err(io::IntoInnerError::into_error)?;
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    /// Log lines in the shape of GitLab's (Rails, Gitaly, nginx, Sidekiq): they compress
    /// about as well as the real ones.
    fn log_file(&mut self, p: &Path, size: u64, kind: usize) -> io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(p)?);
        let mut line = String::with_capacity(512);
        let mut written = 0u64;
        let mut t = 1_764_000_000u64;
        while written < size {
            line.clear();
            t += self.rng.range(0, 3);
            let (h, m, s) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
            let project = self.rng.range(1, 400);
            let req = self.rng.hex(26);
            let ms = self.rng.range(1, 2500);
            let _ = match kind % 5 {
                0 => writeln!(
                    line,
                    "{{\"method\":\"GET\",\"path\":\"/group-{g}/project-{project}/-/merge_requests/{mr}\",\"format\":\"html\",\"controller\":\"Projects::MergeRequestsController\",\"action\":\"show\",\"status\":200,\"time\":\"2026-11-25T{h:02}:{m:02}:{s:02}.{ms:03}Z\",\"remote_ip\":\"10.0.{a}.{b}\",\"user_id\":{u},\"username\":\"user{u}\",\"ua\":\"Mozilla/5.0\",\"correlation_id\":\"{req}\",\"db_count\":{db},\"duration_s\":0.{ms:04}}}",
                    g = project % 17,
                    mr = self.rng.range(1, 900),
                    a = self.rng.range(0, 255),
                    b = self.rng.range(0, 255),
                    u = self.rng.range(1, 5000),
                    db = self.rng.range(1, 80),
                ),
                1 => writeln!(
                    line,
                    "10.0.{a}.{b} - - [25/Nov/2026:{h:02}:{m:02}:{s:02} +0000] \"GET /group-{g}/project-{project}.git/info/refs?service=git-upload-pack HTTP/1.1\" 200 {len} \"-\" \"git/2.47.0\" -",
                    a = self.rng.range(0, 255),
                    b = self.rng.range(0, 255),
                    g = project % 17,
                    len = self.rng.range(200, 90_000),
                ),
                2 => writeln!(
                    line,
                    "{{\"correlation_id\":\"{req}\",\"grpc.code\":\"OK\",\"grpc.method\":\"PostUploadPackWithSidechannel\",\"grpc.service\":\"gitaly.SmartHTTPService\",\"grpc.request.glRepository\":\"project-{project}\",\"grpc.time_ms\":{ms},\"level\":\"info\",\"msg\":\"finished unary call with code OK\",\"pid\":{pid},\"time\":\"2026-11-25T{h:02}:{m:02}:{s:02}.{ms:03}Z\"}}",
                    pid = self.rng.range(300, 900),
                ),
                3 => writeln!(
                    line,
                    "{{\"severity\":\"INFO\",\"time\":\"2026-11-25T{h:02}:{m:02}:{s:02}.{ms:03}Z\",\"class\":\"PipelineProcessWorker\",\"args\":[\"{pipe}\"],\"retry\":3,\"queue\":\"pipeline_processing:pipeline_process\",\"jid\":\"{req}\",\"job_status\":\"done\",\"duration_s\":0.{ms:04},\"db_duration_s\":0.0{db}}}",
                    pipe = self.rng.range(1, 1_000_000),
                    db = self.rng.range(1, 999),
                ),
                _ => writeln!(
                    line,
                    "Started GET \"/api/v4/projects/{project}/jobs/{job}/trace\" for 10.0.{a}.{b} at 2026-11-25 {h:02}:{m:02}:{s:02} +0000\nCompleted 200 OK in {ms}ms (Views: 0.{v}ms | ActiveRecord: {ar}.4ms | Elasticsearch: 0.0ms | Allocations: {al})",
                    job = self.rng.range(1, 9_000_000),
                    a = self.rng.range(0, 255),
                    b = self.rng.range(0, 255),
                    v = self.rng.range(1, 99),
                    ar = self.rng.range(1, 99),
                    al = self.rng.range(1000, 99_999),
                ),
            };
            w.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        w.into_inner().map_err(io::IntoInnerError::into_error)?;
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }
}

/// Generates the instance tree under `root` (`config/`, `data/`, `logs/`), about
/// `total` bytes: ~10% logs, ~30% loose objects of 1-8 KiB, ~60% packs of up to 32 MiB.
fn generate_tree(root: &Path, total: u64) -> io::Result<TreeStats> {
    let mut g = Generator {
        rng: Rng::new(SEED ^ total),
        stats: TreeStats::default(),
        buf: Vec::new(),
    };
    fs::create_dir_all(root)?;

    // config/: what /etc/gitlab holds.
    let config = root.join("config");
    g.mkdir(&config)?;
    g.mkdir(&config.join("trusted-certs"))?;
    let mut rb = String::from(
        "## GitLab configuration settings\nexternal_url 'http://gitlab.example.test'\n",
    );
    for i in 0..2000 {
        let _ = writeln!(rb, "# gitlab_rails['setting_{i}'] = '{}'", g.rng.hex(24));
    }
    g.write(&config.join("gitlab.rb"), rb.as_bytes())?;
    let secrets = format!(
        "{{\"gitlab_workhorse\":{{\"secret_token\":\"{}\"}},\"gitlab_shell\":{{\"secret_token\":\"{}\"}},\"gitlab_rails\":{{\"secret_key_base\":\"{}\",\"db_key_base\":\"{}\",\"otp_key_base\":\"{}\",\"openid_connect_signing_key\":\"-----BEGIN RSA PRIVATE KEY-----\\n{}\\n-----END RSA PRIVATE KEY-----\\n\"}}}}",
        g.rng.hex(64),
        g.rng.hex(128),
        g.rng.hex(128),
        g.rng.hex(128),
        g.rng.hex(128),
        g.rng.hex(3200),
    );
    g.write(&config.join("gitlab-secrets.json"), secrets.as_bytes())?;
    for (kind, len) in [("rsa", 2600), ("ecdsa", 500), ("ed25519", 400)] {
        let key = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            g.rng.hex(len)
        );
        g.write(&config.join(format!("ssh_host_{kind}_key")), key.as_bytes())?;
        let public = format!("ssh-{kind} {} root@gitlab\n", g.rng.hex(len / 4));
        g.write(
            &config.join(format!("ssh_host_{kind}_key.pub")),
            public.as_bytes(),
        )?;
    }

    // data/git-data/repositories: hashed-storage repositories, loose objects and packs.
    let logs_budget = total / 10;
    let packs_budget = total * 6 / 10;
    let loose_budget = total - logs_budget - packs_budget;
    let repos_dir = root.join("data/git-data/repositories/@hashed");
    g.mkdir(&repos_dir)?;
    let mean_object = 4608;
    let repo_count = (loose_budget / mean_object / 400).max(4);
    let mut repos = Vec::new();
    for _ in 0..repo_count {
        let h = g.rng.hex(64);
        let repo = repos_dir
            .join(&h[..2])
            .join(&h[2..4])
            .join(format!("{h}.git"));
        g.mkdir(&repo.join("objects/pack"))?;
        g.mkdir(&repo.join("objects/info"))?;
        g.mkdir(&repo.join("refs/heads"))?;
        g.mkdir(&repo.join("refs/tags"))?;
        g.write(&repo.join("HEAD"), b"ref: refs/heads/main\n")?;
        g.write(
            &repo.join("config"),
            b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        )?;
        let head = format!("{}\n", g.rng.hex(40));
        g.write(&repo.join("refs/heads/main"), head.as_bytes())?;
        repos.push(repo);
    }
    let mut loose = 0u64;
    let mut i = 0usize;
    while loose < loose_budget {
        let repo = &repos[i % repos.len()];
        i += 1;
        let name = g.rng.hex(40);
        let dir = repo.join("objects").join(&name[..2]);
        g.mkdir(&dir)?;
        let size = g.rng.range(1024, 8192).min(loose_budget - loose).max(1);
        g.random_file(&dir.join(&name[2..]), usize::try_from(size).unwrap_or(8192))?;
        loose += size;
        g.stats.loose += 1;
    }
    let mut packed = 0u64;
    let mut i = 0usize;
    while packed < packs_budget {
        let repo = repos[i % repos.len()].clone();
        i += 1;
        let name = g.rng.hex(40);
        let size = (packs_budget - packed).min(32 * MIB);
        g.pack_file(&repo.join(format!("objects/pack/pack-{name}.pack")), size)?;
        let idx = (size / 512).max(1024);
        g.random_file(
            &repo.join(format!("objects/pack/pack-{name}.idx")),
            usize::try_from(idx).unwrap_or(1024),
        )?;
        packed += size + idx;
        g.stats.packs += 1;
    }

    // logs/: what /var/log/gitlab holds.
    let logs = root.join("logs");
    let files = [
        "gitlab-rails/production_json.log",
        "nginx/gitlab_access.log",
        "gitaly/current",
        "sidekiq/current",
        "gitlab-rails/production.log",
        "gitlab-rails/api_json.log",
        "nginx/gitlab_error.log",
        "gitlab-workhorse/current",
        "puma/current",
        "postgresql/current",
    ];
    for (kind, f) in files.iter().enumerate() {
        let p = logs.join(f);
        if let Some(parent) = p.parent() {
            g.mkdir(parent)?;
        }
        g.log_file(&p, logs_budget / files.len() as u64, kind)?;
    }
    Ok(g.stats)
}

/// The tree for `mib` MiB under `dir/src`, generated unless a previous run left a
/// complete one (its marker holds the stats).
fn ensure_tree(dir: &Path, mib: u64) -> BenchResult<(PathBuf, TreeStats)> {
    let src = dir.join("src");
    let marker = dir.join(format!("src.complete-{mib}mib"));
    if let Ok(text) = fs::read_to_string(&marker) {
        let n: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [files, dirs, bytes, loose, packs] = n[..] {
            eprintln!("reusing the {mib} MiB tree in {}", src.display());
            let stats = TreeStats {
                files,
                dirs,
                bytes,
                loose,
                packs,
            };
            return Ok((src, stats));
        }
    }
    if src.exists() {
        fs::remove_dir_all(&src)?;
    }
    eprintln!(
        "generating a {mib} MiB GitLab-like tree in {}...",
        src.display()
    );
    let t = Instant::now();
    let s = generate_tree(&src, mib * MIB)?;
    eprintln!(
        "  {} files ({} loose objects, {} packs), {} dirs, {} bytes in {:.1} s",
        s.files,
        s.loose,
        s.packs,
        s.dirs,
        s.bytes,
        t.elapsed().as_secs_f64()
    );
    fs::write(
        &marker,
        format!(
            "{} {} {} {} {}\n",
            s.files, s.dirs, s.bytes, s.loose, s.packs
        ),
    )?;
    Ok((src, s))
}

// ---------------------------------------------------------------------------------------
// The driver: rounds, baselines, table
// ---------------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> BenchResult<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| format!("{name}=`{v}`: {e}; give a whole number").into()),
        _ => Ok(default),
    }
}

fn found(tool: &str) -> bool {
    Command::new(tool)
        .arg(if tool == "restic" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a run compares, beyond the local backup and its baselines.
struct Options {
    rounds: u64,
    /// Where the tmpfs restores go (a directory on a tmpfs), if any.
    tmpfs: Option<PathBuf>,
    s3: bool,
    restic: bool,
    /// Restores to the disk (slow to clean up: minutes at 4 GiB here).
    disk: bool,
}

fn run_bench() -> BenchResult<()> {
    let mib = env_u64("GIROFLE_BENCH_MIB", 1024)?.max(16);
    let rounds = env_u64("GIROFLE_BENCH_ROUNDS", 3)?.max(1);
    let four_x = std::env::var("GIROFLE_BENCH_4X").is_ok_and(|v| v == "1");
    let four_x_rounds = env_u64("GIROFLE_BENCH_4X_ROUNDS", 1)?.max(1);
    for tool in ["tar", "zstd", "bash"] {
        if !found(tool) {
            return Err(format!(
                "`{tool}` is needed for the baseline; install it (apt-get install {tool})"
            )
            .into());
        }
    }
    let mut notes = String::new();
    let restic = match std::env::var("GIROFLE_BENCH_RESTIC") {
        Ok(v) if v == "0" => false,
        _ if found("restic") => true,
        _ => {
            notes.push_str("restic is not installed (apt-get install restic; benches/run does): its phases are skipped\n");
            false
        }
    };
    let s3 = match std::env::var("GIROFLE_BENCH_S3") {
        Ok(v) if v == "0" => false,
        _ if std::env::var_os("GIROFLE_TEST_S3_ENDPOINT").is_some() => true,
        _ => {
            notes.push_str("GIROFLE_TEST_S3_* are not set (scripts/s3-server start; eval \"$(scripts/s3-server env)\"; benches/run does): the S3 phases are skipped\n");
            false
        }
    };
    let tmpfs = match std::env::var_os("GIROFLE_BENCH_TMPFS") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None if Path::new("/dev/shm").is_dir() => Some(PathBuf::from("/dev/shm")),
        None => {
            notes.push_str("no tmpfs (set GIROFLE_BENCH_TMPFS): the tmpfs restores are skipped\n");
            None
        }
    };
    // Kept until the end of the run; removed with everything under it unless the caller
    // chose the directory (then the generated trees are reused by the next run).
    let mut _temp = None;
    let base = match std::env::var_os("GIROFLE_BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            fs::create_dir_all(&d)?;
            d
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("girofle-bench-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            _temp = Some(t);
            p
        }
    };
    let tmpfs = match tmpfs {
        Some(d) => {
            let d = d.join(format!("girofle-bench-{}", std::process::id()));
            fs::create_dir_all(&d)?;
            Some(d)
        }
        None => None,
    };

    let mut report = machine_info(&base, tmpfs.as_deref());
    report.push_str(&notes);
    print!("{report}");
    let disk = std::env::var("GIROFLE_BENCH_DISK").map_or(true, |v| v != "0");
    let mut runs = vec![(
        mib,
        Options {
            rounds,
            tmpfs: tmpfs.clone(),
            s3,
            restic,
            disk,
        },
    )];
    if four_x {
        // The 4x point is about memory: one round by default, and no restic (minutes).
        let restic_4x = restic && std::env::var("GIROFLE_BENCH_4X_RESTIC").is_ok_and(|v| v == "1");
        runs.push((
            4 * mib,
            Options {
                rounds: four_x_rounds,
                tmpfs: tmpfs.clone(),
                s3,
                restic: restic_4x,
                disk,
            },
        ));
    }
    let sweep = parse_sweep(&std::env::var("GIROFLE_BENCH_SWEEP").unwrap_or_else(|_| {
        // The levels at the default thread count, then level 3 with no workers, one, and
        // one per core.
        let d = CompressionOptions::default().threads;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut pairs = vec![format!("1:{d}"), format!("3:{d}"), format!("6:{d}")];
        for t in [0, 1, cores] {
            if t.to_string() != d.to_string() {
                pairs.push(format!("3:{t}"));
            }
        }
        pairs.join(" ")
    }))?;
    let mut hwm = Vec::new();
    if !sweep.is_empty() {
        let part = sweep_settings(&base, mib, rounds, &sweep)?;
        print!("{part}");
        report.push_str(&part);
    }
    for (size, opts) in &runs {
        let (part, peak) = bench_size(&base, *size, opts)?;
        print!("{part}");
        report.push_str(&part);
        hwm.push((*size, peak));
    }
    if let [(a, pa), (b, pb)] = hwm[..] {
        let line = format!(
            "\npeak RSS of any Girofle phase: {:.1} MiB at {a} MiB, {:.1} MiB at {b} MiB ({:+.1}%)\n",
            pa as f64 / 1024.0,
            pb as f64 / 1024.0,
            100.0 * (pb as f64 - pa as f64) / pa as f64
        );
        print!("{line}");
        report.push_str(&line);
    }
    if let Some(d) = &tmpfs {
        remove(d)?;
    }

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    fs::create_dir_all(&target)?;
    let target = target.canonicalize()?;
    let out = target.join("bench-backup.txt");
    fs::write(&out, &report)?;
    println!("written to {}", out.display());
    Ok(())
}

/// `LEVEL:THREADS` pairs separated by spaces or commas; empty or `0` for none.
fn parse_sweep(spec: &str) -> BenchResult<Vec<(i32, u32)>> {
    if spec.trim() == "0" {
        return Ok(Vec::new());
    }
    spec.split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (l, t) = pair
                .split_once(':')
                .ok_or_else(|| format!("GIROFLE_BENCH_SWEEP: `{pair}` is not LEVEL:THREADS"))?;
            Ok((l.parse()?, t.parse()?))
        })
        .collect()
}

/// Girofle's local backup at each zstd level and thread count of `sweep`: the time and
/// the archive size that `[backup] level` and `threads` trade, to choose the defaults.
fn sweep_settings(base: &Path, mib: u64, rounds: u64, sweep: &[(i32, u32)]) -> BenchResult<String> {
    let dir = base.join(format!("{mib}mib"));
    fs::create_dir_all(&dir)?;
    let (src, stats) = ensure_tree(&dir, mib)?;
    let store = dir.join("store-sweep");
    let exe = std::env::current_exe()?;
    let default = CompressionOptions::default();
    let mut results = Vec::new();
    for &(level, threads) in sweep {
        let mut secs = Vec::new();
        let mut size = 0;
        let mut hwm = 0;
        for _ in 0..rounds {
            remove(&store)?;
            settle(&[&src])?;
            let (s, out) = child_with(
                &exe,
                &["backup".as_ref(), src.as_os_str(), store.as_os_str()],
                &[
                    ("GIROFLE_BENCH_LEVEL", level.to_string()),
                    ("GIROFLE_BENCH_THREADS", threads.to_string()),
                ],
            )?;
            secs.push(s);
            size = number(&out, "archive_size")?;
            hwm = hwm.max(number(&out, "vmhwm_kib")?);
        }
        eprintln!(
            "{mib} MiB settings: level {level}, {threads} thread(s): {}",
            secs.iter()
                .map(|s| format!("{s:.2} s"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        results.push((level, threads, median(&secs), size, hwm));
    }
    remove(&store)?;
    let reference = results
        .iter()
        .find(|r| (r.0, r.1) == (default.level, default.threads))
        .map(|r| r.2);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "
settings (Girofle -> local store, {mib} MiB, median of {rounds}; the defaults are level {} and {} thread(s)):",
        default.level, default.threads
    );
    let _ = writeln!(
        t,
        "{:>5} {:>7} {:>8} {:>8} {:>12} {:>9} {:>13}",
        "level", "threads", "seconds", "MB/s", "archive MiB", "vs default", "peak RSS MiB"
    );
    for (level, threads, secs, size, hwm) in results {
        let vs = reference.map_or_else(|| "-".into(), |r| format!("{:.2}x", secs / r));
        let _ = writeln!(
            t,
            "{level:>5} {threads:>7} {secs:>8.2} {:>8.1} {:>12.1} {vs:>9} {:>13.1}",
            stats.bytes as f64 / 1e6 / secs,
            size as f64 / MIB as f64,
            hwm as f64 / 1024.0
        );
    }
    Ok(t)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd} failed: {e})"))
}

fn disk_of(p: &Path) -> String {
    let disk = command_line(
        "df",
        &[
            "-h",
            "--output=source,fstype,size,avail,target",
            &p.display().to_string(),
        ],
    );
    disk.lines()
        .last()
        .unwrap_or("?")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine_info(base: &Path, tmpfs: Option<&Path>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut s = format!(
        "Girofle backup benchmark, {}\nmachine: {cores} cores ({cpu}), {mem_gib:.1} GiB RAM, load average at start {}; zstd level 3 on both sides, Girofle with {} zstd worker(s) (its default here), `zstd -T0` with {cores}; allocator: {}\ntemp dir: {} on {}\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        CompressionOptions::default().threads,
        if cfg!(feature = "mimalloc") { "mimalloc" } else { "glibc" },
        base.display(),
        disk_of(base),
    );
    if let Some(t) = tmpfs {
        let _ = writeln!(s, "tmpfs restores: {} on {}", t.display(), disk_of(t));
    }
    s
}

/// Runs one Girofle phase in a child process; returns its wall time and what it printed.
fn child(exe: &Path, args: &[&std::ffi::OsStr]) -> BenchResult<(f64, BTreeMap<String, String>)> {
    child_with(exe, args, &[])
}

/// [`child`] with extra environment variables.
fn child_with(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, String)],
) -> BenchResult<(f64, BTreeMap<String, String>)> {
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("--phase")
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::inherit())
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("the child phase {args:?} failed ({})", out.status).into());
    }
    let values = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok((secs, values))
}

/// Runs a shell script under `bash -o pipefail`; `$1`, `$2` are `args`.
fn shell(script: &str, args: &[&Path]) -> BenchResult<f64> {
    let started = Instant::now();
    let status = Command::new("bash")
        .args(["-o", "pipefail", "-c", script, "bash"])
        .args(args)
        .env(
            "RESTIC_PASSWORD",
            std::env::var("RESTIC_PASSWORD").unwrap_or_else(|_| "girofle-bench".into()),
        )
        .status()?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("the baseline `{script}` failed ({status})").into());
    }
    Ok(secs)
}

/// Flushes the dirty pages the previous phase (or a removal) left, so that each timed
/// phase starts from the same state instead of paying for the writeback of the last one,
/// then reads `inputs` (files, or every file under a directory) so that the phase finds
/// them in the page cache. Without that the first phase of a round pays for disk reads:
/// this machine's kernel runs a DAMON `pageout` scheme that evicts pages left untouched
/// for about a minute (`/sys/kernel/mm/damon/admin/kdamonds`), so what a phase reads may
/// or may not still be cached depending on what ran before it.
fn settle(inputs: &[&Path]) -> BenchResult<()> {
    Command::new("sync").status()?;
    let mut buf = vec![0u8; 1 << 20];
    for input in inputs {
        let files = if input.is_dir() {
            files_under(input)?
        } else {
            vec![input.to_path_buf()]
        };
        for f in files {
            let mut file = File::open(&f)?;
            while file.read(&mut buf)? > 0 {}
        }
    }
    Ok(())
}

fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn number(values: &BTreeMap<String, String>, key: &str) -> BenchResult<u64> {
    Ok(values
        .get(key)
        .ok_or_else(|| format!("the child did not report `{key}`"))?
        .parse()?)
}

/// The timed phases, in table order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum P {
    BackupLocal,
    BackupTar,
    BackupS3,
    ResticFirst,
    ResticSecond,
    RestoreTmpfs,
    RestoreTmpfsBase,
    RestoreDisk,
    RestoreDiskBase,
    RestoreS3Tmpfs,
}

impl P {
    const ALL: [P; 10] = [
        P::BackupLocal,
        P::BackupTar,
        P::BackupS3,
        P::ResticFirst,
        P::ResticSecond,
        P::RestoreTmpfs,
        P::RestoreTmpfsBase,
        P::RestoreDisk,
        P::RestoreDiskBase,
        P::RestoreS3Tmpfs,
    ];

    fn name(self) -> &'static str {
        match self {
            P::BackupLocal => "backup  Girofle -> local store",
            P::BackupTar => "backup  tar | zstd -3 -T0",
            P::BackupS3 => "backup  Girofle -> S3 (loopback)",
            P::ResticFirst => "backup  restic, fresh repository",
            P::ResticSecond => "backup  restic, after 1% changed",
            P::RestoreTmpfs => "restore Girofle local -> tmpfs",
            P::RestoreTmpfsBase => "restore zstd -d | tar -x -> tmpfs",
            P::RestoreDisk => "restore Girofle local -> disk",
            P::RestoreDiskBase => "restore zstd -d | tar -x -> disk",
            P::RestoreS3Tmpfs => "restore Girofle S3 -> tmpfs",
        }
    }

    /// The ratio shown on this row: (numerator, denominator, label).
    fn ratio(self) -> Option<(P, P, &'static str)> {
        match self {
            P::BackupLocal => Some((P::BackupLocal, P::BackupTar, "Girofle/tar|zstd")),
            P::BackupS3 => Some((P::BackupS3, P::BackupLocal, "S3/local")),
            P::ResticFirst => Some((P::BackupLocal, P::ResticFirst, "Girofle/restic")),
            P::ResticSecond => Some((P::BackupLocal, P::ResticSecond, "Girofle/restic")),
            P::RestoreTmpfs => Some((P::RestoreTmpfs, P::RestoreTmpfsBase, "Girofle/zstd|tar")),
            P::RestoreDisk => Some((P::RestoreDisk, P::RestoreDiskBase, "Girofle/zstd|tar")),
            P::RestoreS3Tmpfs => Some((P::RestoreS3Tmpfs, P::RestoreTmpfs, "S3/local")),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Phase {
    secs: Vec<f64>,
    /// Highest VmHWM over the rounds, KiB (Girofle phases only).
    hwm_kib: Option<u64>,
}

/// Every regular file under `dir`, sorted.
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rewrites 1% of the files (every 100th, shifted by `round`) with new bytes of the same
/// size, so the tree keeps its totals.
fn change_one_percent(files: &[PathBuf], round: u64) -> io::Result<usize> {
    let mut rng = Rng::new(SEED ^ round.wrapping_mul(0x9e37_79b9));
    let mut n = 0;
    let start = usize::try_from(round).unwrap_or(0) % 100;
    for p in files.iter().skip(start).step_by(100) {
        let len = usize::try_from(fs::metadata(p)?.len()).unwrap_or(0);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        fs::write(p, &data)?;
        n += 1;
    }
    Ok(n)
}

fn bench_size(base: &Path, mib: u64, opts: &Options) -> BenchResult<(String, u64)> {
    let dir = base.join(format!("{mib}mib"));
    fs::create_dir_all(&dir)?;
    let (src, stats) = ensure_tree(&dir, mib)?;
    let rounds = opts.rounds;
    let store = dir.join("store");
    let s3_spec = format!("s3:bench-{}-{mib}", std::process::id());
    let baseline = dir.join("baseline.tar.zst");
    let restore_g = dir.join("restore-girofle");
    let restore_b = dir.join("restore-baseline");
    let restic_repo = dir.join("restic-repo");
    let exe = std::env::current_exe()?;
    let mut phases: BTreeMap<P, Phase> = BTreeMap::new();
    let mut girofle_size = 0;
    let mut index_size = 0;
    let mut fsync_secs = 0.0;
    let mut changed = 0;
    let files = if opts.restic {
        files_under(&src)?
    } else {
        Vec::new()
    };
    let check_backup = |out: &BTreeMap<String, String>| -> BenchResult<()> {
        let archived = (
            number(out, "files")?,
            number(out, "dirs")?,
            number(out, "bytes")?,
        );
        if archived != (stats.files, stats.dirs, stats.bytes) {
            return Err(format!("the archive holds {out:?}, the tree {stats:?}").into());
        }
        Ok(())
    };
    let check_restore = |out: &BTreeMap<String, String>| -> BenchResult<()> {
        if number(out, "bytes")? != stats.bytes {
            return Err(format!("the restore wrote {out:?}, the tree {stats:?}").into());
        }
        Ok(())
    };
    let mut record = |p: P, secs: f64, out: Option<&BTreeMap<String, String>>| -> BenchResult<()> {
        let ph = phases.entry(p).or_default();
        ph.secs.push(secs);
        if let Some(out) = out {
            ph.hwm_kib = ph.hwm_kib.max(Some(number(out, "vmhwm_kib")?));
        }
        Ok(())
    };

    for round in 1..=rounds {
        let mut line = format!("{mib} MiB round {round}/{rounds}:");
        // Girofle and its baseline take turns going first, so that neither always runs in
        // the wake of the other (writeback, evicted pages, a warmer CPU cache).
        let order = if round % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        let (mut g_secs, mut b_secs) = (0.0, 0.0);
        for girofle in order {
            if girofle {
                remove(&store)?;
                settle(&[&src])?;
                let (secs, out) = child(
                    &exe,
                    &["backup".as_ref(), src.as_os_str(), store.as_os_str()],
                )?;
                check_backup(&out)?;
                girofle_size = number(&out, "archive_size")?;
                index_size = number(&out, "index_size")?;
                record(P::BackupLocal, secs, Some(&out))?;
                g_secs = secs;
            } else {
                remove(&baseline)?;
                settle(&[&src])?;
                let secs = shell(
                    r#"tar -cf - -C "$1" config data logs | zstd -3 -T0 -q > "$2""#,
                    &[&src, &baseline],
                )?;
                record(P::BackupTar, secs, None)?;
                b_secs = secs;
            }
        }
        let _ = write!(line, " backup {g_secs:.2} s vs {b_secs:.2} s");
        if round == 1 {
            // Girofle's local store fsyncs its archive before publishing it; the baseline
            // does not. How long that would take the baseline, for reading the ratio.
            let t = Instant::now();
            File::open(&baseline)?.sync_all()?;
            fsync_secs = t.elapsed().as_secs_f64();
        }

        if opts.s3 {
            settle(&[&src])?;
            let (secs, out) = child(
                &exe,
                &["backup".as_ref(), src.as_os_str(), s3_spec.as_ref()],
            )?;
            check_backup(&out)?;
            record(P::BackupS3, secs, Some(&out))?;
            let _ = write!(line, ", S3 {secs:.2} s");
        }

        // The restores read the archive Girofle wrote into `store` and the baseline's.
        let targets = [
            opts.tmpfs.as_ref().map(|t| {
                (
                    t.join("restore-girofle"),
                    t.join("restore-baseline"),
                    P::RestoreTmpfs,
                    P::RestoreTmpfsBase,
                    "tmpfs",
                )
            }),
            opts.disk.then(|| {
                (
                    restore_g.clone(),
                    restore_b.clone(),
                    P::RestoreDisk,
                    P::RestoreDiskBase,
                    "disk",
                )
            }),
        ];
        for (g, b, g_phase, b_phase, label) in targets.into_iter().flatten() {
            for girofle in order {
                if girofle {
                    remove(&g)?;
                    settle(&[&store])?;
                    let (secs, out) = child(
                        &exe,
                        &["restore".as_ref(), store.as_os_str(), g.as_os_str()],
                    )?;
                    check_restore(&out)?;
                    record(g_phase, secs, Some(&out))?;
                    remove(&g)?;
                    g_secs = secs;
                } else {
                    remove(&b)?;
                    fs::create_dir_all(&b)?;
                    settle(&[&baseline])?;
                    let secs = shell(r#"zstd -d -q < "$1" | tar -xf - -C "$2""#, &[&baseline, &b])?;
                    record(b_phase, secs, None)?;
                    remove(&b)?;
                    b_secs = secs;
                }
            }
            let _ = write!(line, "; restore {label} {g_secs:.2} s vs {b_secs:.2} s");
        }

        if opts.s3 {
            if let Some(tmp) = &opts.tmpfs {
                let g = tmp.join("restore-girofle-s3");
                remove(&g)?;
                settle(&[])?;
                let (secs, out) =
                    child(&exe, &["restore".as_ref(), s3_spec.as_ref(), g.as_os_str()])?;
                check_restore(&out)?;
                record(P::RestoreS3Tmpfs, secs, Some(&out))?;
                remove(&g)?;
                let _ = write!(line, "; restore S3 {secs:.2} s");
            }
        }

        if opts.restic {
            remove(&restic_repo)?;
            shell(r#"restic -r "$1" init -q"#, &[&restic_repo])?;
            settle(&[&src])?;
            let secs = shell(
                r#"cd "$2" && restic -r "$1" backup -q config data logs"#,
                &[&restic_repo, &src],
            )?;
            record(P::ResticFirst, secs, None)?;
            let _ = write!(line, "; restic {secs:.2} s");
            changed = change_one_percent(&files, round)?;
            settle(&[&src])?;
            let secs = shell(
                r#"cd "$2" && restic -r "$1" backup -q config data logs"#,
                &[&restic_repo, &src],
            )?;
            record(P::ResticSecond, secs, None)?;
            let _ = write!(line, ", then {secs:.2} s");
            remove(&restic_repo)?;
        }
        eprintln!("{line}");
    }
    let baseline_size = fs::metadata(&baseline)?.len();
    for p in [&restore_g, &restore_b, &store, &baseline] {
        remove(p)?;
    }
    if opts.s3 {
        child(&exe, &["clean".as_ref(), s3_spec.as_ref()])?;
    }

    let mut t = String::new();
    let _ = writeln!(
        t,
        "\ntree {mib} MiB: {} bytes in {} files ({} loose objects of 1-8 KiB, {} packs) and {} dirs; median of {rounds} round(s)",
        stats.bytes, stats.files, stats.loose, stats.packs, stats.dirs
    );
    let _ = writeln!(
        t,
        "{:<36} {:>8} {:>9} {:>8} {:>7} {:<17} {:>13}",
        "phase", "MB/s", "files/s", "seconds", "ratio", "(ratio of)", "peak RSS MiB"
    );
    let med = |p: P| phases.get(&p).map_or(f64::NAN, |ph| median(&ph.secs));
    let mut peak = 0;
    for p in P::ALL {
        let Some(ph) = phases.get(&p) else { continue };
        let secs = med(p);
        let (ratio, of) = match p.ratio() {
            Some((a, b, label)) if phases.contains_key(&a) && phases.contains_key(&b) => {
                (format!("{:.2}x", med(a) / med(b)), label)
            }
            _ => ("-".to_string(), ""),
        };
        let rss = ph
            .hwm_kib
            .map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        peak = peak.max(ph.hwm_kib.unwrap_or(0));
        let _ = writeln!(
            t,
            "{:<36} {:>8.1} {:>9.0} {:>8.2} {ratio:>7} {of:<17} {rss:>13}",
            p.name(),
            stats.bytes as f64 / 1e6 / secs,
            stats.files as f64 / secs,
            secs,
        );
    }
    let _ = writeln!(
        t,
        "rounds (s): {}",
        P::ALL
            .iter()
            .filter_map(|p| phases.get(p).map(|ph| (p, ph)))
            .map(|(p, ph)| format!(
                "{}: {}",
                p.name().split_whitespace().collect::<Vec<_>>().join(" "),
                ph.secs
                    .iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        t,
        "archive: Girofle {:.1} MiB (+ index {:.1} MiB), baseline {:.1} MiB ({:.1}% and {:.1}% of the tree); fsync of the baseline's archive alone: {fsync_secs:.2} s (Girofle's time includes its own)",
        girofle_size as f64 / MIB as f64,
        index_size as f64 / MIB as f64,
        baseline_size as f64 / MIB as f64,
        100.0 * girofle_size as f64 / stats.bytes as f64,
        100.0 * baseline_size as f64 / stats.bytes as f64,
    );
    if opts.restic {
        let _ = writeln!(
            t,
            "restic's second run follows a rewrite of {changed} files (1%, same sizes)"
        );
    }
    Ok((t, peak))
}
