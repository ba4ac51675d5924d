//! Tumbling event-time windows aligned to the epoch, the key a total is kept under,
//! and the per-type tallies.

use orderflow_proto::millis_timestamp;
use orderflow_proto::v1::{OrderEventType, TypeTotal, WindowTotal};

use crate::{Error, Result};

/// The aggregator's default window size (1 minute), in milliseconds: the one place it
/// is written (the command line and the benchmarks read it from here).
pub const DEFAULT_WINDOW_MS: i64 = 60_000;
/// The aggregator's default lateness (5 seconds), in milliseconds.
pub const DEFAULT_LATENESS_MS: i64 = 5_000;

/// Window size and allowed lateness, in milliseconds.
///
/// A window `[start, start + size)` closes on a partition once the partition's
/// watermark (the highest event time it has seen) minus the lateness reaches the
/// window's end. An event whose window has closed is late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    size_ms: i64,
    lateness_ms: i64,
}

impl WindowSpec {
    /// A spec with `size_ms > 0` and `lateness_ms >= 0`.
    pub fn new(size_ms: i64, lateness_ms: i64) -> Result<Self> {
        if size_ms <= 0 {
            return Err(Error::WindowConfig(format!("window size must be positive, got {size_ms} ms")));
        }
        if lateness_ms < 0 {
            return Err(Error::WindowConfig(format!("lateness must not be negative, got {lateness_ms} ms")));
        }
        Ok(Self { size_ms, lateness_ms })
    }

    /// Window size in milliseconds.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    /// Allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }

    /// Start of the window containing `t_ms`. Windows are clipped to the `i64`
    /// milliseconds: a window that would start before `i64::MIN` starts there.
    pub fn start_of(&self, t_ms: i64) -> i64 {
        t_ms.checked_sub(t_ms.rem_euclid(self.size_ms)).unwrap_or(i64::MIN)
    }

    /// End of the window starting at `start_ms` (a [`Self::start_of`]): where the next
    /// one starts, clipped to `i64::MAX`.
    pub fn end_of(&self, start_ms: i64) -> i64 {
        // A first window clipped at `i64::MIN` still ends where the second one starts.
        let aligned = i128::from(start_ms) - i128::from(start_ms.rem_euclid(self.size_ms));
        i64::try_from(aligned + i128::from(self.size_ms)).unwrap_or(i64::MAX)
    }

    /// The frontier a watermark implies: every window ending at or before it is closed.
    pub fn closed_through(&self, watermark_ms: i64) -> i64 {
        if watermark_ms == i64::MIN {
            return i64::MIN;
        }
        self.start_of(watermark_ms.saturating_sub(self.lateness_ms))
    }
}

/// What a total is kept under within a window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TotalKey {
    pub region: String,
    pub tier: String,
    pub currency: String,
}

impl std::fmt::Display for TotalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.tier, self.currency)
    }
}

/// A borrowed [`TotalKey`] for allocation-free lookups. Its derived `Hash` hashes the
/// same fields in the same order as `TotalKey`'s, as `hashbrown::Equivalent` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TotalKeyRef<'a> {
    pub region: &'a str,
    pub tier: &'a str,
    pub currency: &'a str,
}

impl hashbrown::Equivalent<TotalKey> for TotalKeyRef<'_> {
    fn equivalent(&self, key: &TotalKey) -> bool {
        self.region == key.region && self.tier == key.tier && self.currency == key.currency
    }
}

/// Count and amount of one event type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: i64,
    pub amount_minor: i64,
}

/// Tallies of the four event types: created, paid, cancelled, refunded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tallies(pub [Tally; 4]);

/// Index of an event type in [`Tallies`], `None` for UNSPECIFIED or unknown values.
pub fn type_index(event_type: i32) -> Option<usize> {
    match OrderEventType::try_from(event_type).ok()? {
        OrderEventType::Unspecified => None,
        OrderEventType::Created => Some(0),
        OrderEventType::Paid => Some(1),
        OrderEventType::Cancelled => Some(2),
        OrderEventType::Refunded => Some(3),
    }
}

/// Lower-case names of the types in [`Tallies`] order, for metric labels.
pub const TYPE_NAMES: [&str; 4] = ["created", "paid", "cancelled", "refunded"];

impl Tallies {
    /// Counts one event of type index `i` with `amount_minor`.
    pub fn add(&mut self, i: usize, amount_minor: i64) {
        let t = &mut self.0[i];
        t.count = t.count.saturating_add(1);
        t.amount_minor = t.amount_minor.saturating_add(amount_minor);
    }

    /// Adds another tally set into this one.
    pub fn merge(&mut self, other: &Tallies) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            a.count = a.count.saturating_add(b.count);
            a.amount_minor = a.amount_minor.saturating_add(b.amount_minor);
        }
    }

    /// The protobuf form.
    pub fn to_window_total(&self, start_ms: i64, end_ms: i64, key: &TotalKey) -> WindowTotal {
        let t = |x: &Tally| Some(TypeTotal { count: x.count, amount_minor: x.amount_minor });
        WindowTotal {
            window_start: Some(millis_timestamp(start_ms)),
            window_end: Some(millis_timestamp(end_ms)),
            region: key.region.clone(),
            tier: key.tier.clone(),
            currency: key.currency.clone(),
            created: t(&self.0[0]),
            paid: t(&self.0[1]),
            cancelled: t(&self.0[2]),
            refunded: t(&self.0[3]),
        }
    }

    /// Key and tallies of a protobuf total.
    pub fn from_window_total(w: &WindowTotal) -> (TotalKey, Tallies) {
        let t = |x: &Option<TypeTotal>| x.as_ref().map_or(Tally::default(), |x| Tally { count: x.count, amount_minor: x.amount_minor });
        let key = TotalKey { region: w.region.clone(), tier: w.tier.clone(), currency: w.currency.clone() };
        (key, Tallies([t(&w.created), t(&w.paid), t(&w.cancelled), t(&w.refunded)]))
    }
}

/// The totals of one closed (or merged) window, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub totals: Vec<(TotalKey, Tallies)>,
}

impl ClosedWindow {
    /// Protobuf totals, one per key.
    pub fn to_window_totals(&self) -> impl Iterator<Item = WindowTotal> + '_ {
        self.totals.iter().map(|(k, t)| t.to_window_total(self.start_ms, self.end_ms, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_epoch_including_before_it() {
        let w = WindowSpec::new(60_000, 5_000).unwrap();
        assert_eq!(w.start_of(0), 0);
        assert_eq!(w.start_of(59_999), 0);
        assert_eq!(w.start_of(60_000), 60_000);
        assert_eq!(w.start_of(-1), -60_000);
    }

    #[test]
    fn watermark_closes_a_window_once_past_end_plus_lateness() {
        let w = WindowSpec::new(60_000, 5_000).unwrap();
        // Window [0, 60s) needs watermark >= 65s.
        assert_eq!(w.closed_through(64_999), 0);
        assert_eq!(w.closed_through(65_000), 60_000);
        assert_eq!(w.closed_through(i64::MIN), i64::MIN);
    }

    /// Counts, like amounts, saturate: a count read from a checkpoint or a partial total
    /// near `i64::MAX` (or `i64::MIN`) overflowed when an event or a partial was added.
    #[test]
    fn counts_saturate_like_amounts() {
        let top = Tally { count: i64::MAX, amount_minor: i64::MAX };
        let mut t = Tallies([top; 4]);
        t.add(2, 1);
        t.merge(&Tallies([top; 4]));
        assert_eq!(t, Tallies([top; 4]));
        let bottom = Tally { count: i64::MIN, amount_minor: i64::MIN };
        let mut t = Tallies([bottom; 4]);
        t.merge(&Tallies([bottom; 4]));
        assert_eq!(t, Tallies([bottom; 4]));
    }

    #[test]
    fn windows_are_clipped_at_the_ends_of_time() {
        let w = WindowSpec::new(60_000, 5_000).unwrap();
        // Where the second window starts.
        let first = i64::try_from(i128::from(i64::MIN) - i128::from(i64::MIN.rem_euclid(60_000)) + 60_000).unwrap();
        assert_eq!((w.start_of(i64::MIN), w.end_of(i64::MIN)), (i64::MIN, first));
        assert_eq!(w.start_of(first - 1), i64::MIN);
        assert_eq!((w.start_of(first), w.end_of(first)), (first, first + 60_000));
        let last = i64::MAX - i64::MAX.rem_euclid(60_000);
        assert_eq!((w.start_of(i64::MAX), w.end_of(last)), (last, i64::MAX));
        assert_eq!(w.closed_through(i64::MIN + 1), i64::MIN);
        let huge = WindowSpec::new(i64::MAX, 0).unwrap();
        assert_eq!((huge.start_of(-1), huge.end_of(-i64::MAX)), (-i64::MAX, 0));
        assert_eq!((huge.start_of(i64::MIN), huge.end_of(i64::MIN)), (i64::MIN, -i64::MAX));
        assert_eq!((huge.start_of(i64::MAX), huge.end_of(i64::MAX)), (i64::MAX, i64::MAX));
    }

    #[test]
    fn a_spec_gives_back_its_size_and_lateness() {
        let w = WindowSpec::new(60_000, 5_000).unwrap();
        assert_eq!((w.size_ms(), w.lateness_ms()), (60_000, 5_000));
    }

    #[test]
    fn a_key_is_shown_as_region_tier_currency() {
        let key = TotalKey { region: "east".into(), tier: "gold".into(), currency: "CNY".into() };
        assert_eq!(key.to_string(), "east/gold/CNY");
    }

    #[test]
    fn a_closed_window_gives_one_protobuf_total_per_key_in_order() {
        let mut east = Tallies::default();
        east.add(1, 500);
        let mut west = Tallies::default();
        west.add(0, 7);
        west.add(3, 2);
        let key = |region: &str| TotalKey { region: region.into(), tier: "gold".into(), currency: "CNY".into() };
        let w = ClosedWindow { start_ms: 60_000, end_ms: 120_000, totals: vec![(key("east"), east), (key("west"), west)] };
        let totals: Vec<WindowTotal> = w.to_window_totals().collect();
        assert_eq!(totals, vec![east.to_window_total(60_000, 120_000, &key("east")), west.to_window_total(60_000, 120_000, &key("west"))]);
        assert_eq!(
            (totals[1].region.as_str(), totals[1].refunded, totals[1].window_start),
            ("west", Some(TypeTotal { count: 1, amount_minor: 2 }), Some(millis_timestamp(60_000)))
        );
        assert_eq!(ClosedWindow { start_ms: 0, end_ms: 60_000, totals: Vec::new() }.to_window_totals().count(), 0);
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(WindowSpec::new(0, 0).is_err());
        assert!(WindowSpec::new(1, -1).is_err());
    }

    #[test]
    fn tallies_round_trip_through_protobuf() {
        let mut t = Tallies::default();
        t.add(1, 500);
        t.add(1, 250);
        t.add(3, 100);
        let key = TotalKey { region: "r".into(), tier: "t".into(), currency: "CNY".into() };
        let w = t.to_window_total(0, 60_000, &key);
        assert_eq!(w.paid.unwrap(), TypeTotal { count: 2, amount_minor: 750 });
        assert_eq!(Tallies::from_window_total(&w), (key, t));
        assert_eq!(type_index(0), None);
        assert_eq!(type_index(4), Some(3));
        assert_eq!(type_index(5), None);
    }
}
