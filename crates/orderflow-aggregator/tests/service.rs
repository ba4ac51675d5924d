//! The aggregator's service, merger and upstream watch, in process, against librdkafka's
//! mock cluster: exact totals, where late and bad records go, the metrics, and that a
//! failing task stops the service.

use std::time::{Duration, Instant};

use metrics_util::debugging::DebuggingRecorder;
use orderflow_aggregator::upstream::Watcher;
use orderflow_aggregator::AggregatorConfig;
use orderflow_proto::v1::{
    enriched_record, partial_record, EnrichedOrderEvent, EnrichedRecord, MergerCheckpoint, OrderEvent, OrderEventType, PartialRecord,
    PartialTotal, PartitionProgress, TypeTotal, WindowTotal,
};
use orderflow_proto::{millis_timestamp, Message as _};
use orderflow_runtime::kafka::{header, KafkaConfig};
use orderflow_runtime::outbox::Outbox;
use orderflow_runtime::records::{dead_letter, late};
use orderflow_runtime::telemetry;
use orderflow_runtime::testing::{eventually, Counters, MockKafka};
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::producer::FutureRecord;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

/// 2019-11-11T00:00:00Z.
const MIDNIGHT: i64 = 1_573_430_400_000;
const MINUTE: i64 = 60_000;

fn paid(id: &str, at_ms: i64, amount: i64) -> Vec<u8> {
    paid_in(id, at_ms, amount, "cn-east")
}

/// A paid event of a merchant in `region` (tier tmall).
fn paid_in(id: &str, at_ms: i64, amount: i64, region: &str) -> Vec<u8> {
    let event = OrderEvent {
        event_id: id.into(),
        order_id: format!("o-{id}"),
        merchant_id: "m1".into(),
        r#type: OrderEventType::Paid as i32,
        amount_minor: amount,
        currency: "CNY".into(),
        event_time: Some(millis_timestamp(at_ms)),
        ..Default::default()
    };
    let enriched = EnrichedOrderEvent { region: region.into(), tier: "tmall".into(), merchant_known: true, event: Some(event) };
    EnrichedRecord { kind: Some(enriched_record::Kind::Event(enriched)) }.encode_to_vec()
}

/// Writes `(partition, payload)` records to `topic`, in order, and waits for them.
async fn write(kafka: &KafkaConfig, topic: &str, records: &[(i32, Vec<u8>)]) {
    let mut outbox: Outbox = Outbox::new(kafka.producer().unwrap());
    for (p, payload) in records {
        outbox.send(FutureRecord::<str, [u8]>::to(topic).partition(*p).key("k").payload(payload), ()).await.unwrap();
    }
    let settled = outbox.settle().await.unwrap();
    assert_eq!((settled.delivered as usize, settled.rejected.len()), (records.len(), 0));
}

fn total_of(t: &WindowTotal) -> (i64, i64, i64) {
    let p = t.paid.unwrap_or_default();
    (t.window_start.as_ref().map_or(0, orderflow_proto::timestamp_millis), p.count, p.amount_minor)
}

/// No idle ticks during the test: only event time closes windows.
/// A partial-totals record (on partition 0 of that one-partition topic): partition
/// `partition`'s paid total of cn-east/tmall/CNY for the minute starting at `start`.
fn partial(partition: i32, start: i64, count: i64, amount: i64) -> (i32, Vec<u8>) {
    let t = WindowTotal {
        window_start: Some(millis_timestamp(start)),
        window_end: Some(millis_timestamp(start + MINUTE)),
        region: "cn-east".into(),
        tier: "tmall".into(),
        currency: "CNY".into(),
        paid: Some(TypeTotal { count, amount_minor: amount }),
        ..Default::default()
    };
    (
        0,
        PartialRecord { kind: Some(partial_record::Kind::Partial(PartialTotal { total: Some(t), partition, newest_record_ms: 0 })) }
            .encode_to_vec(),
    )
}

/// A progress record: `partition`, one of `partition_count`, has closed through `through`.
fn progress(partition: i32, through: i64, partition_count: i32) -> (i32, Vec<u8>) {
    let p = PartitionProgress { partition, closed_through: Some(millis_timestamp(through)), partition_count };
    (0, PartialRecord { kind: Some(partial_record::Kind::Progress(p)) }.encode_to_vec())
}

/// A merger checkpoint interval short enough for the tests.
const SOON: Duration = Duration::from_millis(100);

fn no_idle() -> AggregatorConfig {
    AggregatorConfig { idle_close: Duration::from_secs(3600), ..AggregatorConfig::default() }
}

#[tokio::test]
async fn partitions_and_merger_publish_exact_totals_and_route_late_and_bad_records() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    write(
        kafka,
        &topics.enriched(),
        &[
            (0, paid("a", MIDNIGHT + 1_000, 100)),
            (1, paid("b", MIDNIGHT + 2_000, 200)),
            (0, paid("a", MIDNIGHT + 1_000, 100)), // a retry: counted once
            (1, b"\x0a\xff not an enriched record".to_vec()),
            (0, paid("c", MIDNIGHT + MINUTE + 10_000, 400)), // partition 0 closes 00:00
            (1, paid("d", MIDNIGHT + MINUTE + 10_000, 800)), // partition 1 closes 00:00
            (0, paid("late", MIDNIGHT + 30_000, 1_600)),     // after its window closed
            (0, paid("e", MIDNIGHT + 2 * MINUTE + 10_000, 1)),
            (1, paid("f", MIDNIGHT + 2 * MINUTE + 10_000, 1)), // both close 00:01
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard(); // also on a failed assertion
    let service = tokio::spawn({
        let (kafka, topics, cancel) = (kafka.clone(), topics.clone(), cancel.clone());
        async move { orderflow_aggregator::run(&kafka, &topics, &no_idle(), cancel).await }
    });
    let totals = eventually(Duration::from_secs(30), || {
        let totals = orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap();
        (totals.len() == 2).then_some(totals)
    })
    .await
    .expect("two windows' totals");
    assert_eq!(totals.iter().map(total_of).collect::<Vec<_>>(), [(MIDNIGHT, 2, 300), (MIDNIGHT + MINUTE, 2, 1_200)]);

    let late_records = mock.read_all(&topics.late());
    assert_eq!(late_records.len(), 1);
    assert_eq!(header(&late_records[0], late::WINDOW_START), Some("2019-11-11T00:00:00Z"));
    let dead = mock.read_all(&topics.dead_letter());
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (header(&dead[0], dead_letter::STAGE), header(&dead[0], dead_letter::REASON_CODE)),
        (Some("aggregator"), Some("undecodable"))
    );
    assert_eq!(header(&dead[0], dead_letter::SOURCE_PARTITION), Some("1"));

    // The merger counts a window once its totals are delivered, a moment after a reader
    // can see them on the topic: wait for the second window's count, then check exactly.
    // (A snapshot resets the counters: every poll's is kept.)
    let mut counters = Counters::none();
    eventually(Duration::from_secs(10), || {
        counters.merge(Counters::of(&snapshotter));
        (counters.get(telemetry::WINDOWS_CLOSED, &[]) >= 2).then_some(())
    })
    .await
    .expect("both windows counted");
    let events = |outcome| counters.get(telemetry::AGGREGATOR_EVENTS, &[("outcome", outcome)]);
    assert_eq!((events("counted"), events("duplicate"), events("late"), events("invalid")), (6, 1, 1, 1));
    let labels = [("stage", "aggregator"), ("reason", "undecodable")];
    assert_eq!(counters.get(telemetry::DEAD_LETTER_EVENTS, &labels), 1);
    assert_eq!(counters.get(telemetry::WINDOWS_CLOSED, &[]), 2);
    let paid_events = [("region", "cn-east"), ("tier", "tmall"), ("type", "paid")];
    assert_eq!(counters.get(telemetry::WINDOW_EVENTS, &paid_events), 4);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), service).await.expect("stops on cancel").unwrap().unwrap();
}

/// The sum of the samples of `name` whose labels include `labels`, in Prometheus text.
fn sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// What `/metrics` shows while windows are open and after they close: the provisional
/// gauges hold exactly the open windows' figures, summed over both partitions; once a
/// window is published its figures are in the final counters and gone from the gauges,
/// and "so far" (final + provisional) never dips nor counts anything twice on any page.
#[tokio::test]
async fn provisional_figures_hold_the_open_windows_and_hand_them_over_to_the_final_counters() {
    let recorder = telemetry::builder().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    // Window 00:00, cn-west: 100 on partition 0, 200 and 50 on partition 1.
    write(
        kafka,
        &topics.enriched(),
        &[
            (0, paid_in("a", MIDNIGHT + 1_000, 100, "cn-west")),
            (1, paid_in("b", MIDNIGHT + 2_000, 200, "cn-west")),
            (1, paid_in("b2", MIDNIGHT + 3_000, 50, "cn-west")),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let config = AggregatorConfig { provisional_interval: Duration::from_millis(100), ..no_idle() };
    let service = tokio::spawn({
        let (kafka, topics, cancel) = (kafka.clone(), topics.clone(), cancel.clone());
        async move { orderflow_aggregator::run(&kafka, &topics, &config, cancel).await }
    });
    let west = [("region", "cn-west"), ("tier", "tmall"), ("currency", "CNY"), ("type", "paid")];
    let east = [("region", "cn-east"), ("tier", "tmall"), ("currency", "CNY"), ("type", "paid")];
    let west_events = [("region", "cn-west"), ("tier", "tmall"), ("type", "paid")];
    let east_events = [("region", "cn-east"), ("tier", "tmall"), ("type", "paid")];
    let mut so_far = 0.0;
    let mut page_at = |written: f64| {
        let page = telemetry::render(&handle);
        let now = sum(&page, telemetry::WINDOW_AMOUNT, &[]) + sum(&page, telemetry::OPEN_WINDOW_AMOUNT, &[]);
        assert!(now >= so_far && now <= written, "GMV so far went from {so_far} to {now} (written: {written})\n{page}");
        so_far = now;
        page
    };
    let page = eventually(Duration::from_secs(30), || {
        let page = page_at(350.0);
        (sum(&page, telemetry::OPEN_WINDOW_AMOUNT, &west) == 350.0).then_some(page)
    })
    .await
    .expect("the open window's provisional figures");
    assert_eq!(sum(&page, telemetry::OPEN_WINDOW_EVENTS, &west_events), 3.0);
    assert_eq!(sum(&page, telemetry::WINDOW_AMOUNT, &[]), 0.0, "nothing final yet");

    // Window 00:01, cn-east, on both partitions: their watermarks pass 00:01:05, so
    // window 00:00 closes on both and is published.
    write(kafka, &topics.enriched(), &[(0, paid("c", MIDNIGHT + MINUTE + 10_000, 400)), (1, paid("d", MIDNIGHT + MINUTE + 10_000, 800))])
        .await;
    let page = eventually(Duration::from_secs(30), || {
        let page = page_at(1_550.0);
        (sum(&page, telemetry::WINDOW_AMOUNT, &west) == 350.0 && sum(&page, telemetry::OPEN_WINDOW_AMOUNT, &east) == 1_200.0)
            .then_some(page)
    })
    .await
    .expect("window 00:00 final, window 00:01 provisional");
    assert_eq!(sum(&page, telemetry::OPEN_WINDOW_AMOUNT, &west), 0.0, "the published window left the provisional figures");
    assert_eq!(sum(&page, telemetry::OPEN_WINDOW_EVENTS, &west_events), 0.0);
    assert_eq!(sum(&page, telemetry::WINDOW_EVENTS, &west_events), 3.0);
    assert_eq!(sum(&page, telemetry::OPEN_WINDOW_EVENTS, &east_events), 2.0);
    assert_eq!(sum(&page, telemetry::WINDOW_AMOUNT, &east), 0.0);
    assert_eq!(so_far, 1_550.0, "final + provisional: every event once");
    // Latencies, as Prometheus histograms: one window published, snapshots taken in.
    assert_eq!(sum(&page, "orderflow_end_to_end_latency_seconds_count", &[]), 1.0);
    assert!(page.contains("orderflow_end_to_end_latency_seconds_bucket{le=\"1\"}"), "{page}");
    assert!(sum(&page, "orderflow_provisional_latency_seconds_count", &[]) >= 1.0);
    assert!(!page.contains("quantile="), "no summaries: {page}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), service).await.expect("stops on cancel").unwrap().unwrap();
}

#[tokio::test]
async fn an_enriched_event_the_aggregator_cannot_count_is_dead_lettered_with_what_it_lacks() {
    let mock = MockKafka::start(1, 1);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let untyped = {
        let mut record = EnrichedRecord::decode(paid("untyped", MIDNIGHT, 100).as_slice()).unwrap();
        let Some(enriched_record::Kind::Event(e)) = record.kind.as_mut() else { unreachable!() };
        e.event.as_mut().unwrap().r#type = 0;
        record.encode_to_vec()
    };
    let eventless = EnrichedRecord {
        kind: Some(enriched_record::Kind::Event(EnrichedOrderEvent { region: "r".into(), tier: "t".into(), ..Default::default() })),
    }
    .encode_to_vec();
    write(kafka, &topics.enriched(), &[(0, untyped), (0, eventless)]).await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let service = tokio::spawn({
        let (kafka, topics, cancel) = (kafka.clone(), topics.clone(), cancel.clone());
        async move { orderflow_aggregator::run(&kafka, &topics, &no_idle(), cancel).await }
    });
    let dead = eventually(Duration::from_secs(30), || {
        let dead = mock.read_all(&topics.dead_letter());
        (dead.len() == 2).then_some(dead)
    })
    .await
    .expect("two dead letters");
    let reasons: Vec<&str> = dead.iter().map(|m| header(m, dead_letter::REASON_CODE).unwrap()).collect();
    assert_eq!(reasons, ["unspecified_type", "missing_event"]);
    cancel.cancel();
    within("the service to stop", service).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_merger_sums_partials_once_every_partition_has_passed_and_flags_conflicts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    write(
        kafka,
        &topics.partials(),
        &[
            partial(0, MIDNIGHT, 1, 100),
            progress(0, MIDNIGHT + MINUTE, 2),
            partial(0, MIDNIGHT, 1, 100), // re-emitted after a restart: same partial
            partial(0, MIDNIGHT, 9, 900), // a different one for the same key: a conflict, the first stays
            partial(1, MIDNIGHT, 2, 250),
            progress(1, MIDNIGHT + MINUTE, 2),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let merger = tokio::spawn(orderflow_aggregator::merger::run(kafka.clone(), topics.clone(), 2, SOON, cancel.clone()));
    let totals = eventually(Duration::from_secs(30), || {
        let totals = orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap();
        (!totals.is_empty()).then_some(totals)
    })
    .await
    .expect("the window's total");
    assert_eq!(totals.iter().map(total_of).collect::<Vec<_>>(), [(MIDNIGHT, 3, 350)]);
    let counters = Counters::of(&snapshotter);
    let partials = |outcome| counters.get(telemetry::MERGER_PARTIALS, &[("outcome", outcome)]);
    assert_eq!((partials("accepted"), partials("repeated"), partials("conflict")), (2, 1, 1));
    cancel.cancel();
    within("the merger to stop", merger).await.unwrap().unwrap();
}

/// Progress far ahead of the partials (every partition's frontier a day on) does not
/// freeze the merger: the partials that arrive afterwards are merged as corrections,
/// the totals topic ends exact and the counters count each event once.
#[tokio::test]
async fn progress_far_ahead_does_not_freeze_the_merger() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    const DAY: i64 = 86_400_000;
    write(
        kafka,
        &topics.partials(),
        &[
            partial(0, MIDNIGHT, 1, 100),
            progress(0, MIDNIGHT + DAY, 2),
            progress(1, MIDNIGHT + DAY, 2),
            // After the jump: the rest of window 00:00, and window 00:01 from both partitions.
            partial(1, MIDNIGHT, 2, 250),
            partial(0, MIDNIGHT + MINUTE, 4, 40),
            partial(1, MIDNIGHT + MINUTE, 1, 1),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let merger = tokio::spawn(orderflow_aggregator::merger::run(kafka.clone(), topics.clone(), 2, SOON, cancel.clone()));
    let totals = eventually(Duration::from_secs(30), || {
        let totals = orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap();
        let got: Vec<_> = totals.iter().map(total_of).collect();
        (got == [(MIDNIGHT, 3, 350), (MIDNIGHT + MINUTE, 5, 41)]).then_some(got)
    })
    .await;
    assert!(totals.is_some(), "exact totals after the jump: {:?}", orderflow_aggregator::totals::read(kafka, &topics.totals()));
    cancel.cancel();
    within("the merger to stop", merger).await.unwrap().unwrap();
    let counters = Counters::of(&snapshotter);
    let partials = |outcome| counters.get(telemetry::MERGER_PARTIALS, &[("outcome", outcome)]);
    assert_eq!((partials("accepted"), partials("corrected")), (1, 3));
    assert_eq!(counters.get(telemetry::WINDOW_EVENTS, &[("region", "cn-east"), ("tier", "tmall"), ("type", "paid")]), 8);
}

/// Without a usable merger checkpoint (here one of an unknown version), a merger taking
/// over reads the partial totals from the beginning: it re-publishes the windows
/// published before, identical, and does not count them again.
#[tokio::test]
async fn a_merger_taking_over_republishes_but_does_not_count_published_windows_again() {
    let mock = MockKafka::start(1, 1);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    write(kafka, &topics.partials(), &[partial(0, MIDNIGHT, 2, 300), progress(0, MIDNIGHT + MINUTE, 1)]).await;

    // One merger after another over the same topics, each with its own metrics (two
    // instances, or one restarted): the window is counted once over both.
    let mut paid_counts = Vec::new();
    for round in 0..2 {
        if round == 1 {
            let unknown = MergerCheckpoint { version: 99, next_offset: i64::MAX, ..Default::default() };
            write(kafka, &topics.merger_checkpoints(), &[(0, unknown.encode_to_vec())]).await;
            // While the second merger runs, the next window closes: that one it counts.
            write(kafka, &topics.partials(), &[partial(0, MIDNIGHT + MINUTE, 5, 500), progress(0, MIDNIGHT + 2 * MINUTE, 1)]).await;
        }
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let merger = tokio::spawn(orderflow_aggregator::merger::run(kafka.clone(), topics.clone(), 1, SOON, cancel.clone()));
        let want = round + 1;
        let totals = eventually(Duration::from_secs(30), || {
            let totals = orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap();
            (totals.len() == want && mock.read_all(&topics.totals()).len() > 2 * round).then_some(totals)
        })
        .await
        .expect("the totals");
        assert_eq!(totals.iter().map(total_of).collect::<Vec<_>>()[..want], [(MIDNIGHT, 2, 300), (MIDNIGHT + MINUTE, 5, 500)][..want]);
        cancel.cancel();
        within("the merger to stop", merger).await.unwrap().unwrap();
        let counters = Counters::of(&snapshotter);
        paid_counts.push(counters.get(telemetry::WINDOW_EVENTS, &[("region", "cn-east"), ("tier", "tmall"), ("type", "paid")]));
    }
    // The first counted window 00:00 (2 events); the second re-published it but counted
    // only window 00:01 (5 events).
    assert_eq!(paid_counts, [2, 5]);
}

/// A standby merger started before a window was published, taking over from a merger
/// that published it but wrote no checkpoint since (its task ended abruptly; its
/// process, and so its counters, live on, as when the partition is taken from it),
/// re-publishes the window from the partial totals but does not count it again: it
/// reads what is published when it takes over, not when it started.
#[tokio::test]
async fn a_standby_merger_counts_only_what_was_published_after_it_took_over() {
    let mock = MockKafka::start(1, 1);
    let (kafka, topics) = (mock.kafka.clone(), mock.topics.clone());
    // Each merger on its own thread and runtime, with its own recorder (an instance).
    let instance = |checkpoints: Duration, stop: tokio::sync::oneshot::Receiver<()>| {
        let (kafka, topics) = (kafka.clone(), topics.clone());
        std::thread::spawn(move || {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let _guard = metrics::set_default_local_recorder(&recorder);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let _stop = cancel.clone().drop_guard();
                tokio::select! {
                    r = orderflow_aggregator::merger::run(kafka, topics, 1, checkpoints, cancel.clone()) => r.unwrap(),
                    _ = stop => {} // dropped mid-run: no last checkpoint
                }
            });
            Counters::of(&snapshotter).get(telemetry::WINDOW_EVENTS, &[("region", "cn-east"), ("tier", "tmall"), ("type", "paid")])
        })
    };
    let (stop_a, a_stops) = tokio::sync::oneshot::channel();
    let a = instance(Duration::from_secs(3_600), a_stops);
    let published = |n: usize| {
        let mock = &mock;
        move || (mock.read_all(&mock.topics.totals()).len() >= n).then_some(())
    };
    // A owns the partial totals: it publishes window 00:00.
    write(&mock.kafka, &mock.topics.partials(), &[partial(0, MIDNIGHT, 2, 300), progress(0, MIDNIGHT + MINUTE, 1)]).await;
    eventually(Duration::from_secs(30), published(1)).await.expect("A publishes 00:00");
    // B starts, and stands by; then 00:01 closes, and A publishes it.
    let (stop_b, b_stops) = tokio::sync::oneshot::channel();
    let b = instance(SOON, b_stops);
    tokio::time::sleep(Duration::from_secs(3)).await;
    write(&mock.kafka, &mock.topics.partials(), &[partial(0, MIDNIGHT + MINUTE, 5, 500), progress(0, MIDNIGHT + 2 * MINUTE, 1)]).await;
    eventually(Duration::from_secs(30), published(2)).await.expect("A publishes 00:01");
    stop_a.send(()).unwrap();
    let counted_by_a = join_within("instance A", a);
    // B takes over, re-reads the partials from the beginning (A wrote no checkpoint)
    // and re-publishes 00:00 and 00:01; then 00:02 closes, which only B counts.
    write(&mock.kafka, &mock.topics.partials(), &[partial(0, MIDNIGHT + 2 * MINUTE, 11, 1_100), progress(0, MIDNIGHT + 3 * MINUTE, 1)])
        .await;
    eventually(Duration::from_secs(60), published(5)).await.expect("B publishes");
    stop_b.send(()).unwrap();
    let counted_by_b = join_within("instance B", b);
    let totals = orderflow_aggregator::totals::read(&mock.kafka, &mock.topics.totals()).unwrap();
    assert_eq!(
        totals.iter().map(total_of).collect::<Vec<_>>(),
        [(MIDNIGHT, 2, 300), (MIDNIGHT + MINUTE, 5, 500), (MIDNIGHT + 2 * MINUTE, 11, 1_100)]
    );
    assert_eq!(mock.read_all(&mock.topics.totals()).len(), 5, "00:00 and 00:01 published by A, then again by B; 00:02 once");
    assert_eq!((counted_by_a, counted_by_b), (7, 11), "each window counted once over both instances");
}

/// A merger taking over restores the newest merger checkpoint (written by the one before
/// it as it stopped) and reads only the partial totals after the offset it covers: the
/// totals are those of a merger that never stopped, and each event is counted once.
#[tokio::test]
async fn a_merger_taking_over_restores_its_checkpoint_and_reads_only_the_records_after_it() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let window = |start: i64, a: i64, b: i64| {
        vec![partial(0, start, a, 100 * a), partial(1, start, b, 100 * b), progress(0, start + MINUTE, 2), progress(1, start + MINUTE, 2)]
    };
    // Window 00:02 is left open (partition 1 has not passed it) when the first stops.
    let first = [window(MIDNIGHT, 1, 2), window(MIDNIGHT + MINUTE, 3, 4), vec![partial(0, MIDNIGHT + 2 * MINUTE, 5, 500)]].concat();
    write(kafka, &topics.partials(), &first).await;
    let then = [vec![partial(1, MIDNIGHT + 2 * MINUTE, 6, 600)], window(MIDNIGHT + 3 * MINUTE, 7, 8)[..2].to_vec()].concat();
    let then = [then, vec![progress(0, MIDNIGHT + 4 * MINUTE, 2), progress(1, MIDNIGHT + 4 * MINUTE, 2)]].concat();
    let expected =
        [(MIDNIGHT, 3, 300), (MIDNIGHT + MINUTE, 7, 700), (MIDNIGHT + 2 * MINUTE, 11, 1_100), (MIDNIGHT + 3 * MINUTE, 15, 1_500)];

    let mut seen = Vec::new();
    for round in 0..2 {
        if round == 1 {
            write(kafka, &topics.partials(), &then).await;
        }
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let merger = tokio::spawn(orderflow_aggregator::merger::run(kafka.clone(), topics.clone(), 2, SOON, cancel.clone()));
        let want = 2 * (round + 1);
        // Until the totals are out and a checkpoint covers every record written.
        let totals = eventually(Duration::from_secs(30), || {
            let totals = orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap();
            let checkpoints = mock.read_all(&topics.merger_checkpoints());
            let covered = checkpoints.last().and_then(|m| m.payload()).map(|p| MergerCheckpoint::decode(p).unwrap().next_offset);
            (totals.len() == want && covered == Some([9, 14][round])).then_some(totals)
        })
        .await
        .expect("the totals");
        assert_eq!(totals.iter().map(total_of).collect::<Vec<_>>(), expected[..want]);
        cancel.cancel();
        within("the merger to stop", merger).await.unwrap().unwrap();
        let counters = Counters::of(&snapshotter);
        let partials = |outcome| counters.get(telemetry::MERGER_PARTIALS, &[("outcome", outcome)]);
        // Fetched: at least what it merged; records fetched before its seek to the
        // checkpoint's offset took effect (a race with the first fetch) are skipped.
        let (fetched, merged) =
            (counters.get(telemetry::RECORDS_CONSUMED, &[("service", "merger")]), counters.get(telemetry::MERGER_RESTORE_RECORDS, &[]));
        assert!((merged..=14).contains(&fetched), "fetched {fetched}, merged {merged}");
        seen.push((
            merged,
            partials("accepted"),
            partials("repeated"),
            counters.get(telemetry::WINDOW_EVENTS, &[("region", "cn-east"), ("tier", "tmall"), ("type", "paid")]),
            counters.get(telemetry::MERGER_CHECKPOINTS, &[("outcome", "written")]) > 0,
        ));
    }
    // The first merged all 9 records from the beginning; the second merged only the 5
    // written after the first's checkpoint (nothing repeated), and counted only the two
    // windows it closed.
    assert_eq!(seen, [(9, 5, 0, 10, true), (5, 3, 0, 26, true)]);
    // What it published is on the totals topic once per window: nothing re-published.
    assert_eq!(mock.read_all(&topics.totals()).len(), 4);
}

#[tokio::test]
async fn the_upstream_watch_sees_what_the_enricher_owes_and_the_global_frontier() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (watch, watcher) = Watcher::new(kafka, topics);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let task = tokio::task::spawn_blocking({
        let cancel = cancel.clone();
        move || watcher.run(cancel)
    });
    // Nothing in the orders topic: nothing owed, settled.
    eventually(Duration::from_secs(10), || {
        let u = watch.get();
        (u.checked_at.is_some() && !u.stalled && u.owing.is_empty() && u.settled_since.is_some()).then_some(())
    })
    .await
    .expect("settled on an empty input");

    // Three orders on partition 1 that the enricher has not committed: owed.
    write(kafka, &topics.orders(), &[(1, b"x".to_vec()), (1, b"y".to_vec()), (1, b"z".to_vec())]).await;
    eventually(Duration::from_secs(10), || {
        let u = watch.get();
        (u.owing == [1] && u.settled_since.is_none()).then_some(())
    })
    .await
    .expect("partition 1 owed");
    // Not moving for two seconds: stalled.
    eventually(Duration::from_secs(10), || watch.get().stalled.then_some(())).await.expect("stalled");

    // The enricher group commits past them: settled again.
    let group: rdkafka::consumer::BaseConsumer =
        kafka.config(&[("group.id", &topics.group("enricher")), ("enable.auto.commit", "false")]).unwrap().create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topics.orders(), 1, rdkafka::Offset::Offset(3)).unwrap();
    group.commit(&tpl, CommitMode::Sync).unwrap();
    eventually(Duration::from_secs(10), || {
        let u = watch.get();
        (u.owing.is_empty() && !u.stalled && u.settled_since.is_some()).then_some(())
    })
    .await
    .expect("settled after the commit");

    // Progress published by any partition moves the global frontier.
    write(kafka, &topics.partials(), &[progress(0, MIDNIGHT + MINUTE, 2)]).await;
    eventually(Duration::from_secs(10), || (watch.get().global_frontier_ms == MIDNIGHT + MINUTE).then_some(()))
        .await
        .expect("global frontier");

    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Starts the aggregator with `topic` on broker 2 alone and waits until it has
/// published a window's total, then takes broker 2 down, feeds it events that close
/// the next window, and returns its error and how long it took to stop after the last
/// record was written (the writes give up after 300 ms).
async fn fail_writing_to(topic: impl Fn(&orderflow_runtime::topics::Topics) -> String) -> (String, Duration) {
    let mock = MockKafka::start(2, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    mock.lead(&topic(topics), 2);
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let service = tokio::spawn({
        let (kafka, topics, cancel) = (mock.impatient(300), topics.clone(), cancel.clone());
        async move { orderflow_aggregator::run(&kafka, &topics, &no_idle(), cancel).await }
    });
    let window = |minute: i64| -> Vec<(i32, Vec<u8>)> {
        (0..2).map(|p| (p, paid(&format!("{minute}-{p}"), MIDNIGHT + minute * MINUTE + 1_000, 100))).collect()
    };
    // Window 0 is closed by window 2's events: running, with a total published.
    write(kafka, &topics.enriched(), &[window(0), window(2)].concat()).await;
    eventually(Duration::from_secs(30), || {
        (!orderflow_aggregator::totals::read(kafka, &topics.totals()).unwrap().is_empty()).then_some(())
    })
    .await
    .expect("a first total");
    mock.cluster.broker_down(2).unwrap();
    write(kafka, &topics.enriched(), &window(4)).await;
    let written = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), service).await.expect("the aggregator stops by itself").unwrap().unwrap_err();
    (format!("{:#}", anyhow::Error::new(err)), written.elapsed())
}

#[tokio::test]
async fn a_failing_partitions_task_stops_the_aggregator_with_its_error() {
    let (chain, stopped) = fail_writing_to(|t| t.partials()).await;
    assert!(chain.starts_with("task `partitions` failed: producing to `orderflow.totals.partial`"), "{chain}");
    eprintln!("aggregator stopped {stopped:?} after the records were written");
}

#[tokio::test]
async fn a_failing_merger_stops_the_aggregator_with_its_error() {
    let (chain, stopped) = fail_writing_to(|t| t.totals()).await;
    assert!(chain.starts_with("task `merger` failed: producing to `orderflow.totals`"), "{chain}");
    eprintln!("aggregator stopped {stopped:?} after the records were written");
}

/// Awaits `f`, failing the test with what it was waiting for after two minutes (a
/// regression that hangs fails here, not at CI's time limit).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after 120 s waiting for {what}"))
}

/// Joins a thread, failing the test with what it was waiting for after two minutes.
fn join_within<T>(what: &str, handle: std::thread::JoinHandle<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !handle.is_finished() {
        assert!(std::time::Instant::now() < deadline, "timed out after 120 s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    handle.join().unwrap()
}
