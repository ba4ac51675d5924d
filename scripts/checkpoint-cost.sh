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

# The measuring (sampling the aggregator's /metrics and CPU, readiness, the summary) is
# scripts/checkpoint_cost.py; see its docstring.
CC=(python3 "$PWD/scripts/checkpoint_cost.py")

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
  "${CC[@]}" sample "$maddr" "$agg" 1 >"$samples" &
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
    if "${CC[@]}" flowing "$dir/samples-1.jsonl"; then started=$(date +%s.%N); fi
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
  "${CC[@]}" sample "$maddr" "$agg" >>"$dir/samples-1.jsonl" || { echo "paced run '$name': no metrics from the aggregator at the mark" >&2; exit 1; }
  local marked restarted="null" ready="null" killed=false
  marked=$(date +%s.%N)
  if [[ "$kill" == kill ]]; then
    log "SIGKILL to the aggregator (pid $agg); starting another on the same group"
    kill -KILL "$agg"
    wait "$agg" 2>/dev/null || true
    killed=true
    restarted=$(date +%s.%N)
    start_aggregator "$dir/samples-2.jsonl" "$@"
    until "${CC[@]}" ready "$maddr" "$PARTITIONS"; do
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
    "${CC[@]}" sample "$maddr" "$agg" >>"$dir/samples-2.jsonl" || true
  fi
  printf '{"inputStarted": %s, "mark": %s, "marked": %s, "killed": %s, "restarted": %s, "ready": %s}\n' \
    "$started" "$mark" "$marked" "$killed" "$restarted" "$ready" >"$dir/marks.json"
  kill -TERM "$agg" "$enricher" 2>/dev/null || true
  wait "$agg" "$enricher" 2>/dev/null || true
  [[ -s "$dir/report/report.json" ]] || { echo "paced run '$name': the load test wrote no report (exit code $rc; see $dir/loadtest.log)" >&2; exit 1; }
  "${CC[@]}" totals-match "$dir/report/report.json" "$name" || exit 1
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
  paced_run checkpoints "$OUT/checkpoints" kill
  if [[ "${CHECKPOINT_COST_COMPARE:-1}" != 0 ]]; then
    paced_run no-checkpoints "$OUT/no-checkpoints" nokill --no-checkpoints
  fi
  "${CC[@]}" summary "$OUT" "$SUMMARY" "$PARTITIONS" "$SECONDS_RUN" "$RATE"
  exit
fi

EVENTS="${1:-1000000}"
ROUNDS="${2:-2}"
export ORDERFLOW_PARTITIONS="${ORDERFLOW_PARTITIONS:-4}"

metric_sum() { # sum of every sample of metric $2 on http://$1/metrics
  "${CC[@]}" metric-sum "$1" "$2"
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
