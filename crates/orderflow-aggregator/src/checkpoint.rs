//! The checkpoint topic: partition p's checkpoints are written to partition p, so the
//! newest checkpoint of a partition is among the last records of one partition and
//! restoring reads a handful of records, whatever the length of the input log.
//!
//! A partition's checkpoint does not carry its dedup memory but the input offsets of
//! the ids it admitted ([`orderflow_core::admitted`]); [`reread`] re-reads that
//! stretch of the input (about a dedup horizon's worth) to rebuild it.
//!
//! The merger's checkpoints go, under one key, to their own single-partition compacted
//! topic ([`restore_merger`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orderflow_core::partition::{PartitionState, RereadCounts, RestoringPartition};
use orderflow_core::wire::{EnrichedKind, EnrichedView};

use orderflow_proto::v1::{MergerCheckpoint, PartitionCheckpoint};
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{is_fatal_read, KafkaConfig};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::Result;

/// How many of the last records of a checkpoint partition are read on restore. A
/// stale owner may still have written a checkpoint after a rebalance; of the last few,
/// the one with the highest offset is the newest state, because processing is
/// deterministic.
const TAIL: i64 = 8;

/// Reads the newest checkpoint of each of `partitions` (absent: start from scratch).
pub fn restore(kafka: &KafkaConfig, topic: &str, partitions: &[i32]) -> Result<HashMap<i32, PartitionCheckpoint>> {
    let consumer = kafka.reader()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset((high - TAIL).max(low)))?;
            remaining.insert(p, high);
        }
    }
    let mut found: HashMap<i32, PartitionCheckpoint> = HashMap::new();
    if remaining.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) if is_fatal_read(&e) => return Err(e.into()),
            Some(Err(e)) => tracing::debug!(error = %e, "Transient error reading checkpoints; retrying."),
            Some(Ok(m)) => {
                let p = m.partition();
                match m.payload().map(PartitionCheckpoint::decode) {
                    Some(Ok(cp)) if cp.partition == p => {
                        if found.get(&p).is_none_or(|old| cp.next_offset >= old.next_offset) {
                            found.insert(p, cp);
                        }
                    }
                    _ => tracing::warn!(partition = p, offset = m.offset(), "Unreadable checkpoint record; skipped."),
                }
                if remaining.get(&p).is_some_and(|h| m.offset() + 1 >= *h) {
                    remaining.remove(&p);
                }
            }
        }
    }
    Ok(found)
}

/// Reads the newest merger checkpoint (the one covering the most partial-totals
/// records among the last few: a stale merger may have written one after the active
/// one; both are the state of a prefix of the same log). `None`: there is none.
pub fn restore_merger(kafka: &KafkaConfig, topic: &str) -> Result<Option<MergerCheckpoint>> {
    let consumer = kafka.reader()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset((high - TAIL).max(low)))?;
    consumer.assign(&tpl)?;
    let mut found: Option<MergerCheckpoint> = None;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) if is_fatal_read(&e) => return Err(e.into()),
            Some(Err(e)) => tracing::debug!(error = %e, "Transient error reading merger checkpoints; retrying."),
            Some(Ok(m)) => {
                match m.payload().map(MergerCheckpoint::decode) {
                    Some(Ok(cp)) => {
                        if found.as_ref().is_none_or(|old| cp.next_offset >= old.next_offset) {
                            found = Some(cp);
                        }
                    }
                    _ => tracing::warn!(offset = m.offset(), "Unreadable merger checkpoint record; skipped."),
                }
                if m.offset() + 1 >= high {
                    return Ok(found);
                }
            }
        }
    }
}

/// How long a reread waits without any record before it gives up on the partitions
/// still short of their stretch's end (the records are gone or the broker is away):
/// those restore with what was found, and say so.
const REREAD_STALL: Duration = Duration::from_secs(30);

/// What [`reread`] did for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reread {
    /// Admitted ids, and those found again.
    pub ids: RereadCounts,
    /// Input records read.
    pub records: u64,
}

/// Rebuilds the dedup memory of restored partitions: reads, from `topic` (the input),
/// the stretch each one's admission log names ([`RestoringPartition::reread_span`]), and
/// hands every record to its partition. The partitions are spread over up to
/// `threads` readers, each on its own thread with its own consumer, reading its
/// partitions all at once (a take-over's wall time is then about its largest share,
/// where the machine has the cores). Returns the finished states, ready to apply
/// records from their checkpoints' offsets on.
pub fn reread(
    kafka: &KafkaConfig,
    topic: &str,
    states: Vec<(i32, RestoringPartition)>,
    threads: usize,
) -> Result<Vec<(i32, PartitionState, Reread)>> {
    let threads = threads.clamp(1, states.len().max(1));
    if threads == 1 {
        return reread_on_one_reader(kafka, topic, states);
    }
    // The longest stretches first, each to the reader with the least to read so far.
    let mut states: Vec<(i64, i32, RestoringPartition)> =
        states.into_iter().map(|(p, s)| (s.reread_span().map_or(0, |(from, end)| end - from), p, s)).collect();
    states.sort_by_key(|(len, _, _)| std::cmp::Reverse(*len));
    let mut shares: Vec<(i64, Vec<(i32, RestoringPartition)>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for (len, p, state) in states {
        let share = shares.iter_mut().min_by_key(|(load, _)| *load).expect("at least one reader");
        share.0 += len;
        share.1.push((p, state));
    }
    std::thread::scope(|scope| {
        let readers: Vec<_> = shares
            .into_iter()
            .filter(|(_, share)| !share.is_empty())
            .enumerate()
            .map(|(i, (_, share))| {
                std::thread::Builder::new()
                    .name(format!("reread-{i}"))
                    .spawn_scoped(scope, move || reread_on_one_reader(kafka, topic, share))
                    .map_err(|e| std::io::Error::new(e.kind(), format!("starting a reread thread: {e}")))
            })
            .collect();
        let mut done = Vec::new();
        for reader in readers {
            match reader?.join() {
                Ok(share) => done.extend(share?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(done)
    })
}

/// [`reread`] of `states` on one consumer.
fn reread_on_one_reader(
    kafka: &KafkaConfig,
    topic: &str,
    states: Vec<(i32, RestoringPartition)>,
) -> Result<Vec<(i32, PartitionState, Reread)>> {
    let consumer = kafka.reader()?;
    let mut tpl = TopicPartitionList::new();
    // Partition → (state, end of its stretch, records read).
    let mut pending: HashMap<i32, (RestoringPartition, i64, u64)> = HashMap::new();
    let mut done = Vec::with_capacity(states.len());
    for (p, state) in states {
        let Some((from, end)) = state.reread_span() else {
            done.push((p, state, 0));
            continue;
        };
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let (from, end) = (from.max(low), end.min(high));
        if from >= end {
            done.push((p, state, 0));
            continue;
        }
        tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
        pending.insert(p, (state, end, 0));
    }
    if !pending.is_empty() {
        consumer.assign(&tpl)?;
    }
    // Since when nothing came (no clock read per record: they showed in the profile).
    let mut idle_since: Option<Instant> = None;
    while !pending.is_empty() {
        if idle_since.is_some_and(|t| t.elapsed() > REREAD_STALL) {
            tracing::error!(
                partitions = ?pending.keys().collect::<Vec<_>>(),
                "No input for {REREAD_STALL:?} while rebuilding the dedup memory; going on with what was read."
            );
            done.extend(pending.drain().map(|(p, (state, _, read))| (p, state, read)));
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                idle_since.get_or_insert_with(Instant::now);
            }
            Some(Err(e)) if is_fatal_read(&e) => return Err(e.into()),
            Some(Err(e)) => tracing::debug!(error = %e, "Transient error rereading the input; retrying."),
            Some(Ok(m)) => {
                idle_since = None;
                let p = m.partition();
                let Some((state, end, read)) = pending.get_mut(&p) else { continue };
                if m.offset() >= *end {
                    continue;
                }
                *read += 1;
                if state.wants(m.offset()) {
                    if let Ok(EnrichedView { kind: Some(EnrichedKind::Event(e)) }) = EnrichedView::parse(m.payload().unwrap_or_default()) {
                        state.reread(m.offset(), &e);
                    }
                }
                if m.offset() + 1 >= *end {
                    let (state, _, read) = pending.remove(&p).expect("pending");
                    done.push((p, state, read));
                }
            }
        }
    }
    Ok(done
        .into_iter()
        .map(|(p, state, records)| {
            let ids = state.counts();
            (p, state.finish(), Reread { ids, records })
        })
        .collect())
}

/// Encodes a checkpoint for partition `partition` of the checkpoint topic.
pub fn encode(cp: &PartitionCheckpoint) -> Vec<u8> {
    cp.encode_to_vec()
}
