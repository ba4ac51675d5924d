//! `orderflow loadtest`: replays a trace against a running pipeline (enricher and
//! aggregator on the same brokers and topic prefix) at a chosen pace, watches the
//! totals, the late topic and the consumer groups, and writes a report: offered and
//! achieved events/s, end-to-end latency percentiles, lag over time and whether the
//! totals match the trace exactly. With `--aggregator-metrics` it also polls the
//! aggregator's `/metrics` and reports how long an acknowledged event takes to show in
//! the provisional figures (final + provisional events). With `--broker-baseline` it first measures the broker
//! alone on the same messages, so the pipeline's throughput comes out as a ratio.
//!
//! - `check`: the reference totals from the trace, and the comparison.
//! - `timeline`: per-second rates, latency and lag.
//! - `chart`: the SVG picture.

mod chart;
pub(crate) mod check;
mod timeline;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
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
}

/// How often the aggregator's `/metrics` is polled for the provisional figures.
pub const VISIBLE_POLL: Duration = Duration::from_millis(150);

/// The report (`report.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    trace: String,
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
    /// Per second: offered, achieved, latency p50/p99, lag.
    seconds: Vec<Second>,
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
    /// (each event crosses the broker twice; see the README on why this can pass 0.5).
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
    produce_seconds: f64,
    consume_seconds: f64,
    /// events / (produce + consume seconds).
    events_per_second: f64,
}

/// Runs the load test; fails (exit code 1) when the totals do not match the trace.
pub async fn run(kafka: &KafkaConfig, topics: &Topics, args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    let spec = check_inputs(kafka, topics, &args).await?;
    let cancel = shutdown::on_signal();
    let table = read_merchants(kafka, topics).await?;
    let baseline = if args.broker_baseline { Some(broker_baseline(kafka, topics, &args).await?) } else { None };

    let watchers = Watchers::start(kafka, topics, args.aggregator_metrics.clone(), &cancel);
    let mut reference = Reference::new(spec, table);
    let mut timeline = Timeline::default();
    let replayed = replay_trace(kafka, topics, &args, &mut reference, &mut timeline, watchers.started, &cancel).await?;

    let mut observed = Observed::default();
    let caught_up_ms = wait_for_totals(watchers, &reference, &mut timeline, &mut observed, args.settle_timeout, &cancel).await?;
    read_late(kafka, topics, &spec, &mut observed, &mut timeline).await?;

    let (report, differences) = build_report(&args, &replayed, &reference, &observed, timeline, caught_up_ms, baseline);
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
}

impl Watchers {
    /// Starts the clock and both watchers.
    fn start(kafka: &KafkaConfig, topics: &Topics, aggregator_metrics: Option<String>, cancel: &CancellationToken) -> Self {
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
        Self { started, started_wall, watch, totals, totals_thread, lag, lag_thread, visible, visible_thread }
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
    let Watchers { started, started_wall, watch, totals, totals_thread, lag, lag_thread, visible, visible_thread } = watchers;
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
    while let Ok((at, e, a)) = lag.try_recv() {
        timeline.lag(at, e, a);
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

/// The report, and every difference between the totals and the reference (the report
/// keeps the first 50).
fn build_report(
    args: &LoadtestArgs,
    replayed: &Replayed,
    reference: &Reference,
    observed: &Observed,
    timeline: Timeline,
    caught_up_ms: Option<u64>,
    baseline: Option<Baseline>,
) -> (Report, Vec<String>) {
    let Replayed { report: replayed, seconds: replay_seconds } = replayed;
    let replay_seconds = *replay_seconds;
    let differences = observed.differences(reference.totals());
    let windows = reference.totals().keys().map(|(w, _)| *w).collect::<std::collections::BTreeSet<_>>().len();
    let last_total_seconds = timeline.last_published_ms().map(|ms| ms as f64 / 1000.0);
    let pipeline_seconds = caught_up_ms.map(|ms| ms as f64 / 1000.0);
    let (seconds, latency, visible_latency) = timeline.finish();
    let pipeline_rate = pipeline_seconds.map(|s| replayed.published as f64 / s);
    let report = Report {
        trace: args.trace.display().to_string(),
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
                .filter(|_| args.speed == Speed::Max)
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
    let title = format!("orderflow load test: {} at {} ({} events)", report.trace, report.speed, report.events.published);
    chart::draw(&svg_path, &title, &report.seconds)?;
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
        println!(
            "Broker alone: {} events produced in {:.1}s and consumed in {:.1}s: {:.0} events/s; pipeline/broker ratio {}.",
            b.events,
            b.produce_seconds,
            b.consume_seconds,
            b.events_per_second,
            report.throughput.pipeline_to_broker_ratio.map_or("n/a (only at --speed max)".into(), |r| format!("{r:.3}"))
        );
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
        produce_seconds: produce.as_secs_f64(),
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
