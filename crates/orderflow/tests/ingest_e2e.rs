//! HTTP ingest against a real Kafka-protocol broker in its own process: events posted
//! over HTTP (one JSON event, a JSON array, gzip JSON Lines, a zstd protobuf batch)
//! arrive once on the orders topic and in the totals; invalid and foreign events are
//! rejected each with its reason while the rest go through; wrong tokens, oversized
//! bodies and rates beyond the limit are answered whole; with the broker stopped,
//! requests get 503 and, once it is back, nothing acknowledged is missing and nothing
//! is counted twice.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use common::{get, sample, scrape, wait_for, wait_until, Broker, Orderflow, Service};
use orderflow_proto::v1::{OrderEvent, OrderEventBatch};
use orderflow_proto::Message as _;
use serde_json::Value;

const WEB_TOKEN: &str = "web-secret-token";
const IOS_TOKEN: &str = "ios-secret-token";

/// An HTTP/1.1 request over a fresh connection: status, response headers (lower-case
/// names) and body.
fn post(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, BTreeMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to ingest");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    (status, headers, body.to_owned())
}

fn post_json(addr: &str, token: &str, content_type: &str, body: &[u8], encoding: Option<&str>) -> (u16, BTreeMap<String, String>, Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", content_type)];
    if let Some(e) = encoding {
        headers.push(("Content-Encoding", e));
    }
    let (status, h, body) = post(addr, &headers, body);
    (status, h, serde_json::from_str(&body).unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {body}")))
}

/// A 100-CNY-times-`n` payment of merchant m1 in the window of 2019-11-11T00:00Z.
fn paid(id: &str, n: i64, storefront: &str) -> String {
    format!(
        r#"{{"eventId":"{id}","orderId":"o-{id}","merchantId":"m1","storefrontId":"{storefront}","type":"ORDER_EVENT_TYPE_PAID","amountMinor":"{}","currency":"CNY","eventTime":"2019-11-11T00:00:{n:02}Z"}}"#,
        100 * n
    )
}

fn tokens_file(dir: &tempfile::TempDir) -> String {
    let text =
        format!("web {}\napp-ios {}\n", orderflow_ingest::auth::hash_token(WEB_TOKEN), orderflow_ingest::auth::hash_token(IOS_TOKEN));
    let p = dir.path().join("tokens");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Starts `orderflow ingest` and waits until it is ready; returns it, its API address
/// and its metrics address.
fn start_ingest(of: &Orderflow, tokens: &str, extra: &[&str]) -> (Service, String, String) {
    let (api, metrics) = (format!("127.0.0.1:{}", common::free_port()), format!("127.0.0.1:{}", common::free_port()));
    let mut args = vec!["ingest", "--listen", &api, "--metrics-addr", &metrics, "--tokens-file", tokens];
    args.extend_from_slice(extra);
    let ingest = of.spawn(&args);
    wait_for("ingest to be ready", Duration::from_secs(60), || get(&metrics, "/readyz").is_some_and(|(s, _)| s == 200));
    (ingest, api, metrics)
}

/// Event ids on the orders topic, with how many records each.
fn orders_on_topic(of: &Orderflow) -> BTreeMap<String, usize> {
    let kafka = orderflow_runtime::kafka::KafkaConfig::new(of.brokers.clone());
    let reader = orderflow_runtime::kafka::TopicReader::open(&kafka, &format!("{}.orders", of.prefix)).unwrap();
    let mut ids = BTreeMap::new();
    reader
        .read_to_end(|m| {
            use rdkafka::Message as _;
            let e = OrderEvent::decode(m.payload().unwrap()).unwrap();
            assert_eq!(m.key(), Some(e.order_id.as_bytes()), "keyed by order id");
            *ids.entry(e.event_id).or_default() += 1;
        })
        .unwrap();
    ids
}

/// The paid count and amount of the one total (east, gold, CNY, 00:00), once published.
fn paid_total(of: &Orderflow) -> (String, String) {
    // The aggregator creates the totals topic as it starts: until then `totals` fails.
    let totals = wait_until("the window's total", Duration::from_secs(120), || {
        let out = common::output_within(of.command().args(["totals", "--json"]), common::RUN_LIMIT);
        let t: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (out.status.success() && !t.is_empty()).then_some(t)
    });
    assert_eq!(totals.len(), 1, "{totals:?}");
    let t = &totals[0];
    assert_eq!((t["region"].as_str(), t["tier"].as_str(), t["currency"].as_str()), (Some("east"), Some("gold"), Some("CNY")));
    (t["paid"]["count"].as_str().unwrap().to_owned(), t["paid"]["amountMinor"].as_str().unwrap().to_owned())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn posted_events_arrive_once_and_are_counted_exactly() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 3);
    let dir = tempfile::tempdir().unwrap();
    let merchants = dir.path().join("merchants.csv");
    std::fs::write(&merchants, "merchant_id,region,tier\nm1,east,gold\n").unwrap();
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let tokens = tokens_file(&dir);
    let (ingest, api, metrics) = start_ingest(
        &of,
        &tokens,
        &["--max-body-bytes", "65536", "--max-batch-events", "20", "--rate-limit", "0.01", "--rate-burst", "20"],
    );

    // One event.
    let (status, _, answer) = post_json(&api, WEB_TOKEN, "application/json", paid("a1", 1, "web").as_bytes(), None);
    assert_eq!((status, &answer["results"][0]["outcome"]), (200, &Value::from("accepted")), "{answer}");
    // A JSON array with an invalid event and another storefront's event among valid ones.
    let mut negative = paid("bad", 9, "web");
    negative = negative.replace("\"amountMinor\":\"900\"", "\"amountMinor\":\"-900\"");
    let array = format!("[{},{},{},{}]", paid("a2", 2, "web"), negative, paid("ios", 8, "app-ios"), paid("a3", 3, ""));
    let (status, _, answer) = post_json(&api, WEB_TOKEN, "application/json", array.as_bytes(), None);
    assert_eq!(status, 207, "{answer}");
    let results: Vec<(String, u64, String)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["eventId"].as_str().unwrap().to_owned(), r["status"].as_u64().unwrap(), r["code"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        results,
        [
            ("a2".into(), 200, "".into()),
            ("bad".into(), 422, "negative_amount".into()),
            ("ios".into(), 403, "foreign_storefront".into()),
            ("a3".into(), 200, "".into())
        ]
    );
    assert_eq!(answer["results"][1]["message"], "amount_minor is negative (-900)");
    // Gzip JSON Lines, and a zstd protobuf batch from the other storefront.
    let lines = format!("{}\n{}\n", paid("a4", 4, "web"), paid("a5", 5, "web"));
    let (status, _, answer) = post_json(&api, WEB_TOKEN, "application/x-ndjson", &gzip(lines.as_bytes()), Some("gzip"));
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(2)), "{answer}");
    let batch = OrderEventBatch { events: ["a6", "a7"].iter().map(|id| serde_json::from_str(&paid(id, 6, "app-ios")).unwrap()).collect() };
    let body = zstd::encode_all(batch.encode_to_vec().as_slice(), 3).unwrap();
    let (status, _, answer) = post_json(&api, IOS_TOKEN, "application/x-protobuf", &body, Some("zstd"));
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(2)), "{answer}");

    // Refused whole: a wrong token, a body too large, more than the storefront's rate.
    let (status, headers, answer) = post_json(&api, "not-a-token", "application/json", paid("x1", 1, "web").as_bytes(), None);
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(headers.get("www-authenticate").map(String::as_str), Some("Bearer"));
    let (status, _, answer) = post_json(&api, WEB_TOKEN, "application/json", &vec![b' '; 70_000], None);
    assert_eq!((status, answer["error"]["code"].as_str()), (413, Some("body_too_large")));
    // web has used 6 of its 20-event burst (refilling at one event per 100 s).
    let fifteen = format!("[{}]", (0..15).map(|i| paid(&format!("r{i}"), 1, "web")).collect::<Vec<_>>().join(","));
    let (status, headers, answer) = post_json(&api, WEB_TOKEN, "application/json", fifteen.as_bytes(), None);
    assert_eq!((status, answer["error"]["code"].as_str()), (429, Some("rate_limited")), "{answer}");
    assert!(headers["retry-after"].parse::<u64>().unwrap() >= 1, "{headers:?}");

    // Exactly the accepted events, once each, keyed by order id.
    let want: BTreeMap<String, usize> = ["a1", "a2", "a3", "a4", "a5", "a6", "a7"].iter().map(|id| (id.to_string(), 1)).collect();
    assert_eq!(orders_on_topic(&of), want);

    // And in the totals, exactly: 1+2+3+4+5+6+6 hundred CNY in 7 payments.
    let _enricher = of.spawn(&["enrich", "--metrics-addr", &format!("127.0.0.1:{}", common::free_port())]);
    let _aggregator = of.spawn(&["aggregate", "--metrics-addr", &format!("127.0.0.1:{}", common::free_port()), "--idle-close", "2s"]);
    assert_eq!(paid_total(&of), ("7".to_owned(), "2700".to_owned()));
    assert!(of.json_lines(&["dead-letters", "--json"]).is_empty(), "rejected events never reach the orders topic");

    // The metrics tell the same story.
    let page = scrape(&metrics).unwrap();
    let requests = |status: &str, code: &str| {
        sample(&page, "orderflow_ingest_requests_total", &[("route", "/v1/events"), ("status", status), ("code", code)])
    };
    assert_eq!(
        (
            requests("200", "none"),
            requests("207", "none"),
            requests("401", "unauthorized"),
            requests("413", "body_too_large"),
            requests("429", "rate_limited")
        ),
        (3.0, 1.0, 1.0, 1.0, 1.0)
    );
    let events = |outcome: &str, reason: &str| sample(&page, "orderflow_ingest_events_total", &[("outcome", outcome), ("reason", reason)]);
    assert_eq!(events("accepted", "none"), 7.0);
    assert_eq!((events("rejected", "negative_amount"), events("rejected", "foreign_storefront")), (1.0, 1.0));
    assert!(page.contains("orderflow_ingest_broker_ack_duration_seconds_bucket"), "ack latency is a histogram");
    assert_eq!(sample(&page, "orderflow_ingest_requests_in_flight", &[]), 0.0);
    assert_eq!(get(&metrics, "/healthz"), Some((200, "ok\n".to_owned())));

    // Tokens rotate without a restart: the file is reloaded when it changes ...
    let line = |token: &str| format!("web {}\n", orderflow_ingest::auth::hash_token(token));
    std::fs::write(&tokens, line("rotated-token")).unwrap();
    // An empty batch: 401 with a token not in force, 400 (no events) with one that is.
    let empty = |token: &str| post_json(&api, token, "application/json", b"[]", None).0;
    wait_for("the rotated token to be loaded", Duration::from_secs(60), || empty("rotated-token") == 400);
    assert_eq!(empty(WEB_TOKEN), 401);
    // ... and on SIGHUP; a file that does not parse leaves the tokens in force.
    std::fs::write(&tokens, "web not-a-hash\n").unwrap();
    ingest.signal("HUP");
    wait_for("the failed reload to be counted", Duration::from_secs(60), || {
        scrape(&metrics).is_some_and(|p| sample(&p, "orderflow_ingest_token_reloads_total", &[("outcome", "failed")]) >= 1.0)
    });
    assert_eq!(empty("rotated-token"), 400);

    // SIGTERM answers the requests in flight: one whose body is half sent when the
    // shutdown begins (new connections are refused by then) is still answered.
    let body = format!("[{}]", paid("s1", 1, "web"));
    let (first, rest) = body.split_at(body.len() / 2);
    let mut conn = std::net::TcpStream::connect(&api).unwrap();
    write!(
        conn,
        "POST /v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer rotated-token\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    ingest.signal("TERM");
    wait_for("ingest to stop taking connections", Duration::from_secs(60), || std::net::TcpStream::connect(&api).is_err());
    conn.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""eventId":"s1","outcome":"accepted""#), "{answer}");
    assert!(ingest.terminate().success());
}

#[test]
fn with_the_broker_stopped_requests_get_503_and_nothing_acknowledged_is_lost_or_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::nisshi_in(dir.path(), "sqlite://broker.db");
    let of = Orderflow::new(&broker, 2);
    let merchants = dir.path().join("merchants.csv");
    std::fs::write(&merchants, "merchant_id,region,tier\nm1,east,gold\n").unwrap();
    of.run(&["merchants", "load", merchants.to_str().unwrap()]);
    let tokens = tokens_file(&dir);
    let (_ingest, api, metrics) = start_ingest(&of, &tokens, &["--broker-deadline", "2s"]);
    let batch = |ids: &[&str]| format!("[{}]", ids.iter().map(|id| paid(id, 1, "web")).collect::<Vec<_>>().join(","));
    let send = |ids: &[&str]| post_json(&api, WEB_TOKEN, "application/json", batch(ids).as_bytes(), None);

    let (status, _, answer) = send(&["b1", "b2", "b3"]);
    assert_eq!(status, 200, "{answer}");

    broker.stop();
    let started = Instant::now();
    let (status, headers, answer) = send(&["b4", "b5", "b6"]);
    let mut attempts = 1;
    let waited = started.elapsed();
    assert_eq!((status, answer["error"]["code"].as_str()), (503, Some("broker_unavailable")), "{answer}");
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("2"));
    // The 2 s deadline, not librdkafka's 5-minute delivery timeout (a loose bound: the
    // machine may be busy).
    assert!(waited < Duration::from_secs(60), "503 after {waited:?}");
    wait_for("/readyz to report the broker gone", Duration::from_secs(60), || get(&metrics, "/readyz").is_some_and(|(s, _)| s == 503));

    broker.start_again();
    // The storefront retries the refused batch until it is accepted.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, _, answer) = send(&["b4", "b5", "b6"]);
        attempts += 1;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "the broker never came back: {answer}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // And an event already acknowledged, sent again (a storefront unsure of its answer).
    let (status, _, answer) = send(&["b7", "b1"]);
    assert_eq!(status, 200, "{answer}");

    // Everything acknowledged is on the topic: b1 twice (it was sent twice, and ingest
    // publishes what it accepts), b4 to b6 at least once and at most once per attempt
    // (a refused attempt may still land after its 503), the rest once ...
    let on_topic = orders_on_topic(&of);
    let retried = 1..=attempts;
    for (id, times) in [
        ("b1", 2..=2),
        ("b2", 1..=1),
        ("b3", 1..=1),
        ("b4", retried.clone()),
        ("b5", retried.clone()),
        ("b6", retried.clone()),
        ("b7", 1..=1),
    ] {
        assert!(on_topic.get(id).is_some_and(|n| times.contains(n)), "{id}: want {times:?} on the topic, got {on_topic:?}");
    }
    assert_eq!(on_topic.len(), 7, "{on_topic:?}");
    // ... and counted once each.
    let _enricher = of.spawn(&["enrich", "--metrics-addr", &format!("127.0.0.1:{}", common::free_port())]);
    let _aggregator = of.spawn(&["aggregate", "--metrics-addr", &format!("127.0.0.1:{}", common::free_port()), "--idle-close", "2s"]);
    assert_eq!(paid_total(&of), ("7".to_owned(), "700".to_owned()));
}
