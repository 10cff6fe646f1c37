//! `girofle daemon`

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use girofle_core::daemon::DaemonOptions;
use girofle_core::schedule::RunRecord;
use girofle_core::Result;

use crate::output::print;
use crate::schedule::run_line;
use crate::Ctx;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Milliseconds between looks for due work (default: [schedule] tick_ms, 1000).
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Seconds a stop (SIGTERM, SIGINT) lets running jobs finish before they are marked
    /// interrupted (default: [schedule] stop_grace_secs, 300).
    #[arg(long)]
    stop_grace_secs: Option<u64>,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9531
    /// (default: [metrics] listen; none: not served).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One log line per event on stdout (JSON lines with --json): systemd's journal or a
/// redirect keeps them.
fn log(json: bool, event: &str, run: &RunRecord) {
    let line = if json {
        serde_json::json!({ "time": now(), "event": event, "run": run }).to_string()
    } else if event == "start" {
        format!(
            "{} start {} {} (slot {}, run {})",
            now(),
            run.instance,
            run.kind,
            run.slot.format("%Y-%m-%dT%H:%M:%SZ"),
            run.id
        )
    } else {
        format!("{} end {}", now(), run_line(run))
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub async fn run(ctx: &Ctx, args: DaemonArgs) -> Result<()> {
    let g = ctx.open().await?;
    let json = ctx.json;
    let options = DaemonOptions {
        tick: args.tick_ms.map(Duration::from_millis),
        stop_grace: args.stop_grace_secs.map(Duration::from_secs),
        metrics_addr: args.metrics_addr,
        on_run_start: Some(Arc::new(move |r: &RunRecord| log(json, "start", r))),
        on_run_end: Some(Arc::new(move |r: &RunRecord| log(json, "end", r))),
        on_error: Some(Arc::new(|e: &girofle_core::Error| {
            eprintln!("{} girofle daemon: {e}", now());
        })),
        ..Default::default()
    };
    if !json {
        println!(
            "{} girofle daemon on {} (pid {}): SIGTERM or SIGINT stops it",
            now(),
            ctx.root.display(),
            std::process::id()
        );
    }
    let report = g.run_daemon(options).await?;
    print(ctx, &report, || {
        format!(
            "{} stopped: {} runs ({} failed), {} interrupted at the stop, {} found interrupted",
            now(),
            report.runs,
            report.failed,
            report.interrupted.len(),
            report.recovered
        )
    });
    Ok(())
}
