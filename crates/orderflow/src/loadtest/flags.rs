//! `orderflow loadtest`'s flags: what to replay, how fast, what to measure.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// The aggregator's allowed lateness (the reference decides which events must be
    /// late with it).
    #[arg(long, env = "ORDERFLOW_LATENESS", value_parser = humantime::parse_duration, default_value = "5s")]
    pub lateness: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse() {
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert_eq!(parse_speed("realtime"), Ok(Speed::Factor(1.0)));
        assert_eq!(parse_speed("12.5x"), Ok(Speed::Factor(12.5)));
        assert!(parse_speed("0x").is_err());
        assert!(parse_speed("fast").unwrap_err().contains("`fast`"));
    }
}
