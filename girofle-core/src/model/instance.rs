//! The instance model: what Girofle records about one GitLab instance, how its names,
//! settings and directories look, and how its container is described to the engine.
//!
//! The operations that change instances (commission, start, reconfigure, ...) are in
//! `fleet`; this module is pure data and validation, with no I/O but path arithmetic.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adapters::runtime::{Bind, ContainerSpec, HealthCheck, PublishedPort};
use crate::error::{Error, Result};

pub use crate::record::*;

/// The host directories of one instance under a Girofle root.
#[derive(Clone, Debug)]
pub struct InstanceDirs {
    pub base: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
    pub logs: PathBuf,
}

impl InstanceDirs {
    /// The directories of instance `name` under `root`.
    pub fn new(root: &Path, name: &str) -> Self {
        Self::at(root.join("instances").join(name))
    }

    /// The directories under a given base (used for staging and decommissioned copies).
    pub fn at(base: PathBuf) -> Self {
        InstanceDirs {
            config: base.join("config"),
            data: base.join("data"),
            logs: base.join("logs"),
            base,
        }
    }

    /// (archive prefix, host dir, container path) for the three volumes.
    pub fn volumes(&self) -> [(&'static str, &Path, &'static str); 3] {
        [
            ("config", self.config.as_path(), "/etc/gitlab"),
            ("data", self.data.as_path(), "/var/opt/gitlab"),
            ("logs", self.logs.as_path(), "/var/log/gitlab"),
        ]
    }
}

/// Health-check and timing knobs for containers.
#[derive(Clone, Copy, Debug)]
pub struct HealthSettings {
    pub interval: Duration,
    pub boot_timeout: Duration,
    /// How long the engine lets GitLab stop (`gitlab-ctl stop`) before it kills it.
    pub stop_grace: Duration,
}

/// Time between the engine's probes while a container boots, where the engine can.
pub const START_INTERVAL: Duration = Duration::from_secs(2);

/// `/dev/shm` of an instance: GitLab asks for 256 MB (the engine's 64 MB default breaks
/// its Prometheus metrics files).
pub const SHM_SIZE: u64 = 256 * 1024 * 1024;
/// The container log is capped: the wrapper tails every GitLab log (health probes
/// included) to stdout, which grows without bound otherwise.
pub const LOG_MAX_SIZE: &str = "50m";
/// Log files kept by the engine.
pub const LOG_MAX_FILES: u32 = 3;

/// `GITLAB_OMNIBUS_CONFIG` for an instance: applied by GitLab at every boot. It holds
/// addresses only, never a managed setting: `docker inspect` shows the environment to
/// whoever may talk to the engine (the settings live in gitlab.rb, 0600).
///
/// GitLab's nginx listens on the port of `external_url` unless told otherwise; the
/// container publishes port 80, so nginx is pinned there (the host port differs).
pub fn omnibus_config(record: &InstanceRecord) -> String {
    format!(
        "external_url '{}'; nginx['listen_port'] = 80; gitlab_rails['gitlab_shell_ssh_port'] = {}",
        record.external_url, record.bindings.ssh_port
    )
}

/// The external URL of an instance.
pub fn external_url(hostname: Option<&str>, bindings: &Bindings) -> String {
    let host = match (hostname, bindings.ip) {
        (Some(h), _) => h.to_string(),
        (None, IpAddr::V6(ip)) => format!("[{ip}]"),
        (None, ip) => ip.to_string(),
    };
    format!("http://{host}:{}", bindings.http_port)
}

/// The container description of an instance.
pub fn container_spec(
    root: &Path,
    record: &InstanceRecord,
    dirs: &InstanceDirs,
    health: HealthSettings,
) -> ContainerSpec {
    let mut labels: HashMap<String, String> = record
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_INSTANCE.into(), record.name.clone());
    labels.insert(LABEL_ROOT.into(), root.display().to_string());
    let ip = record.bindings.ip.to_string();
    ContainerSpec {
        name: record.container_name(),
        image: record.image.clone(),
        hostname: Some(
            record
                .hostname
                .clone()
                .unwrap_or_else(|| format!("gitlab-{}", record.name)),
        ),
        env: vec![format!("GITLAB_OMNIBUS_CONFIG={}", omnibus_config(record))],
        labels,
        binds: dirs
            .volumes()
            .iter()
            .map(|(_, host, container)| Bind {
                host: host.display().to_string(),
                container: container.to_string(),
            })
            .collect(),
        ports: vec![
            PublishedPort {
                host_ip: ip.clone(),
                host_port: record.bindings.http_port,
                container_port: 80,
            },
            PublishedPort {
                host_ip: ip.clone(),
                host_port: record.bindings.https_port,
                container_port: 443,
            },
            PublishedPort {
                host_ip: ip,
                host_port: record.bindings.ssh_port,
                container_port: 22,
            },
        ],
        restart_unless_stopped: true,
        shm_size: SHM_SIZE,
        log_max_size: LOG_MAX_SIZE.into(),
        log_max_files: LOG_MAX_FILES,
        stop_timeout: health.stop_grace,
        health_check: Some(HealthCheck {
            // The official image's own probe: a full Rails request that GitLab logs, so
            // not every second once GitLab serves; Girofle's own waits probe by exec.
            test: crate::model::health::PROBE
                .iter()
                .map(|s| s.to_string())
                .collect(),
            interval: health.interval,
            timeout: Duration::from_secs(30),
            retries: 5,
            // GitLab's first boot takes minutes: failures during it must not mark the
            // container unhealthy (a success still marks it healthy at once).
            start_period: health.boot_timeout,
            // Where the engine can (API 1.44+), it notices the end of a boot within
            // seconds rather than an interval.
            start_interval: START_INTERVAL.min(health.interval),
        }),
    }
}

/// Markers of the block of `gitlab.rb` that Girofle owns.
pub const MANAGED_BEGIN: &str =
    "# BEGIN girofle managed settings (edit with `girofle instance reconfigure`)";
/// End marker.
pub const MANAGED_END: &str = "# END girofle managed settings";

/// One setting as a `gitlab.rb` line. Top-level settings are method calls
/// (`registry_external_url 'https://…'`): `registry_external_url = '…'` would be a Ruby
/// local variable that GitLab accepts and ignores.
fn setting_line(key: &str, value: &str) -> String {
    if key.contains('[') {
        format!("{key} = {value}")
    } else {
        format!("{key} {value}")
    }
}

/// The settings Girofle owns: the external URL, the port nginx listens on inside the
/// container (the one published) and the SSH port GitLab shows. Set by `--set`, a user's
/// edit or another instance's restored gitlab.rb, they would move GitLab off its
/// published addresses while its health check (which follows nginx's port) stays green.
pub const PINNED_KEYS: [&str; 4] = [
    "external_url",
    "nginx['listen_port']",
    "nginx['listen_https']",
    "gitlab_rails['gitlab_shell_ssh_port']",
];

/// Where the official image keeps the gitlab.rb template its wrapper copies to
/// `/etc/gitlab/gitlab.rb` when there is none.
pub const GITLAB_RB_TEMPLATE: &str = "/opt/gitlab/etc/gitlab.rb.template";

/// The line after which the managed block holds the pinned settings.
pub const PINS_MARK: &str =
    "# pinned by Girofle (its addresses): gitlab.rb is read after GITLAB_OMNIBUS_CONFIG and wins";

/// The pinned settings of an instance, as (key, Ruby literal): the same as its
/// `GITLAB_OMNIBUS_CONFIG`, written again at the end of gitlab.rb where they win.
pub fn pinned_settings(record: &InstanceRecord) -> Vec<(String, String)> {
    vec![
        ("external_url".into(), format!("'{}'", record.external_url)),
        ("nginx['listen_port']".into(), "80".into()),
        (
            "gitlab_rails['gitlab_shell_ssh_port']".into(),
            record.bindings.ssh_port.to_string(),
        ),
    ]
}

/// Refuses a setting GitLab could not run with, before anything is written: one Girofle
/// owns ([`refuse_pinned`]), or an `initial_root_password` shorter than the 8 characters
/// GitLab requires (its reconfigure fails on one, at the first boot and every time after).
///
/// # Errors
/// `InvalidInput` naming the key and what to give instead; never the value.
pub fn check_setting(key: &str, literal: &str) -> Result<()> {
    refuse_pinned(key)?;
    let norm = key.replace('"', "'").replace(' ', "");
    if norm == "gitlab_rails['initial_root_password']" {
        let long_enough = match crate::ruby::parse(literal) {
            Ok(crate::ruby::Literal::Str(pw)) => pw.chars().count() >= 8,
            _ => false,
        };
        if !long_enough {
            return Err(Error::invalid(
                "--set",
                format!(
                    "`{key}` must be a string of at least 8 characters: GitLab's reconfigure fails on a shorter one, and GitLab with it"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a setting Girofle owns, saying how to change it instead.
///
/// # Errors
/// `InvalidInput` naming the key.
pub fn refuse_pinned(key: &str) -> Result<()> {
    let norm = key.replace('"', "'").replace(' ', "");
    if PINNED_KEYS.contains(&norm.as_str()) {
        return Err(Error::invalid(
            "--set",
            format!(
                "`{key}` is Girofle's: it follows the instance's published addresses, and another value would move GitLab off them; choose the addresses with --hostname, --http-port and --ssh-port at create (or restore --as with new ones)"
            ),
        ));
    }
    Ok(())
}

/// The lines of a `gitlab.rb` text that set a pinned setting where it wins over
/// Girofle's: after the managed block (or anywhere when there is none). A top-level
/// setting counts only as a method call (`external_url 'x'`); `external_url = 'x'` is a
/// Ruby local variable that sets nothing.
pub fn pin_overrides(text: &str) -> Vec<String> {
    let after = match (text.find(MANAGED_BEGIN), text.find(MANAGED_END)) {
        (Some(b), Some(e)) if e > b => &text[e + MANAGED_END.len()..],
        _ => text,
    };
    after
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter(|line| {
            let l = line.replace('"', "'").replace(' ', "");
            PINNED_KEYS.iter().any(|k| {
                if k.contains('[') {
                    l.strip_prefix(k)
                        .is_some_and(|r| r.starts_with('=') && !r.starts_with("=="))
                } else {
                    line.strip_prefix(k).is_some_and(|r| {
                        (r.starts_with(' ') || r.starts_with('(') || r.starts_with('\''))
                            && !r.trim_start().starts_with('=')
                    })
                }
            })
        })
        .map(str::to_string)
        .collect()
}

/// Replaces (or appends) the managed block of a `gitlab.rb` text; the rest is untouched.
/// The block holds `settings`, then `pins` (see [`pinned_settings`]) last, where they win.
pub fn render_gitlab_rb(
    current: &str,
    settings: &BTreeMap<String, String>,
    pins: &[(String, String)],
) -> String {
    let mut block = String::new();
    block.push_str(MANAGED_BEGIN);
    block.push('\n');
    for (k, v) in settings {
        block.push_str(&setting_line(k, v));
        block.push('\n');
    }
    if !pins.is_empty() {
        block.push_str(PINS_MARK);
        block.push('\n');
        for (k, v) in pins {
            block.push_str(&setting_line(k, v));
            block.push('\n');
        }
    }
    block.push_str(MANAGED_END);
    block.push('\n');
    match (current.find(MANAGED_BEGIN), current.find(MANAGED_END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &current[e + MANAGED_END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{}{}", &current[..b], block, after)
        }
        _ => {
            let mut out = current.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block);
            out
        }
    }
}

/// The settings in the managed block of a `gitlab.rb` text (used after a restore, where
/// the backup's metadata holds only fingerprints but `gitlab.rb` holds the values). Only
/// lines `KEY = LITERAL` that `--set` could have written are taken: the file comes from a
/// store, and a line carrying code must not become a setting Girofle writes again.
pub fn managed_settings(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let (Some(b), Some(e)) = (text.find(MANAGED_BEGIN), text.find(MANAGED_END)) {
        if e > b {
            for line in text[b + MANAGED_BEGIN.len()..e].lines() {
                let line = line.trim();
                if line == PINS_MARK {
                    break;
                }
                // `key['x'] = value`, or a top-level `key value` (written by earlier
                // Girofles as `key = value`, which is read back the same).
                let head = line
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(line.len());
                let pair = if line[head..].starts_with('[') {
                    line.split_once(" = ")
                } else {
                    let v = line[head..].trim_start();
                    (head > 0).then(|| (&line[..head], v.strip_prefix("= ").unwrap_or(v)))
                };
                if let Some((k, v)) = pair {
                    let (k, v) = (k.trim(), v.trim());
                    if valid_key(k) && crate::ruby::parse(v).is_ok() {
                        out.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "ci-2", "web", &"a".repeat(40)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a_b",
            "1a",
            "a.b",
            &"a".repeat(41),
            "a b",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().contains("lowercase"), "{e}");
        }
    }

    #[test]
    fn settings_parse_and_quote() {
        assert_eq!(
            parse_setting("gitlab_rails['time_zone']=UTC").unwrap(),
            ("gitlab_rails['time_zone']".into(), "'UTC'".into())
        );
        assert_eq!(
            parse_setting("nginx['listen_port'] = 8080").unwrap().1,
            "8080"
        );
        assert_eq!(parse_setting("x['y']=\"it's\"").unwrap().1, "\"it's\"");
        assert_eq!(
            parse_setting("x['y']={'a' => ['b', 1]}").unwrap().1,
            "{'a' => ['b', 1]}"
        );
        for bad in [
            "x['y']=it's",
            "x['y']='a'; system('x'); 'b'",
            "x['y']=\"#{`id`}\"",
            "x['y']=[1, foo]",
        ] {
            let e = parse_setting(bad).unwrap_err().to_string();
            assert!(e.contains("at character") && e.contains("x['y']"), "{e}");
            assert!(!e.contains("system") && !e.contains("foo"), "{e}");
        }
        for bad in [
            "novalue",
            "Bad['k']=1",
            "a['b'=1",
            "a['b']=",
            "a b=1",
            "a['b']x=1",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn managed_block_replaced_rest_untouched() {
        let mut s = BTreeMap::new();
        s.insert("a['b']".to_string(), "1".to_string());
        s.insert(
            "registry_external_url".to_string(),
            "'https://r.example.com'".to_string(),
        );
        s.insert("gitlab_rails['time_zone']".to_string(), "'UTC'".to_string());
        let first = render_gitlab_rb("# top\nfoo 'bar'\n", &s, &[]);
        // Top-level settings are method calls; the others assignments.
        assert!(
            first.contains("\nregistry_external_url 'https://r.example.com'\n"),
            "{first}"
        );
        assert!(
            first.contains("\ngitlab_rails['time_zone'] = 'UTC'\n"),
            "{first}"
        );
        // What earlier Girofles wrote reads back the same.
        let old = format!(
            "{MANAGED_BEGIN}\nregistry_external_url = 'https://r.example.com'\n{MANAGED_END}\n"
        );
        assert_eq!(
            managed_settings(&old)
                .get("registry_external_url")
                .map(String::as_str),
            Some("'https://r.example.com'")
        );
        assert!(first.starts_with("# top\nfoo 'bar'\n# BEGIN"));
        s.insert("a['c']".to_string(), "2".to_string());
        let second = render_gitlab_rb(&format!("{first}# tail\n"), &s, &[]);
        assert_eq!(second.matches(MANAGED_BEGIN).count(), 1);
        assert!(second.contains("a['c'] = 2\n") && second.ends_with("# tail\n"));
        assert_eq!(managed_settings(&second), s);
        // A managed line carrying code is not taken back as a setting.
        let hostile = second.replace("a['c'] = 2", "a['c'] = 2; system('id')");
        let taken = managed_settings(&hostile);
        assert_eq!(taken.len(), s.len() - 1, "{taken:?}");
        assert!(!taken.contains_key("a['c']"), "{taken:?}");
    }

    #[test]
    fn outputs_redact_every_value_and_manifests_fingerprint_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::model::fingerprint::FingerprintKey::of_root(dir.path()).unwrap();
        let mut settings = BTreeMap::new();
        settings.insert(
            "gitlab_rails['otp_key_base']".to_string(),
            "'PLANTED-otp'".to_string(),
        );
        let r = InstanceRecord {
            name: "a".into(),
            image: "i:1.0.0-ce.0".into(),
            bindings: Bindings {
                ip: "127.0.0.1".parse().unwrap(),
                http_port: 1,
                https_port: 2,
                ssh_port: 3,
            },
            hostname: None,
            external_url: "http://127.0.0.1:1".into(),
            settings,
            labels: BTreeMap::new(),
            created_at: chrono::Utc::now(),
            stage: Stage::Active,
            host: None,
        };
        let shown = serde_json::to_string(&r.redacted()).unwrap();
        assert!(
            !shown.contains("PLANTED") && shown.contains("otp_key_base"),
            "{shown}"
        );
        let kept = serde_json::to_string(&r.fingerprinted(&key)).unwrap();
        assert!(
            !kept.contains("PLANTED") && kept.contains("blake3-keyed:"),
            "{kept}"
        );
        assert!(setting_values(r.settings.values()).contains(&"PLANTED-otp".to_string()));
    }

    #[test]
    fn errors_are_scrubbed_of_whole_values_and_nested_strings() {
        let values = setting_values(
            [
                "{'main' => {'password' => 'PLANTED-ldap', 'port' => 3890}}".to_string(),
                "8080".to_string(),
                "'UTC'".to_string(),
            ]
            .iter(),
        );
        let e = Error::Command {
            container: "c".into(),
            command: "gitlab-ctl reconfigure".into(),
            exit_code: 1,
            output: "line 3: x = {'main' => {'password' => 'PLANTED-ldap', 'port' => 3890}}; password PLANTED-ldap; port 8080".into(),
        }
        .scrubbed(&values);
        let text = e.to_string();
        assert!(!text.contains("PLANTED"), "{text}");
        // Numbers are no secret: a port stays readable.
        assert!(text.contains("port 8080"), "{text}");
        assert!(matches!(e, Error::Command { exit_code: 1, .. }));
    }

    #[test]
    fn image_versions() {
        assert_eq!(
            image_version("gitlab/gitlab-ce:17.5.1-ce.0"),
            Some(("17.5.1".into(), "ce".into()))
        );
        assert_eq!(
            image_version("localhost:5000/gitlab-ee:17.6.0-ee.0"),
            Some(("17.6.0".into(), "ee".into()))
        );
        assert_eq!(image_version("gitlab/gitlab-ce"), None);
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;

    fn record() -> InstanceRecord {
        InstanceRecord {
            name: "web".into(),
            image: "gitlab/gitlab-ce:17.5.1-ce.0".into(),
            bindings: Bindings {
                ip: "127.0.0.1".parse().unwrap(),
                http_port: 20080,
                https_port: 20081,
                ssh_port: 20082,
            },
            hostname: None,
            external_url: "http://127.0.0.1:20080".into(),
            settings: BTreeMap::new(),
            labels: BTreeMap::new(),
            created_at: chrono::Utc::now(),
            stage: Stage::Active,
            host: None,
        }
    }

    #[test]
    fn pins_come_last_and_are_not_settings() {
        let mut s = BTreeMap::new();
        s.insert("gitlab_rails['time_zone']".to_string(), "'UTC'".to_string());
        let text = render_gitlab_rb("# template\n", &s, &pinned_settings(&record()));
        let block = &text[text.find(MANAGED_BEGIN).unwrap()..];
        let tz = block.find("time_zone").unwrap();
        let url = block
            .find("\nexternal_url 'http://127.0.0.1:20080'\n")
            .unwrap();
        let port = block.find("\nnginx['listen_port'] = 80\n").unwrap();
        assert!(tz < url && tz < port, "{text}");
        assert!(block.contains("gitlab_rails['gitlab_shell_ssh_port'] = 20082"));
        assert_eq!(managed_settings(&text), s);
        assert!(pin_overrides(&text).is_empty(), "{text}");
        // Rendering again changes nothing.
        assert_eq!(
            render_gitlab_rb(&text, &s, &pinned_settings(&record())),
            text
        );
    }

    #[test]
    fn overrides_after_the_block_are_found() {
        let text = render_gitlab_rb(
            "nginx['listen_port'] = 1\n",
            &BTreeMap::new(),
            &pinned_settings(&record()),
        );
        // Before the block: Girofle's pins win.
        assert!(pin_overrides(&text).is_empty());
        for (line, found) in [
            ("nginx['listen_port'] = 8080", true),
            ("nginx[\"listen_port\"]=8080", true),
            ("external_url 'http://other:80'", true),
            ("external_url('http://other')", true),
            ("external_url = 'x'", false),
            ("# nginx['listen_port'] = 8080", false),
            ("nginx['listen_port'] == 1", false),
            ("gitlab_rails['time_zone'] = 'UTC'", false),
        ] {
            let t = format!("{text}{line}\n");
            assert_eq!(!pin_overrides(&t).is_empty(), found, "{line}");
        }
        // Without a block, anywhere.
        assert_eq!(pin_overrides("nginx['listen_port'] = 8080\n").len(), 1);
    }

    #[test]
    fn pinned_keys_and_short_root_passwords_are_refused_in_set() {
        for k in PINNED_KEYS {
            assert!(refuse_pinned(k).is_err(), "{k}");
        }
        assert!(refuse_pinned("nginx[\"listen_port\"]").is_err());
        refuse_pinned("gitlab_rails['time_zone']").unwrap();
        let pw = "gitlab_rails['initial_root_password']";
        check_setting(pw, "'s3cret-enough'").unwrap();
        for short in ["'tiny'", "'1234567'", "12345678", "nil"] {
            let e = check_setting(pw, short).unwrap_err().to_string();
            assert!(e.contains("at least 8 characters"), "{e}");
            assert!(!e.contains(short.trim_matches('\'')), "{e}");
        }
    }
}
