//! Claims of the operations and metrics docs, each checked through a real
//! Kafka-protocol broker in its own process:
//!
//! - an output the broker refuses for good: the enricher dead-letters its input as
//!   `refused_by_broker`; a refused dead letter or late record is logged and counted
//!   (`orderflow_dead_letter_refused_total`) and the service goes on; a refused partial
//!   total stops the aggregator, naming the refusal (topics made with a small
//!   `max.message.bytes`, which the broker enforces), and since the broker refuses a
//!   produce batch whole, the records batched with a refused one are sent again alone
//!   and land;
//! - the aggregator's state bounds: events with new ids beyond `--dedup-max-ids` are
//!   dead-lettered as `dedup_memory_full`, events of new keys beyond
//!   `--max-keys-per-window` as `too_many_keys`;
//! - an aggregator stopped: the survivor keeps its partitions and restores exactly the
//!   other's (cooperative-sticky), saying it is not ready while it does, and the totals
//!   stay exact;
//! - `/readyz` of a starting aggregator: 503 with the reason until its partitions are
//!   restored, then 200.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{get, sample, scrape, try_sample, wait_for, wait_until, Broker, Orderflow, Service};
use orderflow_producer::Publisher;
use orderflow_proto::v1::{enriched_record, EnrichedRecord, OrderEvent, OrderEventType};
use orderflow_proto::{millis_timestamp, Message as _};
use orderflow_runtime::kafka::{header, KafkaConfig, TopicReader};
use orderflow_runtime::records::dead_letter;
use orderflow_runtime::topics::{self, TopicSpec};
use rdkafka::Message as _;

/// 2019-11-11T00:00:00Z.
const MIDNIGHT_MS: i64 = 1_573_430_400_000;
/// What librdkafka says of a record larger than the topic's `max.message.bytes`.
const TOO_LARGE: &str = "Message production error: MessageSizeTooLarge (Broker: Message size too large)";
/// Log filter of services whose take-overs and revocations a test reads.
const TAKE_OVER_LOG: &str = "warn,orderflow_aggregator=info,orderflow_runtime=info";

fn metrics_addr() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A trace line: a payment of 100 CNY at `MIDNIGHT_MS + ms`.
fn paid(event_id: &str, order: &str, merchant: &str, ms: i64) -> String {
    serde_json::json!({
        "eventId": event_id, "orderId": order, "merchantId": merchant, "type": "ORDER_EVENT_TYPE_PAID",
        "amountMinor": "100", "currency": "CNY", "eventTime": millis_timestamp(MIDNIGHT_MS + ms).to_string(),
    })
    .to_string()
}

/// The same payment as an `OrderEvent`, its order, storefront and customer ids padded
/// with `pad` bytes each (ids may have 256).
fn paid_event(event_id: &str, merchant: &str, ms: i64, pad: usize) -> OrderEvent {
    OrderEvent {
        event_id: event_id.into(),
        order_id: format!("o-{event_id}{}", "o".repeat(pad)),
        merchant_id: merchant.into(),
        storefront_id: "s".repeat(pad),
        customer_id: "c".repeat(pad),
        r#type: OrderEventType::Paid as i32,
        amount_minor: 100,
        currency: "CNY".into(),
        event_time: Some(millis_timestamp(MIDNIGHT_MS + ms)),
    }
}

/// `event` encoded, with a field of `bytes` bytes that a newer storefront contract
/// might add (number 100, unknown to orderflow, which passes it through to the
/// enriched record).
fn with_unknown_field(event: &OrderEvent, bytes: usize) -> Vec<u8> {
    let mut out = event.encode_to_vec();
    out.extend([0xa2, 0x06]); // field 100, length-delimited
    let mut len = bytes;
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend(std::iter::repeat_n(b'x', bytes));
    out
}

/// Writes one record (raw bytes, keyed) to `topic` and waits for the broker's answer.
fn publish(kafka: &KafkaConfig, topic: &str, key: &str, bytes: &[u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let publisher = Publisher::new(kafka, topic.to_owned()).unwrap();
        publisher.publish_raw(Some(key), bytes).await.unwrap();
    })
}

/// Every total as (window start, region, tier) -> (paid count, paid amount).
fn paid_totals(of: &Orderflow) -> BTreeMap<(String, String, String), (String, String)> {
    of.json_lines(&["totals", "--json"])
        .iter()
        .map(|t| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("0").to_owned();
            ((s(&t["windowStart"]), s(&t["region"]), s(&t["tier"])), (s(&t["paid"]["count"]), s(&t["paid"]["amountMinor"])))
        })
        .collect()
}

/// A metric of a running service, 0 when absent (see [`common::sample`]).
fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&scrape(addr).unwrap_or_default(), name, labels)
}

/// Waits (at most `limit`) for `service` to exit by itself and returns its log.
fn wait_for_exit(service: &mut Service, log: &Path, limit: Duration) -> (std::process::ExitStatus, String) {
    let status = wait_until(&format!("`{}` to exit", service.name), limit, || service.exit_status());
    (status, std::fs::read_to_string(log).unwrap())
}

const REFUSAL_MERCHANTS: &str = "merchant_id,region,tier\nm1,east,gold\n";
/// `max.message.bytes` of the topics made small for the refusal test (a record batch
/// of the topic must fit: a batch header is 61 bytes). The enriched topic takes a
/// normal enriched event, not one carrying 3,000 bytes more; the dead-letter topic
/// takes that event's dead letter, not one of 5,000 garbage bytes; the late topic
/// takes no late event of 750 bytes of ids; the partial-totals topic takes the partial total
/// and progress of a window of (east, gold, CNY), not a partial of a 64-byte region
/// and tier.
const ENRICHED_MAX: u64 = 2_000;
const DEAD_LETTER_MAX: u64 = 4_000;
const LATE_MAX: u64 = 600;
const PARTIALS_MAX: u64 = 320;

/// Makes topics `P.<suffix>` of one partition whose records may be at most `bytes`.
fn make_limited_topics(of: &Orderflow, limits: &[(&str, u64)]) {
    let kafka = KafkaConfig::new(of.brokers.clone());
    let specs: Vec<TopicSpec> = limits
        .iter()
        .map(|(suffix, bytes)| TopicSpec {
            name: format!("{}.{suffix}", of.prefix),
            partitions: 1,
            replication: 1,
            compact: false,
            max_message_bytes: Some(*bytes),
        })
        .collect();
    tokio::runtime::Runtime::new().unwrap().block_on(topics::ensure(&kafka, &specs)).unwrap();
}

#[test]
fn outputs_the_broker_refuses_are_dead_lettered_or_counted_and_a_refused_partial_stops_the_aggregator() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 1);
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let name = |suffix: &str| format!("{}.{suffix}", of.prefix);
    // Made before orderflow makes the others (it leaves existing topics as they are).
    make_limited_topics(
        &of,
        &[
            ("orders.enriched", ENRICHED_MAX),
            ("orders.dead-letter", DEAD_LETTER_MAX),
            ("orders.late", LATE_MAX),
            ("totals.partial", PARTIALS_MAX),
        ],
    );
    let long = "r".repeat(64);
    let merchants = write(dir.path(), "merchants.csv", &format!("{REFUSAL_MERCHANTS}mlong,{long},{long}\n"));
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);

    let (enricher_metrics, aggregator_metrics) = (metrics_addr(), metrics_addr());
    let enricher_log = dir.path().join("enricher.log");
    let mut enricher = of.spawn_logged(&["enrich", "--metrics-addr", &enricher_metrics], "warn", &enricher_log);
    let aggregator_log = dir.path().join("aggregator.log");
    let mut aggregator = of.spawn_logged(
        &["aggregate", "--metrics-addr", &aggregator_metrics, "--idle-close", "2s", "--checkpoint-interval", "1s"],
        "warn",
        &aggregator_log,
    );

    // Normal traffic: one window of one key, published.
    let trace = [paid("n1", "o1", "m1", 1_000), paid("n2", "o2", "m1", 2_000), paid("n3", "o3", "m1", 3_000)].join("\n") + "\n";
    of.run(&["replay", write(dir.path(), "normal.jsonl", &trace).to_str().unwrap()]);
    let window = |start_ms: i64| millis_timestamp(MIDNIGHT_MS + start_ms).to_string();
    let want = BTreeMap::from([((window(0), "east".to_owned(), "gold".to_owned()), ("3".to_owned(), "300".to_owned()))]);
    wait_until("the normal traffic's total", Duration::from_secs(60), || (paid_totals(&of) == want).then_some(()));

    // An event whose enriched record the enriched topic refuses: its input (offset 3 of
    // the orders topic) is dead-lettered as refused_by_broker.
    publish(&kafka, &name("orders"), "o-big", &with_unknown_field(&paid_event("big", "m1", 4_000, 0), 3_000));
    let dead = wait_until("the refused event's dead letter", Duration::from_secs(60), || {
        let dead = of.json_lines(&["dead-letters", "--json"]);
        (!dead.is_empty()).then_some(dead)
    });
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let d = &dead[0];
    assert_eq!((d["stage"].as_str(), d["reasonCode"].as_str()), (Some("enricher"), Some("refused_by_broker")), "{d}");
    assert_eq!(d["reason"].as_str().unwrap(), format!("{} refused the record: {TOO_LARGE}", name("orders.enriched")));
    assert_eq!((d["sourceTopic"].as_str(), d["sourceOffset"].as_str()), (Some(name("orders").as_str()), Some("3")), "{d}");

    // A record the enricher dead-letters and the dead-letter topic refuses: counted, lost.
    publish(&kafka, &name("orders"), "garbage", &[0xff; 5_000]);
    let refused = |addr: &str, stage: &str| metric(addr, "orderflow_dead_letter_refused_total", &[("stage", stage)]);
    wait_for("the enricher to count the refused dead letter", Duration::from_secs(60), || refused(&enricher_metrics, "enricher") == 1.0);

    // A late event whose late record the late topic refuses: counted, aggregation goes on.
    publish(&kafka, &name("orders"), "o-late", &paid_event("late", "m1", 10_000, 250).encode_to_vec());
    wait_for("the aggregator to count the refused late record", Duration::from_secs(60), || {
        refused(&aggregator_metrics, "aggregator") == 1.0
    });

    let enr = scrape(&enricher_metrics).unwrap();
    let dead_lettered = |reason| sample(&enr, "orderflow_dead_letter_events_total", &[("stage", "enricher"), ("reason", reason)]);
    assert_eq!((dead_lettered("refused_by_broker"), dead_lettered("undecodable")), (1.0, 1.0));
    assert_eq!(sample(&enr, "orderflow_dead_letter_refused_total", &[("stage", "enricher")]), 1.0);
    let agg = scrape(&aggregator_metrics).unwrap();
    assert_eq!(sample(&agg, "orderflow_dead_letter_refused_total", &[("stage", "aggregator")]), 1.0);
    let events = |outcome| sample(&agg, "orderflow_aggregator_events_total", &[("outcome", outcome)]);
    assert_eq!((events("counted"), events("late"), events("duplicate")), (3.0, 1.0, 0.0));
    assert_eq!(of.json_lines(&["dead-letters", "--json"]).len(), 1, "the garbage's dead letter was refused");
    assert!(of.json_lines(&["late", "--json"]).is_empty(), "the late record was refused");
    assert!(enricher.running() && aggregator.running(), "refused dead letters and late records stop nothing");
    // And each is logged, once.
    let logged = |log: &Path, what: &str, topic: &str| {
        std::fs::read_to_string(log).unwrap().lines().filter(|l| l.contains(what) && l.contains(&name(topic))).count()
    };
    assert_eq!(logged(&enricher_log, "The dead-letter topic refused a record; it is lost", "orders.dead-letter"), 1);
    assert_eq!(logged(&aggregator_log, "Record refused by the broker for good; not written.", "orders.late"), 1);

    // A window whose partial total the partial-totals topic refuses: the aggregator stops
    // and says why; its total is not published.
    publish(&kafka, &name("orders"), "o-long", &paid_event("long", "mlong", 65_000, 0).encode_to_vec());
    let (status, log) = wait_for_exit(&mut aggregator, &aggregator_log, Duration::from_secs(60));
    assert!(!status.success(), "the aggregator exited {status}; its log:\n{log}");
    let error = format!("a record the totals depend on was refused: {} refused the record: {TOO_LARGE}", name("totals.partial"));
    assert!(log.lines().any(|l| l.starts_with("error: ") && l.contains(&error)), "no `{error}` in the aggregator's log:\n{log}");
    assert_eq!(paid_totals(&of), want);
    assert!(enricher.running());
    assert!(enricher.terminate().success());
}

#[test]
fn events_beyond_the_aggregators_state_bounds_are_dead_lettered_with_their_reasons() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 1);
    let dir = tempfile::tempdir().unwrap();
    let merchants = write(dir.path(), "merchants.csv", "merchant_id,region,tier\nm1,east,gold\nm2,west,gold\nm3,north,gold\n");
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let aggregator_metrics = metrics_addr();
    let enricher = of.spawn(&["enrich", "--metrics-addr", &metrics_addr()]);
    let aggregator = of.spawn(&[
        "aggregate",
        "--metrics-addr",
        &aggregator_metrics,
        "--idle-close",
        "2s",
        "--checkpoint-interval",
        "1s",
        "--dedup-max-ids",
        "5",
        "--max-keys-per-window",
        "2",
    ]);

    // One partition, one window. Two keys fill the window: a third region's events are
    // refused (before their ids are remembered); five ids fill the dedup memory: new ids
    // after them are refused, a repeat of a remembered id is still a duplicate.
    let lines = [
        paid("e1", "o1", "m1", 1_000),
        paid("e2", "o2", "m2", 2_000),
        paid("e3", "o3", "m3", 3_000),
        paid("e4", "o4", "m1", 4_000),
        paid("e5", "o5", "m1", 5_000),
        paid("e6", "o6", "m2", 6_000),
        paid("e7", "o7", "m1", 7_000),
        paid("e1", "o1", "m1", 1_000),
        paid("e8", "o8", "m2", 8_000),
        paid("e9", "o9", "m3", 9_000),
    ];
    of.run(&["replay", write(dir.path(), "trace.jsonl", &(lines.join("\n") + "\n")).to_str().unwrap()]);

    let dead = wait_until("four dead letters and two totals", Duration::from_secs(60), || {
        let dead = of.json_lines(&["dead-letters", "--json"]);
        (dead.len() >= 4 && paid_totals(&of).len() >= 2).then_some(dead)
    });
    let full = "the partition's dedup memory holds its most event ids (5); replay this event once the flood of ids has passed";
    let keys = "its window already holds the most keys (2); the merchant table or currencies produce too many distinct \
                (region, tier, currency) keys";
    let mut texts: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| (d["stage"].as_str().unwrap().into(), d["reasonCode"].as_str().unwrap().into(), d["reason"].as_str().unwrap().into()))
        .collect();
    texts.sort();
    let text = |code: &str, reason: &str| ("aggregator".to_owned(), code.to_owned(), reason.to_owned());
    assert_eq!(
        texts,
        [text("dedup_memory_full", full), text("dedup_memory_full", full), text("too_many_keys", keys), text("too_many_keys", keys)]
    );
    // Which events: each dead letter holds its enriched record.
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let reader = TopicReader::open(&kafka, &format!("{}.orders.dead-letter", of.prefix)).unwrap();
    let mut by_event = BTreeMap::new();
    reader
        .read_to_end(|m| {
            let record = EnrichedRecord::decode(m.payload().unwrap_or_default()).expect("an enriched record");
            let Some(enriched_record::Kind::Event(e)) = record.kind else { panic!("a dead letter of no event: {record:?}") };
            by_event.insert(e.event.unwrap().event_id, header(m, dead_letter::REASON_CODE).unwrap().to_owned());
        })
        .unwrap();
    let want: BTreeMap<String, String> =
        [("e3", "too_many_keys"), ("e7", "dedup_memory_full"), ("e8", "dedup_memory_full"), ("e9", "too_many_keys")]
            .map(|(e, r)| (e.to_owned(), r.to_owned()))
            .into();
    assert_eq!(by_event, want);

    let window = millis_timestamp(MIDNIGHT_MS).to_string();
    let total = |region: &str, count: &str, amount: &str| {
        ((window.clone(), region.to_owned(), "gold".to_owned()), (count.to_owned(), amount.to_owned()))
    };
    assert_eq!(paid_totals(&of), BTreeMap::from([total("east", "3", "300"), total("west", "2", "200")]));

    let agg = scrape(&aggregator_metrics).unwrap();
    let bound = |reason| sample(&agg, "orderflow_aggregator_bound_refusals_total", &[("reason", reason)]);
    assert_eq!((bound("dedup_memory_full"), bound("too_many_keys")), (2.0, 2.0));
    let dead_lettered = |reason| sample(&agg, "orderflow_dead_letter_events_total", &[("stage", "aggregator"), ("reason", reason)]);
    assert_eq!((dead_lettered("dedup_memory_full"), dead_lettered("too_many_keys")), (2.0, 2.0));
    let events = |outcome| sample(&agg, "orderflow_aggregator_events_total", &[("outcome", outcome)]);
    assert_eq!((events("counted"), events("duplicate"), events("late")), (5.0, 1.0, 0.0));
    // The memory's gauge is set at each checkpoint.
    wait_for("the dedup memory's gauge to say 5 ids", Duration::from_secs(30), || {
        try_sample(&scrape(&aggregator_metrics).unwrap(), "orderflow_aggregator_dedup_ids", &[("partition", "0")]) == Some(5.0)
    });
    assert_eq!(of.json_lines(&["dead-letters", "--json"]).len(), 4);
    for s in [aggregator, enricher] {
        assert!(s.terminate().success());
    }
}

/// Partitions an aggregator's log says its partitions loop took over (from scratch or
/// from a checkpoint), and the lines saying partitions were revoked from it (not from
/// its merger), in the part of the log after `from` bytes.
fn take_overs(log: &Path, from: usize) -> (BTreeSet<i32>, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap();
    let mut taken = BTreeSet::new();
    let mut revoked = Vec::new();
    for line in text[from..].lines() {
        if line.contains("Partition starts from scratch.") || line.contains("Partition restored from checkpoint.") {
            let p = line.split("partition=").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).unwrap();
            taken.insert(p.parse().unwrap());
        } else if line.contains("Partitions revoked.") && line.contains("service=\"aggregator\"") {
            revoked.push(line.to_owned());
        }
    }
    (taken, revoked)
}

/// The revoked partitions a "Partitions revoked." log line names.
fn revoked_partitions(line: &str) -> BTreeSet<i32> {
    let list = line.split("partitions=[").nth(1).and_then(|r| r.split(']').next()).unwrap();
    list.split(", ").filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect()
}

/// Polls `addr`'s `/readyz` as fast as it answers until `stop`, keeping each answer
/// that differs from the one before.
fn watch_readiness(addr: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Vec<(u16, String)>> {
    std::thread::spawn(move || {
        let mut answers: Vec<(u16, String)> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(answer) = get(&addr, "/readyz") {
                if answers.last() != Some(&answer) {
                    answers.push(answer);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        answers
    })
}

const REBALANCE_MERCHANTS: &str = "merchant_id,region,tier\nm1,east,gold\nm2,west,silver\nm3,north,bronze\n";

#[test]
fn an_aggregator_stopped_hands_over_only_its_partitions_and_totals_stay_exact() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 4);
    let dir = tempfile::tempdir().unwrap();
    let merchants = write(dir.path(), "merchants.csv", REBALANCE_MERCHANTS);
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let enricher = of.spawn(&["enrich", "--metrics-addr", &metrics_addr()]);
    let start = |log: &Path, metrics: &str| {
        of.spawn_logged(&["aggregate", "--metrics-addr", metrics, "--idle-close", "2s", "--checkpoint-interval", "1s"], TAKE_OVER_LOG, log)
    };
    let (a_metrics, b_metrics) = (metrics_addr(), metrics_addr());
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let owned = |addr: &str| metric(addr, "orderflow_aggregator_partitions_owned", &[]);
    let ready = |addr: &str| get(addr, "/readyz").is_some_and(|(s, _)| s == 200);
    let a = start(&a_log, &a_metrics);
    wait_for("aggregator A to own the four partitions", Duration::from_secs(60), || owned(&a_metrics) == 4.0 && ready(&a_metrics));
    let mut b = start(&b_log, &b_metrics);
    wait_for("A and B to split the four partitions", Duration::from_secs(60), || {
        let (oa, ob) = (owned(&a_metrics), owned(&b_metrics));
        oa > 0.0 && ob > 0.0 && oa + ob == 4.0 && ready(&a_metrics) && ready(&b_metrics)
    });

    // Phase 1: windows 00:00 and 00:01, on every partition.
    let merchant = |i: usize| ["m1", "m2", "m3"][i % 3];
    let phase_1: Vec<String> = (0..40).map(|i| paid(&format!("a{i}"), &format!("o{}", i / 2), merchant(i), i as i64 * 2_500)).collect();
    let phase_2: Vec<String> =
        (0..40).map(|i| paid(&format!("b{i}"), &format!("p{}", i / 2), merchant(i), 180_000 + i as i64 * 2_500)).collect();
    let trace = write(dir.path(), "trace.jsonl", &(phase_1.iter().chain(&phase_2).cloned().collect::<Vec<_>>().join("\n") + "\n"));
    of.run(&["replay", write(dir.path(), "phase1.jsonl", &(phase_1.join("\n") + "\n")).to_str().unwrap()]);
    let counted = |addr: &str| metric(addr, "orderflow_aggregator_events_total", &[("outcome", "counted")]);
    wait_for("the 40 events of phase 1 to be counted", Duration::from_secs(60), || counted(&a_metrics) + counted(&b_metrics) == 40.0);

    // Who owns what, by their logs: A took all four, then gave up B's.
    let (a_taken, a_revoked) = take_overs(&a_log, 0);
    assert_eq!(a_taken, (0..4).collect(), "A took over every partition first");
    assert_eq!(a_revoked.len(), 1, "A gave partitions up once, when B joined: {a_revoked:?}");
    let b_set = revoked_partitions(&a_revoked[0]);
    let a_set: BTreeSet<i32> = a_taken.difference(&b_set).copied().collect();
    assert_eq!(take_overs(&b_log, 0), (b_set.clone(), Vec::new()), "B took over exactly what A gave up");
    let a_page = scrape(&a_metrics).unwrap();
    assert_eq!(sample(&a_page, "orderflow_aggregator_partitions_owned", &[]), a_set.len() as f64);
    let revokes = |page: &str| sample(page, "orderflow_rebalances_total", &[("service", "aggregator"), ("kind", "revoke")]);
    let restores = |page: &str, from| sample(page, "orderflow_aggregator_partition_restores_total", &[("from", from)]);
    let (a_revokes, a_from_checkpoint, a_from_scratch) = (revokes(&a_page), restores(&a_page, "checkpoint"), restores(&a_page, "scratch"));

    // B stops; A keeps its partitions and restores B's from their checkpoints, not
    // ready while it does.
    let a_log_mark = std::fs::read_to_string(&a_log).unwrap().len();
    let stop_watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_readiness(a_metrics.clone(), stop_watching.clone());
    assert!(b.stop().success(), "B exits 0 on SIGTERM");
    wait_for("A to own the four partitions again and be ready", Duration::from_secs(60), || owned(&a_metrics) == 4.0 && ready(&a_metrics));
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = watcher.join().unwrap();
    let a_page = scrape(&a_metrics).unwrap();
    assert_eq!(revokes(&a_page), a_revokes, "no partition was taken from the survivor");
    assert_eq!(restores(&a_page, "checkpoint") - a_from_checkpoint, b_set.len() as f64, "B's partitions, restored from checkpoints");
    assert_eq!(restores(&a_page, "scratch"), a_from_scratch);
    assert_eq!(take_overs(&a_log, a_log_mark), (b_set.clone(), Vec::new()), "A took over exactly B's partitions");
    let ready_answer = (200, "aggregator: ready\n".to_owned());
    let restoring = (503, format!("aggregator: not ready: restoring partitions {:?}\n", b_set.iter().collect::<Vec<_>>()));
    assert_eq!(answers, [ready_answer.clone(), restoring, ready_answer], "A's /readyz while it took B's partitions over");

    // Phase 2, in later windows (so none is late, whenever the earlier ones closed): the
    // totals of the whole trace are exact.
    of.run(&["replay", write(dir.path(), "phase2.jsonl", &(phase_2.join("\n") + "\n")).to_str().unwrap()]);
    let reference = common::reference_for(&trace, &merchants);
    let differences = wait_until("the totals of both phases to be exact", Duration::from_secs(90), || {
        let differences = reference.differences(&common::observe(&of));
        differences.is_empty().then_some(differences)
    });
    assert_eq!(differences, Vec::<String>::new());
    assert_eq!(reference.certain_totals().len(), common::observe(&of).totals.len());
    for s in [a, enricher] {
        assert!(s.terminate().success());
    }
}

#[test]
fn a_starting_aggregator_is_not_ready_until_its_partitions_are_restored() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    let merchants = write(dir.path(), "merchants.csv", REBALANCE_MERCHANTS);
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let enricher = of.spawn(&["enrich", "--metrics-addr", &metrics_addr()]);
    let args = |metrics: &str| {
        ["aggregate", "--metrics-addr", metrics, "--idle-close", "2s", "--checkpoint-interval", "1s"].map(str::to_owned).to_vec()
    };
    let first_metrics = metrics_addr();
    let first = of.spawn(&args(&first_metrics).iter().map(String::as_str).collect::<Vec<_>>());
    let lines: Vec<String> = (0..20).map(|i| paid(&format!("e{i}"), &format!("o{i}"), "m1", i as i64 * 1_000)).collect();
    of.run(&["replay", write(dir.path(), "trace.jsonl", &(lines.join("\n") + "\n")).to_str().unwrap()]);
    wait_for("the first aggregator to count the 20 events", Duration::from_secs(60), || {
        metric(&first_metrics, "orderflow_aggregator_events_total", &[("outcome", "counted")]) == 20.0
    });
    // Its last checkpoints are written at shutdown: the next one restores from them.
    assert!(first.terminate().success());

    let metrics = metrics_addr();
    let second = of.spawn(&args(&metrics).iter().map(String::as_str).collect::<Vec<_>>());
    let began = Instant::now();
    let mut answers: Vec<(u16, String)> = Vec::new();
    while answers.last().is_none_or(|(status, _)| *status != 200) {
        assert!(began.elapsed() < Duration::from_secs(60), "the aggregator not ready within 60 s; /readyz said {answers:?}");
        if let Some(answer) = get(&metrics, "/readyz") {
            if answers.last() != Some(&answer) {
                answers.push(answer);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let page = scrape(&metrics).unwrap();
    // Before any service registers, the server says "starting"; the aggregator then
    // waits to join its group, restores what it was given, and is ready.
    let possible = [
        (503, "starting\n"),
        (503, "aggregator: not ready: starting\n"),
        (503, "aggregator: not ready: waiting for partitions\n"),
        (503, "aggregator: not ready: restoring partitions [0, 1]\n"),
        (200, "aggregator: ready\n"),
    ]
    .map(|(s, b)| (s, b.to_owned()));
    assert_eq!(answers[0].0, 503, "the first answer: {answers:?}");
    let positions: Vec<usize> =
        answers.iter().map(|a| possible.iter().position(|p| p == a).unwrap_or_else(|| panic!("unexpected answer {a:?}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "answers out of order: {answers:?}");
    assert!(answers.contains(&possible[3]), "never seen restoring: {answers:?}");
    assert_eq!(sample(&page, "orderflow_aggregator_partition_restores_total", &[("from", "checkpoint")]), 2.0);
    assert_eq!(sample(&page, "orderflow_aggregator_partition_restores_total", &[("from", "scratch")]), 0.0);
    assert_eq!(sample(&page, "orderflow_aggregator_partitions_owned", &[]), 2.0);
    assert_eq!(sample(&page, "orderflow_ready", &[("service", "aggregator")]), 1.0);
    for s in [second, enricher] {
        assert!(s.terminate().success());
    }
}

/// `max.message.bytes` of the enriched topic in the batch test: a normal enriched event
/// fits, one with 750 bytes of ids does not.
const SMALL_ENRICHED_MAX: u64 = 900;

#[test]
fn valid_events_batched_with_a_refused_output_are_sent_again_alone_and_land() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 1);
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let name = |suffix: &str| format!("{}.{suffix}", of.prefix);
    make_limited_topics(&of, &[("orders.enriched", SMALL_ENRICHED_MAX)]);
    let merchants = write(dir.path(), "merchants.csv", REFUSAL_MERCHANTS);
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let enricher_metrics = metrics_addr();
    let enricher = of.spawn(&["enrich", "--metrics-addr", &enricher_metrics]);
    wait_for("the enricher to be ready", Duration::from_secs(60), || get(&enricher_metrics, "/readyz").is_some_and(|(s, _)| s == 200));

    // Three events replayed at once: the enricher's outputs for them go to the broker in
    // one batch (its producer lingers 50 ms), which the topic refuses whole because of
    // the middle one. The outbox sends each refused record again in a batch of its own:
    // the two valid neighbours land, only the large one is dead-lettered.
    let big = serde_json::json!({
        "eventId": "big", "orderId": "o".repeat(250), "merchantId": "m1", "storefrontId": "s".repeat(250),
        "customerId": "c".repeat(250), "type": "ORDER_EVENT_TYPE_PAID", "amountMinor": "100", "currency": "CNY",
        "eventTime": millis_timestamp(MIDNIGHT_MS + 2_000).to_string(),
    })
    .to_string();
    let trace = [paid("small1", "o1", "m1", 1_000), big, paid("small2", "o2", "m1", 3_000)].join("\n") + "\n";
    of.run(&["replay", write(dir.path(), "trace.jsonl", &trace).to_str().unwrap()]);
    let enriched_ids = || {
        let mut ids = Vec::new();
        TopicReader::open(&kafka, &name("orders.enriched"))
            .unwrap()
            .read_to_end(|m| {
                let record = EnrichedRecord::decode(m.payload().unwrap_or_default()).expect("an enriched record");
                if let Some(enriched_record::Kind::Event(e)) = record.kind {
                    ids.push(e.event.unwrap().event_id);
                }
            })
            .unwrap();
        ids
    };
    let landed = wait_until("both valid events on the enriched topic", Duration::from_secs(60), || {
        let ids = enriched_ids();
        (ids.len() >= 2).then_some(ids)
    });
    let dead = wait_until("the large event's dead letter", Duration::from_secs(60), || {
        let dead = of.json_lines(&["dead-letters", "--json"]);
        (!dead.is_empty()).then_some(dead)
    });
    assert_eq!(landed, ["small1", "small2"]);
    let reason = format!("{} refused the record: {TOO_LARGE}", name("orders.enriched"));
    let got: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| {
            (d["sourceOffset"].as_str().unwrap().into(), d["reasonCode"].as_str().unwrap().into(), d["reason"].as_str().unwrap().into())
        })
        .collect();
    assert_eq!(got, [("1".to_owned(), "refused_by_broker".to_owned(), reason)], "only the large event is refused");
    let enr = scrape(&enricher_metrics).unwrap();
    assert_eq!(sample(&enr, "orderflow_dead_letter_events_total", &[("stage", "enricher"), ("reason", "refused_by_broker")]), 1.0);
    // Each refusal counted once per send: the batch's three, then the large one alone.
    assert_eq!(sample(&enr, "orderflow_kafka_errors_total", &[("service", "enricher"), ("code", "MessageSizeTooLarge")]), 4.0);
    assert!(enricher.terminate().success());
}
