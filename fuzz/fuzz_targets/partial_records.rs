//! What the merger reads: partial-totals records (`PartialRecord`: partial totals and
//! partitions' progress) merged by `merge::Merger` into totals as `merger::run` does,
//! the progress records the upstream watch reads for the global frontier, and totals
//! (`WindowTotal`) as `totals::read` and the merger's `Counted::read` take them back.
//!
//! Windows are emitted once each, and in order of their ends, as long as every
//! partial names a window of one and the same positive length (as the aggregators of
//! one group, with one `--window`, write them): the merger keeps pending windows by
//! start and takes the first partial's end for a start, so partials of mixed lengths
//! (which no aggregator group writes) may hold a window back past its end, or
//! start a second window at the same start.
//!
//! The input is a sequence of records (see `orderflow_fuzz::records`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::merge::{Merger, PartialOutcome};
use orderflow_core::window::Tallies;
use orderflow_proto::v1::{partial_record, PartialRecord, WindowTotal};
use orderflow_proto::{millis_timestamp, timestamp_millis, Message};

fuzz_target!(|data: &[u8]| {
    let mut merger = Merger::new();
    let mut global_frontier_ms = i64::MIN;
    // The one length of every window named so far, while there is one.
    let mut length: Option<Option<i64>> = None;
    let mut emitted = std::collections::HashSet::new();
    for payload in orderflow_fuzz::records(data) {
        if let Ok(total) = WindowTotal::decode(payload) {
            let (key, tallies) = Tallies::from_window_total(&total);
            let _ = (total.window_start.as_ref().map_or(i64::MIN, timestamp_millis), key.to_string(), tallies);
        }
        let Ok(record) = PartialRecord::decode(payload) else { continue };
        match record.kind {
            Some(partial_record::Kind::Partial(p)) => {
                let total = p.total.as_ref();
                if let (Some(start), Some(end)) = (total.and_then(|t| t.window_start.as_ref()), total.and_then(|t| t.window_end.as_ref())) {
                    let len = timestamp_millis(end).checked_sub(timestamp_millis(start)).filter(|l| *l > 0);
                    length = match length {
                        None => Some(len),
                        Some(l) if l == len => Some(l),
                        Some(_) => Some(None),
                    };
                }
                match merger.add_partial(&p) {
                    // A correction: one key of a window already emitted, summed anew.
                    Ok(PartialOutcome::Corrected(w)) => {
                        assert_eq!(w.totals.len(), 1, "{w:?}");
                        assert!(merger.emitted_through_ms().is_some_and(|e| w.end_ms <= e), "{w:?} corrected before it was emitted");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
            Some(partial_record::Kind::Progress(progress)) => {
                if let Some(t) = progress.closed_through.as_ref() {
                    global_frontier_ms = global_frontier_ms.max(timestamp_millis(t));
                }
                let emitted_before = merger.emitted_through_ms();
                for window in merger.progress(&progress) {
                    if matches!(length, Some(Some(_))) {
                        assert!(emitted.insert(window.start_ms), "{window:?} emitted twice");
                        assert!(emitted_before.is_none_or(|e| window.end_ms > e), "{window:?} emitted after its end");
                    }
                    assert!(merger.emitted_through_ms().is_some_and(|e| window.end_ms <= e));
                    let _ = millis_timestamp(window.start_ms).to_string();
                    for total in window.to_window_totals() {
                        let _ = total.encode_to_vec();
                    }
                }
            }
            None => {}
        }
        let _ = merger.pending_windows();
    }
});
