//! A small seeded generator (SplitMix64): reproducible random choices (kill points,
//! flipped bytes) without a dependency. The seed is printed so a failure replays.

use std::time::Duration;

/// SplitMix64 over its state; any seed, zero included, is a good one.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `var` when it is set, from the clock otherwise; prints the seed and
    /// how to replay it, prefixed with `what`.
    pub fn seeded(var: &str, what: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} ({var}={seed} replays it)");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, d).
    pub fn duration_below(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.next_u64() % (d.as_nanos() as u64).max(1))
    }

    /// A byte that changes what it is XORed into.
    pub fn flip(&mut self) -> u8 {
        1 + (self.next_u64() % 255) as u8
    }
}
