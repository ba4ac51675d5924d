//! The two forms an `OrderEvent` takes on the orders topic, told apart per record:
//!
//! - **plain protobuf**: the encoded `OrderEvent`, as orderflow's `Publisher`, `replay`
//!   and HTTP ingest write it;
//! - **Confluent Schema Registry wire format**, as Confluent's protobuf serializers
//!   (Java, Go, Python, .NET clients) write it: a magic byte `0`, the schema id (4
//!   bytes, big-endian), the *message indexes* (the path of the message type within its
//!   `.proto` file: a count, then that many indexes, each a zig-zag varint; the common
//!   path `[0]`, the file's first message, is written as the single byte `0`), then
//!   the protobuf bytes.
//!
//! A plain protobuf message never starts with the byte `0` (it would be a field number
//! 0, which protobuf forbids), so a first byte of `0` means the registry's format.
//! Schema ids are not looked up (no registry is needed): whatever the id and indexes
//! say, the message must decode and validate as an `OrderEvent`, like any other.

use crate::reason::InvalidReason;

/// Which form a record was in (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain protobuf.
    Protobuf,
    /// Confluent Schema Registry wire format.
    SchemaRegistry,
}

impl Format {
    /// Every label, for describing metrics up front.
    pub const LABELS: &'static [&'static str] = &["protobuf", "schema_registry"];

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Format::Protobuf => "protobuf",
            Format::SchemaRegistry => "schema_registry",
        }
    }
}

/// A record's protobuf message, and what framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unframed<'a> {
    pub format: Format,
    /// The registry's schema id (not looked up), for the registry's format.
    pub schema_id: Option<u32>,
    /// The protobuf bytes of the message.
    pub message: &'a [u8],
}

/// At most this many message indexes (nesting levels) are read.
const MAX_INDEXES: u64 = 64;

/// Tells the record's form and returns its protobuf message. A record in the
/// registry's format whose header is cut short or malformed is `undecodable`.
pub fn unframe(payload: &[u8]) -> Result<Unframed<'_>, InvalidReason> {
    if payload.first() != Some(&0) {
        return Ok(Unframed { format: Format::Protobuf, schema_id: None, message: payload });
    }
    let bad = |what: &str| InvalidReason::Undecodable(format!("Confluent Schema Registry frame: {what}"));
    let id: [u8; 4] = payload.get(1..5).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("cut short before the 4-byte schema id"))?;
    let mut rest = &payload[5..];
    let count = zigzag(varint(&mut rest).ok_or_else(|| bad("the message-index count is cut short"))?);
    // A count of 0 is the short form of the index path [0].
    if !(0..=MAX_INDEXES as i64).contains(&count) {
        return Err(bad(&format!("{count} message indexes")));
    }
    for _ in 0..count {
        let index = zigzag(varint(&mut rest).ok_or_else(|| bad("a message index is cut short"))?);
        if index < 0 {
            return Err(bad(&format!("message index {index} is negative")));
        }
    }
    Ok(Unframed { format: Format::SchemaRegistry, schema_id: Some(u32::from_be_bytes(id)), message: rest })
}

/// Reads an unsigned LEB128 varint (at most 10 bytes) off the front of `buf`.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use orderflow_proto::v1::{OrderEvent, OrderEventType};
    use orderflow_proto::Message as _;

    use super::*;
    use crate::validate::decode_and_validate;

    fn event() -> Vec<u8> {
        OrderEvent {
            event_id: "e".into(),
            order_id: "o".into(),
            merchant_id: "m".into(),
            r#type: OrderEventType::Paid as i32,
            amount_minor: 5,
            currency: "CNY".into(),
            event_time: Some(orderflow_proto::millis_timestamp(1)),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A frame as Confluent's serializers write it, built by hand.
    fn framed(schema_id: u32, indexes: &[u8], message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend(schema_id.to_be_bytes());
        out.extend(indexes);
        out.extend(message);
        out
    }

    #[test]
    fn plain_protobuf_passes_as_it_is() {
        let e = event();
        assert_eq!(e[0], 0x0a, "field 1, length-delimited");
        assert_eq!(unframe(&e), Ok(Unframed { format: Format::Protobuf, schema_id: None, message: &e }));
        assert_eq!(unframe(b"").unwrap().format, Format::Protobuf);
    }

    #[test]
    fn registry_frames_are_unwrapped_whatever_their_index_path() {
        let e = event();
        // [0] in its short form (one 0 byte), and written in full (count 1 = zigzag 2, index 0).
        for indexes in [&[0x00][..], &[0x02, 0x00]] {
            let f = framed(42, indexes, &e);
            let u = unframe(&f).unwrap();
            assert_eq!((u.format, u.schema_id, u.message), (Format::SchemaRegistry, Some(42), &e[..]), "{indexes:?}");
            assert_eq!(decode_and_validate(u.message).unwrap().event_id, "e");
        }
        // [1, 2]: the second message's third nested message; a schema id above 2^24.
        let f = framed(0x0102_0304, &[0x04, 0x02, 0x04], &e);
        assert_eq!(unframe(&f).unwrap().schema_id, Some(0x0102_0304));
        assert_eq!(unframe(&f).unwrap().message, &e[..]);
        // A large index needs a multi-byte varint: 100 is zigzag 200 = 0xc8 0x01.
        let f = framed(7, &[0x02, 0xc8, 0x01], &e);
        assert_eq!(unframe(&f).unwrap().message, &e[..]);
    }

    #[test]
    fn broken_frames_are_undecodable() {
        let e = event();
        let cases: Vec<Vec<u8>> = vec![
            vec![0],                            // magic byte only
            vec![0, 0, 0, 1],                   // schema id cut short
            vec![0, 0, 0, 0, 1],                // no message indexes
            framed(1, &[0x02], &[]),            // count 1, index missing
            framed(1, &[0x01], &e),             // count -1
            framed(1, &[0x02, 0x01], &e),       // index -1
            framed(1, &[0xff, 0xff, 0x03], &e), // a huge count
            framed(1, &[0x80; 11], &e),         // a varint that never ends
        ];
        for f in cases {
            let err = unframe(&f).unwrap_err();
            assert_eq!(err.code(), "undecodable", "{f:?}");
            assert!(err.to_string().contains("Confluent Schema Registry frame"), "{err}");
        }
        // A well-formed frame around bytes that are not an OrderEvent: the message's own check decides.
        let f = framed(1, &[0], b"\xff\xff");
        assert_eq!(decode_and_validate(unframe(&f).unwrap().message).unwrap_err().code(), "undecodable");
    }
}
