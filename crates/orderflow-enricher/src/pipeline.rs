//! The consume-enrich-produce loop, and [`run`], which supervises it beside the
//! merchant follower.

use std::collections::VecDeque;
use std::time::Duration;

use orderflow_core::framing::{unframe, Format};
use orderflow_core::validate::{InvalidReason, Limits};
use orderflow_runtime::kafka::{partition_count, recv_batch, GroupConsumerContext, KafkaConfig};
use orderflow_runtime::outbox::Outbox;
use orderflow_runtime::records::dead_letter::{self, Source};
use orderflow_runtime::supervisor::Supervisor;
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::{self, Stage, Topics};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::merchants::MerchantStore;
use crate::{EnricherConfig, Error, Result};

/// Creates missing topics, loads the merchant table, then enriches until `cancel`
/// (or until a task fails: the error names it).
pub async fn run(kafka: &KafkaConfig, topics: &Topics, config: &EnricherConfig, cancel: CancellationToken) -> Result<()> {
    // Settings first: a bad one fails before any broker is contacted.
    let limits = config.limits().map_err(Error::Config)?;
    let readiness = telemetry::readiness("enricher");
    readiness.not_ready("connecting to the brokers");
    kafka.check_reachable()?;
    topics::ensure(kafka, &topics.specs(Stage::Enricher)).await?;
    same_partitions(kafka, topics)?;
    readiness.not_ready("loading merchants");
    metrics::gauge!(telemetry::ENRICHER_MERCHANTS_LOADED).set(0.0);
    let (merchants, follower) = MerchantStore::load(kafka, &topics.merchants()).await?;
    metrics::gauge!(telemetry::ENRICHER_MERCHANTS_LOADED).set(1.0);
    readiness.not_ready("merchants loaded; waiting for partitions");
    let consumer: StreamConsumer<GroupConsumerContext> =
        kafka.group_consumer(&topics.group("enricher"), GroupConsumerContext::new("enricher"))?;
    consumer.subscribe(&[&topics.orders()])?;
    let enricher = Enricher {
        outbox: Outbox::new(kafka.stage_producer("enricher")?),
        merchants,
        enriched_topic: topics.enriched(),
        dlq_topic: topics.dead_letter(),
        batch: config.batch,
        max_in_flight: config.max_in_flight,
        limits,
    };
    tracing::info!(input = %topics.orders(), output = %topics.enriched(), "Enricher running.");
    let mut supervisor = Supervisor::new(cancel.child_token());
    let token = supervisor.token();
    supervisor.spawn("enricher", enricher.run(consumer, token.clone()));
    supervisor.spawn_blocking("merchant-follower", move || follower.run(token));
    supervisor.run(config.shutdown_grace).await?;
    tracing::info!("Enricher stopped.");
    Ok(())
}

/// Fails unless the orders and enriched topics have as many partitions: each enriched
/// record goes to its input's partition number.
fn same_partitions(kafka: &KafkaConfig, topics: &Topics) -> Result<()> {
    let probe = kafka.reader()?;
    let (orders, enriched) = (partition_count(&probe, &topics.orders())?, partition_count(&probe, &topics.enriched())?);
    if orders != enriched {
        return Err(Error::Config(format!(
            "`{}` has {orders} partitions but `{}` has {enriched}: they need as many (each enriched record goes to its \
             order's partition number); recreate one of them, or use a new --topic-prefix",
            topics.orders(),
            topics.enriched()
        )));
    }
    Ok(())
}

/// An output's tag: its batch's sequence number and its input's index in the batch.
type Tag = (u64, usize);

/// A batch whose outputs are not all on the broker yet.
struct InFlight<'a> {
    seq: u64,
    messages: Vec<BorrowedMessage<'a>>,
    /// Outputs not yet settled (one per input, plus dead letters of refused outputs).
    outstanding: usize,
}

/// The loop's state.
struct Enricher {
    outbox: Outbox<Tag>,
    merchants: MerchantStore,
    enriched_topic: String,
    dlq_topic: String,
    batch: usize,
    max_in_flight: usize,
    /// What every event is held to (see `orderflow_core::validate::Limits`).
    limits: Limits,
}

impl Enricher {
    async fn run(mut self, consumer: StreamConsumer<GroupConsumerContext>, cancel: CancellationToken) -> Result<()> {
        let result = self.enrich_until(&consumer, &cancel).await;
        // Whatever happened, leave the group cleanly with what was settled committed.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "Final commit failed.");
        }
        let closed = self.outbox.close(Duration::from_secs(10)).await;
        result.and(closed.map(drop).map_err(Into::into))
    }

    /// Reads, enriches and sends batch after batch, without waiting for one batch's
    /// outputs before reading the next (at most `max_in_flight` outputs outstanding).
    /// Batches land in order: a batch's input offsets are stored once every output of
    /// it and of every batch before it is on the broker, so a crash re-processes, and
    /// never skips, what was not delivered.
    async fn enrich_until<'a>(&mut self, consumer: &'a StreamConsumer<GroupConsumerContext>, cancel: &CancellationToken) -> Result<()> {
        let readiness = telemetry::readiness("enricher");
        let mut in_flight: VecDeque<InFlight<'a>> = VecDeque::new();
        let mut next_seq = 0u64;
        loop {
            let batch = recv_batch(consumer, self.batch, cancel, Duration::from_millis(500)).await;
            if !readiness.is_ready() && consumer.context().joined() {
                readiness.ready();
            }
            if batch.is_empty() {
                // Quiet (or stopping): land everything, so that offsets get committed.
                self.land(&mut in_flight, consumer, 0).await?;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            let started = std::time::Instant::now();
            let seq = next_seq;
            next_seq += 1;
            self.enrich(&batch, seq).await?;
            metrics::counter!(telemetry::ENRICHER_EVENTS).increment(batch.len() as u64);
            metrics::counter!(telemetry::RECORDS_CONSUMED, "service" => "enricher").increment(batch.len() as u64);
            metrics::histogram!(telemetry::BATCH_DURATION, "service" => "enricher").record(started.elapsed().as_secs_f64());
            in_flight.push_back(InFlight { seq, outstanding: batch.len(), messages: batch });
            let max_pending = if cancel.is_cancelled() { 0 } else { self.max_in_flight };
            self.land(&mut in_flight, consumer, max_pending).await?;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Settles outputs until at most `max_pending` are outstanding (all of them for 0),
    /// dead-letters the inputs of refused ones, and stores the offsets of the batches at
    /// the front whose outputs have all landed.
    async fn land<'a>(
        &mut self,
        in_flight: &mut VecDeque<InFlight<'a>>,
        consumer: &'a StreamConsumer<GroupConsumerContext>,
        max_pending: usize,
    ) -> Result<()> {
        loop {
            let front_seq = in_flight.front().map_or(0, |b| b.seq);
            let settled = self
                .outbox
                .settle_ready_each(max_pending, |(seq, _)| {
                    if let Some(b) = in_flight.get_mut((seq - front_seq) as usize) {
                        b.outstanding -= 1;
                    }
                })
                .await?;
            let mut retried = 0;
            for r in settled.rejected {
                if r.topic == self.dlq_topic {
                    refused_dead_letter(&r.reason());
                    continue;
                }
                tracing::warn!(topic = %r.topic, error = %r.error, "Output refused by the broker; dead-lettering its input.");
                let (seq, i) = r.tag;
                let b = in_flight.get_mut((seq - front_seq) as usize).expect("a refused output's batch is in flight");
                b.outstanding += 1;
                let m = &b.messages[i];
                self.dead_letter(m, &InvalidReason::RefusedByBroker(r.reason()), r.tag).await?;
                retried += 1;
            }
            let mut stored = false;
            while in_flight.front().is_some_and(|b| b.outstanding == 0) {
                let done = in_flight.pop_front().expect("front exists");
                // Every output of the batch, and of every batch before it, is on the broker:
                // now its input may be forgotten.
                consumer.context().take();
                for m in &done.messages {
                    if let Err(e) = consumer.store_offset(m.topic(), m.partition(), m.offset()) {
                        // The partition moved to another instance; it will re-process from
                        // the last commit and the aggregator's dedup absorbs the repeat.
                        tracing::debug!(partition = m.partition(), error = %e, "Offset not stored.");
                    }
                }
                stored = true;
            }
            if stored {
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                    tracing::debug!(error = %e, "Async commit failed; the next one covers it.");
                }
            }
            // Dead letters of refused outputs were just sent: settle them too when
            // everything is to land.
            if retried == 0 || max_pending > 0 {
                return Ok(());
            }
        }
    }

    /// Validates and joins every record of the batch and sends its output: the enriched
    /// record, or the original bytes to the dead-letter topic with the reason.
    async fn enrich(&mut self, batch: &[BorrowedMessage<'_>], seq: u64) -> Result<()> {
        // One clock reading per batch: the time every event of it is held to.
        let now_ms = now_ms();
        // Decide every output under the table's read lock, then send without it.
        // Records by form: plain protobuf, or Confluent Schema Registry framing.
        let mut registry_framed = 0u64;
        let outputs: Vec<std::result::Result<(String, Vec<u8>), InvalidReason>> = {
            let table = self.merchants.read();
            batch
                .iter()
                .map(|m| {
                    // Told apart per record (see `orderflow_core::framing`); validated
                    // without allocating; the output record is built around the
                    // message's own bytes (no re-encoding). Fields a newer storefront
                    // contract adds pass through to the enriched topic: orderflow's
                    // decoders skip them, as they would on the orders topic.
                    let payload = m.payload().unwrap_or_default();
                    let unframed = unframe(payload);
                    if unframed.as_ref().map_or(true, |u| u.format == Format::SchemaRegistry) {
                        registry_framed += 1;
                    }
                    unframed.and_then(|u| table.enrich_payload(u.message, &self.limits, now_ms)).map(|enriched| {
                        if !enriched.merchant_known {
                            metrics::counter!(telemetry::ENRICHER_UNKNOWN_MERCHANT).increment(1);
                        }
                        (enriched.key, enriched.value)
                    })
                })
                .collect()
        };
        let plain = batch.len() as u64 - registry_framed;
        metrics::counter!(telemetry::ENRICHER_RECORDS, "format" => Format::Protobuf.label()).increment(plain);
        metrics::counter!(telemetry::ENRICHER_RECORDS, "format" => Format::SchemaRegistry.label()).increment(registry_framed);
        for (i, (m, out)) in batch.iter().zip(outputs).enumerate() {
            match out {
                // The input's partition number, whatever partitioner the storefront used:
                // the aggregator's idle ticks rely on an order's partition being the same
                // in both topics.
                Ok((key, value)) => {
                    let mut record =
                        FutureRecord::to(&self.enriched_topic).key(key.as_str()).payload(value.as_slice()).partition(m.partition());
                    // The orders record's broker timestamp, carried on: the aggregator
                    // measures end-to-end latency from it.
                    if let Some(ts) = m.timestamp().to_millis() {
                        record = record.timestamp(ts);
                    }
                    self.outbox.send(record, (seq, i)).await?
                }
                Err(reason) => self.dead_letter(m, &reason, (seq, i)).await?,
            }
        }
        Ok(())
    }

    async fn dead_letter(&mut self, m: &BorrowedMessage<'_>, reason: &InvalidReason, tag: Tag) -> Result<()> {
        tracing::debug!(partition = m.partition(), offset = m.offset(), %reason, "Dead-lettering event.");
        metrics::counter!(telemetry::DEAD_LETTER_EVENTS, "stage" => "enricher", "reason" => reason.code()).increment(1);
        let source = Source { topic: m.topic(), partition: m.partition(), offset: m.offset() };
        let key = dead_letter::key(source);
        let bytes = m.payload().unwrap_or_default();
        let record = FutureRecord::to(&self.dlq_topic)
            .key(key.as_str())
            .payload(dead_letter::payload(bytes))
            .headers(dead_letter::headers("enricher", reason, source, bytes.len()));
        Ok(self.outbox.send(record, tag).await?)
    }
}

/// The wall clock, ms since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn refused_dead_letter(reason: &str) {
    metrics::counter!(telemetry::DEAD_LETTER_REFUSED, "stage" => "enricher").increment(1);
    tracing::error!(reason, "The dead-letter topic refused a record; it is lost (raise the topic's max.message.bytes).");
}
