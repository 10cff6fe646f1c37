//! Girofle's integration tests, one binary with a module per area, against the real
//! Docker engine, the stand-in GitLab image, a real S3-compatible server and git. The
//! helpers they share are the `girofle-tests` library (tests/common/).
//!
//! Every area runs in the one pool of test threads (`--test-threads=2` in scripts/test):
//! a test uses names, ports and roots of its own, and the one fault that disturbs every
//! container on the machine (restarting the second engine) takes the engine alone
//! (`girofle_tests::engine`). One area: `cargo test -p girofle-tests --test it faults::`.

mod backup;
mod bad_input;
mod concurrency;
mod etcd;
mod faults;
mod hostile;
mod hosts;
mod lifecycle;
mod monitoring;
mod other_host;
mod runtime;
mod schedule;
mod secrets;
mod signing;
mod state;
mod store;
