//! Trace replay.

use std::path::Path;
use std::time::Duration;

use futures::future::join_all;
use orderflow_runtime::telemetry;
use rdkafka::producer::DeliveryFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::TraceReader;
use crate::{Error, Publisher, Result};

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
    /// Whether the replay stopped early on shutdown.
    pub interrupted: bool,
}

/// How many deliveries may be outstanding before the replay waits for them.
const IN_FLIGHT: usize = 20_000;

/// Publishes every event of the trace at `path`. Lines that do not parse are reported
/// (on stderr and in the report, with their line numbers) and skipped.
pub async fn replay(path: &Path, publisher: &Publisher, opts: &ReplayOptions, cancel: &CancellationToken) -> Result<ReplayReport> {
    let trace_err = |source| Error::Trace { path: path.display().to_string(), source };
    let mut lines = TraceReader::open(path, opts.progress, "replay").map_err(trace_err)?;
    let mut report = ReplayReport::default();
    let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(IN_FLIGHT);
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
        pending.push(publisher.enqueue(&event).await?);
        sent += 1;
        if pending.len() >= IN_FLIGHT {
            report.published += settle_all(publisher, &mut pending).await?;
            lines.bar().set_message(format!("{} events", report.published));
        }
    }
    report.published += settle_all(publisher, &mut pending).await?;
    lines.bar().finish_with_message(format!("{} events", report.published));
    Ok(report)
}

async fn settle_all(publisher: &Publisher, pending: &mut Vec<DeliveryFuture>) -> Result<u64> {
    let results = join_all(pending.drain(..)).await;
    let mut ok = 0;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(Ok(_)) => ok += 1,
            Ok(Err((e, _))) => {
                first_err.get_or_insert(Error::Delivery { topic: publisher.topic().to_owned(), source: e });
            }
            Err(_) => {
                first_err.get_or_insert(Error::Cancelled);
            }
        }
    }
    metrics::counter!(telemetry::PRODUCER_EVENTS, "outcome" => "sent").increment(ok);
    match first_err {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}
