//! Metric names (Prometheus conventions: `orderflow_<component>_<what>_<unit>`, counters
//! end in `_total`), their descriptions, the exporter, and tracing.
//!
//! Labels are bounded sets only: `reason`, `outcome`, `region`, `tier`, `currency`,
//! `type`, `partition`, `service`, `code`. Never merchant, order or event ids.
//! Histograms are exported as Prometheus histograms with buckets ([`builder`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{Error, Result};

/// Gauge: 1 while a service is ready (see [`readiness`]), else 0. Labels: `service`.
pub const READY: &str = "orderflow_ready";
/// Gauge: records between a group consumer's position and its partition's end (0 for
/// partitions it does not fetch). Labels: `service`, `topic`, `partition`.
pub const CONSUMER_LAG: &str = "orderflow_consumer_lag_records";
/// Rebalances a group consumer went through. Labels: `service`, `kind` (assign, revoke).
pub const REBALANCES: &str = "orderflow_rebalances_total";
/// Histogram: seconds to process one batch, from its last record read to its outputs
/// delivered. Labels: `service`.
pub const BATCH_DURATION: &str = "orderflow_batch_duration_seconds";
/// Counter: Kafka records a service's consumers read (`rate()` gives records per
/// second). Labels: `service` (enricher, aggregator, merger).
pub const RECORDS_CONSUMED: &str = "orderflow_records_consumed_total";
/// Counter: Kafka records a service wrote, counted once the broker has them. Labels:
/// `service` (enricher, aggregator, merger, replay, ...).
pub const RECORDS_PRODUCED: &str = "orderflow_records_produced_total";
/// Gauge: records in a service's producer queue (librdkafka's `msg_cnt`, every second).
/// Labels: `service`.
pub const PRODUCER_QUEUE: &str = "orderflow_producer_queue_messages";
/// Counter: Kafka client errors, from librdkafka's error callback and from failed
/// deliveries. Labels: `service`, `code` (librdkafka's error code name, e.g.
/// `BrokerTransportFailure`, `MessageSizeTooLarge`: a closed set).
pub const KAFKA_ERRORS: &str = "orderflow_kafka_errors_total";

/// Events published by `replay`. Labels: `outcome` (sent, refused).
pub const PRODUCER_EVENTS: &str = "orderflow_producer_events_total";
/// Trace lines `replay` skipped because they are not an `OrderEvent` in JSON.
pub const PRODUCER_INVALID_LINES: &str = "orderflow_producer_invalid_lines_total";

/// Raw events read by the enricher.
pub const ENRICHER_EVENTS: &str = "orderflow_enricher_events_total";
/// Orders-topic records read by the enricher, by the form they came in. Labels:
/// `format` (`protobuf`: plain; `schema_registry`: Confluent Schema Registry wire
/// format, including frames too broken to read).
pub const ENRICHER_RECORDS: &str = "orderflow_enricher_records_total";
/// Events enriched with an unknown merchant (region and tier `unknown`).
pub const ENRICHER_UNKNOWN_MERCHANT: &str = "orderflow_enricher_unknown_merchant_events_total";
/// Merchants in the enricher's table.
pub const ENRICHER_MERCHANTS: &str = "orderflow_enricher_merchants";
/// Gauge: 1 once the enricher has read the whole merchants topic (its initial load),
/// else 0.
pub const ENRICHER_MERCHANTS_LOADED: &str = "orderflow_enricher_merchants_loaded";
/// Merchant records applied from the merchants topic.
pub const ENRICHER_MERCHANT_UPDATES: &str = "orderflow_enricher_merchant_updates_total";
/// Events sent to the dead-letter topic. Labels: `stage`, `reason`.
pub const DEAD_LETTER_EVENTS: &str = "orderflow_dead_letter_events_total";
/// Dead letters the dead-letter topic itself refused (lost; logged). Labels: `stage`.
pub const DEAD_LETTER_REFUSED: &str = "orderflow_dead_letter_refused_total";

/// Enriched events read by the aggregator. Labels: `outcome` (counted, duplicate, late, invalid).
pub const AGGREGATOR_EVENTS: &str = "orderflow_aggregator_events_total";
/// Windows closed on input partitions (partial totals published).
pub const AGGREGATOR_PARTITION_WINDOWS_CLOSED: &str = "orderflow_aggregator_partition_windows_closed_total";
/// Open windows held, summed over owned partitions.
pub const AGGREGATOR_OPEN_WINDOWS: &str = "orderflow_aggregator_open_windows";
/// Highest event time seen per partition, seconds since the epoch. Label: `partition`.
pub const AGGREGATOR_WATERMARK: &str = "orderflow_aggregator_watermark_seconds";
/// Idle ticks written because a partition was quiet.
pub const AGGREGATOR_IDLE_TICKS: &str = "orderflow_aggregator_idle_ticks_total";
/// Checkpoints written.
pub const AGGREGATOR_CHECKPOINTS: &str = "orderflow_aggregator_checkpoints_total";
/// Size of each checkpoint written.
pub const AGGREGATOR_CHECKPOINT_BYTES: &str = "orderflow_aggregator_checkpoint_size_bytes";
/// Partitions restored from a checkpoint. Label: `from` (checkpoint, scratch).
pub const AGGREGATOR_RESTORES: &str = "orderflow_aggregator_partition_restores_total";
/// Counter: checkpoints the broker refused (the previous checkpoint stays in force).
pub const AGGREGATOR_CHECKPOINT_FAILURES: &str = "orderflow_aggregator_checkpoint_failures_total";
/// Events refused at a partition's state bound (and dead-lettered). Labels: `reason`
/// (`dedup_memory_full`, `too_many_keys`).
pub const AGGREGATOR_BOUND_REFUSALS: &str = "orderflow_aggregator_bound_refusals_total";
/// Merchant records from the merchants topic the enricher refused. Labels: `reason`.
pub const ENRICHER_MERCHANTS_REFUSED: &str = "orderflow_enricher_merchant_records_refused_total";
/// Gauge: wall clock minus the partition's watermark, in seconds. Labels: `partition`.
pub const AGGREGATOR_EVENT_TIME_LAG: &str = "orderflow_aggregator_event_time_lag_seconds";
/// Gauge: input partitions this aggregator owns (restored).
pub const AGGREGATOR_PARTITIONS_OWNED: &str = "orderflow_aggregator_partitions_owned";
/// Histogram: seconds to write and settle one round of checkpoints.
pub const AGGREGATOR_CHECKPOINT_SECONDS: &str = "orderflow_aggregator_checkpoint_duration_seconds";
/// Gauge: event ids remembered for dedup, per input partition (its bound is
/// `--dedup-max-ids`). Labels: `partition`.
pub const AGGREGATOR_DEDUP_IDS: &str = "orderflow_aggregator_dedup_ids";
/// Histogram: seconds to read and decode the checkpoints of partitions taken over.
pub const AGGREGATOR_RESTORE_SECONDS: &str = "orderflow_aggregator_restore_duration_seconds";
/// Gauge: the longest take-over (see [`AGGREGATOR_RESTORE_SECONDS`]) since the process
/// started, in seconds.
pub const AGGREGATOR_RESTORE_MAX_SECONDS: &str = "orderflow_aggregator_restore_duration_max_seconds";
/// Gauge: the largest checkpoint written since the process started, in bytes.
pub const AGGREGATOR_CHECKPOINT_MAX_BYTES: &str = "orderflow_aggregator_checkpoint_size_max_bytes";
/// Counter: input records reread on restore to rebuild the dedup memory (the stretch
/// a checkpoint's admission log names).
pub const AGGREGATOR_REREAD_RECORDS: &str = "orderflow_aggregator_restore_reread_records_total";
/// Counter: event ids a checkpoint's admission log names that the restore did not find
/// in the input (retention shorter than the dedup horizon): their duplicates, if any
/// come, are counted again.
pub const AGGREGATOR_REREAD_MISSING: &str = "orderflow_aggregator_restore_missing_ids_total";
/// Counter: bytes of the enriched records the aggregator's partitions loop read (key plus
/// payload), to compare with what its checkpoints write
/// ([`AGGREGATOR_CHECKPOINT_BYTES`]).
pub const AGGREGATOR_INPUT_BYTES: &str = "orderflow_aggregator_input_bytes_total";
/// Open-window snapshots the aggregator's partitions wrote (see [`OPEN_WINDOW_AMOUNT`]).
pub const AGGREGATOR_OPEN_SNAPSHOTS: &str = "orderflow_aggregator_open_snapshots_total";

/// Partial totals the merger read. Labels: `outcome` (accepted, repeated, corrected: new to a
/// window already published, whose total was re-published corrected; too_late: for a window
/// older than the merger keeps, not merged; conflict; stray_progress: a progress record
/// for partitions other than the enriched topic's, ignored).
pub const MERGER_PARTIALS: &str = "orderflow_merger_partials_total";
/// Merger checkpoints written. Labels: `outcome` (written; refused: the broker refused
/// it, the previous one stays in force).
pub const MERGER_CHECKPOINTS: &str = "orderflow_merger_checkpoints_total";
/// Histogram: seconds for a merger taking over the partial-totals topic to read and
/// restore the newest merger checkpoint.
pub const MERGER_RESTORE_SECONDS: &str = "orderflow_merger_restore_duration_seconds";
/// Partial-totals records a merger read after it took over, up to the end of the topic
/// as it was then (with a checkpoint: only the records after the offset it covers).
pub const MERGER_RESTORE_RECORDS: &str = "orderflow_merger_restore_records_total";
/// Windows merged and published to the totals topic.
pub const WINDOWS_CLOSED: &str = "orderflow_windows_closed_total";
/// Events in closed windows. Labels: `region`, `tier`, `type`.
pub const WINDOW_EVENTS: &str = "orderflow_window_events_total";
/// Amount in closed windows, in minor units. Labels: `region`, `tier`, `currency`, `type`.
pub const WINDOW_AMOUNT: &str = "orderflow_window_amount_minor_total";
/// End of the newest window merged, seconds since the epoch.
pub const WINDOW_LAST_CLOSED_END: &str = "orderflow_window_last_closed_end_seconds";
/// Gauge: events in windows still open (their final total not yet published), summed
/// over every input partition: the provisional figures. Labels: `region`, `tier`, `type`.
/// [`WINDOW_EVENTS`] plus this is "events so far", each event counted once.
pub const OPEN_WINDOW_EVENTS: &str = "orderflow_open_window_events";
/// Gauge: amount in windows still open, in minor units, summed over every input
/// partition. Labels: `region`, `tier`, `currency`, `type`. [`WINDOW_AMOUNT`] plus this
/// is "GMV so far": a window's amount leaves this gauge in the same step (as seen by a
/// scrape) as its final total enters the counter.
pub const OPEN_WINDOW_AMOUNT: &str = "orderflow_open_window_amount_minor";
/// Histogram: seconds from the broker timestamp of a window's newest event (the
/// orders-topic record's, carried onto the enriched record) to the window's total
/// being published by the merger; one observation per window.
pub const END_TO_END_LATENCY: &str = "orderflow_end_to_end_latency_seconds";
/// Histogram: seconds from the broker timestamp of the newest event an open-window
/// snapshot includes to the merger taking the snapshot into the provisional figures;
/// one observation per snapshot.
pub const PROVISIONAL_LATENCY: &str = "orderflow_provisional_latency_seconds";
/// Open-window snapshots the merger read. Labels: `outcome` (applied; stray: for
/// partitions other than the enriched topic's, ignored).
pub const MERGER_OPEN_SNAPSHOTS: &str = "orderflow_merger_open_snapshots_total";

/// HTTP requests `orderflow ingest` answered. Labels: `route` (`/v1/events`), `status`
/// (the HTTP status code).
pub const INGEST_REQUESTS: &str = "orderflow_ingest_requests_total";
/// Events in requests `orderflow ingest` judged. Labels: `outcome` (accepted,
/// rejected), `reason` (`none` when accepted, else the rejection's code: a validation
/// reason, `invalid_json`, `foreign_storefront`, `refused_by_broker`). Events of
/// requests refused whole (401, 413, 429, 503) are not counted here.
pub const INGEST_EVENTS: &str = "orderflow_ingest_events_total";
/// Histogram: seconds from a request's arrival to its answer. Labels: `route`.
pub const INGEST_REQUEST_SECONDS: &str = "orderflow_ingest_request_duration_seconds";
/// Histogram: seconds from handing a request's accepted events to the producer until
/// the broker acknowledged them all.
pub const INGEST_ACK_SECONDS: &str = "orderflow_ingest_broker_ack_duration_seconds";
/// Request body bytes received, as sent (compressed or not). Labels: `encoding`
/// (identity, gzip, zstd).
pub const INGEST_BYTES: &str = "orderflow_ingest_received_bytes_total";
/// Gauge: requests being answered now.
pub const INGEST_IN_FLIGHT: &str = "orderflow_ingest_requests_in_flight";
/// Loads of the tokens file. Labels: `outcome` (loaded, failed: the previous tokens
/// stay in force).
pub const INGEST_TOKEN_RELOADS: &str = "orderflow_ingest_token_reloads_total";

/// Describes every metric once, so `/metrics` carries HELP and TYPE lines.
pub fn describe() {
    describe_counter!(
        INGEST_REQUESTS,
        Unit::Count,
        "HTTP requests answered by ingest, by route, status code and refusal code (`none` unless refused whole)."
    );
    describe_counter!(INGEST_EVENTS, Unit::Count, "Events judged by ingest, by outcome (accepted, rejected) and reason.");
    describe_histogram!(INGEST_REQUEST_SECONDS, Unit::Seconds, "Time from a request's arrival to its answer, by route.");
    describe_histogram!(INGEST_ACK_SECONDS, Unit::Seconds, "Time for the broker to acknowledge every accepted event of a request.");
    describe_counter!(INGEST_BYTES, Unit::Bytes, "Request body bytes received by ingest, as sent, by content encoding.");
    describe_gauge!(INGEST_IN_FLIGHT, Unit::Count, "Ingest requests being answered now.");
    describe_counter!(INGEST_TOKEN_RELOADS, Unit::Count, "Loads of the ingest tokens file, by outcome (loaded, failed).");
    describe_counter!(PRODUCER_EVENTS, Unit::Count, "Events published by replay or the producer API, by outcome.");
    describe_counter!(PRODUCER_INVALID_LINES, Unit::Count, "Trace lines skipped because they are not an OrderEvent in canonical JSON.");
    describe_counter!(ENRICHER_EVENTS, Unit::Count, "Raw order events read by the enricher.");
    describe_counter!(
        ENRICHER_RECORDS,
        Unit::Count,
        "Orders-topic records read by the enricher, by format (protobuf, schema_registry: Confluent Schema Registry framing)."
    );
    describe_counter!(
        ENRICHER_UNKNOWN_MERCHANT,
        Unit::Count,
        "Events whose merchant is not in the table (enriched as region and tier unknown)."
    );
    describe_gauge!(ENRICHER_MERCHANTS, Unit::Count, "Merchants in the enricher's table.");
    describe_gauge!(READY, Unit::Count, "1 while the service is ready (merchants loaded, partitions assigned and restored), else 0.");
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Records between the consumer's position and the partition's end, by service, topic and partition."
    );
    describe_counter!(REBALANCES, Unit::Count, "Consumer-group rebalances, by service and kind (assign, revoke).");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Time to process one batch and deliver its outputs, by service.");
    describe_counter!(RECORDS_CONSUMED, Unit::Count, "Kafka records read by the service's consumers, by service.");
    describe_counter!(RECORDS_PRODUCED, Unit::Count, "Kafka records written and acknowledged by the broker, by service.");
    describe_gauge!(PRODUCER_QUEUE, Unit::Count, "Records in the producer's queue (librdkafka msg_cnt), by service.");
    describe_counter!(
        KAFKA_ERRORS,
        Unit::Count,
        "Kafka client errors (error callback and failed deliveries), by service and librdkafka error code."
    );
    describe_gauge!(ENRICHER_MERCHANTS_LOADED, Unit::Count, "1 once the enricher's initial merchant load is complete, else 0.");
    describe_gauge!(AGGREGATOR_RESTORE_MAX_SECONDS, Unit::Seconds, "Longest take-over of partitions since the process started.");
    describe_gauge!(AGGREGATOR_CHECKPOINT_MAX_BYTES, Unit::Bytes, "Largest partition checkpoint written since the process started.");
    describe_counter!(AGGREGATOR_INPUT_BYTES, Unit::Bytes, "Bytes (key plus payload) of the enriched records the aggregator read.");
    describe_counter!(AGGREGATOR_OPEN_SNAPSHOTS, Unit::Count, "Snapshots of open windows written for the provisional figures.");
    describe_counter!(MERGER_OPEN_SNAPSHOTS, Unit::Count, "Open-window snapshots read by the merger, by outcome.");
    describe_gauge!(
        OPEN_WINDOW_EVENTS,
        Unit::Count,
        "Events in windows not yet published (provisional), summed over partitions, by region, tier and type."
    );
    describe_gauge!(
        OPEN_WINDOW_AMOUNT,
        Unit::Count,
        "Amount in windows not yet published (provisional) in the currency's minor unit, by region, tier, currency and type."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Broker timestamp of a window's newest event to the window's total published, one observation per window."
    );
    describe_histogram!(
        PROVISIONAL_LATENCY,
        Unit::Seconds,
        "Broker timestamp of a snapshot's newest event to the snapshot in the provisional figures."
    );
    describe_gauge!(AGGREGATOR_EVENT_TIME_LAG, Unit::Seconds, "Wall clock minus the partition's watermark.");
    describe_gauge!(AGGREGATOR_PARTITIONS_OWNED, Unit::Count, "Input partitions this aggregator owns.");
    describe_histogram!(AGGREGATOR_CHECKPOINT_SECONDS, Unit::Seconds, "Time to write and settle one round of checkpoints.");
    describe_counter!(
        ENRICHER_MERCHANTS_REFUSED,
        Unit::Count,
        "Merchant records refused (empty, too long, bad characters, reserved, undecodable), by reason."
    );
    describe_counter!(ENRICHER_MERCHANT_UPDATES, Unit::Count, "Merchant records applied from the merchants topic.");
    describe_counter!(DEAD_LETTER_EVENTS, Unit::Count, "Events sent to the dead-letter topic, by stage and reason.");
    describe_counter!(DEAD_LETTER_REFUSED, Unit::Count, "Dead letters the dead-letter topic refused (lost, and logged), by stage.");
    describe_counter!(
        AGGREGATOR_EVENTS,
        Unit::Count,
        "Enriched events read by the aggregator, by outcome (counted, duplicate, late, invalid)."
    );
    describe_counter!(AGGREGATOR_PARTITION_WINDOWS_CLOSED, Unit::Count, "Windows closed on input partitions.");
    describe_gauge!(AGGREGATOR_OPEN_WINDOWS, Unit::Count, "Open windows held over owned partitions.");
    describe_gauge!(AGGREGATOR_WATERMARK, Unit::Seconds, "Highest event time seen per partition.");
    describe_counter!(AGGREGATOR_IDLE_TICKS, Unit::Count, "Idle ticks written because a partition was quiet.");
    describe_counter!(AGGREGATOR_CHECKPOINTS, Unit::Count, "Partition checkpoints written.");
    describe_histogram!(AGGREGATOR_CHECKPOINT_BYTES, Unit::Bytes, "Size of each partition checkpoint.");
    describe_counter!(AGGREGATOR_RESTORES, Unit::Count, "Partitions taken over, from a checkpoint or from scratch.");
    describe_counter!(
        AGGREGATOR_BOUND_REFUSALS,
        Unit::Count,
        "Events refused because a partition's dedup memory or a window's keys were at their bound (dead-lettered), by reason."
    );
    describe_gauge!(AGGREGATOR_DEDUP_IDS, Unit::Count, "Event ids held for dedup per input partition (bound: --dedup-max-ids).");
    describe_counter!(
        AGGREGATOR_CHECKPOINT_FAILURES,
        Unit::Count,
        "Checkpoints the broker refused; the previous checkpoint and committed offset stay in force."
    );
    describe_histogram!(
        AGGREGATOR_RESTORE_SECONDS,
        Unit::Seconds,
        "Time to take partitions over: read their checkpoints and reread the input their dedup memory is rebuilt from."
    );
    describe_counter!(AGGREGATOR_REREAD_RECORDS, Unit::Count, "Input records reread on restore to rebuild the dedup memory.");
    describe_counter!(
        AGGREGATOR_REREAD_MISSING,
        Unit::Count,
        "Event ids a checkpoint names that the restore did not find in the input (retention shorter than the dedup horizon)."
    );
    describe_counter!(MERGER_PARTIALS, Unit::Count, "Partial totals read by the merger, by outcome.");
    describe_counter!(MERGER_CHECKPOINTS, Unit::Count, "Merger checkpoints written (or refused), by outcome.");
    describe_histogram!(
        MERGER_RESTORE_SECONDS,
        Unit::Seconds,
        "Time for a merger taking over to read and restore the newest merger checkpoint."
    );
    describe_counter!(
        MERGER_RESTORE_RECORDS,
        Unit::Count,
        "Partial-totals records read by a merger taking over, up to the topic's end when it took over."
    );
    describe_counter!(WINDOWS_CLOSED, Unit::Count, "Windows merged over all partitions and published.");
    describe_counter!(WINDOW_EVENTS, Unit::Count, "Events in closed windows, by region, tier and type.");
    describe_counter!(
        WINDOW_AMOUNT,
        Unit::Count,
        "Amount in closed windows in the currency's minor unit, by region, tier, currency and type."
    );
    describe_gauge!(WINDOW_LAST_CLOSED_END, Unit::Seconds, "End of the newest window merged.");
}

/// Whether a service is ready to do its work, for `/readyz` and [`READY`]: not ready
/// until it says so (merchants loaded, partitions assigned and restored).
#[derive(Debug, Clone)]
pub struct Readiness {
    service: &'static str,
    state: Arc<Mutex<std::result::Result<(), String>>>,
}

impl Readiness {
    /// Ready.
    pub fn ready(&self) {
        self.set(Ok(()));
    }

    /// Not ready, and why (shown by `/readyz`).
    pub fn not_ready(&self, why: impl Into<String>) {
        self.set(Err(why.into()));
    }

    /// Whether ready now.
    pub fn is_ready(&self) -> bool {
        self.state.lock().expect("readiness poisoned").is_ok()
    }

    fn set(&self, state: std::result::Result<(), String>) {
        metrics::gauge!(READY, "service" => self.service).set(if state.is_ok() { 1.0 } else { 0.0 });
        *self.state.lock().expect("readiness poisoned") = state;
    }
}

fn registry() -> &'static Mutex<BTreeMap<&'static str, Readiness>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<&'static str, Readiness>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The readiness of `service` in this process (registered, not ready, on first use):
/// `/readyz` answers 200 only while every registered service is ready.
pub fn readiness(service: &'static str) -> Readiness {
    registry()
        .lock()
        .expect("readiness registry poisoned")
        .entry(service)
        .or_insert_with(|| {
            let r = Readiness { service, state: Arc::new(Mutex::new(Err("starting".into()))) };
            metrics::gauge!(READY, "service" => service).set(0.0);
            r
        })
        .clone()
}

/// What `/readyz` answers: every registered service ready, else why not. Not ready
/// while no service has registered yet (the metrics server starts first: a probe
/// must not find the process ready before its service has even begun).
fn ready_report() -> std::result::Result<String, String> {
    let services = registry().lock().expect("readiness registry poisoned").clone();
    if services.is_empty() {
        return Err("starting\n".into());
    }
    let mut lines = Vec::new();
    let mut all = true;
    for (service, r) in &services {
        match &*r.state.lock().expect("readiness poisoned") {
            Ok(()) => lines.push(format!("{service}: ready")),
            Err(why) => {
                all = false;
                lines.push(format!("{service}: not ready: {why}"));
            }
        }
    }
    let report = lines.join("\n") + "\n";
    if all {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Buckets (upper bounds) of the histograms in seconds: 1 ms to 10 minutes, about
/// three per decade, so that latencies from a batch's milliseconds to a window's
/// minute (plus lateness) all land in a bucket of their own.
pub const SECONDS_BUCKETS: [f64; 19] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 75.0, 120.0, 300.0, 600.0];

/// Buckets of [`AGGREGATOR_CHECKPOINT_BYTES`]: 1 KiB to 256 MiB, by powers of four.
pub const BYTES_BUCKETS: [f64; 10] =
    [1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0, 268435456.0];

/// The exporter: every histogram a real Prometheus histogram (`_bucket{le}`, `_sum`,
/// `_count`), so that instances aggregate in PromQL
/// (`histogram_quantile(0.99, sum by (le) (rate(X_bucket[1m])))`).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(AGGREGATOR_CHECKPOINT_BYTES.to_owned()), &BYTES_BUCKETS))
        .expect("buckets are not empty")
}

/// The lock that makes a group of metric updates one step as a scrape sees it: the
/// merger moving a window from the provisional gauges to the final counters holds it
/// ([`consistently`]), and so does `/metrics` while it renders, so no scrape sees the
/// window in both or in neither.
fn step_lock() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// Runs `f` (metric updates) so that no `/metrics` render sees part of them.
pub fn consistently<R>(f: impl FnOnce() -> R) -> R {
    let _guard = step_lock().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f()
}

/// The Prometheus text, rendered between steps (see [`consistently`]).
pub fn render(handle: &PrometheusHandle) -> String {
    consistently(|| handle.render())
}

/// Serves, at `addr`, Prometheus text at `/metrics`, liveness at `/healthz` (200 while
/// the process's runtime answers: a service whose task fails exits) and readiness at
/// `/readyz` (200 while every service in the process is ready, else 503 saying why), and
/// describes every metric. Must be called within a Tokio runtime; the server runs until
/// the process ends.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let handle: PrometheusHandle = builder().install_recorder().map_err(|e| Error::Metrics { addr, reason: e.to_string() })?;
    describe();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Metrics { addr, reason: e.to_string() })?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(render(&handle))))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                match ready_report() {
                    Ok(report) => (StatusCode::OK, report),
                    Err(report) => (StatusCode::SERVICE_UNAVAILABLE, report),
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "The metrics and health server stopped.");
        }
    });
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default` (e.g. `info`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test here touching the process-wide registry: before any service
    /// registers, the process is not ready; then it is ready exactly when its service is.
    #[test]
    fn not_ready_until_a_service_registers_and_says_so() {
        assert_eq!(ready_report(), Err("starting\n".to_owned()));
        let r = readiness("tested");
        assert_eq!(ready_report(), Err("tested: not ready: starting\n".to_owned()));
        r.ready();
        assert_eq!(ready_report(), Ok("tested: ready\n".to_owned()));
        r.not_ready("partitions being assigned");
        assert_eq!(ready_report(), Err("tested: not ready: partitions being assigned\n".to_owned()));
    }
}
