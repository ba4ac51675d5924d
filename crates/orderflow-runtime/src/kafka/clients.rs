//! Producers and consumers built from a [`KafkaConfig`]: the producer settings, the
//! [`Producer`] every stage writes with and its metrics context, group consumers and
//! readers.

use rdkafka::client::ClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::sync::{Arc, Mutex};

use super::KafkaConfig;
use crate::Result;

/// The settings of every orderflow producer, batching over `linger_ms`: idempotent
/// (acks=all, no reordering on retries), a deep local queue, and records up to 64 MiB
/// (checkpoints).
pub const fn producer_settings(linger_ms: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("enable.idempotence", "true"),
        ("linger.ms", linger_ms),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "500000"),
        ("message.max.bytes", "67108864"),
    ]
}

/// [`producer_settings`] over 5 ms ([`KafkaConfig::producer_for`]): ingest and the
/// producer CLI, which answer storefronts per record.
pub const PRODUCER_SETTINGS: [(&str, &str); 5] = producer_settings("5");

/// [`producer_settings`] over 50 ms for the pipeline's stages (enricher, aggregator,
/// merger; [`KafkaConfig::stage_producer`]). Nothing waits on a stage's single record
/// (a window's total waits for the window to close), but every reader pays per batch:
/// at 8,500 events/s per partition, 5 ms made batches of ~40 records, and a restore
/// re-reading a dedup horizon of them from Nisshi took 1.43 s per partition, 0.93 s
/// (median of four runs) with 50 ms (docs/measurements/2026-12-02-restore-speed.md). The load test's broker
/// baseline produces with these, so that it measures the same client path.
pub const STAGE_PRODUCER_SETTINGS: [(&str, &str); 5] = producer_settings("50");
impl KafkaConfig {
    /// An idempotent producer: retries never duplicate or reorder a partition's records.
    /// Its metrics carry `service="client"`; services use [`Self::producer_for`].
    pub fn producer(&self) -> Result<Producer> {
        self.producer_for("client")
    }

    /// [`Self::producer`] for `service` (the `service` label of its queue depth, the
    /// records it writes and its errors).
    pub fn producer_for(&self, service: &'static str) -> Result<Producer> {
        self.producer_with(service, &PRODUCER_SETTINGS)
    }

    /// [`Self::producer_for`] a stage of the pipeline: [`STAGE_PRODUCER_SETTINGS`].
    pub fn stage_producer(&self, service: &'static str) -> Result<Producer> {
        self.producer_with(service, &STAGE_PRODUCER_SETTINGS)
    }

    fn producer_with(&self, service: &'static str, base: &[(&str, &str)]) -> Result<Producer> {
        let mut settings = base.to_vec();
        // The queue depth, through the context's statistics callback.
        settings.push(("statistics.interval.ms", "1000"));
        let config = self.config(&settings)?;
        let inner = config.create_with_context(ClientMetrics::new(service))?;
        Ok(Producer { inner, service, alone: Arc::new(Alone { config, producer: Mutex::new(None) }) })
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
                // A fetch that overfills the local queue (over 100,000 records: one
                // 64 MiB fetch of a backlog holds several times that) would hold the
                // partition back for librdkafka's default second: on a backlog, the
                // loop ran dry waiting for it.
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
                // Consumer lag per partition, through the context's statistics callback.
                ("statistics.interval.ms", "1000"),
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
                // As for group consumers: reading 200,000 merchants stalled a second
                // per 100,000 records queued.
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ])?
            .create()?)
    }
}

/// The producer every stage writes with (through an [`crate::outbox::Outbox`]): a
/// librdkafka producer (it derefs to one) that knows its service, the `service` label of
/// its metrics.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<ClientMetrics>,
    service: &'static str,
    alone: Arc<Alone>,
}

/// A second producer with the same settings that sends each record in a batch of its
/// own, made the first time it is needed (see [`Producer::alone`]).
struct Alone {
    config: ClientConfig,
    producer: Mutex<Option<FutureProducer<ClientMetrics>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Producer {
    /// The `service` label of its metrics.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// A producer with the same settings whose every batch holds one record (made on
    /// first use, then shared by the clones of this producer). A broker refuses a
    /// produce batch whole, so the outbox sends a refused record again through it to
    /// tell the record the broker refuses from its neighbours in the batch.
    pub fn alone(&self) -> Result<FutureProducer<ClientMetrics>> {
        let mut p = self.alone.producer.lock().expect("producer poisoned");
        if p.is_none() {
            let mut config = self.alone.config.clone();
            // No statistics: the queue-depth gauge is the main producer's.
            config.set("batch.num.messages", "1").set("linger.ms", "0").set("statistics.interval.ms", "0");
            *p = Some(config.create_with_context(ClientMetrics::new(self.service))?);
        }
        Ok(p.clone().expect("made above"))
    }
}

impl std::ops::Deref for Producer {
    type Target = FutureProducer<ClientMetrics>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// The name of a Kafka error's librdkafka code (`BrokerTransportFailure`,
/// `MessageSizeTooLarge`, ...), or `other` for an error without one: a closed set, the
/// `code` label of [`crate::telemetry::KAFKA_ERRORS`].
pub fn error_code_name(e: &KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| "other".to_owned(), |c| format!("{c:?}"))
}

/// Counts a Kafka client error of `service` in [`crate::telemetry::KAFKA_ERRORS`].
pub fn count_error(service: &'static str, e: &KafkaError) {
    metrics::counter!(crate::telemetry::KAFKA_ERRORS, "service" => service, "code" => error_code_name(e)).increment(1);
}

/// A producer's context: logs and counts librdkafka's errors and reports the
/// producer's queue depth (from its statistics, every second), under its service.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    service: &'static str,
}

impl ClientMetrics {
    /// The context of `service`'s producer.
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl ClientContext for ClientMetrics {
    fn stats(&self, statistics: rdkafka::Statistics) {
        metrics::gauge!(crate::telemetry::PRODUCER_QUEUE, "service" => self.service).set(statistics.msg_cnt as f64);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        count_error(self.service, &error);
        tracing::warn!(service = self.service, %error, reason, "Kafka client error.");
    }
}

/// How long librdkafka waits before fetching a partition again when its local queue is
/// over its bounds (`queued.min.messages`, `queued.max.messages.kbytes`); librdkafka's
/// default is 1000 ms.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
