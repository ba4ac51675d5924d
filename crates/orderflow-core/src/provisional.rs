//! The provisional figures: what the windows not yet published hold so far, summed over
//! every input partition, kept by the merger beside the exact merge.
//!
//! Each input partition's aggregator writes, every `--provisional-interval`, a snapshot
//! of its open windows (one total per window and key). A window then closes on the
//! partition (its partial totals arrive) and, once every partition has closed it, the
//! merger publishes its final total. [`Provisional`] holds, per (window, key, input
//! partition), the highest tallies heard from snapshots and partials, for windows not
//! yet final, and drops a window in the step that makes it final
//! ([`Provisional::finalize_through`]). So "final + provisional" counts every event
//! once: before the window is final in the provisional figures only, after in the final
//! totals only.
//!
//! Why the highest, per type, and not the latest: a partition's state is a function of
//! its log's prefix, so whatever a snapshot or partial says, the partition's final
//! partial for that window will say at least as much (events are only ever added to an
//! open window; amounts are never negative). A snapshot from a partition restored from
//! an older checkpoint, still catching up, says less than its predecessor's last one:
//! keeping the highest keeps the figures from dipping while it catches up, and never
//! counts more than the final total will. A window's partials (the partition's final
//! word on it) replace what its snapshots said the same way.
//!
//! Bounded: entries exist only for windows not yet final, and per window at most one
//! per (key, partition), like the merge's own pending state.

use std::collections::{BTreeMap, HashMap};

use crate::window::{Tallies, TotalKey, TYPE_NAMES};

/// A window's provisional state.
#[derive(Debug, Default)]
struct Window {
    end_ms: i64,
    /// Highest tallies heard per (key, input partition).
    parts: HashMap<(TotalKey, i32), Tallies>,
    /// Newest broker timestamp of an event counted in it, as reported (0: unknown).
    newest_record_ms: i64,
}

/// A window made final, for the end-to-end latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finalized {
    pub start_ms: i64,
    /// Newest broker timestamp reported for its events (0 when none was).
    pub newest_record_ms: i64,
}

/// The provisional figures of windows not yet final (see the module docs).
#[derive(Debug, Default)]
pub struct Provisional {
    windows: BTreeMap<i64, Window>,
    /// Every window ending at or before this is final (or was before this state began).
    final_through_ms: Option<i64>,
}

/// The figures as exported: events by (region, tier, type) and amounts by (region,
/// tier, currency, type), summed over windows and partitions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    pub events: BTreeMap<(String, String, &'static str), i64>,
    pub amounts: BTreeMap<(String, String, String, &'static str), i64>,
}

fn raise(into: &mut Tallies, from: &Tallies) {
    for (a, b) in into.0.iter_mut().zip(from.0.iter()) {
        a.count = a.count.max(b.count);
        a.amount_minor = a.amount_minor.max(b.amount_minor);
    }
}

impl Provisional {
    /// No figures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the window ending at `end_ms` is final already.
    fn is_final(&self, end_ms: i64) -> bool {
        self.final_through_ms.is_some_and(|f| end_ms <= f)
    }

    fn window(&mut self, start_ms: i64, end_ms: i64) -> Option<&mut Window> {
        if self.is_final(end_ms) {
            return None;
        }
        Some(self.windows.entry(start_ms).or_insert_with(|| Window { end_ms, ..Default::default() }))
    }

    /// Takes in one total heard from `partition` for a window not yet final: a key of a
    /// snapshot of its open windows, or one of its partials. Ignored for a final window.
    pub fn heard(&mut self, partition: i32, start_ms: i64, end_ms: i64, key: &TotalKey, tallies: &Tallies, newest_record_ms: i64) {
        let Some(w) = self.window(start_ms, end_ms) else { return };
        w.newest_record_ms = w.newest_record_ms.max(newest_record_ms);
        match w.parts.get_mut(&(key.clone(), partition)) {
            Some(t) => raise(t, tallies),
            None => {
                w.parts.insert((key.clone(), partition), *tallies);
            }
        }
    }

    /// Makes every window ending at or before `through_ms` final: drops its figures and
    /// returns it (oldest first). Windows heard of after this for that range are ignored.
    pub fn finalize_through(&mut self, through_ms: i64) -> Vec<Finalized> {
        if self.final_through_ms.is_some_and(|f| through_ms <= f) {
            return Vec::new();
        }
        self.final_through_ms = Some(through_ms);
        let mut done = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            if entry.get().end_ms > through_ms {
                // Windows are ordered by start; one ending later may still precede one
                // ending earlier only with mixed sizes, which a merger never sees.
                break;
            }
            let (start_ms, w) = entry.remove_entry();
            done.push(Finalized { start_ms, newest_record_ms: w.newest_record_ms });
        }
        done
    }

    /// Forgets everything (the merger starts over).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Windows held.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// The sum over every window, key and partition.
    pub fn figures(&self) -> Figures {
        let mut f = Figures::default();
        for w in self.windows.values() {
            for ((key, _), tallies) in &w.parts {
                for (name, t) in TYPE_NAMES.iter().zip(tallies.0.iter()) {
                    if t.count == 0 && t.amount_minor == 0 {
                        continue;
                    }
                    let e = f.events.entry((key.region.clone(), key.tier.clone(), *name)).or_default();
                    *e = e.saturating_add(t.count);
                    let a = f.amounts.entry((key.region.clone(), key.tier.clone(), key.currency.clone(), *name)).or_default();
                    *a = a.saturating_add(t.amount_minor);
                }
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn key(region: &str) -> TotalKey {
        TotalKey { region: region.into(), tier: "gold".into(), currency: "CNY".into() }
    }

    /// `n` paid events of 10 each.
    fn paid(n: i64) -> Tallies {
        let mut t = Tallies::default();
        (0..n).for_each(|_| t.add(1, 10));
        t
    }

    fn paid_amount(p: &Provisional, region: &str) -> i64 {
        p.figures().amounts.get(&(region.into(), "gold".into(), "CNY".into(), "paid")).copied().unwrap_or(0)
    }

    #[test]
    fn sums_every_partition_and_window_exactly() {
        let mut p = Provisional::new();
        p.heard(0, 0, MIN, &key("east"), &paid(2), 0);
        p.heard(1, 0, MIN, &key("east"), &paid(3), 0);
        p.heard(1, MIN, 2 * MIN, &key("east"), &paid(4), 0);
        p.heard(1, MIN, 2 * MIN, &key("west"), &paid(1), 0);
        let f = p.figures();
        assert_eq!(f.events.get(&("east".into(), "gold".into(), "paid")), Some(&9));
        assert_eq!(paid_amount(&p, "east"), 90);
        assert_eq!(paid_amount(&p, "west"), 10);
        assert_eq!(f.events.len(), 2, "only the types with events: {f:?}");
    }

    #[test]
    fn a_partitions_newer_snapshot_replaces_its_older_one() {
        let mut p = Provisional::new();
        p.heard(0, 0, MIN, &key("east"), &paid(2), 0);
        p.heard(1, 0, MIN, &key("east"), &paid(1), 0);
        p.heard(0, 0, MIN, &key("east"), &paid(5), 0);
        assert_eq!(paid_amount(&p, "east"), 60, "partition 0's 5 replaced its 2; partition 1's 1 stays");
    }

    /// The final total enters the counters in the step that drops the window here, and
    /// the final total is at least what was provisional: "so far" never dips, and never
    /// counts the window twice.
    #[test]
    fn a_window_moves_from_open_to_final_once() {
        let mut p = Provisional::new();
        p.heard(0, 0, MIN, &key("east"), &paid(2), 1_000);
        p.heard(1, 0, MIN, &key("east"), &paid(3), 2_000);
        p.heard(0, MIN, 2 * MIN, &key("east"), &paid(7), 3_000);
        // Partition 0 closes window 0 with 4 events (two more than its snapshot said).
        p.heard(0, 0, MIN, &key("east"), &paid(4), 1_500);
        assert_eq!(paid_amount(&p, "east"), 140);
        let mut final_counter = 0;
        let so_far_before = final_counter + paid_amount(&p, "east");
        // Merged: 4 + 3 = 7 events, 70.
        final_counter += 70;
        assert_eq!(p.finalize_through(MIN), vec![Finalized { start_ms: 0, newest_record_ms: 2_000 }]);
        assert_eq!(paid_amount(&p, "east"), 70, "only window 1 is provisional now");
        assert_eq!(final_counter + paid_amount(&p, "east"), so_far_before, "no dip, no double count");
        // A late snapshot of the final window changes nothing.
        p.heard(1, 0, MIN, &key("east"), &paid(3), 0);
        assert_eq!(paid_amount(&p, "east"), 70);
        assert!(p.finalize_through(MIN).is_empty(), "already final");
        assert_eq!(p.finalize_through(2 * MIN).len(), 1);
        assert_eq!(p.figures(), Figures::default());
        assert_eq!(p.windows(), 0);
    }

    /// A partition restored from an older checkpoint re-processes its log: its first
    /// snapshots say less than its previous owner's last one. The figures keep the
    /// highest (its final partial will be at least that), so they do not dip.
    #[test]
    fn a_restored_partitions_smaller_snapshot_does_not_pull_the_figures_down() {
        let mut p = Provisional::new();
        p.heard(0, 0, MIN, &key("east"), &paid(5), 0);
        let mut restored = paid(3);
        restored.add(0, 100); // a type the old snapshot did not have yet
        p.heard(0, 0, MIN, &key("east"), &restored, 0);
        assert_eq!(paid_amount(&p, "east"), 50);
        let created = p.figures().amounts.get(&("east".into(), "gold".into(), "CNY".into(), "created")).copied();
        assert_eq!(created, Some(100));
        p.heard(0, 0, MIN, &key("east"), &paid(6), 0);
        assert_eq!(paid_amount(&p, "east"), 60, "caught up and past");
    }

    #[test]
    fn reset_forgets_everything() {
        let mut p = Provisional::new();
        p.heard(0, 0, MIN, &key("east"), &paid(5), 0);
        p.finalize_through(-MIN);
        p.reset();
        assert_eq!(p.figures(), Figures::default());
        p.heard(0, -2 * MIN, -MIN, &key("east"), &paid(1), 0);
        assert_eq!(paid_amount(&p, "east"), 10, "the finality frontier was forgotten too");
    }
}
