//! `girofle backup ...` (filled in with the backup module).

use clap::Subcommand;
use girofle_core::Result;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {}

pub async fn run(_ctx: &Ctx, command: BackupCommand) -> Result<()> {
    match command {}
}
