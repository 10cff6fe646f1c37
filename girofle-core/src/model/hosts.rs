//! The Docker hosts of a fleet: `[hosts.NAME]` in girofle.toml, each an engine reached
//! through its API (a unix socket, or TCP with TLS client certificates), the address
//! pool on that machine, the directory on that machine under which instance directories
//! live, and free-form labels (e.g. `zone = "b"`).
//!
//! Responsible for reading and checking these tables and for saying
//! how to reach each engine. It does not talk to engines, nor edit the file: `ops::hosts`
//! does (it also knows the whole configuration, which holds this module's tables). A root
//! with no `[hosts]` has one implicit host, [`LOCAL_HOST`]: the engine of `[docker]`, the
//! pool of `[network]`, the root's own `instances/` directory; nothing changes for a
//! one-machine fleet.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::adapters::runtime::{validate_docker_host, EngineOptions, TlsFiles};
use crate::error::{Error, Result};

/// The name of the implicit host: this machine's engine (`[docker]`) and pool (`[network]`).
pub const LOCAL_HOST: &str = crate::record::LOCAL_HOST_NAME;

/// How long an engine has to answer a connection (and `host list` each engine).
pub const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Connects to a named host's engine within [`PROBE_WAIT`].
///
/// # Errors
/// `InvalidInput` for incomplete certificates, `Backend` when it does not answer.
pub async fn connect(
    name: &str,
    config: &HostConfig,
) -> Result<crate::adapters::runtime::DockerRuntime> {
    let options = config.engine_options(name, PROBE_WAIT)?;
    tokio::time::timeout(
        PROBE_WAIT,
        crate::adapters::runtime::DockerRuntime::connect_with(&options),
    )
    .await
    .map_err(|_| {
        Error::backend(
            "Docker engine",
            format!(
                "host `{name}`: {} did not answer within {} s",
                config.engine,
                PROBE_WAIT.as_secs()
            ),
        )
    })?
}

/// One `[hosts.NAME]` table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The engine's address: `unix:///path` or `tcp://HOST:PORT`.
    pub engine: String,
    /// Client certificates of an engine that checks them (required for `tcp://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HostTls>,
    /// The addresses of that machine Girofle may hand out to instances on it.
    pub ips: Vec<IpAddr>,
    /// Inclusive ranges `"FIRST-LAST"` or single ports `"PORT"`, as in `[network]`.
    pub ports: Vec<String>,
    /// The directory on that machine (not this one) under which instance directories live.
    pub data_dir: String,
    /// Free-form labels, e.g. `zone = "b"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Being drained (`girofle host drain`): no new instance is placed on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

/// `tls = { dir = "..." }` (holding ca.pem, cert.pem, key.pem) or
/// `tls = { ca = "...", cert = "...", key = "..." }`; paths on the machine running Girofle.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl HostTls {
    /// The three files, from the directory or given one by one.
    ///
    /// # Errors
    /// `InvalidInput` naming `field` when neither form is complete, or both are given.
    pub fn files(&self, field: &str) -> Result<TlsFiles> {
        let how = "give `dir` (a directory with ca.pem, cert.pem and key.pem) or all of `ca`, `cert` and `key`";
        match (&self.dir, &self.ca, &self.cert, &self.key) {
            (Some(dir), None, None, None) => Ok(TlsFiles::in_dir(dir)),
            (None, Some(ca), Some(cert), Some(key)) => Ok(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), ..) => Err(Error::invalid(
                field,
                format!("`dir` and single files are both given; {how}"),
            )),
            _ => Err(Error::invalid(
                field,
                format!("the client certificates are incomplete; {how}"),
            )),
        }
    }
}

/// The labels a host's `labels` may carry: lowercase keys as `[a-z0-9_.-]`, any value on
/// one line.
fn validate_host_label(field: &str, key: &str, value: &str) -> Result<()> {
    let ok_key = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if !ok_key {
        return Err(Error::invalid(
            field,
            format!("label key `{key}`: use 1-63 lowercase letters, digits, `_`, `.` or `-`"),
        ));
    }
    if value.contains(['\n', '\r']) || value.len() > 256 {
        return Err(Error::invalid(
            field,
            format!("label `{key}`: the value must be one line of at most 256 bytes"),
        ));
    }
    Ok(())
}

impl HostConfig {
    /// Checks the table of host `name` (the field names in errors are its dotted keys).
    ///
    /// # Errors
    /// `InvalidInput` naming the key and saying what works.
    pub fn validate(&self, name: &str) -> Result<()> {
        let at = |key: &str| format!("hosts.{name}.{key}");
        crate::record::validate_label(&format!("hosts.{name}"), name)?;
        if name == LOCAL_HOST {
            return Err(Error::invalid(
                format!("hosts.{LOCAL_HOST}"),
                "`local` is this machine's host, set by [docker] and [network]; give yours another name",
            ));
        }
        validate_docker_host(&at("engine"), &self.engine)?;
        // Every engine but a unix socket is spoken to over the network: TLS with client
        // certificates, or anyone reaching the port is root on that machine.
        if !self.engine.starts_with("unix://") {
            match &self.tls {
                None => {
                    return Err(Error::invalid(
                        at("engine"),
                        format!(
                            "`{}` is a TCP engine without client certificates: anyone reaching that port is root on that machine; add tls = {{ dir = \"/etc/girofle/hosts/{name}\" }} (ca.pem, cert.pem, key.pem; dockerd --tlsverify) or use a unix:// socket",
                            self.engine
                        ),
                    ))
                }
                Some(tls) => {
                    tls.files(&at("tls"))?;
                }
            }
        } else if let Some(tls) = &self.tls {
            tls.files(&at("tls"))?;
        }
        if self.ips.is_empty() {
            return Err(Error::invalid(
                at("ips"),
                "list at least one address of that machine, e.g. ips = [\"10.0.0.5\"]",
            ));
        }
        if port_ranges(&at("ports"), &self.ports)?.is_empty() {
            return Err(Error::invalid(
                at("ports"),
                "list at least one port range, e.g. ports = [\"20080-20999\"]",
            ));
        }
        if !self.data_dir.starts_with('/') || self.data_dir.contains('\0') {
            return Err(Error::invalid(
                at("data_dir"),
                format!(
                    "`{}` is not an absolute path; give the directory on that machine under which instance directories live, e.g. \"/var/lib/girofle\"",
                    self.data_dir
                ),
            ));
        }
        for (k, v) in &self.labels {
            validate_host_label(&at("labels"), k, v)?;
        }
        Ok(())
    }

    /// How to reach its engine: another machine's, with the bounded `wait`.
    ///
    /// # Errors
    /// `InvalidInput` when the certificates are given incompletely.
    pub fn engine_options(&self, name: &str, wait: std::time::Duration) -> Result<EngineOptions> {
        let tls = match &self.tls {
            Some(t) => Some(t.files(&format!("hosts.{name}.tls"))?),
            None => None,
        };
        Ok(EngineOptions {
            host: Some(self.engine.clone()),
            tls,
            connect_timeout: Some(wait),
            // A named host is another machine, even when reached through a loopback
            // tunnel or port: the addresses its containers publish are not this one's.
            on_this_host: Some(self.engine.starts_with("unix://")),
            host_name: Some(name.to_string()),
        })
    }
}

/// The port ranges of a pool, as `[network] ports` reads them (`"FIRST-LAST"` or
/// `"PORT"`), for `[network]` and every `[hosts.NAME]` alike. Here rather than in
/// `config`, which holds `[hosts]` and calls it: this module does not lead back there.
///
/// # Errors
/// `InvalidInput` naming `field` and the bad entry.
pub fn port_ranges(field: &str, ports: &[String]) -> Result<Vec<(u16, u16)>> {
    ports
        .iter()
        .map(|r| {
            let bad = || {
                Error::invalid(
                    field,
                    format!("`{r}` is not a port or a range like \"20080-20999\" (ports 1-65535)"),
                )
            };
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (r.trim(), r.trim()),
            };
            let a: u16 = a.parse().map_err(|_| bad())?;
            let b: u16 = b.parse().map_err(|_| bad())?;
            if a == 0 || b < a {
                return Err(bad());
            }
            Ok((a, b))
        })
        .collect()
}

/// Checks the `[hosts]` of a configuration.
///
/// # Errors
/// `InvalidInput` naming the first bad key.
pub fn validate_all(hosts: &BTreeMap<String, HostConfig>) -> Result<()> {
    for (name, h) in hosts {
        h.validate(name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("g.toml"))
    }

    const GOOD: &str = r#"
[hosts.a]
engine = "tcp://10.0.0.5:2376"
tls = { dir = "/etc/girofle/hosts/a" }
ips = ["10.0.0.5"]
ports = ["20080-20999"]
data_dir = "/var/lib/girofle"
labels = { zone = "b" }
"#;

    #[test]
    fn a_host_table_parses() {
        let c = parse(GOOD).unwrap();
        let a = &c.hosts["a"];
        assert_eq!(a.labels["zone"], "b");
        let o = a
            .engine_options("a", std::time::Duration::from_secs(3))
            .unwrap();
        assert_eq!(o.on_this_host, Some(false));
        assert_eq!(
            o.tls.unwrap().key,
            PathBuf::from("/etc/girofle/hosts/a/key.pem")
        );
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let m = error(&GOOD.replace("labels =", "zone = \"b\"\nlabels ="));
        assert!(
            m.contains("unknown field `zone`") && m.contains("line"),
            "{m}"
        );
        let m = error(&GOOD.replace("dir =", "folder ="));
        assert!(m.contains("unknown field `folder`"), "{m}");
    }

    #[test]
    fn a_bad_engine_says_what_forms_work() {
        for (bad, says) in [
            ("ftp://x:1", "unsupported scheme"),
            ("ssh://admin@x", "scheme `ssh`"),
            ("unix://relative.sock", "absolute socket path"),
            ("not an url", "not an address"),
        ] {
            let m = error(&GOOD.replace("tcp://10.0.0.5:2376", bad));
            assert!(
                m.contains("hosts.a.engine") && m.contains(says) && m.contains("tcp://HOST:2376"),
                "{bad}: {m}"
            );
        }
    }

    #[test]
    fn tcp_needs_certificates_and_tls_must_be_whole() {
        let m = error(&GOOD.replace("tls = { dir = \"/etc/girofle/hosts/a\" }\n", ""));
        assert!(
            m.contains("without client certificates") && m.contains("tls = {"),
            "{m}"
        );
        let m = error(&GOOD.replace("dir = \"/etc/girofle/hosts/a\"", "ca = \"/c.pem\""));
        assert!(m.contains("hosts.a.tls") && m.contains("incomplete"), "{m}");
    }

    #[test]
    fn pool_data_dir_labels_and_name_are_checked() {
        let m = error(&GOOD.replace("ips = [\"10.0.0.5\"]", "ips = []"));
        assert!(
            m.contains("hosts.a.ips") && m.contains("at least one"),
            "{m}"
        );
        let m = error(&GOOD.replace("\"20080-20999\"", "\"9-3\""));
        assert!(m.contains("hosts.a.ports") && m.contains("`9-3`"), "{m}");
        let m = error(&GOOD.replace("\"/var/lib/girofle\"", "\"var/lib\""));
        assert!(
            m.contains("hosts.a.data_dir") && m.contains("absolute"),
            "{m}"
        );
        let m = error(&GOOD.replace("zone = ", "Zone = "));
        assert!(m.contains("hosts.a.labels") && m.contains("`Zone`"), "{m}");
        let m = error(&GOOD.replace("[hosts.a]", "[hosts.local]"));
        assert!(
            m.contains("hosts.local") && m.contains("another name"),
            "{m}"
        );
        let m = error(&GOOD.replace("[hosts.a]", "[hosts.Bad_Name]"));
        assert!(m.contains("hosts.Bad_Name"), "{m}");
        let m = error(&GOOD.replace("ips = [\"10.0.0.5\"]", "ips = [\"10.0.0\"]"));
        assert!(m.contains("hosts.a.ips") || m.contains("line"), "{m}");
    }
}
