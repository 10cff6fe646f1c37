//! `girofle key ...`: the fleet's signing key.

use clap::Subcommand;
use girofle_core::{signing, Result};

use crate::output::print;
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the fleet's public key in minisign's .pub format (its comment line names the
    /// key id): `girofle key show > fleet.pub && minisign -V -p fleet.pub -m ID.manifest`
    /// checks a backup's signature. --json adds the keys this fleet trusts.
    Show,
}

pub async fn run(ctx: &Ctx, command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Show => {
            // No engine needed: the key is a file of the root.
            let info = signing::key_info(&ctx.root)?;
            print(ctx, &info, || {
                info.pub_file.trim_end_matches('\n').to_string()
            });
        }
    }
    Ok(())
}
