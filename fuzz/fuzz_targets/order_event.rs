//! The enricher's input: a raw orders-topic payload through the allocation-free view
//! (`wire::OrderEventView`), validation (`validate`), the limits and the whole
//! per-event path `MerchantTable::enrich_payload` (size limit, join, spliced output).
//!
//! Checks that the borrowed and owned paths agree, that an accepted payload's output
//! record decodes (with prost and with the view) to exactly the record the owned path
//! builds, and that a refused one is refused for the reason the rules give.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::merchant::MerchantTable;
use orderflow_core::validate::{check_limits, decode_and_validate, decode_and_validate_view, validate_view, InvalidReason, Limits};
use orderflow_core::wire::{EnrichedKind, EnrichedView, OrderEventView};
use orderflow_fuzz::seeds;
use orderflow_proto::v1::{enriched_record, EnrichedRecord};
use orderflow_proto::Message;

/// The enricher's clock in this target.
const NOW_MS: i64 = seeds::T0 + 30_000;

fn table() -> MerchantTable {
    let mut t = MerchantTable::new();
    for m in seeds::merchants() {
        t.upsert(&m).expect("a valid seed merchant");
    }
    t
}

fuzz_target!(|payload: &[u8]| {
    let limits = Limits::default();
    let view = OrderEventView::parse(payload);
    let validated = decode_and_validate_view(payload);
    match (&view, &validated) {
        (Ok(v), Ok(w)) => assert_eq!(v, w),
        (Ok(v), Err(reason)) => assert_eq!(validate_view(v), Err(reason.clone())),
        (Err(_), Err(reason)) => assert_eq!(reason.code(), "undecodable", "{reason}"),
        (Err(e), Ok(_)) => panic!("validated a payload the view refused: {e}"),
    }
    // The owned path: the same outcome, the same reason.
    assert_eq!(decode_and_validate(payload), validated.clone().map(|v| v.to_event()));
    if let Err(reason) = &validated {
        // A dead letter's reason and code.
        let _ = (reason.to_string(), reason.code());
    }

    let table = table();
    match table.enrich_payload(payload, &limits, NOW_MS) {
        Ok(out) => {
            assert!(payload.len() <= limits.max_event_bytes);
            let event = decode_and_validate(payload).expect("enriched, so valid");
            assert_eq!(check_limits(&OrderEventView::from_event(&event), &limits, NOW_MS), Ok(()));
            assert_eq!(out.key, event.order_id);
            let expected = table.enrich(event);
            assert_eq!(out.merchant_known, expected.merchant_known);
            let record = EnrichedRecord { kind: Some(enriched_record::Kind::Event(expected)) };
            assert_eq!(EnrichedRecord::decode(out.value.as_slice()).expect("the output decodes"), record);
            let parsed = EnrichedView::parse(&out.value).expect("the output parses");
            assert!(matches!(parsed.kind, Some(EnrichedKind::Event(_))));
            assert_eq!(parsed.to_record(), record);
        }
        Err(InvalidReason::EventTooLarge { bytes, max }) => {
            assert_eq!((bytes, max), (payload.len(), limits.max_event_bytes));
            assert!(payload.len() > limits.max_event_bytes);
        }
        Err(reason) => {
            assert!(payload.len() <= limits.max_event_bytes);
            let expected = decode_and_validate_view(payload).and_then(|v| check_limits(&v, &limits, NOW_MS));
            assert_eq!(Err(reason), expected);
        }
    }
});
