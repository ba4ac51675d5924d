//! `orderflow demo`: the whole pipeline in one process, on librdkafka's mock cluster
//! (an embedded, in-memory Kafka for demos and tests; not a real broker).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use orderflow_aggregator::AggregatorArgs;
use orderflow_core::merchant::MerchantTable;
use orderflow_core::window::{Tallies, TotalKey, WindowSpec};
use orderflow_enricher::EnricherArgs;
use orderflow_producer::{sample, Publisher};
use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::WindowTotal;
use orderflow_runtime::kafka::KafkaArgs;
use orderflow_runtime::topics::TopicArgs;
use orderflow_runtime::{shutdown, telemetry, CancellationToken};
use rdkafka::mocking::MockCluster;

use crate::inspect::total_line;
use crate::loadtest::check::{Reference, TotalsMap};

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
}

/// 2026-11-11T00:00:00+08:00, midnight of the festival in Beijing time.
const MIDNIGHT_MS: i64 = 1_794_326_400_000;

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let cluster = MockCluster::new(1)?;
    let kafka = KafkaArgs::new(cluster.bootstrap_servers());
    let topics = TopicArgs::new("orderflow", args.partitions);
    // The mock cluster has no admin API: create the topics through its own API.
    let p = args.partitions;
    for (name, partitions) in [
        (topics.orders(), p),
        (topics.merchants(), 1),
        (topics.enriched(), p),
        (topics.dead_letter(), p),
        (topics.late(), p),
        (topics.partials(), 1),
        (topics.totals(), 1),
        (topics.checkpoints(), p),
    ] {
        cluster.create_topic(&name, partitions, 1)?;
    }
    telemetry::install_prometheus(args.metrics_addr)?;
    println!("orderflow demo: embedded mock Kafka cluster (librdkafka's mock, in memory) at {}", kafka.brokers);
    println!("Prometheus metrics at http://{}/metrics", args.metrics_addr);

    let sample = sample::generate(args.seed, args.merchants, args.orders, MIDNIGHT_MS - 60_000, 3 * 60_000);
    let agg = AggregatorArgs { idle_close: args.idle_close, ..AggregatorArgs::default() };
    let expected = reference_totals(&sample, &agg)?;
    println!(
        "Generated {} merchants and {} events ({} orders, with retries, out-of-order and invalid events) around 2026-11-11 00:00 CST.",
        sample.merchants.len(),
        sample.events.len(),
        args.orders
    );

    let n = orderflow_producer::load_merchants(&kafka, &topics.merchants(), &sample.merchants).await?;
    println!("Loaded {n} merchants.");
    let cancel = shutdown::on_signal();
    let services = CancellationToken::new();
    let enricher = {
        let (k, t, c) = (kafka.clone(), topics.clone(), services.clone());
        tokio::spawn(async move { orderflow_enricher::run(&k, &t, &EnricherArgs::default(), c).await })
    };
    let aggregator = {
        let (k, t, c, a) = (kafka.clone(), topics.clone(), services.clone(), agg.clone());
        tokio::spawn(async move { orderflow_aggregator::run(&k, &t, &a, c).await })
    };

    let publisher = Publisher::new(&kafka, topics.orders())?;
    let started = std::time::Instant::now();
    let mut in_flight = Vec::new();
    for (i, e) in sample.events.iter().enumerate() {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        in_flight.push(publisher.enqueue(e).await?);
        if in_flight.len() >= 10_000 {
            for f in in_flight.drain(..) {
                publisher.settle(f).await?;
            }
        }
    }
    for f in in_flight.drain(..) {
        publisher.settle(f).await?;
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
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    while got.len() < expected.len() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut deadline => break,
            t = rx.recv() => {
                let Some(t) = t else { break };
                println!("{}", total_line(&t));
                let (key, _) = Tallies::from_window_total(&t);
                got.insert((t.window_start.as_ref().map_or(0, timestamp_millis), key), t);
            }
        }
    }
    let matches = got.len() == expected.len()
        && expected
            .iter()
            .all(|((start, key), tallies)| got.get(&(*start, key.clone())).is_some_and(|t| Tallies::from_window_total(t).1 == *tallies));
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
    enricher.await??;
    aggregator.await??;
    drop(publisher);
    drop(cluster);
    Ok(if matches { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The totals the sample should produce, computed directly (the load test's reference:
/// valid events only, each event id once, merchant joined at event time).
fn reference_totals(sample: &sample::Sample, agg: &AggregatorArgs) -> anyhow::Result<TotalsMap> {
    let (spec, _): (WindowSpec, i64) = agg.spec()?;
    let mut table = MerchantTable::new();
    sample.merchants.iter().for_each(|m| table.upsert(m));
    let mut reference = Reference::new(spec, table);
    for e in &sample.events {
        reference.add(e);
    }
    Ok(reference.into_totals())
}
