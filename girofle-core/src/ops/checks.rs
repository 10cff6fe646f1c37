//! GitLab's own verdict on an instance: `gitlab-rake gitlab:check` and
//! `gitlab-rake gitlab:doctor:secrets`, read from what they print.
//!
//! Both tasks report and exit 0 whatever they find (only a Rails that cannot boot makes
//! them fail), so their exit code proves nothing: a restore with the wrong
//! `gitlab-secrets.json` passes both by exit code. This module reads their output the way
//! an operator would. Running them is the caller's job (`restore`).

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How many lines of a failed check an error or a drill report quotes.
const QUOTED_LINES: usize = 12;

/// What GitLab's checks found on a running instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitLabChecks {
    /// `gitlab:check` reported no failing check.
    pub check_ok: bool,
    /// `gitlab:doctor:secrets` decrypted every row (`Total: 0 row(s) affected`).
    pub secrets_ok: bool,
    /// The rows `doctor:secrets` could not decrypt, when it said.
    pub affected_rows: Option<u64>,
    /// The lines that show what failed, quoted from both tasks.
    pub failures: Vec<String>,
}

impl GitLabChecks {
    /// Reads both tasks' outputs and exit codes.
    pub fn read(check: (&str, i64), secrets: (&str, i64)) -> GitLabChecks {
        let mut failures = Vec::new();
        let check_failures = gitlab_check_failures(check.0);
        let check_ok = check.1 == 0 && check_failures.is_empty();
        if check.1 != 0 {
            failures.push(format!(
                "gitlab:check exited with {}: {}",
                check.1,
                last_line(check.0)
            ));
        }
        failures.extend(
            check_failures
                .into_iter()
                .map(|l| format!("gitlab:check: {l}")),
        );
        let (affected_rows, secrets_failures) = doctor_secrets_failures(secrets.0);
        let secrets_ok = secrets.1 == 0 && affected_rows == Some(0);
        if secrets.1 != 0 {
            failures.push(format!(
                "gitlab:doctor:secrets exited with {}: {}",
                secrets.1,
                last_line(secrets.0)
            ));
        }
        match affected_rows {
            None => failures.push(
                "gitlab:doctor:secrets did not report its `Total: N row(s) affected` line"
                    .to_string(),
            ),
            Some(0) => {}
            Some(_) => failures.extend(
                secrets_failures
                    .into_iter()
                    .map(|l| format!("gitlab:doctor:secrets: {l}")),
            ),
        }
        failures.truncate(QUOTED_LINES);
        GitLabChecks {
            check_ok,
            secrets_ok,
            affected_rows,
            failures,
        }
    }

    /// `Ok` when both passed; otherwise the error a restore fails with. Secrets that do not
    /// decrypt the data make the backup unusable as it is (`Corrupt`); another failing
    /// check means the restored GitLab is not in working order (`Unhealthy`).
    ///
    /// # Errors
    /// `Corrupt` or `Unhealthy`, quoting what GitLab printed.
    pub fn into_result(self, backup: &str) -> Result<(), Error> {
        let quoted = self.failures.join("\n  ");
        if !self.secrets_ok {
            return Err(Error::corrupt(
                format!("backup `{backup}`"),
                format!(
                    "GitLab cannot decrypt its data with its gitlab-secrets.json ({}):\n  {quoted}\nthe backup's secrets do not match its database; restore a backup made with the instance's own /etc/gitlab",
                    match self.affected_rows {
                        Some(n) => format!("{n} row(s) affected"),
                        None => "no total reported".into(),
                    }
                ),
            ));
        }
        if !self.check_ok {
            return Err(Error::Unhealthy {
                message: format!(
                    "GitLab's checks failed after restoring backup `{backup}`:\n  {quoted}"
                ),
                health_log: String::new(),
                logs: String::new(),
            });
        }
        Ok(())
    }
}

/// The failing checks of `gitlab:check`: each `... no` answer, and each rescued
/// `Exception:` line.
pub fn gitlab_check_failures(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.ends_with("... no")
                || l.contains("... no ")
                || l.contains("... no,")
                || l.starts_with("Exception:")
                || l.contains(" Exception: ")
        })
        .map(str::to_string)
        .collect()
}

/// The rows `doctor:secrets` says it could not decrypt (`None` when it did not print its
/// total), and the lines that say which.
pub fn doctor_secrets_failures(output: &str) -> (Option<u64>, Vec<String>) {
    let total = output.lines().rev().find_map(|l| {
        let (_, rest) = l.split_once("Total: ")?;
        rest.split_whitespace().next()?.parse::<u64>().ok()
    });
    let lines = output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("ERROR")
                || l.split_once("failures: ")
                    .and_then(|(_, n)| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        })
        .map(|l| {
            // Drop the logger's `E, [time #pid] ERROR -- :` prefix.
            l.split_once(" -- : ").map_or(l, |(_, m)| m).to_string()
        })
        .collect();
    (total, lines)
}

fn last_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK_OK: &str = "Checking GitLab subtasks ...\n\nChecking GitLab Shell ...\n\nGitLab Shell: ... GitLab Shell version >= 14.39.0 ? ... OK (14.39.0)\nInternal API available: OK\n\nChecking Gitaly ...\n\nGitaly: ... default ... OK\n\nChecking GitLab App ...\n\nDatabase config exists? ... yes\nInit script exists? ... skipped (omnibus-gitlab has no init script)\nProjects have namespace: ... \n2/1 ... yes\nRedis version >= 6.0.0? ... yes\nElasticsearch version 7.x-8.x or OpenSearch version 1.x ... skipped - Elasticsearch is disabled\n\nChecking GitLab App ... Finished\n\nChecking GitLab subtasks ... Finished\n";

    const SECRETS_OK: &str = "I, [2026-12-04T10:00:00.1 #1]  INFO -- : Checking encrypted values in the database\nI, [2026-12-04T10:00:01.1 #1]  INFO -- : - ApplicationSetting failures: 0\nI, [2026-12-04T10:00:01.2 #1]  INFO -- : - Ci::Variable failures: 0\nI, [2026-12-04T10:00:02.0 #1]  INFO -- : Total: 0 row(s) affected\nI, [2026-12-04T10:00:02.0 #1]  INFO -- : Done!\n";

    const SECRETS_BAD: &str = "I, [2026-12-04T10:00:00.1 #1]  INFO -- : Checking encrypted values in the database\nI, [2026-12-04T10:00:01.1 #1]  INFO -- : - ApplicationSetting failures: 1\nI, [2026-12-04T10:00:01.2 #1]  INFO -- : - Ci::Variable failures: 0\nE, [2026-12-04T10:00:01.3 #1] ERROR -- : > ApplicationSetting[1] failed: ActiveSupport::MessageEncryptor::InvalidMessage\nI, [2026-12-04T10:00:02.0 #1]  INFO -- : Total: 1 row(s) affected\nI, [2026-12-04T10:00:02.0 #1]  INFO -- : Done!\n";

    #[test]
    fn a_clean_report_passes() {
        let c = GitLabChecks::read((CHECK_OK, 0), (SECRETS_OK, 0));
        assert!(c.check_ok && c.secrets_ok, "{c:?}");
        assert_eq!(c.affected_rows, Some(0));
        c.into_result("web/20261204T100000Z").unwrap();
    }

    #[test]
    fn affected_rows_fail_although_the_exit_code_is_zero() {
        let c = GitLabChecks::read((CHECK_OK, 0), (SECRETS_BAD, 0));
        assert!(c.check_ok && !c.secrets_ok);
        assert_eq!(c.affected_rows, Some(1));
        let e = c.into_result("web/x").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        let said = e.to_string();
        assert!(said.contains("1 row(s) affected"), "{said}");
        assert!(said.contains("ApplicationSetting[1] failed"), "{said}");
        assert!(said.contains("ApplicationSetting failures: 1"), "{said}");
    }

    #[test]
    fn a_failing_check_fails_although_the_exit_code_is_zero() {
        let out = CHECK_OK.replace(
            "Redis version >= 6.0.0? ... yes",
            "Redis version >= 6.0.0? ... no\n  Try fixing it:\n  Update your redis server\n  Please fix the error above and rerun the checks.",
        ) + "Exception: PG::ConnectionBad\n";
        let c = GitLabChecks::read((&out, 0), (SECRETS_OK, 0));
        assert!(!c.check_ok && c.secrets_ok);
        let e = c.into_result("web/x").unwrap_err();
        assert!(matches!(e, Error::Unhealthy { .. }), "{e:?}");
        let said = e.to_string();
        assert!(said.contains("Redis version >= 6.0.0? ... no"), "{said}");
        assert!(said.contains("Exception: PG::ConnectionBad"), "{said}");
    }

    #[test]
    fn silence_or_a_crash_is_not_a_pass() {
        let c = GitLabChecks::read(("", 1), ("rake aborted!\n", 1));
        assert!(!c.check_ok && !c.secrets_ok);
        assert_eq!(c.affected_rows, None);
        let c = GitLabChecks::read((CHECK_OK, 0), ("Done!\n", 0));
        assert!(!c.secrets_ok, "no total line is not a pass");
    }

    #[test]
    fn labels_that_contain_no_are_not_failures() {
        let out = "Is the node known? ... yes\nnothing to do ... skipped\n";
        assert!(gitlab_check_failures(out).is_empty());
    }
}
