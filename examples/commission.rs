//! Shows the library's main path: initialise a root, open it, commission one GitLab instance, print its URL and list the fleet.
//!
//! Usage (needs a running Docker engine; GitLab's first boot takes minutes):
//!
//! ```text
//! cargo run -p girofle-examples --example commission -- ROOT NAME [IMAGE]
//! cargo run -p girofle-examples --example commission -- \
//!     /tmp/girofle-example-root ex1 girofle-test/gitlab-ce:17.5.1-ce.0
//! ```
//!
//! Without IMAGE the instance runs `[instances] image` of the root's `girofle.toml`.
//! Clean up with `docker rm -f girofle-NAME` and by removing ROOT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use girofle_core::{CommissionRequest, Girofle, OpenOptions};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, name, image) = match args.as_slice() {
        [root, name] => (PathBuf::from(root), name.clone(), None),
        [root, name, image] => (PathBuf::from(root), name.clone(), Some(image.clone())),
        _ => bail!("usage: commission ROOT NAME [IMAGE]"),
    };

    // Idempotent: an existing root keeps its girofle.toml and inventory.
    let init = Girofle::init(&root).with_context(|| format!("initialise {}", root.display()))?;
    println!(
        "root {} {}",
        root.display(),
        if init.config_written {
            "initialised"
        } else {
            "already initialised"
        }
    );

    let girofle = Girofle::open(&root, OpenOptions::default())
        .await
        .context("open the root")?;

    println!("commissioning `{name}` (waits until GitLab is healthy)...");
    let record = girofle
        .commission(CommissionRequest {
            name: name.clone(),
            image,
            ..Default::default()
        })
        .await
        .with_context(|| format!("commission `{name}`"))?;
    println!(
        "`{}` is up at {} ({})",
        record.name, record.external_url, record.image
    );

    println!("fleet:");
    for status in girofle.list().await.context("list the fleet")? {
        println!(
            "  {:<16} {:<13} {:<40} {}",
            status.name,
            status.state.to_string(),
            status.image,
            status.url.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
