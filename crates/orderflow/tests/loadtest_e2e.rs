//! `orderflow trace synth` and `orderflow loadtest` end to end, on a real broker: a small
//! synthetic peak hour through a running pipeline, the report and its verdict; and the
//! same as a backlog drain, with the services started by the load test.

mod common;

use common::{free_port, Broker, Orderflow};
use serde_json::Value;

#[test]
fn loadtest_replays_a_synthetic_trace_and_finds_the_totals_exact() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 3);
    let dir = tempfile::tempdir().unwrap();
    let trace_dir = dir.path().join("trace");
    let (trace, lines) = synth(&of, &trace_dir, 30_000);

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
        "--enricher-pid",
        &enricher.pid().to_string(),
        "--aggregator-pid",
        &aggregator.pid().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Totals match the trace"), "{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["events"]["published"].as_u64().unwrap() as usize, lines);
    assert_eq!(report["totals"]["matched"], true);
    assert_eq!(report["totals"]["differences"].as_array().unwrap().len(), 0);
    // The independent answer: totals per window, key and type, the late events and the
    // dead letters, and the report's own counts.
    let reference = common::reference_for(&trace, &trace_dir.join("merchants.csv"));
    let observed = common::observe(&of);
    assert_eq!(reference.differences(&observed), Vec::<String>::new());
    assert_eq!(report["totals"]["lateEvents"].as_u64().unwrap() as usize, observed.late.len(), "{report}");
    assert!(observed.late.len() >= reference.late().len() && !reference.late().is_empty(), "the synthesizer's late events are late");
    assert_eq!(report["events"]["validUnique"].as_u64().unwrap(), reference.valid_unique);
    let windows: std::collections::BTreeSet<i64> = observed.totals.keys().map(|k| k.window_start_ms).collect();
    assert_eq!(report["totals"]["windows"].as_u64().unwrap() as usize, windows.len(), "{report}");
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
    // Both services did the work of every event: each used CPU time, per million events.
    for service in ["enricher", "aggregator"] {
        let cpu = &report["cpu"][service];
        assert_eq!(cpu["pid"].as_u64().unwrap(), if service == "enricher" { enricher.pid() } else { aggregator.pid() } as u64);
        assert!(cpu["secondsPerMillionEvents"].as_f64().unwrap() > 0.0, "{service}: {cpu}");
    }
    assert!(svg.contains("CPU µs per event"), "the CPU line is drawn");

    // A second run on the same topics is refused: its totals could not be told apart.
    let again = common::output_within(of.command().args(["loadtest", trace.to_str().unwrap(), "--no-progress"]), common::RUN_LIMIT);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh --topic-prefix"));

    assert!(enricher.terminate().success());
    assert!(aggregator.terminate().success());
}

/// Seconds of the report's per-second series with a value for `field`.
fn seconds_with(report: &Value, field: &str) -> usize {
    report["seconds"].as_array().unwrap().iter().filter(|s| s[field].is_u64()).count()
}

/// Writes a synthetic ten-minute peak of about `events` events into `dir`; returns the
/// trace's path and line count.
fn synth(of: &Orderflow, dir: &std::path::Path, events: usize) -> (std::path::PathBuf, usize) {
    let out = of.run(&[
        "trace",
        "synth",
        "--events",
        &events.to_string(),
        "--duration",
        "10m",
        "--start",
        "2019-11-10T23:55:00Z",
        "--merchants",
        "5000",
        "--seed",
        "7",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let trace = dir.join("trace.jsonl");
    let lines = std::fs::read_to_string(&trace).unwrap().lines().count();
    assert!((events * 29 / 30..=events * 31 / 30).contains(&lines), "{lines} lines; synth said: {summary}");
    (trace, lines)
}

#[test]
fn loadtest_drains_a_published_backlog_and_finds_the_totals_exact() {
    let broker = Broker::start();
    let of = Orderflow::new(&broker, 3);
    let dir = tempfile::tempdir().unwrap();
    let trace_dir = dir.path().join("trace");
    let (trace, lines) = synth(&of, &trace_dir, 20_000);
    of.run(&["merchants", "load", trace_dir.join("merchants.csv").to_str().unwrap()]);

    // No service is running: the load test publishes the backlog, has the broker relay
    // it alone, then starts an enricher and an aggregator (its children, with its
    // environment) and waits for every window's total.
    let report_dir = dir.path().join("report");
    let out = common::output_within(
        of.command().env("ORDERFLOW_IDLE_CLOSE", "2s").env("ORDERFLOW_CHECKPOINT_INTERVAL", "1s").args([
            "loadtest",
            trace.to_str().unwrap(),
            "--mode",
            "drain",
            "--no-progress",
            "--report",
            report_dir.to_str().unwrap(),
        ]),
        common::RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Totals match the trace"), "{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "drain");
    assert_eq!(report["events"]["published"].as_u64().unwrap() as usize, lines);
    assert_eq!(report["totals"]["matched"], true);
    let reference = common::reference_for(&trace, &trace_dir.join("merchants.csv"));
    let observed = common::observe(&of);
    assert_eq!(reference.differences(&observed), Vec::<String>::new());
    assert_eq!(report["totals"]["lateEvents"].as_u64().unwrap() as usize, observed.late.len(), "{report}");
    assert!(!reference.late().is_empty(), "{report}");
    // The baseline relayed exactly the published backlog: consumed, produced, consumed.
    let baseline = &report["brokerBaseline"];
    assert_eq!(baseline["events"].as_u64().unwrap() as usize, lines, "{baseline}");
    assert!(baseline["relaySeconds"].as_f64().unwrap() > 0.0 && baseline["produceSeconds"].is_null(), "{baseline}");
    // The services started after the whole backlog was published, and the drain ran
    // from their start to the last total, after they had committed everything.
    let drain = &report["drain"];
    assert!(drain["servicesStartedAtSeconds"].as_f64().unwrap() >= report["replaySeconds"].as_f64().unwrap(), "{drain}");
    let (caught_up, last_total) = (drain["caughtUpSeconds"].as_f64().unwrap(), drain["lastTotalSeconds"].as_f64().unwrap());
    assert!(0.0 < caught_up && caught_up <= last_total, "{drain}");
    let rate = drain["eventsPerSecond"].as_f64().unwrap();
    assert!((rate - lines as f64 / last_total).abs() < 1.0, "{drain}");
    assert!(drain["toBrokerRatio"].as_f64().unwrap() > 0.0, "{drain}");
    // CPU of the services it started; both are gone once the load test has ended.
    for service in ["enricher", "aggregator"] {
        let cpu = &report["cpu"][service];
        assert!(cpu["secondsPerMillionEvents"].as_f64().unwrap() > 0.0, "{service}: {cpu}");
        let pid = cpu["pid"].as_u64().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the {service} ({pid}) was left running");
    }
    let sum = report["cpu"]["enricher"]["secondsPerMillionEvents"].as_f64().unwrap()
        + report["cpu"]["aggregator"]["secondsPerMillionEvents"].as_f64().unwrap();
    assert!((report["cpu"]["servicesSecondsPerMillionEvents"].as_f64().unwrap() - sum).abs() < 1e-9);
    let svg = std::fs::read_to_string(report_dir.join("report.svg")).unwrap();
    assert!(svg.contains("orderflow backlog drain") && svg.contains("Drain: services started") && svg.contains("CPU (user + system)"));
}
