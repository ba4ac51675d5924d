//! What the aggregator watches beyond its own partitions to decide idle ticks safely.
//!
//! - **The pipeline's input.** The orders topic's high watermarks and the enricher
//!   group's committed offsets. Input is *settled* when no new order has arrived and the
//!   enricher has no backlog; it is *stalled* when the enricher has a backlog on some
//!   partition and has not moved for a while (crashed, rebalancing, broker away), or
//!   when the state cannot be read. A stalled pipeline holds back every idle tick: the
//!   records it owes would otherwise arrive after their windows were closed.
//! - **The global frontier.** The highest closed-through any partition has published
//!   on the partial-totals topic, so instances whose partitions are quiet catch up with
//!   the rest of the group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderflow_proto::v1::{partial_record, PartialRecord};
use orderflow_proto::{timestamp_millis, Message as _};
use orderflow_runtime::kafka::{group_positions, GroupPosition, KafkaConfig, TopicReader};
use orderflow_runtime::topics::Topics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::Message;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the enricher may sit on a backlog without committing before the input
/// counts as stalled.
const STALL_AFTER: Duration = Duration::from_secs(2);
/// How often the input is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A snapshot of what is known.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// When the input was last read successfully (the start of that read). Decisions
    /// need a snapshot taken after the partition in question went quiet: a read that
    /// hangs (a coordinator busy rebalancing, say) must not leave an old "all is well"
    /// in force.
    pub checked_at: Option<Instant>,
    /// Orders partitions on which the enricher owes records (its committed offset is
    /// behind the partition's end), as of `checked_at`.
    pub owing: Vec<i32>,
    /// The enricher owes records and is not moving, or the input cannot be read.
    pub stalled: bool,
    /// Since when no order has arrived and the enricher has had no backlog.
    pub settled_since: Option<Instant>,
    /// Highest closed-through published by any partition, ms (`i64::MIN`: none).
    pub global_frontier_ms: i64,
}

impl Default for Upstream {
    fn default() -> Self {
        Self { checked_at: None, owing: Vec::new(), stalled: true, settled_since: None, global_frontier_ms: i64::MIN }
    }
}

/// The shared, continuously updated view.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    state: Arc<Mutex<Upstream>>,
}

impl Watch {
    /// The current view.
    pub fn get(&self) -> Upstream {
        self.state.lock().expect("upstream watch poisoned").clone()
    }
}

/// The loop that keeps a [`Watch`] up to date: blocking (librdkafka polls), run under
/// the service's supervisor.
#[derive(Debug)]
pub struct Watcher {
    watch: Watch,
    kafka: KafkaConfig,
    topics: Topics,
}

impl Watcher {
    /// A watch (to read) and its watcher (to run).
    pub fn new(kafka: &KafkaConfig, topics: &Topics) -> (Watch, Self) {
        let watch = Watch::default();
        (watch.clone(), Self { watch, kafka: kafka.clone(), topics: topics.clone() })
    }

    /// Watches until `cancel`. Read errors are not failures: they make the view
    /// `stalled`, which holds idle ticks back, and are retried.
    pub fn run(self, cancel: CancellationToken) -> crate::Result<()> {
        let Self { watch: w, kafka, topics } = self;
        let mut input = InputWatch::default();
        let mut partials: Option<TopicReader> = None;
        let mut next_check = Instant::now();
        while !cancel.is_cancelled() {
            if partials.is_none() {
                partials = TopicReader::open(&kafka, &topics.partials()).ok();
            }
            match &partials {
                Some(reader) => match reader.poll(Duration::from_millis(100)) {
                    Ok(Some(m)) => {
                        if let Some(Ok(PartialRecord { kind: Some(partial_record::Kind::Progress(p)) })) =
                            m.payload().map(PartialRecord::decode)
                        {
                            if let Some(t) = p.closed_through {
                                let mut s = w.state.lock().expect("upstream watch poisoned");
                                s.global_frontier_ms = s.global_frontier_ms.max(timestamp_millis(&t));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "Reading partial totals failed."),
                },
                None => std::thread::sleep(Duration::from_millis(100)),
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + CHECK_EVERY;
                let started = Instant::now();
                let checked = input.check(&kafka, &topics);
                let mut s = w.state.lock().expect("upstream watch poisoned");
                match checked {
                    Some((stalled, settled_since, owing)) => {
                        s.checked_at = Some(started);
                        s.stalled = stalled;
                        s.settled_since = settled_since;
                        s.owing = owing;
                    }
                    None => {
                        s.stalled = true;
                        s.settled_since = None;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct InputWatch {
    /// A client with the enricher group's id (it reads, never joins).
    clients: Option<BaseConsumer>,
    highs: HashMap<i32, i64>,
    committed: HashMap<i32, (i64, Instant)>,
    settled_since: Option<Instant>,
}

impl InputWatch {
    /// Returns (stalled, settled_since, partitions owing), or `None` when the input
    /// could not be read.
    fn check(&mut self, kafka: &KafkaConfig, topics: &Topics) -> Option<(bool, Option<Instant>, Vec<i32>)> {
        match self.read(kafka, topics) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "Input state unreadable; holding idle ticks back.");
                self.clients = None;
                self.settled_since = None;
                None
            }
        }
    }

    fn read(&mut self, kafka: &KafkaConfig, topics: &Topics) -> crate::Result<(bool, Option<Instant>, Vec<i32>)> {
        if self.clients.is_none() {
            let group: BaseConsumer =
                kafka.config(&[("group.id", &topics.group("enricher")), ("enable.auto.commit", "false")])?.create()?;
            self.clients = Some(group);
        }
        let group = self.clients.as_ref().expect("set above");
        let now = Instant::now();
        let positions = match group_positions(group, &topics.orders()) {
            Ok(positions) => positions,
            Err(orderflow_runtime::Error::MissingTopic(_)) => {
                // No input topic yet: nothing is owed.
                let since = *self.settled_since.get_or_insert(now);
                return Ok((false, Some(since), Vec::new()));
            }
            Err(e) => return Err(e.into()),
        };
        let (mut moved, mut backlog, mut stalled, mut owing) = (false, false, false, Vec::new());
        for GroupPosition { partition: p, low, high, committed } in positions {
            let done = committed.unwrap_or(low);
            if self.highs.insert(p, high) != Some(high) {
                moved = true;
            }
            let entry = self.committed.entry(p).or_insert((done, now));
            if entry.0 != done {
                *entry = (done, now);
            }
            if high > done {
                backlog = true;
                owing.push(p);
                if now.duration_since(entry.1) >= STALL_AFTER {
                    stalled = true;
                }
            }
        }
        if moved || backlog {
            self.settled_since = None;
        } else {
            self.settled_since.get_or_insert(now);
        }
        Ok((stalled, self.settled_since, owing))
    }
}
