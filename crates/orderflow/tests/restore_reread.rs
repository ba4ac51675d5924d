//! A partition's restore at the 2019 peak's rate per partition, on a real Kafka-protocol
//! broker (Nisshi): 80 s of enriched events at 8,500 events/s (1% storefront retries)
//! on one partition, aggregated in memory as the aggregator does (offset by offset),
//! checkpointed at the end. The checkpoint names the stretch of input its dedup memory
//! is rebuilt from; `checkpoint::reread` re-reads it from the broker. Timed against a
//! bare read of the same records by the same kind of reader (what the broker delivers),
//! alternately, three times each. Every reread must rebuild exactly the memory the
//! partition had: every admitted id found, and the restored state goes on like the
//! original on the retries of the whole input.
//!
//! The 80 s measurement is ignored (a minute): run with
//! `cargo test --release -p orderflow --test restore_reread -- --ignored --nocapture`;
//! `RESTORE_BENCH_SECONDS` (default 80) sets the seconds of input,
//! `RESTORE_BENCH_BATCH` (default 100000) the records per producer batch (the enricher
//! at 8,500 events/s per partition makes ~40 with a 5 ms linger, ~400 with 50 ms), and
//! `RESTORE_BENCH_COMPRESSION` (default none) the producer's `compression.type`. The
//! same over 10 s of input runs with the other tests.

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use orderflow_core::dedup::DedupKey;
use orderflow_core::partition::{Outcome, PartitionState, StateBounds};
use orderflow_core::window::WindowSpec;
use orderflow_core::wire::EnrichedEventView;
use orderflow_proto::v1::{enriched_record, EnrichedOrderEvent, EnrichedRecord, OrderEvent, OrderEventType};
use orderflow_proto::{millis_timestamp, Message as _};
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::topics::{self, Stage, Topics};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

const RATE: i64 = 8_500;
/// 2019-11-11T00:00:00Z.
const MIDNIGHT: i64 = 1_573_430_400_000;

/// Event `i`: a new id, or every 100th a retry of the event 37 before it.
fn event(i: i64) -> EnrichedOrderEvent {
    let id = if i % 100 == 99 { i - 37 } else { i };
    let t = MIDNIGHT + id * 1_000 / RATE;
    EnrichedOrderEvent {
        event: Some(OrderEvent {
            event_id: format!("ev-{id:09}"),
            order_id: format!("o-{id:09}"),
            merchant_id: format!("m{:05}", id % 20_000),
            storefront_id: format!("sf{}", id % 17),
            customer_id: format!("c{}", id % 9_973),
            r#type: OrderEventType::Paid as i32,
            amount_minor: 100 + id % 5_000,
            currency: "CNY".into(),
            event_time: Some(millis_timestamp(t)),
        }),
        region: ["cn-east", "cn-south", "cn-north", "cn-west"][(id % 4) as usize].into(),
        tier: ["tmall", "taobao", "tmall-flagship"][(id % 3) as usize].into(),
        merchant_known: true,
    }
}

fn bytes_of(e: &EnrichedOrderEvent) -> Vec<u8> {
    EnrichedRecord { kind: Some(enriched_record::Kind::Event(e.clone())) }.encode_to_vec()
}

/// Reads `[from, to)` of partition 0 and counts the records (the broker's delivery).
fn bare_read(kafka: &KafkaConfig, topic: &str, from: i64, to: i64) -> u64 {
    let consumer = kafka.reader().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from)).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut n = 0;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                n += 1;
                if rdkafka::Message::offset(&m) + 1 >= to {
                    return n;
                }
            }
            Some(Err(e)) => panic!("reading: {e}"),
            None => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute; run with --ignored --release"]
async fn a_partition_restores_its_dedup_memory_from_the_input() {
    let seconds: i64 = std::env::var("RESTORE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(80);
    restore_after(seconds).await;
}

/// The same over 10 s of input: seconds, in every test run, so that the reread from a
/// real broker is checked each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_restores_its_dedup_memory_from_ten_seconds_of_input() {
    restore_after(10).await;
}

/// Writes `seconds` of input at the peak's rate, checkpoints, rereads, and checks.
async fn restore_after(seconds: i64) {
    let n = seconds * RATE;
    let broker = Broker::start();
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let topics = Topics::new("bench", 1);
    topics::ensure(&kafka, &topics.specs(Stage::Aggregator)).await.unwrap();
    let input = topics.enriched();

    // The input, and the partition's state over it (offset = index).
    let spec = WindowSpec::new(60_000, 5_000).unwrap();
    let bounds = StateBounds::new(65_000);
    let key = DedupKey::from_words(3, 5);
    let mut state = PartitionState::new(spec, bounds, key);
    let compression = std::env::var("RESTORE_BENCH_COMPRESSION").unwrap_or_else(|_| "none".into());
    let batch = std::env::var("RESTORE_BENCH_BATCH").unwrap_or_else(|_| "100000".into());
    let producer: BaseProducer = kafka
        .config(&[
            ("linger.ms", "20"),
            ("batch.num.messages", &batch),
            ("queue.buffering.max.messages", "2000000"),
            ("compression.type", &compression),
        ])
        .unwrap()
        .create()
        .unwrap();
    let mut closed = Vec::new();
    let (mut input_bytes, mut duplicates) = (0usize, 0u64);
    for i in 0..n {
        let e = event(i);
        let bytes = bytes_of(&e);
        input_bytes += bytes.len();
        loop {
            match producer.send(BaseRecord::<(), [u8]>::to(&input).partition(0).payload(&bytes)) {
                Ok(()) => break,
                Err((err, _)) if err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => panic!("producing: {err}"),
            }
        }
        let view = EnrichedEventView::from_event(&e);
        let prepared = state.prepare(&view);
        if state.apply_prepared_at(i, &view, prepared, &mut closed) == Outcome::Duplicate {
            duplicates += 1;
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let cp = state.checkpoint(&input, 0, n);
    let cp_bytes = cp.encoded_len();
    let (from, to) = PartitionState::restore(&cp, spec, bounds).unwrap().reread_span().expect("a stretch to re-read");
    let ids = state.dedup_live();
    println!(
        "restore bench | {n} events ({input_bytes} bytes, {duplicates} retries) over {seconds} s of event time; checkpoint {cp_bytes} bytes \
         ({:.3}% of the input's {:.0} bytes per 5 s); {ids} ids live; reread {} records ({from}..{to})",
        100.0 * cp_bytes as f64 / (input_bytes as f64 * 5.0 / seconds as f64),
        input_bytes as f64 * 5.0 / seconds as f64,
        to - from
    );
    assert_eq!(duplicates, (n / 100) as u64);

    // The retries of the whole input, judged by the original and by each restored copy.
    let retries: Vec<EnrichedOrderEvent> = (0..n).filter(|i| i % 100 == 99).map(event).collect();
    let judge = |s: &mut PartitionState| -> Vec<Outcome> {
        let mut closed = Vec::new();
        retries.iter().map(|e| s.apply(e, &mut closed)).collect()
    };
    let expected = judge(&mut state.clone());
    // The measurement's 80 s keep more than 5,000 of 6,800 retries in memory; a short
    // input (under the 65,000-id bound for most of it) more than half.
    let recent = if seconds >= 80 { 5_000 } else { retries.len() / 2 };
    assert!(expected.iter().filter(|o| **o == Outcome::Duplicate).count() > recent, "recent retries are duplicates");

    let (mut bare, mut reread) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let t = Instant::now();
        assert_eq!(bare_read(&kafka, &input, from, to), (to - from) as u64);
        bare.push(t.elapsed());

        let restored = PartitionState::restore(&cp, spec, bounds).unwrap();
        let (k, topic) = (kafka.clone(), input.clone());
        let t = Instant::now();
        let mut done = tokio::task::spawn_blocking(move || orderflow_aggregator::checkpoint::reread(&k, &topic, vec![(0, restored)], 1))
            .await
            .unwrap()
            .unwrap();
        reread.push(t.elapsed());
        let (_, mut restored, r) = done.pop().unwrap();
        assert_eq!(r.records, (to - from) as u64);
        assert_eq!(r.ids.found, r.ids.admitted, "every admitted id found again");
        assert_eq!(restored.checkpoint(&input, 0, n), cp, "the restored state checkpoints as the original");
        assert_eq!(judge(&mut restored), expected, "round {round}: the restored memory judges every retry as the original");
    }
    for (round, (b, r)) in bare.iter().zip(&reread).enumerate() {
        let records = (to - from) as f64;
        println!(
            "restore bench | round {}: bare read {:.3} s ({:.0} records/s), reread {:.3} s ({:.0} records/s): reread / bare {:.2}",
            round + 1,
            b.as_secs_f64(),
            records / b.as_secs_f64(),
            r.as_secs_f64(),
            records / r.as_secs_f64(),
            r.as_secs_f64() / b.as_secs_f64()
        );
    }
}
