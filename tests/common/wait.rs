//! Bounded waits for something that happens in another process.

use std::time::{Duration, Instant};

/// Polls `f` every `every` until it returns `Some`, for at most `within`.
pub fn poll<T>(within: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits (polling every 250 ms) until `f` returns `Some`; fails the test naming `what`
/// after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(limit, Duration::from_millis(250), f)
        .unwrap_or_else(|| panic!("gave up after {limit:?} waiting for {what}"))
}
