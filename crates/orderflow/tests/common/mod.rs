//! Test harness: a real Kafka-protocol broker (Nisshi) in its own process, and the
//! `orderflow` binary's subcommands as child processes.
//!
//! The broker is `$ORDERFLOW_TEST_BROKERS` when set (any Kafka-compatible cluster);
//! otherwise the harness starts `nisshi` (from `$NISSHI_BIN`, `PATH` or
//! `~/.cargo/bin`) on a free loopback port with in-memory storage, and stops it when
//! the test ends. Without either the tests fail and say how to install Nisshi.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orderflow_runtime::metrics_page;

/// A broker for one test.
pub struct Broker {
    pub bootstrap: String,
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
            return Broker { bootstrap: b, child: None, spawn: None };
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
        let mut broker =
            Broker { bootstrap: format!("127.0.0.1:{port}"), child: None, spawn: Some((dir.to_owned(), port, storage.to_owned(), args)) };
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

    /// Runs a subcommand to completion; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).stdin(Stdio::null()).output().expect("running orderflow");
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

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 60s of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// The value of the sample of metric `name` with exactly the labels `labels` (in any
/// order) in a Prometheus text page, 0 when absent.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics_page::samples(page).find(|s| s.name == name && s.has_labels(labels)).map_or(0.0, |s| s.value)
}
