//! The dead-letter record: the original bytes, keyed by where they came from, with the
//! reason in headers. Keys are the source coordinates, so a record dead-lettered twice
//! (a stage re-processing after a crash) is recognisably the same record.

use orderflow_core::validate::InvalidReason;
use rdkafka::message::{Header, OwnedHeaders};

/// Header with the human-readable reason.
pub const REASON: &str = "orderflow-reason";
/// Header with the reason's stable code (e.g. `missing_event_id`).
pub const REASON_CODE: &str = "orderflow-reason-code";
/// Header naming the stage that rejected the record (`enricher`, `aggregator`).
pub const STAGE: &str = "orderflow-stage";
/// Headers with the source topic, partition and offset.
pub const SOURCE_TOPIC: &str = "orderflow-source-topic";
pub const SOURCE_PARTITION: &str = "orderflow-source-partition";
pub const SOURCE_OFFSET: &str = "orderflow-source-offset";

/// Key of a dead-letter record: `topic/partition/offset` of its source.
pub fn key(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Headers of a dead-letter record.
pub fn headers(stage: &str, reason: &InvalidReason, topic: &str, partition: i32, offset: i64) -> OwnedHeaders {
    let (partition, offset, reason_text) = (partition.to_string(), offset.to_string(), reason.to_string());
    OwnedHeaders::new_with_capacity(6)
        .insert(Header { key: REASON, value: Some(reason_text.as_bytes()) })
        .insert(Header { key: REASON_CODE, value: Some(reason.code().as_bytes()) })
        .insert(Header { key: STAGE, value: Some(stage.as_bytes()) })
        .insert(Header { key: SOURCE_TOPIC, value: Some(topic.as_bytes()) })
        .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_bytes()) })
        .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_bytes()) })
}
