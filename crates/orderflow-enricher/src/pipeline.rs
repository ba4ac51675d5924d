//! The consume-enrich-produce loop.

use std::time::Duration;

use futures::future::join_all;
use orderflow_runtime::kafka::{recv_batch, send, KafkaArgs, RevocationLog};
use orderflow_runtime::topics::{self, TopicArgs};
use orderflow_runtime::{dead_letter, telemetry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::merchants::MerchantStore;
use crate::{Error, Result};

/// Enricher settings.
#[derive(Debug, Clone, clap::Args)]
pub struct EnricherArgs {
    /// Most records enriched per batch (offsets are stored per batch).
    #[arg(long, env = "ORDERFLOW_ENRICHER_BATCH", default_value_t = 5_000)]
    pub batch: usize,
}

impl Default for EnricherArgs {
    fn default() -> Self {
        Self { batch: 5_000 }
    }
}

/// Creates missing topics, loads the merchant table, then enriches until `cancel`.
pub async fn run(kafka: &KafkaArgs, topics: &TopicArgs, args: &EnricherArgs, cancel: CancellationToken) -> Result<()> {
    topics::ensure(
        kafka,
        &[
            topics.wide(topics.orders()),
            topics.narrow(topics.merchants(), true),
            topics.wide(topics.enriched()),
            topics.wide(topics.dead_letter()),
        ],
    )
    .await?;
    let follow = cancel.child_token();
    let (merchants, follower) = MerchantStore::load(kafka, &topics.merchants(), follow.clone()).await?;
    let producer = kafka.producer()?;
    let consumer: StreamConsumer<RevocationLog> = kafka.group_consumer(&topics.group("enricher"), RevocationLog::default())?;
    consumer.subscribe(&[&topics.orders()])?;
    tracing::info!(input = %topics.orders(), output = %topics.enriched(), "Enricher running.");

    let (enriched_topic, dlq_topic) = (topics.enriched(), topics.dead_letter());
    let result = loop {
        let batch = recv_batch(&consumer, args.batch, &cancel, Duration::from_millis(500)).await;
        if batch.is_empty() {
            if cancel.is_cancelled() {
                break Ok(());
            }
            continue;
        }
        // Decide every output under the table's read lock, then send without it.
        let outputs: Vec<Output> = {
            let table = merchants.read();
            batch
                .iter()
                .map(|m| {
                    let payload = m.payload().unwrap_or_default();
                    // Validated without allocating; the output record is built around
                    // the payload's own bytes (no re-encoding). Fields a newer storefront
                    // contract adds pass through to the enriched topic: orderflow's
                    // decoders skip them, as they would on the orders topic.
                    match table.enrich_payload(payload) {
                        Ok(enriched) => {
                            if !enriched.merchant_known {
                                metrics::counter!(telemetry::ENRICHER_UNKNOWN_MERCHANT).increment(1);
                            }
                            Output { dead_letter: None, key: enriched.key, value: enriched.value }
                        }
                        Err(reason) => {
                            tracing::debug!(partition = m.partition(), offset = m.offset(), %reason, "Dead-lettering event.");
                            metrics::counter!(telemetry::DEAD_LETTER_EVENTS, "stage" => "enricher", "reason" => reason.code()).increment(1);
                            let headers = dead_letter::headers("enricher", &reason, m.topic(), m.partition(), m.offset());
                            Output {
                                dead_letter: Some(headers),
                                key: dead_letter::key(m.topic(), m.partition(), m.offset()),
                                value: payload.to_vec(),
                            }
                        }
                    }
                })
                .collect()
        };
        let mut deliveries: Vec<(&'static str, DeliveryFuture)> = Vec::with_capacity(outputs.len());
        for out in outputs {
            let (what, record) = match out.dead_letter {
                None => ("enriched", FutureRecord::to(&enriched_topic).key(out.key.as_str()).payload(out.value.as_slice())),
                Some(h) => ("dead-letter", FutureRecord::to(&dlq_topic).key(out.key.as_str()).payload(out.value.as_slice()).headers(h)),
            };
            deliveries.push((what, send(&producer, record).await?));
        }
        metrics::counter!(telemetry::ENRICHER_EVENTS).increment(batch.len() as u64);
        for (what, r) in join_all(deliveries.into_iter().map(|(w, f)| async move { (w, f.await) })).await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    let topic = if what == "enriched" { enriched_topic.clone() } else { dlq_topic.clone() };
                    return Err(Error::Delivery { topic, source: e });
                }
                Err(_) => return Err(Error::Delivery { topic: what.into(), source: KafkaError::Canceled }),
            }
        }
        // Every output of the batch is on the broker: now the input may be forgotten.
        consumer.context().take();
        for m in &batch {
            if let Err(e) = consumer.store_offset(m.topic(), m.partition(), m.offset()) {
                // The partition moved to another instance; it will re-process from the
                // last commit and the aggregator's dedup absorbs the repeat.
                tracing::debug!(partition = m.partition(), error = %e, "Offset not stored.");
            }
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %e, "Async commit failed; the next one covers it.");
        }
        if cancel.is_cancelled() {
            break Ok(());
        }
    };
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "Final commit failed.");
    }
    producer.flush(Duration::from_secs(10))?;
    follow.cancel();
    let _ = tokio::task::spawn_blocking(move || follower.join()).await;
    tracing::info!("Enricher stopped.");
    result
}

/// One record to produce: enriched, or dead-lettered with its headers.
struct Output {
    dead_letter: Option<rdkafka::message::OwnedHeaders>,
    key: String,
    value: Vec<u8>,
}
