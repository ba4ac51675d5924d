//! CPU time of the processes in a load test (the enricher, the aggregator, the broker),
//! from Linux's `/proc/<pid>/stat`: user plus system time, all threads included. The
//! parsing is pure; [`cpu_seconds`] reads the file.
//!
//! The load test reads every known process at the start and the end of the measured
//! stretch (the report's CPU per million events, [`report`]), and once a second in a
//! watcher thread ([`sample`]: the timeline's cores).

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::report::Cpu;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, `getconf CLK_TCK`):
/// 100 on every Linux architecture orderflow builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// User and system CPU seconds in the text of a `/proc/<pid>/stat` file, or `None` if
/// it does not parse. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so the fields are counted from the last `)`: `utime` and
/// `stime` are fields 14 and 15 of the line, the 12th and 13th after the name.
pub fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user as f64 / TICKS_PER_SECOND, system as f64 / TICKS_PER_SECOND))
}

/// User and system CPU seconds the process `pid` has used so far (`None` if it is gone
/// or this is not Linux).
pub fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One process's CPU time over a measured stretch of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessCpu {
    pub pid: u32,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// (user + system) seconds per million events: the same number as microseconds of
    /// CPU per event.
    pub seconds_per_million_events: f64,
}

impl ProcessCpu {
    /// The CPU `pid` used between two readings, over `events` events.
    pub fn between(pid: u32, start: (f64, f64), end: (f64, f64), events: u64) -> Self {
        let (user, system) = ((end.0 - start.0).max(0.0), (end.1 - start.1).max(0.0));
        Self {
            pid,
            user_seconds: user,
            system_seconds: system,
            seconds_per_million_events: if events == 0 { 0.0 } else { (user + system) * 1e6 / events as f64 },
        }
    }
}

/// The processes whose CPU time the load test measures (those it knows of). Shared
/// with the sampler behind a mutex: a drain fills in its services once it has started
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pids {
    pub enricher: Option<u32>,
    pub aggregator: Option<u32>,
    pub broker: Option<u32>,
}

/// Cores used (CPU seconds per wall second) by the enricher, the aggregator and the
/// broker over one sampling interval.
pub type CpuCores = [Option<f64>; 3];

/// One process's `(pid, (user, system))` CPU seconds.
type Used = Option<(u32, (f64, f64))>;

/// A reading of each known process's (user, system) CPU seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuReading {
    pub enricher: Used,
    pub aggregator: Used,
    pub broker: Used,
}

impl Pids {
    /// The processes' CPU seconds now (a process gone reads as `None`).
    pub fn read(&self) -> CpuReading {
        let read = |pid: Option<u32>| pid.and_then(|p| cpu_seconds(p).map(|c| (p, c)));
        CpuReading { enricher: read(self.enricher), aggregator: read(self.aggregator), broker: read(self.broker) }
    }

    /// The processes known now.
    pub fn now(pids: &Mutex<Pids>) -> Pids {
        *pids.lock().expect("pids poisoned")
    }
}

impl CpuReading {
    /// The cores each process used from `earlier` to this reading, `dt` seconds later: a
    /// process that appeared in between counts from zero, one that changed or went away
    /// has no figure.
    pub fn cores_since(&self, earlier: &CpuReading, dt: f64) -> CpuCores {
        let cores = |a: Used, b: Used| match (a, b) {
            (Some((pa, a)), Some((pb, b))) if pa == pb => Some(((b.0 + b.1) - (a.0 + a.1)).max(0.0) / dt),
            (None, Some((_, b))) => Some((b.0 + b.1) / dt), // started within the interval
            _ => None,
        };
        [cores(earlier.enricher, self.enricher), cores(earlier.aggregator, self.aggregator), cores(earlier.broker, self.broker)]
    }
}

/// Once a second, the cores (CPU seconds per wall second) each known process used since
/// the last sample, sent with the time (ms since `started`), until cancelled.
pub fn sample(pids: &Mutex<Pids>, cancel: &CancellationToken, started: Instant, tx: &mpsc::Sender<(u64, CpuCores)>) {
    let mut last = (Pids::now(pids).read(), Instant::now());
    while !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1000));
        let (now, at) = (Pids::now(pids).read(), Instant::now());
        let sample = now.cores_since(&last.0, at.duration_since(last.1).as_secs_f64());
        if tx.send((started.elapsed().as_millis() as u64, sample)).is_err() {
            break;
        }
        last = (now, at);
    }
}

/// The report's CPU figures between two readings, over `events` events (`None` when no
/// process could be read at both ends).
pub fn report(start: &CpuReading, end: &CpuReading, events: u64, wall_seconds: f64, broker_baseline: Option<ProcessCpu>) -> Option<Cpu> {
    let between =
        |s: Used, e: Used| s.zip(e).filter(|((a, _), (b, _))| a == b).map(|((pid, s), (_, e))| ProcessCpu::between(pid, s, e, events));
    let enricher = between(start.enricher, end.enricher);
    let aggregator = between(start.aggregator, end.aggregator);
    let broker = between(start.broker, end.broker);
    if enricher.is_none() && aggregator.is_none() && broker.is_none() {
        return None;
    }
    let services = enricher.as_ref().zip(aggregator.as_ref()).map(|(e, a)| e.seconds_per_million_events + a.seconds_per_million_events);
    Some(Cpu { events, wall_seconds, enricher, aggregator, services_seconds_per_million_events: services, broker, broker_baseline })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A real line's shape, with a command name holding a space and a parenthesis.
        let stat = "4242 (orderf (low) 1) S 1 4242 4242 0 -1 4194560 5120 0 0 0 1234 567 0 0 20 0 9 0 100 1000 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((12.34, 5.67)));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn cpu_per_million_events_is_microseconds_per_event() {
        let c = ProcessCpu::between(7, (1.0, 0.5), (4.0, 1.5), 2_000_000);
        assert_eq!((c.user_seconds, c.system_seconds), (3.0, 1.0));
        assert_eq!(c.seconds_per_million_events, 2.0);
        assert_eq!(ProcessCpu::between(7, (1.0, 0.5), (4.0, 1.5), 0).seconds_per_million_events, 0.0);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let (user, system) = cpu_seconds(std::process::id()).expect("Linux /proc");
        // Busy work must show up in the reading (the kernel counts in 10 ms ticks): spin
        // until it has grown by 50 ms, which on any machine takes far less than the
        // deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let (u, s) = cpu_seconds(std::process::id()).unwrap();
            if (u + s) - (user + system) >= 0.05 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the CPU reading stayed at {user} + {system} s while this thread was busy");
        }
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn cores_count_a_process_that_appeared_from_zero() {
        let earlier = CpuReading { enricher: Some((1, (1.0, 0.5))), aggregator: None, broker: Some((3, (2.0, 0.0))) };
        let later = CpuReading { enricher: Some((1, (2.0, 1.5))), aggregator: Some((2, (0.5, 0.5))), broker: Some((4, (9.0, 0.0))) };
        // The enricher used 2 s in 2 s; the aggregator started in between; the broker's
        // pid changed, so its figure is unknown.
        assert_eq!(later.cores_since(&earlier, 2.0), [Some(1.0), Some(0.5), None]);
    }
}
