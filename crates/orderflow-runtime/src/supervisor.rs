//! Named tasks under one supervisor: the first to fail stops the rest.
//!
//! A service is a few long-running tasks (the aggregator: its partitions, the merger,
//! the upstream watch; the enricher: its loop and the merchant follower). Each runs
//! until the shared [`CancellationToken`] is cancelled. The supervisor cancels it on
//! SIGTERM (through the token it was given) and as soon as any task fails, panics, or
//! ends on its own while it should still be running; it then waits up to a deadline
//! for the others to drain and returns the first failure, naming the task, so the
//! process exits non-zero with the cause. Blocking loops (librdkafka `poll` on a
//! thread) run as supervised blocking tasks, with the same rules.
//!
//! The model is Arroyo's `arroyo-server-common` shutdown and Tansu's broker `JoinSet`
//! with a patience timer.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// How long tasks may take to drain after the first failure or a shutdown request,
/// when not told otherwise.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

type TaskResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs named tasks; see the module docs.
pub struct Supervisor {
    token: CancellationToken,
    tasks: JoinSet<TaskResult>,
    names: HashMap<Id, String>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("tasks", &self.names.values().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor whose tasks stop when `token` is cancelled (by a signal, by the
    /// caller) or when one of them fails.
    pub fn new(token: CancellationToken) -> Self {
        Self { token, tasks: JoinSet::new(), names: HashMap::new() }
    }

    /// The token every task must watch.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs `task` until the token is cancelled. It must not return earlier: an early
    /// `Ok` counts as a failure ([`Error::TaskEnded`]), since a service that stops
    /// doing its work silently is the failure this module exists to catch.
    pub fn spawn<E>(&mut self, name: impl Into<String>, task: impl Future<Output = std::result::Result<(), E>> + Send + 'static)
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let handle = self.tasks.spawn(async move { task.await.map_err(|e| Box::new(e) as _) });
        self.names.insert(handle.id(), name.into());
    }

    /// Runs a blocking `task` on a thread of its own, under the same rules.
    pub fn spawn_blocking<E>(&mut self, name: impl Into<String>, task: impl FnOnce() -> std::result::Result<(), E> + Send + 'static)
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let handle = self.tasks.spawn_blocking(move || task().map_err(|e| Box::new(e) as _));
        self.names.insert(handle.id(), name.into());
    }

    /// Waits until every task has ended. Returns the first failure (cancelling the
    /// others at once), or a timeout when tasks are still running `grace` after the
    /// token was cancelled; `Ok` when all ended cleanly after cancellation.
    pub async fn run(mut self, grace: Duration) -> Result<()> {
        let mut first: Option<Error> = None;
        // Phase 1: until cancelled (by a signal, the caller or a failure).
        while !self.tasks.is_empty() && !self.token.is_cancelled() {
            tokio::select! {
                _ = self.token.cancelled() => {}
                Some(joined) = self.tasks.join_next_with_id() => {
                    if let Some(e) = self.judge(joined) {
                        tracing::error!(error = %e, "Task failed; stopping the others.");
                        first.get_or_insert(e);
                        self.token.cancel();
                    }
                }
            }
        }
        // Phase 2: the others drain, within the grace period.
        let deadline = tokio::time::Instant::now() + grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    if let Some(e) = self.judge(joined) {
                        if !matches!(e, Error::TaskEnded { .. }) {
                            tracing::error!(error = %e, "Task failed while stopping.");
                            first.get_or_insert(e);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let mut tasks: Vec<String> = self.names.values().cloned().collect();
                    tasks.sort();
                    self.tasks.abort_all();
                    return Err(first.unwrap_or(Error::ShutdownTimeout { tasks, grace }));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The failure a finished task stands for, if any.
    fn judge(&mut self, joined: std::result::Result<(Id, TaskResult), tokio::task::JoinError>) -> Option<Error> {
        let (id, result) = match joined {
            Ok((id, r)) => (id, r.map_err(Some)),
            Err(e) => (e.id(), Err(None)),
        };
        let task = self.names.remove(&id).unwrap_or_else(|| "unnamed".into());
        match result {
            Ok(()) if self.token.is_cancelled() => {
                tracing::debug!(task, "Task stopped.");
                None
            }
            Ok(()) => Some(Error::TaskEnded { task }),
            Err(Some(source)) => Some(Error::TaskFailed { task, source }),
            Err(None) => Some(Error::TaskPanicked { task }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    async fn until(token: CancellationToken) -> std::result::Result<(), Boom> {
        token.cancelled().await;
        Ok(())
    }

    // Real time: a running blocking task holds back the paused clock's auto-advance.
    #[tokio::test]
    async fn the_first_failure_stops_every_task_and_names_itself() {
        let mut s = Supervisor::new(CancellationToken::new());
        let (a, b) = (s.token(), s.token());
        s.spawn("steady", until(a));
        s.spawn_blocking("follower", move || {
            while !b.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<_, Boom>(())
        });
        s.spawn("merger", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(Boom)
        });
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.to_string(), "task `merger` failed");
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "boom");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_on_its_own_is_a_failure() {
        let mut s = Supervisor::new(CancellationToken::new());
        let a = s.token();
        s.spawn("aggregator", until(a));
        s.spawn("watch", async { Ok::<_, Boom>(()) });
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&err, Error::TaskEnded { task } if task == "watch"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_a_failure() {
        let mut s = Supervisor::new(CancellationToken::new());
        let a = s.token();
        s.spawn("aggregator", until(a));
        s.spawn("enricher", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if true {
                panic!("enricher panicked on purpose");
            }
            Ok::<_, Boom>(())
        });
        let err = s.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&err, Error::TaskPanicked { task } if task == "enricher"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_cleanly() {
        let token = CancellationToken::new();
        let mut s = Supervisor::new(token.clone());
        let (a, b) = (s.token(), s.token());
        s.spawn("a", until(a));
        s.spawn("b", until(b));
        token.cancel();
        s.run(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_cancellation_is_abandoned_after_the_grace() {
        let token = CancellationToken::new();
        let mut s = Supervisor::new(token.clone());
        let a = s.token();
        s.spawn("polite", until(a));
        s.spawn("stubborn", std::future::pending::<std::result::Result<(), Boom>>());
        token.cancel();
        let err = s.run(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(&err, Error::ShutdownTimeout { tasks, .. } if tasks == &["stubborn".to_owned()]), "{err}");
    }
}
