//! The run, start to end: check the inputs, measure the broker alone if asked, start
//! the watchers, replay the trace (a drain then relays it through the broker and starts
//! the services), wait for every window's total, read the late topic, and report.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderflow_producer::Publisher;
use orderflow_proto::v1::{EnrichedOrderEvent, Merchant, OrderEvent};
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{KafkaConfig, TopicReader};
use orderflow_runtime::shutdown;
use orderflow_runtime::topics::{self, Topics};
use orderflow_workload::reference::{Fate, Observed, Reference, Settings};
use orderflow_workload::trace::TraceReader;
use orderflow_workload::{replay, Observer, OnRefused, Pace, ReplayOptions, Source};
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

use super::baseline::{broker_baseline, broker_relay};
use super::children::Services;
use super::cpu::{self, Pids};
use super::flags::{LoadtestArgs, Mode, Speed};
use super::report::{build_report, print_report, write_report, Measured, Replayed};
use super::timeline::Timeline;
use super::watch::Watchers;

/// Runs the load test; fails (exit code 1) when the totals do not match the trace.
pub async fn run(kafka: &KafkaConfig, topics: &Topics, args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    let settings = check_inputs(kafka, topics, &args).await?;
    let cancel = shutdown::on_signal();
    let merchants = read_merchants(kafka, topics).await?;
    let drain = args.mode == Mode::Drain;
    let mut baseline = if args.broker_baseline && !drain { Some(broker_baseline(kafka, topics, &args.trace).await?) } else { None };

    let pids = Arc::new(Mutex::new(Pids { enricher: args.enricher_pid, aggregator: args.aggregator_pid, broker: args.broker_pid }));
    let watchers = Watchers::start(kafka, topics, args.aggregator_metrics.clone(), &cancel, &pids);
    let started = watchers.started;
    let mut reference = Reference::new(settings, &merchants);
    let mut timeline = Timeline::default();
    let mut cpu_start = Pids::now(&pids).read();
    let replayed = replay_trace(kafka, topics, &args, &mut reference, &mut timeline, started, &cancel).await?;

    let mut services = None;
    let mut broker_baseline_cpu = None;
    let mut services_started_ms = 0;
    // Where the CPU is counted from: the first send, or a drain's services' start.
    let mut measure_from = Duration::ZERO;
    if drain {
        let broker = Pids::now(&pids).broker;
        let before = broker.and_then(cpu::cpu_seconds);
        let b = broker_relay(kafka, topics).await?;
        broker_baseline_cpu =
            broker.zip(before).zip(broker.and_then(cpu::cpu_seconds)).map(|((pid, s), e)| cpu::ProcessCpu::between(pid, s, e, b.events));
        baseline = Some(b);
        services_started_ms = started.elapsed().as_millis() as u64;
        let s = Services::start(kafka, topics, args.service_binary.as_deref())?;
        {
            let mut p = pids.lock().expect("pids poisoned");
            let (enricher, aggregator) = s.pids();
            (p.enricher, p.aggregator) = (Some(enricher), Some(aggregator));
        }
        cpu_start = Pids::now(&pids).read();
        // Started just now: whatever they used before this reading counts too.
        cpu_start.enricher = cpu_start.enricher.map(|(pid, _)| (pid, (0.0, 0.0)));
        cpu_start.aggregator = cpu_start.aggregator.map(|(pid, _)| (pid, (0.0, 0.0)));
        services = Some(s);
        measure_from = started.elapsed();
    }

    let mut observed = Observed::default();
    let caught_up_ms = wait_for_totals(watchers, &reference, &mut timeline, &mut observed, args.settle_timeout, &cancel).await?;
    let cpu_end = Pids::now(&pids).read();
    let wall_seconds = started.elapsed().saturating_sub(measure_from).as_secs_f64();
    if let Some(s) = services {
        s.stop()?;
    }
    read_late(kafka, topics, &mut observed, &mut timeline).await?;

    let cpu = cpu::report(&cpu_start, &cpu_end, replayed.report.published, wall_seconds, broker_baseline_cpu);
    let drain = drain.then_some(services_started_ms);
    let measured = Measured { caught_up_ms, baseline, drain_started_ms: drain, cpu };
    let (report, differences) = build_report(&args, &replayed, &reference, &observed, timeline, measured);
    let (json_path, svg_path) = write_report(&report, &args.report)?;
    print_report(&report, &differences, &json_path, &svg_path);
    Ok(if report.totals.matched { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Checks the trace and the brokers, creates the topics if missing and makes sure the
/// totals topic is fresh; returns the settings the reference is computed with.
async fn check_inputs(kafka: &KafkaConfig, topics: &Topics, args: &LoadtestArgs) -> anyhow::Result<Settings> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    anyhow::ensure!(args.window >= Duration::from_millis(1), "--window must be at least 1ms");
    let settings = Settings { window_ms: ms(args.window), lateness_ms: ms(args.lateness), ..Settings::default() };
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
    Ok(settings)
}

/// The merchants topic as records (the newest per key, tombstones removing theirs), for
/// the reference to join with by its own rules.
async fn read_merchants(kafka: &KafkaConfig, topics: &Topics) -> anyhow::Result<Vec<Merchant>> {
    let (kafka, topic) = (kafka.clone(), topics.merchants());
    let merchants = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut by_key = std::collections::BTreeMap::new();
        TopicReader::open(&kafka, &topic)?.read_to_end(|m| {
            let key = m.key().unwrap_or_default().to_vec();
            match m.payload().map(Merchant::decode) {
                Some(Ok(merchant)) => {
                    by_key.insert(key, merchant);
                }
                None => {
                    by_key.remove(&key);
                }
                // The enricher skips a record that does not decode; so does the reference.
                Some(Err(_)) => {}
            }
        })?;
        Ok(by_key.into_values().collect::<Vec<_>>())
    })
    .await??;
    eprintln!("loadtest: {} merchant records read from {}.", merchants.len(), topics.merchants());
    Ok(merchants)
}

/// Deliveries kept in flight before the replay waits for the oldest.
pub(super) const IN_FLIGHT: usize = 50_000;

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
    let window_ms = i64::try_from(args.window.as_millis()).unwrap_or(i64::MAX);
    let mut accounting = Accounting { reference, timeline, started, acked: 0, window_ms };
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
    window_ms: i64,
}

impl Accounting<'_> {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Observer for Accounting<'_> {
    fn offered(&mut self, _line: u64, event: &OrderEvent, due: Duration) {
        self.timeline.offered(due.as_millis() as u64);
        // The window a total is expected for: a counted event's, or a possibly late
        // one's (the pipeline may count it).
        let window = match self.reference.add(event) {
            Fate::Counted(key) => Some(key.window_start_ms),
            Fate::MaybeLate => event.event_time.as_ref().map(|t| {
                let ms = orderflow_proto::timestamp_millis(t);
                ms - ms.rem_euclid(self.window_ms)
            }),
            Fate::Repeat | Fate::Late | Fate::Invalid(_) => None,
        };
        if let Some(w) = window {
            self.timeline.sent(w, self.elapsed_ms());
        }
        let counted = window.is_some();
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
    let mut last_change = Instant::now();
    let replay_done_ms = watchers.started.elapsed().as_millis() as u64;
    let mut caught_up_ms: Option<u64> = None;
    let deadline = Instant::now() + settle_timeout;
    loop {
        let moved = watchers.collect(timeline, observed, replay_done_ms, &mut caught_up_ms);
        if moved {
            last_change = Instant::now();
        }
        let last_window = reference.certain_totals().keys().next_back().map(|k| k.window_start_ms);
        let last_done = last_window.is_none_or(|w| timeline.published_window(w));
        if timeline.unpublished() == 0
            || (last_done && last_change.elapsed() > Duration::from_secs(30))
            || Instant::now() >= deadline
            || cancel.is_cancelled()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watchers.stop(timeline)?;
    Ok(caught_up_ms)
}

/// Reads the late topic: events the pipeline reported late instead of counting them.
async fn read_late(kafka: &KafkaConfig, topics: &Topics, observed: &mut Observed, timeline: &mut Timeline) -> anyhow::Result<()> {
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
    for event in late.iter().filter_map(|e| e.event.as_ref()) {
        observed.late.insert(event.event_id.clone());
        timeline.late(&event.event_id);
    }
    Ok(())
}
