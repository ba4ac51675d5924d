//! The enricher's per-event work, single-threaded: decode and validate an `OrderEvent`,
//! join it with its merchant (200,000 merchants, Zipf-popular), encode the
//! `EnrichedRecord`, as `orderflow-enricher`'s pipeline does (without Kafka and
//! metrics): borrowed views and the output spliced around the payload (`pipeline`), and
//! the former prost decode and re-encode as a baseline (`pipeline_prost`). Plus each
//! step alone, to show where the time goes.
//!
//! `cargo bench -p orderflow-benches --bench enrich`

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orderflow_benches::enrich::{encoded, merchant_table, order_events, EVENTS, MERCHANTS};
use orderflow_core::validate::{decode_and_validate_view, validate, InvalidReason};
use orderflow_proto::v1::{enriched_record, EnrichedRecord, OrderEvent};
use orderflow_proto::{timestamp_millis, Message};

/// Events per measured iteration: the enricher's default batch.
const BATCH: usize = 5_000;

fn at(e: &OrderEvent) -> i64 {
    e.event_time.as_ref().map_or(i64::MIN, timestamp_millis)
}

/// `decode_and_validate` as it was before borrowed views: prost decoding into an owned
/// `OrderEvent` (six `String`s), then the rules.
fn decode_and_validate_prost(payload: &[u8]) -> Result<OrderEvent, InvalidReason> {
    let event = OrderEvent::decode(payload).map_err(|e| InvalidReason::Undecodable(e.to_string()))?;
    validate(&event)?;
    Ok(event)
}

/// Cycles through `0..len`.
fn next(i: &mut usize, len: usize) -> usize {
    let current = *i;
    *i = if current + 1 == len { 0 } else { current + 1 };
    current
}

fn enrich(c: &mut Criterion) {
    let table = merchant_table(MERCHANTS);
    let events = order_events(1111, EVENTS, MERCHANTS);
    let payloads = encoded(&events);
    let known = events.iter().filter(|e| table.lookup(&e.merchant_id, at(e)).is_some()).count();
    let distinct = events.iter().map(|e| e.merchant_id.as_str()).collect::<HashSet<_>>().len();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    eprintln!(
        "enrich workload: {} merchants ({} versions), {} events cycling, {} distinct merchants in them, {:.1}% known, {:.1} bytes an event",
        table.len(),
        table.versions(),
        events.len(),
        distinct,
        100.0 * known as f64 / events.len() as f64,
        bytes as f64 / events.len() as f64
    );

    let mut group = c.benchmark_group("enrich");
    group.throughput(Throughput::Elements(BATCH as u64));

    // The whole per-event work, as in crates/orderflow-enricher/src/pipeline.rs: the
    // payload parsed as a borrowed view, validated, joined, and the output record built
    // around the payload's bytes (`MerchantTable::enrich_payload`).
    let mut i = 0;
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::with_capacity(BATCH);
    // The enricher checks its limits too; a clock past every event time of the workload.
    let limits = orderflow_core::validate::Limits::default();
    group.bench_function("pipeline", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let payload = &payloads[next(&mut i, payloads.len())];
                match table.enrich_payload(payload, &limits, i64::MAX) {
                    Ok(enriched) => outputs.push((enriched.key, enriched.value)),
                    Err(reason) => panic!("the workload holds only valid events: {reason}"),
                }
            }
            black_box(&outputs);
            outputs.clear();
        })
    });

    // The baseline: the pipeline before views, with prost decoding into an owned event
    // and re-encoding the whole `EnrichedRecord`.
    let mut i = 0;
    group.bench_function("pipeline_prost", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let payload = &payloads[next(&mut i, payloads.len())];
                match decode_and_validate_prost(payload) {
                    Ok(event) => {
                        let enriched = table.enrich(event);
                        let key = enriched.event.as_ref().map(|e| e.order_id.clone()).unwrap_or_default();
                        let value = EnrichedRecord { kind: Some(enriched_record::Kind::Event(enriched)) }.encode_to_vec();
                        outputs.push((key, value));
                    }
                    Err(reason) => panic!("the workload holds only valid events: {reason}"),
                }
            }
            black_box(&outputs);
            outputs.clear();
        })
    });

    // Each step alone.
    let mut i = 0;
    group.bench_function("decode_validate", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(decode_and_validate_view(&payloads[next(&mut i, payloads.len())]).is_ok());
            }
        })
    });
    let mut i = 0;
    group.bench_function("decode_validate_prost", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(decode_and_validate_prost(&payloads[next(&mut i, payloads.len())]).is_ok());
            }
        })
    });
    let mut i = 0;
    group.bench_function("merchant_lookup", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let e = &events[next(&mut i, events.len())];
                black_box(table.lookup(&e.merchant_id, at(e)));
            }
        })
    });
    let records: Vec<EnrichedRecord> =
        events.iter().map(|e| EnrichedRecord { kind: Some(enriched_record::Kind::Event(table.enrich(e.clone()))) }).collect();
    let mut i = 0;
    group.bench_function("encode_enriched", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(records[next(&mut i, records.len())].encode_to_vec());
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(8));
    targets = enrich
}
criterion_main!(benches);
