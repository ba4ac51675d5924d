//! Workloads for orderflow: what load tests, the demo and `replay` send, and the one
//! loop that sends it.
//!
//! # Layout
//! - [`synth`]: a generated peak-hour trace and its merchants CSV, streamed to files
//!   (`orderflow trace synth`).
//! - [`sample`]: a small generated peak minute, for the demo.
//! - [`trace`]: reading a trace file (one canonical-JSON `OrderEvent` a line) with line
//!   numbers and a progress bar.
//! - [`replay`]: publishes a trace at a fixed rate or flat out through a
//!   [`Publisher`](orderflow_producer::Publisher), reporting unreadable lines and
//!   events the broker refuses by line number and going on.

pub mod replay;
pub mod sample;
pub mod synth;
pub mod trace;

pub use replay::{replay, ReplayOptions, ReplayReport};

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
}

/// Result with the workloads' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
