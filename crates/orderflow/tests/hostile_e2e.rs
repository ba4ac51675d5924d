//! Hostile input against a real Kafka-protocol broker in its own process: the same
//! normal traffic runs through two pipelines on one broker, one of them also fed what a
//! careless or hostile storefront sends (future dates, oversized and truncated records,
//! wrong wire types, huge and non-UTF-8 ids, empty records, out-of-range and far-past
//! times, unknown currencies, extreme amounts) and bad merchant records (an empty
//! region, a `/` in one). Every hostile record is dead-lettered with its reason (a far
//! past event is late; bad merchants are refused, logged and counted), the services
//! never exit, and the totals equal the clean pipeline's exactly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{sample, scrape, wait_until, Broker, Orderflow, Service};
use orderflow_core::merchant::merchant_key;
use orderflow_producer::Publisher;
use orderflow_proto::v1::{Merchant, OrderEvent, OrderEventType};
use orderflow_proto::{millis_timestamp, Message as _, Timestamp};
use orderflow_runtime::kafka::KafkaConfig;
use serde_json::Value;

const MERCHANTS: &str = "merchant_id,region,tier\nm1,east,gold\nm2,west,silver\nm3,north,bronze\n";
/// 2019-11-11T00:00:00Z.
const MIDNIGHT_MS: i64 = 1_573_430_400_000;

/// Normal traffic: 90 events over three windows from three merchants, an unknown
/// one and one whose (bad) record the hostile pipeline gets; every tenth line repeats
/// the line before it (a storefront retry).
fn normal_traffic() -> String {
    let types = ["ORDER_EVENT_TYPE_CREATED", "ORDER_EVENT_TYPE_PAID", "ORDER_EVENT_TYPE_REFUNDED", "ORDER_EVENT_TYPE_CANCELLED"];
    let merchants = ["m1", "m2", "m3", "nobody", "m9"];
    let mut lines: Vec<String> = Vec::new();
    for i in 0..90usize {
        if i % 10 == 9 {
            lines.push(lines[i - 1].clone());
            continue;
        }
        let time = millis_timestamp(MIDNIGHT_MS + i as i64 * 1_500);
        lines.push(
            serde_json::json!({
                "eventId": format!("e{i}"), "orderId": format!("o{}", i / 2), "merchantId": merchants[i % 5],
                "type": types[i % 4], "amountMinor": (100 * i + 7).to_string(),
                "currency": if i % 3 == 0 { "USD" } else { "CNY" }, "eventTime": time.to_string(),
            })
            .to_string(),
        );
    }
    lines.join("\n") + "\n"
}

fn event(id: &str, order: &str, ms: i64) -> OrderEvent {
    OrderEvent {
        event_id: id.into(),
        order_id: order.into(),
        merchant_id: "m1".into(),
        r#type: OrderEventType::Paid as i32,
        amount_minor: 500,
        currency: "CNY".into(),
        event_time: Some(millis_timestamp(ms)),
        ..Default::default()
    }
}

/// The hostile records for the orders topic: (key, bytes, the reason each must get).
fn hostile_records(now_ms: i64) -> Vec<(String, Vec<u8>, &'static str)> {
    let valid = event("h-valid", "h-o", MIDNIGHT_MS);
    let mut out = vec![
        ("h-future".into(), event("h-future", "h-future", now_ms + 86_400_000).encode_to_vec(), "event_time_in_future"),
        ("h-big".into(), OrderEvent { customer_id: "c".repeat(100 << 10), ..valid.clone() }.encode_to_vec(), "event_too_large"),
        ("h-truncated".into(), valid.encode_to_vec()[..5].to_vec(), "undecodable"),
        // Field 1 (event_id, a string) sent as a varint.
        ("h-wire".into(), vec![0x08, 0x01], "undecodable"),
        ("h-long-id".into(), OrderEvent { event_id: "x".repeat(10 << 10), ..valid.clone() }.encode_to_vec(), "id_too_long"),
        (
            "h-year-10000".into(),
            OrderEvent { event_time: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }), ..valid.clone() }.encode_to_vec(),
            "invalid_event_time",
        ),
        (String::new(), Vec::new(), "missing_event_id"),
        ("h-xyz".into(), OrderEvent { currency: "XYZ".into(), ..valid.clone() }.encode_to_vec(), "unknown_currency"),
        ("h-max".into(), OrderEvent { amount_minor: i64::MAX, ..valid.clone() }.encode_to_vec(), "amount_too_large"),
        ("h-negative".into(), OrderEvent { amount_minor: -1, ..valid.clone() }.encode_to_vec(), "negative_amount"),
    ];
    // A non-UTF-8 event id: field 1, two bytes that are not UTF-8, then the rest.
    let mut bytes = vec![0x0a, 0x02, 0xff, 0xfe];
    bytes.extend(OrderEvent { event_id: String::new(), ..valid }.encode_to_vec());
    out.push(("h-utf8".into(), bytes, "undecodable"));
    out
}

struct Pipeline {
    of: Orderflow,
    enricher: Service,
    aggregator: Service,
    enricher_metrics: String,
}

fn start(broker: &Broker, dir: &tempfile::TempDir) -> Pipeline {
    let of = Orderflow::new(broker, 3);
    let csv = dir.path().join("merchants.csv");
    std::fs::write(&csv, MERCHANTS).unwrap();
    of.run(&["merchants", "load", csv.to_str().unwrap()]);
    let enricher_metrics = format!("127.0.0.1:{}", common::free_port());
    let enricher = of.spawn(&["enrich", "--metrics-addr", &enricher_metrics]);
    let aggregator = of.spawn(&[
        "aggregate",
        "--metrics-addr",
        &format!("127.0.0.1:{}", common::free_port()),
        "--idle-close",
        "2s",
        "--checkpoint-interval",
        "1s",
    ]);
    Pipeline { of, enricher, aggregator, enricher_metrics }
}

/// Every total, whole (a `WindowTotal` in canonical JSON: nothing in it differs between
/// two runs of the same input), in a stable order.
fn totals(of: &Orderflow) -> Vec<Value> {
    let mut t = of.json_lines(&["totals", "--json"]);
    t.sort_by_key(|v| v.to_string());
    t
}

#[test]
fn hostile_records_are_dead_lettered_and_leave_the_totals_of_normal_traffic_exact() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("normal.jsonl");
    std::fs::write(&trace, normal_traffic()).unwrap();
    let (mut clean, mut hostile) = (start(&broker, &dir), start(&broker, &dir));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kafka = KafkaConfig::new(broker.bootstrap.clone());
    let publish = |topic: String, records: Vec<(String, Vec<u8>)>| {
        rt.block_on(async {
            let publisher = Publisher::new(&kafka, topic).unwrap();
            for (key, bytes) in records {
                publisher.publish_raw((!key.is_empty()).then_some(key.as_str()), &bytes).await.unwrap();
            }
        })
    };
    // Bad merchant records, straight onto the merchants topic (the loader refuses them).
    let bad = |id: &str, region: &str| {
        let m = Merchant { merchant_id: id.into(), region: region.into(), tier: "gold".into(), effective_from: None };
        (merchant_key(id, None), m.encode_to_vec())
    };
    publish(format!("{}.merchants", hostile.of.prefix), vec![bad("m8", ""), bad("m9", "east/west")]);

    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let hostile_records = hostile_records(now_ms);
    let orders = format!("{}.orders", hostile.of.prefix);
    publish(orders.clone(), hostile_records.iter().take(5).map(|(k, b, _)| (k.clone(), b.clone())).collect());
    for p in [&clean, &hostile] {
        let out = p.of.run(&["replay", trace.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("Published 90 events"), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // The rest after the normal traffic, with a far-past event on order o0's partition,
    // whose windows have closed by then: it is late, not counted.
    let mut rest: Vec<(String, Vec<u8>)> = hostile_records.iter().skip(5).map(|(k, b, _)| (k.clone(), b.clone())).collect();
    rest.push(("o0".into(), event("h-year-1", "o0", -62_135_596_800_000).encode_to_vec()));
    let done = |p: &Pipeline| {
        totals(&p.of).iter().filter_map(|t| t["windowStart"].as_str().map(str::to_owned)).collect::<std::collections::BTreeSet<_>>().len()
            == 3
    };
    wait_until("the clean pipeline's three windows", Duration::from_secs(120), || done(&clean).then_some(()));
    publish(orders, rest);

    let want = totals(&clean.of);
    assert!(want.len() >= 20 && want.iter().any(|t| t["region"] == "unknown"), "the normal traffic's totals: {want:#?}");
    let got = wait_until("the hostile pipeline's totals to equal the clean one's", Duration::from_secs(120), || {
        let got = totals(&hostile.of);
        (got == want).then_some(got)
    });
    assert_eq!(got, want);

    // Every hostile record is dead-lettered with its reason, the far-past event is late.
    let expected: BTreeMap<String, usize> = hostile_records.iter().fold(BTreeMap::new(), |mut m, (_, _, r)| {
        *m.entry(r.to_string()).or_default() += 1;
        m
    });
    let reasons = wait_until("every dead letter", Duration::from_secs(60), || {
        let dead = hostile.of.json_lines(&["dead-letters", "--json"]);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for d in &dead {
            *reasons.entry(d["reasonCode"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        (reasons.values().sum::<usize>() >= hostile_records.len()).then_some(reasons)
    });
    assert_eq!(reasons, expected);
    let late = wait_until("the far-past event on the late topic", Duration::from_secs(60), || {
        let late = hostile.of.json_lines(&["late", "--json"]);
        (!late.is_empty()).then_some(late)
    });
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["event"]["event"]["eventId"], "h-year-1");
    assert!(clean.of.json_lines(&["dead-letters", "--json"]).is_empty() && clean.of.json_lines(&["late", "--json"]).is_empty());

    // Bad merchant records: refused and counted, by reason.
    let metrics = scrape(&hostile.enricher_metrics).unwrap();
    let refused = |reason| sample(&metrics, "orderflow_enricher_merchant_records_refused_total", &[("reason", reason)]);
    assert_eq!((refused("empty_attribute"), refused("bad_characters")), (1.0, 1.0));

    // Nothing stopped.
    for p in [&mut clean, &mut hostile] {
        assert!(p.enricher.running() && p.aggregator.running());
    }
    let (Pipeline { enricher, aggregator, .. }, Pipeline { enricher: e2, aggregator: a2, .. }) = (clean, hostile);
    for s in [enricher, aggregator, e2, a2] {
        assert!(s.terminate().success());
    }
}
