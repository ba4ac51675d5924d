//! An independent answer to "what must the pipeline produce for this trace?": totals
//! per (window, region, tier, currency) and event type, the events that must go to the
//! late topic, and the dead letters with their reasons.
//!
//! It is written apart from the pipeline on purpose, from the contract
//! (`docs/contract.md`, `docs/semantics.md`) and not from the code that implements it:
//! it calls none of `orderflow-core`'s validation, merchant join, window or dedup code,
//! so a mistake there (an event in the wrong window, key or currency, a valid event
//! sent to the late topic, a reason code changed) shows as a difference instead of
//! being made twice. The only thing it takes from the core is data: ISO 4217's
//! currency codes, which the enricher accepts by default.
//!
//! Lateness depends on the order in which each partition sees its events, which the
//! reference does not model (it would need the partitioner). It sees the trace in
//! order instead, and says of each valid event's first sighting whether it is
//! certainly on time (its window closes after the highest event time seen so far,
//! so no partition can have closed it), certainly late (its window closed more than
//! [`Settings::late_margin_ms`] before the highest event time seen so far), or
//! possibly late (in between). A possibly late event may be counted or reported late,
//! but never both and never neither.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orderflow_proto::v1::{Merchant, OrderEvent, WindowTotal};

/// The pipeline settings the answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The aggregator's window size.
    pub window_ms: i64,
    /// The aggregator's allowed lateness.
    pub lateness_ms: i64,
    /// How far behind the trace's highest event time a window must have closed for
    /// every partition to have closed it too (each partition's watermark trails the
    /// trace's by the time between its own events).
    pub late_margin_ms: i64,
    /// The enricher's clock when it reads the trace: events dated more than
    /// `max_future_skew_ms` after it are dead letters.
    pub now_ms: i64,
    pub max_future_skew_ms: i64,
    /// The largest amount accepted.
    pub max_amount_minor: i64,
}

impl Default for Settings {
    /// The pipeline's defaults (1-minute windows, 5 s lateness, 5 minutes of clock
    /// skew, amounts up to 10^12), a 30 s margin, and the clock read now.
    fn default() -> Self {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Self {
            window_ms: 60_000,
            lateness_ms: 5_000,
            late_margin_ms: 30_000,
            now_ms,
            max_future_skew_ms: 5 * 60_000,
            max_amount_minor: 1_000_000_000_000,
        }
    }
}

/// Where a total is kept: window start (ms since the epoch), region, tier, currency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub window_start_ms: i64,
    pub region: String,
    pub tier: String,
    pub currency: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = chrono::DateTime::from_timestamp_millis(self.window_start_ms)
            .map_or_else(|| self.window_start_ms.to_string(), |t| t.to_rfc3339());
        write!(f, "{start} {}/{}/{}", self.region, self.tier, self.currency)
    }
}

/// Count and amount per event type: created, paid, cancelled, refunded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: [i64; 4],
    pub amount_minor: [i64; 4],
}

impl Tally {
    fn add(&mut self, kind: usize, amount: i64) {
        self.count[kind] += 1;
        self.amount_minor[kind] += amount;
    }

    fn is_zero(&self) -> bool {
        *self == Tally::default()
    }
}

/// What the reference decided for one trace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Counted in its window.
    Counted(Key),
    /// A repeat of an event id already seen valid: counted once, the first time.
    Repeat,
    /// Must go to the late topic.
    Late,
    /// May be counted or go to the late topic (see the module docs).
    MaybeLate,
    /// Must go to the dead-letter topic, with this reason code.
    Invalid(&'static str),
}

/// One counted or possibly counted event.
#[derive(Debug, Clone)]
struct Contribution {
    key: Key,
    kind: usize,
    amount: i64,
}

/// The reference, fed the trace one event at a time in publishing order.
#[derive(Debug)]
pub struct Reference {
    settings: Settings,
    /// Each merchant's versions, sorted by when they take effect (`i64::MIN`: always).
    merchants: HashMap<String, Vec<(i64, String, String)>>,
    /// Ids seen valid, and whether their first sighting was possibly late.
    seen: HashMap<String, bool>,
    highest_ms: i64,
    totals: BTreeMap<Key, Tally>,
    late: BTreeSet<String>,
    maybe_late: BTreeMap<String, Contribution>,
    /// Possibly late on the first sighting and certainly late on a later one: the late
    /// topic alone cannot tell whether the first was counted.
    unresolved: BTreeSet<String>,
    /// Dead letters by (order id, reason code): how many.
    dead_letters: BTreeMap<(String, String), usize>,
    /// Events read, valid and unique, repeats.
    pub events: u64,
    pub valid_unique: u64,
    pub repeats: u64,
}

impl Reference {
    pub fn new(settings: Settings, merchants: &[Merchant]) -> Self {
        let mut by_id: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
        for m in merchants {
            let from = m.effective_from.as_ref().map_or(i64::MIN, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
            by_id.entry(m.merchant_id.clone()).or_default().push((from, m.region.clone(), m.tier.clone()));
        }
        for versions in by_id.values_mut() {
            // A later row for the same instant replaces an earlier one: keep the last.
            versions.sort_by_key(|v| v.0);
            versions.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    std::mem::swap(later, earlier);
                }
                same
            });
        }
        Self {
            settings,
            merchants: by_id,
            seen: HashMap::new(),
            highest_ms: i64::MIN,
            totals: BTreeMap::new(),
            late: BTreeSet::new(),
            maybe_late: BTreeMap::new(),
            unresolved: BTreeSet::new(),
            dead_letters: BTreeMap::new(),
            events: 0,
            valid_unique: 0,
            repeats: 0,
        }
    }

    /// Region and tier of `merchant` at `t_ms`: the last version in effect then, or
    /// `unknown`/`unknown` (the merchant is not in the table yet, or at all).
    fn merchant_at(&self, merchant: &str, t_ms: i64) -> (String, String) {
        self.merchants
            .get(merchant)
            .and_then(|versions| versions.iter().rev().find(|v| v.0 <= t_ms))
            .map_or_else(|| ("unknown".to_owned(), "unknown".to_owned()), |v| (v.1.clone(), v.2.clone()))
    }

    /// Takes one trace event, in publishing order.
    pub fn add(&mut self, e: &OrderEvent) -> Fate {
        self.events += 1;
        if let Err(reason) = check(e, &self.settings) {
            *self.dead_letters.entry((e.order_id.clone(), reason.to_owned())).or_default() += 1;
            return Fate::Invalid(reason);
        }
        let time = e.event_time.expect("checked");
        let t = time.seconds * 1000 + i64::from(time.nanos) / 1_000_000;
        let s = self.settings;
        let start = t - t.rem_euclid(s.window_ms);
        let closes_at = start + s.window_ms + s.lateness_ms;
        let highest_before = self.highest_ms;
        self.highest_ms = self.highest_ms.max(t);
        let late = closes_at <= highest_before.saturating_sub(s.late_margin_ms);
        let on_time = closes_at > highest_before;

        if let Some(&first_maybe) = self.seen.get(&e.event_id) {
            self.repeats += 1;
            if late {
                // A repeat after its window closed is reported late (it may also have been
                // counted the first time).
                self.late.insert(e.event_id.clone());
                if first_maybe {
                    self.unresolved.insert(e.event_id.clone());
                }
                return Fate::Late;
            }
            return Fate::Repeat;
        }
        self.valid_unique += 1;
        self.seen.insert(e.event_id.clone(), !late && !on_time);
        if late {
            self.late.insert(e.event_id.clone());
            return Fate::Late;
        }
        let (region, tier) = self.merchant_at(&e.merchant_id, t);
        let key = Key { window_start_ms: start, region, tier, currency: e.currency.clone() };
        let kind = (e.r#type - 1) as usize;
        if on_time {
            self.totals.entry(key.clone()).or_default().add(kind, e.amount_minor);
            Fate::Counted(key)
        } else {
            self.maybe_late.insert(e.event_id.clone(), Contribution { key, kind, amount: e.amount_minor });
            Fate::MaybeLate
        }
    }

    /// Ids that must be on the late topic.
    pub fn late(&self) -> &BTreeSet<String> {
        &self.late
    }

    /// Ids that may be on the late topic (or counted instead).
    pub fn maybe_late(&self) -> impl Iterator<Item = &str> {
        self.maybe_late.keys().map(String::as_str)
    }

    /// Dead letters expected, by (order id, reason code).
    pub fn dead_letters(&self) -> &BTreeMap<(String, String), usize> {
        &self.dead_letters
    }

    /// The totals of the certainly counted events (without the possibly late ones).
    pub fn certain_totals(&self) -> &BTreeMap<Key, Tally> {
        &self.totals
    }

    /// Compares what the pipeline produced with the reference: returns every difference
    /// (empty: exact). `observed.late` decides each possibly late event.
    pub fn differences(&self, observed: &Observed) -> Vec<String> {
        let mut out = Vec::new();
        for id in &self.unresolved {
            out.push(format!(
                "event {id}: possibly late at first, certainly late when repeated: the reference cannot tell (use a wider margin)"
            ));
        }
        let mut want = self.totals.clone();
        for (id, c) in &self.maybe_late {
            if !observed.late.contains(id) {
                want.entry(c.key.clone()).or_default().add(c.kind, c.amount);
            }
        }
        for (key, w) in &want {
            match observed.totals.get(key) {
                None if w.is_zero() => {}
                None => out.push(format!("total {key}: missing, want {w:?}")),
                Some(got) if got != w => out.push(format!("total {key}: got {got:?}, want {w:?}")),
                Some(_) => {}
            }
        }
        for (key, got) in &observed.totals {
            if !want.contains_key(key) && !got.is_zero() {
                out.push(format!("total {key}: unexpected {got:?}"));
            }
        }
        for id in self.late.difference(&observed.late) {
            out.push(format!("late event {id}: not on the late topic"));
        }
        for id in observed.late.difference(&self.late).filter(|id| !self.maybe_late.contains_key(*id)) {
            out.push(format!("late event {id}: on the late topic, but on time"));
        }
        if let Some(dead) = &observed.dead_letters {
            // By reason: a dead letter's key names its source record (topic, partition,
            // offset), which the trace cannot know.
            let by_reason = |m: &BTreeMap<(String, String), usize>| {
                m.iter().fold(BTreeMap::<String, usize>::new(), |mut r, ((_, reason), n)| {
                    *r.entry(reason.clone()).or_default() += n;
                    r
                })
            };
            let (want, got) = (by_reason(&self.dead_letters), by_reason(dead));
            for reason in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
                let (w, g) = (want.get(reason).copied().unwrap_or(0), got.get(reason).copied().unwrap_or(0));
                if w != g {
                    out.push(format!("dead letters for {reason}: {g}, want {w}"));
                }
            }
        }
        out
    }
}

/// What the pipeline produced.
#[derive(Debug, Default)]
pub struct Observed {
    /// Merged totals (the newest per key).
    pub totals: BTreeMap<Key, Tally>,
    /// Event ids on the late topic.
    pub late: BTreeSet<String>,
    /// Dead letters by (order id, reason code), when the caller read them.
    pub dead_letters: Option<BTreeMap<(String, String), usize>>,
}

impl Observed {
    /// A merged total from the totals topic (a later one for the same key replaces it).
    pub fn total(&mut self, t: &WindowTotal) {
        let start = t.window_start.as_ref().map_or(i64::MIN, |s| s.seconds * 1000 + i64::from(s.nanos) / 1_000_000);
        let key = Key { window_start_ms: start, region: t.region.clone(), tier: t.tier.clone(), currency: t.currency.clone() };
        let mut tally = Tally::default();
        for (i, tt) in [&t.created, &t.paid, &t.cancelled, &t.refunded].into_iter().enumerate() {
            if let Some(tt) = tt {
                tally.count[i] = tt.count;
                tally.amount_minor[i] = tt.amount_minor;
            }
        }
        self.totals.insert(key, tally);
    }

    /// A dead letter: its key and its reason code (compared by reason).
    pub fn dead_letter(&mut self, order_id: &str, reason_code: &str) {
        *self.dead_letters.get_or_insert_with(BTreeMap::new).entry((order_id.to_owned(), reason_code.to_owned())).or_default() += 1;
    }
}

/// The contract's rules for a valid event, in the order the contract lists them; the
/// reason code of the first one broken.
fn check(e: &OrderEvent, s: &Settings) -> Result<(), &'static str> {
    if e.event_id.is_empty() {
        return Err("missing_event_id");
    }
    if e.order_id.is_empty() {
        return Err("missing_order_id");
    }
    if e.merchant_id.is_empty() {
        return Err("missing_merchant_id");
    }
    let Some(time) = e.event_time else { return Err("missing_event_time") };
    // google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    if time.nanos < 0 || time.nanos > 999_999_999 || time.seconds < -62_135_596_800 || time.seconds > 253_402_300_799 {
        return Err("invalid_event_time");
    }
    match e.r#type {
        0 => return Err("unspecified_type"),
        1..=4 => {}
        _ => return Err("unknown_type"),
    }
    if e.amount_minor < 0 {
        return Err("negative_amount");
    }
    if e.currency.len() != 3 || !e.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad_currency");
    }
    // The enricher's limits.
    let ids = [&e.event_id, &e.order_id, &e.merchant_id, &e.storefront_id, &e.customer_id];
    if ids.iter().any(|id| id.len() > 256) {
        return Err("id_too_long");
    }
    let t_ms = time.seconds.saturating_mul(1000).saturating_add(i64::from(time.nanos) / 1_000_000);
    if t_ms.saturating_sub(s.now_ms) > s.max_future_skew_ms {
        return Err("event_time_in_future");
    }
    if e.amount_minor > s.max_amount_minor {
        return Err("amount_too_large");
    }
    if !orderflow_core::validate::Currencies::iso_4217().contains(&e.currency) {
        return Err("unknown_currency");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_proto::millis_timestamp;

    fn event(id: &str, merchant: &str, t: i64, kind: i32, amount: i64) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: format!("o-{id}"),
            merchant_id: merchant.into(),
            r#type: kind,
            amount_minor: amount,
            currency: "CNY".into(),
            event_time: Some(millis_timestamp(t)),
            ..Default::default()
        }
    }

    fn settings() -> Settings {
        Settings { now_ms: 1_000_000_000, ..Settings::default() }
    }

    fn merchants() -> Vec<Merchant> {
        vec![
            Merchant { merchant_id: "m1".into(), region: "east".into(), tier: "gold".into(), effective_from: None },
            Merchant {
                merchant_id: "m1".into(),
                region: "west".into(),
                tier: "gold".into(),
                effective_from: Some(millis_timestamp(120_000)),
            },
        ]
    }

    fn key(start: i64, region: &str, tier: &str) -> Key {
        Key { window_start_ms: start, region: region.into(), tier: tier.into(), currency: "CNY".into() }
    }

    #[test]
    fn windows_merchant_versions_repeats_and_reasons() {
        let mut r = Reference::new(settings(), &merchants());
        assert_eq!(r.add(&event("a", "m1", 59_999, 2, 100)), Fate::Counted(key(0, "east", "gold")));
        assert_eq!(r.add(&event("a", "m1", 59_999, 2, 100)), Fate::Repeat);
        assert_eq!(r.add(&event("b", "m1", 60_000, 1, 7)), Fate::Counted(key(60_000, "east", "gold")));
        assert_eq!(r.add(&event("c", "m1", 120_000, 2, 5)), Fate::Counted(key(120_000, "west", "gold")));
        assert_eq!(r.add(&event("d", "nobody", 121_000, 2, 5)), Fate::Counted(key(120_000, "unknown", "unknown")));
        let mut before_the_epoch = Reference::new(settings(), &merchants());
        assert_eq!(before_the_epoch.add(&event("e", "m1", -1, 2, 1)), Fate::Counted(key(-60_000, "east", "gold")));
        let mut bad = event("f", "m1", 1, 2, -1);
        assert_eq!(r.add(&bad), Fate::Invalid("negative_amount"));
        bad.currency = "RMB-".into();
        assert_eq!(r.add(&bad), Fate::Invalid("negative_amount"), "the first rule broken names the reason");
        bad.amount_minor = 0;
        assert_eq!(r.add(&bad), Fate::Invalid("bad_currency"));
        bad.currency = "ABC".into();
        assert_eq!(r.add(&bad), Fate::Invalid("unknown_currency"));
        assert_eq!(r.add(&event("g", "m1", 1, 0, 1)), Fate::Invalid("unspecified_type"));
        assert_eq!(r.add(&event("h", "m1", 1, 5, 1)), Fate::Invalid("unknown_type"));
        assert_eq!(r.add(&event("i", "m1", 1_000_000_000 + 300_001, 2, 1)), Fate::Invalid("event_time_in_future"));
        assert_eq!((r.events, r.valid_unique, r.repeats), (12, 4, 1));
        let dead: Vec<_> = r.dead_letters().iter().map(|((o, c), n)| format!("{o} {c} {n}")).collect();
        assert_eq!(
            dead,
            [
                "o-f bad_currency 1",
                "o-f negative_amount 2",
                "o-f unknown_currency 1",
                "o-g unspecified_type 1",
                "o-h unknown_type 1",
                "o-i event_time_in_future 1"
            ]
        );
    }

    #[test]
    fn lateness_is_certain_only_past_the_margin() {
        let mut r = Reference::new(settings(), &merchants());
        r.add(&event("a", "m1", 200_000, 2, 1));
        // Window [120 s, 180 s) closes at 185 s: before 200 s, but within the 30 s margin.
        assert_eq!(r.add(&event("maybe", "m1", 179_000, 2, 10)), Fate::MaybeLate);
        // Window [60 s, 120 s) closes at 125 s: certainly late.
        assert_eq!(r.add(&event("late", "m1", 119_000, 2, 10)), Fate::Late);
        // Window [180 s, 240 s): certainly on time.
        assert!(matches!(r.add(&event("ok", "m1", 180_000, 2, 10)), Fate::Counted(_)));

        let mut observed = Observed::default();
        observed.totals.insert(key(180_000, "west", "gold"), Tally { count: [0, 2, 0, 0], amount_minor: [0, 11, 0, 0] });
        observed.late.insert("late".into());
        assert_eq!(r.differences(&observed).len(), 1, "'maybe' is neither counted nor late: {:?}", r.differences(&observed));
        observed.late.insert("maybe".into());
        assert_eq!(r.differences(&observed), Vec::<String>::new());
        // Counted instead of late: as good.
        observed.late.remove("maybe");
        observed.totals.insert(key(120_000, "west", "gold"), Tally { count: [0, 1, 0, 0], amount_minor: [0, 10, 0, 0] });
        assert_eq!(r.differences(&observed), Vec::<String>::new());
        // A certainly late event counted instead is two differences: the total and the late topic.
        observed.late.remove("late");
        observed.totals.insert(key(60_000, "east", "gold"), Tally { count: [0, 1, 0, 0], amount_minor: [0, 10, 0, 0] });
        assert_eq!(r.differences(&observed).len(), 2, "{:?}", r.differences(&observed));
    }

    #[test]
    fn an_event_in_the_wrong_window_key_or_type_is_a_difference() {
        let mut r = Reference::new(settings(), &merchants());
        r.add(&event("a", "m1", 1_000, 2, 100));
        let right = Tally { count: [0, 1, 0, 0], amount_minor: [0, 100, 0, 0] };
        let cases = [
            (key(0, "east", "gold"), right, 0),
            (key(60_000, "east", "gold"), right, 2),
            (key(0, "west", "gold"), right, 2),
            (key(0, "east", "gold"), Tally { count: [1, 0, 0, 0], amount_minor: [100, 0, 0, 0] }, 1),
            (key(0, "east", "gold"), Tally { count: [0, 1, 0, 0], amount_minor: [0, 101, 0, 0] }, 1),
        ];
        for (k, t, n) in cases {
            let mut observed = Observed::default();
            observed.totals.insert(k.clone(), t);
            assert_eq!(r.differences(&observed).len(), n, "{k} {t:?}: {:?}", r.differences(&observed));
        }
        let mut observed = Observed::default();
        observed.totals.insert(key(0, "east", "gold"), right);
        observed.late.insert("a".into());
        assert_eq!(r.differences(&observed).len(), 1, "a counted event also reported late");
        observed.late.clear();
        observed.dead_letter("o-a", "negative_amount");
        assert_eq!(r.differences(&observed).len(), 1, "a dead letter for a valid event");
    }
}
