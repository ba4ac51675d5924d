//! The merger's checkpoint records (`checkpoint::restore_merger` reads them back from
//! the merger checkpoint topic): `MergerCheckpoint::decode`, then `Merger::restore`,
//! with no known partition count and with the checkpoint's own. A restored merger
//! must checkpoint to bytes that restore to the same merger, and must go on merging:
//! partials for the windows it holds and a progress record past them are added, and it
//! is checkpointed and restored again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::merge::Merger;
use orderflow_core::window::{Tallies, TotalKey};
use orderflow_proto::v1::{MergerCheckpoint, PartialTotal, PartitionProgress};
use orderflow_proto::{millis_timestamp, Message};

fn exercise(cp: &MergerCheckpoint, partitions: Option<i32>) {
    let Ok(mut merger) = Merger::restore(cp, partitions) else { return };
    let again = merger.checkpoint(&cp.topic, cp.next_offset);
    let bytes = again.encode_to_vec();
    let restored = Merger::restore(&MergerCheckpoint::decode(bytes.as_slice()).expect("a checkpoint decodes"), partitions)
        .expect("a checkpoint of a restored merger restores");
    assert_eq!(restored, merger, "a checkpoint restores to the merger it was taken of");
    assert_eq!(restored.checkpoint(&cp.topic, cp.next_offset).encode_to_vec(), bytes, "equal mergers, equal bytes");

    // It goes on merging: partials into the windows it holds, then progress past them.
    let key = TotalKey { region: "r".into(), tier: "t".into(), currency: "CNY".into() };
    let mut tallies = Tallies::default();
    tallies.add(1, 100);
    let starts: Vec<i64> = cp.pending.iter().chain(&cp.emitted).map(|w| w.start_ms).take(4).collect();
    let length = cp.pending.iter().chain(&cp.emitted).find_map(|w| w.end_ms.checked_sub(w.start_ms).filter(|l| *l > 0));
    for (i, start) in starts.iter().enumerate() {
        let Some(end) = length.and_then(|l| start.checked_add(l)) else { continue };
        let partial = PartialTotal { total: Some(tallies.to_window_total(*start, end, &key)), partition: i as i32 % 3, newest_record_ms: 0 };
        let _ = merger.add_partial(&partial);
    }
    if let Some(last) = starts.iter().max().and_then(|s| s.checked_add(length.unwrap_or(1))) {
        for partition in 0..3 {
            let progress = PartitionProgress { partition, closed_through: Some(millis_timestamp(last)), partition_count: 3 };
            for w in merger.progress(&progress) {
                let _ = w.to_window_totals().count();
            }
        }
    }
    let next = merger.checkpoint(&cp.topic, cp.next_offset.saturating_add(3));
    let restored = Merger::restore(&next, partitions).expect("a checkpoint restores");
    assert_eq!(restored.checkpoint(&cp.topic, cp.next_offset.saturating_add(3)), next);
}

fuzz_target!(|payload: &[u8]| {
    let Ok(cp) = MergerCheckpoint::decode(payload) else { return };
    exercise(&cp, None);
    if cp.known_partitions > 0 {
        exercise(&cp, Some(cp.known_partitions));
    }
});
