//! The HTTP app in process, publishing to librdkafka's mock cluster: per-event answers,
//! records on the orders topic keyed by order id, and each limit's answer.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use orderflow_ingest::auth::{hash_token, Tokens};
use orderflow_ingest::service::Ingest;
use orderflow_ingest::IngestConfig;
use orderflow_producer::Publisher;
use orderflow_proto::v1::{OrderEvent, OrderEventBatch};
use orderflow_proto::Message as _;
use orderflow_runtime::testing::MockKafka;
use rdkafka::Message as _;
use serde_json::Value;
use tower::ServiceExt as _;

fn tokens() -> Tokens {
    Tokens::parse(&format!("web {}\napp-ios {}\n", hash_token("web-token"), hash_token("ios-token"))).unwrap()
}

fn event_json(id: &str, order: &str, amount: i64, storefront: &str) -> String {
    let time = chrono_now();
    format!(
        r#"{{"eventId":"{id}","orderId":"{order}","merchantId":"m1","storefrontId":"{storefront}","type":"ORDER_EVENT_TYPE_PAID","amountMinor":"{amount}","currency":"CNY","eventTime":"{time}"}}"#
    )
}

/// Now, in RFC 3339 (events must not be dated ahead of ingest's clock).
fn chrono_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    serde_json::to_value(orderflow_proto::millis_timestamp(ms - 1000)).unwrap().as_str().unwrap().to_owned()
}

fn app(mock: &MockKafka, config: IngestConfig) -> axum::Router {
    let publisher = Publisher::new(&mock.kafka, mock.topics.orders()).unwrap();
    Ingest::new(publisher, tokens(), config).unwrap().router()
}

async fn post(app: &axum::Router, token: Option<&str>, content_type: &str, body: Vec<u8>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::post("/v1/events").header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn valid_events_are_published_and_invalid_ones_rejected_each_with_its_reason() {
    let mock = MockKafka::start(1, 3);
    let app = app(&mock, IngestConfig::default());
    let body = format!(
        "[{},{},{},{{\"eventId\":\"x\"}}]",
        event_json("e1", "o1", 100, "web"),
        event_json("e2", "o2", -5, "web"),
        event_json("e3", "o3", 300, "app-ios"),
    );
    let (status, _, answer) = post(&app, Some("web-token"), "application/json", body.into_bytes()).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{answer}");
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(1), Some(3)));
    let r = &answer["results"];
    assert_eq!(r[0], serde_json::json!({"index": 0, "eventId": "e1", "outcome": "accepted", "status": 200}));
    assert_eq!((r[1]["code"].as_str(), r[1]["status"].as_u64()), (Some("negative_amount"), Some(422)));
    assert_eq!((r[2]["code"].as_str(), r[2]["status"].as_u64()), (Some("foreign_storefront"), Some(403)));
    assert_eq!((r[3]["code"].as_str(), r[3]["eventId"].as_str()), (Some("missing_order_id"), Some("x")));

    // A protobuf batch and JSON Lines; the records are keyed by order id.
    let ev = |id: &str, order: &str| -> OrderEvent { serde_json::from_str(&event_json(id, order, 7, "")).unwrap() };
    let batch = OrderEventBatch { events: vec![ev("p1", "o10"), ev("p2", "o11")] }.encode_to_vec();
    let (status, _, answer) = post(&app, Some("ios-token"), "application/x-protobuf", batch).await;
    assert_eq!((status, answer["accepted"].as_u64()), (StatusCode::OK, Some(2)), "{answer}");
    let lines = format!("{}\n{}\n", event_json("l1", "o20", 1, "web"), event_json("l2", "o21", 2, "web"));
    let (status, _, _) = post(&app, Some("web-token"), "application/x-ndjson", lines.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);

    let records = mock.read_all(&mock.topics.orders());
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|m| {
            let e = OrderEvent::decode(m.payload().unwrap()).unwrap();
            (String::from_utf8(m.key().unwrap().to_vec()).unwrap(), e.event_id)
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [("o1", "e1"), ("o10", "p1"), ("o11", "p2"), ("o20", "l1"), ("o21", "l2")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn tokens_sizes_and_rates_are_answered_whole() {
    let mock = MockKafka::start(1, 1);
    let config =
        IngestConfig { max_body_bytes: 4096, max_batch_events: 3, rate_limit: Some(1.0), rate_burst: 5, ..IngestConfig::default() };
    let app = app(&mock, config);
    let one = || event_json("e1", "o1", 100, "web").into_bytes();

    let (status, headers, answer) = post(&app, None, "application/json", one()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(post(&app, Some("wrong"), "application/json", one()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&app, Some("web-token"), "text/plain", one()).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, _, answer) = post(&app, Some("web-token"), "application/json", vec![b' '; 5000]).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
    let four = format!("[{}]", (0..4).map(|i| event_json(&format!("e{i}"), "o", 1, "web")).collect::<Vec<_>>().join(","));
    let (status, _, answer) = post(&app, Some("web-token"), "application/json", four.into_bytes()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events")));
    let (status, _, answer) = post(&app, Some("web-token"), "application/json", b"[{".to_vec()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_body")));

    // A burst of 5 events, then 1 a second: the sixth event is refused whole.
    let three = format!("[{}]", (0..3).map(|i| event_json(&format!("r{i}"), "o", 1, "web")).collect::<Vec<_>>().join(","));
    assert_eq!(post(&app, Some("web-token"), "application/json", three.clone().into_bytes()).await.0, StatusCode::OK);
    let (status, headers, answer) = post(&app, Some("web-token"), "application/json", three.into_bytes()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")));
    assert_eq!(headers["retry-after"], "1");
    // Another storefront has its own bucket.
    assert_eq!(post(&app, Some("ios-token"), "application/json", event_json("i1", "o", 1, "").into_bytes()).await.0, StatusCode::OK);
    // Refused requests published nothing: 3 + 1 events.
    assert_eq!(mock.read_all(&mock.topics.orders()).len(), 4);
}

#[tokio::test]
async fn a_broker_that_does_not_acknowledge_gets_503_and_nothing_is_accepted() {
    let mock = MockKafka::start(1, 1);
    let config = IngestConfig { broker_deadline: std::time::Duration::from_millis(500), ..IngestConfig::default() };
    let app = app(&mock, config);
    mock.cluster.broker_down(1).unwrap();
    let (status, headers, answer) = post(&app, Some("web-token"), "application/json", event_json("e1", "o1", 1, "web").into_bytes()).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("broker_unavailable")), "{answer}");
    assert_eq!(headers["retry-after"], "1");
    mock.cluster.broker_up(1).unwrap();
    // A retry is accepted once the broker is back (librdkafka reconnects with backoff).
    let mut attempts = 0;
    loop {
        let (status, _, answer) = post(&app, Some("web-token"), "application/json", event_json("e1", "o1", 1, "web").into_bytes()).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        attempts += 1;
        assert!(attempts < 120, "the broker never came back");
    }
    // The first attempt may have landed too: the same event id, which the aggregator
    // counts once.
    let ids: Vec<String> =
        mock.read_all(&mock.topics.orders()).iter().map(|m| OrderEvent::decode(m.payload().unwrap()).unwrap().event_id).collect();
    assert!(!ids.is_empty() && ids.iter().all(|id| id == "e1"), "{ids:?}");
}

/// `openapi.json` against the app: the one route and method, every request content
/// type and encoding accepted, and every status, refusal code and header the app
/// answers with documented (and every documented status answered).
#[tokio::test]
async fn the_openapi_document_matches_the_app() {
    use std::collections::BTreeSet;

    let doc: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, [orderflow_ingest::EVENTS_ROUTE]);
    let op = &doc["paths"][orderflow_ingest::EVENTS_ROUTE];
    assert_eq!(op.as_object().unwrap().keys().collect::<Vec<_>>(), ["post"]);
    let op = &op["post"];
    let documented_types: BTreeSet<&str> = op["requestBody"]["content"].as_object().unwrap().keys().map(String::as_str).collect();
    let code_types: BTreeSet<&str> = orderflow_ingest::body::Format::CONTENT_TYPES.iter().map(|(t, _)| *t).collect();
    assert_eq!(documented_types, code_types);
    let encodings: Vec<&str> = op["parameters"][0]["schema"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(op["parameters"][0]["name"], "Content-Encoding");

    let mock = MockKafka::start(1, 1);
    let deadline = std::time::Duration::from_secs(2);
    let open = app(&mock, IngestConfig { max_body_bytes: 4096, max_batch_events: 3, broker_deadline: deadline, ..IngestConfig::default() });
    let limited = app(&mock, IngestConfig { rate_limit: Some(0.01), rate_burst: 3, max_batch_events: 3, ..IngestConfig::default() });
    let mut seen: Vec<(u16, axum::http::HeaderMap, Value)> = Vec::new();
    let mut record = |r: (StatusCode, axum::http::HeaderMap, Value)| {
        let status = r.0.as_u16();
        seen.push((status, r.1, r.2));
        status
    };

    // Every documented content type and encoding is accepted.
    let ev = |id: &str| event_json(id, &format!("o-{id}"), 1, "web");
    let batch = |id: &str| OrderEventBatch { events: vec![serde_json::from_str(&ev(id)).unwrap()] }.encode_to_vec();
    for (i, t) in code_types.iter().enumerate() {
        let id = format!("t{i}");
        let body = match orderflow_ingest::body::Format::from_content_type(t).unwrap() {
            orderflow_ingest::body::Format::Protobuf => batch(&id),
            _ => ev(&id).into_bytes(),
        };
        assert_eq!(record(post(&open, Some("web-token"), t, body).await), 200, "{t}");
    }
    for enc in &encodings {
        let plain = ev(&format!("c-{enc}")).into_bytes();
        let body = match *enc {
            "gzip" => {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&plain).unwrap();
                gz.finish().unwrap()
            }
            "zstd" => zstd::encode_all(plain.as_slice(), 3).unwrap(),
            _ => plain,
        };
        let req = Request::post("/v1/events")
            .header("content-type", "application/json")
            .header("content-encoding", *enc)
            .header("authorization", "Bearer web-token");
        let resp = open.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{enc}");
    }
    let req = Request::post("/v1/events").header("content-type", "application/json").header("content-encoding", "br");
    let resp = open.clone().oneshot(req.header("authorization", "Bearer web-token").body(Body::from(ev("br"))).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    record((parts.status, parts.headers, serde_json::from_slice(&axum::body::to_bytes(body, usize::MAX).await.unwrap()).unwrap()));

    // Every other answer.
    let bad = |id: &str| event_json(id, "o", -1, "web");
    record(post(&open, Some("web-token"), "application/json", format!("[{},{}]", ev("m1"), bad("m2")).into_bytes()).await);
    record(post(&open, Some("web-token"), "application/json", bad("m3").into_bytes()).await);
    record(post(&open, Some("web-token"), "application/json", event_json("f", "o", 1, "app-ios").into_bytes()).await);
    record(post(&open, Some("web-token"), "application/json", b"[{".to_vec()).await);
    record(post(&open, None, "application/json", ev("u").into_bytes()).await);
    record(post(&open, Some("web-token"), "text/plain", ev("u").into_bytes()).await);
    record(post(&open, Some("web-token"), "application/json", vec![b' '; 5000]).await);
    record(post(&open, Some("web-token"), "application/x-ndjson", [ev("a"), ev("b"), ev("c"), ev("d")].join("\n").into_bytes()).await);
    let three = format!("[{},{},{}]", ev("r1"), ev("r2"), ev("r3"));
    assert_eq!(record(post(&limited, Some("web-token"), "application/json", three.into_bytes()).await), 200);
    record(post(&limited, Some("web-token"), "application/json", ev("r4").into_bytes()).await);
    mock.cluster.broker_down(1).unwrap();
    record(post(&open, Some("web-token"), "application/json", ev("d").into_bytes()).await);
    mock.cluster.broker_up(1).unwrap();
    // More requests than --max-in-flight: one holds the only place while its body is
    // still arriving.
    let single = app(&mock, IngestConfig { max_in_flight: 1, ..IngestConfig::default() });
    let (polled_tx, polled) = tokio::sync::oneshot::channel::<()>();
    let (chunks, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures::stream::unfold((Some(polled_tx), rx), |(tx, mut rx)| async move {
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        rx.recv().await.map(|chunk| (chunk, (None, rx)))
    });
    let req = Request::post("/v1/events").header("content-type", "application/json").header("authorization", "Bearer web-token");
    let held = tokio::spawn(single.clone().oneshot(req.body(Body::from_stream(body)).unwrap()));
    within("the held request to be polled", polled).await.unwrap();
    assert_eq!(record(post(&single, Some("web-token"), "application/json", ev("o").into_bytes()).await), 503);
    chunks.send(Ok(ev("h").into_bytes())).await.unwrap();
    drop(chunks);
    assert_eq!(within("the held request's answer", held).await.unwrap().unwrap().status(), StatusCode::OK, "the held request is answered");

    let responses = op["responses"].as_object().unwrap();
    let documented: BTreeSet<u16> = responses.keys().map(|k| k.parse().unwrap()).collect();
    let answered: BTreeSet<u16> = seen.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(answered, documented);
    let refusal_codes: BTreeSet<&str> = doc["components"]["schemas"]["Refusal"]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let answered_codes: BTreeSet<&str> = seen.iter().filter_map(|(_, _, b)| b["error"]["code"].as_str()).collect();
    assert_eq!(answered_codes, refusal_codes);
    for (status, headers, body) in &seen {
        let doc = &responses[&status.to_string()];
        assert!(doc["content"]["application/json"].is_object(), "{status}");
        assert_eq!(headers["content-type"], "application/json");
        let schema = doc["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
        assert_eq!(schema.ends_with("/Refusal"), body.get("error").is_some(), "{status}: {body}");
        for name in doc["headers"].as_object().map(|h| h.keys().collect::<Vec<_>>()).unwrap_or_default() {
            assert!(headers.contains_key(name.as_str()), "{status} lacks {name}");
        }
    }
}

/// Awaits `f`, failing the test with what it was waiting for after two minutes (a
/// regression that hangs fails here, not at CI's time limit).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after 120 s waiting for {what}"))
}
