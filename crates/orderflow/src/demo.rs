//! `orderflow demo`: the whole pipeline in one process, on librdkafka's mock cluster
//! (an embedded, in-memory Kafka for demos and tests; not a real broker).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use orderflow_aggregator::AggregatorConfig;
use orderflow_core::window::{Tallies, TotalKey};
use orderflow_enricher::EnricherConfig;
use orderflow_producer::Publisher;
use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::WindowTotal;
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::supervisor::Supervisor;
use orderflow_runtime::topics::{Stage, Topics};
use orderflow_runtime::{shutdown, telemetry, CancellationToken};
use orderflow_workload::reference::{Observed, Reference, Settings};
use orderflow_workload::{replay, sample, OnRefused, Pace, ReplayOptions, Source};
use rdkafka::mocking::MockCluster;

use crate::inspect::total_line;

/// Demo settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Merchants in the generated table.
    #[arg(long, env = "ORDERFLOW_DEMO_MERCHANTS", default_value_t = 3_000)]
    merchants: usize,
    /// Orders in the generated peak minute (each has one to three events).
    #[arg(long, env = "ORDERFLOW_DEMO_ORDERS", default_value_t = 20_000)]
    orders: usize,
    /// Seed of the generator.
    #[arg(long, env = "ORDERFLOW_DEMO_SEED", default_value_t = 1111)]
    seed: u64,
    /// Events per second to publish (default: flat out).
    #[arg(long, env = "ORDERFLOW_DEMO_RATE")]
    rate: Option<f64>,
    /// Partitions of the demo's topics.
    #[arg(long, env = "ORDERFLOW_DEMO_PARTITIONS", default_value_t = 4)]
    partitions: i32,
    /// Where to serve Prometheus metrics (`/metrics`).
    #[arg(long, env = "ORDERFLOW_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    metrics_addr: SocketAddr,
    /// Quiet time after which open windows close (short, so the demo ends soon).
    #[arg(long, env = "ORDERFLOW_IDLE_CLOSE", value_parser = humantime::parse_duration, default_value = "3s")]
    idle_close: Duration,
    /// Keep running (and serving /metrics) after the last window until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Post the sample to HTTP ingest (`POST /v1/events`, in batches of 500) instead of
    /// publishing it to Kafka directly: ingest runs in the demo on this address, with a
    /// demo token, and rejects the invalid events itself (--rate does not apply).
    #[arg(long, env = "ORDERFLOW_DEMO_INGEST", value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    ingest: Option<SocketAddr>,
}

/// The demo storefront's bearer token for `--ingest`.
const DEMO_TOKEN: &str = "demo-storefront-token";
/// Events per request the demo posts to ingest.
const DEMO_INGEST_BATCH: usize = 100;

/// 2026-11-11T00:00:00+08:00, midnight of the festival in Beijing time.
const MIDNIGHT_MS: i64 = 1_794_326_400_000;

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let cluster = MockCluster::new(1)?;
    let kafka = KafkaConfig::new(cluster.bootstrap_servers());
    let topics = Topics::new("orderflow", args.partitions);
    // The mock cluster has no admin API: create the topics through its own API.
    for spec in topics.specs(Stage::All) {
        cluster.create_topic(&spec.name, spec.partitions, 1)?;
    }
    telemetry::serve(args.metrics_addr).await?;
    println!("orderflow demo: embedded mock Kafka cluster (librdkafka's mock, in memory) at {}", kafka.brokers);
    println!("Prometheus metrics at http://{0}/metrics (health: /healthz, /readyz)", args.metrics_addr);

    let sample = sample::generate(args.seed, args.merchants, args.orders, MIDNIGHT_MS - 60_000, 3 * 60_000);
    // The mock cluster never answers DescribeConfigs: asking for the checkpoint topics'
    // settings would wait the connect timeout twice, then warn. The demo created them.
    let agg = AggregatorConfig { idle_close: args.idle_close, check_topic_settings: false, ..AggregatorConfig::default() };
    let reference = reference(&sample, &agg)?;
    println!(
        "Generated {} merchants and {} events ({} orders, with retries, out-of-order and invalid events) around 2026-11-11 00:00 CST.",
        sample.merchants.len(),
        sample.events.len(),
        args.orders
    );

    let n = orderflow_producer::load_merchants(&kafka, &topics.merchants(), &sample.merchants).await?;
    println!("Loaded {n} merchants.");
    let cancel = shutdown::on_signal();
    // The enricher and the aggregator run as supervised tasks: if either fails, both
    // stop and the demo ends with that error instead of waiting for totals.
    let services = CancellationToken::new();
    let mut supervisor = Supervisor::new(services.clone());
    {
        let (k, t) = (kafka.clone(), topics.clone());
        let token = supervisor.token();
        supervisor.spawn("enricher", async move { orderflow_enricher::run(&k, &t, &EnricherConfig::default(), token).await });
    }
    {
        let (k, t, a) = (kafka.clone(), topics.clone(), agg.clone());
        let token = supervisor.token();
        supervisor.spawn("aggregator", async move { orderflow_aggregator::run(&k, &t, &a, token).await });
    }
    let services_done = tokio::spawn(supervisor.run(Duration::from_secs(15)));

    let publisher = Publisher::new(&kafka, topics.orders())?;
    let started = std::time::Instant::now();
    let mut batch = publisher.batch();
    if let Some(addr) = args.ingest {
        post_over_http(addr, publisher.clone(), &sample.events, services.child_token()).await?;
    } else {
        // At most 10,000 deliveries in flight; a refused sample event ends the demo (its
        // reference totals count every event).
        let opts = ReplayOptions {
            pace: args.rate.map_or(Pace::Max, Pace::Rate),
            in_flight: 10_000,
            on_refused: OnRefused::Fail,
            started: Some(started.into()),
        };
        replay(Source::Events(&sample.events), &mut batch, &opts, &mut (), &CancellationToken::new()).await?;
    }
    println!("Published {} events in {:.1?}; totals appear as windows close:\n", sample.events.len(), started.elapsed());

    // Follow the totals topic until every expected total has arrived.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follow_cancel = services.child_token();
    let follower = {
        let (k, topic, c) = (kafka.clone(), topics.totals(), follow_cancel.clone());
        tokio::task::spawn_blocking(move || orderflow_aggregator::totals::follow(&k, &topic, &c, |t| drop(tx.send(t.clone()))))
    };
    let mut got: BTreeMap<(i64, TotalKey), WindowTotal> = BTreeMap::new();
    let mut observed = Observed::default();
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    let expected_totals = reference.certain_totals().len();
    while got.len() < expected_totals || !reference.differences(&observed).is_empty() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = services.cancelled() => break,
            _ = &mut deadline => break,
            t = rx.recv() => {
                let Some(t) = t else { break };
                println!("{}", total_line(&t));
                let (key, _) = Tallies::from_window_total(&t);
                observed.total(&t);
                got.insert((t.window_start.as_ref().map_or(0, timestamp_millis), key), t);
            }
        }
    }
    // The demo reads no late topic: its sample has no late event, so every valid event
    // must be in a total.
    let differences = reference.differences(&observed);
    let matches = differences.is_empty();
    for d in differences.iter().take(10) {
        println!("  differs from the reference: {d}");
    }
    let gmv: i64 = got.values().filter(|t| t.currency == "CNY").map(|t| t.paid.map_or(0, |p| p.amount_minor)).sum();
    println!(
        "\n{} totals over {} windows; paid GMV in CNY: {}.{:02} yuan.",
        got.len(),
        got.keys().map(|(s, _)| s).collect::<HashSet<_>>().len(),
        gmv / 100,
        gmv % 100
    );
    println!(
        "Check against a reference computed directly from the generated sample: {}",
        if matches { "every total matches." } else { "MISMATCH." }
    );
    if args.serve && matches {
        println!("Serving metrics at http://{}/metrics until Ctrl-C.", args.metrics_addr);
        cancel.cancelled().await;
    }
    services.cancel();
    let _ = follower.await;
    services_done.await.context("the services' supervisor panicked")?.context("the pipeline failed")?;
    drop(batch);
    drop(publisher);
    drop(cluster);
    Ok(if matches { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What the sample must produce, from the independent reference
/// ([`orderflow_workload::reference`]): valid events only, each event id once, merchant
/// joined at event time, none late.
fn reference(sample: &sample::Sample, agg: &AggregatorConfig) -> anyhow::Result<Reference> {
    let (spec, _) = agg.spec()?;
    let settings = Settings { window_ms: spec.size_ms(), lateness_ms: spec.lateness_ms(), ..Settings::default() };
    let mut reference = Reference::new(settings, &sample.merchants);
    for e in &sample.events {
        reference.add(e);
    }
    anyhow::ensure!(reference.late().is_empty() && reference.maybe_late().next().is_none(), "the demo's sample has late events");
    Ok(reference)
}

/// Serves HTTP ingest on `addr` (in this process, publishing through `publisher`) and
/// posts `events` to it as storefronts would: JSON arrays of at most
/// [`DEMO_INGEST_BATCH`] events of one storefront, with its token, one request at a time
/// over one keep-alive connection, in sample order.
async fn post_over_http(
    addr: SocketAddr,
    publisher: Publisher,
    events: &[orderflow_proto::v1::OrderEvent],
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use orderflow_ingest::auth::{hash_token, Tokens};
    // One token per storefront of the sample (`demo-token-<storefront>`): an event must
    // come with its own storefront's token.
    let storefronts: std::collections::BTreeSet<&str> = events.iter().map(|e| e.storefront_id.as_str()).filter(|s| !s.is_empty()).collect();
    let token = |storefront: &str| format!("{DEMO_TOKEN}-{}", if storefront.is_empty() { "any" } else { storefront });
    let lines: String = storefronts.iter().chain(std::iter::once(&"any")).map(|s| format!("{s} {}\n", hash_token(&token(s)))).collect();
    let tokens = Tokens::parse(&lines)?;
    let config = orderflow_ingest::IngestConfig { listen: addr, rate_limit: None, ..Default::default() };
    let app = orderflow_ingest::service::Ingest::new(publisher, tokens, config)?.router();
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("serving ingest on {addr}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
    println!(
        "HTTP ingest at http://{addr}/v1/events (tokens `{}` for storefront sf0, ...); posting the sample {DEMO_INGEST_BATCH} events at a time, one request per storefront.",
        token("sf0")
    );

    let (mut requests, mut accepted, mut rejected) = (0, 0, BTreeMap::<String, u64>::new());
    // A chunk's events go out per storefront, the storefronts' requests at once; the
    // next chunk waits for their answers. Small chunks keep the order on the topic close
    // to the sample's, which places its out-of-order events within the lateness.
    for chunk in events.chunks(DEMO_INGEST_BATCH) {
        let mut by: BTreeMap<&str, Vec<&orderflow_proto::v1::OrderEvent>> = BTreeMap::new();
        chunk.iter().for_each(|e| by.entry(e.storefront_id.as_str()).or_default().push(e));
        let answers = futures::future::try_join_all(by.iter().map(|(storefront, events)| async move {
            let body = serde_json::to_vec(events)?;
            post_json(addr, &token(storefront), &body).await
        }))
        .await?;
        for (status, answer) in answers {
            requests += 1;
            anyhow::ensure!(matches!(status, 200 | 207 | 422), "ingest answered {status}: {}", answer["error"]);
            accepted += answer["accepted"].as_u64().unwrap_or(0);
            for r in answer["results"].as_array().into_iter().flatten().filter(|r| r["outcome"] == "rejected") {
                *rejected.entry(r["code"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
            }
        }
    }
    let reasons: Vec<String> = rejected.iter().map(|(code, n)| format!("{n} {code}")).collect();
    println!(
        "Posted {} events in {requests} requests: {accepted} accepted (on the broker), {} rejected by ingest ({}).",
        events.len(),
        rejected.values().sum::<u64>(),
        if reasons.is_empty() { "none".to_owned() } else { reasons.join(", ") }
    );
    Ok(())
}

/// `POST /v1/events` with a JSON body over a connection of its own: the status and the
/// answer.
async fn post_json(addr: SocketAddr, token: &str, body: &[u8]) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await?;
    let text = String::from_utf8(response)?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("an HTTP status")?;
    Ok((status, serde_json::from_str(body)?))
}
