//! The `aggregate` service: checks and creates its topics, then runs the partitions
//! loop, the merger and the upstream watch as supervised tasks.

use orderflow_runtime::kafka::{partition_count, KafkaConfig};
use orderflow_runtime::supervisor::Supervisor;
use std::collections::HashMap;

use orderflow_runtime::topics::{self, Stage, Topics, CHECKPOINT_MAX_BYTES};
use tokio_util::sync::CancellationToken;

use crate::partitions::Aggregator;
use crate::upstream::Watcher;
use crate::{merger, AggregatorConfig, Error, Result};

/// Creates missing topics and runs both stages (partitions and merger) until `cancel`,
/// or until one of its tasks fails (the error names it).
pub async fn run(kafka: &KafkaConfig, topics: &Topics, config: &AggregatorConfig, cancel: CancellationToken) -> Result<()> {
    let (spec, bounds) = config.spec()?;
    kafka.check_reachable()?;
    topics::ensure(kafka, &topics.specs(Stage::Aggregator)).await?;
    let input_partitions = checkpoint_topic(kafka, topics, bounds.checkpoint_bytes(spec), config.check_topic_settings).await?;

    let mut supervisor = Supervisor::new(cancel.child_token());
    let token = supervisor.token();
    let (watch, watcher) = Watcher::new(kafka, topics);
    let aggregator = Aggregator::new(kafka, topics, config, spec, bounds, input_partitions, watch)?;
    supervisor.spawn("partitions", aggregator.run(token.clone()));
    let merger = merger::run(kafka.clone(), topics.clone(), input_partitions, config.merger_checkpoint_interval, token.clone());
    supervisor.spawn("merger", merger);
    supervisor.spawn_blocking("upstream-watch", move || watcher.run(token));
    supervisor.run(config.shutdown_grace).await?;
    tracing::info!("Aggregator stopped.");
    Ok(())
}

/// Creates the checkpoint topic when missing (as many partitions as the enriched
/// topic) and checks that it has enough partitions and, with `check_settings`, is
/// compacted and takes records of `largest` bytes (the largest checkpoint the state
/// bounds allow); returns the enriched topic's partition count.
async fn checkpoint_topic(kafka: &KafkaConfig, topics: &Topics, largest: u64, check_settings: bool) -> Result<i32> {
    if largest > CHECKPOINT_MAX_BYTES {
        return Err(Error::Config(format!(
            "a checkpoint under --dedup-max-ids and --max-keys-per-window can reach {largest} bytes, above the \
             {CHECKPOINT_MAX_BYTES} bytes orderflow writes at most: lower --dedup-max-ids"
        )));
    }
    let probe = kafka.reader()?;
    let input_partitions = partition_count(&probe, &topics.enriched())?;
    topics::ensure(kafka, &[topics.checkpoint_spec(input_partitions)]).await?;
    let cp_partitions = partition_count(&probe, &topics.checkpoints())?;
    if cp_partitions < input_partitions {
        return Err(Error::Config(format!(
            "checkpoint topic `{}` has {cp_partitions} partitions but `{}` has {input_partitions}; it needs at least as many",
            topics.checkpoints(),
            topics.enriched()
        )));
    }
    if !check_settings {
        tracing::info!(
            "Not checking the checkpoint topics' settings: turned off (check_topic_settings) for brokers that do not \
             answer DescribeConfigs, such as librdkafka's mock cluster."
        );
        return Ok(input_partitions);
    }
    match topics::describe(kafka, &topics.checkpoints()).await {
        Ok(config) => check_checkpoint_config(&topics.checkpoints(), &config, largest)?,
        // Not every Kafka-compatible broker answers DescribeConfigs: say what was not
        // checked; a refused checkpoint is still counted and logged at run time.
        Err(e) => tracing::warn!(error = %e, "Could not check the checkpoint topic's settings; it must be compacted \
             and take records of {largest} bytes (max.message.bytes)."),
    }
    // The merger's checkpoints: compacted too, or old ones pile up (or the newest is
    // deleted by retention and take-overs read the partial totals from the start).
    match topics::describe(kafka, &topics.merger_checkpoints()).await {
        Ok(config) => check_checkpoint_config(&topics.merger_checkpoints(), &config, 0)?,
        Err(e) => tracing::warn!(error = %e, "Could not check the merger checkpoint topic's settings; it must be compacted."),
    }
    Ok(input_partitions)
}

/// Refuses a checkpoint topic that is not compacted (old checkpoints would pile up,
/// or the newest be deleted by retention) or whose `max.message.bytes` is below
/// `largest` (checkpoints would be refused once a partition is busy). A topic without
/// `cleanup.policy` has Kafka's default, `delete`; a `max.message.bytes` the broker
/// does not report (the broker-wide default applies) is warned about.
fn check_checkpoint_config(topic: &str, config: &HashMap<String, String>, largest: u64) -> Result<()> {
    let fix = format!(
        "create it with cleanup.policy=compact and max.message.bytes={CHECKPOINT_MAX_BYTES} (or let orderflow create it), \
         or change it with `kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config ...`"
    );
    let policy = config.get("cleanup.policy").map_or("delete (the default)", String::as_str);
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(Error::Config(format!("checkpoint topic `{topic}` has cleanup.policy={policy}, not compact: {fix}")));
    }
    match config.get("max.message.bytes").map(|m| (m, m.trim().parse::<u64>())) {
        Some((_, Ok(max))) if max >= largest => {}
        Some((max, _)) => {
            return Err(Error::Config(format!(
                "checkpoint topic `{topic}` takes records of at most {max} bytes (max.message.bytes), but a checkpoint \
                 can reach {largest} bytes under --dedup-max-ids and --max-keys-per-window: {fix}; or lower --dedup-max-ids"
            )))
        }
        None => tracing::warn!(
            topic,
            "The broker does not report the checkpoint topic's max.message.bytes; the broker's default applies, and \
             checkpoints of up to {largest} bytes are refused (and counted) if it is lower."
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_checkpoint_topic_must_be_compacted_and_take_the_largest_checkpoint() {
        let ok = config(&[("cleanup.policy", "compact"), ("max.message.bytes", "67108864")]);
        assert!(check_checkpoint_config("cp", &ok, 60_000_000).is_ok());
        assert!(check_checkpoint_config("cp", &config(&[("cleanup.policy", "compact,delete")]), 1).is_ok());
        // Not reported: cleanup.policy is Kafka's default, delete; max.message.bytes is only warned about.
        let err = check_checkpoint_config("cp", &HashMap::new(), 1).unwrap_err().to_string();
        assert!(err.contains("cleanup.policy=delete (the default), not compact"), "{err}");
        // Kafka's defaults: delete, 1 MiB.
        let default = config(&[("cleanup.policy", "delete"), ("max.message.bytes", "1048588")]);
        let err = check_checkpoint_config("cp", &default, 60_000_000).unwrap_err().to_string();
        assert!(err.contains("cleanup.policy=delete, not compact"), "{err}");
        let small = config(&[("cleanup.policy", "compact"), ("max.message.bytes", "1048588")]);
        let err = check_checkpoint_config("cp", &small, 60_000_000).unwrap_err().to_string();
        assert!(err.contains("at most 1048588 bytes") && err.contains("60000000"), "{err}");
    }
}
