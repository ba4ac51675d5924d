//! The `aggregate` service: checks and creates its topics, then runs the partitions
//! loop, the merger and the upstream watch as supervised tasks.

use orderflow_runtime::kafka::{partition_count, KafkaConfig};
use orderflow_runtime::supervisor::Supervisor;
use orderflow_runtime::topics::{self, Stage, Topics};
use tokio_util::sync::CancellationToken;

use crate::partitions::Aggregator;
use crate::upstream::Watcher;
use crate::{merger, AggregatorConfig, Error, Result};

/// Creates missing topics and runs both stages (partitions and merger) until `cancel`,
/// or until one of its tasks fails (the error names it).
pub async fn run(kafka: &KafkaConfig, topics: &Topics, config: &AggregatorConfig, cancel: CancellationToken) -> Result<()> {
    let (spec, horizon) = config.spec()?;
    kafka.check_reachable()?;
    topics::ensure(kafka, &topics.specs(Stage::Aggregator)).await?;
    let input_partitions = checkpoint_topic(kafka, topics).await?;

    let mut supervisor = Supervisor::new(cancel.child_token());
    let token = supervisor.token();
    let (watch, watcher) = Watcher::new(kafka, topics);
    let aggregator = Aggregator::new(kafka, topics, config, spec, horizon, input_partitions, watch)?;
    supervisor.spawn("partitions", aggregator.run(token.clone()));
    supervisor.spawn("merger", merger::run(kafka.clone(), topics.clone(), token.clone()));
    supervisor.spawn_blocking("upstream-watch", move || watcher.run(token));
    supervisor.run(config.shutdown_grace).await?;
    tracing::info!("Aggregator stopped.");
    Ok(())
}

/// Creates the checkpoint topic when missing (as many partitions as the enriched
/// topic) and checks that an existing one has enough; returns the enriched topic's
/// partition count.
async fn checkpoint_topic(kafka: &KafkaConfig, topics: &Topics) -> Result<i32> {
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
    Ok(input_partitions)
}
