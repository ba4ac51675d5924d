//! The aggregator's `/metrics`, polled for the events it shows (final plus provisional
//! figures), to time acknowledged events to visible ones. The page is fetched and read
//! with [`orderflow_runtime::metrics_page`], as the end-to-end tests read it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use orderflow_runtime::metrics_page;
use orderflow_runtime::telemetry::{OPEN_WINDOW_EVENTS, WINDOW_EVENTS};
use tokio_util::sync::CancellationToken;

/// How often the aggregator's `/metrics` is polled for the provisional figures.
pub const VISIBLE_POLL: Duration = Duration::from_millis(150);

/// Polls the aggregator's `/metrics` at `addr` every [`VISIBLE_POLL`], sending the events
/// it shows, final plus provisional, with the time of the poll (ms since `started`).
pub(super) fn poll_visible(addr: &str, cancel: &CancellationToken, started: Instant, tx: &mpsc::Sender<(u64, u64)>) {
    let mut failures = 0;
    while !cancel.is_cancelled() {
        let t = Instant::now();
        match metrics_page::scrape(addr) {
            Ok(page) => {
                let events = visible_events(&page);
                if tx.send((started.elapsed().as_millis() as u64, events)).is_err() {
                    break;
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%addr, error = %e, "Cannot read the aggregator's metrics; retrying.");
                }
            }
        }
        std::thread::sleep(VISIBLE_POLL.saturating_sub(t.elapsed()));
    }
}

/// Events a metrics page shows: every `orderflow_window_events_total` (final) and
/// `orderflow_open_window_events` (provisional) sample, summed.
fn visible_events(page: &str) -> u64 {
    metrics_page::samples(page).filter(|s| s.name == WINDOW_EVENTS || s.name == OPEN_WINDOW_EVENTS).map(|s| s.value).sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_events_sum_final_and_provisional_samples() {
        let page = "# HELP orderflow_window_events_total x\n\
            orderflow_window_events_total{region=\"a\",tier=\"t\",type=\"paid\"} 10\n\
            orderflow_window_events_total{region=\"b\",tier=\"t\",type=\"created\"} 5\n\
            orderflow_open_window_events{region=\"a\",tier=\"t\",type=\"paid\"} 3\n\
            orderflow_open_window_events_other 100\n\
            orderflow_windows_closed_total 7\n";
        assert_eq!(visible_events(page), 18);
    }
}
