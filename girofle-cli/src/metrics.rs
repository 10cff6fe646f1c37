//! `girofle metrics ...`: Prometheus metrics, printed, written as a textfile, or served.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use girofle_core::{daemon, metrics, Error, Result};

use crate::Ctx;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetricsArgs {
    #[command(subcommand)]
    command: Option<MetricsCommand>,
    /// Write them to PATH atomically (node-exporter's textfile collector) instead of
    /// printing them.
    #[arg(long)]
    textfile: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// Serve GET /metrics until SIGTERM or SIGINT.
    Serve {
        /// Address to listen on (default: [metrics] listen, then 127.0.0.1:9531).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

pub async fn run(ctx: &Ctx, args: MetricsArgs) -> Result<()> {
    let g = ctx.open().await?;
    match args.command {
        None => match args.textfile {
            Some(path) => g.write_metrics_textfile(&path).await?,
            None => print!("{}", g.render_metrics().await?),
        },
        Some(MetricsCommand::Serve { listen }) => {
            let addr = match listen.or(g.config().metrics.listen) {
                Some(a) => a,
                None => metrics::DEFAULT_LISTEN
                    .parse()
                    .map_err(|_| Error::invalid("--listen", "bad default address"))?,
            };
            let listener = metrics::bind(addr).await?;
            let local = listener.local_addr().unwrap_or(addr);
            eprintln!("girofle: serving metrics on http://{local}/metrics");
            tokio::select! {
                r = g.serve_metrics_on(listener) => r?,
                () = daemon::until_terminated() => eprintln!("girofle: metrics server stopped"),
            }
        }
    }
    Ok(())
}
