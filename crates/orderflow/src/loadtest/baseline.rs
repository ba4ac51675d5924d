//! The broker alone, on the same messages as the pipeline, so that the pipeline's
//! throughput comes out as a ratio of the broker's. Both baselines produce through the
//! project's [`Outbox`], as the services do, to a scratch topic, and then consume that
//! back:
//!
//! - [`broker_baseline`] (replay mode): produce the trace's events, keyed as the replay
//!   keys them.
//! - [`broker_relay`] (drain mode): consume the published trace and produce each record
//!   again, as the enricher would without the enriching.

use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderflow_producer::event_key;
use orderflow_proto::v1::OrderEvent;
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{KafkaConfig, TopicReader};
use orderflow_runtime::outbox::{Outbox, Settled};
use orderflow_runtime::topics::{self, Topics};
use rdkafka::producer::FutureRecord;
use rdkafka::Message as _;

use super::orchestrate::IN_FLIGHT;
use super::report::Baseline;

/// Produces the trace's events (keyed as the replay keys them) to a scratch topic, then
/// consumes them back; times both, excluding the JSON parsing.
pub(super) async fn broker_baseline(kafka: &KafkaConfig, topics: &Topics, trace: &Path) -> anyhow::Result<Baseline> {
    let topic = scratch_topic(kafka, topics).await?;
    let mut outbox: Outbox<u64> = Outbox::new(kafka.producer()?);
    let file = std::fs::File::open(trace).with_context(|| format!("opening {}", trace.display()))?;
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file).lines();
    let (mut events, mut produce) = (0u64, Duration::ZERO);
    eprintln!("loadtest: broker baseline: producing the trace's events to {topic}.");
    loop {
        // Parse a chunk, then time producing it.
        let mut chunk: Vec<(String, Vec<u8>)> = Vec::with_capacity(200_000);
        for line in lines.by_ref() {
            if let Ok(e) = serde_json::from_str::<OrderEvent>(line?.trim()) {
                chunk.push((event_key(&e).to_owned(), e.encode_to_vec()));
                if chunk.len() == chunk.capacity() {
                    break;
                }
            }
        }
        if chunk.is_empty() {
            break;
        }
        let t = Instant::now();
        for (k, v) in &chunk {
            outbox.send(FutureRecord::to(&topic).key(k.as_str()).payload(v.as_slice()), 0).await?;
            if outbox.pending() >= IN_FLIGHT {
                refused(outbox.settle_ready(IN_FLIGHT - 1).await?, trace)?;
            }
        }
        refused(outbox.settle().await?, trace)?;
        produce += t.elapsed();
        events += chunk.len() as u64;
    }
    outbox.close(Duration::from_secs(30)).await?;
    let consume = read_back(kafka, &topic, events).await?;
    let b = Baseline {
        events,
        produce_seconds: Some(produce.as_secs_f64()),
        relay_seconds: None,
        consume_seconds: consume.as_secs_f64(),
        events_per_second: events as f64 / (produce + consume).as_secs_f64(),
    };
    eprintln!("loadtest: broker baseline: {:.0} events/s produce-then-consume.", b.events_per_second);
    Ok(b)
}

/// The drain's baseline: the broker alone relays the published trace as the enricher
/// would, without the enriching: consume every record of the orders topic and produce it
/// again (same key and bytes) to a scratch topic, then consume that back. Times both.
pub(super) async fn broker_relay(kafka: &KafkaConfig, topics: &Topics) -> anyhow::Result<Baseline> {
    let scratch = scratch_topic(kafka, topics).await?;
    let orders = topics.orders();
    eprintln!("loadtest: broker baseline: relaying {orders} to {scratch}, then reading it back.");
    // The services' producer settings and produce path.
    let mut outbox: Outbox = Outbox::new(kafka.stage_producer("loadtest")?);
    let (kafka2, scratch2, runtime) = (kafka.clone(), scratch.clone(), tokio::runtime::Handle::current());
    // The consumer blocks, so the relay runs on a blocking thread and enters the runtime
    // for each send (an outbox send returns at once unless the producer's queue is full).
    let (events, relay) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Duration)> {
        let reader = TopicReader::open(&kafka2, &orders)?;
        let mut failed: Option<anyhow::Error> = None;
        let t = Instant::now();
        let events = reader.read_to_end(|m| {
            if failed.is_some() {
                return;
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&scratch2).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Err(e) = runtime.block_on(relay_one(&mut outbox, record)) {
                failed = Some(e);
            }
        })?;
        let closed = runtime.block_on(outbox.close(Duration::from_secs(120))).map_err(anyhow::Error::from);
        let relay = t.elapsed();
        if let Some(e) = failed.or(closed.and_then(|s| all_delivered(&s)).err()) {
            anyhow::bail!("the broker baseline could not relay to `{scratch2}`: {e:#}");
        }
        Ok((events, relay))
    })
    .await??;
    let consume = read_back(kafka, &scratch, events).await?;
    let b = Baseline {
        events,
        produce_seconds: None,
        relay_seconds: Some(relay.as_secs_f64()),
        consume_seconds: consume.as_secs_f64(),
        events_per_second: events as f64 / (relay + consume).as_secs_f64(),
    };
    eprintln!("loadtest: broker baseline: {:.0} events/s consume-produce-consume.", b.events_per_second);
    Ok(b)
}

/// The scratch topic both baselines write (created if missing).
async fn scratch_topic(kafka: &KafkaConfig, topics: &Topics) -> anyhow::Result<String> {
    let topic = format!("{}.loadtest.baseline", topics.topic_prefix);
    topics::ensure(kafka, &[topics.wide(topic.clone())]).await?;
    Ok(topic)
}

/// One record of the relay, keeping at most [`IN_FLIGHT`] deliveries outstanding.
async fn relay_one(outbox: &mut Outbox, record: FutureRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
    outbox.send(record, ()).await?;
    if outbox.pending() >= IN_FLIGHT {
        all_delivered(&outbox.settle_ready(IN_FLIGHT - 1).await?)?;
    }
    Ok(())
}

/// Fails on the first record the broker refused.
fn all_delivered(settled: &Settled<()>) -> anyhow::Result<()> {
    match settled.rejected.first() {
        Some(r) => anyhow::bail!("{}", r.reason()),
        None => Ok(()),
    }
}

/// The events delivered; a refused one fails the broker baseline, naming its line.
fn refused(settled: Settled<u64>, trace: &Path) -> anyhow::Result<u64> {
    if let Some(r) = settled.rejected.first() {
        anyhow::bail!("{}:{}: refused by the broker: {}", trace.display(), r.tag, r.error);
    }
    Ok(settled.delivered)
}

/// Consumes `topic` back to its end, touching every payload; fails if it holds fewer
/// than `events` records. Returns how long it took.
async fn read_back(kafka: &KafkaConfig, topic: &str, events: u64) -> anyhow::Result<Duration> {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let t = Instant::now();
        let reader = TopicReader::open(&kafka, &topic)?;
        let mut bytes = 0u64;
        let consumed = reader.read_to_end(|m| bytes += m.payload_len() as u64)?;
        std::hint::black_box(bytes);
        let consume = t.elapsed();
        anyhow::ensure!(consumed >= events, "the baseline topic `{topic}` gave back {consumed} of {events} events");
        Ok(consume)
    })
    .await?
}
