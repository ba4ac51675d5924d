//! Reading whole topics outside any consumer group ([`TopicReader`]), record headers, and
//! which read errors are fatal.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{partition_count, KafkaConfig};
use crate::Result;

/// Reads every partition of a topic from the beginning, outside any consumer group:
/// for reference tables (merchants), checkpoints and inspection commands.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Assigns every partition of `topic` from its beginning.
    pub fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let consumer = kafka.reader()?;
        let partitions = partition_count(&consumer, topic)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, topic: topic.to_owned(), partitions })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Calls `f` on every record up to the end each partition had when called.
    /// Transient errors (a broker away for a moment) are logged and waited out; a
    /// topic that cannot be read any more fails the read (see [`is_fatal_read`]).
    pub fn read_to_end(&self, mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) -> Result<u64> {
        use rdkafka::Message as _;
        let mut remaining = std::collections::HashMap::new();
        for p in 0..self.partitions {
            let (low, high) = self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high > low {
                remaining.insert(p, high);
            }
        }
        let mut n = 0;
        while !remaining.is_empty() {
            if let Some(m) = self.poll(Duration::from_millis(200))? {
                n += 1;
                f(&m);
                if remaining.get(&m.partition()).is_some_and(|high| m.offset() + 1 >= *high) {
                    remaining.remove(&m.partition());
                }
            }
        }
        Ok(n)
    }

    /// The next record, if one arrives within `timeout` (for following a topic).
    /// Transient errors are logged and read as "nothing yet"; only a topic that cannot
    /// be read any more is an error (see [`is_fatal_read`]).
    pub fn poll(&self, timeout: Duration) -> Result<Option<rdkafka::message::BorrowedMessage<'_>>> {
        match self.consumer.poll(timeout) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => Ok(None),
            Some(Err(e)) if is_fatal_read(&e) => Err(e.into()),
            Some(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "Transient read error; retrying.");
                Ok(None)
            }
            Some(Ok(m)) => Ok(Some(m)),
        }
    }
}

/// A header value of a record, as text.
pub fn header<'a>(m: &'a impl rdkafka::Message, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers as _;
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Whether a consumer error means the topic cannot be read at all any more (it was
/// deleted, or access to it was revoked), as opposed to a broker being away for a
/// while, which librdkafka recovers from by itself. Followers stop on the former.
pub fn is_fatal_read(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::TopicAuthorizationFailed | C::GroupAuthorizationFailed | C::Fatal)
    )
}
