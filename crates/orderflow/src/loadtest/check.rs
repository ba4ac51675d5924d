//! Whether the pipeline's totals match the trace: pure bookkeeping, no I/O.
//!
//! The reference counts every valid event of the trace once (by event id), joined with
//! the merchant version in effect at its event time, in its window. What the pipeline
//! produced is its merged totals plus the events it reported late (a late event is
//! never counted, and reported instead). The two must be equal key for key.

use std::collections::{BTreeMap, HashSet};

use orderflow_core::dedup::fingerprint;
use orderflow_core::merchant::MerchantTable;
use orderflow_core::validate::validate;
use orderflow_core::window::{type_index, Tallies, TotalKey, WindowSpec};
use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::{EnrichedOrderEvent, OrderEvent, WindowTotal};

/// Totals by (window start, key).
pub type TotalsMap = BTreeMap<(i64, TotalKey), Tallies>;

/// What the trace says the totals must be.
#[derive(Debug)]
pub struct Reference {
    spec: WindowSpec,
    table: MerchantTable,
    seen: HashSet<u128>,
    totals: TotalsMap,
    /// Events read.
    pub events: u64,
    /// Events that fail validation.
    pub invalid: u64,
    /// Repeats of an event id already counted.
    pub duplicates: u64,
}

/// What happened to one trace event in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A valid first sighting, in the window starting at this instant.
    Window(i64),
    /// A repeat of a counted event id.
    Duplicate,
    /// Invalid: the pipeline dead-letters it.
    Invalid,
}

impl Reference {
    pub fn new(spec: WindowSpec, table: MerchantTable) -> Self {
        Self { spec, table, seen: HashSet::new(), totals: TotalsMap::new(), events: 0, invalid: 0, duplicates: 0 }
    }

    /// Counts one trace event.
    pub fn add(&mut self, e: &OrderEvent) -> Counted {
        self.events += 1;
        if validate(e).is_err() {
            self.invalid += 1;
            return Counted::Invalid;
        }
        if !self.seen.insert(fingerprint(&e.event_id)) {
            self.duplicates += 1;
            return Counted::Duplicate;
        }
        let t = timestamp_millis(&e.event_time.expect("validated"));
        let (region, tier, _) = self.table.join(&e.merchant_id, t);
        let start = self.spec.start_of(t);
        let key = TotalKey { region: region.to_owned(), tier: tier.to_owned(), currency: e.currency.clone() };
        self.totals.entry((start, key)).or_default().add(type_index(e.r#type).expect("validated"), e.amount_minor);
        Counted::Window(start)
    }

    /// Valid, unique events.
    pub fn valid_unique(&self) -> u64 {
        self.events - self.invalid - self.duplicates
    }

    /// The reference totals.
    pub fn totals(&self) -> &TotalsMap {
        &self.totals
    }

    /// The last window with a counted event.
    pub fn last_window(&self) -> Option<i64> {
        self.totals.keys().next_back().map(|(w, _)| *w)
    }
}

/// What the pipeline produced: merged totals plus late events.
#[derive(Debug, Default)]
pub struct Observed {
    totals: TotalsMap,
    late_ids: HashSet<u128>,
    /// Late events reported (each id once).
    pub late: u64,
}

impl Observed {
    /// A merged total (the newest one per key wins).
    pub fn total(&mut self, t: &WindowTotal) {
        let start = t.window_start.as_ref().map_or(i64::MIN, timestamp_millis);
        let (key, tallies) = Tallies::from_window_total(t);
        self.totals.insert((start, key), tallies);
    }

    /// A late event, in the window it missed.
    pub fn late(&mut self, spec: &WindowSpec, e: &EnrichedOrderEvent) {
        let Some(event) = e.event.as_ref() else { return };
        let (Some(time), Some(ti)) = (event.event_time.as_ref(), type_index(event.r#type)) else { return };
        if !self.late_ids.insert(fingerprint(&event.event_id)) {
            return;
        }
        self.late += 1;
        let key = TotalKey { region: e.region.clone(), tier: e.tier.clone(), currency: event.currency.clone() };
        self.totals.entry((spec.start_of(timestamp_millis(time)), key)).or_default().add(ti, event.amount_minor);
    }

    /// Compares with the reference; returns the differences (empty: exact).
    pub fn differences(&self, reference: &TotalsMap) -> Vec<String> {
        let mut out = Vec::new();
        for ((w, k), want) in reference {
            match self.totals.get(&(*w, k.clone())) {
                None => out.push(format!("window {} {k}: missing (want {want:?})", orderflow_proto::millis_timestamp(*w))),
                Some(got) if got != want => {
                    out.push(format!("window {} {k}: got {got:?}, want {want:?}", orderflow_proto::millis_timestamp(*w)))
                }
                Some(_) => {}
            }
        }
        for ((w, k), got) in &self.totals {
            if !reference.contains_key(&(*w, k.clone())) && *got != Tallies::default() {
                out.push(format!("window {} {k}: unexpected {got:?}", orderflow_proto::millis_timestamp(*w)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_core::merchant::merchant_at;
    use orderflow_core::window::ClosedWindow;
    use orderflow_proto::millis_timestamp;
    use orderflow_proto::v1::OrderEventType;

    fn event(id: &str, merchant: &str, t: i64, amount: i64) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: format!("o-{id}"),
            merchant_id: merchant.into(),
            r#type: OrderEventType::Paid as i32,
            amount_minor: amount,
            currency: "CNY".into(),
            event_time: Some(millis_timestamp(t)),
            ..Default::default()
        }
    }

    fn reference() -> Reference {
        let mut table = MerchantTable::new();
        table.upsert(&merchant_at("m1", "cn-east", "tmall", None)).expect("a valid merchant");
        Reference::new(WindowSpec::new(60_000, 5_000).unwrap(), table)
    }

    #[test]
    fn counts_valid_unique_events_and_joins_merchants() {
        let mut r = reference();
        assert_eq!(r.add(&event("a", "m1", 1_000, 100)), Counted::Window(0));
        assert_eq!(r.add(&event("a", "m1", 1_000, 100)), Counted::Duplicate);
        assert_eq!(r.add(&event("b", "m1", -5, 100)), Counted::Window(-60_000));
        assert_eq!(r.add(&event("c", "nobody", 61_000, 7)), Counted::Window(60_000));
        assert_eq!(r.add(&event("d", "m1", 2_000, -1)), Counted::Invalid);
        assert_eq!((r.events, r.invalid, r.duplicates, r.valid_unique()), (5, 1, 1, 3));
        let keys: Vec<String> = r.totals().keys().map(|(w, k)| format!("{w} {k}")).collect();
        assert_eq!(keys, ["-60000 cn-east/tmall/CNY", "0 cn-east/tmall/CNY", "60000 unknown/unknown/CNY"]);
        assert_eq!(r.last_window(), Some(60_000));
    }

    #[test]
    fn totals_plus_late_events_must_equal_the_reference() {
        let spec = WindowSpec::new(60_000, 5_000).unwrap();
        let mut r = reference();
        r.add(&event("a", "m1", 1_000, 100));
        r.add(&event("b", "m1", 2_000, 50));
        let mut table = MerchantTable::new();
        table.upsert(&merchant_at("m1", "cn-east", "tmall", None)).expect("a valid merchant");
        let counted = table.enrich(event("a", "m1", 1_000, 100));
        let late = table.enrich(event("b", "m1", 2_000, 50));
        let mut tallies = Tallies::default();
        tallies.add(1, 100);
        let key = TotalKey { region: "cn-east".into(), tier: "tmall".into(), currency: "CNY".into() };
        let window = ClosedWindow { start_ms: 0, end_ms: 60_000, totals: vec![(key, tallies)] };
        let total = window.to_window_totals().next().unwrap();

        let mut o = Observed::default();
        o.total(&total);
        assert_eq!(o.differences(r.totals()).len(), 1, "b is neither counted nor reported late");
        o.late(&spec, &late);
        o.late(&spec, &late);
        assert_eq!(o.late, 1, "a late event reported twice is one late event");
        assert!(o.differences(r.totals()).is_empty(), "{:?}", o.differences(r.totals()));
        o.late(&spec, &counted);
        assert_eq!(o.differences(r.totals()).len(), 1, "an event both counted and reported late is a difference");
    }
}
