//! The merger's take-over after a day of partial totals, on a real Kafka-protocol
//! broker (Nisshi): a day of 1-minute windows with 100 keys over 64 input partitions
//! (9.2 M partial records), merged first by a merger with no checkpoint (it reads the
//! whole topic, as every take-over did before merger checkpoints), then, once one more
//! window is written, by a merger restoring the first one's checkpoint. Prints both
//! take-over times (merger start to the new window's totals on the totals topic), the
//! checkpoint's size, and checks every total of both against the expected sums.
//!
//! The day is a measurement, ignored (minutes, a gigabyte of broker memory): run with
//! `cargo test --release -p orderflow --test merger_takeover -- --ignored --nocapture`;
//! `MERGER_BENCH_WINDOWS` (default 1440) sets the number of windows. The same take-over
//! over 10 windows runs with the other tests, so the real-broker path is checked on
//! every run.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Broker;
use orderflow_proto::v1::{partial_record, MergerCheckpoint, PartialRecord, PartialTotal, PartitionProgress, TypeTotal, WindowTotal};
use orderflow_proto::{millis_timestamp, timestamp_millis, Message as _};
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::topics::{self, Stage, Topics};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

const MINUTE: i64 = 60_000;
/// 2019-11-11T00:00:00Z.
const MIDNIGHT: i64 = 1_573_430_400_000;
const PARTITIONS: i32 = 64;
const KEYS: i64 = 100;

fn paid(w: i64, k: i64, p: i32) -> (i64, i64) {
    let count = 1 + (w + k + i64::from(p)) % 7;
    (count, count * 100 + k)
}

fn key(k: i64) -> (String, String) {
    (format!("region-{}", k / 10), format!("tier-{}", k % 10))
}

/// Writes window `w`'s partials (every key, every partition) and each partition's
/// progress past it.
fn write_window(producer: &BaseProducer, topic: &str, w: i64) {
    let start = MIDNIGHT + w * MINUTE;
    let send = |record: PartialRecord| {
        let bytes = record.encode_to_vec();
        loop {
            match producer.send(BaseRecord::<(), [u8]>::to(topic).partition(0).payload(&bytes)) {
                Ok(()) => break,
                Err((e, _)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing partials: {e}"),
            }
        }
    };
    for p in 0..PARTITIONS {
        for k in 0..KEYS {
            let (region, tier) = key(k);
            let (count, amount_minor) = paid(w, k, p);
            let total = WindowTotal {
                window_start: Some(millis_timestamp(start)),
                window_end: Some(millis_timestamp(start + MINUTE)),
                region,
                tier,
                currency: "CNY".into(),
                paid: Some(TypeTotal { count, amount_minor }),
                ..Default::default()
            };
            send(PartialRecord {
                kind: Some(partial_record::Kind::Partial(PartialTotal { total: Some(total), partition: p, newest_record_ms: 0 })),
            });
        }
        let progress =
            PartitionProgress { partition: p, closed_through: Some(millis_timestamp(start + MINUTE)), partition_count: PARTITIONS };
        send(PartialRecord { kind: Some(partial_record::Kind::Progress(progress)) });
    }
    producer.poll(Duration::ZERO);
}

fn high(kafka: &KafkaConfig, topic: &str) -> i64 {
    kafka.reader().unwrap().fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap().1
}

/// Runs a merger (checkpointing every `interval`, and when it stops) until the totals
/// topic holds `until` records, failing after `limit`; returns the time from its start
/// to then.
async fn take_over(kafka: &KafkaConfig, topics: &Topics, interval: Duration, until: i64, limit: Duration) -> Duration {
    let cancel = CancellationToken::new();
    let began = Instant::now();
    let merger = tokio::spawn(orderflow_aggregator::merger::run(kafka.clone(), topics.clone(), PARTITIONS, interval, cancel.clone()));
    loop {
        let (k, t) = (kafka.clone(), topics.totals());
        if tokio::task::spawn_blocking(move || high(&k, &t)).await.unwrap() >= until {
            break;
        }
        assert!(began.elapsed() < limit, "the merger did not publish {until} totals within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = began.elapsed();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(120), merger)
        .await
        .expect("the merger did not stop within 120 s of its cancellation")
        .unwrap()
        .unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes and a gigabyte of broker memory; run with --ignored --release"]
async fn merger_take_over_after_a_day_of_partials() {
    let windows: i64 = std::env::var("MERGER_BENCH_WINDOWS").ok().and_then(|w| w.parse().ok()).unwrap_or(1440);
    take_over_after(windows).await;
}

/// The same take-over after 10 windows: seconds, in every test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merger_take_over_after_ten_windows_of_partials() {
    take_over_after(10).await;
}

/// Writes `windows` windows of partials (and one more), has a merger without checkpoint
/// merge them all, then one more window, merged by a merger restoring the first one's
/// checkpoint; checks every total against the sums of its partials.
async fn take_over_after(windows: i64) {
    // Seconds for the short form; the day's form measures, so it may take long.
    let limit = Duration::from_secs(if windows <= 10 { 180 } else { 1800 });
    let broker = Broker::start();
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let topics = Topics::new("bench", PARTITIONS);
    topics::ensure(&kafka, &topics.specs(Stage::Aggregator)).await.unwrap();

    let producer: BaseProducer = kafka
        .config(&[
            ("linger.ms", "50"),
            ("batch.num.messages", "100000"),
            ("queue.buffering.max.messages", "2000000"),
            ("compression.type", "lz4"),
        ])
        .unwrap()
        .create()
        .unwrap();
    let began = Instant::now();
    // The day, and one window more, closed after it.
    for w in 0..=windows {
        write_window(&producer, &topics.partials(), w);
    }
    producer.flush(Duration::from_secs(600)).unwrap();
    let records = high(&kafka, &topics.partials());
    println!("wrote {records} partial-totals records ({windows} windows + 1) in {:.1} s", began.elapsed().as_secs_f64());

    // Before: no checkpoint, the whole topic is read (and every window published). It
    // checkpoints only when it stops, as the merger before checkpoints did not at all.
    let before = take_over(&kafka, &topics, Duration::from_secs(3600), (windows + 1) * KEYS, limit).await;
    let checkpoints = topics.merger_checkpoints();
    let last = common_last(&kafka, &checkpoints);
    let cp = MergerCheckpoint::decode(last.as_slice()).unwrap();
    assert_eq!(cp.next_offset, records, "the checkpoint written at shutdown covers every record");
    println!(
        "from the beginning: {records} records read, the next window's totals out {:.2} s after the merger started",
        before.as_secs_f64()
    );
    println!("merger checkpoint: {} bytes, {} pending windows, {} emitted windows kept", last.len(), cp.pending.len(), cp.emitted.len());

    // After: one window more, a merger restoring the checkpoint.
    write_window(&producer, &topics.partials(), windows + 1);
    producer.flush(Duration::from_secs(60)).unwrap();
    let totals_before = high(&kafka, &topics.totals());
    let interval = orderflow_aggregator::defaults::MERGER_CHECKPOINT_INTERVAL;
    let after = take_over(&kafka, &topics, interval, totals_before + KEYS, limit).await;
    let republished = high(&kafka, &topics.totals()) - totals_before - KEYS;
    println!(
        "from the checkpoint: {} records after it, the next window's totals out {:.2} s after the merger started ({republished} totals re-published)",
        high(&kafka, &topics.partials()) - records,
        after.as_secs_f64()
    );
    assert_eq!(republished, 0);

    // Every total, before and after, is the sum of its partials.
    let totals = orderflow_aggregator::totals::read(&kafka, &topics.totals()).unwrap();
    let mut got = BTreeMap::new();
    for t in &totals {
        let p = t.paid.unwrap_or_default();
        got.insert((timestamp_millis(t.window_start.as_ref().unwrap()), t.region.clone(), t.tier.clone()), (p.count, p.amount_minor));
    }
    let mut want = BTreeMap::new();
    for w in 0..=windows + 1 {
        for k in 0..KEYS {
            let (region, tier) = key(k);
            let sum = (0..PARTITIONS).map(|p| paid(w, k, p)).fold((0, 0), |(c, a), (x, y)| (c + x, a + y));
            want.insert((MIDNIGHT + w * MINUTE, region, tier), sum);
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "totals differ from the sums of their partials");
    println!("{} totals checked, all exact; take-over {:.2} s before, {:.2} s after", got.len(), before.as_secs_f64(), after.as_secs_f64());
}

/// The last record of a one-partition topic.
fn common_last(kafka: &KafkaConfig, topic: &str) -> Vec<u8> {
    let reader = kafka.reader().unwrap();
    let (_, high) = reader.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(high - 1)).unwrap();
    reader.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the last record of `{topic}` (offset {}) not read within 60 s", high - 1);
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(500)) {
            if m.offset() == high - 1 {
                return m.payload().unwrap_or_default().to_vec();
            }
        }
    }
}
