//! The aggregator: turns the enriched stream into exact event-time window totals.
//!
//! # Design
//! Two stages, both in the `aggregate` process, wired by [`service::run`]:
//! 1. **Partitions** ([`partitions`]): each enriched-topic partition is aggregated on
//!    its own by [`orderflow_core::partition::PartitionState`]: dedup, watermark, open
//!    windows. Each record goes decode → apply → route: the [`router`] turns the outcome
//!    into records (a window closed on the partition becomes its partial totals and the
//!    partition's progress on the partial-totals topic, keyed so that emitting them
//!    twice is harmless; a late event goes to the late topic; an unusable record to the
//!    dead-letter topic). Every `--checkpoint-interval` the state of each partition is
//!    written, with the input offset it belongs to, to the checkpoint topic (partition
//!    p's checkpoints on partition p) and only then is that offset committed. A
//!    restarted or new owner restores the checkpoint and re-processes from its offset,
//!    re-emitting identical partials. Idle partitions are closed by ticks written into
//!    the input partition itself and acted on when read back, so the outcome stays a
//!    function of the log; ticks are held back while the enricher owes records
//!    ([`upstream`], [`idle`]).
//! 2. **Merger** ([`merger`]): one consumer of the single-partition partial-totals
//!    topic sums the partials of a window once every input partition's progress has
//!    passed it, and publishes one total per (window, region, tier, currency) to the
//!    totals topic and to Prometheus. Every `--merger-checkpoint-interval` it writes
//!    its whole state with the partial-totals offset it covers to the merger checkpoint
//!    topic; a merger taking over restores it and reads only the records after it.
//!
//! The partitions loop, the merger and the upstream watch run under one
//! [`Supervisor`](orderflow_runtime::supervisor::Supervisor): the first to fail stops
//! the others and [`run`] returns its error. No step needs Kafka transactions.
//!
//! # Layout
//! - [`service`]: [`run`]: topics, the checkpoint topic check, the supervised tasks.
//! - [`partitions`]: ownership (rebalances, restore), the per-record loop, checkpoint
//!   bookkeeping, idle ticks.
//! - [`router`]: an outcome to the records it produces (partial, progress, late, dead
//!   letter, tick), all through one outbox.
//! - [`checkpoint`]: reading the newest checkpoint of a partition (and of the merger),
//!   and the reread of the input that rebuilds restored partitions' dedup memories
//!   ([`checkpoint::reread`], on `--restore-threads` readers).
//! - [`merger`]: the loop ([`merger::run`]) apart from the merger's state
//!   (`MergerState`: the merge, its position in the partial-totals topic, its
//!   checkpoints, the provisional figures), one method per step of a batch.
//! - [`upstream`], [`idle`], [`totals`] (reading the totals back).

pub mod checkpoint;
pub mod idle;
pub mod merger;
pub mod partitions;
pub mod router;
pub mod service;
pub mod totals;
pub mod upstream;

use std::time::Duration;

pub use service::run;

/// Errors of the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error(transparent)]
    Core(#[from] orderflow_core::Error),
    #[error("kafka client: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("{0}")]
    Config(String),
    #[error("a record the totals depend on was refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(e)
    }
}

/// Result with the aggregator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Aggregation settings (the command line's `aggregate` flags fill them in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatorConfig {
    /// Size of the tumbling event-time windows (aligned to the epoch).
    pub window: Duration,
    /// How long after a window's end (in event time) its events are still counted.
    pub lateness: Duration,
    /// After this long without input, open windows close (see docs/semantics.md#idle-close).
    pub idle_close: Duration,
    /// How long (event time) event ids are remembered for dedup; at least window +
    /// lateness, which is what `None` means.
    pub dedup_horizon: Option<Duration>,
    /// Most event ids remembered for dedup per partition; new ids beyond are
    /// dead-lettered as `dedup_memory_full` (bounds memory and checkpoint size).
    pub dedup_max_ids: usize,
    /// Most (region, tier, currency) keys per window per partition; events of new keys
    /// beyond are dead-lettered as `too_many_keys`.
    pub max_keys_per_window: usize,
    /// How often partition state is checkpointed (and input offsets committed).
    pub checkpoint_interval: Duration,
    /// Never checkpoint nor commit: a restarted or moved partition re-processes its
    /// whole log. Still exact, but restarts get slower as the log grows; meant for
    /// measuring what checkpoints cost.
    pub no_checkpoints: bool,
    /// How often the active merger writes its whole state, with the partial-totals
    /// offset it covers, to the merger checkpoint topic (also at shutdown); a merger
    /// taking over reads only the records after it.
    pub merger_checkpoint_interval: Duration,
    /// Most records processed per batch.
    pub batch: usize,
    /// Readers (threads, each with its own consumer) that reread the input of the
    /// partitions a take-over restores; 0: one per core.
    pub restore_threads: usize,
    /// How often each owned partition's open windows are snapshotted for the
    /// provisional figures (zero: never).
    pub provisional_interval: Duration,
    /// How long the aggregator's tasks may take to stop once one has failed or a
    /// shutdown was requested.
    pub shutdown_grace: Duration,
    /// Whether to check at start that the checkpoint topics are compacted and take the
    /// largest checkpoint, which asks the brokers for the topics' settings
    /// (DescribeConfigs). Off only for brokers known not to answer, such as librdkafka's
    /// mock cluster of the demo: the question would wait the connect timeout for nothing.
    pub check_topic_settings: bool,
}

/// Defaults, one constant each (the command line shows them in `--help`).
pub mod defaults {
    use std::time::Duration;

    use orderflow_core::window::{DEFAULT_LATENESS_MS, DEFAULT_WINDOW_MS};

    pub const WINDOW: Duration = Duration::from_millis(DEFAULT_WINDOW_MS as u64);
    pub const LATENESS: Duration = Duration::from_millis(DEFAULT_LATENESS_MS as u64);
    pub const IDLE_CLOSE: Duration = Duration::from_secs(10);
    pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
    pub const MERGER_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
    pub const BATCH: usize = 5_000;
    pub const PROVISIONAL_INTERVAL: Duration = Duration::from_millis(500);
    pub const DEDUP_MAX_IDS: usize = orderflow_core::dedup::DEFAULT_MAX_IDS;
    pub const MAX_KEYS_PER_WINDOW: usize = orderflow_core::partition::DEFAULT_MAX_KEYS_PER_WINDOW;
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            window: defaults::WINDOW,
            lateness: defaults::LATENESS,
            idle_close: defaults::IDLE_CLOSE,
            dedup_horizon: None,
            dedup_max_ids: defaults::DEDUP_MAX_IDS,
            max_keys_per_window: defaults::MAX_KEYS_PER_WINDOW,
            checkpoint_interval: defaults::CHECKPOINT_INTERVAL,
            no_checkpoints: false,
            merger_checkpoint_interval: defaults::MERGER_CHECKPOINT_INTERVAL,
            batch: defaults::BATCH,
            restore_threads: 0,
            provisional_interval: defaults::PROVISIONAL_INTERVAL,
            shutdown_grace: orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE,
            check_topic_settings: true,
        }
    }
}

impl AggregatorConfig {
    /// [`Self::restore_threads`], 0 resolved to the cores this process may use.
    pub fn restore_threads(&self) -> usize {
        match self.restore_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The window spec and the partitions' state bounds, checked.
    pub fn spec(&self) -> Result<(orderflow_core::window::WindowSpec, orderflow_core::partition::StateBounds)> {
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
        if self.dedup_max_ids == 0 || self.max_keys_per_window == 0 {
            return Err(Error::Config("--dedup-max-ids and --max-keys-per-window must be at least 1".into()));
        }
        let bounds = orderflow_core::partition::StateBounds {
            dedup_horizon_ms: horizon,
            dedup_max_ids: self.dedup_max_ids,
            max_keys_per_window: self.max_keys_per_window,
        };
        Ok((spec, bounds))
    }
}
