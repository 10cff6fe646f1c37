//! `girofle journal`: the operations journal, every machine's with the inventory on etcd.

use chrono::{DateTime, Duration, Utc};
use clap::Args;
use girofle_core::journal::JournalQuery;
use girofle_core::{Error, Result};

use crate::output::print;
use crate::Ctx;

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Only the records of operations run on this machine (its host name).
    #[arg(long)]
    host: Option<String>,
    /// Only the records about this instance.
    #[arg(long)]
    instance: Option<String>,
    /// Only from then on: a time (2026-12-04T10:00:00Z) or an age (30m, 12h, 7d).
    #[arg(long)]
    since: Option<String>,
}

fn parse_since(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        Error::invalid(
            "--since",
            format!("`{text}` is neither a time (2026-12-04T10:00:00Z) nor an age (30m, 12h, 7d)"),
        )
    };
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let age = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Utc::now() - age)
}

pub async fn run(ctx: &Ctx, args: JournalArgs) -> Result<()> {
    let query = JournalQuery {
        since: args.since.as_deref().map(parse_since).transpose()?,
        host: args.host,
        instance: args.instance,
    };
    let g = ctx.open().await?;
    let records = g.journal_records(&query).await?;
    print(ctx, &records, || {
        let mut out = format!(
            "{:<20}  {:<16}  {:<10}  {:<22}  {:<24}  {:>8}  OUTCOME",
            "STARTED", "HOST", "USER", "OPERATION", "ON", "SECONDS"
        );
        for r in &records {
            let on = ["name", "id", "as"]
                .iter()
                .find_map(|k| r.arguments.get(*k).and_then(|v| v.as_str()))
                .unwrap_or("-");
            let seconds = (r.ended_at - r.started_at).num_milliseconds() as f64 / 1000.0;
            let outcome = match &r.error {
                Some(e) => format!("{}: {e}", r.outcome),
                None => r.outcome.clone(),
            };
            out.push_str(&format!(
                "\n{:<20}  {:<16}  {:<10}  {:<22}  {:<24}  {:>8.1}  {outcome}",
                r.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
                r.host,
                r.user,
                r.operation,
                on,
                seconds
            ));
        }
        out
    });
    Ok(())
}
