//! A restore's own work on one partition, without Kafka: the aggregator's stream
//! (see `aggregate`) is applied for 78 s of event time (900,000 events, ~11,500/s, a
//! third more than the 2019 peak's 8,500 per partition over 64) and checkpointed; a
//! restore from that checkpoint then rereads the stretch its admission log names, as
//! `checkpoint::reread` does: `wants` says whether a record is wanted, the wanted
//! ones are parsed as views and `reread`, which remembers their ids again.
//!
//! - `reread`: `PartitionState::restore` plus the reread of the stretch and
//!   `finish` (every admitted id must be found: checked once before measuring).
//! - `parse_only`: the baseline, parsing the same records as views and nothing else.
//!
//! `cargo bench -p orderflow-benches --bench restore`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orderflow_benches::aggregate::{self, CYCLE_EVENTS};
use orderflow_benches::{aggregator_default_spec, BENCH_DEDUP_KEY};
use orderflow_core::partition::PartitionState;
use orderflow_core::wire::{EnrichedKind, EnrichedView};
use orderflow_proto::v1::PartitionCheckpoint;

/// Restores `cp` and rereads `payloads[from..end]` (offset = index); returns the ids found.
fn restore_and_reread(cp: &PartitionCheckpoint, payloads: &[Vec<u8>]) -> (u64, u64) {
    let (spec, bounds) = aggregator_default_spec();
    let mut restoring = PartitionState::restore(cp, spec, bounds).expect("restores");
    let (from, end) = restoring.reread_span().expect("a stretch to reread");
    for offset in from..end {
        if restoring.wants(offset) {
            if let Ok(EnrichedView { kind: Some(EnrichedKind::Event(e)) }) = EnrichedView::parse(&payloads[offset as usize]) {
                restoring.reread(offset, &e);
            }
        }
    }
    let counts = restoring.counts();
    let state = restoring.finish();
    black_box(&state);
    (counts.admitted, counts.found)
}

fn bench(c: &mut Criterion) {
    let events = aggregate::events(CYCLE_EVENTS);
    let payloads = aggregate::encoded(&events);
    let (spec, bounds) = aggregator_default_spec();
    let mut state = PartitionState::new(spec, bounds, BENCH_DEDUP_KEY);
    let mut closed = Vec::new();
    for (offset, payload) in payloads.iter().enumerate() {
        if let Ok(EnrichedView { kind: Some(EnrichedKind::Event(e)) }) = EnrichedView::parse(payload) {
            let prepared = state.prepare(&e);
            state.apply_prepared_at(offset as i64, &e, prepared, &mut closed);
        }
    }
    let cp = state.checkpoint("orderflow.enriched", 0, payloads.len() as i64);
    let (admitted, found) = restore_and_reread(&cp, &payloads);
    assert_eq!(found, admitted, "every admitted id is found again");
    let (from, end) = PartitionState::restore(&cp, spec, bounds).unwrap().reread_span().unwrap();
    let stretch = &payloads[from as usize..end as usize];
    eprintln!("restore: {} records reread, {admitted} ids remembered again", stretch.len());

    let mut group = c.benchmark_group("restore");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(stretch.len() as u64));
    group.bench_function("reread", |b| b.iter(|| restore_and_reread(&cp, &payloads)));
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for payload in stretch {
                if let Ok(EnrichedView { kind: Some(EnrichedKind::Event(e)) }) = EnrichedView::parse(payload) {
                    n += e.event.map_or(0, |e| e.event_id.len() as u64);
                }
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
