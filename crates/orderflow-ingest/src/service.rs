//! The HTTP app (axum) and its Kafka glue: [`Ingest::router`] answers `POST
//! /v1/events`; [`run`] serves it beside the tokens-file reloader and the broker
//! watch, under one supervisor, until cancelled, and then answers every request in
//! flight before it returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use orderflow_core::validate::Limits;
use orderflow_producer::Publisher;
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::supervisor::Supervisor;
use orderflow_runtime::telemetry;
use orderflow_runtime::topics::{self, Stage, Topics};
use rdkafka::consumer::Consumer as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::answer::{judge, Answer, Candidate, EventResult, Refusal};
use crate::auth::{bearer, Tokens};
use crate::body::{decompress, split, BodyError, Encoding, Format};
use crate::rate::{retry_after_secs, RateLimiter};
use crate::{Error, IngestConfig, Result, EVENTS_ROUTE};

/// How often the tokens file is checked for changes (besides SIGHUP).
const TOKENS_POLL: Duration = Duration::from_secs(1);
/// How often the broker and the orders topic are checked for `/readyz`.
const BROKER_WATCH: Duration = Duration::from_secs(2);

/// The HTTP app's shared state.
#[derive(Debug)]
struct App {
    publisher: Publisher,
    tokens: RwLock<Arc<Tokens>>,
    rates: Mutex<RateLimiter>,
    in_flight: Semaphore,
    limits: Limits,
    config: IngestConfig,
    /// The rate limiter's clock starts here.
    epoch: Instant,
}

/// The HTTP app over a publisher and a token table; clones share them.
#[derive(Debug, Clone)]
pub struct Ingest {
    app: Arc<App>,
}

impl Ingest {
    /// An app publishing through `publisher`, with `tokens`, under `config`.
    pub fn new(publisher: Publisher, tokens: Tokens, config: IngestConfig) -> Result<Self> {
        config.check()?;
        let app = App {
            publisher,
            tokens: RwLock::new(Arc::new(tokens)),
            rates: Mutex::new(RateLimiter::new(config.rate_limit, config.rate_burst)),
            in_flight: Semaphore::new(config.max_in_flight),
            limits: config.limits()?,
            config,
            epoch: Instant::now(),
        };
        Ok(Self { app: Arc::new(app) })
    }

    /// The routes: `POST /v1/events`.
    pub fn router(&self) -> Router {
        Router::new().route(EVENTS_ROUTE, post(post_events)).with_state(self.app.clone())
    }

    /// Replaces the token table (a reload). Rate-limit buckets stay: one per
    /// storefront, so rotating a token does not refill a storefront's bucket.
    pub fn set_tokens(&self, tokens: Tokens) {
        *self.app.tokens.write().expect("tokens poisoned") = Arc::new(tokens);
    }
}

/// Reads and parses the tokens file.
pub fn load_tokens(path: &Path) -> Result<Tokens> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::TokensFile { path: path.to_owned(), source })?;
    Tokens::parse(&text).map_err(|problem| Error::BadTokens { path: path.to_owned(), problem })
}

/// Creates the orders topic when missing, then serves ingest on `config.listen` until
/// `cancel`; then answers the requests in flight (within `shutdown_grace`) and
/// flushes the producer.
pub async fn run(kafka: &KafkaConfig, topics: &Topics, config: &IngestConfig, cancel: CancellationToken) -> Result<()> {
    // Local settings first: a bad one fails before any broker is contacted.
    config.check()?;
    let tokens_file = config.tokens_file.clone().ok_or_else(|| Error::Config("ingest needs a tokens file (--tokens-file)".into()))?;
    let tokens = load_tokens(&tokens_file)?;
    metrics::counter!(telemetry::INGEST_TOKEN_RELOADS, "outcome" => "loaded").increment(1);
    if tokens.is_empty() {
        tracing::warn!(file = %tokens_file.display(), "The tokens file holds no token: every request will be refused.");
    }
    let readiness = telemetry::readiness("ingest");
    readiness.not_ready("connecting to the brokers");
    kafka.check_reachable()?;
    topics::ensure(kafka, &topics.specs(Stage::Publisher)).await?;
    let publisher = Publisher::new(kafka, topics.orders())?;
    let ingest = Ingest::new(publisher.clone(), tokens, config.clone())?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|source| Error::Listen { addr: config.listen, source })?;
    tracing::info!(addr = %config.listen, topic = %topics.orders(), "Ingest listening.");

    let mut supervisor = Supervisor::new(cancel.child_token());
    let token = supervisor.token();
    let app = ingest.router();
    let addr = config.listen;
    let stop = token.clone();
    supervisor.spawn("http", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|source| Error::Listen { addr, source })
    });
    supervisor.spawn("tokens-reload", reload_tokens(ingest.clone(), tokens_file, token.clone()));
    let (k, orders, r) = (kafka.clone(), topics.orders(), readiness.clone());
    supervisor.spawn_blocking("broker-watch", move || watch_broker(&k, &orders, &r, &token));
    supervisor.run(config.shutdown_grace).await?;
    publisher.batch::<()>().close(Duration::from_secs(10)).await?;
    tracing::info!("Ingest stopped.");
    Ok(())
}

/// Reloads the tokens file on SIGHUP and whenever its modification time or size
/// changes; a file that does not parse leaves the tokens in force (logged, counted).
async fn reload_tokens(ingest: Ingest, path: PathBuf, cancel: CancellationToken) -> Result<()> {
    let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    let mut seen = stamp(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let why = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = hangup => "SIGHUP",
            _ = tokio::time::sleep(TOKENS_POLL) => {
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                "the file changed"
            }
        };
        match load_tokens(&path) {
            Ok(tokens) => {
                tracing::info!(file = %path.display(), tokens = tokens.len(), why, "Tokens reloaded.");
                metrics::counter!(telemetry::INGEST_TOKEN_RELOADS, "outcome" => "loaded").increment(1);
                ingest.set_tokens(tokens);
            }
            Err(e) => {
                tracing::error!(error = %e, why, "Tokens not reloaded; the previous tokens stay in force.");
                metrics::counter!(telemetry::INGEST_TOKEN_RELOADS, "outcome" => "failed").increment(1);
            }
        }
    }
}

/// Keeps `/readyz` true to the broker: ready while a metadata request answers and
/// shows the orders topic.
fn watch_broker(kafka: &KafkaConfig, orders: &str, readiness: &telemetry::Readiness, cancel: &CancellationToken) -> Result<()> {
    let probe = kafka.reader()?;
    while !cancel.is_cancelled() {
        match probe.fetch_metadata(Some(orders), BROKER_WATCH) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == orders) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => readiness.ready(),
                _ => readiness.not_ready(format!("topic `{orders}` is missing")),
            },
            Err(e) => readiness.not_ready(format!("brokers unreachable: {}", orderflow_runtime::kafka_cause(&e))),
        }
        // In quarters, so that a shutdown is not kept waiting.
        for _ in 0..4 {
            if cancel.is_cancelled() {
                break;
            }
            std::thread::sleep(BROKER_WATCH / 4);
        }
    }
    Ok(())
}

/// Counts a request in flight for its lifetime.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(telemetry::INGEST_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::INGEST_IN_FLIGHT).decrement(1.0);
    }
}

async fn post_events(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let _gauge = InFlight::enter();
    let response = handle(&app, &headers, body).await;
    let status = response.status().as_u16().to_string();
    // Which refusal (a 503 is `broker_unavailable` or `overloaded`); `none` for answers
    // about each event.
    let code = response.extensions().get::<RefusalCode>().map_or("none", |c| c.0);
    metrics::counter!(telemetry::INGEST_REQUESTS, "route" => EVENTS_ROUTE, "status" => status, "code" => code).increment(1);
    metrics::histogram!(telemetry::INGEST_REQUEST_SECONDS, "route" => EVENTS_ROUTE).record(started.elapsed().as_secs_f64());
    response
}

/// The `code` of a request refused whole, for the requests counter.
#[derive(Debug, Clone, Copy)]
struct RefusalCode(&'static str);

/// A request refused whole.
fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    let mut r = json_response(status, &Refusal::new(code, message));
    r.extensions_mut().insert(RefusalCode(code));
    r
}

fn refuse_retry(status: StatusCode, code: &'static str, message: impl Into<String>, retry_after: u64) -> Response {
    let mut r = refuse(status, code, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("answers serialize");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(app: &App, headers: &HeaderMap, body: Body) -> Response {
    let cfg = &app.config;
    let Ok(_permit) = app.in_flight.try_acquire() else {
        return refuse_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{} requests are being answered already; retry shortly", cfg.max_in_flight),
            1,
        );
    };
    // Who: a bearer token from the tokens file.
    let storefront = {
        let tokens = app.tokens.read().expect("tokens poisoned").clone();
        match header_str(headers, header::AUTHORIZATION).and_then(bearer).and_then(|t| tokens.storefront(t)) {
            Some(s) => s.to_owned(),
            None => {
                let mut r =
                    refuse(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)");
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    };
    // What: content type and encoding.
    let Some(format) = header_str(headers, header::CONTENT_TYPE).and_then(Format::from_content_type) else {
        let types: Vec<&str> = Format::CONTENT_TYPES.iter().map(|(t, _)| *t).collect();
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!("Content-Type must be one of {}", types.join(", ")),
        );
    };
    let Some(encoding) = Encoding::from_header(header_str(headers, header::CONTENT_ENCODING)) else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            "Content-Encoding must be identity, gzip or zstd",
        );
    };
    // How much: the body within its bound, as sent and decompressed.
    let too_large = |e: BodyError| refuse(StatusCode::PAYLOAD_TOO_LARGE, e.code(), e.to_string());
    if header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok()).is_some_and(|l| l > cfg.max_body_bytes as u64) {
        return too_large(BodyError::TooLarge { max: cfg.max_body_bytes, decoded: false });
    }
    let raw = match read_body(body, cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(None) => return too_large(BodyError::TooLarge { max: cfg.max_body_bytes, decoded: false }),
        Err(Some(e)) => return refuse(StatusCode::BAD_REQUEST, "malformed_body", format!("reading the body: {e}")),
    };
    metrics::counter!(telemetry::INGEST_BYTES, "encoding" => encoding.label()).increment(raw.len() as u64);
    let items = match decompress(&raw, encoding, cfg.max_body_bytes).and_then(|b| split(&b, format, cfg.max_batch_events)) {
        Ok(items) => items,
        Err(e @ (BodyError::TooLarge { .. } | BodyError::TooManyEvents { .. })) => return too_large(e),
        Err(e @ BodyError::Malformed(_)) => return refuse(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    };
    // How fast: the storefront's rate, all of the request or none of it.
    let now = app.epoch.elapsed().as_secs_f64();
    if let Err(wait) = app.rates.lock().expect("rates poisoned").take(&storefront, items.len() as u64, now) {
        let secs = retry_after_secs(wait);
        return refuse_retry(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("storefront `{storefront}` is above its rate of {} events/s; retry in {secs}s", cfg.rate_limit.unwrap_or_default()),
            secs,
        );
    }
    // Each event judged on its own, as the enricher would judge it.
    let now_ms = now_ms();
    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(items.len());
    let mut candidates: Vec<(usize, Candidate)> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match judge(item, &storefront, &app.limits, now_ms) {
            Ok(c) => {
                candidates.push((i, c));
                results.push(None);
            }
            Err(r) => results.push(Some(EventResult::rejected(i, r))),
        }
    }
    // Published, and answered only once the broker has every accepted event.
    if !candidates.is_empty() {
        let acked = Instant::now();
        let mut batch = app.publisher.batch::<usize>();
        let publish = async {
            for (i, c) in &candidates {
                batch.enqueue_raw(Some(&c.key), &c.payload, *i).await?;
            }
            batch.settle().await
        };
        let retry = retry_after_secs(cfg.broker_deadline);
        let settled = match tokio::time::timeout(cfg.broker_deadline, publish).await {
            Ok(Ok(settled)) => settled,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Publishing failed; answering 503.");
                return refuse_retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    format!("the broker did not take the events ({e}); nothing of this request is acknowledged, retry it"),
                    retry,
                );
            }
            Err(_) => {
                return refuse_retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    format!(
                        "the broker did not acknowledge the events within {}; nothing of this request is acknowledged, retry it \
                         (the same event ids are counted once)",
                        humantime::format_duration(cfg.broker_deadline)
                    ),
                    retry,
                );
            }
        };
        metrics::histogram!(telemetry::INGEST_ACK_SECONDS).record(acked.elapsed().as_secs_f64());
        for r in settled.rejected {
            let reason = orderflow_core::validate::InvalidReason::RefusedByBroker(r.reason());
            let event_id = candidates.iter().find(|(i, _)| *i == r.tag).map(|(_, c)| c.event_id.clone());
            results[r.tag] = Some(EventResult::rejected(
                r.tag,
                crate::answer::Rejection { event_id, code: reason.code(), message: reason.to_string(), status: 422 },
            ));
        }
        for (i, c) in candidates {
            if results[i].is_none() {
                results[i] = Some(EventResult::accepted(i, c.event_id));
            }
        }
    }
    let answer = Answer::new(results.into_iter().map(|r| r.expect("every event judged")).collect());
    for r in &answer.results {
        metrics::counter!(telemetry::INGEST_EVENTS, "outcome" => r.outcome, "reason" => r.reason()).increment(1);
    }
    json_response(StatusCode::from_u16(answer.status()).expect("a valid status"), &answer)
}

/// The body, or `Err(None)` when it is longer than `max`.
async fn read_body(body: Body, max: usize) -> std::result::Result<Vec<u8>, Option<axum::Error>> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Some)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(None);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The wall clock, ms since the epoch.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
