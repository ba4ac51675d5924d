//! `orderflow loadtest`: replays a trace against a running pipeline (enricher and
//! aggregator on the same brokers and topic prefix) at a chosen pace, watches the
//! totals, the late topic and the consumer groups, and writes a report: offered and
//! achieved events/s, end-to-end latency percentiles, lag over time and whether the
//! totals match the trace exactly. With `--aggregator-metrics` it also polls the
//! aggregator's `/metrics` and reports how long an acknowledged event takes to show in
//! the provisional figures (final + provisional events). With `--broker-baseline` it first measures the broker
//! alone on the same messages, so the pipeline's throughput comes out as a ratio.
//!
//! `--mode drain` measures a backlog drain instead (as after an outage): the whole trace
//! is published first, the broker relays the same messages alone (consume, produce,
//! consume again), and only then are an enricher and an aggregator started, as child
//! processes, on the full backlog; the drain runs from their start to the last total.
//! Either way the report gives each service's CPU time per million events next to the
//! broker's, from `/proc`.
//!
//! - `check`: the reference totals from the trace, and the comparison.
//! - `timeline`: per-second rates, latency, lag and CPU.
//! - `cpu`: CPU time of a process, from `/proc/<pid>/stat`.
//! - `chart`: the SVG picture.

mod chart;
pub(crate) mod check;
mod cpu;
mod timeline;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderflow_core::merchant::MerchantTable;
use orderflow_core::window::WindowSpec;
use orderflow_enricher::merchants::MerchantStore;
use orderflow_producer::{event_key, Publisher};
use orderflow_proto::v1::{EnrichedOrderEvent, OrderEvent, WindowTotal};
use orderflow_proto::{timestamp_millis, Message as _};
use orderflow_runtime::kafka::{group_positions, KafkaConfig, TopicReader};
use orderflow_runtime::outbox::{Outbox, Settled};
use orderflow_runtime::shutdown;
use orderflow_runtime::topics::{self, Topics};
use orderflow_workload::trace::TraceReader;
use orderflow_workload::{replay, Observer, OnRefused, Pace, ReplayOptions, ReplayReport, Source};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureRecord;
use rdkafka::Message as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use check::{Counted, Observed, Reference};
use timeline::{Latency, Second, Timeline};

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the broker takes events.
    Max,
    /// This many times faster than the trace's event time (1: real time).
    Factor(f64),
}

fn parse_speed(s: &str) -> Result<Speed, String> {
    match s {
        "max" => Ok(Speed::Max),
        "realtime" => Ok(Speed::Factor(1.0)),
        _ => match s.strip_suffix('x').and_then(|n| n.parse::<f64>().ok()) {
            Some(f) if f > 0.0 && f.is_finite() => Ok(Speed::Factor(f)),
            _ => Err(format!("`{s}`: expected `max`, `realtime` or a speed-up like `10x`")),
        },
    }
}

/// What the load test measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Replay the trace through an enricher and an aggregator already running.
    Replay,
    /// Publish the whole trace first, then start an enricher and an aggregator (child
    /// processes) on the backlog, and time them from their start to the last total.
    Drain,
}

/// `orderflow loadtest` flags.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// The trace (the replay format, e.g. written by `orderflow trace synth`).
    pub trace: PathBuf,
    /// `max` (flat out), `realtime`, or a speed-up of the trace's event time like `10x`.
    #[arg(long, env = "ORDERFLOW_LOADTEST_SPEED", default_value = "max", value_parser = parse_speed)]
    pub speed: Speed,
    /// Directory for `report.json` and `report.svg`.
    #[arg(long, env = "ORDERFLOW_LOADTEST_REPORT", default_value = "loadtest-report")]
    pub report: PathBuf,
    /// The aggregator's window size (the reference totals are computed with it).
    #[arg(long, env = "ORDERFLOW_WINDOW", value_parser = humantime::parse_duration, default_value = "1m")]
    pub window: Duration,
    /// Longest wait, after the replay, for every window's total.
    #[arg(long, env = "ORDERFLOW_LOADTEST_SETTLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    pub settle_timeout: Duration,
    /// First measure the broker alone: produce the trace's events to a scratch topic,
    /// then consume them back. The report gives the pipeline's throughput as a ratio.
    #[arg(long, env = "ORDERFLOW_LOADTEST_BROKER_BASELINE")]
    pub broker_baseline: bool,
    /// Never draw the progress bar (it is drawn only on a terminal anyway).
    #[arg(long, env = "ORDERFLOW_NO_PROGRESS")]
    pub no_progress: bool,
    /// The aggregator's metrics address (its `--metrics-addr`, `host:port`): polled
    /// every 150 ms to time acknowledged events to the provisional figures.
    #[arg(long, env = "ORDERFLOW_LOADTEST_AGGREGATOR_METRICS")]
    pub aggregator_metrics: Option<String>,
    /// `replay`: through running services, at --speed. `drain`: publish the whole trace,
    /// relay it through the broker alone (the baseline, always measured), then start an
    /// enricher and an aggregator on the backlog (`enrich` and `aggregate` of
    /// --service-binary, with this process's environment and its brokers and topic
    /// prefix) and time them to the last total; --speed is ignored.
    #[arg(long, env = "ORDERFLOW_LOADTEST_MODE", value_enum, default_value = "replay")]
    pub mode: Mode,
    /// The binary whose `enrich` and `aggregate` a drain starts (default: this one), e.g.
    /// an older build to compare with.
    #[arg(long, env = "ORDERFLOW_LOADTEST_SERVICE_BINARY")]
    pub service_binary: Option<PathBuf>,
    /// Process id of the running enricher, whose CPU time the report gives (replay mode;
    /// a drain knows its own).
    #[arg(long, env = "ORDERFLOW_LOADTEST_ENRICHER_PID")]
    pub enricher_pid: Option<u32>,
    /// Process id of the running aggregator, likewise.
    #[arg(long, env = "ORDERFLOW_LOADTEST_AGGREGATOR_PID")]
    pub aggregator_pid: Option<u32>,
    /// Process id of the broker (on this machine), whose CPU time the report gives next
    /// to the services'.
    #[arg(long, env = "ORDERFLOW_LOADTEST_BROKER_PID")]
    pub broker_pid: Option<u32>,
}

/// How often the aggregator's `/metrics` is polled for the provisional figures.
pub const VISIBLE_POLL: Duration = Duration::from_millis(150);

/// The report (`report.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    trace: String,
    mode: String,
    speed: String,
    /// Lines read, events published, and how the reference classified them.
    events: Events,
    /// Seconds from the first send to the last acknowledgement.
    replay_seconds: f64,
    /// Seconds from the first send until the enricher and the aggregator had committed
    /// every record (the pipeline caught up with the trace).
    pipeline_seconds: Option<f64>,
    /// Seconds from the first send to the last window's total (includes waiting for the
    /// aggregator's idle close of the last windows).
    last_total_seconds: Option<f64>,
    throughput: Throughput,
    latency: Latency,
    /// Acknowledged to visible in the aggregator's final + provisional figures (with
    /// `--aggregator-metrics`).
    visible_latency: Option<Latency>,
    totals: TotalsCheck,
    broker_baseline: Option<Baseline>,
    /// The backlog drain (`--mode drain`).
    drain: Option<Drain>,
    /// CPU time per process over the measured stretch: from the first send (replay) or
    /// the services' start (drain) until every window's total was out.
    cpu: Option<Cpu>,
    /// Per second: offered, achieved, latency p50/p99, lag, CPU.
    seconds: Vec<Second>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Drain {
    /// Seconds from the first send at which the services were started.
    services_started_at_seconds: f64,
    /// Seconds from the services' start until the enricher and the aggregator had
    /// committed every record.
    caught_up_seconds: Option<f64>,
    /// Seconds from the services' start to the last window's total: the drain time.
    last_total_seconds: Option<f64>,
    /// Published events over `lastTotalSeconds`.
    events_per_second: Option<f64>,
    /// `eventsPerSecond` over the broker's own relay rate (`brokerBaseline`).
    to_broker_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cpu {
    /// Events the CPU time is divided by (published events).
    events: u64,
    /// Wall seconds of the measured stretch.
    wall_seconds: f64,
    enricher: Option<cpu::ProcessCpu>,
    aggregator: Option<cpu::ProcessCpu>,
    /// Enricher plus aggregator: CPU seconds per million events (µs per event).
    services_seconds_per_million_events: Option<f64>,
    /// The broker over the same stretch, for the same traffic.
    broker: Option<cpu::ProcessCpu>,
    /// The broker during its own baseline (`brokerBaseline`), per million events.
    broker_baseline: Option<cpu::ProcessCpu>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Events {
    lines: u64,
    published: u64,
    unparsable_lines: u64,
    valid_unique: u64,
    duplicates: u64,
    invalid: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Throughput {
    /// Events acknowledged per second over the replay.
    achieved_events_per_second: f64,
    /// Highest one-second achieved rate.
    peak_events_per_second: u64,
    /// Events per second through the whole pipeline: published events over
    /// `pipelineSeconds`.
    pipeline_events_per_second: Option<f64>,
    /// `pipeline_events_per_second` over the broker's own produce-then-consume rate
    /// (each event crosses the broker twice; see docs/measurements/2026-11-25-loadtest-10m-first-run.md on why this can pass 0.5).
    /// Only for `--speed max`: a paced replay measures the pace.
    pipeline_to_broker_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TotalsCheck {
    matched: bool,
    windows: usize,
    totals: usize,
    late_events: u64,
    differences: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Baseline {
    events: u64,
    /// Producing the trace's events (replay mode's baseline).
    produce_seconds: Option<f64>,
    /// Consuming the published trace and producing each record again (drain mode's
    /// baseline: what the enricher does, minus the enriching).
    relay_seconds: Option<f64>,
    /// Consuming the produced records back.
    consume_seconds: f64,
    /// events / (produce or relay seconds + consume seconds).
    events_per_second: f64,
}

/// Runs the load test; fails (exit code 1) when the totals do not match the trace.
pub async fn run(kafka: &KafkaConfig, topics: &Topics, args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    let spec = check_inputs(kafka, topics, &args).await?;
    let cancel = shutdown::on_signal();
    let table = read_merchants(kafka, topics).await?;
    let drain = args.mode == Mode::Drain;
    let mut baseline = if args.broker_baseline && !drain { Some(broker_baseline(kafka, topics, &args).await?) } else { None };

    let pids = Arc::new(Mutex::new(Pids { enricher: args.enricher_pid, aggregator: args.aggregator_pid, broker: args.broker_pid }));
    let watchers = Watchers::start(kafka, topics, args.aggregator_metrics.clone(), &cancel, &pids);
    let started = watchers.started;
    let mut reference = Reference::new(spec, table);
    let mut timeline = Timeline::default();
    let mut cpu_start = pids_now(&pids).read();
    let replayed = replay_trace(kafka, topics, &args, &mut reference, &mut timeline, started, &cancel).await?;

    let mut services = None;
    let mut broker_baseline_cpu = None;
    let mut services_started_ms = 0;
    // Where the CPU is counted from: the first send, or a drain's services' start.
    let mut measure_from = Duration::ZERO;
    if drain {
        let broker = pids_now(&pids).broker;
        let before = broker.and_then(cpu::cpu_seconds);
        let b = broker_relay(kafka, topics).await?;
        broker_baseline_cpu =
            broker.zip(before).zip(broker.and_then(cpu::cpu_seconds)).map(|((pid, s), e)| cpu::ProcessCpu::between(pid, s, e, b.events));
        baseline = Some(b);
        services_started_ms = started.elapsed().as_millis() as u64;
        let s = Services::start(kafka, topics, &args)?;
        {
            let mut p = pids.lock().expect("pids poisoned");
            (p.enricher, p.aggregator) = (Some(s.enricher.id()), Some(s.aggregator.id()));
        }
        cpu_start = pids_now(&pids).read();
        // Started just now: whatever they used before this reading counts too.
        cpu_start.enricher = cpu_start.enricher.map(|(pid, _)| (pid, (0.0, 0.0)));
        cpu_start.aggregator = cpu_start.aggregator.map(|(pid, _)| (pid, (0.0, 0.0)));
        services = Some(s);
        measure_from = started.elapsed();
    }

    let mut observed = Observed::default();
    let caught_up_ms = wait_for_totals(watchers, &reference, &mut timeline, &mut observed, args.settle_timeout, &cancel).await?;
    let cpu_end = pids_now(&pids).read();
    let wall_seconds = started.elapsed().saturating_sub(measure_from).as_secs_f64();
    if let Some(s) = services {
        s.stop()?;
    }
    read_late(kafka, topics, &spec, &mut observed, &mut timeline).await?;

    let cpu = cpu_report(&cpu_start, &cpu_end, replayed.report.published, wall_seconds, broker_baseline_cpu);
    let drain = drain.then_some(services_started_ms);
    let measured = Measured { caught_up_ms, baseline, drain_started_ms: drain, cpu };
    let (report, differences) = build_report(&args, &replayed, &reference, &observed, timeline, measured);
    let (json_path, svg_path) = write_report(&report, &args.report)?;
    print_report(&report, &differences, &json_path, &svg_path);
    Ok(if report.totals.matched { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Checks the trace and the brokers, creates the topics if missing and makes sure the
/// totals topic is fresh; returns the window spec the reference is computed with.
async fn check_inputs(kafka: &KafkaConfig, topics: &Topics, args: &LoadtestArgs) -> anyhow::Result<WindowSpec> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let spec = WindowSpec::new(ms(args.window), 0)?;
    anyhow::ensure!(args.trace.is_file(), "the trace `{}` is not a readable file", args.trace.display());
    kafka.check_reachable()?;
    topics::ensure(kafka, &[topics.wide(topics.orders()), topics.narrow(topics.totals(), true)]).await?;
    let existing = {
        let (kafka, topic) = (kafka.clone(), topics.totals());
        tokio::task::spawn_blocking(move || orderflow_aggregator::totals::read(&kafka, &topic)).await??.len()
    };
    anyhow::ensure!(
        existing == 0,
        "the totals topic `{}` already holds {existing} totals: run the load test on a fresh --topic-prefix",
        topics.totals()
    );
    Ok(spec)
}

/// The merchant table as the enricher sees it (the reference joins with it).
async fn read_merchants(kafka: &KafkaConfig, topics: &Topics) -> anyhow::Result<MerchantTable> {
    let (store, _follower) = MerchantStore::load(kafka, &topics.merchants()).await?;
    let table = store.read().clone();
    eprintln!("loadtest: {} merchants read from {}.", table.len(), topics.merchants());
    Ok(table)
}

/// The threads that watch the pipeline while the trace is replayed: the totals topic
/// (with broker timestamps) and the consumer groups' lag.
struct Watchers {
    /// When the run started: the clock of the replay, the timeline and the lag samples.
    started: Instant,
    /// The same moment on the wall clock (ms), for the broker timestamps of totals.
    started_wall: i64,
    /// Stops both watchers.
    watch: CancellationToken,
    totals: mpsc::Receiver<(i64, WindowTotal)>,
    totals_thread: std::thread::JoinHandle<anyhow::Result<()>>,
    lag: mpsc::Receiver<(u64, i64, i64)>,
    lag_thread: std::thread::JoinHandle<()>,
    /// Polls of the aggregator's metrics: (ms since start, events final + provisional).
    visible: mpsc::Receiver<(u64, u64)>,
    visible_thread: Option<std::thread::JoinHandle<()>>,
    cpu: mpsc::Receiver<(u64, CpuCores)>,
    cpu_thread: std::thread::JoinHandle<()>,
}

impl Watchers {
    /// Starts the clock and the watchers (totals, lag, the aggregator's metrics if given,
    /// CPU of the processes in `pids`).
    fn start(
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
            std::thread::spawn(move || poll_visible(&addr, &watch, started, &visible_tx))
        });
        let (cpu_tx, cpu) = mpsc::channel::<(u64, CpuCores)>();
        let cpu_thread = {
            let (pids, watch) = (pids.clone(), watch.clone());
            std::thread::spawn(move || sample_cpu(&pids, &watch, started, &cpu_tx))
        };
        Self { started, started_wall, watch, totals, totals_thread, lag, lag_thread, visible, visible_thread, cpu, cpu_thread }
    }
}

/// The processes whose CPU time the load test measures (those it knows of).
#[derive(Debug, Clone, Copy, Default)]
struct Pids {
    enricher: Option<u32>,
    aggregator: Option<u32>,
    broker: Option<u32>,
}

/// Cores used (CPU seconds per wall second) by the enricher, the aggregator and the
/// broker over one sampling interval.
type CpuCores = [Option<f64>; 3];

/// A reading of each known process's (user, system) CPU seconds.
#[derive(Debug, Clone, Copy, Default)]
struct CpuReading {
    enricher: Option<(u32, (f64, f64))>,
    aggregator: Option<(u32, (f64, f64))>,
    broker: Option<(u32, (f64, f64))>,
}

impl Pids {
    fn read(&self) -> CpuReading {
        let read = |pid: Option<u32>| pid.and_then(|p| cpu::cpu_seconds(p).map(|c| (p, c)));
        CpuReading { enricher: read(self.enricher), aggregator: read(self.aggregator), broker: read(self.broker) }
    }
}

fn pids_now(pids: &Mutex<Pids>) -> Pids {
    *pids.lock().expect("pids poisoned")
}

/// The CPU report between two readings.
fn cpu_report(
    start: &CpuReading,
    end: &CpuReading,
    events: u64,
    wall_seconds: f64,
    broker_baseline: Option<cpu::ProcessCpu>,
) -> Option<Cpu> {
    let between = |s: Option<(u32, (f64, f64))>, e: Option<(u32, (f64, f64))>| {
        s.zip(e).filter(|((a, _), (b, _))| a == b).map(|((pid, s), (_, e))| cpu::ProcessCpu::between(pid, s, e, events))
    };
    let enricher = between(start.enricher, end.enricher);
    let aggregator = between(start.aggregator, end.aggregator);
    let broker = between(start.broker, end.broker);
    if enricher.is_none() && aggregator.is_none() && broker.is_none() {
        return None;
    }
    let services = enricher.as_ref().zip(aggregator.as_ref()).map(|(e, a)| e.seconds_per_million_events + a.seconds_per_million_events);
    Some(Cpu { events, wall_seconds, enricher, aggregator, services_seconds_per_million_events: services, broker, broker_baseline })
}

/// The enricher and the aggregator of a drain, as child processes.
struct Services {
    enricher: std::process::Child,
    aggregator: std::process::Child,
}

impl Services {
    /// Starts `enrich` and `aggregate` of --service-binary (default: this binary) with
    /// this process's environment, brokers and topic prefix.
    fn start(kafka: &KafkaConfig, topics: &Topics, args: &LoadtestArgs) -> anyhow::Result<Self> {
        let binary = match &args.service_binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("finding this binary, to start the services")?,
        };
        let spawn = |service: &str| {
            std::process::Command::new(&binary)
                .args([service, "--metrics-addr", "127.0.0.1:0"])
                .env("ORDERFLOW_BROKERS", &kafka.brokers)
                .env("ORDERFLOW_TOPIC_PREFIX", &topics.topic_prefix)
                .env("ORDERFLOW_PARTITIONS", topics.partitions.to_string())
                .stdin(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("starting `{} {service}`", binary.display()))
        };
        eprintln!("loadtest: starting the enricher and the aggregator ({}) on the backlog.", binary.display());
        let enricher = spawn("enrich")?;
        let aggregator = match spawn("aggregate") {
            Ok(a) => a,
            Err(e) => {
                let mut enricher = enricher;
                let _ = enricher.kill();
                let _ = enricher.wait();
                return Err(e);
            }
        };
        Ok(Self { enricher, aggregator })
    }

    /// Stops both with SIGTERM and waits for them; fails if either had exited before, or
    /// does not exit cleanly.
    fn stop(mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for (name, child) in [("enricher", &mut self.enricher), ("aggregator", &mut self.aggregator)] {
            if let Ok(Some(status)) = child.try_wait() {
                problems.push(format!("the {name} exited during the drain ({status})"));
                continue;
            }
            let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("the {name} did not stop cleanly ({status})")),
                Err(e) => problems.push(format!("waiting for the {name}: {e}")),
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }
}

/// What the replay did, and how long it took (seconds from the first send to the last
/// acknowledgement).
struct Replayed {
    report: ReplayReport,
    seconds: f64,
}

/// Deliveries kept in flight before the replay waits for the oldest.
const IN_FLIGHT: usize = 50_000;

/// Replays the trace at the chosen speed, counting each event into the reference and
/// the timeline. An event the broker refuses fails the load test, naming its line (the
/// reference would count an event the pipeline never saw).
async fn replay_trace(
    kafka: &KafkaConfig,
    topics: &Topics,
    args: &LoadtestArgs,
    reference: &mut Reference,
    timeline: &mut Timeline,
    started: Instant,
    cancel: &CancellationToken,
) -> anyhow::Result<Replayed> {
    let publisher = Publisher::new(kafka, topics.orders())?;
    let progress = !args.no_progress && is_terminal::is_terminal(std::io::stderr());
    let mut trace = TraceReader::open(&args.trace, progress, "loadtest").with_context(|| format!("opening {}", args.trace.display()))?;
    let opts = ReplayOptions {
        pace: match args.speed {
            Speed::Max => Pace::Max,
            Speed::Factor(f) => Pace::EventTime(f),
        },
        in_flight: IN_FLIGHT,
        on_refused: OnRefused::Fail,
        started: Some(started.into()),
    };
    let mut accounting = Accounting { reference, timeline, started, acked: 0 };
    let report = replay(Source::Trace(&mut trace), &mut publisher.batch(), &opts, &mut accounting, cancel).await?;
    trace.bar().finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "loadtest: published {} events in {seconds:.1}s ({:.0}/s); waiting for the last windows.",
        report.published,
        report.published as f64 / seconds
    );
    Ok(Replayed { report, seconds })
}

/// The load test's bookkeeping of the replay: every event offered goes into the
/// reference totals and the timeline (offered at its due time, sent now if counted),
/// every batch of deliveries into the timeline.
struct Accounting<'a> {
    reference: &'a mut Reference,
    timeline: &'a mut Timeline,
    started: Instant,
    /// Events acknowledged so far (acknowledgements come in the order sent).
    acked: u64,
}

impl Accounting<'_> {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Observer for Accounting<'_> {
    fn offered(&mut self, _line: u64, event: &OrderEvent, due: Duration) {
        self.timeline.offered(due.as_millis() as u64);
        let counted = match self.reference.add(event) {
            Counted::Window(w) => {
                self.timeline.sent(w, self.elapsed_ms());
                true
            }
            _ => false,
        };
        self.timeline.sent_in_order(counted.then_some(event.event_id.as_str()));
    }

    fn delivered(&mut self, n: u64) {
        let ms = self.elapsed_ms();
        self.timeline.achieved(ms, n);
        self.acked += n;
        self.timeline.acked(ms, self.acked);
    }
}

/// Waits until every window with a counted event has a total (or nothing moves for 30
/// seconds after the last window's total, or the settle timeout passes), then stops the
/// watchers. Returns when the enricher and the aggregator had caught up (ms since the
/// start), if they did after the replay.
async fn wait_for_totals(
    watchers: Watchers,
    reference: &Reference,
    timeline: &mut Timeline,
    observed: &mut Observed,
    settle_timeout: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    let Watchers { started, started_wall, watch, totals, totals_thread, lag, lag_thread, visible, visible_thread, cpu, cpu_thread } =
        watchers;
    let mut last_change = Instant::now();
    let replay_done_ms = started.elapsed().as_millis() as u64;
    let mut caught_up_ms: Option<u64> = None;
    let deadline = Instant::now() + settle_timeout;
    loop {
        let mut moved = false;
        while let Ok((ts, t)) = totals.try_recv() {
            timeline.published(t.window_start.as_ref().map_or(i64::MIN, timestamp_millis), ts - started_wall);
            observed.total(&t);
            moved = true;
        }
        while let Ok((at, e, a)) = lag.try_recv() {
            timeline.lag(at, e, a);
            if at >= replay_done_ms && e == 0 && a == 0 {
                caught_up_ms.get_or_insert(at);
            }
        }
        while let Ok((at, cores)) = cpu.try_recv() {
            timeline.cpu(at, cores);
        }
        if moved {
            last_change = Instant::now();
        }
        let last_done = reference.last_window().is_none_or(|w| timeline.published_window(w));
        if timeline.unpublished() == 0
            || (last_done && last_change.elapsed() > Duration::from_secs(30))
            || Instant::now() >= deadline
            || cancel.is_cancelled()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.cancel();
    totals_thread.join().expect("totals watcher panicked")?;
    let _ = lag_thread.join();
    if let Some(t) = visible_thread {
        let _ = t.join();
    }
    while let Ok((at, events)) = visible.try_recv() {
        timeline.visible(at, events);
    }
    let _ = cpu_thread.join();
    while let Ok((at, e, a)) = lag.try_recv() {
        timeline.lag(at, e, a);
    }
    while let Ok((at, cores)) = cpu.try_recv() {
        timeline.cpu(at, cores);
    }
    Ok(caught_up_ms)
}

/// Reads the late topic: events the pipeline reported late instead of counting them.
async fn read_late(
    kafka: &KafkaConfig,
    topics: &Topics,
    spec: &WindowSpec,
    observed: &mut Observed,
    timeline: &mut Timeline,
) -> anyhow::Result<()> {
    let (kafka, topic) = (kafka.clone(), topics.late());
    let late: Vec<EnrichedOrderEvent> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut out = Vec::new();
        TopicReader::open(&kafka, &topic)?.read_to_end(|m| {
            if let Some(Ok(e)) = m.payload().map(EnrichedOrderEvent::decode) {
                out.push(e);
            }
        })?;
        Ok(out)
    })
    .await??;
    for e in &late {
        observed.late(spec, e);
        if let Some(event) = e.event.as_ref() {
            timeline.late(&event.event_id);
        }
    }
    Ok(())
}

/// What the run measured besides the replay and the totals.
struct Measured {
    /// When the enricher and the aggregator had committed everything (ms since start).
    caught_up_ms: Option<u64>,
    baseline: Option<Baseline>,
    /// A drain's services' start (ms since start).
    drain_started_ms: Option<u64>,
    cpu: Option<Cpu>,
}

/// The report, and every difference between the totals and the reference (the report
/// keeps the first 50).
fn build_report(
    args: &LoadtestArgs,
    replayed: &Replayed,
    reference: &Reference,
    observed: &Observed,
    timeline: Timeline,
    measured: Measured,
) -> (Report, Vec<String>) {
    let Measured { caught_up_ms, baseline, drain_started_ms, cpu } = measured;
    let Replayed { report: replayed, seconds: replay_seconds } = replayed;
    let replay_seconds = *replay_seconds;
    let differences = observed.differences(reference.totals());
    let windows = reference.totals().keys().map(|(w, _)| *w).collect::<std::collections::BTreeSet<_>>().len();
    let last_published_ms = timeline.last_published_ms();
    let last_total_seconds = last_published_ms.map(|ms| ms as f64 / 1000.0);
    let pipeline_seconds = caught_up_ms.map(|ms| ms as f64 / 1000.0);
    let (seconds, latency, visible_latency) = timeline.finish();
    let pipeline_rate = pipeline_seconds.map(|s| replayed.published as f64 / s);
    let drain = drain_started_ms.map(|from| {
        let since = |ms: i64| (ms - from as i64).max(0) as f64 / 1000.0;
        let last_total_seconds = last_published_ms.map(since);
        let events_per_second = last_total_seconds.map(|s| replayed.published as f64 / s);
        Drain {
            services_started_at_seconds: from as f64 / 1000.0,
            caught_up_seconds: caught_up_ms.map(|ms| since(ms as i64)),
            last_total_seconds,
            events_per_second,
            to_broker_ratio: baseline.as_ref().zip(events_per_second).map(|(b, p)| p / b.events_per_second),
        }
    });
    let report = Report {
        trace: args.trace.display().to_string(),
        mode: match args.mode {
            Mode::Replay => "replay".into(),
            Mode::Drain => "drain".into(),
        },
        speed: match args.speed {
            Speed::Max => "max".into(),
            Speed::Factor(f) => format!("{f}x"),
        },
        events: Events {
            lines: replayed.lines,
            published: replayed.published,
            unparsable_lines: replayed.invalid_lines.len() as u64,
            valid_unique: reference.valid_unique(),
            duplicates: reference.duplicates,
            invalid: reference.invalid,
        },
        replay_seconds,
        pipeline_seconds,
        last_total_seconds,
        throughput: Throughput {
            achieved_events_per_second: replayed.published as f64 / replay_seconds,
            peak_events_per_second: seconds.iter().map(|s| s.achieved).max().unwrap_or(0),
            pipeline_events_per_second: pipeline_rate,
            // A paced replay measures the pace, not the pipeline: a ratio only flat out.
            pipeline_to_broker_ratio: baseline
                .as_ref()
                .zip(pipeline_rate)
                .filter(|_| args.speed == Speed::Max && args.mode == Mode::Replay)
                .map(|(b, p)| p / b.events_per_second),
        },
        latency,
        visible_latency,
        totals: TotalsCheck {
            matched: differences.is_empty(),
            windows,
            totals: reference.totals().len(),
            late_events: observed.late,
            differences: differences.iter().take(50).cloned().collect(),
        },
        broker_baseline: baseline,
        drain,
        cpu,
        seconds,
    };
    (report, differences)
}

/// Writes `report.json` and `report.svg` into `dir` (created if missing); returns their
/// paths.
fn write_report(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = dir.join("report.svg");
    let title = match report.mode.as_str() {
        "drain" => format!("orderflow backlog drain: {} ({} events)", report.trace, report.events.published),
        _ => format!("orderflow load test: {} at {} ({} events)", report.trace, report.speed, report.events.published),
    };
    let mut notes = Vec::new();
    if let Some(d) = &report.drain {
        notes.push(format!(
            "Drain: services started at {:.1} s; last total {} s later: {} events/s ({} of the broker's own relay rate)",
            d.services_started_at_seconds,
            d.last_total_seconds.map_or("n/a".into(), |s| format!("{s:.1}")),
            d.events_per_second.map_or("n/a".into(), |r| format!("{r:.0}")),
            d.to_broker_ratio.map_or("n/a".into(), |r| format!("{r:.3}")),
        ));
    }
    if let Some(c) = &report.cpu {
        notes.push(cpu_line(c));
    }
    chart::draw(&svg_path, &title, &notes, &report.seconds)?;
    Ok((json_path, svg_path))
}

/// Prints the report's summary on stdout.
fn print_report(report: &Report, differences: &[String], json_path: &Path, svg_path: &Path) {
    println!(
        "Published {} events in {:.1}s: {:.0} events/s achieved, peak {}/s.",
        report.events.published,
        report.replay_seconds,
        report.throughput.achieved_events_per_second,
        report.throughput.peak_events_per_second
    );
    if let (Some(s), Some(r)) = (report.pipeline_seconds, report.throughput.pipeline_events_per_second) {
        println!("Enricher and aggregator caught up {s:.1}s after the first send: {r:.0} events/s through the pipeline.");
    }
    if let Some(s) = report.last_total_seconds {
        println!("Last window's total published {s:.1}s after the first send.");
    }
    if let Some(b) = &report.broker_baseline {
        match (b.produce_seconds, b.relay_seconds) {
            (Some(p), _) => println!(
                "Broker alone: {} events produced in {p:.1}s and consumed in {:.1}s: {:.0} events/s; pipeline/broker ratio {}.",
                b.events,
                b.consume_seconds,
                b.events_per_second,
                report.throughput.pipeline_to_broker_ratio.map_or("n/a (only at --speed max)".into(), |r| format!("{r:.3}"))
            ),
            (None, Some(r)) => println!(
                "Broker alone: {} events consumed and produced again in {r:.1}s, consumed again in {:.1}s: {:.0} events/s.",
                b.events, b.consume_seconds, b.events_per_second
            ),
            (None, None) => {}
        }
    }
    if let Some(d) = &report.drain {
        println!(
            "Drain: services started {:.1}s after the first send; caught up {} s and last total {} s after their start: {} events/s, {} of the broker's relay rate.",
            d.services_started_at_seconds,
            d.caught_up_seconds.map_or("n/a".into(), |s| format!("{s:.1}")),
            d.last_total_seconds.map_or("n/a".into(), |s| format!("{s:.1}")),
            d.events_per_second.map_or("n/a".into(), |r| format!("{r:.0}")),
            d.to_broker_ratio.map_or("n/a".into(), |r| format!("{r:.3}")),
        );
    }
    if let Some(c) = &report.cpu {
        println!("{} (over {:.1}s).", cpu_line(c), c.wall_seconds);
    }
    println!(
        "Latency, event sent to its window's total: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms over {} events.",
        report.latency.p50_ms, report.latency.p99_ms, report.latency.p999_ms, report.latency.max_ms, report.latency.events
    );
    if let Some(v) = &report.visible_latency {
        println!(
            "Latency, event acknowledged to visible in the provisional figures: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms over {} events.",
            v.p50_ms, v.p99_ms, v.p999_ms, v.max_ms, v.events
        );
    }
    if report.totals.matched {
        println!(
            "Totals match the trace: {} totals over {} windows; {} late events reported.",
            report.totals.totals, report.totals.windows, report.totals.late_events
        );
    } else {
        println!("Totals DO NOT match the trace ({} differences), e.g.:", differences.len());
        differences.iter().take(10).for_each(|d| println!("  {d}"));
    }
    println!("Report: {} and {}.", json_path.display(), svg_path.display());
}

/// CPU seconds per million events (µs per event), per process, as one line.
fn cpu_line(c: &Cpu) -> String {
    let one = |name: &str, p: &Option<cpu::ProcessCpu>| p.as_ref().map(|p| format!("{name} {:.2}", p.seconds_per_million_events));
    let parts: Vec<String> = [
        one("enricher", &c.enricher),
        one("aggregator", &c.aggregator),
        c.services_seconds_per_million_events.map(|s| format!("both {s:.2}")),
        one("broker", &c.broker),
        one("broker alone", &c.broker_baseline),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!("CPU µs per event (user + system): {}", parts.join(", "))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The events delivered; a refused one fails the broker baseline, naming its line.
fn refused(settled: Settled<u64>, trace: &std::path::Path) -> anyhow::Result<u64> {
    if let Some(r) = settled.rejected.first() {
        anyhow::bail!("{}:{}: refused by the broker: {}", trace.display(), r.tag, r.error);
    }
    Ok(settled.delivered)
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

/// Polls the aggregator's `/metrics` at `addr` every [`VISIBLE_POLL`], sending the events
/// it shows, final plus provisional, with the time of the poll (ms since `started`).
fn poll_visible(addr: &str, cancel: &CancellationToken, started: Instant, tx: &mpsc::Sender<(u64, u64)>) {
    let mut failures = 0;
    while !cancel.is_cancelled() {
        let t = Instant::now();
        match scrape(addr) {
            Ok(page) => {
                let events = visible_events(&page);
                if tx.send((started.elapsed().as_millis() as u64, events)).is_err() {
                    break;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%addr, error = %e, "Cannot read the aggregator's metrics; retrying.");
                }
            }
        }
        std::thread::sleep(VISIBLE_POLL.saturating_sub(t.elapsed()));
    }
}

/// One `GET /metrics` over plain HTTP/1.1.
fn scrape(addr: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Events a metrics page shows: every `orderflow_window_events_total` (final) and
/// `orderflow_open_window_events` (provisional) sample, summed.
fn visible_events(page: &str) -> u64 {
    use orderflow_runtime::telemetry::{OPEN_WINDOW_EVENTS, WINDOW_EVENTS};
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split_once('{').map_or(series, |(n, _)| n);
            (name == WINDOW_EVENTS || name == OPEN_WINDOW_EVENTS).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum::<f64>() as u64
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

/// Once a second, the cores (CPU seconds per wall second) each known process used since
/// the last sample.
fn sample_cpu(pids: &Mutex<Pids>, cancel: &CancellationToken, started: Instant, tx: &mpsc::Sender<(u64, CpuCores)>) {
    let mut last = (pids_now(pids).read(), Instant::now());
    while !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1000));
        let (now, at) = (pids_now(pids).read(), Instant::now());
        let dt = at.duration_since(last.1).as_secs_f64();
        let cores = |a: Option<(u32, (f64, f64))>, b: Option<(u32, (f64, f64))>| match (a, b) {
            (Some((pa, a)), Some((pb, b))) if pa == pb => Some(((b.0 + b.1) - (a.0 + a.1)).max(0.0) / dt),
            (None, Some((_, b))) => Some((b.0 + b.1) / dt), // started within the interval
            _ => None,
        };
        let sample = [cores(last.0.enricher, now.enricher), cores(last.0.aggregator, now.aggregator), cores(last.0.broker, now.broker)];
        if tx.send((started.elapsed().as_millis() as u64, sample)).is_err() {
            break;
        }
        last = (now, at);
    }
}

/// The drain's baseline: the broker alone relays the published trace as the enricher
/// would, without the enriching: consume every record of the orders topic and produce it
/// again (same key and bytes) to a scratch topic, then consume that back. Times both.
async fn broker_relay(kafka: &KafkaConfig, topics: &Topics) -> anyhow::Result<Baseline> {
    let scratch = format!("{}.loadtest.baseline", topics.topic_prefix);
    topics::ensure(kafka, &[topics.wide(scratch.clone())]).await?;
    let (kafka, orders) = (kafka.clone(), topics.orders());
    eprintln!("loadtest: broker baseline: relaying {orders} to {scratch}, then reading it back.");
    tokio::task::spawn_blocking(move || -> anyhow::Result<Baseline> {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        // The leanest client path: no per-record future, delivery reports counted by a
        // context; the producer settings are the services'.
        let producer: BaseProducer<DeliveryCount> =
            kafka.config(&orderflow_runtime::kafka::STAGE_PRODUCER_SETTINGS)?.create_with_context(DeliveryCount::default())?;
        let reader = TopicReader::open(&kafka, &orders)?;
        let mut refused: Option<String> = None;
        let t = Instant::now();
        let events = reader.read_to_end(|m| {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&scratch).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                    Err((e, _)) => {
                        refused.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            producer.poll(Duration::ZERO);
        })?;
        producer.flush(Duration::from_secs(120))?;
        let failed = producer.context().failed.lock().expect("poisoned").take().or(refused);
        let relay = t.elapsed();
        if let Some(e) = failed {
            anyhow::bail!("the broker baseline could not relay to `{scratch}`: {e}");
        }
        let t = Instant::now();
        let reader = TopicReader::open(&kafka, &scratch)?;
        let mut bytes = 0u64;
        let consumed = reader.read_to_end(|m| bytes += m.payload_len() as u64)?;
        std::hint::black_box(bytes);
        let consume = t.elapsed();
        anyhow::ensure!(consumed >= events, "the baseline topic `{scratch}` gave back {consumed} of {events} events");
        let b = Baseline {
            events,
            produce_seconds: None,
            relay_seconds: Some(relay.as_secs_f64()),
            consume_seconds: consume.as_secs_f64(),
            events_per_second: events as f64 / (relay + consume).as_secs_f64(),
        };
        eprintln!("loadtest: broker baseline: {:.0} events/s consume-produce-consume.", b.events_per_second);
        Ok(b)
    })
    .await?
}

/// Counts failed deliveries of the relay (the first one's error kept).
#[derive(Default)]
struct DeliveryCount {
    failed: Mutex<Option<String>>,
}

impl rdkafka::ClientContext for DeliveryCount {}

impl rdkafka::producer::ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.lock().expect("poisoned").get_or_insert_with(|| e.to_string());
        }
    }
}

/// Produces the trace's events (keyed as the replay keys them) to a scratch topic, then
/// consumes them back; times both, excluding the JSON parsing.
async fn broker_baseline(kafka: &KafkaConfig, topics: &Topics, args: &LoadtestArgs) -> anyhow::Result<Baseline> {
    let topic = format!("{}.loadtest.baseline", topics.topic_prefix);
    topics::ensure(kafka, &[topics.wide(topic.clone())]).await?;
    let mut outbox: Outbox<u64> = Outbox::new(kafka.producer()?);
    let file = std::fs::File::open(&args.trace).with_context(|| format!("opening {}", args.trace.display()))?;
    let mut lines = std::io::BufReader::with_capacity(1 << 20, file).lines();
    let (mut events, mut produce) = (0u64, Duration::ZERO);
    eprintln!("loadtest: broker baseline: producing the trace's events to {topic}.");
    loop {
        // Parse a chunk, then time producing it.
        let mut chunk: Vec<(String, Vec<u8>)> = Vec::with_capacity(200_000);
        for line in lines.by_ref() {
            if let Ok(e) = serde_json::from_str::<OrderEvent>(line?.trim()) {
                chunk.push((event_key(&e).to_owned(), e.encode_to_vec()));
                if chunk.len() == chunk.capacity() {
                    break;
                }
            }
        }
        if chunk.is_empty() {
            break;
        }
        let t = Instant::now();
        for (k, v) in &chunk {
            outbox.send(FutureRecord::to(&topic).key(k.as_str()).payload(v.as_slice()), 0).await?;
            if outbox.pending() >= IN_FLIGHT {
                refused(outbox.settle_ready(IN_FLIGHT - 1).await?, &args.trace)?;
            }
        }
        refused(outbox.settle().await?, &args.trace)?;
        produce += t.elapsed();
        events += chunk.len() as u64;
    }
    outbox.close(Duration::from_secs(30)).await?;
    let (kafka2, topic2) = (kafka.clone(), topic.clone());
    let t = Instant::now();
    let consumed = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let reader = TopicReader::open(&kafka2, &topic2)?;
        let mut bytes = 0u64;
        let n = reader.read_to_end(|m| bytes += m.payload_len() as u64)?;
        std::hint::black_box(bytes);
        Ok(n)
    })
    .await??;
    let consume = t.elapsed();
    anyhow::ensure!(consumed >= events, "the baseline topic `{topic}` gave back {consumed} of {events} events");
    let b = Baseline {
        events,
        produce_seconds: Some(produce.as_secs_f64()),
        relay_seconds: None,
        consume_seconds: consume.as_secs_f64(),
        events_per_second: events as f64 / (produce + consume).as_secs_f64(),
    };
    eprintln!("loadtest: broker baseline: {:.0} events/s produce-then-consume.", b.events_per_second);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_events_sum_final_and_provisional_samples() {
        let page = "# HELP orderflow_window_events_total x\n\
            orderflow_window_events_total{region=\"a\",tier=\"t\",type=\"paid\"} 10\n\
            orderflow_window_events_total{region=\"b\",tier=\"t\",type=\"created\"} 5\n\
            orderflow_open_window_events{region=\"a\",tier=\"t\",type=\"paid\"} 3\n\
            orderflow_open_window_events_other 100\n\
            orderflow_windows_closed_total 7\n";
        assert_eq!(visible_events(page), 18);
    }

    #[test]
    fn speeds_parse() {
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert_eq!(parse_speed("realtime"), Ok(Speed::Factor(1.0)));
        assert_eq!(parse_speed("12.5x"), Ok(Speed::Factor(12.5)));
        assert!(parse_speed("0x").is_err());
        assert!(parse_speed("fast").unwrap_err().contains("`fast`"));
    }
}
