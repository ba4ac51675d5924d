//! Stage 2: the exact merge of partial totals, published to the totals topic.
//!
//! The partial-totals topic has one partition, so one merger in the consumer group is
//! active and the others stand by. The merger commits no offsets; instead, every
//! `--merger-checkpoint-interval` (and when it stops) the active merger writes its whole
//! merge state with the partial-totals offset it covers to the merger checkpoint topic,
//! once the totals that state implies are on the broker. Whoever takes the partition
//! over restores the newest checkpoint and reads the topic from the offset after it
//! (no checkpoint: from the beginning): the state after offset X is a function of the
//! records up to X, so the merge goes on as if it had never stopped, and take-over time
//! is bounded by the open state, not by the history. Re-published totals are identical
//! and keyed by (window, region, tier, currency), so publishing twice is harmless.
//!
//! The active merger also keeps the provisional figures
//! ([`orderflow_core::provisional`]): it reads the partitions' snapshots of their open
//! windows (the open-windows topic, from a little before it became active) and the
//! partials, and exports their sum as `orderflow_open_window_*`. After each batch, in
//! one step as a scrape sees it ([`telemetry::consistently`]), it adds the windows it
//! published to the final counters and sets the provisional gauges without them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use orderflow_core::merge::{Merger, PartialOutcome};
use orderflow_core::provisional::{Figures, Provisional};
use orderflow_core::window::{ClosedWindow, Tallies, TotalKey, TYPE_NAMES};
use orderflow_proto::v1::{partial_record, MergerCheckpoint, OpenWindows, PartialRecord, PartialTotal, PartitionProgress};
use orderflow_proto::{millis_timestamp, timestamp_millis, Message as _};
use orderflow_runtime::kafka::{recv_batch, GroupConsumerContext, KafkaConfig};
use orderflow_runtime::outbox::Outbox;
use orderflow_runtime::records;
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::{checkpoint, Error, Result};

/// Merges partials into totals until `cancel`, over the `partitions` partitions of
/// the enriched topic, checkpointing the merge state every `checkpoint_interval`.
pub async fn run(
    kafka: KafkaConfig,
    topics: Topics,
    partitions: i32,
    checkpoint_interval: Duration,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer<GroupConsumerContext> =
        kafka.group_consumer(&topics.group("merger"), GroupConsumerContext::new("merger"))?;
    consumer.subscribe(&[&topics.partials()])?;
    let mut state = MergerState::new(kafka, &topics, partitions, checkpoint_interval)?;
    while !cancel.is_cancelled() {
        // Short waits: snapshots of open windows are read between batches.
        let batch = recv_batch(&consumer, 10_000, &cancel, Duration::from_millis(100)).await;
        if !batch.is_empty() {
            metrics::counter!(telemetry::RECORDS_CONSUMED, "service" => "merger").increment(batch.len() as u64);
        }
        if !consumer.context().take().is_empty() {
            state.start_over();
        }
        // Only the merger that owns the partial-totals partition keeps provisional
        // figures, so that a sum over instances counts each open window once.
        let active = consumer.assignment().is_ok_and(|a| a.count() > 0);
        state.follow_assignment(&consumer, active).await?;
        let mut step = Step::default();
        for m in &batch {
            state.merge(m, &mut step).await?;
        }
        state.finish_batch(step).await?;
        if active {
            state.checkpoint_if_due().await;
        }
    }
    state.stop(&consumer).await
}

/// The merger's state between batches: the merge itself, where it stands in the
/// partial-totals topic, what the business counters hold, its checkpoints and the
/// provisional figures.
struct MergerState {
    kafka: KafkaConfig,
    partials_topic: String,
    totals_topic: String,
    open_windows_topic: String,
    /// Partitions of the enriched topic.
    partitions: i32,
    /// The totals published.
    outbox: Outbox<()>,
    merger: Merger,
    /// Read when this merger takes the partial totals over, not when it starts: a
    /// standby that read them at its start would count again the windows published
    /// between its start and its take-over.
    counted: Counted,
    position: Position,
    checkpoints: Checkpoints,
    live: Live,
}

impl MergerState {
    fn new(kafka: KafkaConfig, topics: &Topics, partitions: i32, checkpoint_interval: Duration) -> Result<Self> {
        Ok(Self {
            outbox: Outbox::new(kafka.stage_producer("merger")?),
            checkpoints: Checkpoints::new(&kafka, topics.merger_checkpoints(), checkpoint_interval)?,
            kafka,
            partials_topic: topics.partials(),
            totals_topic: topics.totals(),
            open_windows_topic: topics.open_windows(),
            partitions,
            merger: Merger::new().for_partitions(partitions),
            counted: Counted::default(),
            position: Position::default(),
            live: Live::default(),
        })
    }

    /// Forgets the merge after a revocation. Whoever owns the partition next restores
    /// the newest checkpoint and reads on from the offset it covers, this merger too if
    /// it gets it back. Records fetched before the revocation may come from anywhere in
    /// the topic: only the one at the restored state's next offset is merged (see
    /// [`Position`]).
    fn start_over(&mut self) {
        self.merger = Merger::new().for_partitions(self.partitions);
        self.counted = Counted::default();
        self.live.stop();
        self.position = Position::default();
    }

    /// Takes the partition over when it has just become this merger's (`active`), and
    /// starts or stops the provisional figures to match.
    async fn follow_assignment(&mut self, consumer: &StreamConsumer<GroupConsumerContext>, active: bool) -> Result<()> {
        let restored = active && !self.position.restored;
        if restored {
            self.counted = Counted::read(&self.kafka, &self.totals_topic).await?;
            self.merger =
                take_over(&self.kafka, consumer, &self.partials_topic, &self.checkpoints.topic, self.partitions, &mut self.position)
                    .await?;
            self.checkpoints.written = self.position.next;
        }
        if active && self.live.reader.is_none() {
            self.live.start(&self.kafka, &self.open_windows_topic, self.counted.through_ms)?;
        } else if !active && self.live.reader.is_some() {
            self.live.stop();
        }
        if restored {
            // The restored partials of windows still open on some partition belong in
            // the provisional figures, as they would had they been read again.
            for (start, end, key, partition, tallies) in self.merger.pending_parts() {
                self.live.heard_tallies(partition, start, end, key, tallies, 0);
            }
        }
        Ok(())
    }

    /// Merges the record `m` if it is the one the state is at ([`Position::take`]).
    async fn merge(&mut self, m: &BorrowedMessage<'_>, step: &mut Step) -> Result<()> {
        if !self.position.take(m.offset()) {
            return Ok(());
        }
        let record = match m.payload().map(PartialRecord::decode) {
            Some(Ok(r)) => r,
            _ => {
                tracing::error!(offset = m.offset(), "Unreadable partial-total record; skipped.");
                return Ok(());
            }
        };
        match record.kind {
            Some(partial_record::Kind::Partial(p)) => self.partial(&p, m.offset(), step).await,
            Some(partial_record::Kind::Progress(progress)) => self.progress(&progress, m.offset(), step).await,
            None => Ok(()),
        }
    }

    /// A partition's partial total of a window, read at `offset`.
    async fn partial(&mut self, p: &PartialTotal, offset: i64, step: &mut Step) -> Result<()> {
        let outcome = match self.merger.add_partial(p) {
            Ok(PartialOutcome::Accepted) => {
                if let Some(total) = p.total.as_ref() {
                    self.live.heard(p.partition, total, p.newest_record_ms);
                }
                "accepted"
            }
            Ok(PartialOutcome::Repeated) => "repeated",
            Ok(PartialOutcome::Corrected(window)) => {
                tracing::warn!(
                    window_start = %millis_timestamp(window.start_ms),
                    partition = p.partition,
                    "Partial total for a window already published; its corrected total is published in place."
                );
                publish(&mut self.outbox, &self.totals_topic, &window).await?;
                step.counted.push((window, false));
                "corrected"
            }
            Ok(PartialOutcome::TooLate) => {
                tracing::error!(
                    offset,
                    partition = p.partition,
                    "Partial total for a window published more than the merger's retention ago; not merged."
                );
                "too_late"
            }
            Err(e) => {
                tracing::error!(error = %e, offset, "Conflicting partial total; keeping the first.");
                "conflict"
            }
        };
        metrics::counter!(telemetry::MERGER_PARTIALS, "outcome" => outcome).increment(1);
        Ok(())
    }

    /// A partition's progress, read at `offset`: publishes the windows it closes on
    /// every partition.
    async fn progress(&mut self, progress: &PartitionProgress, offset: i64, step: &mut Step) -> Result<()> {
        if !self.merger.fits(progress) {
            metrics::counter!(telemetry::MERGER_PARTIALS, "outcome" => "stray_progress").increment(1);
            tracing::error!(
                offset,
                partition = progress.partition,
                partition_count = progress.partition_count,
                expected = self.partitions,
                "Progress record for partitions other than the enriched topic's; ignored."
            );
            return Ok(());
        }
        for window in self.merger.progress(progress) {
            publish(&mut self.outbox, &self.totals_topic, &window).await?;
            tracing::info!(window_start = %millis_timestamp(window.start_ms), keys = window.totals.len(), "Window closed on every partition; totals published.");
            step.counted.push((window, true));
        }
        Ok(())
    }

    /// After a batch: takes in the open-window snapshots, waits for the totals to be
    /// on the broker, then updates the metrics.
    async fn finish_batch(&mut self, mut step: Step) -> Result<()> {
        self.live.read_snapshots(self.partitions, &mut step);
        if let Some(r) = self.outbox.settle().await?.rejected.first() {
            // A total is a few hundred bytes: only a misconfigured topic refuses one.
            return Err(Error::Refused(r.reason()));
        }
        // The totals are on the broker: count them, and take their windows out of the
        // provisional figures, in one step.
        let finalized = self.merger.emitted_through_ms().map(|t| self.live.provisional.finalize_through(t)).unwrap_or_default();
        self.live.changed |= !finalized.is_empty();
        // Summed only when something changed (the gauges keep their values meanwhile).
        let figures = std::mem::take(&mut self.live.changed).then(|| self.live.figures());
        telemetry::consistently(|| {
            for (window, closed) in &step.counted {
                self.counted.record_metrics(window, *closed);
            }
            if let Some(figures) = &figures {
                self.live.export(figures);
            }
        });
        let now = now_ms();
        for w in finalized.iter().filter(|w| w.newest_record_ms > 0) {
            metrics::histogram!(telemetry::END_TO_END_LATENCY).record(now.saturating_sub(w.newest_record_ms).max(0) as f64 / 1000.0);
        }
        for newest in step.snapshot_newest.iter().filter(|n| **n > 0) {
            metrics::histogram!(telemetry::PROVISIONAL_LATENCY).record(now.saturating_sub(*newest).max(0) as f64 / 1000.0);
        }
        self.position.caught_up();
        Ok(())
    }

    /// Writes a checkpoint when one is due. Call it only after [`Self::finish_batch`]:
    /// every total the state implies is then on the broker.
    async fn checkpoint_if_due(&mut self) {
        if self.position.restored && self.checkpoints.due() {
            self.checkpoints.write(&self.merger, &self.partials_topic, self.position.next).await;
        }
    }

    /// Stops: the figures go to 0, the totals are flushed and, if the partition is
    /// still this merger's, a last checkpoint is written.
    async fn stop(mut self, consumer: &StreamConsumer<GroupConsumerContext>) -> Result<()> {
        self.live.stop();
        self.outbox.close(Duration::from_secs(10)).await?;
        if self.position.restored && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            self.checkpoints.write(&self.merger, &self.partials_topic, self.position.next).await;
        }
        self.checkpoints.outbox.close(Duration::from_secs(10)).await?;
        Ok(())
    }
}

/// Takes the partial-totals partition over: restores the newest merger checkpoint (none,
/// or one not usable: an empty state from the topic's first record), and moves the
/// consumer to the first record after it.
async fn take_over(
    kafka: &KafkaConfig,
    consumer: &StreamConsumer<GroupConsumerContext>,
    partials: &str,
    checkpoints: &str,
    partitions: i32,
    position: &mut Position,
) -> Result<Merger> {
    let began = Instant::now();
    let (k, t) = (kafka.clone(), checkpoints.to_owned());
    let cp =
        tokio::task::spawn_blocking(move || checkpoint::restore_merger(&k, &t)).await.expect("reading the merger checkpoint panicked")?;
    let (merger, next) = match cp.map(|cp| (Merger::restore(&cp, Some(partitions)), cp)) {
        Some((Ok(m), cp)) if cp.topic == partials => (m, cp.next_offset),
        Some((Ok(_), cp)) => {
            tracing::warn!(topic = %cp.topic, "The merger checkpoint is of another partial-totals topic; starting from the beginning.");
            (Merger::new().for_partitions(partitions), 0)
        }
        Some((Err(e), _)) => {
            tracing::warn!(error = %e, "The merger checkpoint is not usable; starting from the beginning.");
            (Merger::new().for_partitions(partitions), 0)
        }
        None => (Merger::new().for_partitions(partitions), 0),
    };
    let (low, high) = consumer.fetch_watermarks(partials, 0, Duration::from_secs(10)).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Cannot read the partial-totals topic's offsets; assuming it starts at 0.");
        (0, -1)
    });
    // A checkpoint past the topic's end belongs to an earlier topic of the same name
    // (deleted and created again): its state is not this topic's.
    let (merger, next) = if high >= 0 && next > high {
        tracing::warn!(
            offset = next,
            end = high,
            "The merger checkpoint is past the partial-totals topic's end; starting from the beginning."
        );
        (Merger::new().for_partitions(partitions), 0)
    } else {
        (merger, next)
    };
    // Records before the topic's first one are gone (retention): the merge starts
    // from the first there is, as it would without a checkpoint.
    let next = next.max(low);
    if next > low {
        // Only a shortcut: records before `next` are skipped anyway when the seek fails.
        if let Err(e) = consumer.seek(partials, 0, Offset::Offset(next), Duration::from_secs(10)) {
            tracing::warn!(error = %e, offset = next, "Cannot seek to the checkpoint's offset; reading from the start and skipping.");
        }
    }
    let took = began.elapsed();
    metrics::histogram!(telemetry::MERGER_RESTORE_SECONDS).record(took.as_secs_f64());
    tracing::info!(
        from_offset = next,
        to_read = (high - next).max(0),
        pending_windows = merger.pending_windows(),
        took_ms = took.as_millis() as u64,
        "Merger took the partial totals over."
    );
    *position = Position { restored: true, next, catch_up_to: high, began: Some(Instant::now()) };
    Ok(merger)
}

/// Where the merge state stands in the partial-totals topic: it reflects exactly the
/// records before `next`. A record is merged only at `next`: one before it is in the
/// state already (read again, from the start or after a seek), one after it was fetched
/// before a revocation or a seek, and is read again in its turn.
#[derive(Debug, Default)]
struct Position {
    /// Whether the state was restored since this merger last took the partition over.
    restored: bool,
    next: i64,
    /// The end of the topic when it was taken over: the records up to it are the
    /// take-over's catch-up.
    catch_up_to: i64,
    began: Option<Instant>,
}

impl Position {
    /// Whether the record at `offset` is to be merged (and the state then moves past it).
    fn take(&mut self, offset: i64) -> bool {
        if !self.restored || offset != self.next {
            return false;
        }
        self.next = offset + 1;
        if offset < self.catch_up_to {
            metrics::counter!(telemetry::MERGER_RESTORE_RECORDS).increment(1);
        }
        true
    }

    /// Logs once when the take-over's catch-up is done.
    fn caught_up(&mut self) {
        if self.next >= self.catch_up_to {
            if let Some(began) = self.began.take() {
                tracing::info!(
                    offset = self.next,
                    took_ms = began.elapsed().as_millis() as u64,
                    "Merger caught up with the partial totals."
                );
            }
        }
    }
}

/// The merger checkpoint topic and when it was last written.
struct Checkpoints {
    topic: String,
    outbox: Outbox<()>,
    interval: Duration,
    last: Instant,
    /// The next offset of the newest checkpoint written or restored.
    written: i64,
}

impl Checkpoints {
    fn new(kafka: &KafkaConfig, topic: String, interval: Duration) -> Result<Self> {
        Ok(Self { topic, outbox: Outbox::new(kafka.stage_producer("merger")?), interval, last: Instant::now(), written: 0 })
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// Writes the state covering the records before `next` (when it moved on since the
    /// last one) and waits for it. A refused checkpoint is counted and logged: the
    /// previous one stays in force, and a take-over reads a little more.
    async fn write(&mut self, merger: &Merger, partials: &str, next: i64) {
        self.last = Instant::now();
        if next <= self.written {
            return;
        }
        let cp: MergerCheckpoint = merger.checkpoint(partials, next);
        let bytes = cp.encode_to_vec();
        let sent =
            self.outbox.send(FutureRecord::to(&self.topic).partition(0).key(records::MERGER_CHECKPOINT_KEY).payload(&bytes), ()).await;
        let refused = match sent {
            Ok(()) => match self.outbox.settle().await {
                Ok(s) => s.rejected.first().map(|r| r.reason()),
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        match refused {
            None => {
                self.written = next;
                metrics::counter!(telemetry::MERGER_CHECKPOINTS, "outcome" => "written").increment(1);
                tracing::debug!(offset = next, bytes = bytes.len(), "Merger checkpoint written.");
            }
            Some(reason) => {
                metrics::counter!(telemetry::MERGER_CHECKPOINTS, "outcome" => "refused").increment(1);
                tracing::error!(topic = %self.topic, offset = next, bytes = bytes.len(), reason, "Merger checkpoint refused; the previous one stays in force.");
            }
        }
    }
}

/// What a batch did that the metrics show, in one step after the batch's totals are on
/// the broker.
#[derive(Debug, Default)]
struct Step {
    /// Windows published (`true`: closed on every partition; `false`: a correction).
    counted: Vec<(ClosedWindow, bool)>,
    /// Newest event's broker timestamp of each snapshot taken in.
    snapshot_newest: Vec<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How far back (by broker timestamp) an active merger starts reading snapshots:
/// further than a partition's refresh of unchanged open windows (10 s).
const SNAPSHOT_LOOKBACK: Duration = Duration::from_secs(30);

/// The provisional figures of the active merger: the snapshots' reader, the
/// bookkeeping, and the gauge labels exported so far.
#[derive(Default)]
struct Live {
    reader: Option<BaseConsumer>,
    provisional: Provisional,
    /// Every label set exported (bounded like the final counters'), so a label whose
    /// windows all became final is set to 0 rather than left at its last value.
    events: BTreeSet<(String, String, &'static str)>,
    amounts: BTreeSet<(String, String, String, &'static str)>,
    /// Whether the figures may have changed since they were last exported.
    changed: bool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("active", &self.reader.is_some()).field("windows", &self.provisional.windows()).finish()
    }
}

impl Live {
    /// Becomes active: reads snapshots from [`SNAPSHOT_LOOKBACK`] ago; windows ending at
    /// or before `final_through_ms` (published already) are final.
    fn start(&mut self, kafka: &KafkaConfig, topic: &str, final_through_ms: Option<i64>) -> Result<()> {
        self.provisional.reset();
        if let Some(t) = final_through_ms {
            self.provisional.finalize_through(t);
        }
        let reader = kafka.reader()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(now_ms() - SNAPSHOT_LOOKBACK.as_millis() as i64))?;
        let start = match reader.offsets_for_times(tpl, Duration::from_secs(10)) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot find where recent open-window snapshots start; reading new ones only.");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, 0, Offset::End)?;
                tpl
            }
        };
        reader.assign(&start)?;
        self.reader = Some(reader);
        Ok(())
    }

    /// Stops (another merger is active, or this one starts over): the figures go to 0.
    fn stop(&mut self) {
        self.reader = None;
        self.provisional.reset();
        let figures = Figures::default();
        telemetry::consistently(|| self.export(&figures));
    }

    /// A partial total taken into the merge: the partition's last word on the window.
    fn heard(&mut self, partition: i32, total: &orderflow_proto::v1::WindowTotal, newest_record_ms: i64) {
        if self.reader.is_none() {
            return;
        }
        let (Some(start), Some(end)) = (total.window_start.as_ref(), total.window_end.as_ref()) else { return };
        let (key, tallies) = Tallies::from_window_total(total);
        self.changed = true;
        self.provisional.heard(partition, timestamp_millis(start), timestamp_millis(end), &key, &tallies, newest_record_ms);
    }

    /// A restored partial of a window not emitted yet.
    fn heard_tallies(&mut self, partition: i32, start_ms: i64, end_ms: i64, key: &TotalKey, tallies: &Tallies, newest_record_ms: i64) {
        if self.reader.is_none() {
            return;
        }
        self.changed = true;
        self.provisional.heard(partition, start_ms, end_ms, key, tallies, newest_record_ms);
    }

    /// Takes in the snapshots fetched so far (at most a batch's worth).
    fn read_snapshots(&mut self, partitions: i32, step: &mut Step) {
        let Some(reader) = self.reader.as_ref() else { return };
        let mut snapshots = Vec::new();
        while snapshots.len() < 10_000 {
            match reader.poll(Duration::ZERO) {
                Some(Ok(m)) => match m.payload().map(OpenWindows::decode) {
                    Some(Ok(s)) => snapshots.push(s),
                    _ => {
                        metrics::counter!(telemetry::MERGER_OPEN_SNAPSHOTS, "outcome" => "stray").increment(1);
                        tracing::error!(offset = m.offset(), "Unreadable open-windows snapshot; skipped.");
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Reading open-window snapshots failed.");
                    break;
                }
                None => break,
            }
        }
        for s in snapshots {
            if s.partition_count != partitions || !(0..partitions).contains(&s.partition) {
                metrics::counter!(telemetry::MERGER_OPEN_SNAPSHOTS, "outcome" => "stray").increment(1);
                tracing::error!(
                    partition = s.partition,
                    partition_count = s.partition_count,
                    "Open-windows snapshot for other partitions; ignored."
                );
                continue;
            }
            metrics::counter!(telemetry::MERGER_OPEN_SNAPSHOTS, "outcome" => "applied").increment(1);
            for total in &s.open {
                // Its newest timestamp is the partition's, not each window's: the
                // windows' own come with their partials.
                self.heard(s.partition, total, 0);
            }
            step.snapshot_newest.push(s.newest_record_ms);
        }
    }

    fn figures(&self) -> Figures {
        self.provisional.figures()
    }

    /// Sets the provisional gauges to `f` (labels not in it to 0).
    fn export(&mut self, f: &Figures) {
        self.events.extend(f.events.keys().cloned());
        self.amounts.extend(f.amounts.keys().cloned());
        for k @ (region, tier, kind) in &self.events {
            let v = f.events.get(k).copied().unwrap_or(0);
            let labels = [("region", region.clone()), ("tier", tier.clone()), ("type", (*kind).to_owned())];
            metrics::gauge!(telemetry::OPEN_WINDOW_EVENTS, &labels).set(v as f64);
        }
        for k @ (region, tier, currency, kind) in &self.amounts {
            let v = f.amounts.get(k).copied().unwrap_or(0);
            let labels = [("region", region.clone()), ("tier", tier.clone()), ("currency", currency.clone()), ("type", (*kind).to_owned())];
            metrics::gauge!(telemetry::OPEN_WINDOW_AMOUNT, &labels).set(v as f64);
        }
    }
}

/// Publishes a merged window's totals (all of a closed window's keys, or one corrected
/// key); the caller adds them to the business counters once they are on the broker.
async fn publish(outbox: &mut Outbox<()>, topic: &str, window: &ClosedWindow) -> Result<()> {
    for total in window.to_window_totals() {
        let key = records::total_key(window.start_ms, &total.region, &total.tier, &total.currency);
        let value = total.encode_to_vec();
        outbox.send(FutureRecord::to(topic).key(&key).payload(&value), ()).await?;
    }
    Ok(())
}

/// What the business counters already hold, per (window, key): the totals on the
/// totals topic when this merger took the partial totals over, then every total it
/// published. A merger rebuilding its state re-publishes totals (harmless:
/// same keys, same values) and adds only the difference to the counters, so a
/// failover never doubles the GMV on a dashboard summing over instances, and a
/// correction adds exactly what it corrects.
#[derive(Debug, Default)]
struct Counted {
    published: HashMap<(i64, TotalKey), Tallies>,
    /// End of the newest window on the totals topic when read.
    through_ms: Option<i64>,
}

impl Counted {
    async fn read(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let (kafka, topic) = (kafka.clone(), topic.to_owned());
        let totals = tokio::task::spawn_blocking(move || crate::totals::read(&kafka, &topic)).await.expect("reading totals panicked")?;
        let published: HashMap<(i64, TotalKey), Tallies> = totals
            .iter()
            .map(|t| {
                let (key, tallies) = Tallies::from_window_total(t);
                ((t.window_start.as_ref().map_or(i64::MIN, orderflow_proto::timestamp_millis), key), tallies)
            })
            .collect();
        if !published.is_empty() {
            tracing::info!(totals = published.len(), "Totals already published; they are not counted in the metrics again.");
        }
        let through_ms = totals.iter().filter_map(|t| t.window_end.as_ref().map(orderflow_proto::timestamp_millis)).max();
        Ok(Self { published, through_ms })
    }

    /// Adds to the business counters what a merged window's totals hold beyond what
    /// they already counted for the same (window, key); `closed` when the window has
    /// just closed on every partition (not a correction).
    fn record_metrics(&mut self, w: &ClosedWindow, closed: bool) {
        if closed {
            metrics::gauge!(telemetry::WINDOW_LAST_CLOSED_END).set(w.end_ms as f64 / 1000.0);
        }
        let mut new = false;
        for (key, tallies) in &w.totals {
            let before = self.published.insert((w.start_ms, key.clone()), *tallies);
            new |= before.is_none();
            for (i, (name, t)) in TYPE_NAMES.iter().zip(tallies.0.iter()).enumerate() {
                let was = before.as_ref().map(|b| b.0[i]).unwrap_or_default();
                let (count, amount) = (t.count - was.count, t.amount_minor - was.amount_minor);
                if count <= 0 {
                    continue;
                }
                let labels = [("region", key.region.clone()), ("tier", key.tier.clone()), ("type", (*name).to_owned())];
                metrics::counter!(telemetry::WINDOW_EVENTS, &labels).increment(count as u64);
                let labels = [
                    ("region", key.region.clone()),
                    ("tier", key.tier.clone()),
                    ("currency", key.currency.clone()),
                    ("type", (*name).to_owned()),
                ];
                metrics::counter!(telemetry::WINDOW_AMOUNT, &labels).increment(amount.max(0) as u64);
            }
        }
        if new && closed {
            metrics::counter!(telemetry::WINDOWS_CLOSED).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch in hand when the partition was revoked (and given back) holds records
    /// from the middle of the topic, then the topic again from the restored state's
    /// offset (or from its start, when the seek did not happen): only the records from
    /// that offset on are merged, each once, none lost.
    #[test]
    fn only_the_record_at_the_state_s_next_offset_is_merged() {
        let mut position = Position::default();
        assert!(!position.take(0), "nothing merged before the state is restored");
        position = Position { restored: true, next: 3, catch_up_to: 5, began: None };
        let merged: Vec<i64> = [41, 42, 43, 0, 1, 2, 3, 4, 5, 41, 3, 6].into_iter().filter(|o| position.take(*o)).collect();
        assert_eq!(merged, [3, 4, 5, 6]);
        assert_eq!(position.next, 7);
    }
}
