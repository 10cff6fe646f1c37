//! `girofle state ...`: Girofle's own configuration, inventory and journal in one file.

use std::path::PathBuf;

use clap::Subcommand;
use girofle_core::{Girofle, Result};

use crate::output::print;
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Write girofle.toml, the inventory (schedules included) and the journal into FILE
    /// (zstd tar, mode 0600: it holds the stores' credentials).
    Export { file: PathBuf },
    /// Take over the state in FILE: refused (exit 4) when this root's inventory has other
    /// instances, unless --force. Importing twice changes nothing more.
    Import {
        file: PathBuf,
        /// Replace an inventory that has other instances (their data is not touched).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(ctx: &Ctx, command: StateCommand) -> Result<()> {
    match command {
        StateCommand::Export { file } => {
            let r = Girofle::export_state(&ctx.root, &file).await?;
            print(ctx, &r, || {
                format!(
                    "exported {} instance(s) and {} journal line(s) to {} ({} bytes, mode 0600)",
                    r.instances.len(),
                    r.journal_lines,
                    r.file.display(),
                    r.bytes
                )
            });
        }
        StateCommand::Import { file, force } => {
            let r = Girofle::import_state(&ctx.root, &file, force).await?;
            print(ctx, &r, || {
                let mut out = format!(
                    "imported {} instance(s) ({}) into {}; {} new journal line(s){}",
                    r.instances.len(),
                    r.instances.join(", "),
                    r.root.display(),
                    r.journal_lines_added,
                    if r.replaced {
                        "; the previous inventory was replaced"
                    } else {
                        ""
                    }
                );
                if let Some(k) = &r.trusted_imported_key {
                    out.push_str(&format!(
                        "; this root keeps its own signing key {} and now trusts the state's key {k}",
                        r.signing_key.as_deref().unwrap_or("?")
                    ));
                }
                out
            });
        }
    }
    Ok(())
}
