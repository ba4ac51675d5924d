//! Metric names (Prometheus conventions: `orderflow_<component>_<what>_<unit>`, counters
//! end in `_total`), their descriptions, the exporter, and tracing.
//!
//! Labels are bounded sets only: `reason`, `outcome`, `region`, `tier`, `currency`,
//! `type`, `partition`. Never merchant, order or event ids.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::{Error, Result};

/// Events published by `replay`. Labels: `outcome` (sent, refused).
pub const PRODUCER_EVENTS: &str = "orderflow_producer_events_total";
/// Trace lines `replay` skipped because they are not an `OrderEvent` in JSON.
pub const PRODUCER_INVALID_LINES: &str = "orderflow_producer_invalid_lines_total";

/// Raw events read by the enricher.
pub const ENRICHER_EVENTS: &str = "orderflow_enricher_events_total";
/// Events enriched with an unknown merchant (region and tier `unknown`).
pub const ENRICHER_UNKNOWN_MERCHANT: &str = "orderflow_enricher_unknown_merchant_events_total";
/// Merchants in the enricher's table.
pub const ENRICHER_MERCHANTS: &str = "orderflow_enricher_merchants";
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
/// Gauge: event ids remembered for dedup, per input partition (its bound is
/// `--dedup-max-ids`). Labels: `partition`.
pub const AGGREGATOR_DEDUP_IDS: &str = "orderflow_aggregator_dedup_ids";
/// Histogram: seconds to read and decode the checkpoints of partitions taken over.
pub const AGGREGATOR_RESTORE_SECONDS: &str = "orderflow_aggregator_restore_duration_seconds";

/// Partial totals the merger read. Labels: `outcome` (accepted, repeated, corrected: new to a
/// window already published, whose total was re-published corrected; too_late: for a window
/// older than the merger keeps, not merged; conflict).
pub const MERGER_PARTIALS: &str = "orderflow_merger_partials_total";
/// Windows merged and published to the totals topic.
pub const WINDOWS_CLOSED: &str = "orderflow_windows_closed_total";
/// Events in closed windows. Labels: `region`, `tier`, `type`.
pub const WINDOW_EVENTS: &str = "orderflow_window_events_total";
/// Amount in closed windows, in minor units. Labels: `region`, `tier`, `currency`, `type`.
pub const WINDOW_AMOUNT: &str = "orderflow_window_amount_minor_total";
/// End of the newest window merged, seconds since the epoch.
pub const WINDOW_LAST_CLOSED_END: &str = "orderflow_window_last_closed_end_seconds";

/// Describes every metric once, so `/metrics` carries HELP and TYPE lines.
pub fn describe() {
    describe_counter!(PRODUCER_EVENTS, Unit::Count, "Events published by replay or the producer API, by outcome.");
    describe_counter!(PRODUCER_INVALID_LINES, Unit::Count, "Trace lines skipped because they are not an OrderEvent in canonical JSON.");
    describe_counter!(ENRICHER_EVENTS, Unit::Count, "Raw order events read by the enricher.");
    describe_counter!(
        ENRICHER_UNKNOWN_MERCHANT,
        Unit::Count,
        "Events whose merchant is not in the table (enriched as region and tier unknown)."
    );
    describe_gauge!(ENRICHER_MERCHANTS, Unit::Count, "Merchants in the enricher's table.");
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
    describe_histogram!(AGGREGATOR_RESTORE_SECONDS, Unit::Seconds, "Time to read and decode the checkpoints of partitions taken over.");
    describe_counter!(MERGER_PARTIALS, Unit::Count, "Partial totals read by the merger, by outcome.");
    describe_counter!(WINDOWS_CLOSED, Unit::Count, "Windows merged over all partitions and published.");
    describe_counter!(WINDOW_EVENTS, Unit::Count, "Events in closed windows, by region, tier and type.");
    describe_counter!(
        WINDOW_AMOUNT,
        Unit::Count,
        "Amount in closed windows in the currency's minor unit, by region, tier, currency and type."
    );
    describe_gauge!(WINDOW_LAST_CLOSED_END, Unit::Seconds, "End of the newest window merged.");
}

/// Serves Prometheus text at `http://addr/metrics` and describes every metric.
/// Must be called within a Tokio runtime.
pub fn install_prometheus(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new().with_http_listener(addr).install().map_err(|e| Error::Metrics { addr, reason: e.to_string() })?;
    describe();
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default` (e.g. `info`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
