//! CPU time of the processes in a load test (the enricher, the aggregator, the broker),
//! from Linux's `/proc/<pid>/stat`: user plus system time, all threads included. The
//! parsing is pure; [`cpu_seconds`] reads the file.

use serde::Serialize;

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
        assert!(user >= 0.0 && system >= 0.0);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
