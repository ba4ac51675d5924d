//! The merchant table, loaded from and kept up to date with the merchants topic.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use orderflow_core::merchant::MerchantTable;
use orderflow_proto::v1::Merchant;
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{is_fatal_read, KafkaConfig, TopicReader};
use orderflow_runtime::records::parse_merchant_key;
use orderflow_runtime::telemetry;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The table shared by the enrich loop (readers) and the follower (writer).
#[derive(Debug, Clone, Default)]
pub struct MerchantStore {
    table: Arc<RwLock<MerchantTable>>,
}

/// Keeps a [`MerchantStore`] up to date with the merchants topic: a blocking loop, run
/// under the service's supervisor (see [`MerchantFollower::run`]).
#[derive(Debug)]
pub struct MerchantFollower {
    reader: TopicReader,
    store: MerchantStore,
}

impl MerchantFollower {
    /// Applies merchant records as they arrive until `cancel`. Transient read errors
    /// are logged and retried (librdkafka reconnects by itself); a topic that cannot be
    /// read any more (deleted, access revoked) fails the follower, and with it the
    /// enricher: enriching on with a table that can no longer change would be wrong
    /// without anyone noticing.
    pub fn run(self, cancel: CancellationToken) -> Result<()> {
        while !cancel.is_cancelled() {
            match self.reader.poll(Duration::from_millis(250)) {
                Ok(Some(m)) => self.store.apply(&m),
                Ok(None) => {}
                Err(orderflow_runtime::Error::Kafka(e)) if is_fatal_read(&e) => {
                    return Err(Error::Follow { topic: self.reader.topic().to_owned(), error: e });
                }
                Err(e) => tracing::warn!(error = %e, topic = self.reader.topic(), "Reading merchant updates failed; retrying."),
            }
        }
        Ok(())
    }
}

impl MerchantStore {
    /// Reads the whole merchants topic (on a blocking thread) and returns the table
    /// with the follower that keeps it up to date.
    pub async fn load(kafka: &KafkaConfig, topic: &str) -> Result<(Self, MerchantFollower)> {
        let (kafka, topic) = (kafka.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let store = Self::default();
            let reader = TopicReader::open(&kafka, &topic)?;
            let n = reader.read_to_end(|m| store.apply(m))?;
            {
                let t = store.read();
                tracing::info!(records = n, merchants = t.len(), versions = t.versions(), "Merchant table loaded.");
            }
            Ok((store.clone(), MerchantFollower { reader, store }))
        })
        .await
        .expect("merchant loading panicked")
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
                Ok(merchant) => {
                    if let Err(problem) = table.upsert(&merchant) {
                        // The record replaced any earlier one under its key on the topic, so
                        // the version goes, as a restarted enricher would not see it either.
                        if let Some((id, from)) = parse_merchant_key(key) {
                            table.remove(id, from);
                        }
                        metrics::counter!(telemetry::ENRICHER_MERCHANTS_REFUSED, "reason" => problem.code()).increment(1);
                        tracing::warn!(key, %problem, "Merchant record refused; the merchant's orders join as unknown until it is fixed.");
                    }
                }
                Err(e) => {
                    metrics::counter!(telemetry::ENRICHER_MERCHANTS_REFUSED, "reason" => "undecodable").increment(1);
                    tracing::warn!(key, error = %e, "Merchant record does not decode; skipped.");
                }
            },
        }
        metrics::counter!(telemetry::ENRICHER_MERCHANT_UPDATES).increment(1);
        metrics::gauge!(telemetry::ENRICHER_MERCHANTS).set(table.len() as f64);
    }
}
