//! A small seeded generator per session (xorshift64*), so a run's choices are reproducible from
//! `--seed` without a dependency.

use std::time::Duration;

pub struct Rng(u64);

impl Rng {
    /// The generator of one session; `stream` tells sessions (and roles) apart.
    pub fn new(seed: u64, stream: u64) -> Rng {
        // Scramble so that neighbouring seeds and streams start far apart; never zero.
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in lo..=hi.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Uniform in [mean/2, 3·mean/2]: think times that do not march in step.
    pub fn around(&mut self, mean: Duration) -> Duration {
        let micros = mean.as_micros() as u64;
        Duration::from_micros(micros / 2 + self.below(micros + 1))
    }

    /// Uniform in [0, max].
    pub fn upto(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}
