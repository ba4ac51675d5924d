//! What happened when: per-second rates, end-to-end latency and lag. Pure bookkeeping.
//!
//! Latency is measured per event, from the moment it was handed to the producer to the
//! moment the first merged total of its window was published (the total record's broker
//! timestamp, on the same clock). Events whose window was already published when they
//! were sent are late ones: never counted, so they have no latency.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    /// Seconds since the replay started.
    pub t: u64,
    /// Events the pace asked for in this second.
    pub offered: u64,
    /// Events the broker acknowledged in this second.
    pub achieved: u64,
    /// Latency percentiles of the events sent in this second (ms).
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
    /// Records the enricher and the aggregator had yet to commit, sampled in this second.
    pub enricher_lag: Option<i64>,
    pub aggregator_lag: Option<i64>,
    /// Cores (CPU seconds per second) the enricher, the aggregator and the broker used,
    /// sampled in this second (processes the load test knows of).
    pub enricher_cpu: Option<f64>,
    pub aggregator_cpu: Option<f64>,
    pub broker_cpu: Option<f64>,
}

/// Latency percentiles over the whole run (ms).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub events: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub p999_ms: u64,
    pub max_ms: u64,
}

/// Accumulates the run.
#[derive(Debug, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
    /// Send time (ms since start) of each counted event, by window start.
    sent: HashMap<i64, Vec<u32>>,
    /// When each window's first merged total was published (ms since start).
    published: HashMap<i64, i64>,
}

impl Timeline {
    fn second(&mut self, ms: u64) -> &mut Second {
        let t = ms / 1000;
        while self.seconds.len() as u64 <= t {
            let t = self.seconds.len() as u64;
            self.seconds.push(Second { t, ..Second::default() });
        }
        &mut self.seconds[t as usize]
    }

    /// The pace asked for one more event at `ms`.
    pub fn offered(&mut self, ms: u64) {
        self.second(ms).offered += 1;
    }

    /// `n` events were acknowledged at `ms`.
    pub fn achieved(&mut self, ms: u64, n: u64) {
        self.second(ms).achieved += n;
    }

    /// A counted event of window `window_start` was sent at `ms`.
    pub fn sent(&mut self, window_start: i64, ms: u64) {
        self.sent.entry(window_start).or_default().push(u32::try_from(ms).unwrap_or(u32::MAX));
    }

    /// A merged total of window `window_start` was published at `ms` (may be negative:
    /// before the replay started). The first one counts.
    pub fn published(&mut self, window_start: i64, ms: i64) {
        self.published.entry(window_start).or_insert(ms);
    }

    /// Lag sampled at `ms`.
    pub fn lag(&mut self, ms: u64, enricher: i64, aggregator: i64) {
        let s = self.second(ms);
        s.enricher_lag = Some(enricher);
        s.aggregator_lag = Some(aggregator);
    }

    /// Cores used by the enricher, the aggregator and the broker, sampled at `ms`.
    pub fn cpu(&mut self, ms: u64, [enricher, aggregator, broker]: [Option<f64>; 3]) {
        let s = self.second(ms);
        (s.enricher_cpu, s.aggregator_cpu, s.broker_cpu) = (enricher, aggregator, broker);
    }

    /// Windows with counted events whose total has not been seen yet.
    pub fn unpublished(&self) -> usize {
        self.sent.keys().filter(|w| !self.published.contains_key(w)).count()
    }

    /// Whether a total of the window starting at `window_start` has been seen.
    pub fn published_window(&self, window_start: i64) -> bool {
        self.published.contains_key(&window_start)
    }

    /// When the last window's total was published (ms since start).
    pub fn last_published_ms(&self) -> Option<i64> {
        self.published.values().copied().max()
    }

    /// Per-second series (latency filled in) and the whole run's latency percentiles.
    pub fn finish(mut self) -> (Vec<Second>, Latency) {
        let new = || Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("static bounds");
        let mut all = new();
        let mut per_second: HashMap<u64, Histogram<u64>> = HashMap::new();
        for (window, sent) in &self.sent {
            let Some(&at) = self.published.get(window) else { continue };
            for &s in sent {
                let latency = at - i64::from(s);
                if latency < 0 {
                    continue; // sent after its window was published: a late event
                }
                let latency = (latency as u64).clamp(1, 3_600_000);
                all.record(latency).expect("clamped");
                per_second.entry(u64::from(s) / 1000).or_insert_with(new).record(latency).expect("clamped");
            }
        }
        for (t, h) in &per_second {
            let s = self.second(t * 1000);
            s.latency_p50_ms = Some(h.value_at_quantile(0.5));
            s.latency_p99_ms = Some(h.value_at_quantile(0.99));
        }
        let latency = Latency {
            events: all.len(),
            p50_ms: all.value_at_quantile(0.5),
            p99_ms: all.value_at_quantile(0.99),
            p999_ms: all.value_at_quantile(0.999),
            max_ms: all.max(),
        };
        (self.seconds, latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_runs_from_send_to_the_window_total() {
        let mut t = Timeline::default();
        for ms in [0, 500, 1_500] {
            t.offered(ms);
            t.sent(0, ms);
        }
        t.achieved(1_600, 3);
        t.sent(60_000, 2_000);
        assert_eq!(t.unpublished(), 2);
        t.published(0, 10_000);
        t.published(0, 12_000); // a re-publication does not move the first one
        t.sent(0, 11_000); // late: sent after its window was out
        assert_eq!(t.unpublished(), 1);
        t.lag(2_100, 7, 9);
        t.cpu(2_500, [Some(0.5), None, Some(1.25)]);
        let (seconds, latency) = t.finish();
        assert_eq!(seconds.len(), 3);
        assert_eq!((seconds[0].offered, seconds[1].offered, seconds[1].achieved), (2, 1, 3));
        assert_eq!((seconds[2].enricher_lag, seconds[2].aggregator_lag), (Some(7), Some(9)));
        assert_eq!((seconds[2].enricher_cpu, seconds[2].aggregator_cpu, seconds[2].broker_cpu), (Some(0.5), None, Some(1.25)));
        assert_eq!(seconds[1].enricher_cpu, None);
        assert_eq!(latency.events, 3);
        assert_eq!((latency.p50_ms, latency.max_ms), (9_503, 10_007)); // 3-digit precision buckets
        assert_eq!(seconds[0].latency_p99_ms, Some(10_007));
        assert_eq!(seconds[1].latency_p50_ms, Some(8_503));
    }
}
