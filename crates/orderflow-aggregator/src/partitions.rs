//! Stage 1: per-partition aggregation. [`Partitions`] holds the owned partitions'
//! state (taking partitions over from their checkpoints, forgetting revoked ones,
//! checkpoint bookkeeping); [`Aggregator`] is the loop: receive a batch, then for each
//! record decode → apply → route ([`crate::router`]); settle; now and then write idle
//! ticks and checkpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use orderflow_core::dedup::DedupKey;
use orderflow_core::partition::{invalid_reason, PartitionState, Prepared, StateBounds};
use orderflow_core::validate::InvalidReason;
use orderflow_core::window::{ClosedWindow, WindowSpec};
use orderflow_core::wire::{undecodable, EnrichedKind, EnrichedView};
use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::{EnrichedRecord, OpenWindows};
use orderflow_runtime::kafka::{recv_batch, GroupConsumerContext, KafkaConfig};
use orderflow_runtime::outbox::Outbox;
use orderflow_runtime::records;
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::{Topics, CHECKPOINT_MAX_BYTES};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::idle::{self, Quiet};
use crate::router::{Route, Router};
use crate::upstream::Watch;
use crate::{checkpoint, AggregatorConfig, Result};

/// Records parsed and prepared ahead of processing at a time (benches/README.md: the
/// `decode_apply_batched` benchmark uses the same chunk).
const PREPARE_CHUNK: usize = 32;

/// A record parsed ahead of processing.
#[allow(missing_debug_implementations)] // views of a payload; nothing to show
pub struct Parsed<'a> {
    record: std::result::Result<Option<EnrichedKind<'a>>, InvalidReason>,
    /// For an event of a partition owned when parsed.
    prepared: Option<Prepared>,
}

/// One owned input partition.
#[derive(Debug)]
struct Owned {
    state: PartitionState,
    /// First input offset not yet reflected in `state`.
    next_offset: i64,
    /// `next_offset` of the last checkpoint written.
    checkpointed: i64,
    /// When the partition last delivered a record (or was taken over).
    last_input: Instant,
    /// When an idle tick was last sent.
    tick_sent: Option<Instant>,
    /// Broker timestamp (ms) of the newest event counted per open window, as seen by
    /// this owner (not checkpointed: after a restore, only events re-processed count).
    newest: BTreeMap<i64, i64>,
    /// Whether the open windows changed since the last snapshot, and when it was sent.
    changed: bool,
    snapshot_sent: Option<Instant>,
}

impl Owned {
    fn new(state: PartitionState, next_offset: i64, checkpointed: i64) -> Self {
        Self {
            state,
            next_offset,
            checkpointed,
            last_input: Instant::now(),
            tick_sent: None,
            newest: BTreeMap::new(),
            changed: true,
            snapshot_sent: None,
        }
    }
}

/// What applying one record did to its partition.
#[derive(Debug)]
pub struct Applied {
    pub route: Route,
    /// Windows the record closed on the partition, the broker timestamp of each one's
    /// newest event (0 when unknown), and the partition's new closed-through frontier
    /// when it moved.
    pub closed: Vec<ClosedWindow>,
    pub newest: Vec<i64>,
    pub moved_through: Option<i64>,
}

/// The owned partitions' state.
#[derive(Debug)]
pub struct Partitions {
    kafka: KafkaConfig,
    spec: WindowSpec,
    bounds: StateBounds,
    input: String,
    checkpoints: String,
    idle_close: Duration,
    /// Readers of a take-over's reread ([`checkpoint::reread`]).
    restore_threads: usize,
    owned: HashMap<i32, Owned>,
    /// When input last came back to a partition after `--idle-close` without any
    /// (see [`idle::ticks`]).
    last_resumed: Option<Instant>,
    /// The longest take-over and the largest checkpoint so far (their gauges).
    restore_max_seconds: f64,
    checkpoint_max_bytes: usize,
}

impl Partitions {
    pub fn new(
        kafka: &KafkaConfig,
        topics: &Topics,
        spec: WindowSpec,
        bounds: StateBounds,
        idle_close: Duration,
        restore_threads: usize,
    ) -> Self {
        Self {
            kafka: kafka.clone(),
            spec,
            bounds,
            input: topics.enriched(),
            checkpoints: topics.checkpoints(),
            idle_close,
            restore_threads,
            owned: HashMap::new(),
            last_resumed: None,
            restore_max_seconds: 0.0,
            checkpoint_max_bytes: 0,
        }
    }

    /// Whether partition `p` is owned.
    pub fn owns(&self, p: i32) -> bool {
        self.owned.contains_key(&p)
    }

    /// Drops the state of partitions taken away: their next owner restores the last
    /// checkpoint and re-processes from its offset.
    pub fn forget(&mut self, revoked: Vec<i32>) {
        for p in revoked {
            self.owned.remove(&p);
            metrics::gauge!(telemetry::AGGREGATOR_WATERMARK, "partition" => p.to_string()).set(f64::NAN);
            // Its new owner reports it; a sum or max over instances counts it once.
            metrics::gauge!(telemetry::AGGREGATOR_EVENT_TIME_LAG, "partition" => p.to_string()).set(0.0);
        }
    }

    /// Restores the partitions in `assigned` (the consumer's assignment now) not owned
    /// yet from their checkpoints (or starts them from scratch when they have none),
    /// all at once, so that their checkpoints and input are read together rather than
    /// one take-over after another. Only assigned partitions are taken: a batch fetched
    /// before a rebalance may still hold records of a partition revoked since, whose
    /// state must not come back (its idle ticks and partials would compete with the
    /// new owner's); `apply` skips them.
    pub async fn take_over(&mut self, assigned: &HashSet<i32>) -> Result<()> {
        let mut partitions: Vec<i32> = assigned.iter().copied().filter(|p| !self.owned.contains_key(p)).collect();
        partitions.sort_unstable();
        if partitions.is_empty() {
            return Ok(());
        }
        let (kafka, topic, ps) = (self.kafka.clone(), self.checkpoints.clone(), partitions.clone());
        let started = Instant::now();
        let mut found =
            tokio::task::spawn_blocking(move || checkpoint::restore(&kafka, &topic, &ps)).await.expect("restore task panicked")?;
        let mut restored = Vec::new();
        for p in partitions {
            match found.remove(&p) {
                Some(cp) => {
                    metrics::counter!(telemetry::AGGREGATOR_RESTORES, "from" => "checkpoint").increment(1);
                    restored.push((p, PartitionState::restore(&cp, self.spec, self.bounds)?, cp.next_offset));
                }
                None => {
                    metrics::counter!(telemetry::AGGREGATOR_RESTORES, "from" => "scratch").increment(1);
                    tracing::info!(partition = p, "Partition starts from scratch.");
                    let state = PartitionState::new(self.spec, self.bounds, DedupKey::random());
                    self.owned.insert(p, Owned::new(state, 0, -1));
                }
            }
        }
        // Their dedup memories are rebuilt from the input their checkpoints name.
        let next_offsets: HashMap<i32, i64> = restored.iter().map(|(p, _, next)| (*p, *next)).collect();
        let (kafka, input, threads) = (self.kafka.clone(), self.input.clone(), self.restore_threads);
        let states = restored.into_iter().map(|(p, state, _)| (p, state)).collect();
        let reread_started = Instant::now();
        let finished = tokio::task::spawn_blocking(move || checkpoint::reread(&kafka, &input, states, threads))
            .await
            .expect("reread task panicked")?;
        let reread_ms = reread_started.elapsed().as_millis() as u64;
        for (p, state, reread) in finished {
            let next_offset = next_offsets[&p];
            metrics::counter!(telemetry::AGGREGATOR_REREAD_RECORDS).increment(reread.records);
            let missing = reread.ids.admitted.saturating_sub(reread.ids.found);
            if missing > 0 {
                metrics::counter!(telemetry::AGGREGATOR_REREAD_MISSING).increment(missing);
                tracing::error!(
                    partition = p,
                    missing,
                    admitted = reread.ids.admitted,
                    "Event ids of the dedup memory not found in the input (is its retention shorter than --dedup-horizon?): \
                     their duplicates, if any come, are counted again."
                );
            }
            tracing::info!(
                partition = p,
                next_offset,
                open_windows = state.open_windows(),
                dedup_ids = reread.ids.found,
                records_reread = reread.records,
                "Partition restored from checkpoint."
            );
            self.owned.insert(p, Owned::new(state, next_offset, next_offset));
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!(telemetry::AGGREGATOR_RESTORE_SECONDS).record(seconds);
        if seconds > self.restore_max_seconds {
            self.restore_max_seconds = seconds;
            metrics::gauge!(telemetry::AGGREGATOR_RESTORE_MAX_SECONDS).set(seconds);
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, reread_ms, "Take-over done.");
        Ok(())
    }

    /// Parses a record as a view borrowing its payload (no allocation per event) and,
    /// for an event of an owned partition, prepares it (see [`PartitionState::prepare`]).
    pub fn parse<'a>(&self, m: &'a BorrowedMessage<'_>) -> Parsed<'a> {
        let payload = m.payload().unwrap_or_default();
        let record = EnrichedView::parse(payload).map(|r| r.kind).map_err(|e| undecodable::<EnrichedRecord>(payload, &e));
        let prepared = match (&record, self.owned.get(&m.partition())) {
            (Ok(Some(EnrichedKind::Event(e))), Some(owned)) => Some(owned.state.prepare(e)),
            _ => None,
        };
        Parsed { record, prepared }
    }

    /// Applies a parsed record (written to the broker at `timestamp_ms`, when known) to
    /// its partition, received at `now` (read once per chunk of records: a clock read
    /// per record showed in the profile); `None` when the partition is not owned or the
    /// record is already in the restored state.
    pub fn apply(&mut self, p: i32, offset: i64, timestamp_ms: Option<i64>, parsed: Parsed<'_>, now: Instant) -> Option<Applied> {
        let owned = self.owned.get_mut(&p)?;
        // Our own ticks read back are not input coming back.
        let tick = matches!(parsed.record, Ok(Some(EnrichedKind::IdleTick(_))));
        if !tick && idle::resumed(now, owned.last_input, self.idle_close) {
            self.last_resumed = Some(now);
        }
        owned.last_input = now;
        if offset < owned.next_offset {
            return None; // already in the restored state
        }
        if offset > owned.next_offset && owned.checkpointed >= 0 {
            tracing::warn!(partition = p, expected = owned.next_offset, got = offset, "Input offsets skipped ahead of the checkpoint.");
        }
        owned.next_offset = offset + 1;
        let before = owned.state.closed_through_ms();
        let mut closed = Vec::new();
        let Parsed { record, prepared } = parsed;
        let route = match record {
            Ok(Some(EnrichedKind::IdleTick(Some(t)))) => {
                owned.state.idle_close(timestamp_millis(&t), &mut closed);
                Route::Tick
            }
            Ok(Some(EnrichedKind::Event(e))) => {
                // Prepared when parsed if this partition was owned then, as it is now.
                let prepared = prepared.unwrap_or_else(|| owned.state.prepare(&e));
                Route::of(owned.state.apply_prepared_at(offset, &e, prepared, &mut closed), || invalid_reason(&e))
            }
            Ok(_) => Route::DeadLetter(InvalidReason::Undecodable("empty EnrichedRecord".into())),
            Err(reason) => Route::DeadLetter(reason),
        };
        if let (Route::Counted { window_start_ms }, Some(ts)) = (&route, timestamp_ms) {
            let newest = owned.newest.entry(*window_start_ms).or_insert(0);
            *newest = (*newest).max(ts);
        }
        owned.changed |= matches!(route, Route::Counted { .. }) || !closed.is_empty();
        let newest = closed.iter().map(|w| owned.newest.remove(&w.start_ms).unwrap_or(0)).collect();
        let through = owned.state.closed_through_ms();
        Some(Applied { route, closed, newest, moved_through: (through != before).then_some(through) })
    }

    /// Sets the owned-partitions, watermark and event-time-lag gauges (twice a second).
    pub fn report_lag(&self) {
        metrics::gauge!(telemetry::AGGREGATOR_PARTITIONS_OWNED).set(self.owned.len() as f64);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for (p, o) in &self.owned {
            let watermark = o.state.watermark_ms();
            if watermark != i64::MIN {
                // Here, twice a second, not per record (a labelled gauge per record
                // was ~5% of the aggregator's time).
                metrics::gauge!(telemetry::AGGREGATOR_WATERMARK, "partition" => p.to_string()).set(watermark as f64 / 1000.0);
                let lag = now_ms.saturating_sub(watermark) as f64 / 1000.0;
                metrics::gauge!(telemetry::AGGREGATOR_EVENT_TIME_LAG, "partition" => p.to_string()).set(lag);
            }
        }
    }

    /// Snapshots of the open windows of the owned partitions that changed since their
    /// last one, or whose last one is older than `refresh` (so that a merger starting
    /// over hears of every open window soon), for the provisional figures.
    pub fn open_snapshots(&mut self, partition_count: i32, refresh: Duration) -> Vec<OpenWindows> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (&p, o) in self.owned.iter_mut() {
            let stale = o.snapshot_sent.is_none_or(|at| now.duration_since(at) >= refresh);
            let due = o.changed || (stale && o.state.open_windows() > 0);
            if !due {
                continue;
            }
            let open: Vec<_> = o.state.open_totals();
            let newest_record_ms = o.newest.values().copied().max().unwrap_or(0);
            out.push(OpenWindows {
                partition: p,
                partition_count,
                open: open.iter().flat_map(ClosedWindow::to_window_totals).collect(),
                newest_record_ms,
            });
            o.changed = false;
            o.snapshot_sent = Some(now);
        }
        out.sort_unstable_by_key(|s| s.partition);
        out
    }

    /// Open windows over the owned partitions.
    pub fn open_windows(&self) -> usize {
        self.owned.values().map(|o| o.state.open_windows()).sum()
    }

    /// The partitions quiet enough for an idle tick now, and the target to close them
    /// through (see [`idle::ticks`]); marks them ticked.
    pub fn due_ticks(&mut self, watch: &Watch) -> Option<(i64, Vec<i32>)> {
        let quiet: Vec<Quiet> = self
            .owned
            .iter()
            .map(|(&partition, o)| Quiet {
                partition,
                last_input: o.last_input,
                tick_sent: o.tick_sent,
                closed_through_ms: o.state.closed_through_ms(),
                last_open_end_ms: o.state.last_open_end_ms(),
            })
            .collect();
        let (target, ticks) = idle::ticks(Instant::now(), self.idle_close, &watch.get(), self.last_resumed, &quiet)?;
        for p in &ticks {
            if let Some(o) = self.owned.get_mut(p) {
                o.tick_sent = Some(Instant::now());
            }
        }
        Some((target, ticks))
    }

    /// Writes the checkpoint of every partition that progressed, then commits the
    /// offsets they belong to. The caller settles outputs first, so a checkpoint never
    /// claims input whose results might be lost.
    pub async fn checkpoint(
        &mut self,
        outbox: &mut Outbox<(i32, i64, usize)>,
        consumer: &StreamConsumer<GroupConsumerContext>,
    ) -> Result<()> {
        let mut written = Vec::new();
        for (&p, owned) in &self.owned {
            metrics::gauge!(telemetry::AGGREGATOR_DEDUP_IDS, "partition" => p.to_string()).set(owned.state.dedup_len() as f64);
            if owned.next_offset <= owned.checkpointed {
                continue;
            }
            let bytes = checkpoint::encode(&owned.state.checkpoint(&self.input, p, owned.next_offset));
            metrics::histogram!(telemetry::AGGREGATOR_CHECKPOINT_BYTES).record(bytes.len() as f64);
            if bytes.len() > self.checkpoint_max_bytes {
                self.checkpoint_max_bytes = bytes.len();
                metrics::gauge!(telemetry::AGGREGATOR_CHECKPOINT_MAX_BYTES).set(bytes.len() as f64);
            }
            let key = records::checkpoint_key(p);
            outbox
                .send(FutureRecord::to(&self.checkpoints).partition(p).key(&key).payload(&bytes), (p, owned.next_offset, bytes.len()))
                .await?;
            written.push((p, owned.next_offset));
        }
        // A checkpoint the broker refuses (too large for the topic's max.message.bytes,
        // say) must not stop aggregation: the previous checkpoint and its committed
        // offset stay valid, so exactness holds and only a restart would re-process
        // more. Say so loudly.
        let refused = outbox.settle().await?.rejected;
        for r in &refused {
            let (p, _, size) = r.tag;
            metrics::counter!(telemetry::AGGREGATOR_CHECKPOINT_FAILURES).increment(1);
            tracing::error!(
                partition = p,
                bytes = size,
                error = %r.error,
                topic = %self.checkpoints,
                "Checkpoint not written; the previous one stays in force. If the record is too large, raise the \
                 topic's max.message.bytes (orderflow creates it with {CHECKPOINT_MAX_BYTES}) or lower --dedup-max-ids."
            );
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in written {
            if refused.iter().any(|r| r.tag.0 == p) {
                continue;
            }
            tpl.add_partition_offset(&self.input, p, Offset::Offset(next))?;
            if let Some(o) = self.owned.get_mut(&p) {
                o.checkpointed = next;
            }
            metrics::counter!(telemetry::AGGREGATOR_CHECKPOINTS).increment(1);
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Offset commit failed; the checkpoint is what counts.");
            }
        }
        Ok(())
    }
}

/// The input partitions assigned to `consumer` now (none if it cannot say). Rebalance
/// callbacks run only while the consumer is polled, in this task, so the answer holds
/// until the next poll.
fn assignment(consumer: &StreamConsumer<GroupConsumerContext>) -> HashSet<i32> {
    match consumer.assignment() {
        Ok(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
        Err(_) => HashSet::new(),
    }
}

/// Not ready while partitions assigned are not owned yet: said before a take-over
/// restores them (which may take a while), so that `/readyz` answers 503 during it,
/// at start and after a rebalance alike. The loop says ready again once every
/// assigned partition is owned.
fn restoring(readiness: &telemetry::Readiness, partitions: &Partitions, assigned: &HashSet<i32>) {
    let mut pending: Vec<i32> = assigned.iter().copied().filter(|p| !partitions.owns(*p)).collect();
    if !pending.is_empty() {
        pending.sort_unstable();
        readiness.not_ready(format!("restoring partitions {pending:?}"));
    }
}

/// The partitions loop.
pub struct Aggregator {
    config: AggregatorConfig,
    consumer: StreamConsumer<GroupConsumerContext>,
    partitions: Partitions,
    router: Router,
    /// Checkpoints, tagged with (partition, next offset, bytes).
    checkpoints: Outbox<(i32, i64, usize)>,
    last_checkpoint: Instant,
    watch: Watch,
}

/// How often a partition whose open windows have not changed snapshots them anyway.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator").field("partitions", &self.partitions).finish_non_exhaustive()
    }
}

impl Aggregator {
    /// Joins the aggregator group on the enriched topic.
    pub fn new(
        kafka: &KafkaConfig,
        topics: &Topics,
        config: &AggregatorConfig,
        spec: WindowSpec,
        bounds: StateBounds,
        partition_count: i32,
        watch: Watch,
    ) -> Result<Self> {
        let consumer: StreamConsumer<GroupConsumerContext> =
            kafka.group_consumer(&topics.group("aggregator"), GroupConsumerContext::new("aggregator"))?;
        consumer.subscribe(&[&topics.enriched()])?;
        let producer = kafka.stage_producer("aggregator")?;
        Ok(Self {
            config: config.clone(),
            consumer,
            partitions: Partitions::new(kafka, topics, spec, bounds, config.idle_close, config.restore_threads()),
            router: Router::new(producer.clone(), topics, partition_count),
            checkpoints: Outbox::new(producer),
            last_checkpoint: Instant::now(),
            watch,
        })
    }

    /// Aggregates until `cancel`, then settles and writes a last checkpoint.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let Self { config, consumer, mut partitions, mut router, mut checkpoints, mut last_checkpoint, watch } = self;
        tracing::info!(window_ms = partitions.spec.size_ms(), lateness_ms = partitions.spec.lateness_ms(), "Aggregator running.");
        let mut housekeeping = Instant::now();
        let mut last_snapshot = Instant::now();
        let readiness = telemetry::readiness("aggregator");
        readiness.not_ready("waiting for partitions");
        while !cancel.is_cancelled() {
            let batch = recv_batch(&consumer, config.batch, &cancel, Duration::from_millis(200)).await;
            partitions.forget(consumer.context().take());
            let started = Instant::now();
            if !batch.is_empty() {
                metrics::counter!(telemetry::RECORDS_CONSUMED, "service" => "aggregator").increment(batch.len() as u64);
                metrics::counter!(telemetry::AGGREGATOR_INPUT_BYTES).increment(orderflow_runtime::kafka::record_bytes(&batch));
                // Records of partitions revoked while the batch was fetched are skipped
                // (`apply` ignores partitions not owned): their new owner processes them.
                let assigned = assignment(&consumer);
                restoring(&readiness, &partitions, &assigned);
                partitions.take_over(&assigned).await?;
                // A few dozen records at a time: parse them and prepare their events
                // (the dedup look-ups' cache misses overlap), then process them in
                // order. Small chunks keep what was prepared in cache until it is used.
                for chunk in batch.chunks(PREPARE_CHUNK) {
                    let now = Instant::now();
                    let parsed: Vec<Parsed<'_>> = chunk.iter().map(|m| partitions.parse(m)).collect();
                    for (m, parsed) in chunk.iter().zip(parsed) {
                        let Some(applied) = partitions.apply(m.partition(), m.offset(), m.timestamp().to_millis(), parsed, now) else {
                            continue;
                        };
                        router.route(m, applied.route).await?;
                        if let Some(through) = applied.moved_through {
                            router.emit(m.partition(), &applied.closed, &applied.newest, through).await?;
                            metrics::gauge!(telemetry::AGGREGATOR_OPEN_WINDOWS).set(partitions.open_windows() as f64);
                        }
                    }
                }
                drop(batch);
                router.settle().await?;
                metrics::histogram!(telemetry::BATCH_DURATION, "service" => "aggregator").record(started.elapsed().as_secs_f64());
            }
            if !config.provisional_interval.is_zero() && last_snapshot.elapsed() >= config.provisional_interval {
                last_snapshot = Instant::now();
                for snapshot in partitions.open_snapshots(router.partition_count(), SNAPSHOT_REFRESH) {
                    router.open_windows(&snapshot).await?;
                }
            }
            if housekeeping.elapsed() >= Duration::from_millis(500) {
                housekeeping = Instant::now();
                let assigned = assignment(&consumer);
                restoring(&readiness, &partitions, &assigned);
                partitions.take_over(&assigned).await?;
                partitions.report_lag();
                if consumer.context().joined() && assigned.iter().all(|p| partitions.owns(*p)) {
                    if !readiness.is_ready() {
                        readiness.ready();
                    }
                } else if readiness.is_ready() {
                    readiness.not_ready("partitions being assigned or restored");
                }
                if let Some((target, ticks)) = partitions.due_ticks(&watch) {
                    for p in ticks {
                        router.tick(p, target).await?;
                    }
                }
            }
            if last_checkpoint.elapsed() >= config.checkpoint_interval {
                last_checkpoint = Instant::now();
                router.settle().await?;
                if !config.no_checkpoints {
                    let started = Instant::now();
                    partitions.checkpoint(&mut checkpoints, &consumer).await?;
                    metrics::histogram!(telemetry::AGGREGATOR_CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
                }
            }
        }
        router.settle().await?;
        if !config.no_checkpoints {
            partitions.checkpoint(&mut checkpoints, &consumer).await?;
        }
        checkpoints.close(Duration::from_secs(10)).await?;
        tracing::info!("Partitions loop stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use orderflow_core::window::WindowSpec;
    use orderflow_runtime::testing::MockKafka;

    use super::*;

    /// A batch fetched before a rebalance holds records of a partition revoked since:
    /// that partition's state must not come back (its ticks and partials would compete
    /// with the new owner's), and its records are skipped.
    #[tokio::test]
    async fn a_partition_revoked_mid_batch_is_not_taken_back() {
        let mock = MockKafka::start(1, 2);
        let spec = WindowSpec::new(60_000, 5_000).unwrap();
        let mut partitions = Partitions::new(&mock.kafka, &mock.topics, spec, StateBounds::new(65_000), Duration::from_secs(10), 2);
        partitions.take_over(&HashSet::from([0, 1])).await.unwrap();
        assert!(partitions.owns(0) && partitions.owns(1));
        // Partition 0 is revoked while a batch holding records of both is fetched.
        partitions.forget(vec![0]);
        partitions.take_over(&HashSet::from([1])).await.unwrap();
        assert!(!partitions.owns(0), "the revoked partition stays forgotten");
        assert!(partitions.owns(1));
        let tick = Parsed { record: Ok(Some(EnrichedKind::IdleTick(None))), prepared: None };
        assert!(
            partitions.apply(0, 7, None, tick, Instant::now()).is_none(),
            "its records are skipped (and, not owned, it gets no idle ticks)"
        );
    }
}
