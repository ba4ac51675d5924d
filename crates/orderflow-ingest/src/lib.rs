//! HTTP ingest: storefronts in any language post order events over HTTP (`POST
//! /v1/events`) and learn, per event, whether it was accepted and is on the broker.
//!
//! # Design
//! - One request is judged event by event: the enricher's own check
//!   ([`orderflow_core::validate::check_payload`]) and the token's storefront decide
//!   each event; the valid ones are published to the orders topic keyed as
//!   [`orderflow_producer::Publisher`] keys them (through it, so with its idempotent
//!   producer, acks=all) and the answer is sent only once the broker has acknowledged
//!   every one of them. Valid events go through when others in the batch are rejected.
//! - Nothing is acknowledged that is not on the broker: when the producer's queue stays
//!   full or the broker does not acknowledge within `broker_deadline`, the whole request
//!   is answered 503 with `Retry-After`. Some of its events may still reach the broker
//!   later; a retry sends the same `event_id`s, and the aggregator counts an event id
//!   once, so retrying is always safe.
//! - Limits answer clearly: 401 (no or unknown token), 413 (body or events per
//!   request), 415 (content type or encoding), 429 (a storefront's rate, with
//!   `Retry-After`), 503 (too many requests in flight, or the broker).
//! - The pure parts (bodies, tokens, rates, answers) do no I/O and are unit-tested;
//!   [`service`] is the thin axum and Kafka glue.
//!
//! # Layout
//! - [`body`]: content types and encodings, splitting a body into events.
//! - [`auth`]: the tokens file (storefront id and SHA-256 of its token) and bearer tokens.
//! - [`rate`]: per-storefront token buckets.
//! - [`answer`]: judging an event, each event's result, the request's status.
//! - [`service`]: the HTTP app, token reloading, readiness, [`run`].

pub mod answer;
pub mod auth;
pub mod body;
pub mod rate;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use service::run;

/// The route events are posted to.
pub const EVENTS_ROUTE: &str = "/v1/events";

/// Where ingest listens when not told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The largest request body, in bytes, before and after decompression (8 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;
/// The most events in one request.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 10_000;
/// Events per second per storefront.
pub const DEFAULT_RATE_LIMIT: f64 = 50_000.0;
/// Events a storefront may send at once above its rate (at least one full request).
pub const DEFAULT_RATE_BURST: u64 = 100_000;
/// Requests answered at once; more are refused with 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1_024;
/// How long a request waits for the producer's queue and the broker's acknowledgement
/// before it is answered 503.
pub const DEFAULT_BROKER_DEADLINE: Duration = Duration::from_secs(5);

/// Ingest settings (the command line's `ingest` flags fill them in).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Where to serve the API.
    pub listen: SocketAddr,
    /// The tokens file (see [`auth`]); required to start. Reloaded on SIGHUP and when
    /// it changes.
    pub tokens_file: Option<PathBuf>,
    /// The largest request body, before and after decompression (413 beyond).
    pub max_body_bytes: usize,
    /// The most events in one request (413 beyond).
    pub max_batch_events: usize,
    /// Events per second per storefront (429 beyond); `None`: no limit.
    pub rate_limit: Option<f64>,
    /// Events a storefront may send at once; at least `max_batch_events`.
    pub rate_burst: u64,
    /// Requests answered at once (503 beyond).
    pub max_in_flight: usize,
    /// How long a request waits for room in the producer's queue and for the broker's
    /// acknowledgements before it is answered 503.
    pub broker_deadline: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// As the enricher's: how far ahead of ingest's clock an event time may be.
    pub max_event_time_skew: Duration,
    /// As the enricher's: the largest `amount_minor`.
    pub max_amount_minor: i64,
    /// As the enricher's: the largest event, in bytes of protobuf.
    pub max_event_bytes: usize,
    /// As the enricher's: currency codes accepted besides ISO 4217's.
    pub extra_currencies: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            tokens_file: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            rate_limit: Some(DEFAULT_RATE_LIMIT),
            rate_burst: DEFAULT_RATE_BURST,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            broker_deadline: DEFAULT_BROKER_DEADLINE,
            shutdown_grace: orderflow_runtime::supervisor::DEFAULT_SHUTDOWN_GRACE,
            max_event_time_skew: Duration::from_millis(orderflow_core::validate::DEFAULT_MAX_FUTURE_SKEW_MS as u64),
            max_amount_minor: orderflow_core::validate::DEFAULT_MAX_AMOUNT_MINOR,
            max_event_bytes: orderflow_core::validate::DEFAULT_MAX_EVENT_BYTES,
            extra_currencies: Vec::new(),
        }
    }
}

impl IngestConfig {
    /// The limits every event is held to (the enricher's, from the same settings).
    pub fn limits(&self) -> Result<orderflow_core::validate::Limits> {
        orderflow_core::validate::Limits::from_settings(
            self.max_event_time_skew,
            self.max_amount_minor,
            self.max_event_bytes,
            &self.extra_currencies,
        )
        .map_err(Error::Config)
    }

    /// Fails on settings that cannot work together.
    pub fn check(&self) -> Result<()> {
        if self.rate_limit.is_some() && self.rate_burst < self.max_batch_events as u64 {
            return Err(Error::Config(format!(
                "--rate-burst ({}) is below --max-batch-events ({}): a full request could never pass",
                self.rate_burst, self.max_batch_events
            )));
        }
        if self.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(Error::Config("--rate-limit must be a positive number of events per second".into()));
        }
        if self.max_in_flight == 0 || self.max_batch_events == 0 || self.max_body_bytes == 0 {
            return Err(Error::Config("--max-in-flight, --max-batch-events and --max-body-bytes must be above 0".into()));
        }
        self.limits().map(drop)
    }
}

/// Errors of ingest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] orderflow_runtime::Error),
    #[error(transparent)]
    Publish(#[from] orderflow_producer::Error),
    #[error("{0}")]
    Config(String),
    #[error("reading the tokens file {}", .path.display())]
    TokensFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tokens file {} is not usable: {problem}", .path.display())]
    BadTokens { path: PathBuf, problem: auth::BadTokens },
    #[error("serving HTTP on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Result with ingest's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
