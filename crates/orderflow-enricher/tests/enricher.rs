//! The enricher's `run`, in process, against librdkafka's mock cluster: what it writes
//! for good and bad events, the metrics it keeps, and that a failing task stops it.

use std::time::{Duration, Instant};

use metrics_util::debugging::DebuggingRecorder;
use orderflow_enricher::EnricherConfig;
use orderflow_producer::{load_merchants, Publisher};
use orderflow_proto::millis_timestamp;
use orderflow_proto::v1::{Merchant, OrderEvent, OrderEventType};
use orderflow_runtime::kafka::{header, KafkaConfig};
use orderflow_runtime::records::dead_letter;
use orderflow_runtime::telemetry;
use orderflow_runtime::testing::{eventually, Counters, MockKafka};
use rdkafka::Message as _;
use tokio_util::sync::{CancellationToken, DropGuard};

fn merchant(id: &str, region: &str, tier: &str) -> Merchant {
    Merchant { merchant_id: id.into(), region: region.into(), tier: tier.into(), effective_from: None }
}

fn paid(event_id: &str, merchant_id: &str, amount: i64, currency: &str) -> OrderEvent {
    OrderEvent {
        event_id: event_id.into(),
        order_id: format!("o-{event_id}"),
        merchant_id: merchant_id.into(),
        r#type: OrderEventType::Paid as i32,
        amount_minor: amount,
        currency: currency.into(),
        event_time: Some(millis_timestamp(1_573_430_400_000)),
        ..Default::default()
    }
}

type Enricher = tokio::task::JoinHandle<orderflow_enricher::Result<()>>;

/// Loads merchant `m1` and starts the enricher with `kafka`'s settings; the guard stops
/// it when dropped (also on a failed assertion, so its blocking follower ends).
async fn start(mock: &MockKafka, kafka: KafkaConfig) -> (Enricher, DropGuard, CancellationToken) {
    load_merchants(&mock.kafka, &mock.topics.merchants(), &[merchant("m1", "cn-east", "tmall")]).await.unwrap();
    let cancel = CancellationToken::new();
    let topics = mock.topics.clone();
    let token = cancel.clone();
    let enricher = tokio::spawn(async move { orderflow_enricher::run(&kafka, &topics, &EnricherConfig::default(), token).await });
    (enricher, cancel.clone().drop_guard(), cancel)
}

/// The error chain the enricher stops with by itself.
async fn stopped_with(enricher: Enricher) -> String {
    let err = tokio::time::timeout(Duration::from_secs(30), enricher).await.expect("the enricher stops by itself").unwrap().unwrap_err();
    format!("{:#}", anyhow::Error::new(err))
}

#[tokio::test]
async fn enriches_joins_and_dead_letters_each_event_with_its_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (enricher, _stop, cancel) = start(&mock, kafka.clone()).await;
    let publisher = Publisher::new(kafka, topics.orders()).unwrap();
    publisher.publish(&paid("e1", "m1", 10_000, "CNY")).await.unwrap();
    publisher.publish(&paid("e2", "m-unknown", 500, "USD")).await.unwrap();
    publisher.publish(&paid("", "m1", 1, "CNY")).await.unwrap();
    publisher.publish(&paid("e4", "m1", 1, "yuan")).await.unwrap();
    publisher.publish_raw(Some("garbage"), b"\xff\xff\xff not protobuf").await.unwrap();
    // Confluent Schema Registry wire format, as its serializers write it: magic 0,
    // schema id 7 (big-endian), message indexes [0] in the short form (one 0 byte).
    let mut framed = vec![0, 0, 0, 0, 7, 0];
    framed.extend(orderflow_proto::Message::encode_to_vec(&paid("e5", "m1", 700, "CNY")));
    publisher.publish_raw(Some("o-e5"), &framed).await.unwrap();
    // A registry frame cut short inside its schema id.
    publisher.publish_raw(Some("cut"), &[0, 0, 0]).await.unwrap();

    let dead = eventually(Duration::from_secs(20), || {
        let dead = mock.read_all(&topics.dead_letter());
        (dead.len() == 4 && mock.read_all(&topics.enriched()).len() == 3).then_some(dead)
    })
    .await
    .expect("3 enriched records and 4 dead letters");
    let mut reasons: Vec<&str> = dead.iter().map(|m| header(m, dead_letter::REASON_CODE).unwrap()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["bad_currency", "missing_event_id", "undecodable", "undecodable"]);
    assert!(dead.iter().any(|m| m.payload() == Some(&[0u8, 0, 0][..])), "the broken frame is kept as it came");
    assert!(dead.iter().all(|m| header(m, dead_letter::STAGE) == Some("enricher")));
    let garbage = dead.iter().find(|m| m.payload().is_some_and(|p| p.starts_with(b"\xff"))).unwrap();
    assert_eq!(garbage.payload().unwrap(), b"\xff\xff\xff not protobuf", "the original bytes are kept");
    let enriched: Vec<String> = mock.keys(&topics.enriched());
    assert_eq!(enriched.len(), 3);
    assert!(["o-e1", "o-e2", "o-e5"].iter().all(|k| enriched.contains(&k.to_string())), "{enriched:?}");
    // The framed event is enriched like a plain one: the same event, its merchant joined.
    let e5 = mock.read_all(&topics.enriched()).into_iter().find(|m| m.key() == Some(b"o-e5")).unwrap();
    let record = <orderflow_proto::v1::EnrichedRecord as orderflow_proto::Message>::decode(e5.payload().unwrap()).unwrap();
    let shown = format!("{record:?}");
    assert!(shown.contains("cn-east") && shown.contains("\"e5\"") && shown.contains("700"), "{shown}");

    let counters = Counters::of(&snapshotter);
    assert_eq!(counters.get(telemetry::ENRICHER_EVENTS, &[]), 7);
    assert_eq!(counters.get(telemetry::ENRICHER_RECORDS, &[("format", "protobuf")]), 5);
    assert_eq!(counters.get(telemetry::ENRICHER_RECORDS, &[("format", "schema_registry")]), 2);
    assert_eq!(counters.get(telemetry::ENRICHER_UNKNOWN_MERCHANT, &[]), 1);
    for (reason, n) in [("bad_currency", 1), ("missing_event_id", 1), ("undecodable", 2)] {
        let labels = [("stage", "enricher"), ("reason", reason)];
        assert_eq!(counters.get(telemetry::DEAD_LETTER_EVENTS, &labels), n, "{reason}");
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(20), enricher).await.expect("stops on cancel").unwrap().unwrap();
}

#[tokio::test]
async fn a_failing_enricher_task_stops_the_service_with_its_error() {
    let mock = MockKafka::start(2, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    // The enriched topic lives on broker 2 alone; the enricher's deliveries give up
    // after 300 ms.
    mock.lead(&topics.enriched(), 2);
    let (enricher, _stop, _) = start(&mock, mock.impatient(300)).await;
    let publisher = Publisher::new(kafka, topics.orders()).unwrap();
    publisher.publish(&paid("e1", "m1", 10_000, "CNY")).await.unwrap();
    eventually(Duration::from_secs(20), || (mock.read_all(&topics.enriched()).len() == 1).then_some(())).await.expect("running");
    mock.cluster.broker_down(2).unwrap();
    publisher.publish(&paid("e2", "m1", 10_000, "CNY")).await.unwrap();
    let published = Instant::now();

    let chain = stopped_with(enricher).await;
    assert!(chain.starts_with("task `enricher` failed: producing to `orderflow.orders.enriched`"), "{chain}");
    // 300 ms of the delivery's own timeout; the rest is the supervisor stopping the
    // loop and the merchant follower. Not asserted: a shared machine is noisy.
    eprintln!("enricher stopped {:?} after the event that could not be delivered was published", published.elapsed());
}

#[tokio::test]
async fn a_failing_merchant_follower_stops_the_service_with_its_error() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (enricher, _stop, _) = start(&mock, kafka.clone()).await;
    // Running: an event comes out enriched.
    Publisher::new(kafka, topics.orders()).unwrap().publish(&paid("e1", "m1", 10_000, "CNY")).await.unwrap();
    eventually(Duration::from_secs(20), || (mock.read_all(&topics.enriched()).len() == 1).then_some(())).await.expect("enriched");
    // Access to the topics is revoked: the next fetches fail with an authorization
    // error. The enricher's own consumer logs its share and waits; the follower stops.
    let denied = rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    mock.cluster.request_errors(rdkafka::types::RDKafkaApiKey::Fetch, &[denied; 50]);
    let gone = Instant::now();

    let chain = stopped_with(enricher).await;
    assert!(chain.starts_with("task `merchant-follower` failed: following the merchants topic `orderflow.merchants`"), "{chain}");
    eprintln!("enricher stopped {:?} after access was revoked", gone.elapsed());
}

#[tokio::test]
async fn events_dated_too_far_ahead_or_too_large_are_dead_lettered_not_enriched() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (enricher, _stop, cancel) = start(&mock, kafka.clone()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let at = |id: &str, ahead_ms: i64, amount: i64| OrderEvent {
        event_time: Some(millis_timestamp(now + ahead_ms)),
        ..paid(id, "m1", amount, "CNY")
    };
    let publisher = Publisher::new(kafka, topics.orders()).unwrap();
    publisher.publish(&at("now", 0, 100)).await.unwrap();
    publisher.publish(&at("in-a-minute", 60_000, 100)).await.unwrap(); // within the default 5 minutes
    publisher.publish(&at("tomorrow", 86_400_000, 100)).await.unwrap(); // a storefront's clock a day fast
    publisher.publish(&at("max", 0, i64::MAX)).await.unwrap();
    publisher.publish(&at("big-but-fine", 0, 1_000_000_000_000)).await.unwrap();

    let dead = eventually(Duration::from_secs(20), || {
        let dead = mock.read_all(&topics.dead_letter());
        (dead.len() == 2 && mock.read_all(&topics.enriched()).len() == 3).then_some(dead)
    })
    .await
    .expect("3 enriched records and 2 dead letters");
    let mut reasons: Vec<&str> = dead.iter().map(|m| header(m, dead_letter::REASON_CODE).unwrap()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["amount_too_large", "event_time_in_future"]);
    let mut enriched = mock.keys(&topics.enriched());
    enriched.sort_unstable();
    assert_eq!(enriched, ["o-big-but-fine", "o-in-a-minute", "o-now"]);
    cancel.cancel();
    enricher.await.unwrap().unwrap();
}

#[tokio::test]
async fn each_enriched_record_goes_to_its_orders_partition_number() {
    let mock = MockKafka::start(1, 4);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (_enricher, _stop, _) = start(&mock, kafka.clone()).await;
    // A storefront whose client partitions keys its own way (Java's murmur2, say):
    // order o-e{p} written to partition 3 - p, whatever librdkafka's partitioner thinks.
    let mut outbox: orderflow_runtime::outbox::Outbox = orderflow_runtime::outbox::Outbox::new(kafka.producer().unwrap());
    let orders = topics.orders();
    for p in 0..4 {
        let (key, payload) = (format!("o-e{p}"), orderflow_proto::Message::encode_to_vec(&paid(&format!("e{p}"), "m1", 100, "CNY")));
        outbox.send(rdkafka::producer::FutureRecord::to(&orders).partition(3 - p).key(&key).payload(&payload), ()).await.unwrap();
    }
    assert_eq!(outbox.settle().await.unwrap().delivered, 4);
    let enriched = eventually(Duration::from_secs(20), || {
        let enriched = mock.read_all(&topics.enriched());
        (enriched.len() == 4).then_some(enriched)
    })
    .await
    .expect("4 enriched records");
    let mut placed: Vec<(String, i32)> =
        enriched.iter().map(|m| (String::from_utf8_lossy(m.key().unwrap()).into_owned(), m.partition())).collect();
    placed.sort();
    assert_eq!(placed, [("o-e0".into(), 3), ("o-e1".into(), 2), ("o-e2".into(), 1), ("o-e3".into(), 0)]);
}

#[tokio::test]
async fn an_oversized_event_is_dead_lettered_with_its_first_bytes_and_the_enricher_goes_on() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    let (_enricher, _stop, _) = start(&mock, kafka.clone()).await;
    let huge = OrderEvent { customer_id: "c".repeat(200_000), ..paid("huge", "m1", 100, "CNY") };
    let huge_bytes = orderflow_proto::Message::encoded_len(&huge);
    let publisher = Publisher::new(kafka, topics.orders()).unwrap();
    publisher.publish(&huge).await.unwrap();
    publisher.publish(&paid("after", "m1", 100, "CNY")).await.unwrap();

    let dead = eventually(Duration::from_secs(20), || {
        let dead = mock.read_all(&topics.dead_letter());
        (dead.len() == 1 && mock.read_all(&topics.enriched()).len() == 1).then_some(dead)
    })
    .await
    .expect("1 dead letter and 1 enriched record");
    assert_eq!(header(&dead[0], dead_letter::REASON_CODE), Some("event_too_large"));
    assert_eq!(dead[0].payload().unwrap().len(), dead_letter::MAX_PAYLOAD_BYTES);
    assert_eq!(header(&dead[0], dead_letter::SOURCE_BYTES), Some(huge_bytes.to_string().as_str()));
    assert_eq!(mock.keys(&topics.enriched()), ["o-after"]);
}

#[tokio::test]
async fn currencies_outside_iso_4217_are_dead_lettered_unless_configured() {
    let mock = MockKafka::start(1, 2);
    let (kafka, topics) = (&mock.kafka, &mock.topics);
    load_merchants(kafka, &topics.merchants(), &[merchant("m1", "cn-east", "tmall")]).await.unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let config = EnricherConfig { extra_currencies: vec!["PTS".into()], ..EnricherConfig::default() };
    let enricher = tokio::spawn({
        let (kafka, topics, cancel) = (kafka.clone(), topics.clone(), cancel.clone());
        async move { orderflow_enricher::run(&kafka, &topics, &config, cancel).await }
    });
    let publisher = Publisher::new(kafka, topics.orders()).unwrap();
    for (id, currency) in [("cny", "CNY"), ("pts", "PTS"), ("qqq", "QQQ"), ("zzz", "ZZZ")] {
        publisher.publish(&paid(id, "m1", 100, currency)).await.unwrap();
    }
    let dead = eventually(Duration::from_secs(20), || {
        let dead = mock.read_all(&topics.dead_letter());
        (dead.len() == 2 && mock.read_all(&topics.enriched()).len() == 2).then_some(dead)
    })
    .await
    .expect("2 enriched records and 2 dead letters");
    assert!(dead.iter().all(|m| header(m, dead_letter::REASON_CODE) == Some("unknown_currency")));
    let mut enriched = mock.keys(&topics.enriched());
    enriched.sort_unstable();
    assert_eq!(enriched, ["o-cny", "o-pts"]);
    cancel.cancel();
    enricher.await.unwrap().unwrap();

    let bad = EnricherConfig { extra_currencies: vec!["points".into()], ..EnricherConfig::default() };
    let err = orderflow_enricher::run(&mock.kafka, &mock.topics, &bad, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "currency `points` is not three upper-case letters");
}
