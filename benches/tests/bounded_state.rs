//! The aggregator's state is bounded by event time, not by the number of events: after
//! 1M and after 10M events of the same stream (same rate, same shape) a partition holds
//! exactly as many open windows, open keys and remembered event ids, in a dedup memory
//! of exactly the same size.
//!
//! The stream (see `orderflow_benches::aggregate`) repeats its shape every 9M events
//! (780 s of event time, a whole number of windows), so event
//! 10M-1 is event 1M-1 moved 780 s later and the two states must have the same size
//! exactly, not just roughly.

use orderflow_benches::aggregate::{self, KEYS, PERIOD_EVENTS, PERIOD_MS};
use orderflow_benches::{aggregator_default_spec, BENCH_DEDUP_KEY};
use orderflow_core::partition::{Outcome, PartitionState};
use orderflow_proto::v1::EnrichedOrderEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    open_windows: usize,
    open_keys: usize,
    /// Event ids remembered (within the dedup horizon of the watermark).
    dedup_live: usize,
    /// The dedup memory's slots (24 bytes each).
    dedup_slots: usize,
}

fn size(s: &PartitionState) -> Size {
    Size { open_windows: s.open_windows(), open_keys: s.open_keys(), dedup_live: s.dedup_live(), dedup_slots: s.dedup_slots() }
}

#[test]
fn state_after_10m_events_is_the_size_it_was_after_1m() {
    const ONE_M: u64 = 1_000_000;
    const TEN_M: u64 = 10_000_000;
    assert_eq!(TEN_M - ONE_M, PERIOD_EVENTS);

    let (spec, bounds) = aggregator_default_spec();
    assert_eq!((spec.size_ms(), spec.lateness_ms(), bounds.dedup_horizon_ms), (60_000, 5_000, 65_000));
    let mut state = PartitionState::new(spec, bounds, BENCH_DEDUP_KEY);
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
            other @ (Outcome::Invalid | Outcome::Refused(_)) => panic!("event {j}: {other:?}"),
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
    // Dedup: the ids within the horizon (65 s) of the watermark (+86,666 ms), that is
    // first seen from +21,666 ms on: events 249,993..1M (750,007), less 15,001 retries
    // (no new id), 750 late copies (old times) and the 433 events 1.5 s behind whose
    // time is before +21,666 ms (events up to 267,299), of which 87 are retries.
    assert_eq!(watermark_1m - aggregate::base_time_ms(0), 86_666);
    assert_eq!(size_1m.dedup_live, 750_007 - 15_001 - 750 - (433 - 87));
    // Held in 2^21 slots: the table grows only while the live ids would fill more than
    // 3/8 of it, and holds at most 5/8 of it (live ids and expired ones not yet
    // overwritten or removed).
    assert_eq!(size_1m.dedup_slots, 1 << 21);
    assert!(size_1m.dedup_live * 8 <= size_1m.dedup_slots * 3);
    assert!(state.dedup_len() >= size_10m.dedup_live && state.dedup_len() * 8 <= size_10m.dedup_slots * 5);

    // The stream is what it says: every 1,000 events 20 retries and one very late event;
    // 867 s of event time close 15 windows (the first holds events from before midnight).
    assert_eq!((duplicate, late, counted), (TEN_M / 50, TEN_M / 1000, TEN_M - TEN_M / 50 - TEN_M / 1000));
    assert_eq!(windows_closed, 15);
}
