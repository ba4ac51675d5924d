//! Publishing into orderflow.
//!
//! - [`Publisher`]: the API a Rust storefront uses to publish `OrderEvent`s, keyed by
//!   order id so that all events of an order stay in order on one partition.
//! - [`replay`]: publishes a trace file (one canonical-JSON `OrderEvent` a line) at a
//!   fixed rate or flat out, reporting unreadable lines by number and going on.
//! - [`load_merchants`]: publishes merchant versions to the compacted merchants topic.
//! - [`sample`]: a small generated peak minute, for the demo.
//! - [`synth`]: a generated peak-hour trace and its merchants CSV, streamed to files
//!   (`orderflow trace synth`).
//!
//! ```no_run
//! # async fn f() -> Result<(), orderflow_producer::Error> {
//! use orderflow_producer::Publisher;
//! use orderflow_runtime::kafka::KafkaArgs;
//! let publisher = Publisher::new(&KafkaArgs::new("127.0.0.1:9092"), "orderflow.orders")?;
//! let event = orderflow_proto::v1::OrderEvent { event_id: "e-1".into(), ..Default::default() };
//! publisher.publish(&event).await?;
//! # Ok(()) }
//! ```

mod replay;
pub mod sample;
pub mod synth;
pub mod trace;

use std::time::Duration;

use futures::future::join_all;
use orderflow_proto::v1::{Merchant, OrderEvent};
use orderflow_proto::Message;
use orderflow_runtime::kafka::KafkaArgs;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

pub use replay::{replay, ReplayOptions, ReplayReport};

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("delivery to `{topic}` failed: {source}")]
    Delivery { topic: String, source: KafkaError },
    #[error("reading trace `{path}`: {source}")]
    Trace { path: String, source: std::io::Error },
    #[error("delivery was cancelled (producer shut down)")]
    Cancelled,
}

/// Result with publishing's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Publishes order events to the orders topic.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
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
    pub fn new(kafka: &KafkaArgs, topic: impl Into<String>) -> Result<Self> {
        Ok(Self { producer: kafka.producer()?, topic: topic.into() })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes one event and waits until the broker has it.
    pub async fn publish(&self, event: &OrderEvent) -> Result<()> {
        let fut = self.enqueue(event).await?;
        self.settle(fut).await
    }

    /// Publishes raw bytes (for example a payload under test) and waits for delivery.
    pub async fn publish_raw(&self, key: Option<&str>, payload: &[u8]) -> Result<()> {
        let fut = self.enqueue_raw(key, payload).await?;
        self.settle(fut).await
    }

    /// Hands one event to the producer's queue, waiting while the queue is full; the
    /// returned future resolves on delivery. Use it to keep many events in flight.
    pub async fn enqueue(&self, event: &OrderEvent) -> Result<DeliveryFuture> {
        let payload = event.encode_to_vec();
        self.enqueue_raw(Some(event_key(event)), &payload).await
    }

    async fn enqueue_raw(&self, key: Option<&str>, payload: &[u8]) -> Result<DeliveryFuture> {
        loop {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send_result(record) {
                Ok(fut) => return Ok(fut),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Back-pressure: let deliveries drain, then retry.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits for one delivery.
    pub async fn settle(&self, fut: DeliveryFuture) -> Result<()> {
        match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(Error::Delivery { topic: self.topic.clone(), source: e }),
            Err(_) => Err(Error::Cancelled),
        }
    }

    /// Waits for every queued event to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }
}

/// Publishes merchant versions to the merchants topic, keyed `merchant_id@effective_from`
/// so compaction keeps every version and loading a version again replaces it.
pub async fn load_merchants(kafka: &KafkaArgs, topic: &str, merchants: &[Merchant]) -> Result<usize> {
    let producer: FutureProducer = kafka.producer()?;
    let mut delivered = 0;
    for chunk in merchants.chunks(50_000) {
        let mut futs = Vec::with_capacity(chunk.len());
        for m in chunk {
            let key = orderflow_core::merchant::merchant_key(&m.merchant_id, m.effective_from.as_ref());
            let payload = m.encode_to_vec();
            loop {
                match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        for r in join_all(futs).await {
            match r {
                Ok(Ok(_)) => delivered += 1,
                Ok(Err((e, _))) => return Err(Error::Delivery { topic: topic.to_owned(), source: e }),
                Err(_) => return Err(Error::Cancelled),
            }
        }
    }
    Ok(delivered)
}
