//! Kafka client configuration shared by every subcommand.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use crate::{Error, Result};

/// Where the brokers are and any extra librdkafka settings. The command line's
/// `--brokers` and `--kafka-option` flags (env `ORDERFLOW_BROKERS`,
/// `ORDERFLOW_KAFKA_OPTIONS`) fill it in; a library user builds it with [`KafkaConfig::new`].
/// `Debug` redacts the values of options that hold secrets (see [`redact_option`]).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    pub brokers: String,
    /// Extra librdkafka settings, `KEY=VALUE`, applied last (they override orderflow's
    /// defaults, e.g. `security.protocol=SSL`). The value is everything after the first
    /// `=`, unchanged (commas included).
    pub options: Vec<String>,
    /// How long a service waits for the brokers at start before it gives up and says so.
    pub connect_timeout: Duration,
}

/// Bootstrap servers when none are given.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// How long a service waits for the brokers at start, when not told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka settings whose values are secrets, besides any whose name contains
/// `password` or `secret`: redacted wherever options are shown.
const SECRET_OPTIONS: &[&str] = &["ssl.key.pem", "sasl.oauthbearer.config", "sasl.jaas.config", "ssl_key"];

/// Whether the value of librdkafka setting `key` is a secret.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || SECRET_OPTIONS.contains(&key.as_str())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BROKERS)
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self.options.iter().map(|o| redact_option(o)).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// An option as it may be shown: `KEY=VALUE`, with the value replaced by `<redacted>`
/// when it is a secret; an option without `=` shows only its leading name characters.
pub fn redact_option(opt: &str) -> String {
    match opt.split_once('=') {
        Some((k, _)) if is_secret_option(k) => format!("{k}=<redacted>"),
        Some(_) => opt.to_owned(),
        None => {
            let name_len = opt.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(opt.len());
            if name_len == opt.len() {
                opt.to_owned()
            } else {
                format!("{}<redacted>", &opt[..name_len])
            }
        }
    }
}

impl KafkaConfig {
    /// Settings for a given bootstrap address and no extra options.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), options: Vec::new(), connect_timeout: DEFAULT_CONNECT_TIMEOUT }
    }

    /// A base client configuration; `defaults` are applied before the user's options
    /// (blank ones skipped).
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for opt in self.options.iter().filter(|o| !o.trim().is_empty()) {
            let (k, v) = opt.split_once('=').ok_or_else(|| Error::BadOption(redact_option(opt)))?;
            c.set(k.trim(), v);
        }
        Ok(c)
    }

    /// Fails with [`Error::Unreachable`], naming the brokers and how to change them,
    /// when no broker answers a metadata request within `connect_timeout`. Services call
    /// it once at start, after checking their local inputs.
    pub fn check_reachable(&self) -> Result<()> {
        let client: BaseConsumer = self.config(&[])?.create()?;
        client.fetch_metadata(None, self.connect_timeout).map(drop).map_err(|error| Error::Unreachable {
            brokers: self.brokers.clone(),
            waited: self.connect_timeout,
            error,
        })
    }

    /// An idempotent producer: retries never duplicate or reorder a partition's records.
    pub fn producer(&self) -> Result<FutureProducer> {
        Ok(self
            .config(&[
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "500000"),
                ("message.max.bytes", "67108864"),
            ])?
            .create()?)
    }

    /// A consumer in `group` that stores offsets only when told to (at-least-once).
    pub fn group_consumer<C: rdkafka::consumer::ConsumerContext + 'static, T: rdkafka::config::FromClientConfigAndContext<C>>(
        &self,
        group: &str,
        context: C,
    ) -> Result<T> {
        Ok(self
            .config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("fetch.max.bytes", "67108864"),
                ("max.partition.fetch.bytes", "67108864"),
                ("receive.message.max.bytes", "134217728"),
            ])?
            .create_with_context(context)?)
    }

    /// A consumer outside any group, for reading whole topics by assignment.
    pub fn reader(&self) -> Result<BaseConsumer> {
        Ok(self
            .config(&[
                ("group.id", "orderflow-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.max.bytes", "67108864"),
                ("max.partition.fetch.bytes", "67108864"),
                ("receive.message.max.bytes", "134217728"),
            ])?
            .create()?)
    }
}

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

/// Records the ids of partitions a rebalance takes away, for loops that keep
/// per-partition state; rebalancing itself is librdkafka's default (cooperative when
/// the assignor is).
#[derive(Debug, Default, Clone)]
pub struct RevocationLog {
    revoked: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
}

impl RevocationLog {
    /// Partitions revoked since the last call.
    pub fn take(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("revocation log poisoned"))
    }
}

impl rdkafka::client::ClientContext for RevocationLog {}

impl rdkafka::consumer::ConsumerContext for RevocationLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("revocation log poisoned");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(partitions = ?r, "Partitions revoked.");
        }
    }
}

/// Waits for the first record (or cancellation), then takes whatever else is already
/// fetched, up to `max` records. Receive errors are logged and skipped: the consumer
/// recovers from broker errors by itself.
pub async fn recv_batch<'a, C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &'a rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    cancel: &tokio_util::sync::CancellationToken,
    idle: Duration,
) -> Vec<rdkafka::message::BorrowedMessage<'a>> {
    use futures::FutureExt as _;
    let mut batch = Vec::new();
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return batch,
        _ = tokio::time::sleep(idle) => return batch,
        m = consumer.recv() => m,
    };
    match first {
        Ok(m) => batch.push(m),
        Err(e) => {
            tracing::warn!(error = %e, "Receive failed.");
            return batch;
        }
    }
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "Receive failed."),
            None => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_their_values_whole_and_override_the_rest() {
        let mut kafka = KafkaConfig::new("127.0.0.1:9092");
        kafka.options = vec!["debug=broker,topic".into(), "sasl.password=a,b=c ".into(), String::new(), " client.id =x".into()];
        let c = kafka.config(&[("client.id", "default")]).unwrap();
        assert_eq!(c.get("debug"), Some("broker,topic"));
        assert_eq!(c.get("sasl.password"), Some("a,b=c "), "the value is everything after the first `=`, unchanged");
        assert_eq!(c.get("client.id"), Some("x"));
    }

    #[test]
    fn secret_options_stay_out_of_debug_output_and_errors() {
        let mut kafka = KafkaConfig::new("127.0.0.1:9092");
        kafka.options = vec!["sasl.password=hunter4".into(), "ssl.keystore.password=hunter5".into(), "debug=broker,topic".into()];
        let shown = format!("{kafka:?} {kafka:#?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("debug=broker,topic") && shown.contains("sasl.password=<redacted>"), "{shown}");

        kafka.options = vec!["sasl.password:hunter6".into()];
        let e = kafka.config(&[]).unwrap_err();
        assert!(matches!(e, Error::BadOption(_)));
        assert_eq!(e.to_string(), "librdkafka option `sasl.password<redacted>` must be KEY=VALUE");
        kafka.options = vec!["debug".into()];
        assert_eq!(kafka.config(&[]).unwrap_err().to_string(), "librdkafka option `debug` must be KEY=VALUE");
    }
}
