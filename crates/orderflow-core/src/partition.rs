//! One input partition's aggregation state.
//!
//! Everything here is a function of the partition's log: the same records in the same
//! order give the same outcomes, the same closed windows and the same checkpoints. That
//! is what lets the aggregator re-process from a checkpoint after a crash and emit
//! byte-identical partial totals, so exactness needs no broker transactions.

use std::collections::BTreeMap;

use hashbrown::HashMap;

use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::{EnrichedOrderEvent, PartitionCheckpoint};

use crate::admitted::{mark_every_ms, AdmissionLog, LogParts};
use crate::dedup::{Admissions, Dedup, DedupKey, Sighting};
use crate::window::{type_index, ClosedWindow, Tallies, TotalKey, TotalKeyRef, WindowSpec};
use crate::wire::EnrichedEventView;
use crate::{Error, Result};

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted in its window.
    Counted { window_start_ms: i64 },
    /// Its event id was already counted (within the dedup horizon).
    Duplicate,
    /// Its window had already closed on this partition.
    Late { window_start_ms: i64, closed_through_ms: i64 },
    /// Not a countable event (no event, time or type): the caller dead-letters it.
    Invalid,
    /// The partition's state is at one of its bounds: the event is not counted and the
    /// caller dead-letters it (its id is not remembered, so it can be replayed later).
    Refused(Bound),
}

/// A bound of [`StateBounds`] that refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The dedup memory holds its most ids.
    DedupIds(usize),
    /// The event's window holds its most keys, and the event's key is new.
    KeysPerWindow(usize),
}

impl From<Bound> for crate::reason::InvalidReason {
    fn from(b: Bound) -> Self {
        match b {
            Bound::DedupIds(max_ids) => Self::DedupMemoryFull { max_ids },
            Bound::KeysPerWindow(max) => Self::TooManyKeys { max },
        }
    }
}

/// Most distinct (region, tier, currency) keys in one window of one partition when not
/// told otherwise: regions and tiers come from the merchant table and currencies from
/// a closed list, so a real pipeline has hundreds; this bound stops a bad merchant
/// table from turning into unbounded totals and metric series.
pub const DEFAULT_MAX_KEYS_PER_WINDOW: usize = 10_000;

/// What one partition's state may hold: together they bound its memory and its
/// checkpoint ([`StateBounds::checkpoint_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateBounds {
    /// How long (event time) event ids are remembered for dedup.
    pub dedup_horizon_ms: i64,
    /// Most event ids remembered ([`crate::dedup`]); new ids beyond are refused.
    pub dedup_max_ids: usize,
    /// Most keys per open window; events of new keys beyond are refused.
    pub max_keys_per_window: usize,
}

/// Bytes one open (window, key) total takes in a checkpoint, at most: the window's two
/// timestamps, the key's three strings (bounded by validation: region and tier
/// at most 64 bytes, currency 3) and eight counters.
pub const CHECKPOINT_BYTES_PER_KEY: usize = 2 * 24 + 2 * 66 + 5 + 8 * 11;

impl StateBounds {
    /// The given horizon with the default bounds.
    pub fn new(dedup_horizon_ms: i64) -> Self {
        Self { dedup_horizon_ms, dedup_max_ids: crate::dedup::DEFAULT_MAX_IDS, max_keys_per_window: DEFAULT_MAX_KEYS_PER_WINDOW }
    }

    /// The largest checkpoint a partition under these bounds can write with windows of
    /// `spec`, counting `2 + floor(lateness / size)` open windows (at least the
    /// `1 + ceil(lateness / size)` that can be open at once), plus 64 KiB for the fixed
    /// fields.
    pub fn checkpoint_bytes(&self, spec: WindowSpec) -> u64 {
        let open_windows = 2 + (spec.lateness_ms() / spec.size_ms()) as u64;
        let ids = self.dedup_max_ids as u64 * crate::dedup::CHECKPOINT_BYTES_PER_ID as u64;
        let keys = open_windows * self.max_keys_per_window as u64 * CHECKPOINT_BYTES_PER_KEY as u64;
        ids + keys + (64 << 10)
    }
}

/// Why [`PartitionState::apply`] found an event [`Outcome::Invalid`], as the reason its
/// dead letter carries. (The enricher's validation lets no such event through; only a
/// record written to the enriched topic by something else gets here.)
pub fn invalid_reason(e: &EnrichedEventView<'_>) -> crate::reason::InvalidReason {
    use crate::reason::InvalidReason;
    let Some(event) = e.event.as_ref() else { return InvalidReason::MissingEvent };
    if event.event_time.is_none() {
        return InvalidReason::MissingEventTime;
    }
    match orderflow_proto::v1::OrderEventType::try_from(event.r#type) {
        Ok(orderflow_proto::v1::OrderEventType::Unspecified) => InvalidReason::UnspecifiedType,
        _ => InvalidReason::UnknownType(event.r#type),
    }
}

/// An event's dedup fingerprint, computed by [`PartitionState::prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared(u128);

impl Prepared {
    fn of(dedup: &Dedup, e: &EnrichedEventView<'_>) -> Self {
        Self(dedup.fingerprint(e.event.as_ref().map_or("", |ev| ev.event_id)))
    }
}

/// Aggregation state of one partition.
#[derive(Debug, Clone)]
pub struct PartitionState {
    spec: WindowSpec,
    watermark_ms: i64,
    closed_through_ms: i64,
    open: BTreeMap<i64, HashMap<TotalKey, Tallies>>,
    dedup: Dedup,
    max_keys_per_window: usize,
    /// The input offsets of the ids the dedup memory admitted that may still be live:
    /// what a checkpoint carries instead of the memory ([`crate::admitted`]).
    log: AdmissionLog,
    /// Restored from a checkpoint that carried the memory itself (taken before the
    /// admission log): the highest event time among its ids, which are not in `log`.
    /// Until they expire, checkpoints carry the memory itself too.
    uncovered_through_ms: Option<i64>,
}

/// A partition restored from a checkpoint whose dedup memory is not rebuilt yet
/// ([`PartitionState::restore`]). It only rereads the input its admission log names;
/// [`Self::finish`] then gives the state that applies events and checkpoints, so no
/// event can be judged against a memory still half-built.
#[derive(Debug, Clone)]
pub struct RestoringPartition {
    state: PartitionState,
    /// `None`: nothing to reread (the checkpoint carried the memory itself, or its
    /// admission log is empty).
    reread: Option<RereadProgress>,
}

/// Ids a reread holds, their memory prefetched, before it remembers them all: the
/// table is tens of megabytes read at random, so one id at a time would wait for one
/// cache miss after another.
const REREAD_AHEAD: usize = 16;

/// How far the reread of the input on restore got ([`RestoringPartition::reread`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RereadProgress {
    /// Offsets below this were reread (or skipped) already.
    next: i64,
    found: u64,
    /// The admission log's run reached ([`AdmissionLog::contains_ascending`]).
    cursor: usize,
    /// Fingerprints and event times found, not remembered yet (the first `held`).
    ahead: [(u128, i64); REREAD_AHEAD],
    held: usize,
}

impl RereadProgress {
    fn new(from: i64) -> Self {
        Self { next: from, found: 0, cursor: 0, ahead: [(0, 0); REREAD_AHEAD], held: 0 }
    }
}

/// What a restore's reread found in the input ([`RestoringPartition::counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RereadCounts {
    /// Ids the checkpoint says were admitted (at offsets from the reread's start).
    pub admitted: u64,
    /// Of those, ids found in the records reread. Fewer: records no longer in the
    /// input (retention shorter than the dedup horizon) or not events; their
    /// duplicates, if any come, are counted again.
    pub found: u64,
}

impl PartitionState {
    /// A fresh partition whose event ids are fingerprinted under `key` (a random one in
    /// production: [`DedupKey::random`]).
    pub fn new(spec: WindowSpec, bounds: StateBounds, key: DedupKey) -> Self {
        Self {
            spec,
            watermark_ms: i64::MIN,
            closed_through_ms: i64::MIN,
            open: BTreeMap::new(),
            dedup: Dedup::new(bounds.dedup_horizon_ms, bounds.dedup_max_ids, key),
            max_keys_per_window: bounds.max_keys_per_window,
            log: AdmissionLog::starting_at(0),
            uncovered_through_ms: None,
        }
    }

    /// The admission log (what a checkpoint carries of the dedup memory).
    pub fn admission_log(&self) -> &AdmissionLog {
        &self.log
    }

    /// Highest event time seen (`i64::MIN` before the first event).
    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// Every window ending at or before this is closed (`i64::MIN` at first).
    pub fn closed_through_ms(&self) -> i64 {
        self.closed_through_ms
    }

    /// Number of open windows.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Number of (window, key) totals held open.
    pub fn open_keys(&self) -> usize {
        self.open.values().map(HashMap::len).sum()
    }

    /// Number of event ids held for dedup (expired ones not yet removed included).
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Number of event ids remembered for dedup: within the horizon of the watermark
    /// (counts them).
    pub fn dedup_live(&self) -> usize {
        self.dedup.live_len(self.watermark_ms)
    }

    /// Number of slots of the dedup memory (24 bytes each).
    pub fn dedup_slots(&self) -> usize {
        self.dedup.slots()
    }

    /// The open windows' totals so far, oldest window first, keys sorted (a snapshot
    /// for the provisional figures).
    pub fn open_totals(&self) -> Vec<ClosedWindow> {
        self.open
            .iter()
            .map(|(start, totals)| {
                let mut totals: Vec<_> = totals.iter().map(|(k, t)| (k.clone(), *t)).collect();
                totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                ClosedWindow { start_ms: *start, end_ms: self.spec.end_of(*start), totals }
            })
            .collect()
    }

    /// End of the last open window, if any.
    pub fn last_open_end_ms(&self) -> Option<i64> {
        self.open.keys().next_back().map(|s| self.spec.end_of(*s))
    }

    /// Prepares `e` for [`Self::apply_prepared`]: fingerprints its event id and prefetches
    /// the fingerprint's place in the dedup memory, changing nothing. A caller holding a
    /// batch prepares all of it first, so that the cache misses overlap, then applies it
    /// in order: the outcomes are exactly those of [`Self::apply_view`].
    pub fn prepare(&self, e: &EnrichedEventView<'_>) -> Prepared {
        let prepared = Prepared::of(&self.dedup, e);
        self.dedup.prefetch(prepared.0);
        prepared
    }

    /// Applies one enriched event; windows it closes are appended to `closed`.
    pub fn apply(&mut self, e: &EnrichedOrderEvent, closed: &mut Vec<ClosedWindow>) -> Outcome {
        self.apply_view(&EnrichedEventView::from_event(e), closed)
    }

    /// [`Self::apply`] on an event borrowed from its payload (the aggregator's path):
    /// the one implementation of it.
    pub fn apply_view(&mut self, e: &EnrichedEventView<'_>, closed: &mut Vec<ClosedWindow>) -> Outcome {
        self.apply_prepared(e, Prepared::of(&self.dedup, e), closed)
    }

    /// [`Self::apply_view`] with the fingerprint [`Self::prepare`] computed for this very
    /// event (`prepared` from another event would dedup the wrong id).
    pub fn apply_prepared(&mut self, e: &EnrichedEventView<'_>, prepared: Prepared, closed: &mut Vec<ClosedWindow>) -> Outcome {
        self.apply_prepared_at(self.log.position(), e, prepared, closed)
    }

    /// [`Self::apply_prepared`] for the record at input offset `offset` (the
    /// aggregator's path; the other `apply` methods number records one after the
    /// other). Offsets must rise: the offsets of admitted ids are what a checkpoint
    /// carries of the dedup memory.
    pub fn apply_prepared_at(
        &mut self,
        offset: i64,
        e: &EnrichedEventView<'_>,
        prepared: Prepared,
        closed: &mut Vec<ClosedWindow>,
    ) -> Outcome {
        self.log.passed(offset);
        let Some(event) = e.event.as_ref() else { return Outcome::Invalid };
        debug_assert_eq!(prepared.0, self.dedup.fingerprint(event.event_id), "prepared for another event");
        let (Some(time), Some(ti)) = (event.event_time.as_ref(), type_index(event.r#type)) else {
            return Outcome::Invalid;
        };
        let t = timestamp_millis(time);
        let start = self.spec.start_of(t);
        let key_ref = TotalKeyRef { region: e.region, tier: e.tier, currency: event.currency };
        // A new key in a full window is refused before its id is remembered, so that
        // the event can be replayed once the cause is fixed.
        if t >= self.closed_through_ms
            && self.open.get(&start).is_some_and(|w| w.len() >= self.max_keys_per_window && !w.contains_key(&key_ref))
        {
            return Outcome::Refused(Bound::KeysPerWindow(self.max_keys_per_window));
        }
        match self.dedup.sight(prepared.0, t, self.watermark_ms) {
            // An id expired on arrival (far behind the watermark) can never be a
            // duplicate's original: not worth rereading.
            Sighting::First if self.dedup.expired(t, self.watermark_ms) => {}
            Sighting::First => self.log.admit(offset, t, mark_every_ms(self.dedup.horizon_ms())),
            Sighting::Repeat => return Outcome::Duplicate,
            Sighting::Full => {
                // Its time still moves the watermark on: a memory filled by a flood of
                // distinct ids empties only as the horizon passes, and the watermark
                // moved only by counted events would never pass it again.
                self.advance(t, closed);
                return Outcome::Refused(Bound::DedupIds(self.dedup.max_ids()));
            }
        }
        if t < self.closed_through_ms {
            return Outcome::Late { window_start_ms: start, closed_through_ms: self.closed_through_ms };
        }
        let window = self.open.entry(start).or_default();
        // Look up by borrowed parts first, to allocate a key only for new keys.
        match window.get_mut(&key_ref) {
            Some(tallies) => tallies.add(ti, event.amount_minor),
            None => {
                let key = TotalKey { region: e.region.to_owned(), tier: e.tier.to_owned(), currency: event.currency.to_owned() };
                window.entry(key).or_default().add(ti, event.amount_minor);
            }
        }
        self.advance(t, closed);
        Outcome::Counted { window_start_ms: start }
    }

    /// Raises the watermark to `t` if it is later, closing the windows that ends.
    fn advance(&mut self, t: i64, closed: &mut Vec<ClosedWindow>) {
        if t > self.watermark_ms {
            self.watermark_ms = t;
            self.close_through(self.spec.closed_through(t), closed);
            self.log.expire(self.watermark_ms.saturating_sub(self.dedup.horizon_ms()));
        }
    }

    /// Closes every window ending at or before `close_through_ms` (an idle tick read
    /// back from the log). Returns whether the frontier moved.
    pub fn idle_close(&mut self, close_through_ms: i64, closed: &mut Vec<ClosedWindow>) -> bool {
        let before = self.closed_through_ms;
        // A tick may name any instant; windows close up to the boundary at or before it.
        self.close_through(self.spec.start_of(close_through_ms), closed);
        self.closed_through_ms != before
    }

    fn close_through(&mut self, frontier: i64, closed: &mut Vec<ClosedWindow>) {
        if frontier <= self.closed_through_ms {
            return;
        }
        self.closed_through_ms = frontier;
        let still_open = self.open.split_off(&frontier);
        let closing = std::mem::replace(&mut self.open, still_open);
        for (start, totals) in closing {
            let mut totals: Vec<_> = totals.into_iter().collect();
            totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            closed.push(ClosedWindow { start_ms: start, end_ms: self.spec.end_of(start), totals });
        }
    }

    /// The state as a checkpoint that belongs to input offset `next_offset`.
    pub fn checkpoint(&self, topic: &str, partition: i32, next_offset: i64) -> PartitionCheckpoint {
        let mut open = Vec::with_capacity(self.open_keys());
        for (start, totals) in &self.open {
            let mut totals: Vec<_> = totals.iter().collect();
            totals.sort_unstable_by(|a, b| a.0.cmp(b.0));
            open.extend(totals.into_iter().map(|(k, t)| t.to_window_total(*start, self.spec.end_of(*start), k)));
        }
        // The memory itself only while ids restored from such a checkpoint may live.
        let whole = self.uncovered_through_ms.is_some_and(|t| !self.dedup.expired(t, self.watermark_ms));
        let (mut fingerprints, mut times) = (Vec::new(), Vec::new());
        let mut log = LogParts::default();
        if whole {
            let entries = self.dedup.entries(self.watermark_ms);
            fingerprints.reserve(entries.len() * 16);
            times.reserve(entries.len());
            for (fp, t) in entries {
                fingerprints.extend_from_slice(&fp.to_be_bytes());
                times.push(t);
            }
        } else {
            log = self.log.to_parts();
        }
        PartitionCheckpoint {
            topic: topic.to_owned(),
            partition,
            next_offset,
            watermark_ms: self.watermark_ms,
            closed_through_ms: self.closed_through_ms,
            open,
            dedup_fingerprints: fingerprints,
            dedup_event_times_ms: times,
            window_ms: self.spec.size_ms(),
            lateness_ms: self.spec.lateness_ms(),
            dedup_key: self.dedup.key().map(|k| k.to_bytes().to_vec()).unwrap_or_default(),
            dedup_admission_buckets: self.dedup.admissions().buckets().map(|(b, _)| b).collect(),
            dedup_admission_counts: self.dedup.admissions().buckets().map(|(_, n)| n).collect(),
            dedup_admissions_counted: true,
            dedup_from_log: !whole,
            dedup_log_start: log.start,
            dedup_log_runs: log.runs,
            dedup_log_mark_offsets: log.mark_offsets,
            dedup_log_mark_times_ms: log.mark_times_ms,
            dedup_log_max_time_ms: log.max_t,
        }
    }

    /// Rebuilds the state from a checkpoint taken with the same window configuration.
    /// Its dedup memory is then rebuilt from the input ([`RestoringPartition`]).
    pub fn restore(cp: &PartitionCheckpoint, spec: WindowSpec, bounds: StateBounds) -> Result<RestoringPartition> {
        let bad = |reason: String| Error::Checkpoint { topic: cp.topic.clone(), partition: cp.partition, reason };
        if cp.window_ms != spec.size_ms() || cp.lateness_ms != spec.lateness_ms() {
            return Err(bad(format!(
                "taken with window {} ms and lateness {} ms, running with {} ms and {} ms; \
                 changing them needs a new consumer group (and checkpoint topic)",
                cp.window_ms,
                cp.lateness_ms,
                spec.size_ms(),
                spec.lateness_ms()
            )));
        }
        if cp.dedup_fingerprints.len() != cp.dedup_event_times_ms.len() * 16 {
            return Err(bad("dedup fingerprints and times differ in length".into()));
        }
        // Checkpoints older than keyed fingerprints have no key (nor admission count):
        // their memory goes on with the unkeyed hash its fingerprints were made with.
        let key = match cp.dedup_key.as_slice() {
            [] => None,
            bytes => Some(DedupKey::from_bytes(bytes).ok_or_else(|| bad(format!("dedup key of {} bytes, not 16", bytes.len())))?),
        };
        if cp.dedup_admission_buckets.len() != cp.dedup_admission_counts.len() {
            return Err(bad("dedup admission buckets and counts differ in length".into()));
        }
        let admissions = cp
            .dedup_admissions_counted
            .then(|| Admissions::from_buckets(cp.dedup_admission_buckets.iter().copied().zip(cp.dedup_admission_counts.iter().copied())));
        let entries = cp
            .dedup_fingerprints
            .chunks_exact(16)
            .zip(&cp.dedup_event_times_ms)
            .map(|(fp, t)| (u128::from_be_bytes(fp.try_into().expect("16-byte chunk")), *t));
        let (log, uncovered_through_ms, reread) = if cp.dedup_from_log {
            if !cp.dedup_fingerprints.is_empty() {
                return Err(bad("dedup memory both in the checkpoint and in the input log".into()));
            }
            let parts = LogParts {
                start: cp.dedup_log_start,
                runs: cp.dedup_log_runs.clone(),
                mark_offsets: cp.dedup_log_mark_offsets.clone(),
                mark_times_ms: cp.dedup_log_mark_times_ms.clone(),
                max_t: cp.dedup_log_max_time_ms,
            };
            let log = AdmissionLog::from_parts(&parts, cp.next_offset).map_err(|e| bad(format!("admission log: {e}")))?;
            let reread = log.span().map(|(from, _)| RereadProgress::new(from));
            (log, None, reread)
        } else {
            (AdmissionLog::starting_at(cp.next_offset), cp.dedup_event_times_ms.iter().copied().max(), None)
        };
        let mut open: BTreeMap<i64, HashMap<TotalKey, Tallies>> = BTreeMap::new();
        for w in &cp.open {
            let start = w.window_start.as_ref().map(timestamp_millis).ok_or_else(|| bad("open window without start".into()))?;
            let (key, tallies) = Tallies::from_window_total(w);
            open.entry(start).or_default().insert(key, tallies);
        }
        let mut state = Self {
            spec,
            watermark_ms: cp.watermark_ms,
            closed_through_ms: cp.closed_through_ms,
            open,
            dedup: Dedup::restore(bounds.dedup_horizon_ms, bounds.dedup_max_ids, key, admissions, entries),
            max_keys_per_window: bounds.max_keys_per_window,
            log,
            uncovered_through_ms,
        };
        if reread.is_some() {
            // Room for every id to come back, so that the table does not grow (and
            // rehash) all along the reread; a hostile count is capped by the bound.
            let ids = usize::try_from(state.log.admitted()).unwrap_or(usize::MAX).min(bounds.dedup_max_ids);
            state.dedup.reserve(ids);
        }
        Ok(RestoringPartition { state, reread })
    }
}

impl RestoringPartition {
    /// Where the input must be reread before the partition applies anything: the
    /// first offset of an admitted id not reread yet and one past the last (`None`:
    /// nothing to reread). Feed each record of that stretch, in order, to
    /// [`Self::reread`], then call [`Self::finish`].
    pub fn reread_span(&self) -> Option<(i64, i64)> {
        self.reread.as_ref().and_then(|r| self.state.log.span().map(|(_, end)| (r.next, end))).filter(|(from, end)| from < end)
    }

    /// Whether [`Self::reread`] wants the record at `offset` (an admitted one not
    /// reread yet): the others need not even be decoded. Records not wanted are
    /// passed over for good.
    pub fn wants(&mut self, offset: i64) -> bool {
        let Some(reread) = self.reread.as_mut() else { return false };
        if offset < reread.next {
            return false;
        }
        if self.state.log.contains_ascending(offset, &mut reread.cursor) {
            true
        } else {
            reread.next = offset.saturating_add(1);
            false
        }
    }

    /// Rereads the event at `offset`: remembers its id again if the checkpoint says
    /// it was admitted (the first reading's decisions are kept, not made again).
    /// Offsets outside the stretch, or already reread, are ignored.
    pub fn reread(&mut self, offset: i64, e: &EnrichedEventView<'_>) {
        let Some(reread) = self.reread.as_mut() else { return };
        let state = &mut self.state;
        if offset < reread.next {
            return;
        }
        reread.next = offset.saturating_add(1);
        if !state.log.contains_ascending(offset, &mut reread.cursor) {
            return;
        }
        let Some(event) = e.event.as_ref() else { return };
        let Some(time) = event.event_time.as_ref() else { return };
        reread.found += 1;
        let fp = state.dedup.fingerprint(event.event_id);
        state.dedup.prefetch(fp);
        reread.ahead[reread.held] = (fp, timestamp_millis(time));
        reread.held += 1;
        if reread.held == REREAD_AHEAD {
            reread.held = 0;
            for (fp, t) in reread.ahead {
                state.dedup.remember(fp, t, state.watermark_ms);
            }
        }
    }

    /// How many admitted ids the reread found again so far.
    pub fn counts(&self) -> RereadCounts {
        RereadCounts { admitted: self.state.log.admitted(), found: self.reread.as_ref().map_or(0, |r| r.found) }
    }

    /// Ends the reread (whatever it found: ids not found are forgotten) and gives the
    /// partition's state, ready to apply records from the checkpoint's offset on.
    pub fn finish(self) -> PartitionState {
        let Self { mut state, reread } = self;
        if let Some(reread) = reread {
            for &(fp, t) in &reread.ahead[..reread.held] {
                state.dedup.remember(fp, t, state.watermark_ms);
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_proto::millis_timestamp;
    use orderflow_proto::v1::{OrderEvent, OrderEventType};

    const MIN: i64 = 60_000;

    fn ev(id: &str, t: i64, ty: OrderEventType, amount: i64, region: &str) -> EnrichedOrderEvent {
        EnrichedOrderEvent {
            event: Some(OrderEvent {
                event_id: id.into(),
                order_id: format!("o-{id}"),
                merchant_id: "m".into(),
                r#type: ty as i32,
                amount_minor: amount,
                currency: "CNY".into(),
                event_time: Some(millis_timestamp(t)),
                ..Default::default()
            }),
            region: region.into(),
            tier: "gold".into(),
            merchant_known: true,
        }
    }

    const KEY: DedupKey = DedupKey::from_words(1, 2);

    /// Restores `cp` and rereads its admission log from `log` (the partition's events,
    /// offset = index), as the aggregator does from the input topic.
    fn restore_rereading(cp: &PartitionCheckpoint, spec: WindowSpec, bounds: StateBounds, log: &[EnrichedOrderEvent]) -> PartitionState {
        let mut s = PartitionState::restore(cp, spec, bounds).unwrap();
        if let Some((from, end)) = s.reread_span() {
            assert!(from >= 0 && end <= cp.next_offset, "rereads {from}..{end}, checkpoint at {}", cp.next_offset);
            for o in from..end {
                s.reread(o, &EnrichedEventView::from_event(&log[o as usize]));
            }
        }
        let counts = s.counts();
        assert_eq!(counts.found, counts.admitted);
        s.finish()
    }

    fn state() -> PartitionState {
        bounded(StateBounds::new(MIN + 5_000))
    }

    fn bounded(bounds: StateBounds) -> PartitionState {
        PartitionState::new(WindowSpec::new(MIN, 5_000).unwrap(), bounds, KEY)
    }

    /// A window at its key bound refuses events of new keys (without remembering their
    /// ids, so they count when replayed into a window with room) and keeps counting
    /// its existing keys; other windows are not affected.
    #[test]
    fn a_window_holds_at_most_its_keys() {
        let mut s = bounded(StateBounds { max_keys_per_window: 2, ..StateBounds::new(MIN + 5_000) });
        let mut closed = Vec::new();
        use OrderEventType::*;
        assert_eq!(s.apply(&ev("a", 1_000, Paid, 1, "r1"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        assert_eq!(s.apply(&ev("b", 1_000, Paid, 1, "r2"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        assert_eq!(s.apply(&ev("c", 1_000, Paid, 1, "r3"), &mut closed), Outcome::Refused(Bound::KeysPerWindow(2)));
        assert_eq!(s.apply(&ev("d", 2_000, Paid, 5, "r1"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        assert_eq!(s.open_keys(), 2);
        // The refused id was not remembered: in the next window it counts.
        assert_eq!(s.apply(&ev("c", MIN + 1, Paid, 1, "r3"), &mut closed), Outcome::Counted { window_start_ms: MIN });
        let reason: crate::reason::InvalidReason = Bound::KeysPerWindow(2).into();
        assert_eq!(reason.code(), "too_many_keys");
    }

    /// A partition whose dedup memory is full refuses new ids, counts nothing for them,
    /// and keeps finding the duplicates of ids it holds; a restored copy refuses the same.
    #[test]
    fn a_full_dedup_memory_refuses_new_ids() {
        let bounds = StateBounds { dedup_max_ids: 3, ..StateBounds::new(MIN + 5_000) };
        let mut s = bounded(bounds);
        let mut closed = Vec::new();
        use OrderEventType::*;
        for id in ["a", "b", "c"] {
            assert_eq!(s.apply(&ev(id, 1_000, Paid, 1, "r"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        }
        let cp = s.checkpoint("t", 0, 3);
        assert_eq!(s.apply(&ev("d", 1_000, Paid, 1, "r"), &mut closed), Outcome::Refused(Bound::DedupIds(3)));
        assert_eq!(s.apply(&ev("a", 1_000, Paid, 1, "r"), &mut closed), Outcome::Duplicate);
        let log: Vec<_> = ["a", "b", "c"].iter().map(|id| ev(id, 1_000, Paid, 1, "r")).collect();
        let mut restored = restore_rereading(&cp, WindowSpec::new(MIN, 5_000).unwrap(), bounds, &log);
        assert_eq!(restored.apply(&ev("d", 1_000, Paid, 1, "r"), &mut closed), Outcome::Refused(Bound::DedupIds(3)));
        assert_eq!(restored.apply(&ev("a", 1_000, Paid, 1, "r"), &mut closed), Outcome::Duplicate);
        let totals = |s: &PartitionState| s.checkpoint("t", 0, 5).open;
        assert_eq!(totals(&restored), totals(&s));
        assert_eq!(totals(&s)[0].paid.as_ref().map(|t| t.count), Some(3));
    }

    /// A flood of distinct ids fills the memory; the refused events' times still move
    /// the watermark on, so once the flood's ids leave the horizon new ids are counted
    /// again (a watermark moved only by counted events would stay put for good).
    #[test]
    fn a_memory_filled_by_a_flood_empties_as_event_time_passes() {
        use OrderEventType::*;
        let bounds = StateBounds { dedup_max_ids: 3, ..StateBounds::new(MIN + 5_000) };
        let mut s = bounded(bounds);
        let mut closed = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.apply(&ev(id, i as i64, Paid, 1, "r"), &mut closed);
        }
        for i in 0..200 {
            assert_eq!(s.apply(&ev(&format!("f{i}"), i, Paid, 1, "r"), &mut closed), Outcome::Refused(Bound::DedupIds(3)));
        }
        // 80 s: the ids of 0 s have left the 65 s horizon, but the memory only learns
        // it from this event's time, which it refuses (the memory was full).
        assert_eq!(s.apply(&ev("x", 80_000, Paid, 1, "r"), &mut closed), Outcome::Refused(Bound::DedupIds(3)));
        assert_eq!(s.watermark_ms(), 80_000);
        assert_eq!(s.apply(&ev("y", 80_001, Paid, 1, "r"), &mut closed), Outcome::Counted { window_start_ms: MIN });
        assert_eq!(closed.iter().map(|w| w.start_ms).collect::<Vec<_>>(), [0]);
    }

    /// The bound on checkpoint size covers the largest state the bounds allow.
    #[test]
    fn checkpoint_size_is_bounded() {
        let bounds = StateBounds { dedup_max_ids: 5_000, max_keys_per_window: 50, ..StateBounds::new(MIN + 5_000) };
        let mut s = bounded(bounds);
        let mut closed = Vec::new();
        let long = "r".repeat(64);
        for i in 0..5_000i64 {
            let region = format!("{:02}{}", i % 60, &long[..62]);
            s.apply(&ev(&format!("event-{i}"), 60_000 + i, OrderEventType::Paid, 1_000_000_000_000, &region), &mut closed);
            s.apply(&ev(&format!("other-{i}"), 5_000 + i, OrderEventType::Refunded, 1_000_000_000_000, &region), &mut closed);
        }
        let bytes = orderflow_proto::Message::encoded_len(&s.checkpoint("orderflow.orders.enriched", 0, i64::MAX)) as u64;
        assert!(s.open_keys() >= 100, "{} keys", s.open_keys());
        assert!(bytes <= bounds.checkpoint_bytes(WindowSpec::new(MIN, 5_000).unwrap()), "{bytes} bytes");
    }

    /// The bound is its documented formula: 26 bytes per id, 273 per (window, key) in
    /// each window that can be open (here 2 + 200 s / 60 s = 5), and 64 KiB.
    #[test]
    fn checkpoint_bytes_is_its_formula() {
        let bounds = StateBounds { dedup_max_ids: 1_000, max_keys_per_window: 10, ..StateBounds::new(MIN) };
        assert_eq!(bounds.checkpoint_bytes(WindowSpec::new(MIN, 200_000).unwrap()), 1_000 * 26 + 5 * 10 * 273 + 65_536);
        assert_eq!(bounds.checkpoint_bytes(WindowSpec::new(MIN, 5_000).unwrap()), 1_000 * 26 + 2 * 10 * 273 + 65_536);
    }

    /// What the state says it holds: open windows, ids, slots and the admission log,
    /// which names the offsets of first sightings only (not duplicates, nor ids expired
    /// on arrival).
    #[test]
    fn the_state_counts_what_it_holds() {
        use OrderEventType::*;
        let mut s = state();
        let mut closed = Vec::new();
        assert_eq!((s.open_windows(), s.dedup_len(), s.dedup_slots(), s.admission_log().admitted()), (0, 0, 1 << 10, 0));
        s.apply(&ev("a", 1_000, Paid, 1, "r"), &mut closed);
        s.apply(&ev("b", 61_000, Paid, 1, "r"), &mut closed);
        assert_eq!(s.apply(&ev("a", 1_000, Paid, 1, "r"), &mut closed), Outcome::Duplicate);
        assert_eq!((s.open_windows(), s.dedup_len()), (2, 2));
        assert_eq!(s.admission_log().offsets().collect::<Vec<_>>(), [0, 1]);
        // 70 s closes window 0; an id of 4 s is then expired on arrival (horizon 65 s).
        s.apply(&ev("c", 70_000, Paid, 1, "r"), &mut closed);
        assert!(matches!(s.apply(&ev("d", 4_000, Paid, 1, "r"), &mut closed), Outcome::Late { .. }));
        assert_eq!(s.open_windows(), 1);
        // (Offset 0, the id of 1 s, has left the horizon too.)
        assert_eq!(s.admission_log().offsets().collect::<Vec<_>>(), [1, 3]);
        // The memory grows past 5/8 full: 700 ids take 2,048 slots.
        let mut big = state();
        for i in 0..700 {
            big.apply(&ev(&format!("e{i}"), 1_000, Paid, 1, "r"), &mut closed);
        }
        assert_eq!((big.dedup_len(), big.dedup_slots()), (700, 2 << 10));
    }

    /// The reread as the aggregator drives it: it asks which records are wanted (the
    /// admitted ones not reread yet), rereads only those, skipping the others, and
    /// is done when its span is empty; the memory it rebuilt holds just the ids.
    #[test]
    fn a_reread_wants_only_the_admitted_records_not_reread_yet() {
        use OrderEventType::*;
        let log = [
            ev("a", 1_000, Paid, 1, "r"),
            ev("a", 1_000, Paid, 1, "r"),
            ev("b", 2_000, Paid, 1, "r"),
            ev("b", 2_000, Paid, 1, "r"),
            ev("c", 3_000, Paid, 1, "r"),
        ];
        let mut s = state();
        let mut closed = Vec::new();
        log.iter().for_each(|e| {
            s.apply(e, &mut closed);
        });
        assert_eq!(s.admission_log().offsets().collect::<Vec<_>>(), [0, 2, 4]);
        let cp = s.checkpoint("t", 0, 5);
        let mut r = PartitionState::restore(&cp, WindowSpec::new(MIN, 5_000).unwrap(), StateBounds::new(MIN + 5_000)).unwrap();
        assert_eq!(r.reread_span(), Some((0, 5)));
        let view = |o: usize| EnrichedEventView::from_event(&log[o]);
        assert!(r.wants(0));
        r.reread(0, &view(0));
        assert!(!r.wants(1), "a duplicate was not admitted");
        assert!(r.wants(2));
        r.reread(2, &view(2));
        assert!(!r.wants(2) && !r.wants(0), "already reread");
        r.reread(2, &view(2));
        assert_eq!(r.reread_span(), Some((3, 5)));
        // Offset 3 is passed over without asking; offset 4 is still reread.
        r.reread(4, &view(4));
        assert_eq!(r.counts(), RereadCounts { admitted: 3, found: 3 });
        assert_eq!(r.reread_span(), None);
        let mut restored = r.finish();
        assert_eq!(restored.dedup_len(), 3);
        assert_eq!(restored.apply(&log[3], &mut closed), Outcome::Duplicate);
    }

    #[test]
    fn counts_dedups_closes_and_marks_late() {
        let mut s = state();
        let mut closed = Vec::new();
        use OrderEventType::*;
        assert_eq!(s.apply(&ev("a", 1_000, Created, 100, "east"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        assert_eq!(s.apply(&ev("b", 30_000, Paid, 100, "east"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        assert_eq!(s.apply(&ev("a", 1_000, Created, 100, "east"), &mut closed), Outcome::Duplicate);
        // Next window; within lateness the first window stays open.
        s.apply(&ev("c", 64_999, Paid, 7, "west"), &mut closed);
        assert!(closed.is_empty());
        // Out of order but within lateness: still counted in window 0.
        assert_eq!(s.apply(&ev("d", 59_000, Refunded, 40, "east"), &mut closed), Outcome::Counted { window_start_ms: 0 });
        s.apply(&ev("e", 65_000, Paid, 3, "west"), &mut closed);
        assert_eq!(closed.len(), 1);
        let w = &closed[0];
        assert_eq!((w.start_ms, w.end_ms, w.totals.len()), (0, MIN, 1));
        let t = &w.totals[0].1 .0;
        assert_eq!((t[0].count, t[0].amount_minor, t[1].count, t[1].amount_minor, t[3].count, t[3].amount_minor), (1, 100, 1, 100, 1, 40));
        assert_eq!(s.closed_through_ms(), MIN);
        assert_eq!(
            s.apply(&ev("late", 10_000, Paid, 1, "east"), &mut closed),
            Outcome::Late { window_start_ms: 0, closed_through_ms: MIN }
        );
        // A duplicate of a counted event is a duplicate, not late.
        assert_eq!(s.apply(&ev("b", 30_000, Paid, 100, "east"), &mut closed), Outcome::Duplicate);
        assert_eq!(s.open_windows(), 1);
        // The snapshot of the open windows: window 1 with west's two paid events (7 and 3).
        let open = s.open_totals();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].start_ms, open[0].end_ms, open[0].totals.len()), (MIN, 2 * MIN, 1));
        assert_eq!(
            (open[0].totals[0].0.region.as_str(), open[0].totals[0].1 .0[1].count, open[0].totals[0].1 .0[1].amount_minor),
            ("west", 2, 10)
        );
    }

    #[test]
    fn idle_close_closes_every_open_window_through_the_tick() {
        let mut s = state();
        let mut closed = Vec::new();
        s.apply(&ev("a", 1_000, OrderEventType::Paid, 5, "r"), &mut closed);
        s.apply(&ev("b", 61_000, OrderEventType::Paid, 5, "r"), &mut closed);
        assert!(s.idle_close(2 * MIN + 17, &mut closed));
        assert_eq!(closed.iter().map(|w| w.start_ms).collect::<Vec<_>>(), vec![0, MIN]);
        assert_eq!(s.closed_through_ms(), 2 * MIN);
        assert!(!s.idle_close(2 * MIN, &mut closed));
        assert!(matches!(s.apply(&ev("c", 119_000, OrderEventType::Paid, 5, "r"), &mut closed), Outcome::Late { .. }));
        assert_eq!(s.apply(&ev("d", 120_000, OrderEventType::Paid, 5, "r"), &mut closed), Outcome::Counted { window_start_ms: 2 * MIN });
    }

    #[test]
    fn invalid_events_are_named_by_what_they_lack() {
        use crate::reason::InvalidReason;
        use orderflow_proto::Message as _;

        let reason = |e: &EnrichedOrderEvent| {
            let record = orderflow_proto::v1::EnrichedRecord { kind: Some(orderflow_proto::v1::enriched_record::Kind::Event(e.clone())) };
            let bytes = record.encode_to_vec();
            let Some(crate::wire::EnrichedKind::Event(view)) = crate::wire::EnrichedView::parse(&bytes).unwrap().kind else {
                panic!("an event")
            };
            invalid_reason(&view)
        };
        let mut e = ev("a", 0, OrderEventType::Paid, 1, "r");
        e.event.as_mut().unwrap().r#type = 0;
        assert_eq!(reason(&e), InvalidReason::UnspecifiedType);
        e.event.as_mut().unwrap().r#type = 42;
        assert_eq!(reason(&e), InvalidReason::UnknownType(42));
        e.event.as_mut().unwrap().event_time = None;
        assert_eq!(reason(&e), InvalidReason::MissingEventTime);
        e.event = None;
        assert_eq!(reason(&e), InvalidReason::MissingEvent);
    }

    #[test]
    fn events_without_time_or_type_are_invalid() {
        let mut s = state();
        let mut e = ev("a", 0, OrderEventType::Paid, 1, "r");
        e.event.as_mut().unwrap().r#type = 0;
        assert_eq!(s.apply(&e, &mut Vec::new()), Outcome::Invalid);
    }

    #[test]
    fn restored_state_continues_exactly_like_the_original() {
        use OrderEventType::*;
        let mut events: Vec<_> = (0..400)
            .map(|i| {
                let t = (i * 997) % (5 * MIN) + (i / 80) * MIN;
                ev(&format!("e{i}"), t, [Created, Paid, Cancelled, Refunded][i as usize % 4], i, ["n", "s"][i as usize % 2])
            })
            .collect();
        // A storefront retry every 10 events.
        for i in (10..400).step_by(10) {
            events[i] = events[i - 3].clone();
        }
        let mut straight = state();
        let mut out_straight = Vec::new();
        let outcomes: Vec<_> = events.iter().map(|e| straight.apply(e, &mut out_straight)).collect();

        for cut in [0, 1, 137, 399] {
            let mut first = state();
            let mut out = Vec::new();
            let mut got: Vec<_> = events[..cut].iter().map(|e| first.apply(e, &mut out)).collect();
            let cp = first.checkpoint("t", 3, cut as i64);
            let bytes = orderflow_proto::Message::encode_to_vec(&cp);
            let cp: PartitionCheckpoint = orderflow_proto::Message::decode(bytes.as_slice()).unwrap();
            assert_eq!(cp.next_offset, cut as i64);
            let mut second = restore_rereading(&cp, WindowSpec::new(MIN, 5_000).unwrap(), StateBounds::new(MIN + 5_000), &events);
            got.extend(events[cut..].iter().map(|e| second.apply(e, &mut out)));
            assert_eq!(got, outcomes, "cut at {cut}");
            assert_eq!(out, out_straight, "cut at {cut}");
            assert_eq!(second.checkpoint("t", 3, 400), straight.checkpoint("t", 3, 400));
        }
        assert!(outcomes.contains(&Outcome::Duplicate));
        assert!(outcomes.iter().any(|o| matches!(o, Outcome::Late { .. })));
    }

    /// A hostile log: ids repeated with other event times, across horizons and after
    /// expiring; events far behind the watermark; a dedup bound that refuses; a key
    /// bound; idle ticks. Cut anywhere, checkpointed (with the admission log, not the
    /// memory), restored by rereading only the stretch the checkpoint names, the
    /// partition goes on with exactly the outcomes, closed windows and checkpoints of
    /// the one never cut.
    #[test]
    fn restored_from_the_admission_log_a_partition_goes_on_exactly() {
        use OrderEventType::*;
        let spec = WindowSpec::new(10_000, 2_000).unwrap();
        let bounds = StateBounds { dedup_horizon_ms: 12_000, dedup_max_ids: 150, max_keys_per_window: 6 };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // (event, idle tick to apply after it)
        let mut log: Vec<(EnrichedOrderEvent, Option<i64>)> = Vec::new();
        let mut now = 0i64;
        for i in 0..6_000i64 {
            now += next(12) as i64;
            let t = match next(20) {
                0 => now - 40_000 - next(100_000) as i64, // far behind: expired on arrival
                1 => now + next(3_000) as i64,            // ahead of the others
                _ => now - next(4_000) as i64,
            };
            // Ids: new ones; recent repeats; repeats of ids long expired.
            let id = match next(10) {
                0 if i > 10 => format!("e{}", i - 1 - next(10) as i64),
                1 if i > 3_000 => format!("e{}", next(i as u64)),
                _ => format!("e{i}"),
            };
            let region = ["n", "s", "e", "w", "c", "x", "y", "z"][next(8) as usize];
            let tick = (next(300) == 0).then(|| now + next(5_000) as i64);
            log.push((ev(&id, t, [Created, Paid, Cancelled, Refunded][next(4) as usize], next(1_000) as i64, region), tick));
        }
        let run = |s: &mut PartitionState, from: usize, to: usize, out: &mut Vec<ClosedWindow>| -> Vec<Outcome> {
            (from..to)
                .map(|i| {
                    let o = s.apply(&log[i].0, out);
                    if let Some(tick) = log[i].1 {
                        s.idle_close(tick, out);
                    }
                    o
                })
                .collect()
        };
        let events: Vec<_> = log.iter().map(|(e, _)| e.clone()).collect();
        let mut straight = PartitionState::new(spec, bounds, KEY);
        let mut out_straight = Vec::new();
        let outcomes = run(&mut straight, 0, log.len(), &mut out_straight);
        for kind in [
            |o: &Outcome| matches!(o, Outcome::Duplicate),
            |o: &Outcome| matches!(o, Outcome::Late { .. }),
            |o: &Outcome| matches!(o, Outcome::Refused(Bound::DedupIds(_))),
            |o: &Outcome| matches!(o, Outcome::Refused(Bound::KeysPerWindow(_))),
        ] {
            assert!(outcomes.iter().filter(|o| kind(o)).count() > 10, "the log stages every outcome");
        }
        let mut longest_reread = 0;
        for cut in (0..log.len()).step_by(97).chain([log.len()]) {
            let mut first = PartitionState::new(spec, bounds, KEY);
            let mut out = Vec::new();
            let mut got = run(&mut first, 0, cut, &mut out);
            let cp = first.checkpoint("t", 0, cut as i64);
            assert!(cp.dedup_from_log && cp.dedup_fingerprints.is_empty());
            let cp: PartitionCheckpoint =
                orderflow_proto::Message::decode(orderflow_proto::Message::encode_to_vec(&cp).as_slice()).unwrap();
            let mut second = restore_rereading(&cp, spec, bounds, &events);
            if let Some((from, _)) = PartitionState::restore(&cp, spec, bounds).unwrap().reread_span() {
                longest_reread = longest_reread.max(cut as i64 - from);
            }
            got.extend(run(&mut second, cut, log.len(), &mut out));
            assert_eq!(got, outcomes, "cut at {cut}");
            assert_eq!(out, out_straight, "cut at {cut}");
            assert_eq!(second.checkpoint("t", 0, 9), straight.checkpoint("t", 0, 9), "cut at {cut}");
        }
        // The stretch reread stays near the horizon's worth of input (12 s at ~5.5 ms
        // per event is ~2,200 events; events up to 3 s ahead of the others and a mark
        // every 750 ms add up to ~700), not the whole log.
        assert!((1..3_500).contains(&longest_reread), "reread {longest_reread} records");
    }

    /// Without the rereading, the same checkpoint forgets the ids: the reread is what
    /// makes the restore exact (so the test above can fail).
    #[test]
    fn a_restore_that_skips_the_reread_counts_a_retry_again() {
        use OrderEventType::*;
        let mut s = state();
        let mut closed = Vec::new();
        let log = [ev("a", 1_000, Paid, 5, "r")];
        assert_eq!(s.apply(&log[0], &mut closed), Outcome::Counted { window_start_ms: 0 });
        let cp = s.checkpoint("t", 0, 1);
        let mut reread = restore_rereading(&cp, WindowSpec::new(MIN, 5_000).unwrap(), StateBounds::new(MIN + 5_000), &log);
        let skipped = PartitionState::restore(&cp, WindowSpec::new(MIN, 5_000).unwrap(), StateBounds::new(MIN + 5_000)).unwrap();
        assert_eq!(skipped.reread_span(), Some((0, 1)));
        assert_eq!(skipped.counts(), RereadCounts { admitted: 1, found: 0 });
        let mut skipped = skipped.finish();
        assert_eq!(reread.apply(&log[0], &mut closed), Outcome::Duplicate);
        assert_eq!(skipped.apply(&log[0], &mut closed), Outcome::Counted { window_start_ms: 0 });
    }

    /// At the 2019 peak's rate per partition (8,500 events/s over the default 65 s
    /// horizon, 1% storefront retries) the checkpoint holds a few bytes per retry, not
    /// 22 bytes per id: under 1% of the ~550,000 ids it replaces.
    #[test]
    fn a_checkpoint_at_peak_rate_is_a_few_kilobytes() {
        use OrderEventType::*;
        let mut s = state(); // horizon 65 s
        let mut closed = Vec::new();
        let n = 8_500 * 70;
        for i in 0..n {
            let t = i * 1_000 / 8_500;
            let id = if i % 100 == 99 { format!("e{}", i - 7) } else { format!("e{i}") };
            s.apply(&ev(&id, t, Paid, 100, ["n", "s"][i as usize % 2]), &mut closed);
        }
        let cp = s.checkpoint("t", 0, n);
        let bytes = orderflow_proto::Message::encoded_len(&cp);
        let (from, _) = PartitionState::restore(&cp, WindowSpec::new(MIN, 5_000).unwrap(), StateBounds::new(MIN + 5_000))
            .unwrap()
            .reread_span()
            .unwrap();
        // Reread from about a horizon (65 s) and a sixteenth back, at 8,500/s.
        assert!((65 * 8_500..(65 + 5) * 8_500).contains(&(n - from)), "rereads {} records", n - from);
        assert!(bytes < 30_000, "{bytes} bytes for {} ids", s.dedup_live());
        assert!(s.dedup_live() > 540_000);
    }

    /// A checkpoint that carries the memory itself (taken before the admission log)
    /// restores without rereading, and its ids stay in the checkpoints (whole) until
    /// they have all expired; from then on the admission log covers everything.
    #[test]
    fn a_checkpoint_with_the_memory_itself_is_carried_until_its_ids_expire() {
        use OrderEventType::*;
        let spec = WindowSpec::new(MIN, 5_000).unwrap();
        let mut s = state();
        let mut closed = Vec::new();
        s.apply(&ev("a", 1_000, Paid, 5, "r"), &mut closed);
        let mut old = s.checkpoint("t", 0, 1);
        // As an older aggregator wrote it.
        let entries = s.dedup.entries(s.watermark_ms);
        old.dedup_from_log = false;
        old.dedup_log_runs.clear();
        old.dedup_log_mark_offsets.clear();
        old.dedup_log_mark_times_ms.clear();
        old.dedup_fingerprints = entries.iter().flat_map(|(fp, _)| fp.to_be_bytes()).collect();
        old.dedup_event_times_ms = entries.iter().map(|(_, t)| *t).collect();
        let r = PartitionState::restore(&old, spec, StateBounds::new(MIN + 5_000)).unwrap();
        assert_eq!(r.reread_span(), None);
        let mut r = r.finish();
        assert_eq!(r.apply(&ev("a", 1_000, Paid, 5, "r"), &mut closed), Outcome::Duplicate);
        r.apply(&ev("b", 30_000, Paid, 5, "r"), &mut closed);
        let cp = r.checkpoint("t", 0, 3);
        let mut times = cp.dedup_event_times_ms.clone();
        times.sort_unstable();
        assert!(!cp.dedup_from_log && times == [1_000, 30_000]);
        // 66.001 s: "a" (1 s) has expired; "b" is in the admission log.
        r.apply(&ev("c", 66_001, Paid, 5, "r"), &mut closed);
        let cp = r.checkpoint("t", 0, 4);
        assert!(cp.dedup_from_log && cp.dedup_fingerprints.is_empty());
        let log =
            [ev("a", 1_000, Paid, 5, "r"), ev("a", 1_000, Paid, 5, "r"), ev("b", 30_000, Paid, 5, "r"), ev("c", 66_001, Paid, 5, "r")];
        let mut again = restore_rereading(&cp, spec, StateBounds::new(MIN + 5_000), &log);
        assert_eq!(again.apply(&ev("b", 30_000, Paid, 5, "r"), &mut closed), Outcome::Duplicate);
    }

    #[test]
    fn restore_refuses_a_different_window_configuration() {
        let cp = state().checkpoint("t", 0, 0);
        let err = PartitionState::restore(&cp, WindowSpec::new(2 * MIN, 5_000).unwrap(), StateBounds::new(MIN)).unwrap_err();
        assert!(err.to_string().contains("new consumer group"), "{err}");
    }

    /// Applies `e`, closes through `tick_ms`, and checks that the state checkpoints,
    /// restores and checkpoints the same again.
    fn apply_tick_and_round_trip(s: &mut PartitionState, spec: WindowSpec, e: &EnrichedOrderEvent, tick_ms: i64) {
        let mut closed = Vec::new();
        s.apply(e, &mut closed);
        s.idle_close(tick_ms, &mut closed);
        for w in &closed {
            assert!(w.start_ms < w.end_ms && w.end_ms <= s.closed_through_ms(), "{w:?}");
        }
        // (Equal only for the last window, clipped to end where it starts: `i64::MAX`.)
        assert!(s.last_open_end_ms().is_none_or(|end| end >= s.closed_through_ms()));
        let cp = s.checkpoint("t", 0, 1);
        let restored =
            PartitionState::restore(&cp, spec, StateBounds::new(spec.size_ms().saturating_add(spec.lateness_ms()))).unwrap().finish();
        assert_eq!(restored.checkpoint("t", 0, 1), cp);
    }

    /// Found by fuzzing (the `checkpoint` target): an event time at either end of the
    /// `i64` milliseconds (a record on the enriched topic can carry seconds far outside
    /// the protobuf range; they saturate) overflowed the window arithmetic: the start
    /// of its window below `i64::MIN`, the end above `i64::MAX`.
    #[test]
    fn event_times_and_ticks_at_the_ends_of_time_do_not_overflow() {
        use orderflow_proto::Timestamp;
        let spec = WindowSpec::new(MIN, 5_000).unwrap();
        for seconds in [i64::MIN, i64::MIN / 1000 - 1, i64::MIN / 1000, i64::MAX / 1000, i64::MAX / 1000 + 1, i64::MAX] {
            for tick_ms in [i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX] {
                let mut e = ev("a", 0, OrderEventType::Paid, 5, "r");
                e.event.as_mut().unwrap().event_time = Some(Timestamp { seconds, nanos: 999_999_999 });
                let mut s = state();
                apply_tick_and_round_trip(&mut s, spec, &e, tick_ms);
                // And an ordinary event after it.
                apply_tick_and_round_trip(&mut s, spec, &ev("b", 1_000, OrderEventType::Paid, 5, "r"), tick_ms);
            }
        }
    }

    /// Found by fuzzing (the `checkpoint` target), minimized: a checkpoint whose
    /// watermark is `i64::MIN + 92` (window 60 s, lateness 0), then an event just before
    /// the watermark: its window would start below `i64::MIN`.
    #[test]
    fn a_checkpoint_at_the_start_of_time_restores_and_goes_on() {
        use orderflow_proto::Message as _;
        let bytes = [0x20, 0xdc, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x48, 0xe0, 0xd4, 0x03];
        let cp = PartitionCheckpoint::decode(&bytes[..]).unwrap();
        assert_eq!((cp.watermark_ms, cp.window_ms, cp.lateness_ms), (i64::MIN + 92, MIN, 0));
        let spec = WindowSpec::new(MIN, 0).unwrap();
        let mut s = PartitionState::restore(&cp, spec, StateBounds::new(MIN)).unwrap().finish();
        let mut e = ev("a", 0, OrderEventType::Paid, 5, "r");
        e.event.as_mut().unwrap().event_time = Some(millis_timestamp(i64::MIN + 91));
        apply_tick_and_round_trip(&mut s, spec, &e, i64::MIN + 100);
    }

    /// Found by fuzzing (the `checkpoint` target): a window size near `i64::MAX` (a
    /// checkpoint taken with `--window` in the hundreds of millions of years; the
    /// minimized input is just that field), then an event in the second window: the
    /// window's end overflowed.
    #[test]
    fn windows_near_the_largest_size_end_at_the_end_of_time() {
        use orderflow_proto::Message as _;
        let bytes = [0x48, 0xf9, 0xf9, 0xf9, 0xf9, 0xf9, 0xf9, 0xf9, 0xf9, 0x42];
        let cp = PartitionCheckpoint::decode(&bytes[..]).unwrap();
        let spec = WindowSpec::new(cp.window_ms, cp.lateness_ms).unwrap();
        assert!(spec.size_ms() > i64::MAX / 2);
        let mut s = PartitionState::restore(&cp, spec, StateBounds::new(spec.size_ms())).unwrap().finish();
        let t = 1_573_430_400_000 + spec.size_ms();
        apply_tick_and_round_trip(&mut s, spec, &ev("a", t, OrderEventType::Paid, 5, "r"), 0);
        assert_eq!(s.last_open_end_ms(), Some(i64::MAX));
        let spec = WindowSpec::new(i64::MAX, 0).unwrap();
        let mut s = PartitionState::new(spec, StateBounds::new(i64::MAX), KEY);
        apply_tick_and_round_trip(&mut s, spec, &ev("a", -1, OrderEventType::Paid, 5, "r"), 0);
        apply_tick_and_round_trip(&mut s, spec, &ev("b", i64::MAX, OrderEventType::Paid, 5, "r"), 0);
        assert_eq!(s.last_open_end_ms(), Some(i64::MAX));
    }

    #[test]
    fn views_apply_exactly_like_decoded_events() {
        use crate::wire::{EnrichedKind, EnrichedView};
        use orderflow_proto::v1::{enriched_record, EnrichedRecord};
        use orderflow_proto::Message;

        let (mut owned, mut viewed) = (state(), state());
        let (mut closed_owned, mut closed_viewed) = (Vec::new(), Vec::new());
        for i in 0..3_000i64 {
            let ty = [OrderEventType::Created, OrderEventType::Paid, OrderEventType::Unspecified][(i % 3) as usize];
            let mut e = ev(&format!("e{}", i % 700), (i * 97) % 400_000, ty, i, ["east", "west"][(i % 2) as usize]);
            if i % 11 == 0 {
                e.event = None;
            }
            let bytes = EnrichedRecord { kind: Some(enriched_record::Kind::Event(e.clone())) }.encode_to_vec();
            let Some(EnrichedKind::Event(view)) = EnrichedView::parse(&bytes).unwrap().kind else { unreachable!() };
            assert_eq!(owned.apply(&e, &mut closed_owned), viewed.apply_view(&view, &mut closed_viewed));
        }
        assert_eq!(closed_owned, closed_viewed);
        assert!(!closed_owned.is_empty());
        assert_eq!(owned.checkpoint("t", 0, 1), viewed.checkpoint("t", 0, 1));
    }

    #[test]
    fn batches_prepared_first_apply_exactly_like_one_at_a_time() {
        let events: Vec<EnrichedOrderEvent> = (0..5_000i64)
            .map(|i| {
                let ty = [OrderEventType::Created, OrderEventType::Paid, OrderEventType::Refunded][(i % 3) as usize];
                // Repeats (ids recur), disorder and very late events in every batch.
                let t = if i % 97 == 0 { i * 40 - 200_000 } else { i * 40 + (i % 7) * 900 };
                ev(&format!("e{}", i % 1_300), t, ty, i, ["east", "west", "north"][(i % 3) as usize])
            })
            .collect();
        let (mut single, mut batched) = (state(), state());
        let (mut closed_single, mut closed_batched) = (Vec::new(), Vec::new());
        let mut outcomes = (Vec::new(), Vec::new());
        for e in &events {
            outcomes.0.push(single.apply(e, &mut closed_single));
        }
        for batch in events.chunks(64) {
            let views: Vec<EnrichedEventView<'_>> = batch.iter().map(EnrichedEventView::from_event).collect();
            let prepared: Vec<Prepared> = views.iter().map(|v| batched.prepare(v)).collect();
            for (v, p) in views.iter().zip(prepared) {
                outcomes.1.push(batched.apply_prepared(v, p, &mut closed_batched));
            }
        }
        assert_eq!(outcomes.0, outcomes.1);
        assert!(outcomes.0.contains(&Outcome::Duplicate) && outcomes.0.iter().any(|o| matches!(o, Outcome::Late { .. })));
        assert_eq!(closed_single, closed_batched);
        assert_eq!(single.checkpoint("t", 0, 1), batched.checkpoint("t", 0, 1));
    }
}
