//! Event-id memory over an event-time horizon.
//!
//! Ids are kept as 128-bit XXH3 fingerprints with the event time of their first
//! sighting. An entry counts as seen while its event time is within `horizon` of the
//! partition's watermark; whether an id is a duplicate therefore depends only on the
//! partition's log, never on when memory happened to be reclaimed. With a horizon of
//! at least window + lateness, a repeat that is no longer remembered falls into a
//! closed window and is late, so it can never be counted twice.
//!
//! Two defences against a sender who controls the ids:
//! - **A keyed hash.** Fingerprints are SipHash-1-3 (128-bit) under a random per-partition
//!   [`DedupKey`], kept in the partition's checkpoint, so ids cannot be crafted to
//!   collide or to pile up in one probe run.
//! - **A bound** on the ids remembered, `max_ids`. Ids admitted are counted by bucket
//!   of their event time (an eighth of the horizon each; [`Admissions`]); a bucket is
//!   dropped once all of it has left the horizon, so the count is never below the ids
//!   live. A new id is refused ([`Sighting::Full`]) while the count is at the bound. The
//!   count is a function of the log (and is checkpointed), so a re-processed partition
//!   refuses exactly the same events. A flood of distinct ids therefore costs at most
//!   `max_ids` entries; the refused events are dead-lettered by the caller, never
//!   counted nor dropped.

use bytemuck::{Pod, Zeroable};
use memmap2::MmapMut;
use siphasher::sip128::{Hasher128, SipHasher13};
use xxhash_rust::xxh3::xxh3_128;

/// An unkeyed 128-bit fingerprint of an event id, for tools that count ids they
/// generated themselves (the load test's checks); the dedup memory uses
/// [`Dedup::fingerprint`], keyed.
pub fn fingerprint(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

/// The secret key of a partition's fingerprints (128 bits). Its `Debug` hides it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DedupKey([u64; 2]);

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupKey(..)")
    }
}

impl DedupKey {
    /// A fresh random key (from the operating system's generator).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A given key (tests, benchmarks).
    pub const fn from_words(k0: u64, k1: u64) -> Self {
        Self([k0, k1])
    }

    /// The key as 16 bytes, for checkpoints.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.0[0].to_be_bytes());
        b[8..].copy_from_slice(&self.0[1].to_be_bytes());
        b
    }

    /// The key from [`Self::to_bytes`]; `None` unless exactly 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: [u8; 16] = b.try_into().ok()?;
        let word = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Self([word(0), word(8)]))
    }
}

/// What [`Dedup::sight`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Not seen within the horizon: now remembered.
    First,
    /// Seen within the horizon: a duplicate.
    Repeat,
    /// Not seen, but the memory is at its bound: not remembered (the caller must not
    /// count the event; it can be neither confirmed nor ruled out as a duplicate later).
    Full,
}

/// Ids remembered per partition when not told otherwise: room for 15,000 events/s per
/// partition over the default 65 s horizon (the 2019 11.11 peak spread over 64
/// partitions is 8,500/s), at most 2^22 slots (96 MiB) and 26 MB of checkpoint.
pub const DEFAULT_MAX_IDS: usize = 1_000_000;

/// Bytes one remembered id takes in a checkpoint, at most: a 16-byte fingerprint and
/// an event time (a varint of at most 10 bytes).
pub const CHECKPOINT_BYTES_PER_ID: usize = 26;

/// One slot of [`FingerprintTable`]: a fingerprint (as two words, so that a slot is 24
/// bytes) and the event time of its first sighting. The all-zero fingerprint marks an
/// empty slot (zeroed memory is an empty table); the one id that could hash to it is
/// kept outside the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Slot {
    fp: [u64; 2],
    t_ms: i64,
}

const EMPTY: [u64; 2] = [0, 0];

impl Slot {
    const VACANT: Slot = Slot { fp: EMPTY, t_ms: 0 };

    fn fingerprint(&self) -> u128 {
        (u128::from(self.fp[0]) << 64) | u128::from(self.fp[1])
    }
}

fn split(fp: u128) -> [u64; 2] {
    [(fp >> 64) as u64, fp as u64]
}

/// Entries (expired ones included) fill at most this share of the slots (linear probing
/// stays short).
const MAX_LOAD: (usize, usize) = (5, 8);
/// After removing the expired entries, the live ones fill at most this share.
const AFTER_SWEEP: (usize, usize) = (3, 8);
const MIN_SLOTS: usize = 1 << 10;

/// The slots' memory: an anonymous mapping (zeroed, so every slot starts empty) that
/// asks the kernel for transparent huge pages. A partition's table reaches tens of
/// megabytes at peak and is read at random; with 4 KiB pages nearly every look-up
/// would also miss the TLB (a few percent of the aggregator's time, measured in
/// `docs/measurements/2026-11-25-benches-dedup-table.md`).
#[derive(Debug)]
struct Slots(MmapMut);

impl Slots {
    fn zeroed(n: usize) -> Self {
        let map = MmapMut::map_anon(n * std::mem::size_of::<Slot>())
            .unwrap_or_else(|e| panic!("cannot map {n} dedup slots ({} bytes): {e}", n * std::mem::size_of::<Slot>()));
        // A hint: where huge pages are off or unsupported, 4 KiB pages do the same job.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self(map)
    }

    fn get(&self) -> &[Slot] {
        bytemuck::cast_slice(&self.0)
    }

    fn get_mut(&mut self) -> &mut [Slot] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

impl Clone for Slots {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.get().len());
        copy.get_mut().copy_from_slice(self.get());
        copy
    }
}

/// An open-addressing (linear probing) table from fingerprint to event time, laid out
/// so that a look-up reads one or two adjacent cache lines, whose address is known
/// from the fingerprint alone: [`Self::prefetch`] asks for them ahead of the look-up.
/// A fingerprint is already a uniform hash, so its low bits pick the home slot.
#[derive(Debug, Clone)]
struct FingerprintTable {
    slots: Slots,
    /// `slots.len() - 1` (the number of slots is a power of two).
    mask: usize,
    len: usize,
    /// The entry of the all-zero fingerprint, which cannot live in a slot.
    zero: Option<i64>,
}

impl Default for FingerprintTable {
    fn default() -> Self {
        Self { slots: Slots::zeroed(MIN_SLOTS), mask: MIN_SLOTS - 1, len: 0, zero: None }
    }
}

impl FingerprintTable {
    fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    fn home(&self, fp: &[u64; 2]) -> usize {
        fp[1] as usize & self.mask
    }

    /// The slot holding `fp`, or else the empty slot that ends its probe together with
    /// the first slot on the way whose entry expired (time before `expired_before`).
    fn find(&self, fp: &[u64; 2], expired_before: i64) -> (usize, Option<usize>) {
        let slots = self.slots.get();
        let mut i = self.home(fp);
        let mut expired = None;
        loop {
            let s = &slots[i];
            if s.fp == *fp {
                return (i, None);
            }
            if s.fp == EMPTY {
                return (i, expired);
            }
            if expired.is_none() && s.t_ms < expired_before {
                expired = Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The entry for `fp`, inserting `t_ms` if there is none: returns the entry and
    /// whether it was inserted. An entry expired before `expired_before` met on the way
    /// makes room for it; when the table would fill past [`MAX_LOAD`], every expired
    /// entry is removed first, and the table grows only if it is still too full.
    fn entry(&mut self, fp: u128, t_ms: i64, expired_before: i64) -> (&mut i64, bool) {
        if fp == 0 {
            let inserted = self.zero.is_none();
            return (self.zero.get_or_insert(t_ms), inserted);
        }
        let key = split(fp);
        let (mut i, expired) = self.find(&key, expired_before);
        if self.slots.get()[i].fp == key {
            return (&mut self.slots.get_mut()[i].t_ms, false);
        }
        if let Some(expired) = expired {
            i = expired;
        } else {
            if (self.len + 1) * MAX_LOAD.1 > (self.mask + 1) * MAX_LOAD.0 {
                self.make_room(expired_before);
                i = self.find(&key, i64::MIN).0;
            }
            self.len += 1;
        }
        self.slots.get_mut()[i] = Slot { fp: key, t_ms };
        (&mut self.slots.get_mut()[i].t_ms, true)
    }

    /// The event time held for `fp`, if any (expired or not).
    fn get(&self, fp: u128) -> Option<i64> {
        if fp == 0 {
            return self.zero;
        }
        let key = split(fp);
        let (i, _) = self.find(&key, i64::MIN);
        let s = self.slots.get()[i];
        (s.fp == key).then_some(s.t_ms)
    }

    /// Grows the table, if need be, so that `n` entries fit without growing again.
    fn reserve(&mut self, n: usize) {
        let wanted = (n.saturating_mul(MAX_LOAD.1) / MAX_LOAD.0 + 1).next_power_of_two().max(MIN_SLOTS);
        if wanted > self.mask + 1 {
            self.resize(wanted);
        }
    }

    /// Moves every entry into a new table of `n` slots (a power of two).
    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, Slots::zeroed(n));
        self.mask = n - 1;
        for s in old.get().iter().filter(|s| s.fp != EMPTY) {
            let i = self.find(&s.fp, i64::MIN).0;
            self.slots.get_mut()[i] = *s;
        }
    }

    /// Removes the expired entries, then doubles the table while they would fill more
    /// than [`AFTER_SWEEP`] of it, so that a sweep is followed by many insertions
    /// before the next.
    fn make_room(&mut self, expired_before: i64) {
        self.retain(|t| t >= expired_before);
        while self.len * AFTER_SWEEP.1 > (self.mask + 1) * AFTER_SWEEP.0 {
            self.resize(2 * (self.mask + 1));
        }
    }

    /// Asks the CPU to bring `fp`'s home slot into cache (a hint: changes nothing).
    fn prefetch(&self, fp: u128) {
        let slots = self.slots.get();
        let i = self.home(&split(fp));
        // A 24-byte slot may straddle two cache lines; a probe usually ends in the next slot.
        prefetch(&slots[i]);
        prefetch(&slots[(i + 1) & self.mask]);
    }

    /// Keeps only the entries for which `keep` holds. Deletes in place by shifting
    /// back the entries after each deleted one (so no tombstones), scanning from an
    /// empty slot so that no run of full slots wraps around the scan's start.
    fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        if self.zero.is_some_and(|t| !keep(t)) {
            self.zero = None;
        }
        let Some(start) = self.slots.get().iter().position(|s| s.fp == EMPTY) else { return };
        let n = self.mask + 1;
        let mut k = 1;
        while k <= n {
            let i = (start + k) & self.mask;
            let s = self.slots.get()[i];
            if s.fp != EMPTY && !keep(s.t_ms) {
                // Slot i now holds a later entry (examined again) or is empty.
                self.delete(i);
            } else {
                k += 1;
            }
        }
    }

    /// Empties slot `hole`, moving later entries of its run back so that each stays
    /// reachable from its home slot.
    fn delete(&mut self, mut hole: usize) {
        let mask = self.mask;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots.get()[j];
            if s.fp == EMPTY {
                break;
            }
            // `s` may fill the hole if the hole lies on its probe path: between its home
            // slot and `j`.
            let displaced = j.wrapping_sub(self.home(&s.fp)) & mask;
            if displaced >= (j.wrapping_sub(hole) & mask) {
                self.slots.get_mut()[hole] = s;
                hole = j;
            }
        }
        self.slots.get_mut()[hole] = Slot::VACANT;
        self.len -= 1;
    }

    fn iter(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        let zero = self.zero.map(|t| (0, t));
        zero.into_iter().chain(self.slots.get().iter().filter(|s| s.fp != EMPTY).map(|s| (s.fingerprint(), s.t_ms)))
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch<T>(value: &T) {
    safe_arch::prefetch_t0(value);
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch<T>(_value: &T) {}

/// The dedup memory of one partition.
///
/// Expired entries are not looked for: they are overwritten by insertions that meet
/// them, and removed all at once when the table fills up. What the memory answers
/// depends only on the live entries (within the horizon) and the admission counts, so
/// neither when nor whether expired ones were removed changes any outcome or checkpoint.
#[derive(Debug, Clone)]
pub struct Dedup {
    horizon_ms: i64,
    max_ids: usize,
    /// `None` only for a memory restored from a checkpoint older than keyed
    /// fingerprints: it goes on with the unkeyed hash those were made with.
    key: Option<DedupKey>,
    seen: FingerprintTable,
    admissions: Admissions,
}

/// Ids admitted, counted by bucket of their event time (`t / bucket_ms`), buckets that
/// may still hold a live id only: [`Self::total`] is never below the ids live.
#[derive(Debug, Clone)]
pub struct Admissions {
    buckets: std::collections::BTreeMap<i64, u64>,
    total: u64,
    /// The highest floor expired through so far (a cache: changes no answer).
    floor: i64,
}

impl Default for Admissions {
    fn default() -> Self {
        Self { buckets: Default::default(), total: 0, floor: i64::MIN }
    }
}

impl PartialEq for Admissions {
    fn eq(&self, other: &Self) -> bool {
        self.buckets == other.buckets
    }
}

impl Eq for Admissions {}

impl Admissions {
    /// Counts from checkpointed (bucket, count) pairs.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (i64, u64)>) -> Self {
        let buckets: std::collections::BTreeMap<i64, u64> = buckets.into_iter().collect();
        let total = buckets.values().sum();
        Self { buckets, total, floor: i64::MIN }
    }

    /// The (bucket, count) pairs, oldest first, for checkpoints.
    pub fn buckets(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.buckets.iter().map(|(b, n)| (*b, *n))
    }

    /// Ids counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Drops the buckets before `floor` (every id in them has expired).
    fn expire(&mut self, floor: i64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= floor {
                break;
            }
            self.total -= entry.remove();
        }
    }

    /// Counts one id admitted in `bucket`, unless it is before `floor` (expired already).
    fn admit(&mut self, bucket: i64, floor: i64) {
        if bucket < floor {
            return;
        }
        self.total += 1;
        // Most ids fall in the newest bucket.
        if let Some(mut newest) = self.buckets.last_entry() {
            if *newest.key() == bucket {
                *newest.get_mut() += 1;
                return;
            }
        }
        *self.buckets.entry(bucket).or_default() += 1;
    }
}

impl Dedup {
    /// An empty memory that remembers up to `max_ids` ids for `horizon_ms` of event
    /// time, fingerprinted under `key`.
    pub fn new(horizon_ms: i64, max_ids: usize, key: DedupKey) -> Self {
        Self { horizon_ms, max_ids, key: Some(key), seen: FingerprintTable::default(), admissions: Admissions::default() }
    }

    /// The fingerprint of `event_id` in this memory.
    pub fn fingerprint(&self, event_id: &str) -> u128 {
        match self.key {
            Some(DedupKey([k0, k1])) => {
                let mut h = SipHasher13::new_with_keys(k0, k1);
                std::hash::Hasher::write(&mut h, event_id.as_bytes());
                h.finish128().as_u128()
            }
            None => fingerprint(event_id),
        }
    }

    /// The key fingerprints are made with (`None`: unkeyed, see the field).
    pub fn key(&self) -> Option<DedupKey> {
        self.key
    }

    /// The bound on ids remembered.
    pub fn max_ids(&self) -> usize {
        self.max_ids
    }

    /// The admission counts, for checkpoints.
    pub fn admissions(&self) -> &Admissions {
        &self.admissions
    }

    fn bucket(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid((self.horizon_ms / 8).max(1))
    }

    /// The horizon in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    fn expired_before(&self, watermark_ms: i64) -> i64 {
        watermark_ms.saturating_sub(self.horizon_ms)
    }

    /// Number of ids held (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no ids are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of ids remembered at `watermark_ms` (within the horizon). Counts them.
    pub fn live_len(&self, watermark_ms: i64) -> usize {
        self.live(watermark_ms).count()
    }

    /// The entries live at `watermark_ms` (within the horizon), in table order.
    fn live(&self, watermark_ms: i64) -> impl Iterator<Item = (u128, i64)> + '_ {
        let expired_before = self.expired_before(watermark_ms);
        self.seen.iter().filter(move |(_, t)| *t >= expired_before)
    }

    /// Number of slots allocated (24 bytes each): the memory held.
    pub fn slots(&self) -> usize {
        self.seen.mask + 1
    }

    /// Records `fp` seen at `t_ms` when it was not seen within the horizon of
    /// `watermark_ms` and the memory has room.
    pub fn sight(&mut self, fp: u128, t_ms: i64, watermark_ms: i64) -> Sighting {
        let expired_before = self.expired_before(watermark_ms);
        let floor = self.bucket(expired_before);
        self.admissions.expire(floor);
        if self.admissions.total() >= self.max_ids as u64 {
            return if self.seen.get(fp).is_some_and(|first| first >= expired_before) { Sighting::Repeat } else { Sighting::Full };
        }
        let first = match self.seen.entry(fp, t_ms, expired_before) {
            (_, true) => true,
            (first, false) if *first >= expired_before => false,
            (first, false) => {
                *first = t_ms;
                true
            }
        };
        if first {
            self.admissions.admit(self.bucket(t_ms), floor);
            Sighting::First
        } else {
            Sighting::Repeat
        }
    }

    /// Remembers `fp` as first seen at `t_ms`, as an admission [`Self::sight`] made
    /// (found in the input log on restore: [`crate::admitted`]); the admission counts
    /// are not touched (they come from the checkpoint). Nothing is kept for an id
    /// already expired at `watermark_ms`.
    pub fn remember(&mut self, fp: u128, t_ms: i64, watermark_ms: i64) {
        let expired_before = self.expired_before(watermark_ms);
        if t_ms >= expired_before {
            *self.seen.entry(fp, t_ms, expired_before).0 = t_ms;
        }
    }

    /// Makes room for `n` ids at once (a restore about to remember them again), so that
    /// the table does not grow step by step.
    pub fn reserve(&mut self, n: usize) {
        self.seen.reserve(n);
    }

    /// Whether an id first seen at `t_ms` is expired at `watermark_ms` (and therefore,
    /// the watermark only rising, for good).
    pub fn expired(&self, t_ms: i64, watermark_ms: i64) -> bool {
        t_ms < self.expired_before(watermark_ms)
    }

    /// [`Self::sight`] as "was it a first sighting", for memories that never fill.
    pub fn first_sighting(&mut self, fp: u128, t_ms: i64, watermark_ms: i64) -> bool {
        self.sight(fp, t_ms, watermark_ms) == Sighting::First
    }

    /// Asks the CPU to fetch the memory [`Self::first_sighting`] will read for `fp`, so
    /// that a caller holding a batch can prefetch for all of it first and let the
    /// cache misses overlap. A hint: changes nothing.
    pub fn prefetch(&self, fp: u128) {
        self.seen.prefetch(fp);
    }

    /// Removes the entries expired at `watermark_ms` now (the table does it by itself
    /// when it fills up).
    pub fn reclaim(&mut self, watermark_ms: i64) {
        let expired_before = self.expired_before(watermark_ms);
        self.seen.retain(|t| t >= expired_before);
    }

    /// The entries live at `watermark_ms`, in a deterministic order (for checkpoints).
    pub fn entries(&self, watermark_ms: i64) -> Vec<(u128, i64)> {
        let mut v: Vec<_> = self.live(watermark_ms).collect();
        v.sort_unstable();
        v
    }

    /// Rebuilds a memory from checkpointed entries, their key and admission counts
    /// (`None` for both in checkpoints older than them: the counts are then those of
    /// the entries).
    pub fn restore(
        horizon_ms: i64,
        max_ids: usize,
        key: Option<DedupKey>,
        admissions: Option<Admissions>,
        entries: impl IntoIterator<Item = (u128, i64)>,
    ) -> Self {
        let mut d = Self { horizon_ms, max_ids, key, seen: FingerprintTable::default(), admissions: Admissions::default() };
        for (fp, t) in entries {
            *d.seen.entry(fp, t, i64::MIN).0 = t;
        }
        d.admissions = match admissions {
            Some(a) => a,
            // Older checkpoints: count the entries held.
            None => {
                let mut counted = Admissions::default();
                for (_, t) in d.seen.iter() {
                    counted.admit(d.bucket(t), i64::MIN);
                }
                counted
            }
        };
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: DedupKey = DedupKey::from_words(7, 11);

    /// The table grows exactly when an insertion would fill it past 5/8, and a sweep
    /// that leaves it exactly 3/8 full does not double it. Small fingerprints have
    /// their own home slots, so the counts are exact.
    #[test]
    fn the_table_grows_exactly_at_its_load_bounds() {
        let mut d = Dedup::new(1_000, usize::MAX, KEY);
        assert_eq!(d.slots(), MIN_SLOTS);
        // 256 ids that will expire, then 384 live ones: 640 = 5/8 of 1,024.
        for fp in 1..=256u128 {
            assert_eq!(d.sight(fp, 0, 0), Sighting::First);
        }
        for fp in 257..=640u128 {
            assert_eq!(d.sight(fp, 5_000, 5_000), Sighting::First);
        }
        assert_eq!(d.slots(), 1_024, "5/8 full: no growth yet");
        // The 641st would pass 5/8: the sweep drops the 256 expired ids, which leaves
        // 384 = 3/8 of the slots, not more, so the table keeps its size.
        assert_eq!(d.sight(641, 5_000, 5_000), Sighting::First);
        assert_eq!(d.slots(), 1_024);
        assert_eq!(d.live_len(5_000), 385);
        // Nothing left to sweep: up to 640 live ids fit, the 641st doubles the table.
        for fp in 642..=896u128 {
            assert_eq!(d.sight(fp, 5_000, 5_000), Sighting::First);
        }
        assert_eq!((d.slots(), d.live_len(5_000)), (1_024, 640));
        assert_eq!(d.sight(897, 5_000, 5_000), Sighting::First);
        assert_eq!((d.slots(), d.live_len(5_000)), (2_048, 641));
    }

    /// Admission counts are equal when their buckets are (what restores compare).
    #[test]
    fn admissions_are_equal_by_their_buckets() {
        let a = Admissions::from_buckets([(0, 3), (1, 2)]);
        assert_eq!(a, Admissions::from_buckets([(1, 2), (0, 3)]));
        assert_ne!(a, Admissions::from_buckets([(0, 3), (1, 1)]));
        assert_ne!(a, Admissions::from_buckets([(0, 3), (2, 2)]));
        assert_ne!(a, Admissions::default());
    }

    /// Each admission counts in its own bucket, one at the floor included, one below it
    /// not; an id exactly a horizon behind the watermark is still live.
    #[test]
    fn admissions_and_expiry_at_their_boundaries() {
        let mut a = Admissions::default();
        for (bucket, floor) in [(0, 0), (1, 0), (0, 0), (1, 0), (1, 0), (2, 3), (3, 3)] {
            a.admit(bucket, floor);
        }
        assert_eq!(a.buckets().collect::<Vec<_>>(), [(0, 2), (1, 3), (3, 1)]);
        assert_eq!(a.total(), 6);

        let mut d = Dedup::new(1_000, usize::MAX, KEY);
        assert!(d.is_empty());
        assert!(!d.expired(4_000, 5_000) && d.expired(3_999, 5_000));
        assert!(d.first_sighting(1, 4_000, 5_000));
        assert!(!d.is_empty());
        assert!(!d.first_sighting(1, 4_000, 5_000), "a horizon behind the watermark: still remembered");
    }

    /// `reserve(n)` makes room for `n` ids under 5/8 of the slots, in powers of two.
    #[test]
    fn reserving_rounds_up_to_the_load_bound() {
        for (n, slots) in [(10, 1_024), (10_239, 16_384), (10_240, 32_768)] {
            let mut d = Dedup::new(1_000, usize::MAX, KEY);
            d.reserve(n);
            assert_eq!(d.slots(), slots, "reserve({n})");
        }
    }

    #[test]
    fn reserving_room_keeps_the_entries_and_needs_no_growth_after() {
        let mut d = Dedup::new(1_000, usize::MAX, KEY);
        for i in 0..100 {
            d.remember(fingerprint(&format!("e{i}")), i, 0);
        }
        d.reserve(10_000);
        let slots = d.slots();
        assert!(slots >= 16_000, "{slots} slots");
        for i in 100..10_000 {
            d.remember(fingerprint(&format!("e{i}")), i, 0);
        }
        assert_eq!(d.slots(), slots, "no growth while filling what was reserved");
        assert_eq!(d.live_len(0), 10_000);
        assert!(!d.first_sighting(fingerprint("e5"), 5, 0), "entries from before the reserve are kept");
        d.reserve(10);
        assert_eq!(d.slots(), slots, "never shrinks");
    }

    #[test]
    fn repeats_within_the_horizon_are_duplicates() {
        let mut d = Dedup::new(1_000, usize::MAX, KEY);
        let a = fingerprint("a");
        assert!(d.first_sighting(a, 100, 100));
        assert!(!d.first_sighting(a, 100, 500));
        assert!(!d.first_sighting(a, 900, 1_100));
        assert!(d.first_sighting(fingerprint("b"), 100, 1_100));
    }

    #[test]
    fn expiry_depends_on_the_watermark_not_on_reclaiming() {
        let mut kept = Dedup::new(1_000, usize::MAX, KEY);
        let mut reclaimed = Dedup::new(1_000, usize::MAX, KEY);
        let a = fingerprint("a");
        for d in [&mut kept, &mut reclaimed] {
            assert!(d.first_sighting(a, 0, 0));
        }
        reclaimed.reclaim(5_000);
        assert!(reclaimed.is_empty());
        assert_eq!(kept.len(), 1);
        // Past the horizon both treat the id as new.
        assert!(kept.first_sighting(a, 0, 1_001));
        assert!(reclaimed.first_sighting(a, 0, 1_001));
        // At the edge of the horizon it is still remembered.
        let mut edge = Dedup::new(1_000, usize::MAX, KEY);
        edge.first_sighting(a, 0, 0);
        assert!(!edge.first_sighting(a, 0, 1_000));
    }

    /// The table against a `HashMap` that remembers every id, with fingerprints chosen
    /// to collide in their home slots, to sit at the end of the table (runs that wrap
    /// around) and to be zero, through growth, expired entries overwritten, sweeps that
    /// delete from the middle of runs and explicit reclaims.
    #[test]
    fn the_table_behaves_like_a_map() {
        use std::collections::HashMap;
        const HORIZON: i64 = 400;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 16
        };
        let (mut d, mut model) = (Dedup::new(HORIZON, usize::MAX, KEY), HashMap::<u128, i64>::new());
        let live = |model: &HashMap<u128, i64>, watermark: i64| {
            let mut v: Vec<_> = model.iter().filter(|(_, t)| **t >= watermark - HORIZON).map(|(f, t)| (*f, *t)).collect();
            v.sort_unstable();
            v
        };
        let mut watermark = 0i64;
        let mut slots_seen = std::collections::BTreeSet::new();
        for step in 0..60_000i64 {
            let r = next();
            let home = match r % 4 {
                0 => r % 8,            // few home slots: long runs
                1 => u64::MAX - r % 8, // the end of any table: runs wrap around
                _ => next(),           // anywhere
            };
            let hi = if r % 997 == 0 { 0 } else { next() % 64 };
            let fp = (u128::from(hi) << 64) | u128::from(if hi == 0 && r % 2 == 0 { 0 } else { home });
            // The stream speeds up, so that the table has to grow while it is in use.
            let t = if step < 30_000 { step / 8 } else { step / 2 - 11_250 } - (next() % 50) as i64;
            let expected = match model.get(&fp) {
                Some(first) if *first >= watermark - HORIZON => false,
                _ => {
                    model.insert(fp, t);
                    true
                }
            };
            assert_eq!(d.first_sighting(fp, t, watermark), expected, "step {step}");
            watermark = watermark.max(t);
            slots_seen.insert(d.slots());
            if step % 1_000 == 0 {
                let live = live(&model, watermark);
                assert_eq!(d.entries(watermark), live, "step {step}");
                assert_eq!(d.live_len(watermark), live.len());
                assert!(d.len() >= live.len() && d.len() * 8 <= d.slots() * 5, "step {step}");
            }
            if step % 7_000 == 0 {
                d.reclaim(watermark);
                assert_eq!(d.len(), d.live_len(watermark));
            }
        }
        assert_eq!(d.entries(watermark), live(&model, watermark));
        assert!(d.len() < model.len(), "expired entries were removed or overwritten");
        assert!(slots_seen.len() >= 3, "the table grew while in use: {slots_seen:?}");
        assert!(model.contains_key(&0), "the zero fingerprint was exercised");
    }

    #[test]
    fn entries_round_trip() {
        let mut d = Dedup::new(10, usize::MAX, KEY);
        d.first_sighting(fingerprint("x"), 5, 5);
        d.first_sighting(fingerprint("y"), 7, 7);
        let back = Dedup::restore(10, usize::MAX, Some(KEY), Some(d.admissions().clone()), d.entries(7));
        assert_eq!(back.entries(7), d.entries(7));
        assert_eq!(back.admissions(), d.admissions());
        // A checkpoint without counts (older than the bound): the entries are counted.
        let old = Dedup::restore(10, usize::MAX, Some(KEY), None, d.entries(7));
        assert_eq!(old.admissions(), d.admissions());
        assert_eq!(d.entries(16), vec![(fingerprint("y"), 7)]);
    }

    #[test]
    fn fingerprints_depend_on_the_key() {
        let (a, b) = (Dedup::new(10, 1, KEY), Dedup::new(10, 1, DedupKey::from_words(7, 12)));
        assert_eq!(a.fingerprint("order-1"), a.fingerprint("order-1"));
        assert_ne!(a.fingerprint("order-1"), b.fingerprint("order-1"));
        assert_ne!(a.fingerprint("order-1"), fingerprint("order-1"), "keyed, unlike the tools' fingerprint");
        assert_eq!(DedupKey::from_bytes(&KEY.to_bytes()), Some(KEY));
        assert_eq!(DedupKey::from_bytes(&[1; 15]), None);
        assert_eq!(format!("{KEY:?}"), "DedupKey(..)", "the key is never printed");
    }

    /// A flood of distinct ids with one event time fills the memory to its bound and
    /// no further: later new ids are refused (never remembered, never counted), repeats
    /// of remembered ones are still found, and once the flood's time leaves the
    /// horizon new ids are admitted again. Memory stays bounded throughout.
    #[test]
    fn a_flood_of_distinct_ids_is_bounded() {
        const MAX: usize = 1_000;
        let mut d = Dedup::new(800, MAX, KEY);
        let fp = |i: usize| d_fp(i);
        let mut first = 0;
        for i in 0..50_000 {
            match d.sight(fp(i), 0, 0) {
                Sighting::First => first += 1,
                Sighting::Full => {}
                Sighting::Repeat => panic!("id {i} is new"),
            }
        }
        assert_eq!(first, MAX);
        assert!(d.len() <= MAX && d.slots() <= 4 * MAX, "memory bounded: {} ids in {} slots", d.len(), d.slots());
        assert_eq!(d.sight(fp(3), 0, 0), Sighting::Repeat, "remembered ids still dedup");
        assert_eq!(d.sight(fp(60_000), 700, 700), Sighting::Full, "still within the horizon");
        // The flood (time 0) expires once the watermark passes 800.
        assert_eq!(d.sight(fp(60_001), 900, 900), Sighting::First);
        assert_eq!(d.live_len(900), 1);
    }

    /// The refusals depend only on the sequence of sightings: a memory restored from
    /// a checkpoint half way refuses exactly what the uninterrupted one refuses.
    #[test]
    fn refusals_survive_a_restore() {
        let stream: Vec<(u128, i64)> =
            (0..4_000).map(|i| (d_fp(if i % 4 == 0 { 1_000_000 + i % 100 } else { i }), (i as i64) / 3)).collect();
        let run = |d: &mut Dedup, part: &[(u128, i64)], wm: &mut i64| -> Vec<Sighting> {
            part.iter()
                .map(|&(fp, t)| {
                    let s = d.sight(fp, t, *wm);
                    *wm = (*wm).max(t);
                    s
                })
                .collect()
        };
        let mut whole = Dedup::new(400, 300, KEY);
        let mut wm = i64::MIN;
        let expected = run(&mut whole, &stream, &mut wm);
        assert!(expected.contains(&Sighting::Full) && expected.contains(&Sighting::Repeat));
        let mut first = Dedup::new(400, 300, KEY);
        let mut wm = i64::MIN;
        let mut got = run(&mut first, &stream[..2_222], &mut wm);
        let admissions = Admissions::from_buckets(first.admissions().buckets());
        let mut second = Dedup::restore(400, 300, first.key(), Some(admissions), first.entries(wm));
        got.extend(run(&mut second, &stream[2_222..], &mut wm));
        assert_eq!(got, expected);
    }

    fn d_fp(i: usize) -> u128 {
        Dedup::new(1, 1, KEY).fingerprint(&format!("id-{i}"))
    }
}
