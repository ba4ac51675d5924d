//! Event-id memory over an event-time horizon.
//!
//! Ids are kept as 128-bit XXH3 fingerprints with the event time of their first
//! sighting. An entry counts as seen while its event time is within `horizon` of the
//! partition's watermark; whether an id is a duplicate therefore depends only on the
//! partition's log, never on when memory happened to be reclaimed. With a horizon of
//! at least window + lateness, a repeat that is no longer remembered falls into a
//! closed window and is late, so it can never be counted twice.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128;

/// The fingerprint of an event id.
pub fn fingerprint(event_id: &str) -> u128 {
    xxh3_128(event_id.as_bytes())
}

/// A hasher for keys that are already uniform hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

type FingerprintMap = HashMap<u128, i64, BuildHasherDefault<FingerprintHasher>>;

/// The dedup memory of one partition.
#[derive(Debug, Clone)]
pub struct Dedup {
    horizon_ms: i64,
    seen: FingerprintMap,
    /// Watermark at the last reclaim, to reclaim memory in steps.
    reclaimed_at_ms: i64,
}

impl Dedup {
    /// An empty memory that remembers ids for `horizon_ms` of event time.
    pub fn new(horizon_ms: i64) -> Self {
        Self { horizon_ms, seen: FingerprintMap::default(), reclaimed_at_ms: i64::MIN }
    }

    /// The horizon in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Number of ids held (including expired ones not yet reclaimed).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no ids are held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `fp` seen at `t_ms`; returns `false` when it was already seen within the
    /// horizon of `watermark_ms`.
    pub fn first_sighting(&mut self, fp: u128, t_ms: i64, watermark_ms: i64) -> bool {
        let expired_before = watermark_ms.saturating_sub(self.horizon_ms);
        match self.seen.get_mut(&fp) {
            Some(first) if *first >= expired_before => false,
            Some(first) => {
                *first = t_ms;
                true
            }
            None => {
                self.seen.insert(fp, t_ms);
                true
            }
        }
    }

    /// Whether `fp` has an entry (expired or not): reads the memory
    /// [`Self::first_sighting`] will read, so that a caller holding a batch can look all
    /// its ids up first and let the cache misses overlap. Changes nothing.
    pub fn warm(&self, fp: u128) -> bool {
        self.seen.contains_key(&fp)
    }

    /// Frees expired entries; runs a full sweep only after the watermark moved by a
    /// quarter of the horizon, so its cost is spread over many events.
    pub fn reclaim(&mut self, watermark_ms: i64) {
        if self.reclaimed_at_ms != i64::MIN && watermark_ms.saturating_sub(self.reclaimed_at_ms) < self.horizon_ms / 4 {
            return;
        }
        self.reclaimed_at_ms = watermark_ms;
        let expired_before = watermark_ms.saturating_sub(self.horizon_ms);
        self.seen.retain(|_, t| *t >= expired_before);
    }

    /// Entries in a deterministic order (for checkpoints).
    pub fn entries(&self) -> Vec<(u128, i64)> {
        let mut v: Vec<_> = self.seen.iter().map(|(f, t)| (*f, *t)).collect();
        v.sort_unstable();
        v
    }

    /// Rebuilds a memory from checkpointed entries.
    pub fn from_entries(horizon_ms: i64, entries: impl IntoIterator<Item = (u128, i64)>) -> Self {
        let mut d = Self::new(horizon_ms);
        d.seen.extend(entries);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_horizon_are_duplicates() {
        let mut d = Dedup::new(1_000);
        let a = fingerprint("a");
        assert!(d.first_sighting(a, 100, 100));
        assert!(!d.first_sighting(a, 100, 500));
        assert!(!d.first_sighting(a, 900, 1_100));
        assert!(d.first_sighting(fingerprint("b"), 100, 1_100));
    }

    #[test]
    fn expiry_depends_on_the_watermark_not_on_reclaiming() {
        let mut kept = Dedup::new(1_000);
        let mut reclaimed = Dedup::new(1_000);
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
        let mut edge = Dedup::new(1_000);
        edge.first_sighting(a, 0, 0);
        assert!(!edge.first_sighting(a, 0, 1_000));
    }

    #[test]
    fn entries_round_trip() {
        let mut d = Dedup::new(10);
        d.first_sighting(fingerprint("x"), 5, 5);
        d.first_sighting(fingerprint("y"), 7, 7);
        let back = Dedup::from_entries(10, d.entries());
        assert_eq!(back.entries(), d.entries());
    }
}
