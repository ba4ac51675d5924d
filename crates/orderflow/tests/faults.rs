//! The fault test: a 200,000-event trace through the pipeline on a real broker, once
//! undisturbed and then under faults (SIGKILL of the enricher, of the aggregator, scale
//! out then kill one of each, a broker restart on SQLite storage). Every run's totals
//! must equal the undisturbed run's field for field, with the same dead-letter and late
//! records, and every run (the undisturbed one first) must equal the independent answer
//! computed from the trace (`orderflow_workload::reference`): totals per window, key and
//! type, the exact late events and the dead letters with their reasons. Each scenario
//! must also show that its fault hit (records sent again and absorbed, partitions
//! restored and the merger taken over after the kill). Prints per scenario: events in,
//! totals checked, differences.
//!
//! One test per scenario (`fault_1_...` to `fault_4_...`; cargo's filter picks some:
//! `cargo test -p orderflow --test faults fault_2`). The first to run makes the
//! undisturbed run for all of them; they run one at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::{free_port, wait_until, Broker, Orderflow, Service};
use orderflow_proto::v1::Merchant;
use orderflow_workload::reference::{Reference, Settings};
use orderflow_workload::sample;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;

/// 2019-11-11T00:00:00Z minus five minutes: the trace spans the midnight peak.
const START_MS: i64 = 1_573_430_400_000 - 5 * 60_000;
const PARTITIONS: i32 = 4;

struct Trace {
    dir: tempfile::TempDir,
    events: usize,
    valid_unique: usize,
    invalid: usize,
    last_window: String,
    /// The independent answer.
    reference: Reference,
    /// The ids `add_late_events` made three minutes late.
    made_late: BTreeSet<String>,
}

impl Trace {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn make_trace() -> Trace {
    let mut s = sample::generate(2019, 2_000, 100_000, START_MS, 10 * 60_000);
    sample::add_late_events(&mut s, 997);
    let dir = tempfile::tempdir().unwrap();
    // Every 10th merchant moves to another region and tier mid-trace: the temporal join
    // must give every run the same answer.
    let moved_at = orderflow_proto::millis_timestamp(START_MS + 4 * 60_000);
    let mut csv = String::from("merchant_id,region,tier,effective_from\n");
    let mut merchants = Vec::new();
    for (i, m) in s.merchants.iter().enumerate() {
        csv.push_str(&format!("{},{},{},\n", m.merchant_id, m.region, m.tier));
        merchants.push(m.clone());
        if i % 10 == 0 {
            csv.push_str(&format!("{},relocated,{}-upgraded,{moved_at}\n", m.merchant_id, m.tier));
            let tier = format!("{}-upgraded", m.tier);
            merchants.push(Merchant {
                merchant_id: m.merchant_id.clone(),
                region: "relocated".into(),
                tier,
                effective_from: Some(moved_at),
            });
        }
    }
    std::fs::write(dir.path().join("merchants.csv"), csv).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join("trace.jsonl")).unwrap());
    // The aggregators run with the default window and lateness.
    let mut reference = Reference::new(Settings::default(), &merchants);
    for e in &s.events {
        writeln!(f, "{}", serde_json::to_string(e).unwrap()).unwrap();
        reference.add(e);
    }
    f.flush().unwrap();
    let made_late = s.events.iter().filter(|e| e.event_id.starts_with("late-")).map(|e| e.event_id.clone()).collect();
    let last = reference.certain_totals().keys().map(|k| k.window_start_ms).max().expect("counted events");
    let last_window = orderflow_proto::millis_timestamp(last).to_string();
    let invalid = reference.dead_letters().values().sum();
    Trace { dir, events: s.events.len(), valid_unique: reference.valid_unique as usize, invalid, last_window, reference, made_late }
}

/// What a run produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    totals: Vec<Value>,
    dead_letters: BTreeSet<String>,
    late: BTreeSet<String>,
}

fn outcome(of: &Orderflow) -> Outcome {
    let totals = of.json_lines(&["totals", "--json"]);
    // The source partition and offset identify a dead letter across runs (the topic
    // prefix differs); a dead letter written twice after a crash is still one.
    let dead_letters = of
        .json_lines(&["dead-letters", "--json"])
        .iter()
        .map(|d| {
            format!(
                "{}/{} {}",
                d["sourcePartition"].as_str().unwrap(),
                d["sourceOffset"].as_str().unwrap(),
                d["reasonCode"].as_str().unwrap()
            )
        })
        .collect();
    let late = of.json_lines(&["late", "--json"]).iter().map(|l| l["event"]["event"]["eventId"].as_str().unwrap().to_owned()).collect();
    Outcome { totals, dead_letters, late }
}

/// Records on `prefix.topic` so far (the sum of its partitions' high watermarks).
fn records_so_far(of: &Orderflow, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &of.brokers).create().unwrap();
    let topic = format!("{}.{topic}", of.prefix);
    (0..PARTITIONS).map(|p| c.fetch_watermarks(&topic, p, Duration::from_secs(5)).map(|(_, h)| h).unwrap_or(0)).sum()
}

/// Whether the enricher has delivered outputs (enriched or dead-lettered) for input it
/// has not committed: every input record has exactly one output until something repeats.
fn delivered_beyond_commit(of: &Orderflow) -> bool {
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &of.brokers).set("group.id", format!("{}-enricher", of.prefix)).create().unwrap();
    let Ok(positions) = orderflow_runtime::kafka::group_positions(&c, &format!("{}.orders", of.prefix)) else { return false };
    let committed: i64 = positions.iter().map(|g| g.committed.unwrap_or(0)).sum();
    enriched_so_far(of) + records_so_far(of, "orders.dead-letter") > committed
}

fn enriched_so_far(of: &Orderflow) -> i64 {
    records_so_far(of, "orders.enriched")
}

struct Run<'a> {
    of: Orderflow,
    trace: &'a Trace,
    services: Vec<Service>,
    /// Metrics addresses of the aggregators, by service index.
    aggregators: Vec<(usize, String)>,
    replay: Option<Service>,
    /// Services this run killed or stopped on purpose; any other that exits fails the run.
    killed: BTreeSet<usize>,
    /// The surviving aggregators' counters right after the last kill.
    at_kill: Counters,
}

/// Counters summed over the running aggregators.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    duplicates: f64,
    restored_from_checkpoint: f64,
    /// Take-overs of the merger (each records how long its restore took).
    merger_takeovers: f64,
}

impl Counters {
    /// The counters on a set of aggregators' metrics pages, summed.
    fn of(pages: &[String]) -> Self {
        let mut c = Counters::default();
        for page in pages {
            c.duplicates += common::sample(page, "orderflow_aggregator_events_total", &[("outcome", "duplicate")]);
            c.restored_from_checkpoint += common::sample(page, "orderflow_aggregator_partition_restores_total", &[("from", "checkpoint")]);
            c.merger_takeovers += common::sample(page, "orderflow_merger_restore_duration_seconds_count", &[]);
        }
        c
    }
}

/// What the surviving aggregators' metrics say happened (killed ones take theirs along).
#[derive(Debug, Default)]
struct Evidence {
    /// Records on the enriched topic (events, repeats after crashes, idle ticks).
    enriched_records: i64,
    restore_max_seconds: f64,
    /// Input records re-read to rebuild dedup memories, and ids not found in them.
    reread_records: f64,
    missing_ids: f64,
    checkpoints: f64,
    checkpoint_bytes_sum: f64,
    checkpoint_bytes_max: f64,
    /// The same counters right after the last kill, and at the end.
    at_kill: Counters,
    at_end: Counters,
    /// How the run differs from the independent answer.
    reference_differences: Vec<String>,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} enriched records; surviving aggregators: {} duplicates absorbed, {} partitions restored from checkpoints ({} after the last kill; \
             slowest take-over {:.0} ms, {} input records reread for their dedup memory, {} ids missing), {} merger take-overs ({} after the \
             last kill), {} checkpoints written, {:.0} bytes on average, {:.0} at most",
            self.enriched_records,
            self.at_end.duplicates,
            self.at_end.restored_from_checkpoint,
            self.at_end.restored_from_checkpoint - self.at_kill.restored_from_checkpoint,
            self.restore_max_seconds * 1000.0,
            self.reread_records,
            self.missing_ids,
            self.at_end.merger_takeovers,
            self.at_end.merger_takeovers - self.at_kill.merger_takeovers,
            self.checkpoints,
            self.checkpoint_bytes_sum / self.checkpoints.max(1.0),
            self.checkpoint_bytes_max
        )
    }
}

impl<'a> Run<'a> {
    fn start(broker: &Broker, trace: &'a Trace) -> Self {
        let of = Orderflow::new(broker, PARTITIONS);
        of.run(&["merchants", "load", trace.path("merchants.csv").to_str().unwrap()]);
        let mut run = Run {
            of,
            trace,
            services: Vec::new(),
            aggregators: Vec::new(),
            replay: None,
            killed: BTreeSet::new(),
            at_kill: Counters::default(),
        };
        run.enricher();
        run.aggregator();
        run.replay = Some(run.of.spawn(&["replay", trace.path("trace.jsonl").to_str().unwrap(), "--rate", "25000"]));
        run
    }

    fn enricher(&mut self) -> usize {
        self.services.push(self.of.spawn(&["enrich", "--metrics-addr", &format!("127.0.0.1:{}", free_port())]));
        self.services.len() - 1
    }

    fn aggregator(&mut self) -> usize {
        let addr = format!("127.0.0.1:{}", free_port());
        self.services.push(self.of.spawn(&["aggregate", "--metrics-addr", &addr, "--idle-close", "3s", "--checkpoint-interval", "1s"]));
        self.aggregators.push((self.services.len() - 1, addr));
        self.services.len() - 1
    }

    /// Waits until `fraction` of the trace is on the enriched topic.
    fn wait_for_progress(&self, fraction: f64) {
        let want = (self.trace.events as f64 * fraction) as i64;
        wait_until(&format!("{:.0}% of the trace enriched", fraction * 100.0), Duration::from_secs(180), || {
            (enriched_so_far(&self.of) >= want).then_some(())
        });
    }

    /// SIGKILLs service `i`, waits for it to be gone, and notes the survivors' counters.
    fn kill(&mut self, i: usize) {
        self.services[i].signal("KILL");
        self.killed.insert(i);
        common::wait_for("the killed service to be gone", Duration::from_secs(30), || !self.services[i].running());
        self.at_kill = self.counters();
    }

    /// The metrics pages of the running aggregators.
    fn pages(&mut self) -> Vec<String> {
        let mut pages = Vec::new();
        for (i, addr) in &self.aggregators {
            if self.services[*i].running() {
                pages.push(common::scrape(addr).unwrap_or_default());
            }
        }
        pages
    }

    /// The counters of the running aggregators, summed.
    fn counters(&mut self) -> Counters {
        Counters::of(&self.pages())
    }

    /// The index of the aggregator whose merger is active: the one whose merger reads
    /// records (a standby's reads nothing) while the replay runs.
    fn active_merger(&self) -> usize {
        let read = |addr: &str| {
            common::scrape(addr).map_or(0.0, |p| common::sample(&p, "orderflow_records_consumed_total", &[("service", "merger")]))
        };
        wait_until("an aggregator whose merger reads", Duration::from_secs(60), || {
            let before: Vec<f64> = self.aggregators.iter().map(|(_, a)| read(a)).collect();
            std::thread::sleep(Duration::from_millis(1500));
            let active: Vec<usize> = self.aggregators.iter().zip(before).filter(|((_, a), b)| read(a) > *b).map(|((i, _), _)| *i).collect();
            (active.len() == 1).then(|| active[0])
        })
    }

    /// Waits for the replay to finish and for the outcome to reach `expect` (or, for
    /// the undisturbed run, to include the last window and stop changing); a run whose
    /// outcome stops changing short of `expect` ends there and is reported as a
    /// difference. Stops the services with SIGTERM and reads the outcome once more.
    fn finish(mut self, expect: Option<&Outcome>) -> (Outcome, Duration, Evidence) {
        let started = Instant::now();
        let mut replay = self.replay.take().unwrap();
        common::wait_for("the replay to finish", Duration::from_secs(300), || replay.exited());
        let mut previous: Option<Outcome> = None;
        let mut changed = Instant::now();
        let got = loop {
            let now = outcome(&self.of);
            let complete = now.totals.iter().any(|t| t["windowStart"] == self.trace.last_window.as_str());
            let stable = previous.as_ref() == Some(&now);
            match expect {
                Some(e) if now == *e => break now,
                Some(_) if complete && stable && changed.elapsed() >= Duration::from_secs(45) => break now,
                None if complete && stable => break now,
                _ => {}
            }
            // A stalled run fails within two minutes of its last change, any run within
            // five minutes of the replay's end.
            assert!(
                changed.elapsed() < Duration::from_secs(120) && started.elapsed() < Duration::from_secs(300),
                "no final outcome {:.0}s after the replay finished ({:.0}s without a change)",
                started.elapsed().as_secs_f64(),
                changed.elapsed().as_secs_f64()
            );
            if !stable {
                changed = Instant::now();
            }
            previous = Some(now);
            std::thread::sleep(Duration::from_millis(500));
        };
        let waited = started.elapsed();
        // One scrape of each surviving aggregator for all the evidence.
        let pages = self.pages();
        let at_end = Counters::of(&pages);
        let mut evidence = Evidence { enriched_records: enriched_so_far(&self.of), at_kill: self.at_kill, at_end, ..Evidence::default() };
        for page in &pages {
            evidence.restore_max_seconds =
                evidence.restore_max_seconds.max(common::sample(page, "orderflow_aggregator_restore_duration_max_seconds", &[]));
            evidence.reread_records += common::sample(page, "orderflow_aggregator_restore_reread_records_total", &[]);
            evidence.missing_ids += common::sample(page, "orderflow_aggregator_restore_missing_ids_total", &[]);
            evidence.checkpoints += common::sample(page, "orderflow_aggregator_checkpoint_size_bytes_count", &[]);
            evidence.checkpoint_bytes_sum += common::sample(page, "orderflow_aggregator_checkpoint_size_bytes_sum", &[]);
            evidence.checkpoint_bytes_max =
                evidence.checkpoint_bytes_max.max(common::sample(page, "orderflow_aggregator_checkpoint_size_max_bytes", &[]));
        }
        for (i, mut s) in self.services.drain(..).enumerate() {
            match s.exit_status() {
                None => {
                    let name = s.name.clone();
                    assert!(s.terminate().success(), "{name} did not exit cleanly on SIGTERM");
                }
                Some(_) if self.killed.contains(&i) => {}
                Some(status) => panic!("{} exited by itself ({status}) during the run", s.name),
            }
        }
        assert_eq!(outcome(&self.of), got, "the outcome changed after the services stopped");
        evidence.reference_differences = self.trace.reference.differences(&common::observe(&self.of));
        (got, waited, evidence)
    }
}

fn count(totals: &[Value]) -> i64 {
    totals
        .iter()
        .flat_map(|t| ["created", "paid", "cancelled", "refunded"].map(|k| t[k]["count"].as_str().map_or(0, |c| c.parse::<i64>().unwrap())))
        .sum()
}

/// Prints one line per scenario, and what differs from the baseline (if anything);
/// returns whether anything does.
fn report(name: &str, trace: &Trace, got: &Outcome, baseline: &Outcome, waited: Duration, evidence: &Evidence) -> bool {
    let key = |t: &Value| format!("{} {} {} {}", t["windowStart"], t["region"], t["tier"], t["currency"]);
    let theirs: BTreeMap<String, &Value> = baseline.totals.iter().map(|t| (key(t), t)).collect();
    let ours: BTreeMap<String, &Value> = got.totals.iter().map(|t| (key(t), t)).collect();
    let mut differences = Vec::new();
    for (k, t) in &ours {
        match theirs.get(k) {
            None => differences.push(format!("extra total {t}")),
            Some(b) if b != t => differences.push(format!("total {k}: got {t}, undisturbed {b}")),
            Some(_) => {}
        }
    }
    differences.extend(theirs.iter().filter(|(k, _)| !ours.contains_key(*k)).map(|(_, t)| format!("missing total {t}")));
    differences.extend(got.dead_letters.symmetric_difference(&baseline.dead_letters).map(|d| format!("dead letter differs: {d}")));
    differences.extend(got.late.symmetric_difference(&baseline.late).map(|l| format!("late record differs: {l}")));
    println!(
        "fault test | {name:<40} | events in {:>7} | totals {:>4} checked, {} differ | dead letters {} | late {} | settled {:.1}s after replay",
        trace.events,
        got.totals.len().max(baseline.totals.len()),
        differences.iter().filter(|d| d.contains("total")).count(),
        got.dead_letters.len(),
        got.late.len(),
        waited.as_secs_f64()
    );
    println!("fault test |   {evidence}");
    for d in differences.iter().take(20) {
        println!("fault test |   {d}");
    }
    for d in evidence.reference_differences.iter().take(20) {
        println!("fault test |   differs from the reference: {d}");
    }
    !differences.is_empty() || !evidence.reference_differences.is_empty()
}

/// What a scenario must also show, beyond equal outcomes, to prove the fault hit.
#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    /// After the last kill, the surviving aggregators restored partitions from
    /// checkpoints, rebuilt dedup memories from the input, and took the merger over.
    RestoresAndMergerTakeOver,
    /// The enricher's successor sent records again (more enriched records than
    /// undisturbed), and the aggregators absorbed them as duplicates.
    Repeats,
}

/// The undisturbed run, which every scenario's outcome must equal.
struct Baseline {
    outcome: Outcome,
    evidence: Evidence,
}

/// Made once, by the first scenario to run in this process; a failure is kept, so the
/// other scenarios fail with it instead of making it again.
static BASELINE: OnceLock<Result<Baseline, String>> = OnceLock::new();

/// Held for the whole of a scenario (the undisturbed run included): each starts a broker
/// and several processes and reports timings, so they run one at a time, whatever the
/// test harness's thread count. A scenario that fails poisons it; the next one goes on.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts a scenario: waits for the others to finish, makes the trace (the same one on
/// every call: the sample is seeded) and the undisturbed run, if it is not made yet.
fn scenario() -> (MutexGuard<'static, ()>, Trace, &'static Baseline) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let trace = make_trace();
    let baseline = BASELINE.get_or_init(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| undisturbed(&trace))).map_err(|panic| {
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default()
        })
    });
    match baseline {
        Ok(baseline) => (guard, trace, baseline),
        Err(e) => panic!("the undisturbed run failed: {e}"),
    }
}

fn undisturbed(trace: &Trace) -> Baseline {
    assert!(trace.events >= 200_000, "trace has {} events", trace.events);
    let broker = Broker::start();
    let (baseline, waited, baseline_evidence) = Run::start(&broker, trace).finish(None);
    drop(broker);
    let differs = report("undisturbed", trace, &baseline, &baseline, waited, &baseline_evidence);
    // The independent answer: every valid event counted once in its window, key and type,
    // or reported late; every invalid one dead-lettered with its reason.
    assert!(
        !differs,
        "the undisturbed run differs from the reference: {:?}",
        &baseline_evidence.reference_differences[..20.min(baseline_evidence.reference_differences.len())]
    );
    // The trace's late events are the three-minute-late copies, all certainly late.
    assert_eq!(trace.reference.maybe_late().count(), 0, "events the reference cannot call on time or late");
    assert_eq!(trace.reference.late(), &trace.made_late);
    assert_eq!(baseline.late, trace.made_late);
    assert_eq!(count(&baseline.totals) + baseline.late.len() as i64, trace.valid_unique as i64);
    assert_eq!(baseline.dead_letters.len(), trace.invalid);
    // Merchants that moved mid-trace count under their old region before the move and
    // under the new one after it.
    let moved = orderflow_proto::millis_timestamp(START_MS + 4 * 60_000).to_string();
    let relocated: Vec<&Value> = baseline.totals.iter().filter(|t| t["region"] == "relocated").collect();
    assert!(!relocated.is_empty(), "no totals for merchants after their move");
    assert!(relocated.iter().all(|t| t["windowStart"].as_str().unwrap() >= moved.as_str()), "a move applied before its time");
    Baseline { outcome: baseline, evidence: baseline_evidence }
}

/// Reports a scenario's run and fails the test if its outcome differs from the
/// undisturbed run's or it lacks what `expect` asks for.
fn check(name: &str, trace: &Trace, baseline: &Baseline, (got, waited, evidence): (Outcome, Duration, Evidence), expect: Expect) {
    let mut failed = Vec::new();
    if report(name, trace, &got, &baseline.outcome, waited, &evidence) {
        failed.push(name.to_owned());
    }
    let (at_kill, at_end) = (evidence.at_kill, evidence.at_end);
    if expect == Expect::RestoresAndMergerTakeOver {
        if at_end.restored_from_checkpoint <= at_kill.restored_from_checkpoint {
            failed.push(format!("{name}: no partition was restored from a checkpoint after the kill"));
        }
        if evidence.reread_records == 0.0 {
            failed.push(format!("{name}: no dedup memory was rebuilt from the input"));
        }
        if at_end.merger_takeovers <= at_kill.merger_takeovers {
            failed.push(format!("{name}: no merger took over after the kill"));
        }
    }
    if evidence.missing_ids != 0.0 {
        failed.push(format!("{name}: {} ids of restored dedup memories not found in the input", evidence.missing_ids));
    }
    if expect == Expect::Repeats && evidence.enriched_records <= baseline.evidence.enriched_records {
        failed.push(format!("{name}: the restarted enricher sent nothing again"));
    }
    if expect == Expect::Repeats && at_end.duplicates <= baseline.evidence.at_end.duplicates {
        failed.push(format!(
            "{name}: the aggregators absorbed {} duplicates, no more than the undisturbed run's {}",
            at_end.duplicates, baseline.evidence.at_end.duplicates
        ));
    }
    assert!(failed.is_empty(), "outcomes differ from the undisturbed run in: {failed:?}");
}

#[test]
fn fault_1_sigkill_enricher_restart() {
    let (_one_at_a_time, trace, baseline) = scenario();
    let broker = Broker::start();
    let mut run = Run::start(&broker, &trace);
    run.wait_for_progress(0.3);
    // Kill the enricher at a moment when some of its outputs are on the broker but
    // the input offsets they belong to are not committed, so that its successor
    // must send them again. Freeze it until a backlog builds (it keeps up with the
    // replay otherwise), then let it work on the backlog in short slices, looking
    // while it is frozen, and kill it frozen when the moment has come.
    run.services[0].signal("STOP");
    let paused_at = records_so_far(&run.of, "orders");
    wait_until("a backlog of 30,000 orders", Duration::from_secs(120), || {
        (records_so_far(&run.of, "orders") >= paused_at + 30_000).then_some(())
    });
    wait_until("the enricher to hold delivered but uncommitted outputs", Duration::from_secs(120), || {
        run.services[0].signal("CONT");
        std::thread::sleep(Duration::from_millis(10));
        run.services[0].signal("STOP");
        // A commit sent just before the freeze may still land: look twice, apart.
        (delivered_beyond_commit(&run.of) && {
            std::thread::sleep(Duration::from_millis(300));
            delivered_beyond_commit(&run.of)
        })
        .then_some(())
    });
    run.kill(0);
    run.enricher();
    check("1. SIGKILL enricher, restart", &trace, baseline, run.finish(Some(&baseline.outcome)), Expect::Repeats);
}

#[test]
fn fault_2_sigkill_aggregator_restart() {
    let (_one_at_a_time, trace, baseline) = scenario();
    let broker = Broker::start();
    let mut run = Run::start(&broker, &trace);
    run.wait_for_progress(0.4);
    run.kill(1);
    run.aggregator();
    check("2. SIGKILL aggregator, restart", &trace, baseline, run.finish(Some(&baseline.outcome)), Expect::RestoresAndMergerTakeOver);
}

#[test]
fn fault_3_scale_out_then_sigkill_one_of_each() {
    let (_one_at_a_time, trace, baseline) = scenario();
    let broker = Broker::start();
    let mut run = Run::start(&broker, &trace);
    run.wait_for_progress(0.25);
    run.enricher();
    run.aggregator();
    run.wait_for_progress(0.6);
    run.kill(0);
    // The aggregator holding the merger: its partitions and the merger must move.
    let merger = run.active_merger();
    run.kill(merger);
    check(
        "3. scale out to 2+2, SIGKILL one of each",
        &trace,
        baseline,
        run.finish(Some(&baseline.outcome)),
        Expect::RestoresAndMergerTakeOver,
    );
}

#[test]
fn fault_4_broker_restart_sqlite() {
    let (_one_at_a_time, trace, baseline) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::nisshi_in(dir.path(), "sqlite://broker.db");
    let run = Run::start(&broker, &trace);
    run.wait_for_progress(0.4);
    broker.restart();
    check("4. broker restart (SQLite storage)", &trace, baseline, run.finish(Some(&baseline.outcome)), Expect::Nothing);
}

#[test]
fn fault_5_sigterm_both_mid_stream_restart() {
    let (_one_at_a_time, trace, baseline) = scenario();
    let broker = Broker::start();
    let mut run = Run::start(&broker, &trace);
    run.wait_for_progress(0.4);
    // An ordinary deploy: both services stopped cleanly mid-stream, then started again.
    for i in [0, 1] {
        let name = run.services[i].name.clone();
        assert!(run.services[i].stop().success(), "{name} did not stop cleanly on SIGTERM mid-stream");
        run.killed.insert(i);
    }
    run.at_kill = run.counters();
    run.enricher();
    run.aggregator();
    check(
        "5. SIGTERM enricher and aggregator, restart",
        &trace,
        baseline,
        run.finish(Some(&baseline.outcome)),
        Expect::RestoresAndMergerTakeOver,
    );
}
