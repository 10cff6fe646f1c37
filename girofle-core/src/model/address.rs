//! Network addresses (R-FLEET-3): Girofle hands out only (ip, port) pairs from the pool in
//! `girofle.toml`, never one twice, and never one another process or container holds.
//!
//! Responsible for choosing and checking addresses against the inventory, the engine's
//! published ports and the host (a bind probe). It must be called inside an inventory
//! transaction so that two processes cannot pick the same address; it does not write
//! anything itself.

use std::net::{IpAddr, SocketAddr, TcpListener};

use crate::adapters::inventory::Fleet;
use crate::adapters::runtime::PublishedPort;
use crate::error::{Error, Result};
use crate::model::config::NetworkConfig;
use crate::model::instance::Bindings;

/// Addresses asked for explicitly; what is `None` is chosen from the pool.
#[derive(Clone, Debug, Default)]
pub struct AddressRequest {
    pub ip: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    pub ssh_port: Option<u16>,
}

/// Who holds an address, if anyone.
fn holder(
    ip: IpAddr,
    port: u16,
    fleet: &Fleet,
    except_instance: Option<&str>,
    engine_ports: &[(String, PublishedPort)],
    except_container: Option<&str>,
    probe_host: bool,
) -> Option<String> {
    for r in fleet.instances.values() {
        if Some(r.name.as_str()) == except_instance {
            continue;
        }
        if r.bindings.addresses().contains(&(ip, port)) {
            return Some(format!("instance `{}`", r.name));
        }
    }
    for (container, p) in engine_ports {
        if Some(container.as_str()) == except_container {
            continue;
        }
        let same_ip = p.host_ip.is_empty()
            || p.host_ip == "0.0.0.0"
            || p.host_ip == "::"
            || p.host_ip.parse::<IpAddr>().ok() == Some(ip);
        if same_ip && p.host_port == port {
            return Some(format!("container `{container}`"));
        }
    }
    if probe_host && TcpListener::bind(SocketAddr::new(ip, port)).is_err() {
        return Some("another process on this host".to_string());
    }
    None
}

/// Checks that `ip` is an address of this host, by binding a socket on it (port 0: any
/// free one), which sends nothing on the network. All of 127.0.0.0/8 is local on Linux.
///
/// # Errors
/// `InvalidInput` naming `[network] ips` (or `--ip` when it was asked for).
fn check_on_this_host(ip: IpAddr, asked: bool) -> Result<()> {
    match TcpListener::bind(SocketAddr::new(ip, 0)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            let field = if asked { "--ip" } else { "[network] ips" };
            Err(Error::invalid(
                field,
                format!(
                    "{ip} is not an address of this host, so the Docker engine here cannot publish ports on it; list an address of one of this host's interfaces (`ip -brief address`) in [network] ips of girofle.toml, e.g. 127.0.0.1"
                ),
            ))
        }
        // Anything else (e.g. no permission) is left to the per-port probe.
        _ => Ok(()),
    }
}

/// Chooses or checks the bindings of an instance.
///
/// `except_instance` / `except_container` name the instance whose own current addresses
/// may be reused (a restore in place); the host bind probe is skipped then, since its own
/// container may hold them.
///
/// `engine_on_this_host` says whether the engine runs here (see
/// [`ContainerRuntime::is_on_this_host`](crate::adapters::runtime::ContainerRuntime::is_on_this_host)).
/// Only then are the IP and the ports probed on this host: the addresses of an engine on
/// another host are that host's, which this one cannot check (its published ports still
/// are, and the engine refuses a port taken there).
///
/// # Errors
/// `InvalidInput` when an asked address is outside the pool (naming the setting to change)
/// or the IP is not an address of this host, `Conflict` naming the holder when it is
/// taken, `Conflict` when the pool is exhausted.
pub fn allocate(
    pool: &NetworkConfig,
    fleet: &Fleet,
    engine_ports: &[(String, PublishedPort)],
    request: &AddressRequest,
    except_instance: Option<&str>,
    except_container: Option<&str>,
    engine_on_this_host: bool,
) -> Result<Bindings> {
    let ranges = pool.port_ranges()?;
    let ip = match request.ip {
        Some(ip) if !pool.ips.contains(&ip) => {
            return Err(Error::invalid(
                "--ip",
                format!(
                    "{ip} is not in Girofle's pool ({}); add it to [network] ips in girofle.toml or pick one of those",
                    pool.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
        Some(ip) => ip,
        None => pool.ips[0],
    };
    let probe_host = engine_on_this_host && except_container.is_none();
    if engine_on_this_host {
        check_on_this_host(ip, request.ip.is_some())?;
    }
    let mut chosen: Vec<u16> = Vec::new();
    let asked = [
        ("--http-port", request.http_port),
        ("--https-port", request.https_port),
        ("--ssh-port", request.ssh_port),
    ];
    for (flag, port) in asked {
        if let Some(port) = port {
            if !pool.contains_port(port) {
                return Err(Error::invalid(
                    flag,
                    format!(
                        "port {port} is outside Girofle's pool ({}); pick one inside it or widen [network] ports in girofle.toml",
                        pool.ports.join(", ")
                    ),
                ));
            }
            if chosen.contains(&port) {
                return Err(Error::invalid(
                    flag,
                    format!("port {port} is asked for twice"),
                ));
            }
            if let Some(h) = holder(
                ip,
                port,
                fleet,
                except_instance,
                engine_ports,
                except_container,
                probe_host,
            ) {
                return Err(Error::Conflict(format!(
                    "port {ip}:{port} is already in use by {h}; pick another with {flag} or free it"
                )));
            }
            chosen.push(port);
        }
    }
    let pick = |fixed: Option<u16>, chosen: &mut Vec<u16>| -> Result<u16> {
        if let Some(p) = fixed {
            return Ok(p);
        }
        for (a, b) in &ranges {
            for port in *a..=*b {
                if chosen.contains(&port) {
                    continue;
                }
                if holder(
                    ip,
                    port,
                    fleet,
                    except_instance,
                    engine_ports,
                    except_container,
                    probe_host,
                )
                .is_none()
                {
                    chosen.push(port);
                    return Ok(port);
                }
            }
        }
        Err(Error::Conflict(format!(
            "no free port left on {ip} in Girofle's pool ({}); widen [network] ports in girofle.toml or decommission an instance",
            pool.ports.join(", ")
        )))
    };
    let http_port = pick(request.http_port, &mut chosen)?;
    let https_port = pick(request.https_port, &mut chosen)?;
    let ssh_port = pick(request.ssh_port, &mut chosen)?;
    Ok(Bindings {
        ip,
        http_port,
        https_port,
        ssh_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ports: &str) -> NetworkConfig {
        NetworkConfig {
            ips: vec!["127.0.0.1".parse().unwrap()],
            ports: vec![ports.to_string()],
        }
    }

    fn free_range() -> (u16, u16) {
        // A range unlikely to be in use: bind-probe a few and take the first free block.
        for base in (41000..60000).step_by(97) {
            if (base..base + 10).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                return (base, base + 9);
            }
        }
        panic!("no free port block on 127.0.0.1");
    }

    #[test]
    fn picks_distinct_ports_and_skips_held_ones() {
        let (a, b) = free_range();
        let p = pool(&format!("{a}-{b}"));
        let _held = TcpListener::bind(("127.0.0.1", a)).unwrap();
        let engine = vec![(
            "web".to_string(),
            PublishedPort {
                host_ip: "0.0.0.0".into(),
                host_port: a + 1,
                container_port: 80,
            },
        )];
        let got = allocate(
            &p,
            &Fleet::default(),
            &engine,
            &AddressRequest::default(),
            None,
            None,
            true,
        )
        .unwrap();
        assert_eq!(
            (got.http_port, got.https_port, got.ssh_port),
            (a + 2, a + 3, a + 4)
        );
        let e = allocate(
            &p,
            &Fleet::default(),
            &engine,
            &AddressRequest {
                http_port: Some(a + 1),
                ..Default::default()
            },
            None,
            None,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("container `web`"), "{e}");
        let e = allocate(
            &p,
            &Fleet::default(),
            &engine,
            &AddressRequest {
                http_port: Some(b + 100),
                ..Default::default()
            },
            None,
            None,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outside Girofle's pool"), "{e}");
        let e = allocate(
            &p,
            &Fleet::default(),
            &[],
            &AddressRequest {
                ip: Some("10.1.2.3".parse().unwrap()),
                ..Default::default()
            },
            None,
            None,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not in Girofle's pool"), "{e}");
    }

    #[test]
    fn an_ip_of_another_host_is_refused_only_for_a_local_engine() {
        let (a, b) = free_range();
        let mut p = pool(&format!("{a}-{b}"));
        // Binding a socket sends nothing: 8.8.8.8 is never contacted.
        p.ips = vec!["8.8.8.8".parse().unwrap()];
        let req = AddressRequest::default();
        let e = allocate(&p, &Fleet::default(), &[], &req, None, None, true).unwrap_err();
        assert_eq!(e.kind(), "invalid_input", "{e}");
        assert!(
            e.to_string().contains("[network] ips")
                && e.to_string()
                    .contains("8.8.8.8 is not an address of this host"),
            "{e}"
        );
        // An engine on another host publishes on that host's addresses: nothing to probe.
        let got = allocate(&p, &Fleet::default(), &[], &req, None, None, false).unwrap();
        assert_eq!((got.ip, got.http_port), (p.ips[0], a));
        // All of 127.0.0.0/8 is this host's.
        p.ips = vec!["127.0.0.5".parse().unwrap()];
        allocate(&p, &Fleet::default(), &[], &req, None, None, true).unwrap();
    }

    #[test]
    fn exhausted_pool_is_a_conflict() {
        let (a, _) = free_range();
        let p = pool(&format!("{a}-{}", a + 1));
        let e = allocate(
            &p,
            &Fleet::default(),
            &[],
            &AddressRequest::default(),
            None,
            None,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no free port left"), "{e}");
    }
}
