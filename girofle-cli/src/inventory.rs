//! `girofle inventory ...`: where the fleet's book and the operation locks live.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use girofle_core::config::InventoryConfig;
use girofle_core::migrate::MigrateTo;
use girofle_core::Result;

use crate::output::print;
use crate::Ctx;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    /// An etcd cluster every machine of the fleet reaches (give --endpoint).
    Etcd,
    /// `<root>/inventory.db`, the embedded default.
    Sqlite,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Move the inventory (every instance record, and the locks with it) to etcd or back
    /// to SQLite, then point girofle.toml's [inventory] at it. Refused while an
    /// operation runs.
    Migrate {
        /// Where to move it.
        #[arg(long, value_enum)]
        to: Backend,
        /// An etcd member's client URL (repeat for each member), e.g.
        /// http://10.0.0.1:2379.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// The fleet's keys go under /girofle/NAMESPACE/ (several fleets may share a
        /// cluster).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// CA certificate of the members (PEM), for https:// endpoints.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate (PEM), with --key.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Client certificate's key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        /// etcd user, with --password-file (or $GIROFLE_ETCD_PASSWORD).
        #[arg(long)]
        user: Option<String>,
        /// File holding the etcd user's password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Seconds an operation's lock outlives a Girofle that died or was cut off.
        #[arg(long, default_value_t = 15)]
        lease_ttl: u64,
    },
}

pub async fn run(ctx: &Ctx, command: InventoryCommand) -> Result<()> {
    match command {
        InventoryCommand::Migrate {
            to,
            endpoints,
            namespace,
            ca,
            cert,
            key,
            user,
            password_file,
            lease_ttl,
        } => {
            let to = match to {
                Backend::Sqlite if !endpoints.is_empty() => {
                    return Err(girofle_core::Error::invalid(
                        "--endpoint",
                        "goes with --to etcd; --to sqlite moves the inventory back to <root>/inventory.db",
                    ))
                }
                Backend::Sqlite => MigrateTo::Sqlite,
                Backend::Etcd => MigrateTo::Etcd(InventoryConfig {
                    etcd: endpoints,
                    namespace,
                    user,
                    password_file,
                    ca,
                    cert,
                    key,
                    lease_ttl_secs: lease_ttl,
                }),
            };
            let g = ctx.open().await?;
            let done = g.migrate_inventory(to).await?;
            print(ctx, &done, || {
                format!(
                    "moved {} instances from {} to {}; girofle.toml now names the new place",
                    done.instances.len(),
                    done.from,
                    done.to
                )
            });
        }
    }
    Ok(())
}
