//! Printing: text for people, JSON with --json, a progress line on terminals only.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use girofle_core::warning::{Front, Warning};
use girofle_core::Error;
use serde::Serialize;

use crate::Ctx;

/// Prints `value` as JSON with --json, else the text from `text`.
pub fn print<T: Serialize>(ctx: &Ctx, value: &T, text: impl FnOnce() -> String) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        );
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{t}");
        }
    }
}

/// Prints each of core's warnings on stderr, as `girofle: warning: <text>`.
pub fn warn(warnings: &[Warning]) {
    for w in warnings {
        eprintln!("girofle: warning: {}", w.text(Front::Cli));
    }
}

/// Prints the error (one line of reason first, details after) and returns the exit code.
pub fn fail(ctx: &Ctx, e: &Error) -> ExitCode {
    if ctx.json {
        let doc = serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string() } });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    eprintln!("girofle: error: {e}");
    ExitCode::from(e.error_kind().exit_code())
}

/// Runs `work`, showing `message` with elapsed seconds on a terminal while it runs.
pub async fn with_spinner<T>(message: &str, work: impl Future<Output = T>) -> T {
    let tty = std::io::stderr().is_terminal();
    if !tty {
        return work.await;
    }
    let start = Instant::now();
    tokio::pin!(work);
    let frames = ['|', '/', '-', '\\'];
    let mut i = 0usize;
    loop {
        tokio::select! {
            out = &mut work => {
                eprint!("\r\x1b[2K");
                let _ = std::io::stderr().flush();
                return out;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                eprint!("\r\x1b[2K{} {message} ({}s)", frames[i % 4], start.elapsed().as_secs());
                let _ = std::io::stderr().flush();
                i += 1;
            }
        }
    }
}

/// A progress callback printing files, MB and MB/s on a terminal (none otherwise).
pub fn progress_printer(verb: &'static str) -> Option<girofle_core::backup::ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let start = Instant::now();
    Some(std::sync::Arc::new(
        move |p: girofle_core::archive::Progress| {
            let secs = start.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r\x1b[2K{verb}: {} files, {:.1} MB, {:.1} MB/s",
                p.files,
                p.bytes as f64 / 1e6,
                p.bytes as f64 / 1e6 / secs
            );
            let _ = std::io::stderr().flush();
        },
    ))
}
