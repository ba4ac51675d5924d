//! The aggregator's state is bounded by event time, not by the number of events: after
//! 1M and after 10M events of the same stream (same rate, same shape) a partition holds
//! exactly as many open windows, open keys and dedup entries.
//!
//! The stream (see `orderflow_benches::aggregate`) repeats its shape every 9M events
//! (780 s of event time, a whole number of windows and of dedup reclaim steps), so event
//! 10M-1 is event 1M-1 moved 780 s later and the two states must have the same size
//! exactly, not just roughly.

use orderflow_benches::aggregate::{self, KEYS, MS_DEN, MS_NUM, PERIOD_EVENTS, PERIOD_MS};
use orderflow_benches::aggregator_default_spec;
use orderflow_core::partition::{Outcome, PartitionState};
use orderflow_proto::v1::EnrichedOrderEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    open_windows: usize,
    open_keys: usize,
    dedup_entries: usize,
}

fn size(s: &PartitionState) -> Size {
    Size { open_windows: s.open_windows(), open_keys: s.open_keys(), dedup_entries: s.dedup_len() }
}

#[test]
fn state_after_10m_events_is_the_size_it_was_after_1m() {
    const ONE_M: u64 = 1_000_000;
    const TEN_M: u64 = 10_000_000;
    assert_eq!(TEN_M - ONE_M, PERIOD_EVENTS);

    let (spec, horizon) = aggregator_default_spec();
    assert_eq!((spec.size_ms(), spec.lateness_ms(), horizon), (60_000, 5_000, 65_000));
    let mut state = PartitionState::new(spec, horizon);
    let mut e = EnrichedOrderEvent::default();
    let mut closed = Vec::new();
    let (mut counted, mut duplicate, mut late, mut windows_closed) = (0u64, 0u64, 0u64, 0usize);
    let mut at_1m = None;
    for j in 0..TEN_M {
        aggregate::fill(j, &mut e);
        match state.apply(&e, &mut closed) {
            Outcome::Counted { .. } => counted += 1,
            Outcome::Duplicate => duplicate += 1,
            Outcome::Late { .. } => late += 1,
            Outcome::Invalid => panic!("event {j} is invalid"),
        }
        windows_closed += closed.len();
        closed.clear();
        if j + 1 == ONE_M {
            at_1m = Some((size(&state), state.watermark_ms(), state.closed_through_ms()));
        }
    }
    let (size_1m, watermark_1m, closed_through_1m) = at_1m.expect("passed 1M events");
    let size_10m = size(&state);
    eprintln!("after 1M events: {size_1m:?}; after 10M events: {size_10m:?}");

    // The same point of the stream's shape, one period later in event time.
    assert_eq!(state.watermark_ms() - watermark_1m, PERIOD_MS);
    assert_eq!(state.closed_through_ms() - closed_through_1m, PERIOD_MS);
    // ... holds exactly as much state.
    assert_eq!(size_10m, size_1m);
    // One window open (the watermark is 26.7 s into it), with every key.
    assert_eq!(size_1m.open_windows, 1);
    assert_eq!(size_1m.open_keys, KEYS);
    // Dedup entries: at most (horizon + horizon / 4) of event time at the stream's rate,
    // since memory is reclaimed each time the watermark moves by a quarter horizon.
    let per_ms = MS_DEN as f64 / MS_NUM as f64;
    assert!(size_1m.dedup_entries as f64 <= (horizon + horizon / 4) as f64 * per_ms, "{size_1m:?}");
    // Exactly: the last reclaim was at watermark +81,250 ms (every 16,250 ms from the
    // first event), keeping entries from +16,250 ms on: events 187,500..1M (812,500),
    // less 16,250 retries (no new id), 813 late copies (old times) and 433 events 1.5 s
    // behind (times before +16,250 ms), of which 87 are retries counted twice; plus the
    // 62 late copies read after that reclaim.
    assert_eq!(size_1m.dedup_entries, 812_500 - 16_250 - 813 - 433 + 87 + 62);

    // The stream is what it says: every 1,000 events 20 retries and one very late event;
    // 867 s of event time close 15 windows (the first holds events from before midnight).
    assert_eq!((duplicate, late, counted), (TEN_M / 50, TEN_M / 1000, TEN_M - TEN_M / 50 - TEN_M / 1000));
    assert_eq!(windows_closed, 15);
}
