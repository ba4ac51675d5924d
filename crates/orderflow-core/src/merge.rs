//! Merges per-partition partial totals into one exact total per key.
//!
//! Each input partition's aggregator publishes, for every window it closes, one partial
//! total per key, followed by its progress: "every window ending at or before T is
//! closed on partition p". A window is complete once every partition's progress has
//! passed its end; then the partials are summed and the window is emitted, once.
//! Partials are identified by (window, key, partition): the same partial arriving again
//! (an aggregator re-processing after a crash) is harmless, and a different value under
//! the same identity is reported as a conflict, never silently summed.
//!
//! A partial that arrives after its window was emitted (progress far ahead of the
//! partials, say, from a partition whose clock ran ahead) is not ignored: the last
//! [`DEFAULT_RETAINED_WINDOWS`] emitted windows are kept, and a partial new to one of
//! them, or to a window newer than the oldest kept, is added and its key's corrected
//! total emitted at once ([`PartialOutcome::Corrected`]), so the merge never freezes
//! and totals end exact. Only a partial for a window older than every kept one is
//! refused ([`PartialOutcome::TooLate`]), and the caller says so loudly.
//!
//! The whole state goes to and from a [`MergerCheckpoint`] ([`Merger::checkpoint`],
//! [`Merger::restore`]) with the partial-totals offset it covers: the state after
//! offset X is a function of the records up to X, so a merger restored from it and
//! fed the records after X is, record by record, the merger that never stopped.

use std::collections::{BTreeMap, HashMap};

use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::{MergerCheckpoint, MergerFrontier, MergerKey, MergerWindow, PartialTotal, PartitionProgress};

use crate::window::{ClosedWindow, Tallies, TotalKey};
use crate::{Error, Result};

/// What became of a partial total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialOutcome {
    /// Held until its window completes.
    Accepted,
    /// Seen before with the same value.
    Repeated,
    /// New to a window already emitted: added, and here is its key's corrected total
    /// (a window holding that one key) to publish in place of the earlier one.
    Corrected(ClosedWindow),
    /// For a window older than every emitted window kept: not merged.
    TooLate,
}

/// Emitted windows kept for corrections when not told otherwise (two hours of
/// one-minute windows).
pub const DEFAULT_RETAINED_WINDOWS: usize = 120;

/// Version of the [`MergerCheckpoint`] format written by [`Merger::checkpoint`].
pub const CHECKPOINT_VERSION: u32 = 1;

/// Numbers per part in a [`MergerWindow`]: key index, partition, four (count, amount).
const PART_NUMBERS: usize = 10;

#[derive(Debug, Default, PartialEq, Eq)]
struct PendingWindow {
    end_ms: i64,
    parts: HashMap<(TotalKey, i32), Tallies>,
}

/// The merge state.
#[derive(Debug, PartialEq, Eq)]
pub struct Merger {
    partition_count: i32,
    /// The input's partition count when the caller knows it (the aggregator reads it
    /// from the enriched topic): progress records then cannot change it.
    known_partitions: Option<i32>,
    frontiers: HashMap<i32, i64>,
    pending: BTreeMap<i64, PendingWindow>,
    /// The last windows emitted, with their parts, for corrections.
    emitted: BTreeMap<i64, PendingWindow>,
    emitted_through_ms: Option<i64>,
    retained_windows: usize,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new()
    }
}

impl Merger {
    /// An empty merger; it learns the partition count from progress records.
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_RETAINED_WINDOWS)
    }

    /// An empty merger keeping the last `retained_windows` (at least one) emitted
    /// windows for corrections.
    pub fn with_retention(retained_windows: usize) -> Self {
        Self {
            partition_count: 0,
            known_partitions: None,
            frontiers: HashMap::new(),
            pending: BTreeMap::new(),
            emitted: BTreeMap::new(),
            emitted_through_ms: None,
            retained_windows: retained_windows.max(1),
        }
    }

    /// Merges over exactly `partitions` input partitions: a progress record naming
    /// another count (a hostile or stray writer claiming millions, which would hold
    /// every window back for good) or a partition outside them is ignored
    /// ([`Self::progress`] returns `None` for it).
    pub fn for_partitions(mut self, partitions: i32) -> Self {
        self.known_partitions = Some(partitions);
        self.partition_count = partitions;
        self
    }

    /// Whether a progress record fits the known partition count (always, when unknown).
    pub fn fits(&self, p: &PartitionProgress) -> bool {
        self.known_partitions.is_none_or(|n| p.partition_count == n && (0..n).contains(&p.partition))
    }

    /// Every window ending at or before this has been emitted.
    pub fn emitted_through_ms(&self) -> Option<i64> {
        self.emitted_through_ms
    }

    /// Windows waiting for some partition.
    pub fn pending_windows(&self) -> usize {
        self.pending.len()
    }

    /// The partials held for windows not emitted yet, as (window start, window end,
    /// key, input partition, tallies): what a merger restored from a checkpoint tells
    /// its provisional figures.
    pub fn pending_parts(&self) -> impl Iterator<Item = (i64, i64, &TotalKey, i32, &Tallies)> {
        self.pending.iter().flat_map(|(start, w)| w.parts.iter().map(move |((key, p), t)| (*start, w.end_ms, key, *p, t)))
    }

    /// Takes in one partial total.
    pub fn add_partial(&mut self, p: &PartialTotal) -> Result<PartialOutcome> {
        let Some(total) = p.total.as_ref() else { return Ok(PartialOutcome::Repeated) };
        let (Some(start), Some(end)) = (total.window_start.as_ref(), total.window_end.as_ref()) else {
            return Ok(PartialOutcome::Repeated);
        };
        let (start, end) = (timestamp_millis(start), timestamp_millis(end));
        let (key, tallies) = Tallies::from_window_total(total);
        let emitted = self.emitted_through_ms.is_some_and(|e| end <= e);
        if emitted && self.emitted.len() >= self.retained_windows && self.emitted.first_key_value().is_some_and(|(s, _)| start < *s) {
            return Ok(PartialOutcome::TooLate);
        }
        let windows = if emitted { &mut self.emitted } else { &mut self.pending };
        let window = windows.entry(start).or_insert_with(|| PendingWindow { end_ms: end, ..Default::default() });
        match window.parts.get(&(key.clone(), p.partition)) {
            Some(existing) if *existing == tallies => Ok(PartialOutcome::Repeated),
            Some(_) => Err(Error::ConflictingPartial { window_start_ms: start, key: key.to_string(), partition: p.partition }),
            None if !emitted => {
                window.parts.insert((key, p.partition), tallies);
                Ok(PartialOutcome::Accepted)
            }
            None => {
                window.parts.insert((key.clone(), p.partition), tallies);
                let mut merged = Tallies::default();
                window.parts.iter().filter(|((k, _), _)| *k == key).for_each(|(_, t)| merged.merge(t));
                self.prune();
                Ok(PartialOutcome::Corrected(ClosedWindow { start_ms: start, end_ms: end, totals: vec![(key, merged)] }))
            }
        }
    }

    /// Takes in one partition's progress; returns the windows it completes, merged,
    /// oldest first.
    pub fn progress(&mut self, p: &PartitionProgress) -> Vec<ClosedWindow> {
        if !self.fits(p) {
            return Vec::new();
        }
        self.partition_count = self.partition_count.max(p.partition_count);
        if let Some(t) = p.closed_through.as_ref() {
            let t = timestamp_millis(t);
            let f = self.frontiers.entry(p.partition).or_insert(i64::MIN);
            *f = (*f).max(t);
        }
        if self.partition_count == 0 {
            return Vec::new();
        }
        // The lowest frontier of partitions 0..partition_count (`i64::MIN` while one of
        // them has none), from the frontiers heard of: a count is not a cost.
        let count = self.partition_count;
        let (heard, lowest) =
            self.frontiers.iter().filter(|(p, _)| (0..count).contains(*p)).fold((0, i64::MAX), |(n, low), (_, f)| (n + 1, low.min(*f)));
        let global = if heard < count { i64::MIN } else { lowest };
        if global == i64::MIN || self.emitted_through_ms.is_some_and(|e| global <= e) {
            return Vec::new();
        }
        self.emitted_through_ms = Some(global);
        let mut done = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().end_ms > global {
                break;
            }
            let (start, window) = entry.remove_entry();
            let mut merged: BTreeMap<TotalKey, Tallies> = BTreeMap::new();
            for ((key, _), t) in &window.parts {
                merged.entry(key.clone()).or_default().merge(t);
            }
            done.push(ClosedWindow { start_ms: start, end_ms: window.end_ms, totals: merged.into_iter().collect() });
            self.emitted.insert(start, window);
        }
        self.prune();
        done
    }

    /// The whole state as a checkpoint covering the partial-totals records of `topic`
    /// before `next_offset`. Windows and their parts are written in a fixed order, so
    /// equal states give equal bytes.
    pub fn checkpoint(&self, topic: &str, next_offset: i64) -> MergerCheckpoint {
        let windows = |ws: &BTreeMap<i64, PendingWindow>| {
            ws.iter()
                .map(|(start, w)| {
                    let mut parts: Vec<_> = w.parts.iter().collect();
                    parts.sort_by(|a, b| a.0.cmp(b.0));
                    let mut keys: Vec<MergerKey> = Vec::new();
                    let mut numbers = Vec::with_capacity(parts.len() * PART_NUMBERS);
                    for ((key, partition), t) in parts {
                        // Sorted by key: a new key is always the last one listed.
                        if keys.last().is_none_or(|k| k.region != key.region || k.tier != key.tier || k.currency != key.currency) {
                            keys.push(MergerKey { region: key.region.clone(), tier: key.tier.clone(), currency: key.currency.clone() });
                        }
                        numbers.extend([keys.len() as i64 - 1, i64::from(*partition)]);
                        numbers.extend(t.0.iter().flat_map(|x| [x.count, x.amount_minor]));
                    }
                    MergerWindow { start_ms: *start, end_ms: w.end_ms, keys, parts: numbers }
                })
                .collect()
        };
        let mut frontiers: Vec<_> = self.frontiers.iter().map(|(p, f)| MergerFrontier { partition: *p, closed_through_ms: *f }).collect();
        frontiers.sort_by_key(|f| f.partition);
        MergerCheckpoint {
            version: CHECKPOINT_VERSION,
            topic: topic.to_owned(),
            next_offset,
            partition_count: self.partition_count,
            known_partitions: self.known_partitions.unwrap_or(0),
            frontiers,
            pending: windows(&self.pending),
            emitted: windows(&self.emitted),
            has_emitted_through: self.emitted_through_ms.is_some(),
            emitted_through_ms: self.emitted_through_ms.unwrap_or(0),
            retained_windows: u32::try_from(self.retained_windows).unwrap_or(u32::MAX),
        }
    }

    /// The merger a checkpoint holds. Refused: another version, or a checkpoint taken
    /// over another known partition count than `partitions` (the input was re-created
    /// with another size; the caller then starts from the topic's beginning).
    pub fn restore(cp: &MergerCheckpoint, partitions: Option<i32>) -> Result<Self> {
        let refuse = |reason: String| Error::Checkpoint { topic: cp.topic.clone(), partition: 0, reason };
        if cp.version != CHECKPOINT_VERSION {
            return Err(refuse(format!("merger checkpoint version {} (this merger reads version {CHECKPOINT_VERSION})", cp.version)));
        }
        let known = (cp.known_partitions > 0).then_some(cp.known_partitions);
        if let Some(n) = partitions.filter(|n| known != Some(*n)) {
            return Err(refuse(format!("merger checkpoint taken over {} input partitions, the input has {n}", cp.known_partitions)));
        }
        let windows = |ws: &[MergerWindow]| -> Result<BTreeMap<i64, PendingWindow>> {
            let mut out = BTreeMap::new();
            for w in ws {
                if w.parts.len() % PART_NUMBERS != 0 {
                    return Err(refuse(format!(
                        "window {} has {} part numbers, not a multiple of {PART_NUMBERS}",
                        w.start_ms,
                        w.parts.len()
                    )));
                }
                let keys: Vec<TotalKey> = w
                    .keys
                    .iter()
                    .map(|k| TotalKey { region: k.region.clone(), tier: k.tier.clone(), currency: k.currency.clone() })
                    .collect();
                let mut parts = HashMap::with_capacity(w.parts.len() / PART_NUMBERS);
                for n in w.parts.chunks_exact(PART_NUMBERS) {
                    let key = usize::try_from(n[0]).ok().and_then(|i| keys.get(i));
                    let (Some(key), Ok(partition)) = (key, i32::try_from(n[1])) else {
                        return Err(refuse(format!("window {} names key {} of {} or partition {}", w.start_ms, n[0], keys.len(), n[1])));
                    };
                    let mut t = Tallies::default();
                    for (i, x) in t.0.iter_mut().enumerate() {
                        (x.count, x.amount_minor) = (n[2 + 2 * i], n[3 + 2 * i]);
                    }
                    parts.insert((key.clone(), partition), t);
                }
                out.insert(w.start_ms, PendingWindow { end_ms: w.end_ms, parts });
            }
            Ok(out)
        };
        Ok(Self {
            partition_count: cp.partition_count,
            known_partitions: known,
            frontiers: cp.frontiers.iter().map(|f| (f.partition, f.closed_through_ms)).collect(),
            pending: windows(&cp.pending)?,
            emitted: windows(&cp.emitted)?,
            emitted_through_ms: cp.has_emitted_through.then_some(cp.emitted_through_ms),
            retained_windows: (cp.retained_windows as usize).max(1),
        })
    }

    /// Keeps the last `retained_windows` emitted windows.
    fn prune(&mut self) {
        while self.emitted.len() > self.retained_windows {
            self.emitted.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_proto::millis_timestamp;

    fn partial(start: i64, region: &str, partition: i32, paid: i64) -> PartialTotal {
        let mut t = Tallies::default();
        for _ in 0..paid {
            t.add(1, 10);
        }
        let key = TotalKey { region: region.into(), tier: "gold".into(), currency: "CNY".into() };
        PartialTotal { total: Some(t.to_window_total(start, start + 60, &key)), partition, newest_record_ms: 0 }
    }

    fn progress(partition: i32, through: i64) -> PartitionProgress {
        PartitionProgress { partition, closed_through: Some(millis_timestamp(through)), partition_count: 2 }
    }

    #[test]
    fn waits_for_every_partition_then_sums_each_key_once() {
        let mut m = Merger::new();
        assert_eq!(m.add_partial(&partial(0, "east", 0, 2)).unwrap(), PartialOutcome::Accepted);
        assert_eq!(m.add_partial(&partial(0, "east", 0, 2)).unwrap(), PartialOutcome::Repeated);
        assert!(m.progress(&progress(0, 60)).is_empty(), "partition 1 has not closed window 0");
        m.add_partial(&partial(0, "east", 1, 3)).unwrap();
        m.add_partial(&partial(0, "west", 1, 1)).unwrap();
        m.add_partial(&partial(60, "east", 1, 5)).unwrap();
        let done = m.progress(&progress(1, 120));
        assert_eq!(done.len(), 1, "window 60 still waits for partition 0");
        let w = &done[0];
        assert_eq!(w.start_ms, 0);
        let paid: Vec<_> = w.totals.iter().map(|(k, t)| (k.region.as_str(), t.0[1].count, t.0[1].amount_minor)).collect();
        assert_eq!(paid, vec![("east", 5, 50), ("west", 1, 10)]);
        // A re-emitted partial for an emitted window is ignored.
        assert_eq!(m.add_partial(&partial(0, "east", 0, 2)).unwrap(), PartialOutcome::Repeated);
        let done = m.progress(&progress(0, 120));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].totals[0].1 .0[1].count, 5);
        assert_eq!(m.pending_windows(), 0);
        assert_eq!(m.emitted_through_ms(), Some(120));
    }

    /// Found by fuzzing (the `partial_records` target): a progress record claiming
    /// 1,573,430,460 partitions made the merger look each of them up, on that record
    /// and every progress record after it: about a minute each, the merger stalled.
    #[test]
    fn a_huge_partition_count_costs_no_more_than_the_partitions_heard_from() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut m = Merger::new();
            m.add_partial(&partial(0, "east", 0, 2)).unwrap();
            let mut huge = progress(0, 60);
            huge.partition_count = 1_573_430_460;
            assert!(m.progress(&huge).is_empty());
            huge.partition_count = i32::MAX;
            for p in 0..100 {
                assert!(m.progress(&PartitionProgress { partition: p, ..huge }).is_empty(), "others have not closed it");
            }
            done.send(m.pending_windows()).unwrap();
        });
        assert_eq!(finished.recv_timeout(std::time::Duration::from_secs(5)), Ok(1), "the merger stalled");
    }

    /// Partial totals whose counts add up past `i64::MAX` (a record on the partial-totals
    /// topic can claim any count) overflowed the merge; they saturate, like amounts.
    #[test]
    fn counts_beyond_the_largest_saturate() {
        let mut m = Merger::new();
        let mut big = partial(0, "east", 0, 1);
        big.total.as_mut().unwrap().paid.as_mut().unwrap().count = i64::MAX;
        m.add_partial(&big).unwrap();
        m.add_partial(&partial(0, "east", 1, 1)).unwrap();
        m.progress(&progress(0, 60));
        let done = m.progress(&progress(1, 60));
        assert_eq!(done[0].totals[0].1 .0[1].count, i64::MAX);
    }

    /// The partials held for windows not emitted yet, each with its window, key and
    /// partition; emitted windows' partials are not among them.
    #[test]
    fn pending_parts_are_the_partials_of_windows_not_emitted() {
        let mut m = Merger::new().for_partitions(2);
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        m.add_partial(&partial(0, "east", 1, 3)).unwrap();
        m.add_partial(&partial(60, "west", 1, 1)).unwrap();
        let parts = |m: &Merger| {
            let mut parts: Vec<_> = m.pending_parts().map(|(s, e, k, p, t)| (s, e, k.region.clone(), p, t.0[1].count)).collect();
            parts.sort();
            parts
        };
        assert_eq!(parts(&m), vec![(0, 60, "east".into(), 0, 2), (0, 60, "east".into(), 1, 3), (60, 120, "west".into(), 1, 1)]);
        m.progress(&progress(0, 60));
        assert_eq!(m.progress(&progress(1, 60)).len(), 1);
        assert_eq!(parts(&m), vec![(60, 120, "west".into(), 1, 1)]);
    }

    /// Nothing is emitted, and nothing counts as emitted, while a partition has not
    /// been heard from; nor does a partition heard from late move the frontier back.
    #[test]
    fn the_emitted_frontier_waits_for_every_partition_and_never_goes_back() {
        let mut m = Merger::new().for_partitions(2);
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        assert!(m.progress(&progress(0, 60)).is_empty());
        assert_eq!(m.emitted_through_ms(), None);
        // A learning merger first hears of one partition, then of a second behind it.
        let mut learning = Merger::new();
        let alone = PartitionProgress { partition_count: 1, ..progress(0, 120) };
        assert!(learning.progress(&alone).is_empty());
        assert_eq!(learning.emitted_through_ms(), Some(120));
        learning.add_partial(&partial(0, "east", 1, 1)).unwrap();
        assert!(learning.progress(&progress(1, 60)).is_empty());
        assert_eq!(learning.emitted_through_ms(), Some(120), "not back to 60");
    }

    /// The oldest window kept still takes corrections once the retention is full;
    /// only older ones are too late.
    #[test]
    fn the_oldest_window_kept_still_takes_corrections() {
        let mut m = Merger::with_retention(2);
        m.add_partial(&partial(0, "east", 0, 1)).unwrap();
        m.add_partial(&partial(60, "east", 0, 1)).unwrap();
        m.progress(&progress(0, 120));
        assert_eq!(m.progress(&progress(1, 120)).len(), 2);
        let PartialOutcome::Corrected(w) = m.add_partial(&partial(0, "east", 1, 4)).unwrap() else { panic!("a correction") };
        assert_eq!((w.start_ms, w.totals[0].1 .0[1].count), (0, 5));
        assert_eq!(m.add_partial(&partial(-60, "east", 1, 4)).unwrap(), PartialOutcome::TooLate);
    }

    /// A window's keys are listed once each in its checkpoint, keys differing in any
    /// part (region, tier or currency) apart, and the parts name them by index.
    #[test]
    fn a_checkpoint_lists_each_key_once() {
        let mut m = Merger::new().for_partitions(2);
        let with = |tier: &str, currency: &str, partition: i32| {
            let mut p = partial(0, "east", partition, 1);
            let total = p.total.as_mut().unwrap();
            (total.tier, total.currency) = (tier.into(), currency.into());
            p
        };
        for p in [with("gold", "CNY", 0), with("gold", "CNY", 1), with("gold", "USD", 0), with("silver", "CNY", 1)] {
            m.add_partial(&p).unwrap();
        }
        let cp = m.checkpoint("t", 4);
        let keys: Vec<_> = cp.pending[0].keys.iter().map(|k| format!("{}/{}/{}", k.region, k.tier, k.currency)).collect();
        assert_eq!(keys, ["east/gold/CNY", "east/gold/USD", "east/silver/CNY"]);
        let named: Vec<_> = cp.pending[0].parts.chunks(PART_NUMBERS).map(|n| (n[0], n[1])).collect();
        assert_eq!(named, [(0, 0), (0, 1), (1, 0), (2, 1)]);
        assert_eq!(Merger::restore(&cp, Some(2)).unwrap(), m);
    }

    #[test]
    fn a_conflicting_partial_is_an_error() {
        let mut m = Merger::new();
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        let err = m.add_partial(&partial(0, "east", 0, 3)).unwrap_err();
        assert!(err.to_string().contains("conflicting partial totals"), "{err}");
    }

    /// Progress far ahead of the partials (every partition's frontier pushed a day on)
    /// does not freeze the merge: partials of windows it passed still arrive in the
    /// totals, as corrections, and end exact; only windows older than the retention are
    /// refused.
    #[test]
    fn progress_far_ahead_does_not_freeze_the_merge() {
        const DAY: i64 = 86_400_000;
        let mut m = Merger::with_retention(3);
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        let done = m.progress(&progress(0, DAY));
        assert!(done.is_empty());
        let done = m.progress(&progress(1, DAY));
        assert_eq!(done.len(), 1, "window 0 emitted with what it had");
        assert_eq!(done[0].totals[0].1 .0[1].count, 2);
        // Partition 1's partial of window 0 arrives after the jump: a correction.
        let PartialOutcome::Corrected(w) = m.add_partial(&partial(0, "east", 1, 3)).unwrap() else { panic!("a correction") };
        assert_eq!((w.start_ms, w.totals.len(), w.totals[0].1 .0[1].count, w.totals[0].1 .0[1].amount_minor), (0, 1, 5, 50));
        assert_eq!(m.add_partial(&partial(0, "east", 1, 3)).unwrap(), PartialOutcome::Repeated);
        assert!(m.add_partial(&partial(0, "east", 1, 4)).is_err(), "a different value is still a conflict");
        // A window never seen before the jump is corrected into existence, key by key.
        let PartialOutcome::Corrected(w) = m.add_partial(&partial(600, "west", 0, 1)).unwrap() else { panic!("a correction") };
        assert_eq!((w.start_ms, w.totals[0].0.region.as_str(), w.totals[0].1 .0[1].count), (600, "west", 1));
        let PartialOutcome::Corrected(w) = m.add_partial(&partial(600, "west", 1, 1)).unwrap() else { panic!("a correction") };
        assert_eq!(w.totals[0].1 .0[1].count, 2);
        // Three windows are kept (0, 600, and now 1200); a fourth pushes out window 0.
        assert!(matches!(m.add_partial(&partial(1200, "east", 0, 1)).unwrap(), PartialOutcome::Corrected(_)));
        assert!(matches!(m.add_partial(&partial(1800, "east", 0, 1)).unwrap(), PartialOutcome::Corrected(_)));
        assert_eq!(m.emitted.len(), 3, "emitted windows kept: at most the retention");
        assert_eq!(m.add_partial(&partial(0, "east", 0, 2)).unwrap(), PartialOutcome::TooLate);
        assert_eq!(m.add_partial(&partial(60, "east", 0, 1)).unwrap(), PartialOutcome::TooLate);
        assert!(matches!(m.add_partial(&partial(900, "east", 0, 1)).unwrap(), PartialOutcome::Corrected(_)), "newer than the oldest kept");
    }

    /// With the partition count known, a progress record claiming another count, or a
    /// partition outside it, cannot hold the merge back.
    #[test]
    fn a_known_partition_count_is_not_changed_by_progress_records() {
        let mut m = Merger::new().for_partitions(2);
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        let mut huge = progress(0, 60);
        huge.partition_count = 1_573_430_460;
        assert!(!m.fits(&huge));
        assert!(m.progress(&huge).is_empty());
        let mut stray = progress(7, 60);
        stray.partition_count = 2;
        assert!(!m.fits(&stray));
        m.progress(&stray);
        m.progress(&progress(0, 60));
        let done = m.progress(&progress(1, 60));
        assert_eq!(done.len(), 1, "both real partitions passed the window");
        // Without the count known, the huge claim would hold it back for good.
        let mut learning = Merger::new();
        learning.add_partial(&partial(0, "east", 0, 2)).unwrap();
        learning.progress(&huge);
        learning.progress(&progress(0, 60));
        assert!(learning.progress(&progress(1, 60)).is_empty());
    }

    /// A day of traffic in miniature: windows of three keys over two partitions, with
    /// progress, repeats, corrections and a too-late partial, as (offset-ordered) records.
    fn records() -> Vec<Result<PartialTotal, PartitionProgress>> {
        let mut out = Vec::new();
        for w in 0..12 {
            let start = w * 60;
            for (i, region) in ["east", "west", "north"].into_iter().enumerate() {
                for partition in 0..2 {
                    out.push(Ok(partial(start, region, partition, 1 + (w + i as i64 + partition as i64) % 4)));
                }
            }
            out.push(Err(progress(0, start + 60)));
            if w % 3 != 2 {
                out.push(Err(progress(1, start + 60)));
            }
            // A repeat, a late correction of an emitted window, one refused as too late.
            out.push(Ok(partial(start, "east", 0, 1 + (w % 4))));
            if w >= 2 {
                out.push(Ok(partial((w - 2) * 60, "south", 1, 2)));
            }
            if w == 11 {
                out.push(Ok(partial(0, "lost", 0, 1)));
            }
        }
        out
    }

    /// Everything a record makes the merger say, for comparing two mergers.
    fn feed(m: &mut Merger, r: &Result<PartialTotal, PartitionProgress>) -> String {
        match r {
            Ok(p) => format!("{:?}", m.add_partial(p)),
            Err(p) => format!("{:?}", m.progress(p)),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_exactly() {
        let mut m = Merger::with_retention(4).for_partitions(2);
        for r in records().iter().take(40) {
            feed(&mut m, r);
        }
        assert!(m.pending_windows() > 0 && !m.emitted.is_empty(), "both kinds of windows held");
        let cp = m.checkpoint("t.partial", 40);
        assert_eq!((cp.version, cp.next_offset, cp.known_partitions, cp.retained_windows), (CHECKPOINT_VERSION, 40, 2, 4));
        let bytes = orderflow_proto::Message::encode_to_vec(&cp);
        let decoded = <MergerCheckpoint as orderflow_proto::Message>::decode(bytes.as_slice()).unwrap();
        let restored = Merger::restore(&decoded, Some(2)).unwrap();
        assert_eq!(restored, m);
        assert_eq!(orderflow_proto::Message::encode_to_vec(&restored.checkpoint("t.partial", 40)), bytes, "equal states, equal bytes");
        // A learning merger (partition count unknown) round trips too.
        let mut learning = Merger::new();
        for r in records().iter().take(9) {
            feed(&mut learning, r);
        }
        assert_eq!(Merger::restore(&learning.checkpoint("t", 9), None).unwrap(), learning);
    }

    #[test]
    fn a_restored_merger_equals_the_uninterrupted_one_record_by_record() {
        let all = records();
        let mut whole = Merger::with_retention(4).for_partitions(2);
        let said: Vec<String> = all.iter().map(|r| feed(&mut whole, r)).collect();
        assert!(said.iter().any(|s| s.contains("Corrected")) && said.iter().any(|s| s.contains("TooLate")), "{said:?}");
        // Stopped after every possible offset, restored, and fed the rest.
        for x in 0..=all.len() {
            let mut first = Merger::with_retention(4).for_partitions(2);
            all[..x].iter().for_each(|r| {
                feed(&mut first, r);
            });
            let cp = first.checkpoint("t", x as i64);
            let mut second = Merger::restore(&cp, Some(2)).unwrap();
            let rest: Vec<String> = all[cp.next_offset as usize..].iter().map(|r| feed(&mut second, r)).collect();
            assert_eq!(rest, said[x..], "resumed after offset {x}");
            assert_eq!(second, whole);
        }
    }

    #[test]
    fn a_checkpoint_of_another_version_or_partition_count_is_refused() {
        let mut m = Merger::new().for_partitions(2);
        m.add_partial(&partial(0, "east", 0, 2)).unwrap();
        let mut cp = m.checkpoint("t", 1);
        let err = Merger::restore(&cp, Some(3)).unwrap_err();
        assert!(err.to_string().contains("2 input partitions, the input has 3"), "{err}");
        let mut bad = cp.clone();
        bad.pending[0].parts[0] = 5;
        let err = Merger::restore(&bad, Some(2)).unwrap_err();
        assert!(err.to_string().contains("names key 5 of 1"), "{err}");
        bad.pending[0].parts.pop();
        assert!(Merger::restore(&bad, Some(2)).is_err(), "a truncated part");
        cp.version = 2;
        let err = Merger::restore(&cp, Some(2)).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
