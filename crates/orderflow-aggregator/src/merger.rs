//! Stage 2: the exact merge of partial totals, published to the totals topic.
//!
//! The partial-totals topic has one partition, so one merger in the consumer group is
//! active and the others stand by. The merger never commits offsets: whoever takes the
//! partition over reads it from the beginning and rebuilds the merge state (partials
//! are small: keys x partitions per window). Re-published totals are identical and
//! keyed by (window, region, tier, currency), so publishing twice is harmless.

use std::time::Duration;

use orderflow_core::merge::{Merger, PartialOutcome};
use orderflow_core::window::{ClosedWindow, TYPE_NAMES};
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

/// Merges partials into totals until `cancel`.
pub async fn run(kafka: KafkaConfig, topics: Topics, cancel: CancellationToken) -> Result<()> {
    let consumer: StreamConsumer<RevocationLog> = kafka.group_consumer(&topics.group("merger"), RevocationLog::default())?;
    consumer.subscribe(&[&topics.partials()])?;
    let mut outbox = Outbox::new(kafka.producer()?);
    let totals_topic = topics.totals();
    let mut merger = Merger::new();
    while !cancel.is_cancelled() {
        let batch = recv_batch(&consumer, 10_000, &cancel, Duration::from_millis(500)).await;
        if !consumer.context().take().is_empty() {
            // Whoever owns the partition next starts over from the beginning.
            merger = Merger::new();
        }
        for m in &batch {
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
                        Err(e) => {
                            tracing::error!(error = %e, offset = m.offset(), "Conflicting partial total; keeping the first.");
                            "conflict"
                        }
                    };
                    metrics::counter!(telemetry::MERGER_PARTIALS, "outcome" => outcome).increment(1);
                }
                Some(partial_record::Kind::Progress(progress)) => {
                    for window in merger.progress(&progress) {
                        record_metrics(&window);
                        for total in window.to_window_totals() {
                            let key = records::total_key(window.start_ms, &total.region, &total.tier, &total.currency);
                            let value = total.encode_to_vec();
                            outbox.send(FutureRecord::to(&totals_topic).key(&key).payload(&value), ()).await?;
                        }
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

fn record_metrics(w: &ClosedWindow) {
    metrics::counter!(telemetry::WINDOWS_CLOSED).increment(1);
    metrics::gauge!(telemetry::WINDOW_LAST_CLOSED_END).set(w.end_ms as f64 / 1000.0);
    for (key, tallies) in &w.totals {
        for (name, t) in TYPE_NAMES.iter().zip(tallies.0.iter()) {
            if t.count == 0 {
                continue;
            }
            let labels = [("region", key.region.clone()), ("tier", key.tier.clone()), ("type", (*name).to_owned())];
            metrics::counter!(telemetry::WINDOW_EVENTS, &labels).increment(t.count as u64);
            let labels = [
                ("region", key.region.clone()),
                ("tier", key.tier.clone()),
                ("currency", key.currency.clone()),
                ("type", (*name).to_owned()),
            ];
            metrics::counter!(telemetry::WINDOW_AMOUNT, &labels).increment(t.amount_minor.max(0) as u64);
        }
    }
}
