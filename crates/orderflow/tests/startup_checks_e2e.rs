//! Start-up refusals against a real Kafka-protocol broker in its own process: topics
//! created beforehand with settings the pipeline cannot run on make the service exit
//! at once with a message that says what to change, instead of failing later.

mod common;

use common::{Broker, Orderflow};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// A topic to create: name, partitions and settings.
type TopicDef<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

fn create(of: &Orderflow, topics: &[TopicDef<'_>]) {
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &of.brokers).create().expect("an admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, config)| {
            config.iter().fold(NewTopic::new(name, *partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v))
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in rt.block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap() {
        r.expect("topic created");
    }
}

/// Runs a service that must refuse to start; returns its stderr.
fn refused(of: &Orderflow, args: &[&str]) -> String {
    let out = common::output_within(of.command().args(args), common::RUN_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "orderflow {args:?} should refuse to start; stderr:\n{stderr}");
    stderr
}

#[test]
fn a_checkpoint_topic_made_with_stock_kafka_settings_is_refused_with_the_fix() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 2);
    let checkpoints = format!("{}.aggregator.checkpoints", of.prefix);
    create(&of, &[(&checkpoints, 2, &[])]);
    let stderr = refused(&of, &["aggregate"]);
    assert!(stderr.contains(&format!("checkpoint topic `{checkpoints}` has cleanup.policy=delete (the default), not compact")), "{stderr}");
    assert!(stderr.contains("max.message.bytes=67108864"), "the message says what to set: {stderr}");

    // Compacted but with Kafka's default record size (1 MiB): too small for the
    // checkpoints the default bounds allow, enough for tiny bounds.
    let of = Orderflow::new(&broker, 2);
    let checkpoints = format!("{}.aggregator.checkpoints", of.prefix);
    create(&of, &[(&checkpoints, 2, &[("cleanup.policy", "compact"), ("max.message.bytes", "1048588")])]);
    let stderr = refused(&of, &["aggregate"]);
    assert!(stderr.contains("takes records of at most 1048588 bytes"), "{stderr}");
    assert!(stderr.contains("lower --dedup-max-ids"), "{stderr}");
    let mut small = of.spawn(&["aggregate", "--dedup-max-ids", "20000", "--max-keys-per-window", "500"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(small.running(), "with bounds whose checkpoints fit, the aggregator runs");
    assert!(small.terminate().success());
}

#[test]
fn orders_and_enriched_topics_with_different_partition_counts_are_refused() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 2);
    let (orders, enriched) = (format!("{}.orders", of.prefix), format!("{}.orders.enriched", of.prefix));
    create(&of, &[(&orders, 3, &[]), (&enriched, 2, &[])]);
    let stderr = refused(&of, &["enrich"]);
    assert!(stderr.contains(&format!("`{orders}` has 3 partitions but `{enriched}` has 2: they need as many")), "{stderr}");
}
