//! The merchant table, loaded from and kept up to date with the merchants topic.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use orderflow_core::merchant::{parse_merchant_key, MerchantTable};
use orderflow_proto::v1::Merchant;
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{KafkaArgs, TopicReader};
use orderflow_runtime::telemetry;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// The table shared by the enrich loop (readers) and the follower (writer).
#[derive(Debug, Clone, Default)]
pub struct MerchantStore {
    table: Arc<RwLock<MerchantTable>>,
}

impl MerchantStore {
    /// Reads the whole merchants topic, then follows it on a background thread until
    /// `cancel`. Returns once the initial load is complete, with the follower's handle.
    pub async fn load(kafka: &KafkaArgs, topic: &str, cancel: CancellationToken) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let store = Self::default();
        let (kafka, topic, s) = (kafka.clone(), topic.to_owned(), store.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let follower = std::thread::Builder::new()
            .name("merchants".into())
            .spawn(move || {
                let reader = match TopicReader::open(&kafka, &topic) {
                    Ok(r) => r,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let loaded = reader.read_to_end(|m| s.apply(m));
                let failed = loaded.is_err();
                if let Ok(n) = &loaded {
                    let t = s.table.read().expect("merchant table poisoned");
                    tracing::info!(records = n, merchants = t.len(), versions = t.versions(), "Merchant table loaded.");
                }
                let _ = ready_tx.send(loaded.map(drop));
                if failed {
                    return;
                }
                while !cancel.is_cancelled() {
                    match reader.poll(Duration::from_millis(250)) {
                        Ok(Some(m)) => s.apply(&m),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "Reading merchant updates failed; retrying."),
                    }
                }
            })
            .expect("spawning the merchants thread");
        ready_rx.await.expect("merchants thread ended before loading")?;
        Ok((store, follower))
    }

    /// A store over a given table (tests, demo).
    pub fn from_table(table: MerchantTable) -> Self {
        Self { table: Arc::new(RwLock::new(table)) }
    }

    /// Read access to the table.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, MerchantTable> {
        self.table.read().expect("merchant table poisoned")
    }

    fn apply(&self, m: &impl Message) {
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            tracing::warn!(partition = m.partition(), offset = m.offset(), "Merchant record without a text key; skipped.");
            return;
        };
        let mut table = self.table.write().expect("merchant table poisoned");
        match m.payload() {
            None => match parse_merchant_key(key) {
                Some((id, from)) => table.remove(id, from),
                None => tracing::warn!(key, "Merchant tombstone with an unreadable key; skipped."),
            },
            Some(bytes) => match Merchant::decode(bytes) {
                Ok(merchant) => table.upsert(&merchant),
                Err(e) => tracing::warn!(key, error = %e, "Merchant record does not decode; skipped."),
            },
        }
        metrics::counter!(telemetry::ENRICHER_MERCHANT_UPDATES).increment(1);
        metrics::gauge!(telemetry::ENRICHER_MERCHANTS).set(table.len() as f64);
    }
}
