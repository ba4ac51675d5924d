//! Workloads for orderflow: what load tests, the demo and `replay` send, and the one
//! loop that sends it.
//!
//! # Layout
//! - [`synth`]: a generated peak-hour trace and its merchants CSV, streamed to files
//!   (`orderflow trace synth`).
//! - [`sample`]: a small generated peak minute, for the demo.
//! - [`trace`]: reading a trace file (one canonical-JSON `OrderEvent` a line) with line
//!   numbers and a progress bar.
//! - [`replay`]: the one replayer (used by `orderflow replay`, the load test and the
//!   demo): publishes a trace file or events in memory through a
//!   [`Publisher`](orderflow_producer::Publisher)'s batch, flat out, at a rate or at the
//!   pace of event time, with a bounded number in flight; unreadable lines and refused
//!   events are reported by number, and an [`Observer`] hears of every step.

pub mod reference;
pub mod replay;
pub mod sample;
pub mod synth;
pub mod trace;

pub use replay::{replay, Observer, OnRefused, Pace, ReplayOptions, ReplayReport, Source};

/// Errors of the workloads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Publish(#[from] orderflow_producer::Error),
    #[error("reading trace `{path}`")]
    Trace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An event the broker refused for good, with the replay told to stop on one;
    /// `at` names it (`trace.jsonl:17`, or `event 17` in memory).
    #[error("{at}: refused by the broker: {reason}")]
    Refused { at: String, reason: String },
}

/// Result with the workloads' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
