//! Protobuf types of orderflow: the storefront event contract (`OrderEvent`), merchant
//! records, and the records orderflow's stages exchange (enriched events, partial and
//! merged window totals, checkpoints).
//!
//! Types come from `proto/orderflow/v1/*.proto`, compiled at build time by protox and
//! prost (no system `protoc`). Every message also implements `serde::Serialize` and
//! `Deserialize` with the canonical protobuf JSON mapping (via pbjson): lowerCamelCase
//! names on output, both name styles on input, enum names as strings, int64 as strings
//! (numbers accepted), RFC 3339 timestamps.

/// `orderflow.v1`: generated code.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/orderflow.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/orderflow.v1.serde.rs"));
}

mod timestamp;

pub use prost::Message;
pub use timestamp::Timestamp;

/// Milliseconds since the epoch of a protobuf timestamp (floored to the millisecond,
/// clipped to the range of `i64`).
pub fn timestamp_millis(ts: &Timestamp) -> i64 {
    let ms = i128::from(ts.seconds) * 1000 + i128::from(ts.nanos).div_euclid(1_000_000);
    ms.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// The protobuf timestamp of milliseconds since the epoch.
pub fn millis_timestamp(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::v1::{OrderEvent, OrderEventType};
    use super::*;

    #[test]
    fn canonical_json_round_trip() {
        let event = OrderEvent {
            event_id: "e1".into(),
            order_id: "o1".into(),
            merchant_id: "m1".into(),
            r#type: OrderEventType::Paid as i32,
            amount_minor: 12_345,
            currency: "CNY".into(),
            event_time: Some(millis_timestamp(1_573_401_600_123)),
            ..Default::default()
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["eventId"], "e1");
        assert_eq!(json["type"], "ORDER_EVENT_TYPE_PAID");
        assert_eq!(json["amountMinor"], "12345");
        assert_eq!(json["eventTime"], "2019-11-10T16:00:00.123Z");
        let back: OrderEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn accepts_both_name_styles_and_int64_as_number() {
        let line = r#"{"event_id":"e","orderId":"o","merchant_id":"m","type":"ORDER_EVENT_TYPE_CREATED","amount_minor":5,"currency":"USD","event_time":"2019-11-11T00:00:00Z"}"#;
        let event: OrderEvent = serde_json::from_str(line).unwrap();
        assert_eq!(event.order_id, "o");
        assert_eq!(event.amount_minor, 5);
        assert_eq!(timestamp_millis(event.event_time.as_ref().unwrap()), 1_573_430_400_000);
    }

    /// Found by fuzzing (the aggregator's checkpoints, minimized: a checkpoint with the
    /// watermark at `i64::MIN + 513` ms, then events just before it): the times in the
    /// first 808 ms of the `i64` milliseconds did not survive the trip through a
    /// `Timestamp` (the whole seconds saturated before the rest was added), so a restored
    /// window moved.
    #[test]
    fn millis_conversions_round_trip_at_the_ends_of_time() {
        for ms in [i64::MIN, i64::MIN + 1, i64::MIN + 191, i64::MIN + 192, i64::MIN + 513, i64::MIN + 807, i64::MIN + 808, i64::MAX] {
            assert_eq!(timestamp_millis(&millis_timestamp(ms)), ms);
        }
        // Beyond the range of `i64` milliseconds: clipped to it.
        let t = |seconds, nanos| timestamp_millis(&Timestamp { seconds, nanos });
        assert_eq!((t(i64::MAX, 0), t(i64::MAX, i32::MIN), t(i64::MAX / 1000 + 1, 0)), (i64::MAX, i64::MAX, i64::MAX));
        assert_eq!((t(i64::MIN, 999_999_999), t(i64::MIN, i32::MAX), t(i64::MIN / 1000 - 1, 0)), (i64::MIN, i64::MIN, i64::MIN));
    }

    #[test]
    fn millis_conversions_handle_negative_times() {
        for ms in [-1_500, -1, 0, 1, 999, 1_000, 1_573_430_400_001] {
            assert_eq!(timestamp_millis(&millis_timestamp(ms)), ms);
        }
    }
}
