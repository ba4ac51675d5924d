//! A generated sample of a peak shopping minute, for `orderflow demo`: merchants over
//! a few regions and tiers, order lifecycles (created, then mostly paid, some cancelled
//! or refunded), a few currencies, storefront retries (same event id twice), events a
//! little out of order, unknown merchants and some invalid events. Seeded, so the same
//! seed gives the same sample.

use orderflow_proto::millis_timestamp;
use orderflow_proto::v1::{Merchant, OrderEvent, OrderEventType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Regions, most traffic first.
pub const REGIONS: &[&str] = &["cn-east", "cn-south", "cn-north", "cn-west", "intl"];
/// Merchant tiers.
pub const TIERS: &[&str] = &["tmall-flagship", "tmall", "taobao"];
const CURRENCIES: &[&str] = &["CNY", "CNY", "CNY", "CNY", "USD", "HKD"];

/// A generated sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub merchants: Vec<Merchant>,
    /// Events in publish order.
    pub events: Vec<OrderEvent>,
}

/// Generates `orders` orders for `merchants` merchants, with event times spread over
/// `span_ms` from `start_ms`, busier at the beginning (the midnight spike).
pub fn generate(seed: u64, merchants: usize, orders: usize, start_ms: i64, span_ms: i64) -> Sample {
    let mut rng = StdRng::seed_from_u64(seed);
    let merchant_list: Vec<Merchant> = (0..merchants)
        .map(|i| Merchant {
            merchant_id: format!("m{i:05}"),
            // Skewed: low indices (the popular head) fall mostly in the first regions.
            region: REGIONS[((i * 7) % 13).min(REGIONS.len() - 1) % REGIONS.len()].into(),
            tier: TIERS[if i % 10 == 0 {
                0
            } else if i % 3 == 0 {
                1
            } else {
                2
            }]
            .into(),
            effective_from: None,
        })
        .collect();
    let mut events = Vec::with_capacity(orders * 2);
    for o in 0..orders {
        // Heavy head: square a uniform draw to favour low merchant indices.
        let u: f64 = rng.random();
        let merchant = if rng.random_ratio(1, 100) {
            format!("unknown-{}", rng.random_range(0..50))
        } else {
            merchant_list[((u * u) * merchants as f64) as usize % merchants].merchant_id.clone()
        };
        // The spike: times concentrate early in the span.
        let v: f64 = rng.random();
        let t0 = start_ms + (v * v * span_ms as f64) as i64;
        let currency = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
        let amount = rng.random_range(100..500_000);
        let order_id = format!("o{seed}-{o:07}");
        let mk = |n: usize, ty: OrderEventType, t: i64| OrderEvent {
            event_id: format!("{order_id}-{n}"),
            order_id: order_id.clone(),
            merchant_id: merchant.clone(),
            storefront_id: format!("sf{}", o % 17),
            customer_id: format!("c{}", o % 9973),
            r#type: ty as i32,
            amount_minor: amount,
            currency: currency.into(),
            event_time: Some(millis_timestamp(t)),
        };
        events.push(mk(0, OrderEventType::Created, t0));
        let roll = rng.random_range(0..100);
        if roll < 85 {
            let paid = mk(1, OrderEventType::Paid, (t0 + rng.random_range(200..4_000)).min(start_ms + span_ms - 1));
            if roll < 3 {
                events.push(mk(2, OrderEventType::Refunded, paid.event_time.map_or(t0, |t| t.seconds * 1000) + 1_000));
            }
            events.push(paid);
        } else if roll < 95 {
            events.push(mk(1, OrderEventType::Cancelled, (t0 + rng.random_range(500..3_000)).min(start_ms + span_ms - 1)));
        }
    }
    // Publish order follows event time, with some events a little out of order.
    events.sort_by_key(|e| e.event_time.map(|t| (t.seconds, t.nanos)));
    for i in (1..events.len()).step_by(37) {
        events.swap(i - 1, i);
    }
    // Storefront retries: the same event sent again shortly after.
    let n = events.len();
    for i in (0..n).step_by(53) {
        let dup = events[i].clone();
        events.insert((i + 3).min(events.len()), dup);
    }
    // Invalid events a storefront might send: they go to the dead-letter topic.
    for (i, j) in (0..events.len()).step_by(211).enumerate().collect::<Vec<_>>() {
        let mut bad = events[j].clone();
        bad.event_id = format!("bad-{i}");
        match i % 3 {
            0 => bad.currency = "RMB-".into(),
            1 => bad.amount_minor = -bad.amount_minor,
            _ => bad.r#type = OrderEventType::Unspecified as i32,
        }
        events.insert(j, bad);
    }
    Sample { merchants: merchant_list, events }
}

/// Adds a very late copy of every `every`-th valid event (new event id, event time
/// three minutes earlier): late wherever its partition has moved on, counted where it
/// has not, decided by the partition's own log either way.
pub fn add_late_events(sample: &mut Sample, every: usize) {
    let mut i = every;
    let mut n = 0;
    while i < sample.events.len() {
        let mut late = sample.events[i].clone();
        if orderflow_core::validate::validate(&late).is_ok() {
            late.event_id = format!("late-{n}");
            late.event_time = late.event_time.map(|t| millis_timestamp(orderflow_proto::timestamp_millis(&t) - 180_000));
            sample.events.insert(i + 1, late);
            n += 1;
        }
        i += every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sample() {
        let a = generate(7, 100, 500, 0, 60_000);
        let b = generate(7, 100, 500, 0, 60_000);
        assert_eq!(a.events, b.events);
        assert_eq!(a.merchants, b.merchants);
        assert_ne!(generate(8, 100, 500, 0, 60_000).events, a.events);
    }

    #[test]
    fn sample_has_duplicates_and_invalid_events() {
        let s = generate(1, 100, 1_000, 0, 60_000);
        let mut ids: Vec<_> = s.events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert!(ids.len() < before, "retries repeat event ids");
        assert!(s.events.iter().any(|e| orderflow_core::validate::validate(e).is_err()));
        // Refunds come a second after payment, so they may spill just past the span.
        assert!(s.events.iter().all(|e| e.event_time.unwrap().seconds * 1000 < 61_000));
    }
}
