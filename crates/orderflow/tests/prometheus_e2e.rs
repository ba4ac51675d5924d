//! The pipeline under a real Prometheus (Debian's `prometheus`), as an SRE runs it: the
//! enricher and the aggregator as processes on a real broker, Prometheus scraping both
//! every second with the alerting rules of `deploy/prometheus/alerts.yml`, and every
//! query of the Grafana dashboards in `deploy/grafana/dashboards/` asked through
//! Prometheus's HTTP API, as Grafana would.
//!
//! 1. Phase 1 (events of one window, which stays open): the provisional figures
//!    (`orderflow_open_window_*`) and the GMV screen's "GMV so far" equal the trace's,
//!    while no final total exists yet.
//! 2. Phase 2 (one event per partition two windows later, which closes the first): the
//!    final totals (`orderflow_window_*_total`) equal the trace's exactly, the open window
//!    holds phase 2, and "GMV so far" is both together, counted once; second by second
//!    (a range query), it never went down while the window moved from the one to the
//!    other.
//! 3. Phase 3 (a late event): every target of every panel returns data; only panels of
//!    counters that never moved in this run (they appear on their first increment), and
//!    ingest's (not run here), may be empty, and only those the dashboards mark with a
//!    "No data" value.
//! 4. The aggregator stopped: `OrderflowServiceDown` goes pending for its job.
//!
//! The test is skipped, saying so, when `prometheus` is not installed
//! (`scripts/test.sh` installs Debian's package).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_for, wait_until, Broker, Orderflow};
use orderflow_core::validate::validate;
use orderflow_core::window::{type_index, TYPE_NAMES};
use orderflow_proto::v1::OrderEvent;
use serde_json::Value;

const MERCHANTS: &str =
    "merchant_id,region,tier\nm1,cn-east,tmall\nm2,cn-east,taobao\nm3,cn-south,tmall\nm4,cn-north,taobao\nm5,intl,tmall\n";

/// Panels the dashboards mark with a "No data" value that may be empty here: counters of
/// trouble this run does not stage, idle ticks (none: `--idle-close 1h` keeps the
/// window open until phase 2 closes it), and a restore's rereading (every partition
/// starts from scratch). Each appears on its first increment.
const ABSENT_IN_A_CLEAN_RUN: [&str; 8] = [
    "orderflow_kafka_errors_total",
    "orderflow_aggregator_idle_ticks_total",
    "orderflow_dead_letter_refused_total",
    "orderflow_aggregator_bound_refusals_total",
    "orderflow_aggregator_checkpoint_failures_total",
    "orderflow_enricher_merchant_records_refused_total",
    "orderflow_aggregator_restore_reread_records_total",
    "orderflow_aggregator_restore_missing_ids_total",
];

/// Panels the dashboards mark with a "No data" value that are empty here because this
/// run does not start the service that counts them: ingest (the events are replayed to
/// the broker, not posted over HTTP). Each appears on the first request.
const NOT_RUN_HERE: [&str; 5] = [
    "orderflow_ingest_requests_total",
    "orderflow_ingest_events_total",
    "orderflow_ingest_request_duration_seconds",
    "orderflow_ingest_broker_ack_duration_seconds",
    "orderflow_ingest_requests_in_flight",
];

/// The title of the GMV screen's big number.
const GMV_SO_FAR: &str = "GMV so far (CNY, paid)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("prometheus")).find(|p| p.is_file()))
        .or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file()))
}

/// An instant query's answer: each series' labels and value.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// A Prometheus server of this test's own: loopback port, TSDB in a temporary directory.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the enricher and the aggregator each second (the jobs of
    /// `deploy/prometheus.yml`) and evaluates `deploy/prometheus/alerts.yml` each second.
    fn start(binary: &Path, enricher: &str, aggregator: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n\
             \x20 - job_name: orderflow-enricher\n\
             \x20   static_configs: [{{targets: [\"{enricher}\"]}}]\n\
             \x20 - job_name: orderflow-aggregator\n\
             \x20   static_configs: [{{targets: [\"{aggregator}\"]}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", common::free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { child, addr, _dir: dir };
        wait_for("prometheus to be ready", Duration::from_secs(60), || http_get(&p.addr, "/-/ready").is_some_and(|(s, _)| s == 200));
        p
    }

    /// An instant query: each series' labels and value, or Prometheus's error.
    fn query(&self, expr: &str) -> Result<Series, String> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", encode(expr))).ok_or("no answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        let value = |s: &Value| s.as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
        Ok(match v["data"]["resultType"].as_str() {
            Some("vector") => v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let labels =
                        r["metric"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
                    (labels, value(&r["value"][1]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), value(&v["data"]["result"][1]))],
            other => return Err(format!("unexpected result type {other:?}")),
        })
    }

    /// `sum by (currency, type) (metric)`, as a map; empty when there is no series.
    fn by_currency_and_type(&self, metric: &str) -> BTreeMap<(String, String), i64> {
        self.query(&format!("sum by (currency, type) ({metric})"))
            .unwrap()
            .into_iter()
            .map(|(l, v)| ((l["currency"].clone(), l["type"].clone()), v as i64))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    /// `sum by (type) (metric)`, as a map without zeros.
    fn by_type(&self, metric: &str) -> BTreeMap<String, i64> {
        self.query(&format!("sum by (type) ({metric})"))
            .unwrap()
            .into_iter()
            .map(|(l, v)| (l["type"].clone(), v as i64))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    /// The values of a one-series expression every second from `start` (Unix seconds)
    /// to now, as a range query (a graph) evaluates it.
    fn every_second_since(&self, expr: &str, start: u64) -> Vec<f64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let path = format!("/api/v1/query_range?query={}&start={start}&end={now:.3}&step=1", encode(expr));
        let (status, body) = http_get(&self.addr, &path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "HTTP {status}: {body}");
        let series = v["data"]["result"].as_array().unwrap();
        assert_eq!(series.len(), 1, "{expr}: {body}");
        series[0]["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().parse().unwrap()).collect()
    }

    /// The one value of an expression, `None` when it has no series.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr).unwrap();
        assert!(r.len() <= 1, "{expr} has {} series", r.len());
        r.first().map(|(_, v)| *v)
    }

    /// The state (`pending`, `firing`) of each alert with these labels.
    fn alert_states(&self, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
        let (_, body) = http_get(&self.addr, "/api/v1/alerts").expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && labels.iter().all(|(k, val)| a["labels"][*k] == *val))
            .map(|a| a["state"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// `GET http://addr/path` over HTTP/1.0 (no chunked answer): status and body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned()))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One target of a dashboard panel.
struct Target {
    dashboard: String,
    panel: String,
    expr: String,
    /// The panel shows a value of its own ("No data" as 0) when the query has no series.
    no_value: bool,
}

/// Every target of every panel of every dashboard under `deploy/grafana/dashboards/`.
fn dashboard_targets() -> Vec<Target> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the GMV screen and the SRE board: {files:?}");
    let mut targets = Vec::new();
    for file in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut panels: Vec<&Value> = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            if p["type"] == "row" {
                panels.extend(p["panels"].as_array().into_iter().flatten());
            } else {
                panels.push(p);
            }
        }
        for p in panels {
            for t in p["targets"].as_array().unwrap() {
                targets.push(Target {
                    dashboard: d["title"].as_str().unwrap().to_owned(),
                    panel: p["title"].as_str().unwrap().to_owned(),
                    expr: t["expr"].as_str().unwrap().to_owned(),
                    no_value: !p["fieldConfig"]["defaults"]["noValue"].is_null(),
                });
            }
        }
    }
    targets
}

/// A small deterministic xorshift generator, so the trace is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Phase 1: orders of five merchants and an unknown one, created and mostly paid, a few
/// cancelled, in CNY and USD, with storefront retries and invalid events, every event
/// time within 2019-11-11T00:00:00Z..00:00:50Z: one window, which no watermark closes.
fn phase_1() -> String {
    let mut rng = Rng(0x1111_2019);
    let mut lines = Vec::new();
    for i in 0..120u64 {
        let merchant = ["m1", "m2", "m3", "m4", "m5", "nobody"][rng.next(6) as usize];
        let currency = if rng.next(10) == 0 { "USD" } else { "CNY" };
        let amount = 100 + rng.next(50_000);
        let t = rng.next(45);
        let order = format!("o{i}");
        let event = |id: &str, kind: &str, secs: u64, amount: i64, currency: &str| {
            format!(
                r#"{{"eventId":"{id}","orderId":"{order}","merchantId":"{merchant}","type":"ORDER_EVENT_TYPE_{kind}","amountMinor":"{amount}","currency":"{currency}","eventTime":"2019-11-11T00:00:{secs:02}.{:03}Z"}}"#,
                i % 1000
            )
        };
        lines.push(event(&format!("{order}-c"), "CREATED", t, amount as i64, currency));
        match rng.next(10) {
            0 => lines.push(event(&format!("{order}-x"), "CANCELLED", t + 3, amount as i64, currency)),
            1 => {} // abandoned
            _ => lines.push(event(&format!("{order}-p"), "PAID", t + 2, amount as i64, currency)),
        }
        match rng.next(20) {
            0 => lines.push(lines.last().unwrap().clone()), // a storefront retry
            1 => lines.push(event(&format!("{order}-bad"), "PAID", t, -5, currency)), // negative amount
            2 => lines.push(event(&format!("{order}-yuan"), "PAID", t, 5, "yuan")), // not a currency code
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

/// Phase 2: one payment of `amount` CNY fen at 00:02:00 on each of the two partitions,
/// which closes the 00:00 window on both (its end plus the 5 s lateness is 00:01:05).
fn phase_2(amount: i64) -> String {
    // librdkafka's default partitioner puts a keyed record on CRC-32(key) % partitions.
    let order_on = |p: u32| (0..).map(|i| format!("close{i}")).find(|o| crc32fast::hash(o.as_bytes()) % 2 == p).unwrap();
    (0..2)
        .map(|p| {
            let o = order_on(p);
            format!(
                r#"{{"eventId":"{o}-p","orderId":"{o}","merchantId":"m1","type":"ORDER_EVENT_TYPE_PAID","amountMinor":"{amount}","currency":"CNY","eventTime":"2019-11-11T00:02:00Z"}}"#
            ) + "\n"
        })
        .collect()
}

/// Phase 3: a payment for the closed 00:00 window: late on either partition.
const PHASE_3: &str = r#"{"eventId":"late-p","orderId":"late","merchantId":"m3","type":"ORDER_EVENT_TYPE_PAID","amountMinor":"777","currency":"CNY","eventTime":"2019-11-11T00:00:30Z"}
"#;

/// What a trace must add to the totals, with the project's own rules: events that pass
/// validation, each event id once; amounts and counts by (currency, type).
fn expected(trace: &str) -> (BTreeMap<(String, String), i64>, BTreeMap<String, i64>) {
    let (mut amounts, mut counts) = (BTreeMap::new(), BTreeMap::new());
    let mut seen = std::collections::HashSet::new();
    for line in trace.lines() {
        let e: OrderEvent = serde_json::from_str(line).unwrap();
        if validate(&e).is_err() || !seen.insert(e.event_id.clone()) {
            continue;
        }
        let kind = TYPE_NAMES[type_index(e.r#type).unwrap()].to_owned();
        *amounts.entry((e.currency.clone(), kind.clone())).or_default() += e.amount_minor;
        *counts.entry(kind).or_default() += 1;
    }
    (amounts, counts)
}

fn gmv_cny_paid(amounts: &BTreeMap<(String, String), i64>) -> i64 {
    amounts.get(&("CNY".to_owned(), "paid".to_owned())).copied().unwrap_or(0)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn dashboards_gmv_and_alerts_through_a_real_prometheus() {
    let Some(prometheus_bin) = prometheus_binary() else {
        // Under CI (and scripts/test.sh, which installs it) a missing server is a failure,
        // not a skip nobody reads: the runner captures the output of passing tests.
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("ORDERFLOW_REQUIRE_ALL_TOOLS").is_none(),
            "no `prometheus` binary: install Debian's prometheus package (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: no `prometheus` binary (install Debian's prometheus package; scripts/test.sh does)");
        return;
    };
    let targets = dashboard_targets();
    let gmv_so_far = targets.iter().find(|t| t.panel == GMV_SO_FAR).unwrap_or_else(|| panic!("no panel {GMV_SO_FAR:?}")).expr.clone();

    let broker = Broker::start();
    let of = Orderflow::new(&broker, 2);
    let dir = tempfile::tempdir().unwrap();
    of.run(&["merchants", "load", &write(&dir, "merchants.csv", MERCHANTS)]);
    let (enricher_addr, aggregator_addr) = (format!("127.0.0.1:{}", common::free_port()), format!("127.0.0.1:{}", common::free_port()));
    let enricher = of.spawn(&["enrich", "--metrics-addr", &enricher_addr]);
    // No idle close within the test: windows close only when phase 2 moves the watermarks.
    let aggregator = of.spawn(&["aggregate", "--metrics-addr", &aggregator_addr, "--idle-close", "1h", "--checkpoint-interval", "1s"]);
    let prometheus = Prometheus::start(&prometheus_bin, &enricher_addr, &aggregator_addr);
    let started = unix_now();
    wait_for("both services scraped up and ready", Duration::from_secs(60), || {
        prometheus.scalar("sum(up{job=~\"orderflow-enricher|orderflow-aggregator\"})") == Some(2.0)
            && prometheus.scalar("min(orderflow_ready)") == Some(1.0)
    });

    // 1. Provisional figures before the window closes.
    let p1 = phase_1();
    let (amounts_1, counts_1) = expected(&p1);
    assert!(amounts_1.len() >= 4 && counts_1.len() == 3, "the trace has CNY and USD, created, paid and cancelled: {amounts_1:?}");
    of.run(&["replay", &write(&dir, "p1.jsonl", &p1)]);
    wait_for("the provisional figures to equal phase 1", Duration::from_secs(90), || {
        prometheus.by_currency_and_type("orderflow_open_window_amount_minor") == amounts_1
            && prometheus.by_type("orderflow_open_window_events") == counts_1
    });
    assert_eq!(prometheus.scalar("sum(orderflow_window_amount_minor_total)"), None, "no window has closed yet");
    assert_eq!(prometheus.scalar(&gmv_so_far), Some(gmv_cny_paid(&amounts_1) as f64 / 100.0), "{GMV_SO_FAR}: {gmv_so_far}");

    // 2. The window closes: final figures exact, phase 2 provisional, GMV counted once.
    let p2 = phase_2(12_345);
    let (amounts_2, counts_2) = expected(&p2);
    of.run(&["replay", &write(&dir, "p2.jsonl", &p2)]);
    wait_for("the final totals to equal phase 1 and the open window phase 2", Duration::from_secs(90), || {
        prometheus.by_currency_and_type("orderflow_window_amount_minor_total") == amounts_1
            && prometheus.by_currency_and_type("orderflow_open_window_amount_minor") == amounts_2
    });
    assert_eq!(prometheus.by_type("orderflow_window_events_total"), counts_1);
    assert_eq!(prometheus.by_type("orderflow_open_window_events"), counts_2);
    assert_eq!(prometheus.scalar("sum(orderflow_windows_closed_total)"), Some(1.0));
    let gmv_now = (gmv_cny_paid(&amounts_1) + gmv_cny_paid(&amounts_2)) as f64 / 100.0;
    assert_eq!(prometheus.scalar(&gmv_so_far), Some(gmv_now));
    // Second by second, as the screen's graph shows it: GMV so far never went down and
    // never passed the total, so no scrape saw the closing window in both the
    // provisional and the final figures, or in neither.
    let seen = wait_until("the graph's last second to show phase 2", Duration::from_secs(30), || {
        let seen = prometheus.every_second_since(&gmv_so_far, started);
        (seen.last() == Some(&gmv_now)).then_some(seen)
    });
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "GMV so far went down: {seen:?}");
    assert!(seen.contains(&(gmv_cny_paid(&amounts_1) as f64 / 100.0)), "phase 1 alone was on the screen: {seen:?}");

    // 3. A late event; then every panel's queries answer with data.
    of.run(&["replay", &write(&dir, "p3.jsonl", PHASE_3)]);
    wait_for("the late event", Duration::from_secs(60), || {
        prometheus.scalar("sum(orderflow_aggregator_events_total{outcome=\"late\"})") == Some(1.0)
    });
    for t in targets.iter().filter(|t| t.no_value) {
        assert!(
            ABSENT_IN_A_CLEAN_RUN.iter().chain(&NOT_RUN_HERE).any(|m| t.expr.contains(m)),
            "{} / {}: a panel that shows a value for no data must be about a counter this test cannot stage ({ABSENT_IN_A_CLEAN_RUN:?}) or a service it does not run ({NOT_RUN_HERE:?}): {}",
            t.dashboard,
            t.panel,
            t.expr
        );
    }
    let empty = |t: &Target| match prometheus.query(&t.expr) {
        Ok(r) => r.is_empty(),
        Err(e) => panic!("{} / {}: {} fails: {e}", t.dashboard, t.panel, t.expr),
    };
    // Rates need two scrapes of a counter: poll for a while, then name what is missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<String> =
            targets.iter().filter(|t| !t.no_value && empty(t)).map(|t| format!("{} / {}: {}", t.dashboard, t.panel, t.expr)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "panels without data after 90 s:\n{}", missing.join("\n"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let quiet: Vec<&str> = targets.iter().filter(|t| t.no_value && empty(t)).map(|t| t.panel.as_str()).collect();
    println!(
        "{} of {} dashboard queries answered with data; empty, shown as their no-data value: {quiet:?}",
        targets.len() - quiet.len(),
        targets.len()
    );
    assert_eq!(prometheus.by_currency_and_type("orderflow_window_amount_minor_total"), amounts_1, "the late event is not counted");

    // 4. Staged trouble: the aggregator stops, and the real rule notices.
    assert!(prometheus.alert_states("OrderflowServiceDown", &[("job", "orderflow-aggregator")]).is_empty(), "not while it runs");
    assert!(aggregator.terminate().success());
    let states = wait_until("OrderflowServiceDown to go pending for the aggregator", Duration::from_secs(60), || {
        let s = prometheus.alert_states("OrderflowServiceDown", &[("job", "orderflow-aggregator")]);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(states, ["pending"], "its `for: 2m` has not passed");
    assert!(prometheus.alert_states("OrderflowServiceDown", &[("job", "orderflow-enricher")]).is_empty());
    assert!(enricher.terminate().success());
}
