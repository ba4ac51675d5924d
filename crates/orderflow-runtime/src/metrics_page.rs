//! Reading a service's `/metrics` page from outside: one `GET` over plain HTTP/1.1, and
//! the samples of the Prometheus text format. The load test polls the aggregator with
//! it, and the end-to-end tests check the services' figures with it.
//!
//! Only as much of the format as orderflow's exporter writes: one sample a line
//! (`name{key="value",...} value`), no timestamps, comment lines starting with `#`.

use std::io::{self, Read as _, Write as _};
use std::time::Duration;

/// How long [`scrape`] waits for the page.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET http://addr/path` (HTTP/1.1, `Connection: close`, read timeout `timeout`): the
/// status code and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{addr}{path}: not an HTTP response")))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// The body of `http://addr/metrics`, whatever the status (a page without samples has
/// none to find).
pub fn scrape(addr: &str) -> io::Result<String> {
    get(addr, "/metrics", SCRAPE_TIMEOUT).map(|(_, body)| body)
}

/// One sample line of a page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The metric's name, with the suffix of a histogram's series (`_sum`, `_count`,
    /// `_bucket`).
    pub name: &'a str,
    /// What stood between the braces.
    labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The labels, `(key, value)`, in the page's order; values as written (escapes
    /// kept).
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let mut rest = self.labels;
        std::iter::from_fn(move || {
            let (key, after) = rest.split_once("=\"")?;
            // The value ends at the first quote not escaped by a backslash.
            let bytes = after.as_bytes();
            let mut end = 0;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let value = after.get(..end)?;
            rest = after.get(end + 1..).unwrap_or("").trim_start_matches(',');
            Some((key.trim(), value))
        })
    }

    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&'a str> {
        self.labels().find_map(|(k, v)| (k == key).then_some(v))
    }

    /// Whether the sample has exactly the labels `want`, in any order.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        self.labels().count() == want.len() && want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample of a page whose line parses, in the page's order.
pub fn samples(page: &str) -> impl Iterator<Item = Sample<'_>> {
    page.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let value = value.trim().parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        Some(Sample { name, labels, value })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP orderflow_window_events_total x\n\
        # TYPE orderflow_window_events_total counter\n\
        orderflow_window_events_total{region=\"a\",tier=\"t\",type=\"paid\"} 10\n\
        orderflow_windows_closed_total 7\n\
        orderflow_odd{note=\"a \\\"b\\\", c\",k=\"v\"} 2.5\n\
        orderflow_restore_seconds_sum +Inf\n\
        not a sample\n";

    #[test]
    fn samples_have_names_labels_and_values() {
        let all: Vec<Sample<'_>> = samples(PAGE).collect();
        assert_eq!(
            all.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["orderflow_window_events_total", "orderflow_windows_closed_total", "orderflow_odd", "orderflow_restore_seconds_sum"]
        );
        assert_eq!(all[0].value, 10.0);
        assert_eq!(all[0].labels().collect::<Vec<_>>(), [("region", "a"), ("tier", "t"), ("type", "paid")]);
        assert!(all[0].has_labels(&[("type", "paid"), ("region", "a"), ("tier", "t")]));
        assert!(!all[0].has_labels(&[("type", "paid"), ("region", "a")]));
        assert!(all[1].has_labels(&[]));
        // A comma and escaped quotes inside a value do not split it.
        assert_eq!(all[2].label("note"), Some("a \\\"b\\\", c"));
        assert_eq!(all[2].label("k"), Some("v"));
        assert_eq!(all[3].value, f64::INFINITY);
    }

    #[test]
    fn a_page_is_fetched_over_http() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET /metrics HTTP/1.1\r\n"));
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nm 1.5\n").unwrap();
        });
        assert_eq!(scrape(&addr).unwrap(), "m 1.5\n");
        server.join().unwrap();
    }
}
