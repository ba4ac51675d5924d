//! Topic names and their creation.
//!
//! Every topic name derives from one prefix (`--topic-prefix`, default `orderflow`), so
//! several pipelines (or tests) can share a cluster without colliding:
//!
//! | topic | key | value | cleanup |
//! |---|---|---|---|
//! | `P.orders` | order id | `OrderEvent` (protobuf) | delete |
//! | `P.merchants` | `merchant_id@effective_from` | `Merchant` | compact |
//! | `P.orders.enriched` | order id | `EnrichedRecord` | delete |
//! | `P.orders.dead-letter` | source `topic/partition/offset` | original bytes; reason in headers | delete |
//! | `P.orders.late` | event id | `EnrichedOrderEvent`; window in headers | delete |
//! | `P.totals.partial` | `window/region/tier/currency/partition` | `PartialRecord` | delete, 1 partition |
//! | `P.totals.open` | input partition | `OpenWindows` (a partition's open windows so far) | delete, 1 partition |
//! | `P.totals` | `window/region/tier/currency` | `WindowTotal` | compact, 1 partition |
//! | `P.aggregator.checkpoints` | input partition | `PartitionCheckpoint` | compact, one partition per input partition |
//! | `P.merger.checkpoints` | `merger` | `MergerCheckpoint` (the merge state and the partial-totals offset it covers) | compact, 1 partition |

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::KafkaConfig;
use crate::{Error, Result};

/// Topic naming and sizing. The command line's `--topic-prefix`, `--partitions` and
/// `--replication-factor` fill it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Prefix of every topic and consumer-group name.
    pub topic_prefix: String,
    /// Partitions of the orders, enriched, dead-letter, late and checkpoint topics when
    /// orderflow creates them (existing topics are left as they are).
    pub partitions: i32,
    /// Replication factor of topics orderflow creates (use 3 in production).
    pub replication_factor: i32,
}

/// Prefix of every topic and group name when none is given.
pub const DEFAULT_PREFIX: &str = "orderflow";
/// Partitions of the wide topics orderflow creates, when not told otherwise.
pub const DEFAULT_PARTITIONS: i32 = 6;
/// Replication factor of the topics orderflow creates, when not told otherwise.
pub const DEFAULT_REPLICATION_FACTOR: i32 = 1;
/// `max.message.bytes` of the checkpoint topic orderflow creates (64 MiB): a checkpoint
/// holds a partition's dedup memory, megabytes at peak rates.
pub const CHECKPOINT_MAX_BYTES: u64 = 64 << 20;

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX, DEFAULT_PARTITIONS)
    }
}

/// A part of the pipeline, for the topics it needs to exist before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `merchants load`: the merchants topic.
    MerchantLoader,
    /// `replay` and the `Publisher` API: the orders topic.
    Publisher,
    /// The enricher: orders, merchants, enriched, dead letters.
    Enricher,
    /// The aggregator (with its merger): everything but merchants; the checkpoint topic
    /// is sized by the enriched topic, see [`Topics::checkpoint_spec`].
    Aggregator,
    /// Every topic (the demo, tests).
    All,
}

impl Topics {
    /// Names under `prefix` with the given sizing.
    pub fn new(prefix: impl Into<String>, partitions: i32) -> Self {
        Self { topic_prefix: prefix.into(), partitions, replication_factor: DEFAULT_REPLICATION_FACTOR }
    }

    /// The topics `stage` needs, to create when missing (see [`ensure`]).
    pub fn specs(&self, stage: Stage) -> Vec<TopicSpec> {
        let (orders, merchants, enriched) = (self.wide(self.orders()), self.narrow(self.merchants(), true), self.wide(self.enriched()));
        let (dead_letter, late) = (self.wide(self.dead_letter()), self.wide(self.late()));
        let (partials, totals) = (self.narrow(self.partials(), false), self.narrow(self.totals(), true));
        let open = self.narrow(self.open_windows(), false);
        let merger_checkpoints = self.merger_checkpoint_spec();
        match stage {
            Stage::MerchantLoader => vec![merchants],
            Stage::Publisher => vec![orders],
            Stage::Enricher => vec![orders, merchants, enriched, dead_letter],
            Stage::Aggregator => vec![orders, enriched, dead_letter, late, partials, open, totals, merger_checkpoints],
            Stage::All => {
                let checkpoints = self.checkpoint_spec(self.partitions);
                vec![orders, merchants, enriched, dead_letter, late, partials, open, totals, checkpoints, merger_checkpoints]
            }
        }
    }

    /// The checkpoint topic for an enriched topic of `input_partitions` partitions:
    /// partition p's checkpoints go to partition p, compacted, with room for large
    /// records.
    pub fn checkpoint_spec(&self, input_partitions: i32) -> TopicSpec {
        TopicSpec {
            name: self.checkpoints(),
            partitions: input_partitions,
            replication: self.replication_factor,
            compact: true,
            max_message_bytes: Some(CHECKPOINT_MAX_BYTES),
        }
    }

    /// The merger's checkpoint topic: one partition, compacted, with room for a merge
    /// state of many keys and partitions (see [`CHECKPOINT_MAX_BYTES`]).
    pub fn merger_checkpoint_spec(&self) -> TopicSpec {
        TopicSpec { max_message_bytes: Some(CHECKPOINT_MAX_BYTES), ..self.narrow(self.merger_checkpoints(), true) }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.topic_prefix)
    }
    /// Raw storefront events.
    pub fn orders(&self) -> String {
        self.name("orders")
    }
    /// Merchant versions (compacted).
    pub fn merchants(&self) -> String {
        self.name("merchants")
    }
    /// Enriched events and idle ticks.
    pub fn enriched(&self) -> String {
        self.name("orders.enriched")
    }
    /// Rejected events with their reasons.
    pub fn dead_letter(&self) -> String {
        self.name("orders.dead-letter")
    }
    /// Events whose window had closed.
    pub fn late(&self) -> String {
        self.name("orders.late")
    }
    /// Per-partition partial totals and progress.
    pub fn partials(&self) -> String {
        self.name("totals.partial")
    }
    /// Snapshots of the partitions' open windows, for the provisional figures.
    pub fn open_windows(&self) -> String {
        self.name("totals.open")
    }
    /// Merged window totals (compacted).
    pub fn totals(&self) -> String {
        self.name("totals")
    }
    /// Aggregator checkpoints (compacted).
    pub fn checkpoints(&self) -> String {
        self.name("aggregator.checkpoints")
    }
    /// Merger checkpoints (compacted).
    pub fn merger_checkpoints(&self) -> String {
        self.name("merger.checkpoints")
    }
    /// Consumer group of a service.
    pub fn group(&self, service: &str) -> String {
        format!("{}-{service}", self.topic_prefix)
    }

    /// A topic sized by `--partitions`.
    pub fn wide(&self, name: String) -> TopicSpec {
        TopicSpec { name, partitions: self.partitions, replication: self.replication_factor, compact: false, max_message_bytes: None }
    }
    /// A single-partition topic.
    pub fn narrow(&self, name: String, compact: bool) -> TopicSpec {
        TopicSpec { name, partitions: 1, replication: self.replication_factor, compact, max_message_bytes: None }
    }
}

/// A topic to create when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub compact: bool,
    /// The topic's `max.message.bytes`, when records may exceed the broker's default.
    pub max_message_bytes: Option<u64>,
}

/// Creates the topics that do not exist yet; existing ones are left untouched.
pub async fn ensure(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let existing: std::collections::HashSet<String> = {
        use rdkafka::consumer::Consumer as _;
        let md = kafka.reader()?.fetch_metadata(None, Duration::from_secs(10))?;
        md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_owned()).collect()
    };
    let missing: Vec<&TopicSpec> = specs.iter().filter(|s| !existing.contains(&s.name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = kafka.config(&[])?.create()?;
    let sizes: Vec<Option<String>> = missing.iter().map(|s| s.max_message_bytes.map(|b| b.to_string())).collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&sizes)
        .map(|(s, size)| {
            let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication));
            if s.compact {
                t = t.set("cleanup.policy", "compact");
            }
            if let Some(size) = size {
                t = t.set("max.message.bytes", size);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(Error::CreateTopic { topic: name, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// A topic's configuration as the broker reports it (`cleanup.policy`,
/// `max.message.bytes`, ...): every entry with a value. Waits at most the connect
/// timeout for the answer (not every Kafka-compatible broker gives one).
pub async fn describe(kafka: &KafkaConfig, topic: &str) -> Result<std::collections::HashMap<String, String>> {
    let admin: AdminClient<DefaultClientContext> = kafka.config(&[])?.create()?;
    let opts = AdminOptions::new().request_timeout(Some(kafka.connect_timeout));
    let mut results = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts).await?;
    let resource = results.pop().ok_or_else(|| Error::DescribeTopic { topic: topic.to_owned(), reason: "no answer".into() })?;
    let resource = resource.map_err(|code| Error::DescribeTopic { topic: topic.to_owned(), reason: code.to_string() })?;
    Ok(resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect())
}
