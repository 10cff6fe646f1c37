//! `girofle host ...`: the fleet's Docker hosts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use girofle_core::hosts::{HostConfig, HostTls};
use girofle_core::ops::hosts::HostStatus;
use girofle_core::text::human_bytes;
use girofle_core::{Error, Result};

use crate::output::{print, with_spinner};
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Every host (`local` first): engine up or unreachable (each asked for a few seconds
    /// at most), its version, instances, free addresses of its pool, free disk on its data
    /// directory, labels.
    List,
    /// One host, in full.
    Show { name: String },
    /// Add [hosts.NAME] to girofle.toml (its comments and layout are kept).
    Add(Box<AddArgs>),
    /// Drain a host: no new instance goes there (drain = true in girofle.toml), and each
    /// of its instances is moved to another host (placed as `instance create` places).
    Drain {
        name: String,
        /// Only mark it drained; move nothing.
        #[arg(long)]
        no_move: bool,
    },
    /// Take a host back: new instances may go there again.
    Undrain { name: String },
    /// Remove [hosts.NAME] from girofle.toml; refused while instances are on it.
    Rm {
        name: String,
        /// Remove it even though its engine cannot be asked whether instances are left.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// A DNS-label-like name (lowercase letters, digits, `-`).
    name: String,
    /// The engine: unix:///var/run/docker.sock or tcp://HOST:2376 (with --tls-dir).
    #[arg(long)]
    engine: String,
    /// Directory with the engine's client certificates: ca.pem, cert.pem, key.pem.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    tls_dir: Option<PathBuf>,
    /// The CA certificate (with --tls-cert and --tls-key instead of --tls-dir).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// An address of that machine for instances (repeat, or separate with commas).
    #[arg(long = "ip", value_delimiter = ',', required = true)]
    ips: Vec<IpAddr>,
    /// Port ranges on it, e.g. 20080-20999 (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', default_value = "20080-20999")]
    ports: Vec<String>,
    /// The directory ON THAT HOST under which instance directories live.
    #[arg(long, default_value = "/var/lib/girofle")]
    data_dir: String,
    /// A label KEY=VALUE (repeat), e.g. --label zone=b.
    #[arg(long = "label")]
    labels: Vec<String>,
}

fn labels(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| {
                    Error::invalid("--label", format!("`{p}` is not KEY=VALUE, e.g. zone=b"))
                })
        })
        .collect()
}

fn text(h: &HostStatus) -> String {
    let or_q = |v: Option<String>| v.unwrap_or_else(|| "?".to_string());
    format!(
        "{:<12} {:<11} {:<15} {:>9} {:>10} {:>10}  {}",
        h.name,
        if h.drain {
            format!("{} drain", h.state)
        } else {
            h.state.to_string()
        },
        or_q(h.version.clone()),
        or_q(h.instances.as_ref().map(|i| i.len().to_string())),
        or_q(h.free_addresses.map(|f| f.to_string())),
        h.disk_free_bytes
            .map_or_else(|| "unknown".to_string(), human_bytes),
        h.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    )
}

const HEADER: &str =
    "HOST         ENGINE      VERSION         INSTANCES FREE ADDRS  FREE DISK  LABELS";

pub async fn run(ctx: &Ctx, command: HostCommand) -> Result<()> {
    let g = ctx.open().await?;
    match command {
        HostCommand::List => {
            let hosts = g.hosts().await?;
            print(ctx, &hosts, || {
                let mut out: Vec<String> = std::iter::once(HEADER.to_string())
                    .chain(hosts.iter().map(text))
                    .collect();
                // Why an engine is unreachable, under the table.
                out.extend(
                    hosts
                        .iter()
                        .filter_map(|h| h.error.as_ref().map(|e| format!("{}: {e}", h.name))),
                );
                out.join("\n")
            });
        }
        HostCommand::Show { name } => {
            let h = g.host(&name).await?;
            print(ctx, &h, || {
                let mut out = format!(
                    "{HEADER}\n{}\nengine:    {}\ndata dir:  {}\npool:      {} addresses",
                    text(&h),
                    h.engine,
                    h.data_dir,
                    h.pool_size
                );
                if let Some(i) = &h.instances {
                    out.push_str(&format!("\ninstances: {}", i.join(", ")));
                }
                if let Some(e) = &h.error {
                    out.push_str(&format!("\nerror:     {e}"));
                }
                if let Some(n) = &h.disk_note {
                    out.push_str(&format!("\ndisk:      {n}"));
                }
                out
            });
        }
        HostCommand::Add(a) => {
            let a = *a;
            let tls = match (a.tls_dir, a.tls_ca, a.tls_cert, a.tls_key) {
                (None, None, None, None) => None,
                (dir, ca, cert, key) => Some(HostTls { dir, ca, cert, key }),
            };
            let host = HostConfig {
                engine: a.engine,
                tls,
                ips: a.ips,
                ports: a.ports,
                data_dir: a.data_dir,
                labels: labels(&a.labels)?,
                drain: false,
            };
            let added = g.add_host(&a.name, host)?;
            print(ctx, &added, || {
                format!(
                    "added host `{}` to {} (`girofle host show {}` asks its engine)",
                    added.name,
                    added.config.display(),
                    added.name
                )
            });
        }
        HostCommand::Drain { name, no_move } => {
            let drained = with_spinner(
                &format!("draining host {name}"),
                g.drain_host(&name, !no_move),
            )
            .await?;
            print(ctx, &drained, || {
                let mut t = format!("host `{name}` is drained: no new instance goes there");
                for m in &drained.moved {
                    t.push_str(&format!(
                        "\nmoved {} to host {} (downtime {:.1} s){}",
                        m.name,
                        m.to,
                        m.downtime_secs,
                        if m.addresses_kept {
                            String::new()
                        } else {
                            format!("; NEW URL {}", m.record.external_url)
                        }
                    ));
                }
                for (instance, error) in &drained.failed {
                    t.push_str(&format!("\nNOT moved: {instance}: {error}"));
                }
                for instance in &drained.left {
                    t.push_str(&format!("\nstill there: {instance}"));
                }
                t
            });
            if !drained.failed.is_empty() {
                return Err(Error::Conflict(format!(
                    "{} instance(s) could not be moved off host `{name}`; each still runs there",
                    drained.failed.len()
                )));
            }
        }
        HostCommand::Undrain { name } => {
            g.undrain_host(&name)?;
            print(
                ctx,
                &serde_json::json!({ "name": name, "drain": false }),
                || format!("host `{name}` takes new instances again"),
            );
        }
        HostCommand::Rm { name, force } => {
            let removed = g.remove_host(&name, force).await?;
            print(ctx, &removed, || {
                let mut t = format!(
                    "removed host `{}` from {}",
                    removed.name,
                    removed.config.display()
                );
                if removed.unchecked {
                    t.push_str(
                        " (its engine did not answer: instances left on it were not checked)",
                    );
                }
                t
            });
        }
    }
    Ok(())
}
