//! What an applied record turns into: the records the partitions loop writes (partial
//! totals and progress, late events, dead letters, idle ticks), all through one
//! [`Outbox`], with the outcome counted in the metrics.

use orderflow_core::partition::Outcome;
use orderflow_core::validate::InvalidReason;
use orderflow_core::window::ClosedWindow;
use orderflow_core::wire::{EnrichedKind, EnrichedView};
use orderflow_proto::v1::{
    enriched_record, partial_record, EnrichedRecord, IdleTick, OpenWindows, PartialRecord, PartialTotal, PartitionProgress,
};
use orderflow_proto::{millis_timestamp, Message as _};
use orderflow_runtime::kafka::Producer;
use orderflow_runtime::outbox::{Outbox, Settled};
use orderflow_runtime::records::{self, dead_letter, late};
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::Topics;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::Message as _;

use crate::Result;

/// Where one applied record goes.
#[derive(Debug)]
pub enum Route {
    /// Counted in the window starting then: nothing to write for the record itself.
    Counted { window_start_ms: i64 },
    /// Its event id was already counted: nothing to write.
    Duplicate,
    /// An idle tick read back: nothing to write.
    Tick,
    /// Its window had closed: to the late topic.
    Late { window_start_ms: i64, closed_through_ms: i64 },
    /// Not usable: to the dead-letter topic with the reason.
    DeadLetter(InvalidReason),
    /// Refused at one of the partition's state bounds (dedup memory, keys per window):
    /// to the dead-letter topic with the reason, counted and logged loudly.
    Refused(InvalidReason),
}

/// Writes the partitions loop's records.
#[derive(Debug)]
pub struct Router {
    /// Tagged with whether the totals depend on the record (partials and progress).
    outbox: Outbox<bool>,
    input: String,
    partials: String,
    open_windows: String,
    late: String,
    dead_letter: String,
    /// Input partitions, stated in every progress record (the merger waits for all).
    partition_count: i32,
    /// Refusals at a state bound since the last warning (warnings at most every 10 s).
    refusals: (u64, Option<std::time::Instant>),
}

impl Route {
    /// The route of an event's outcome; `why` names an invalid one.
    pub fn of(outcome: Outcome, why: impl FnOnce() -> InvalidReason) -> Self {
        match outcome {
            Outcome::Counted { window_start_ms } => Self::Counted { window_start_ms },
            Outcome::Duplicate => Self::Duplicate,
            Outcome::Late { window_start_ms, closed_through_ms } => Self::Late { window_start_ms, closed_through_ms },
            Outcome::Invalid => Self::DeadLetter(why()),
            Outcome::Refused(bound) => Self::Refused(bound.into()),
        }
    }
}

impl Router {
    pub fn new(producer: Producer, topics: &Topics, partition_count: i32) -> Self {
        Self {
            outbox: Outbox::new(producer),
            input: topics.enriched(),
            partials: topics.partials(),
            open_windows: topics.open_windows(),
            late: topics.late(),
            dead_letter: topics.dead_letter(),
            partition_count,
            refusals: (0, None),
        }
    }

    /// Counts the record's outcome and writes what it calls for.
    pub async fn route(&mut self, m: &BorrowedMessage<'_>, route: Route) -> Result<()> {
        match route {
            Route::Tick => {}
            Route::Counted { .. } => metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "counted").increment(1),
            Route::Duplicate => metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "duplicate").increment(1),
            Route::Late { window_start_ms, closed_through_ms } => {
                metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "late").increment(1);
                self.late(m, window_start_ms, closed_through_ms).await?;
            }
            Route::DeadLetter(reason) => self.dead_letter(m, &reason).await?,
            Route::Refused(reason) => {
                metrics::counter!(telemetry::AGGREGATOR_BOUND_REFUSALS, "reason" => reason.code()).increment(1);
                self.refusals.0 += 1;
                if self.refusals.1.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(10)) {
                    tracing::warn!(
                        partition = m.partition(),
                        refused = self.refusals.0,
                        reason = reason.code(),
                        "Events refused at a state bound and dead-lettered: {reason}"
                    );
                    self.refusals = (0, Some(std::time::Instant::now()));
                }
                self.dead_letter(m, &reason).await?
            }
        }
        Ok(())
    }

    /// A late event, decoded into an owned event (late events are rare) and written to
    /// the late topic keyed by its event id.
    async fn late(&mut self, m: &BorrowedMessage<'_>, window_start_ms: i64, closed_through_ms: i64) -> Result<()> {
        let payload = m.payload().unwrap_or_default();
        // Decoded by prost (which the view matches; the view is the fallback should
        // they ever differ).
        let e = match EnrichedRecord::decode(payload) {
            Ok(EnrichedRecord { kind: Some(enriched_record::Kind::Event(e)) }) => e,
            _ => match EnrichedView::parse(payload).map(|r| r.kind) {
                Ok(Some(EnrichedKind::Event(view))) => view.to_event(),
                _ => unreachable!("a late record was applied as an event"),
            },
        };
        let key = e.event.as_ref().map(|e| e.event_id.clone()).unwrap_or_default();
        let headers = late::headers(window_start_ms, closed_through_ms, m.partition(), m.offset());
        let value = e.encode_to_vec();
        Ok(self.outbox.send(FutureRecord::to(&self.late).key(&key).payload(&value).headers(headers), false).await?)
    }

    async fn dead_letter(&mut self, m: &BorrowedMessage<'_>, reason: &InvalidReason) -> Result<()> {
        metrics::counter!(telemetry::AGGREGATOR_EVENTS, "outcome" => "invalid").increment(1);
        metrics::counter!(telemetry::DEAD_LETTER_EVENTS, "stage" => "aggregator", "reason" => reason.code()).increment(1);
        let source = dead_letter::Source { topic: m.topic(), partition: m.partition(), offset: m.offset() };
        let key = dead_letter::key(source);
        let bytes = m.payload().unwrap_or_default();
        let record = FutureRecord::to(&self.dead_letter).key(&key).payload(dead_letter::payload(bytes)).headers(dead_letter::headers(
            "aggregator",
            reason,
            source,
            bytes.len(),
        ));
        Ok(self.outbox.send(record, false).await?)
    }

    /// The partials of windows closed on partition `p` (with the broker timestamp of
    /// each one's newest event, 0 when unknown, in `newest`), then `p`'s progress.
    pub async fn emit(&mut self, p: i32, closed: &[ClosedWindow], newest: &[i64], through: i64) -> Result<()> {
        for (i, w) in closed.iter().enumerate() {
            metrics::counter!(telemetry::AGGREGATOR_PARTITION_WINDOWS_CLOSED).increment(1);
            let newest_record_ms = newest.get(i).copied().unwrap_or(0);
            for total in w.to_window_totals() {
                let key = records::partial_key(w.start_ms, &total.region, &total.tier, &total.currency, p);
                let partial = PartialTotal { total: Some(total), partition: p, newest_record_ms };
                let value = PartialRecord { kind: Some(partial_record::Kind::Partial(partial)) }.encode_to_vec();
                self.outbox.send(FutureRecord::to(&self.partials).key(&key).payload(&value), true).await?;
            }
        }
        let progress =
            PartitionProgress { partition: p, closed_through: Some(millis_timestamp(through)), partition_count: self.partition_count };
        let value = PartialRecord { kind: Some(partial_record::Kind::Progress(progress)) }.encode_to_vec();
        let key = records::progress_key(p);
        Ok(self.outbox.send(FutureRecord::to(&self.partials).key(&key).payload(&value), true).await?)
    }

    /// A snapshot of partition `p`'s open windows, for the provisional figures.
    pub async fn open_windows(&mut self, snapshot: &OpenWindows) -> Result<()> {
        metrics::counter!(telemetry::AGGREGATOR_OPEN_SNAPSHOTS).increment(1);
        let key = records::open_windows_key(snapshot.partition);
        let value = snapshot.encode_to_vec();
        Ok(self.outbox.send(FutureRecord::to(&self.open_windows).key(&key).payload(&value), false).await?)
    }

    /// Input partitions, as stated in progress records and snapshots.
    pub fn partition_count(&self) -> i32 {
        self.partition_count
    }

    /// An idle tick into input partition `p`, closing it through `target` when read back.
    pub async fn tick(&mut self, p: i32, target: i64) -> Result<()> {
        metrics::counter!(telemetry::AGGREGATOR_IDLE_TICKS).increment(1);
        tracing::debug!(partition = p, close_through_ms = target, "Writing idle tick.");
        let value =
            EnrichedRecord { kind: Some(enriched_record::Kind::IdleTick(IdleTick { close_through: Some(millis_timestamp(target)) })) }
                .encode_to_vec();
        Ok(self.outbox.send(FutureRecord::<str, [u8]>::to(&self.input).partition(p).payload(&value), false).await?)
    }

    /// Waits until every record written so far is on the broker. A late event, dead
    /// letter or tick refused for good is logged and counted, and aggregation goes on;
    /// a refused partial or progress record stops the aggregator
    /// ([`Error::Refused`](crate::Error::Refused)), since a total without it would be wrong.
    pub async fn settle(&mut self) -> Result<()> {
        let Settled { rejected, .. } = self.outbox.settle().await?;
        for r in rejected {
            if r.tag {
                return Err(crate::Error::Refused(r.reason()));
            }
            if r.topic == self.open_windows {
                // Only the provisional figures miss it, until the next snapshot.
                tracing::warn!(error = %r.error, "Open-windows snapshot refused by the broker; the next one replaces it.");
                continue;
            }
            metrics::counter!(telemetry::DEAD_LETTER_REFUSED, "stage" => "aggregator").increment(1);
            tracing::error!(topic = %r.topic, error = %r.error, "Record refused by the broker for good; not written.");
        }
        Ok(())
    }
}
