//! The aggregator: turns the enriched stream into exact event-time window totals.
//!
//! # Design
//! Two stages, both in the `aggregate` process:
//! 1. [`partitioned`]: each enriched-topic partition is aggregated on its own by
//!    [`orderflow_core::partition::PartitionState`]: dedup, watermark, open windows. When
//!    a window closes on the partition, its partial totals and the partition's progress
//!    go to the partial-totals topic, keyed so that emitting them twice is harmless.
//!    Every `--checkpoint-interval` the state of each partition is written, with the
//!    input offset it belongs to, to the checkpoint topic (partition p's checkpoints on
//!    partition p) and only then is that offset committed. A restarted or new owner
//!    restores the checkpoint and re-processes from its offset, re-emitting identical
//!    partials. Idle partitions are closed by ticks written into the input partition
//!    itself and acted on when read back, so the outcome stays a function of the log;
//!    ticks are held back while the enricher owes records ([`upstream`]).
//! 2. [`merger`]: one consumer of the single-partition partial-totals topic sums the
//!    partials of a window once every input partition's progress has passed it, and
//!    publishes one total per (window, region, tier, currency) to the totals topic and
//!    to Prometheus.
//!
//! No step needs Kafka transactions.

pub mod checkpoint;
pub mod idle;
pub mod merger;
pub mod partitioned;
pub mod totals;
pub mod upstream;

use std::time::Duration;

pub use partitioned::run;

/// Errors of the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error(transparent)]
    Core(#[from] orderflow_core::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("delivery to `{topic}` failed: {source}")]
    Delivery { topic: String, source: rdkafka::error::KafkaError },
    #[error("{0}")]
    Config(String),
}

/// Result with the aggregator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Aggregation settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatorArgs {
    /// Size of the tumbling event-time windows (aligned to the epoch).
    #[arg(long, env = "ORDERFLOW_WINDOW", value_parser = humantime::parse_duration, default_value = "1m")]
    pub window: Duration,
    /// How long after a window's end (in event time) its events are still counted.
    #[arg(long, env = "ORDERFLOW_LATENESS", value_parser = humantime::parse_duration, default_value = "5s")]
    pub lateness: Duration,
    /// After this long without input, open windows close (see README, "Windows").
    #[arg(long, env = "ORDERFLOW_IDLE_CLOSE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub idle_close: Duration,
    /// How long (event time) event ids are remembered for dedup; at least window +
    /// lateness, which is the default.
    #[arg(long, env = "ORDERFLOW_DEDUP_HORIZON", value_parser = humantime::parse_duration)]
    pub dedup_horizon: Option<Duration>,
    /// How often partition state is checkpointed (and input offsets committed).
    #[arg(long, env = "ORDERFLOW_CHECKPOINT_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub checkpoint_interval: Duration,
    /// Never checkpoint nor commit: a restarted or moved partition re-processes its
    /// whole log. Still exact, but restarts get slower as the log grows; meant for
    /// measuring what checkpoints cost.
    #[arg(long, env = "ORDERFLOW_NO_CHECKPOINTS")]
    pub no_checkpoints: bool,
    /// Most records processed per batch.
    #[arg(long, env = "ORDERFLOW_AGGREGATOR_BATCH", default_value_t = 5_000)]
    pub batch: usize,
}

impl Default for AggregatorArgs {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            lateness: Duration::from_secs(5),
            idle_close: Duration::from_secs(10),
            dedup_horizon: None,
            checkpoint_interval: Duration::from_secs(5),
            no_checkpoints: false,
            batch: 5_000,
        }
    }
}

impl AggregatorArgs {
    /// The window spec and the dedup horizon in milliseconds, checked.
    pub fn spec(&self) -> Result<(orderflow_core::window::WindowSpec, i64)> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let spec = orderflow_core::window::WindowSpec::new(ms(self.window), ms(self.lateness))?;
        let min = spec.size_ms() + spec.lateness_ms();
        let horizon = self.dedup_horizon.map_or(min, ms);
        if horizon < min {
            return Err(Error::Config(format!(
                "--dedup-horizon ({horizon} ms) must be at least window + lateness ({min} ms): \
                 a shorter one could count a repeated event twice"
            )));
        }
        Ok((spec, horizon))
    }
}
