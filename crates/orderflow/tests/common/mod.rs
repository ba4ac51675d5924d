//! Test harness: a real Kafka-protocol broker (Nisshi) in its own process, and the
//! `orderflow` binary's subcommands as child processes.
//!
//! The broker is `$ORDERFLOW_TEST_BROKERS` when set (any Kafka-compatible cluster);
//! otherwise the harness starts `nisshi` (from `$NISSHI_BIN`, `PATH` or
//! `~/.cargo/bin`) on a free loopback port with in-memory storage, and stops it when
//! the test ends. Without either the tests fail and say how to install Nisshi.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orderflow_runtime::metrics_page;

/// How long a one-shot subcommand (`totals`, `merchants load`, ...) may take before the
/// test fails saying which one it was waiting for.
pub const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `command` to completion with stdin closed, capturing its output; kills it and
/// fails the test, naming the command, if it has not exited within `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let what = format!("{:?}", command);
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting a command");
    // Read both pipes while waiting, so that a chatty child cannot block on a full one.
    fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    }
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {limit:?}; its stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// Held by a test that starts a broker and services (every [`Broker`] holds one): the
/// tests of one binary that do so run one at a time, so that none is slowed down by
/// another's processes on a small machine (several check timings). Reentrant: a test
/// may hold several (two brokers, say).
pub struct OneAtATime(());

struct Holder {
    thread: Option<std::thread::ThreadId>,
    count: usize,
}

static HOLDER: std::sync::Mutex<Holder> = std::sync::Mutex::new(Holder { thread: None, count: 0 });
static RELEASED: std::sync::Condvar = std::sync::Condvar::new();

/// Waits until no other test of this binary holds a [`OneAtATime`], then holds one.
pub fn one_at_a_time() -> OneAtATime {
    let me = std::thread::current().id();
    let mut h = HOLDER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while h.thread.is_some_and(|t| t != me) {
        h = RELEASED.wait(h).unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    h.thread = Some(me);
    h.count += 1;
    OneAtATime(())
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        let mut h = HOLDER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.count -= 1;
        if h.count == 0 {
            h.thread = None;
            RELEASED.notify_all();
        }
    }
}

/// A broker for one test.
pub struct Broker {
    pub bootstrap: String,
    /// Dropped after the broker process is stopped (fields drop after `Drop::drop`).
    _one_at_a_time: OneAtATime,
    child: Option<Child>,
    /// How to start it again: working directory, port, storage URL, further
    /// `nisshi broker` arguments.
    spawn: Option<(PathBuf, u16, String, Vec<String>)>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn nisshi_binary() -> PathBuf {
    if let Ok(p) = std::env::var("NISSHI_BIN") {
        return p.into();
    }
    let on_path =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("nisshi")).find(|p| p.is_file())).unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/nisshi"));
    on_path.or(home.filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!(
            "no Kafka broker for the end-to-end tests: set ORDERFLOW_TEST_BROKERS, or install Nisshi with \
             `cargo +nightly install nisshi --version 0.8.1 --locked` (scripts/test.sh does both)"
        )
    })
}

impl Broker {
    /// `$ORDERFLOW_TEST_BROKERS`, or a fresh in-memory Nisshi.
    pub fn start() -> Broker {
        if let Ok(b) = std::env::var("ORDERFLOW_TEST_BROKERS") {
            return Broker { bootstrap: b, child: None, spawn: None, _one_at_a_time: one_at_a_time() };
        }
        Self::nisshi_in(&std::env::temp_dir(), "memory://nisshi/")
    }

    /// A Nisshi broker with the given storage URL (relative paths are relative to
    /// `dir`), in its own process.
    pub fn nisshi_in(dir: &std::path::Path, storage: &str) -> Broker {
        Self::nisshi_with(dir, storage, &[])
    }

    /// As [`Broker::nisshi_in`], with further `nisshi broker` arguments (`--cert`,
    /// `--key`, `--authentication`).
    pub fn nisshi_with(dir: &std::path::Path, storage: &str, args: &[&str]) -> Broker {
        let port = free_port();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            child: None,
            spawn: Some((dir.to_owned(), port, storage.to_owned(), args)),
            _one_at_a_time: one_at_a_time(),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let (dir, port, storage, args) = self.spawn.clone().expect("a broker this harness started");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(nisshi_binary())
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &storage])
            .args(["--group-initial-rebalance-delay", "100ms", "--silent"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nisshi");
        self.child = Some(child);
        wait_for("the broker to accept connections", Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Kills the broker process (SIGKILL), leaving it down until [`Broker::start_again`].
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("a running broker");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Starts a broker stopped with [`Broker::stop`] again, on the same port and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.launch();
    }

    /// Kills the broker process (SIGKILL) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let mut c = self.child.take().expect("a running broker");
        c.kill().unwrap();
        c.wait().unwrap();
        self.launch();
    }
}

/// Polls `f` until it holds, failing after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `orderflow` binary pointed at a broker and a topic prefix of its own.
#[derive(Clone)]
pub struct Orderflow {
    pub brokers: String,
    pub prefix: String,
    pub partitions: i32,
}

impl Orderflow {
    pub fn new(broker: &Broker, partitions: i32) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        Self { brokers: broker.bootstrap.clone(), prefix: format!("e2e-{}-{nanos}", std::process::id()), partitions }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        c.env("ORDERFLOW_BROKERS", &self.brokers)
            .env("ORDERFLOW_TOPIC_PREFIX", &self.prefix)
            .env("ORDERFLOW_PARTITIONS", self.partitions.to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        c
    }

    /// Runs a subcommand to completion within [`RUN_LIMIT`]; panics with its output if
    /// it fails or takes longer.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = output_within(self.command().args(args), RUN_LIMIT);
        assert!(
            out.status.success(),
            "orderflow {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a subcommand and parses each stdout line as JSON.
    pub fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.run(args);
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    /// Starts a long-running subcommand (a service) in the background.
    pub fn spawn(&self, args: &[&str]) -> Service {
        let child = self.command().args(args).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("starting orderflow");
        Service { child: Some(child), name: args.join(" ") }
    }

    /// As [`Orderflow::spawn`], with the service's log (its stderr, filtered by
    /// `rust_log`, without colours) written to the file `log`, for a test to read.
    pub fn spawn_logged(&self, args: &[&str], rust_log: &str, log: &std::path::Path) -> Service {
        let file = std::fs::File::create(log).expect("creating a log file");
        let child = self
            .command()
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting orderflow");
        Service { child: Some(child), name: args.join(" ") }
    }
}

/// A running service; killed if the test ends without stopping it.
pub struct Service {
    child: Option<Child>,
    pub name: String,
}

impl Service {
    /// Whether the process has exited; panics if it exited with a failure.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().unwrap().try_wait().unwrap() {
            None => false,
            Some(status) => {
                assert!(status.success(), "{} failed: {status}", self.name);
                true
            }
        }
    }

    /// How the process ended, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Whether the process is still running (a killed one is not).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (`TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Sends SIGTERM and waits (at most 60 s) for the process to exit; returns how it
    /// exited. The service stays, exited.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 60s of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns how it exited.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET http://addr/path`: the status code and the body.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    metrics_page::get(addr, path, Duration::from_secs(5)).ok()
}

/// Fetches `http://addr/metrics`.
pub fn scrape(addr: &str) -> Option<String> {
    metrics_page::scrape(addr).ok()
}

/// Every metric name `orderflow-runtime/src/telemetry.rs` declares (its
/// `"orderflow_..."` strings), read from the source so that a test naming a metric the
/// code does not declare (renamed, or misspelled) fails instead of reading a zero.
pub fn declared_metrics() -> &'static BTreeSet<String> {
    static NAMES: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let source = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../orderflow-runtime/src/telemetry.rs"));
        source
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("orderflow_") && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            .map(str::to_owned)
            .collect()
    })
}

/// Fails the test unless `name` (a series name: a histogram's `_count`, `_sum` and
/// `_bucket` included) belongs to a metric the code declares.
pub fn assert_declared(name: &str) {
    let declared = declared_metrics();
    let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).filter(|b| declared.contains(*b));
    assert!(declared.contains(name) || base.is_some(), "metric `{name}` is not declared in orderflow-runtime/src/telemetry.rs");
}

/// The value of the sample of metric `name` with exactly the labels `labels` (in any
/// order) in a Prometheus text page, or `None` when the page has no such series.
pub fn try_sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    assert_declared(name);
    metrics_page::samples(page).find(|s| s.name == name && s.has_labels(labels)).map(|s| s.value)
}

/// As [`try_sample`], 0 when the series is absent: for counters that appear on their
/// first increment. The name must still be one the code declares.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_sample(page, name, labels).unwrap_or(0.0)
}

/// As [`try_sample`], failing the test when the series is absent: for a value the
/// process must be exporting (a gauge set at start, a counter already counted).
pub fn sample_present(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_sample(page, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} on the page:\n{page}"))
}

#[test]
fn sample_refuses_undeclared_names_and_tells_absent_from_zero() {
    let page = "# TYPE orderflow_windows_closed_total counter\norderflow_windows_closed_total 0\n";
    assert_eq!(try_sample(page, "orderflow_windows_closed_total", &[]), Some(0.0));
    assert_eq!(try_sample(page, "orderflow_enricher_events_total", &[]), None);
    assert_eq!(try_sample(page, "orderflow_end_to_end_latency_seconds_count", &[]), None);
    assert!(std::panic::catch_unwind(|| sample(page, "orderflow_windows_closed", &[])).is_err(), "an undeclared name");
}

/// The independent answer for a trace file and its merchants CSV
/// (`merchant_id,region,tier[,effective_from]`), with the pipeline's default settings.
pub fn reference_for(trace: &std::path::Path, merchants_csv: &std::path::Path) -> orderflow_workload::reference::Reference {
    use orderflow_proto::v1::{Merchant, OrderEvent};
    let csv = std::fs::read_to_string(merchants_csv).expect("reading the merchants CSV");
    let merchants: Vec<Merchant> = csv
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let effective_from = f.get(3).filter(|t| !t.is_empty()).map(|t| {
                let ms = chrono::DateTime::parse_from_rfc3339(t).expect("an RFC 3339 effective_from").timestamp_millis();
                orderflow_proto::millis_timestamp(ms)
            });
            Merchant { merchant_id: f[0].into(), region: f[1].into(), tier: f[2].into(), effective_from }
        })
        .collect();
    let mut reference = orderflow_workload::reference::Reference::new(Default::default(), &merchants);
    let text = std::fs::read_to_string(trace).expect("reading the trace");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let e: OrderEvent = serde_json::from_str(line).expect("a trace line in canonical JSON");
        reference.add(&e);
    }
    reference
}

/// What a run produced, as the reference compares it: its totals, the event ids on the
/// late topic, and its dead letters by (key, reason), each source record once (a dead
/// letter written again after a crash has the same source partition and offset).
pub fn observe(of: &Orderflow) -> orderflow_workload::reference::Observed {
    let mut observed = orderflow_workload::reference::Observed::default();
    for t in of.json_lines(&["totals", "--json"]) {
        observed.total(&serde_json::from_value::<orderflow_proto::v1::WindowTotal>(t).expect("a WindowTotal in canonical JSON"));
    }
    observed.late =
        of.json_lines(&["late", "--json"]).iter().map(|l| l["event"]["event"]["eventId"].as_str().unwrap().to_owned()).collect();
    let mut sources = BTreeSet::new();
    for d in of.json_lines(&["dead-letters", "--json"]) {
        if sources.insert((d["sourcePartition"].to_string(), d["sourceOffset"].to_string())) {
            observed.dead_letter(d["key"].as_str().unwrap(), d["reasonCode"].as_str().unwrap());
        }
    }
    observed
}
