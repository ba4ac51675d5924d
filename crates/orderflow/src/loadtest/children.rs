//! The enricher and the aggregator of a drain, as child processes of the load test:
//! started on the backlog with this process's environment, brokers and topic prefix,
//! stopped as a deployment stops them (SIGTERM), and killed only if they outstay
//! [`STOP_GRACE`].

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use orderflow_runtime::kafka::KafkaConfig;
use orderflow_runtime::topics::Topics;

/// How long a service may take to stop after SIGTERM (finish its batch, commit, close
/// its producer) before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(60);

/// The enricher and the aggregator of a drain.
#[derive(Debug)]
pub(super) struct Services {
    enricher: Child,
    aggregator: Child,
}

impl Services {
    /// Starts `enrich` and `aggregate` of `binary` (default: this binary) with this
    /// process's environment, brokers and topic prefix.
    pub(super) fn start(kafka: &KafkaConfig, topics: &Topics, binary: Option<&Path>) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(b) => b.to_owned(),
            None => std::env::current_exe().context("finding this binary, to start the services")?,
        };
        let spawn = |service: &str| {
            Command::new(&binary)
                .args([service, "--metrics-addr", "127.0.0.1:0"])
                .env("ORDERFLOW_BROKERS", &kafka.brokers)
                .env("ORDERFLOW_TOPIC_PREFIX", &topics.topic_prefix)
                .env("ORDERFLOW_PARTITIONS", topics.partitions.to_string())
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting `{} {service}`", binary.display()))
        };
        eprintln!("loadtest: starting the enricher and the aggregator ({}) on the backlog.", binary.display());
        let enricher = spawn("enrich")?;
        let aggregator = match spawn("aggregate") {
            Ok(a) => a,
            Err(e) => {
                // Nothing to stop cleanly: the drain never began.
                let mut enricher = enricher;
                let _ = enricher.kill();
                let _ = enricher.wait();
                return Err(e);
            }
        };
        Ok(Self { enricher, aggregator })
    }

    /// The enricher's and the aggregator's process ids.
    pub(super) fn pids(&self) -> (u32, u32) {
        (self.enricher.id(), self.aggregator.id())
    }

    /// Stops both with SIGTERM and waits for them; fails if either had exited before,
    /// does not exit cleanly, or had to be killed after [`STOP_GRACE`].
    pub(super) fn stop(mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for (name, child) in [("enricher", &mut self.enricher), ("aggregator", &mut self.aggregator)] {
            if let Ok(Some(status)) = child.try_wait() {
                problems.push(format!("the {name} exited during the drain ({status})"));
                continue;
            }
            match terminate(child, STOP_GRACE) {
                Ok(Stopped::Exited(status)) if status.success() => {}
                Ok(Stopped::Exited(status)) => problems.push(format!("the {name} did not stop cleanly ({status})")),
                Ok(Stopped::Killed) => problems
                    .push(format!("the {name} did not stop within {} of SIGTERM and was killed", humantime::format_duration(STOP_GRACE))),
                Err(e) => problems.push(format!("stopping the {name}: {e:#}")),
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }
}

/// How a child ended.
#[derive(Debug)]
enum Stopped {
    /// On its own after SIGTERM, with this status.
    Exited(ExitStatus),
    /// Killed (SIGKILL) once the grace was over.
    Killed,
}

/// Sends `child` SIGTERM and waits up to `grace` for it to exit, then kills it.
fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<Stopped> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("the process id does not fit a pid_t")?);
    kill(pid, Signal::SIGTERM).with_context(|| format!("sending SIGTERM to {pid}"))?;
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            return Ok(Stopped::Exited(status));
        }
        if Instant::now() >= deadline {
            child.kill().context("killing")?;
            child.wait().context("waiting after the kill")?;
            return Ok(Stopped::Killed);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_stops_a_child_that_heeds_it() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let t = Instant::now();
        match terminate(&mut child, Duration::from_secs(10)).unwrap() {
            Stopped::Exited(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
            }
            Stopped::Killed => panic!("killed, though SIGTERM ends `sleep`"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        // The shell ignores SIGTERM, and so does its `sleep` (ignored signals are
        // inherited); `exec` keeps one process.
        let mut child = Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]).spawn().unwrap();
        // Once it is `sleep`, the trap is set.
        let comm = format!("/proc/{}/comm", child.id());
        let waiting = Instant::now();
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            assert!(waiting.elapsed() < Duration::from_secs(10), "the shell never became `sleep`");
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        assert!(matches!(terminate(&mut child, Duration::from_millis(300)).unwrap(), Stopped::Killed));
        assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(10));
    }
}
