//! What GitLab's own `gitlab-backup create` leaves and says, for the online backup
//! (`backup`), its recovery (`recovery`) and the online restore (`restore`): where its
//! backup path is on the host, which files there are its tar and staging parts, and the
//! errors it logged. Running it is the callers' job.
//!
//! Under `CRON=1` GitLab prints nothing, errors included: what went wrong is only in
//! `/var/log/gitlab/gitlab-rails/backup_json.log` (JSON lines with a `severity` and a
//! `message`). Its backup path (`gitlab_rails['backup_path']`, default
//! `/var/opt/gitlab/backups`) is also its staging directory: it writes its parts there
//! and packs them into `<id>_gitlab_backup.tar`; a failed part, a killed run or a kill of
//! ours leaves them there, in the instance's data volume, where they would fill the disk
//! and go into the next cold backup (gitlab-contract.md).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::model::instance::InstanceDirs;

/// Where the data volume is mounted in the container.
const CONTAINER_DATA: &str = "/var/opt/gitlab";
/// GitLab's default backup path.
pub(crate) const DEFAULT_BACKUP_PATH: &str = "/var/opt/gitlab/backups";
/// The setting that moves it.
const BACKUP_PATH_KEY: &str = "gitlab_rails['backup_path']";
/// GitLab's backup log, under the logs volume (`/var/log/gitlab`).
const BACKUP_LOG: &str = "gitlab-rails/backup_json.log";
/// How much of the log's new lines is read at most (the end of them: the errors that
/// made it fail come last).
const LOG_READ_MAX: u64 = 4 << 20;
/// How many of GitLab's messages an error quotes, and how long each may be.
const QUOTED_MESSAGES: usize = 12;
const QUOTED_CHARS: usize = 600;
/// Directories of GitLab's own data under `/var/opt/gitlab`: a backup path inside one
/// would have Girofle delete GitLab's staging names (`db/`, `repositories/`, `tmp/`,
/// `*.tar.gz`) among GitLab's data.
const GITLAB_DATA_DIRS: &[&str] = &[
    "git-data",
    "gitaly",
    "gitlab-rails",
    "gitlab-ci",
    "gitlab-shell",
    "gitlab-workhorse",
    "gitlab-pages",
    "gitlab-kas",
    "gitlab-exporter",
    "postgresql",
    "postgres-exporter",
    "geo-postgresql",
    "pgbouncer",
    "patroni",
    "praefect",
    "redis",
    "redis-exporter",
    "sentinel",
    "registry",
    "nginx",
    "mattermost",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "consul",
    "logrotate",
    "etc",
];

/// GitLab's backup path of an instance: in the container, and the same directory in
/// the data volume on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackupPath {
    pub container: String,
    pub host: PathBuf,
}

/// The backup path the instance's `gitlab.rb` sets (the last `gitlab_rails['backup_path']
/// = '…'` line that is not a comment; GitLab's default without one). Girofle sets no
/// backup path in `GITLAB_OMNIBUS_CONFIG`, and gitlab.rb is read after it anyway.
///
/// # Errors
/// `Conflict` when the value is not one string literal, or not a directory of its own
/// below `/var/opt/gitlab` (Girofle takes GitLab's tar from the data volume and removes
/// GitLab's staging parts there), or when a directory on the way is a symbolic link;
/// `Io` when gitlab.rb cannot be read.
pub(crate) fn backup_path(name: &str, dirs: &InstanceDirs) -> Result<BackupPath> {
    let rb = dirs.config.join("gitlab.rb");
    let text = match std::fs::read_to_string(&rb) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("read", &rb, e)),
    };
    let container = match configured(&text) {
        Ok(Some(path)) => path,
        Ok(None) => DEFAULT_BACKUP_PATH.to_string(),
        Err(line) => {
            return Err(Error::Conflict(format!(
                "instance `{name}`: line {line} of gitlab.rb sets {BACKUP_PATH_KEY} to something other than one quoted path, so Girofle cannot tell where GitLab writes its backup; write it as {BACKUP_PATH_KEY} = '/var/opt/gitlab/backups' (or another directory of its own there)"
            )))
        }
    };
    let rel = relative_to_data(&container).map_err(|why| {
        // The value itself is not quoted: error messages never repeat settings.
        Error::Conflict(format!(
            "instance `{name}`: {BACKUP_PATH_KEY} in gitlab.rb {why}. Online backups need GitLab's backup path in a directory of its own below {CONTAINER_DATA} (the data volume: Girofle takes GitLab's tar from there and removes GitLab's staging parts there), e.g. {DEFAULT_BACKUP_PATH}; set it so (`girofle instance reconfigure {name} --set \"{BACKUP_PATH_KEY}=/var/opt/gitlab/backups\"`), or back up with --strategy cold"
        ))
    })?;
    let host = dirs.data.join(&rel);
    no_links_below(&dirs.data, &host).map_err(|e| match e {
        Error::Conflict(m) => Error::Conflict(format!("instance `{name}`: {m}")),
        e => e,
    })?;
    Ok(BackupPath { container, host })
}

/// The literal of the last line of `text` that sets the backup path: `Ok(None)` when
/// none does, `Err(line number)` when one sets it to anything but a string literal.
fn configured(text: &str) -> std::result::Result<Option<String>, usize> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(eq) = line.find('=') else {
            continue;
        };
        let key: String = line[..eq]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .replace('"', "'")
            .replace("[:backup_path]", "['backup_path']");
        if key != BACKUP_PATH_KEY || line[eq + 1..].starts_with('=') {
            continue;
        }
        let value = line[eq + 1..].trim();
        // A trailing comment is allowed: the literal is the longest prefix before a `#`
        // that parses.
        let mut cuts: Vec<usize> = value.match_indices('#').map(|(at, _)| at).collect();
        cuts.push(value.len());
        let literal = cuts
            .into_iter()
            .rev()
            .find_map(|cut| crate::ruby::parse(&value[..cut]).ok());
        match literal {
            Some(crate::ruby::Literal::Str(path)) => found = Some(path),
            _ => return Err(i + 1),
        }
    }
    Ok(found)
}

/// The path of a container directory relative to the data volume's root, or why it
/// cannot be used as GitLab's backup path.
fn relative_to_data(path: &str) -> std::result::Result<PathBuf, &'static str> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("is not an absolute path");
    }
    let mut rel = PathBuf::new();
    for c in p
        .strip_prefix(CONTAINER_DATA)
        .map_err(|_| "is outside /var/opt/gitlab, so GitLab's backup would not be in the data volume Girofle reads")?
        .components()
    {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            _ => return Err("has `..` in it"),
        }
    }
    let first = rel.components().next().and_then(|c| c.as_os_str().to_str());
    match first {
        None => Err("is the data volume's root itself"),
        Some(top) if GITLAB_DATA_DIRS.contains(&top) => {
            Err("is inside one of GitLab's own data directories")
        }
        Some(_) => Ok(rel),
    }
}

/// Refuses when a directory from `root` (excluded) down to `path` (included) is a
/// symbolic link: what the container's side can write must not send Girofle's removals
/// elsewhere on the host. Missing directories are fine (nothing to remove there).
fn no_links_below(root: &Path, path: &Path) -> Result<()> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(Error::Conflict(format!(
            "`{}` is not inside the data volume `{}`",
            path.display(),
            root.display()
        )));
    };
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Conflict(format!(
                    "`{}` in the data volume is a symbolic link; GitLab's backup path must be a real directory there (Girofle does not follow links the container could have made)",
                    at.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("inspect", &at, e)),
        }
    }
    Ok(())
}

/// The copies `STRATEGY=copy` makes of GitLab's file areas in its backup path (named
/// for each area's directory) before tarring them. GitLab removes a copy once tarred, but
/// a copy that failed (a file git cannot read) stays there after the backup.
const COPY_DIRS: &[&str] = &[
    "uploads",
    "builds",
    "artifacts",
    "pages",
    "lfs-objects",
    "terraform_state",
    "registry",
    "packages",
    "ci_secure_files",
    "external-diffs",
];

/// GitLab's file names in its backup path for the backup whose tar is `tar_name`: the
/// tar, the staging parts every backup writes there, and the copies `STRATEGY=copy`
/// makes there (see gitlab-contract.md).
fn is_part(file: &str, tar_name: &str) -> bool {
    file == tar_name
        || matches!(
            file,
            "backup_information.yml" | "db" | "repositories" | "tmp"
        )
        || COPY_DIRS.contains(&file)
        || file.ends_with(".tar.gz")
}

/// Removes GitLab's tar `tar_name` and its staging parts from its backup path `dir`
/// (inside the data volume `data`), never following a link. Returns the names removed.
///
/// # Errors
/// `Conflict` when a directory on the way is a symbolic link, `Io` when a removal fails.
pub(crate) fn remove_parts(data: &Path, dir: &Path, tar_name: &str) -> Result<Vec<String>> {
    no_links_below(data, dir)?;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.ctx("read directory", dir)?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if !is_part(&file, tar_name) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().ctx("inspect", &path)?;
        // A link is removed as a link; `remove_dir_all` does not follow links inside.
        if kind.is_dir() {
            std::fs::remove_dir_all(&path).ctx("delete", &path)?;
        } else {
            std::fs::remove_file(&path).ctx("delete", &path)?;
        }
        removed.push(file);
    }
    removed.sort();
    Ok(removed)
}

/// Bytes GitLab's tar and staging parts take in `dir` so far (best effort: for progress).
pub(crate) fn parts_size(dir: &Path, tar_name: &str) -> u64 {
    fn size_of(path: &Path) -> u64 {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| size_of(&e.path()))
                .sum(),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        }
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_part(&e.file_name().to_string_lossy(), tar_name))
        .map(|e| size_of(&e.path()))
        .sum()
}

/// Where GitLab's backup log ended before a backup started: only what it appends from
/// there belongs to that backup.
#[derive(Clone, Debug)]
pub(crate) struct LogMark {
    path: PathBuf,
    offset: u64,
}

impl LogMark {
    /// The end of `backup_json.log` in the instance's logs volume now.
    pub(crate) fn now(dirs: &InstanceDirs) -> LogMark {
        let path = dirs.logs.join(BACKUP_LOG);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogMark { path, offset }
    }

    /// What GitLab logged since the mark: its error messages, or (when it logged none)
    /// its last messages, bounded, oldest first; empty when the log has nothing new.
    pub(crate) fn said(&self) -> Said {
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            // Shorter than at the start: the log was rotated, all of it is new.
            let from = if len < self.offset { 0 } else { self.offset };
            let from = from.max(len.saturating_sub(LOG_READ_MAX));
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.take(LOG_READ_MAX).read_to_end(&mut text);
            }
        }
        let text = String::from_utf8_lossy(&text);
        let mut errors = Vec::new();
        let mut last = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let severity = v
                .get("severity")
                .or_else(|| v.get("level"))
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_ascii_uppercase();
            let Some(message) = v
                .get("message")
                .or_else(|| v.get("msg"))
                .and_then(|m| m.as_str())
            else {
                continue;
            };
            let message = bounded(message.trim());
            if matches!(severity.as_str(), "ERROR" | "FATAL") {
                errors.push(message);
            } else {
                last.push(message);
            }
        }
        let keep_last = |v: &mut Vec<String>| {
            let excess = v.len().saturating_sub(QUOTED_MESSAGES);
            v.drain(..excess);
        };
        if errors.is_empty() {
            keep_last(&mut last);
            Said {
                errors: false,
                messages: last,
            }
        } else {
            // The first errors say what failed first; keep those and the last ones.
            if errors.len() > QUOTED_MESSAGES {
                let skipped = errors.len() - QUOTED_MESSAGES;
                let tail = errors.split_off(errors.len() - QUOTED_MESSAGES / 2);
                errors.truncate(QUOTED_MESSAGES / 2);
                errors.push(format!("(… {skipped} more errors …)"));
                errors.extend(tail);
            }
            Said {
                errors: true,
                messages: errors,
            }
        }
    }
}

/// What GitLab logged during a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Said {
    /// Whether `messages` are its errors (else: its last messages of any level).
    pub errors: bool,
    pub messages: Vec<String>,
}

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.messages.is_empty() {
            return write!(f, "GitLab logged nothing in {BACKUP_LOG} about this backup");
        }
        if self.errors {
            write!(f, "GitLab's errors (from {BACKUP_LOG}):")?;
        } else {
            write!(
                f,
                "GitLab logged no error in {BACKUP_LOG}; its last messages:"
            )?;
        }
        for m in &self.messages {
            write!(f, "\n  {m}")?;
        }
        Ok(())
    }
}

fn bounded(message: &str) -> String {
    if message.chars().count() <= QUOTED_CHARS {
        return message.to_string();
    }
    let mut s: String = message.chars().take(QUOTED_CHARS).collect();
    s.push('…');
    s
}

/// Whether `gitlab-backup` refused to start because another backup or restore runs in
/// the container (its own lock): then the files in its backup path are that one's.
pub(crate) fn refused_as_busy(output: &str) -> bool {
    output.contains("Backup and restore in progress")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_path_is_read_from_gitlab_rb() {
        assert_eq!(
            configured("# gitlab_rails['backup_path'] = '/x'\n"),
            Ok(None)
        );
        assert_eq!(
            configured("gitlab_rails['backup_path'] = \"/var/opt/gitlab/b\" # mine\n"),
            Ok(Some("/var/opt/gitlab/b".into()))
        );
        assert_eq!(
            configured("gitlab_rails[\"backup_path\"]='/a'\ngitlab_rails[:backup_path] = '/b'\n"),
            Ok(Some("/b".into()))
        );
        assert_eq!(
            configured("x = 1\ngitlab_rails['backup_path'] = ENV['X']\n"),
            Err(2)
        );
        assert_eq!(
            configured("gitlab_rails['backup_path'] == '/a'\n"),
            Ok(None)
        );
        assert_eq!(
            configured("gitlab_rails['backup_path_other'] = '/a'\n"),
            Ok(None)
        );
    }

    #[test]
    fn only_directories_of_their_own_in_the_data_volume() {
        assert_eq!(
            relative_to_data("/var/opt/gitlab/backups"),
            Ok(PathBuf::from("backups"))
        );
        assert_eq!(
            relative_to_data("/var/opt/gitlab/./my/backups/"),
            Ok(PathBuf::from("my/backups"))
        );
        for bad in [
            "/mnt/backups",
            "/var/opt/gitlab",
            "/var/opt/gitlab/../x",
            "/var/opt/gitlab/git-data",
            "/var/opt/gitlab/git-data/repositories",
            "/var/opt/gitlab/postgresql/x",
            "/var/opt/gitlabx/b",
            "backups",
        ] {
            assert!(relative_to_data(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_and_only_parts_are_removed_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let backups = data.join("backups");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(backups.join("db")).unwrap();
        std::fs::create_dir_all(backups.join("repositories/team")).unwrap();
        std::fs::create_dir_all(backups.join("uploads/-/system")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        for f in [
            "backup_information.yml",
            "uploads.tar.gz",
            "1_2026_12_04_17.5.1_gitlab_backup.tar",
            "2_2026_12_04_17.5.1_gitlab_backup.tar",
            "notes.txt",
        ] {
            std::fs::write(backups.join(f), "x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, backups.join("repositories/team/link")).unwrap();
        assert!(parts_size(&backups, "1_2026_12_04_17.5.1_gitlab_backup.tar") >= 3);
        let removed =
            remove_parts(&data, &backups, "1_2026_12_04_17.5.1_gitlab_backup.tar").unwrap();
        assert_eq!(
            removed,
            vec![
                "1_2026_12_04_17.5.1_gitlab_backup.tar",
                "backup_information.yml",
                "db",
                "repositories",
                "uploads",
                "uploads.tar.gz"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(&backups)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["2_2026_12_04_17.5.1_gitlab_backup.tar", "notes.txt"]
        );
        assert!(outside.join("keep").exists(), "a link was followed");
        // A backup path that is a link is refused, and nothing behind it is touched.
        std::fs::remove_dir_all(&backups).unwrap();
        std::os::unix::fs::symlink(&outside, &backups).unwrap();
        std::fs::write(outside.join("backup_information.yml"), "x").unwrap();
        assert!(matches!(
            remove_parts(&data, &backups, "x.tar"),
            Err(Error::Conflict(_))
        ));
        assert!(outside.join("backup_information.yml").exists());
    }

    #[test]
    fn gitlabs_errors_since_the_mark_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = InstanceDirs::at(dir.path().to_path_buf());
        let log = dirs.logs.join(BACKUP_LOG);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(
            &log,
            "{\"severity\":\"ERROR\",\"message\":\"an old failure\"}\n",
        )
        .unwrap();
        let mark = LogMark::now(&dirs);
        assert_eq!(mark.said().messages, Vec::<String>::new());
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"{\"severity\":\"INFO\",\"time\":\"t\",\"correlation_id\":null,\"message\":\"Dumping uploads ... \"}\nnot json\n{\"severity\":\"ERROR\",\"time\":\"t\",\"correlation_id\":null,\"message\":\"Dumping uploads failed: denied\"}\n",
        )
        .unwrap();
        let said = mark.said();
        assert_eq!(
            said,
            Said {
                errors: true,
                messages: vec!["Dumping uploads failed: denied".into()]
            }
        );
        assert!(said.to_string().contains("backup_json.log"));
        // Rotated (shorter than at the mark): all of it is new.
        std::fs::write(&log, "{\"severity\":\"INFO\",\"message\":\"Dumping db\"}\n").unwrap();
        let said = mark.said();
        assert!(!said.errors && said.messages == vec!["Dumping db".to_string()]);
    }
}
