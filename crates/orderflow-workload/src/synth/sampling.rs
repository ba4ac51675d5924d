//! Seeded randomness with sampling defined here: the generator's [`Rng`] and [`Zipf`]
//! popularity. Only ChaCha8's raw 64-bit output and the portable `libm` maths are used,
//! so a seed gives the same draws everywhere.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random source: ChaCha8's raw output, with sampling defined here (not by a
/// library whose algorithms may change between versions).
pub(super) struct Rng(ChaCha8Rng);

impl Rng {
    pub(super) fn new(seed: u64, stream: u64) -> Self {
        // SplitMix64 spreads the seed over ChaCha's 256-bit key.
        let mut s = seed;
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(stream);
        Self(rng)
    }

    /// Uniform in [0, 1).
    pub(super) fn f64(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (n > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi) (lo < hi).
    pub(super) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below(hi.abs_diff(lo)) as i64
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponentially distributed with mean `mean`.
    pub(super) fn exponential(&mut self, mean: f64) -> f64 {
        -mean * libm::log(1.0 - self.f64())
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.f64(), self.f64());
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    /// An index drawn by integer weights.
    pub(super) fn weighted(&mut self, weights: impl Iterator<Item = u64> + Clone) -> usize {
        let mut x = self.below(weights.clone().sum());
        for (i, w) in weights.enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        unreachable!("x is below the sum of weights")
    }
}

/// Zipf popularity over ranks 0..n: P(k) proportional to (k+1)^-s, by its exact CDF.
pub(super) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(super) fn new(n: u32, s: f64) -> Self {
        let mut acc = 0.0;
        Self {
            cdf: (1..=n)
                .map(|k| {
                    acc += libm::pow(f64::from(k), -s);
                    acc
                })
                .collect(),
        }
    }

    pub(super) fn sample(&self, rng: &mut Rng) -> u32 {
        let x = rng.f64() * self.cdf[self.cdf.len() - 1];
        self.cdf.partition_point(|&c| c <= x).min(self.cdf.len() - 1) as u32
    }
}
