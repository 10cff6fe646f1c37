//! `girofle restore ...`

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use girofle_core::address::AddressRequest;
use girofle_core::restore::RestoreRequest;
use girofle_core::Result;

use crate::output::{print, progress_printer, with_spinner};
use crate::Ctx;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id, e.g. web/20261125T220000Z (`girofle backup list` shows them).
    pub id: String,
    /// Store name from girofle.toml (default: local).
    #[arg(long)]
    pub store: Option<String>,
    /// Restore as a new instance of this name (default: the instance in the backup id, in
    /// place if it exists). An existing name is refused unless --replace.
    #[arg(long = "as", value_name = "NEW_NAME")]
    pub as_name: Option<String>,
    /// With --as naming an existing instance: restore over it (its data is kept aside
    /// until the restored instance is healthy).
    #[arg(long, requires = "as_name")]
    pub replace: bool,
    /// Image to run: exactly the backup's GitLab version and edition (default: the
    /// target's own image, else [instances] image; never the image the backup names).
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub ip: Option<IpAddr>,
    #[arg(long)]
    pub http_port: Option<u16>,
    #[arg(long)]
    pub https_port: Option<u16>,
    #[arg(long)]
    pub ssh_port: Option<u16>,
    /// Seconds to wait for health.
    #[arg(long)]
    pub timeout: Option<u64>,
}

pub async fn run(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    let g = ctx.open().await?;
    let request = RestoreRequest {
        id: a.id.clone(),
        store: a.store,
        as_name: a.as_name,
        replace: a.replace,
        image: a.image,
        addresses: AddressRequest {
            ip: a.ip,
            http_port: a.http_port,
            https_port: a.https_port,
            ssh_port: a.ssh_port,
        },
        timeout: a.timeout.map(Duration::from_secs),
        progress: progress_printer("restoring"),
    };
    let r = with_spinner(&format!("restoring {}", a.id), g.restore(request)).await?;
    for path in &r.modes_stripped {
        eprintln!("warning: {path} restored without its setuid/setgid/sticky bit");
    }
    if r.modes_stripped_count > r.modes_stripped.len() as u64 {
        eprintln!(
            "warning: {} more files restored without setuid/setgid/sticky bits",
            r.modes_stripped_count - r.modes_stripped.len() as u64
        );
    }
    print(ctx, &r, || {
        format!(
            "{} restored {} as `{}` at {} ({} files, {:.1} s; gitlab:check and doctor:secrets passed)",
            r.id,
            if r.in_place { "in place" } else { "" },
            r.name,
            r.url,
            r.files,
            r.duration_ms as f64 / 1000.0
        )
        .replace("  ", " ")
    });
    Ok(())
}
