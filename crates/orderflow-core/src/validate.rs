//! Validation of storefront events. An event that fails goes to the dead-letter topic
//! with the reason; it is never counted in totals.

use orderflow_proto::v1::{OrderEvent, OrderEventType};

pub use crate::reason::InvalidReason;
use crate::wire::{undecodable, OrderEventView};

/// Checks the rules every counted event must meet.
pub fn validate(event: &OrderEvent) -> Result<(), InvalidReason> {
    validate_view(&OrderEventView::from_event(event))
}

/// The rules of [`validate`], on a borrowed event: the one implementation of them.
pub fn validate_view(event: &OrderEventView<'_>) -> Result<(), InvalidReason> {
    if event.event_id.is_empty() {
        return Err(InvalidReason::MissingEventId);
    }
    if event.order_id.is_empty() {
        return Err(InvalidReason::MissingOrderId);
    }
    if event.merchant_id.is_empty() {
        return Err(InvalidReason::MissingMerchantId);
    }
    let Some(time) = event.event_time else {
        return Err(InvalidReason::MissingEventTime);
    };
    // The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31.
    if !(0..1_000_000_000).contains(&time.nanos) || !(-62_135_596_800..=253_402_300_799).contains(&time.seconds) {
        return Err(InvalidReason::InvalidEventTime { seconds: time.seconds, nanos: time.nanos });
    }
    match OrderEventType::try_from(event.r#type) {
        Ok(OrderEventType::Unspecified) => return Err(InvalidReason::UnspecifiedType),
        Ok(_) => {}
        Err(_) => return Err(InvalidReason::UnknownType(event.r#type)),
    }
    if event.amount_minor < 0 {
        return Err(InvalidReason::NegativeAmount(event.amount_minor));
    }
    let c = event.currency.as_bytes();
    if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
        return Err(InvalidReason::BadCurrency(event.currency.to_owned()));
    }
    Ok(())
}

/// Decodes a raw orders-topic payload and validates it.
pub fn decode_and_validate(payload: &[u8]) -> Result<OrderEvent, InvalidReason> {
    decode_and_validate_view(payload).map(|view| view.to_event())
}

/// [`decode_and_validate`] without allocating: the event borrowed from the payload.
/// Same outcome and same reason for every payload (the `Undecodable` message is
/// prost's).
pub fn decode_and_validate_view(payload: &[u8]) -> Result<OrderEventView<'_>, InvalidReason> {
    let view = OrderEventView::parse(payload).map_err(|e| undecodable::<OrderEvent>(payload, &e))?;
    validate_view(&view)?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_proto::millis_timestamp;
    use orderflow_proto::Message;

    fn good() -> OrderEvent {
        OrderEvent {
            event_id: "e".into(),
            order_id: "o".into(),
            merchant_id: "m".into(),
            r#type: OrderEventType::Created as i32,
            amount_minor: 0,
            currency: "CNY".into(),
            event_time: Some(millis_timestamp(1)),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_complete_event() {
        assert_eq!(validate(&good()), Ok(()));
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        type Case = (fn(&mut OrderEvent), &'static str);
        let cases: Vec<Case> = vec![
            (|e| e.event_id.clear(), "missing_event_id"),
            (|e| e.order_id.clear(), "missing_order_id"),
            (|e| e.merchant_id.clear(), "missing_merchant_id"),
            (|e| e.event_time = None, "missing_event_time"),
            (|e| e.event_time.as_mut().unwrap().nanos = -1, "invalid_event_time"),
            (|e| e.r#type = 0, "unspecified_type"),
            (|e| e.r#type = 99, "unknown_type"),
            (|e| e.amount_minor = -1, "negative_amount"),
            (|e| e.currency = "cny".into(), "bad_currency"),
            (|e| e.currency = "YUAN".into(), "bad_currency"),
            (|e| e.currency.clear(), "bad_currency"),
        ];
        for (mutate, code) in cases {
            let mut e = good();
            mutate(&mut e);
            assert_eq!(validate(&e).unwrap_err().code(), code);
            assert!(InvalidReason::CODES.contains(&code));
            // The same reason, in full, from the payload (borrowed or owned).
            let bytes = e.encode_to_vec();
            assert_eq!(decode_and_validate(&bytes), Err(validate(&e).unwrap_err()));
            assert_eq!(decode_and_validate_view(&bytes), Err(validate(&e).unwrap_err()));
            assert_eq!(decode_and_validate(&bytes), reference(&bytes));
        }
    }

    /// `decode_and_validate` as it was before views: prost, then the rules.
    fn reference(payload: &[u8]) -> Result<OrderEvent, InvalidReason> {
        let event = OrderEvent::decode(payload).map_err(|e| InvalidReason::Undecodable(e.to_string()))?;
        validate(&event)?;
        Ok(event)
    }

    #[test]
    fn garbage_bytes_are_undecodable() {
        let err = decode_and_validate(b"\xff\xff\xff not protobuf").unwrap_err();
        assert_eq!(err.code(), "undecodable");
        assert!(err.to_string().starts_with("payload is not a protobuf OrderEvent"));
        for bytes in [&b"\xff\xff\xff not protobuf"[..], b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\x4a\x03\x08\x01", b"\x0c"] {
            assert_eq!(decode_and_validate(bytes), reference(bytes));
            assert_eq!(decode_and_validate_view(bytes).map(|v| v.to_event()), reference(bytes));
        }
    }

    #[test]
    fn damaged_payloads_get_the_same_outcome_as_before() {
        let mut bytes = good().encode_to_vec();
        bytes.extend(OrderEvent { event_id: "e2".into(), amount_minor: -5, ..Default::default() }.encode_to_vec());
        // Every truncation and every single-byte change of a payload.
        for cut in 0..=bytes.len() {
            assert_eq!(decode_and_validate(&bytes[..cut]), reference(&bytes[..cut]), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x08, 0x0a, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] = value;
                assert_eq!(decode_and_validate(&b), reference(&b), "byte {at} = {value:#x}");
            }
        }
    }

    #[test]
    fn decodes_valid_bytes() {
        let bytes = good().encode_to_vec();
        assert_eq!(decode_and_validate(&bytes).unwrap(), good());
    }
}
