//! The report: `report.json` (its schema is the structs here, in camelCase), the SVG
//! picture with its notes, and the summary printed on stdout.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use orderflow_workload::reference::{Observed, Reference};
use orderflow_workload::ReplayReport;
use serde::Serialize;

use super::chart;
use super::cpu::ProcessCpu;
use super::flags::{LoadtestArgs, Mode, Speed};
use super::timeline::{Latency, Second, Timeline};

/// The report (`report.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Report {
    trace: String,
    mode: Mode,
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
    pub(super) totals: TotalsCheck,
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
pub(super) struct Cpu {
    /// Events the CPU time is divided by (published events).
    pub(super) events: u64,
    /// Wall seconds of the measured stretch.
    pub(super) wall_seconds: f64,
    pub(super) enricher: Option<ProcessCpu>,
    pub(super) aggregator: Option<ProcessCpu>,
    /// Enricher plus aggregator: CPU seconds per million events (µs per event).
    pub(super) services_seconds_per_million_events: Option<f64>,
    /// The broker over the same stretch, for the same traffic.
    pub(super) broker: Option<ProcessCpu>,
    /// The broker during its own baseline (`brokerBaseline`), per million events.
    pub(super) broker_baseline: Option<ProcessCpu>,
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
pub(super) struct TotalsCheck {
    pub(super) matched: bool,
    windows: usize,
    totals: usize,
    late_events: u64,
    differences: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Baseline {
    pub(super) events: u64,
    /// Producing the trace's events (replay mode's baseline).
    pub(super) produce_seconds: Option<f64>,
    /// Consuming the published trace and producing each record again (drain mode's
    /// baseline: what the enricher does, minus the enriching).
    pub(super) relay_seconds: Option<f64>,
    /// Consuming the produced records back.
    pub(super) consume_seconds: f64,
    /// events / (produce or relay seconds + consume seconds).
    pub(super) events_per_second: f64,
}

/// What the replay did, and how long it took (seconds from the first send to the last
/// acknowledgement).
pub(super) struct Replayed {
    pub(super) report: ReplayReport,
    pub(super) seconds: f64,
}

/// What the run measured besides the replay and the totals.
pub(super) struct Measured {
    /// When the enricher and the aggregator had committed everything (ms since start).
    pub(super) caught_up_ms: Option<u64>,
    pub(super) baseline: Option<Baseline>,
    /// A drain's services' start (ms since start).
    pub(super) drain_started_ms: Option<u64>,
    pub(super) cpu: Option<Cpu>,
}

/// The report, and every difference between the totals and the reference (the report
/// keeps the first 50).
pub(super) fn build_report(
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
    let differences = reference.differences(observed);
    let windows = reference.certain_totals().keys().map(|k| k.window_start_ms).collect::<std::collections::BTreeSet<_>>().len();
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
        mode: args.mode,
        speed: match args.speed {
            Speed::Max => "max".into(),
            Speed::Factor(f) => format!("{f}x"),
        },
        events: Events {
            lines: replayed.lines,
            published: replayed.published,
            unparsable_lines: replayed.invalid_lines.len() as u64,
            valid_unique: reference.valid_unique,
            duplicates: reference.repeats,
            invalid: reference.dead_letters().values().sum::<usize>() as u64,
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
            totals: reference.certain_totals().len(),
            late_events: observed.late.len() as u64,
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
pub(super) fn write_report(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(report)?).with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = dir.join("report.svg");
    let title = match report.mode {
        Mode::Drain => format!("orderflow backlog drain: {} ({} events)", report.trace, report.events.published),
        Mode::Replay => format!("orderflow load test: {} at {} ({} events)", report.trace, report.speed, report.events.published),
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
pub(super) fn print_report(report: &Report, differences: &[String], json_path: &Path, svg_path: &Path) {
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
    let one = |name: &str, p: &Option<ProcessCpu>| p.as_ref().map(|p| format!("{name} {:.2}", p.seconds_per_million_events));
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
