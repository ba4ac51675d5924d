//! Which quiet partitions get an idle tick, and how far it closes them: the decision
//! alone, without Kafka, so that its races can be tested.
//!
//! A tick closes a partition's windows through a target: the frontier other partitions
//! (of this or any instance) have closed, or, once the whole input has been settled for
//! `--idle-close`, the end of every open window. It is only safe if no record the
//! enricher will still write to that partition belongs before the target, so it relies
//! on a reading of the pipeline's input ([`Upstream`]) that must say the enricher owes
//! nothing there and must be recent, taken after the partition went quiet, and taken
//! after the input last resumed: when traffic comes back after a quiet spell, the
//! partitions it reaches first must not get the others closed on the strength of a
//! reading from before it came back (which still says "settled").

use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::Upstream;

/// How old a reading of the pipeline's input may be for idle ticks to rely on it.
pub const UPSTREAM_FRESH: Duration = Duration::from_secs(2);

/// What the decision needs to know of one owned partition.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    pub partition: i32,
    /// When it last delivered a record (or was taken over).
    pub last_input: Instant,
    /// When a tick was last written into it.
    pub tick_sent: Option<Instant>,
    pub closed_through_ms: i64,
    /// End of its last open window, if any.
    pub last_open_end_ms: Option<i64>,
}

/// Returns the close-through target and the partitions to tick with it (none, when the
/// reading cannot be relied on or nothing is behind).
///
/// `last_resumed` is when a partition last received input after having been quiet for
/// `idle` (see [`resumed`]).
pub fn ticks(
    now: Instant,
    idle: Duration,
    upstream: &Upstream,
    last_resumed: Option<Instant>,
    partitions: &[Quiet],
) -> Option<(i64, Vec<i32>)> {
    let checked_at = Instant::from_std(upstream.checked_at?);
    if upstream.stalled || partitions.is_empty() || now.saturating_duration_since(checked_at) > UPSTREAM_FRESH {
        return None;
    }
    // Input came back after the reading: it may be on its way to every partition.
    if last_resumed.is_some_and(|r| r >= checked_at) {
        return None;
    }
    let quiet = |q: &Quiet| {
        now.saturating_duration_since(q.last_input) >= idle
            && q.last_input < checked_at
            && !upstream.owing.contains(&q.partition)
            && q.tick_sent.is_none_or(|t| now.saturating_duration_since(t) >= idle)
    };
    let mut target = partitions.iter().map(|q| q.closed_through_ms).max().unwrap_or(i64::MIN).max(upstream.global_frontier_ms);
    if upstream.settled_since.is_some_and(|t| Instant::from_std(t) + idle <= now) {
        target = target.max(partitions.iter().filter_map(|q| q.last_open_end_ms).max().unwrap_or(i64::MIN));
    }
    if target == i64::MIN {
        return None;
    }
    let ticked: Vec<i32> = partitions.iter().filter(|q| quiet(q) && q.closed_through_ms < target).map(|q| q.partition).collect();
    (!ticked.is_empty()).then_some((target, ticked))
}

/// Whether input arriving `now` at a partition whose last input was `last_input`
/// resumes it after a quiet spell of at least `idle`.
pub fn resumed(now: Instant, last_input: Instant, idle: Duration) -> bool {
    now.saturating_duration_since(last_input) >= idle
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);
    const MIN: i64 = 60_000;

    fn quiet(partition: i32, last_input: Instant, closed_through_ms: i64, last_open_end_ms: Option<i64>) -> Quiet {
        Quiet { partition, last_input, tick_sent: None, closed_through_ms, last_open_end_ms }
    }

    fn settled(checked_at: Instant, since: Instant) -> Upstream {
        Upstream {
            checked_at: Some(checked_at.into_std()),
            owing: Vec::new(),
            stalled: false,
            settled_since: Some(since.into_std()),
            global_frontier_ms: i64::MIN,
        }
    }

    #[test]
    fn a_settled_input_closes_every_open_window() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        let upstream = settled(now - Duration::from_millis(300), t0);
        let partitions = [quiet(0, t0, 0, Some(2 * MIN)), quiet(1, t0, MIN, Some(3 * MIN))];
        assert_eq!(ticks(now, IDLE, &upstream, None, &partitions), Some((3 * MIN, vec![0, 1])));
    }

    /// The race a flat-out load test ran into (50,528 events late instead of 9,982):
    /// traffic comes back after a quiet spell; partition 0's records are read first and
    /// open a window; the last reading, taken just before, still says the input has been
    /// settled for a long time and that the enricher owes nothing on partition 1. Ticking
    /// partition 1 through the end of that window would make its records of the window,
    /// arriving a moment later, late.
    #[test]
    fn input_resuming_after_the_reading_holds_ticks_back() {
        let t0 = Instant::now();
        let checked_at = t0 + Duration::from_secs(45);
        let resumed_at = checked_at + Duration::from_millis(200);
        let now = checked_at + Duration::from_millis(400);
        let upstream = settled(checked_at, t0);
        let partitions = [quiet(0, resumed_at, i64::MIN, Some(MIN)), quiet(1, t0, i64::MIN, None)];
        assert!(resumed(resumed_at, t0, IDLE));
        assert_eq!(ticks(now, IDLE, &upstream, Some(resumed_at), &partitions), None);
        // Without the resumption the same reading would have closed partition 1.
        assert_eq!(ticks(now, IDLE, &upstream, None, &partitions), Some((MIN, vec![1])));
        // A reading taken after the input came back decides again (here: partition 1 is
        // owed records, so it is left alone).
        let later = Upstream { owing: vec![1], settled_since: None, ..settled(resumed_at + Duration::from_millis(100), t0) };
        assert_eq!(ticks(now + Duration::from_millis(300), IDLE, &later, Some(resumed_at), &partitions), None);
    }

    #[test]
    fn a_quiet_partition_catches_up_with_a_busy_ones_frontier() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(30);
        // Partition 0 keeps receiving input (never quiet for `idle`, so never resumed).
        let upstream = Upstream { settled_since: None, ..settled(now - Duration::from_millis(100), t0) };
        let partitions = [quiet(0, now - Duration::from_millis(50), 5 * MIN, Some(6 * MIN)), quiet(1, t0, 2 * MIN, Some(3 * MIN))];
        assert_eq!(ticks(now, IDLE, &upstream, None, &partitions), Some((5 * MIN, vec![1])));
        // Not while the enricher owes it records, nor on a stale or stalled reading, nor
        // again within `idle` of the last tick.
        let owing = Upstream { owing: vec![1], ..upstream.clone() };
        assert_eq!(ticks(now, IDLE, &owing, None, &partitions), None);
        assert_eq!(ticks(now + UPSTREAM_FRESH, IDLE, &upstream, None, &partitions), None);
        let stalled = Upstream { stalled: true, ..upstream.clone() };
        assert_eq!(ticks(now, IDLE, &stalled, None, &partitions), None);
        let mut ticked = partitions;
        ticked[1].tick_sent = Some(now - Duration::from_secs(3));
        assert_eq!(ticks(now, IDLE, &upstream, None, &ticked), None);
    }

    #[test]
    fn a_partition_that_went_quiet_after_the_reading_waits_for_the_next() {
        let t0 = Instant::now();
        let checked_at = t0 + Duration::from_secs(20);
        let now = checked_at + Duration::from_millis(500);
        let upstream = Upstream { settled_since: None, ..settled(checked_at, t0) };
        // Partition 1's last input came after the reading (and `idle` is short here).
        let partitions = [quiet(0, t0, 5 * MIN, None), quiet(1, checked_at + Duration::from_millis(10), MIN, None)];
        assert_eq!(ticks(now, Duration::from_millis(100), &upstream, None, &partitions), None);
    }
}
