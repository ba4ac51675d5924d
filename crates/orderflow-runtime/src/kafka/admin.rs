//! Metadata and consumer-group queries: a topic's partition count, where a group stands.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{Error, Result};

/// Partition count of `topic`, or [`Error::MissingTopic`].
pub fn partition_count<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(consumer: &C, topic: &str) -> Result<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        _ => Err(Error::MissingTopic(topic.to_owned())),
    }
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    pub partition: i32,
    /// The partition's low and high watermarks.
    pub low: i64,
    pub high: i64,
    /// The group's committed offset (the next record it will read), if any.
    pub committed: Option<i64>,
}

/// Watermarks of every partition of `topic` and the offsets committed by `group`'s
/// `group.id`; [`Error::MissingTopic`] when the topic does not exist.
pub fn group_positions(group: &BaseConsumer, topic: &str) -> Result<Vec<GroupPosition>> {
    let partitions = partition_count(group, topic)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = group.committed_offsets(tpl, Duration::from_secs(5))?;
    (0..partitions)
        .map(|p| {
            let (low, high) = group.fetch_watermarks(topic, p, Duration::from_secs(5))?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            };
            Ok(GroupPosition { partition: p, low, high, committed })
        })
        .collect()
}
