//! Kafka client configuration shared by every subcommand: where the brokers are, how to
//! talk to them securely (TLS, SASL), and librdkafka settings passed through.
//!
//! Secrets (passwords) never appear in `Debug` output, in errors or in logs: they are
//! [`Secret`]s, and the values of librdkafka options that hold one are redacted too.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::{Error, Result};

/// Where the brokers are, how to reach them securely and any extra librdkafka settings.
/// The command line's flags (`--brokers`, `--security-protocol`, `--ssl-*`, `--sasl-*`,
/// `--kafka-option`, `--connect-timeout`, each with its `ORDERFLOW_*` environment
/// variable) fill it in; a library user builds it with [`KafkaConfig::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    pub brokers: String,
    /// Extra librdkafka settings, `KEY=VALUE`, applied last (they override orderflow's
    /// defaults and [`KafkaConfig::security`]). The value is everything after the first
    /// `=`, unchanged (commas included).
    pub options: Vec<String>,
    /// How long a service waits for the brokers at start before it gives up and says so.
    pub connect_timeout: Duration,
    /// TLS and SASL.
    pub security: Security,
}

/// Bootstrap servers when none are given.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// How long a service waits for the brokers at start, when not told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How clients talk to the brokers when not told otherwise.
pub const DEFAULT_SECURITY_PROTOCOL: SecurityProtocol = SecurityProtocol::Plaintext;
/// The SASL mechanism when not told otherwise (used only with a `sasl_*` protocol).
pub const DEFAULT_SASL_MECHANISM: SaslMechanism = SaslMechanism::ScramSha512;

/// librdkafka settings whose values are secrets, besides any whose name contains
/// `password` or `secret`: redacted wherever options are shown.
const SECRET_OPTIONS: &[&str] = &["ssl.key.pem", "sasl.oauthbearer.config", "sasl.jaas.config", "ssl_key"];

/// Whether the value of librdkafka setting `key` is a secret.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || SECRET_OPTIONS.contains(&key.as_str())
}

/// How a client talks to the brokers: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// Neither encryption nor authentication.
    Plaintext,
    /// TLS: the brokers' certificates are verified (and their host names checked); the
    /// client presents a certificate of its own when given one.
    Ssl,
    /// SASL login without encryption (PLAIN then sends the password in clear).
    SaslPlaintext,
    /// SASL login over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in the order the command line lists them.
    pub const ALL: [Self; 4] = [Self::Plaintext, Self::Ssl, Self::SaslPlaintext, Self::SaslSsl];

    /// The name librdkafka and the command line use (`sasl_ssl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections are encrypted with TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client logs in with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a client proves who it is over SASL: librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password itself is sent (use it over TLS only).
    Plain,
    /// Salted challenge-response; the password never crosses the network.
    ScramSha256,
    /// As [`SaslMechanism::ScramSha256`], with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// Every mechanism, in the order the command line lists them.
    pub const ALL: [Self; 3] = [Self::Plain, Self::ScramSha256, Self::ScramSha512];

    /// The name librdkafka and the command line use (`SCRAM-SHA-512`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A password, given as text or as a file read each time a client is built (one
/// trailing newline dropped). `Debug` shows a file's path, never a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Value(String),
    /// A file holding the password.
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Secret(<redacted>)"),
            Self::File(path) => f.debug_tuple("Secret::File").field(path).finish(),
        }
    }
}

impl Secret {
    /// The password; `what` names it in the error when its file cannot be read.
    pub fn reveal(&self, what: &'static str) -> Result<String> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::File(path) => {
                let mut text = std::fs::read_to_string(path).map_err(|source| Error::SecretFile { what, path: path.clone(), source })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(text)
            }
        }
    }
}

/// TLS and SASL settings. The defaults are plaintext with nothing else set; the TLS
/// files are used only with a TLS protocol and the SASL ones only with a SASL protocol,
/// and setting one for a protocol that does not use it is an error (it would otherwise
/// be ignored silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// Plaintext, TLS, SASL or SASL over TLS.
    pub protocol: SecurityProtocol,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates. Without
    /// it the system's CA store is used (librdkafka probes the usual locations).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client's certificate, for brokers that ask for one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted private key.
    pub key_password: Option<Secret>,
    /// SASL mechanism.
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<Secret>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            protocol: DEFAULT_SECURITY_PROTOCOL,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            sasl_mechanism: DEFAULT_SASL_MECHANISM,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

impl Security {
    /// Checks that the settings fit together, naming the flags to fix when they do not.
    pub fn validate(&self) -> Result<()> {
        let p = self.protocol;
        let tls_set = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some() || self.key_password.is_some();
        if tls_set && !p.tls() {
            return Err(Error::Security(
                "--ssl-ca-file, --ssl-cert-file, --ssl-key-file and the key password need --security-protocol ssl or sasl_ssl",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::Security("--ssl-cert-file and --ssl-key-file go together: give both or neither"));
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            return Err(Error::Security("a key password needs --ssl-key-file"));
        }
        let sasl_set = self.sasl_username.is_some() || self.sasl_password.is_some();
        if sasl_set && !p.sasl() {
            return Err(Error::Security("--sasl-username and the SASL password need --security-protocol sasl_ssl or sasl_plaintext"));
        }
        if p.sasl() && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return Err(Error::Security("SASL needs --sasl-username and a password (--sasl-password-file, or ORDERFLOW_SASL_PASSWORD)"));
        }
        Ok(())
    }

    /// Sets librdkafka's `security.protocol`, `ssl.*` and `sasl.*` settings.
    fn apply(&self, c: &mut ClientConfig) -> Result<()> {
        self.validate()?;
        c.set("security.protocol", self.protocol.name());
        if self.protocol.tls() {
            let ca = self.ca_file.as_ref().map_or_else(|| "probe".to_owned(), |p| p.display().to_string());
            c.set("ssl.ca.location", ca);
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                c.set("ssl.certificate.location", cert.display().to_string());
                c.set("ssl.key.location", key.display().to_string());
            }
            if let Some(password) = &self.key_password {
                c.set("ssl.key.password", password.reveal("TLS key password")?);
            }
        }
        if self.protocol.sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.name());
            if let Some(user) = &self.sasl_username {
                c.set("sasl.username", user);
            }
            if let Some(password) = &self.sasl_password {
                c.set("sasl.password", password.reveal("SASL password")?);
            }
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BROKERS)
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self.options.iter().map(|o| redact_option(o)).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("connect_timeout", &self.connect_timeout)
            .field("security", &self.security)
            .finish()
    }
}

/// An option as it may be shown: `KEY=VALUE`, with the value replaced by `<redacted>`
/// when it is a secret; an option without `=` shows only its leading name characters.
pub fn redact_option(opt: &str) -> String {
    match opt.split_once('=') {
        Some((k, _)) if is_secret_option(k) => format!("{k}=<redacted>"),
        Some(_) => opt.to_owned(),
        None => {
            let name_len = opt.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(opt.len());
            if name_len == opt.len() {
                opt.to_owned()
            } else {
                format!("{}<redacted>", &opt[..name_len])
            }
        }
    }
}

/// The settings of every orderflow producer, batching over `linger_ms`: idempotent
/// (acks=all, no reordering on retries), a deep local queue, and records up to 64 MiB
/// (checkpoints).
pub const fn producer_settings(linger_ms: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("enable.idempotence", "true"),
        ("linger.ms", linger_ms),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "500000"),
        ("message.max.bytes", "67108864"),
    ]
}

/// [`producer_settings`] over 5 ms ([`KafkaConfig::producer_for`]): ingest and the
/// producer CLI, which answer storefronts per record.
pub const PRODUCER_SETTINGS: [(&str, &str); 5] = producer_settings("5");

/// [`producer_settings`] over 50 ms for the pipeline's stages (enricher, aggregator,
/// merger; [`KafkaConfig::stage_producer`]). Nothing waits on a stage's single record
/// (a window's total waits for the window to close), but every reader pays per batch:
/// at 8,500 events/s per partition, 5 ms made batches of ~40 records, and a restore
/// re-reading a dedup horizon of them from Nisshi took 1.43 s per partition, 0.93 s
/// (median of four runs) with 50 ms (docs/measurements/2026-12-02-restore-speed.md). The load test's broker
/// baseline produces with these, so that it measures the same client path.
pub const STAGE_PRODUCER_SETTINGS: [(&str, &str); 5] = producer_settings("50");

impl KafkaConfig {
    /// Settings for a given bootstrap address, plaintext and no extra options.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), options: Vec::new(), connect_timeout: DEFAULT_CONNECT_TIMEOUT, security: Security::default() }
    }

    /// A base client configuration: the brokers, [`Security`], then `defaults`, then
    /// the user's options (blank ones skipped).
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut c)?;
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for opt in self.options.iter().filter(|o| !o.trim().is_empty()) {
            let (k, v) = opt.split_once('=').ok_or_else(|| Error::BadOption(redact_option(opt)))?;
            c.set(k.trim(), v);
        }
        Ok(c)
    }

    /// Fails when the brokers cannot be used, within `connect_timeout`:
    /// [`Error::Tls`] as soon as a TLS handshake fails (an untrusted certificate, say),
    /// [`Error::Authentication`] as soon as the SASL login is refused, and
    /// [`Error::Unreachable`], naming the brokers and how to change them, when no broker
    /// answers a metadata request in time. Services call it once at start, after
    /// checking their local inputs.
    pub fn check_reachable(&self) -> Result<()> {
        let probe = ConnectProbe::default();
        let client: BaseConsumer<ConnectProbe> = self.config(&[])?.create_with_context(probe.clone())?;
        let started = Instant::now();
        // Short attempts first, so that a refusal is reported at once; longer ones
        // after, so that a slow link still gets its answer in time.
        let mut attempt = Duration::from_millis(250);
        loop {
            let left = self.connect_timeout.saturating_sub(started.elapsed());
            let error = match client.fetch_metadata(None, left.min(attempt)) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            attempt = (attempt * 2).min(Duration::from_secs(2));
            // Serves what librdkafka queued meanwhile (log lines, and errors such as a
            // failed TLS handshake or SASL login, which reach the probe): `poll` returns
            // `None` once it has waited its time with nothing but log lines to serve.
            for _ in 0..1000 {
                if client.poll(Duration::from_millis(20)).is_none() {
                    break;
                }
            }
            let last = probe.last();
            match last {
                Some((ConnectFailure::Tls, reason)) => return Err(Error::Tls { brokers: self.brokers.clone(), reason }),
                Some((ConnectFailure::Authentication, reason)) => {
                    return Err(Error::Authentication {
                        brokers: self.brokers.clone(),
                        username: self.security.sasl_username.clone().unwrap_or_default(),
                        reason,
                    })
                }
                Some((ConnectFailure::Other, _)) | None if started.elapsed() < self.connect_timeout => {}
                last => {
                    let last = last.map(|(_, reason)| format!("; last broker error: {reason}")).unwrap_or_default();
                    return Err(Error::Unreachable {
                        brokers: self.brokers.clone(),
                        waited: self.connect_timeout,
                        cause: format!("{}{last}", crate::kafka_cause(&error)),
                    });
                }
            }
        }
    }

    /// An idempotent producer: retries never duplicate or reorder a partition's records.
    /// Its metrics carry `service="client"`; services use [`Self::producer_for`].
    pub fn producer(&self) -> Result<Producer> {
        self.producer_for("client")
    }

    /// [`Self::producer`] for `service` (the `service` label of its queue depth, the
    /// records it writes and its errors).
    pub fn producer_for(&self, service: &'static str) -> Result<Producer> {
        self.producer_with(service, &PRODUCER_SETTINGS)
    }

    /// [`Self::producer_for`] a stage of the pipeline: [`STAGE_PRODUCER_SETTINGS`].
    pub fn stage_producer(&self, service: &'static str) -> Result<Producer> {
        self.producer_with(service, &STAGE_PRODUCER_SETTINGS)
    }

    fn producer_with(&self, service: &'static str, base: &[(&str, &str)]) -> Result<Producer> {
        let mut settings = base.to_vec();
        // The queue depth, through the context's statistics callback.
        settings.push(("statistics.interval.ms", "1000"));
        Ok(self.config(&settings)?.create_with_context(ClientMetrics::new(service)).map(|inner| Producer { inner, service })?)
    }

    /// A consumer in `group` that stores offsets only when told to (at-least-once).
    pub fn group_consumer<C: rdkafka::consumer::ConsumerContext + 'static, T: rdkafka::config::FromClientConfigAndContext<C>>(
        &self,
        group: &str,
        context: C,
    ) -> Result<T> {
        Ok(self
            .config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("fetch.max.bytes", "67108864"),
                ("max.partition.fetch.bytes", "67108864"),
                ("receive.message.max.bytes", "134217728"),
                // A fetch that overfills the local queue (over 100,000 records: one
                // 64 MiB fetch of a backlog holds several times that) would hold the
                // partition back for librdkafka's default second: on a backlog, the
                // loop ran dry waiting for it.
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
                // Consumer lag per partition, through the context's statistics callback.
                ("statistics.interval.ms", "1000"),
            ])?
            .create_with_context(context)?)
    }

    /// A consumer outside any group, for reading whole topics by assignment.
    pub fn reader(&self) -> Result<BaseConsumer> {
        Ok(self
            .config(&[
                ("group.id", "orderflow-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.max.bytes", "67108864"),
                ("max.partition.fetch.bytes", "67108864"),
                ("receive.message.max.bytes", "134217728"),
                // As for group consumers: reading 200,000 merchants stalled a second
                // per 100,000 records queued.
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ])?
            .create()?)
    }
}

/// The producer every stage writes with (through an [`crate::outbox::Outbox`]): a
/// librdkafka producer (it derefs to one) that knows its service, the `service` label of
/// its metrics.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<ClientMetrics>,
    service: &'static str,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Producer {
    /// The `service` label of its metrics.
    pub fn service(&self) -> &'static str {
        self.service
    }
}

impl std::ops::Deref for Producer {
    type Target = FutureProducer<ClientMetrics>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// The name of a Kafka error's librdkafka code (`BrokerTransportFailure`,
/// `MessageSizeTooLarge`, ...), or `other` for an error without one: a closed set, the
/// `code` label of [`crate::telemetry::KAFKA_ERRORS`].
pub fn error_code_name(e: &KafkaError) -> String {
    e.rdkafka_error_code().map_or_else(|| "other".to_owned(), |c| format!("{c:?}"))
}

/// Counts a Kafka client error of `service` in [`crate::telemetry::KAFKA_ERRORS`].
pub fn count_error(service: &'static str, e: &KafkaError) {
    metrics::counter!(crate::telemetry::KAFKA_ERRORS, "service" => service, "code" => error_code_name(e)).increment(1);
}

/// A producer's context: logs and counts librdkafka's errors and reports the
/// producer's queue depth (from its statistics, every second), under its service.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    service: &'static str,
}

impl ClientMetrics {
    /// The context of `service`'s producer.
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl ClientContext for ClientMetrics {
    fn stats(&self, statistics: rdkafka::Statistics) {
        metrics::gauge!(crate::telemetry::PRODUCER_QUEUE, "service" => self.service).set(statistics.msg_cnt as f64);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        count_error(self.service, &error);
        tracing::warn!(service = self.service, %error, reason, "Kafka client error.");
    }
}

/// How long librdkafka waits before fetching a partition again when its local queue is
/// over its bounds (`queued.min.messages`, `queued.max.messages.kbytes`); librdkafka's
/// default is 1000 ms.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Partition count of `topic`, or [`Error::MissingTopic`].
pub fn partition_count<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(consumer: &C, topic: &str) -> Result<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        _ => Err(Error::MissingTopic(topic.to_owned())),
    }
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    pub partition: i32,
    /// The partition's low and high watermarks.
    pub low: i64,
    pub high: i64,
    /// The group's committed offset (the next record it will read), if any.
    pub committed: Option<i64>,
}

/// Watermarks of every partition of `topic` and the offsets committed by `group`'s
/// `group.id`; [`Error::MissingTopic`] when the topic does not exist.
pub fn group_positions(group: &BaseConsumer, topic: &str) -> Result<Vec<GroupPosition>> {
    let partitions = partition_count(group, topic)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = group.committed_offsets(tpl, Duration::from_secs(5))?;
    (0..partitions)
        .map(|p| {
            let (low, high) = group.fetch_watermarks(topic, p, Duration::from_secs(5))?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            };
            Ok(GroupPosition { partition: p, low, high, committed })
        })
        .collect()
}

/// Reads every partition of a topic from the beginning, outside any consumer group:
/// for reference tables (merchants), checkpoints and inspection commands.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Assigns every partition of `topic` from its beginning.
    pub fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let consumer = kafka.reader()?;
        let partitions = partition_count(&consumer, topic)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, topic: topic.to_owned(), partitions })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Calls `f` on every record up to the end each partition had when called.
    /// Transient errors (a broker away for a moment) are logged and waited out; a
    /// topic that cannot be read any more fails the read (see [`is_fatal_read`]).
    pub fn read_to_end(&self, mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) -> Result<u64> {
        use rdkafka::Message as _;
        let mut remaining = std::collections::HashMap::new();
        for p in 0..self.partitions {
            let (low, high) = self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high > low {
                remaining.insert(p, high);
            }
        }
        let mut n = 0;
        while !remaining.is_empty() {
            if let Some(m) = self.poll(Duration::from_millis(200))? {
                n += 1;
                f(&m);
                if remaining.get(&m.partition()).is_some_and(|high| m.offset() + 1 >= *high) {
                    remaining.remove(&m.partition());
                }
            }
        }
        Ok(n)
    }

    /// The next record, if one arrives within `timeout` (for following a topic).
    /// Transient errors are logged and read as "nothing yet"; only a topic that cannot
    /// be read any more is an error (see [`is_fatal_read`]).
    pub fn poll(&self, timeout: Duration) -> Result<Option<rdkafka::message::BorrowedMessage<'_>>> {
        match self.consumer.poll(timeout) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => Ok(None),
            Some(Err(e)) if is_fatal_read(&e) => Err(e.into()),
            Some(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "Transient read error; retrying.");
                Ok(None)
            }
            Some(Ok(m)) => Ok(Some(m)),
        }
    }
}

/// A header value of a record, as text.
pub fn header<'a>(m: &'a impl rdkafka::Message, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers as _;
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// Whether a consumer error means the topic cannot be read at all any more (it was
/// deleted, or access to it was revoked), as opposed to a broker being away for a
/// while, which librdkafka recovers from by itself. Followers stop on the former.
pub fn is_fatal_read(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::TopicAuthorizationFailed | C::GroupAuthorizationFailed | C::Fatal)
    )
}

/// A group consumer's context: records the ids of partitions a rebalance takes away,
/// for loops that keep per-partition state (rebalancing itself is librdkafka's default,
/// cooperative when the assignor is); counts rebalances; says whether the consumer has
/// joined its group; and turns librdkafka's statistics (every second) into the
/// consumer lag per partition.
#[derive(Debug, Clone)]
pub struct RevocationLog {
    service: &'static str,
    revoked: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    joined: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for RevocationLog {
    fn default() -> Self {
        Self::new("consumer")
    }
}

impl RevocationLog {
    /// The context of `service`'s consumer (the `service` label of its metrics).
    pub fn new(service: &'static str) -> Self {
        Self { service, revoked: Default::default(), joined: Default::default() }
    }

    /// Partitions revoked since the last call.
    pub fn take(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("revocation log poisoned"))
    }

    /// Whether the consumer has been given its (possibly empty) share of partitions.
    pub fn joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl rdkafka::client::ClientContext for RevocationLog {
    /// Consumer lag per partition; a partition this consumer does not fetch reports 0,
    /// so that a sum over instances counts each partition once.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, partition) in t.partitions.iter().filter(|(p, _)| **p >= 0) {
                let lag = if partition.fetch_state == "active" { partition.consumer_lag.max(0) } else { 0 };
                let labels = [("service", self.service.to_owned()), ("topic", topic.clone()), ("partition", p.to_string())];
                metrics::gauge!(crate::telemetry::CONSUMER_LAG, &labels).set(lag as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        count_error(self.service, &error);
        tracing::warn!(service = self.service, %error, reason, "Kafka client error.");
    }
}

impl rdkafka::consumer::ConsumerContext for RevocationLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            metrics::counter!(crate::telemetry::REBALANCES, "service" => self.service, "kind" => "revoke").increment(1);
            let mut r = self.revoked.lock().expect("revocation log poisoned");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(partitions = ?r, "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            metrics::counter!(crate::telemetry::REBALANCES, "service" => self.service, "kind" => "assign").increment(1);
            self.joined.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Bytes of `records` as read from the broker's log: each one's key plus its payload
/// (headers and framing not counted).
pub fn record_bytes<M: rdkafka::Message>(records: &[M]) -> u64 {
    records.iter().map(|m| (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64).sum()
}

/// Waits for the first record (or cancellation), then takes whatever else is already
/// fetched, up to `max` records. Receive errors are logged and skipped: the consumer
/// recovers from broker errors by itself.
pub async fn recv_batch<'a, C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &'a rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    cancel: &tokio_util::sync::CancellationToken,
    idle: Duration,
) -> Vec<rdkafka::message::BorrowedMessage<'a>> {
    use futures::FutureExt as _;
    let mut batch = Vec::new();
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return batch,
        _ = tokio::time::sleep(idle) => return batch,
        m = consumer.recv() => m,
    };
    match first {
        Ok(m) => batch.push(m),
        Err(e) => {
            tracing::warn!(error = %e, "Receive failed.");
            return batch;
        }
    }
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "Receive failed."),
            None => break,
        }
    }
    batch
}

/// What kind of trouble librdkafka last reported about the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectFailure {
    /// A TLS handshake failed: an untrusted or mismatched certificate, or a broker not
    /// speaking TLS.
    Tls,
    /// The SASL login was refused.
    Authentication,
    /// Anything else (a refused connection, a broker going away).
    Other,
}

/// A client context that keeps the most telling error librdkafka reported about the
/// brokers, so that [`KafkaConfig::check_reachable`] can say why they cannot be used
/// instead of only that they did not answer. A TLS or SASL failure is never replaced
/// by a later, vaguer error ("all brokers are down").
#[derive(Debug, Clone, Default)]
struct ConnectProbe {
    last: Arc<Mutex<Option<(ConnectFailure, String)>>>,
}

impl ConnectProbe {
    fn last(&self) -> Option<(ConnectFailure, String)> {
        self.last.lock().expect("connect probe poisoned").clone()
    }
}

impl ClientContext for ConnectProbe {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "Broker error while connecting.");
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL) => ConnectFailure::Tls,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => ConnectFailure::Authentication,
            Some(RDKafkaErrorCode::AllBrokersDown) => return,
            _ => ConnectFailure::Other,
        };
        let mut last = self.last.lock().expect("connect probe poisoned");
        if kind != ConnectFailure::Other || !matches!(*last, Some((ConnectFailure::Tls | ConnectFailure::Authentication, _))) {
            *last = Some((kind, reason.to_owned()));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ConnectProbe {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_adds_keys_and_payloads() {
        use rdkafka::message::{OwnedMessage, Timestamp};
        let record = |key: Option<&[u8]>, payload: Option<&[u8]>| {
            OwnedMessage::new(payload.map(<[u8]>::to_vec), key.map(<[u8]>::to_vec), "t".into(), Timestamp::NotAvailable, 0, 0, None)
        };
        let records = [record(Some(b"o1"), Some(b"12345")), record(None, Some(b"123")), record(Some(b"o22"), None)];
        assert_eq!(record_bytes(&records), 2 + 5 + 3 + 3);
        assert_eq!(record_bytes::<OwnedMessage>(&[]), 0);
    }

    fn sasl_ssl(password: Secret) -> KafkaConfig {
        let mut kafka = KafkaConfig::new("127.0.0.1:9093");
        kafka.security = Security {
            protocol: SecurityProtocol::SaslSsl,
            ca_file: Some("/etc/orderflow/ca.pem".into()),
            sasl_mechanism: SaslMechanism::ScramSha256,
            sasl_username: Some("alice".into()),
            sasl_password: Some(password),
            ..Security::default()
        };
        kafka
    }

    #[test]
    fn the_default_is_plaintext_with_nothing_else() {
        let c = KafkaConfig::default().config(&[]).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("ssl.ca.location"), None);
        assert_eq!(c.get("sasl.mechanism"), None);
    }

    #[test]
    fn security_settings_become_librdkafkas() {
        let c = sasl_ssl(Secret::Value("pa,ss=w,rd".into())).config(&[]).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/orderflow/ca.pem"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.username"), Some("alice"));
        assert_eq!(c.get("sasl.password"), Some("pa,ss=w,rd"));
        assert_eq!(c.get("ssl.certificate.location"), None);

        let mut tls = KafkaConfig::new("b:9093");
        tls.security.protocol = SecurityProtocol::Ssl;
        tls.security.cert_file = Some("client.pem".into());
        tls.security.key_file = Some("client.key".into());
        tls.security.key_password = Some(Secret::Value("k".into()));
        let c = tls.config(&[]).unwrap();
        assert_eq!(c.get("ssl.ca.location"), Some("probe"), "no CA file: the system's store");
        assert_eq!(c.get("ssl.certificate.location"), Some("client.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("client.key"));
        assert_eq!(c.get("ssl.key.password"), Some("k"));
        assert_eq!(c.get("sasl.username"), None);
    }

    #[test]
    fn a_password_file_is_read_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("orderflow-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3,cr=t\n").unwrap();
        let c = sasl_ssl(Secret::File(file.clone())).config(&[]).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3,cr=t"));
        std::fs::remove_dir_all(&dir).unwrap();

        let e = sasl_ssl(Secret::File(file.clone())).config(&[]).unwrap_err();
        assert!(matches!(e, Error::SecretFile { .. }), "{e}");
        assert_eq!(e.to_string(), format!("reading the SASL password from {}", file.display()));
    }

    #[test]
    fn options_keep_their_values_whole_and_override_the_rest() {
        let mut kafka = sasl_ssl(Secret::Value("flag".into()));
        kafka.options = vec!["debug=broker,topic".into(), "sasl.password=a,b=c ".into(), String::new(), " client.id =x".into()];
        let c = kafka.config(&[("client.id", "default")]).unwrap();
        assert_eq!(c.get("debug"), Some("broker,topic"));
        assert_eq!(c.get("sasl.password"), Some("a,b=c "), "the value is everything after the first `=`, unchanged");
        assert_eq!(c.get("client.id"), Some("x"));
    }

    #[test]
    fn settings_that_do_not_fit_the_protocol_are_refused() {
        let mut kafka = KafkaConfig::default();
        kafka.security.ca_file = Some("ca.pem".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("--ssl-ca-file")));

        let mut kafka = KafkaConfig::default();
        kafka.security.protocol = SecurityProtocol::Ssl;
        kafka.security.cert_file = Some("client.pem".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("--ssl-key-file")));

        let mut kafka = KafkaConfig::default();
        kafka.security.protocol = SecurityProtocol::Ssl;
        kafka.security.sasl_username = Some("alice".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("sasl_ssl")));

        let mut kafka = sasl_ssl(Secret::Value("p".into()));
        kafka.security.sasl_password = None;
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("password")));
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_errors() {
        let mut kafka = sasl_ssl(Secret::Value("hunter2".into()));
        kafka.security.protocol = SecurityProtocol::SaslSsl;
        kafka.security.cert_file = Some("client.pem".into());
        kafka.security.key_file = Some("client.key".into());
        kafka.security.key_password = Some(Secret::Value("hunter3".into()));
        kafka.options = vec!["sasl.password=hunter4".into(), "ssl.keystore.password=hunter5".into(), "debug=broker,topic".into()];
        let shown = format!("{kafka:?} {kafka:#?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("debug=broker,topic") && shown.contains("sasl.password=<redacted>"), "{shown}");
        assert!(format!("{:?}", Secret::File("/run/pw".into())).contains("/run/pw"));

        kafka.options = vec!["sasl.password:hunter6".into()];
        let e = kafka.config(&[]).unwrap_err();
        assert!(matches!(e, Error::BadOption(_)));
        assert_eq!(e.to_string(), "librdkafka option `sasl.password<redacted>` must be KEY=VALUE");
        kafka.options = vec!["debug".into()];
        assert_eq!(kafka.config(&[]).unwrap_err().to_string(), "librdkafka option `debug` must be KEY=VALUE");
    }
}
