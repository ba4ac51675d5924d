//! The README's first command, `orderflow demo`, as a newcomer runs it (the whole
//! pipeline in one process on librdkafka's mock cluster), and `demo --ingest` (the same
//! sample posted over HTTP): each must end with every total matching its reference,
//! exit 0, and print no warning.

mod common;

use std::time::Duration;

use common::free_port;

/// A demo run is a few seconds of traffic and a window's idle close; anything near this
/// is a hang.
const DEMO_LIMIT: Duration = Duration::from_secs(300);

fn demo(args: &[&str]) -> (String, String) {
    let _one_at_a_time = common::one_at_a_time();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command.args(["demo", "--metrics-addr", &metrics]).args(args).env("RUST_LOG", "info");
    let out = common::output_within(&mut command, DEMO_LIMIT);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "demo {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    (stdout, stderr)
}

fn assert_matches_without_warnings(stdout: &str, stderr: &str) {
    assert!(stdout.contains("Check against a reference computed directly from the generated sample: every total matches."), "{stdout}");
    let warnings: Vec<&str> = stderr.lines().chain(stdout.lines()).filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "the demo warned: {warnings:#?}");
}

#[test]
fn demo_ends_with_every_total_matching() {
    let (stdout, stderr) = demo(&["--orders", "5000"]);
    assert_matches_without_warnings(&stdout, &stderr);
    assert!(stdout.contains("Published "), "{stdout}");
}

#[test]
fn demo_over_http_ingest_ends_with_every_total_matching() {
    let ingest = format!("127.0.0.1:{}", free_port());
    let (stdout, stderr) = demo(&["--orders", "5000", "--ingest", &ingest]);
    assert_matches_without_warnings(&stdout, &stderr);
}
