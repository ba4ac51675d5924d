//! What happened when: per-second rates, end-to-end latency and lag. Pure bookkeeping.
//!
//! Latency is measured per event, from the moment it was handed to the producer to the
//! moment the first merged total of its window was published (the total record's broker
//! timestamp, on the same clock). Events whose window was already published when they
//! were sent are late ones: never counted, so they have no latency.
//!
//! The provisional figures' latency is measured from the other end: the counted events
//! acknowledged so far (a cumulative curve, in the order they were sent) against the
//! events the aggregator's `/metrics` shows, final plus provisional, polled every
//! [`super::scrape::VISIBLE_POLL`]. The k-th counted event acknowledged is visible at the first
//! poll, no earlier than its acknowledgement, that shows at least k events. Events are
//! taken to become visible in the order they were acknowledged (the pipeline keeps each
//! partition's order, not the order across partitions), so the figures are the curves'
//! horizontal distance, to within a poll. Events the pipeline found late (read back
//! from the late topic) never show, so they are taken out of the acknowledged curve.

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
    /// Latency percentiles, acknowledgement to visible in the aggregator's provisional
    /// (or final) figures, of the events acknowledged in this second (ms).
    pub visible_p50_ms: Option<u64>,
    pub visible_p99_ms: Option<u64>,
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

/// A fingerprint of an event id, never 0 (0 marks events not counted).
fn fingerprint(id: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish() | 1
}

/// Accumulates the run.
#[derive(Debug, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
    /// Send time (ms since start) of each counted event, by window start.
    sent: HashMap<i64, Vec<u32>>,
    /// When each window's first merged total was published (ms since start).
    published: HashMap<i64, i64>,
    /// Every event sent, in order: a fingerprint of its id if counted, else 0.
    order: Vec<u64>,
    /// Fingerprints of the events the pipeline found late (never counted).
    late: std::collections::HashSet<u64>,
    /// Events acknowledged so far (a prefix of `order`), cumulative, by ms since start.
    acked: Vec<(u64, u64)>,
    /// Events the aggregator's metrics showed (final + provisional), by ms since start.
    visible: Vec<(u64, u64)>,
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

    /// The next event sent, with its id if the reference counts it.
    pub fn sent_in_order(&mut self, counted_id: Option<&str>) {
        self.order.push(counted_id.map_or(0, fingerprint));
    }

    /// The event with this id was found late by the pipeline: it never shows.
    pub fn late(&mut self, event_id: &str) {
        self.late.insert(fingerprint(event_id));
    }

    /// By `ms`, the first `cumulative` events sent had been acknowledged.
    pub fn acked(&mut self, ms: u64, cumulative: u64) {
        self.acked.push((ms, cumulative));
    }

    /// At `ms`, the aggregator's metrics showed `events` (final + provisional).
    pub fn visible(&mut self, ms: u64, events: u64) {
        self.visible.push((ms, events));
    }

    /// Acknowledgement-to-visible latency, per second of acknowledgement and over the
    /// run (see the module docs); `None` without polls.
    fn visibility(&mut self) -> Option<Latency> {
        if self.visible.is_empty() {
            return None;
        }
        let new = || Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("static bounds");
        let mut all = new();
        let mut per_second: HashMap<u64, Histogram<u64>> = HashMap::new();
        // Polls in time order, their counts made monotone (a restarted aggregator would
        // show fewer for a while).
        let mut polls = std::mem::take(&mut self.visible);
        polls.sort_unstable();
        let mut high = 0;
        for p in &mut polls {
            high = high.max(p.1);
            p.1 = high;
        }
        // Acknowledged events the figures will show: counted, and not found late.
        let mut acked = std::mem::take(&mut self.acked);
        acked.sort_unstable();
        let (mut sent, mut shown) = (0usize, 0u64);
        for a in &mut acked {
            let upto = (a.1 as usize).min(self.order.len());
            shown += self.order[sent.min(upto)..upto].iter().filter(|f| **f != 0 && !self.late.contains(f)).count() as u64;
            sent = sent.max(upto);
            a.1 = shown;
        }
        // Acknowledgements come later and cover more events one after the other, so
        // the poll that shows an event only moves forward.
        let (mut j, mut done) = (0, 0u64);
        for (at, cumulative) in acked {
            while done < cumulative {
                // The first poll no earlier than the acknowledgement showing event done + 1.
                while j < polls.len() && (polls[j].0 < at || polls[j].1 <= done) {
                    j += 1;
                }
                let Some(&(seen_at, seen)) = polls.get(j) else { break };
                let n = seen.min(cumulative) - done;
                let latency = (seen_at - at).clamp(1, 3_600_000);
                all.record_n(latency, n).expect("clamped");
                per_second.entry(at / 1000).or_insert_with(new).record_n(latency, n).expect("clamped");
                done += n;
            }
        }
        for (t, h) in &per_second {
            let s = self.second(t * 1000);
            s.visible_p50_ms = Some(h.value_at_quantile(0.5));
            s.visible_p99_ms = Some(h.value_at_quantile(0.99));
        }
        Some(Latency {
            events: all.len(),
            p50_ms: all.value_at_quantile(0.5),
            p99_ms: all.value_at_quantile(0.99),
            p999_ms: all.value_at_quantile(0.999),
            max_ms: all.max(),
        })
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

    /// Per-second series (latencies filled in), the whole run's latency percentiles,
    /// and its acknowledgement-to-visible percentiles (when the metrics were polled).
    pub fn finish(mut self) -> (Vec<Second>, Latency, Option<Latency>) {
        let visible = self.visibility();
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
        (self.seconds, latency, visible)
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
        let (seconds, latency, visible) = t.finish();
        assert_eq!(visible, None, "no polls, no visibility figures");
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

    /// Acknowledged 3 counted events (and one not counted) at 0.1 s and 2 more (and one
    /// the pipeline found late) at 1.2 s; the metrics showed 0 at 0.15 s, 2 at 0.3 s, 4
    /// at 1.0 s (before the last ones were acknowledged: the 4th only counts from 1.2 s)
    /// and 5 at 1.5 s.
    #[test]
    fn visibility_runs_from_acknowledgement_to_the_first_poll_showing_the_event() {
        let mut t = Timeline::default();
        for id in [Some("e1"), None, Some("e2"), Some("e3"), Some("e4"), Some("late"), Some("e5")] {
            t.sent_in_order(id);
        }
        t.late("late");
        t.acked(100, 4);
        t.acked(1_200, 7);
        for (ms, n) in [(150, 0), (300, 2), (1_000, 4), (1_500, 5)] {
            t.visible(ms, n);
        }
        let (seconds, _, visible) = t.finish();
        let v = visible.expect("polled");
        // Events 1-2: 200 ms; event 3: 900 ms; event 4: poll at 1.0 s is before its
        // acknowledgement, so 1.5 s: 300 ms; event 5: 300 ms.
        assert_eq!(v.events, 5);
        assert_eq!((v.p50_ms, v.max_ms), (300, 900));
        assert_eq!((seconds[0].visible_p50_ms, seconds[0].visible_p99_ms), (Some(200), Some(900)));
        assert_eq!((seconds[1].visible_p50_ms, seconds[1].visible_p99_ms), (Some(300), Some(300)));
    }

    /// Events never shown (late ones, say) are left out, not timed at the end of the run.
    #[test]
    fn events_never_visible_are_left_out() {
        let mut t = Timeline::default();
        (0..10).for_each(|i| t.sent_in_order(Some(&format!("e{i}"))));
        t.acked(0, 10);
        t.visible(500, 7);
        t.visible(400, 6); // polls out of order, and a dip, are taken in order and monotone
        let (_, _, visible) = t.finish();
        let v = visible.unwrap();
        assert_eq!((v.events, v.p50_ms, v.max_ms), (7, 400, 500));
    }
}
