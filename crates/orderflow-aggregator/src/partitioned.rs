//! Stage 1: per-partition aggregation with checkpoints.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use orderflow_core::partition::{Outcome, PartitionState};
use orderflow_core::validate::InvalidReason;
use orderflow_core::window::{ClosedWindow, WindowSpec};
use orderflow_core::wire::{undecodable, EnrichedKind, EnrichedView};
use orderflow_proto::v1::{enriched_record, partial_record, EnrichedRecord, IdleTick, PartialRecord, PartialTotal, PartitionProgress};
use orderflow_proto::{millis_timestamp, timestamp_millis, Message as _};
use orderflow_runtime::kafka::{partition_count, recv_batch, send, KafkaArgs, RevocationLog};
use orderflow_runtime::topics::{self, TopicArgs, TopicSpec};
use orderflow_runtime::{dead_letter, telemetry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::idle::{self, Quiet};
use crate::upstream::Watch;
use crate::{checkpoint, merger, AggregatorArgs, Error, Result};

/// Header of a late record: start of the window it missed (RFC 3339).
pub const LATE_WINDOW_START: &str = "orderflow-window-start";
/// Header of a late record: the partition's closed-through frontier when it arrived.
pub const LATE_CLOSED_THROUGH: &str = "orderflow-closed-through";

/// `max.message.bytes` of the checkpoint topic orderflow creates (64 MiB).
pub const CHECKPOINT_MAX_BYTES: u64 = 64 << 20;

/// Records parsed and prepared ahead of processing at a time (benches/README.md: the
/// `decode_apply_batched` benchmark uses the same chunk).
const PREPARE_CHUNK: usize = 32;

/// A record parsed ahead of processing.
struct Parsed<'a> {
    record: std::result::Result<Option<EnrichedKind<'a>>, InvalidReason>,
    /// For an event of a partition owned when parsed.
    prepared: Option<orderflow_core::partition::Prepared>,
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
}

/// Creates missing topics and runs both stages (partitions and merger) until `cancel`.
pub async fn run(kafka: &KafkaArgs, topics: &TopicArgs, args: &AggregatorArgs, cancel: CancellationToken) -> Result<()> {
    let (spec, horizon) = args.spec()?;
    topics::ensure(
        kafka,
        &[
            topics.wide(topics.orders()),
            topics.wide(topics.enriched()),
            topics.wide(topics.dead_letter()),
            topics.wide(topics.late()),
            topics.narrow(topics.partials(), false),
            topics.narrow(topics.totals(), true),
        ],
    )
    .await?;
    let probe = kafka.reader()?;
    let input_partitions = partition_count(&probe, &topics.enriched())?;
    let cp_spec = TopicSpec {
        name: topics.checkpoints(),
        partitions: input_partitions,
        replication: topics.replication_factor,
        compact: true,
        // A checkpoint holds a partition's dedup memory: megabytes at peak rates.
        max_message_bytes: Some(CHECKPOINT_MAX_BYTES),
    };
    topics::ensure(kafka, &[cp_spec]).await?;
    let cp_partitions = partition_count(&probe, &topics.checkpoints())?;
    if cp_partitions < input_partitions {
        return Err(Error::Config(format!(
            "checkpoint topic `{}` has {cp_partitions} partitions but `{}` has {input_partitions}; it needs at least as many",
            topics.checkpoints(),
            topics.enriched()
        )));
    }
    drop(probe);
    let watch_cancel = cancel.child_token();
    let (watch, watcher) = Watch::spawn(kafka, topics, watch_cancel.clone());
    let merge = merger::run(kafka, topics, cancel.clone());
    let aggregate = Aggregator::new(kafka, topics, args, spec, horizon, input_partitions, watch)?.run(cancel.clone());
    let (a, m) = tokio::join!(aggregate, merge);
    watch_cancel.cancel();
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    a.and(m)
}

struct Aggregator {
    kafka: KafkaArgs,
    args: AggregatorArgs,
    spec: WindowSpec,
    horizon: i64,
    input: String,
    partitions: i32,
    partials_topic: String,
    late_topic: String,
    dlq_topic: String,
    cp_topic: String,
    producer: FutureProducer,
    consumer: std::sync::Arc<StreamConsumer<RevocationLog>>,
    owned: HashMap<i32, Owned>,
    pending: Vec<(String, DeliveryFuture)>,
    last_checkpoint: Instant,
    watch: Watch,
    /// When input last came back to a partition after `--idle-close` without any
    /// (see [`idle::ticks`]).
    last_resumed: Option<Instant>,
}

impl Aggregator {
    fn new(
        kafka: &KafkaArgs,
        topics: &TopicArgs,
        args: &AggregatorArgs,
        spec: WindowSpec,
        horizon: i64,
        partitions: i32,
        watch: Watch,
    ) -> Result<Self> {
        let consumer: StreamConsumer<RevocationLog> = kafka.group_consumer(&topics.group("aggregator"), RevocationLog::default())?;
        consumer.subscribe(&[&topics.enriched()])?;
        Ok(Self {
            kafka: kafka.clone(),
            args: args.clone(),
            spec,
            horizon,
            input: topics.enriched(),
            partitions,
            partials_topic: topics.partials(),
            late_topic: topics.late(),
            dlq_topic: topics.dead_letter(),
            cp_topic: topics.checkpoints(),
            producer: kafka.producer()?,
            consumer: std::sync::Arc::new(consumer),
            owned: HashMap::new(),
            pending: Vec::new(),
            last_checkpoint: Instant::now(),
            watch,
            last_resumed: None,
        })
    }

    async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        tracing::info!(input = %self.input, window_ms = self.spec.size_ms(), lateness_ms = self.spec.lateness_ms(), "Aggregator running.");
        let mut housekeeping = Instant::now();
        let consumer = self.consumer.clone();
        while !cancel.is_cancelled() {
            let batch = recv_batch(&consumer, self.args.batch, &cancel, Duration::from_millis(200)).await;
            self.forget_revoked();
            if !batch.is_empty() {
                let partitions: Vec<i32> = batch.iter().map(|m| m.partition()).filter(|p| !self.owned.contains_key(p)).collect();
                self.take_over(partitions).await?;
                // A few dozen records at a time: parse them and prepare their events
                // (the dedup look-ups' cache misses overlap), then process them in
                // order. Small chunks keep what was prepared in cache until it is used.
                for chunk in batch.chunks(PREPARE_CHUNK) {
                    let parsed: Vec<Parsed<'_>> = chunk.iter().map(|m| self.parse(m)).collect();
                    for (m, parsed) in chunk.iter().zip(parsed) {
                        self.process(m, parsed).await?;
                    }
                }
                drop(batch);
                self.settle().await?;
            }
            if housekeeping.elapsed() >= Duration::from_millis(500) {
                housekeeping = Instant::now();
                let assigned: Vec<i32> = match self.consumer.assignment() {
                    Ok(tpl) => tpl.elements().iter().map(|e| e.partition()).filter(|p| !self.owned.contains_key(p)).collect(),
                    Err(_) => Vec::new(),
                };
                self.take_over(assigned).await?;
                self.idle_ticks().await?;
            }
            if self.last_checkpoint.elapsed() >= self.args.checkpoint_interval {
                self.checkpoint().await?;
            }
        }
        self.settle().await?;
        self.checkpoint().await?;
        self.producer.flush(Duration::from_secs(10))?;
        tracing::info!("Aggregator stopped.");
        Ok(())
    }

    /// Drops the state of partitions taken away: their next owner restores the last
    /// checkpoint and re-processes from its offset.
    fn forget_revoked(&mut self) {
        for p in self.consumer.context().take() {
            self.owned.remove(&p);
            metrics::gauge!(telemetry::AGGREGATOR_WATERMARK, "partition" => p.to_string()).set(f64::NAN);
        }
    }

    /// Restores newly owned partitions from their checkpoints.
    async fn take_over(&mut self, mut partitions: Vec<i32>) -> Result<()> {
        partitions.sort_unstable();
        partitions.dedup();
        if partitions.is_empty() {
            return Ok(());
        }
        let (kafka, topic, ps) = (self.kafka.clone(), self.cp_topic.clone(), partitions.clone());
        let started = Instant::now();
        let mut found =
            tokio::task::spawn_blocking(move || checkpoint::restore(&kafka, &topic, &ps)).await.expect("restore task panicked")?;
        for p in partitions {
            let owned = match found.remove(&p) {
                Some(cp) => {
                    metrics::counter!(telemetry::AGGREGATOR_RESTORES, "from" => "checkpoint").increment(1);
                    let state = PartitionState::restore(&cp, self.spec, self.horizon)?;
                    tracing::info!(
                        partition = p,
                        next_offset = cp.next_offset,
                        open_windows = state.open_windows(),
                        "Partition restored from checkpoint."
                    );
                    Owned { state, next_offset: cp.next_offset, checkpointed: cp.next_offset, last_input: Instant::now(), tick_sent: None }
                }
                None => {
                    metrics::counter!(telemetry::AGGREGATOR_RESTORES, "from" => "scratch").increment(1);
                    tracing::info!(partition = p, "Partition starts from scratch.");
                    Owned {
                        state: PartitionState::new(self.spec, self.horizon),
                        next_offset: 0,
                        checkpointed: -1,
                        last_input: Instant::now(),
                        tick_sent: None,
                    }
                }
            };
            self.owned.insert(p, owned);
        }
        metrics::histogram!(telemetry::AGGREGATOR_RESTORE_SECONDS).record(started.elapsed().as_secs_f64());
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "Take-over done.");
        Ok(())
    }

    /// Parses a record as a view borrowing its payload (no allocation per event) and,
    /// for an event of an owned partition, prepares it (see [`PartitionState::prepare`]).
    fn parse<'a>(&self, m: &'a rdkafka::message::BorrowedMessage<'_>) -> Parsed<'a> {
        let payload = m.payload().unwrap_or_default();
        let record = EnrichedView::parse(payload).map(|r| r.kind).map_err(|e| undecodable::<EnrichedRecord>(payload, &e));
        let prepared = match (&record, self.owned.get(&m.partition())) {
            (Ok(Some(EnrichedKind::Event(e))), Some(owned)) => Some(owned.state.prepare(e)),
            _ => None,
        };
        Parsed { record, prepared }
    }

    async fn process(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, parsed: Parsed<'_>) -> Result<()> {
        let (p, offset) = (m.partition(), m.offset());
        let Some(owned) = self.owned.get_mut(&p) else { return Ok(()) };
        let now = Instant::now();
        // Our own ticks read back are not input coming back.
        let tick = matches!(parsed.record, Ok(Some(EnrichedKind::IdleTick(_))));
        if !tick && idle::resumed(now, owned.last_input, self.args.idle_close) {
            self.last_resumed = Some(now);
        }
        owned.last_input = now;
        if offset < owned.next_offset {
            return Ok(()); // already in the restored state
        }
        if offset > owned.next_offset && owned.checkpointed >= 0 {
            tracing::warn!(partition = p, expected = owned.next_offset, got = offset, "Input offsets skipped ahead of the checkpoint.");
        }
        owned.next_offset = offset + 1;
        let before = owned.state.closed_through_ms();
        let mut closed = Vec::new();
        let payload = m.payload().unwrap_or_default();
        let Parsed { record, prepared } = parsed;
        let late = match record {
            Ok(Some(EnrichedKind::IdleTick(Some(t)))) => {
                owned.state.idle_close(timestamp_millis(&t), &mut closed);
                None
            }
            Ok(Some(EnrichedKind::Event(e))) => match owned.state.apply_prepared(
                &e,
                // Prepared when parsed: this partition was owned then, as it is now.
                prepared.unwrap_or_else(|| owned.state.prepare(&e)),
                &mut closed,
            ) {
                Outcome::Counted { .. } => {
                    metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "counted").increment(1);
                    None
                }
                Outcome::Duplicate => {
                    metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "duplicate").increment(1);
                    None
                }
                Outcome::Late { window_start_ms, closed_through_ms } => {
                    metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "late").increment(1);
                    Some((e, window_start_ms, closed_through_ms))
                }
                Outcome::Invalid => {
                    self.dead_letter(m, &InvalidReason::MissingEventTime).await?;
                    None
                }
            },
            Ok(_) => {
                self.dead_letter(m, &InvalidReason::Undecodable("empty EnrichedRecord".into())).await?;
                None
            }
            Err(reason) => {
                self.dead_letter(m, &reason).await?;
                None
            }
        };
        if let Some((view, start, through)) = late {
            // Late events are rare: only they are decoded into an owned event, by prost
            // (which the view matches; it is the fallback should they ever differ).
            let e = match EnrichedRecord::decode(payload) {
                Ok(EnrichedRecord { kind: Some(enriched_record::Kind::Event(e)) }) => e,
                _ => view.to_event(),
            };
            let key = e.event.as_ref().map(|e| e.event_id.clone()).unwrap_or_default();
            let (start, through) = (millis_timestamp(start).to_string(), millis_timestamp(through).to_string());
            let (ps, os) = (p.to_string(), offset.to_string());
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header { key: LATE_WINDOW_START, value: Some(start.as_bytes()) })
                .insert(Header { key: LATE_CLOSED_THROUGH, value: Some(through.as_bytes()) })
                .insert(Header { key: dead_letter::SOURCE_PARTITION, value: Some(ps.as_bytes()) })
                .insert(Header { key: dead_letter::SOURCE_OFFSET, value: Some(os.as_bytes()) });
            let value = e.encode_to_vec();
            let f = send(&self.producer, FutureRecord::to(&self.late_topic).key(&key).payload(&value).headers(headers)).await?;
            self.pending.push((self.late_topic.clone(), f));
        }
        let owned = self.owned.get(&p).expect("owned above");
        let (through, watermark) = (owned.state.closed_through_ms(), owned.state.watermark_ms());
        if watermark != i64::MIN {
            metrics::gauge!(telemetry::AGGREGATOR_WATERMARK, "partition" => p.to_string()).set(watermark as f64 / 1000.0);
        }
        if through != before {
            self.emit(p, &closed, through).await?;
        }
        Ok(())
    }

    /// Publishes the partials of windows closed on `p`, then `p`'s progress.
    async fn emit(&mut self, p: i32, closed: &[ClosedWindow], through: i64) -> Result<()> {
        for w in closed {
            metrics::counter!(telemetry::AGGREGATOR_PARTITION_WINDOWS_CLOSED).increment(1);
            for total in w.to_window_totals() {
                let key = format!("{}/{}/{}/{}/{p}", w.start_ms, total.region, total.tier, total.currency);
                let value = PartialRecord { kind: Some(partial_record::Kind::Partial(PartialTotal { total: Some(total), partition: p })) }
                    .encode_to_vec();
                let f = send(&self.producer, FutureRecord::to(&self.partials_topic).key(&key).payload(&value)).await?;
                self.pending.push((self.partials_topic.clone(), f));
            }
        }
        let progress =
            PartitionProgress { partition: p, closed_through: Some(millis_timestamp(through)), partition_count: self.partitions };
        let value = PartialRecord { kind: Some(partial_record::Kind::Progress(progress)) }.encode_to_vec();
        let key = format!("progress/{p}");
        let f = send(&self.producer, FutureRecord::to(&self.partials_topic).key(&key).payload(&value)).await?;
        self.pending.push((self.partials_topic.clone(), f));
        metrics::gauge!(telemetry::AGGREGATOR_OPEN_WINDOWS).set(self.owned.values().map(|o| o.state.open_windows()).sum::<usize>() as f64);
        Ok(())
    }

    async fn dead_letter(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, reason: &InvalidReason) -> Result<()> {
        metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "invalid").increment(1);
        metrics::counter!(telemetry::DEAD_LETTER_EVENTS, "stage" => "aggregator", "reason" => reason.code()).increment(1);
        let key = dead_letter::key(m.topic(), m.partition(), m.offset());
        let record = FutureRecord::to(&self.dlq_topic).key(&key).payload(m.payload().unwrap_or_default()).headers(dead_letter::headers(
            "aggregator",
            reason,
            m.topic(),
            m.partition(),
            m.offset(),
        ));
        let f = send(&self.producer, record).await?;
        self.pending.push((self.dlq_topic.clone(), f));
        Ok(())
    }

    /// Waits until every output sent so far is on the broker.
    async fn settle(&mut self) -> Result<()> {
        for (topic, r) in join_all(self.pending.drain(..).map(|(t, f)| async move { (t, f.await) })).await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Error::Delivery { topic, source: e }),
                Err(_) => return Err(Error::Delivery { topic, source: rdkafka::error::KafkaError::Canceled }),
            }
        }
        Ok(())
    }

    /// Writes the checkpoint of every partition that progressed, then commits the
    /// offsets they belong to. Outputs are settled first, so a checkpoint never
    /// claims input whose results might be lost.
    async fn checkpoint(&mut self) -> Result<()> {
        self.last_checkpoint = Instant::now();
        self.settle().await?;
        if self.args.no_checkpoints {
            return Ok(());
        }
        let mut written = Vec::new();
        for (&p, owned) in &self.owned {
            if owned.next_offset <= owned.checkpointed {
                continue;
            }
            let bytes = checkpoint::encode(&owned.state.checkpoint(&self.input, p, owned.next_offset));
            metrics::histogram!(telemetry::AGGREGATOR_CHECKPOINT_BYTES).record(bytes.len() as f64);
            let key = p.to_string();
            let f = send(&self.producer, FutureRecord::to(&self.cp_topic).partition(p).key(&key).payload(&bytes)).await?;
            written.push((p, owned.next_offset, bytes.len(), f));
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next, size, f) in written {
            match f.await {
                Ok(Ok(_)) => {
                    tpl.add_partition_offset(&self.input, p, Offset::Offset(next))?;
                    if let Some(o) = self.owned.get_mut(&p) {
                        o.checkpointed = next;
                    }
                    metrics::counter!(telemetry::AGGREGATOR_CHECKPOINTS).increment(1);
                }
                // A checkpoint the broker refuses (too large for the topic's
                // max.message.bytes, say) must not stop aggregation: the previous
                // checkpoint and its committed offset stay valid, so exactness holds and
                // only a restart would re-process more. Say so loudly.
                Ok(Err((e, _))) => {
                    metrics::counter!(telemetry::AGGREGATOR_CHECKPOINT_FAILURES).increment(1);
                    tracing::error!(
                        partition = p,
                        bytes = size,
                        error = %e,
                        topic = %self.cp_topic,
                        "Checkpoint not written; the previous one stays in force. If the record is too large, raise the \
                         topic's max.message.bytes (orderflow creates it with {CHECKPOINT_MAX_BYTES}) or shorten --dedup-horizon."
                    );
                }
                Err(_) => return Err(Error::Delivery { topic: self.cp_topic.clone(), source: rdkafka::error::KafkaError::Canceled }),
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Offset commit failed; the checkpoint is what counts.");
            }
        }
        Ok(())
    }

    /// Writes idle ticks into partitions quiet for `--idle-close`, unless the enricher
    /// owes records (see [`crate::upstream`]) or the reading of the input predates the
    /// input's last resumption (see [`idle::ticks`]). A quiet partition catches up with
    /// the frontier other partitions (of this or any instance) have closed; once the
    /// whole input has been settled for `--idle-close`, every open window closes.
    async fn idle_ticks(&mut self) -> Result<()> {
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
        let Some((target, ticks)) = idle::ticks(Instant::now(), self.args.idle_close, &self.watch.get(), self.last_resumed, &quiet) else {
            return Ok(());
        };
        for p in &ticks {
            if let Some(o) = self.owned.get_mut(p) {
                o.tick_sent = Some(Instant::now());
            }
        }
        for p in ticks {
            metrics::counter!(telemetry::AGGREGATOR_IDLE_TICKS).increment(1);
            tracing::debug!(partition = p, close_through_ms = target, "Writing idle tick.");
            let value =
                EnrichedRecord { kind: Some(enriched_record::Kind::IdleTick(IdleTick { close_through: Some(millis_timestamp(target)) })) }
                    .encode_to_vec();
            let f = send(&self.producer, FutureRecord::<str, [u8]>::to(&self.input).partition(p).payload(&value)).await?;
            self.pending.push((self.input.clone(), f));
        }
        Ok(())
    }
}
