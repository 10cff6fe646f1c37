//! `girofle`: the command line of Girofle. It parses, calls `girofle-core`, prints.

mod backup;
mod daemon;
mod host;
mod instance;
mod inventory;
mod journal;
mod key;
mod metrics;
mod output;
mod recover;
mod restore;
mod schedule;
mod state;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use girofle_core::{Girofle, OpenOptions};

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  failure of the engine, a store or the file system (the message says which)
  2  invalid arguments or configuration (the usage or the field is named)
  3  not found (instance, backup, image, store)
  4  conflict: already exists, address in use, instance busy
  5  damaged backup or version mismatch
  6  instance unhealthy or not healthy in time";

/// Run a fleet of GitLab instances in Docker and keep their data safe.
#[derive(Debug, Parser)]
#[command(name = "girofle", version, after_help = EXIT_CODES)]
struct Cli {
    /// Girofle's root directory (configuration, inventory, instances, backups).
    #[arg(
        long,
        global = true,
        env = "GIROFLE_ROOT",
        default_value = "/var/lib/girofle"
    )]
    root: PathBuf,
    /// Docker engine address (default: [docker] host in girofle.toml, then DOCKER_HOST).
    #[arg(long, global = true)]
    docker_host: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare a root: directories, default girofle.toml, inventory, the fleet's signing key.
    Init,
    /// Commission, list, change and decommission instances.
    #[command(subcommand, after_help = EXIT_CODES)]
    Instance(instance::InstanceCommand),
    /// Back up instances, list, verify, copy and prune backups.
    #[command(subcommand, after_help = EXIT_CODES)]
    Backup(backup::BackupCommand),
    /// Restore an instance from a backup.
    #[command(after_help = EXIT_CODES)]
    Restore(restore::RestoreArgs),
    /// Scheduled backups and copies: list, set, run the due ones, install a timer.
    #[command(subcommand, after_help = EXIT_CODES)]
    Schedule(schedule::ScheduleCommand),
    /// Run the schedules in one long-lived process (SIGTERM lets running backups finish).
    #[command(after_help = EXIT_CODES)]
    Daemon(daemon::DaemonArgs),
    /// Girofle's own state (configuration, inventory, schedules, journal): export, import.
    #[command(subcommand, after_help = EXIT_CODES)]
    State(state::StateCommand),
    /// Prometheus metrics: print them, write a textfile (--textfile), or `serve` them.
    #[command(after_help = EXIT_CODES)]
    Metrics(metrics::MetricsArgs),
    /// Finish or roll back operations that were interrupted (a killed process, a crash).
    #[command(after_help = EXIT_CODES)]
    Recover,
    /// The fleet on one screen: states, age of the newest backup per store, overdue ones.
    #[command(after_help = EXIT_CODES)]
    Status,
    /// The fleet's signing key (every backup's manifest is signed with it): show it.
    #[command(subcommand, after_help = EXIT_CODES)]
    Key(key::KeyCommand),
    /// The operations journal: who ran what, where, when, and how it ended (every
    /// machine's records when the inventory is on etcd).
    #[command(after_help = EXIT_CODES)]
    Journal(journal::JournalArgs),
    /// Where the fleet's book and the operation locks live: migrate it to etcd and back.
    #[command(subcommand, after_help = EXIT_CODES)]
    Inventory(inventory::InventoryCommand),
    /// The fleet's Docker hosts ([hosts.NAME] in girofle.toml): list, show, add, rm.
    #[command(subcommand, after_help = EXIT_CODES)]
    Host(host::HostCommand),
}

/// What every subcommand gets.
#[derive(Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub docker_host: Option<String>,
    pub json: bool,
}

impl Ctx {
    pub async fn open(&self) -> girofle_core::Result<Girofle> {
        Girofle::open(
            &self.root,
            OpenOptions {
                docker_host: self.docker_host.clone(),
            },
        )
        .await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Scheduled backups run on worker threads (the daemon), whose 2 MiB default
        // stack the deep backup futures overflowed in debug builds.
        .thread_stack_size(16 * 1024 * 1024)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("girofle: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ctx = Ctx {
        root: cli.root,
        docker_host: cli.docker_host,
        json: cli.json,
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init => {
                let r = Girofle::init(&ctx.root)?;
                output::print(&ctx, &r, || {
                    if r.config_written {
                        format!(
                            "initialised {} (edit girofle.toml to change the address pool)",
                            r.root.display()
                        )
                    } else {
                        format!(
                            "{} was already initialised; girofle.toml kept",
                            r.root.display()
                        )
                    }
                });
                Ok(())
            }
            Command::Instance(c) => instance::run(&ctx, c).await,
            Command::Backup(c) => backup::run(&ctx, c).await,
            Command::Restore(a) => restore::run(&ctx, a).await,
            Command::Schedule(c) => schedule::run(&ctx, c).await,
            Command::Daemon(a) => daemon::run(&ctx, a).await,
            Command::State(c) => state::run(&ctx, c).await,
            Command::Metrics(a) => metrics::run(&ctx, a).await,
            Command::Status => status::run(&ctx).await,
            Command::Recover => recover::run(&ctx).await,
            Command::Key(c) => key::run(&ctx, c).await,
            Command::Inventory(c) => inventory::run(&ctx, c).await,
            Command::Journal(a) => journal::run(&ctx, a).await,
            Command::Host(c) => host::run(&ctx, c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail(&ctx, &e),
    }
}
