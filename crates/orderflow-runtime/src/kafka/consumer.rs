//! Group consumers: their context ([`GroupConsumerContext`]: revoked partitions,
//! rebalances, joining, lag) and batched receive ([`recv_batch`]).

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;

use super::count_error;

/// A group consumer's context: records the ids of partitions a rebalance takes away,
/// for loops that keep per-partition state (rebalancing itself is librdkafka's default,
/// cooperative when the assignor is); counts rebalances; says whether the consumer has
/// joined its group; and turns librdkafka's statistics (every second) into the
/// consumer lag per partition.
#[derive(Debug, Clone)]
pub struct GroupConsumerContext {
    service: &'static str,
    revoked: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    joined: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for GroupConsumerContext {
    fn default() -> Self {
        Self::new("consumer")
    }
}

impl GroupConsumerContext {
    /// The context of `service`'s consumer (the `service` label of its metrics).
    pub fn new(service: &'static str) -> Self {
        Self { service, revoked: Default::default(), joined: Default::default() }
    }

    /// Partitions revoked since the last call.
    pub fn take(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked partitions poisoned"))
    }

    /// Whether the consumer has been given its (possibly empty) share of partitions.
    pub fn joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl rdkafka::client::ClientContext for GroupConsumerContext {
    /// Consumer lag per partition; a partition this consumer does not fetch reports 0,
    /// so that a sum over instances counts each partition once.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (p, partition) in t.partitions.iter().filter(|(p, _)| **p >= 0) {
                let lag = if partition.fetch_state == "active" { partition.consumer_lag.max(0) } else { 0 };
                let labels = [("service", self.service.to_owned()), ("topic", topic.clone()), ("partition", p.to_string())];
                metrics::gauge!(crate::telemetry::CONSUMER_LAG, &labels).set(lag as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        count_error(self.service, &error);
        tracing::warn!(service = self.service, %error, reason, "Kafka client error.");
    }
}

impl rdkafka::consumer::ConsumerContext for GroupConsumerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            metrics::counter!(crate::telemetry::REBALANCES, "service" => self.service, "kind" => "revoke").increment(1);
            let mut r = self.revoked.lock().expect("revoked partitions poisoned");
            r.extend(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(service = self.service, partitions = ?r, "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            metrics::counter!(crate::telemetry::REBALANCES, "service" => self.service, "kind" => "assign").increment(1);
            self.joined.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Bytes of `records` as read from the broker's log: each one's key plus its payload
/// (headers and framing not counted).
pub fn record_bytes<M: rdkafka::Message>(records: &[M]) -> u64 {
    records.iter().map(|m| (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64).sum()
}

/// Waits for the first record (or cancellation), then takes whatever else is already
/// fetched, up to `max` records. Receive errors are logged and skipped: the consumer
/// recovers from broker errors by itself.
pub async fn recv_batch<'a, C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &'a rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    cancel: &tokio_util::sync::CancellationToken,
    idle: Duration,
) -> Vec<rdkafka::message::BorrowedMessage<'a>> {
    use futures::FutureExt as _;
    let mut batch = Vec::new();
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return batch,
        _ = tokio::time::sleep(idle) => return batch,
        m = consumer.recv() => m,
    };
    match first {
        Ok(m) => batch.push(m),
        Err(e) => {
            tracing::warn!(error = %e, "Receive failed.");
            return batch;
        }
    }
    while batch.len() < max {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "Receive failed."),
            None => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_adds_keys_and_payloads() {
        use rdkafka::message::{OwnedMessage, Timestamp};
        let record = |key: Option<&[u8]>, payload: Option<&[u8]>| {
            OwnedMessage::new(payload.map(<[u8]>::to_vec), key.map(<[u8]>::to_vec), "t".into(), Timestamp::NotAvailable, 0, 0, None)
        };
        let records = [record(Some(b"o1"), Some(b"12345")), record(None, Some(b"123")), record(Some(b"o22"), None)];
        assert_eq!(record_bytes(&records), 2 + 5 + 3 + 3);
        assert_eq!(record_bytes::<OwnedMessage>(&[]), 0);
    }
}
