//! `girofle backup ...`

use clap::Subcommand;
use girofle_core::backup::{BackupOptions, Retention, Strategy};
use girofle_core::Result;

use crate::output::{print, progress_printer, warn, with_spinner};
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up an instance (config with secrets, data, logs) into a store.
    Create {
        name: String,
        /// online (gitlab-backup inside the running container, no downtime; local
        /// instances only) or cold (stop, archive the directories, start; an instance on
        /// another host too, its directories streamed out of that host's engine).
        #[arg(long, default_value = "online")]
        strategy: Strategy,
        /// Store name from girofle.toml (default: local).
        #[arg(long)]
        store: Option<String>,
        /// Leave the logs out.
        #[arg(long)]
        no_logs: bool,
    },
    /// List complete backups (of one instance, or all), oldest first; SIGNED says whether a
    /// trusted key signed each (only those restore).
    List {
        name: Option<String>,
        #[arg(long)]
        store: Option<String>,
    },
    /// Check a backup end to end without restoring it; --drill restores it into a
    /// throw-away instance and checks the repositories and secrets.
    Verify {
        id: String,
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        drill: bool,
    },
    /// Copy a backup to another store (hash checked, manifest last).
    Copy {
        id: String,
        /// Source store (default: local).
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        to: String,
    },
    /// Sign a backup with the fleet's key (one made before backups were signed, or by a
    /// fleet this one does not trust), after checking every hash; a damaged one is
    /// refused (exit 5). Check where it came from first.
    Sign {
        id: String,
        #[arg(long)]
        store: Option<String>,
    },
    /// Delete backups a retention policy does not keep (the newest is always kept).
    Prune {
        name: Option<String>,
        #[arg(long)]
        store: Option<String>,
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        #[arg(long, default_value_t = 0)]
        keep_daily: usize,
        #[arg(long, default_value_t = 0)]
        keep_weekly: usize,
    },
}

pub async fn run(ctx: &Ctx, command: BackupCommand) -> Result<()> {
    let g = ctx.open().await?;
    match command {
        BackupCommand::Create {
            name,
            strategy,
            store,
            no_logs,
        } => {
            let options = BackupOptions {
                strategy,
                store,
                no_logs,
                progress: progress_printer("backing up"),
            };
            let r = with_spinner(&format!("backing up {name}"), g.backup(&name, options)).await?;
            print(ctx, &r, || {
                let secs = r.duration_ms as f64 / 1000.0;
                let mut out = format!(
                    "{} ({} files, {:.1} MB -> {:.1} MB in store `{}`, {:.1} s, {:.1} MB/s)",
                    r.id,
                    r.files,
                    r.bytes as f64 / 1e6,
                    r.archive_size as f64 / 1e6,
                    r.store,
                    secs,
                    r.bytes as f64 / 1e6 / secs.max(0.001)
                );
                if let Some(d) = r.downtime_ms {
                    out.push_str(&format!("; GitLab was down {:.1} s", d as f64 / 1000.0));
                }
                out
            });
        }
        BackupCommand::List { name, store } => {
            let scan = g.scan_backups(name.as_deref(), store.as_deref()).await?;
            warn(&scan.warnings());
            let list = scan.backups;
            print(ctx, &list, || {
                let mut out = format!(
                    "{:<40} {:<8} {:<8} {:>10} {:>10}  {}",
                    "ID", "STRATEGY", "GITLAB", "FILES", "MB", "SIGNED"
                );
                for b in &list {
                    out.push_str(&format!(
                        "\n{:<40} {:<8} {:<8} {:>10} {:>10.1}  {}",
                        b.id,
                        format!("{:?}", b.strategy).to_lowercase(),
                        b.gitlab_version,
                        b.files,
                        b.archive_size as f64 / 1e6,
                        b.signed
                    ));
                }
                out
            });
        }
        BackupCommand::Verify { id, store, drill } => {
            if drill {
                let r =
                    with_spinner(&format!("drilling {id}"), g.drill(&id, store.as_deref())).await?;
                print(ctx, &r, || {
                    format!(
                        "{id}: valid for GitLab {} ({})",
                        r.valid_for_version.as_deref().unwrap_or("?"),
                        r.detail
                    )
                });
            } else {
                let r = with_spinner(&format!("verifying {id}"), g.verify(&id, store.as_deref()))
                    .await?;
                print(ctx, &r, || {
                    format!(
                        "{}: ok ({} files, {} bytes, every hash matches)",
                        r.id, r.files, r.bytes
                    )
                });
            }
        }
        BackupCommand::Copy { id, store, to } => {
            let r = with_spinner(
                &format!("copying {id} to {to}"),
                g.copy_backup(&id, store.as_deref(), &to),
            )
            .await?;
            print(ctx, &r, || {
                format!(
                    "{} copied to `{}` ({} bytes, hash checked)",
                    r.id, r.to, r.size
                )
            });
        }
        BackupCommand::Sign { id, store } => {
            let r = with_spinner(
                &format!("checking and signing {id}"),
                g.sign_backup(&id, store.as_deref()),
            )
            .await?;
            print(ctx, &r, || {
                if r.signed_now {
                    format!(
                        "{} in store `{}`: every hash matches; signed with key {} (it was {})",
                        r.id, r.store, r.key_id, r.was
                    )
                } else {
                    format!(
                        "{} in store `{}` is already signed by trusted key {}: nothing changed",
                        r.id, r.store, r.key_id
                    )
                }
            });
        }
        BackupCommand::Prune {
            name,
            store,
            keep_last,
            keep_daily,
            keep_weekly,
        } => {
            let policy = Retention {
                keep_last,
                keep_daily,
                keep_weekly,
            };
            let deleted = g.prune(name.as_deref(), store.as_deref(), policy).await?;
            print(ctx, &deleted, || {
                if deleted.is_empty() {
                    "nothing to prune".to_string()
                } else {
                    format!("deleted {}", deleted.join(", "))
                }
            });
        }
    }
    Ok(())
}
