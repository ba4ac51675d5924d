//! Shared plumbing of orderflow's services, kept thin and free of business logic, and
//! free of the command line: plain config structs with one constant per default; the
//! `orderflow` binary owns the flags and converts them.
//!
//! # Layout
//! - [`kafka`]: Kafka clients, one concern a file, all re-exported from `kafka`:
//!   - `kafka/config.rs`: [`kafka::KafkaConfig`] (brokers, TLS and SASL, librdkafka
//!     passthrough) and secret redaction;
//!   - `kafka/connect.rs`: the start-up probe, [`kafka::KafkaConfig::check_reachable`];
//!   - `kafka/clients.rs`: producer settings, [`kafka::Producer`], the builders of
//!     producers, group consumers and readers;
//!   - `kafka/admin.rs`: partition counts and consumer-group positions;
//!   - `kafka/reader.rs`: [`kafka::TopicReader`] (whole topics), headers, fatal read errors;
//!   - `kafka/consumer.rs`: [`kafka::GroupConsumerContext`] (revoked partitions,
//!     rebalances, joining, lag) and [`kafka::recv_batch`].
//! - [`topics`]: topic names (one prefix for all), the topics each [`topics::Stage`]
//!   needs, and their creation through the admin API so a fresh cluster needs no
//!   manual step.
//! - [`records`]: keys and headers of every record orderflow writes (partial, progress,
//!   total, late, dead letter, checkpoint, merchant), one window-name format.
//! - [`outbox`]: the one produce-and-settle path, with one sorting of errors into
//!   back-pressure, a record refused for good (dead-letter it) and fatal.
//! - [`supervisor`]: a service's named tasks; the first failure stops them all and
//!   becomes the process's exit status.
//! - [`telemetry`]: every metric name, described once; the Prometheus exporter; tracing.
//! - [`metrics_page`]: the other side of the exporter: fetching a `/metrics` page and
//!   reading its samples (the load test, the end-to-end tests).
//! - [`shutdown`]: SIGTERM/Ctrl-C to a cancellation token.
//! - `testing` (feature `testing`, for other crates' tests): librdkafka's mock cluster
//!   with every topic created, and helpers to read topics and wait for outcomes.

pub mod kafka;
pub mod metrics_page;
pub mod outbox;
pub mod records;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;

pub use tokio_util::sync::CancellationToken;

/// Errors of the shared plumbing. Each cause appears once in a chain: a variant's
/// message says what was being done and, for librdkafka's errors, what went wrong in
/// librdkafka's words (a `KafkaError` is never also given as the source: its own
/// source repeats its message).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka client: {0}")]
    Kafka(rdkafka::error::KafkaError),
    /// librdkafka refused a setting. Its words never include the value given (it may be
    /// a password): librdkafka's own error appends it.
    #[error("kafka client: librdkafka refused the setting `{key}`: {reason}")]
    ClientConfig { key: String, reason: String },
    #[error(
        "cannot reach the Kafka brokers at {brokers} (waited {}; set them with --brokers or ORDERFLOW_BROKERS, \
         the wait with --connect-timeout): {cause}",
        humantime::format_duration(*.waited)
    )]
    Unreachable {
        brokers: String,
        waited: std::time::Duration,
        /// librdkafka's words for the failed request, then its last word on the
        /// connections when it said something (`; last broker error: ...`).
        cause: String,
    },
    #[error(
        "TLS with the Kafka brokers at {brokers} failed (check --security-protocol and --ssl-ca-file, and \
         --ssl-cert-file/--ssl-key-file if the brokers ask for a client certificate): {reason}"
    )]
    Tls { brokers: String, reason: String },
    #[error(
        "the Kafka brokers at {brokers} refused the SASL login of user `{username}` (check --sasl-mechanism, \
         --sasl-username and the password): {reason}"
    )]
    Authentication { brokers: String, username: String, reason: String },
    #[error("TLS/SASL settings: {0}")]
    Security(&'static str),
    #[error("reading the {what} from {}", .path.display())]
    SecretFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("reading the configuration of topic `{topic}`: {reason}")]
    DescribeTopic { topic: String, reason: String },
    #[error("topic `{0}` does not exist (yet)")]
    MissingTopic(String),
    /// An `--kafka-option` that would weaken security or idempotence; the option as
    /// shown by [`kafka::redact_option`].
    #[error("librdkafka option `{option}` refused: {why}")]
    Downgrade { option: String, why: &'static str },
    /// The option as shown by [`kafka::redact_option`]: a secret in it is not repeated.
    #[error("librdkafka option `{0}` must be KEY=VALUE")]
    BadOption(String),
    #[error("metrics exporter on {addr}: {reason}")]
    Metrics { addr: std::net::SocketAddr, reason: String },
    #[error("producing to `{topic}`: {error}")]
    Delivery { topic: String, error: rdkafka::error::KafkaError },
    #[error("records still unsent after waiting {} for the producer to flush: {error}", humantime::format_duration(*.waited))]
    Flush { waited: std::time::Duration, error: rdkafka::error::KafkaError },
    #[error("the producer shut down with deliveries outstanding")]
    ProducerGone,
    #[error("task `{task}` failed")]
    TaskFailed {
        task: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("task `{task}` panicked")]
    TaskPanicked { task: String },
    #[error("task `{task}` ended while the service was still running")]
    TaskEnded { task: String },
    #[error("tasks {tasks:?} still running {} after shutdown began; abandoned", humantime::format_duration(*.grace))]
    ShutdownTimeout { tasks: Vec<String>, grace: std::time::Duration },
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        match e {
            rdkafka::error::KafkaError::ClientConfig(_, reason, key, value) => {
                let reason = if value.trim().is_empty() { reason } else { reason.replace(&value, "<redacted>") };
                Self::ClientConfig { key, reason }
            }
            e => Self::Kafka(e),
        }
    }
}

/// librdkafka's own words for an error (`Local: Broker transport failure`), without
/// the operation `KafkaError` wraps them in.
pub fn kafka_cause(e: &rdkafka::error::KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| e.to_string(), |c| c.to_string())
}

/// Result with the plumbing's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's error for a refused setting carries the value given, which may be a
    /// password: the error shown names the setting and librdkafka's reason only.
    #[test]
    fn a_refused_setting_is_shown_without_its_value() {
        for (key, value) in [("sasl.jaas.config", r#"x required password="hunter2";"#), ("no.such.setting", "hunter2")] {
            let e = rdkafka::ClientConfig::new().set(key, value).create::<rdkafka::producer::BaseProducer>().err().expect("refused");
            assert!(e.to_string().contains("hunter2"), "librdkafka's own words carry the value: {e}");
            let shown = Error::from(e);
            let text = format!("{shown} {shown:?}");
            assert!(matches!(&shown, Error::ClientConfig { key: k, .. } if k == key), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        // Also where librdkafka quotes the value in its reason.
        let e = rdkafka::ClientConfig::new().set("acks", "hunter2").create::<rdkafka::producer::BaseProducer>().err().expect("refused");
        let text = Error::from(e).to_string();
        assert!(text.starts_with("kafka client: librdkafka refused the setting `acks`: ") && !text.contains("hunter2"), "{text}");
    }
}
