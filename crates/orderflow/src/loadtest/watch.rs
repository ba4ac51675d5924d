//! The threads that watch the pipeline while the trace is replayed and until the last
//! total: the totals topic (with broker timestamps), the consumer groups' lag, the
//! aggregator's `/metrics` if given ([`super::scrape`]) and the CPU time of the known
//! processes ([`super::cpu`]). Each sends what it sees over a channel; the load test
//! files it into the timeline.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::WindowTotal;
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{group_positions, KafkaConfig, TopicReader};
use orderflow_runtime::topics::Topics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

use orderflow_workload::reference::Observed;

use super::cpu::{self, CpuCores, Pids};
use super::scrape;
use super::timeline::Timeline;

/// The watcher threads and what they send.
pub(super) struct Watchers {
    /// When the run started: the clock of the replay, the timeline and the lag samples.
    pub(super) started: Instant,
    /// The same moment on the wall clock (ms), for the broker timestamps of totals.
    started_wall: i64,
    /// Stops every watcher.
    watch: CancellationToken,
    totals: mpsc::Receiver<(i64, WindowTotal)>,
    totals_thread: JoinHandle<anyhow::Result<()>>,
    lag: mpsc::Receiver<(u64, i64, i64)>,
    lag_thread: JoinHandle<()>,
    /// Polls of the aggregator's metrics: (ms since start, events final + provisional).
    visible: mpsc::Receiver<(u64, u64)>,
    visible_thread: Option<JoinHandle<()>>,
    cpu: mpsc::Receiver<(u64, CpuCores)>,
    cpu_thread: JoinHandle<()>,
}

impl Watchers {
    /// Starts the clock and the watchers (totals, lag, the aggregator's metrics if given,
    /// CPU of the processes in `pids`).
    pub(super) fn start(
        kafka: &KafkaConfig,
        topics: &Topics,
        aggregator_metrics: Option<String>,
        cancel: &CancellationToken,
        pids: &Arc<Mutex<Pids>>,
    ) -> Self {
        let started_wall = now_ms();
        let started = Instant::now();
        let watch = cancel.child_token();
        let (totals_tx, totals) = mpsc::channel::<(i64, WindowTotal)>();
        let totals_thread = {
            let (kafka, topic, watch) = (kafka.clone(), topics.totals(), watch.clone());
            std::thread::spawn(move || follow_totals(&kafka, &topic, &watch, &totals_tx))
        };
        let (lag_tx, lag) = mpsc::channel::<(u64, i64, i64)>();
        let lag_thread = {
            let (kafka, topics, watch) = (kafka.clone(), topics.clone(), watch.clone());
            std::thread::spawn(move || sample_lag(&kafka, &topics, &watch, started, &lag_tx))
        };
        let (visible_tx, visible) = mpsc::channel::<(u64, u64)>();
        let visible_thread = aggregator_metrics.map(|addr| {
            let watch = watch.clone();
            std::thread::spawn(move || scrape::poll_visible(&addr, &watch, started, &visible_tx))
        });
        let (cpu_tx, cpu) = mpsc::channel::<(u64, CpuCores)>();
        let cpu_thread = {
            let (pids, watch) = (pids.clone(), watch.clone());
            std::thread::spawn(move || cpu::sample(&pids, &watch, started, &cpu_tx))
        };
        Self { started, started_wall, watch, totals, totals_thread, lag, lag_thread, visible, visible_thread, cpu, cpu_thread }
    }

    /// Files what came in since the last call: totals into `observed` and the timeline,
    /// lag and CPU samples into the timeline. The first lag sample at or after
    /// `replay_done_ms` with both groups at zero sets `caught_up_ms`. Returns whether a
    /// total came.
    pub(super) fn collect(
        &self,
        timeline: &mut Timeline,
        observed: &mut Observed,
        replay_done_ms: u64,
        caught_up_ms: &mut Option<u64>,
    ) -> bool {
        let mut moved = false;
        while let Ok((ts, t)) = self.totals.try_recv() {
            timeline.published(t.window_start.as_ref().map_or(i64::MIN, timestamp_millis), ts - self.started_wall);
            observed.total(&t);
            moved = true;
        }
        while let Ok((at, e, a)) = self.lag.try_recv() {
            timeline.lag(at, e, a);
            if at >= replay_done_ms && e == 0 && a == 0 {
                caught_up_ms.get_or_insert(at);
            }
        }
        while let Ok((at, cores)) = self.cpu.try_recv() {
            timeline.cpu(at, cores);
        }
        moved
    }

    /// Stops the watchers and files their last samples (the metrics polls, lag and CPU)
    /// into the timeline; fails if following the totals failed.
    pub(super) fn stop(self, timeline: &mut Timeline) -> anyhow::Result<()> {
        self.watch.cancel();
        self.totals_thread.join().expect("totals watcher panicked")?;
        let _ = self.lag_thread.join();
        if let Some(t) = self.visible_thread {
            let _ = t.join();
        }
        while let Ok((at, events)) = self.visible.try_recv() {
            timeline.visible(at, events);
        }
        let _ = self.cpu_thread.join();
        while let Ok((at, e, a)) = self.lag.try_recv() {
            timeline.lag(at, e, a);
        }
        while let Ok((at, cores)) = self.cpu.try_recv() {
            timeline.cpu(at, cores);
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Follows the totals topic, sending each total with its broker timestamp (ms).
fn follow_totals(
    kafka: &KafkaConfig,
    topic: &str,
    cancel: &CancellationToken,
    tx: &mpsc::Sender<(i64, WindowTotal)>,
) -> anyhow::Result<()> {
    let reader = TopicReader::open(kafka, topic)?;
    while !cancel.is_cancelled() {
        if let Some(m) = reader.poll(Duration::from_millis(200))? {
            if let Some(Ok(t)) = m.payload().map(WindowTotal::decode) {
                let ts = m.timestamp().to_millis().unwrap_or_else(now_ms);
                if tx.send((ts, t)).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Samples, four times a second, how many records the enricher and the aggregator groups
/// have yet to commit (high watermarks minus committed offsets).
fn sample_lag(kafka: &KafkaConfig, topics: &Topics, cancel: &CancellationToken, started: Instant, tx: &mpsc::Sender<(u64, i64, i64)>) {
    let client = |group: &str| -> anyhow::Result<BaseConsumer> {
        Ok(kafka.config(&[("group.id", group), ("enable.auto.commit", "false")])?.create()?)
    };
    let lag = |c: &BaseConsumer, topic: &str| -> anyhow::Result<i64> {
        Ok(group_positions(c, topic)?.iter().map(|g| (g.high - g.committed.unwrap_or(0)).max(0)).sum())
    };
    let (Ok(enricher), Ok(aggregator)) = (client(&topics.group("enricher")), client(&topics.group("aggregator"))) else {
        tracing::warn!("Cannot create the lag-sampling clients; the report has no lag.");
        return;
    };
    while !cancel.is_cancelled() {
        let t = Instant::now();
        if let (Ok(e), Ok(a)) = (lag(&enricher, &topics.orders()), lag(&aggregator, &topics.enriched())) {
            if tx.send((started.elapsed().as_millis() as u64, e, a)).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250).saturating_sub(t.elapsed()));
    }
}
