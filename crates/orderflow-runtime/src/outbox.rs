//! The one way orderflow produces records and learns what became of them.
//!
//! Every stage (the `Publisher`, replay, the enricher, the aggregator's partitions and
//! merger, the load test) hands its records to an [`Outbox`] and later *settles* it:
//! waits until each record sent so far is on the broker or has failed. An error is
//! sorted once, here ([`classify`]), into one of three fates:
//!
//! - **retry** (`QueueFull`): the producer's local queue is full; [`Outbox::send`]
//!   waits for deliveries to drain and tries again. Back-pressure, not a failure.
//! - **rejected**: the broker (or librdkafka, before sending) refuses *this record*
//!   (too large for the topic, an invalid record or timestamp). The broker refuses a
//!   produce batch whole, so a record refused on delivery is first sent once more in a
//!   batch of its own ([`crate::kafka::Producer::alone`]): a neighbour of the record at
//!   fault lands. Refused alone too, sending it again would fail again, so it is
//!   returned to the caller in [`Settled::rejected`], with the
//!   caller's tag (which names the input to dead-letter) and the reason. Never a reason
//!   to stop.
//! - **fatal**: anything else once librdkafka has given up retrying on its own (it
//!   retries transient broker errors for `message.timeout.ms`, 5 minutes by default):
//!   the brokers are gone, authorization failed, the topic does not exist. The stage
//!   stops with [`Error::Delivery`]; its input offsets were not committed, so a
//!   restarted process re-does the work (at-least-once; the aggregator's dedup and the
//!   keyed outputs absorb the repeat).
//!
//! The tag (`T`) is whatever the caller needs to act on a rejection: the index of the
//! input record an output belongs to, a trace line number, nothing at all (`()`).

use std::collections::VecDeque;
use std::time::Duration;

use futures::FutureExt as _;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{OwnedMessage, ToBytes};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message as _;

use crate::kafka::{count_error, Producer};
use crate::{Error, Result};

/// How long to wait before offering a record again while the producer's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// What an error means for the record it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Back-pressure: offer the same record again shortly.
    Retry,
    /// This record can never be written as it is: dead-letter it, go on.
    Rejected,
    /// The stage cannot go on (after librdkafka's own retries).
    Fatal,
}

/// Sorts a produce or delivery error (see the module docs).
pub fn classify(e: &KafkaError) -> Fate {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::QueueFull) => Fate::Retry,
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::MessageBatchTooLarge,
        ) => Fate::Rejected,
        _ => Fate::Fatal,
    }
}

/// A record the broker refused for good.
#[derive(Debug)]
pub struct Rejected<T> {
    /// The caller's tag given to [`Outbox::send`].
    pub tag: T,
    /// The topic it was for.
    pub topic: String,
    /// Why, in words (e.g. `Broker: Message size too large`).
    pub error: KafkaError,
}

impl<T> Rejected<T> {
    /// The reason in words, for a dead letter's header or a report.
    pub fn reason(&self) -> String {
        format!("{} refused the record: {}", self.topic, self.error)
    }
}

/// What a [`Outbox::settle`] found.
#[derive(Debug)]
pub struct Settled<T> {
    /// Records now on the broker.
    pub delivered: u64,
    /// Records refused for good, in the order they were sent.
    pub rejected: Vec<Rejected<T>>,
}

/// Records sent and not yet settled, over one producer.
pub struct Outbox<T = ()> {
    producer: Producer,
    pending: VecDeque<(T, DeliveryFuture)>,
    /// Rejected before they were even queued (librdkafka's own size check).
    rejected_early: Vec<Rejected<T>>,
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl<T> Outbox<T> {
    /// An outbox over `producer` (make it with [`crate::kafka::KafkaConfig::producer`]).
    /// Records it gets onto the broker are counted in
    /// [`crate::telemetry::RECORDS_PRODUCED`], and its delivery failures in
    /// [`crate::telemetry::KAFKA_ERRORS`], under the producer's service.
    pub fn new(producer: Producer) -> Self {
        Self { producer, pending: VecDeque::new(), rejected_early: Vec::new() }
    }

    /// Records sent and not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.rejected_early.len()
    }

    /// Hands `record` to the producer, waiting while its queue is full. A record
    /// rejected on the spot is kept for the next [`Outbox::settle`]; only a fatal error
    /// is returned here.
    pub async fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(&mut self, mut record: FutureRecord<'_, K, P>, tag: T) -> Result<()> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push_back((tag, delivery));
                    return Ok(());
                }
                Err((e, r)) => match classify(&e) {
                    Fate::Retry => {
                        // Back-pressure, not an error: the queue depth shows it.
                        record = r;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Fate::Rejected => {
                        count_error(self.service(), &e);
                        self.rejected_early.push(Rejected { tag, topic: r.topic.to_owned(), error: e });
                        return Ok(());
                    }
                    Fate::Fatal => {
                        count_error(self.service(), &e);
                        return Err(Error::Delivery { topic: r.topic.to_owned(), error: e });
                    }
                },
            }
        }
    }

    /// Waits until every record sent so far is on the broker or refused for good.
    /// Returns the refused ones (with their tags) for the caller to dead-letter; fails
    /// on the first fatal error.
    pub async fn settle(&mut self) -> Result<Settled<T>> {
        let mut settled = Settled { delivered: 0, rejected: std::mem::take(&mut self.rejected_early) };
        let results = join_all(self.pending.drain(..).map(|(tag, f)| async move { (tag, f.await) })).await;
        let mut fatal = None;
        for (tag, result) in results {
            if let Err(e) = self.judge(tag, result, &mut settled).await {
                fatal.get_or_insert(e);
            }
        }
        self.count_produced(settled.delivered);
        match fatal {
            Some(e) => Err(e),
            None => Ok(settled),
        }
    }

    /// Settles, in the order sent, the records already delivered (or refused), and
    /// waits for the oldest ones while more than `max_pending` are outstanding. For
    /// loops that keep many records in flight and count them as they land.
    pub async fn settle_ready(&mut self, max_pending: usize) -> Result<Settled<T>> {
        self.settle_ready_each(max_pending, |_| {}).await
    }

    /// [`Self::settle_ready`], calling `landed` with the tag of every record it settles
    /// (delivered or refused), in the order they settle.
    pub async fn settle_ready_each(&mut self, max_pending: usize, mut landed: impl FnMut(&T)) -> Result<Settled<T>> {
        let mut settled = Settled { delivered: 0, rejected: std::mem::take(&mut self.rejected_early) };
        settled.rejected.iter().for_each(|r| landed(&r.tag));
        loop {
            let over = self.pending.len() > max_pending;
            let Some((_, front)) = self.pending.front_mut() else { break };
            let result = if over {
                front.await
            } else {
                match front.now_or_never() {
                    Some(r) => r,
                    None => break,
                }
            };
            let (tag, _) = self.pending.pop_front().expect("front exists");
            landed(&tag);
            if let Err(e) = self.judge(tag, result, &mut settled).await {
                self.count_produced(settled.delivered);
                return Err(e);
            }
        }
        self.count_produced(settled.delivered);
        Ok(settled)
    }

    /// The `service` label of its metrics (its producer's).
    fn service(&self) -> &'static str {
        self.producer.service()
    }

    fn count_produced(&self, delivered: u64) {
        if delivered > 0 {
            metrics::counter!(crate::telemetry::RECORDS_PRODUCED, "service" => self.service()).increment(delivered);
        }
    }

    /// Settles, then waits up to `timeout` for anything else the producer holds.
    pub async fn close(&mut self, timeout: Duration) -> Result<Settled<T>> {
        let settled = self.settle().await?;
        self.producer.flush(timeout).map_err(|error| Error::Flush { waited: timeout, error })?;
        Ok(settled)
    }
}

type DeliveryResult = std::result::Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>;

impl<T> Outbox<T> {
    /// Files one delivery's result into `settled`, or returns the fatal error. The broker
    /// refuses a produce batch whole, so a refused record may only have shared a batch
    /// with the one it refuses: it is sent again in a batch of its own
    /// ([`Producer::alone`]), and is rejected only if refused again.
    async fn judge(&self, tag: T, result: DeliveryResult, settled: &mut Settled<T>) -> Result<()> {
        let service = self.service();
        match result {
            Ok(Ok(_)) => settled.delivered += 1,
            Ok(Err((error, message))) => {
                count_error(service, &error);
                // Refused: the verdict is the answer to the record sent alone.
                let error = match classify(&error) {
                    Fate::Fatal => error,
                    Fate::Rejected | Fate::Retry => match self.send_alone(&message).await? {
                        None => {
                            settled.delivered += 1;
                            return Ok(());
                        }
                        Some(again) => {
                            count_error(service, &again);
                            again
                        }
                    },
                };
                match classify(&error) {
                    Fate::Rejected | Fate::Retry => settled.rejected.push(rejected(tag, error, &message)),
                    Fate::Fatal => return Err(Error::Delivery { topic: message.topic().to_owned(), error }),
                }
            }
            Err(_) => return Err(Error::ProducerGone),
        }
        Ok(())
    }

    /// Sends a refused record again, alone, to the partition it was for; the error if
    /// the broker refuses it again.
    async fn send_alone(&self, m: &OwnedMessage) -> Result<Option<KafkaError>> {
        let alone = self.producer.alone()?;
        let mut record = FutureRecord::<[u8], [u8]>::to(m.topic()).partition(m.partition());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(payload) = m.payload() {
            record = record.payload(payload);
        }
        if let Some(ms) = m.timestamp().to_millis() {
            record = record.timestamp(ms);
        }
        if let Some(headers) = m.headers() {
            record = record.headers(headers.clone());
        }
        Ok(alone.send(record, rdkafka::util::Timeout::Never).await.err().map(|(e, _)| e))
    }
}

fn rejected<T>(tag: T, error: KafkaError, m: &OwnedMessage) -> Rejected<T> {
    Rejected { tag, topic: m.topic().to_owned(), error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_once() {
        let production = |c| KafkaError::MessageProduction(c);
        assert_eq!(classify(&production(RDKafkaErrorCode::QueueFull)), Fate::Retry);
        assert_eq!(classify(&production(RDKafkaErrorCode::MessageSizeTooLarge)), Fate::Rejected);
        assert_eq!(classify(&production(RDKafkaErrorCode::InvalidRecord)), Fate::Rejected);
        assert_eq!(classify(&production(RDKafkaErrorCode::MessageTimedOut)), Fate::Fatal);
        assert_eq!(classify(&production(RDKafkaErrorCode::TopicAuthorizationFailed)), Fate::Fatal);
        assert_eq!(classify(&KafkaError::Canceled), Fate::Fatal);
    }

    /// Loops that keep many batches in flight account for each record as it settles:
    /// every tag is named exactly once, a record refused on the spot first, then the
    /// others in the order sent; at most `max_pending` stay outstanding.
    #[tokio::test]
    async fn settle_ready_each_names_every_record_once_in_order() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let kafka = crate::kafka::KafkaConfig::new(cluster.bootstrap_servers());
        let mut outbox = Outbox::new(kafka.producer().unwrap());
        for i in 0..10 {
            outbox.send(FutureRecord::to("t").key("k").payload("v"), i).await.unwrap();
        }
        let too_large = vec![0u8; 80 << 20];
        outbox.send(FutureRecord::<str, _>::to("t").payload(&too_large), 10).await.unwrap();
        let mut landed = Vec::new();
        let first = outbox.settle_ready_each(4, |t| landed.push(*t)).await.unwrap();
        assert!(outbox.pending() <= 4, "{} outstanding", outbox.pending());
        assert_eq!(first.rejected.iter().map(|r| r.tag).collect::<Vec<_>>(), [10]);
        let rest = outbox.settle_ready_each(0, |t| landed.push(*t)).await.unwrap();
        assert_eq!(outbox.pending(), 0);
        assert_eq!(landed, [10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(first.delivered + rest.delivered, 10);
    }

    /// A full producer queue is back-pressure, not a failure: with room for two records,
    /// a hundred sent in a row all wait their turn and land, in order, none refused.
    /// Under Tokio's paused clock the outbox's backoff costs no wall time, and no
    /// deadline of its own can run out while librdkafka drains the queue.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_and_loses_nothing() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.create_topic("u", 1, 1).unwrap();
        let mut kafka = crate::kafka::KafkaConfig::new(cluster.bootstrap_servers());
        kafka.options = vec!["queue.buffering.max.messages=2".into()];
        // The queue does fill: a third record offered straight to such a producer is
        // refused with QueueFull.
        let raw = kafka.producer().unwrap();
        let full = (0..3)
            .map(|_| raw.send_result(FutureRecord::to("u").key("k").payload("x")).err().map(|(e, _)| classify(&e)))
            .collect::<Vec<_>>();
        assert_eq!(full[2], Some(Fate::Retry), "{full:?}");
        drop(raw);
        let mut outbox = Outbox::new(kafka.producer().unwrap());
        for i in 0..100u32 {
            outbox.send(FutureRecord::to("t").key("k").payload(&i.to_string()), i).await.unwrap();
            assert!(outbox.pending() <= 100);
        }
        let mut landed = Vec::new();
        let settled = outbox.settle_ready_each(0, |t| landed.push(*t)).await.unwrap();
        assert_eq!((settled.delivered, settled.rejected.len()), (100, 0));
        assert_eq!(landed, (0..100).collect::<Vec<_>>());
        // On the broker, in order.
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        rdkafka::consumer::Consumer::subscribe(&consumer, &["t"]).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 100 {
            assert!(std::time::Instant::now() < deadline, "only {} of 100 records on the broker", seen.len());
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                seen.push(std::str::from_utf8(m.payload().unwrap()).unwrap().parse::<u32>().unwrap());
            }
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    /// Records delivered are counted under the producer's service, and a record refused
    /// on the spot as a Kafka error by its code.
    #[tokio::test]
    async fn deliveries_and_refusals_are_counted_by_service() {
        let recorder = crate::telemetry::builder().build_recorder();
        let handle = recorder.handle();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let kafka = crate::kafka::KafkaConfig::new(cluster.bootstrap_servers());
        let mut outbox = Outbox::new(kafka.producer_for("enricher").unwrap());
        for i in 0..3 {
            outbox.send(FutureRecord::to("t").key("k").payload("v"), i).await.unwrap();
        }
        let too_large = vec![0u8; 80 << 20];
        outbox.send(FutureRecord::<str, _>::to("t").payload(&too_large), 3).await.unwrap();
        let settled = outbox.settle().await.unwrap();
        assert_eq!((settled.delivered, settled.rejected.len()), (3, 1));
        let page = handle.render();
        assert!(page.contains("orderflow_records_produced_total{service=\"enricher\"} 3\n"), "{page}");
        assert!(page.contains("orderflow_kafka_errors_total{service=\"enricher\",code=\"MessageSizeTooLarge\"} 1\n"), "{page}");
    }
}
