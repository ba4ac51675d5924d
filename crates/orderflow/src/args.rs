//! The command line's flags for the library crates' settings, and their conversion
//! (every flag also reads an environment variable; every default is the library's
//! own constant, shown in `--help`).

use std::path::PathBuf;
use std::time::Duration;

use orderflow_aggregator::{defaults as agg, AggregatorConfig};
use orderflow_enricher::EnricherConfig;
use orderflow_runtime::kafka::{
    KafkaConfig, SaslMechanism, Secret, Security, SecurityProtocol, DEFAULT_BROKERS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SASL_MECHANISM,
    DEFAULT_SECURITY_PROTOCOL,
};
use orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE;
use orderflow_runtime::topics::{Topics, DEFAULT_PARTITIONS, DEFAULT_PREFIX, DEFAULT_REPLICATION_FACTOR};

/// Where the brokers are, TLS and SASL, and any extra librdkafka settings. `Debug`
/// shows what the settings become (a [`KafkaConfig`]), with every secret redacted.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    #[arg(long, env = "ORDERFLOW_BROKERS", default_value = DEFAULT_BROKERS, global = true)]
    pub brokers: String,
    /// Extra librdkafka setting, `KEY=VALUE`; repeat the flag for several. The value is
    /// everything after the first `=`, unchanged (`debug=broker,topic` keeps its comma).
    /// Applied last, so it overrides orderflow's defaults and the TLS/SASL flags. In
    /// ORDERFLOW_KAFKA_OPTIONS, one `KEY=VALUE` a line (a value cannot hold a newline;
    /// give PEM material as files with the --ssl-* flags).
    #[arg(long = "kafka-option", env = "ORDERFLOW_KAFKA_OPTIONS", value_delimiter = '\n', hide_env_values = true, global = true)]
    pub options: Vec<String>,
    /// How long to wait for the brokers at start before giving up.
    #[arg(long, env = "ORDERFLOW_CONNECT_TIMEOUT", default_value_t = DEFAULT_CONNECT_TIMEOUT.into(), global = true)]
    pub connect_timeout: humantime::Duration,
    /// How to talk to the brokers: `ssl` is TLS, `sasl_ssl` a SASL login over TLS,
    /// `sasl_plaintext` a SASL login without encryption.
    #[arg(long, env = "ORDERFLOW_SECURITY_PROTOCOL", default_value_t = DEFAULT_SECURITY_PROTOCOL, ignore_case = true,
          value_parser = choice(&SecurityProtocol::ALL, SecurityProtocol::name), global = true)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates (with
    /// `ssl`/`sasl_ssl`; default: the system's CA store).
    #[arg(long, env = "ORDERFLOW_SSL_CA_FILE", global = true)]
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that ask for one (mutual TLS;
    /// needs --ssl-key-file).
    #[arg(long, env = "ORDERFLOW_SSL_CERT_FILE", requires = "ssl_key_file", global = true)]
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM file of the private key of --ssl-cert-file.
    #[arg(long, env = "ORDERFLOW_SSL_KEY_FILE", requires = "ssl_cert_file", global = true)]
    pub ssl_key_file: Option<PathBuf>,
    /// Password of an encrypted --ssl-key-file. Prefer the environment variable or
    /// --ssl-key-password-file: a flag's value shows in the process list.
    #[arg(long, env = "ORDERFLOW_SSL_KEY_PASSWORD", hide_env_values = true, value_parser = secret,
          conflicts_with = "ssl_key_password_file", global = true)]
    pub ssl_key_password: Option<Secret>,
    /// File holding the password of --ssl-key-file (one trailing newline ignored).
    #[arg(long, env = "ORDERFLOW_SSL_KEY_PASSWORD_FILE", global = true)]
    pub ssl_key_password_file: Option<PathBuf>,
    /// SASL mechanism (with `sasl_ssl`/`sasl_plaintext`).
    #[arg(long, env = "ORDERFLOW_SASL_MECHANISM", default_value_t = DEFAULT_SASL_MECHANISM, ignore_case = true,
          value_parser = choice(&SaslMechanism::ALL, SaslMechanism::name), global = true)]
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name.
    #[arg(long, env = "ORDERFLOW_SASL_USERNAME", global = true)]
    pub sasl_username: Option<String>,
    /// SASL password. Prefer the environment variable or --sasl-password-file: a flag's
    /// value shows in the process list.
    #[arg(long, env = "ORDERFLOW_SASL_PASSWORD", hide_env_values = true, value_parser = secret,
          conflicts_with = "sasl_password_file", global = true)]
    pub sasl_password: Option<Secret>,
    /// File holding the SASL password (one trailing newline ignored).
    #[arg(long, env = "ORDERFLOW_SASL_PASSWORD_FILE", global = true)]
    pub sasl_password_file: Option<PathBuf>,
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        KafkaConfig::from(self.clone()).fmt(f)
    }
}

/// A flag taking one of `all`, by `name` (case-insensitive).
fn choice<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(all.iter().map(|v| name(*v)))
        .map(move |s| *all.iter().find(|v| name(**v).eq_ignore_ascii_case(&s)).expect("one of the possible values"))
}

/// A password flag's value; it is never echoed back (not even in parse errors).
fn secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::Value(s.to_owned()))
}

impl From<KafkaArgs> for KafkaConfig {
    fn from(a: KafkaArgs) -> Self {
        Self {
            brokers: a.brokers,
            options: a.options,
            connect_timeout: a.connect_timeout.into(),
            security: Security {
                protocol: a.security_protocol,
                ca_file: a.ssl_ca_file,
                cert_file: a.ssl_cert_file,
                key_file: a.ssl_key_file,
                key_password: a.ssl_key_password.or(a.ssl_key_password_file.map(Secret::File)),
                sasl_mechanism: a.sasl_mechanism,
                sasl_username: a.sasl_username,
                sasl_password: a.sasl_password.or(a.sasl_password_file.map(Secret::File)),
            },
        }
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

/// What every event is held to: the enricher's rules, which ingest applies too
/// before it publishes (the same flags for both).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// How far ahead of this service's clock an event time may be; events dated further
    /// ahead (a storefront with a wrong clock) are refused as `event_time_in_future` (the enricher
    /// dead-letters them, ingest rejects them).
    #[arg(long, env = "ORDERFLOW_MAX_EVENT_TIME_SKEW",
          default_value_t = Duration::from_millis(orderflow_core::validate::DEFAULT_MAX_FUTURE_SKEW_MS as u64).into())]
    pub max_event_time_skew: humantime::Duration,
    /// The largest amount_minor accepted; larger ones are refused as `amount_too_large`.
    #[arg(long, env = "ORDERFLOW_MAX_AMOUNT_MINOR", default_value_t = orderflow_core::validate::DEFAULT_MAX_AMOUNT_MINOR,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub max_amount_minor: i64,
    /// The largest orders-topic record accepted, in bytes; larger ones are refused as
    /// `event_too_large` (a dead letter keeps their first 64 KiB).
    #[arg(long, env = "ORDERFLOW_MAX_EVENT_BYTES", default_value_t = orderflow_enricher::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Currency codes to accept besides ISO 4217's (comma-separated, three upper-case
    /// letters each); events in any other currency are refused as `unknown_currency`.
    #[arg(long, env = "ORDERFLOW_EXTRA_CURRENCIES", value_delimiter = ',')]
    pub extra_currencies: Vec<String>,
}

/// Enricher settings.
#[derive(Debug, Clone, clap::Args)]
pub struct EnricherArgs {
    /// Most records enriched per batch (offsets are stored per batch).
    #[arg(long, env = "ORDERFLOW_ENRICHER_BATCH", default_value_t = orderflow_enricher::DEFAULT_BATCH)]
    pub batch: usize,
    /// Most outputs in flight: the enricher reads and enriches the next batches while
    /// earlier ones are being delivered; input offsets are still committed only once
    /// every output before them is on the broker.
    #[arg(long, env = "ORDERFLOW_ENRICHER_MAX_IN_FLIGHT", default_value_t = orderflow_enricher::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl From<EnricherArgs> for EnricherConfig {
    fn from(a: EnricherArgs) -> Self {
        Self {
            batch: a.batch,
            max_in_flight: a.max_in_flight,
            shutdown_grace: a.shutdown.shutdown_grace.into(),
            max_event_time_skew: a.limits.max_event_time_skew.into(),
            max_amount_minor: a.limits.max_amount_minor,
            max_event_bytes: a.limits.max_event_bytes,
            extra_currencies: a.limits.extra_currencies,
        }
    }
}

/// HTTP ingest settings.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Where to serve the HTTP API (`POST /v1/events`; HTTP/1.1 and HTTP/2).
    #[arg(long, env = "ORDERFLOW_INGEST_LISTEN", default_value = orderflow_ingest::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// The tokens file: one `STOREFRONT_ID SHA256_HEX_OF_TOKEN` a line (`orderflow ingest
    /// hash-token` prints a hash). Required; reloaded on SIGHUP and when it changes.
    #[arg(long, env = "ORDERFLOW_INGEST_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// The largest request body in bytes, as sent and once decompressed (413 beyond).
    #[arg(long, env = "ORDERFLOW_INGEST_MAX_BODY_BYTES", default_value_t = orderflow_ingest::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The most events in one request (413 beyond).
    #[arg(long, env = "ORDERFLOW_INGEST_MAX_BATCH_EVENTS", default_value_t = orderflow_ingest::DEFAULT_MAX_BATCH_EVENTS)]
    pub max_batch_events: usize,
    /// Events per second per storefront (429 with Retry-After beyond); 0: no limit.
    #[arg(long, env = "ORDERFLOW_INGEST_RATE_LIMIT", default_value_t = orderflow_ingest::DEFAULT_RATE_LIMIT)]
    pub rate_limit: f64,
    /// Events a storefront may send at once above its rate; at least --max-batch-events.
    #[arg(long, env = "ORDERFLOW_INGEST_RATE_BURST", default_value_t = orderflow_ingest::DEFAULT_RATE_BURST)]
    pub rate_burst: u64,
    /// Requests answered at once; more are answered 503 with Retry-After.
    #[arg(long, env = "ORDERFLOW_INGEST_MAX_IN_FLIGHT", default_value_t = orderflow_ingest::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// How long a request waits for room in the producer's queue and for the broker's
    /// acknowledgements before it is answered 503 (nothing of it acknowledged).
    #[arg(long, env = "ORDERFLOW_INGEST_BROKER_DEADLINE", default_value_t = orderflow_ingest::DEFAULT_BROKER_DEADLINE.into())]
    pub broker_deadline: humantime::Duration,
    #[command(flatten)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl From<IngestArgs> for orderflow_ingest::IngestConfig {
    fn from(a: IngestArgs) -> Self {
        Self {
            listen: a.listen,
            tokens_file: a.tokens_file,
            max_body_bytes: a.max_body_bytes,
            max_batch_events: a.max_batch_events,
            rate_limit: (a.rate_limit > 0.0).then_some(a.rate_limit),
            rate_burst: a.rate_burst,
            max_in_flight: a.max_in_flight,
            broker_deadline: a.broker_deadline.into(),
            shutdown_grace: a.shutdown.shutdown_grace.into(),
            max_event_time_skew: a.limits.max_event_time_skew.into(),
            max_amount_minor: a.limits.max_amount_minor,
            max_event_bytes: a.limits.max_event_bytes,
            extra_currencies: a.limits.extra_currencies,
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
    /// After this long without input, open windows close (see docs/semantics.md#idle-close).
    #[arg(long, env = "ORDERFLOW_IDLE_CLOSE", default_value_t = agg::IDLE_CLOSE.into())]
    pub idle_close: humantime::Duration,
    /// How long (event time) event ids are remembered for dedup; at least window +
    /// lateness, which is the default.
    #[arg(long, env = "ORDERFLOW_DEDUP_HORIZON")]
    pub dedup_horizon: Option<humantime::Duration>,
    /// Most event ids remembered for dedup per input partition (24-48 bytes of memory
    /// and 26 bytes of checkpoint each). While a partition holds this many ids within
    /// the horizon, events with new ids are dead-lettered as `dedup_memory_full`
    /// (replay them later); the default holds 15,000 events/s per partition.
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
    /// How often the active merger writes its whole state, with the partial-totals
    /// offset it covers, to the merger checkpoint topic (and at shutdown): a merger
    /// taking over reads only the partial totals after it.
    #[arg(long, env = "ORDERFLOW_MERGER_CHECKPOINT_INTERVAL", default_value_t = agg::MERGER_CHECKPOINT_INTERVAL.into())]
    pub merger_checkpoint_interval: humantime::Duration,
    /// Never checkpoint nor commit: a restarted or moved partition re-processes its
    /// whole log. Still exact, but restarts get slower as the log grows; meant for
    /// measuring what checkpoints cost.
    #[arg(long, env = "ORDERFLOW_NO_CHECKPOINTS")]
    pub no_checkpoints: bool,
    /// Most records processed per batch.
    #[arg(long, env = "ORDERFLOW_AGGREGATOR_BATCH", default_value_t = agg::BATCH)]
    pub batch: usize,
    /// Threads (each with its own consumer) that reread the input a take-over's
    /// restored partitions rebuild their dedup memory from, the partitions shared
    /// among them; 0: one per core.
    #[arg(long, env = "ORDERFLOW_RESTORE_THREADS", default_value_t = 0)]
    pub restore_threads: usize,
    /// How often each input partition's open windows are snapshotted for the
    /// provisional figures (`orderflow_open_window_*`); 0 disables them.
    #[arg(long, env = "ORDERFLOW_PROVISIONAL_INTERVAL", default_value_t = agg::PROVISIONAL_INTERVAL.into())]
    pub provisional_interval: humantime::Duration,
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
            merger_checkpoint_interval: a.merger_checkpoint_interval.into(),
            batch: a.batch,
            restore_threads: a.restore_threads,
            provisional_interval: a.provisional_interval.into(),
            shutdown_grace: a.shutdown.shutdown_grace.into(),
            check_topic_settings: true,
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
        assert_eq!(orderflow_ingest::IngestConfig::from(defaults::<IngestArgs>()), orderflow_ingest::IngestConfig::default());
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
    }

    #[test]
    fn security_flags_fill_in_the_security_settings() {
        let kafka = parse_kafka(&[
            "--security-protocol",
            "SASL_SSL",
            "--ssl-ca-file",
            "ca.pem",
            "--sasl-mechanism",
            "scram-sha-256",
            "--sasl-username",
            "alice",
            "--sasl-password-file",
            "/run/secrets/kafka",
        ]);
        let s = &kafka.security;
        assert_eq!((s.protocol, s.sasl_mechanism), (SecurityProtocol::SaslSsl, SaslMechanism::ScramSha256));
        assert_eq!(s.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(s.sasl_username.as_deref(), Some("alice"));
        assert_eq!(s.sasl_password, Some(Secret::File("/run/secrets/kafka".into())));

        let kafka =
            parse_kafka(&["--security-protocol", "ssl", "--ssl-cert-file", "c.pem", "--ssl-key-file", "c.key", "--ssl-key-password", "k"]);
        assert_eq!(kafka.security.key_password, Some(Secret::Value("k".into())));
        assert!(Parse::<KafkaArgs>::try_parse_from(["t", "--ssl-cert-file", "c.pem"]).is_err(), "a certificate needs its key");
        assert!(Parse::<KafkaArgs>::try_parse_from(["t", "--security-protocol", "tls"]).is_err());
    }

    #[test]
    fn passwords_are_never_echoed() {
        let args = Parse::<KafkaArgs>::try_parse_from([
            "t",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "hunter2",
            "--ssl-cert-file",
            "c.pem",
            "--ssl-key-file",
            "c.key",
            "--ssl-key-password",
            "hunter3",
            "--kafka-option",
            "sasl.password=hunter4",
        ])
        .unwrap()
        .args;
        let shown = format!("{args:?}");
        assert!(shown.contains("alice") && !shown.contains("hunter"), "{shown}");

        let e = Parse::<KafkaArgs>::try_parse_from(["t", "--sasl-password", "hunter5", "--sasl-password-file", "pw"]).unwrap_err();
        assert!(!e.to_string().contains("hunter5"), "{e}");

        // `--help` shows that these variables are set, never their values.
        use clap::CommandFactory as _;
        let cli = crate::Cli::command();
        for id in ["sasl_password", "ssl_key_password", "options"] {
            let arg = cli.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert!(arg.is_hide_env_values_set(), "--help would show the value of {id}'s variable");
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        crate::Cli::command().debug_assert();
    }
}
