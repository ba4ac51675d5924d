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
//!
//! # Layout
//! - `options`: [`SynthOptions`] (with their defaults and checks) and [`SynthError`].
//! - `shape`: the rate curve.
//! - `sampling`: the seeded random source, Zipf popularity and the distributions.
//! - `generator`: the merchant table, orders, the schedule and the generator itself.

mod generator;
mod options;
mod sampling;
mod shape;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use orderflow_proto::millis_timestamp;

pub use options::{SynthError, SynthOptions};

/// File name of the trace written by [`write_files`].
pub const TRACE_FILE: &str = "trace.jsonl";
/// File name of the merchants CSV written by [`write_files`].
pub const MERCHANTS_FILE: &str = "merchants.csv";

/// 2019-11-10T23:30:00Z: half an hour before the default spike.
pub const DEFAULT_START_MS: i64 = 1_573_428_600_000;

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
    let regions = generator::write_merchants(opts, merchants)?;
    generator::Generator::new(opts, regions, trace).run(progress)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use orderflow_core::validate::validate;
    use orderflow_proto::timestamp_millis;
    use orderflow_proto::v1::OrderEvent;

    use super::options::HOUR_MS;
    use super::*;

    /// Twenty minutes, 20,000 events, 2,000 merchants (shared with the other modules' tests).
    pub(super) fn small() -> SynthOptions {
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
}
