//! Reading the merged totals back (the `totals` command).

use std::collections::BTreeMap;
use std::time::Duration;

use orderflow_proto::v1::WindowTotal;
use orderflow_proto::{timestamp_millis, Message as _};
use orderflow_runtime::kafka::{KafkaConfig, TopicReader};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::Result;

type Key = (i64, String, String, String);

fn key_of(t: &WindowTotal) -> Key {
    (t.window_start.as_ref().map_or(i64::MIN, timestamp_millis), t.region.clone(), t.tier.clone(), t.currency.clone())
}

fn decode(m: &impl Message) -> Option<WindowTotal> {
    match m.payload().map(WindowTotal::decode) {
        Some(Ok(t)) => Some(t),
        _ => {
            tracing::warn!(offset = m.offset(), "Unreadable total; skipped.");
            None
        }
    }
}

/// Every merged total published so far, one per (window, region, tier, currency),
/// ordered by window, then region, tier and currency. Blocking.
pub fn read(kafka: &KafkaConfig, topic: &str) -> Result<Vec<WindowTotal>> {
    let reader = TopicReader::open(kafka, topic)?;
    let mut all: BTreeMap<Key, WindowTotal> = BTreeMap::new();
    reader.read_to_end(|m| {
        if let Some(t) = decode(m) {
            all.insert(key_of(&t), t);
        }
    })?;
    Ok(all.into_values().collect())
}

/// Calls `f` for every total published so far, then for each new one until `cancel`.
/// A total published again unchanged (a merger re-publishing) is not repeated. Blocking.
pub fn follow(kafka: &KafkaConfig, topic: &str, cancel: &CancellationToken, mut f: impl FnMut(&WindowTotal)) -> Result<()> {
    let reader = TopicReader::open(kafka, topic)?;
    let mut seen: BTreeMap<Key, WindowTotal> = BTreeMap::new();
    reader.read_to_end(|m| {
        if let Some(t) = decode(m) {
            seen.insert(key_of(&t), t);
        }
    })?;
    seen.values().for_each(&mut f);
    while !cancel.is_cancelled() {
        if let Some(m) = reader.poll(Duration::from_millis(200))? {
            if let Some(t) = decode(&m) {
                if seen.get(&key_of(&t)) != Some(&t) {
                    f(&t);
                    seen.insert(key_of(&t), t);
                }
            }
        }
    }
    Ok(())
}
