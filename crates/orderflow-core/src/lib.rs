//! orderflow's pure core: everything that decides a number, with no Kafka, no async
//! runtime and no clock, so it can be unit-tested and benchmarked alone (a sans-io
//! design). The Kafka services in the other crates are thin loops around it.
//!
//! # Layout
//! - [`reason`]: why a record is not counted (dead-letter reasons and their codes).
//! - [`validate`]: what makes an `OrderEvent` acceptable, and the dead-letter reasons.
//! - [`framing`]: plain protobuf or Confluent Schema Registry framing, told apart per
//!   orders-topic record.
//! - [`merchant`]: the merchant table and the temporal join (region and tier of the
//!   merchant version in effect at the event's time).
//! - [`window`]: tumbling event-time windows aligned to the epoch, keys and tallies.
//! - [`dedup`]: event-id memory over an event-time horizon.
//! - [`admitted`]: the admission log, the input offsets of the ids the dedup memory
//!   admitted: what a checkpoint carries instead of the memory.
//! - [`partition`]: one input partition's aggregation state: watermark, open windows,
//!   closing, lateness, checkpoints. Its output depends only on the partition's log.
//!   A restore gives a [`partition::RestoringPartition`], which only rereads the input
//!   its admission log names to rebuild the dedup memory; its `finish` gives the
//!   [`partition::PartitionState`] that applies events and checkpoints.
//! - [`merge`]: merges per-partition partial totals into one exact total per key once
//!   every partition has closed the window.
//! - [`provisional`]: the provisional figures of windows not yet final, from the
//!   partitions' snapshots of their open windows, dropped as each window becomes final.
//! - [`wire`]: borrowed, allocation-free views of `OrderEvent` and `EnrichedRecord`
//!   payloads for the per-event hot paths, and the enricher's spliced output record.
//!
//! # Errors
//! One [`Error`] enum for the crate; invalid events are not errors but values
//! ([`validate::InvalidReason`]), because they are routed, not propagated.

pub mod admitted;
pub mod dedup;
pub mod framing;
pub mod merchant;
pub mod merge;
pub mod partition;
pub mod provisional;
pub mod reason;
pub mod validate;
pub mod window;
pub mod wire;

pub use orderflow_proto as proto;

/// Errors of the pure core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A merchants CSV could not be used.
    #[error("merchants CSV: {0}")]
    MerchantCsv(String),
    /// A checkpoint does not fit the running configuration or is corrupt.
    #[error("checkpoint for {topic}/{partition}: {reason}")]
    Checkpoint { topic: String, partition: i32, reason: String },
    /// Two different partial totals arrived for the same window, key and partition:
    /// processing was not deterministic, so the merged total would be wrong.
    #[error("conflicting partial totals for window {window_start_ms} key {key} partition {partition}")]
    ConflictingPartial { window_start_ms: i64, key: String, partition: i32 },
    /// Window size or lateness not usable.
    #[error("window configuration: {0}")]
    WindowConfig(String),
}

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
