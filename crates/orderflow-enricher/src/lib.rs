//! The enricher: reads raw `OrderEvent`s, validates them, joins each with the merchant
//! version in effect at its event time, and writes `EnrichedRecord`s keyed by order id.
//! Invalid events go to the dead-letter topic with their original bytes and the reason.
//!
//! # Design
//! - At-least-once: a batch's input offsets are stored only after every output of the
//!   batch is settled in the [`Outbox`](orderflow_runtime::outbox::Outbox). After a crash
//!   the same input gives the same output again; the aggregator's dedup by event id
//!   absorbs the repeat. An output the broker refuses for good (too large, say) sends
//!   its input to the dead-letter topic instead; it never stops the enricher.
//! - The merchant table is read whole from the merchants topic before the first order is
//!   enriched ([`merchants::MerchantStore::load`]), then followed by a supervised
//!   blocking task. Both tasks run under one
//!   [`Supervisor`](orderflow_runtime::supervisor::Supervisor): if either fails, both
//!   stop and [`run`] returns the failure.
//!
//! # Layout
//! - [`merchants`]: the shared table and its loader/follower.
//! - [`pipeline`]: the consume-enrich-produce loop.

pub mod merchants;
pub mod pipeline;

use std::time::Duration;

pub use pipeline::run;

/// Enricher settings (the command line's `enrich` flags fill them in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnricherConfig {
    /// Most records enriched per batch (offsets are stored per batch).
    pub batch: usize,
    /// Most outputs in flight (sent, not yet acknowledged by the broker): the enricher
    /// reads and enriches the next batches while earlier ones are being delivered, and
    /// waits for the oldest when this many are outstanding.
    pub max_in_flight: usize,
    /// How long the enricher's tasks may take to stop once one has failed or a
    /// shutdown was requested.
    pub shutdown_grace: Duration,
    /// How far ahead of the enricher's clock an event time may be; events dated
    /// further ahead are dead-lettered (`event_time_in_future`).
    pub max_event_time_skew: Duration,
    /// The largest `amount_minor` accepted; larger ones are dead-lettered
    /// (`amount_too_large`).
    pub max_amount_minor: i64,
    /// The largest orders-topic record accepted, in bytes; larger ones are
    /// dead-lettered (`event_too_large`) with their first 64 KiB.
    pub max_event_bytes: usize,
    /// Currency codes accepted besides ISO 4217's; others are dead-lettered
    /// (`unknown_currency`).
    pub extra_currencies: Vec<String>,
}

pub use orderflow_core::validate::DEFAULT_MAX_EVENT_BYTES;

impl EnricherConfig {
    /// The limits every event is held to; fails on a malformed extra currency.
    pub fn limits(&self) -> std::result::Result<orderflow_core::validate::Limits, String> {
        orderflow_core::validate::Limits::from_settings(
            self.max_event_time_skew,
            self.max_amount_minor,
            self.max_event_bytes,
            &self.extra_currencies,
        )
    }
}

/// Records per batch when not told otherwise.
pub const DEFAULT_BATCH: usize = 5_000;
/// Outputs in flight when not told otherwise (eight default batches).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 40_000;

impl Default for EnricherConfig {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            shutdown_grace: orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE,
            max_event_time_skew: Duration::from_millis(orderflow_core::validate::DEFAULT_MAX_FUTURE_SKEW_MS as u64),
            max_amount_minor: orderflow_core::validate::DEFAULT_MAX_AMOUNT_MINOR,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            extra_currencies: Vec::new(),
        }
    }
}

/// Errors of the enricher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error("kafka client: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("{0}")]
    Config(String),
    #[error("following the merchants topic `{topic}`: {error}")]
    Follow { topic: String, error: rdkafka::error::KafkaError },
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(e)
    }
}

/// Result with the enricher's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
