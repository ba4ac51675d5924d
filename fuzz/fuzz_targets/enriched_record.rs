//! The aggregator's input: enriched-topic records (`wire::EnrichedView`), each checked
//! against prost's `EnrichedRecord::decode` (the view's contract: it parses exactly
//! when prost decodes, to the same record), then handled as the partitions loop does
//! (`Partitions::parse` and `apply`, `Router::late`): events applied to one partition's
//! state, idle ticks closing windows, the rest dead-lettered with a reason. After each
//! record the state is checkpointed and restored, and the restored state must
//! checkpoint identically.
//!
//! The input is a sequence of records (see `orderflow_fuzz::records`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::partition::{invalid_reason, Outcome, PartitionState};
use orderflow_core::validate::InvalidReason;
use orderflow_core::window::WindowSpec;
use orderflow_core::wire::{undecodable, EnrichedKind, EnrichedView};
use orderflow_proto::v1::{enriched_record, EnrichedRecord, PartitionCheckpoint};
use orderflow_proto::{millis_timestamp, timestamp_millis, Message};

fuzz_target!(|data: &[u8]| {
    let spec = WindowSpec::new(60_000, 5_000).unwrap();
    let bounds = orderflow_core::partition::StateBounds {
        dedup_max_ids: 50,
        max_keys_per_window: 8,
        ..orderflow_core::partition::StateBounds::new(65_000)
    };
    let mut state = PartitionState::new(spec, bounds, orderflow_core::dedup::DedupKey::from_words(1, 2));
    for (offset, payload) in orderflow_fuzz::records(data).enumerate() {
        // The decoder, against prost.
        let view = EnrichedView::parse(payload);
        let prost = EnrichedRecord::decode(payload);
        match (&view, &prost) {
            (Ok(v), Ok(p)) => assert_eq!(&v.to_record(), p),
            (Err(_), Err(_)) => {}
            (v, p) => panic!("the view and prost disagree on {payload:?}: view {v:?}, prost {p:?}"),
        }
        let record = view.map(|r| r.kind).map_err(|e| undecodable::<EnrichedRecord>(payload, &e));

        // The partitions loop.
        let mut closed = Vec::new();
        let before = state.closed_through_ms();
        match record {
            Ok(Some(EnrichedKind::IdleTick(Some(t)))) => {
                state.idle_close(timestamp_millis(&t), &mut closed);
            }
            Ok(Some(EnrichedKind::Event(e))) => {
                let prepared = state.prepare(&e);
                match state.apply_prepared(&e, prepared, &mut closed) {
                    Outcome::Invalid => {
                        let _ = invalid_reason(&e).to_string();
                    }
                    Outcome::Late { window_start_ms, closed_through_ms } => {
                        // Router::late: decoded by prost, keyed by the event id, window names in headers.
                        let Ok(EnrichedRecord { kind: Some(enriched_record::Kind::Event(e)) }) = prost else {
                            panic!("a late record that prost does not decode as an event")
                        };
                        let _ = (e.event.map(|e| e.event_id), e.region);
                        let _ = (millis_timestamp(window_start_ms).to_string(), millis_timestamp(closed_through_ms).to_string());
                        assert!(closed_through_ms == state.closed_through_ms());
                    }
                    Outcome::Counted { window_start_ms } => assert!(window_start_ms >= state.closed_through_ms()),
                    Outcome::Duplicate => {}
                    Outcome::Refused(bound) => {
                        let reason: orderflow_core::reason::InvalidReason = bound.into();
                        let _ = (reason.code(), reason.to_string());
                    }
                }
            }
            Ok(_) => {
                let _ = InvalidReason::Undecodable("empty EnrichedRecord".into());
            }
            Err(reason) => assert_eq!(reason.code(), "undecodable"),
        }
        let through = state.closed_through_ms();
        assert!(through >= before, "the closed-through frontier went back");
        if through != before || !closed.is_empty() {
            // Router::emit: the partials of the closed windows, then the progress.
            for w in &closed {
                assert!(w.start_ms < w.end_ms && w.end_ms <= through, "closed {w:?} through {through}");
                let _ = millis_timestamp(w.start_ms).to_string();
                for total in w.to_window_totals() {
                    let _ = total.encode_to_vec();
                }
            }
            let _ = millis_timestamp(through).to_string();
        }
        let _ = (state.last_open_end_ms(), state.open_keys(), state.dedup_live(), state.watermark_ms());

        // A checkpoint restores to a state that checkpoints the same.
        let next_offset = offset as i64 + 1;
        let cp = state.checkpoint("orderflow.enriched", 0, next_offset);
        let bytes = cp.encode_to_vec();
        let decoded = PartitionCheckpoint::decode(bytes.as_slice()).expect("a checkpoint decodes");
        assert_eq!(decoded, cp);
        let restored = PartitionState::restore(&decoded, spec, bounds).expect("a checkpoint restores").finish();
        assert_eq!(restored.checkpoint("orderflow.enriched", 0, next_offset), cp);
    }
});
