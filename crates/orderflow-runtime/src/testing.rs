//! Helpers for the services' in-process tests: librdkafka's mock cluster (an in-memory
//! Kafka inside the test process, with fault injection) with every orderflow topic
//! created, and ways to read topics and wait for outcomes.

use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::Message as _;

use crate::kafka::{KafkaConfig, TopicReader};
use crate::topics::{Stage, Topics};

/// A mock cluster with every topic of `topics` created.
pub struct MockKafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub kafka: KafkaConfig,
    pub topics: Topics,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka").field("brokers", &self.kafka.brokers).finish_non_exhaustive()
    }
}

impl MockKafka {
    /// `brokers` mock brokers; the topics under prefix `orderflow`, wide ones with
    /// `partitions` partitions, all led by broker 1.
    pub fn start(brokers: i32, partitions: i32) -> Self {
        let cluster = MockCluster::new(brokers).expect("starting librdkafka's mock cluster");
        let mut kafka = KafkaConfig::new(cluster.bootstrap_servers());
        // The mock cluster never answers some admin requests (DescribeConfigs), which
        // services wait for at most this long.
        kafka.connect_timeout = std::time::Duration::from_secs(2);
        let topics = Topics::new("orderflow", partitions);
        for spec in topics.specs(Stage::All) {
            cluster.create_topic(&spec.name, spec.partitions, 1).expect("creating a mock topic");
            for p in 0..spec.partitions {
                cluster.partition_leader(&spec.name, p, Some(1)).expect("placing a mock partition");
            }
        }
        for service in ["enricher", "aggregator", "merger"] {
            cluster.coordinator(MockCoordinator::Group(topics.group(service)), 1).expect("placing a mock coordinator");
        }
        cluster.coordinator(MockCoordinator::Group("orderflow-reader".into()), 1).expect("placing a mock coordinator");
        Self { cluster, kafka, topics }
    }

    /// Moves every partition of `topic` to broker `broker` (to fail it alone, with
    /// [`MockCluster::broker_down`]).
    pub fn lead(&self, topic: &str, broker: i32) {
        let partitions = crate::kafka::partition_count(&self.kafka.reader().expect("a reader"), topic).expect("a topic");
        for p in 0..partitions {
            self.cluster.partition_leader(topic, p, Some(broker)).expect("placing a mock partition");
        }
    }

    /// Settings for a client whose deliveries give up after `ms` (the default is 5
    /// minutes of retries), so that a broker taken down fails them quickly.
    pub fn impatient(&self, ms: u64) -> KafkaConfig {
        let mut kafka = self.kafka.clone();
        kafka.options.push(format!("message.timeout.ms={ms}"));
        kafka
    }

    /// Every record of `topic` so far.
    pub fn read_all(&self, topic: &str) -> Vec<OwnedMessage> {
        let reader = TopicReader::open(&self.kafka, topic).expect("opening a topic reader");
        let mut out = Vec::new();
        reader.read_to_end(|m| out.push(m.detach())).expect("reading a topic");
        out
    }

    /// Every record of `topic` so far, as (key, payload) text/bytes pairs.
    pub fn keys(&self, topic: &str) -> Vec<String> {
        self.read_all(topic).iter().map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()).collect()
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The counters and gauges of one snapshot of `metrics_util`'s debugging recorder
/// (taking a snapshot resets its counters, so take one and ask it several things).
#[derive(Debug)]
pub struct Counters(Vec<(String, Labels, u64)>, Vec<(String, Labels, f64)>);

type Labels = Vec<(String, String)>;

impl Counters {
    /// Adds a later snapshot to this one: counters summed (each snapshot holds what was
    /// counted since the one before), gauges as the later one has them. For polling
    /// until a condition holds without losing what the earlier polls took.
    pub fn merge(&mut self, later: Counters) {
        for (name, labels, n) in later.0 {
            match self.0.iter_mut().find(|(m, l, _)| *m == name && *l == labels) {
                Some((_, _, total)) => *total += n,
                None => self.0.push((name, labels, n)),
            }
        }
        for (name, labels, v) in later.1 {
            match self.1.iter_mut().find(|(m, l, _)| *m == name && *l == labels) {
                Some((_, _, value)) => *value = v,
                None => self.1.push((name, labels, v)),
            }
        }
    }

    /// Nothing counted yet (start of a [`Self::merge`] sequence).
    pub fn none() -> Self {
        Self(Vec::new(), Vec::new())
    }

    /// Takes a snapshot.
    pub fn of(snapshotter: &metrics_util::debugging::Snapshotter) -> Self {
        use metrics_util::debugging::DebugValue;
        let (mut counters, mut gauges) = (Vec::new(), Vec::new());
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Labels = key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            match value {
                DebugValue::Counter(c) => counters.push((key.key().name().to_owned(), labels, c)),
                DebugValue::Gauge(g) => gauges.push((key.key().name().to_owned(), labels, g.into_inner())),
                DebugValue::Histogram(_) => {}
            }
        }
        Self(counters, gauges)
    }

    /// A gauge's value by name and exact label set (`None` when never set).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.1.iter().find(|(n, ls, _)| n == name && same_labels(ls, labels)).map(|(_, _, g)| *g)
    }

    /// A counter's value by name and exact label set (0 when never incremented).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.iter().filter(|(n, ls, _)| n == name && same_labels(ls, labels)).map(|(_, _, c)| c).sum()
    }
}

fn same_labels(have: &Labels, want: &[(&str, &str)]) -> bool {
    have.len() == want.len() && want.iter().all(|(k, v)| have.iter().any(|(lk, lv)| lk == k && lv == v))
}
