//! Metrics in the Prometheus text exposition format (R-STAND-2): per instance its health
//! and the freshness, duration and size of its newest backup in each store, the last
//! failure, the lag of remote copies; per store the bytes used.
//!
//! Responsible for rendering ([`render`]), serving `GET /metrics` with hyper's HTTP/1.1
//! server on a tokio `TcpListener` ([`serve`]; `girofle daemon` runs it when `[metrics]
//! listen` is set) and writing a node-exporter textfile ([`write_textfile`]). Metrics hold
//! names, states and numbers only: never a URL, a secret or an error text. Gathering the
//! facts is `status`'s job.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
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
/// A client that does not send its request head within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (hyper answers 431 beyond it).
const MAX_REQUEST: usize = 16 * 1024;

type Cache = Arc<Mutex<Option<(Instant, Bytes)>>>;
/// What produces the exposition text (the root's [`render`], or a test's).
type Renderer = Arc<dyn Fn() -> BoxFuture<'static, Result<String>> + Send + Sync>;

/// Serves `GET /metrics` on a bound listener (see [`serve`]).
///
/// # Errors
/// `Backend` when accepting connections fails repeatedly.
pub async fn serve_on(g: Context, listener: TcpListener) -> Result<()> {
    let secrets = g.known_secrets();
    let renderer: Renderer = Arc::new(move || {
        let g = g.clone();
        Box::pin(async move { render(&g).await })
    });
    serve_with(listener, renderer, secrets).await
}

/// The HTTP side of [`serve_on`]: hyper's HTTP/1.1 server, one connection per request
/// (`Connection: close`, as Prometheus copes with either).
async fn serve_with(listener: TcpListener, renderer: Renderer, secrets: Vec<String>) -> Result<()> {
    let cache: Cache = Arc::new(Mutex::new(None));
    let secrets: Arc<[String]> = secrets.into();
    let mut failures = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                let (renderer, cache, secrets) = (renderer.clone(), cache.clone(), secrets.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (renderer, cache, secrets) =
                        (renderer.clone(), cache.clone(), secrets.clone());
                    async move {
                        Ok::<_, Infallible>(respond(&request, &renderer, &cache, &secrets).await)
                    }
                });
                tokio::spawn(async move {
                    // A client that stalls or sends garbage only loses its own connection.
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(REQUEST_TIMEOUT)
                        .max_buf_size(MAX_REQUEST)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
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

async fn cached_render(renderer: &Renderer, cache: &Cache) -> Result<Bytes> {
    let mut slot = cache.lock().await;
    if let Some((at, text)) = slot.as_ref() {
        if at.elapsed() < CACHE_FOR {
            return Ok(text.clone());
        }
    }
    let text = Bytes::from(renderer().await?);
    *slot = Some((Instant::now(), text.clone()));
    Ok(text)
}

/// The answer to one request: the metrics for `GET`/`HEAD /metrics` (query ignored; hyper
/// leaves the body out for `HEAD`), 405 for other methods there, 404 elsewhere, 500 when
/// they cannot be gathered (the reason goes to stderr, scrubbed, never to the client).
async fn respond(
    request: &Request<Incoming>,
    renderer: &Renderer,
    cache: &Cache,
    secrets: &[String],
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match cached_render(renderer, cache).await {
        Ok(text) => answer(StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => {
            eprintln!(
                "girofle: metrics: {}",
                crate::journal::scrub_known(&e.to_string(), secrets)
            );
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "girofle could not gather its metrics; see its log\n",
            )
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    answer(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One raw request on a fresh connection; the whole answer (the server closes).
    async fn exchange(port: u16, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn head_of(answer: &str) -> (String, String) {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn the_endpoint_answers_as_prometheus_expects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fail.clone();
        let renderer: Renderer = Arc::new(move || {
            let fail = f.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    Err(Error::backend("store", "refused by s3cr3t-value"))
                } else {
                    Ok("girofle_engine_up 1\n".to_string())
                }
            })
        });
        let server = tokio::spawn(serve_with(
            listener,
            renderer,
            vec!["s3cr3t-value".to_string()],
        ));

        let (head, body) =
            head_of(&exchange(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(head.contains("content-length: 20") && head.contains("connection: close"));
        assert_eq!(body, "girofle_engine_up 1\n");

        let (head, body) =
            head_of(&exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("content-length: 20"), "{head}");
        assert_eq!(body, "");

        let (head, body) = head_of(
            &exchange(
                port,
                "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            )
            .await,
        );
        assert!(
            head.starts_with("http/1.1 405 method not allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("allow: get, head"), "{head}");
        assert_eq!(body, "use GET\n");

        let (head, body) = head_of(&exchange(port, "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n").await);
        assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
        assert!(head.contains("content-type: text/plain\r\n"), "{head}");
        assert_eq!(body, "not found; metrics are at /metrics\n");

        let answer = exchange(port, "garbage\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

        // Past the cache's life, a failure: 500, and the reason stays on this side.
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(CACHE_FOR).await;
        let (head, body) =
            head_of(&exchange(port, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await);
        assert!(
            head.starts_with("http/1.1 500 internal server error\r\n"),
            "{head}"
        );
        assert_eq!(body, "girofle could not gather its metrics; see its log\n");
        server.abort();
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
