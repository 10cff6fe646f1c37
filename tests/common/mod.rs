//! Shared helpers of Girofle's integration tests (the one test binary, tests/it/): a
//! throw-away Girofle root with its own port range whose containers are removed even when
//! a test fails, the stand-in GitLab image, the `girofle` binary and the checks of what it
//! printed, stores, git helpers; in modules of their own, the engines' sharing
//! ([`engine`]), the etcd clusters ([`etcd`]), the remote engines of scripts/remote-docker
//! ([`remote`]), the daemon handle ([`Daemon`]), the seeded generator ([`Rng`]) and
//! bounded waits ([`wait_for`], [`poll`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use girofle_core::backup::{BackupOptions, Strategy};
use girofle_core::config::Config;
use girofle_core::store::StoreConfig;
use girofle_core::{Girofle, OpenOptions};

mod daemon;
pub mod engine;
pub mod etcd;
pub mod remote;
mod rng;
mod wait;

pub use daemon::Daemon;
pub use rng::Rng;
pub use wait::{poll, wait_for};

/// Where the stand-in images live: `GIROFLE_TEST_IMAGE_PREFIX` (as for
/// `tests/gitlab-stand-in/build`, so that two checkouts can test side by side without
/// rebuilding each other's images), `girofle-test` by default.
pub fn image_prefix() -> String {
    std::env::var("GIROFLE_TEST_IMAGE_PREFIX").unwrap_or_else(|_| "girofle-test".into())
}

/// The stand-in image of a GitLab version, or a failure saying how to build it.
pub fn stand_in(version: &str) -> String {
    let image = format!("{}/gitlab-ce:{version}-ce.0", image_prefix());
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the stand-in image {image} is missing (or `docker` is not running): build it with `tests/gitlab-stand-in/build` (scripts/test does)"
    );
    image
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name for an instance of this test run.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{:x}{n}", (nanos ^ std::process::id()) % 0xfffff)
}

/// A Girofle root in a temporary directory, with a port range of its own; its containers
/// are removed when it is dropped, even after a failed assertion. It holds a share of the
/// engines while it lives (see [`engine`]).
#[derive(Debug)]
pub struct TestRoot {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ports: (u16, u16),
    /// The engine this root uses (`None`: the default one).
    pub docker_host: Option<String>,
    /// Released after the containers are removed (fields drop after `drop`).
    _engine: engine::EngineGuard,
}

impl TestRoot {
    /// A fresh initialised root using `image` as the default image.
    pub fn new(image: &str) -> TestRoot {
        Self::on_engine(image, None)
    }

    /// A fresh root whose instances run on the engine at `docker_host`.
    pub fn on_engine(image: &str, docker_host: Option<String>) -> TestRoot {
        Self::holding(engine::shared(), image, docker_host)
    }

    /// A fresh root on the engine at `docker_host`, holding the engines as `engine`
    /// says (a test that has them [`engine::alone`] passes its guard).
    pub fn holding(
        engine: engine::EngineGuard,
        image: &str,
        docker_host: Option<String>,
    ) -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("girofle-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        Girofle::init(&root).unwrap();
        // Every test runs in the one test binary, in parallel: a range per root from an
        // in-process counter keeps parallel tests off each other's ports.
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = 30000 + ((std::process::id() * 7 + n * 13) % 900) as u16 * 32;
        let ports = (base, base + 31);
        let mut config = Config::load(&root).unwrap();
        config.network.ports = vec![format!("{}-{}", ports.0, ports.1)];
        config.instances.image = image.to_string();
        config.instances.health_timeout_secs = 120;
        config.instances.stop_grace_secs = 10;
        config.docker.host = docker_host.clone();
        config.save(&root).unwrap();
        TestRoot {
            dir,
            root,
            ports,
            docker_host,
            _engine: engine,
        }
    }

    /// Girofle opened on this root.
    pub async fn open(&self) -> Girofle {
        Girofle::open(&self.root, OpenOptions::default())
            .await
            .unwrap()
    }

    /// The `girofle` command on this root, to add arguments to, spawn or run.
    pub fn girofle(&self) -> Command {
        girofle(&self.root)
    }

    /// Runs the `girofle` binary on this root.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_on(&self.root, args)
    }

    /// Edits girofle.toml.
    pub fn edit_config(&self, f: impl FnOnce(&mut Config)) {
        let mut c = Config::load(&self.root).unwrap();
        f(&mut c);
        c.save(&self.root).unwrap();
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        remove_containers_of(&self.root, self.docker_host.as_deref());
    }
}

/// `docker` talking to `host` (default engine when `None`).
pub fn docker(host: Option<&str>) -> Command {
    let mut c = Command::new("docker");
    if let Some(h) = host {
        c.args(["-H", h]);
    }
    c
}

/// Removes every container Girofle created for `root` on the engine at `host`.
pub fn remove_containers_of(root: &Path, host: Option<&str>) {
    let out = docker(host)
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=io.girofle.root={}", root.display()))
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = docker(host).args(["rm", "-f"]).args(&ids).output();
        }
    }
}

/// The `girofle` binary built by `cargo build` (scripts/test builds it first).
pub fn girofle_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GIROFLE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("girofle");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p girofle-cli` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs a command, failing the test with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `girofle` command on `root` (any root, not only a [`TestRoot`]).
pub fn girofle(root: &Path) -> Command {
    let mut c = Command::new(girofle_bin());
    c.arg("--root").arg(root);
    c
}

/// Runs the `girofle` binary on `root` (any root, not only a [`TestRoot`]).
pub fn cli_on(root: &Path, args: &[&str]) -> Output {
    girofle(root).args(args).output().unwrap()
}

/// What a run printed on stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a run printed on stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A run's exit code and both streams, for a failure message.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// The stdout of a `girofle` run that must have succeeded.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "girofle failed ({:?}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The JSON a run printed on stdout, whether or not it succeeded; fails the test when
/// it is not JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// The JSON of a run of `what` that must have succeeded.
pub fn json_ok(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", stdout(out)))
}

/// The names in a directory, sorted (none when it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A git command in `dir` with a fixed identity. A transfer that stalls for 30 s fails
/// instead of hanging the test run.
pub fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=30"])
        .env("GIT_AUTHOR_NAME", "Girofle Test")
        .env("GIT_AUTHOR_EMAIL", "test@girofle.invalid")
        .env("GIT_COMMITTER_NAME", "Girofle Test")
        .env("GIT_COMMITTER_EMAIL", "test@girofle.invalid")
        .env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// Root's password on instance `name` of `root`: GitLab made it up at the first boot and
/// wrote it to `/etc/gitlab/initial_root_password` (the host side is the instance's
/// `config/` directory) when no `initial_root_password` was given. It stays root's
/// password when the file goes (after 24 hours, or on a host that lost it); a restore
/// brings back the password of the instance the backup came from.
pub fn root_password(root: &Path, name: &str) -> String {
    let file = root
        .join("instances")
        .join(name)
        .join("config/initial_root_password");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): was `{name}` given an initial_root_password?",
            file.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix("Password: "))
        .unwrap_or_else(|| panic!("no `Password:` line in {}: {text}", file.display()))
        .trim()
        .to_string()
}

/// The clone URL of `project` (`team/app.git`) on the GitLab at `external_url`, with
/// root's credentials: git over HTTP needs an authenticated user, and every project is
/// private. The password is percent-encoded (GitLab's random ones hold `+`, `/`, `=`).
pub fn project_url(external_url: &str, password: &str, project: &str) -> String {
    let (scheme, rest) = external_url
        .split_once("://")
        .unwrap_or_else(|| panic!("not a URL: {external_url}"));
    let mut encoded = String::new();
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "{scheme}://root:{encoded}@{}/{project}",
        rest.trim_end_matches('/')
    )
}

/// Creates a repository with `commits` commits, a branch and a tag, and pushes everything
/// to `url` (with credentials: see [`project_url`]). Returns `git ls-remote` of the result.
pub fn push_project(work: &Path, url: &str, commits: usize) -> String {
    std::fs::create_dir_all(work).unwrap();
    run(git(work).args(["init", "-q", "-b", "main"]));
    for i in 0..commits {
        std::fs::write(
            work.join(format!("file{i}.txt")),
            format!("content {i}\n").repeat(100),
        )
        .unwrap();
        run(git(work).args(["add", "."]));
        run(git(work).args(["commit", "-q", "-m", &format!("commit {i}")]));
    }
    run(git(work).args(["branch", "feature"]));
    run(git(work).args(["tag", "v1.0"]));
    push_retrying(work, url, "--all");
    push_retrying(work, url, "--tags");
    ls_remote(url)
}

/// `git push`, tried a second time when the first attempt stalls or fails: pushes are
/// idempotent, and the stand-in's HTTP server once left a push hanging right after a
/// container restart (seen once in ~50 runs). A second failure fails the test.
fn push_retrying(work: &Path, url: &str, what: &str) {
    let first = git(work).args(["push", "-q", url, what]).output().unwrap();
    if !first.status.success() {
        eprintln!(
            "git push {what} to {url} failed once, retrying: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        run(git(work).args(["push", "-q", url, what]));
    }
}

/// `git ls-remote URL`, sorted. Tried a second time when the first attempt stalls or
/// fails, like `push_retrying`: the stand-in's HTTP server has left a request hanging
/// right after a container restart (a clean-clone CI run of 2026-12-03 stalled the final
/// ls-remote of the cold-backup fault test, after 20 trials had passed). A second failure
/// fails the test.
pub fn ls_remote(url: &str) -> String {
    let command = || {
        let mut c = Command::new("git");
        c.args(["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=30"])
            .args(["ls-remote", url])
            .env("GIT_TERMINAL_PROMPT", "0");
        c
    };
    let first = command().output().unwrap();
    let listed = if first.status.success() {
        String::from_utf8_lossy(&first.stdout).into_owned()
    } else {
        eprintln!(
            "git ls-remote {url} failed once, retrying: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        run(&mut command())
    };
    let mut lines: Vec<String> = listed.lines().map(str::to_string).collect();
    lines.sort();
    lines.join("\n")
}

/// Clones `url` into `dest` and runs `git fsck --full --strict`; returns the fsck output.
pub fn clone_and_fsck(url: &str, dest: &Path) -> String {
    let mut c = Command::new("git");
    c.args(["clone", "-q", "--mirror", url])
        .arg(dest)
        .env("GIT_TERMINAL_PROMPT", "0");
    run(&mut c);
    run(git(dest).args(["fsck", "--full", "--strict"]))
}

/// The local S3-compatible test server's coordinates (`scripts/s3-server env`).
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The local S3 server's coordinates, or a failure saying how to start it.
pub fn s3_env() -> S3Env {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: this test needs the local S3 server. Run `scripts/s3-server start` and `eval \"$(scripts/s3-server env)\"` (scripts/test does)"
            )
        })
    };
    S3Env {
        endpoint: var("GIROFLE_TEST_S3_ENDPOINT"),
        bucket: var("GIROFLE_TEST_S3_BUCKET"),
        access_key: var("GIROFLE_TEST_S3_ACCESS_KEY"),
        secret_key: var("GIROFLE_TEST_S3_SECRET_KEY"),
    }
}

/// A store configuration for the local S3-compatible test server, under a prefix of its
/// own; fails with how to start the server when its variables are missing.
pub fn s3_store(prefix: &str) -> StoreConfig {
    let env = s3_env();
    StoreConfig {
        url: format!("s3://{}/{prefix}", env.bucket),
        endpoint: Some(env.endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some(env.access_key),
        secret_access_key: Some(env.secret_key),
        allow_http: Some(true),
        ..Default::default()
    }
}

/// Options of an online backup into `store` (`None`: the local one).
pub fn online(store: Option<&str>) -> BackupOptions {
    BackupOptions {
        strategy: Strategy::Online,
        store: store.map(str::to_string),
        ..Default::default()
    }
}

/// Options of a cold backup into `store` (`None`: the local one).
pub fn cold(store: Option<&str>) -> BackupOptions {
    BackupOptions {
        strategy: Strategy::Cold,
        store: store.map(str::to_string),
        ..Default::default()
    }
}

/// A store configuration for a directory (created when missing), as a `file://` URL.
pub fn file_store(dir: &Path) -> StoreConfig {
    std::fs::create_dir_all(dir).unwrap();
    StoreConfig {
        url: url::Url::from_directory_path(dir).unwrap().to_string(),
        ..Default::default()
    }
}

/// The address of the second Docker engine ("another host"), or a failure saying how to
/// start it.
pub fn second_engine() -> String {
    std::env::var("GIROFLE_TEST_DOCKER2_HOST").unwrap_or_else(|_| {
        panic!(
            "GIROFLE_TEST_DOCKER2_HOST is not set: this test needs a second Docker engine. Run `scripts/second-docker start` and `eval \"$(scripts/second-docker env)\"` (scripts/test does)"
        )
    })
}

/// A loopback port free right now (the system's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (path, uid, gid, mode) of everything under `dir`, sorted: what a restore must keep.
pub fn ownership_snapshot(dir: &Path) -> Vec<(String, u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_socket() {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, meta.uid(), meta.gid(), meta.mode()));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(port: u16, target: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

use std::os::unix::fs::FileTypeExt;

/// A commissioned instance with a project pushed to it.
#[derive(Debug)]
pub struct WithProject {
    pub name: String,
    pub record: girofle_core::instance::InstanceRecord,
    /// Root's password (the one GitLab made up at the first boot).
    pub password: String,
    /// The project's clone URL, with root's credentials.
    pub url: String,
    /// `git ls-remote` right after the push.
    pub refs: String,
}

/// Commissions instance `tag-…` on `g` with the defaults; its record.
pub async fn commission(g: &Girofle, tag: &str) -> girofle_core::instance::InstanceRecord {
    g.commission(girofle_core::CommissionRequest {
        name: unique(tag),
        ..Default::default()
    })
    .await
    .expect("commission")
}

/// Commissions instance `tag-…` on `g` and pushes a project with `commits` commits,
/// a branch and a tag to it (work tree under `t`).
pub async fn commission_with_project(
    g: &Girofle,
    t: &TestRoot,
    tag: &str,
    commits: usize,
) -> WithProject {
    let record = commission(g, tag).await;
    let name = record.name.clone();
    let password = root_password(&t.root, &name);
    let url = project_url(&record.external_url, &password, "team/app.git");
    let refs = push_project(&t.dir.path().join(format!("work-{name}")), &url, commits);
    WithProject {
        name,
        record,
        password,
        url,
        refs,
    }
}
