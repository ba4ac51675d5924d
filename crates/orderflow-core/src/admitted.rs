//! Where a partition's dedup memory can be read back from: the input offsets of the
//! events whose ids it admitted.
//!
//! A checkpoint used to carry the dedup memory itself (16-byte fingerprint and event
//! time per id within the horizon): at the 2019 11.11 peak spread over 64 partitions
//! that is ~12 MB per partition every 5 s, more bytes per second than the partition's
//! input. But the input log already holds every id: the memory at offset N is exactly
//! the ids admitted (first sightings, [`crate::dedup::Sighting::First`]) at offsets
//! before N whose event time is still within the horizon. So a checkpoint carries
//! only *which* offsets were admitted, as run lengths (a few bytes per run; one run
//! for every stretch without a duplicate, a refusal or a non-event record), and a
//! restore rereads the input from the first of them and remembers exactly those ids
//! again. Re-deciding is not needed, nor wanted: whether a sighting was admitted
//! depended on memory older than the stretch reread (and on the bound on ids), so
//! the first reading's decisions are kept, not made again.
//!
//! How far back the stretch goes is bounded by event time: every id admitted at or
//! before an offset whose running highest admitted event time is older than the
//! horizon (of the partition's watermark) has expired for good (the watermark only
//! rises), so its offsets are dropped. [`AdmissionLog`] keeps marks of that running
//! highest time (one per sixteenth of the horizon) to find those offsets; the stretch
//! reread is therefore about 17/16 of the horizon of input.

use std::collections::VecDeque;

/// Marks per horizon: the stretch reread on restore is at most this much longer
/// than the horizon, in event time (plus the spread of event times in the input).
const MARKS_PER_HORIZON: i64 = 16;

/// The input offsets of the admitted ids still possibly live, as runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdmissionLog {
    /// Runs `[start, end)` of admitted offsets, ascending, not touching.
    runs: VecDeque<(i64, i64)>,
    /// `(offset, t)`: every admission at or before `offset` has an event time at most
    /// `t`. Ascending in both.
    marks: VecDeque<(i64, i64)>,
    /// Highest event time admitted so far (`i64::MIN`: none).
    max_t: i64,
    /// The next offset of [`crate::partition::PartitionState::apply`] when the caller
    /// gives none (tests, benchmarks): one past the last offset applied.
    position: i64,
}

/// An [`AdmissionLog`] as a checkpoint holds it; [`AdmissionLog::to_parts`] and
/// [`AdmissionLog::from_parts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogParts {
    /// The first admitted offset (where a restore starts reading).
    pub start: i64,
    /// Run lengths from `start`: admitted, skipped, admitted, skipped, ..., admitted.
    pub runs: Vec<u64>,
    pub mark_offsets: Vec<i64>,
    pub mark_times_ms: Vec<i64>,
    pub max_t: i64,
}

impl AdmissionLog {
    /// An empty log whose next implicit offset is `position`.
    pub fn starting_at(position: i64) -> Self {
        Self { runs: VecDeque::new(), marks: VecDeque::new(), max_t: i64::MIN, position }
    }

    /// The offset [`crate::partition::PartitionState::apply`] uses when given none.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Notes that the record at `offset` was applied (admitted or not).
    pub fn passed(&mut self, offset: i64) {
        self.position = self.position.max(offset.saturating_add(1));
    }

    /// Records that the id of the event at `offset` (event time `t_ms`) was admitted.
    /// `mark_every_ms` is the horizon over [`MARKS_PER_HORIZON`] (at least 1).
    pub fn admit(&mut self, offset: i64, t_ms: i64, mark_every_ms: i64) {
        if offset == i64::MAX {
            // Runs are half-open: the largest offset cannot start one (nor hold a
            // mark, which must lie before the offset the log goes on from). Kafka never
            // gives it; a hostile checkpoint's next offset can (found by fuzzing).
            return;
        }
        match self.runs.back_mut() {
            Some((_, end)) if *end == offset => *end = end.saturating_add(1),
            Some((_, end)) if *end > offset => {
                // Offsets only go forward; a record applied twice is a caller's bug
                // (the aggregator skips offsets already in its state).
                debug_assert!(false, "offset {offset} admitted behind {end}");
                return;
            }
            _ => self.runs.push_back((offset, offset.saturating_add(1))),
        }
        if t_ms > self.max_t {
            let newer_bucket = match self.marks.back() {
                Some((_, t)) => t_ms.div_euclid(mark_every_ms) > t.div_euclid(mark_every_ms),
                None => true,
            };
            self.max_t = t_ms;
            if newer_bucket {
                self.marks.push_back((offset, t_ms));
            } else if let Some(last) = self.marks.back_mut() {
                // Same bucket: the newest mark moves up to this offset (still one per
                // bucket, and the closest to the present).
                *last = (offset, t_ms);
            }
        }
    }

    /// Drops the admissions that have expired for good: those at or before a mark
    /// whose time is before `expired_before`.
    pub fn expire(&mut self, expired_before: i64) {
        if self.max_t < expired_before {
            // Everything admitted is older than the horizon.
            self.runs.clear();
            self.marks.clear();
            return;
        }
        let mut through = None;
        while let Some(&(offset, t)) = self.marks.front() {
            if t >= expired_before {
                break;
            }
            through = Some(offset);
            self.marks.pop_front();
        }
        let Some(through) = through else { return };
        while let Some(run) = self.runs.front_mut() {
            if run.1 <= through.saturating_add(1) {
                self.runs.pop_front();
            } else {
                run.0 = run.0.max(through.saturating_add(1));
                break;
            }
        }
    }

    /// Whether `offset` is an admitted one.
    pub fn contains(&self, offset: i64) -> bool {
        let i = self.runs.partition_point(|(_, end)| *end <= offset);
        self.runs.get(i).is_some_and(|(start, _)| *start <= offset)
    }

    /// [`Self::contains`] for offsets asked in ascending order: `cursor` (start at 0)
    /// remembers the run reached, so that a whole stretch is checked in one pass.
    pub fn contains_ascending(&self, offset: i64, cursor: &mut usize) -> bool {
        while self.runs.get(*cursor).is_some_and(|(_, end)| *end <= offset) {
            *cursor += 1;
        }
        self.runs.get(*cursor).is_some_and(|(start, _)| *start <= offset)
    }

    /// Number of admitted offsets held.
    pub fn admitted(&self) -> u64 {
        self.runs.iter().map(|(s, e)| (e - s) as u64).sum()
    }

    /// Number of runs held (what the checkpoint's size follows).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The first admitted offset held and one past the last, if any.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.runs.front()?.0, self.runs.back()?.1))
    }

    /// The admitted offsets, ascending.
    pub fn offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.runs.iter().flat_map(|(s, e)| *s..*e)
    }

    /// The log for a checkpoint.
    pub fn to_parts(&self) -> LogParts {
        let mut runs = Vec::with_capacity(2 * self.runs.len());
        let mut at = self.runs.front().map_or(0, |r| r.0);
        for (i, (start, end)) in self.runs.iter().enumerate() {
            if i > 0 {
                runs.push((start - at) as u64);
            }
            runs.push((end - start) as u64);
            at = *end;
        }
        LogParts {
            start: self.runs.front().map_or(0, |r| r.0),
            runs,
            mark_offsets: self.marks.iter().map(|m| m.0).collect(),
            mark_times_ms: self.marks.iter().map(|m| m.1).collect(),
            max_t: self.max_t,
        }
    }

    /// The log from a checkpoint's parts, continuing at `position`; `Err` says what is
    /// wrong with them.
    pub fn from_parts(parts: &LogParts, position: i64) -> Result<Self, String> {
        if parts.runs.len().is_multiple_of(2) && !parts.runs.is_empty() {
            return Err(format!("{} admitted-offset run lengths: must be odd (admitted, skipped, ..., admitted)", parts.runs.len()));
        }
        let mut runs = VecDeque::with_capacity(parts.runs.len().div_ceil(2));
        let mut at = parts.start;
        for (i, len) in parts.runs.iter().enumerate() {
            let len = i64::try_from(*len).ok().filter(|l| *l > 0).ok_or_else(|| format!("run length {len}"))?;
            let end = at.checked_add(len).ok_or_else(|| "admitted offsets past the largest offset".to_owned())?;
            if i % 2 == 0 {
                runs.push_back((at, end));
            }
            at = end;
        }
        if parts.mark_offsets.len() != parts.mark_times_ms.len() {
            return Err("mark offsets and times differ in length".into());
        }
        let marks: VecDeque<(i64, i64)> = parts.mark_offsets.iter().copied().zip(parts.mark_times_ms.iter().copied()).collect();
        if marks.iter().zip(marks.iter().skip(1)).any(|(a, b)| a.0 >= b.0 || a.1 >= b.1) {
            return Err("marks out of order".into());
        }
        if marks.back().is_some_and(|m| m.1 > parts.max_t) {
            return Err("a mark past the highest admitted time".into());
        }
        let position = position.max(runs.back().map_or(i64::MIN, |r| r.1));
        // Marks to come are at offsets from `position` on: one already there or past it
        // would put them out of order (found by fuzzing the `checkpoint` target).
        if marks.back().is_some_and(|m| m.0 >= position) {
            return Err("a mark at or past the checkpoint's offset".into());
        }
        Ok(Self { runs, marks, max_t: parts.max_t, position })
    }
}

/// The distance between marks for a horizon.
pub fn mark_every_ms(horizon_ms: i64) -> i64 {
    (horizon_ms / MARKS_PER_HORIZON).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_answer_membership() {
        let mut log = AdmissionLog::starting_at(0);
        for o in [3, 4, 5, 9, 10, 20] {
            log.admit(o, o * 10, 100);
        }
        assert_eq!(log.offsets().collect::<Vec<_>>(), [3, 4, 5, 9, 10, 20]);
        let mut cursor = 0;
        let ascending: Vec<i64> = (0..25).filter(|o| log.contains_ascending(*o, &mut cursor)).collect();
        assert_eq!(ascending, [3, 4, 5, 9, 10, 20]);
        assert!(log.contains(4) && log.contains(20) && !log.contains(6) && !log.contains(2) && !log.contains(21));
        let parts = log.to_parts();
        assert_eq!((parts.start, parts.runs.as_slice()), (3, &[3, 3, 2, 9, 1][..]));
        let back = AdmissionLog::from_parts(&parts, 21).unwrap();
        assert_eq!(back, AdmissionLog { position: 21, ..log.clone() });
        assert_eq!(back.to_parts(), parts);
        assert_eq!(AdmissionLog::from_parts(&AdmissionLog::starting_at(0).to_parts(), 7).unwrap(), AdmissionLog::starting_at(7));
    }

    #[test]
    fn expiry_drops_offsets_only_behind_a_mark_older_than_the_horizon() {
        let mut log = AdmissionLog::starting_at(0);
        // Marks every 10 ms of event time; offset o has time o.
        for o in 0..100 {
            log.admit(o, o, 10);
        }
        // Marks hold the last offset of each bucket seen so far: 9, 19, ..., 99.
        log.expire(35);
        // Offsets up to 29 (times up to 29 < 35) go; 30..34 stay (their mark, 39, is not older).
        assert_eq!(log.span(), Some((30, 100)));
        log.expire(i64::MIN);
        assert_eq!(log.span(), Some((30, 100)));
        log.expire(1_000);
        assert_eq!(log.span(), None);
        assert_eq!(log.admitted(), 0);
    }

    #[test]
    fn a_late_high_time_holds_back_expiry_of_what_came_before_it() {
        let mut log = AdmissionLog::starting_at(0);
        log.admit(0, 500, 10);
        log.admit(1, 0, 10);
        log.admit(2, 1, 10);
        // Offset 1's time is old, but the running highest through it is 500.
        log.expire(100);
        assert_eq!(log.span(), Some((0, 3)));
        log.expire(501);
        assert_eq!(log.span(), None);
    }

    #[test]
    fn admissions_at_the_last_offsets_do_not_overflow() {
        let mut log = AdmissionLog::starting_at(i64::MAX - 1);
        log.admit(i64::MAX - 1, 1, 10);
        log.admit(i64::MAX, 2, 10);
        assert_eq!(log.span(), Some((i64::MAX - 1, i64::MAX)));
        let back = AdmissionLog::from_parts(&log.to_parts(), i64::MAX).unwrap();
        assert_eq!(back.to_parts(), log.to_parts());
    }

    #[test]
    fn an_admission_at_the_largest_offset_alone_leaves_a_log_that_restores() {
        // Found by fuzzing: it made a run of length 0 and a mark at the log's own
        // position, which a restore refuses.
        let mut log = AdmissionLog::starting_at(i64::MAX);
        log.admit(i64::MAX, 7, 10);
        assert_eq!(log.span(), None);
        let parts = log.to_parts();
        assert!(parts.runs.iter().all(|len| *len > 0));
        assert_eq!(AdmissionLog::from_parts(&parts, i64::MAX).unwrap().to_parts(), parts);
    }

    #[test]
    fn broken_parts_are_refused() {
        let parts = |runs: Vec<u64>| LogParts { start: 0, runs, ..Default::default() };
        assert!(AdmissionLog::from_parts(&parts(vec![1, 1]), 0).is_err());
        assert!(AdmissionLog::from_parts(&parts(vec![0]), 0).is_err());
        assert!(AdmissionLog::from_parts(&parts(vec![u64::MAX]), 0).is_err());
        assert!(AdmissionLog::from_parts(&LogParts { start: i64::MAX, runs: vec![2], ..Default::default() }, 0).is_err());
        let marks = LogParts { mark_offsets: vec![2, 1], mark_times_ms: vec![1, 2], max_t: 5, ..Default::default() };
        assert!(AdmissionLog::from_parts(&marks, 0).is_err());
        let past = LogParts { mark_offsets: vec![1], mark_times_ms: vec![9], max_t: 5, ..Default::default() };
        assert!(AdmissionLog::from_parts(&past, 0).is_err());
        // A mark at or past the offset the log goes on from (found by fuzzing).
        let ahead = LogParts { start: 0, runs: vec![2], mark_offsets: vec![5], mark_times_ms: vec![1], max_t: 1 };
        assert!(AdmissionLog::from_parts(&ahead, 4).is_err());
        assert!(AdmissionLog::from_parts(&ahead, 6).is_ok());
    }
}
