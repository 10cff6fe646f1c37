//! Restore validation on the doubles.
