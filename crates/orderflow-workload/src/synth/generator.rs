//! The generator: the merchant table, orders and their lifecycles, and the time-ordered
//! schedule of lifecycle steps and sends that streams the trace out.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::Write;

use orderflow_proto::millis_timestamp;
use orderflow_proto::v1::{OrderEvent, OrderEventType};

use super::options::MIN_DISORDER_MS;
use super::sampling::{Rng, Zipf};
use super::shape::Shape;
use super::{Progress, Summary, SynthError, SynthOptions};
use crate::sample::{REGIONS, TIERS};

/// Share of orders that are paid, cancelled (the rest are abandoned after creation),
/// and share of paid orders later refunded.
const PAID: f64 = 0.82;
const CANCELLED: f64 = 0.10;
const REFUNDED: f64 = 0.04;
/// Expected lifecycle events per order.
const EVENTS_PER_ORDER: f64 = 1.0 + PAID + CANCELLED + PAID * REFUNDED;
/// A retry is sent this long after the original send.
const RETRY_DELAY_MS: (i64, i64) = (200, 3_000);

/// Region weights (per mille) of merchants, in the order of [`REGIONS`].
const REGION_WEIGHTS: &[u64] = &[400, 280, 170, 80, 70];
/// Storefronts (sales channels) and their weights.
const STOREFRONTS: &[(&str, u64)] = &[("app-android", 40), ("app-ios", 35), ("web", 15), ("mini-program", 10)];
/// Currencies: code, median amount in minor units, and weight (per mille) for orders
/// of merchants in mainland regions and in `intl`.
const CURRENCIES: &[(&str, f64, u64, u64)] = &[
    ("CNY", 15_000.0, 960, 0),
    ("USD", 2_200.0, 20, 400),
    ("HKD", 17_000.0, 20, 100),
    ("EUR", 2_000.0, 0, 150),
    ("JPY", 2_400.0, 0, 150),
    ("GBP", 1_700.0, 0, 80),
    ("KRW", 26_000.0, 0, 70),
    ("SGD", 3_000.0, 0, 50),
];
/// Spread (sigma of the log) of amounts.
const AMOUNT_SIGMA: f64 = 0.9;
/// Currencies a buggy storefront sends.
const BAD_CURRENCIES: &[&str] = &["cny", "Yuan", "RMB¥", "US$", ""];
/// Unknown merchants are drawn from this many ids.
const UNKNOWN_MERCHANT_IDS: u64 = 1_000;

/// Writes the merchant table (rank 0 is the most popular merchant) and returns each
/// merchant's region index.
pub(super) fn write_merchants<M: Write>(opts: &SynthOptions, mut out: M) -> Result<Vec<u8>, SynthError> {
    let mut rng = Rng::new(opts.seed, 1);
    let n = opts.merchants;
    let mut regions = Vec::with_capacity(n as usize);
    writeln!(out, "merchant_id,region,tier")?;
    for rank in 0..n {
        let region = rng.weighted(REGION_WEIGHTS.iter().copied());
        // The popular head is mostly flagship stores, the long tail mostly small shops.
        let tier_weights: [u64; 3] = if u64::from(rank) * 500 < u64::from(n) {
            [80, 20, 0]
        } else if u64::from(rank) * 20 < u64::from(n) {
            [20, 50, 30]
        } else {
            [2, 18, 80]
        };
        let tier = rng.weighted(tier_weights.iter().copied());
        writeln!(out, "{},{},{}", merchant_id(rank, n), REGIONS[region], TIERS[tier])?;
        regions.push(region as u8);
    }
    out.flush()?;
    Ok(regions)
}

fn merchant_id(rank: u32, merchants: u32) -> String {
    let width = merchants.saturating_sub(1).to_string().len().max(6);
    format!("m{rank:0width$}")
}

/// What a trace line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    Duplicate,
    OutOfOrder,
    Late,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Created,
    Paid,
    Cancelled,
    Refunded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Abandon,
    Pay { refund: bool },
    Cancel,
}

/// An order in flight.
#[derive(Debug)]
struct Order {
    n: u64,
    /// Merchant rank, or an unknown merchant's number.
    merchant: u32,
    unknown: bool,
    currency: u8,
    amount: i64,
    customer: u32,
    storefront: u8,
    plan: Plan,
    stage: Stage,
}

#[derive(Debug)]
enum Item {
    Step(Box<Order>),
    Send(Box<OrderEvent>, Kind),
}

/// An item due at `at`; ties go in scheduling order.
#[derive(Debug)]
struct Scheduled {
    at: i64,
    seq: u64,
    item: Item,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub(super) struct Generator<'a, W> {
    opts: &'a SynthOptions,
    rng: Rng,
    zipf: Zipf,
    regions: Vec<u8>,
    heap: BinaryHeap<Scheduled>,
    seq: u64,
    bad: u64,
    /// Per lifecycle event: chances of being late, out of order, retried, and of an invalid copy.
    p_late: f64,
    p_disorder: f64,
    p_retry: f64,
    p_invalid: f64,
    out: W,
    summary: Summary,
}

impl<'a, W: Write> Generator<'a, W> {
    pub(super) fn new(opts: &'a SynthOptions, regions: Vec<u8>, out: W) -> Self {
        // The fractions are of all lines; lines = lifecycle events + retries + invalid copies.
        let lifecycle_share = 1.0 - opts.duplicates - opts.invalid;
        let seconds = opts.duration_ms.div_euclid(1000) + i64::from(opts.duration_ms % 1000 != 0);
        Self {
            opts,
            rng: Rng::new(opts.seed, 0),
            zipf: Zipf::new(opts.merchants, opts.zipf_exponent),
            regions,
            heap: BinaryHeap::new(),
            seq: 0,
            bad: 0,
            p_late: opts.late / lifecycle_share,
            p_disorder: opts.out_of_order / lifecycle_share,
            p_retry: opts.duplicates / lifecycle_share,
            p_invalid: opts.invalid / lifecycle_share,
            out,
            summary: Summary {
                merchants: u64::from(opts.merchants),
                per_second: vec![0; seconds as usize],
                start_ms: opts.start_ms,
                spike_at_ms: opts.spike_at(),
                ..Summary::default()
            },
        }
    }

    fn push(&mut self, at: i64, item: Item) {
        self.seq += 1;
        self.heap.push(Scheduled { at, seq: self.seq, item });
        self.summary.max_pending = self.summary.max_pending.max(self.heap.len());
    }

    /// One-second buckets of event time: (start, end, expected-traffic weight).
    fn bucket(&self, shape: &Shape, i: usize) -> (i64, i64, f64) {
        let b0 = self.opts.start_ms + i as i64 * 1_000;
        let b1 = (b0 + 1_000).min(self.opts.end_ms());
        (b0, b1, shape.factor((b0 + b1) as f64 / 2.0) * (b1 - b0) as f64 / 1000.0)
    }

    /// Generates the whole trace into the output (flushed) and returns what it wrote.
    pub(super) fn run(mut self, mut progress: impl FnMut(&Progress)) -> Result<Summary, SynthError> {
        let o = self.opts;
        let shape = Shape::new(o);
        let buckets = self.summary.per_second.len();
        let total_weight: f64 = (0..buckets).map(|i| self.bucket(&shape, i).2).sum();
        let orders_per_weight = o.events as f64 * (1.0 - o.duplicates - o.invalid) / EVENTS_PER_ORDER / total_weight;
        // Orders per second follow the curve exactly (largest remainder); times within
        // the second are uniform.
        let mut expected = 0.0;
        let mut times = Vec::new();
        for i in 0..buckets {
            let (b0, b1, weight) = self.bucket(&shape, i);
            expected += weight * orders_per_weight;
            let due = expected.round() as u64;
            times.clear();
            times.extend((self.summary.orders..due).map(|_| self.rng.range(b0, b1)));
            times.sort_unstable();
            for &t in &times {
                let order = self.new_order();
                self.push(t, Item::Step(Box::new(order)));
            }
            self.drain_until(b1)?;
            progress(&Progress { done_ms: b1 - o.start_ms, total_ms: o.duration_ms, lines: self.summary.lines });
        }
        self.drain_until(i64::MAX)?;
        self.out.flush()?;
        Ok(self.summary)
    }

    fn new_order(&mut self) -> Order {
        self.summary.orders += 1;
        let n = self.summary.orders;
        let unknown = self.rng.chance(self.opts.unknown_merchants);
        let merchant = if unknown { self.rng.below(UNKNOWN_MERCHANT_IDS) as u32 } else { self.zipf.sample(&mut self.rng) };
        // Unknown merchants trade like mainland ones.
        let intl = !unknown && REGIONS[usize::from(self.regions[merchant as usize])] == "intl";
        let currency = self.rng.weighted(CURRENCIES.iter().map(|c| if intl { c.3 } else { c.2 }));
        let median = CURRENCIES[currency].1;
        let amount = (median * libm::exp(AMOUNT_SIGMA * self.rng.normal())).round().clamp(1.0, 1e10) as i64;
        let customer = self.rng.below(50_000_000) as u32;
        let storefront = self.rng.weighted(STOREFRONTS.iter().map(|s| s.1)) as u8;
        let roll = self.rng.f64();
        let plan = if roll < PAID {
            Plan::Pay { refund: self.rng.chance(REFUNDED) }
        } else if roll < PAID + CANCELLED {
            Plan::Cancel
        } else {
            Plan::Abandon
        };
        Order { n, merchant, unknown, currency: currency as u8, amount, customer, storefront, plan, stage: Stage::Created }
    }

    fn drain_until(&mut self, limit: i64) -> Result<(), SynthError> {
        while self.heap.peek().is_some_and(|s| s.at < limit) {
            let Scheduled { at, item, .. } = self.heap.pop().expect("peeked");
            match item {
                Item::Step(order) => self.step(order, at),
                Item::Send(event, kind) => self.send(&event, kind)?,
            }
        }
        Ok(())
    }

    /// The order's event at `t` happens: schedule its sends and the order's next step.
    fn step(&mut self, mut order: Box<Order>, t: i64) {
        let event = self.event(&order, t);
        let i = ((t - self.opts.start_ms) / 1000) as usize;
        self.summary.per_second[i] += 1;
        if order.unknown {
            self.summary.unknown_merchant_events += 1;
        }
        let u = self.rng.f64();
        // Only an event at least `late_min` before the end can be that far behind.
        let (kind, sent_at) = if u < self.p_late && t < self.opts.end_ms() - self.opts.late_min_ms {
            (Kind::Late, t + self.rng.range(self.opts.late_min_ms, self.opts.late_max_ms + 1))
        } else if u < self.p_late + self.p_disorder {
            (Kind::OutOfOrder, t + self.rng.range(MIN_DISORDER_MS, self.opts.max_disorder_ms + 1))
        } else {
            (Kind::Valid, t)
        };
        if self.rng.chance(self.p_invalid) {
            let bad = self.invalid_copy(&event);
            self.push(t, Item::Send(Box::new(bad), Kind::Invalid));
        }
        if self.rng.chance(self.p_retry) {
            let retry_at = sent_at + self.rng.range(RETRY_DELAY_MS.0, RETRY_DELAY_MS.1);
            self.push(retry_at, Item::Send(Box::new(event.clone()), Kind::Duplicate));
        }
        self.push(sent_at, Item::Send(Box::new(event), kind));

        let next = match (order.stage, order.plan) {
            (Stage::Created, Plan::Pay { .. }) => Some((Stage::Paid, 800.0 + self.rng.exponential(2_500.0).min(30_000.0))),
            (Stage::Created, Plan::Cancel) => Some((Stage::Cancelled, 5_000.0 + self.rng.exponential(60_000.0).min(900_000.0))),
            (Stage::Paid, Plan::Pay { refund: true }) => {
                Some((Stage::Refunded, 60_000.0 + self.rng.exponential(300_000.0).min(1_800_000.0)))
            }
            _ => None,
        };
        if let Some((stage, delay)) = next {
            let at = t + delay as i64;
            if at < self.opts.end_ms() {
                order.stage = stage;
                self.push(at, Item::Step(order));
            }
        }
    }

    fn event(&mut self, o: &Order, t: i64) -> OrderEvent {
        let order_id = format!("o{}-{:08}", self.opts.seed, o.n);
        let (ty, suffix, amount) = match o.stage {
            Stage::Created => (OrderEventType::Created, "c", o.amount),
            Stage::Paid => (OrderEventType::Paid, "p", o.amount),
            Stage::Cancelled => (OrderEventType::Cancelled, "x", o.amount),
            // A quarter of refunds are partial.
            Stage::Refunded => {
                let amount = if self.rng.chance(0.25) { (o.amount as f64 * (0.1 + 0.8 * self.rng.f64())).round() as i64 } else { o.amount };
                (OrderEventType::Refunded, "r", amount)
            }
        };
        OrderEvent {
            event_id: format!("{order_id}-{suffix}"),
            merchant_id: if o.unknown { format!("unknown-{}", o.merchant) } else { merchant_id(o.merchant, self.opts.merchants) },
            order_id,
            storefront_id: STOREFRONTS[usize::from(o.storefront)].0.into(),
            customer_id: format!("c{:08}", o.customer),
            r#type: ty as i32,
            amount_minor: amount,
            currency: CURRENCIES[usize::from(o.currency)].0.into(),
            event_time: Some(millis_timestamp(t)),
        }
    }

    /// A broken copy of `event`, with its own event id, failing exactly one rule.
    fn invalid_copy(&mut self, event: &OrderEvent) -> OrderEvent {
        self.bad += 1;
        let mut bad = event.clone();
        bad.event_id = format!("bad{}-{:08}", self.opts.seed, self.bad);
        match self.rng.below(7) {
            0 => bad.amount_minor = -bad.amount_minor.max(1),
            1 => bad.currency = BAD_CURRENCIES[self.rng.below(BAD_CURRENCIES.len() as u64) as usize].into(),
            2 => bad.merchant_id.clear(),
            3 => bad.r#type = OrderEventType::Unspecified as i32,
            4 => bad.event_time = None,
            5 => bad.event_id.clear(),
            _ => bad.order_id.clear(),
        }
        bad
    }

    fn send(&mut self, event: &OrderEvent, kind: Kind) -> Result<(), SynthError> {
        serde_json::to_writer(&mut self.out, event).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        let s = &mut self.summary;
        s.lines += 1;
        *match kind {
            Kind::Valid => &mut s.valid,
            Kind::Duplicate => &mut s.duplicates,
            Kind::OutOfOrder => &mut s.out_of_order,
            Kind::Late => &mut s.late,
            Kind::Invalid => &mut s.invalid,
        } += 1;
        Ok(())
    }
}
