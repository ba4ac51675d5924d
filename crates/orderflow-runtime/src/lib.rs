//! Shared plumbing of orderflow's services, kept thin and free of business logic.
//!
//! # Layout
//! - [`dead_letter`]: the dead-letter record format (original bytes, reason headers).
//! - [`kafka`]: the `--brokers` flag, librdkafka option passthrough and client builders.
//! - [`topics`]: topic names (one prefix for all), sizing flags, and creation of missing
//!   topics through the admin API so a fresh cluster needs no manual step.
//! - [`telemetry`]: every metric name, described once; the Prometheus exporter; tracing.
//! - [`shutdown`]: SIGTERM/Ctrl-C to a cancellation token.

pub mod dead_letter;
pub mod kafka;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use tokio_util::sync::CancellationToken;

/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("topic `{0}` does not exist (yet)")]
    MissingTopic(String),
    #[error("librdkafka option `{0}` must be KEY=VALUE")]
    BadOption(String),
    #[error("metrics exporter on {addr}: {reason}")]
    Metrics { addr: std::net::SocketAddr, reason: String },
}

/// Result with the plumbing's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
