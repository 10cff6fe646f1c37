//! `girofle instance ...`

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use clap::Subcommand;
use girofle_core::address::AddressRequest;
use girofle_core::{CommissionRequest, DecommissionOptions, Result};

use crate::output::{print, warn, with_spinner};
use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Commission a new instance; prints its URL once it is healthy.
    Create {
        /// Instance name: 1-40 lowercase letters, digits, '-' (the container is girofle-NAME).
        name: String,
        /// Image (default: [instances] image in girofle.toml).
        #[arg(long)]
        image: Option<String>,
        /// Address from the pool (default: the first one).
        #[arg(long)]
        ip: Option<IpAddr>,
        #[arg(long)]
        http_port: Option<u16>,
        #[arg(long)]
        https_port: Option<u16>,
        #[arg(long)]
        ssh_port: Option<u16>,
        /// Host name used in the external URL.
        #[arg(long)]
        hostname: Option<String>,
        /// gitlab.rb setting KEY=VALUE (repeatable), e.g. "gitlab_rails['time_zone']=UTC";
        /// VALUE is one Ruby literal ('string', number, true/false/nil, :symbol, [array],
        /// {hash}) or a bare word, quoted for you.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Container label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Seconds to wait for health (default: [instances] health_timeout_secs).
        #[arg(long)]
        timeout: Option<u64>,
        /// The host to run it on (`girofle host list`); default: the one with the fewest
        /// instances among those with free addresses and the --host-label labels.
        #[arg(long)]
        host: Option<String>,
        /// A label KEY=VALUE the chosen host must carry (repeatable), e.g. zone=b.
        #[arg(long = "host-label", value_name = "KEY=VALUE")]
        host_labels: Vec<String>,
    },
    /// List instances with their state (running, starting, unhealthy, stopped, missing, unknown).
    List,
    /// Show one instance (setting values are shown [REDACTED] unless --reveal).
    Show {
        name: String,
        /// Show the values of the managed settings (the operation is journaled).
        #[arg(long)]
        reveal: bool,
    },
    /// Start an instance (re-creating its container if it was removed) and wait healthy.
    Start { name: String },
    /// Stop an instance.
    Stop { name: String },
    /// Restart an instance and wait healthy.
    Restart { name: String },
    /// Change managed gitlab.rb settings, run gitlab-ctl reconfigure, wait healthy.
    Reconfigure {
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Move an instance to another host: stop it, stream its data engine to engine, start
    /// it there, run GitLab's checks, then remove the old container (its data is kept
    /// aside on the old host unless --purge). Prints the downtime.
    Move {
        name: String,
        /// The host to move it to (`girofle host list`).
        #[arg(long)]
        to: String,
        /// Delete the old data once the move is through, instead of keeping it aside.
        #[arg(long)]
        purge: bool,
        /// Seconds to wait for health on the new host (default: [instances] health_timeout_secs).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Decommission: final backup, stop and remove the container, archive the data.
    Rm {
        name: String,
        /// Delete the data instead of moving it to <root>/decommissioned/.
        #[arg(long)]
        purge: bool,
        /// Skip the final backup.
        #[arg(long)]
        no_backup: bool,
    },
}

fn parse_labels(flag: &str, labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    girofle_core::Error::invalid(flag, format!("`{l}` is not KEY=VALUE"))
                })
        })
        .collect()
}

pub async fn run(ctx: &Ctx, command: InstanceCommand) -> Result<()> {
    let g = ctx.open().await?;
    match command {
        InstanceCommand::Create {
            name,
            image,
            ip,
            http_port,
            https_port,
            ssh_port,
            hostname,
            set,
            labels,
            timeout,
            host,
            host_labels,
        } => {
            let request = CommissionRequest {
                name: name.clone(),
                image,
                addresses: AddressRequest {
                    ip,
                    http_port,
                    https_port,
                    ssh_port,
                },
                hostname,
                settings: set,
                labels: parse_labels("--label", &labels)?,
                timeout: timeout.map(Duration::from_secs),
                host,
                host_labels: parse_labels("--host-label", &host_labels)?,
            };
            let record = with_spinner(
                &format!("commissioning {name}, waiting until healthy"),
                g.commission(request),
            )
            .await?;
            print(ctx, &record, || record.external_url.clone());
        }
        InstanceCommand::List => {
            let listing = g.list_with_recoveries().await?;
            warn(&listing.warnings());
            let list = listing.instances;
            for s in &list {
                warn_pin_overrides(s);
            }
            print(ctx, &list, || {
                let mut out = format!(
                    "{:<24} {:<13} {:<12} {:<36} URL",
                    "NAME", "STATE", "HOST", "IMAGE"
                );
                for s in &list {
                    out.push_str(&format!(
                        "\n{:<24} {:<13} {:<12} {:<36} {}",
                        s.name,
                        s.state.to_string(),
                        s.host,
                        s.image,
                        s.url.as_deref().unwrap_or("-")
                    ));
                }
                out
            });
        }
        InstanceCommand::Show { name, reveal } => {
            let s = if reveal {
                g.show_revealed(&name).await?
            } else {
                g.show(&name).await?
            };
            warn_pin_overrides(&s);
            print(ctx, &s, || {
                let mut out = format!(
                    "name:      {}\nstate:     {}\nhost:      {}\ncontainer: {}\nimage:     {}",
                    s.name, s.state, s.host, s.container, s.image
                );
                if let Some(r) = &s.record {
                    out.push_str(&format!(
                        "\nurl:       {}\nhttp:      {}:{}\nhttps:     {}:{}\nssh:       {}:{}\ncreated:   {}",
                        r.external_url,
                        r.bindings.ip,
                        r.bindings.http_port,
                        r.bindings.ip,
                        r.bindings.https_port,
                        r.bindings.ip,
                        r.bindings.ssh_port,
                        r.created_at.to_rfc3339()
                    ));
                    for (k, v) in &r.settings {
                        out.push_str(&format!("\nsetting:   {k} = {v}"));
                    }
                }
                out
            });
        }
        InstanceCommand::Start { name } => {
            let r = with_spinner(&format!("starting {name}"), g.start(&name)).await?;
            print(ctx, &r, || {
                format!("{name} is running at {}", r.external_url)
            });
        }
        InstanceCommand::Stop { name } => {
            let r = g.stop(&name).await?;
            print(ctx, &r, || format!("{name} stopped"));
        }
        InstanceCommand::Restart { name } => {
            let r = with_spinner(&format!("restarting {name}"), g.restart(&name)).await?;
            print(ctx, &r, || {
                format!("{name} is running at {}", r.external_url)
            });
        }
        InstanceCommand::Reconfigure { name, set, unset } => {
            let r = with_spinner(
                &format!("reconfiguring {name}"),
                g.reconfigure(&name, &set, &unset),
            )
            .await?;
            print(ctx, &r, || format!("{name} reconfigured and healthy"));
        }
        InstanceCommand::Move {
            name,
            to,
            purge,
            timeout,
        } => {
            let m = with_spinner(
                &format!("moving {name} to host {to}"),
                g.move_instance(girofle_core::moving::MoveRequest {
                    name: name.clone(),
                    to,
                    purge,
                    timeout: timeout.map(Duration::from_secs),
                }),
            )
            .await?;
            print(ctx, &m, || {
                let mut out = format!(
                    "{name} moved from host {} to host {} in {:.1} s; downtime {:.1} s; {} copied; GitLab's checks passed",
                    m.from,
                    m.to,
                    m.took_secs,
                    m.downtime_secs,
                    girofle_core::text::human_bytes(m.bytes_copied)
                );
                if m.addresses_kept {
                    out.push_str(&format!("\nsame addresses: {}", m.record.external_url));
                } else {
                    out.push_str(&format!(
                        "\nNEW ADDRESSES (host {}'s pool lacked the old ones): {} (was {}); point clients and DNS there",
                        m.to, m.record.external_url, m.previous_url
                    ));
                }
                match &m.kept_aside {
                    Some(p) => out.push_str(&format!(
                        "\nthe old data is kept in {} on host {} (delete it when you no longer need it)",
                        p.display(),
                        m.from
                    )),
                    None => out.push_str("\nthe old data is deleted (--purge)"),
                }
                out
            });
        }
        InstanceCommand::Rm {
            name,
            purge,
            no_backup,
        } => {
            let d = with_spinner(
                &format!("decommissioning {name}"),
                g.decommission(&name, DecommissionOptions { purge, no_backup }),
            )
            .await?;
            print(ctx, &d, || {
                let mut out = format!("{name} decommissioned");
                if let Some(b) = &d.final_backup {
                    out.push_str(&format!("; final backup {b}"));
                }
                match &d.archived_to {
                    Some(p) if d.host == "local" => {
                        out.push_str(&format!("; data kept in {}", p.display()))
                    }
                    Some(p) => out.push_str(&format!(
                        "; data kept in {} on host {}",
                        p.display(),
                        d.host
                    )),
                    None => out.push_str("; data deleted (--purge)"),
                }
                out
            });
        }
    }
    Ok(())
}

/// Says which lines of an instance's gitlab.rb override the settings Girofle owns.
fn warn_pin_overrides(s: &girofle_core::InstanceStatus) {
    for line in &s.pin_overrides {
        eprintln!(
            "girofle: warning: instance `{}`: its gitlab.rb sets `{line}` after Girofle's managed block, which overrides the address Girofle gave it (GitLab may not answer on its published port); remove that line and run `girofle instance restart {}`",
            s.name, s.name
        );
    }
}
