#!/usr/bin/env bash
# What checkpoints cost the aggregator, measured in one run (README "Operations").
#
#   scripts/checkpoint-cost.sh [EVENTS] [ROUNDS]      # defaults: 1000000 2
#
# Starts a Nisshi broker (memory storage), synthesizes a trace of EVENTS events, and
# fills one copy of the enriched topic per aggregator run (replay + enricher, no
# aggregator yet). Then, ROUNDS times and alternating, it starts an aggregator on a
# filled copy with `--no-checkpoints`, with `--checkpoint-interval 5s` (the default)
# and with `--checkpoint-interval 1s`, and times how long each takes to process the
# whole copy (until its metrics count every record). Prints events/s per run and the
# ratio of each checkpointing setting to the runs without checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${1:-1000000}"
ROUNDS="${2:-2}"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RUST_LOG="${RUST_LOG:-warn}"
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
