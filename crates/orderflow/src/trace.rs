//! `orderflow trace`: synthetic traces in the replay format.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use orderflow_proto::{timestamp_millis, Timestamp};
use orderflow_workload::synth::{self, SynthOptions, MERCHANTS_FILE, TRACE_FILE};

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write a synthetic 11.11 peak-hour trace: DIR/trace.jsonl (what `replay` reads)
    /// and DIR/merchants.csv (what `merchants load` reads). Same seed, same bytes.
    Synth(SynthArgs),
}

/// Settings of `trace synth`. Fractions are of the trace's lines.
#[derive(Debug, Clone, Args)]
pub struct SynthArgs {
    /// Directory to write trace.jsonl and merchants.csv into (created if missing;
    /// existing files are replaced).
    #[arg(long, env = "ORDERFLOW_SYNTH_OUT", default_value = ".")]
    out: PathBuf,
    /// Target number of trace lines; the rate curve is scaled so the trace has about this many.
    #[arg(long, env = "ORDERFLOW_SYNTH_EVENTS", default_value_t = 1_000_000)]
    events: u64,
    /// Length of the trace in event time.
    #[arg(long, env = "ORDERFLOW_SYNTH_DURATION", value_parser = humantime::parse_duration, default_value = "1h")]
    duration: Duration,
    /// Event time of the trace's beginning (RFC 3339).
    #[arg(long, env = "ORDERFLOW_SYNTH_START", value_parser = parse_time, default_value = "2019-11-10T23:30:00Z")]
    start: Timestamp,
    /// When the spike begins (RFC 3339) [default: the first whole hour at or after --start].
    #[arg(long, env = "ORDERFLOW_SYNTH_SPIKE_AT", value_parser = parse_time)]
    spike_at: Option<Timestamp>,
    /// Peak rate over the evening rate.
    #[arg(long, env = "ORDERFLOW_SYNTH_PEAK_RATIO", default_value_t = 30.0)]
    peak_ratio: f64,
    /// Time from the spike's beginning to its peak.
    #[arg(long, env = "ORDERFLOW_SYNTH_SPIKE_RISE", value_parser = humantime::parse_duration, default_value = "30s")]
    spike_rise: Duration,
    /// Time constant of the exponential decay after the peak (the excess is ~5% of the
    /// peak's after three of them).
    #[arg(long, env = "ORDERFLOW_SYNTH_SPIKE_DECAY", value_parser = humantime::parse_duration, default_value = "4m")]
    spike_decay: Duration,
    /// Merchants in the table (merchants.csv).
    #[arg(long, env = "ORDERFLOW_SYNTH_MERCHANTS", default_value_t = 200_000)]
    merchants: u32,
    /// Exponent of the Zipf merchant popularity (higher: a heavier head).
    #[arg(long, env = "ORDERFLOW_SYNTH_ZIPF_EXPONENT", default_value_t = 1.0)]
    zipf_exponent: f64,
    /// Seed of the generator.
    #[arg(long, env = "ORDERFLOW_SYNTH_SEED", default_value_t = 1111)]
    seed: u64,
    /// Fraction of lines that are storefront retries (same event id, sent again shortly after).
    #[arg(long, env = "ORDERFLOW_SYNTH_DUPLICATES", value_parser = parse_fraction, default_value_t = 0.01)]
    duplicates: f64,
    /// Fraction of lines sent a little after later events (within --max-disorder).
    #[arg(long, env = "ORDERFLOW_SYNTH_OUT_OF_ORDER", value_parser = parse_fraction, default_value_t = 0.02)]
    out_of_order: f64,
    /// Fraction of lines sent --late-min to --late-max after their event time.
    #[arg(long, env = "ORDERFLOW_SYNTH_LATE", value_parser = parse_fraction, default_value_t = 0.001)]
    late: f64,
    /// Fraction of lines that fail validation (one rule each).
    #[arg(long, env = "ORDERFLOW_SYNTH_INVALID", value_parser = parse_fraction, default_value_t = 0.001)]
    invalid: f64,
    /// Fraction of orders whose merchant is not in merchants.csv.
    #[arg(long, env = "ORDERFLOW_SYNTH_UNKNOWN_MERCHANTS", value_parser = parse_fraction, default_value_t = 0.005)]
    unknown_merchants: f64,
    /// Longest delay of an out-of-order event (keep it under the aggregator's --lateness).
    #[arg(long, env = "ORDERFLOW_SYNTH_MAX_DISORDER", value_parser = humantime::parse_duration, default_value = "4s")]
    max_disorder: Duration,
    /// Shortest delay of a late event (keep it over the aggregator's --window plus --lateness).
    #[arg(long, env = "ORDERFLOW_SYNTH_LATE_MIN", value_parser = humantime::parse_duration, default_value = "2m")]
    late_min: Duration,
    /// Longest delay of a late event.
    #[arg(long, env = "ORDERFLOW_SYNTH_LATE_MAX", value_parser = humantime::parse_duration, default_value = "10m")]
    late_max: Duration,
    /// Never draw the progress bar (it is drawn only on a terminal anyway).
    #[arg(long, env = "ORDERFLOW_SYNTH_NO_PROGRESS")]
    no_progress: bool,
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    s.parse().map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{s}` is not a fraction between 0 and 1")),
    }
}

fn millis(d: Duration) -> anyhow::Result<i64> {
    i64::try_from(d.as_millis()).context("duration too long")
}

impl SynthArgs {
    fn options(&self) -> anyhow::Result<SynthOptions> {
        let opts = SynthOptions {
            events: self.events,
            start_ms: timestamp_millis(&self.start),
            duration_ms: millis(self.duration)?,
            spike_at_ms: self.spike_at.as_ref().map(timestamp_millis),
            peak_ratio: self.peak_ratio,
            spike_rise_ms: millis(self.spike_rise)?,
            spike_decay_ms: millis(self.spike_decay)?,
            merchants: self.merchants,
            zipf_exponent: self.zipf_exponent,
            seed: self.seed,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            late: self.late,
            invalid: self.invalid,
            unknown_merchants: self.unknown_merchants,
            max_disorder_ms: millis(self.max_disorder)?,
            late_min_ms: millis(self.late_min)?,
            late_max_ms: millis(self.late_max)?,
        };
        opts.check()?;
        Ok(opts)
    }
}

/// Runs a `trace` subcommand.
pub async fn run(cmd: TraceCommand) -> anyhow::Result<()> {
    match cmd {
        TraceCommand::Synth(args) => tokio::task::spawn_blocking(move || synth(&args)).await.context("trace synth panicked")?,
    }
}

fn synth(args: &SynthArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let progress = !args.no_progress && is_terminal::is_terminal(std::io::stderr());
    let summary = synth::write_files(&opts, &args.out, progress)?;
    println!("Wrote {} and {}: {summary}.", args.out.join(TRACE_FILE).display(), args.out.join(MERCHANTS_FILE).display());
    Ok(())
}
