//! Reading a trace file (one canonical-JSON `OrderEvent` a line) and drawing progress:
//! shared by `replay`, the load test and `trace synth`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use orderflow_proto::v1::OrderEvent;

/// One non-blank line of a trace.
#[derive(Debug)]
pub struct TraceLine {
    /// 1-based line number in the file.
    pub number: u64,
    /// The event, or why the line is not one (the message says what to fix).
    pub event: Result<OrderEvent, String>,
}

/// A trace file read line by line, with a progress bar over its bytes.
#[derive(Debug)]
pub struct TraceReader {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    line: String,
    number: u64,
    bar: indicatif::ProgressBar,
}

impl TraceReader {
    /// Opens `path`; `progress` draws a bar labelled `label` (when stderr is a terminal
    /// is the caller's decision).
    pub fn open(path: &Path, progress: bool, label: &str) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let bar = progress_bar(progress, size, &format!("{label} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} {{msg}}"));
        Ok(Self { path: path.to_owned(), reader: std::io::BufReader::with_capacity(1 << 20, file), line: String::new(), number: 0, bar })
    }

    /// The next non-blank line, `None` at the end of the file.
    pub fn next_line(&mut self) -> std::io::Result<Option<TraceLine>> {
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line)?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            self.bar.inc(n as u64);
            let text = self.line.trim();
            if text.is_empty() {
                continue;
            }
            let event = serde_json::from_str(text).map_err(|e| format!("not an OrderEvent in JSON: {e}"));
            return Ok(Some(TraceLine { number: self.number, event }));
        }
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The progress bar (to print around it with `suspend`, or to set its message).
    pub fn bar(&self) -> &indicatif::ProgressBar {
        &self.bar
    }
}

/// A progress bar with `template` after a spinner (hidden unless `enabled`).
pub fn progress_bar(enabled: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(&format!("{{spinner}} {template}")).expect("a valid progress template"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_skips_blank_lines_and_reports_bad_ones_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let good = r#"{"eventId":"e1","orderId":"o1","merchantId":"m1","type":"ORDER_EVENT_TYPE_PAID","amountMinor":"5","currency":"CNY","eventTime":"2019-11-11T00:00:00Z"}"#;
        std::fs::write(&path, format!("{good}\n\n  \nnot json\n{good}\n")).unwrap();
        let mut r = TraceReader::open(&path, false, "test").unwrap();
        let a = r.next_line().unwrap().unwrap();
        assert_eq!((a.number, a.event.unwrap().event_id.as_str()), (1, "e1"));
        let b = r.next_line().unwrap().unwrap();
        assert_eq!(b.number, 4);
        assert!(b.event.unwrap_err().starts_with("not an OrderEvent in JSON"));
        assert_eq!(r.next_line().unwrap().unwrap().number, 5);
        assert!(r.next_line().unwrap().is_none());
    }
}
