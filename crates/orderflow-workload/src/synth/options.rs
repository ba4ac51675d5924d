//! What to generate: [`SynthOptions`], their defaults and checks, and [`SynthError`].

use super::DEFAULT_START_MS;

pub(super) const HOUR_MS: i64 = 3_600_000;

/// Out-of-order events are sent at least this long after their event time.
pub(super) const MIN_DISORDER_MS: i64 = 250;

/// What to generate. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Target number of trace lines; the rate curve is scaled to it.
    pub events: u64,
    /// Event time of the trace's beginning, in milliseconds since the epoch.
    pub start_ms: i64,
    /// Length of the trace in event time.
    pub duration_ms: i64,
    /// When the spike begins; `None`: the first whole hour (UTC) at or after the start.
    pub spike_at_ms: Option<i64>,
    /// Peak rate over evening rate.
    pub peak_ratio: f64,
    /// Time from the spike's beginning to its peak.
    pub spike_rise_ms: i64,
    /// Time constant of the exponential decay after the peak.
    pub spike_decay_ms: i64,
    /// Merchants in the table.
    pub merchants: u32,
    /// Exponent of the Zipf merchant popularity.
    pub zipf_exponent: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Fraction of lines that are retries of an event already sent.
    pub duplicates: f64,
    /// Fraction of lines sent a little after their event time order.
    pub out_of_order: f64,
    /// Fraction of lines sent minutes after their event time.
    pub late: f64,
    /// Fraction of lines that fail validation.
    pub invalid: f64,
    /// Fraction of orders whose merchant is not in the table.
    pub unknown_merchants: f64,
    /// Longest delay of an out-of-order event.
    pub max_disorder_ms: i64,
    /// Shortest delay of a late event.
    pub late_min_ms: i64,
    /// Longest delay of a late event.
    pub late_max_ms: i64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            start_ms: DEFAULT_START_MS,
            duration_ms: HOUR_MS,
            spike_at_ms: None,
            peak_ratio: 30.0,
            spike_rise_ms: 30_000,
            spike_decay_ms: 240_000,
            merchants: 200_000,
            zipf_exponent: 1.0,
            seed: 1111,
            duplicates: 0.01,
            out_of_order: 0.02,
            late: 0.001,
            invalid: 0.001,
            unknown_merchants: 0.005,
            max_disorder_ms: 4_000,
            late_min_ms: 120_000,
            late_max_ms: 600_000,
        }
    }
}

impl SynthOptions {
    /// When the spike begins.
    pub fn spike_at(&self) -> i64 {
        self.spike_at_ms
            .unwrap_or_else(|| self.start_ms.div_euclid(HOUR_MS) * HOUR_MS + if self.start_ms % HOUR_MS == 0 { 0 } else { HOUR_MS })
    }

    /// End of the trace (exclusive), in event time.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }

    /// Checks that the options make sense.
    pub fn check(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Options(m));
        if self.events == 0 {
            return bad("events must be at least 1".into());
        }
        if self.duration_ms < 1_000 {
            return bad("duration must be at least 1s".into());
        }
        // Timestamps from 0001-01-01 to 9999-12-31, with room for the late sends.
        if self.start_ms < -62_135_596_800_000
            || self.start_ms.saturating_add(self.duration_ms).saturating_add(self.late_max_ms) > 253_402_300_799_000
        {
            return bad("start and duration must give times between years 1 and 9999".into());
        }
        if !(self.peak_ratio.is_finite() && self.peak_ratio >= 1.0) {
            return bad(format!("peak ratio must be at least 1, not {}", self.peak_ratio));
        }
        if self.spike_rise_ms < 0 || self.spike_decay_ms <= 0 {
            return bad("spike rise must not be negative and spike decay must be positive".into());
        }
        if self.merchants == 0 {
            return bad("there must be at least one merchant".into());
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return bad(format!("zipf exponent must be a number >= 0, not {}", self.zipf_exponent));
        }
        let fractions =
            [("duplicates", self.duplicates), ("out-of-order", self.out_of_order), ("late", self.late), ("invalid", self.invalid)];
        for (name, f) in fractions.iter().copied().chain([("unknown-merchants", self.unknown_merchants)]) {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{name} must be a fraction between 0 and 1, not {f}"));
            }
        }
        if fractions.iter().map(|(_, f)| f).sum::<f64>() > 0.5 {
            return bad("duplicates, out-of-order, late and invalid must add up to at most 0.5".into());
        }
        if self.max_disorder_ms <= MIN_DISORDER_MS {
            return bad(format!("max disorder must be more than {MIN_DISORDER_MS}ms"));
        }
        if !(self.late_min_ms > 0 && self.late_min_ms <= self.late_max_ms) {
            return bad("late delays must be positive, the minimum at most the maximum".into());
        }
        Ok(())
    }
}

/// Errors of generation.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}")]
    Options(String),
    #[error("writing `{path}`: {source}")]
    File { path: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::super::tests::small;
    use super::super::write_trace;
    use super::*;

    #[test]
    fn bad_options_are_refused() {
        for o in [
            SynthOptions { events: 0, ..small() },
            SynthOptions { peak_ratio: 0.5, ..small() },
            SynthOptions { duplicates: 0.3, invalid: 0.3, ..small() },
            SynthOptions { late: -0.1, ..small() },
            SynthOptions { merchants: 0, ..small() },
            SynthOptions { late_min_ms: 10, late_max_ms: 5, ..small() },
        ] {
            assert!(matches!(write_trace(&o, std::io::sink(), std::io::sink()), Err(SynthError::Options(_))), "{o:?}");
        }
    }

    #[test]
    fn spike_defaults_to_the_next_whole_hour() {
        assert_eq!(SynthOptions::default().spike_at(), DEFAULT_START_MS + 30 * 60_000);
        assert_eq!(SynthOptions { start_ms: 7_200_000, ..small() }.spike_at(), 7_200_000);
        assert_eq!(SynthOptions { start_ms: 7_200_001, ..small() }.spike_at(), 10_800_000);
        assert_eq!(SynthOptions { spike_at_ms: Some(5), ..small() }.spike_at(), 5);
    }
}
