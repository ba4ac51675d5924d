//! The enricher's input: a raw orders-topic record through the framing check
//! (`framing::unframe`: plain protobuf or Confluent Schema Registry's wire format), then
//! its protobuf message through the allocation-free view
//! (`wire::OrderEventView`), validation (`validate`), the limits and the whole
//! per-event path `MerchantTable::enrich_payload` (size limit, join, spliced output).
//!
//! Checks that the borrowed and owned paths agree, that an accepted payload's output
//! record decodes (with prost and with the view) to exactly the record the owned path
//! builds, and that a refused one is refused for the reason the rules give.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::framing::{unframe, Format};
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

fuzz_target!(|record: &[u8]| {
    // The enricher's first step: the record's form. A first byte 0 is the registry's
    // frame (a protobuf message cannot start with field number 0); the message is the
    // record's tail, the whole record when plain.
    let payload = match unframe(record) {
        Ok(u) => {
            assert_eq!(u.format == Format::SchemaRegistry, record.first() == Some(&0));
            assert_eq!(u.schema_id.is_some(), u.format == Format::SchemaRegistry);
            assert!(record.ends_with(u.message));
            if u.format == Format::Protobuf {
                assert_eq!(u.message, record);
            } else {
                assert!(u.message.len() + 6 <= record.len(), "magic, id and at least one index byte");
                assert_eq!(u.schema_id, Some(u32::from_be_bytes(record[1..5].try_into().unwrap())));
            }
            u.message
        }
        Err(reason) => {
            assert_eq!(record.first(), Some(&0), "only a frame can be refused: {reason}");
            assert_eq!(reason.code(), "undecodable", "{reason}");
            return;
        }
    };
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
