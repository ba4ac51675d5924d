//! Keys and headers of every record orderflow writes, in one place (the topics and
//! their values are listed in [`crate::topics`]).
//!
//! Windows are named by their start in RFC 3339 (`2019-11-11T00:00:00Z`) wherever a key
//! or header carries one. Keys that several writers may produce for the same thing
//! (a partial re-emitted after a restart, a total re-published by a new merger) are
//! equal, so compaction and readers treat the repeat as the same record.

use orderflow_core::proto::millis_timestamp;
use orderflow_core::validate::InvalidReason;
use rdkafka::message::{Header, OwnedHeaders};

/// The name of a window in keys and headers: its start, RFC 3339.
pub fn window_name(start_ms: i64) -> String {
    millis_timestamp(start_ms).to_string()
}

/// A key component with `%` and `/` escaped (`%25`, `%2F`), so that components joined
/// by `/` stay apart: region `a/b` with tier `c` and region `a` with tier `b/c` make two
/// keys, not one (which compaction would merge into one total).
fn component(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '/']) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(s.replace('%', "%25").replace('/', "%2F"))
}

/// Partial-totals topic: one key's partial total of a window on one input partition.
pub fn partial_key(window_start_ms: i64, region: &str, tier: &str, currency: &str, partition: i32) -> String {
    let (region, tier, currency) = (component(region), component(tier), component(currency));
    format!("{}/{region}/{tier}/{currency}/{partition}", window_name(window_start_ms))
}

/// Partial-totals topic: an input partition's progress (closed-through frontier).
pub fn progress_key(partition: i32) -> String {
    format!("progress/{partition}")
}

/// Open-windows topic: a partition's snapshot of its open windows.
pub fn open_windows_key(partition: i32) -> String {
    format!("open/{partition}")
}

/// Totals topic (compacted): one merged total.
pub fn total_key(window_start_ms: i64, region: &str, tier: &str, currency: &str) -> String {
    let (region, tier, currency) = (component(region), component(tier), component(currency));
    format!("{}/{region}/{tier}/{currency}", window_name(window_start_ms))
}

/// Checkpoint topic (compacted): the input partition the checkpoint belongs to.
pub fn checkpoint_key(partition: i32) -> String {
    partition.to_string()
}

/// Merger checkpoint topic (compacted): one key, the newest merge state.
pub const MERGER_CHECKPOINT_KEY: &str = "merger";

/// Merchants topic (compacted): `merchant_id@effective_from`, one key per version.
pub use orderflow_core::merchant::{merchant_key, parse_merchant_key};

/// The dead-letter record: the original bytes, keyed by where they came from, with the
/// reason in headers. Keys are the source coordinates, so a record dead-lettered twice
/// (a stage re-processing after a crash) is recognisably the same record.
pub mod dead_letter {
    use super::*;

    /// Header with the human-readable reason.
    pub const REASON: &str = "orderflow-reason";
    /// Header with the reason's stable code (e.g. `missing_event_id`).
    pub const REASON_CODE: &str = "orderflow-reason-code";
    /// Header naming the stage that rejected the record (`enricher`, `aggregator`).
    pub const STAGE: &str = "orderflow-stage";
    /// Header with the source record's size in bytes (the payload kept may be cut).
    pub const SOURCE_BYTES: &str = "orderflow-source-bytes";
    /// Headers with the source topic, partition and offset.
    pub const SOURCE_TOPIC: &str = "orderflow-source-topic";
    pub const SOURCE_PARTITION: &str = "orderflow-source-partition";
    pub const SOURCE_OFFSET: &str = "orderflow-source-offset";

    /// Where a record came from.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Source<'a> {
        pub topic: &'a str,
        pub partition: i32,
        pub offset: i64,
    }

    /// Longest reason text written in a header, in bytes (a reason can quote the
    /// record's own fields, which a sender controls).
    pub const MAX_REASON_BYTES: usize = 1024;

    /// Most bytes of the source record a dead letter keeps: enough to see what was
    /// sent, never so much that the dead letter itself is refused.
    pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;

    /// What a dead letter keeps of its source record's bytes: all of them, or the
    /// first [`MAX_PAYLOAD_BYTES`] ([`SOURCE_BYTES`] says how many there were).
    pub fn payload(source: &[u8]) -> &[u8] {
        &source[..source.len().min(MAX_PAYLOAD_BYTES)]
    }

    /// Key of a dead-letter record: `topic/partition/offset` of its source.
    pub fn key(source: Source<'_>) -> String {
        format!("{}/{}/{}", source.topic, source.partition, source.offset)
    }

    /// Headers of a dead-letter record.
    pub fn headers(stage: &str, reason: &InvalidReason, source: Source<'_>, source_bytes: usize) -> OwnedHeaders {
        let (partition, offset, size) = (source.partition.to_string(), source.offset.to_string(), source_bytes.to_string());
        let mut reason_text = reason.to_string();
        truncate(&mut reason_text, MAX_REASON_BYTES);
        OwnedHeaders::new_with_capacity(7)
            .insert(Header { key: REASON, value: Some(reason_text.as_bytes()) })
            .insert(Header { key: REASON_CODE, value: Some(reason.code().as_bytes()) })
            .insert(Header { key: STAGE, value: Some(stage.as_bytes()) })
            .insert(Header { key: SOURCE_TOPIC, value: Some(source.topic.as_bytes()) })
            .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_bytes()) })
            .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_bytes()) })
            .insert(Header { key: SOURCE_BYTES, value: Some(size.as_bytes()) })
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary, marking the cut with `…`.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// The late record: an event whose window had closed when it arrived, keyed by its
/// event id, with the window it missed and where it came from in headers.
pub mod late {
    use super::*;

    /// Header: start of the window it missed (RFC 3339).
    pub const WINDOW_START: &str = "orderflow-window-start";
    /// Header: the partition's closed-through frontier when it arrived (RFC 3339).
    pub const CLOSED_THROUGH: &str = "orderflow-closed-through";

    /// Headers of a late record.
    pub fn headers(window_start_ms: i64, closed_through_ms: i64, partition: i32, offset: i64) -> OwnedHeaders {
        let (start, through) = (window_name(window_start_ms), window_name(closed_through_ms));
        let (p, o) = (partition.to_string(), offset.to_string());
        OwnedHeaders::new_with_capacity(4)
            .insert(Header { key: WINDOW_START, value: Some(start.as_bytes()) })
            .insert(Header { key: CLOSED_THROUGH, value: Some(through.as_bytes()) })
            .insert(Header { key: dead_letter::SOURCE_PARTITION, value: Some(p.as_bytes()) })
            .insert(Header { key: dead_letter::SOURCE_OFFSET, value: Some(o.as_bytes()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_named_alike_in_partial_and_total_keys() {
        let start = 1_573_430_400_000; // 2019-11-11T00:00:00Z
        assert_eq!(partial_key(start, "cn-east", "taobao", "CNY", 3), "2019-11-11T00:00:00Z/cn-east/taobao/CNY/3");
        assert_eq!(total_key(start, "cn-east", "taobao", "CNY"), "2019-11-11T00:00:00Z/cn-east/taobao/CNY");
        assert_eq!(progress_key(3), "progress/3");
        assert_eq!(checkpoint_key(3), "3");
        let source = dead_letter::Source { topic: "orderflow.orders", partition: 2, offset: 41 };
        assert_eq!(dead_letter::key(source), "orderflow.orders/2/41");
    }

    #[test]
    fn a_slash_in_a_region_or_tier_cannot_make_two_totals_share_a_key() {
        let start = 1_573_430_400_000;
        assert_ne!(total_key(start, "a/b", "c", "CNY"), total_key(start, "a", "b/c", "CNY"));
        assert_ne!(total_key(start, "a%2Fb", "c", "CNY"), total_key(start, "a/b", "c", "CNY"));
        assert_eq!(total_key(start, "a/b%", "c", "CNY"), "2019-11-11T00:00:00Z/a%2Fb%25/c/CNY");
        assert_ne!(partial_key(start, "a/b", "c", "CNY", 1), partial_key(start, "a", "b/c", "CNY", 1));
    }

    #[test]
    fn reasons_are_bounded_at_a_character_boundary() {
        let mut s = "é".repeat(2000);
        truncate(&mut s, dead_letter::MAX_REASON_BYTES);
        assert!(s.len() <= dead_letter::MAX_REASON_BYTES && s.ends_with('…'), "{}", s.len());
        let mut short = "fine".to_owned();
        truncate(&mut short, 10);
        assert_eq!(short, "fine");
    }
}
