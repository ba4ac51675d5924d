//! `orderflow trace synth` and `orderflow loadtest` end to end, on a real broker: a small
//! synthetic peak hour through a running pipeline, the report and its verdict.

mod common;

use common::{free_port, Broker, Orderflow};
use serde_json::Value;

#[test]
fn loadtest_replays_a_synthetic_trace_and_finds_the_totals_exact() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 3);
    let dir = tempfile::tempdir().unwrap();
    let trace_dir = dir.path().join("trace");
    let synth = of.run(&[
        "trace",
        "synth",
        "--events",
        "30000",
        "--duration",
        "10m",
        "--start",
        "2019-11-10T23:55:00Z",
        "--merchants",
        "5000",
        "--seed",
        "7",
        "--out",
        trace_dir.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&synth.stdout).into_owned() + &String::from_utf8_lossy(&synth.stderr);
    let trace = trace_dir.join("trace.jsonl");
    let lines = std::fs::read_to_string(&trace).unwrap().lines().count();
    assert!((29_000..=31_000).contains(&lines), "{lines} lines; synth said: {summary}");

    of.run(&["merchants", "load", trace_dir.join("merchants.csv").to_str().unwrap()]);
    let enricher = of.spawn(&["enrich", "--metrics-addr", &format!("127.0.0.1:{}", free_port())]);
    let aggregator_metrics = format!("127.0.0.1:{}", free_port());
    let aggregator = of.spawn(&["aggregate", "--metrics-addr", &aggregator_metrics, "--idle-close", "2s", "--checkpoint-interval", "1s"]);
    let report_dir = dir.path().join("report");
    let out = of.run(&[
        "loadtest",
        trace.to_str().unwrap(),
        "--speed",
        "max",
        "--broker-baseline",
        "--no-progress",
        "--report",
        report_dir.to_str().unwrap(),
        "--aggregator-metrics",
        &aggregator_metrics,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Totals match the trace"), "{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["events"]["published"].as_u64().unwrap() as usize, lines);
    assert_eq!(report["totals"]["matched"], true);
    assert_eq!(report["totals"]["differences"].as_array().unwrap().len(), 0);
    // The synthesizer's late events (event time minutes behind) are reported late, and
    // the reference counts them only through the late topic.
    assert!(report["totals"]["lateEvents"].as_u64().unwrap() > 0, "{report}");
    assert!(report["totals"]["windows"].as_u64().unwrap() >= 10);
    // Every window was published, so latency covers every counted event (and late ones
    // sent before their window's merged total went out).
    let valid = report["events"]["validUnique"].as_u64().unwrap();
    let late = report["totals"]["lateEvents"].as_u64().unwrap();
    let timed = report["latency"]["events"].as_u64().unwrap();
    assert!((valid - late..=valid).contains(&timed), "{timed} timed of {valid} valid, {late} late");
    // The provisional figures show every counted event the pipeline did not find late,
    // and those are timed from their acknowledgement.
    let visible = report["visibleLatency"]["events"].as_u64().unwrap();
    assert!((valid - late..=valid).contains(&visible), "{visible} visible of {valid} valid, {late} late");
    assert!(seconds_with(&report, "visibleP99Ms") > 0, "per-second provisional latency: {report}");
    assert_eq!(report["brokerBaseline"]["events"].as_u64().unwrap() as usize, lines);
    assert!(report["throughput"]["pipelineToBrokerRatio"].as_f64().unwrap() > 0.0);
    let seconds = report["seconds"].as_array().unwrap();
    let achieved: u64 = seconds.iter().map(|s| s["achieved"].as_u64().unwrap()).sum();
    assert_eq!(achieved as usize, lines, "every acknowledged event is in the per-second series");
    let svg = std::fs::read_to_string(report_dir.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Events per second") && svg.contains("Consumer lag"));
    assert!(svg.contains("visible in the provisional figures"));

    // A second run on the same topics is refused: its totals could not be told apart.
    let again = of.command().args(["loadtest", trace.to_str().unwrap(), "--no-progress"]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh --topic-prefix"));

    assert!(enricher.terminate().success());
    assert!(aggregator.terminate().success());
}

/// Seconds of the report's per-second series with a value for `field`.
fn seconds_with(report: &Value, field: &str) -> usize {
    report["seconds"].as_array().unwrap().iter().filter(|s| s[field].is_u64()).count()
}
