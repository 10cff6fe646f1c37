//! Warnings: what an operation that succeeded still wants its caller to be told (a
//! damaged backup a listing left out, an interrupted operation recovery could not put
//! right). They are data in the operations' results; this module gives each its one text,
//! phrased for the front that shows it (the CLI prints it on stderr, Python raises it as a
//! `UserWarning`), so the fronts format nothing themselves. Not responsible for deciding
//! when to warn: the operations do.

use serde::Serialize;

/// Something the caller of a successful operation must know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// What is wrong, naming what it is wrong with.
    pub message: String,
    /// What to do about it.
    pub next: NextStep,
}

/// What a [`Warning`] asks the operator to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NextStep {
    /// Check a backup again (`backup verify`) once its store is fixed.
    VerifyBackup { id: String, store: String },
    /// Fix what the message says, then run recovery again; the listing shown with the
    /// warning may be wrong meanwhile.
    Recover,
}

/// The front a warning is shown by: each names the next step in its own words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Front {
    /// The `girofle` command (which adds its `girofle: warning: ` prefix).
    Cli,
    /// The Python module.
    Python,
}

impl Warning {
    /// The whole text of the warning as `front` shows it.
    #[must_use]
    pub fn text(&self, front: Front) -> String {
        let m = &self.message;
        match (&self.next, front) {
            (NextStep::VerifyBackup { id, store }, Front::Cli) => {
                format!("{m} (`girofle backup verify {id} --store {store}` checks it again)")
            }
            (NextStep::VerifyBackup { id, store }, Front::Python) => {
                format!("{m} (verify(\"{id}\", store=\"{store}\") checks it again)")
            }
            (NextStep::Recover, Front::Cli) => {
                format!("{m}; its state below may be wrong: fix that, then run `girofle recover`")
            }
            (NextStep::Recover, Front::Python) => {
                format!("{m}; its state may be wrong: fix that, then call recover()")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_front_names_the_next_step_in_its_words() {
        let damaged = Warning {
            message: "backup `b` in store `s` is damaged".into(),
            next: NextStep::VerifyBackup {
                id: "b".into(),
                store: "s".into(),
            },
        };
        assert_eq!(
            damaged.text(Front::Cli),
            "backup `b` in store `s` is damaged (`girofle backup verify b --store s` checks it again)"
        );
        assert_eq!(
            damaged.text(Front::Python),
            "backup `b` in store `s` is damaged (verify(\"b\", store=\"s\") checks it again)"
        );
        let failed = Warning {
            message: "instance `a`: stuck".into(),
            next: NextStep::Recover,
        };
        assert_eq!(
            failed.text(Front::Cli),
            "instance `a`: stuck; its state below may be wrong: fix that, then run `girofle recover`"
        );
        assert_eq!(
            failed.text(Front::Python),
            "instance `a`: stuck; its state may be wrong: fix that, then call recover()"
        );
    }
}
