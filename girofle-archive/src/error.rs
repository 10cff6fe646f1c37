//! The error type of the archive format: only the kinds its readers, writers and parsers
//! produce. The texts are those of `girofle_core::Error`'s variants of the same names, and
//! core lifts each variant into its own, so a message, an error kind or an exit code does
//! not depend on which crate found the problem.

use std::path::PathBuf;

/// `Result` with the archive format's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading, writing or parsing the backup format.
// Not `#[non_exhaustive]`: core matches every variant, so a new kind here must get its
// mapping there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is wrong. `field` names it.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },

    /// Data is damaged: a hash, a size or a checksum does not match.
    #[error("corrupt {what}: {message}")]
    Corrupt { what: String, message: String },

    /// A newer (or pre-release) Girofle wrote the data.
    #[error("version mismatch: {0}")]
    VersionMismatch(String),

    /// A file system operation on the host failed.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A part of the pipeline (a thread, serialization, the signer) failed.
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
}

impl Error {
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

    /// The short stable name of the kind, the same as `girofle_core::Error::kind`'s for
    /// the variant this one becomes.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::Corrupt { .. } => "corrupt",
            Error::VersionMismatch(_) => "version_mismatch",
            Error::Io { .. } => "io",
            Error::Backend { .. } => "backend",
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
