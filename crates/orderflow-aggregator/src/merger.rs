//! Stage 2: the exact merge of partial totals, published to the totals topic.
//!
//! The partial-totals topic has one partition, so one merger in the consumer group is
//! active and the others stand by. The merger never commits offsets: whoever takes the
//! partition over reads it from the beginning and rebuilds the merge state (partials
//! are small: keys x partitions per window). Re-published totals are identical and
//! keyed by (window, region, tier, currency), so publishing twice is harmless.

use std::collections::HashMap;
use std::time::Duration;

use orderflow_core::merge::{Merger, PartialOutcome};
use orderflow_core::window::{ClosedWindow, Tallies, TotalKey, TYPE_NAMES};
use orderflow_proto::v1::{partial_record, PartialRecord};
use orderflow_proto::{millis_timestamp, Message as _};
use orderflow_runtime::kafka::{recv_batch, KafkaConfig, RevocationLog};
use orderflow_runtime::outbox::Outbox;
use orderflow_runtime::records;
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Merges partials into totals until `cancel`, over the `partitions` partitions of
/// the enriched topic.
pub async fn run(kafka: KafkaConfig, topics: Topics, partitions: i32, cancel: CancellationToken) -> Result<()> {
    let consumer: StreamConsumer<RevocationLog> = kafka.group_consumer(&topics.group("merger"), RevocationLog::new("merger"))?;
    consumer.subscribe(&[&topics.partials()])?;
    let mut outbox = Outbox::new(kafka.producer()?);
    let totals_topic = topics.totals();
    let mut merger = Merger::new().for_partitions(partitions);
    let mut counted = Counted::read(&kafka, &totals_topic).await?;
    let mut resync = Resync::default();
    while !cancel.is_cancelled() {
        let batch = recv_batch(&consumer, 10_000, &cancel, Duration::from_millis(500)).await;
        if !consumer.context().take().is_empty() {
            // Whoever owns the partition next starts over from the beginning (the merger
            // commits no offsets), this merger too if it gets it back. Records fetched
            // before the revocation come from the middle of the topic: merged into a
            // fresh state they would publish windows missing what came before, so they
            // are skipped until the topic is read again from its first record.
            merger = Merger::new().for_partitions(partitions);
            counted = Counted::read(&kafka, &totals_topic).await?;
            resync.restart_at(match consumer.fetch_watermarks(&topics.partials(), 0, Duration::from_secs(10)) {
                Ok((low, _)) => low,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read where the partial-totals topic starts; assuming offset 0.");
                    0
                }
            });
        }
        for m in &batch {
            if resync.skip(m.offset()) {
                continue;
            }
            let record = match m.payload().map(PartialRecord::decode) {
                Some(Ok(r)) => r,
                _ => {
                    tracing::error!(offset = m.offset(), "Unreadable partial-total record; skipped.");
                    continue;
                }
            };
            match record.kind {
                Some(partial_record::Kind::Partial(p)) => {
                    let outcome = match merger.add_partial(&p) {
                        Ok(PartialOutcome::Accepted) => "accepted",
                        Ok(PartialOutcome::Repeated) => "repeated",
                        Ok(PartialOutcome::Corrected(window)) => {
                            tracing::warn!(
                                window_start = %millis_timestamp(window.start_ms),
                                partition = p.partition,
                                "Partial total for a window already published; its corrected total is published in place."
                            );
                            publish(&mut outbox, &totals_topic, &mut counted, &window, false).await?;
                            "corrected"
                        }
                        Ok(PartialOutcome::TooLate) => {
                            tracing::error!(
                                offset = m.offset(),
                                partition = p.partition,
                                "Partial total for a window published more than the merger's retention ago; not merged."
                            );
                            "too_late"
                        }
                        Err(e) => {
                            tracing::error!(error = %e, offset = m.offset(), "Conflicting partial total; keeping the first.");
                            "conflict"
                        }
                    };
                    metrics::counter!(telemetry::MERGER_PARTIALS, "outcome" => outcome).increment(1);
                }
                Some(partial_record::Kind::Progress(progress)) => {
                    if !merger.fits(&progress) {
                        metrics::counter!(telemetry::MERGER_PARTIALS, "outcome" => "stray_progress").increment(1);
                        tracing::error!(
                            offset = m.offset(),
                            partition = progress.partition,
                            partition_count = progress.partition_count,
                            expected = partitions,
                            "Progress record for partitions other than the enriched topic's; ignored."
                        );
                        continue;
                    }
                    for window in merger.progress(&progress) {
                        publish(&mut outbox, &totals_topic, &mut counted, &window, true).await?;
                        tracing::info!(window_start = %millis_timestamp(window.start_ms), keys = window.totals.len(), "Window closed on every partition; totals published.");
                    }
                }
                None => {}
            }
        }
        if let Some(r) = outbox.settle().await?.rejected.first() {
            // A total is a few hundred bytes: only a misconfigured topic refuses one.
            return Err(Error::Refused(r.reason()));
        }
    }
    outbox.close(Duration::from_secs(10)).await?;
    Ok(())
}

/// After a revocation, skips the records fetched before it (from the middle of the
/// topic) until the topic is read again from where it starts.
#[derive(Debug, Default)]
struct Resync {
    restart_at: Option<i64>,
}

impl Resync {
    /// The merge state was reset; the topic's first offset is `first`.
    fn restart_at(&mut self, first: i64) {
        self.restart_at = Some(first);
    }

    /// Whether the record at `offset` is to be skipped.
    fn skip(&mut self, offset: i64) -> bool {
        match self.restart_at {
            Some(first) if offset > first => true,
            Some(_) => {
                self.restart_at = None;
                false
            }
            None => false,
        }
    }
}

/// Publishes a merged window's totals (all of a closed window's keys, or one corrected
/// key) and adds what they add to the business counters.
async fn publish(outbox: &mut Outbox<()>, topic: &str, counted: &mut Counted, window: &ClosedWindow, closed: bool) -> Result<()> {
    counted.record_metrics(window, closed);
    for total in window.to_window_totals() {
        let key = records::total_key(window.start_ms, &total.region, &total.tier, &total.currency);
        let value = total.encode_to_vec();
        outbox.send(FutureRecord::to(topic).key(&key).payload(&value), ()).await?;
    }
    Ok(())
}

/// What the business counters already hold, per (window, key): the totals on the
/// totals topic when this merger started (or took the partition over), then every
/// total it published. A merger rebuilding its state re-publishes totals (harmless:
/// same keys, same values) and adds only the difference to the counters, so a
/// failover never doubles the GMV on a dashboard summing over instances, and a
/// correction adds exactly what it corrects.
#[derive(Debug, Default)]
struct Counted {
    published: HashMap<(i64, TotalKey), Tallies>,
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
        Ok(Self { published })
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
    /// from the middle of the topic, then the topic again from its start: the first
    /// are skipped, the others merged, none lost.
    #[test]
    fn records_fetched_before_a_revocation_are_skipped_until_the_topic_restarts() {
        let mut resync = Resync::default();
        assert!(!resync.skip(40), "no revocation: nothing skipped");
        resync.restart_at(3);
        let merged: Vec<i64> = [41, 42, 43, 3, 4, 5, 41, 42].into_iter().filter(|o| !resync.skip(*o)).collect();
        assert_eq!(merged, [3, 4, 5, 41, 42]);
    }
}
