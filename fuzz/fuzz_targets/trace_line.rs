//! Trace files: each non-blank line a canonical-JSON `OrderEvent`, read as
//! `trace::TraceReader::next_line` (and the load test) read them: the line trimmed,
//! then `serde_json::from_str::<OrderEvent>` (the generated canonical-JSON mapping and
//! the RFC 3339 `Timestamp`). An event read is then published as replay does (its key,
//! its protobuf encoding, which must decode back to it), validated, and written back
//! to JSON where that succeeds, which must read back as the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_core::validate::validate;
use orderflow_proto::v1::OrderEvent;
use orderflow_proto::Message;

fuzz_target!(|data: &[u8]| {
    // A trace is read as UTF-8 text (`read_line`): other bytes are an I/O error.
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.split_inclusive('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let event = match serde_json::from_str::<OrderEvent>(line) {
            Ok(event) => event,
            Err(e) => {
                let _ = format!("not an OrderEvent in JSON: {e}");
                continue;
            }
        };
        let _key = if event.order_id.is_empty() { &event.event_id } else { &event.order_id };
        let bytes = event.encode_to_vec();
        assert_eq!(OrderEvent::decode(bytes.as_slice()).expect("an encoded event decodes"), event);
        let _ = validate(&event);
        if let Ok(json) = serde_json::to_string(&event) {
            let back: OrderEvent = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
            assert_eq!(back, event, "{json}");
        }
    }
});
