//! The enricher: reads raw `OrderEvent`s, validates them, joins each with the merchant
//! version in effect at its event time, and writes `EnrichedRecord`s keyed by order id.
//! Invalid events go to the dead-letter topic with their original bytes and the reason.
//!
//! # Design
//! - At-least-once: a batch's input offsets are stored only after every output of the
//!   batch is delivered. After a crash the same input gives the same output again; the
//!   aggregator's dedup by event id absorbs the repeat.
//! - The merchant table is read whole from the merchants topic before the first order is
//!   enriched ([`merchants::MerchantStore::load`]), then followed by a background thread.
//!
//! # Layout
//! - [`merchants`]: the shared table and its loader/follower.
//! - [`pipeline`]: the consume-enrich-produce loop.

pub mod merchants;
pub mod pipeline;

pub use pipeline::{run, EnricherArgs};

/// Errors of the enricher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("delivery to `{topic}` failed: {source}")]
    Delivery { topic: String, source: rdkafka::error::KafkaError },
}

/// Result with the enricher's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
