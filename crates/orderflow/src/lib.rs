//! orderflow's command line. One binary; each subcommand runs one part of the pipeline
//! (one subcommand per process in a deployment), inspects a topic, or runs the demo.
//!
//! # Layout
//! - [`Cli`]: flags and subcommands (every flag also reads an environment variable).
//! - `args`: the flags of the library crates' settings, converted into their plain
//!   config structs (the libraries do not depend on clap).
//! - `ingest` (the subcommand): the storefront HTTP API, from `orderflow-ingest`.
//! - `inspect`: printing totals, dead letters and late events.
//! - `demo`: the whole pipeline in one process on librdkafka's embedded mock cluster.
//! - `trace`: synthetic traces (`trace synth`).
//! - `loadtest`: replaying a trace against a running pipeline (or draining a published
//!   backlog), with a report. By concern:
//!   - `loadtest::flags`: its flags; `loadtest::orchestrate`: the run, start to end.
//!   - `loadtest::baseline`: the broker alone on the same messages, through the outbox.
//!   - `loadtest::children`: a drain's enricher and aggregator as child processes
//!     (SIGTERM, then a kill after a grace).
//!   - `loadtest::watch`: the watcher threads (totals, lag, metrics, CPU);
//!     `loadtest::scrape`: the aggregator's `/metrics`; `loadtest::cpu`: CPU time from
//!     `/proc`.
//!   - `loadtest::timeline`: per-second figures and latency (the verdict is
//!     `orderflow_workload::reference`'s, the answer the tests use too).
//!   - `loadtest::report`: `report.json`'s schema and the summary;
//!     `loadtest::chart`: the SVG picture.

mod args;
mod demo;
mod inspect;
mod loadtest;
mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orderflow_producer::Publisher;
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::topics::{self, Stage, Topics};
use orderflow_runtime::{shutdown, telemetry};
use orderflow_workload::trace::TraceReader;
use orderflow_workload::{replay, OnRefused, Pace, ReplayOptions, Source};

use args::{AggregatorArgs, EnricherArgs, IngestArgs, KafkaArgs, TopicArgs};

/// Deliveries `orderflow replay` keeps in flight before it waits for the oldest.
const REPLAY_IN_FLIGHT: usize = 20_000;

/// Event-sourced order pipeline: storefront events in, exact windowed GMV totals out.
#[derive(Debug, Parser)]
#[command(name = "orderflow", version)]
pub struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Merchant reference data.
    Merchants {
        #[command(subcommand)]
        command: MerchantsCommand,
    },
    /// Publish a trace (one canonical-JSON OrderEvent a line) to the orders topic.
    Replay {
        /// The trace file.
        file: PathBuf,
        /// Events per second (default: as fast as the broker takes them).
        #[arg(long, env = "ORDERFLOW_REPLAY_RATE")]
        rate: Option<f64>,
        /// Never draw the progress bar (it is drawn only on a terminal anyway).
        #[arg(long, env = "ORDERFLOW_NO_PROGRESS")]
        no_progress: bool,
    },
    /// Run the enricher: validate, join with merchants, dead-letter bad events.
    Enrich {
        #[command(flatten)]
        args: EnricherArgs,
        /// Where to serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and
        /// readiness (`/readyz`).
        #[arg(long, env = "ORDERFLOW_METRICS_ADDR", default_value = "127.0.0.1:9101")]
        metrics_addr: SocketAddr,
    },
    /// Run the aggregator: windowed totals per partition, checkpoints, exact merge.
    Aggregate {
        #[command(flatten)]
        args: AggregatorArgs,
        /// Where to serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and
        /// readiness (`/readyz`).
        #[arg(long, env = "ORDERFLOW_METRICS_ADDR", default_value = "127.0.0.1:9102")]
        metrics_addr: SocketAddr,
    },
    /// Serve the storefront HTTP API (`POST /v1/events`): events validated as the
    /// enricher does, published to the orders topic, answered per event once on the
    /// broker. `ingest hash-token` prints a token's hash for the tokens file.
    #[command(args_conflicts_with_subcommands = true)]
    Ingest {
        #[command(subcommand)]
        command: Option<IngestCommand>,
        #[command(flatten)]
        args: IngestArgs,
        /// Where to serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and
        /// readiness (`/readyz`: the broker reachable and the orders topic present).
        #[arg(long, env = "ORDERFLOW_METRICS_ADDR", default_value = "127.0.0.1:9103")]
        metrics_addr: SocketAddr,
    },
    /// Print the merged window totals.
    Totals {
        /// One total a line in canonical protobuf JSON.
        #[arg(long)]
        json: bool,
        /// Keep printing new totals as windows close (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
    },
    /// Print the dead-letter topic: reason and source of each rejected record.
    DeadLetters {
        /// One record a line in JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the late topic: events whose window had already closed.
    Late {
        /// One record a line in JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole pipeline in one process on an embedded mock broker (librdkafka's
    /// mock cluster) with a generated peak minute, and show the totals as windows close.
    Demo(demo::DemoArgs),
    /// Replay a trace against a running pipeline and report throughput, end-to-end
    /// latency, lag and whether the totals match the trace (JSON and an SVG picture).
    Loadtest(loadtest::LoadtestArgs),
    /// Synthetic traces: `trace synth` writes a peak-hour trace and its merchants CSV.
    Trace {
        #[command(subcommand)]
        command: trace::TraceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum IngestCommand {
    /// Read a token from standard input (one line) and print its SHA-256 in hex, the
    /// form the tokens file stores (with the storefront id first when given).
    HashToken {
        /// Print a whole tokens-file line: `STOREFRONT_ID HASH`.
        #[arg(long)]
        storefront: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum MerchantsCommand {
    /// Publish a CSV (header `merchant_id,region,tier`, optional `effective_from`,
    /// further columns ignored) to the compacted merchants topic.
    Load {
        /// The CSV file.
        file: PathBuf,
    },
}

/// Parses the command line and runs it; errors are printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's screen is the totals table: only warnings unless RUST_LOG says otherwise.
    telemetry::init_tracing(if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info,librdkafka=warn" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the Tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { kafka, topics, command } = cli;
    let (kafka, topics): (KafkaConfig, Topics) = (kafka.into(), topics.into());
    match command {
        Command::Merchants { command: MerchantsCommand::Load { file } } => {
            // Local input first: a bad file fails before any broker is contacted.
            let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let merchants = orderflow_core::merchant::read_merchants_csv(f).with_context(|| format!("reading {}", file.display()))?;
            kafka.check_reachable()?;
            topics::ensure(&kafka, &topics.specs(Stage::MerchantLoader)).await?;
            let n = orderflow_producer::load_merchants(&kafka, &topics.merchants(), &merchants).await?;
            println!("Published {n} merchant records to {}.", topics.merchants());
        }
        Command::Replay { file, rate, no_progress } => {
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            kafka.check_reachable()?;
            topics::ensure(&kafka, &topics.specs(Stage::Publisher)).await?;
            let publisher = Publisher::new(&kafka, topics.orders())?;
            let cancel = shutdown::on_signal();
            let progress = !no_progress && is_terminal::is_terminal(std::io::stderr());
            let mut trace = TraceReader::open(&file, progress, "replay").with_context(|| format!("opening {}", file.display()))?;
            let opts = ReplayOptions {
                pace: rate.map_or(Pace::Max, Pace::Rate),
                in_flight: REPLAY_IN_FLIGHT,
                on_refused: OnRefused::Report,
                started: None,
            };
            let report = replay(Source::Trace(&mut trace), &mut publisher.batch(), &opts, &mut (), &cancel).await?;
            trace.bar().finish();
            println!(
                "Published {} events from {} lines of {}; {} invalid lines skipped; {} events refused by the broker{}.",
                report.published,
                report.lines,
                file.display(),
                report.invalid_lines.len(),
                report.refused.len(),
                if report.interrupted { "; interrupted" } else { "" }
            );
        }
        Command::Enrich { args, metrics_addr } => {
            telemetry::serve(metrics_addr).await?;
            orderflow_enricher::run(&kafka, &topics, &args.into(), shutdown::on_signal()).await?;
        }
        Command::Aggregate { args, metrics_addr } => {
            let config: orderflow_aggregator::AggregatorConfig = args.into();
            config.spec()?;
            telemetry::serve(metrics_addr).await?;
            orderflow_aggregator::run(&kafka, &topics, &config, shutdown::on_signal()).await?;
        }
        Command::Ingest { command: Some(IngestCommand::HashToken { storefront }), .. } => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token).context("reading the token from standard input")?;
            let token = token.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&token);
            anyhow::ensure!(!token.is_empty(), "no token on standard input");
            let hash = orderflow_ingest::auth::hash_token(token);
            match storefront {
                Some(s) => println!("{s} {hash}"),
                None => println!("{hash}"),
            }
        }
        Command::Ingest { command: None, args, metrics_addr } => {
            let config: orderflow_ingest::IngestConfig = args.into();
            config.check()?;
            telemetry::serve(metrics_addr).await?;
            orderflow_ingest::run(&kafka, &topics, &config, shutdown::on_signal()).await?;
        }
        Command::Totals { json, follow } => inspect::totals(&kafka, &topics, json, follow).await?,
        Command::DeadLetters { json } => inspect::dead_letters(&kafka, &topics, json).await?,
        Command::Late { json } => inspect::late(&kafka, &topics, json).await?,
        Command::Demo(args) => return demo::run(args).await,
        Command::Loadtest(args) => return loadtest::run(&kafka, &topics, args).await,
        Command::Trace { command } => trace::run(command).await?,
    }
    Ok(ExitCode::SUCCESS)
}
