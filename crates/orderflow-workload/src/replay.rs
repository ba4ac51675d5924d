//! Trace replay: publishes every event of a trace file, paced or flat out.

use std::path::Path;
use std::time::Duration;

use orderflow_producer::{PublishBatch, Publisher};
use orderflow_runtime::outbox::Settled;
use orderflow_runtime::telemetry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::TraceReader;
use crate::{Error, Result};

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Events per second; `None` publishes as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Show a progress bar (drawn only when stderr is a terminal).
    pub progress: bool,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Non-blank lines read.
    pub lines: u64,
    /// Events the broker acknowledged.
    pub published: u64,
    /// Lines that were not an `OrderEvent` in JSON: (line number, error).
    pub invalid_lines: Vec<(u64, String)>,
    /// Events the broker refused for good (too large, say): (line number, reason).
    pub refused: Vec<(u64, String)>,
    /// Whether the replay stopped early on shutdown.
    pub interrupted: bool,
}

/// How many deliveries may be outstanding before the replay waits for the oldest.
const IN_FLIGHT: usize = 20_000;

/// Publishes every event of the trace at `path`. Lines that do not parse, and events
/// the broker refuses, are reported (on stderr and in the report, with their line
/// numbers) and skipped; the replay goes on.
pub async fn replay(path: &Path, publisher: &Publisher, opts: &ReplayOptions, cancel: &CancellationToken) -> Result<ReplayReport> {
    let trace_err = |source| Error::Trace { path: path.display().to_string(), source };
    let mut lines = TraceReader::open(path, opts.progress, "replay").map_err(trace_err)?;
    let mut report = ReplayReport::default();
    let mut batch: PublishBatch<'_, u64> = publisher.batch();
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if cancel.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let Some(line) = lines.next_line().map_err(trace_err)? else { break };
        report.lines += 1;
        let event = match line.event {
            Ok(e) => e,
            Err(msg) => {
                lines.bar().suspend(|| eprintln!("{}:{}: {msg}", path.display(), line.number));
                metrics::counter!(telemetry::PRODUCER_INVALID_LINES).increment(1);
                report.invalid_lines.push((line.number, msg));
                continue;
            }
        };
        if let Some(rate) = opts.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(due).await;
            }
        }
        batch.enqueue(&event, line.number).await?;
        sent += 1;
        if batch.pending() >= IN_FLIGHT {
            account(path, &lines, &mut report, batch.settle_ready(IN_FLIGHT / 2).await?);
            lines.bar().set_message(format!("{} events", report.published));
        }
    }
    account(path, &lines, &mut report, batch.settle().await?);
    lines.bar().finish_with_message(format!("{} events", report.published));
    Ok(report)
}

fn account(path: &Path, lines: &TraceReader, report: &mut ReplayReport, settled: Settled<u64>) {
    report.published += settled.delivered;
    metrics::counter!(telemetry::PRODUCER_EVENTS, "outcome" => "sent").increment(settled.delivered);
    for r in settled.rejected {
        let reason = r.error.to_string();
        lines.bar().suspend(|| eprintln!("{}:{}: refused by the broker: {reason}", path.display(), r.tag));
        metrics::counter!(telemetry::PRODUCER_EVENTS, "outcome" => "refused").increment(1);
        report.refused.push((r.tag, reason));
    }
}
