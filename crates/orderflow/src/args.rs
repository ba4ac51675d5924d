//! The command line's flags for the library crates' settings, and their conversion
//! (every flag also reads an environment variable; every default is the library's
//! own constant, shown in `--help`).

use std::time::Duration;

use orderflow_aggregator::{defaults as agg, AggregatorConfig};
use orderflow_enricher::EnricherConfig;
use orderflow_runtime::kafka::{KafkaConfig, DEFAULT_BROKERS, DEFAULT_CONNECT_TIMEOUT};
use orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE;
use orderflow_runtime::topics::{Topics, DEFAULT_PARTITIONS, DEFAULT_PREFIX, DEFAULT_REPLICATION_FACTOR};

/// Where the brokers are and any extra librdkafka settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = DEFAULT_BROKERS, global = true)]
    pub brokers: String,
    /// Extra librdkafka setting, `KEY=VALUE` (repeatable; applied last, so it can
    /// override orderflow's defaults, e.g. `security.protocol=SSL`).
    #[arg(long = "kafka-option", env = "ORDERFLOW_KAFKA_OPTIONS", value_delimiter = ',', global = true)]
    pub options: Vec<String>,
    /// How long to wait for the brokers at start before giving up.
    #[arg(long, env = "ORDERFLOW_CONNECT_TIMEOUT", default_value_t = DEFAULT_CONNECT_TIMEOUT.into(), global = true)]
    pub connect_timeout: humantime::Duration,
}

impl From<KafkaArgs> for KafkaConfig {
    fn from(a: KafkaArgs) -> Self {
        Self { brokers: a.brokers, options: a.options, connect_timeout: a.connect_timeout.into() }
    }
}

/// Topic naming and sizing.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    /// Prefix of every topic and consumer-group name.
    #[arg(long, env = "ORDERFLOW_TOPIC_PREFIX", default_value = DEFAULT_PREFIX, global = true)]
    pub topic_prefix: String,
    /// Partitions of the orders, enriched, dead-letter, late and checkpoint topics when
    /// orderflow creates them (existing topics are left as they are).
    #[arg(long, env = "ORDERFLOW_PARTITIONS", default_value_t = DEFAULT_PARTITIONS, global = true)]
    pub partitions: i32,
    /// Replication factor of topics orderflow creates (use 3 in production).
    #[arg(long, env = "ORDERFLOW_REPLICATION_FACTOR", default_value_t = DEFAULT_REPLICATION_FACTOR, global = true)]
    pub replication_factor: i32,
}

impl From<TopicArgs> for Topics {
    fn from(a: TopicArgs) -> Self {
        Self { topic_prefix: a.topic_prefix, partitions: a.partitions, replication_factor: a.replication_factor }
    }
}

/// How long a service's tasks may take to stop.
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownArgs {
    /// How long the service's tasks may take to stop after SIGTERM or after one of
    /// them failed; then they are abandoned and the process exits non-zero.
    #[arg(long, env = "ORDERFLOW_SHUTDOWN_GRACE", default_value_t = DEFAULT_SHUTDOWN_GRACE.into())]
    pub shutdown_grace: humantime::Duration,
}

/// Enricher settings.
#[derive(Debug, Clone, clap::Args)]
pub struct EnricherArgs {
    /// Most records enriched per batch (offsets are stored per batch).
    #[arg(long, env = "ORDERFLOW_ENRICHER_BATCH", default_value_t = orderflow_enricher::DEFAULT_BATCH)]
    pub batch: usize,
    /// How far ahead of this enricher's clock an event time may be; events dated further
    /// ahead (a storefront with a wrong clock) are dead-lettered as `event_time_in_future`.
    #[arg(long, env = "ORDERFLOW_MAX_EVENT_TIME_SKEW",
          default_value_t = Duration::from_millis(orderflow_core::validate::DEFAULT_MAX_FUTURE_SKEW_MS as u64).into())]
    pub max_event_time_skew: humantime::Duration,
    /// The largest amount_minor accepted; larger ones are dead-lettered as `amount_too_large`.
    #[arg(long, env = "ORDERFLOW_MAX_AMOUNT_MINOR", default_value_t = orderflow_core::validate::DEFAULT_MAX_AMOUNT_MINOR,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub max_amount_minor: i64,
    /// The largest orders-topic record accepted, in bytes; larger ones are dead-lettered
    /// as `event_too_large`, keeping their first 64 KiB.
    #[arg(long, env = "ORDERFLOW_MAX_EVENT_BYTES", default_value_t = orderflow_enricher::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Currency codes to accept besides ISO 4217's (comma-separated, three upper-case
    /// letters each); events in any other currency are dead-lettered as `unknown_currency`.
    #[arg(long, env = "ORDERFLOW_EXTRA_CURRENCIES", value_delimiter = ',')]
    pub extra_currencies: Vec<String>,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl From<EnricherArgs> for EnricherConfig {
    fn from(a: EnricherArgs) -> Self {
        Self {
            batch: a.batch,
            shutdown_grace: a.shutdown.shutdown_grace.into(),
            max_event_time_skew: a.max_event_time_skew.into(),
            max_amount_minor: a.max_amount_minor,
            max_event_bytes: a.max_event_bytes,
            extra_currencies: a.extra_currencies,
        }
    }
}

/// Aggregation settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatorArgs {
    /// Size of the tumbling event-time windows (aligned to the epoch).
    #[arg(long, env = "ORDERFLOW_WINDOW", default_value_t = agg::WINDOW.into())]
    pub window: humantime::Duration,
    /// How long after a window's end (in event time) its events are still counted.
    #[arg(long, env = "ORDERFLOW_LATENESS", default_value_t = agg::LATENESS.into())]
    pub lateness: humantime::Duration,
    /// After this long without input, open windows close (see README, "Windows").
    #[arg(long, env = "ORDERFLOW_IDLE_CLOSE", default_value_t = agg::IDLE_CLOSE.into())]
    pub idle_close: humantime::Duration,
    /// How long (event time) event ids are remembered for dedup; at least window +
    /// lateness, which is the default.
    #[arg(long, env = "ORDERFLOW_DEDUP_HORIZON")]
    pub dedup_horizon: Option<humantime::Duration>,
    /// Most event ids remembered for dedup per input partition (24-48 bytes of memory
    /// and 26 bytes of checkpoint each). While a partition holds this many ids within
    /// the horizon, events with new ids are dead-lettered as `dedup_memory_full`
    /// (replay them later); the default holds 30,000 events/s per partition.
    #[arg(long, env = "ORDERFLOW_DEDUP_MAX_IDS", default_value_t = agg::DEDUP_MAX_IDS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub dedup_max_ids: usize,
    /// Most (region, tier, currency) keys per window per input partition; events of
    /// new keys beyond are dead-lettered as `too_many_keys`.
    #[arg(long, env = "ORDERFLOW_MAX_KEYS_PER_WINDOW", default_value_t = agg::MAX_KEYS_PER_WINDOW,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_keys_per_window: usize,
    /// How often partition state is checkpointed (and input offsets committed).
    #[arg(long, env = "ORDERFLOW_CHECKPOINT_INTERVAL", default_value_t = agg::CHECKPOINT_INTERVAL.into())]
    pub checkpoint_interval: humantime::Duration,
    /// Never checkpoint nor commit: a restarted or moved partition re-processes its
    /// whole log. Still exact, but restarts get slower as the log grows; meant for
    /// measuring what checkpoints cost.
    #[arg(long, env = "ORDERFLOW_NO_CHECKPOINTS")]
    pub no_checkpoints: bool,
    /// Most records processed per batch.
    #[arg(long, env = "ORDERFLOW_AGGREGATOR_BATCH", default_value_t = agg::BATCH)]
    pub batch: usize,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl From<AggregatorArgs> for AggregatorConfig {
    fn from(a: AggregatorArgs) -> Self {
        Self {
            window: a.window.into(),
            lateness: a.lateness.into(),
            idle_close: a.idle_close.into(),
            dedup_horizon: a.dedup_horizon.map(Duration::from),
            dedup_max_ids: a.dedup_max_ids,
            max_keys_per_window: a.max_keys_per_window,
            checkpoint_interval: a.checkpoint_interval.into(),
            no_checkpoints: a.no_checkpoints,
            batch: a.batch,
            shutdown_grace: a.shutdown.shutdown_grace.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Parse<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }

    fn defaults<T: clap::Args>() -> T {
        Parse::<T>::try_parse_from(["t"]).unwrap().args
    }

    #[test]
    fn flag_defaults_are_the_libraries_defaults() {
        assert_eq!(AggregatorConfig::from(defaults::<AggregatorArgs>()), AggregatorConfig::default());
        assert_eq!(EnricherConfig::from(defaults::<EnricherArgs>()), EnricherConfig::default());
        assert_eq!(KafkaConfig::from(defaults::<KafkaArgs>()), KafkaConfig::default());
        assert_eq!(Topics::from(defaults::<TopicArgs>()), Topics::default());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        crate::Cli::command().debug_assert();
    }
}
