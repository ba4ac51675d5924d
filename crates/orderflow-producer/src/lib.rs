//! Publishing into orderflow: the small library a Rust storefront links.
//!
//! - [`Publisher`]: publishes `OrderEvent`s to the orders topic, keyed by order id so
//!   that all events of an order stay in order on one partition. One event at a time
//!   ([`Publisher::publish`]) or many in flight ([`Publisher::batch`]); either way each
//!   event gets its own answer: delivered, or refused for good with the broker's reason
//!   (too large, say), without failing the events around it.
//! - [`load_merchants`]: publishes merchant versions to the compacted merchants topic.
//!
//! Trace replay, synthetic traces and the demo's sample live in `orderflow-workload`.
//!
//! ```no_run
//! # async fn f() -> Result<(), orderflow_producer::Error> {
//! use orderflow_producer::Publisher;
//! use orderflow_runtime::kafka::KafkaConfig;
//! let publisher = Publisher::new(&KafkaConfig::new("127.0.0.1:9092"), "orderflow.orders")?;
//! let event = orderflow_proto::v1::OrderEvent { event_id: "e-1".into(), ..Default::default() };
//! publisher.publish(&event).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use orderflow_proto::v1::{Merchant, OrderEvent};
use orderflow_proto::Message;
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::kafka::Producer;
use orderflow_runtime::outbox::{Outbox, Settled};
use orderflow_runtime::records::merchant_key;
use rdkafka::producer::FutureRecord;

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error("event `{event_id}` was refused: {reason}")]
    Refused { event_id: String, reason: String },
    #[error("merchant `{merchant_id}` is not loaded: {problem}")]
    BadMerchant { merchant_id: String, problem: orderflow_core::merchant::MerchantProblem },
}

/// Result with publishing's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Publishes order events to the orders topic.
#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// The key an event is published under: its order id (its event id if it has none,
/// so that even a malformed event reaches the dead-letter topic).
pub fn event_key(event: &OrderEvent) -> &str {
    if event.order_id.is_empty() {
        &event.event_id
    } else {
        &event.order_id
    }
}

impl Publisher {
    /// A publisher to `topic` with an idempotent producer.
    pub fn new(kafka: &KafkaConfig, topic: impl Into<String>) -> Result<Self> {
        Ok(Self { producer: kafka.producer_for("producer")?, topic: topic.into() })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes one event and waits until the broker has it; [`Error::Refused`] when
    /// the broker refuses it for good.
    pub async fn publish(&self, event: &OrderEvent) -> Result<()> {
        let mut batch = self.batch();
        batch.enqueue(event, event.event_id.clone()).await?;
        refused_to_error(batch.settle().await?)
    }

    /// Publishes raw bytes (for example a payload under test) and waits for delivery.
    pub async fn publish_raw(&self, key: Option<&str>, payload: &[u8]) -> Result<()> {
        let mut batch = self.batch();
        batch.enqueue_raw(key, payload, String::new()).await?;
        refused_to_error(batch.settle().await?)
    }

    /// Many events in flight at once, each with a tag of the caller's (an event id, a
    /// line number) that comes back with the events refused.
    pub fn batch<T>(&self) -> PublishBatch<'_, T> {
        PublishBatch { outbox: Outbox::new(self.producer.clone()), topic: &self.topic }
    }
}

fn refused_to_error(settled: Settled<String>) -> Result<()> {
    match settled.rejected.into_iter().next() {
        None => Ok(()),
        Some(r) => Err(Error::Refused { reason: r.error.to_string(), event_id: r.tag }),
    }
}

/// Events handed to the producer and not yet settled; see [`Publisher::batch`].
#[derive(Debug)]
pub struct PublishBatch<'a, T> {
    outbox: Outbox<T>,
    topic: &'a str,
}

impl<T> PublishBatch<'_, T> {
    /// Hands one event to the producer, waiting while its queue is full.
    pub async fn enqueue(&mut self, event: &OrderEvent, tag: T) -> Result<()> {
        let payload = event.encode_to_vec();
        self.enqueue_raw(Some(event_key(event)), &payload, tag).await
    }

    /// Hands raw bytes to the producer.
    pub async fn enqueue_raw(&mut self, key: Option<&str>, payload: &[u8], tag: T) -> Result<()> {
        let mut record = FutureRecord::<str, [u8]>::to(self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        Ok(self.outbox.send(record, tag).await?)
    }

    /// Events handed over and not yet settled.
    pub fn pending(&self) -> usize {
        self.outbox.pending()
    }

    /// Waits for every event handed over: how many were delivered, and which were
    /// refused for good (with their tags and reasons). Fails only when the producer
    /// cannot go on (see `orderflow_runtime::outbox`).
    pub async fn settle(&mut self) -> Result<Settled<T>> {
        Ok(self.outbox.settle().await?)
    }

    /// Settles the events already delivered, in order, waiting for the oldest while
    /// more than `max_pending` are outstanding.
    pub async fn settle_ready(&mut self, max_pending: usize) -> Result<Settled<T>> {
        Ok(self.outbox.settle_ready(max_pending).await?)
    }

    /// Settles, then waits up to `timeout` for the producer's queue to empty.
    pub async fn close(&mut self, timeout: Duration) -> Result<Settled<T>> {
        Ok(self.outbox.close(timeout).await?)
    }
}

/// Publishes merchant versions to the merchants topic, keyed `merchant_id@effective_from`
/// so compaction keeps every version and loading a version again replaces it. A
/// version the broker refuses fails the load, naming the merchant. Every version is
/// checked first ([`orderflow_core::merchant::check_merchant`], the enricher's rules):
/// one bad version publishes nothing.
pub async fn load_merchants(kafka: &KafkaConfig, topic: &str, merchants: &[Merchant]) -> Result<usize> {
    for m in merchants {
        orderflow_core::merchant::check_merchant(m)
            .map_err(|problem| Error::BadMerchant { merchant_id: m.merchant_id.clone(), problem })?;
    }
    let mut outbox: Outbox<&str> = Outbox::new(kafka.producer_for("merchants")?);
    let mut delivered = 0;
    for chunk in merchants.chunks(50_000) {
        for m in chunk {
            let key = merchant_key(&m.merchant_id, m.effective_from.as_ref());
            let payload = m.encode_to_vec();
            outbox.send(FutureRecord::to(topic).key(&key).payload(&payload), m.merchant_id.as_str()).await?;
        }
        let settled = outbox.settle().await?;
        if let Some(r) = settled.rejected.into_iter().next() {
            return Err(Error::Refused { reason: r.error.to_string(), event_id: format!("merchant {}", r.tag) });
        }
        delivered += settled.delivered as usize;
    }
    Ok(delivered)
}
