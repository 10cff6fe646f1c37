//! `girofle restore ...` (filled in with the restore module).

use clap::Args;
use girofle_core::Result;

use crate::Ctx;

#[derive(Debug, Args)]
pub struct RestoreArgs {}

pub async fn run(_ctx: &Ctx, _args: RestoreArgs) -> Result<()> {
    Ok(())
}
