//! The one replayer: publishes numbered events (a trace file's lines, or events in
//! memory) through a [`PublishBatch`], at a [`Pace`], with a bounded number of deliveries
//! in flight. `orderflow replay`, the load test and the demo all publish through it.
//!
//! What each caller does besides publishing (the load test's reference totals and
//! timeline, say) hangs off an [`Observer`], told of every event offered, every batch of
//! deliveries, every unparsable line and every refused event.

use std::borrow::Cow;
use std::time::Duration;

use orderflow_producer::PublishBatch;
use orderflow_proto::timestamp_millis;
use orderflow_proto::v1::OrderEvent;
use orderflow_runtime::outbox::Settled;
use orderflow_runtime::telemetry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::TraceReader;
use crate::{Error, Result};

/// Where the events come from, each with a number that names it in messages and
/// reports.
#[derive(Debug)]
pub enum Source<'a> {
    /// A trace file being read: events are numbered by line. Its progress bar (if any)
    /// shows the events delivered; finishing it is the caller's.
    Trace(&'a mut TraceReader),
    /// Events in memory, numbered from 1.
    Events(&'a [OrderEvent]),
}

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the broker takes events.
    Max,
    /// This many events per second.
    Rate(f64),
    /// Follow the events' event time, this many times faster (1: real time): an event is
    /// due when the newest event time so far is that far past the first one's. Events
    /// without an event time go at once.
    EventTime(f64),
}

/// What to do when the broker refuses an event for good (too large, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRefused {
    /// Report it (on stderr and in [`ReplayReport::refused`]) and go on.
    Report,
    /// Stop with [`Error::Refused`], naming the event.
    Fail,
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// How fast.
    pub pace: Pace,
    /// Deliveries outstanding at most: past that, the replay waits for the oldest.
    pub in_flight: usize,
    /// What a refused event does.
    pub on_refused: OnRefused,
    /// The start of the pace's clock, on which due times are measured (default: when
    /// the replay begins). A caller that times things itself passes its own start.
    pub started: Option<Instant>,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Non-blank lines read (events, for events in memory).
    pub lines: u64,
    /// Events the broker acknowledged.
    pub published: u64,
    /// Lines that were not an `OrderEvent` in JSON: (line number, error).
    pub invalid_lines: Vec<(u64, String)>,
    /// Events the broker refused for good (too large, say): (line number, reason).
    pub refused: Vec<(u64, String)>,
    /// Whether the replay stopped early on shutdown.
    pub interrupted: bool,
}

/// Told what a replay does, as it does it. Every method does nothing by default.
pub trait Observer {
    /// Event `number` was handed to the producer; the pace wanted it `due` after the
    /// start (flat out: when it was offered).
    fn offered(&mut self, _number: u64, _event: &OrderEvent, _due: Duration) {}

    /// `n` more events were acknowledged by the broker. Called whenever deliveries
    /// landed, and once more after the last ones (then even with `n` = 0).
    fn delivered(&mut self, _n: u64) {}

    /// Line `number` is not an event (`error` says why); it was skipped.
    fn unparsable(&mut self, _number: u64, _error: &str) {}

    /// The broker refused event `number` for good.
    fn refused(&mut self, _number: u64, _reason: &str) {}
}

/// The observer that observes nothing.
impl Observer for () {}

/// Publishes every event of `source` into `batch`. Lines that do not parse are reported
/// on stderr (and in the report) and skipped; refused events are reported and skipped,
/// or stop the replay, as `opts` say. Stops early, with
/// [`ReplayReport::interrupted`], when `cancel` is cancelled. Every event handed over is
/// settled before it returns.
pub async fn replay(
    source: Source<'_>,
    batch: &mut PublishBatch<'_, u64>,
    opts: &ReplayOptions,
    observer: &mut dyn Observer,
    cancel: &CancellationToken,
) -> Result<ReplayReport> {
    let mut r = Replayer::new(source, opts, observer);
    let in_flight = opts.in_flight.max(1);
    loop {
        if cancel.is_cancelled() {
            r.report.interrupted = true;
            break;
        }
        let Some((number, event)) = r.next()? else { break };
        let due = r.pace(&event).await;
        batch.enqueue(&event, number).await?;
        r.observer.offered(number, &event, due);
        // Count deliveries as they land; wait for the oldest when too many are out.
        let delivered = r.account(batch.settle_ready(in_flight - 1).await?)?;
        if delivered > 0 {
            r.observer.delivered(delivered);
            r.show_progress(false);
        }
    }
    let delivered = r.account(batch.settle().await?)?;
    r.observer.delivered(delivered);
    r.show_progress(true);
    Ok(r.report)
}

/// Events between progress bar updates.
const PROGRESS_EVERY: u64 = 10_000;

/// One replay's state.
struct Replayer<'s, 'o> {
    source: Source<'s>,
    /// The next in-memory event's index.
    next: usize,
    /// The trace's path, which messages name events by (with the line number).
    origin: Option<String>,
    opts: &'s ReplayOptions,
    observer: &'o mut dyn Observer,
    started: Instant,
    /// Events handed over so far.
    sent: u64,
    /// Event times: the first one and the newest one so far.
    first_event_ms: Option<i64>,
    max_event_ms: i64,
    /// Events delivered when the progress bar was last updated.
    shown: u64,
    report: ReplayReport,
}

impl<'s, 'o> Replayer<'s, 'o> {
    fn new(source: Source<'s>, opts: &'s ReplayOptions, observer: &'o mut dyn Observer) -> Self {
        let origin = match &source {
            Source::Trace(reader) => Some(reader.path().display().to_string()),
            Source::Events(_) => None,
        };
        Self {
            source,
            next: 0,
            origin,
            opts,
            observer,
            started: opts.started.unwrap_or_else(Instant::now),
            sent: 0,
            first_event_ms: None,
            max_event_ms: i64::MIN,
            shown: 0,
            report: ReplayReport::default(),
        }
    }

    /// The next event and its number; unparsable lines are reported and skipped.
    fn next(&mut self) -> Result<Option<(u64, Cow<'s, OrderEvent>)>> {
        loop {
            let line = match &mut self.source {
                Source::Events(events) => {
                    let events: &'s [OrderEvent] = events;
                    let Some(event) = events.get(self.next) else { return Ok(None) };
                    self.next += 1;
                    self.report.lines += 1;
                    return Ok(Some((self.next as u64, Cow::Borrowed(event))));
                }
                Source::Trace(reader) => match reader.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => return Ok(None),
                    Err(source) => return Err(Error::Trace { path: reader.path().display().to_string(), source }),
                },
            };
            self.report.lines += 1;
            match line.event {
                Ok(event) => return Ok(Some((line.number, Cow::Owned(event)))),
                Err(msg) => {
                    self.say(&format!("{}: {msg}", self.at(line.number)));
                    metrics::counter!(telemetry::PRODUCER_INVALID_LINES).increment(1);
                    self.observer.unparsable(line.number, &msg);
                    self.report.invalid_lines.push((line.number, msg));
                }
            }
        }
    }

    /// Waits until `event` is due; returns when it was due, from the start.
    async fn pace(&mut self, event: &OrderEvent) -> Duration {
        let due = match self.opts.pace {
            Pace::Max => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(self.sent as f64 / rate)),
            Pace::EventTime(factor) => event.event_time.as_ref().map(timestamp_millis).map(|t| {
                self.max_event_ms = self.max_event_ms.max(t);
                let first = *self.first_event_ms.get_or_insert(t);
                Duration::from_secs_f64(((self.max_event_ms - first) as f64 / 1000.0 / factor).max(0.0))
            }),
        };
        self.sent += 1;
        match due {
            Some(due) => {
                if due > self.started.elapsed() + Duration::from_millis(1) {
                    tokio::time::sleep_until(self.started + due).await;
                }
                due
            }
            None => self.started.elapsed(),
        }
    }

    /// Files a settlement: counts the deliveries, reports (or fails on) the refused.
    /// Returns the events delivered.
    fn account(&mut self, settled: Settled<u64>) -> Result<u64> {
        for r in settled.rejected {
            let reason = r.error.to_string();
            metrics::counter!(telemetry::PRODUCER_EVENTS, "outcome" => "refused").increment(1);
            self.observer.refused(r.tag, &reason);
            let at = self.at(r.tag);
            match self.opts.on_refused {
                OnRefused::Fail => return Err(Error::Refused { at, reason }),
                OnRefused::Report => {
                    self.say(&format!("{at}: refused by the broker: {reason}"));
                    self.report.refused.push((r.tag, reason));
                }
            }
        }
        let n = settled.delivered;
        self.report.published += n;
        metrics::counter!(telemetry::PRODUCER_EVENTS, "outcome" => "sent").increment(n);
        Ok(n)
    }

    /// How messages name event `number`: `trace.jsonl:17`, or `event 17` in memory.
    fn at(&self, number: u64) -> String {
        match &self.origin {
            Some(path) => format!("{path}:{number}"),
            None => format!("event {number}"),
        }
    }

    /// Prints a line on stderr, around the progress bar.
    fn say(&self, line: &str) {
        match &self.source {
            Source::Trace(reader) => reader.bar().suspend(|| eprintln!("{line}")),
            Source::Events(_) => eprintln!("{line}"),
        }
    }

    /// Shows the events delivered on the progress bar: every [`PROGRESS_EVERY`], and
    /// when `now`.
    fn show_progress(&mut self, now: bool) {
        let Source::Trace(reader) = &self.source else { return };
        let published = self.report.published;
        if now || published / PROGRESS_EVERY != self.shown / PROGRESS_EVERY {
            reader.bar().set_message(format!("{published} events"));
            self.shown = published;
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_producer::Publisher;
    use orderflow_proto::millis_timestamp;
    use orderflow_runtime::testing::MockKafka;

    use super::*;

    /// What the observer heard.
    #[derive(Debug, Default)]
    struct Heard {
        offered: Vec<u64>,
        delivered: u64,
        unparsable: Vec<u64>,
        refused: Vec<u64>,
    }

    impl Observer for Heard {
        fn offered(&mut self, number: u64, _event: &OrderEvent, _due: Duration) {
            self.offered.push(number);
        }
        fn delivered(&mut self, n: u64) {
            self.delivered += n;
        }
        fn unparsable(&mut self, number: u64, _error: &str) {
            self.unparsable.push(number);
        }
        fn refused(&mut self, number: u64, _reason: &str) {
            self.refused.push(number);
        }
    }

    fn opts(pace: Pace, on_refused: OnRefused) -> ReplayOptions {
        ReplayOptions { pace, in_flight: 2, on_refused, started: None }
    }

    fn event(id: &str) -> OrderEvent {
        OrderEvent { event_id: id.into(), order_id: format!("o-{id}"), ..Default::default() }
    }

    fn at(ms: i64) -> OrderEvent {
        OrderEvent { event_time: Some(millis_timestamp(ms)), ..Default::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn event_time_pace_follows_the_newest_event_time() {
        let o = opts(Pace::EventTime(10.0), OnRefused::Fail);
        let mut quiet = ();
        let mut r = Replayer::new(Source::Events(&[]), &o, &mut quiet);
        assert_eq!(r.pace(&at(1_000)).await, Duration::ZERO);
        assert_eq!(r.pace(&at(3_000)).await, Duration::from_millis(200));
        // Behind the newest event time: due with the newest.
        assert_eq!(r.pace(&at(2_000)).await, Duration::from_millis(200));
        assert_eq!(r.pace(&at(11_000)).await, Duration::from_secs(1));
        assert!(r.started.elapsed() >= Duration::from_millis(999), "{:?}", r.started.elapsed());
        // No event time: at once.
        assert_eq!(r.pace(&OrderEvent::default()).await, r.started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_pace_spaces_events_evenly() {
        let o = opts(Pace::Rate(4.0), OnRefused::Fail);
        let mut quiet = ();
        let mut r = Replayer::new(Source::Events(&[]), &o, &mut quiet);
        let mut dues = Vec::new();
        for _ in 0..3 {
            dues.push(r.pace(&OrderEvent::default()).await);
        }
        assert_eq!(dues, [Duration::ZERO, Duration::from_millis(250), Duration::from_millis(500)]);
        assert!(r.started.elapsed() >= Duration::from_millis(499));
    }

    #[test]
    fn sources_number_events_and_skip_unparsable_lines() {
        let events = [event("a"), event("b")];
        let o = opts(Pace::Max, OnRefused::Fail);
        let mut heard = Heard::default();
        let mut r = Replayer::new(Source::Events(&events), &o, &mut heard);
        let numbers: Vec<(u64, String)> = std::iter::from_fn(|| r.next().unwrap()).map(|(n, e)| (n, e.event_id.clone())).collect();
        assert_eq!(numbers, [(1, "a".to_owned()), (2, "b".to_owned())]);
        assert_eq!(r.report.lines, 2);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"eventId\":\"x\"}\n\nnope\n{\"eventId\":\"y\"}\n").unwrap();
        let mut reader = TraceReader::open(&path, false, "test").unwrap();
        let mut r = Replayer::new(Source::Trace(&mut reader), &o, &mut heard);
        let numbers: Vec<u64> = std::iter::from_fn(|| r.next().unwrap()).map(|(n, _)| n).collect();
        assert_eq!(numbers, [1, 4]);
        assert_eq!((r.report.lines, r.report.invalid_lines.len(), r.report.invalid_lines[0].0), (3, 1, 3));
        assert_eq!(heard.unparsable, [3]);
    }

    /// A mock cluster and a publisher to its orders topic whose producer refuses
    /// records over 2,000 bytes.
    fn mock() -> (MockKafka, Publisher) {
        let mock = MockKafka::start(1, 2);
        let mut kafka = mock.kafka.clone();
        kafka.options.push("message.max.bytes=2000".into());
        let publisher = Publisher::new(&kafka, mock.topics.orders()).unwrap();
        (mock, publisher)
    }

    #[tokio::test]
    async fn publishes_every_event_and_reports_or_fails_on_refused_ones() {
        let (mock, publisher) = mock();
        let huge = OrderEvent { merchant_id: "m".repeat(5_000), ..event("big") };
        let events: Vec<OrderEvent> = (0..10).map(|i| if i == 3 { huge.clone() } else { event(&format!("e{i}")) }).collect();
        let cancel = CancellationToken::new();

        let mut heard = Heard::default();
        let o = opts(Pace::Max, OnRefused::Report);
        let report = replay(Source::Events(&events), &mut publisher.batch(), &o, &mut heard, &cancel).await.unwrap();
        assert_eq!((report.lines, report.published, report.interrupted), (10, 9, false));
        assert_eq!(report.refused.iter().map(|r| r.0).collect::<Vec<_>>(), [4]);
        assert_eq!(heard.offered, (1..=10).collect::<Vec<_>>());
        assert_eq!((heard.delivered, heard.refused.as_slice()), (9, &[4][..]));
        assert_eq!(mock.read_all(&mock.topics.orders()).len(), 9);

        let o = opts(Pace::Max, OnRefused::Fail);
        let e = replay(Source::Events(&events), &mut publisher.batch(), &o, &mut (), &cancel).await.unwrap_err();
        assert!(matches!(&e, Error::Refused { at, .. } if at == "event 4"), "{e}");
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let (_mock, publisher) = mock();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let o = opts(Pace::Max, OnRefused::Fail);
        let report = replay(Source::Events(&[event("a")]), &mut publisher.batch(), &o, &mut (), &cancel).await.unwrap();
        assert_eq!((report.lines, report.published, report.interrupted), (0, 0, true));
    }
}
