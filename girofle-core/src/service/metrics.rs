//! Metrics in the Prometheus text exposition format (R-STAND-2): per instance its health
//! and the freshness, duration and size of its newest backup in each store, the last
//! failure, the lag of remote copies; per store the bytes used.
//!
//! Responsible for rendering ([`render`]), serving `GET /metrics` over a minimal HTTP/1.1
//! server on a tokio `TcpListener` ([`serve`]; `girofle daemon` runs it when `[metrics]
//! listen` is set) and writing a node-exporter textfile ([`write_textfile`]). Metrics hold
//! names, states and numbers only: never a URL, a secret or an error text. Gathering the
//! facts is `status`'s job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::adapters::store::LOCAL_STORE_NAME;
use crate::error::{Error, Result};
pub use crate::model::config::MetricsConfig;
use crate::model::context::Context;
use crate::model::journal::Record;
use crate::ops::fleet::InstanceState;

/// Where `girofle metrics serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9531";

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: &[InstanceState] = &[
    InstanceState::Running,
    InstanceState::Starting,
    InstanceState::Unhealthy,
    InstanceState::Stopped,
    InstanceState::Missing,
    InstanceState::Unknown,
    InstanceState::Commissioning,
];

/// One metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

/// Escapes a label value (backslash, double quote, new line).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The newest failure time of backups per (instance, store), from the journal: failed
/// `backup` operations (their store, `local` by default) and failed `backup-copy`
/// operations (their destination). Lines that do not parse are skipped.
fn last_failures(g: &Context) -> BTreeMap<(String, String), DateTime<Utc>> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(g.journal.path()) else {
        return out;
    };
    for line in text.lines() {
        // Cheap filter first: most lines are successes.
        if !line.contains("\"outcome\":\"error\"") {
            continue;
        }
        let Ok(r) = serde_json::from_str::<Record>(line) else {
            continue;
        };
        let args = &r.arguments;
        let str_of = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
        let key = match r.operation.as_str() {
            "backup" => str_of("name").map(|n| {
                (
                    n,
                    str_of("store").unwrap_or_else(|| LOCAL_STORE_NAME.to_string()),
                )
            }),
            "backup-copy" => str_of("id").and_then(|id| {
                let name = id.split_once('/')?.0.to_string();
                Some((name, str_of("to")?))
            }),
            _ => None,
        };
        if let Some(k) = key {
            let e = out.entry(k).or_insert(r.ended_at);
            if r.ended_at > *e {
                *e = r.ended_at;
            }
        }
    }
    out
}

/// The metrics of a root in the Prometheus text exposition format. A store or an engine
/// that cannot be reached shows as `girofle_store_up 0` / `girofle_engine_up 0`; the
/// series it would have given are absent.
///
/// # Errors
/// `Backend` when the inventory cannot be read.
pub async fn render(g: &Context) -> Result<String> {
    let facts = g.facts().await?;
    let failures = last_failures(g);
    let now = facts.now;
    let mut out = String::with_capacity(4096);

    let mut f = Family::new(
        &mut out,
        "girofle_engine_up",
        "gauge",
        "Whether the Docker engine answered (1) or not (0).",
    );
    f.sample(
        "girofle_engine_up",
        &[],
        f64::from(u8::from(facts.engine_reachable)),
    );

    let known: Vec<_> = facts
        .instances
        .iter()
        .filter(|i| i.created_at.is_some())
        .collect();
    let mut f = Family::new(
        &mut out,
        "girofle_instance_up",
        "gauge",
        "Whether the instance is running and healthy (1) or not (0).",
    );
    for i in &known {
        let up = i.state == Some(InstanceState::Running);
        f.sample(
            "girofle_instance_up",
            &[("instance_name", &i.name)],
            f64::from(u8::from(up)),
        );
    }
    let mut f = Family::new(
        &mut out,
        "girofle_instance_health",
        "gauge",
        "The instance's state: 1 for the current one, 0 for the others.",
    );
    for i in &known {
        for s in STATES {
            let state = s.to_string();
            f.sample(
                "girofle_instance_health",
                &[("instance_name", &i.name), ("state", &state)],
                f64::from(u8::from(i.state == Some(*s))),
            );
        }
    }

    // The newest backup of each instance in each reachable store, with its manifest's
    // duration (one read per instance and store).
    let mut newest = Vec::new();
    for s in &facts.stores {
        for i in &known {
            if let Some(b) = s.newest(&i.name) {
                let duration = g
                    .manifest(&b.id, Some(&s.name))
                    .await
                    .ok()
                    .map(|m| m.duration_ms as f64 / 1000.0);
                newest.push((i.name.clone(), s.name.clone(), b.clone(), duration));
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "girofle_backup_last_success_timestamp_seconds",
        "gauge",
        "When the newest valid backup of the instance in the store was taken (Unix time).",
    );
    for (i, s, b, _) in &newest {
        f.sample(
            "girofle_backup_last_success_timestamp_seconds",
            &[("instance_name", i), ("store", s)],
            seconds(b.created_at),
        );
    }
    let mut f = Family::new(
        &mut out,
        "girofle_backup_last_duration_seconds",
        "gauge",
        "How long the newest valid backup of the instance in the store took.",
    );
    for (i, s, _, d) in &newest {
        if let Some(d) = d {
            f.sample(
                "girofle_backup_last_duration_seconds",
                &[("instance_name", i), ("store", s)],
                *d,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "girofle_backup_last_size_bytes",
        "gauge",
        "Archive size of the newest valid backup of the instance in the store.",
    );
    for (i, s, b, _) in &newest {
        f.sample(
            "girofle_backup_last_size_bytes",
            &[("instance_name", i), ("store", s)],
            b.archive_size as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "girofle_backup_last_failure_timestamp_seconds",
        "gauge",
        "When a backup (or a copy) of the instance into the store last failed (Unix time).",
    );
    for ((i, s), t) in &failures {
        if known.iter().any(|k| &k.name == i) {
            f.sample(
                "girofle_backup_last_failure_timestamp_seconds",
                &[("instance_name", i), ("store", s)],
                seconds(*t),
            );
        }
    }
    let local = facts.stores.iter().find(|s| s.name == LOCAL_STORE_NAME);
    let mut f = Family::new(
        &mut out,
        "girofle_backup_copy_lag_seconds",
        "gauge",
        "Newest local backup time minus newest backup time in the remote store (0: up to date, +Inf: nothing copied yet).",
    );
    for s in facts.stores.iter().filter(|s| s.name != LOCAL_STORE_NAME) {
        if s.backups.is_none() {
            continue;
        }
        for i in &known {
            let Some(l) = local.and_then(|l| l.newest(&i.name)) else {
                continue;
            };
            let lag = match s.newest(&i.name) {
                Some(r) => {
                    ((l.created_at - r.created_at).num_milliseconds() as f64 / 1000.0).max(0.0)
                }
                None => f64::INFINITY,
            };
            f.sample(
                "girofle_backup_copy_lag_seconds",
                &[("instance_name", &i.name), ("store", &s.name)],
                lag,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "girofle_store_up",
        "gauge",
        "Whether the store could be listed (1) or not (0).",
    );
    for s in &facts.stores {
        f.sample(
            "girofle_store_up",
            &[("store", &s.name)],
            f64::from(u8::from(s.backups.is_some())),
        );
    }
    let mut f = Family::new(
        &mut out,
        "girofle_store_used_bytes",
        "gauge",
        "Bytes of every object in the store.",
    );
    for s in &facts.stores {
        if let Some(b) = s.used_bytes {
            f.sample("girofle_store_used_bytes", &[("store", &s.name)], b as f64);
        }
    }
    let mut f = Family::new(
        &mut out,
        "girofle_store_backups",
        "gauge",
        "Valid backups listed in the store.",
    );
    for s in &facts.stores {
        if let Some(b) = &s.backups {
            f.sample(
                "girofle_store_backups",
                &[("store", &s.name)],
                b.len() as f64,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "girofle_metrics_generated_timestamp_seconds",
        "gauge",
        "When these metrics were gathered (Unix time).",
    );
    f.sample(
        "girofle_metrics_generated_timestamp_seconds",
        &[],
        seconds(now),
    );
    Ok(out)
}

/// Writes the metrics to `path` for node-exporter's textfile collector: a temporary file
/// beside it (hidden, so the collector ignores it), then a rename, so the collector never
/// reads half a file. Mode 0644: the collector often runs as another user.
///
/// # Errors
/// As [`render`], and `Io` when the file cannot be written.
pub async fn write_textfile(g: &Context, path: &Path) -> Result<()> {
    let text = render(g).await?;
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
}

/// Binds the metrics address.
///
/// # Errors
/// `Conflict` when the address is in use, `Backend` for other failures.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::Conflict(format!(
                "metrics address {addr} is already in use; pick another with --listen or [metrics] listen"
            ))
        } else {
            Error::backend("metrics server", format!("cannot listen on {addr}: {e}"))
        }
    })
}

/// Serves `GET /metrics` on `addr` until the future is dropped.
///
/// # Errors
/// As [`bind`]; then it only returns when accepting connections fails for good.
pub async fn serve(g: Context, addr: SocketAddr) -> Result<()> {
    let listener = bind(addr).await?;
    serve_on(g, listener).await
}

/// How long a rendering is reused: scrapes arriving together share one reading of the
/// engine and stores.
const CACHE_FOR: Duration = Duration::from_millis(900);
/// A client that does not send its request within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REQUEST: usize = 16 * 1024;

type Cache = Arc<Mutex<Option<(Instant, Arc<String>)>>>;

/// Serves `GET /metrics` on a bound listener (see [`serve`]).
///
/// # Errors
/// `Backend` when accepting connections fails repeatedly.
pub async fn serve_on(g: Context, listener: TcpListener) -> Result<()> {
    let cache: Cache = Arc::new(Mutex::new(None));
    let mut failures = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                let g = g.clone();
                let cache = cache.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &g, &cache).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, give up after a while.
                failures += 1;
                if failures > 100 {
                    return Err(Error::backend("metrics server", format!("accept: {e}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn cached_render(g: &Context, cache: &Cache) -> Result<Arc<String>> {
    let mut slot = cache.lock().await;
    if let Some((at, text)) = slot.as_ref() {
        if at.elapsed() < CACHE_FOR {
            return Ok(text.clone());
        }
    }
    let text = Arc::new(render(g).await?);
    *slot = Some((Instant::now(), text.clone()));
    Ok(text)
}

/// The request line of an HTTP request: method and path (query dropped).
pub fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

async fn handle(mut stream: TcpStream, g: &Context, cache: &Cache) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST {
                break;
            }
        }
        std::io::Result::Ok(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let (status, content_type, body, head_only) = match parse_request_line(&text) {
        None => (
            "400 Bad Request",
            "text/plain",
            Arc::new("bad request\n".to_string()),
            false,
        ),
        Some((method, "/metrics")) if method == "GET" || method == "HEAD" => {
            match cached_render(g, cache).await {
                Ok(text) => ("200 OK", CONTENT_TYPE, text, method == "HEAD"),
                Err(e) => {
                    eprintln!(
                        "girofle: metrics: {}",
                        crate::model::journal::scrub_known(&e.to_string(), &g.known_secrets())
                    );
                    (
                        "500 Internal Server Error",
                        "text/plain",
                        Arc::new("girofle could not gather its metrics; see its log\n".to_string()),
                        false,
                    )
                }
            }
        }
        Some((_, "/metrics")) => (
            "405 Method Not Allowed",
            "text/plain",
            Arc::new("use GET\n".to_string()),
            false,
        ),
        Some(_) => (
            "404 Not Found",
            "text/plain",
            Arc::new("not found; metrics are at /metrics\n".to_string()),
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_request_line("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line("GET /metrics\r\n"), None);
        assert_eq!(parse_request_line("garbage"), None);
    }

    #[test]
    fn values_and_labels_are_valid_exposition() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1.5), "1.500");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x_total", "counter", "X.");
        f.sample("x_total", &[("a", "1"), ("b", "q\"")], 2.0);
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"\"} 2\n"
        );
    }
}
