#!/usr/bin/env bash
# What checkpoints cost the aggregator, measured in one run (docs/testing.md#checkpoint-cost). Two
# modes:
#
#   scripts/checkpoint-cost.sh [EVENTS] [ROUNDS]                # backlog; defaults: 1000000 2
#   scripts/checkpoint-cost.sh paced [SECONDS] [PARTITIONS]     # paced; defaults: 150 2
#
# Backlog: starts a Nisshi broker (memory storage), synthesizes a trace of EVENTS events,
# and fills one copy of the enriched topic per aggregator run (replay + enricher, no
# aggregator yet). Then, ROUNDS times and alternating, it starts an aggregator on a
# filled copy with `--no-checkpoints`, with `--checkpoint-interval 5s` (the default)
# and with `--checkpoint-interval 1s`, and times how long each takes to process the
# whole copy (until its metrics count every record). Prints events/s per run and the
# ratio of each checkpointing setting to the runs without checkpoints.
#
# Paced: the bytes checkpoints write against the bytes the aggregator reads, at a steady
# 8,500 events/s per input partition. Synthesizes a flat trace (`--peak-ratio 1`) of
# SECONDS of event time at that rate over PARTITIONS partitions, starts a Nisshi broker,
# an enricher and an aggregator (default `--checkpoint-interval 5s`) on topics of
# PARTITIONS partitions and replays the trace in real time with `orderflow loadtest`.
# At 60% of the run it SIGKILLs the aggregator and starts another on the same group,
# which restores the checkpoints. The load test must find every total exact. From the
# aggregators' /metrics (sampled every second into target/loadtest/checkpoint-cost-paced/)
# it prints events/s per partition, input bytes/s (orderflow_aggregator_input_bytes_total),
# checkpoint bytes/s (orderflow_aggregator_checkpoint_size_bytes), their ratio, the
# largest checkpoint, the checkpoints written, and the new aggregator's restore time per
# partition (orderflow_aggregator_restore_duration_seconds), and how long after its start
# it was ready (every partition restored; the group first waits out the killed member's
# session) and had caught up. The rates are taken over the steady stretches: the first
# aggregator from the time its dedup memory is full (the 65 s horizon, plus 5 s) to the
# kill, the second from 5 s after it caught up to the replay's end; over the whole run
# too. Unless CHECKPOINT_COST_COMPARE=0, the same paced run follows with
# `--no-checkpoints` (and no kill), and the aggregator's CPU per event up to the same
# moment (/proc/PID/stat) is compared. The summary is also written to
# target/loadtest/checkpoint-cost-paced.json. Exits non-zero if a run's totals do not
# match. Set ORDERFLOW_BROKERS to use a running cluster instead of Nisshi.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RUST_LOG="${RUST_LOG:-warn}"

# write_sampler FILE: the Python helper of the paced mode. `sample ADDR PID [EVERY]`
# prints one JSON line of the aggregator's metrics and CPU seconds (every EVERY seconds,
# until killed; once without EVERY); `ready ADDR PARTITIONS` exits 0 once /readyz answers
# 200 and PARTITIONS partitions were restored;
# `summary DIR JSON PARTITIONS SECONDS RATE` prints and writes the summary.
write_sampler() {
  cat >"$1" <<'EOF'
import json, sys, time, urllib.request

HORIZON = 65.0  # the aggregator's default dedup horizon (window 1m + lateness 5s)

def scrape(addr):
    page = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
    m, dedup = {}, {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        v = float(value)
        if name == "orderflow_aggregator_partition_restores_total":
            name += "{" + labels
        if name == "orderflow_aggregator_dedup_ids":
            dedup[labels.rstrip("}")] = v
        m[name] = m.get(name, 0.0) + v
    return m, dedup

def cpu(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 1:].split()
    return (int(fields[11]) + int(fields[12])) / 100.0

def sample(addr, pid):
    t = time.time()
    try:
        m, dedup = scrape(addr)
    except Exception:
        return None
    return {"t": t, "cpu": cpu(pid), "m": m, "dedup": dedup}

def ready(addr):
    try:
        return urllib.request.urlopen(f"http://{addr}/readyz", timeout=2).status == 200
    except Exception:
        return False

def load(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip()]
    except FileNotFoundError:
        return []

M = lambda s, k: s["m"].get(k, 0.0) if s else 0.0
IN, CP_SUM, CP_COUNT = "orderflow_aggregator_input_bytes_total", "orderflow_aggregator_checkpoint_size_bytes_sum", "orderflow_aggregator_checkpoint_size_bytes_count"
EVENTS = "orderflow_aggregator_events_total"

def stretch(samples, t_from, t_to):
    """The first sample at or after t_from and the last at or before t_to."""
    inside = [s for s in samples if t_from <= s["t"] <= t_to]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None

def rates(*pairs):
    """Rates over one or more (first, last) sample pairs, summed."""
    dt = sum(b["t"] - a["t"] for a, b in pairs)
    d = lambda k: sum(M(b, k) - M(a, k) for a, b in pairs)
    return {
        "seconds": round(dt, 1),
        "eventsPerSecond": round(d(EVENTS) / dt),
        "inputBytesPerSecond": round(d(IN) / dt),
        "checkpointBytesPerSecond": round(d(CP_SUM) / dt),
        "checkpoints": int(d(CP_COUNT)),
        "checkpointToInputPercent": round(100.0 * d(CP_SUM) / d(IN), 2) if d(IN) else None,
    }

def analyse(run_dir, partitions, seconds):
    marks = json.load(open(f"{run_dir}/marks.json"))
    report = json.load(open(f"{run_dir}/report/report.json"))
    first, second = load(f"{run_dir}/samples-1.jsonl"), load(f"{run_dir}/samples-2.jsonl")
    t0, t_mark = marks["inputStarted"], marks["mark"]
    # Steady: the first aggregator once its dedup memory is full (the horizon, plus 5 s),
    # to the mark; and the second from 5 s after it caught up (once it has read
    # something, its rate back within 25% of the first's: the backlog since the last
    # checkpoint done) to the replay's end.
    whole = stretch(first, t0, t_mark)
    steady_from = t0 + HORIZON + 5.0
    pairs = [stretch(first, steady_from, t_mark) if t_mark - steady_from >= 10 else None]
    caught_up = None
    if marks.get("ready") and whole:
        pace = (M(whole[1], EVENTS) - M(whole[0], EVENTS)) / (whole[1]["t"] - whole[0]["t"])
        after = [s for s in second if s["t"] >= marks["ready"] and M(s, EVENTS) > 0]
        caught_up = next((a["t"] for a, b in zip(after, after[1:]) if (M(b, EVENTS) - M(a, EVENTS)) / (b["t"] - a["t"]) <= 1.25 * pace), None)
    if caught_up and t0 + seconds - 1 - (caught_up + 5) >= 10:
        pairs.append(stretch(second, caught_up + 5, t0 + seconds - 1))
    pairs = [p for p in pairs if p]
    out = {"totalsMatched": report["totals"]["matched"], "totals": report["totals"]["totals"],
           "lateEvents": report["totals"]["lateEvents"], "events": report["events"],
           "achievedEventsPerSecond": round(report["throughput"]["achievedEventsPerSecond"]),
           "replaySeconds": report["replaySeconds"], "lastTotalSeconds": report.get("lastTotalSeconds")}
    lags = [(s.get("enricherLag"), s.get("aggregatorLag")) for s in report["seconds"]]
    out["enricherLagMax"] = max((e for e, _ in lags if e is not None), default=None)
    agg = sorted(a for _, a in lags if a is not None)
    out["aggregatorCommittedLagMax"] = agg[-1] if agg else None
    out["aggregatorCommittedLagP50"] = agg[len(agg) // 2] if agg else None
    # Whether the pipeline kept up: the load test's lag is from committed offsets, which
    # the aggregator commits with its checkpoints (every 5 s), so the aggregator's is
    # judged by its rate (eventsPerSecond against the replay's), its CPU and how soon
    # after the last send both groups had committed everything.
    if report.get("pipelineSeconds") is not None:
        out["caughtUpAfterLastSendSeconds"] = round(report["pipelineSeconds"] - report["replaySeconds"], 1)
    out["steady"] = rates(*pairs) if pairs else None
    if pairs:
        out["steady"]["stretches"] = [[round(a["t"] - t0, 1), round(b["t"] - t0, 1)] for a, b in pairs]
    if whole:
        out["untilMark"] = rates(whole)
    last1 = first[-1] if first else None
    last2 = second[-1] if second else None
    in_total = M(last1, IN) + M(last2, IN)
    cp_total = M(last1, CP_SUM) + M(last2, CP_SUM)
    out["wholeRun"] = {
        "inputBytes": int(in_total), "checkpointBytes": int(cp_total),
        "checkpointToInputPercent": round(100.0 * cp_total / in_total, 2) if in_total else None,
        "checkpoints": int(M(last1, CP_COUNT) + M(last2, CP_COUNT)),
        "checkpointFailures": int(M(last1, "orderflow_aggregator_checkpoint_failures_total") + M(last2, "orderflow_aggregator_checkpoint_failures_total")),
    }
    out["largestCheckpointBytes"] = int(max(M(last1, "orderflow_aggregator_checkpoint_size_max_bytes"), M(last2, "orderflow_aggregator_checkpoint_size_max_bytes")))
    if last1 and last1["dedup"]:
        out["dedupIdsPerPartitionAtMark"] = {k: int(v) for k, v in sorted(last1["dedup"].items())}
    c = [s for s in first if s["cpu"] is not None and s["t"] >= t0]
    if c:
        events = M(c[-1], EVENTS) - M(c[0], EVENTS)
        cpu_s = c[-1]["cpu"] - c[0]["cpu"]
        out["aggregatorCpu"] = {"seconds": round(cpu_s, 2), "events": int(events), "cores": round(cpu_s / (c[-1]["t"] - c[0]["t"]), 3),
                                "microsecondsPerEvent": round(1e6 * cpu_s / events, 3) if events else None,
                                "over": "first input to the mark"}
    if marks.get("killed"):
        restored = M(last2, 'orderflow_aggregator_partition_restores_total{from="checkpoint"}')
        scratch = M(last2, 'orderflow_aggregator_partition_restores_total{from="scratch"}')
        total = M(last2, "orderflow_aggregator_restore_duration_seconds_sum")
        out["restore"] = {
            "partitionsFromCheckpoint": int(restored), "partitionsFromScratch": int(scratch),
            "takeOvers": int(M(last2, "orderflow_aggregator_restore_duration_seconds_count")),
            "seconds": round(total, 3),
            "maxSeconds": round(M(last2, "orderflow_aggregator_restore_duration_max_seconds"), 3),
            "secondsPerPartition": round(total / (restored + scratch), 3) if restored + scratch else None,
            "readyAfterSeconds": round(marks["ready"] - marks["restarted"], 1) if marks.get("ready") else None,
            "caughtUpAfterSeconds": round(caught_up - marks["restarted"], 1) if caught_up else None,
        }
    return out

def summary(out_dir, path, partitions, seconds, rate):
    partitions, seconds = int(partitions), int(seconds)
    result = {"partitions": partitions, "seconds": seconds, "targetEventsPerSecondPerPartition": int(rate),
              "checkpointInterval": "5s", "runs": {}}
    for name in ("checkpoints", "no-checkpoints"):
        try:
            result["runs"][name] = analyse(f"{out_dir}/{name}", partitions, seconds)
        except FileNotFoundError:
            pass
    r = result["runs"]["checkpoints"]
    s = r["steady"] or r.get("untilMark")
    if r.get("aggregatorCpu") and "no-checkpoints" in result["runs"]:
        a, b = r["aggregatorCpu"]["microsecondsPerEvent"], result["runs"]["no-checkpoints"].get("aggregatorCpu", {}).get("microsecondsPerEvent")
        result["cpuWithToWithoutCheckpoints"] = round(a / b, 3) if a and b else None
    json.dump(result, open(path, "w"), indent=2)
    lines = [
        f"Paced checkpoint cost: {partitions} partitions, {seconds} s at {rate} events/s per partition, --checkpoint-interval 5s",
        f"  replay                {r['achievedEventsPerSecond']:,} events/s acknowledged over {r['replaySeconds']:.1f} s",
        f"  events per partition  {s['eventsPerSecond'] / partitions:,.0f}/s at the aggregator ("
        + (f"steady: {s['seconds']} s in s {', '.join(f'{a:.0f}-{b:.0f}' for a, b in s['stretches'])} of the run" if r['steady'] else f"until the mark, {s['seconds']} s; too short to be steady")
        + ")",
        f"  input                 {s['inputBytesPerSecond']:,} bytes/s",
        f"  checkpoints           {s['checkpointBytesPerSecond']:,} bytes/s ({s['checkpoints']} checkpoints in the stretch)",
        f"  checkpoint / input    {s['checkpointToInputPercent']}% (target: below 5%)",
        f"  whole run             {r['wholeRun']['checkpointToInputPercent']}%: {r['wholeRun']['checkpointBytes']:,} checkpoint bytes for {r['wholeRun']['inputBytes']:,} input bytes",
        f"  largest checkpoint    {r['largestCheckpointBytes']:,} bytes; {r['wholeRun']['checkpoints']} checkpoints written, {r['wholeRun']['checkpointFailures']} refused",
        f"  keeping up            enricher lag max {r['enricherLagMax']} records; aggregator {r.get('aggregatorCpu', {}).get('cores')} cores until the mark; "
        f"both groups committed everything {r.get('caughtUpAfterLastSendSeconds')} s after the last send",
    ]
    if r.get("restore"):
        x = r["restore"]
        lines.append(f"  restore after SIGKILL {x['secondsPerPartition']} s per partition ({x['seconds']} s for {x['partitionsFromCheckpoint']} from checkpoint, {x['partitionsFromScratch']} from scratch, in {x['takeOvers']} take-overs); target: under 1 s per partition")
        lines.append(f"                        after the restart: ready (every partition restored) {x['readyAfterSeconds']} s, caught up {x['caughtUpAfterSeconds']} s (the group waits for the killed member's session timeout first)")
    lines.append(f"  totals                {'match' if r['totalsMatched'] else 'DO NOT MATCH'}: {r['totals']} totals, {r['lateEvents']} late events")
    if "no-checkpoints" in result["runs"]:
        n = result["runs"]["no-checkpoints"]
        lines.append(f"  aggregator CPU        {r.get('aggregatorCpu', {}).get('microsecondsPerEvent')} us/event with checkpoints, {n.get('aggregatorCpu', {}).get('microsecondsPerEvent')} without: ratio {result.get('cpuWithToWithoutCheckpoints')}; without-checkpoints run totals {'match' if n['totalsMatched'] else 'DO NOT MATCH'}")
    lines.append(f"  (written to {path})")
    print("\n".join(lines))
    if not all(run["totalsMatched"] for run in result["runs"].values()):
        sys.exit(1)

mode = sys.argv[1]
if mode == "sample":
    addr, pid = sys.argv[2], sys.argv[3]
    every = float(sys.argv[4]) if len(sys.argv) > 4 else None
    while True:
        s = sample(addr, pid)
        if s:
            print(json.dumps(s), flush=True)
        if every is None:
            sys.exit(0 if s else 1)
        time.sleep(every)
elif mode == "ready":
    # /readyz alone is not enough: it answers 200 before the aggregator's loop registers.
    s = sample(sys.argv[2], 0)
    restored = sum(v for k, v in s["m"].items() if k.startswith("orderflow_aggregator_partition_restores_total")) if s else 0
    sys.exit(0 if ready(sys.argv[2]) and restored >= int(sys.argv[3]) else 1)
elif mode == "summary":
    summary(*sys.argv[2:7])
EOF
}

# paced_run NAME DIR kill|nokill [AGGREGATOR FLAGS...]: one paced run on a fresh topic
# prefix (see the header); samples, marks and the load test's report go to DIR.
# start_aggregator SAMPLES [FLAGS...]: starts an aggregator on a free metrics port and a
# sampler of it into SAMPLES; sets maddr, agg and sampler (paced_run's locals).
start_aggregator() {
  local samples=$1
  shift
  maddr="127.0.0.1:$(free_port)"
  "$OF" aggregate --metrics-addr "$maddr" "$@" &
  pids+=($!)
  agg=$!
  python3 "$dir/../sample.py" sample "$maddr" "$agg" 1 >"$samples" &
  pids+=($!)
  sampler=$!
}

paced_run() {
  local name="$1" dir="$2" kill="$3"
  shift 3
  mkdir -p "$dir"
  export ORDERFLOW_TOPIC_PREFIX="cpcost-paced-$name-$(date +%s)"
  log "Paced run '$name' ($SECONDS_RUN s, $PARTITIONS partitions, aggregator flags: ${*:-none}; topic prefix $ORDERFLOW_TOPIC_PREFIX)"
  "$OF" merchants load "$TRACE_DIR/merchants.csv" >/dev/null
  "$OF" enrich --metrics-addr 127.0.0.1:0 &
  pids+=($!)
  local enricher=$!
  local maddr agg sampler
  start_aggregator "$dir/samples-1.jsonl" "$@"
  "$OF" loadtest "$TRACE_DIR/trace.jsonl" --speed realtime --no-progress --report "$dir/report" >"$dir/loadtest.log" 2>&1 &
  pids+=($!)
  local loadtest=$!

  # The clock starts when the aggregator reads its first record.
  local started=""
  while [[ -z "$started" ]]; do
    kill -0 "$loadtest" 2>/dev/null || { cat "$dir/loadtest.log" >&2; echo "paced run '$name': the load test ended before the aggregator read anything" >&2; exit 1; }
    kill -0 "$agg" 2>/dev/null || { echo "paced run '$name': the aggregator exited" >&2; exit 1; }
    if python3 - "$dir/samples-1.jsonl" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if any(l["m"].get("orderflow_aggregator_input_bytes_total", 0) > 0 for l in lines) else 1)
EOF
    then started=$(date +%s.%N); fi
    sleep 0.5
  done
  local mark
  mark=$(python3 -c "print($started + 0.6 * $SECONDS_RUN)")
  log "Input flowing; the mark (60%) is in $(python3 -c "print(round($mark - $(date +%s.%N)))") s"
  while python3 -c "import sys, time; sys.exit(0 if time.time() < $mark else 1)"; do
    kill -0 "$agg" 2>/dev/null || { echo "paced run '$name': the aggregator exited before the mark" >&2; exit 1; }
    sleep 1
  done
  kill -TERM "$sampler"
  wait "$sampler" 2>/dev/null || true
  python3 "$dir/../sample.py" sample "$maddr" "$agg" >>"$dir/samples-1.jsonl" || { echo "paced run '$name': no metrics from the aggregator at the mark" >&2; exit 1; }
  local marked restarted="null" ready="null" killed=false
  marked=$(date +%s.%N)
  if [[ "$kill" == kill ]]; then
    log "SIGKILL to the aggregator (pid $agg); starting another on the same group"
    kill -KILL "$agg"
    wait "$agg" 2>/dev/null || true
    killed=true
    restarted=$(date +%s.%N)
    start_aggregator "$dir/samples-2.jsonl" "$@"
    until python3 "$dir/../sample.py" ready "$maddr" "$PARTITIONS"; do
      kill -0 "$agg" 2>/dev/null || { echo "paced run '$name': the new aggregator exited" >&2; exit 1; }
      kill -0 "$loadtest" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$loadtest" 2>/dev/null; then
      ready=$(date +%s.%N)
      log "The new aggregator is ready (every partition restored) after $(python3 -c "print(round($ready - $restarted, 1))") s"
    else
      echo "paced run '$name': the load test ended before the new aggregator was ready" >&2
    fi
  fi
  local rc=0
  wait "$loadtest" || rc=$?
  tail -n 20 "$dir/loadtest.log" >&2
  if [[ "$kill" == kill ]]; then
    kill -TERM "$sampler"
    wait "$sampler" 2>/dev/null || true
    python3 "$dir/../sample.py" sample "$maddr" "$agg" >>"$dir/samples-2.jsonl" || true
  fi
  printf '{"inputStarted": %s, "mark": %s, "marked": %s, "killed": %s, "restarted": %s, "ready": %s}\n' \
    "$started" "$mark" "$marked" "$killed" "$restarted" "$ready" >"$dir/marks.json"
  kill -TERM "$agg" "$enricher" 2>/dev/null || true
  wait "$agg" "$enricher" 2>/dev/null || true
  [[ -s "$dir/report/report.json" ]] || { echo "paced run '$name': the load test wrote no report (exit code $rc; see $dir/loadtest.log)" >&2; exit 1; }
  python3 - "$dir/report/report.json" "$name" <<'EOF' || exit 1
import json, sys
totals = json.load(open(sys.argv[1]))["totals"]
if not totals["matched"]:
    print(f"paced run '{sys.argv[2]}': the totals do not match the trace:", *totals["differences"][:20], sep="\n  ", file=sys.stderr)
    sys.exit(1)
EOF
  [[ "$rc" == 0 ]] || { echo "paced run '$name': the load test exited with $rc (see $dir/loadtest.log)" >&2; exit 1; }
}

if [[ "${1:-}" == paced ]]; then
  SECONDS_RUN="${2:-150}"
  PARTITIONS="${3:-2}"
  [[ "$SECONDS_RUN" =~ ^[0-9]+$ && "$SECONDS_RUN" -ge 20 ]] || { echo "paced: SECONDS must be a whole number of seconds, at least 20 (got $SECONDS_RUN)" >&2; exit 2; }
  [[ "$PARTITIONS" =~ ^[0-9]+$ && "$PARTITIONS" -ge 1 ]] || { echo "paced: PARTITIONS must be a positive number (got $PARTITIONS)" >&2; exit 2; }
  export ORDERFLOW_PARTITIONS="$PARTITIONS"
  RATE=8500
  OUT="$WORK/checkpoint-cost-paced"
  SUMMARY="$WORK/checkpoint-cost-paced.json"
  rm -rf "$OUT"
  mkdir -p "$OUT"
  build_release
  trace_dir="$WORK/trace-paced-${SECONDS_RUN}s-$PARTITIONS"
  if [[ ! -s "$trace_dir/trace.jsonl" ]]; then
    # The synthesizer leaves out the steps of orders that would fall after the trace's
    # end (more of --events the shorter the trace), and the enricher dead-letters about
    # 0.6% (invalid events, unknown merchants): a first trace gives the ratio of lines to
    # --events, and the second asks for that much more, so that the enriched topic gets
    # RATE events a second per partition.
    want=$((RATE * PARTITIONS * SECONDS_RUN))
    synth_trace "$OUT/probe" --events "$want" --duration "${SECONDS_RUN}s" --peak-ratio 1 >/dev/null
    lines=$(wc -l <"$OUT/probe/trace.jsonl")
    rm -rf "$OUT/probe"
    synth_trace "$trace_dir" --events $((want * want / lines * 1006 / 1000)) --duration "${SECONDS_RUN}s" --peak-ratio 1
  fi
  TRACE_DIR="$trace_dir"
  start_broker checkpoint-cost-paced
  write_sampler "$OUT/sample.py"
  paced_run checkpoints "$OUT/checkpoints" kill
  if [[ "${CHECKPOINT_COST_COMPARE:-1}" != 0 ]]; then
    paced_run no-checkpoints "$OUT/no-checkpoints" nokill --no-checkpoints
  fi
  python3 "$OUT/sample.py" summary "$OUT" "$SUMMARY" "$PARTITIONS" "$SECONDS_RUN" "$RATE"
  exit
fi

EVENTS="${1:-1000000}"
ROUNDS="${2:-2}"
export ORDERFLOW_PARTITIONS="${ORDERFLOW_PARTITIONS:-4}"

metric_sum() { # sum of every sample of metric $2 on http://$1/metrics
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
try:
    page = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=2).read().decode()
except Exception:
    print(0); sys.exit()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines() if l.startswith(sys.argv[2] + "{") or l.startswith(sys.argv[2] + " "))))
EOF
}

build_and_synth "$EVENTS"
start_broker checkpoint-cost

settings=("--no-checkpoints" "--checkpoint-interval 5s" "--checkpoint-interval 1s")
base="cpcost-$(date +%s)"
runs=()
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!settings[@]}"; do runs+=("$r:$i"); done
done

log "Filling ${#runs[@]} copies of the enriched topic"
lines=$(grep -c . "$TRACE_DIR/trace.jsonl")
declare -A enriched
for run in "${runs[@]}"; do
  prefix="$base-${run/:/-}"
  "$OF" --topic-prefix "$prefix" merchants load "$TRACE_DIR/merchants.csv" >/dev/null
  "$OF" --topic-prefix "$prefix" replay "$TRACE_DIR/trace.jsonl" --no-progress >/dev/null
  maddr="127.0.0.1:$(free_port)"
  "$OF" --topic-prefix "$prefix" enrich --metrics-addr "$maddr" &
  epid=$!
  until [[ "$(metric_sum "$maddr" orderflow_enricher_events_total)" -ge "$lines" ]]; do sleep 0.5; done
  # What reached the enriched topic: every event read minus the dead-lettered ones.
  enriched[$run]=$(( $(metric_sum "$maddr" orderflow_enricher_events_total) - $(metric_sum "$maddr" orderflow_dead_letter_events_total) ))
  kill -TERM "$epid"; wait "$epid"
done

declare -A rate_sum runs_of
log "Aggregating each copy"
for run in "${runs[@]}"; do
  i="${run#*:}"
  prefix="$base-${run/:/-}"
  want="${enriched[$run]}"
  maddr="127.0.0.1:$(free_port)"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$OF" --topic-prefix "$prefix" aggregate --metrics-addr "$maddr" ${settings[$i]} &
  apid=$!
  # Every enriched record is one aggregator outcome (counted, duplicate, late, invalid).
  until [[ "$(metric_sum "$maddr" orderflow_aggregator_events_total)" -ge "$want" ]]; do sleep 0.1; done
  end=$(date +%s.%N)
  kill -TERM "$apid"; wait "$apid"
  rate=$(python3 -c "print(round($want / ($end - $start)))")
  printf 'run %s %-26s %d records in %.2fs (from process start): %d records/s\n' "$run" "${settings[$i]}" "$want" "$(python3 -c "print($end - $start)")" "$rate"
  rate_sum[$i]=$(( ${rate_sum[$i]:-0} + rate ))
  runs_of[$i]=$(( ${runs_of[$i]:-0} + 1 ))
done
base_rate=$(( rate_sum[0] / runs_of[0] ))
for i in "${!settings[@]}"; do
  avg=$(( rate_sum[$i] / runs_of[$i] ))
  printf '%-26s %d records/s on average; ratio to no checkpoints: %s\n' "${settings[$i]}" "$avg" "$(python3 -c "print(round($avg / $base_rate, 3))")"
done
