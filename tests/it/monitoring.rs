//! Watching the fleet (R-STAND-2), on the real Docker engine, the stand-in GitLab image,
//! the local S3 server and a real Prometheus: the metrics endpoint is scraped and the
//! backup age is queryable, the textfile parses and holds no secret, a webhook receives
//! exactly one document per failed backup and none for successes, and `girofle status`
//! shows the backup ages.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use girofle_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A child process killed (and reaped) when dropped, even after a failed assertion.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks the Prometheus text exposition format line by line; returns the samples as
/// (name, labels, value).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: `{line}`", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(&at);
            assert!(is_metric_name(name) && !help.is_empty(), "{at}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(is_metric_name(name), "{at}");
            assert!(
                ["gauge", "counter", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(typed.insert(name.to_string()), "TYPE given twice, {at}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.trim().is_empty(), "{at}");
        let name_end = line.find(['{', ' ']).expect(&at);
        let name = &line[..name_end];
        assert!(is_metric_name(name), "{at}");
        assert!(typed.contains(name), "sample before its TYPE, {at}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = r.find("=\"").expect(&at);
                let key = &r[..eq];
                assert!(
                    is_metric_name(key) && !key.contains(':') && key != "instance",
                    "bad or reserved label, {at}"
                );
                let mut value = String::new();
                let mut chars = r[eq + 2..].char_indices();
                let end = loop {
                    match chars.next().expect(&at) {
                        (_, '\\') => match chars.next().expect(&at).1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            _ => panic!("bad escape, {at}"),
                        },
                        (i, '"') => break eq + 2 + i + 1,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                r = &r[end..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
        }
        let value = rest.strip_prefix(' ').expect(&at);
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().expect(&at),
        };
        samples.push((name.to_string(), labels, v));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}

/// A webhook receiver on loopback: every POSTed body arrives on the channel.
async fn webhook_receiver() -> (u16, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body[..len].to_string();
                        }
                    }
                };
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                if let Ok(v) = serde_json::from_str(&body) {
                    let _ = tx.send(v);
                }
            });
        }
    });
    (port, rx)
}

/// The documents received within `wait`.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Value>, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(v)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(v);
    }
    out
}

fn prometheus_query(port: u16, query: &str) -> Option<Vec<Value>> {
    let url = url::Url::parse_with_params("http://x/api/v1/query", &[("query", query)]).unwrap();
    let target = format!("{}?{}", url.path(), url.query().unwrap());
    let (status, body) = http_get(port, &target).ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?.clone();
    (!result.is_empty()).then_some(result)
}

fn start_prometheus(dir: &Path, target_port: u16) -> (Killed, u16) {
    let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: girofle\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{bin}` ({e}): install Debian's `prometheus` package (scripts/test does: apt-get install prometheus)")
        });
    (Killed(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_backup_freshness_and_failures_reach_the_webhook() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let prefix = unique("mon");
    let offsite = s3_store(&prefix);
    let real_secret = offsite.secret_access_key.clone().unwrap();
    let (hook_port, mut hook) = webhook_receiver().await;
    t.edit_config(|c| {
        c.stores.insert("offsite".into(), offsite.clone());
        c.notify.webhook_url = Some(format!("http://127.0.0.1:{hook_port}/hooks/girofle"));
    });
    let g = t.open().await;
    let name = commission(&g, "mon").await.name;
    let report = g.backup(&name, online(None)).await.expect("backup");
    g.copy_backup(&report.id, None, "offsite")
        .await
        .expect("copy to S3");
    let quiet = drain(&mut hook, Duration::from_secs(1)).await;
    assert!(quiet.is_empty(), "successes were notified: {quiet:?}");

    // The endpoint, served by the daemon (as a child process).
    let metrics_port = free_port();
    let server = t
        .girofle()
        .args(["daemon", "--metrics-addr"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Killed(server);
    let body = wait_for("the metrics endpoint", Duration::from_secs(30), || {
        http_get(metrics_port, "/metrics")
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    });
    let samples = parse_exposition(&body);
    assert_eq!(
        sample(&samples, "girofle_instance_up", &[("instance_name", &name)]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &samples,
            "girofle_backup_copy_lag_seconds",
            &[("instance_name", &name), ("store", "offsite")]
        ),
        Some(0.0),
        "{body}"
    );
    assert_eq!(http_get(metrics_port, "/nope").unwrap().0, 404);

    // A real Prometheus scrapes it every second.
    let prom_dir = t.dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let (_prometheus, prom_port) = start_prometheus(&prom_dir, metrics_port);
    let age_query = format!(
        "time() - girofle_backup_last_success_timestamp_seconds{{instance_name=\"{name}\",store=\"local\"}}"
    );
    let result = wait_for(
        "Prometheus to scrape the backup age",
        Duration::from_secs(90),
        || prometheus_query(prom_port, &age_query),
    );
    let age: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.0..600.0).contains(&age), "backup age {age} s");
    let up = wait_for(
        "girofle_instance_up in Prometheus",
        Duration::from_secs(30),
        || {
            prometheus_query(
                prom_port,
                &format!("girofle_instance_up{{instance_name=\"{name}\"}}"),
            )
        },
    );
    assert_eq!(up[0]["value"][1], "1");

    // SIGTERM stops the server cleanly.
    let pid = server.0.id().to_string();
    run(Command::new("kill").args(["-TERM", &pid]));
    let stopped = wait_for("the daemon to stop", Duration::from_secs(20), || {
        server.0.try_wait().unwrap()
    });
    assert!(stopped.success(), "the daemon exited with {stopped:?}");

    // Failures: a store with a wrong secret; each failed backup or copy sends exactly one
    // document, without the secret.
    let wrong_secret = "wrong-secret-planted-0123456789".to_string();
    let mut broken = s3_store(&prefix);
    broken.secret_access_key = Some(wrong_secret.clone());
    t.edit_config(|c| {
        c.stores.insert("broken".into(), broken);
    });
    let out = t.cli(&["backup", "create", &name, "--store", "broken"]);
    assert!(
        !out.status.success(),
        "a backup to a store with a wrong secret succeeded"
    );
    let docs = drain(&mut hook, Duration::from_secs(3)).await;
    assert_eq!(docs.len(), 1, "one failed backup, one document: {docs:?}");
    let doc = &docs[0];
    assert_eq!(doc["operation"], "backup");
    assert_eq!(doc["instance"], name.as_str());
    assert_eq!(doc["event"], "operation_failed");
    assert!(
        doc["error_kind"].is_string() && doc["error"].is_string(),
        "{doc}"
    );
    assert!(doc["time"].is_string() && doc["host"].is_string(), "{doc}");
    let out = t.cli(&["backup", "copy", &report.id, "--to", "broken"]);
    assert!(!out.status.success());
    let docs2 = drain(&mut hook, Duration::from_secs(3)).await;
    assert_eq!(docs2.len(), 1, "one failed copy, one document: {docs2:?}");
    assert_eq!(docs2[0]["operation"], "backup-copy");
    assert_eq!(docs2[0]["backup_id"], report.id.as_str());
    // An online backup of a stopped instance fails too.
    g.stop(&name).await.unwrap();
    let out = t.cli(&["backup", "create", &name]);
    assert_eq!(out.status.code(), Some(4));
    let docs3 = drain(&mut hook, Duration::from_secs(3)).await;
    assert_eq!(docs3.len(), 1, "{docs3:?}");
    assert_eq!(docs3[0]["error_kind"], "conflict");
    for d in docs.iter().chain(&docs2).chain(&docs3) {
        let text = d.to_string();
        assert!(
            !text.contains(&wrong_secret) && !text.contains(&real_secret),
            "a secret reached the webhook: {text}"
        );
    }
    // A success stays quiet.
    let out = t.cli(&["backup", "create", &name, "--strategy", "cold"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let none = drain(&mut hook, Duration::from_secs(2)).await;
    assert!(none.is_empty(), "a success was notified: {none:?}");

    // The textfile: valid exposition, no secret, no URL; the failures and the broken
    // store show.
    let textfile = t.dir.path().join("textfile").join("girofle.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let out = t.cli(&["metrics", "--textfile", textfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        !text.contains(&real_secret) && !text.contains(&wrong_secret),
        "a secret reached the metrics"
    );
    assert!(!text.contains("://"), "a URL reached the metrics:\n{text}");
    let samples = parse_exposition(&text);
    // Stopped above (a cold backup leaves a stopped instance stopped).
    assert_eq!(
        sample(&samples, "girofle_instance_up", &[("instance_name", &name)]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &samples,
            "girofle_instance_health",
            &[("instance_name", &name), ("state", "stopped")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "girofle_store_up", &[("store", "broken")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "girofle_store_up", &[("store", "offsite")]),
        Some(1.0)
    );
    assert!(sample(&samples, "girofle_store_used_bytes", &[("store", "local")]).unwrap() > 0.0);
    assert!(
        sample(
            &samples,
            "girofle_backup_last_failure_timestamp_seconds",
            &[("instance_name", &name), ("store", "broken")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        sample(
            &samples,
            "girofle_backup_last_size_bytes",
            &[("instance_name", &name), ("store", "offsite")]
        )
        .unwrap()
            > 0.0
    );
    assert!(
        sample(
            &samples,
            "girofle_backup_copy_lag_seconds",
            &[("instance_name", &name), ("store", "offsite")]
        )
        .unwrap()
            > 0.0,
        "the cold backup is not copied yet: the copy lags"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&textfile).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(
        mode, 0o644,
        "node-exporter must be able to read the textfile"
    );

    // The status, as JSON.
    let out = t.cli(&["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let inst = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name.as_str())
        .expect("the instance in status");
    assert_eq!(inst["state"], "stopped");
    let age_of = |store: &str| {
        inst["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["store"] == store)
            .and_then(|b| b["age_secs"].as_i64())
    };
    assert!(age_of("local").unwrap() < 600, "{inst}");
    assert!(age_of("offsite").unwrap() < 600, "{inst}");
    assert_eq!(inst["overdue"], false, "{inst}");
    let text = t.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&name) && !text.contains("\x1b["),
        "no colours off a terminal:\n{text}"
    );
}

/// With `[notify] on_success = true`, the document of a successful backup carries the id
/// of the backup it made (it was null: a backup's arguments cannot hold an id chosen
/// while it runs), by hand and from a scheduled run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_backup_notifies_the_id_it_made() {
    let image = stand_in("17.5.1");
    let t = TestRoot::new(&image);
    let (hook_port, mut hook) = webhook_receiver().await;
    t.edit_config(|c| {
        c.notify.webhook_url = Some(format!("http://127.0.0.1:{hook_port}/hooks/girofle"));
        c.notify.on_success = true;
    });
    let g = t.open().await;
    let name = commission(&g, "okid").await.name;
    let out = t.cli(&["--json", "backup", "create", &name]);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{e}");
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let docs = drain(&mut hook, Duration::from_secs(3)).await;
    assert_eq!(docs.len(), 1, "one backup, one document: {docs:?}");
    assert_eq!(docs[0]["operation"], "backup");
    assert_eq!(docs[0]["event"], "operation_succeeded");
    assert_eq!(docs[0]["instance"], name.as_str());
    assert_eq!(docs[0]["backup_id"], made["id"], "{}", docs[0]);

    // A scheduled run: one document, with the id of the backup the run made.
    let out = t.cli(&[
        "schedule",
        "set",
        &name,
        "--backup",
        "*/2 * * * * *",
        "--copy",
        "off",
    ]);
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = t.cli(&["schedule", "run-due"]);
    assert!(out.status.success(), "{out:?}");
    let docs = drain(&mut hook, Duration::from_secs(3)).await;
    let ids: Vec<String> = g
        .list_backups(Some(&name), None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .filter(|id| made["id"] != id.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "the scheduled run made one backup: {ids:?}");
    assert_eq!(docs.len(), 1, "one run, one document: {docs:?}");
    assert_eq!(docs[0]["event"], "operation_succeeded");
    assert_eq!(docs[0]["backup_id"], ids[0].as_str(), "{}", docs[0]);
}
