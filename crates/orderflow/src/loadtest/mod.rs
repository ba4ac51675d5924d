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
//! - `flags`: the command line ([`LoadtestArgs`], its `Speed` and `Mode`).
//! - `orchestrate`: the run, start to end ([`run`]).
//! - `baseline`: the broker alone on the same messages (replay and drain baselines).
//! - `children`: a drain's enricher and aggregator as child processes.
//! - `watch`: the threads watching the totals topic, the groups' lag, the aggregator's
//!   metrics and the CPU while the run goes on.
//! - `scrape`: the aggregator's `/metrics`, for the events it shows.
//! - `cpu`: CPU time of the processes, from `/proc/<pid>/stat`, read at both ends and
//!   sampled every second.
//! - `timeline`: per-second rates, latency, lag and CPU.
//! - `report`: `report.json`'s schema, the picture's notes and the printed summary.
//! - `chart`: the SVG picture.

mod baseline;
mod chart;
mod children;
mod cpu;
mod flags;
mod orchestrate;
mod report;
mod scrape;
mod timeline;
mod watch;

pub use flags::LoadtestArgs;
pub use orchestrate::run;
