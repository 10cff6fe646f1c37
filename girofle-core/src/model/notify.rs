//! Notifications (issue 5): a JSON document POSTed to `[notify] webhook_url` for each
//! failed backup, copy, restore or scheduled run (and for successes with `on_success`).
//!
//! Responsible for the document (which never holds a secret: the error text is scrubbed
//! of credentials and known secret values, the webhook URL is never echoed) and for its
//! delivery with reqwest over `http://` or `https://` (rustls, the system's trust store;
//! `SSL_CERT_FILE` points it at another bundle). It does not decide when an operation ended:
//! `Girofle::journaled` calls [`after_operation`] once per operation, and a notification
//! that cannot be delivered is logged to stderr, never failing the operation.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
pub use crate::model::config::NotifyConfig;
use crate::model::journal::{self, Record};

/// The operations whose outcome is notified.
pub const NOTIFIED_OPERATIONS: &[&str] = &[
    "backup",
    "backup-copy",
    "restore",
    "schedule-run",
    "scheduled-backup",
    "scheduled-copy",
];

tokio::task_local! {
    /// Whether an operation nested in the current one already sent a notification (a
    /// scheduled backup's own `backup`): the outer one then stays quiet, so one failed
    /// run gives one document.
    static SENT: Cell<bool>;
}

tokio::task_local! {
    /// The id of the backup the current operation made (set by the backup itself, or
    /// passed up from a nested one): a backup's arguments cannot hold it, since it is
    /// chosen while it runs, and a scheduled run's document must carry it too.
    static MADE: RefCell<Option<String>>;
}

/// What the operations nested in one told it.
#[derive(Debug, Default)]
pub(crate) struct Nested {
    /// A nested operation already sent a notification.
    pub sent: bool,
    /// The id of the backup made.
    pub backup_id: Option<String>,
}

/// Runs an operation's future, telling whether a nested operation sent a notification
/// and which backup was made (also passed up to the enclosing operation, if any: a
/// scheduled run learns the id of the backup it made).
pub(crate) async fn scoped<F: Future>(op: F) -> (F::Output, Nested) {
    let (out, nested) = SENT
        .scope(Cell::new(false), async move {
            MADE.scope(RefCell::new(None), async move {
                let out = op.await;
                let nested = Nested {
                    sent: SENT.with(Cell::get),
                    backup_id: MADE.with(|m| m.borrow().clone()),
                };
                (out, nested)
            })
            .await
        })
        .await;
    if let Some(id) = &nested.backup_id {
        made_backup(id);
    }
    (out, nested)
}

/// Records that the current operation made backup `id` (for its notification).
pub(crate) fn made_backup(id: &str) {
    let _ = MADE.try_with(|m| *m.borrow_mut() = Some(id.to_string()));
}

/// Called by `Girofle::journaled` once an operation has ended (with its record before
/// redaction): sends the document when the operation is one that is notified, and logs a
/// failed delivery to stderr.
pub(crate) async fn after_operation(
    config: &NotifyConfig,
    secrets: &[String],
    record: &Record,
    nested: Nested,
) {
    let nested_sent = nested.sent;
    let wanted = config.webhook_url.is_some()
        && NOTIFIED_OPERATIONS.contains(&record.operation.as_str())
        && (record.outcome != "ok" || config.on_success)
        && !nested_sent;
    if wanted {
        let doc = document(record, nested.backup_id.as_deref(), secrets);
        if let Err(e) = send(config, secrets, &doc).await {
            eprintln!(
                "girofle: warning: the {} notification of `{}` was not delivered: {e}",
                record.outcome, record.operation
            );
        }
    }
    if wanted || nested_sent {
        let _ = SENT.try_with(|s| s.set(true));
    }
}

/// The document sent for an operation: no arguments beyond the instance, backup id and
/// store names, and an error message scrubbed of secrets. `made` is the id of the backup
/// the operation made, if any (its arguments hold the id of a backup it only read).
pub fn document(record: &Record, made: Option<&str>, secrets: &[String]) -> Value {
    let args = &record.arguments;
    let backup_id = args
        .get("id")
        .and_then(Value::as_str)
        .or(made)
        .map(str::to_string);
    let instance = args
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            backup_id
                .as_deref()
                .and_then(|id| id.split_once('/'))
                .map(|(n, _)| n.to_string())
        });
    let store = ["store", "to"]
        .iter()
        .find_map(|k| args.get(*k).and_then(Value::as_str))
        .map(str::to_string);
    let failed = record.outcome != "ok";
    json!({
        "source": "girofle",
        "event": if failed { "operation_failed" } else { "operation_succeeded" },
        "operation": record.operation,
        "outcome": record.outcome,
        "instance": instance,
        "backup_id": backup_id,
        "store": store,
        "error_kind": record.error_kind,
        "error": record.error.as_deref().map(|e| journal::scrub_known(e, secrets)),
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "time": chrono::Utc::now(),
        "host": record.host,
        "user": record.user,
        "girofle_version": record.girofle_version,
    })
}

/// POSTs `event` as JSON to `[notify] webhook_url` and waits for a 2xx answer.
///
/// # Errors
/// `InvalidInput` when no webhook is configured or its URL is not `http://` or
/// `https://`, `Backend` when it cannot be reached in `[notify] timeout_secs`, its
/// certificate is not trusted, or it answers anything but 2xx (a redirect included).
pub async fn send(config: &NotifyConfig, secrets: &[String], event: &Value) -> Result<()> {
    let url = config.webhook_url.as_deref().ok_or_else(|| {
        Error::invalid(
            "notify.webhook_url",
            "no webhook is configured; add [notify] webhook_url to girofle.toml",
        )
    })?;
    let mut body = serde_json::to_vec(event).map_err(|e| Error::backend("webhook", e))?;
    // Belt and braces: whatever the caller built, no known secret leaves the host.
    let text = String::from_utf8_lossy(&body).into_owned();
    let scrubbed = journal::scrub_known(&text, secrets);
    if scrubbed != text {
        body = scrubbed.into_bytes();
    }
    post_json(url, &body, Duration::from_secs(config.timeout_secs)).await
}

/// Where a webhook URL points, for messages (never the path or query: they often hold a
/// token).
fn describe(url: &url::Url) -> String {
    format!(
        "webhook {}:{}",
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(80)
    )
}

/// Why a request failed, in the words of its causes ("tcp connect error: Connection
/// refused", "invalid peer certificate: UnknownIssuer"): reqwest's own message names the
/// URL, and hyper's "client error (Connect)" adds nothing to ours.
fn failure(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !text.starts_with("client error (") && !causes.iter().any(|c: &String| c.contains(&text))
        {
            causes.push(text);
        }
        source = s.source();
    }
    let mut text = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    if text.contains("certificate") {
        text.push_str(
            "; add the webhook's CA to the system's trust store (or point SSL_CERT_FILE at a bundle holding it)",
        );
    }
    text
}

/// POSTs a JSON body over HTTP/1.1, `http://` or `https://` (rustls, the system's trust
/// store or `SSL_CERT_FILE`); `Connection: close`, no proxy, no redirect followed (a 3xx
/// is a failed delivery: a webhook that moved must be configured anew), and the whole
/// exchange, connection included, bounded by `timeout`.
///
/// # Errors
/// As [`send`].
pub async fn post_json(url: &str, body: &[u8], timeout: Duration) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid("notify.webhook_url", format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(Error::invalid(
                "notify.webhook_url",
                format!("scheme `{other}` is not supported; use http:// or https://"),
            ))
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("notify.webhook_url", "the URL has no host"));
    }
    let what = describe(&parsed);
    let client = reqwest::Client::builder()
        .user_agent(format!("girofle/{}", crate::VERSION))
        .redirect(reqwest::redirect::Policy::none())
        // As before TLS came: the webhook is reached directly, whatever HTTP(S)_PROXY says.
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        // The trust store is read (each time: a renewed CA is picked up) only when needed.
        .tls_built_in_root_certs(parsed.scheme() == "https")
        .timeout(timeout)
        .build()
        .map_err(|e| {
            Error::backend(
                &what,
                format!("cannot set up the HTTP client: {}", failure(e)),
            )
        })?;
    let exchange = async {
        let answer = client
            .post(parsed.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONNECTION, "close")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    Error::backend(&what, format!("no answer within {timeout:?}"))
                } else {
                    let step = if e.is_connect() {
                        "cannot connect"
                    } else {
                        "no answer"
                    };
                    Error::backend(&what, format!("{step}: {}", failure(e)))
                }
            })?;
        let status = answer.status().as_u16();
        if answer.status().is_success() {
            Ok(())
        } else if answer.status().is_redirection() {
            Err(Error::backend(
                &what,
                format!(
                    "it answered HTTP {status}, a redirect, which is not followed; set [notify] webhook_url to the address it points to"
                ),
            ))
        } else {
            Err(Error::backend(
                &what,
                format!("it answered HTTP {status}; check the receiver"),
            ))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::backend(&what, format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::sync::Arc;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

    fn record(outcome: &str, error: Option<&str>) -> Record {
        Record {
            operation: "backup-copy".into(),
            arguments: json!({ "id": "web/20261125T220000Z", "to": "offsite" }),
            user: "root".into(),
            host: "h".into(),
            pid: 1,
            girofle_version: crate::VERSION.into(),
            versions: json!({}),
            started_at: Utc::now(),
            ended_at: Utc::now(),
            outcome: outcome.into(),
            error_kind: error.map(|_| "backend".into()),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn documents_name_the_instance_and_hold_no_secret() {
        let r = record(
            "error",
            Some("s3://key:pw-12345@bucket refused secret s3cr3t-value"),
        );
        let doc = document(&r, None, &["s3cr3t-value".to_string()]);
        let text = doc.to_string();
        assert_eq!(doc["instance"], "web");
        assert_eq!(doc["backup_id"], "web/20261125T220000Z");
        assert_eq!(doc["store"], "offsite");
        assert_eq!(doc["event"], "operation_failed");
        assert!(
            !text.contains("s3cr3t-value") && !text.contains("pw-12345"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_backup_made_reaches_the_enclosing_operations() {
        let (id, outer) = scoped(async {
            let ((), inner) = scoped(async { made_backup("web/20261125T220000Z") }).await;
            inner.backup_id
        })
        .await;
        assert_eq!(id.as_deref(), Some("web/20261125T220000Z"));
        assert_eq!(outer.backup_id.as_deref(), Some("web/20261125T220000Z"));
        let (_, quiet) = scoped(async {}).await;
        assert_eq!(quiet.backup_id, None);
        // Outside any operation it is a no-op.
        made_backup("web/20261125T220000Z");
        let doc = document(&record("ok", None), Some("other/20261125T220000Z"), &[]);
        assert_eq!(
            doc["backup_id"], "web/20261125T220000Z",
            "a read backup's id wins"
        );
        let mut r = record("ok", None);
        r.operation = "backup".into();
        r.arguments = json!({ "name": "web", "store": null });
        let doc = document(&r, Some("web/20261125T230000Z"), &[]);
        assert_eq!(doc["backup_id"], "web/20261125T230000Z");
        assert_eq!(doc["instance"], "web");
    }

    #[tokio::test]
    async fn other_schemes_are_refused_clearly() {
        let e = post_json("ftp://127.0.0.1/x", b"{}", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "invalid_input");
        assert!(e.to_string().contains("use http:// or https://"), "{e}");
    }

    /// A loopback receiver: answers each connection with the next of `answers` (a status
    /// line and headers) after reading one request; yields what it read.
    async fn receiver(answers: Vec<String>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                got.push(read_request(&mut s).await);
                s.write_all(answer.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            }
            got
        });
        (port, server)
    }

    /// Reads one request (head and a Content-Length body).
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
            if n == 0 {
                return text;
            }
        }
    }

    #[tokio::test]
    async fn posts_and_checks_the_status() {
        let (port, server) = receiver(vec![
            "HTTP/1.1 204 X\r\nContent-Length: 0\r\n\r\n".into(),
            "HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n".into(),
        ])
        .await;
        let url = format!("http://127.0.0.1:{port}/hook?t=1");
        post_json(&url, br#"{"a":1}"#, Duration::from_secs(5))
            .await
            .unwrap();
        let e = post_json(&url, br#"{"a":2}"#, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("HTTP 500") && !e.to_string().contains("t=1"),
            "{e}"
        );
        let got = server.await.unwrap();
        let head = got[0].to_ascii_lowercase();
        assert!(head.starts_with("post /hook?t=1 http/1.1\r\n"), "{head}");
        for h in [
            "content-type: application/json\r\n",
            "content-length: 7\r\n",
            "connection: close\r\n",
            &format!("user-agent: girofle/{}\r\n", crate::VERSION),
            &format!("host: 127.0.0.1:{port}\r\n"),
        ] {
            assert!(head.contains(h), "{h} missing: {head}");
        }
        assert!(got[0].ends_with("\r\n\r\n{\"a\":1}"), "{}", got[0]);
    }

    #[tokio::test]
    async fn redirects_are_refused() {
        // Where the redirect points: it must never be asked anything.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = elsewhere.local_addr().unwrap().port();
        let (port, server) = receiver(vec![format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{target}/moved\r\nContent-Length: 0\r\n\r\n"
        )])
        .await;
        let url = format!("http://127.0.0.1:{port}/hook?token=abc");
        let e = post_json(&url, b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "backend");
        let text = e.to_string();
        assert!(
            text.contains("HTTP 307") && text.contains("not followed"),
            "{text}"
        );
        assert!(!text.contains("token") && !text.contains("moved"), "{text}");
        assert_eq!(server.await.unwrap().len(), 1);
        let asked = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
        assert!(asked.is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let e = post_json(
            &format!("http://127.0.0.1:{port}/hook"),
            b"{}",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().contains("no answer within 1s"), "{e}");
        hold.abort();
    }

    /// Set by [`delivers_over_https_to_a_ca_named_by_ssl_cert_file`] for its child.
    const CHILD_URL: &str = "GIROFLE_TEST_HTTPS_WEBHOOK";

    /// The child half of [`delivers_over_https_to_a_ca_named_by_ssl_cert_file`], run in a
    /// process of its own with `SSL_CERT_FILE` set (setting it in this process would
    /// race with the other tests' threads). Run alone, it has nothing to do.
    #[tokio::test]
    #[ignore = "run by delivers_over_https_to_a_ca_named_by_ssl_cert_file"]
    async fn https_child() {
        let Ok(url) = std::env::var(CHILD_URL) else {
            return;
        };
        post_json(&url, br#"{"over":"tls"}"#, Duration::from_secs(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn delivers_over_https_to_a_ca_named_by_ssl_cert_file() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

        // A CA made here, and the receiver's certificate for 127.0.0.1 signed by it.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // First this process, which does not trust the CA: the handshake fails.
            let (s, _) = listener.accept().await.unwrap();
            assert!(acceptor.accept(s).await.is_err());
            // Then the child, which does.
            let (s, _) = listener.accept().await.unwrap();
            let mut s = acceptor.accept(s).await.unwrap();
            let request = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = s.shutdown().await;
            request
        });
        let url = format!("https://127.0.0.1:{port}/hooks/girofle?token=abc");

        let e = post_json(&url, b"{}", Duration::from_secs(10))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cannot connect")
                && text.contains("certificate")
                && text.contains("SSL_CERT_FILE")
                && !text.contains("token"),
            "{text}"
        );

        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                // This module's path without the crate's name: the test's own name.
                &format!(
                    "{}::https_child",
                    module_path!().split_once("::").unwrap().1
                ),
                "--exact",
                "--include-ignored",
                "--nocapture",
            ])
            .env(CHILD_URL, &url)
            .env("SSL_CERT_FILE", &ca_file)
            .env_remove("SSL_CERT_DIR")
            .output()
            .await
            .unwrap();
        assert!(
            child.status.success(),
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        // A child that ran no test would leave the receiver waiting: bounded.
        let request = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the child process delivered nothing over https")
            .unwrap();
        assert!(
            request.starts_with("POST /hooks/girofle?token=abc HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.ends_with(r#"{"over":"tls"}"#), "{request}");
    }
}
