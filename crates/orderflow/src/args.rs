//! The command line's flags for the library crates' settings, and their conversion
//! (every flag also reads an environment variable; every default is the library's
//! own constant, shown in `--help`).

use std::time::Duration;

use orderflow_aggregator::{defaults as agg, AggregatorConfig};
use orderflow_enricher::EnricherConfig;
use orderflow_runtime::kafka::{KafkaConfig, DEFAULT_BROKERS, DEFAULT_CONNECT_TIMEOUT};
use orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE;
use orderflow_runtime::topics::{Topics, DEFAULT_PARTITIONS, DEFAULT_PREFIX, DEFAULT_REPLICATION_FACTOR};

/// Where the brokers are and any extra librdkafka settings. `Debug` shows what the
/// settings become (a [`KafkaConfig`]), with every secret redacted.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = DEFAULT_BROKERS, global = true)]
    pub brokers: String,
    /// Extra librdkafka setting, `KEY=VALUE`; repeat the flag for several. The value is
    /// everything after the first `=`, unchanged (`debug=broker,topic` keeps its comma).
    /// Applied last, so it overrides orderflow's defaults. In ORDERFLOW_KAFKA_OPTIONS,
    /// one `KEY=VALUE` a line (a value cannot hold a newline).
    #[arg(long = "kafka-option", env = "ORDERFLOW_KAFKA_OPTIONS", value_delimiter = '\n', hide_env_values = true, global = true)]
    pub options: Vec<String>,
    /// How long to wait for the brokers at start before giving up.
    #[arg(long, env = "ORDERFLOW_CONNECT_TIMEOUT", default_value_t = DEFAULT_CONNECT_TIMEOUT.into(), global = true)]
    pub connect_timeout: humantime::Duration,
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        KafkaConfig::from(self.clone()).fmt(f)
    }
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

    fn parse_kafka(args: &[&str]) -> KafkaConfig {
        Parse::<KafkaArgs>::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap().args.into()
    }

    #[test]
    fn kafka_option_values_pass_unchanged() {
        let kafka = parse_kafka(&["--kafka-option", "debug=broker,topic", "--kafka-option", "sasl.password=pa,ss=w,rd"]);
        assert_eq!(kafka.options, ["debug=broker,topic", "sasl.password=pa,ss=w,rd"]);
        let c = kafka.config(&[]).unwrap();
        assert_eq!(c.get("debug"), Some("broker,topic"));
        assert_eq!(c.get("sasl.password"), Some("pa,ss=w,rd"));
        // The separator of ORDERFLOW_KAFKA_OPTIONS (clap splits the flag's values alike).
        assert_eq!(parse_kafka(&["--kafka-option", "debug=broker,topic\nclient.id=a,b"]).options, ["debug=broker,topic", "client.id=a,b"]);
        let shown = format!("{:?}", Parse::<KafkaArgs>::try_parse_from(["t", "--kafka-option", "sasl.password=pa,ss"]).unwrap().args);
        assert!(!shown.contains("pa,ss"), "{shown}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        crate::Cli::command().debug_assert();
    }
}
