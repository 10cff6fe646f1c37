//! Recovery of each phase on the doubles.
