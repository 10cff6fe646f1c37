//! Notifications (issue 5): a JSON document POSTed to `[notify] webhook_url` for each
//! failed backup, copy, restore or scheduled run (and for successes with `on_success`).
//!
//! Responsible for the document (which never holds a secret: the error text is scrubbed
//! of credentials and known secret values, the webhook URL is never echoed) and for a
//! minimal HTTP/1.1 client on a tokio `TcpStream`, so no TLS stack is pulled in: only
//! `http://` URLs are supported for now. It does not decide when an operation ended:
//! `Girofle::journaled` calls [`after_operation`] once per operation, and a notification
//! that cannot be delivered is logged to stderr, never failing the operation.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
/// `InvalidInput` when no webhook is configured or its URL is not `http://`, `Backend`
/// when it cannot be reached in `[notify] timeout_secs` or answers anything but 2xx.
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

/// A minimal HTTP/1.1 POST of a JSON body; `Connection: close`, status line checked.
///
/// # Errors
/// As [`send`].
pub async fn post_json(url: &str, body: &[u8], timeout: Duration) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid("notify.webhook_url", format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(Error::invalid(
                "notify.webhook_url",
                "only http:// webhooks are supported for now (no TLS client is built in); use a local relay on http://127.0.0.1 or an http endpoint",
            ))
        }
        other => {
            return Err(Error::invalid(
                "notify.webhook_url",
                format!("scheme `{other}` is not supported; use http://"),
            ))
        }
    }
    let what = describe(&parsed);
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid("notify.webhook_url", "the URL has no host"))?
        .to_string();
    let port = parsed.port().unwrap_or(80);
    let mut target = parsed.path().to_string();
    if let Some(q) = parsed.query() {
        target.push('?');
        target.push_str(q);
    }
    let host_header = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let exchange = async {
        let mut stream = TcpStream::connect((connect_host.as_str(), port))
            .await
            .map_err(|e| Error::backend(&what, format!("cannot connect: {e}")))?;
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: girofle/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            crate::VERSION,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| Error::backend(&what, format!("cannot send: {e}")))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| Error::backend(&what, format!("cannot send: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| Error::backend(&what, format!("cannot send: {e}")))?;
        // Only the status line matters; read until its end (bounded).
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !answer.contains(&b'\n') && answer.len() < 8192 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| Error::backend(&what, format!("no answer: {e}")))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&answer);
        let line = line.lines().next().unwrap_or("");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::backend(&what, "it did not answer with an HTTP status line"))?;
        if (200..300).contains(&status) {
            Ok(())
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
    async fn https_is_refused_clearly() {
        let e = post_json("https://example.invalid/x", b"{}", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "invalid_input");
        assert!(e.to_string().contains("only http://"), "{e}");
    }

    #[tokio::test]
    async fn posts_and_checks_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            for status in [204, 500] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut data = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    data.extend_from_slice(&buf[..n]);
                    if n == 0 || data.ends_with(b"}") {
                        break;
                    }
                }
                got.push(String::from_utf8_lossy(&data).into_owned());
                s.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            got
        });
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
        assert!(
            got[0].starts_with("POST /hook?t=1 HTTP/1.1\r\n"),
            "{}",
            got[0]
        );
        assert!(got[0].contains("Content-Length: 7"));
    }
}
