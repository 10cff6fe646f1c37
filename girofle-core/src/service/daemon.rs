//! `girofle daemon`: one long-lived process that runs the schedules (R-BAK-4).
//!
//! Every tick it claims the due slots (see `schedule`) and runs them in tokio tasks: one
//! run per instance at a time, at most `[schedule] max_concurrent` at once. On SIGTERM or
//! SIGINT it stops claiming and lets running jobs finish within `[schedule]
//! stop_grace_secs`; jobs still running then are cancelled and recorded `interrupted`. A
//! cancelled backup never lists: its manifest, written last, is missing. Runs of a daemon
//! that died (killed, power loss) are marked `interrupted` by the next one to start.
//!
//! The metrics endpoint (`[metrics] listen`, served by `metrics`) and any other side task
//! run beside the loop and stop with it; notifications go out through the journal.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::instance::Stage;
use crate::service::schedule::{Book, Claim, Ended, RunHook, RunKind, RunOutcome, RunRecord};

/// Work that runs beside the daemon's loop (a metrics endpoint): it is cancelled when the
/// daemon stops, and its failure stops the daemon.
pub type SideTask = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// Starts a metrics endpoint for a root on an address.
pub type MetricsServer = Arc<dyn Fn(Context, SocketAddr) -> SideTask + Send + Sync>;

/// A future that resolves when the daemon should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A callback told of errors the daemon survives (the database busy for a tick, a job
/// that could not record its end).
pub type ErrorHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// How to run the daemon. Unset fields come from girofle.toml's `[schedule]`.
#[derive(Default)]
pub struct DaemonOptions {
    /// How often to look for due work (default `[schedule] tick_ms`).
    pub tick: Option<Duration>,
    /// How long a stop waits for running jobs (default `[schedule] stop_grace_secs`).
    pub stop_grace: Option<Duration>,
    /// Where to serve `GET /metrics` (default `[metrics] listen`; none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// What serves metrics there (default [`crate::service::metrics::serve`]).
    pub serve_metrics: Option<MetricsServer>,
    /// More work to run beside the loop.
    pub side_tasks: Vec<SideTask>,
    /// Told of each run as it starts.
    pub on_run_start: Option<RunHook>,
    /// Told of each run as it ends, including runs found interrupted (failure webhooks,
    /// logs).
    pub on_run_end: Option<RunHook>,
    pub on_error: Option<ErrorHook>,
    /// When to stop (default: SIGTERM or SIGINT).
    pub shutdown: Option<Shutdown>,
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("tick", &self.tick)
            .field("stop_grace", &self.stop_grace)
            .field("metrics_addr", &self.metrics_addr)
            .field("serve_metrics", &self.serve_metrics.is_some())
            .field("side_tasks", &self.side_tasks.len())
            .field("on_run_start", &self.on_run_start.is_some())
            .field("on_run_end", &self.on_run_end.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("shutdown", &self.shutdown.is_some())
            .finish()
    }
}

/// What a daemon did, once stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonReport {
    /// Runs of dead processes it marked `interrupted`.
    pub recovered: usize,
    /// Runs it ran to their end (any outcome).
    pub runs: usize,
    /// Of those, how many failed.
    pub failed: usize,
    /// Runs still going when the stop grace ran out, marked `interrupted`.
    pub interrupted: Vec<RunRecord>,
}

/// SIGTERM or SIGINT, whichever comes first.
///
/// # Errors
/// `Backend` when the signal handlers cannot be installed.
pub fn termination_signals() -> Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let err = |e: std::io::Error| Error::backend("signal handler", e);
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }))
}

/// Resolves at the first SIGTERM or SIGINT (a foreground server's stop: `girofle metrics
/// serve`). The handlers are installed when it is first polled; when they cannot be, it
/// never resolves (the process is then stopped the default way, by the signal itself).
pub async fn until_terminated() {
    match termination_signals() {
        Ok(signals) => signals.await,
        Err(_) => std::future::pending::<()>().await,
    }
}

struct Hooks {
    start: Option<RunHook>,
    end: Option<RunHook>,
    error: Option<ErrorHook>,
}

impl Hooks {
    fn ended(&self, report: &mut DaemonReport, run: &RunRecord) {
        if run.outcome == RunOutcome::Failed {
            report.failed += 1;
        }
        if let Some(h) = &self.end {
            h(run);
        }
    }

    fn error(&self, e: &Error) {
        if let Some(h) = &self.error {
            h(e);
        }
    }
}

type Job = (RunRecord, Result<Ended>);

/// Runs the schedules until told to stop (see the module documentation). Journaled as
/// one `daemon` operation when it stops.
///
/// # Errors
/// `Backend` when the database cannot be opened or the signal handlers installed, or what
/// a side task failed with (`Conflict` when the metrics address is in use).
pub async fn run(girofle: Context, options: DaemonOptions) -> Result<DaemonReport> {
    let g = girofle;
    let arguments = json!({
        "tick_ms": options.tick.map(|t| t.as_millis() as u64),
        "stop_grace_secs": options.stop_grace.map(|t| t.as_secs()),
        "metrics_addr": options.metrics_addr,
    });
    g.clone()
        .journaled("daemon", arguments, json!({}), run_inner(g, options))
        .await
}

async fn run_inner(g: Context, mut options: DaemonOptions) -> Result<DaemonReport> {
    // Handlers first: a stop asked for while starting is not lost.
    let mut shutdown = match options.shutdown.take() {
        Some(s) => s,
        None => termination_signals()?,
    };
    let config = g.config().schedule.clone();
    let tick = options
        .tick
        .unwrap_or(Duration::from_millis(config.tick_ms))
        .max(Duration::from_millis(10));
    let grace = options
        .stop_grace
        .unwrap_or(Duration::from_secs(config.stop_grace_secs));
    let hooks = Hooks {
        start: options.on_run_start.take(),
        end: options.on_run_end.take(),
        error: options.on_error.take(),
    };
    let mut side: JoinSet<Result<()>> = JoinSet::new();
    if let Some(addr) = options.metrics_addr.or(g.config().metrics.listen) {
        match options.serve_metrics.take() {
            Some(serve) => side.spawn(serve(g.clone(), addr)),
            None => side.spawn(crate::service::metrics::serve(g.clone(), addr)),
        };
    }
    for task in options.side_tasks.drain(..) {
        side.spawn(task);
    }

    let book = g.schedule_book()?;
    let mut report = DaemonReport::default();
    let recovered = book.recover().await?;
    g.journal_interrupted(&recovered).await;
    for run in recovered {
        report.recovered += 1;
        hooks.ended(&mut report, &run);
    }
    let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
    let mut jobs: JoinSet<Job> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, RunRecord> = HashMap::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failure: Option<Error> = None;

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                if let Err(e) = claim_due_work(&g, &book, &permits, &mut jobs, &mut running, &hooks, &mut report).await {
                    hooks.error(&e);
                }
            }
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                reap(&book, done, &mut running, &hooks, &mut report).await;
            }
            Some(ended) = side.join_next(), if !side.is_empty() => {
                // A side task ending (its port taken, ...) stops the daemon: running
                // without metrics would look healthy while nobody can watch it.
                failure = Some(match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => Error::backend("daemon side task", "it stopped by itself"),
                    Err(e) => Error::backend("daemon side task", e),
                });
                break;
            }
        }
    }

    // Stopping: no new claims; running jobs get the grace period.
    let deadline = tokio::time::Instant::now() + grace;
    while !jobs.is_empty() {
        match tokio::time::timeout_at(deadline, jobs.join_next_with_id()).await {
            Ok(Some(done)) => reap(&book, done, &mut running, &hooks, &mut report).await,
            Ok(None) => break,
            Err(_) => {
                jobs.abort_all();
                while jobs.join_next().await.is_some() {}
                // A cancelled backup may have left GitLab stopped: bring it back now.
                g.recover_pending().await;
                let why = format!(
                    "the daemon was stopped and the run did not finish within the {} s grace",
                    grace.as_secs()
                );
                let interrupted = book.interrupt_own(&why).await?;
                g.journal_interrupted(&interrupted).await;
                for run in interrupted {
                    hooks.ended(&mut report, &run);
                    report.interrupted.push(run);
                }
                break;
            }
        }
    }
    side.abort_all();
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

async fn reap(
    book: &Book,
    done: std::result::Result<(tokio::task::Id, Job), tokio::task::JoinError>,
    running: &mut HashMap<tokio::task::Id, RunRecord>,
    hooks: &Hooks,
    report: &mut DaemonReport,
) {
    match done {
        Ok((id, (_, Ok(ended)))) => {
            running.remove(&id);
            if let Ended::Done(run) = ended {
                report.runs += 1;
                hooks.ended(report, &run);
            }
        }
        Ok((id, (mut run, Err(e)))) => {
            // The end could not be recorded (the database failed): try once more, so the
            // instance is not held by a `running` record of a live daemon.
            running.remove(&id);
            hooks.error(&e);
            run.outcome = RunOutcome::Failed;
            run.ended_at = Some(Utc::now());
            run.error = Some(e.to_string());
            if let Err(e) = book.finish(&run).await {
                hooks.error(&e);
            }
            report.runs += 1;
            hooks.ended(report, &run);
        }
        Err(join) => {
            let e = Error::backend("scheduled job", &join);
            hooks.error(&e);
            if let Some(mut run) = running.remove(&join.id()) {
                run.outcome = RunOutcome::Failed;
                run.ended_at = Some(Utc::now());
                run.error = Some(format!("the job crashed: {join}"));
                if let Err(e) = book.finish(&run).await {
                    hooks.error(&e);
                }
                report.runs += 1;
                hooks.ended(report, &run);
            }
        }
    }
}

async fn claim_due_work(
    g: &Context,
    book: &Book,
    permits: &Arc<Semaphore>,
    jobs: &mut JoinSet<Job>,
    running: &mut HashMap<tokio::task::Id, RunRecord>,
    hooks: &Hooks,
    report: &mut DaemonReport,
) -> Result<()> {
    // Another process (a `run-due`) may have died since the last tick.
    let recovered = book.recover().await?;
    g.journal_interrupted(&recovered).await;
    for run in recovered {
        report.recovered += 1;
        hooks.ended(report, &run);
    }
    // And an operation that died (or a job cancelled) may have left an instance stopped
    // or half-restored: put it right before claiming new work (cheap when nothing did).
    g.recover_pending().await;
    let fleet = g.inventory().load().await?;
    let own = book.all_overrides().await?;
    let default = g.default_schedule();
    let now = Utc::now();
    for record in fleet.instances.values() {
        if record.stage != Stage::Active {
            continue;
        }
        let schedule = own
            .get(&record.name)
            .cloned()
            .unwrap_or_default()
            .apply(&default);
        for kind in [RunKind::Backup, RunKind::Copy] {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // All slots taken: the rest waits for the next tick.
                return Ok(());
            };
            match g.claim_due(book, record, &schedule, kind, now).await {
                Ok(Claim::Claimed(run)) => {
                    if let Some(h) = &hooks.start {
                        h(&run);
                    }
                    let (g, book, schedule, claimed) =
                        (g.clone(), book.clone(), schedule.clone(), run.clone());
                    let handle = jobs.spawn(async move {
                        let _permit = permit;
                        let ended = g.run_claimed(&book, claimed.clone(), &schedule).await;
                        (claimed, ended)
                    });
                    running.insert(handle.id(), run);
                    // One run per instance at a time: its other kind waits.
                    break;
                }
                Ok(Claim::Busy(_)) => break,
                Ok(Claim::NotDue) => {}
                Err(e) => {
                    hooks.error(&e);
                    break;
                }
            }
        }
    }
    Ok(())
}
