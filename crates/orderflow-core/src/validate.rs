//! Validation of storefront events. An event that fails goes to the dead-letter topic
//! with the reason; it is never counted in totals.

use orderflow_proto::v1::{OrderEvent, OrderEventType};

pub use crate::reason::InvalidReason;
use crate::wire::{undecodable, OrderEventView};

/// Limits on what one event may claim, checked by the enricher against its own clock
/// ([`check_limits`], and [`crate::merchant::MerchantTable::enrich_payload`]). Its
/// decision is recorded in the log (the event is enriched or dead-lettered), so the
/// aggregator stays a function of the log when it rereads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How far ahead of the enricher's clock an event time may be. An event dated
    /// further ahead (a storefront with a wrong clock) would raise its partition's
    /// watermark, close every open window there and send the partition's ordinary
    /// traffic to the late topic.
    pub max_future_skew_ms: i64,
    /// The largest `amount_minor` accepted, so that sums cannot overflow in practice.
    pub max_amount_minor: i64,
    /// The largest record accepted, in bytes, checked before it is parsed.
    pub max_event_bytes: usize,
    /// The currency codes accepted. Every accepted code becomes a label value and a
    /// part of the totals' keys, so the set is closed: ISO 4217 by default.
    pub currencies: Currencies,
}

/// ISO 4217's active codes (and its funds, metals and testing codes), 2025.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP \
BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS \
GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR \
LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR \
PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD \
TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU \
XTS XUA XXX YER ZAR ZMW ZWG ZWL";

/// A closed set of currency codes (three upper-case ASCII letters each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies {
    /// Sorted, for a binary search per event.
    codes: Vec<[u8; 3]>,
}

impl Currencies {
    /// ISO 4217's codes.
    pub fn iso_4217() -> Self {
        Self::iso_4217_and(&[]).expect("ISO 4217's codes are well formed")
    }

    /// ISO 4217's codes and `extra` ones (each three upper-case letters, or an error
    /// naming the first that is not).
    pub fn iso_4217_and(extra: &[String]) -> Result<Self, String> {
        let mut codes = Vec::new();
        for code in ISO_4217.split_whitespace().chain(extra.iter().map(String::as_str)) {
            match <[u8; 3]>::try_from(code.as_bytes()) {
                Ok(c) if c.iter().all(u8::is_ascii_uppercase) => codes.push(c),
                _ => return Err(format!("currency `{code}` is not three upper-case letters")),
            }
        }
        codes.sort_unstable();
        codes.dedup();
        Ok(Self { codes })
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: &str) -> bool {
        <[u8; 3]>::try_from(code.as_bytes()).is_ok_and(|c| self.codes.binary_search(&c).is_ok())
    }

    /// How many codes.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Never: ISO 4217's codes are always in.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// How far ahead of the enricher's clock an event time may be, when not told otherwise
/// (5 minutes).
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// The largest amount accepted, in minor units, when not told otherwise: 10^12 (ten
/// billion yuan in fen). About 9.2 million such events would fit in one total.
pub const DEFAULT_MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// The largest record accepted when not told otherwise (64 KiB: an order event is well
/// under 1 KiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 << 10;
/// The longest id (event, order, merchant, storefront, customer) accepted, in bytes:
/// ids become keys on the orders, enriched and late topics, and are remembered for dedup.
pub const MAX_ID_BYTES: usize = 256;

impl Limits {
    /// The limits of a service's settings (the enricher's and ingest's
    /// `--max-event-time-skew`, `--max-amount-minor`, `--max-event-bytes` and
    /// `--extra-currencies`); fails on a malformed extra currency.
    pub fn from_settings(
        max_event_time_skew: std::time::Duration,
        max_amount_minor: i64,
        max_event_bytes: usize,
        extra_currencies: &[String],
    ) -> Result<Self, String> {
        Ok(Self {
            max_future_skew_ms: i64::try_from(max_event_time_skew.as_millis()).unwrap_or(i64::MAX),
            max_amount_minor,
            max_event_bytes,
            currencies: Currencies::iso_4217_and(extra_currencies)?,
        })
    }
}

impl Default for Limits {
    /// The default limits, with ISO 4217's currencies.
    fn default() -> Self {
        Self {
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            max_amount_minor: DEFAULT_MAX_AMOUNT_MINOR,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            currencies: Currencies::iso_4217(),
        }
    }
}

/// Checks an event (already [`validate_view`]ed) against [`Limits`] at the clock
/// reading `now_ms` (the record's size is checked before parsing, by the caller).
pub fn check_limits(event: &OrderEventView<'_>, limits: &Limits, now_ms: i64) -> Result<(), InvalidReason> {
    let ids = [
        ("event_id", event.event_id),
        ("order_id", event.order_id),
        ("merchant_id", event.merchant_id),
        ("storefront_id", event.storefront_id),
        ("customer_id", event.customer_id),
    ];
    if let Some((field, id)) = ids.into_iter().find(|(_, id)| id.len() > MAX_ID_BYTES) {
        return Err(InvalidReason::IdTooLong { field, bytes: id.len(), max: MAX_ID_BYTES });
    }
    if let Some(t) = event.event_time.as_ref() {
        let ahead_ms = orderflow_proto::timestamp_millis(t).saturating_sub(now_ms);
        if ahead_ms > limits.max_future_skew_ms {
            return Err(InvalidReason::EventTimeInFuture { ahead_ms, max_ms: limits.max_future_skew_ms });
        }
    }
    if event.amount_minor > limits.max_amount_minor {
        return Err(InvalidReason::AmountTooLarge { amount: event.amount_minor, max: limits.max_amount_minor });
    }
    if !limits.currencies.contains(event.currency) {
        return Err(InvalidReason::UnknownCurrency(event.currency.to_owned()));
    }
    Ok(())
}

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

/// The whole check of one orders-topic record, as the enricher makes it (and as HTTP
/// ingest makes it before publishing, so a storefront hears at once what the enricher
/// would dead-letter): refused as `event_too_large` before parsing when larger than
/// `limits.max_event_bytes`, then decoded and validated ([`decode_and_validate_view`]),
/// then held to `limits` at the clock reading `now_ms` ([`check_limits`]).
pub fn check_payload<'a>(payload: &'a [u8], limits: &Limits, now_ms: i64) -> Result<OrderEventView<'a>, InvalidReason> {
    if payload.len() > limits.max_event_bytes {
        return Err(InvalidReason::EventTooLarge { bytes: payload.len(), max: limits.max_event_bytes });
    }
    let event = decode_and_validate_view(payload)?;
    check_limits(&event, limits, now_ms)?;
    Ok(event)
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

    #[test]
    fn limits_refuse_events_dated_too_far_ahead_and_amounts_too_large() {
        use crate::wire::OrderEventView;
        use orderflow_proto::Message as _;

        let now = 1_573_430_400_000;
        let at = |ahead_ms: i64, amount: i64| {
            let mut e = good();
            e.event_time = Some(orderflow_proto::millis_timestamp(now + ahead_ms));
            e.amount_minor = amount;
            e.encode_to_vec()
        };
        let limits = Limits::default();
        let check = |payload: &[u8]| check_limits(&OrderEventView::parse(payload).unwrap(), &limits, now);
        assert_eq!(check(&at(DEFAULT_MAX_FUTURE_SKEW_MS, 1)), Ok(()));
        assert_eq!(check(&at(-10 * DEFAULT_MAX_FUTURE_SKEW_MS, 1)), Ok(()), "the past is the late topic's business");
        let day = 86_400_000;
        let err = check(&at(day, 1)).unwrap_err();
        assert_eq!(err, InvalidReason::EventTimeInFuture { ahead_ms: day, max_ms: DEFAULT_MAX_FUTURE_SKEW_MS });
        assert_eq!(err.code(), "event_time_in_future");
        assert_eq!(check(&at(DEFAULT_MAX_FUTURE_SKEW_MS + 1, 1)).unwrap_err().code(), "event_time_in_future");
        assert_eq!(check(&at(0, DEFAULT_MAX_AMOUNT_MINOR)), Ok(()));
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let payload = at(0, 1);
        let view = OrderEventView::parse(&payload).unwrap();
        let err = check_limits(&OrderEventView { customer_id: &long, ..view }, &limits, now);
        assert_eq!(err, Err(InvalidReason::IdTooLong { field: "customer_id", bytes: MAX_ID_BYTES + 1, max: MAX_ID_BYTES }));
        assert_eq!(err.unwrap_err().code(), "id_too_long");
        let fits = check_limits(&OrderEventView { event_id: &long[1..], ..view }, &limits, now);
        assert_eq!(fits, Ok(()), "{MAX_ID_BYTES} bytes are fine");
        let err = check(&at(0, i64::MAX)).unwrap_err();
        assert_eq!(err, InvalidReason::AmountTooLarge { amount: i64::MAX, max: DEFAULT_MAX_AMOUNT_MINOR });
        assert_eq!(err.code(), "amount_too_large");
    }

    /// The default skew is five minutes, to the millisecond.
    #[test]
    fn the_default_skew_allows_five_minutes_ahead_and_no_more() {
        let limits = Limits::default();
        let at = |ahead_ms: i64| OrderEvent { event_time: Some(millis_timestamp(1_000_000 + ahead_ms)), ..good() }.encode_to_vec();
        let check = |payload: &[u8]| check_limits(&OrderEventView::parse(payload).unwrap(), &limits, 1_000_000);
        assert_eq!(check(&at(300_000)), Ok(()));
        assert_eq!(check(&at(300_001)), Err(InvalidReason::EventTimeInFuture { ahead_ms: 300_001, max_ms: 300_000 }));
    }

    #[test]
    fn limits_from_settings_are_those_settings() {
        let limits = Limits::from_settings(std::time::Duration::from_secs(90), 5_000, 2_048, &["QQQ".to_owned()]).unwrap();
        assert_eq!(
            (limits.max_future_skew_ms, limits.max_amount_minor, limits.max_event_bytes, limits.currencies.len()),
            (90_000, 5_000, 2_048, Currencies::iso_4217().len() + 1)
        );
        assert!(limits.currencies.contains("QQQ") && limits.currencies.contains("CNY"));
        let forever = Limits::from_settings(std::time::Duration::MAX, 1, 1, &[]).unwrap();
        assert_eq!(forever.max_future_skew_ms, i64::MAX);
        assert!(Limits::from_settings(std::time::Duration::ZERO, 1, 1, &["qq".to_owned()]).unwrap_err().contains("`qq`"));
    }

    /// A record of exactly `max_event_bytes` is checked; one byte more is refused
    /// before parsing.
    #[test]
    fn a_payload_of_the_largest_size_is_accepted_and_one_byte_more_is_not() {
        let payload = good().encode_to_vec();
        let fits = Limits { max_event_bytes: payload.len(), ..Limits::default() };
        assert_eq!(check_payload(&payload, &fits, 0).map(|v| v.to_event()), Ok(good()));
        let smaller = Limits { max_event_bytes: payload.len() - 1, ..Limits::default() };
        assert_eq!(
            check_payload(&payload, &smaller, 0).map(|v| v.to_event()),
            Err(InvalidReason::EventTooLarge { bytes: payload.len(), max: payload.len() - 1 })
        );
    }

    #[test]
    fn currencies_are_a_closed_set_iso_4217_by_default() {
        use crate::wire::OrderEventView;
        use orderflow_proto::Message as _;

        let with = |currency: &str| OrderEvent { currency: currency.into(), ..good() }.encode_to_vec();
        let iso = Limits::default();
        let check = |payload: &[u8], limits: &Limits| check_limits(&OrderEventView::parse(payload).unwrap(), limits, i64::MAX);
        for code in ["CNY", "USD", "EUR", "JPY", "HKD", "KRW", "SGD", "GBP"] {
            assert_eq!(check(&with(code), &iso), Ok(()), "{code}");
        }
        let err = check(&with("QQQ"), &iso).unwrap_err();
        assert_eq!((err.code(), err.to_string().contains("QQQ")), ("unknown_currency", true));
        let extra = Currencies::iso_4217_and(&["QQQ".to_owned()]).unwrap();
        assert_eq!(extra.len(), iso.currencies.len() + 1);
        assert_eq!(check(&with("QQQ"), &Limits { currencies: extra, ..iso }), Ok(()));
        assert!(Currencies::iso_4217_and(&["qqq".to_owned()]).unwrap_err().contains("`qqq`"));
        assert!(!iso.currencies.is_empty());
    }
}
