//! Synthetic peak-hour traces, for `orderflow trace synth`: a trace in the replay format
//! (one canonical-JSON `OrderEvent` a line, in publish order) and the merchants CSV it
//! refers to (`merchant_id,region,tier`).
//!
//! The shape is an 11.11 midnight: a steady evening rate that warms up a little before
//! the spike, then a spike that reaches `peak_ratio` times the evening rate within
//! `spike_rise` and decays exponentially (time constant `spike_decay`) back to the
//! evening rate. The rate curve is scaled so that the trace has about `events` lines.
//!
//! Each order has a lifecycle: created; then paid a few seconds later (82%, of which 4%
//! are refunded minutes later), cancelled seconds to minutes later (10%), or abandoned
//! (8%). Lifecycle steps that would fall after the end of the trace are left out.
//! Merchants are drawn with Zipf popularity (a heavy head) from a table whose regions
//! and tiers are skewed like 11.11 traffic; currencies follow the merchant's region
//! (CNY dominant); amounts are log-normal in minor units. A small fraction of orders go
//! to merchants missing from the table.
//!
//! On top of that, fractions of the trace's lines are: duplicates (the same event sent
//! again, same event id, shortly after: a storefront retry), out of order (sent up to
//! `max_disorder` after their event time, behind later events), late (sent `late_min`
//! to `late_max` after their event time: past any window and lateness) and invalid
//! (a broken copy of an event, with its own event id, failing exactly one rule of
//! [`orderflow_core::validate::validate`]).
//!
//! Generation streams: a time-ordered priority queue holds the lifecycle steps and
//! sends that are scheduled in the future, so memory grows with the orders in flight,
//! never with the length of the trace. Randomness comes from ChaCha8 seeded from
//! `seed` (only its raw 64-bit output is used, with the generator's own sampling
//! and the portable `libm` maths), so a seed gives byte-identical files everywhere.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use orderflow_proto::millis_timestamp;
use orderflow_proto::v1::{OrderEvent, OrderEventType};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sample::{REGIONS, TIERS};

/// File name of the trace written by [`write_files`].
pub const TRACE_FILE: &str = "trace.jsonl";
/// File name of the merchants CSV written by [`write_files`].
pub const MERCHANTS_FILE: &str = "merchants.csv";

/// 2019-11-10T23:30:00Z: half an hour before the default spike.
pub const DEFAULT_START_MS: i64 = 1_573_428_600_000;

const HOUR_MS: i64 = 3_600_000;

/// Share of orders that are paid, cancelled (the rest are abandoned after creation),
/// and share of paid orders later refunded.
const PAID: f64 = 0.82;
const CANCELLED: f64 = 0.10;
const REFUNDED: f64 = 0.04;
/// Expected lifecycle events per order.
const EVENTS_PER_ORDER: f64 = 1.0 + PAID + CANCELLED + PAID * REFUNDED;
/// Out-of-order events are sent at least this long after their event time.
const MIN_DISORDER_MS: i64 = 250;
/// A retry is sent this long after the original send.
const RETRY_DELAY_MS: (i64, i64) = (200, 3_000);
/// How much the evening warms up before the spike, as a share of the spike's height.
const WARMUP: f64 = 0.02;
/// Time constant of the warm-up before the spike.
const WARMUP_TAU_S: f64 = 300.0;

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

/// What to generate. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Target number of trace lines; the rate curve is scaled to it.
    pub events: u64,
    /// Event time of the trace's beginning, in milliseconds since the epoch.
    pub start_ms: i64,
    /// Length of the trace in event time.
    pub duration_ms: i64,
    /// When the spike begins; `None`: the first whole hour (UTC) at or after the start.
    pub spike_at_ms: Option<i64>,
    /// Peak rate over evening rate.
    pub peak_ratio: f64,
    /// Time from the spike's beginning to its peak.
    pub spike_rise_ms: i64,
    /// Time constant of the exponential decay after the peak.
    pub spike_decay_ms: i64,
    /// Merchants in the table.
    pub merchants: u32,
    /// Exponent of the Zipf merchant popularity.
    pub zipf_exponent: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Fraction of lines that are retries of an event already sent.
    pub duplicates: f64,
    /// Fraction of lines sent a little after their event time order.
    pub out_of_order: f64,
    /// Fraction of lines sent minutes after their event time.
    pub late: f64,
    /// Fraction of lines that fail validation.
    pub invalid: f64,
    /// Fraction of orders whose merchant is not in the table.
    pub unknown_merchants: f64,
    /// Longest delay of an out-of-order event.
    pub max_disorder_ms: i64,
    /// Shortest delay of a late event.
    pub late_min_ms: i64,
    /// Longest delay of a late event.
    pub late_max_ms: i64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            start_ms: DEFAULT_START_MS,
            duration_ms: HOUR_MS,
            spike_at_ms: None,
            peak_ratio: 30.0,
            spike_rise_ms: 30_000,
            spike_decay_ms: 240_000,
            merchants: 200_000,
            zipf_exponent: 1.0,
            seed: 1111,
            duplicates: 0.01,
            out_of_order: 0.02,
            late: 0.001,
            invalid: 0.001,
            unknown_merchants: 0.005,
            max_disorder_ms: 4_000,
            late_min_ms: 120_000,
            late_max_ms: 600_000,
        }
    }
}

impl SynthOptions {
    /// When the spike begins.
    pub fn spike_at(&self) -> i64 {
        self.spike_at_ms
            .unwrap_or_else(|| self.start_ms.div_euclid(HOUR_MS) * HOUR_MS + if self.start_ms % HOUR_MS == 0 { 0 } else { HOUR_MS })
    }

    /// End of the trace (exclusive), in event time.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }

    /// Checks that the options make sense.
    pub fn check(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Options(m));
        if self.events == 0 {
            return bad("events must be at least 1".into());
        }
        if self.duration_ms < 1_000 {
            return bad("duration must be at least 1s".into());
        }
        // Timestamps from 0001-01-01 to 9999-12-31, with room for the late sends.
        if self.start_ms < -62_135_596_800_000
            || self.start_ms.saturating_add(self.duration_ms).saturating_add(self.late_max_ms) > 253_402_300_799_000
        {
            return bad("start and duration must give times between years 1 and 9999".into());
        }
        if !(self.peak_ratio.is_finite() && self.peak_ratio >= 1.0) {
            return bad(format!("peak ratio must be at least 1, not {}", self.peak_ratio));
        }
        if self.spike_rise_ms < 0 || self.spike_decay_ms <= 0 {
            return bad("spike rise must not be negative and spike decay must be positive".into());
        }
        if self.merchants == 0 {
            return bad("there must be at least one merchant".into());
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return bad(format!("zipf exponent must be a number >= 0, not {}", self.zipf_exponent));
        }
        let fractions =
            [("duplicates", self.duplicates), ("out-of-order", self.out_of_order), ("late", self.late), ("invalid", self.invalid)];
        for (name, f) in fractions.iter().copied().chain([("unknown-merchants", self.unknown_merchants)]) {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{name} must be a fraction between 0 and 1, not {f}"));
            }
        }
        if fractions.iter().map(|(_, f)| f).sum::<f64>() > 0.5 {
            return bad("duplicates, out-of-order, late and invalid must add up to at most 0.5".into());
        }
        if self.max_disorder_ms <= MIN_DISORDER_MS {
            return bad(format!("max disorder must be more than {MIN_DISORDER_MS}ms"));
        }
        if !(self.late_min_ms > 0 && self.late_min_ms <= self.late_max_ms) {
            return bad("late delays must be positive, the minimum at most the maximum".into());
        }
        Ok(())
    }
}

/// Errors of generation.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}")]
    Options(String),
    #[error("writing `{path}`: {source}")]
    File { path: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a generation wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Trace lines written.
    pub lines: u64,
    /// Valid events sent once, in event-time order.
    pub valid: u64,
    /// Retries: events sent again with the same event id.
    pub duplicates: u64,
    /// Valid events sent a little after later events.
    pub out_of_order: u64,
    /// Valid events sent minutes after their event time.
    pub late: u64,
    /// Events that fail validation.
    pub invalid: u64,
    /// Orders created.
    pub orders: u64,
    /// Merchants written to the CSV.
    pub merchants: u64,
    /// Distinct valid events whose merchant is not in the table.
    pub unknown_merchant_events: u64,
    /// Distinct valid events per second of event time, from the start.
    pub per_second: Vec<u64>,
    /// Start of the trace, in milliseconds.
    pub start_ms: i64,
    /// When the spike began, in milliseconds.
    pub spike_at_ms: i64,
    /// Most items (lifecycle steps and sends) scheduled at once: the memory in use.
    pub max_pending: usize,
}

impl Summary {
    /// The busiest second of event time: (its start in milliseconds, distinct valid events).
    pub fn peak(&self) -> (i64, u64) {
        let (i, n) = self.per_second.iter().enumerate().fold((0, 0), |best, (i, &n)| if n > best.1 { (i, n) } else { best });
        (self.start_ms + i as i64 * 1_000, n)
    }

    /// The evening rate: the median of distinct valid events per second of event time
    /// before the spike (over the whole trace if it starts with the spike).
    pub fn evening_per_second(&self) -> u64 {
        let before = usize::try_from((self.spike_at_ms - self.start_ms).div_euclid(1000)).unwrap_or(0).min(self.per_second.len());
        let mut v = if before > 0 { self.per_second[..before].to_vec() } else { self.per_second.clone() };
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (peak_at, peak) = self.peak();
        let evening = self.evening_per_second();
        write!(
            f,
            "{} events ({} orders, {} merchants): valid {}, duplicates {}, out-of-order {}, late {}, invalid {}; \
             unknown-merchant {}; peak {peak} events/s at {} (event time), evening {evening}/s ({:.1}x); at most {} pending",
            self.lines,
            self.orders,
            self.merchants,
            self.valid,
            self.duplicates,
            self.out_of_order,
            self.late,
            self.invalid,
            self.unknown_merchant_events,
            millis_timestamp(peak_at),
            peak as f64 / evening.max(1) as f64,
            self.max_pending,
        )
    }
}

/// Progress of a generation, reported once per second of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Event time generated so far, from the start.
    pub done_ms: i64,
    /// The trace's duration.
    pub total_ms: i64,
    /// Lines written so far.
    pub lines: u64,
}

/// Writes the merchants CSV to `merchants` and the trace to `trace`.
pub fn write_trace<T: Write, M: Write>(opts: &SynthOptions, trace: T, merchants: M) -> Result<Summary, SynthError> {
    write_trace_with_progress(opts, trace, merchants, |_| {})
}

/// [`write_trace`], calling `progress` once per second of event time.
pub fn write_trace_with_progress<T: Write, M: Write>(
    opts: &SynthOptions,
    trace: T,
    merchants: M,
    progress: impl FnMut(&Progress),
) -> Result<Summary, SynthError> {
    opts.check()?;
    let regions = write_merchants(opts, merchants)?;
    let mut g = Generator::new(opts, regions, trace);
    g.run(progress)?;
    g.out.flush()?;
    Ok(g.summary)
}

/// Writes `dir/trace.jsonl` and `dir/merchants.csv` (creating `dir`), each through a
/// temporary file renamed at the end, drawing a progress bar when `progress` is set.
pub fn write_files(opts: &SynthOptions, dir: &Path, progress: bool) -> Result<Summary, SynthError> {
    let file_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| SynthError::File { path, source }
    };
    std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    let (trace_path, merchants_path) = (dir.join(TRACE_FILE), dir.join(MERCHANTS_FILE));
    let tmp = |p: &Path| PathBuf::from(format!("{}.tmp", p.display()));
    let (trace_tmp, merchants_tmp) = (tmp(&trace_path), tmp(&merchants_path));
    let open = |p: &Path| std::fs::File::create(p).map(|f| std::io::BufWriter::with_capacity(1 << 20, f)).map_err(file_err(p));
    let (mut trace, mut merchants) = (open(&trace_tmp)?, open(&merchants_tmp)?);
    let seconds = u64::try_from(opts.duration_ms.div_euclid(1000)).unwrap_or(0);
    let bar = crate::trace::progress_bar(progress, seconds, "synth [{elapsed_precise}] {wide_bar} {pos}/{len}s of event time {msg}");
    let summary = write_trace_with_progress(opts, &mut trace, &mut merchants, |p| {
        if p.done_ms % 10_000 < 1_000 || p.done_ms >= p.total_ms {
            bar.set_position(u64::try_from(p.done_ms / 1000).unwrap_or(0));
            bar.set_message(format!("{} events", p.lines));
        }
    });
    bar.finish_and_clear();
    let finish = |summary: Result<Summary, SynthError>| {
        let summary = summary.map_err(|e| match e {
            SynthError::Io(source) => SynthError::File { path: dir.display().to_string(), source },
            e => e,
        })?;
        for (mut w, tmp, path) in [(trace, &trace_tmp, &trace_path), (merchants, &merchants_tmp, &merchants_path)] {
            w.flush().map_err(file_err(tmp))?;
            drop(w);
            std::fs::rename(tmp, path).map_err(file_err(path))?;
        }
        Ok(summary)
    };
    let result = finish(summary);
    if result.is_err() {
        // Leave no half-written files behind (best effort: the error says what went wrong).
        let _ = std::fs::remove_file(&trace_tmp);
        let _ = std::fs::remove_file(&merchants_tmp);
    }
    result
}

/// The random source: ChaCha8's raw output, with sampling defined here (not by a
/// library whose algorithms may change between versions).
struct Rng(ChaCha8Rng);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        // SplitMix64 spreads the seed over ChaCha's 256-bit key.
        let mut s = seed;
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(stream);
        Self(rng)
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [lo, hi) (lo < hi).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below(hi.abs_diff(lo)) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponentially distributed with mean `mean`.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * libm::log(1.0 - self.f64())
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.f64(), self.f64());
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    /// An index drawn by integer weights.
    fn weighted(&mut self, weights: impl Iterator<Item = u64> + Clone) -> usize {
        let mut x = self.below(weights.clone().sum());
        for (i, w) in weights.enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        unreachable!("x is below the sum of weights")
    }
}

/// Zipf popularity over ranks 0..n: P(k) proportional to (k+1)^-s, by its exact CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u32, s: f64) -> Self {
        let mut acc = 0.0;
        Self {
            cdf: (1..=n)
                .map(|k| {
                    acc += libm::pow(f64::from(k), -s);
                    acc
                })
                .collect(),
        }
    }

    fn sample(&self, rng: &mut Rng) -> u32 {
        let x = rng.f64() * self.cdf[self.cdf.len() - 1];
        self.cdf.partition_point(|&c| c <= x).min(self.cdf.len() - 1) as u32
    }
}

/// Writes the merchant table (rank 0 is the most popular merchant) and returns each
/// merchant's region index.
fn write_merchants<M: Write>(opts: &SynthOptions, mut out: M) -> Result<Vec<u8>, SynthError> {
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

/// Traffic relative to the evening rate at a point in time.
struct Shape {
    spike_at: i64,
    rise_ms: f64,
    decay_ms: f64,
    peak: f64,
}

impl Shape {
    fn factor(&self, t_ms: f64) -> f64 {
        let dt = t_ms - self.spike_at as f64;
        let warm = WARMUP * (self.peak - 1.0);
        if dt < 0.0 {
            1.0 + warm * libm::exp(dt / 1000.0 / WARMUP_TAU_S)
        } else if dt < self.rise_ms {
            let from = 1.0 + warm;
            from + (self.peak - from) * dt / self.rise_ms
        } else {
            1.0 + (self.peak - 1.0) * libm::exp(-(dt - self.rise_ms) / self.decay_ms)
        }
    }
}

struct Generator<'a, W> {
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
    fn new(opts: &'a SynthOptions, regions: Vec<u8>, out: W) -> Self {
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

    fn run(&mut self, mut progress: impl FnMut(&Progress)) -> Result<(), SynthError> {
        let o = self.opts;
        let shape =
            Shape { spike_at: o.spike_at(), rise_ms: o.spike_rise_ms as f64, decay_ms: o.spike_decay_ms as f64, peak: o.peak_ratio };
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
        self.drain_until(i64::MAX)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use orderflow_core::validate::validate;
    use orderflow_proto::timestamp_millis;

    use super::*;

    fn small() -> SynthOptions {
        SynthOptions {
            events: 20_000,
            duration_ms: 20 * 60_000,
            start_ms: DEFAULT_START_MS + 20 * 60_000,
            merchants: 2_000,
            ..Default::default()
        }
    }

    fn generate(opts: &SynthOptions) -> (Summary, Vec<u8>, Vec<u8>) {
        let (mut trace, mut merchants) = (Vec::new(), Vec::new());
        let summary = write_trace(opts, &mut trace, &mut merchants).unwrap();
        (summary, trace, merchants)
    }

    fn parse(trace: &[u8]) -> Vec<OrderEvent> {
        std::str::from_utf8(trace).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn same_seed_same_bytes() {
        let (sa, ta, ma) = generate(&small());
        let (sb, tb, mb) = generate(&small());
        assert_eq!(sa, sb);
        assert!(ta == tb && ma == mb, "same seed, same files");
        let (_, tc, mc) = generate(&SynthOptions { seed: 2, ..small() });
        assert!(ta != tc && ma != mc, "another seed, other files");
        assert_eq!(sa.lines as usize, ta.iter().filter(|&&b| b == b'\n').count());
    }

    #[test]
    fn pinned_output() {
        // Guards portability: a seed's files must never change (across platforms, and
        // across versions of the libraries used).
        let (s, trace, merchants) = generate(&SynthOptions { events: 2_000, merchants: 50, ..small() });
        let text = std::str::from_utf8(&trace).unwrap();
        assert_eq!(text.lines().next().unwrap(), PINNED_FIRST_LINE);
        let fnv = |bytes: &[u8]| bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        assert_eq!((s.lines, fnv(&trace), fnv(&merchants)), PINNED, "{s}");
    }

    const PINNED_FIRST_LINE: &str = r#"{"eventId":"o1111-00000001-c","orderId":"o1111-00000001","merchantId":"m000046","storefrontId":"app-ios","customerId":"c44730618","type":"ORDER_EVENT_TYPE_CREATED","amountMinor":"33438","currency":"CNY","eventTime":"2019-11-10T23:50:03.085Z"}"#;
    const PINNED: (u64, u64, u64) = (1978, 17_581_241_001_824_312_847, 5_155_291_350_786_513_244);

    #[test]
    fn fractions_are_respected_and_kinds_are_what_they_say() {
        let opts = SynthOptions {
            events: 100_000,
            duplicates: 0.05,
            out_of_order: 0.05,
            late: 0.02,
            invalid: 0.02,
            unknown_merchants: 0.02,
            ..small()
        };
        let (s, trace, merchants) = generate(&opts);
        let events = parse(&trace);
        assert_eq!(events.len() as u64, s.lines);
        assert_eq!(s.lines, s.valid + s.duplicates + s.out_of_order + s.late + s.invalid);
        assert!((s.lines as f64 / 100_000.0 - 1.0).abs() < 0.03, "about the events asked for: {s}");
        let near = |n: u64, f: f64| (n as f64 / s.lines as f64 - f).abs() < f * 0.15;
        assert!(near(s.duplicates, 0.05) && near(s.out_of_order, 0.05) && near(s.late, 0.02) && near(s.invalid, 0.02), "{s}");

        let table: HashSet<String> =
            orderflow_core::merchant::read_merchants_csv(merchants.as_slice()).unwrap().into_iter().map(|m| m.merchant_id).collect();
        assert_eq!(table.len(), 2_000);
        let (mut seen, mut invalid, mut dups, mut late, mut behind_a_little, mut unknown) = (HashSet::new(), 0, 0, 0, 0, 0);
        let mut newest = opts.start_ms;
        for e in &events {
            if validate(e).is_err() {
                invalid += 1;
                assert!(e.event_id.is_empty() || e.event_id.starts_with("bad"), "{e:?}");
                continue;
            }
            let t = timestamp_millis(e.event_time.as_ref().unwrap());
            assert!((opts.start_ms..opts.end_ms()).contains(&t));
            if !seen.insert(e.event_id.clone()) {
                dups += 1;
                continue;
            }
            if !table.contains(&e.merchant_id) {
                assert!(e.merchant_id.starts_with("unknown-"));
                unknown += 1;
            }
            let behind = newest - t;
            if behind > 65_000 {
                assert!(behind >= opts.late_min_ms - 1_000, "late events are minutes behind: {behind}ms");
                late += 1;
            } else if behind > 0 {
                assert!(behind <= opts.max_disorder_ms, "out of order within a few seconds: {behind}ms");
                behind_a_little += 1;
            }
            newest = newest.max(t);
        }
        assert_eq!((invalid, dups, late), (s.invalid, s.duplicates, s.late));
        assert!(behind_a_little <= s.out_of_order && behind_a_little as f64 > 0.8 * s.out_of_order as f64, "{behind_a_little} {s}");
        assert_eq!(unknown, s.unknown_merchant_events);
        assert!((unknown as f64 / (s.lines - s.duplicates - s.invalid) as f64 - 0.02).abs() < 0.005, "{unknown} {s}");
    }

    #[test]
    fn invalid_events_fail_validation_and_all_others_pass() {
        let (s, trace, _) = generate(&SynthOptions { invalid: 0.05, ..small() });
        let mut reasons = HashSet::new();
        let mut kinds = [0u64; 5];
        for e in parse(&trace) {
            match validate(&e) {
                Err(r) => {
                    reasons.insert(r.code());
                }
                Ok(()) => kinds[e.r#type as usize] += 1,
            }
        }
        assert_eq!(reasons.len(), 7, "every invalid kind appears: {reasons:?}");
        assert_eq!(s.lines - kinds.iter().sum::<u64>(), s.invalid);
        // Lifecycles: most orders are paid, some cancelled, a few refunded.
        let [_, created, paid, cancelled, refunded] = kinds;
        assert!(paid > created * 7 / 10 && cancelled > created / 20 && refunded > 0 && refunded < paid / 10, "{kinds:?}");
    }

    #[test]
    fn spike_at_the_hour_tens_of_times_the_evening() {
        let opts = SynthOptions { events: 400_000, merchants: 1_000, ..SynthOptions::default() };
        let s = write_trace(&opts, std::io::sink(), std::io::sink()).unwrap();
        let (peak_at, peak) = s.peak();
        let spike = opts.spike_at();
        assert_eq!(spike, 1_573_430_400_000, "2019-11-11T00:00:00Z");
        assert!((spike..spike + 60_000).contains(&peak_at), "peak within a minute of the hour: {s}");
        let evening: u64 = s.per_second[..600].iter().sum::<u64>() / 600;
        assert!(s.evening_per_second().abs_diff(evening) < evening / 5, "{s}");
        let ratio = peak as f64 / evening as f64;
        assert!((20.0..45.0).contains(&ratio), "peak {peak}/s, evening {evening}/s");
        // Fifteen minutes later the spike is over.
        let later: u64 = s.per_second[2_900..2_960].iter().sum::<u64>() / 60;
        assert!(later < evening * 2, "{later} {evening}");
        assert!((s.lines as f64 / 400_000.0 - 1.0).abs() < 0.02, "{s}");
    }

    #[test]
    fn memory_is_bounded_by_orders_in_flight_not_by_length() {
        let flat = |hours: i64| {
            let opts =
                SynthOptions { events: 100_000 * hours as u64, duration_ms: hours * HOUR_MS, peak_ratio: 1.0, merchants: 100, ..small() };
            write_trace(&opts, std::io::sink(), std::io::sink()).unwrap()
        };
        let (one, four) = (flat(1), flat(4));
        assert!(four.lines > one.lines * 3);
        assert!(four.max_pending < one.max_pending * 3 / 2, "{} vs {}", four.max_pending, one.max_pending);
        assert!(four.max_pending < four.lines as usize / 200, "{four}");
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            SynthOptions { events: 0, ..small() },
            SynthOptions { peak_ratio: 0.5, ..small() },
            SynthOptions { duplicates: 0.3, invalid: 0.3, ..small() },
            SynthOptions { late: -0.1, ..small() },
            SynthOptions { merchants: 0, ..small() },
            SynthOptions { late_min_ms: 10, late_max_ms: 5, ..small() },
        ] {
            assert!(matches!(write_trace(&o, std::io::sink(), std::io::sink()), Err(SynthError::Options(_))), "{o:?}");
        }
    }

    #[test]
    fn spike_defaults_to_the_next_whole_hour() {
        assert_eq!(SynthOptions::default().spike_at(), DEFAULT_START_MS + 30 * 60_000);
        assert_eq!(SynthOptions { start_ms: 7_200_000, ..small() }.spike_at(), 7_200_000);
        assert_eq!(SynthOptions { start_ms: 7_200_001, ..small() }.spike_at(), 10_800_000);
        assert_eq!(SynthOptions { spike_at_ms: Some(5), ..small() }.spike_at(), 5);
    }
}
