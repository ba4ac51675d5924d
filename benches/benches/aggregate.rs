//! The aggregator's per-event work on one partition, single-threaded: decode an
//! `EnrichedRecord` and `PartitionState::apply` it (window 1m, lateness 5s, dedup
//! horizon 65s: the aggregator's defaults), as `orderflow-aggregator`'s partition loop
//! does (without Kafka and metrics): as borrowed views prepared a chunk at a time
//! (`decode_apply_batched`, the aggregator's path) or one at a time (`decode_apply`), as before
//! with prost into an owned record (`decode_apply_prost`, the baseline) or into one
//! reused record (`decode_reuse_apply`); and `apply` alone on already-decoded events.
//!
//! The stream's event time advances (about 11,538 events per second), so windows close
//! and dedup entries expire as in a real run: the state stays at its steady size.
//! The benchmark cycles through 900,000 pre-generated events (78 s of event time) and
//! moves each cycle 78 s later than the previous one.
//!
//! `cargo bench -p orderflow-benches --bench aggregate`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orderflow_benches::aggregate::{self, shift, CYCLE_EVENTS, CYCLE_MS};
use orderflow_benches::{aggregator_default_spec, BENCH_DEDUP_KEY};
use orderflow_core::partition::{Outcome, PartitionState};
use orderflow_core::validate::InvalidReason;
use orderflow_core::wire::{EnrichedKind, EnrichedView};
use orderflow_proto::v1::{enriched_record, EnrichedOrderEvent, EnrichedRecord};
use orderflow_proto::Message;

/// Events per measured iteration: the aggregator's default batch.
const BATCH: usize = 5_000;
const CYCLE_S: i64 = CYCLE_MS / 1000;

/// One partition's state and where it is in the cycling stream.
struct Partition {
    state: PartitionState,
    pos: usize,
    cycle: i64,
    /// Counted, duplicate, late, invalid.
    outcomes: [u64; 4],
    closed_windows: u64,
}

impl Partition {
    fn new() -> Self {
        let (spec, bounds) = aggregator_default_spec();
        Self { state: PartitionState::new(spec, bounds, BENCH_DEDUP_KEY), pos: 0, cycle: 0, outcomes: [0; 4], closed_windows: 0 }
    }

    fn record(&mut self, outcome: Outcome) {
        let i = match outcome {
            Outcome::Counted { .. } => 0,
            Outcome::Duplicate => 1,
            Outcome::Late { .. } => 2,
            Outcome::Invalid | Outcome::Refused(_) => 3,
        };
        self.outcomes[i] += 1;
    }

    fn advance(&mut self, len: usize) {
        self.pos += 1;
        if self.pos == len {
            self.pos = 0;
            self.cycle += 1;
        }
    }

    /// Parses the next `n` payloads as borrowed views and applies them, as the
    /// aggregator's `process` does.
    fn decode_apply(&mut self, payloads: &[Vec<u8>], n: usize) {
        for _ in 0..n {
            let mut closed = Vec::new();
            let record = EnrichedView::parse(payloads[self.pos].as_slice());
            match record.map(|r| r.kind) {
                Ok(Some(EnrichedKind::Event(mut e))) => {
                    if let Some(t) = e.event.as_mut().and_then(|ev| ev.event_time.as_mut()) {
                        t.seconds += self.cycle * CYCLE_S;
                    }
                    let outcome = self.state.apply_view(&e, &mut closed);
                    self.record(outcome);
                }
                _ => unreachable!("the workload holds only events"),
            }
            self.closed_windows += closed.len() as u64;
            black_box(closed);
            self.advance(payloads.len());
        }
    }

    /// Like [`Self::decode_apply`], but a chunk at a time, as the aggregator's loop does:
    /// parses the chunk's views, prepares them all (fingerprints looked up in the dedup
    /// memory, so the cache misses overlap), then applies them in order.
    fn decode_apply_batched(&mut self, payloads: &[Vec<u8>], n: usize) {
        const CHUNK: usize = 32;
        let mut views = Vec::with_capacity(CHUNK);
        let mut prepared = Vec::with_capacity(CHUNK);
        let mut done = 0;
        while done < n {
            views.clear();
            let (mut pos, mut cycle) = (self.pos, self.cycle);
            while views.len() < CHUNK.min(n - done) {
                match EnrichedView::parse(payloads[pos].as_slice()).map(|r| r.kind) {
                    Ok(Some(EnrichedKind::Event(mut e))) => {
                        if let Some(t) = e.event.as_mut().and_then(|ev| ev.event_time.as_mut()) {
                            t.seconds += cycle * CYCLE_S;
                        }
                        views.push(e);
                    }
                    _ => unreachable!("the workload holds only events"),
                }
                pos += 1;
                if pos == payloads.len() {
                    pos = 0;
                    cycle += 1;
                }
            }
            prepared.clear();
            prepared.extend(views.iter().map(|e| self.state.prepare(e)));
            for (e, p) in views.iter().zip(&prepared) {
                let mut closed = Vec::new();
                let outcome = self.state.apply_prepared(e, *p, &mut closed);
                self.record(outcome);
                self.closed_windows += closed.len() as u64;
                black_box(closed);
                self.advance(payloads.len());
            }
            done += views.len();
        }
    }

    /// The baseline: decodes with prost into an owned record and applies it, as the
    /// aggregator did before borrowed views.
    fn decode_apply_prost(&mut self, payloads: &[Vec<u8>], n: usize) {
        for _ in 0..n {
            let mut closed = Vec::new();
            let record = EnrichedRecord::decode(payloads[self.pos].as_slice()).map_err(|e| InvalidReason::Undecodable(e.to_string()));
            match record.map(|r| r.kind) {
                Ok(Some(enriched_record::Kind::Event(mut e))) => {
                    shift(&mut e, self.cycle * CYCLE_S);
                    let outcome = self.state.apply(&e, &mut closed);
                    self.record(outcome);
                }
                _ => unreachable!("the workload holds only events"),
            }
            self.closed_windows += closed.len() as u64;
            black_box(closed);
            self.advance(payloads.len());
        }
    }

    /// Like [`Self::decode_apply`], but decodes into one reused record, so that decoding
    /// allocates nothing once its strings have grown (a proposed aggregator change: every
    /// field is reset first, since `merge` keeps fields absent from the payload).
    fn decode_reuse_apply(&mut self, payloads: &[Vec<u8>], record: &mut EnrichedRecord, n: usize) {
        for _ in 0..n {
            let mut closed = Vec::new();
            reset(record);
            record.merge(payloads[self.pos].as_slice()).expect("the workload decodes");
            match &mut record.kind {
                Some(enriched_record::Kind::Event(e)) => {
                    shift(e, self.cycle * CYCLE_S);
                    let outcome = self.state.apply(e, &mut closed);
                    self.record(outcome);
                }
                _ => unreachable!("the workload holds only events"),
            }
            self.closed_windows += closed.len() as u64;
            black_box(closed);
            self.advance(payloads.len());
        }
    }

    /// Applies the next `n` already-decoded events (moving each one cycle later in event
    /// time each time it comes round again).
    fn apply_decoded(&mut self, events: &mut [EnrichedOrderEvent], n: usize) {
        for _ in 0..n {
            let mut closed = Vec::new();
            let e = &mut events[self.pos];
            if self.cycle > 0 {
                shift(e, CYCLE_S);
            }
            let outcome = self.state.apply(e, &mut closed);
            self.record(outcome);
            self.closed_windows += closed.len() as u64;
            black_box(closed);
            self.advance(events.len());
        }
    }

    fn report(&self, what: &str) {
        let total: u64 = self.outcomes.iter().sum();
        eprintln!(
            "aggregate/{what}: after {total} events ({} counted, {} duplicate, {} late, {} invalid; {} windows closed): \
             {} open windows, {} open keys, {} event ids remembered ({} held in {} dedup slots)",
            self.outcomes[0],
            self.outcomes[1],
            self.outcomes[2],
            self.outcomes[3],
            self.closed_windows,
            self.state.open_windows(),
            self.state.open_keys(),
            self.state.dedup_live(),
            self.state.dedup_len(),
            self.state.dedup_slots()
        );
    }
}

/// Resets a record to defaults, keeping the capacity of its strings.
fn reset(record: &mut EnrichedRecord) {
    let Some(enriched_record::Kind::Event(e)) = &mut record.kind else {
        record.kind = None;
        return;
    };
    e.region.clear();
    e.tier.clear();
    e.merchant_known = false;
    if let Some(ev) = &mut e.event {
        for s in [&mut ev.event_id, &mut ev.order_id, &mut ev.merchant_id, &mut ev.storefront_id, &mut ev.customer_id, &mut ev.currency] {
            s.clear();
        }
        ev.r#type = 0;
        ev.amount_minor = 0;
        ev.event_time = None;
    }
}

fn aggregate(c: &mut Criterion) {
    let mut events = aggregate::events(CYCLE_EVENTS);
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(BATCH as u64));
    {
        let payloads = aggregate::encoded(&events);
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        eprintln!("aggregate workload: {} events cycling, {:.1} bytes an event", payloads.len(), bytes as f64 / payloads.len() as f64);
        let mut p = Partition::new();
        // Two cycles first, so the measurement starts in the steady state.
        p.decode_apply(&payloads, 2 * payloads.len());
        group.bench_function("decode_apply", |b| b.iter(|| p.decode_apply(&payloads, BATCH)));
        p.report("decode_apply");

        let mut p = Partition::new();
        p.decode_apply_batched(&payloads, 2 * payloads.len());
        group.bench_function("decode_apply_batched", |b| b.iter(|| p.decode_apply_batched(&payloads, BATCH)));
        p.report("decode_apply_batched");

        let mut p = Partition::new();
        p.decode_apply_prost(&payloads, 2 * payloads.len());
        group.bench_function("decode_apply_prost", |b| b.iter(|| p.decode_apply_prost(&payloads, BATCH)));
        p.report("decode_apply_prost");

        let mut p = Partition::new();
        let mut record = EnrichedRecord::default();
        p.decode_reuse_apply(&payloads, &mut record, 2 * payloads.len());
        group.bench_function("decode_reuse_apply", |b| b.iter(|| p.decode_reuse_apply(&payloads, &mut record, BATCH)));
        p.report("decode_reuse_apply");
    }
    let mut p = Partition::new();
    let len = events.len();
    p.apply_decoded(&mut events, 2 * len);
    group.bench_function("apply_decoded", |b| b.iter(|| p.apply_decoded(&mut events, BATCH)));
    p.report("apply_decoded");
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(8));
    targets = aggregate
}
criterion_main!(benches);
