//! Printing what the pipeline wrote.

use orderflow_proto::v1::{EnrichedOrderEvent, WindowTotal};
use orderflow_proto::Message as _;
use orderflow_runtime::kafka::{header, KafkaConfig, TopicReader};
use orderflow_runtime::records::{dead_letter, late};
use orderflow_runtime::shutdown;
use orderflow_runtime::topics::Topics;
use rdkafka::Message;

/// A line of the human-readable totals table.
pub fn total_line(t: &WindowTotal) -> String {
    let c = |x: &Option<orderflow_proto::v1::TypeTotal>| x.map_or((0, 0), |x| (x.count, x.amount_minor));
    let (cr, pa, ca, re) = (c(&t.created), c(&t.paid), c(&t.cancelled), c(&t.refunded));
    format!(
        "{:<21} {:<9} {:<15} {:<4} created {:>6} {:>13}  paid {:>6} {:>13}  cancelled {:>5}  refunded {:>4} {:>11}",
        t.window_start.map(|s| s.to_string()).unwrap_or_default(),
        t.region,
        t.tier,
        t.currency,
        cr.0,
        cr.1,
        pa.0,
        pa.1,
        ca.0,
        re.0,
        re.1
    )
}

fn print_total(t: &WindowTotal, json: bool) {
    if json {
        println!("{}", serde_json::to_string(t).expect("totals serialize"));
    } else {
        println!("{}", total_line(t));
    }
}

pub async fn totals(kafka: &KafkaConfig, topics: &Topics, json: bool, follow: bool) -> anyhow::Result<()> {
    kafka.check_reachable()?;
    let (kafka, topic) = (kafka.clone(), topics.totals());
    if follow {
        let cancel = shutdown::on_signal();
        tokio::task::spawn_blocking(move || orderflow_aggregator::totals::follow(&kafka, &topic, &cancel, |t| print_total(t, json)))
            .await??;
    } else {
        let all = tokio::task::spawn_blocking(move || orderflow_aggregator::totals::read(&kafka, &topic)).await??;
        for t in &all {
            print_total(t, json);
        }
    }
    Ok(())
}

fn read_all(kafka: &KafkaConfig, topic: &str, mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) -> anyhow::Result<()> {
    let reader = TopicReader::open(kafka, topic)?;
    reader.read_to_end(|m| f(m))?;
    Ok(())
}

pub async fn dead_letters(kafka: &KafkaConfig, topics: &Topics, json: bool) -> anyhow::Result<()> {
    kafka.check_reachable()?;
    let (kafka, topic) = (kafka.clone(), topics.dead_letter());
    tokio::task::spawn_blocking(move || {
        read_all(&kafka, &topic, |m| {
            let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
            let h = |name| header(m, name).unwrap_or("").to_owned();
            if json {
                let v = serde_json::json!({
                    "key": key,
                    "stage": h(dead_letter::STAGE),
                    "reasonCode": h(dead_letter::REASON_CODE),
                    "reason": h(dead_letter::REASON),
                    "sourceTopic": h(dead_letter::SOURCE_TOPIC),
                    "sourcePartition": h(dead_letter::SOURCE_PARTITION),
                    "sourceOffset": h(dead_letter::SOURCE_OFFSET),
                    "sourceBytes": h(dead_letter::SOURCE_BYTES),
                    "payloadBytes": m.payload_len(),
                });
                println!("{v}");
            } else {
                println!("{key}  [{}] {}", h(dead_letter::STAGE), h(dead_letter::REASON));
            }
        })
    })
    .await?
}

pub async fn late(kafka: &KafkaConfig, topics: &Topics, json: bool) -> anyhow::Result<()> {
    kafka.check_reachable()?;
    let (kafka, topic) = (kafka.clone(), topics.late());
    tokio::task::spawn_blocking(move || {
        read_all(&kafka, &topic, |m| {
            let event = m.payload().and_then(|p| EnrichedOrderEvent::decode(p).ok());
            let window = header(m, late::WINDOW_START).unwrap_or("").to_owned();
            let through = header(m, late::CLOSED_THROUGH).unwrap_or("").to_owned();
            if json {
                let v = serde_json::json!({ "windowStart": window, "closedThrough": through, "event": event });
                println!("{v}");
            } else {
                let id = event.as_ref().and_then(|e| e.event.as_ref()).map(|e| e.event_id.clone()).unwrap_or_default();
                println!("{id}  window {window} closed through {through}");
            }
        })
    })
    .await?
}
