//! Request bodies, without I/O: the content encoding (identity, gzip, zstd), the
//! content type (one JSON event, a JSON array, JSON Lines, a protobuf
//! `OrderEventBatch`), and the split into one item per event. Each event is decoded on
//! its own, so one that does not parse is rejected alone while the others go on; only
//! a body that cannot be split at all (a JSON array that does not parse, a protobuf
//! batch that does not decode) fails the whole request.

use std::io::Read as _;

use orderflow_proto::v1::OrderEvent;
use orderflow_proto::Message as _;
use serde::Deserialize as _;

/// What a request body is, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one `OrderEvent` object, or an array of them.
    Json,
    /// `application/x-ndjson` (or `application/jsonl`, `application/json-lines`): one
    /// `OrderEvent` object a line; blank lines are skipped.
    JsonLines,
    /// `application/x-protobuf` (or `application/protobuf`,
    /// `application/vnd.google.protobuf`): an encoded `orderflow.v1.OrderEventBatch`.
    Protobuf,
}

impl Format {
    /// The content types accepted, for the OpenAPI document and error messages.
    pub const CONTENT_TYPES: &'static [(&'static str, Format)] = &[
        ("application/json", Format::Json),
        ("application/x-ndjson", Format::JsonLines),
        ("application/jsonl", Format::JsonLines),
        ("application/json-lines", Format::JsonLines),
        ("application/x-protobuf", Format::Protobuf),
        ("application/protobuf", Format::Protobuf),
        ("application/vnd.google.protobuf", Format::Protobuf),
    ];

    /// The format of a `Content-Type` value (parameters such as `charset` ignored),
    /// or `None` when it is not one of [`Self::CONTENT_TYPES`].
    pub fn from_content_type(value: &str) -> Option<Format> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        Self::CONTENT_TYPES.iter().find(|(t, _)| t.eq_ignore_ascii_case(essence)).map(|(_, f)| *f)
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::JsonLines => "jsonl",
            Format::Protobuf => "protobuf",
        }
    }
}

/// A `Content-Encoding` accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The encoding of a `Content-Encoding` value (absent: identity), or `None` when it
    /// is not `identity`, `gzip` (`x-gzip`) or `zstd`.
    pub fn from_header(value: Option<&str>) -> Option<Encoding> {
        match value.map(str::trim) {
            None | Some("") => Some(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("identity") => Some(Encoding::Identity),
            Some(v) if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") => Some(Encoding::Gzip),
            Some(v) if v.eq_ignore_ascii_case("zstd") => Some(Encoding::Zstd),
            Some(_) => None,
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Why a whole body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than allowed, before or after decompression (413).
    #[error("the request body is larger than {max} bytes{}", if *.decoded { " once decompressed" } else { "" })]
    TooLarge { max: usize, decoded: bool },
    /// More events than allowed in one request (413).
    #[error("the request holds {events} events, above the maximum of {max} per request")]
    TooManyEvents { events: usize, max: usize },
    /// The body cannot be decompressed or split into events (400).
    #[error("{0}")]
    Malformed(String),
}

impl BodyError {
    /// A short, stable code for the answer and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "body_too_large",
            BodyError::TooManyEvents { .. } => "too_many_events",
            BodyError::Malformed(_) => "malformed_body",
        }
    }
}

/// Decompresses `body` into at most `max` bytes.
pub fn decompress(body: &[u8], encoding: Encoding, max: usize) -> Result<std::borrow::Cow<'_, [u8]>, BodyError> {
    let reader: Box<dyn std::io::Read + '_> = match encoding {
        Encoding::Identity => return Ok(std::borrow::Cow::Borrowed(body)),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Encoding::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(body).map_err(|e| BodyError::Malformed(format!("zstd body: {e}")))?)
        }
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    // One byte past the bound tells "exactly max" from "more".
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Malformed(format!("{} body does not decompress: {e}", encoding.label())))?;
    if out.len() > max {
        return Err(BodyError::TooLarge { max, decoded: true });
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// One event of a body, before validation: the protobuf record it becomes on the
/// orders topic, and the event decoded from it (for its ids and key).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The orders-topic payload: the posted protobuf bytes as they are, or the JSON
    /// event encoded.
    pub payload: Vec<u8>,
    /// The event, when it decodes (an undecodable protobuf event is judged by the
    /// enricher's own check of `payload`, which names prost's reason).
    pub event: Option<OrderEvent>,
}

/// Why one event of a body could not even be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// What is wrong, with serde's line and column.
    pub message: String,
    /// The event id, when the text shows one.
    pub event_id: Option<String>,
}

/// Splits a decoded body into its events, each read on its own. Fails only when the
/// body cannot be split, holds no event (whatever its format: an empty body, `[]`,
/// blank lines or an empty batch), or holds more than `max_events` events.
pub fn split(body: &[u8], format: Format, max_events: usize) -> Result<Vec<Result<Item, Unreadable>>, BodyError> {
    let items = match format {
        Format::Json => {
            let text = std::str::from_utf8(body).map_err(|e| BodyError::Malformed(format!("the body is not UTF-8: {e}")))?;
            if text.trim_start().starts_with('[') {
                let raws: Vec<&serde_json::value::RawValue> =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(format!("the body is not a JSON array: {e}")))?;
                check_count(raws.len(), max_events)?;
                raws.into_iter().map(|r| json_item(r.get())).collect()
            } else if text.trim().is_empty() {
                return Err(no_events());
            } else {
                vec![json_item(text)]
            }
        }
        Format::JsonLines => {
            let text = std::str::from_utf8(body).map_err(|e| BodyError::Malformed(format!("the body is not UTF-8: {e}")))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            check_count(lines.len(), max_events)?;
            lines.into_iter().map(json_item).collect()
        }
        Format::Protobuf => {
            let batch = RawBatch::decode(body)
                .map_err(|e| BodyError::Malformed(format!("the body is not a protobuf orderflow.v1.OrderEventBatch: {e}")))?;
            check_count(batch.events.len(), max_events)?;
            batch.events.into_iter().map(|payload| Ok(Item { event: OrderEvent::decode(payload.as_slice()).ok(), payload })).collect()
        }
    };
    if items.is_empty() {
        return Err(no_events());
    }
    Ok(items)
}

fn no_events() -> BodyError {
    BodyError::Malformed("the body holds no events".into())
}

fn check_count(events: usize, max: usize) -> Result<(), BodyError> {
    if events > max {
        return Err(BodyError::TooManyEvents { events, max });
    }
    Ok(())
}

/// One JSON event (canonical protobuf JSON, either name style), encoded as the
/// protobuf record the orders topic holds.
fn json_item(text: &str) -> Result<Item, Unreadable> {
    let mut de = serde_json::Deserializer::from_str(text);
    match OrderEvent::deserialize(&mut de).and_then(|e| de.end().map(|()| e)) {
        Ok(event) => Ok(Item { payload: event.encode_to_vec(), event: Some(event) }),
        Err(e) => Err(Unreadable { message: format!("not an OrderEvent in JSON: {e}"), event_id: sniff_event_id(text) }),
    }
}

/// The event id of a JSON object that does not parse as an event, when it has one.
fn sniff_event_id(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = v.get("eventId").or_else(|| v.get("event_id"))?.as_str()?;
    Some(id.to_owned())
}

/// `OrderEventBatch` as it is on the wire, each event kept as its bytes (a repeated
/// message field and a repeated bytes field share their encoding), so one event that
/// does not decode is rejected alone and the others are published byte for byte.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    events: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use orderflow_proto::v1::{OrderEventBatch, OrderEventType};

    use super::*;

    fn event(id: &str) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: format!("o-{id}"),
            merchant_id: "m1".into(),
            r#type: OrderEventType::Paid as i32,
            amount_minor: 100,
            currency: "CNY".into(),
            event_time: Some(orderflow_proto::millis_timestamp(1_573_430_400_000)),
            ..Default::default()
        }
    }

    fn json(e: &OrderEvent) -> String {
        serde_json::to_string(e).unwrap()
    }

    fn ok(items: Vec<Result<Item, Unreadable>>) -> Vec<OrderEvent> {
        items.into_iter().map(|i| i.unwrap().event.unwrap()).collect()
    }

    /// No format lets an empty request through as a success: each is a 400.
    #[test]
    fn a_body_without_events_is_malformed_in_every_format() {
        let empty_batch = OrderEventBatch::default().encode_to_vec();
        for (body, format) in [
            (&b""[..], Format::Json),
            (b"  \n", Format::Json),
            (b"[]", Format::Json),
            (b"", Format::JsonLines),
            (b"\n \n", Format::JsonLines),
            (&empty_batch, Format::Protobuf),
        ] {
            assert_eq!(split(body, format, 10), Err(BodyError::Malformed("the body holds no events".into())), "{body:?} as {format:?}");
        }
    }

    #[test]
    fn content_types_and_encodings() {
        assert_eq!(Format::from_content_type("application/json; charset=utf-8"), Some(Format::Json));
        assert_eq!(Format::from_content_type("Application/X-NDJSON"), Some(Format::JsonLines));
        assert_eq!(Format::from_content_type("application/x-protobuf; messageType=orderflow.v1.OrderEventBatch"), Some(Format::Protobuf));
        assert_eq!(Format::from_content_type("text/plain"), None);
        assert_eq!(Encoding::from_header(None), Some(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("GZIP")), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(Some("zstd")), Some(Encoding::Zstd));
        assert_eq!(Encoding::from_header(Some("br")), None);
    }

    #[test]
    fn one_object_an_array_and_json_lines_give_the_same_events() {
        let (a, b) = (event("a"), event("b"));
        assert_eq!(ok(split(json(&a).as_bytes(), Format::Json, 10).unwrap()), std::slice::from_ref(&a));
        let array = format!("  [{}, {}]", json(&a), json(&b));
        assert_eq!(ok(split(array.as_bytes(), Format::Json, 10).unwrap()), [a.clone(), b.clone()]);
        let lines = format!("{}\n\n{}\r\n", json(&a), json(&b));
        assert_eq!(ok(split(lines.as_bytes(), Format::JsonLines, 10).unwrap()), [a.clone(), b.clone()]);
        // snake_case names and numbers for int64 are read too.
        let snake = r#"{"event_id":"a","order_id":"o-a","merchant_id":"m1","type":"ORDER_EVENT_TYPE_PAID","amount_minor":100,"currency":"CNY","event_time":"2019-11-11T08:00:00+08:00"}"#;
        assert_eq!(ok(split(snake.as_bytes(), Format::Json, 10).unwrap()), std::slice::from_ref(&a));
        // The payload is the protobuf encoding of the event.
        let items = split(json(&a).as_bytes(), Format::Json, 10).unwrap();
        assert_eq!(items[0].as_ref().unwrap().payload, a.encode_to_vec());
    }

    #[test]
    fn a_bad_event_is_rejected_alone() {
        let body = format!("[{}, {{\"eventId\":\"x\",\"type\":\"NOT_A_TYPE\"}}, 7, {}]", json(&event("a")), json(&event("b")));
        let items = split(body.as_bytes(), Format::Json, 10).unwrap();
        assert_eq!(items.len(), 4);
        assert!(items[0].is_ok() && items[3].is_ok());
        let bad = items[1].as_ref().unwrap_err();
        assert_eq!(bad.event_id.as_deref(), Some("x"));
        assert!(bad.message.starts_with("not an OrderEvent in JSON"), "{}", bad.message);
        assert_eq!(items[2].as_ref().unwrap_err().event_id, None);
        let lines = format!("{}\nnot json\n{}", json(&event("a")), json(&event("b")));
        let items = split(lines.as_bytes(), Format::JsonLines, 10).unwrap();
        assert_eq!(items.iter().map(Result::is_ok).collect::<Vec<_>>(), [true, false, true]);
    }

    #[test]
    fn bodies_that_cannot_be_split_fail_whole() {
        for (body, format) in [
            (&b"[{\"eventId\":"[..], Format::Json),
            (b"", Format::Json),
            (b"\xff\xfe", Format::Json),
            (b"\xff\xff\xff\xff", Format::Protobuf),
        ] {
            let e = split(body, format, 10).unwrap_err();
            assert_eq!(e.code(), "malformed_body", "{body:?}: {e}");
        }
    }

    #[test]
    fn events_per_request_are_bounded() {
        let three = (0..3).map(|i| json(&event(&i.to_string()))).collect::<Vec<_>>();
        let array = format!("[{}]", three.join(","));
        assert_eq!(split(array.as_bytes(), Format::Json, 3).unwrap().len(), 3);
        assert_eq!(split(array.as_bytes(), Format::Json, 2).unwrap_err(), BodyError::TooManyEvents { events: 3, max: 2 });
        assert_eq!(split(three.join("\n").as_bytes(), Format::JsonLines, 2).unwrap_err().code(), "too_many_events");
        let batch = OrderEventBatch { events: vec![event("a"), event("b"), event("c")] }.encode_to_vec();
        assert_eq!(split(&batch, Format::Protobuf, 2).unwrap_err().code(), "too_many_events");
    }

    #[test]
    fn protobuf_batches_keep_each_event_byte_for_byte() {
        let batch = OrderEventBatch { events: vec![event("a"), event("b")] };
        let mut bytes = batch.encode_to_vec();
        // A third event that is not a protobuf OrderEvent: field 1, 3 bytes of garbage.
        bytes.extend([0x0a, 0x03, 0xff, 0xff, 0xff]);
        let items = split(&bytes, Format::Protobuf, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().payload, event("a").encode_to_vec());
        assert_eq!(items[1].as_ref().unwrap().event, Some(event("b")));
        let third = items[2].as_ref().unwrap();
        assert_eq!((third.payload.as_slice(), third.event.as_ref()), (&[0xff, 0xff, 0xff][..], None));
    }

    #[test]
    fn gzip_and_zstd_bodies_are_decompressed_within_the_bound() {
        let text = format!("[{}]", json(&event("a")));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
        for (body, enc) in [(&gz, Encoding::Gzip), (&zst, Encoding::Zstd)] {
            assert_eq!(decompress(body, enc, text.len()).unwrap().as_ref(), text.as_bytes());
            assert_eq!(decompress(body, enc, text.len() - 1).unwrap_err(), BodyError::TooLarge { max: text.len() - 1, decoded: true });
        }
        // A bomb: 64 MiB of zeros in a few KiB stops at the bound.
        let bomb = zstd::encode_all(std::io::repeat(0).take(64 << 20), 3).unwrap();
        assert!(bomb.len() < 64 << 10);
        assert_eq!(decompress(&bomb, Encoding::Zstd, 1 << 20).unwrap_err().code(), "body_too_large");
        assert_eq!(decompress(b"not gzip", Encoding::Gzip, 100).unwrap_err().code(), "malformed_body");
        assert_eq!(decompress(b"as is", Encoding::Identity, 1).unwrap().as_ref(), b"as is");
    }
}
