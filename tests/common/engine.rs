//! The Docker engines, shared by every test of the one test binary. All areas run in
//! one pool of threads, and one fault disturbs every container on the machine:
//! restarting the second engine (`faults::docker_daemon_restarts_mid_operation`)
//! deletes and re-creates the main engine's `docker0`, which cuts the running
//! containers off the network until scripts/second-docker re-attaches them. That test
//! takes the engines [`alone`]; every other test that uses an engine holds a [`shared`]
//! guard, which a [`TestRoot`](crate::TestRoot) takes for its whole life.
//!
//! Shares never wait for one another and may be taken again by a test that already
//! holds one (a test with two roots); the lone holder waits until no share is left, and
//! new shares wait until it is done.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
struct Holders {
    shares: usize,
    alone: bool,
}

static HOLDERS: Mutex<Holders> = Mutex::new(Holders {
    shares: 0,
    alone: false,
});
static CHANGED: Condvar = Condvar::new();

fn holders() -> MutexGuard<'static, Holders> {
    // A test that failed while holding the mutex left the counts right: go on.
    HOLDERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engines held, shared or alone, until this is dropped.
#[derive(Debug)]
#[must_use = "the engines are held only while the guard lives"]
pub struct EngineGuard {
    alone: bool,
}

/// Uses the engines alongside other tests; waits while a test has them alone.
pub fn shared() -> EngineGuard {
    let mut h = holders();
    while h.alone {
        h = CHANGED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.shares += 1;
    EngineGuard { alone: false }
}

/// Has the engines alone: waits until no other test uses them.
pub fn alone() -> EngineGuard {
    let mut h = holders();
    while h.alone || h.shares > 0 {
        h = CHANGED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.alone = true;
    EngineGuard { alone: true }
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        let mut h = holders();
        if self.alone {
            h.alone = false;
        } else {
            h.shares -= 1;
        }
        CHANGED.notify_all();
    }
}
