//! Borrowed, allocation-free views of the records on the per-event hot paths: the
//! storefronts' `OrderEvent` (the enricher's input) and the `EnrichedRecord` (the
//! aggregator's input). Strings are `&str` into the payload.
//!
//! Parsing follows prost's decoding exactly, using prost's own varint and key
//! primitives (behind inline fast paths for one-byte keys and varints of up to 9 bytes,
//! tested against them): a payload parses as a view if and only if prost decodes it, and the view
//! holds the same values as the decoded message (the property tests below check this).
//! That is: strings must be UTF-8; for scalars and strings the last occurrence wins; a
//! message field that occurs several times is merged (prost's `get_or_insert` then
//! merge), and a `oneof` member is merged only into the same member; unknown fields
//! (groups included) are skipped with prost's rules, including its recursion limit of
//! 100; wire-type mismatches, truncation and overlong varints are errors.
//!
//! Error messages are not prost's; callers that report them (dead letters) take the
//! message from prost on the (rare) error path, see [`undecodable`].

use orderflow_proto::v1::{enriched_record, EnrichedOrderEvent, EnrichedRecord, IdleTick, OrderEvent};
use orderflow_proto::{Message, Timestamp};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::reason::InvalidReason;

/// prost's recursion limit (`prost::RECURSION_LIMIT`, not exported).
const RECURSION_LIMIT: u32 = 100;

/// Why a payload could not be parsed as a view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl From<prost::DecodeError> for WireError {
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
}

fn err<T>(what: &str) -> Result<T, WireError> {
    Err(WireError(what.to_owned()))
}

type Result<T, E = WireError> = std::result::Result<T, E>;

/// `prost::encoding::decode_varint` on a slice: varints of up to 9 bytes (63 bits, so
/// no overflow check is needed) are decoded inline, anything else (10-byte varints,
/// truncation, overlong encodings) by prost itself, so values and errors are prost's.
#[inline(always)]
fn decode_varint(buf: &mut &[u8]) -> Result<u64> {
    let bytes = *buf;
    if let Some(&b) = bytes.first() {
        if b < 0x80 {
            *buf = &bytes[1..];
            return Ok(u64::from(b));
        }
    }
    decode_varint_multi(buf)
}

#[inline]
fn decode_varint_multi(buf: &mut &[u8]) -> Result<u64> {
    let bytes = *buf;
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(9).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Ok(prost::encoding::decode_varint(buf)?)
}

/// `prost::encoding::decode_key` on a slice: a one-byte key with a valid wire type and
/// tag is decoded inline, anything else (and every error) by prost itself.
#[inline(always)]
fn decode_key(buf: &mut &[u8]) -> Result<(u32, WireType)> {
    if let Some(&b) = buf.first() {
        let wire_type = match b & 0x07 {
            0 => Some(WireType::Varint),
            1 => Some(WireType::SixtyFourBit),
            2 => Some(WireType::LengthDelimited),
            3 => Some(WireType::StartGroup),
            4 => Some(WireType::EndGroup),
            5 => Some(WireType::ThirtyTwoBit),
            _ => None,
        };
        if let (true, Some(wire_type)) = ((0x08..0x80).contains(&b), wire_type) {
            *buf = &buf[1..];
            return Ok((u32::from(b >> 3), wire_type));
        }
    }
    Ok(prost::encoding::decode_key(buf)?)
}

#[inline(always)]
fn check_wire_type(expected: WireType, actual: WireType) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        err("invalid wire type")
    }
}

/// A length-delimited field's bytes (`bytes::merge_one_copy`'s checks).
#[inline(always)]
fn length_delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return err("buffer underflow");
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

/// A `string` field (`string::merge`: rejects invalid UTF-8).
#[inline(always)]
fn string<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a str> {
    let bytes = length_delimited(wire_type, buf)?;
    std::str::from_utf8(bytes).or_else(|_| err("invalid string value: data is not UTF-8 encoded"))
}

/// A varint scalar (`int32`, `int64`, `bool` and enums all check the varint wire type).
#[inline(always)]
fn varint(wire_type: WireType, buf: &mut &[u8]) -> Result<u64> {
    check_wire_type(WireType::Varint, wire_type)?;
    decode_varint(buf)
}

/// A nested message's bytes (`message::merge`'s checks before its loop); its fields
/// are parsed with `depth - 1`.
#[inline(always)]
fn nested<'a>(wire_type: WireType, buf: &mut &'a [u8], depth: u32) -> Result<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    if depth == 0 {
        return err("recursion limit reached");
    }
    length_delimited(wire_type, buf)
}

/// Skips an unknown field: `prost::encoding::skip_field` with its recursion count.
fn skip(wire_type: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Result<()> {
    if depth == 0 {
        return err("recursion limit reached");
    }
    let len = match wire_type {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire_type) = decode_key(buf)?;
            match inner_wire_type {
                WireType::EndGroup => {
                    if inner_tag != tag {
                        return err("unexpected end group tag");
                    }
                    break 0;
                }
                _ => skip(inner_wire_type, inner_tag, buf, depth - 1)?,
            }
        },
        WireType::EndGroup => return err("unexpected end group tag"),
    };
    if len > buf.len() as u64 {
        return err("buffer underflow");
    }
    *buf = &buf[len as usize..];
    Ok(())
}

/// Merges a `google.protobuf.Timestamp`'s fields into `t`.
fn merge_timestamp(t: &mut Timestamp, mut buf: &[u8], depth: u32) -> Result<()> {
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => t.seconds = varint(wire_type, &mut buf)? as i64,
            2 => t.nanos = varint(wire_type, &mut buf)? as i32,
            _ => skip(wire_type, tag, &mut buf, depth)?,
        }
    }
    Ok(())
}

/// A message field of type `Timestamp`: present from its first occurrence, merged after.
#[inline(always)]
fn timestamp_field(t: &mut Option<Timestamp>, wire_type: WireType, buf: &mut &[u8], depth: u32) -> Result<()> {
    let bytes = nested(wire_type, buf, depth)?;
    merge_timestamp(t.get_or_insert_with(Timestamp::default), bytes, depth - 1)
}

/// A borrowed `orderflow.v1.OrderEvent`: the same fields, strings borrowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderEventView<'a> {
    pub event_id: &'a str,
    pub order_id: &'a str,
    pub merchant_id: &'a str,
    pub storefront_id: &'a str,
    pub customer_id: &'a str,
    /// An `OrderEventType` value; unknown values are kept, as prost does.
    pub r#type: i32,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub event_time: Option<Timestamp>,
}

impl<'a> OrderEventView<'a> {
    /// Parses an `OrderEvent` payload (succeeds exactly when `OrderEvent::decode` does).
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let mut view = Self::default();
        view.merge(payload, RECURSION_LIMIT)?;
        Ok(view)
    }

    /// Merges the fields in `buf` into the view (`Message::merge`); `depth` is prost's
    /// remaining recursion count at this message's level.
    fn merge(&mut self, mut buf: &'a [u8], depth: u32) -> Result<()> {
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let buf = &mut buf;
            match tag {
                1 => self.event_id = string(wire_type, buf)?,
                2 => self.order_id = string(wire_type, buf)?,
                3 => self.merchant_id = string(wire_type, buf)?,
                4 => self.storefront_id = string(wire_type, buf)?,
                5 => self.customer_id = string(wire_type, buf)?,
                6 => self.r#type = varint(wire_type, buf)? as i32,
                7 => self.amount_minor = varint(wire_type, buf)? as i64,
                8 => self.currency = string(wire_type, buf)?,
                9 => timestamp_field(&mut self.event_time, wire_type, buf, depth)?,
                _ => skip(wire_type, tag, buf, depth)?,
            }
        }
        Ok(())
    }

    /// A view of a decoded event.
    pub fn from_event(e: &'a OrderEvent) -> Self {
        Self {
            event_id: &e.event_id,
            order_id: &e.order_id,
            merchant_id: &e.merchant_id,
            storefront_id: &e.storefront_id,
            customer_id: &e.customer_id,
            r#type: e.r#type,
            amount_minor: e.amount_minor,
            currency: &e.currency,
            event_time: e.event_time,
        }
    }

    /// The owned event (what prost would have decoded).
    pub fn to_event(&self) -> OrderEvent {
        OrderEvent {
            event_id: self.event_id.into(),
            order_id: self.order_id.into(),
            merchant_id: self.merchant_id.into(),
            storefront_id: self.storefront_id.into(),
            customer_id: self.customer_id.into(),
            r#type: self.r#type,
            amount_minor: self.amount_minor,
            currency: self.currency.into(),
            event_time: self.event_time,
        }
    }
}

/// A borrowed `orderflow.v1.EnrichedOrderEvent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichedEventView<'a> {
    pub event: Option<OrderEventView<'a>>,
    pub region: &'a str,
    pub tier: &'a str,
    pub merchant_known: bool,
}

impl<'a> EnrichedEventView<'a> {
    fn merge(&mut self, mut buf: &'a [u8], depth: u32) -> Result<()> {
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let buf = &mut buf;
            match tag {
                1 => {
                    let bytes = nested(wire_type, buf, depth)?;
                    self.event.get_or_insert_with(OrderEventView::default).merge(bytes, depth - 1)?;
                }
                2 => self.region = string(wire_type, buf)?,
                3 => self.tier = string(wire_type, buf)?,
                4 => self.merchant_known = varint(wire_type, buf)? != 0,
                _ => skip(wire_type, tag, buf, depth)?,
            }
        }
        Ok(())
    }

    /// A view of a decoded enriched event.
    pub fn from_event(e: &'a EnrichedOrderEvent) -> Self {
        Self { event: e.event.as_ref().map(OrderEventView::from_event), region: &e.region, tier: &e.tier, merchant_known: e.merchant_known }
    }

    /// The owned enriched event.
    pub fn to_event(&self) -> EnrichedOrderEvent {
        EnrichedOrderEvent {
            event: self.event.as_ref().map(OrderEventView::to_event),
            region: self.region.into(),
            tier: self.tier.into(),
            merchant_known: self.merchant_known,
        }
    }
}

/// The `kind` of an [`EnrichedView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrichedKind<'a> {
    Event(EnrichedEventView<'a>),
    /// An `IdleTick` and its `close_through`.
    IdleTick(Option<Timestamp>),
}

/// A borrowed `orderflow.v1.EnrichedRecord` (a record on the enriched topic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichedView<'a> {
    pub kind: Option<EnrichedKind<'a>>,
}

impl<'a> EnrichedView<'a> {
    /// Parses an `EnrichedRecord` payload (succeeds exactly when `EnrichedRecord::decode`
    /// does).
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let depth = RECURSION_LIMIT;
        let mut view = Self::default();
        let mut buf = payload;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let buf = &mut buf;
            match tag {
                1 => {
                    let bytes = nested(wire_type, buf, depth)?;
                    // Merged in place (no copy of the view).
                    if !matches!(view.kind, Some(EnrichedKind::Event(_))) {
                        view.kind = Some(EnrichedKind::Event(EnrichedEventView::default()));
                    }
                    if let Some(EnrichedKind::Event(e)) = &mut view.kind {
                        e.merge(bytes, depth - 1)?;
                    }
                }
                2 => {
                    let bytes = nested(wire_type, buf, depth)?;
                    let mut close_through = match view.kind {
                        Some(EnrichedKind::IdleTick(t)) => t,
                        _ => None,
                    };
                    merge_idle_tick(&mut close_through, bytes, depth - 1)?;
                    view.kind = Some(EnrichedKind::IdleTick(close_through));
                }
                _ => skip(wire_type, tag, buf, depth)?,
            }
        }
        Ok(view)
    }

    /// The owned record.
    pub fn to_record(&self) -> EnrichedRecord {
        EnrichedRecord {
            kind: self.kind.map(|k| match k {
                EnrichedKind::Event(e) => enriched_record::Kind::Event(e.to_event()),
                EnrichedKind::IdleTick(close_through) => enriched_record::Kind::IdleTick(IdleTick { close_through }),
            }),
        }
    }
}

fn merge_idle_tick(close_through: &mut Option<Timestamp>, mut buf: &[u8], depth: u32) -> Result<()> {
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => timestamp_field(close_through, wire_type, &mut buf, depth)?,
            _ => skip(wire_type, tag, &mut buf, depth)?,
        }
    }
    Ok(())
}

/// The dead-letter reason of a payload that did not parse as a view: prost's error
/// message for decoding it as `M`, as the services reported before views (decoding
/// again only on this rare path).
pub fn undecodable<M: Message + Default>(payload: &[u8], view_error: &WireError) -> InvalidReason {
    match M::decode(payload) {
        Err(e) => InvalidReason::Undecodable(e.to_string()),
        // Not expected: views and prost agree (tested); say what the view saw.
        Ok(_) => InvalidReason::Undecodable(view_error.to_string()),
    }
}

/// An `EnrichedRecord` holding an `EnrichedOrderEvent` whose `event` is `event_payload`
/// as it is (an encoded `OrderEvent`), built without decoding or re-encoding the event.
///
/// Protobuf decodes a message field from its bytes exactly as it decodes the message
/// alone, so this decodes to the same record as encoding the decoded event would (the
/// fields are in prost's order and empty or false ones omitted, as prost writes them).
/// One difference on the wire, not in the decoded record: fields of the payload that
/// orderflow does not know (a storefront on a newer contract) are passed through, where
/// re-encoding dropped them.
pub fn encode_enriched_spliced(event_payload: &[u8], region: &str, tier: &str, merchant_known: bool) -> Vec<u8> {
    let field_len = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let mut inner = field_len(1, event_payload.len());
    for (tag, s) in [(2, region), (3, tier)] {
        if !s.is_empty() {
            inner += field_len(tag, s.len());
        }
    }
    if merchant_known {
        inner += key_len(4) + 1;
    }
    let mut out = Vec::with_capacity(field_len(1, inner));
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(event_payload.len() as u64, &mut out);
    out.extend_from_slice(event_payload);
    for (tag, s) in [(2, region), (3, tier)] {
        if !s.is_empty() {
            encode_key(tag, WireType::LengthDelimited, &mut out);
            encode_varint(s.len() as u64, &mut out);
            out.extend_from_slice(s.as_bytes());
        }
    }
    if merchant_known {
        encode_key(4, WireType::Varint, &mut out);
        out.push(1);
    }
    debug_assert_eq!(out.len(), field_len(1, inner));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_proto::v1::{enriched_record, EnrichedRecord, IdleTick};

    /// A small deterministic generator (xorshift64*), so the tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn string(&mut self) -> String {
            const PARTS: &[&str] = &["", "a", "o-1", "m000123", "CNY", "usd", "\u{e9}", "\u{4e2d}\u{6587}", "\u{1f600}", "x\0y"];
            (0..self.below(4)).map(|_| PARTS[self.below(PARTS.len() as u64) as usize]).collect()
        }
        fn timestamp(&mut self) -> Option<Timestamp> {
            self.chance(85).then(|| Timestamp {
                seconds: match self.below(4) {
                    0 => self.next() as i64,
                    1 => -(self.below(1 << 40) as i64),
                    _ => 1_700_000_000 + self.below(1 << 20) as i64,
                },
                nanos: match self.below(4) {
                    0 => self.next() as i32,
                    1 => 0,
                    _ => self.below(1_000_000_000) as i32,
                },
            })
        }
        fn event(&mut self) -> OrderEvent {
            OrderEvent {
                event_id: self.string(),
                order_id: self.string(),
                merchant_id: self.string(),
                storefront_id: self.string(),
                customer_id: self.string(),
                r#type: match self.below(4) {
                    0 => self.next() as i32,
                    _ => self.below(6) as i32,
                },
                amount_minor: match self.below(3) {
                    0 => self.next() as i64,
                    _ => self.below(1_000_000) as i64,
                },
                currency: self.string(),
                event_time: self.timestamp(),
            }
        }
        fn enriched(&mut self) -> EnrichedRecord {
            let kind = match self.below(10) {
                0 => None,
                1 => Some(enriched_record::Kind::IdleTick(IdleTick { close_through: self.timestamp() })),
                _ => Some(enriched_record::Kind::Event(EnrichedOrderEvent {
                    event: self.chance(90).then(|| self.event()),
                    region: self.string(),
                    tier: self.string(),
                    merchant_known: self.chance(50),
                })),
            };
            EnrichedRecord { kind }
        }
        /// Unknown fields of every wire type, groups included.
        fn unknown_field(&mut self, out: &mut Vec<u8>) {
            let tag = 10 + self.below(1000) as u32;
            match self.below(5) {
                0 => {
                    encode_key(tag, WireType::Varint, out);
                    encode_varint(self.next(), out);
                }
                1 => {
                    encode_key(tag, WireType::ThirtyTwoBit, out);
                    out.extend_from_slice(&[1, 2, 3, 4]);
                }
                2 => {
                    encode_key(tag, WireType::SixtyFourBit, out);
                    out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
                }
                3 => {
                    let s = self.string();
                    encode_key(tag, WireType::LengthDelimited, out);
                    encode_varint(s.len() as u64, out);
                    out.extend_from_slice(s.as_bytes());
                }
                _ => {
                    encode_key(tag, WireType::StartGroup, out);
                    encode_key(7, WireType::Varint, out);
                    encode_varint(self.next(), out);
                    encode_key(tag, WireType::EndGroup, out);
                }
            }
        }
        /// Random damage: flipped, inserted or removed bytes, truncation.
        fn mutate(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut b = bytes.to_vec();
            for _ in 0..1 + self.below(3) {
                let at = if b.is_empty() { 0 } else { self.below(b.len() as u64) as usize };
                match self.below(5) {
                    0 if !b.is_empty() => b[at] ^= 1 << self.below(8),
                    1 if !b.is_empty() => b[at] = self.next() as u8,
                    2 => b.insert(at, self.next() as u8),
                    3 if !b.is_empty() => {
                        b.remove(at);
                    }
                    _ => b.truncate(at),
                }
            }
            b
        }
    }

    /// Encodes `e`, sometimes with unknown fields or with the event time split over
    /// several occurrences (prost merges them).
    fn encode_event(rng: &mut Rng, e: &OrderEvent) -> Vec<u8> {
        let mut out = Vec::new();
        if rng.chance(30) {
            rng.unknown_field(&mut out);
        }
        let mut plain = e.clone();
        let split_time = rng.chance(20) && e.event_time.is_some();
        if split_time {
            plain.event_time = None;
        }
        plain.encode(&mut out).unwrap();
        if split_time {
            let t = e.event_time.unwrap();
            for part in [Timestamp { seconds: t.seconds, nanos: 0 }, Timestamp { seconds: 0, nanos: t.nanos }] {
                // A zero field is not written, so the second part keeps the first's seconds.
                out.extend(OrderEvent { event_time: Some(part), ..Default::default() }.encode_to_vec());
            }
        }
        if rng.chance(30) {
            rng.unknown_field(&mut out);
        }
        out
    }

    fn check_event(bytes: &[u8]) -> bool {
        let prost = OrderEvent::decode(bytes);
        let view = OrderEventView::parse(bytes);
        assert_eq!(view.is_ok(), prost.is_ok(), "{bytes:?}: view {view:?}, prost {prost:?}");
        if let (Ok(v), Ok(p)) = (view, prost) {
            assert_eq!(v.to_event(), p, "{bytes:?}");
            assert_eq!(v, OrderEventView::from_event(&p));
            true
        } else {
            false
        }
    }

    fn check_enriched(bytes: &[u8]) -> bool {
        let prost = EnrichedRecord::decode(bytes);
        let view = EnrichedView::parse(bytes);
        assert_eq!(view.is_ok(), prost.is_ok(), "{bytes:?}: view {view:?}, prost {prost:?}");
        if let (Ok(v), Ok(p)) = (view, prost) {
            assert_eq!(v.to_record(), p, "{bytes:?}");
            true
        } else {
            false
        }
    }

    /// Checks four random mutations of `bytes` with `check`, counting which parsed.
    fn mutations(rng: &mut Rng, bytes: &[u8], check: fn(&[u8]) -> bool, (ok, failed): (&mut u32, &mut u32)) {
        for _ in 0..4 {
            if check(&rng.mutate(bytes)) {
                *ok += 1;
            } else {
                *failed += 1;
            }
        }
    }

    #[test]
    fn order_event_views_parse_exactly_as_prost_decodes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..20_000 {
            let e = rng.event();
            let bytes = encode_event(&mut rng, &e);
            assert!(check_event(&bytes));
            assert_eq!(OrderEventView::parse(&bytes).unwrap().to_event(), e);
            // Two events concatenated: prost merges them (last string wins, times merge).
            let other_event = rng.event();
            let other = encode_event(&mut rng, &other_event);
            assert!(check_event(&[bytes.as_slice(), &other].concat()));
            mutations(&mut rng, &bytes, check_event, (&mut ok, &mut failed));
        }
        // Both outcomes were exercised by the mutations.
        assert!(ok > 1_000 && failed > 1_000, "{ok} parsed, {failed} failed");
    }

    #[test]
    fn enriched_views_parse_exactly_as_prost_decodes() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..20_000 {
            let r = rng.enriched();
            let bytes = r.encode_to_vec();
            assert!(check_enriched(&bytes));
            assert_eq!(EnrichedView::parse(&bytes).unwrap().to_record(), r);
            // Concatenations merge: the same oneof member merges, another replaces.
            let other = rng.enriched().encode_to_vec();
            assert!(check_enriched(&[bytes.as_slice(), &other].concat()));
            mutations(&mut rng, &bytes, check_enriched, (&mut ok, &mut failed));
        }
        assert!(ok > 1_000 && failed > 1_000, "{ok} parsed, {failed} failed");
    }

    #[test]
    fn spliced_records_decode_as_the_prost_built_record() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let e = rng.event();
            let payload = encode_event(&mut rng, &e);
            let (region, tier) = (rng.string(), rng.string());
            let known = rng.chance(50);
            let spliced = encode_enriched_spliced(&payload, &region, &tier, known);
            let record = EnrichedRecord {
                kind: Some(enriched_record::Kind::Event(EnrichedOrderEvent {
                    event: Some(e),
                    region: region.clone(),
                    tier: tier.clone(),
                    merchant_known: known,
                })),
            };
            assert_eq!(EnrichedRecord::decode(spliced.as_slice()).unwrap(), record);
            assert_eq!(EnrichedView::parse(&spliced).unwrap().to_record(), record);
            if payload == record_event_bytes(&record) {
                // Canonical input: byte-identical to prost's encoding.
                assert_eq!(spliced, record.encode_to_vec());
            }
        }
    }

    fn record_event_bytes(r: &EnrichedRecord) -> Vec<u8> {
        match &r.kind {
            Some(enriched_record::Kind::Event(e)) => e.event.as_ref().unwrap().encode_to_vec(),
            _ => unreachable!(),
        }
    }

    /// `depth` unknown groups nested in each other.
    fn nested_groups(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            encode_key(15, WireType::StartGroup, &mut out);
        }
        for _ in 0..depth {
            encode_key(15, WireType::EndGroup, &mut out);
        }
        out
    }

    fn wrap(tag: u32, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(inner);
        out
    }

    #[test]
    fn recursion_limit_is_prosts() {
        let (mut ok, mut failed) = (false, false);
        for depth in 90..=102 {
            let groups = nested_groups(depth);
            // At the top, inside the event time, inside an enriched event and its time,
            // inside an idle tick.
            for bytes in [groups.clone(), wrap(9, &groups)] {
                let parsed = check_event(&bytes);
                (ok, failed) = (ok || parsed, failed || !parsed);
            }
            for bytes in [
                groups.clone(),
                wrap(1, &groups),
                wrap(1, &wrap(1, &groups)),
                wrap(1, &wrap(1, &wrap(9, &groups))),
                wrap(2, &groups),
                wrap(2, &wrap(1, &groups)),
            ] {
                check_enriched(&bytes);
            }
        }
        assert!(ok && failed);
    }

    #[test]
    fn varints_and_keys_decode_exactly_as_prost_does() {
        let mut rng = Rng(7);
        let mut inputs: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for _ in 0..200_000 {
            let mut b = Vec::new();
            match rng.below(3) {
                // A well-formed varint of any length, maybe truncated, then some bytes.
                0 => {
                    encode_varint(rng.next() >> rng.below(64), &mut b);
                    if rng.chance(20) {
                        b.truncate(rng.below(b.len() as u64) as usize);
                    }
                }
                // Continuation bytes: overlong and 10-byte varints, with any last byte.
                1 => b.extend((0..rng.below(12)).map(|_| 0x80 | rng.next() as u8)),
                _ => {}
            }
            b.extend((0..rng.below(4)).map(|_| rng.next() as u8));
            inputs.push(b);
        }
        for b in &inputs {
            let (mut ours, mut theirs) = (b.as_slice(), b.as_slice());
            match (decode_varint(&mut ours), prost::encoding::decode_varint(&mut theirs)) {
                (Ok(v), Ok(p)) => assert_eq!((v, ours), (p, theirs), "{b:?}"),
                (Err(_), Err(_)) => {}
                (v, p) => panic!("{b:?}: ours {v:?}, prost {p:?}"),
            }
            let (mut ours, mut theirs) = (b.as_slice(), b.as_slice());
            match (decode_key(&mut ours), prost::encoding::decode_key(&mut theirs)) {
                (Ok(v), Ok(p)) => assert_eq!((v, ours), (p, theirs), "{b:?}"),
                (Err(_), Err(_)) => {}
                (v, p) => panic!("{b:?}: ours {v:?}, prost {p:?}"),
            }
        }
    }

    #[test]
    fn malformed_inputs_fail_like_prost() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x00",                                         // tag 0
            b"\x0f",                                         // wire type 7
            b"\x0e",                                         // wire type 6
            b"\x0c",                                         // end group without start
            b"\x0a\x02\xff\xfe",                             // invalid UTF-8 in event_id
            b"\x0a\x05ab",                                   // truncated string
            b"\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", // overlong varint
            b"\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", // 10-byte varint, max value
            b"\x32\x00",                                     // type with the wrong wire type
            b"\x0d\x00\x00\x00\x00",                         // event_id with the wrong wire type
            b"\x4a\x03\x08\x01",                             // event time longer than the payload
            b"\x4a\x02\x08\xff\x01",                         // a time field that crosses the message's end
            b"\x4a\x00",                                     // an empty event time: present, zero
            b"\xfa\xff\xff\xff\x0f\x00",                     // the largest tag, empty
            b"\xfa\xff\xff\xff\x1f\x00",                     // a key beyond u32
        ];
        for bytes in cases {
            check_event(bytes);
            check_enriched(bytes);
        }
    }
}
