//! The aggregator's checkpoint records (`checkpoint::restore` reads them back):
//! `PartitionCheckpoint::decode`, then `PartitionState::restore` (the core's state
//! decode, admission log included) with the running configuration, and with the checkpoint's own window
//! configuration when that one is valid (so that the rest of the state is reached).
//! A restored state must checkpoint to a record that restores to the same state, and
//! must go on aggregating: a few events around its watermark and into its open
//! windows, and an idle tick, are applied to it, and it is checkpointed and restored
//! again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::partition::{PartitionState, StateBounds};
use orderflow_core::window::WindowSpec;
use orderflow_fuzz::seeds;
use orderflow_proto::v1::{EnrichedOrderEvent, OrderEventType, PartitionCheckpoint};
use orderflow_proto::{timestamp_millis, Message};

fn exercise(cp: &PartitionCheckpoint, spec: WindowSpec) {
    // Small bounds, so that refusals at them are reached too.
    let bounds =
        StateBounds { dedup_max_ids: 3, max_keys_per_window: 2, ..StateBounds::new(spec.size_ms().saturating_add(spec.lateness_ms())) };
    let Ok(restoring) = PartitionState::restore(cp, spec, bounds) else { return };
    // The input its admission log names is not here: the memory stays empty (the
    // aggregator rereads it; `partition::tests` check that path against a log).
    // Finished, the state has nothing left to reread: its type has no reread.
    if let Some((from, end)) = restoring.reread_span() {
        assert!(from < end);
    }
    assert_eq!(restoring.counts().found, 0);
    let mut state = restoring.finish();
    let again = state.checkpoint(&cp.topic, cp.partition, cp.next_offset);
    let restored = PartitionState::restore(&again, spec, bounds).expect("a checkpoint of a restored state restores").finish();
    assert_eq!(restored.checkpoint(&cp.topic, cp.partition, cp.next_offset), again);
    let _ = (state.last_open_end_ms(), state.open_keys(), state.dedup_live(), state.dedup_len());

    // Aggregation goes on from the restored state.
    let mut closed = Vec::new();
    let base = if state.watermark_ms() == i64::MIN { seeds::T0 } else { state.watermark_ms() };
    for (i, dt) in [0, -1, 1, spec.size_ms(), -spec.size_ms()].into_iter().enumerate() {
        let at = base.saturating_add(dt);
        let event = seeds::event(i as i64, OrderEventType::Paid, "m1", "CNY", 100, at);
        let record = EnrichedOrderEvent { event: Some(event), region: "r".into(), tier: "t".into(), merchant_known: true };
        state.apply(&record, &mut closed);
    }
    // And into the windows restored open, under their keys.
    for (i, w) in cp.open.iter().take(4).enumerate() {
        let Some(start) = w.window_start.as_ref() else { continue };
        let event = seeds::event(10 + i as i64, OrderEventType::Created, "m1", &w.currency, 100, timestamp_millis(start));
        let record = EnrichedOrderEvent { event: Some(event), region: w.region.clone(), tier: w.tier.clone(), merchant_known: true };
        state.apply(&record, &mut closed);
    }
    state.idle_close(base.saturating_add(spec.size_ms()), &mut closed);
    for w in &closed {
        let _ = w.to_window_totals().count();
    }
    let next = state.checkpoint(&cp.topic, cp.partition, cp.next_offset.saturating_add(5));
    let decoded = PartitionCheckpoint::decode(next.encode_to_vec().as_slice()).expect("a checkpoint decodes");
    let restored = PartitionState::restore(&decoded, spec, bounds).expect("a checkpoint restores").finish();
    assert_eq!(restored.checkpoint(&cp.topic, cp.partition, cp.next_offset.saturating_add(5)), next);
}

fuzz_target!(|payload: &[u8]| {
    let Ok(cp) = PartitionCheckpoint::decode(payload) else { return };
    // The running configuration (the aggregator's defaults).
    exercise(&cp, WindowSpec::new(60_000, 5_000).unwrap());
    if let Ok(own) = WindowSpec::new(cp.window_ms, cp.lateness_ms) {
        exercise(&cp, own);
    }
});
