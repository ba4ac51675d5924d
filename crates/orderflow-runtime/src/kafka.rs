//! Kafka client configuration shared by every subcommand.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use crate::{Error, Result};

/// Where the brokers are and any extra librdkafka settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = "127.0.0.1:9092", global = true)]
    pub brokers: String,
    /// Extra librdkafka setting, `KEY=VALUE` (repeatable; applied last, so it can
    /// override orderflow's defaults, e.g. `security.protocol=SSL`).
    #[arg(long = "kafka-option", env = "ORDERFLOW_KAFKA_OPTIONS", value_delimiter = ',', global = true)]
    pub options: Vec<String>,
}

impl KafkaArgs {
    /// Arguments for a given bootstrap address and no extra options.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), options: Vec::new() }
    }

    /// A base client configuration; `defaults` are applied before the user's options.
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for opt in &self.options {
            let (k, v) = opt.split_once('=').ok_or_else(|| Error::BadOption(opt.clone()))?;
            c.set(k.trim(), v.trim());
        }
        Ok(c)
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
                ("enable.partition.eof", "true"),
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
