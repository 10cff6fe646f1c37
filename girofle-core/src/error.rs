//! The one public error type of Girofle.
//!
//! Every fallible function of the library returns [`Result`]. Variants are semantic, so a
//! caller (the CLI, the Python module, an Ansible module) can act on the kind of failure;
//! the message always says what happened, to what, and what to do next. Backend adapters
//! (Docker, SQLite, object stores) keep their precise errors private and lift them into
//! these variants.

use std::path::PathBuf;

/// `Result` with Girofle's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Girofle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing asked for does not exist (an instance, a backup, a store...).
    #[error("{what} not found: {hint}")]
    NotFound { what: String, hint: String },

    /// The thing to create exists already.
    #[error("{what} already exists: {hint}")]
    AlreadyExists { what: String, hint: String },

    /// The operation conflicts with the current state (an address in use, a lock held).
    #[error("{0}")]
    Conflict(String),

    /// An argument or a configuration value is wrong. `field` names it.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },

    /// A container did not become healthy in time, or reported unhealthy.
    #[error("{message}\n--- last health probe output ---\n{health_log}\n--- last container log lines ---\n{logs}")]
    Unhealthy {
        message: String,
        health_log: String,
        logs: String,
    },

    /// Data is damaged: a hash, a size or a checksum does not match.
    #[error("corrupt {what}: {message}")]
    Corrupt { what: String, message: String },

    /// A version does not match (GitLab version of a backup, archive format...).
    #[error("version mismatch: {0}")]
    VersionMismatch(String),

    /// A command run inside a container failed.
    #[error("`{command}` in container `{container}` exited with {exit_code}: {output}")]
    Command {
        container: String,
        command: String,
        exit_code: i64,
        output: String,
    },

    /// A file system operation on the host failed.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A backend (Docker engine, inventory database, object store) failed.
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
}

impl Error {
    /// `NotFound` with a hint on what to do.
    pub fn not_found(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::NotFound {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// `AlreadyExists` with a hint on what to do.
    pub fn already_exists(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::AlreadyExists {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// `InvalidInput` naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `Corrupt` naming what is damaged.
    pub fn corrupt(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            message: message.into(),
        }
    }

    /// `Backend` naming the backend.
    pub fn backend(backend: impl Into<String>, message: impl ToString) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: message.to_string(),
        }
    }

    /// `Io` saying what was being done to which path.
    pub fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }

    /// The same error with every text in `secrets` (and URL credentials) replaced by
    /// `[REDACTED]` in its messages (GitLab's output or logs may repeat a setting's value).
    pub fn scrubbed(self, secrets: &[String]) -> Self {
        let s = |t: String| crate::text::scrub_known(&t, secrets);
        match self {
            Error::NotFound { what, hint } => Error::NotFound {
                what: s(what),
                hint: s(hint),
            },
            Error::AlreadyExists { what, hint } => Error::AlreadyExists {
                what: s(what),
                hint: s(hint),
            },
            Error::Conflict(m) => Error::Conflict(s(m)),
            Error::InvalidInput { field, message } => Error::InvalidInput {
                field,
                message: s(message),
            },
            Error::Unhealthy {
                message,
                health_log,
                logs,
            } => Error::Unhealthy {
                message: s(message),
                health_log: s(health_log),
                logs: s(logs),
            },
            Error::Corrupt { what, message } => Error::Corrupt {
                what: s(what),
                message: s(message),
            },
            Error::VersionMismatch(m) => Error::VersionMismatch(s(m)),
            Error::Command {
                container,
                command,
                exit_code,
                output,
            } => Error::Command {
                container,
                command: s(command),
                exit_code,
                output: s(output),
            },
            Error::Backend { backend, message } => Error::Backend {
                backend,
                message: s(message),
            },
            io @ Error::Io { .. } => io,
        }
    }

    /// The kind of error, for a caller to act on (the CLI's exit code, the Python
    /// exception class, the journal's `error_kind`).
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Unhealthy { .. } => ErrorKind::Unhealthy,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::VersionMismatch(_) => ErrorKind::VersionMismatch,
            Error::Command { .. } => ErrorKind::Command,
            Error::Io { .. } => ErrorKind::Io,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// A short stable name for the kind of error (the journal, the CLI's `--json` error
    /// document and the Python exception classes use it); see [`ErrorKind::as_str`].
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }
}

/// The kind of an [`Error`], one per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Conflict,
    InvalidInput,
    Unhealthy,
    Corrupt,
    VersionMismatch,
    Command,
    Io,
    Backend,
}

impl ErrorKind {
    /// The stable name written in the journal and shown to Python (`not_found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unhealthy => "unhealthy",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::Command => "command",
            ErrorKind::Io => "io",
            ErrorKind::Backend => "backend",
        }
    }

    /// The process exit code of a command failing with this kind (the CLI documents
    /// them in `--help`): 2 invalid input, 3 not found, 4 already exists or conflict,
    /// 5 corrupt or version mismatch, 6 unhealthy, 1 anything else.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::InvalidInput => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => 4,
            ErrorKind::Corrupt | ErrorKind::VersionMismatch => 5,
            ErrorKind::Unhealthy => 6,
            ErrorKind::Command | ErrorKind::Io | ErrorKind::Backend => 1,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The archive format's errors are the same kinds, with the same texts.
impl From<girofle_archive::Error> for Error {
    fn from(e: girofle_archive::Error) -> Self {
        use girofle_archive::Error as A;
        match e {
            A::InvalidInput { field, message } => Error::InvalidInput { field, message },
            A::Corrupt { what, message } => Error::Corrupt { what, message },
            A::VersionMismatch(m) => Error::VersionMismatch(m),
            A::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            A::Backend { backend, message } => Error::Backend { backend, message },
        }
    }
}

/// Attach a path and an action to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes the CLI documents in --help, and the names the journal and Python keep.
    #[test]
    fn each_kind_keeps_its_name_and_exit_code() {
        let cases = [
            (Error::invalid("f", "m"), "invalid_input", 2),
            (Error::not_found("w", "h"), "not_found", 3),
            (Error::already_exists("w", "h"), "already_exists", 4),
            (Error::Conflict("c".into()), "conflict", 4),
            (Error::corrupt("w", "m"), "corrupt", 5),
            (Error::VersionMismatch("v".into()), "version_mismatch", 5),
            (
                Error::Unhealthy {
                    message: String::new(),
                    health_log: String::new(),
                    logs: String::new(),
                },
                "unhealthy",
                6,
            ),
            (Error::backend("b", "m"), "backend", 1),
            (Error::io("read", "/x", std::io::Error::other("e")), "io", 1),
        ];
        for (e, name, code) in cases {
            assert_eq!(e.kind(), name);
            assert_eq!(e.error_kind().as_str(), name);
            assert_eq!(e.error_kind().exit_code(), code, "{name}");
        }
    }
}
