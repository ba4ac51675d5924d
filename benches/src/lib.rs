//! Workloads for orderflow's benchmarks of the pure core (issue #4).
//!
//! Everything here is seeded or a pure function of an event index, so every run
//! measures the same input:
//! - [`enrich`]: a merchant table of 200,000 merchants and protobuf-encoded
//!   `OrderEvent`s whose merchant ids follow a Zipf law, as the enricher receives them.
//! - [`aggregate`]: an enriched stream for one partition whose event time advances at a
//!   steady rate, with storefront retries, small out-of-order steps and very late events,
//!   as the aggregator receives it.

use orderflow_core::dedup::DedupKey;
use orderflow_core::partition::StateBounds;
use orderflow_core::window::{WindowSpec, DEFAULT_LATENESS_MS, DEFAULT_WINDOW_MS};

/// Regions, most traffic first (as in the demo's sample).
pub const REGIONS: &[&str] = &["cn-east", "cn-south", "cn-north", "cn-west", "intl"];
/// Merchant tiers.
pub const TIERS: &[&str] = &["tmall-flagship", "tmall", "taobao"];
/// Currencies, CNY most often.
pub const CURRENCIES: &[&str] = &["CNY", "CNY", "CNY", "CNY", "USD", "HKD"];

/// 2026-11-11 00:00 CST, the demo's midnight; aligned to a 1-minute window.
pub const MIDNIGHT_MS: i64 = 1_794_326_400_000;

/// The aggregator's defaults: window 1m, lateness 5s, and the dedup horizon
/// `AggregatorConfig::spec` derives when `--dedup-horizon` is not given (window +
/// lateness), from the core's constants, so the benchmarks need only the pure core.
pub fn aggregator_default_spec() -> (WindowSpec, StateBounds) {
    let spec = WindowSpec::new(DEFAULT_WINDOW_MS, DEFAULT_LATENESS_MS).expect("valid window spec");
    (spec, StateBounds::new(spec.size_ms() + spec.lateness_ms()))
}

/// The dedup key of the benchmarks' partitions (fixed, so that runs repeat exactly).
pub const BENCH_DEDUP_KEY: DedupKey = DedupKey::from_words(0x5eed, 0x0f_f10e);

/// A 64-bit mix of `x` (splitmix64's finalizer): cheap pseudo-randomness that is a pure
/// function of an event index.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The enricher's workload.
pub mod enrich {
    use orderflow_core::merchant::{merchant_at, MerchantTable};
    use orderflow_proto::millis_timestamp;
    use orderflow_proto::v1::{OrderEvent, OrderEventType};
    use orderflow_proto::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{CURRENCIES, MIDNIGHT_MS, REGIONS, TIERS};

    /// Merchants in the table.
    pub const MERCHANTS: usize = 200_000;
    /// Distinct encoded events the benchmark cycles through.
    pub const EVENTS: usize = 100_000;
    /// Zipf exponent of merchant popularity.
    pub const ZIPF_S: f64 = 1.0;
    /// One merchant in this many has a second, dated version (it moves region at
    /// midnight), so the temporal join sometimes picks between two versions.
    pub const DATED_EVERY: usize = 20;
    /// Events span this much event time, from a minute before midnight.
    pub const SPAN_MS: i64 = 3 * 60_000;

    /// The id of merchant `i`.
    pub fn merchant_id(i: usize) -> String {
        format!("m{i:06}")
    }

    /// A table of `n` merchants, every [`DATED_EVERY`]th with a second version
    /// effective from [`MIDNIGHT_MS`].
    pub fn merchant_table(n: usize) -> MerchantTable {
        let mut table = MerchantTable::new();
        for i in 0..n {
            let id = merchant_id(i);
            let region = REGIONS[(i * 7 % 13).min(REGIONS.len() - 1)];
            let tier = TIERS[if i % 10 == 0 {
                0
            } else if i % 3 == 0 {
                1
            } else {
                2
            }];
            table.upsert(&merchant_at(&id, region, tier, None)).expect("a valid merchant");
            if i % DATED_EVERY == 0 {
                table
                    .upsert(&merchant_at(&id, REGIONS[(i / DATED_EVERY) % REGIONS.len()], tier, Some(MIDNIGHT_MS)))
                    .expect("a valid merchant");
            }
        }
        table
    }

    /// Zipf-distributed ranks `0..n` (rank 0 the most popular), by inverse CDF.
    #[derive(Debug, Clone)]
    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        /// Ranks `0..n` with weight `1 / (rank + 1)^s`.
        pub fn new(n: usize, s: f64) -> Self {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += (k as f64).powf(-s);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            Self { cdf }
        }

        /// Draws a rank.
        pub fn sample(&self, rng: &mut impl Rng) -> usize {
            let u: f64 = rng.random();
            self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
        }
    }

    /// `count` valid `OrderEvent`s of `count / 2` orders (created, then paid or
    /// cancelled), with Zipf-popular merchants among `merchants` (rank `r` is merchant
    /// `r * 7919 % merchants`, so the popular ones are spread over the table) and 1% of
    /// events from unknown merchants. Fields and sizes as in the demo's sample.
    pub fn order_events(seed: u64, count: usize, merchants: usize) -> Vec<OrderEvent> {
        let mut rng = StdRng::seed_from_u64(seed);
        let zipf = Zipf::new(merchants, ZIPF_S);
        let mut events = Vec::with_capacity(count);
        let start = MIDNIGHT_MS - 60_000;
        for i in 0..count {
            let (o, n) = (i / 2, i % 2);
            let merchant = if rng.random_ratio(1, 100) {
                format!("unknown-{}", rng.random_range(0..50))
            } else {
                merchant_id(zipf.sample(&mut rng) * 7919 % merchants)
            };
            let r#type = match (n, rng.random_range(0..100)) {
                (0, _) => OrderEventType::Created,
                (_, 0..85) => OrderEventType::Paid,
                (_, 85..95) => OrderEventType::Cancelled,
                _ => OrderEventType::Refunded,
            };
            let t = start + (i as i64 * SPAN_MS / count as i64) + rng.random_range(0..2_000);
            events.push(OrderEvent {
                event_id: format!("o{seed}-{o:07}-{n}"),
                order_id: format!("o{seed}-{o:07}"),
                merchant_id: merchant,
                storefront_id: format!("sf{}", o % 17),
                customer_id: format!("c{}", o % 9973),
                r#type: r#type as i32,
                amount_minor: rng.random_range(100..500_000),
                currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())].into(),
                event_time: Some(millis_timestamp(t)),
            });
        }
        events
    }

    /// The events protobuf-encoded, one payload each as on the orders topic.
    pub fn encoded(events: &[OrderEvent]) -> Vec<Vec<u8>> {
        events.iter().map(Message::encode_to_vec).collect()
    }
}

/// The aggregator's workload: one partition's enriched stream, a pure function of the
/// event index `j`.
///
/// Event `j` happens at `MIDNIGHT_MS + floor(j * 13 / 150)` ms: about 11,538 events per
/// second of event time, so 9,000,000 events span exactly 780 s, a multiple of the
/// window (60 s).
/// Every 1,000 events the pattern repeats: 20 storefront retries (event `j` repeats
/// event `j - 3` when `j % 50 == 49`: a duplicate), 25 events 1.5 s behind the
/// watermark (`j % 40 == 39`, still within lateness) and one very late event
/// (`j % 1000 == 500`, 3 minutes behind: late). Keys: 5 regions x 3 tiers x 3 currencies,
/// and 1% unknown merchants (`unknown/unknown` x 3 currencies): 48 keys a window.
pub mod aggregate {
    use std::fmt::Write as _;

    use orderflow_proto::v1::{enriched_record, EnrichedOrderEvent, EnrichedRecord, OrderEvent, OrderEventType};
    use orderflow_proto::{millis_timestamp, Message};

    use super::{mix, CURRENCIES, MIDNIGHT_MS, REGIONS, TIERS};

    /// Event-time milliseconds per event are `MS_NUM / MS_DEN`.
    pub const MS_NUM: u64 = 13;
    /// See [`MS_NUM`].
    pub const MS_DEN: u64 = 150;
    /// Events in one period of the stream's shape (780 s of event time).
    pub const PERIOD_EVENTS: u64 = 9_000_000;
    /// Event time one period spans.
    pub const PERIOD_MS: i64 = 780_000;
    /// The benchmark cycles through this many pre-generated events: 78 s of event time,
    /// longer than the dedup horizon plus the out-of-order step, so a cycle's event ids
    /// have expired when the next cycle repeats them, 78 s later in event time.
    pub const CYCLE_EVENTS: u64 = PERIOD_EVENTS / 10;
    /// Event time one cycle spans (a whole number of seconds).
    pub const CYCLE_MS: i64 = PERIOD_MS / 10;
    /// Different keys (region, tier, currency) in a window.
    pub const KEYS: usize = REGIONS.len() * TIERS.len() * 3 + 3;

    /// Event time of the in-order event `j`.
    pub fn base_time_ms(j: u64) -> i64 {
        MIDNIGHT_MS + (j * MS_NUM / MS_DEN) as i64
    }

    fn set(s: &mut String, args: std::fmt::Arguments<'_>) {
        s.clear();
        s.write_fmt(args).expect("write to a String");
    }

    fn set_str(s: &mut String, v: &str) {
        s.clear();
        s.push_str(v);
    }

    /// Overwrites `e` with stream event `j`, reusing its strings.
    pub fn fill(j: u64, e: &mut EnrichedOrderEvent) {
        if j % 50 == 49 {
            return fill(j - 3, e); // a storefront retry: the same event again
        }
        let h = mix(j);
        let o = j / 2;
        let ev = e.event.get_or_insert_with(OrderEvent::default);
        let mut t = base_time_ms(j);
        if j % 1000 == 500 {
            set(&mut ev.event_id, format_args!("late-{j}"));
            t -= 180_000;
        } else {
            set(&mut ev.event_id, format_args!("o{o:09}-{}", j % 2));
            if j % 40 == 39 {
                t -= 1_500;
            }
        }
        set(&mut ev.order_id, format_args!("o{o:09}"));
        set(&mut ev.merchant_id, format_args!("m{:06}", (h >> 32) % 200_000));
        set(&mut ev.storefront_id, format_args!("sf{}", o % 17));
        set(&mut ev.customer_id, format_args!("c{}", o % 9973));
        ev.r#type = match (j % 2, h % 100) {
            (0, _) => OrderEventType::Created,
            (_, 0..85) => OrderEventType::Paid,
            (_, 85..95) => OrderEventType::Cancelled,
            _ => OrderEventType::Refunded,
        } as i32;
        ev.amount_minor = 100 + ((h >> 8) % 500_000) as i64;
        set_str(&mut ev.currency, CURRENCIES[((h >> 20) % CURRENCIES.len() as u64) as usize]);
        ev.event_time = Some(millis_timestamp(t));
        if (h >> 24).is_multiple_of(100) {
            set_str(&mut e.region, "unknown");
            set_str(&mut e.tier, "unknown");
            e.merchant_known = false;
        } else {
            set_str(&mut e.region, REGIONS[((h >> 40) % REGIONS.len() as u64) as usize]);
            set_str(&mut e.tier, TIERS[((h >> 48) % TIERS.len() as u64) as usize]);
            e.merchant_known = true;
        }
    }

    /// Stream event `j`.
    pub fn event(j: u64) -> EnrichedOrderEvent {
        let mut e = EnrichedOrderEvent::default();
        fill(j, &mut e);
        e
    }

    /// Events `0..n`.
    pub fn events(n: u64) -> Vec<EnrichedOrderEvent> {
        (0..n).map(event).collect()
    }

    /// The events as enriched-topic payloads.
    pub fn encoded(events: &[EnrichedOrderEvent]) -> Vec<Vec<u8>> {
        events.iter().map(|e| EnrichedRecord { kind: Some(enriched_record::Kind::Event(e.clone())) }.encode_to_vec()).collect()
    }

    /// Moves an event `seconds` later in event time (the next cycle of the stream).
    pub fn shift(e: &mut EnrichedOrderEvent, seconds: i64) {
        if let Some(t) = e.event.as_mut().and_then(|ev| ev.event_time.as_mut()) {
            t.seconds += seconds;
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_core::validate::decode_and_validate;
    use orderflow_proto::v1::{enriched_record, EnrichedRecord};
    use orderflow_proto::Message;

    use super::*;

    #[test]
    fn enrich_payload_decodes_like_the_prost_pipelines_output() {
        let table = enrich::merchant_table(1_000);
        let events = enrich::order_events(7, 2_000, 1_000);
        assert!(events.iter().any(|e| e.merchant_id.starts_with("unknown")));
        for payload in enrich::encoded(&events) {
            let enriched = table.enrich(decode_and_validate(&payload).unwrap());
            let key = enriched.event.as_ref().unwrap().order_id.clone();
            let record = EnrichedRecord { kind: Some(enriched_record::Kind::Event(enriched)) };
            let spliced = table.enrich_payload(&payload, &orderflow_core::validate::Limits::default(), i64::MAX).unwrap();
            assert_eq!(spliced.key, key);
            assert_eq!(spliced.value, record.encode_to_vec());
            assert_eq!(EnrichedRecord::decode(spliced.value.as_slice()).unwrap(), record);
        }
    }

    #[test]
    fn the_stream_repeats_its_shape_every_period() {
        use aggregate::{base_time_ms, event, PERIOD_EVENTS, PERIOD_MS};
        assert_eq!(base_time_ms(PERIOD_EVENTS) - base_time_ms(0), PERIOD_MS);
        for j in [0, 39, 49, 500, 999, 123_456] {
            let (a, b) = (event(j), event(j + PERIOD_EVENTS));
            let t = |e: &orderflow_proto::v1::EnrichedOrderEvent| {
                orderflow_proto::timestamp_millis(e.event.as_ref().unwrap().event_time.as_ref().unwrap())
            };
            assert_eq!(t(&b) - t(&a), PERIOD_MS, "event {j}");
        }
        assert_eq!(event(49).event, event(46).event, "a retry");
        assert!(event(500).event.unwrap().event_id.starts_with("late-"));
    }
}
