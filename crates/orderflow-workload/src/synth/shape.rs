//! The rate curve: traffic relative to the evening rate at a point in event time.

use super::SynthOptions;

/// How much the evening warms up before the spike, as a share of the spike's height.
const WARMUP: f64 = 0.02;
/// Time constant of the warm-up before the spike.
const WARMUP_TAU_S: f64 = 300.0;

/// Traffic relative to the evening rate at a point in time.
pub(super) struct Shape {
    spike_at: i64,
    rise_ms: f64,
    decay_ms: f64,
    peak: f64,
}

impl Shape {
    /// The curve `opts` ask for.
    pub(super) fn new(opts: &SynthOptions) -> Self {
        Self { spike_at: opts.spike_at(), rise_ms: opts.spike_rise_ms as f64, decay_ms: opts.spike_decay_ms as f64, peak: opts.peak_ratio }
    }

    /// Traffic at `t_ms` (event time) over the evening rate.
    pub(super) fn factor(&self, t_ms: f64) -> f64 {
        let dt = t_ms - self.spike_at as f64;
        let warm = WARMUP * (self.peak - 1.0);
        if dt < 0.0 {
            1.0 + warm * libm::exp(dt / 1000.0 / WARMUP_TAU_S)
        } else if dt < self.rise_ms {
            let from = 1.0 + warm;
            from + (self.peak - from) * dt / self.rise_ms
        } else {
            1.0 + (self.peak - 1.0) * libm::exp(-(dt - self.rise_ms) / self.decay_ms)
        }
    }
}
